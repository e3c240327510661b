//! The plugin's requests against the sandbox's `/chat/completions` over real HTTP: the bodies it
//! builds pass the emulator's checks of the spec (unknown fields are refused there), and it reads
//! the real wire format (role chunk, obfuscation, the usage chunk, `[DONE]`).

use std::collections::VecDeque;

use swapbot_plugin_chat::chat;
use swapbot_plugin_common::testing::case::parse_sse_text;
use swapbot_plugin_common::*;
use swapbot_sandbox::{Sandbox, SandboxConfig};

/// Effects over a real HTTP client. A stream is read whole before its events are handed over:
/// enough to check the format, and the plugin cannot tell.
struct Live {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    history: Vec<HistoryMessage>,
    pushes: Vec<String>,
}

struct Buffered(VecDeque<SseEvent>);

impl EventSource for Buffered {
    fn next_event(&mut self) -> Result<Option<SseEvent>, TransportError> {
        Ok(self.0.pop_front())
    }
}

impl Live {
    fn send(&mut self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut rb = self
            .http
            .request(req.method.parse().unwrap(), format!("{}{}", self.base, req.path))
            .bearer_auth("sk-test");
        for (k, v) in &req.headers {
            rb = rb.header(k, v);
        }
        if let Some(b) = req.body {
            rb = rb.body(b);
        }
        self.rt.block_on(async {
            let r = rb.send().await.map_err(|e| TransportError::Connection(e.to_string()))?;
            let status = r.status().as_u16();
            let headers = r
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let body = r.text().await.map_err(|e| TransportError::Connection(e.to_string()))?;
            Ok(HttpResponse { status, headers, body })
        })
    }
}

impl Effects for Live {
    type Stream = Buffered;
    fn http(&mut self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        self.send(req)
    }
    fn http_stream(&mut self, req: HttpRequest) -> Result<StreamStart<Buffered>, TransportError> {
        let r = self.send(req)?;
        if !r.is_success() {
            return Ok(StreamStart::Refused(r));
        }
        assert!(r.header("content-type").unwrap_or("").starts_with("text/event-stream"));
        let events = parse_sse_text(&r.body).into_iter().map(|e| SseEvent { event: e.event, data: e.data });
        Ok(StreamStart::Events(Buffered(events.collect())))
    }
    fn push_text(&mut self, delta: &str) {
        self.pushes.push(delta.to_owned());
    }
    fn log(&mut self, _: Level, _: &str) {}
    fn now_ms(&mut self) -> u64 {
        0
    }
    fn sleep_ms(&mut self, _: u32) {}
    fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.history.clone()
    }
}

fn start() -> (Live, Sandbox) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sb = rt.block_on(Sandbox::start(SandboxConfig::default())).unwrap();
    let live = Live { rt, http: reqwest::Client::new(), base: sb.base_url(), history: vec![], pushes: vec![] };
    (live, sb)
}

fn turn(text: &str, options: &[(&str, &str)]) -> Turn {
    Turn {
        user_id: 1,
        session_id: None,
        cache_key: "chat-1".into(),
        text: text.into(),
        context: vec![ContextChunk { source: "faq.md".into(), text: "Swaps settle within 10 minutes.".into(), score: 0.9 }],
        settings: Settings {
            model: "gpt-4o-mini".into(),
            instructions: "Be brief.".into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Settings::default()
        },
    }
}

#[test]
fn the_history_the_host_keeps_is_the_conversation() {
    for stream in ["true", "false"] {
        let (mut fx, sb) = start();
        let opts = [("stream", stream), ("max-tokens", "200"), ("temperature", "0.5"), ("prompt-cache-key", "true")];
        let first = chat(&mut fx, &turn("my name is Lu", &opts)).unwrap();
        assert!(first.turn_id.starts_with("chatcmpl-"), "{first:?}");
        assert_eq!(first.session_id, None);
        let usage = first.usage.expect("usage, streamed too (include_usage)");
        assert!(usage.input_tokens > 0 && usage.output_tokens > 0, "{usage:?}");
        if stream == "true" {
            assert!(fx.pushes.len() > 1, "deltas pushed as they come: {:?}", fx.pushes);
            assert_eq!(fx.pushes.concat().trim(), first.text);
        } else {
            assert!(fx.pushes.is_empty());
        }
        // Stateless: the server knows the name only from the history in the request.
        let alone = chat(&mut fx, &turn("what is my name?", &opts)).unwrap();
        assert_eq!(alone.text, "I don't know your name yet.");
        fx.history = vec![HistoryMessage::user("my name is Lu"), HistoryMessage::assistant(first.text.clone())];
        let second = chat(&mut fx, &turn("what is my name?", &opts)).unwrap();
        assert_eq!((second.text.as_str(), second.replayed), ("Your name is Lu.", 2));
        fx.rt.block_on(sb.shutdown());
    }
}

#[test]
fn a_prompt_over_the_window_is_context_overflow() {
    let (mut fx, sb) = start();
    sb.set_config(|c| c.context_window = Some(10));
    let e = chat(&mut fx, &turn("a b c d e f g h i j k l m n o p", &[])).unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::ContextOverflow, false), "{e}");
    fx.rt.block_on(sb.shutdown());
}
