//! The legacy Assistants v2 backend (threads and runs), as the old Python bot did it.
//!
//! OpenAI shut the Assistants API down on 2026-08-26; this path stays for rollback and for
//! Assistants-compatible servers, and says clearly when the API is gone.
//!
//! The logic is generic over [`Effects`]: the wasm guest runs it on the host's imports, native
//! tests on a scripted fake.

use serde_json::{Value, json};
pub use swapbot_plugin_common as common;
use swapbot_plugin_common::*;

pub const NAME: &str = "assistants";
pub const ID_MAP: &str = "user_threads.json";
/// Option key: the assistant that runs on the threads (required).
pub const ASSISTANT_ID: &str = "assistant-id";

/// The Assistants backend, as the wasm component exports it.
pub struct Assistants;

impl Backend for Assistants {
    fn describe() -> Description {
        describe()
    }
    fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError> {
        chat(fx, turn)
    }
}

swapbot_plugin_common::export_backend!(Assistants);

/// The message of an `api-gone` error.
pub const API_GONE: &str = "the OpenAI Assistants API was shut down on 2026-08-26; \
     set USE_OPENAI_RESPONSES=true to use the Responses backend";

/// How many messages to read back after a completed run.
const MESSAGES_LIMIT: u32 = 20;

pub fn describe() -> Description {
    Description {
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        contract: CONTRACT.into(),
        id_map: Some(ID_MAP.into()),
        session_label: "thread_id".into(),
        turn_label: "run_id".into(),
    }
}

/// A request with `OpenAI-Beta: assistants=v2` (and a JSON body when given).
fn request(method: &str, path: String, body: Option<&Value>) -> HttpRequest {
    let req = HttpRequest::new(method, path).header("OpenAI-Beta", "assistants=v2");
    match body {
        Some(b) => req.json(b),
        None => req.header("Content-Type", "application/json"),
    }
}

fn thread_path(thread: &str) -> String {
    format!("/threads/{}", path_segment(thread))
}

/// An api-gone error, when a status or an error text says the Assistants API no longer exists.
fn api_gone(resp: &HttpResponse, creating_thread: bool) -> Option<ChatError> {
    let api = ApiError::from_body(&resp.body);
    let gone = resp.status == 410
        || (creating_thread && resp.status == 404)
        || ((400..500).contains(&resp.status) && api.says_api_gone());
    gone.then(|| {
        ChatError::new(
            ErrorKind::ApiGone,
            format!("{API_GONE} (HTTP {})", resp.status),
            false,
        )
    })
}

/// POST /threads.
pub fn create_thread<E: Effects>(fx: &mut E) -> Result<String, ChatError> {
    let v = call_json(
        fx,
        request("POST", "/threads".into(), Some(&json!({}))),
        |r| api_gone(r, true),
    )?;
    let id = req_str("POST /threads", &v, "id")?.to_owned();
    fx.session_started(&id);
    fx.log(Level::Info, &format!("created thread {id}"));
    Ok(id)
}

/// POST /threads/{id}/messages. `Ok(false)` when the thread is gone (404).
fn add_message<E: Effects>(
    fx: &mut E,
    thread: &str,
    role: Role,
    text: &str,
) -> Result<bool, ChatError> {
    let body = json!({"role": role.as_str(), "content": text});
    let mut gone = false;
    let r = call_json_unused(
        fx,
        request(
            "POST",
            format!("{}/messages", thread_path(thread)),
            Some(&body),
        ),
        |r| {
            if let Some(e) = api_gone(r, false) {
                return Some(e);
            }
            gone = r.status == 404;
            None
        },
    );
    match r {
        Ok(_) => Ok(true),
        Err(_) if gone => Ok(false),
        Err(e) => Err(e),
    }
}

/// The replay into a new thread: messages oldest first.
fn replay<E: Effects>(fx: &mut E, thread: &str, history: &[HistoryMessage]) -> Result<u32, ChatError> {
    let mut n = 0;
    for m in replayable(history) {
        if !add_message(fx, thread, m.role, &m.text)? {
            return Err(ChatError::new(
                ErrorKind::SessionGone,
                format!("thread {thread} is gone (404)"),
                false,
            ));
        }
        n += 1;
    }
    Ok(n)
}

/// The thread a turn runs in, with the user's message added.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub new: bool,
    pub replayed: u32,
}

fn new_thread_with_message<E: Effects>(fx: &mut E, text: &str) -> Result<Session, ChatError> {
    let id = create_thread(fx)?;
    let history = fx.recent_history();
    let inner = |fx: &mut E| -> Result<u32, ChatError> {
        let n = replay(fx, &id, &history)?;
        if !add_message(fx, &id, Role::User, text)? {
            return Err(ChatError::new(
                ErrorKind::SessionGone,
                format!("new thread {id} is gone (404)"),
                false,
            ));
        }
        Ok(n)
    };
    match inner(fx) {
        Ok(replayed) => Ok(Session {
            id,
            new: true,
            replayed,
        }),
        Err(e) => Err(e.with_session(Some(&id))),
    }
}

/// Add the user's message to the stored thread, or to a new one when there is none or it is gone.
pub fn thread_with_message<E: Effects>(
    fx: &mut E,
    session_id: Option<&str>,
    text: &str,
) -> Result<Session, ChatError> {
    if let Some(id) = session_id.filter(|s| !s.is_empty()) {
        if add_message(fx, id, Role::User, text)? {
            return Ok(Session {
                id: id.to_owned(),
                new: false,
                replayed: 0,
            });
        }
        fx.log(
            Level::Info,
            &format!("thread {id} is gone (404): starting a new one"),
        );
    }
    new_thread_with_message(fx, text)
}

/// The text of assistant messages (`content[].text.value`, type "text") from a list answer in
/// descending order, joined in creation order.
pub fn run_text(list: &Value) -> String {
    let mut texts: Vec<String> = Vec::new();
    let data = list
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for msg in data.iter().rev() {
        if msg.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        for part in msg
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("type").and_then(Value::as_str) == Some("text")
                && let Some(t) = part.pointer("/text/value").and_then(Value::as_str)
            {
                let t = t.trim();
                if !t.is_empty() {
                    texts.push(t.to_owned());
                }
            }
        }
    }
    texts.join("\n\n").trim().to_owned()
}

/// A run's usage (`prompt_tokens` is every token of the thread the run saw). The spec has no
/// cached or reasoning detail for runs; one is read if a server sends it.
fn run_usage(run: &Value) -> Option<Usage> {
    let u = run.get("usage").filter(|u| u.is_object())?;
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        input_tokens: n("/prompt_tokens"),
        cached_input_tokens: n("/prompt_tokens_details/cached_tokens"),
        output_tokens: n("/completion_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    })
}

/// The run's `truncation_strategy` from the option `truncation-strategy`: unset keeps the
/// Assistants default (`auto`); `auto`, or `last_messages:N`.
pub fn truncation_strategy(settings: &Settings) -> Result<Option<Value>, ChatError> {
    let Some(v) = settings.option("truncation-strategy") else {
        return Ok(None);
    };
    if v == "auto" {
        return Ok(Some(json!({"type": "auto"})));
    }
    let n = v
        .strip_prefix("last_messages:")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| *n >= 1);
    match n {
        Some(n) => Ok(Some(json!({"type": "last_messages", "last_messages": n}))),
        None => Err(ChatError::config(format!(
            "truncation-strategy={v:?}: expected `auto` or `last_messages:N` (N at least 1)"
        ))),
    }
}

fn run_failed(run: &Value, run_id: &str, status: &str) -> ChatError {
    let detail = unfinished_detail(run, status, "last_error");
    let msg = if detail.is_empty() {
        format!("run {run_id} {status}")
    } else {
        format!("run {run_id} {status}: {detail}")
    };
    ChatError::model_failed(msg).with_usage(run_usage(run))
}

/// One user turn.
pub fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError> {
    let Some(assistant_id) = turn.settings.option(ASSISTANT_ID) else {
        return Err(ChatError::config(
            "no assistant id configured for the Assistants backend (option `assistant-id`, ASSISTANT_ID)",
        ));
    };
    let layout = ContextLayout::of(&turn.settings, ContextLayout::Instructions)?;
    let truncation = truncation_strategy(&turn.settings)?;
    // With the input layout the context rides in the user's message (and so stays in the
    // thread); with the instructions layout it is the run's `additional_instructions`.
    let message = match layout {
        ContextLayout::Input => format!("{}{}", turn.text, context_block(&turn.context)),
        ContextLayout::Instructions => turn.text.clone(),
    };
    let session = thread_with_message(fx, turn.session_id.as_deref(), &message)?;
    let created = if session.new {
        Some(session.id.as_str())
    } else {
        None
    };
    let mut body = json!({"assistant_id": assistant_id});
    let extra = match layout {
        ContextLayout::Instructions => build_instructions(&turn.settings.instructions, &turn.context),
        ContextLayout::Input => turn.settings.instructions.clone(),
    };
    if !extra.is_empty() {
        body["additional_instructions"] = Value::String(extra);
    }
    if let Some(truncation) = truncation {
        body["truncation_strategy"] = truncation;
    }
    run_turn(fx, turn, body, &session).map_err(|e| e.with_session(created))
}

fn run_turn<E: Effects>(
    fx: &mut E,
    turn: &Turn,
    body: Value,
    session: &Session,
) -> Result<Answer, ChatError> {
    let thread = session.id.as_str();
    let started = fx.now_ms();
    let runs = format!("{}/runs", thread_path(thread));
    let created = call_ok(fx, request("POST", runs.clone(), Some(&body)), |r| api_gone(r, false))?;
    let mut run = Run::parse("POST /threads/…/runs", &created.body)?;
    let run_id = match run.id.take() {
        Some(id) => id,
        None => req_str("POST /threads/…/runs", &run.value()?, "id")?.to_owned(),
    };
    let rid = Some(run_id.as_str());
    let run_path = format!("{runs}/{}", path_segment(&run_id));
    let poll = turn.settings.poll_interval();
    let deadline = turn.settings.deadline();
    loop {
        let status = run.status.clone().unwrap_or_else(|| "queued".to_owned());
        match status.as_str() {
            "completed" => break,
            "failed" | "cancelled" | "expired" | "incomplete" => {
                return Err(run_failed(&run.value()?, &run_id, &status).with_turn(rid));
            }
            "requires_action" => {
                cancel(fx, &run_path);
                return Err(ChatError::model_failed(format!(
                    "run {run_id} requires action (tools are not supported): cancelled"
                ))
                .with_turn(rid));
            }
            _ => {}
        }
        let elapsed = fx.now_ms().saturating_sub(started);
        if elapsed >= deadline {
            cancel(fx, &run_path);
            return Err(ChatError::new(
                ErrorKind::Timeout,
                format!("run {run_id} still {status} after {elapsed} ms: cancelled"),
                false,
            )
            .with_turn(rid));
        }
        fx.sleep_ms(u64::from(poll).min(deadline - elapsed).max(1) as u32);
        match call_ok(fx, request("GET", run_path.clone(), None), |_| None)
            .and_then(|r| Run::parse("GET /threads/…/runs/…", &r.body))
        {
            Ok(polled) => run = polled,
            Err(e) if is_transient(&e) => {
                fx.log(Level::Warn, &format!("polling run {run_id}: {e}"))
            }
            Err(e) => return Err(e.with_turn(rid)),
        }
    }
    let list_path = format!(
        "{}/messages?order=desc&limit={MESSAGES_LIMIT}&run_id={}",
        thread_path(thread),
        path_segment(&run_id)
    );
    let list = call_ok(fx, request("GET", list_path, None), |_| None).map_err(|e| e.with_turn(rid))?;
    let text = match serde_json::from_str::<WireList>(&list.body) {
        Ok(wire) => wire.text(),
        Err(_) => run_text(&parse_json("GET /threads/…/messages", &list.body).map_err(|e| e.with_turn(rid))?),
    };
    if text.is_empty() {
        return Err(ChatError::model_failed(format!(
            "run {run_id} completed without assistant text"
        ))
        .with_turn(rid));
    }
    Ok(Answer {
        text,
        session_id: Some(thread.to_owned()),
        turn_id: run_id.clone(),
        new_session: session.new,
        replayed: session.replayed,
        usage: run.usage,
    })
}

/// A run object as the turn reads it: id, status and usage into types, the rest skipped (a
/// run echoes its whole assistant configuration); the body is kept for the rare reader of
/// anything else ([`Run::value`]). A run whose fields do not fit these types is read as a
/// [`Value`], with the same result.
struct Run {
    id: Option<String>,
    status: Option<String>,
    usage: Option<Usage>,
    body: String,
}

impl Run {
    fn parse(what: &str, body: &str) -> Result<Run, ChatError> {
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            #[serde(borrow)]
            id: Option<JsonStr<'a>>,
            #[serde(borrow)]
            status: Option<JsonStr<'a>>,
            usage: Option<WireUsage>,
        }
        #[derive(serde::Deserialize)]
        struct WireUsage {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            prompt_tokens_details: Option<CachedTokens>,
            #[serde(default)]
            completion_tokens: u64,
            #[serde(default)]
            completion_tokens_details: Option<ReasoningTokens>,
        }
        if let Ok(w) = serde_json::from_str::<Wire>(body) {
            return Ok(Run {
                id: w.id.map(|id| id.0.into_owned()).filter(|id| !id.is_empty()),
                status: w.status.map(|s| s.0.into_owned()),
                usage: w.usage.map(|u| Usage {
                    input_tokens: u.prompt_tokens,
                    cached_input_tokens: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
                    output_tokens: u.completion_tokens,
                    reasoning_tokens: u.completion_tokens_details.map_or(0, |d| d.reasoning_tokens),
                }),
                body: body.to_owned(),
            });
        }
        let v = parse_json(what, body)?;
        Ok(Run {
            id: opt_str(&v, "id").filter(|id| !id.is_empty()).map(str::to_owned),
            status: opt_str(&v, "status").map(str::to_owned),
            usage: run_usage(&v),
            body: body.to_owned(),
        })
    }

    fn value(&self) -> Result<Value, ChatError> {
        parse_json("run", &self.body)
    }
}

/// A run's message list as [`run_text`] reads it, into types.
#[derive(serde::Deserialize)]
struct WireList<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<WireMessage<'a>>>,
}

#[derive(serde::Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<WirePart<'a>>>,
}

#[derive(serde::Deserialize)]
struct WirePart<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<JsonStr<'a>>,
    #[serde(borrow)]
    text: Option<WireText<'a>>,
}

#[derive(serde::Deserialize)]
struct WireText<'a> {
    #[serde(borrow)]
    value: Option<JsonStr<'a>>,
}

impl WireList<'_> {
    /// The same as [`run_text`] of the same list.
    fn text(&self) -> String {
        let mut texts: Vec<&str> = Vec::new();
        for msg in self.data.iter().flatten().rev().filter(|m| m.role.as_deref() == Some("assistant")) {
            for part in msg.content.iter().flatten().filter(|p| p.ty.as_deref() == Some("text")) {
                if let Some(t) = part.text.as_ref().and_then(|t| t.value.as_deref()) {
                    let t = t.trim();
                    if !t.is_empty() {
                        texts.push(t);
                    }
                }
            }
        }
        texts.join("\n\n").trim().to_owned()
    }
}

/// POST …/runs/{run_id}/cancel; a failure is only logged.
fn cancel<E: Effects>(fx: &mut E, run_path: &str) {
    let req = request("POST", format!("{run_path}/cancel"), Some(&json!({})));
    if let Err(e) = call_json(fx, req, |_| None) {
        fx.log(Level::Warn, &format!("cancelling {run_path}: {e}"));
    }
}

#[cfg(test)]
mod tests;
