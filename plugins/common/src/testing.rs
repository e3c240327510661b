//! A scripted fake [`Effects`] for native tests, and a runner for the harness case files
//! (`plugins/<name>/cases/*.json`, the format `swapbot plugin test` reads).
//!
//! Requests must come in the scripted order; a mismatch panics with a description.

use std::collections::VecDeque;

use serde_json::{Value, json};

use crate::*;

/// How one scripted request is answered.
#[derive(Clone, Debug)]
pub enum Reply {
    Response(HttpResponse),
    Sse { events: Vec<SseEvent>, cut: bool },
    Transport(TransportError),
}

/// One expected request (the case file's `request` object) and its reply.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub request: Value,
    pub reply: Reply,
}

pub struct ScriptedStream {
    events: VecDeque<SseEvent>,
    cut: bool,
}

impl EventSource for ScriptedStream {
    fn next_event(&mut self) -> Result<Option<SseEvent>, TransportError> {
        match self.events.pop_front() {
            Some(e) => Ok(Some(e)),
            None if self.cut => Err(TransportError::Connection("stream reset by peer".into())),
            None => Ok(None),
        }
    }
}

#[derive(Default)]
pub struct ScriptedEffects {
    pub exchanges: VecDeque<Exchange>,
    pub history: Vec<HistoryMessage>,
    pub pushed: String,
    pub pushes: usize,
    pub now: u64,
    pub slept: u64,
    pub logs: Vec<(Level, String)>,
    pub requests: Vec<HttpRequest>,
    pub history_calls: usize,
    /// Sessions the plugin reported with `session_started`.
    pub started: Vec<String>,
}

impl ScriptedEffects {
    pub fn new(exchanges: Vec<Exchange>, history: Vec<HistoryMessage>) -> Self {
        Self {
            exchanges: exchanges.into(),
            history,
            ..Default::default()
        }
    }

    fn take(&mut self, req: &HttpRequest) -> Reply {
        self.requests.push(req.clone());
        let n = self.requests.len();
        let Some(ex) = self.exchanges.pop_front() else {
            panic!(
                "unexpected request #{n}: {} {} body={:?}",
                req.method, req.path, req.body
            );
        };
        if let Err(why) = request_matches(&ex.request, req) {
            panic!(
                "request #{n} does not match: {why}\n  got: {} {} headers={:?} body={}\n  want: {}",
                req.method,
                req.path,
                req.headers,
                req.body.as_deref().unwrap_or("<none>"),
                ex.request
            );
        }
        ex.reply
    }

    /// Panics when scripted exchanges were not used.
    pub fn assert_done(&self) {
        if !self.exchanges.is_empty() {
            panic!(
                "{} scripted exchange(s) not requested; next: {}",
                self.exchanges.len(),
                self.exchanges[0].request
            );
        }
    }
}

impl Effects for ScriptedEffects {
    type Stream = ScriptedStream;

    fn http(&mut self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        match self.take(&req) {
            Reply::Response(r) => Ok(r),
            Reply::Transport(e) => Err(e),
            Reply::Sse { .. } => panic!(
                "{} {}: scripted as a stream, asked with http",
                req.method, req.path
            ),
        }
    }

    fn http_stream(
        &mut self,
        req: HttpRequest,
    ) -> Result<StreamStart<ScriptedStream>, TransportError> {
        match self.take(&req) {
            Reply::Sse { events, cut } => Ok(StreamStart::Events(ScriptedStream {
                events: events.into(),
                cut,
            })),
            Reply::Transport(e) => Err(e),
            Reply::Response(r) if !r.is_success() => Ok(StreamStart::Refused(r)),
            Reply::Response(r) => {
                // A 2xx plain body on a stream request: hand it over as one event per SSE block.
                Ok(StreamStart::Events(ScriptedStream {
                    events: parse_sse_text(&r.body).into(),
                    cut: false,
                }))
            }
        }
    }

    fn push_text(&mut self, delta: &str) {
        self.pushes += 1;
        self.pushed.push_str(delta);
    }

    fn log(&mut self, level: Level, msg: &str) {
        self.logs.push((level, msg.to_owned()));
    }

    fn now_ms(&mut self) -> u64 {
        self.now
    }

    fn sleep_ms(&mut self, ms: u32) {
        self.now += u64::from(ms);
        self.slept += u64::from(ms);
    }

    fn session_started(&mut self, session_id: &str) {
        self.started.push(session_id.to_owned());
    }

    fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.history_calls += 1;
        self.history.clone()
    }
}

/// Split SSE text into events (`event:` and joined `data:` lines).
pub fn parse_sse_text(text: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if event.is_some() || !data.is_empty() {
            out.push(SseEvent {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

/// Subset match: objects — every listed key matches recursively; arrays — same length,
/// element-wise; scalars — equal.
pub fn subset(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{at}.{k}");
                match g.get(k) {
                    Some(gv) => subset(wv, gv, &p)?,
                    None => return Err(format!("{p}: missing (want {wv})")),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!("{at}: {} elements, want {}", g.len(), w.len()));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                subset(wv, gv, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        _ if want == got => Ok(()),
        _ => Err(format!("{at}: got {got}, want {want}")),
    }
}

pub fn request_matches(want: &Value, req: &HttpRequest) -> Result<(), String> {
    let method = want.get("method").and_then(Value::as_str).unwrap_or("GET");
    if method != req.method {
        return Err(format!("method {} != {method}", req.method));
    }
    let path = want.get("path").and_then(Value::as_str).unwrap_or("");
    if path != req.path {
        return Err(format!("path {} != {path}", req.path));
    }
    if let Some(Value::Object(h)) = want.get("headers") {
        for (name, v) in h {
            let got = req
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            if got != v.as_str() {
                return Err(format!("header {name}: {got:?}, want {v}"));
            }
        }
    }
    let body: Option<Value> = match &req.body {
        Some(b) => {
            Some(serde_json::from_str(b).map_err(|e| format!("request body is not JSON: {e}"))?)
        }
        None => None,
    };
    if let Some(wb) = want.get("body") {
        let Some(gb) = &body else {
            return Err("no request body".into());
        };
        subset(wb, gb, "body")?;
    }
    if let Some(Value::Array(absent)) = want.get("absent") {
        for k in absent {
            let k = k.as_str().unwrap_or("");
            if body.as_ref().and_then(|b| b.get(k)).is_some() {
                return Err(format!("body.{k} must be absent"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Case files
// ---------------------------------------------------------------------------------------------

pub struct Case {
    pub name: String,
    pub call: String,
    pub turn: Turn,
    pub session_id: Option<String>,
    pub history: Vec<HistoryMessage>,
    pub exchanges: Vec<Exchange>,
    pub expect: Value,
    pub pushed: Option<String>,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

pub fn parse_settings(v: &Value) -> Settings {
    let d = Settings::default();
    let u = |k: &str, def: u32| {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as u32)
            .unwrap_or(def)
    };
    Settings {
        model: s(v, "model").unwrap_or_default(),
        instructions: s(v, "instructions").unwrap_or_default(),
        assistant_id: s(v, "assistant_id"),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(d.stream),
        background: v
            .get("background")
            .and_then(Value::as_bool)
            .unwrap_or(d.background),
        poll_interval_ms: u("poll_interval_ms", d.poll_interval_ms),
        deadline_ms: u("deadline_ms", d.deadline_ms),
        options: v
            .get("options")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub fn parse_history(v: Option<&Value>) -> Vec<HistoryMessage> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| HistoryMessage {
                    role: if m.get("role").and_then(Value::as_str) == Some("assistant") {
                        Role::Assistant
                    } else {
                        Role::User
                    },
                    text: s(m, "text").unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn parse_turn(v: &Value) -> Turn {
    Turn {
        user_id: v.get("user_id").and_then(Value::as_i64).unwrap_or(42),
        session_id: s(v, "session_id"),
        cache_key: s(v, "cache_key").unwrap_or_default(),
        text: s(v, "text").unwrap_or_default(),
        context: v
            .get("context")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| ContextChunk {
                        source: s(c, "source").unwrap_or_default(),
                        text: s(c, "text").unwrap_or_default(),
                        score: c.get("score").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        settings: parse_settings(v.get("settings").unwrap_or(&Value::Null)),
    }
}

fn parse_body(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::Object(o)) if o.len() == 1 && o.get("raw").is_some_and(Value::is_string) => {
            o["raw"].as_str().unwrap().to_owned()
        }
        Some(other) => other.to_string(),
    }
}

pub fn parse_exchange(v: &Value) -> Exchange {
    let request = v.get("request").cloned().unwrap_or(Value::Null);
    let reply = if let Some(t) = v.get("transport_error") {
        let m = t.as_str().unwrap_or("connection");
        match m {
            "timeout" => Reply::Transport(TransportError::Timeout("request timed out".into())),
            "refused" => Reply::Transport(TransportError::Refused("refused".into())),
            _ => Reply::Transport(TransportError::Connection("connection reset".into())),
        }
    } else if let Some(Value::Array(evs)) = v.get("sse") {
        let events = evs
            .iter()
            .map(|e| SseEvent {
                event: s(e, "event"),
                data: match e.get("data") {
                    Some(Value::String(d)) => d.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                },
            })
            .collect();
        Reply::Sse {
            events,
            cut: v.get("cut").and_then(Value::as_bool).unwrap_or(false),
        }
    } else {
        let r = v.get("response").cloned().unwrap_or(Value::Null);
        let headers = r
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Reply::Response(HttpResponse {
            status: r.get("status").and_then(Value::as_u64).unwrap_or(200) as u16,
            headers,
            body: parse_body(r.get("body")),
        })
    };
    Exchange { request, reply }
}

impl Case {
    pub fn parse(text: &str) -> Case {
        let v: Value = serde_json::from_str(text).expect("case file is JSON");
        Case {
            name: s(&v, "name").unwrap_or_default(),
            call: s(&v, "call").unwrap_or_else(|| "chat".into()),
            turn: parse_turn(v.get("turn").unwrap_or(&json!({}))),
            session_id: s(&v, "session_id"),
            history: parse_history(v.get("history")),
            exchanges: v
                .get("exchanges")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(parse_exchange).collect())
                .unwrap_or_default(),
            expect: v.get("expect").cloned().unwrap_or(Value::Null),
            pushed: s(&v, "pushed"),
        }
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens, "cached_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens, "reasoning_tokens": u.reasoning_tokens,
    })
}

pub fn answer_json(a: &Answer) -> Value {
    json!({
        "text": a.text, "session_id": a.session_id, "turn_id": a.turn_id,
        "new_session": a.new_session, "replayed": a.replayed,
        "usage": a.usage.as_ref().map(usage_json),
    })
}

pub fn error_json(e: &ChatError) -> Value {
    json!({
        "kind": e.kind.as_str(), "message": e.message, "retryable": e.retryable,
        "retry_after_ms": e.retry_after_ms, "session_id": e.session_id, "turn_id": e.turn_id,
        "usage": e.usage.as_ref().map(usage_json),
    })
}

/// The case's `expect`, with the shorthand `{"ok": N}` of a replay case spelled out.
pub fn expected_outcome(expect: &Value) -> Value {
    match expect.get("ok").and_then(Value::as_u64) {
        Some(n) => json!({"ok": {"replayed": n}}),
        None => expect.clone(),
    }
}

/// Run one case against a plugin's `chat` and `replay`, panicking on any difference.
pub fn run_case<C, R>(text: &str, chat: C, replay: R)
where
    C: FnOnce(&mut ScriptedEffects, Turn) -> Result<Answer, ChatError>,
    R: FnOnce(&mut ScriptedEffects, &str, Vec<HistoryMessage>, &Settings) -> Result<u32, ChatError>,
{
    let case = Case::parse(text);
    let name = case.name.clone();
    let mut fx = ScriptedEffects::new(case.exchanges, case.history.clone());
    let got: Value = if case.call == "replay" {
        let sid = case
            .session_id
            .clone()
            .or(case.turn.session_id.clone())
            .expect("replay case needs session_id");
        match replay(&mut fx, &sid, case.history, &case.turn.settings) {
            Ok(n) => json!({"ok": {"replayed": n}}),
            Err(e) => json!({"error": error_json(&e)}),
        }
    } else {
        match chat(&mut fx, case.turn) {
            Ok(a) => json!({"ok": answer_json(&a)}),
            Err(e) => json!({"error": error_json(&e)}),
        }
    };
    let want = expected_outcome(&case.expect);
    if let Err(why) = subset(&want, &got, "expect") {
        panic!("case {name:?}: {why}\n  got: {got}\n  logs: {:?}", fx.logs);
    }
    if let Some(p) = &case.pushed {
        assert_eq!(&fx.pushed, p, "case {name:?}: pushed text");
    }
    if !fx.exchanges.is_empty() {
        panic!(
            "case {name:?}: {} exchange(s) never requested; next: {}",
            fx.exchanges.len(),
            fx.exchanges[0].request
        );
    }
}

/// Run every `*.json` case in a directory; returns how many ran.
pub fn run_case_dir<C, R>(dir: &std::path::Path, chat: C, replay: R) -> usize
where
    C: Fn(&mut ScriptedEffects, Turn) -> Result<Answer, ChatError>,
    R: Fn(&mut ScriptedEffects, &str, Vec<HistoryMessage>, &Settings) -> Result<u32, ChatError>,
{
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("cases dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&text, &chat, &replay)
        }));
        if r.is_err() {
            failures.push(p.display().to_string());
        }
    }
    assert!(failures.is_empty(), "failing cases: {failures:?}");
    paths.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASE: &str = r#"{
      "name": "t", "call": "chat", "turn": {"session_id": "s1", "text": "hi", "settings": {"model": "m"}},
      "exchanges": [{"request": {"method": "POST", "path": "/x", "headers": {"content-type": "application/json"},
                                 "body": {"a": [1, {"b": 2}]}, "absent": ["c"]},
                     "response": {"status": 200, "body": {"id": "r1"}}}],
      "expect": {"ok": {"text": "hi", "turn_id": "r1"}}
    }"#;

    fn echo(fx: &mut ScriptedEffects, t: Turn, body: Value) -> Result<Answer, ChatError> {
        let v = call_json(fx, HttpRequest::post("/x").json(&body), |_| None)?;
        Ok(Answer {
            text: t.text,
            session_id: t.session_id.unwrap_or_default(),
            turn_id: v["id"].as_str().unwrap().into(),
            new_session: false,
            replayed: 0,
            usage: None,
        })
    }

    fn no_replay(
        _: &mut ScriptedEffects,
        _: &str,
        _: Vec<HistoryMessage>,
        _: &Settings,
    ) -> Result<u32, ChatError> {
        unreachable!()
    }

    #[test]
    fn matching_case_passes() {
        run_case(
            CASE,
            |fx, t| echo(fx, t, json!({"a": [1, {"b": 2, "extra": true}], "d": 1})),
            no_replay,
        );
    }

    #[test]
    #[should_panic(expected = "must be absent")]
    fn absent_key_is_enforced() {
        run_case(
            CASE,
            |fx, t| echo(fx, t, json!({"a": [1, {"b": 2}], "c": null})),
            no_replay,
        );
    }

    #[test]
    #[should_panic(expected = "elements")]
    fn array_lengths_must_match() {
        run_case(
            CASE,
            |fx, t| echo(fx, t, json!({"a": [1, {"b": 2}, 3]})),
            no_replay,
        );
    }

    #[test]
    #[should_panic(expected = "expect.ok.text")]
    fn wrong_answer_fails() {
        run_case(
            CASE,
            |fx, mut t| {
                t.text = "other".into();
                echo(fx, t, json!({"a": [1, {"b": 2}]}))
            },
            no_replay,
        );
    }

    #[test]
    #[should_panic(expected = "never requested")]
    fn unused_exchanges_fail() {
        let case = CASE.replace(
            r#"{"ok": {"text": "hi", "turn_id": "r1"}}"#,
            r#"{"error": {"kind": "config"}}"#,
        );
        run_case(&case, |_, _| Err(ChatError::config("x")), no_replay);
    }

    #[test]
    #[should_panic(expected = "unexpected request")]
    fn extra_requests_fail() {
        run_case(
            CASE,
            |fx, t| {
                let _ = echo(fx, t.clone(), json!({"a": [1, {"b": 2}]}));
                echo(fx, t, json!({"a": [1, {"b": 2}]}))
            },
            no_replay,
        );
    }

    #[test]
    fn sse_text_parses() {
        let evs = parse_sse_text("event: a\ndata: {\"x\":1}\n\ndata: one\ndata: two\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some("a"));
        assert_eq!(evs[1].data, "one\ntwo");
    }
}

/// Every harness case file of a plugin as its own native test, plus a check that no file in
/// `cases/` is left unlisted. Used in a plugin's `tests` module, where `chat` and `replay` are
/// the plugin's protocol functions.
#[macro_export]
macro_rules! plugin_case_tests {
    ($($name:ident),* $(,)?) => {
        fn chat_fn(fx: &mut $crate::testing::ScriptedEffects, turn: $crate::Turn) -> Result<$crate::Answer, $crate::ChatError> {
            chat(fx, &turn)
        }

        fn replay_fn(
            fx: &mut $crate::testing::ScriptedEffects,
            sid: &str,
            h: Vec<$crate::HistoryMessage>,
            s: &$crate::Settings,
        ) -> Result<u32, $crate::ChatError> {
            replay(fx, sid, &h, s)
        }

        mod cases {
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::testing::run_case(
                        include_str!(concat!("../cases/", stringify!($name), ".json")),
                        chat_fn,
                        replay_fn,
                    );
                }
            )*
        }

        /// Every case file in `cases/` is listed (and so runs as its own test).
        #[test]
        fn every_case_file_is_listed() {
            let listed: &[&str] = &[$(stringify!($name)),*];
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
            let n = $crate::testing::run_case_dir(&dir, chat_fn, replay_fn);
            assert_eq!(n, listed.len(), "case files vs listed tests");
        }
    };
}
