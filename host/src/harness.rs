//! The WIT harness: runs one plugin in isolation against a case file that scripts the HTTP
//! exchanges it must make and the outcome it must reach. `swapbot plugin test`.

use std::collections::VecDeque;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use swapbot_openai::{ApiRequest, ApiResponse, SseEvent, TransportError};

use crate::plugin::effects::{EventSource, HostEffects, LogLevel, StreamStart};
use crate::plugin::{
    Answer, ChatError, ContextChunk, HistoryMessage, LoadedPlugin, PluginRuntime, Role, Settings, Turn,
};
use crate::service::kind_name;

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default = "default_call")]
    pub call: String,
    #[serde(default)]
    pub turn: CaseTurn,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub history: Vec<CaseMessage>,
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
    pub expect: Value,
    #[serde(default)]
    pub pushed: Option<String>,
}

fn default_call() -> String {
    "chat".into()
}

#[derive(Debug, Default, Deserialize)]
pub struct CaseTurn {
    #[serde(default = "default_user")]
    pub user_id: i64,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub context: Vec<CaseChunk>,
    #[serde(default)]
    pub settings: CaseSettings,
}

fn default_user() -> i64 {
    42
}

#[derive(Debug, Deserialize)]
pub struct CaseChunk {
    pub source: String,
    pub text: String,
    #[serde(default)]
    pub score: f32,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct CaseSettings {
    pub model: String,
    pub instructions: String,
    pub assistant_id: Option<String>,
    pub stream: bool,
    pub background: bool,
    pub poll_interval_ms: u32,
    pub deadline_ms: u32,
}

impl Default for CaseSettings {
    fn default() -> Self {
        Self {
            model: "gpt-4.1-mini".into(),
            instructions: "You are a helpful assistant.".into(),
            assistant_id: Some("asst_1".into()),
            stream: true,
            background: false,
            poll_interval_ms: 500,
            deadline_ms: 60_000,
        }
    }
}

impl CaseSettings {
    fn to_wit(&self) -> Settings {
        Settings {
            model: self.model.clone(),
            instructions: self.instructions.clone(),
            assistant_id: self.assistant_id.clone(),
            stream: self.stream,
            background: self.background,
            poll_interval_ms: self.poll_interval_ms,
            deadline_ms: self.deadline_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CaseMessage {
    pub role: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct Exchange {
    pub request: ExpectedRequest,
    #[serde(default)]
    pub response: Option<CannedResponse>,
    #[serde(default)]
    pub sse: Option<Vec<CannedEvent>>,
    #[serde(default)]
    pub cut: bool,
    #[serde(default)]
    pub transport_error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ExpectedRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: serde_json::Map<String, Value>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub absent: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct CannedResponse {
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: serde_json::Map<String, Value>,
    #[serde(default)]
    pub body: Value,
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
pub struct CannedEvent {
    #[serde(default)]
    pub event: Option<String>,
    pub data: Value,
}

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
    exchanges: VecDeque<Exchange>,
    history: Vec<HistoryMessage>,
    pushed: std::sync::Arc<std::sync::Mutex<String>>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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

impl ScriptedEffects {
    fn take(&mut self, req: &ApiRequest) -> Result<Exchange, TransportError> {
        self.call_no += 1;
        let Some(exchange) = self.exchanges.pop_front() else {
            let msg = format!("request #{}: unexpected {} {} (the case expects no more requests)", self.call_no, req.method, req.path);
            self.failures.lock().unwrap().push(msg.clone());
            return Err(TransportError::Refused(msg));
        };
        let mismatches = match_request(&exchange.request, req);
        if !mismatches.is_empty() {
            let msg = format!(
                "request #{}: {} {} does not match the expected {} {}:\n    {}",
                self.call_no,
                req.method,
                req.path,
                exchange.request.method,
                exchange.request.path,
                mismatches.join("\n    ")
            );
            self.failures.lock().unwrap().push(msg.clone());
            return Err(TransportError::Refused(msg));
        }
        if let Some(kind) = &exchange.transport_error {
            return Err(match kind.as_str() {
                "timeout" => TransportError::Timeout("scripted timeout".into()),
                _ => TransportError::Connection("scripted connection error".into()),
            });
        }
        Ok(exchange)
    }
}

fn canned(resp: &CannedResponse) -> ApiResponse {
    let body = match &resp.body {
        Value::Object(o) if o.len() == 1 && o.get("raw").is_some_and(Value::is_string) => {
            o["raw"].as_str().unwrap_or_default().to_owned()
        }
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let headers = resp
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
        .collect();
    ApiResponse { status: resp.status, headers, body }
}

#[async_trait::async_trait]
impl HostEffects for ScriptedEffects {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        let exchange = self.take(&req)?;
        match &exchange.response {
            Some(resp) => Ok(canned(resp)),
            None => {
                let msg = format!("request #{}: the case gives no plain response for {} {}", self.call_no, req.method, req.path);
                self.failures.lock().unwrap().push(msg.clone());
                Err(TransportError::Refused(msg))
            }
        }
    }

    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        let exchange = self.take(&req)?;
        if let Some(events) = exchange.sse {
            let events = events
                .into_iter()
                .map(|e| SseEvent {
                    event: e.event,
                    data: match e.data {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                })
                .collect();
            return Ok(StreamStart::Events(Box::new(ScriptedStream { events, cut: exchange.cut })));
        }
        match &exchange.response {
            Some(resp) if !(200..300).contains(&resp.status) => Ok(StreamStart::Refused(canned(resp))),
            _ => {
                let msg = format!("request #{}: the case gives no stream for {} {}", self.call_no, req.method, req.path);
                self.failures.lock().unwrap().push(msg.clone());
                Err(TransportError::Refused(msg))
            }
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

/// Every way `actual` differs from what the case expects.
fn match_request(expected: &ExpectedRequest, actual: &ApiRequest) -> Vec<String> {
    let mut problems = vec![];
    if !expected.method.eq_ignore_ascii_case(&actual.method) {
        problems.push(format!("method: expected {}, got {}", expected.method, actual.method));
    }
    if expected.path != actual.path {
        problems.push(format!("path: expected {}, got {}", expected.path, actual.path));
    }
    for (name, value) in &expected.headers {
        let want = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        let got = actual.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        if got.as_deref() != Some(want.as_str()) {
            problems.push(format!("header {name}: expected {want:?}, got {got:?}"));
        }
    }
    let body: Option<Value> = actual.body.as_deref().map(|b| serde_json::from_str(b).unwrap_or(Value::String(b.to_owned())));
    if let Some(want) = &expected.body {
        match &body {
            Some(got) => subset(want, got, "body", &mut problems),
            None => problems.push("body: expected one, the request has none".into()),
        }
    }
    for key in &expected.absent {
        if body.as_ref().and_then(|b| b.get(key)).is_some() {
            problems.push(format!("body.{key}: must be absent, is {}", body.as_ref().unwrap()[key]));
        }
    }
    problems
}

/// `want` ⊆ `got`: objects by key, arrays element-wise with equal length, scalars equal.
fn subset(want: &Value, got: &Value, at: &str, problems: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (key, value) in w {
                match g.get(key) {
                    Some(inner) => subset(value, inner, &format!("{at}.{key}"), problems),
                    None => problems.push(format!("{at}.{key}: missing, expected {value}")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                problems.push(format!("{at}: expected {} elements, got {}", w.len(), g.len()));
            }
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                subset(a, b, &format!("{at}[{i}]"), problems);
            }
        }
        (w, g) if w == g => {}
        (w, g) => problems.push(format!("{at}: expected {w}, got {g}")),
    }
}

fn answer_value(answer: &Answer) -> Value {
    serde_json::json!({
        "text": answer.text,
        "session_id": answer.session_id,
        "turn_id": answer.turn_id,
        "new_session": answer.new_session,
        "replayed": answer.replayed,
    })
}

fn error_value(error: &ChatError) -> Value {
    serde_json::json!({
        "kind": kind_name(error.kind),
        "retryable": error.retryable,
        "retry_after_ms": error.retry_after_ms,
        "session_id": error.session_id,
        "turn_id": error.turn_id,
        "message": error.message,
    })
}

/// Runs one case against a loaded plugin.
pub async fn run_case(runtime: &PluginRuntime, plugin: &LoadedPlugin, case: Case) -> CaseResult {
    let pushed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let history: Vec<HistoryMessage> = case
        .history
        .iter()
        .map(|m| HistoryMessage { role: if m.role == "assistant" { Role::Assistant } else { Role::User }, text: m.text.clone() })
        .collect();
    let effects = ScriptedEffects {
        exchanges: case.exchanges.into(),
        history: history.clone(),
        pushed: pushed.clone(),
        failures: failures.clone(),
        clock_ms: 1_000_000,
        call_no: 0,
    };
    let settings = case.turn.settings.to_wit();
    let outcome: Result<Value, String> = match case.call.as_str() {
        "replay" => {
            let session = case.session_id.clone().or(case.turn.session_id.clone()).unwrap_or_default();
            match runtime.replay(plugin, session, history, settings, Box::new(effects)).await {
                Ok(Ok(count)) => Ok(serde_json::json!({"ok": {"replayed": count}})),
                Ok(Err(e)) => Ok(serde_json::json!({"error": error_value(&e)})),
                Err(e) => Err(e.to_string()),
            }
        }
        _ => {
            let turn = Turn {
                user_id: case.turn.user_id,
                session_id: case.turn.session_id.clone(),
                text: case.turn.text.clone(),
                context: case
                    .turn
                    .context
                    .iter()
                    .map(|c| ContextChunk { source: c.source.clone(), text: c.text.clone(), score: c.score })
                    .collect(),
                settings,
            };
            match runtime.chat(plugin, turn, Box::new(effects)).await {
                Ok(Ok(answer)) => Ok(serde_json::json!({"ok": answer_value(&answer)})),
                Ok(Err(e)) => Ok(serde_json::json!({"error": error_value(&e)})),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let mut problems: Vec<String> = failures.lock().unwrap().clone();
    match outcome {
        Ok(actual) => {
            let mut diff = vec![];
            subset(&case.expect, &actual, "outcome", &mut diff);
            if !diff.is_empty() {
                problems.push(format!("outcome differs:\n    {}\n    actual: {actual}", diff.join("\n    ")));
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
    CaseResult { name: case.name, failures: problems }
}

/// Loads a case file (JSON).
pub fn read_case(path: &Path) -> anyhow::Result<Case> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a valid case: {e}", path.display()))
}

/// `swapbot plugin test`: prints pass/fail per case, returns whether all passed.
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
            "text": turn.text,
            "context": turn.context.iter().map(|c| serde_json::json!({"source": c.source, "text": c.text, "score": c.score})).collect::<Vec<_>>(),
            "settings": {
                "model": turn.settings.model,
                "instructions": turn.settings.instructions,
                "assistant_id": turn.settings.assistant_id,
                "stream": turn.settings.stream,
                "background": turn.settings.background,
                "poll_interval_ms": turn.settings.poll_interval_ms,
                "deadline_ms": turn.settings.deadline_ms,
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
