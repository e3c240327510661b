//! The WIT harness: runs one plugin in isolation against a case file that scripts the HTTP
//! exchanges it must make and the outcome it must reach. `swapbot plugin test`.
//!
//! The case format, the request matching and the verdict are the `swapbot-case` crate's (here
//! through `swapbot_plugin_common::testing::case`), which the plugins' native tests use too: a
//! case means the same against the native build and the wasm one, by construction. This module
//! only converts between the case crate's types and the host's, and answers the plugin's host
//! calls from the script, asynchronously.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use swapbot_openai::{ApiRequest, ApiResponse, SseEvent, TransportError};
use swapbot_plugin_common::testing::case::{self, Reply, Script, TransportKind};

use crate::runtime::effects::{EventSource, HostEffects, LogLevel, StreamStart};
use crate::runtime::{
    Answer, ChatError, ContextChunk, HistoryMessage, LoadedPlugin, PluginRuntime, Role, Settings, Turn, Usage,
};

pub use swapbot_plugin_common::testing::case::Case;

/// The verdict on one case.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Effects that answer from the case's script, with a virtual clock.
struct ScriptedEffects {
    script: Arc<Mutex<Script>>,
    history: Vec<HistoryMessage>,
    pushed: Arc<Mutex<String>>,
    clock_ms: u64,
}

struct ScriptedStream {
    events: std::collections::VecDeque<SseEvent>,
    cut: bool,
}

#[async_trait::async_trait]
impl EventSource for ScriptedStream {
    async fn next(&mut self) -> Result<Option<SseEvent>, TransportError> {
        match self.events.pop_front() {
            Some(event) => Ok(Some(event)),
            None if self.cut => Err(TransportError::Connection("stream cut by the harness".into())),
            None => Ok(None),
        }
    }
}

fn transport(kind: TransportKind) -> TransportError {
    let m = kind.message().to_owned();
    match kind {
        TransportKind::Timeout => TransportError::Timeout(m),
        TransportKind::Connection => TransportError::Connection(m),
        TransportKind::Refused => TransportError::Refused(m),
    }
}

impl ScriptedEffects {
    /// The scripted reply, if the request is the one the case expects next; a mismatch is kept
    /// in the script (it fails the case) and the plugin gets a refusal.
    fn take(&mut self, req: &ApiRequest, streamed: bool) -> Result<Reply, TransportError> {
        let asked = case::Request {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        };
        match self.script.lock().unwrap().answer(&asked, streamed) {
            Ok(Reply::Transport(kind)) => Err(transport(kind)),
            Ok(reply) => Ok(reply),
            Err(why) => Err(TransportError::Refused(why)),
        }
    }
}

#[async_trait::async_trait]
impl HostEffects for ScriptedEffects {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        match self.take(&req, false)? {
            Reply::Response { status, headers, body } => Ok(ApiResponse { status, headers, body }),
            // `Script::answer(.., false)` refuses a stream script and `take` maps transport errors.
            Reply::Sse { .. } | Reply::Transport(_) => unreachable!("Script::answer(.., false)"),
        }
    }

    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        match self.take(&req, true)? {
            Reply::Sse { events, cut } => {
                let events = events.into_iter().map(|e| SseEvent { event: e.event, data: e.data }).collect();
                Ok(StreamStart::Events(Box::new(ScriptedStream { events, cut })))
            }
            Reply::Response { status, headers, body } => Ok(StreamStart::Refused(ApiResponse { status, headers, body })),
            Reply::Transport(_) => unreachable!("take maps transport errors"),
        }
    }

    fn push_text(&mut self, delta: String) {
        self.pushed.lock().unwrap().push_str(&delta);
    }

    fn log(&mut self, _level: LogLevel, _message: String) {}

    fn now_ms(&mut self) -> u64 {
        self.clock_ms
    }

    async fn sleep_ms(&mut self, ms: u32) {
        self.clock_ms += ms as u64;
    }

    async fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.history.clone()
    }
}

/// The case's history as the WIT's.
pub fn history_to_wit(history: &[case::Message]) -> Vec<HistoryMessage> {
    history
        .iter()
        .map(|m| HistoryMessage {
            role: match m.role {
                case::Role::User => Role::User,
                case::Role::Assistant => Role::Assistant,
            },
            text: m.text.clone(),
        })
        .collect()
}

/// The case's turn as the WIT's (options as the (key, value) list).
pub fn turn_to_wit(turn: &case::Turn) -> Turn {
    Turn {
        user_id: turn.user_id,
        session_id: turn.session_id.clone(),
        cache_key: turn.cache_key.clone(),
        text: turn.text.clone(),
        context: turn
            .context
            .iter()
            .map(|c| ContextChunk { source: c.source.clone(), text: c.text.clone(), score: c.score })
            .collect(),
        settings: Settings {
            model: turn.settings.model.clone(),
            instructions: turn.settings.instructions.clone(),
            poll_interval_ms: turn.settings.poll_interval_ms,
            deadline_ms: turn.settings.deadline_ms,
            options: turn.settings.option_list(),
        },
    }
}

fn usage_of(u: &Usage) -> case::Usage {
    case::Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
    }
}

/// A turn's result in the case crate's terms, for `case::judge` and recording.
pub fn outcome_of(result: &Result<Answer, ChatError>) -> case::Outcome {
    match result {
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

/// Runs one case against a loaded plugin.
pub async fn run_case(runtime: &PluginRuntime, plugin: &LoadedPlugin, case: Case) -> CaseResult {
    let pushed = Arc::new(Mutex::new(String::new()));
    let script = Arc::new(Mutex::new(Script::new(case.exchanges.clone())));
    let effects = ScriptedEffects {
        script: script.clone(),
        history: history_to_wit(&case.history),
        pushed: pushed.clone(),
        clock_ms: 1_000_000,
    };
    let failures = match runtime.chat(plugin, turn_to_wit(&case.turn), Box::new(effects)).await {
        Ok(result) => {
            let pushed = pushed.lock().unwrap().clone();
            case::judge(&case, &outcome_of(&result), &pushed, &script.lock().unwrap())
        }
        Err(e) => {
            let mut f = script.lock().unwrap().failures().to_vec();
            f.push(format!("the plugin failed: {e}"));
            f
        }
    };
    CaseResult { name: case.name, failures }
}

/// Loads a case file (JSON, strictly: an unknown key is an error naming it).
pub fn read_case(path: &Path) -> anyhow::Result<Case> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Case::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub async fn run_files(plugin_path: &Path, cases: &[std::path::PathBuf]) -> anyhow::Result<bool> {
    let runtime = PluginRuntime::new(Default::default())?;
    let bytes = std::fs::read(plugin_path).map_err(|e| anyhow::anyhow!("{}: {e}", plugin_path.display()))?;
    let plugin = runtime.load(&bytes, None).await.map_err(|e| anyhow::anyhow!("{}: {e}", plugin_path.display()))?;
    let mut files = vec![];
    for path in cases {
        if path.is_dir() {
            let mut inner: Vec<_> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(path.clone());
        }
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let case = read_case(file)?;
        let result = run_case(&runtime, &plugin, case).await;
        if result.passed() {
            passed += 1;
            println!("PASS {} ({})", result.name, file.display());
        } else {
            failed += 1;
            println!("FAIL {} ({})", result.name, file.display());
            for failure in &result.failures {
                println!("  - {failure}");
            }
        }
    }
    println!(
        "{} {} v{}: {passed} passed, {failed} failed",
        plugin_path.display(),
        plugin.description.name,
        plugin.description.version
    );
    Ok(failed == 0 && passed > 0)
}

/// Records what a plugin does in a real run, as a case file: a plugin author's way to turn a
/// live exchange into a regression case (`swapbot plugin record`).
pub struct Recorder {
    inner: Box<dyn HostEffects>,
    exchanges: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

struct RecordingStream {
    inner: Box<dyn EventSource>,
    exchanges: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    index: usize,
}

#[async_trait::async_trait]
impl EventSource for RecordingStream {
    async fn next(&mut self) -> Result<Option<SseEvent>, TransportError> {
        let result = self.inner.next().await;
        let mut exchanges = self.exchanges.lock().unwrap();
        let exchange = &mut exchanges[self.index];
        match &result {
            Ok(Some(event)) => {
                let data = serde_json::from_str::<Value>(&event.data).unwrap_or(Value::String(event.data.clone()));
                exchange["sse"].as_array_mut().unwrap().push(serde_json::json!({"event": event.event, "data": data}));
            }
            Ok(None) => {}
            Err(_) => exchange["cut"] = Value::Bool(true),
        }
        result
    }
}

fn recorded_request(req: &ApiRequest) -> Value {
    let mut request = serde_json::json!({"method": req.method, "path": req.path});
    if let Some(body) = &req.body {
        request["body"] = serde_json::from_str(body).unwrap_or(Value::String(body.clone()));
    }
    let headers: serde_json::Map<String, Value> = req
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("content-type") && !n.eq_ignore_ascii_case("accept"))
        .map(|(n, v)| (n.to_ascii_lowercase(), Value::String(v.clone())))
        .collect();
    if !headers.is_empty() {
        request["headers"] = Value::Object(headers);
    }
    request
}

fn transport_name(err: &TransportError) -> &'static str {
    match err {
        TransportError::Timeout(_) => "timeout",
        _ => "connection",
    }
}

impl Recorder {
    pub fn new(inner: Box<dyn HostEffects>) -> (Self, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
        let exchanges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (Self { inner, exchanges: exchanges.clone() }, exchanges)
    }
}

#[async_trait::async_trait]
impl HostEffects for Recorder {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        let request = recorded_request(&req);
        let result = self.inner.http(req).await;
        let exchange = match &result {
            Ok(resp) => {
                let body = serde_json::from_str::<Value>(&resp.body).unwrap_or_else(|_| serde_json::json!({"raw": resp.body}));
                let headers: serde_json::Map<String, Value> = resp
                    .headers
                    .iter()
                    .filter(|(n, _)| n == "retry-after")
                    .map(|(n, v)| (n.clone(), Value::String(v.clone())))
                    .collect();
                serde_json::json!({"request": request, "response": {"status": resp.status, "headers": headers, "body": body}})
            }
            Err(err) => serde_json::json!({"request": request, "transport_error": transport_name(err)}),
        };
        self.exchanges.lock().unwrap().push(exchange);
        result
    }

    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        let request = recorded_request(&req);
        let result = self.inner.http_stream(req).await;
        let mut exchanges = self.exchanges.lock().unwrap();
        match result {
            Ok(StreamStart::Events(inner)) => {
                exchanges.push(serde_json::json!({"request": request, "sse": [], "cut": false}));
                let index = exchanges.len() - 1;
                Ok(StreamStart::Events(Box::new(RecordingStream { inner, exchanges: self.exchanges.clone(), index })))
            }
            Ok(StreamStart::Refused(resp)) => {
                let body = serde_json::from_str::<Value>(&resp.body).unwrap_or_else(|_| serde_json::json!({"raw": resp.body}));
                exchanges.push(serde_json::json!({"request": request, "response": {"status": resp.status, "body": body}}));
                Ok(StreamStart::Refused(resp))
            }
            Err(err) => {
                exchanges.push(serde_json::json!({"request": request, "transport_error": transport_name(&err)}));
                Err(err)
            }
        }
    }

    fn push_text(&mut self, delta: String) {
        self.inner.push_text(delta)
    }
    fn log(&mut self, level: LogLevel, message: String) {
        self.inner.log(level, message)
    }
    fn now_ms(&mut self) -> u64 {
        self.inner.now_ms()
    }
    async fn sleep_ms(&mut self, ms: u32) {
        self.inner.sleep_ms(ms).await
    }
    async fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.inner.recent_history().await
    }
    fn session_started(&mut self, session_id: String) {
        self.inner.session_started(session_id)
    }
}

/// Builds a case file from a recorded run: a `swapbot_case::Case`, so what is recorded is what
/// the runners read. `exchanges` are the recorder's (one JSON object per exchange, in the case
/// format).
pub fn recorded_case(name: &str, turn: &Turn, history: &[HistoryMessage], exchanges: Vec<Value>, outcome: &Result<Answer, ChatError>, pushed: &str) -> Value {
    let exchanges: Vec<case::Exchange> = exchanges
        .into_iter()
        .map(|e| serde_json::from_value(e).expect("the recorder writes exchanges in the case format"))
        .collect();
    let recorded = Case {
        name: name.to_owned(),
        call: case::Call::Chat,
        turn: case::Turn {
            user_id: turn.user_id,
            session_id: turn.session_id.clone(),
            cache_key: turn.cache_key.clone(),
            text: turn.text.clone(),
            context: turn
                .context
                .iter()
                .map(|c| case::Chunk { source: c.source.clone(), text: c.text.clone(), score: c.score })
                .collect(),
            settings: case::Settings {
                model: turn.settings.model.clone(),
                instructions: turn.settings.instructions.clone(),
                poll_interval_ms: turn.settings.poll_interval_ms,
                deadline_ms: turn.settings.deadline_ms,
                options: turn.settings.options.iter().map(|(k, v)| (k.clone(), case::OptionValue::Text(v.clone()))).collect(),
            },
        },
        history: history
            .iter()
            .map(|m| case::Message {
                role: if m.role == Role::Assistant { case::Role::Assistant } else { case::Role::User },
                text: m.text.clone(),
            })
            .collect(),
        exchanges,
        expect: case::Expect::recorded(&outcome_of(outcome)),
        pushed: (!pushed.is_empty()).then(|| pushed.to_owned()),
    };
    serde_json::to_value(&recorded).expect("a case serialises")
}
