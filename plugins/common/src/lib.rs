//! What both backend plugins share: Rust mirrors of the `swapbot:backend@0.2.0` types, the
//! [`Effects`] trait the protocol logic runs on (the host's imports in a wasm guest, a scripted
//! fake in native tests, a real client in a native baseline), error classification, JSON and
//! prompt helpers.
//!
//! Nothing here performs I/O by itself: every effect goes through [`Effects`].

use serde_json::Value;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub mod arena;
pub mod scan;

/// The wasm component side: the bindings of `wit/backend.wit`, the [`Effects`] of the host's
/// imports, and [`export_backend!`] to export a [`Backend`] from a plugin crate.
#[cfg(target_arch = "wasm32")]
pub mod guest;

/// A backend plugin's protocol logic, as [`export_backend!`] exports it. Generic over
/// [`Effects`] so the same code runs in the wasm guest, in native tests and in the benchmarks.
pub trait Backend {
    fn describe() -> Description;
    fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError>;
}

/// Export a [`Backend`] as the plugin's wasm component (`describe` and `chat`).
/// One line in the plugin crate, e.g. `swapbot_plugin_common::export_backend!(Responses);`; it
/// expands to nothing outside wasm32, so the crate stays an ordinary library natively.
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct Component;
            impl $crate::guest::bindings::Guest for Component {
                fn describe() -> $crate::guest::bindings::swapbot::backend::types::Description {
                    $crate::guest::describe::<$backend>()
                }
                fn chat(
                    turn: $crate::guest::bindings::swapbot::backend::types::Turn,
                ) -> Result<
                    $crate::guest::bindings::swapbot::backend::types::Answer,
                    $crate::guest::bindings::swapbot::backend::types::ChatError,
                > {
                    $crate::guest::chat::<$backend>(turn)
                }
            }
            $crate::guest::bindings::export!(Component with_types_in $crate::guest::bindings);
        };
    };
}

/// The contract version the plugins are built for (`package swapbot:backend@0.2.0`).
pub const CONTRACT: &str = "0.2.0";

/// Most items one create/append call on a conversation accepts.
pub const MAX_ITEMS_PER_CALL: usize = 20;

/// Option key: stream the answer (`true`/`false`, default `true`).
pub const STREAM: &str = "stream";
/// Option key: without streaming, run in the background and poll (`true`/`false`, default `false`).
pub const BACKGROUND: &str = "background";

/// Used when `poll-interval-ms` is 0.
pub const DEFAULT_POLL_INTERVAL_MS: u32 = 1_000;
/// Used when `deadline-ms` is 0.
pub const DEFAULT_DEADLINE_MS: u32 = 300_000;

// ---------------------------------------------------------------------------------------------
// Mirrors of the WIT types
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HistoryMessage {
    pub role: Role,
    pub text: String,
}

impl HistoryMessage {
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            text: text.into(),
        }
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            text: text.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ContextChunk {
    pub source: String,
    pub text: String,
    pub score: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub model: String,
    pub instructions: String,
    pub poll_interval_ms: u32,
    pub deadline_ms: u32,
    /// Backend-specific settings (key, value), as the operator wrote them.
    pub options: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            instructions: String::new(),
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            deadline_ms: DEFAULT_DEADLINE_MS,
            options: Vec::new(),
        }
    }
}

impl Settings {
    /// A backend-specific option (the last one wins when a key repeats), trimmed.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A yes/no option: `true` or `false` (any case), `default` when unset. Anything else is a
    /// `config` error rather than a guess, so a typo in the operator's file does not silently
    /// switch a backend to the other mode.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ChatError> {
        match self.option(key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ChatError::config(format!(
                "{key}={v:?}: expected `true` or `false`"
            ))),
        }
    }

    /// A whole-number option, `default` when unset; anything else is a `config` error.
    pub fn number(&self, key: &str, default: u64) -> Result<u64, ChatError> {
        match self.option(key) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().map_err(|_| {
                ChatError::config(format!("{key}={v:?}: expected a whole number"))
            }),
        }
    }

    /// Option `stream` (default true): stream the answer as server-sent events.
    pub fn stream(&self) -> Result<bool, ChatError> {
        self.flag(STREAM, true)
    }

    /// Option `background` (default false): without streaming, `background: true` and polling.
    pub fn background(&self) -> Result<bool, ChatError> {
        self.flag(BACKGROUND, false)
    }

    /// The poll interval, with 0 meaning the default.
    pub fn poll_interval(&self) -> u32 {
        if self.poll_interval_ms == 0 {
            DEFAULT_POLL_INTERVAL_MS
        } else {
            self.poll_interval_ms
        }
    }
    /// The deadline, with 0 meaning the default.
    pub fn deadline(&self) -> u64 {
        u64::from(if self.deadline_ms == 0 {
            DEFAULT_DEADLINE_MS
        } else {
            self.deadline_ms
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub user_id: i64,
    pub session_id: Option<String>,
    /// Stable per session: the prompt-cache key.
    pub cache_key: String,
    pub text: String,
    pub context: Vec<ContextChunk>,
    pub settings: Settings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    /// None for a stateless backend (its conversation is the history the host keeps).
    pub session_id: Option<String>,
    pub turn_id: String,
    pub new_session: bool,
    pub replayed: u32,
    pub usage: Option<Usage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connection,
    RateLimited,
    Quota,
    Server,
    SessionBusy,
    SessionGone,
    ApiGone,
    Auth,
    BadRequest,
    BadResponse,
    StreamCut,
    ModelFailed,
    Config,
    ContextOverflow,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::RateLimited,
        ErrorKind::Quota,
        ErrorKind::Server,
        ErrorKind::SessionBusy,
        ErrorKind::SessionGone,
        ErrorKind::ApiGone,
        ErrorKind::Auth,
        ErrorKind::BadRequest,
        ErrorKind::BadResponse,
        ErrorKind::StreamCut,
        ErrorKind::ModelFailed,
        ErrorKind::Config,
        ErrorKind::ContextOverflow,
    ];

    /// The WIT spelling, e.g. `rate-limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Quota => "quota",
            ErrorKind::Server => "server",
            ErrorKind::SessionBusy => "session-busy",
            ErrorKind::SessionGone => "session-gone",
            ErrorKind::ApiGone => "api-gone",
            ErrorKind::Auth => "auth",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::BadResponse => "bad-response",
            ErrorKind::StreamCut => "stream-cut",
            ErrorKind::ModelFailed => "model-failed",
            ErrorKind::Config => "config",
            ErrorKind::ContextOverflow => "context-overflow",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatError {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u32>,
    pub session_id: Option<String>,
    pub turn_id: Option<String>,
    /// What the API billed before the failure.
    pub usage: Option<Usage>,
}

impl ChatError {
    pub fn new(kind: ErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind,
            message: one_line(&message.into()),
            retryable,
            retry_after_ms: None,
            session_id: None,
            turn_id: None,
            usage: None,
        }
    }
    /// Attach what the failed call billed (does not overwrite usage already set).
    pub fn with_usage(mut self, usage: Option<Usage>) -> Self {
        if self.usage.is_none() {
            self.usage = usage;
        }
        self
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message, false)
    }
    pub fn bad_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadResponse, message, false)
    }
    pub fn model_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ModelFailed, message, false)
    }
    /// Attach a session the turn created (does not overwrite one already set).
    pub fn with_session(mut self, session: Option<&str>) -> Self {
        if self.session_id.is_none() {
            self.session_id = session.map(str::to_owned);
        }
        self
    }
    /// Attach the run/response id (does not overwrite one already set).
    pub fn with_turn(mut self, turn: Option<&str>) -> Self {
        if self.turn_id.is_none() {
            self.turn_id = turn.map(str::to_owned);
        }
        self
    }
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
    /// Prefix the message with what was being done, e.g. `POST /responses`.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl std::fmt::Display for ChatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (retryable={}): {}",
            self.kind.as_str(),
            self.retryable,
            self.message
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub contract: String,
    /// The host's id map file for the sessions; None for a stateless backend.
    pub id_map: Option<String>,
    /// How the host names the session id in logs ("thread_id" or "conversation_id").
    pub session_label: String,
    /// How the host names the turn id in logs ("run_id" or "response_id").
    pub turn_label: String,
}

// ---------------------------------------------------------------------------------------------
// Mirrors of the host interface
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    /// Relative to the OpenAI base URL, e.g. `/responses` (with a query string when any).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl HttpRequest {
    pub fn new(method: &str, path: impl Into<String>) -> Self {
        Self {
            method: method.to_owned(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }
    pub fn post(path: impl Into<String>) -> Self {
        Self::new("POST", path)
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    /// Set a JSON body and `Content-Type: application/json`.
    pub fn json(mut self, body: &Value) -> Self {
        // `to_string` rather than `Display`: no formatter between the serializer and the buffer.
        self.body = Some(serde_json::to_string(body).unwrap_or_default());
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            self.headers
                .push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        self
    }
    /// `METHOD /path` for messages.
    pub fn what(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransportError {
    Timeout(String),
    Connection(String),
    /// The host refused the request (e.g. a path outside the API).
    Refused(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The `event-stream` resource: the events of a 2xx streamed answer.
pub trait EventSource {
    /// The next event; `None` at the end of the stream. An error means the stream broke.
    fn next_event(&mut self) -> Result<Option<SseEvent>, TransportError>;
}

pub enum StreamStart<S> {
    /// A 2xx answer: its events follow.
    Events(S),
    /// Any other status: the whole response.
    Refused(HttpResponse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Everything the protocol logic may do outside itself: exactly the host interface.
pub trait Effects {
    type Stream: EventSource;
    fn http(&mut self, req: HttpRequest) -> Result<HttpResponse, TransportError>;
    fn http_stream(
        &mut self,
        req: HttpRequest,
    ) -> Result<StreamStart<Self::Stream>, TransportError>;
    /// Show a piece of answer text to the user while it streams.
    fn push_text(&mut self, delta: &str);
    fn log(&mut self, level: Level, msg: &str);
    /// Milliseconds on a monotonic clock.
    fn now_ms(&mut self) -> u64;
    fn sleep_ms(&mut self, ms: u32);
    /// The user's earlier messages, oldest first.
    fn recent_history(&mut self) -> Vec<HistoryMessage>;
    /// Tell the host a session now exists (so it is kept whatever happens to the turn next).
    fn session_started(&mut self, _session_id: &str) {}
}

// ---------------------------------------------------------------------------------------------
// Error classification
// ---------------------------------------------------------------------------------------------

/// The parts of an OpenAI error (`{error:{message,type,code,param}}`, or the same fields at the
/// top level as in a stream `error` event).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiError {
    pub message: String,
    pub kind: String,
    pub code: String,
}

impl ApiError {
    /// Read an error object from a parsed value: `{error:{...}}` or the fields at the top level.
    pub fn from_value(v: &Value) -> ApiError {
        let obj = match v.get("error") {
            Some(e) if e.is_object() => e,
            _ => v,
        };
        let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let message = match obj.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => match v.get("error") {
                Some(Value::String(m)) => m.clone(),
                _ => String::new(),
            },
        };
        ApiError {
            message,
            kind: s("type"),
            code: s("code"),
        }
    }

    /// Read an error from a response body (JSON or not).
    pub fn from_body(body: &str) -> ApiError {
        match serde_json::from_str::<Value>(body) {
            Ok(v) => ApiError::from_value(&v),
            Err(_) => ApiError {
                message: truncate(body.trim(), 200),
                ..Default::default()
            },
        }
    }

    fn describe(&self) -> String {
        let mut s = self.message.clone();
        let tag = if !self.code.is_empty() {
            &self.code
        } else {
            &self.kind
        };
        if !tag.is_empty() {
            if s.is_empty() {
                s = tag.clone();
            } else {
                s = format!("{s} ({tag})");
            }
        }
        s
    }

    /// A thread or conversation with a turn in progress.
    pub fn is_session_busy(&self) -> bool {
        if self.code == "conversation_locked" {
            return true;
        }
        let m = self.message.to_ascii_lowercase();
        m.contains("already has an active run")
            || (m.contains("while a run") && m.contains("is active"))
            || m.contains("conversation_locked")
    }

    /// The input does not fit the model's context window.
    pub fn is_context_overflow(&self) -> bool {
        self.code == "context_length_exceeded"
    }

    pub fn is_quota(&self) -> bool {
        self.code == "insufficient_quota" || self.kind == "insufficient_quota"
    }

    /// The error text says the endpoint/API itself no longer exists.
    pub fn says_api_gone(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        [
            "has been shut down",
            "was shut down",
            "has been deprecated",
            "has been removed",
            "no longer available",
            "no longer supported",
            "api is gone",
            "endpoint is gone",
            "sunset",
        ]
        .iter()
        .any(|p| m.contains(p))
            || matches!(
                self.code.as_str(),
                "api_deprecated" | "endpoint_deprecated" | "api_gone"
            )
    }

    /// A one-line detail: "message (code)", either alone, or "" when both are empty.
    pub fn detail(&self) -> String {
        match (self.code.is_empty(), self.message.is_empty()) {
            (true, true) => String::new(),
            (false, true) => self.code.clone(),
            (true, false) => self.message.clone(),
            (false, false) => format!("{} ({})", self.message, self.code),
        }
    }
}

/// Parse `Retry-After` (seconds, possibly fractional) or `retry-after-ms`.
pub fn retry_after_ms(resp: &HttpResponse) -> Option<u32> {
    if let Some(ms) = resp
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(ms.min(u32::MAX as f64) as u32);
    }
    let secs = resp.header("retry-after")?.trim().parse::<f64>().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some((secs * 1000.0).min(u32::MAX as f64) as u32)
}

/// Classify a non-2xx HTTP answer. `what` is e.g. `POST /responses` (for the message).
pub fn classify_http(what: &str, resp: &HttpResponse) -> ChatError {
    let api = ApiError::from_body(&resp.body);
    let status = resp.status;
    let detail = api.describe();
    let msg = if detail.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {detail}")
    };
    let (kind, retryable) = match status {
        429 if api.is_quota() => (ErrorKind::Quota, false),
        429 => (ErrorKind::RateLimited, true),
        401 | 403 => (ErrorKind::Auth, false),
        400..=499 if api.is_context_overflow() => (ErrorKind::ContextOverflow, false),
        408 | 409 | 500..=599 => (ErrorKind::Server, true),
        400..=499 if api.is_session_busy() => (ErrorKind::SessionBusy, true),
        400..=499 => (ErrorKind::BadRequest, false),
        _ => (ErrorKind::BadResponse, false),
    };
    let mut err = ChatError::new(kind, msg, retryable);
    if kind == ErrorKind::RateLimited || kind == ErrorKind::Server {
        err.retry_after_ms = retry_after_ms(resp);
    }
    err
}

/// Classify an error carried in a stream (`error` event) or a failed response object, by code.
/// Unknown codes are server errors (retryable: the caller gates retries on text already shown).
pub fn classify_api_error(what: &str, api: &ApiError) -> ChatError {
    let (kind, retryable) = match (api.code.as_str(), api.kind.as_str()) {
        ("insufficient_quota", _) | (_, "insufficient_quota") => (ErrorKind::Quota, false),
        ("rate_limit_exceeded", _) | (_, "rate_limit_exceeded") | (_, "rate_limit_error") => {
            (ErrorKind::RateLimited, true)
        }
        ("conversation_locked", _) => (ErrorKind::SessionBusy, true),
        ("context_length_exceeded", _) => (ErrorKind::ContextOverflow, false),
        _ if api.is_session_busy() => (ErrorKind::SessionBusy, true),
        ("invalid_api_key", _) | (_, "authentication_error") | (_, "permission_error") => {
            (ErrorKind::Auth, false)
        }
        (_, "invalid_request_error") => (ErrorKind::BadRequest, false),
        _ => (ErrorKind::Server, true),
    };
    let detail = api.describe();
    let detail = if detail.is_empty() {
        "error".to_owned()
    } else {
        detail
    };
    ChatError::new(kind, format!("{what}: {detail}"), retryable)
}

/// Classify a transport failure.
/// Why a run or a response ended unfinished: `incomplete_details.reason` for "incomplete",
/// else the error object under `error_field` ("" when there is none).
pub fn unfinished_detail(object: &Value, status: &str, error_field: &str) -> String {
    if status == "incomplete" {
        return object
            .pointer("/incomplete_details/reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
    }
    object.get(error_field).map(ApiError::from_value).unwrap_or_default().detail()
}

pub fn classify_transport(what: &str, err: &TransportError) -> ChatError {
    match err {
        TransportError::Timeout(m) => {
            ChatError::new(ErrorKind::Timeout, format!("{what}: timed out: {m}"), true)
        }
        TransportError::Connection(m) => ChatError::new(
            ErrorKind::Connection,
            format!("{what}: connection failed: {m}"),
            true,
        ),
        TransportError::Refused(m) => ChatError::new(
            ErrorKind::Config,
            format!("{what}: refused by the host: {m}"),
            false,
        ),
    }
}

/// Whether an error while polling (a GET) is worth another poll rather than giving up.
pub fn is_transient(err: &ChatError) -> bool {
    matches!(
        err.kind,
        ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Server | ErrorKind::RateLimited
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP + JSON helpers
// ---------------------------------------------------------------------------------------------

/// Perform a request and return the parsed JSON of a 2xx answer; classify everything else.
/// `on_status` may turn a particular non-2xx answer into a specific error first.
pub fn call_json<E: Effects>(
    fx: &mut E,
    req: HttpRequest,
    on_status: impl FnOnce(&HttpResponse) -> Option<ChatError>,
) -> Result<Value, ChatError> {
    let (what, resp) = call(fx, req, on_status)?;
    parse_json(&what, &resp.body)
}

/// Like [`call_json`] for an answer nobody reads: it must be JSON, but is not built.
pub fn call_json_unused<E: Effects>(
    fx: &mut E,
    req: HttpRequest,
    on_status: impl FnOnce(&HttpResponse) -> Option<ChatError>,
) -> Result<(), ChatError> {
    let (what, resp) = call(fx, req, on_status)?;
    parse_body::<serde::de::IgnoredAny>(&what, &resp.body).map(|_| ())
}

/// Like [`call_json`], the 2xx answer unparsed (for a caller that reads it into types).
pub fn call_ok<E: Effects>(
    fx: &mut E,
    req: HttpRequest,
    on_status: impl FnOnce(&HttpResponse) -> Option<ChatError>,
) -> Result<HttpResponse, ChatError> {
    call(fx, req, on_status).map(|(_, resp)| resp)
}

/// The request's `METHOD /path` and its 2xx answer.
fn call<E: Effects>(
    fx: &mut E,
    req: HttpRequest,
    on_status: impl FnOnce(&HttpResponse) -> Option<ChatError>,
) -> Result<(String, HttpResponse), ChatError> {
    let what = req.what();
    fx.log(Level::Debug, &what);
    let resp = fx.http(req).map_err(|e| classify_transport(&what, &e))?;
    if let Some(id) = resp.header("x-request-id") {
        fx.log(
            Level::Debug,
            &format!("{what}: HTTP {} x-request-id={id}", resp.status),
        );
    }
    if !resp.is_success() {
        if let Some(err) = on_status(&resp) {
            return Err(err);
        }
        return Err(classify_http(&what, &resp));
    }
    Ok((what, resp))
}

/// Parse a JSON body; a parse failure is a bad-response error.
pub fn parse_json(what: &str, body: &str) -> Result<Value, ChatError> {
    parse_body(what, body)
}

/// Like [`parse_json`], into any type (`IgnoredAny` checks that it is JSON without building it).
pub fn parse_body<'a, T: serde::Deserialize<'a>>(what: &str, body: &'a str) -> Result<T, ChatError> {
    serde_json::from_str(body).map_err(|e| {
        ChatError::bad_response(format!(
            "{what}: body is not JSON ({e}): {}",
            truncate(body.trim(), 80)
        ))
    })
}

/// A required string field.
pub fn req_str<'a>(what: &str, v: &'a Value, key: &str) -> Result<&'a str, ChatError> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ChatError::bad_response(format!("{what}: answer has no `{key}`")))
}

pub fn opt_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A JSON string field read straight from the input: borrowed when it has no escapes, owned
/// when it does. A stream event's few fields are read this way, without building the rest of
/// the event as a [`Value`] (a map of owned strings per event was most of a streamed turn's
/// work, natively and in wasm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonStr<'a>(pub std::borrow::Cow<'a, str>);

impl std::ops::Deref for JsonStr<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// `…_tokens_details.cached_tokens` of a usage object (Responses input, Chat Completions and
/// Assistants prompt), read into types.
#[derive(serde::Deserialize)]
pub struct CachedTokens {
    #[serde(default)]
    pub cached_tokens: u64,
}

/// `…_tokens_details.reasoning_tokens` of a usage object, read into types.
#[derive(serde::Deserialize)]
pub struct ReasoningTokens {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// Percent-encode an id for use as one path segment.
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Collapse a message to one line and bound its length.
pub fn one_line(s: &str) -> String {
    let joined: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&joined, 400)
}

/// Cut a string to at most `max` chars (on a char boundary), with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

// ---------------------------------------------------------------------------------------------
// Prompt assembly
// ---------------------------------------------------------------------------------------------

pub const CONTEXT_HEADER: &str = "\n\nKnowledge base context (use it when relevant):\n";

/// Where a turn's knowledge-base context goes in the prompt (option `context-layout`).
///
/// The API caches the longest repeated prefix of a prompt, and the prompt starts with
/// `instructions`: context there changes the prefix every turn, so nothing after it (the whole
/// conversation) is ever cached. In the turn's input it comes after the cached prefix
/// (measured in `bench/results.md`: "billed input tokens").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextLayout {
    /// Appended to `instructions` (the layout of 0.1 plugins, and the Assistants default: the
    /// run's `additional_instructions`, as the old bot sent it).
    Instructions,
    /// After the user's message, in the same input message (the Responses default).
    Input,
}

impl ContextLayout {
    pub const OPTION: &'static str = "context-layout";

    /// The layout the settings ask for, or the backend's `default`.
    pub fn of(settings: &Settings, default: ContextLayout) -> Result<ContextLayout, ChatError> {
        match settings.option(Self::OPTION) {
            None => Ok(default),
            Some("input") => Ok(ContextLayout::Input),
            Some("instructions") => Ok(ContextLayout::Instructions),
            Some(other) => Err(ChatError::config(format!(
                "{}={other:?}: expected `input` or `instructions`",
                Self::OPTION
            ))),
        }
    }
}

/// [`CONTEXT_HEADER`] and one line per chunk, `[n] (source) text` (n from 1); empty without
/// chunks. Line breaks inside a chunk become spaces (one line per chunk).
pub fn context_block(context: &[ContextChunk]) -> String {
    if context.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = context
        .iter()
        .enumerate()
        .map(|(i, c)| format!("[{}] ({}) {}", i + 1, flatten(&c.source), flatten(&c.text)))
        .collect();
    format!("{CONTEXT_HEADER}{}", lines.join("\n"))
}

/// `instructions`, followed by the [`context_block`] when there is context.
pub fn build_instructions(instructions: &str, context: &[ContextChunk]) -> String {
    let mut out = instructions.to_owned();
    out.push_str(&context_block(context));
    out
}

/// Line breaks to single spaces, ends trimmed; other whitespace kept.
fn flatten(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_break = false;
    for ch in s.trim().chars() {
        if ch == '\n' || ch == '\r' {
            if !in_break {
                // drop trailing spaces before the break
                while out.ends_with([' ', '\t']) {
                    out.pop();
                }
                out.push(' ');
                in_break = true;
            }
        } else if in_break && (ch == ' ' || ch == '\t') {
            // skip indentation after a break
        } else {
            in_break = false;
            out.push(ch);
        }
    }
    out
}

/// History messages worth replaying (empty texts are skipped: the API rejects empty content).
pub fn replayable(history: &[HistoryMessage]) -> Vec<&HistoryMessage> {
    history
        .iter()
        .filter(|m| !m.text.trim().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: body.to_owned(),
        }
    }

    #[test]
    fn classify_429_retry_after() {
        let e = classify_http(
            "POST /responses",
            &resp(
                429,
                &[("Retry-After", "2")],
                r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            ),
        );
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert!(e.retryable);
        assert_eq!(e.retry_after_ms, Some(2000));
        let e = classify_http("x", &resp(429, &[("retry-after", "0.5")], "{}"));
        assert_eq!(e.retry_after_ms, Some(500));
    }

    #[test]
    fn classify_quota() {
        let e = classify_http(
            "x",
            &resp(
                429,
                &[],
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            ),
        );
        assert_eq!(e.kind, ErrorKind::Quota);
        assert!(!e.retryable);
        assert_eq!(e.retry_after_ms, None);
    }

    #[test]
    fn classify_statuses() {
        for (s, k, r) in [
            (500, ErrorKind::Server, true),
            (502, ErrorKind::Server, true),
            (408, ErrorKind::Server, true),
            (409, ErrorKind::Server, true),
            (401, ErrorKind::Auth, false),
            (403, ErrorKind::Auth, false),
            (400, ErrorKind::BadRequest, false),
            (422, ErrorKind::BadRequest, false),
        ] {
            let e = classify_http("x", &resp(s, &[], "<html>oops</html>"));
            assert_eq!((e.kind, e.retryable), (k, r), "status {s}");
        }
    }

    #[test]
    fn classify_busy() {
        let e = classify_http(
            "x",
            &resp(
                400,
                &[],
                r#"{"error":{"message":"Another response is in progress","type":"invalid_request_error","code":"conversation_locked"}}"#,
            ),
        );
        assert_eq!((e.kind, e.retryable), (ErrorKind::SessionBusy, true));
        let e = classify_http(
            "x",
            &resp(
                400,
                &[],
                r#"{"error":{"message":"Thread thread_1 already has an active run run_2.","type":"invalid_request_error","code":null}}"#,
            ),
        );
        assert_eq!(e.kind, ErrorKind::SessionBusy);
        let e = classify_http(
            "x",
            &resp(
                400,
                &[],
                r#"{"error":{"message":"Can't add messages to thread_1 while a run run_2 is active.","type":"invalid_request_error"}}"#,
            ),
        );
        assert_eq!(e.kind, ErrorKind::SessionBusy);
    }

    #[test]
    fn classify_transport_errors() {
        let e = classify_transport("x", &TransportError::Timeout("t".into()));
        assert_eq!((e.kind, e.retryable), (ErrorKind::Timeout, true));
        let e = classify_transport("x", &TransportError::Connection("c".into()));
        assert_eq!((e.kind, e.retryable), (ErrorKind::Connection, true));
    }

    #[test]
    fn api_error_shapes() {
        let a = ApiError::from_value(
            &serde_json::json!({"type":"error","code":"server_error","message":"boom","param":null}),
        );
        assert_eq!(
            (a.code.as_str(), a.message.as_str()),
            ("server_error", "boom")
        );
        let a = ApiError::from_value(
            &serde_json::json!({"type":"error","error":{"type":"invalid_request_error","code":"conversation_locked","message":"m"}}),
        );
        assert_eq!(
            (a.code.as_str(), a.kind.as_str()),
            ("conversation_locked", "invalid_request_error")
        );
        assert_eq!(classify_api_error("s", &a).kind, ErrorKind::SessionBusy);
    }

    #[test]
    fn instructions_with_context() {
        let ctx = vec![
            ContextChunk {
                source: "a.md".into(),
                text: "Alpha\nbeta ".into(),
                score: 0.9,
            },
            ContextChunk {
                source: "b.md".into(),
                text: "Gamma".into(),
                score: 0.5,
            },
        ];
        assert_eq!(
            build_instructions("Be brief.", &ctx),
            "Be brief.\n\nKnowledge base context (use it when relevant):\n[1] (a.md) Alpha beta\n[2] (b.md) Gamma"
        );
        assert_eq!(build_instructions("Be brief.", &[]), "Be brief.");
    }

    #[test]
    fn flags_are_strict() {
        let with = |v: &str| Settings {
            options: vec![("stream".into(), v.into())],
            ..Settings::default()
        };
        assert!(Settings::default().stream().unwrap());
        assert!(!Settings::default().background().unwrap());
        assert!(!with("false").stream().unwrap());
        assert!(with(" TRUE ").stream().unwrap());
        let e = with("yes").stream().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("stream=\"yes\""), "{}", e.message);
        let n = Settings {
            options: vec![("history-tokens".into(), "12k".into())],
            ..Settings::default()
        };
        assert_eq!(n.number("history-tokens", 6000).unwrap_err().kind, ErrorKind::Config);
        assert_eq!(Settings::default().number("history-tokens", 6000).unwrap(), 6000);
    }

    #[test]
    fn kinds_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn path_segments() {
        assert_eq!(path_segment("conv_ab-1"), "conv_ab-1");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
