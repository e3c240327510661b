//! The WIT harness: runs one plugin in isolation against a case file that scripts the HTTP
//! exchanges it must make and the outcome it must reach. `swapbot plugin test`.
//!
//! The case format (reading and request matching) is the one in `swapbot_plugin_common::testing`,
//! which the plugins' native tests run too, so a case means the same against the native build and
//! the wasm one. This module answers the plugin's host calls from the script, asynchronously.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use swapbot_openai::{ApiRequest, ApiResponse, SseEvent, TransportError};
use swapbot_plugin_common as common;
use swapbot_plugin_common::testing::{self as cases, Reply};

use crate::runtime::effects::{EventSource, HostEffects, LogLevel, StreamStart};
use crate::runtime::{
    Answer, ChatError, ContextChunk, HistoryMessage, LoadedPlugin, PluginRuntime, Role, Settings, Turn,
};

pub use swapbot_plugin_common::testing::Case;

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
    exchanges: Arc<Mutex<VecDeque<cases::Exchange>>>,
    history: Vec<HistoryMessage>,
    pushed: Arc<Mutex<String>>,
    failures: Arc<Mutex<Vec<String>>>,
    clock_ms: u64,
    call_no: usize,
}

struct ScriptedStream {
    events: VecDeque<SseEvent>,
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

fn to_common(req: &ApiRequest) -> common::HttpRequest {
    common::HttpRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
    }
}

fn from_common_response(resp: common::HttpResponse) -> ApiResponse {
    ApiResponse { status: resp.status, headers: resp.headers, body: resp.body }
}

fn from_common_transport(err: common::TransportError) -> TransportError {
    match err {
        common::TransportError::Timeout(m) => TransportError::Timeout(m),
        common::TransportError::Connection(m) => TransportError::Connection(m),
        common::TransportError::Refused(m) => TransportError::Refused(m),
    }
}

impl ScriptedEffects {
    /// The next scripted reply, if the request is the one the case expects next.
    fn take(&mut self, req: &ApiRequest) -> Result<Reply, TransportError> {
        self.call_no += 1;
        let Some(exchange) = self.exchanges.lock().unwrap().pop_front() else {
            return Err(self.fail(format!(
                "request #{}: unexpected {} {} (the case expects no more requests)",
                self.call_no, req.method, req.path
            )));
        };
        if let Err(why) = cases::request_matches(&exchange.request, &to_common(req)) {
            return Err(self.fail(format!(
                "request #{}: {} {} does not match the expected {}: {why}",
                self.call_no, req.method, req.path, exchange.request
            )));
        }
        match exchange.reply {
            Reply::Transport(err) => Err(from_common_transport(err)),
            reply => Ok(reply),
        }
    }

    fn fail(&self, message: String) -> TransportError {
        self.failures.lock().unwrap().push(message.clone());
        TransportError::Refused(message)
    }
}

#[async_trait::async_trait]
impl HostEffects for ScriptedEffects {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        match self.take(&req)? {
            Reply::Response(resp) => Ok(from_common_response(resp)),
            _ => Err(self.fail(format!("request #{}: the case streams {} {}, the plugin did not ask for a stream", self.call_no, req.method, req.path))),
        }
    }

    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        match self.take(&req)? {
            Reply::Sse { events, cut } => {
                let events = events.into_iter().map(|e| SseEvent { event: e.event, data: e.data }).collect();
                Ok(StreamStart::Events(Box::new(ScriptedStream { events, cut })))
            }
            Reply::Response(resp) if !(200..300).contains(&resp.status) => {
                Ok(StreamStart::Refused(from_common_response(resp)))
            }
            _ => Err(self.fail(format!("request #{}: the case gives no stream for {} {}", self.call_no, req.method, req.path))),
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

    fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.history.clone()
    }
}

fn history_to_wit(history: &[common::HistoryMessage]) -> Vec<HistoryMessage> {
    history
        .iter()
        .map(|m| HistoryMessage {
            role: if m.role == common::Role::Assistant { Role::Assistant } else { Role::User },
            text: m.text.clone(),
        })
        .collect()
}

fn settings_to_wit(s: &common::Settings) -> Settings {
    Settings {
        model: s.model.clone(),
        instructions: s.instructions.clone(),
        poll_interval_ms: s.poll_interval_ms,
        deadline_ms: s.deadline_ms,
        options: s.options.clone(),
    }
}

fn turn_to_wit(turn: &common::Turn) -> Turn {
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
        settings: settings_to_wit(&turn.settings),
    }
}

fn usage_value(u: &crate::runtime::Usage) -> Value {
    serde_json::json!({
        "input_tokens": u.input_tokens, "cached_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens, "reasoning_tokens": u.reasoning_tokens,
    })
}

fn answer_value(answer: &Answer) -> Value {
    serde_json::json!({
        "text": answer.text,
        "session_id": answer.session_id,
        "turn_id": answer.turn_id,
        "new_session": answer.new_session,
        "replayed": answer.replayed,
        "usage": answer.usage.as_ref().map(usage_value),
    })
}

fn error_value(error: &ChatError) -> Value {
    serde_json::json!({
        "kind": crate::runtime::ErrorKind::as_str(error.kind),
        "retryable": error.retryable,
        "retry_after_ms": error.retry_after_ms,
        "session_id": error.session_id,
        "turn_id": error.turn_id,
        "message": error.message,
        "usage": error.usage.as_ref().map(usage_value),
    })
}

/// Runs one case against a loaded plugin.
pub async fn run_case(runtime: &PluginRuntime, plugin: &LoadedPlugin, case: Case) -> CaseResult {
    let pushed = Arc::new(Mutex::new(String::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let exchanges = Arc::new(Mutex::new(VecDeque::from(case.exchanges)));
    let history = history_to_wit(&case.history);
    let effects = ScriptedEffects {
        exchanges: exchanges.clone(),
        history: history.clone(),
        pushed: pushed.clone(),
        failures: failures.clone(),
        clock_ms: 1_000_000,
        call_no: 0,
    };
    let settings = settings_to_wit(&case.turn.settings);
    let _ = settings;
    let outcome: Result<Value, String> = if case.call == "replay" {
        Err("contract 0.2.0 has no replay export: chat replays the history".into())
    } else {
        match runtime.chat(plugin, turn_to_wit(&case.turn), Box::new(effects)).await {
            Ok(Ok(answer)) => Ok(serde_json::json!({"ok": answer_value(&answer)})),
            Ok(Err(e)) => Ok(serde_json::json!({"error": error_value(&e)})),
            Err(e) => Err(e.to_string()),
        }
    };
    let mut problems: Vec<String> = failures.lock().unwrap().clone();
    match outcome {
        Ok(actual) => {
            if let Err(why) = cases::subset(&cases::expected_outcome(&case.expect), &actual, "outcome") {
                problems.push(format!("outcome differs: {why}\n    actual: {actual}"));
            }
        }
        Err(err) => problems.push(format!("the plugin failed: {err}")),
    }
    if let Some(want) = &case.pushed {
        let got = pushed.lock().unwrap().clone();
        if &got != want {
            problems.push(format!("pushed text: expected {want:?}, got {got:?}"));
        }
    }
    let left = exchanges.lock().unwrap();
    if let Some(next) = left.front() {
        problems.push(format!("{} scripted exchange(s) never requested; the next one: {}", left.len(), next.request));
    }
    CaseResult { name: case.name, failures: problems }
}

/// Loads a case file (JSON).
pub fn read_case(path: &Path) -> anyhow::Result<Case> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str::<Value>(&text).map_err(|e| anyhow::anyhow!("{}: not a valid case: {e}", path.display()))?;
    Ok(Case::parse(&text))
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
    fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.inner.recent_history()
    }
    fn session_started(&mut self, session_id: String) {
        self.inner.session_started(session_id)
    }
}

/// Builds a case file from a recorded run.
pub fn recorded_case(name: &str, turn: &Turn, history: &[HistoryMessage], exchanges: Vec<Value>, outcome: &Result<Answer, ChatError>, pushed: &str) -> Value {
    let expect = match outcome {
        Ok(answer) => serde_json::json!({"ok": answer_value(answer)}),
        Err(error) => {
            let mut e = error_value(error);
            e.as_object_mut().unwrap().remove("message");
            serde_json::json!({"error": e})
        }
    };
    let mut case = serde_json::json!({
        "name": name,
        "call": "chat",
        "turn": {
            "user_id": turn.user_id,
            "session_id": turn.session_id,
            "cache_key": turn.cache_key,
            "text": turn.text,
            "context": turn.context.iter().map(|c| serde_json::json!({"source": c.source, "text": c.text, "score": c.score})).collect::<Vec<_>>(),
            "settings": {
                "model": turn.settings.model,
                "instructions": turn.settings.instructions,
                "poll_interval_ms": turn.settings.poll_interval_ms,
                "deadline_ms": turn.settings.deadline_ms,
                "options": turn.settings.options.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            },
        },
        "history": history.iter().map(|m| serde_json::json!({"role": if m.role == Role::Assistant { "assistant" } else { "user" }, "text": m.text})).collect::<Vec<_>>(),
        "exchanges": exchanges,
        "expect": expect,
    });
    if !pushed.is_empty() {
        case["pushed"] = Value::String(pushed.to_owned());
    }
    case
}
