//! The harness case format (`plugins/<name>/cases/*.json`): one turn, the HTTP exchanges the
//! plugin must make for it (in order) with their scripted replies, and the outcome it must reach.
//!
//! Two runners read it: the plugins' native tests (`swapbot_plugin_common::testing`) and the wasm
//! harness behind `swapbot plugin test` (`host/src/harness.rs`). Both parse with [`Case::parse`],
//! answer requests with [`Script::answer`] and judge with [`judge`], so a case cannot mean one
//! thing to one runner and another to the other. The runners only convert their own types to
//! [`Request`] and [`Outcome`].
//!
//! Reading is strict (`deny_unknown_fields` everywhere): a misspelled key is an error naming the
//! key, not a silently ignored expectation.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The user id of a case turn that names none.
pub const DEFAULT_USER_ID: i64 = 42;
/// The same defaults as the plugins' `Settings::default()` (0 means the plugin's default too).
pub const DEFAULT_POLL_INTERVAL_MS: u32 = 1_000;
pub const DEFAULT_DEADLINE_MS: u32 = 300_000;

/// The WIT spellings of `error-kind`: an expected kind must be one of them.
pub const ERROR_KINDS: [&str; 15] = [
    "timeout",
    "connection",
    "rate-limited",
    "quota",
    "server",
    "session-busy",
    "session-gone",
    "api-gone",
    "auth",
    "bad-request",
    "bad-response",
    "stream-cut",
    "model-failed",
    "config",
    "context-overflow",
];

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The export the case calls. Only `chat` since contract 0.2.0 (replay happens inside it).
    #[serde(default)]
    pub call: Call,
    pub turn: Turn,
    /// What `recent-history()` returns, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
    pub expect: Expect,
    /// The text pushed to the user, all deltas joined; unchecked when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    #[default]
    Chat,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    #[serde(default = "default_user_id")]
    pub user_id: i64,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub cache_key: String,
    pub text: String,
    #[serde(default)]
    pub context: Vec<Chunk>,
    #[serde(default)]
    pub settings: Settings,
}

fn default_user_id() -> i64 {
    DEFAULT_USER_ID
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub source: String,
    pub text: String,
    #[serde(default)]
    pub score: f32,
}

/// The WIT `settings`: the common fields, and the backend's own `options` (`"stream": "false"`;
/// a JSON `false` or `3` is accepted and passed on as the text `false` or `3`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u32,
    #[serde(default = "default_deadline")]
    pub deadline_ms: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, OptionValue>,
}

fn default_poll() -> u32 {
    DEFAULT_POLL_INTERVAL_MS
}
fn default_deadline() -> u32 {
    DEFAULT_DEADLINE_MS
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            instructions: String::new(),
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            deadline_ms: DEFAULT_DEADLINE_MS,
            options: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// The options as the WIT list of (key, value).
    pub fn option_list(&self) -> Vec<(String, String)> {
        self.options
            .iter()
            .map(|(k, v)| (k.clone(), v.text()))
            .collect()
    }
}

/// An option value: the WIT carries text, a case may write a JSON bool or number for it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OptionValue {
    Text(String),
    Flag(bool),
    Number(serde_json::Number),
}

impl OptionValue {
    pub fn text(&self) -> String {
        match self {
            OptionValue::Text(s) => s.clone(),
            OptionValue::Flag(b) => b.to_string(),
            OptionValue::Number(n) => n.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub text: String,
}

/// One expected request and its reply: exactly one of `response`, `sse` (with `cut` when the
/// stream breaks after its events) or `transport_error`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub request: RequestPattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ScriptedResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<Vec<ScriptedEvent>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub cut: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_error: Option<TransportKind>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a request must be: method and path exactly; the listed headers (names in any case);
/// `body` as a subset of the JSON body (objects: the listed keys, recursively; arrays: the same
/// length, element-wise; scalars: equal); `absent` top-level body keys that must not be there.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPattern {
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
}

fn default_method() -> String {
    "GET".into()
}

/// A whole HTTP answer. `body`: JSON (sent as its text), or `{"raw": "…"}` for a body that is
/// not JSON; none is an empty body.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedResponse {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

fn default_status() -> u16 {
    200
}

impl ScriptedResponse {
    pub fn body_text(&self) -> String {
        match &self.body {
            None | Some(Value::Null) => String::new(),
            Some(Value::Object(o)) if o.len() == 1 && o.get("raw").is_some_and(Value::is_string) => {
                o["raw"].as_str().unwrap_or_default().to_owned()
            }
            Some(other) => other.to_string(),
        }
    }
}

/// One server-sent event; `data` is a string as is, or JSON sent as its text.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub data: Value,
}

impl ScriptedEvent {
    pub fn data_text(&self) -> String {
        match &self.data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    Timeout,
    Connection,
    Refused,
}

impl TransportKind {
    /// The message a runner's transport error carries.
    pub fn message(self) -> &'static str {
        match self {
            TransportKind::Timeout => "request timed out (scripted)",
            TransportKind::Connection => "connection reset (scripted)",
            TransportKind::Refused => "refused (scripted)",
        }
    }
}

/// The outcome a case expects. Only the fields given are compared; `null` expects none
/// (e.g. `"session_id": null` for a stateless backend).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Ok(ExpectAnswer),
    Error(ExpectError),
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_session: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u32>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectError {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<Option<String>>,
    /// A part of the one-line message (messages are for the log: only a part is worth pinning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_contains: Option<String>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// A key that is present is `Some`, even when its value is `null` (then `Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The WIT `usage`; every field counts (a missing one is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub cached_input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Case {
    /// Read a case file: strict JSON of this format, plus the checks serde cannot express.
    pub fn parse(text: &str) -> Result<Case, String> {
        let case: Case = serde_json::from_str(text).map_err(|e| format!("not a valid case: {e}"))?;
        case.validate()?;
        Ok(case)
    }

    fn validate(&self) -> Result<(), String> {
        for (i, ex) in self.exchanges.iter().enumerate() {
            let replies = [ex.response.is_some(), ex.sse.is_some(), ex.transport_error.is_some()];
            if replies.iter().filter(|r| **r).count() != 1 {
                return Err(format!(
                    "exchanges[{i}] ({} {}): needs exactly one of `response`, `sse`, `transport_error`",
                    ex.request.method, ex.request.path
                ));
            }
            if ex.cut && ex.sse.is_none() {
                return Err(format!("exchanges[{i}]: `cut` is only for an `sse` reply"));
            }
        }
        if let Expect::Error(e) = &self.expect
            && !ERROR_KINDS.contains(&e.kind.as_str())
        {
            return Err(format!(
                "expect.error.kind: unknown kind {:?}, expected one of {}",
                e.kind,
                ERROR_KINDS.join(", ")
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running: requests in, replies out
// ---------------------------------------------------------------------------------------------

/// A request as the plugin made it (the runner's own type, converted).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// How one request is answered, in terms every runner can turn into its own.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A 2xx stream: its events, then the end (or a break, when `cut`).
    Sse { events: Vec<Event>, cut: bool },
    Transport(TransportKind),
}

impl Exchange {
    pub fn reply(&self) -> Reply {
        if let Some(kind) = self.transport_error {
            return Reply::Transport(kind);
        }
        if let Some(events) = &self.sse {
            return Reply::Sse {
                events: events
                    .iter()
                    .map(|e| Event {
                        event: e.event.clone(),
                        data: e.data_text(),
                    })
                    .collect(),
                cut: self.cut,
            };
        }
        let r = self.response.clone().unwrap_or(ScriptedResponse {
            status: 200,
            headers: BTreeMap::new(),
            body: None,
        });
        Reply::Response {
            status: r.status,
            headers: r.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            body: r.body_text(),
        }
    }
}

impl RequestPattern {
    /// Whether `req` is this request; the first difference otherwise.
    pub fn check(&self, req: &Request) -> Result<(), String> {
        if self.method != req.method {
            return Err(format!("method {} != {}", req.method, self.method));
        }
        if self.path != req.path {
            return Err(format!("path {} != {}", req.path, self.path));
        }
        for (name, want) in &self.headers {
            let got = req
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            if got != Some(want.as_str()) {
                return Err(format!("header {name}: {got:?}, want {want:?}"));
            }
        }
        let body: Option<Value> = match &req.body {
            Some(b) => Some(serde_json::from_str(b).map_err(|e| format!("request body is not JSON: {e}"))?),
            None => None,
        };
        if let Some(want) = &self.body {
            let Some(got) = &body else {
                return Err("no request body".into());
            };
            subset(want, got, "body")?;
        }
        for key in &self.absent {
            if body.as_ref().and_then(|b| b.get(key)).is_some() {
                return Err(format!("body.{key} must be absent"));
            }
        }
        Ok(())
    }
}

/// Subset match: objects — every listed key matches recursively; arrays — same length,
/// element-wise; numbers — equal as numbers; other scalars — equal.
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

/// Split SSE text into events (`event:` and joined `data:` lines).
pub fn parse_sse_text(text: &str) -> Vec<Event> {
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
            out.push(Event {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}

/// The case's exchanges, served in order. Every mismatch is kept as a failure for [`judge`].
#[derive(Clone, Debug, Default)]
pub struct Script {
    pending: VecDeque<Exchange>,
    served: usize,
    failures: Vec<String>,
}

impl Script {
    pub fn new(exchanges: Vec<Exchange>) -> Self {
        Self {
            pending: exchanges.into(),
            served: 0,
            failures: Vec::new(),
        }
    }

    /// The reply to `req` (asked as a stream when `streamed`) when it is the request the case
    /// expects next; otherwise why not (also kept as a failure). A runner hands the plugin a
    /// transport error for an `Err`.
    ///
    /// A stream request scripted with a 2xx `response` gets its body read as SSE text (what a
    /// server's stream is on the wire); a plain request scripted with `sse` is a failure.
    pub fn answer(&mut self, req: &Request, streamed: bool) -> Result<Reply, String> {
        self.served += 1;
        let n = self.served;
        let why = match self.pending.pop_front() {
            None => format!(
                "request #{n}: unexpected request {} {} (the case expects no more requests)",
                req.method, req.path
            ),
            Some(ex) => match ex.request.check(req) {
                Ok(()) => match (ex.reply(), streamed) {
                    (Reply::Sse { .. }, false) => format!(
                        "request #{n}: {} {} is scripted as a stream, the plugin asked without one",
                        req.method, req.path
                    ),
                    (Reply::Response { status, body, .. }, true) if (200..300).contains(&status) => {
                        return Ok(Reply::Sse {
                            events: parse_sse_text(&body),
                            cut: false,
                        });
                    }
                    (reply, _) => return Ok(reply),
                },
                Err(why) => format!(
                    "request #{n}: {} {} does not match: {why}\n    got body: {}\n    want: {}",
                    req.method,
                    req.path,
                    req.body.as_deref().unwrap_or("<none>"),
                    serde_json::to_string(&ex.request).unwrap_or_default()
                ),
            },
        };
        self.failures.push(why.clone());
        Err(why)
    }

    /// Requests that did not match, in order.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The exchanges never requested.
    pub fn unused(&self) -> &VecDeque<Exchange> {
        &self.pending
    }
}

// ---------------------------------------------------------------------------------------------
// Judging
// ---------------------------------------------------------------------------------------------

/// The answer a plugin returned (the runner's own type, converted).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    pub session_id: Option<String>,
    pub turn_id: String,
    pub new_session: bool,
    pub replayed: u32,
    pub usage: Option<Usage>,
}

/// The chat-error a plugin returned; `kind` in its WIT spelling (`rate-limited`).
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u32>,
    pub session_id: Option<String>,
    pub turn_id: Option<String>,
    pub usage: Option<Usage>,
}

pub type Outcome = Result<Answer, Error>;

fn field<T: PartialEq + std::fmt::Debug>(out: &mut Vec<String>, at: &str, want: &Option<T>, got: &T) {
    if let Some(want) = want
        && want != got
    {
        out.push(format!("{at}: got {got:?}, want {want:?}"));
    }
}

/// Every difference between what a case expects and what the plugin did (empty: it passed).
pub fn compare(expect: &Expect, actual: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    match (expect, actual) {
        (Expect::Ok(w), Ok(a)) => {
            field(&mut out, "expect.ok.text", &w.text, &a.text);
            field(&mut out, "expect.ok.session_id", &w.session_id, &a.session_id);
            field(&mut out, "expect.ok.turn_id", &w.turn_id, &a.turn_id);
            field(&mut out, "expect.ok.new_session", &w.new_session, &a.new_session);
            field(&mut out, "expect.ok.replayed", &w.replayed, &a.replayed);
            field(&mut out, "expect.ok.usage", &w.usage, &a.usage);
        }
        (Expect::Error(w), Err(e)) => {
            if w.kind != e.kind {
                out.push(format!("expect.error.kind: got {:?}, want {:?} ({})", e.kind, w.kind, e.message));
            }
            field(&mut out, "expect.error.retryable", &w.retryable, &e.retryable);
            field(&mut out, "expect.error.retry_after_ms", &w.retry_after_ms, &e.retry_after_ms);
            field(&mut out, "expect.error.session_id", &w.session_id, &e.session_id);
            field(&mut out, "expect.error.turn_id", &w.turn_id, &e.turn_id);
            field(&mut out, "expect.error.usage", &w.usage, &e.usage);
            if let Some(part) = &w.message_contains
                && !e.message.contains(part.as_str())
            {
                out.push(format!("expect.error.message_contains: {part:?} not in {:?}", e.message));
            }
        }
        (Expect::Ok(_), Err(e)) => out.push(format!(
            "expect.ok: the plugin failed: {} (retryable={}): {}",
            e.kind, e.retryable, e.message
        )),
        (Expect::Error(w), Ok(a)) => out.push(format!(
            "expect.error: the plugin answered {:?} (turn {}), want a {} error",
            a.text, a.turn_id, w.kind
        )),
    }
    out
}

/// The verdict on one run of a case: request mismatches, outcome differences, the pushed text,
/// exchanges never requested. Empty: the case passed.
pub fn judge(case: &Case, actual: &Outcome, pushed: &str, script: &Script) -> Vec<String> {
    let mut out: Vec<String> = script.failures().to_vec();
    out.extend(compare(&case.expect, actual));
    if let Some(want) = &case.pushed
        && want != pushed
    {
        out.push(format!("pushed text: got {pushed:?}, want {want:?}"));
    }
    if let Some(next) = script.unused().front() {
        out.push(format!(
            "{} exchange(s) never requested; the next one: {} {}",
            script.unused().len(),
            next.request.method,
            next.request.path
        ));
    }
    out
}

impl Expect {
    /// What a recorded run would expect of itself: every field but the error message (a log
    /// line, free to change).
    pub fn recorded(actual: &Outcome) -> Expect {
        match actual {
            Ok(a) => Expect::Ok(ExpectAnswer {
                text: Some(a.text.clone()),
                session_id: Some(a.session_id.clone()),
                turn_id: Some(a.turn_id.clone()),
                new_session: Some(a.new_session),
                replayed: Some(a.replayed),
                usage: Some(a.usage),
            }),
            Err(e) => Expect::Error(ExpectError {
                kind: e.kind.clone(),
                retryable: Some(e.retryable),
                retry_after_ms: Some(e.retry_after_ms),
                session_id: Some(e.session_id.clone()),
                turn_id: Some(e.turn_id.clone()),
                message_contains: None,
                usage: Some(e.usage),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
