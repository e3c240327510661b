//! A scripted fake [`Effects`] for native tests, and a runner for the harness case files
//! (`plugins/<name>/cases/*.json`, the format `swapbot plugin test` reads).
//!
//! Requests must come in the scripted order; a request that is not the next one gets a
//! transport error (`refused`, naming the difference) and fails the case, as in the wasm harness.

use std::collections::VecDeque;

use serde_json::Value;

use crate::*;

pub use swapbot_case as case;
pub use swapbot_case::{Exchange, Reply};

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
    pub script: case::Script,
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
            script: case::Script::new(exchanges),
            history,
            ..Default::default()
        }
    }

    fn take(&mut self, req: &HttpRequest, streamed: bool) -> Result<Reply, TransportError> {
        self.requests.push(req.clone());
        let asked = case::Request {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        };
        let reply = self.script.answer(&asked, streamed).map_err(TransportError::Refused)?;
        match reply {
            Reply::Transport(kind) => Err(transport_of(kind)),
            reply => Ok(reply),
        }
    }

    /// Panics when a request did not match or scripted exchanges were not used.
    pub fn assert_done(&self) {
        if let Some(why) = self.script.failures().first() {
            panic!("{why}");
        }
        if let Some(next) = self.script.unused().front() {
            panic!(
                "{} scripted exchange(s) not requested; next: {} {}",
                self.script.unused().len(),
                next.request.method,
                next.request.path
            );
        }
    }
}

fn transport_of(kind: case::TransportKind) -> TransportError {
    let m = kind.message().to_owned();
    match kind {
        case::TransportKind::Timeout => TransportError::Timeout(m),
        case::TransportKind::Connection => TransportError::Connection(m),
        case::TransportKind::Refused => TransportError::Refused(m),
    }
}

fn response_of(status: u16, headers: Vec<(String, String)>, body: String) -> HttpResponse {
    HttpResponse { status, headers, body }
}

fn events_of(events: Vec<case::Event>) -> VecDeque<SseEvent> {
    events
        .into_iter()
        .map(|e| SseEvent { event: e.event, data: e.data })
        .collect()
}

impl Effects for ScriptedEffects {
    type Stream = ScriptedStream;

    fn http(&mut self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        match self.take(&req, false)? {
            Reply::Response { status, headers, body } => Ok(response_of(status, headers, body)),
            // `Script::answer` turns a stream script asked without one into an error.
            Reply::Sse { .. } | Reply::Transport(_) => unreachable!("Script::answer(.., false)"),
        }
    }

    fn http_stream(
        &mut self,
        req: HttpRequest,
    ) -> Result<StreamStart<ScriptedStream>, TransportError> {
        match self.take(&req, true)? {
            Reply::Sse { events, cut } => Ok(StreamStart::Events(ScriptedStream {
                events: events_of(events),
                cut,
            })),
            Reply::Response { status, headers, body } if !(200..300).contains(&status) => {
                Ok(StreamStart::Refused(response_of(status, headers, body)))
            }
            // `Script::answer` reads a 2xx body on a stream request as SSE; `take` maps transport.
            Reply::Response { .. } | Reply::Transport(_) => unreachable!("Script::answer(.., true)"),
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

// ---------------------------------------------------------------------------------------------
// Case files: the format, the matching and the verdict are `swapbot_case`'s (the wasm harness
// uses the same), this runner only converts between it and this crate's types.
// ---------------------------------------------------------------------------------------------

/// A case file read for the native runner: the file itself and its turn and history as this
/// crate's types.
pub struct Case {
    pub file: case::Case,
    pub name: String,
    pub turn: Turn,
    pub history: Vec<HistoryMessage>,
    pub exchanges: Vec<Exchange>,
}

impl Case {
    /// Read a case file; panics (naming the problem, e.g. an unknown key) when it is not one.
    pub fn parse(text: &str) -> Case {
        let file = case::Case::parse(text).unwrap_or_else(|e| panic!("{e}"));
        Case {
            name: file.name.clone(),
            turn: turn_of(&file.turn),
            history: file.history.iter().map(history_of).collect(),
            exchanges: file.exchanges.clone(),
            file,
        }
    }
}

pub fn turn_of(t: &case::Turn) -> Turn {
    Turn {
        user_id: t.user_id,
        session_id: t.session_id.clone(),
        cache_key: t.cache_key.clone(),
        text: t.text.clone(),
        context: t
            .context
            .iter()
            .map(|c| ContextChunk {
                source: c.source.clone(),
                text: c.text.clone(),
                score: c.score,
            })
            .collect(),
        settings: Settings {
            model: t.settings.model.clone(),
            instructions: t.settings.instructions.clone(),
            poll_interval_ms: t.settings.poll_interval_ms,
            deadline_ms: t.settings.deadline_ms,
            options: t.settings.option_list(),
        },
    }
}

pub fn history_of(m: &case::Message) -> HistoryMessage {
    HistoryMessage {
        role: match m.role {
            case::Role::User => Role::User,
            case::Role::Assistant => Role::Assistant,
        },
        text: m.text.clone(),
    }
}

/// One exchange from its JSON (the case file's form), for hand-written scripts in unit tests.
pub fn parse_exchange(v: &Value) -> Exchange {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not an exchange: {e}: {v}"))
}

fn usage_of(u: &Usage) -> case::Usage {
    case::Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
    }
}

/// A turn's result in the case crate's terms, for [`case::judge`].
pub fn outcome_of(r: &Result<Answer, ChatError>) -> case::Outcome {
    match r {
        Ok(a) => Ok(case::Answer {
            text: a.text.clone(),
            session_id: a.session_id.clone(),
            turn_id: a.turn_id.clone(),
            new_session: a.new_session,
            replayed: a.replayed,
            usage: a.usage.as_ref().map(usage_of),
        }),
        Err(e) => Err(case::Error {
            kind: e.kind.as_str().to_owned(),
            message: e.message.clone(),
            retryable: e.retryable,
            retry_after_ms: e.retry_after_ms,
            session_id: e.session_id.clone(),
            turn_id: e.turn_id.clone(),
            usage: e.usage.as_ref().map(usage_of),
        }),
    }
}

/// Run one case against a plugin's `chat`: the failures [`case::judge`] finds (empty: passed).
pub fn case_failures<C>(text: &str, chat: C) -> Vec<String>
where
    C: FnOnce(&mut ScriptedEffects, Turn) -> Result<Answer, ChatError>,
{
    let case = match case::Case::parse(text) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut fx = ScriptedEffects::new(case.exchanges.clone(), case.history.iter().map(history_of).collect());
    let result = chat(&mut fx, turn_of(&case.turn));
    case::judge(&case, &outcome_of(&result), &fx.pushed, &fx.script)
}

/// Run one case against a plugin's `chat`, panicking with every failure.
pub fn run_case<C>(text: &str, chat: C)
where
    C: FnOnce(&mut ScriptedEffects, Turn) -> Result<Answer, ChatError>,
{
    let failures = case_failures(text, chat);
    if !failures.is_empty() {
        let name = case::Case::parse(text).map(|c| c.name).unwrap_or_default();
        panic!("case {name:?}:\n  - {}", failures.join("\n  - "));
    }
}

/// Run every `*.json` case in a directory; returns how many ran.
pub fn run_case_dir<C>(dir: &std::path::Path, chat: C) -> usize
where
    C: Fn(&mut ScriptedEffects, Turn) -> Result<Answer, ChatError>,
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
        let f = case_failures(&text, &chat);
        if !f.is_empty() {
            failures.push(format!("{}: {}", p.display(), f.join("; ")));
        }
    }
    assert!(failures.is_empty(), "failing cases: {failures:#?}");
    paths.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CASE: &str = r#"{
      "name": "t", "call": "chat", "turn": {"session_id": "s1", "text": "hi", "settings": {"model": "m"}},
      "exchanges": [{"request": {"method": "POST", "path": "/x", "headers": {"content-type": "application/json"},
                                 "body": {"a": [1, {"b": 2}]}, "absent": ["c"]},
                     "response": {"status": 200, "body": {"id": "r1", "usage": {"input_tokens": 7}}}}],
      "expect": {"ok": {"text": "hi", "turn_id": "r1",
                        "usage": {"input_tokens": 7, "cached_input_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0}}}
    }"#;

    fn echo(fx: &mut ScriptedEffects, t: Turn, body: Value) -> Result<Answer, ChatError> {
        let v = call_json(fx, HttpRequest::post("/x").json(&body), |_| None)?;
        Ok(Answer {
            text: t.text,
            session_id: t.session_id,
            turn_id: v["id"].as_str().unwrap().into(),
            new_session: false,
            replayed: 0,
            usage: v["usage"]["input_tokens"].as_u64().map(|n| Usage {
                input_tokens: n,
                ..Usage::default()
            }),
        })
    }

    #[test]
    fn matching_case_passes() {
        run_case(CASE, |fx, t| {
            echo(fx, t, json!({"a": [1, {"b": 2, "extra": true}], "d": 1}))
        });
    }

    /// The native runner judges `usage` like the wasm one: with `swapbot_case::judge`.
    #[test]
    fn expected_usage_is_judged() {
        let f = case_failures(CASE, |fx, t| {
            let mut a = echo(fx, t, json!({"a": [1, {"b": 2}]}))?;
            a.usage = None;
            Ok(a)
        });
        assert!(f.len() == 1 && f[0].starts_with("expect.ok.usage"), "{f:?}");
    }

    #[test]
    #[should_panic(expected = "must be absent")]
    fn absent_key_is_enforced() {
        run_case(CASE, |fx, t| echo(fx, t, json!({"a": [1, {"b": 2}], "c": null})));
    }

    #[test]
    #[should_panic(expected = "elements")]
    fn array_lengths_must_match() {
        run_case(CASE, |fx, t| echo(fx, t, json!({"a": [1, {"b": 2}, 3]})));
    }

    #[test]
    #[should_panic(expected = "expect.ok.text")]
    fn wrong_answer_fails() {
        run_case(CASE, |fx, mut t| {
            t.text = "other".into();
            echo(fx, t, json!({"a": [1, {"b": 2}]}))
        });
    }

    #[test]
    #[should_panic(expected = "never requested")]
    fn unused_exchanges_fail() {
        let case = CASE.replace(r#""expect": {"ok": {"text": "hi","#, r#""expect": {"error": {"kind": "config"}}, "x": {"ok": {"#);
        // Not a case any more (an unknown key): the runner says so.
        assert!(case_failures(&case, |_, _| Err(ChatError::config("x")))[0].contains("`x`"));
        let case = r#"{"name": "u", "turn": {"text": "t"},
            "exchanges": [{"request": {"path": "/x"}, "response": {}}], "expect": {"error": {"kind": "config"}}}"#;
        run_case(case, |_, _| Err(ChatError::config("x")));
    }

    #[test]
    #[should_panic(expected = "unexpected request")]
    fn extra_requests_fail() {
        run_case(CASE, |fx, t| {
            let _ = echo(fx, t.clone(), json!({"a": [1, {"b": 2}]}));
            echo(fx, t, json!({"a": [1, {"b": 2}]}))
        });
    }

    #[test]
    fn options_become_settings_options() {
        let c = Case::parse(r#"{"name": "o", "turn": {"text": "t", "settings": {"options": {"stream": false, "assistant-id": "asst_1"}}}, "expect": {"error": {"kind": "config"}}}"#);
        assert_eq!(c.turn.settings.option("assistant-id"), Some("asst_1"));
        assert!(!c.turn.settings.stream().unwrap());
    }
}

/// Every harness case file of a plugin as its own native test, plus a check that no file in
/// `cases/` is left unlisted. Used in a plugin's `tests` module, where `chat` is the plugin's
/// protocol function.
#[macro_export]
macro_rules! plugin_case_tests {
    ($($name:ident),* $(,)?) => {
        fn chat_fn(fx: &mut $crate::testing::ScriptedEffects, turn: $crate::Turn) -> Result<$crate::Answer, $crate::ChatError> {
            chat(fx, &turn)
        }

        mod cases {
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::testing::run_case(
                        include_str!(concat!("../cases/", stringify!($name), ".json")),
                        chat_fn,
                    );
                }
            )*
        }

        /// Every case file in `cases/` is listed (and so runs as its own test).
        #[test]
        fn every_case_file_is_listed() {
            let listed: &[&str] = &[$(stringify!($name)),*];
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
            let n = $crate::testing::run_case_dir(&dir, chat_fn);
            assert_eq!(n, listed.len(), "case files vs listed tests");
        }
    };
}
