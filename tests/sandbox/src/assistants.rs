//! Assistants v2: threads, messages, runs (polling and streaming).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::model::{self, Msg};
use crate::usage::{Bill, Endpoint};
use crate::util::{self, ApiError, check_known, metadata, now, opt_bool, opt_str};
use crate::{FaultKind, Shared, Store as SbState, StreamFault};

const RUN_FIELDS: &[&str] = &[
    "additional_instructions", "additional_messages", "assistant_id", "instructions", "max_completion_tokens",
    "max_prompt_tokens", "metadata", "model", "parallel_tool_calls", "reasoning_effort", "response_format", "stream",
    "temperature", "tool_choice", "tools", "top_p", "truncation_strategy",
];

pub struct Thread {
    pub id: String,
    pub created_at: u64,
    pub metadata: Value,
    /// Oldest first.
    pub messages: Vec<Value>,
    pub runs: Vec<Run>,
    pub active_run: Option<String>,
}

pub struct Run {
    pub id: String,
    pub thread_id: String,
    pub assistant_id: String,
    pub model: String,
    pub instructions: Option<String>,
    pub status: String,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub last_error: Value,
    /// A fault asked this run to fail instead of completing.
    pub fail: bool,
    pub metadata: Value,
    pub polls: u32,
    pub started: Instant,
    pub total_delay: Duration,
    pub answer: String,
    pub prompt_tokens: u64,
    pub usage: Value,
    /// `{type, last_messages}` as given (default auto).
    pub truncation_strategy: Value,
    pub max_prompt_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// The answer was cut at `max_completion_tokens`: the run ends `incomplete`.
    pub cut: bool,
    /// The latest message alone does not fit: the run ends `incomplete` (max_prompt_tokens).
    pub overflow: bool,
    pub incomplete_details: Value,
}

impl Run {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "object": "thread.run", "created_at": self.created_at,
            "assistant_id": self.assistant_id, "thread_id": self.thread_id, "status": self.status,
            "started_at": self.started_at, "expires_at": if is_active(&self.status) { json!(self.created_at + 600) } else { Value::Null },
            "cancelled_at": self.cancelled_at, "failed_at": self.failed_at, "completed_at": self.completed_at,
            "required_action": null, "last_error": self.last_error, "model": self.model, "instructions": self.instructions,
            "tools": [], "tool_resources": {}, "metadata": self.metadata, "temperature": 1.0, "top_p": 1.0,
            "max_completion_tokens": self.max_completion_tokens, "max_prompt_tokens": self.max_prompt_tokens,
            "truncation_strategy": self.truncation_strategy, "incomplete_details": self.incomplete_details,
            "usage": self.usage, "response_format": "auto", "tool_choice": "auto", "parallel_tool_calls": true,
        })
    }
}

fn is_active(status: &str) -> bool {
    matches!(status, "queued" | "in_progress" | "requires_action" | "cancelling")
}

impl Thread {
    fn to_json(&self) -> Value {
        json!({"id": self.id, "object": "thread", "created_at": self.created_at, "metadata": self.metadata, "tool_resources": {}})
    }
}

fn thread_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No thread found with id '{id}'."), None)
}

fn run_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No run found with id '{id}'."), None)
}

fn message_obj(sh: &Shared, thread_id: &str, role: &str, text: &str, run: Option<(&str, &str)>, meta: Value) -> Value {
    let t = now();
    json!({
        "id": sh.id("msg"), "object": "thread.message", "created_at": t,
        "assistant_id": run.map(|r| r.1), "thread_id": thread_id, "run_id": run.map(|r| r.0),
        "role": role, "status": "completed", "incomplete_details": null, "completed_at": t, "incomplete_at": null,
        "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        "attachments": [], "metadata": meta,
    })
}

/// Validate a `{role, content, attachments?, metadata?}` message and return (role, text, metadata).
fn parse_message(v: &Value, param: &str) -> Result<(String, String, Value), ApiError> {
    let Value::Object(o) = v else { return Err(ApiError::invalid_type(param, "an object", v)) };
    if let Some(k) = o.keys().find(|k| !["attachments", "content", "metadata", "role"].contains(&k.as_str())) {
        return Err(ApiError::unknown_parameter(format!("{param}.{k}").trim_start_matches('.')));
    }
    let role = match o.get("role") {
        Some(Value::String(r)) if r == "user" || r == "assistant" => r.clone(),
        Some(Value::String(r)) => {
            return Err(ApiError::invalid_value(
                format!("Invalid value: '{r}'. Supported values are: 'user' and 'assistant'."),
                format!("{param}.role").trim_start_matches('.'),
            ));
        }
        _ => return Err(ApiError::missing(format!("{param}.role").trim_start_matches('.'))),
    };
    let text = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => s.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("image_file") | Some("image_url") => {}
                    _ => {
                        return Err(ApiError::invalid_value(
                            "Invalid value. Supported values are: 'image_file', 'image_url', and 'text'.",
                            format!("{param}.content[{j}].type").trim_start_matches('.'),
                        ));
                    }
                }
            }
            s
        }
        None | Some(Value::Null) => return Err(ApiError::missing(format!("{param}.content").trim_start_matches('.'))),
        Some(other) => return Err(ApiError::invalid_type("content", "a string or an array", other)),
    };
    let meta = metadata(o)?;
    Ok((role, text, meta))
}

fn message_text(m: &Value) -> String {
    m["content"]
        .as_array()
        .map(|parts| parts.iter().filter_map(|p| p["text"]["value"].as_str()).collect::<Vec<_>>().join(""))
        .unwrap_or_default()
}

/// POST /v1/threads
pub async fn create_thread(State(sh): State<Arc<Shared>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = util::parse_object(&bytes)?;
    check_known(&body, &["messages", "metadata", "tool_resources"])?;
    let meta = metadata(&body)?;
    let id = sh.id("thread");
    let mut messages = Vec::new();
    match body.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, m) in a.iter().enumerate() {
                let (role, text, mm) = parse_message(m, &format!("messages[{i}]"))?;
                messages.push(message_obj(&sh, &id, &role, &text, None, mm));
            }
        }
        Some(other) => return Err(ApiError::invalid_type("messages", "an array", other)),
    }
    let t = Thread { id: id.clone(), created_at: now(), metadata: meta, messages, runs: vec![], active_run: None };
    let out = t.to_json();
    sh.state.lock().unwrap().threads.insert(id, t);
    Ok(Json(out))
}

/// GET /v1/threads/{id}
pub async fn get_thread(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let st = sh.state.lock().unwrap();
    st.threads.get(&id).map(|t| Json(t.to_json())).ok_or_else(|| thread_not_found(&id))
}

/// POST /v1/threads/{id}/messages
pub async fn create_message(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = util::parse_object(&bytes)?;
    let (role, text, meta) = parse_message(&Value::Object(body), "")?;
    let mut st = sh.state.lock().unwrap();
    let t = st.threads.get_mut(&id).ok_or_else(|| thread_not_found(&id))?;
    refresh_active(t);
    if let Some(run) = &t.active_run {
        return Err(ApiError::bad_request(format!("Can't add messages to {id} while a run {run} is active."), None, None));
    }
    let m = message_obj(&sh, &id, &role, &text, None, meta);
    t.messages.push(m.clone());
    Ok(Json(m))
}

/// GET /v1/threads/{id}/messages?order&limit&after&before&run_id
pub async fn list_messages(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = util::list_query(q.as_deref())?;
    let run_id = q.extra.iter().find(|(k, _)| k == "run_id").map(|(_, v)| v.clone());
    let st = sh.state.lock().unwrap();
    let t = st.threads.get(&id).ok_or_else(|| thread_not_found(&id))?;
    let msgs: Vec<Value> = t
        .messages
        .iter()
        .filter(|m| run_id.as_deref().is_none_or(|r| m["run_id"].as_str() == Some(r)))
        .cloned()
        .collect();
    Ok(Json(util::paginate(&msgs, &q)))
}

fn refresh_active(t: &mut Thread) {
    if let Some(r) = &t.active_run
        && !t.runs.iter().any(|x| &x.id == r && is_active(&x.status)) {
            t.active_run = None;
        }
}

/// POST /v1/threads/{id}/runs
pub async fn create_run(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let fault = parts.extensions.get::<StreamFault>().map(|f| f.0.clone());
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| ApiError::server_error())?;
    if matches!(fault, Some(FaultKind::ErrorEvent)) && !body_streams(&bytes) {
        return Err(ApiError::server_error());
    }
    let body = util::parse_object(&bytes)?;
    check_known(&body, RUN_FIELDS)?;
    let assistant_id = match body.get("assistant_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => return Err(ApiError::missing("assistant_id")),
        Some(other) => return Err(ApiError::invalid_type("assistant_id", "a string", other)),
    };
    let instructions = opt_str(&body, "instructions")?;
    let additional = opt_str(&body, "additional_instructions")?;
    let model_name = opt_str(&body, "model")?.unwrap_or_else(|| "gpt-4o".to_string());
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    let meta = metadata(&body)?;
    let (truncation_strategy, last_messages) = parse_truncation_strategy(&body)?;
    let max_completion_tokens = match body.get("max_completion_tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 256) => n.as_u64(),
        Some(Value::Number(n)) => {
            return Err(ApiError::bad_request(
                format!("Invalid 'max_completion_tokens': integer below minimum value. Expected a value >= 256, but got {n} instead."),
                Some("max_completion_tokens"),
                Some("integer_below_min_value"),
            ));
        }
        Some(other) => return Err(ApiError::invalid_type("max_completion_tokens", "an integer", other)),
    };
    let max_prompt_tokens = match body.get("max_prompt_tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 256) => n.as_u64(),
        Some(Value::Number(n)) => {
            return Err(ApiError::bad_request(
                format!("Invalid 'max_prompt_tokens': integer below minimum value. Expected a value >= 256, but got {n} instead."),
                Some("max_prompt_tokens"),
                Some("integer_below_min_value"),
            ));
        }
        Some(other) => return Err(ApiError::invalid_type("max_prompt_tokens", "an integer", other)),
    };
    let mut extra = Vec::new();
    match body.get("additional_messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, m) in a.iter().enumerate() {
                extra.push(parse_message(m, &format!("additional_messages[{i}]"))?);
            }
        }
        Some(other) => return Err(ApiError::invalid_type("additional_messages", "an array", other)),
    }
    let cfg = sh.config();
    let run_json = {
        let mut st = sh.state.lock().unwrap();
        let t = st.threads.get_mut(&id).ok_or_else(|| thread_not_found(&id))?;
        refresh_active(t);
        if let Some(r) = &t.active_run {
            return Err(ApiError::bad_request(format!("Thread {id} already has an active run {r}."), None, None));
        }
        for (role, text, mm) in extra {
            let m = message_obj(&sh, &id, &role, &text, None, mm);
            t.messages.push(m);
        }
        let all: Vec<Msg> = t.messages.iter().map(|m| Msg::new(m["role"].as_str().unwrap_or("user"), &message_text(m))).collect();
        let kb = format!("{}\n{}", instructions.clone().unwrap_or_default(), additional.clone().unwrap_or_default());
        let mut window = cfg.window_for(&model_name);
        if let Some(m) = max_prompt_tokens {
            window = window.min(m);
        }
        let (msgs, overflow) = visible_messages(&all, &kb, last_messages, window);
        let cur = msgs.iter().rposition(|m| m.role == "user");
        let current = cur.map(|i| msgs[i].text.clone()).unwrap_or_default();
        let history: Vec<Msg> = match cur {
            Some(i) => msgs[..i].to_vec(),
            None => msgs.clone(),
        };
        let mut answer = if overflow { String::new() } else { model::answer(&history, &current, &kb) };
        let mut cut = false;
        if let Some(m) = max_completion_tokens {
            let toks = model::tokens(&answer);
            if toks.len() as u64 > m {
                answer = toks[..m as usize].concat();
                cut = true;
            }
        }
        let n = model::tokens(&answer).len() as u32;
        let prompt_tokens = (model::count_tokens(&kb) + msgs.iter().map(|m| model::count_tokens(&m.text)).sum::<u64>()).max(1);
        let run = Run {
            id: sh.id("run"),
            thread_id: id.clone(),
            assistant_id,
            model: model_name,
            instructions: instructions.or(Some(String::new())).map(|i| match &additional {
                Some(a) if !a.is_empty() => if i.is_empty() { a.clone() } else { format!("{i}\n{a}") },
                _ => i,
            }),
            status: "queued".into(),
            created_at: now(),
            started_at: None,
            completed_at: None,
            cancelled_at: None,
            failed_at: None,
            last_error: Value::Null,
            fail: matches!(fault, Some(FaultKind::StreamFailed)),
            metadata: meta,
            polls: 0,
            started: Instant::now(),
            total_delay: cfg.time_to_first_token + cfg.token_interval * n.saturating_sub(1),
            answer,
            prompt_tokens,
            usage: Value::Null,
            truncation_strategy,
            max_prompt_tokens,
            max_completion_tokens,
            cut,
            overflow,
            incomplete_details: Value::Null,
        };
        let out = run.to_json();
        t.active_run = Some(run.id.clone());
        t.runs.push(run);
        out
    };
    if stream {
        return Ok(stream_run(sh, id, run_json, cfg.time_to_first_token, cfg.token_interval, fault));
    }
    Ok(Json(run_json).into_response())
}

/// Complete a run: add the assistant message (with run_id) and release the thread.
fn complete_run(sh: &Shared, t: &mut Thread, run_id: &str) -> Option<Value> {
    let idx = t.runs.iter().position(|r| r.id == run_id)?;
    if !matches!(t.runs[idx].status.as_str(), "queued" | "in_progress") {
        return None;
    }
    let (answer, assistant) = (t.runs[idx].answer.clone(), t.runs[idx].assistant_id.clone());
    let overflow = t.runs[idx].overflow;
    let cut = t.runs[idx].cut;
    let msg = (!overflow).then(|| {
        let mut m = message_obj(sh, &t.id, "assistant", &answer, Some((run_id, &assistant)), json!({}));
        if cut {
            m["status"] = json!("incomplete");
            m["incomplete_details"] = json!({"reason": "max_tokens"});
            m["incomplete_at"] = m["completed_at"].take();
        }
        m
    });
    if let Some(m) = &msg {
        t.messages.push(m.clone());
    }
    let r = &mut t.runs[idx];
    r.started_at.get_or_insert(now());
    if overflow {
        // Nothing was read or written: the latest message alone is over the prompt limit.
        r.status = "incomplete".into();
        r.incomplete_details = json!({"reason": "max_prompt_tokens"});
        r.usage = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    } else {
        if cut {
            r.status = "incomplete".into();
            r.incomplete_details = json!({"reason": "max_completion_tokens"});
        } else {
            r.status = "completed".into();
            r.completed_at = Some(now());
        }
        let completion = model::tokens(&r.answer).len() as u64;
        r.usage = json!({"prompt_tokens": r.prompt_tokens, "completion_tokens": completion, "total_tokens": r.prompt_tokens + completion});
        sh.bill(Bill {
            endpoint: Endpoint::Runs,
            model: &r.model,
            usage: &r.usage,
            cache_key: None,
            user: None,
            conversation: Some(&r.thread_id),
        });
    }
    if t.active_run.as_deref() == Some(run_id) {
        t.active_run = None;
    }
    msg
}

fn advance(sh: &Shared, st: &mut SbState, thread_id: &str, run_id: &str) {
    let run_steps = sh.config().run_steps;
    let Some(t) = st.threads.get_mut(thread_id) else { return };
    let Some(r) = t.runs.iter_mut().find(|r| r.id == run_id) else { return };
    match r.status.as_str() {
        "queued" | "in_progress" => {
            r.polls += 1;
            if r.polls > run_steps && r.started.elapsed() >= r.total_delay {
                if r.fail {
                    fail_run(t, run_id);
                } else {
                    complete_run(sh, t, run_id);
                }
            } else {
                r.status = "in_progress".into();
                r.started_at.get_or_insert(now());
            }
        }
        "cancelling" => {
            r.status = "cancelled".into();
            r.cancelled_at = Some(now());
            if t.active_run.as_deref() == Some(run_id) {
                t.active_run = None;
            }
        }
        _ => {}
    }
}

/// GET /v1/threads/{id}/runs/{run_id}: each call is a poll.
pub async fn get_run(
    State(sh): State<Arc<Shared>>,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut st = sh.state.lock().unwrap();
    if !st.threads.contains_key(&id) {
        return Err(thread_not_found(&id));
    }
    advance(&sh, &mut st, &id, &run_id);
    let t = st.threads.get(&id).ok_or_else(|| thread_not_found(&id))?;
    t.runs.iter().find(|r| r.id == run_id).map(|r| Json(r.to_json())).ok_or_else(|| run_not_found(&run_id))
}

/// GET /v1/threads/{id}/runs (does not poll)
pub async fn list_runs(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = util::list_query(q.as_deref())?;
    let st = sh.state.lock().unwrap();
    let t = st.threads.get(&id).ok_or_else(|| thread_not_found(&id))?;
    let runs: Vec<Value> = t.runs.iter().map(Run::to_json).collect();
    Ok(Json(util::paginate(&runs, &q)))
}

/// POST /v1/threads/{id}/runs/{run_id}/cancel → cancelling (the next poll sees cancelled).
pub async fn cancel_run(
    State(sh): State<Arc<Shared>>,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut st = sh.state.lock().unwrap();
    let t = st.threads.get_mut(&id).ok_or_else(|| thread_not_found(&id))?;
    let r = t.runs.iter_mut().find(|r| r.id == run_id).ok_or_else(|| run_not_found(&run_id))?;
    match r.status.as_str() {
        "queued" | "in_progress" | "requires_action" => {
            r.status = "cancelling".into();
            Ok(Json(r.to_json()))
        }
        "cancelling" => Ok(Json(r.to_json())),
        s => Err(ApiError::bad_request(format!("Cannot cancel run with status '{s}'."), None, None)),
    }
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// `stream: true` on a run: thread.run.created/queued/in_progress, step, message created/in_progress,
/// thread.message.delta ×N, message completed, step completed, thread.run.completed, `event: done` / `data: [DONE]`.
struct RunGuard {
    sh: Arc<Shared>,
    thread_id: String,
    run_id: String,
    armed: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(mut st) = self.sh.state.lock()
            && let Some(t) = st.threads.get_mut(&self.thread_id)
        {
            complete_run(&self.sh, t, &self.run_id);
        }
    }
}

fn body_streams(bytes: &Bytes) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v["stream"] == json!(true))
}

/// Mark a run failed (server_error) and release its thread; returns the run object.
fn fail_run(t: &mut Thread, run_id: &str) -> Option<Value> {
    let r = t.runs.iter_mut().find(|r| r.id == run_id)?;
    r.status = "failed".into();
    r.failed_at = Some(now());
    r.last_error = json!({"code": "server_error", "message": "Sorry, something went wrong."});
    let out = r.to_json();
    if t.active_run.as_deref() == Some(run_id) {
        t.active_run = None;
    }
    Some(out)
}

fn fail_run_in(sh: &Shared, thread_id: &str, run_id: &str) -> Value {
    let mut st = sh.state.lock().unwrap();
    st.threads.get_mut(thread_id).and_then(|t| fail_run(t, run_id)).unwrap_or(Value::Null)
}

fn stream_run(sh: Arc<Shared>, thread_id: String, run: Value, ttft: Duration, interval: Duration, fault: Option<FaultKind>) -> Response {
    let run_id = run["id"].as_str().unwrap_or("").to_string();
    let s = async_stream::stream! {
        // A client that goes away does not stop the run: it completes as on the live API.
        let mut guard = RunGuard { sh: sh.clone(), thread_id: thread_id.clone(), run_id: run_id.clone(), armed: true };
        let mut run = run;
        yield Ok::<Bytes, std::io::Error>(sse("thread.run.created", &run));
        yield Ok(sse("thread.run.queued", &run));
        run["status"] = json!("in_progress");
        run["started_at"] = json!(now());
        {
            let mut st = sh.state.lock().unwrap();
            if let Some(r) = st.threads.get_mut(&thread_id).and_then(|t| t.runs.iter_mut().find(|r| r.id == run_id)) {
                r.status = "in_progress".into();
                r.started_at = Some(now());
            }
        }
        yield Ok(sse("thread.run.in_progress", &run));
        match fault {
            Some(FaultKind::StreamFailed) => {
                let r = fail_run_in(&sh, &thread_id, &run_id);
                yield Ok(sse("thread.run.failed", &r));
                yield Ok(Bytes::from("event: done\ndata: [DONE]\n\n"));
                return;
            }
            Some(FaultKind::ErrorEvent) => {
                fail_run_in(&sh, &thread_id, &run_id);
                yield Ok(sse("error", &json!({"code": "server_error", "message": "Sorry, something went wrong.", "param": null, "type": "server_error"})));
                return;
            }
            _ => {}
        }
        let cut = match fault { Some(FaultKind::CutStreamAfterDeltas(n)) => Some(n as usize), _ => None };
        let answer = {
            let st = sh.state.lock().unwrap();
            st.threads.get(&thread_id).and_then(|t| t.runs.iter().find(|r| r.id == run_id)).map(|r| r.answer.clone()).unwrap_or_default()
        };
        let msg_id = sh.id("msg");
        let step_id = sh.id("step");
        let step = json!({"id": step_id, "object": "thread.run.step", "created_at": now(), "run_id": run_id,
            "assistant_id": run["assistant_id"], "thread_id": thread_id, "type": "message_creation", "status": "in_progress",
            "cancelled_at": null, "completed_at": null, "expires_at": null, "failed_at": null, "last_error": null,
            "step_details": {"type": "message_creation", "message_creation": {"message_id": msg_id}}, "usage": null});
        yield Ok(sse("thread.run.step.created", &step));
        yield Ok(sse("thread.run.step.in_progress", &step));
        let mut msg = json!({"id": msg_id, "object": "thread.message", "created_at": now(), "assistant_id": run["assistant_id"],
            "thread_id": thread_id, "run_id": run_id, "status": "in_progress", "incomplete_details": null,
            "incomplete_at": null, "completed_at": null, "role": "assistant", "content": [], "attachments": [], "metadata": {}});
        yield Ok(sse("thread.message.created", &msg));
        yield Ok(sse("thread.message.in_progress", &msg));
        let toks = model::tokens(&answer);
        for (i, tok) in toks.iter().enumerate() {
            if cut == Some(i) {
                fail_run_in(&sh, &thread_id, &run_id);
                tokio::time::sleep(Duration::from_millis(30)).await;
                yield Err(std::io::Error::other("stream cut by sandbox fault"));
                return;
            }
            let wait = if i == 0 { ttft } else { interval };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            yield Ok(sse("thread.message.delta", &json!({"id": msg_id, "object": "thread.message.delta",
                "delta": {"content": [{"index": 0, "type": "text", "text": {"value": tok, "annotations": []}}]}})));
        }
        if cut.is_some_and(|n| n >= toks.len()) {
            fail_run_in(&sh, &thread_id, &run_id);
            tokio::time::sleep(Duration::from_millis(30)).await;
            yield Err(std::io::Error::other("stream cut by sandbox fault"));
            return;
        }
        guard.armed = false;
        let (done_msg, done_run) = {
            let mut st = sh.state.lock().unwrap();
            match st.threads.get_mut(&thread_id) {
                Some(t) => {
                    let m = complete_run(&sh, t, &run_id);
                    let r = t.runs.iter().find(|r| r.id == run_id).map(Run::to_json);
                    (m, r)
                }
                None => (None, None),
            }
        };
        if let Some(mut m) = done_msg {
            m["id"] = json!(msg_id);
            // keep the id announced in the stream
            {
                let mut st = sh.state.lock().unwrap();
                if let Some(t) = st.threads.get_mut(&thread_id)
                    && let Some(last) = t.messages.last_mut() { last["id"] = json!(msg_id); }
            }
            msg = m;
        }
        yield Ok(sse("thread.message.completed", &msg));
        let mut step = step;
        step["status"] = json!("completed");
        step["completed_at"] = json!(now());
        yield Ok(sse("thread.run.step.completed", &step));
        if let Some(r) = done_run {
            let event = if r["status"] == "incomplete" { "thread.run.incomplete" } else { "thread.run.completed" };
            yield Ok(sse(event, &r));
        }
        yield Ok(Bytes::from("event: done\ndata: [DONE]\n\n"));
    };
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream; charset=utf-8"));
    r
}


/// `truncation_strategy`: absent/null → `{type: auto}`; `{type: "auto"}`; `{type: "last_messages",
/// last_messages: N >= 1}`. Returns the object to echo and N.
fn parse_truncation_strategy(body: &serde_json::Map<String, Value>) -> Result<(Value, Option<usize>), ApiError> {
    let o = match body.get("truncation_strategy") {
        None | Some(Value::Null) => return Ok((json!({"type": "auto", "last_messages": null}), None)),
        Some(Value::Object(o)) => o,
        Some(other) => return Err(ApiError::invalid_type("truncation_strategy", "an object", other)),
    };
    if let Some(k) = o.keys().find(|k| !["type", "last_messages"].contains(&k.as_str())) {
        return Err(ApiError::unknown_parameter(&format!("truncation_strategy.{k}")));
    }
    let last = match o.get("last_messages") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.as_u64(),
        Some(Value::Number(n)) => {
            return Err(ApiError::bad_request(
                format!("Invalid 'truncation_strategy.last_messages': integer below minimum value. Expected a value >= 1, but got {n} instead."),
                Some("truncation_strategy.last_messages"),
                Some("integer_below_min_value"),
            ));
        }
        Some(other) => return Err(ApiError::invalid_type("truncation_strategy.last_messages", "an integer", other)),
    };
    match o.get("type") {
        Some(Value::String(t)) if t == "auto" => Ok((json!({"type": "auto", "last_messages": last}), None)),
        Some(Value::String(t)) if t == "last_messages" => {
            Ok((json!({"type": "last_messages", "last_messages": last}), last.map(|n| n as usize)))
        }
        Some(Value::String(t)) => Err(ApiError::invalid_value(
            format!("Invalid value: '{t}'. Supported values are: 'auto' and 'last_messages'."),
            "truncation_strategy.type",
        )),
        None | Some(Value::Null) => Err(ApiError::missing("truncation_strategy.type")),
        Some(other) => Err(ApiError::invalid_type("truncation_strategy.type", "a string", other)),
    }
}

/// The messages a run sees: the last N with `last_messages`, then, while instructions + messages are over
/// the window, messages dropped from the middle (the oldest after the first, then the first), never the
/// latest user message or what follows it. `true` when even that does not fit.
fn visible_messages(all: &[Msg], kb: &str, last: Option<usize>, window: u64) -> (Vec<Msg>, bool) {
    let mut msgs: Vec<Msg> = match last {
        Some(n) if n < all.len() => all[all.len() - n..].to_vec(),
        _ => all.to_vec(),
    };
    let tokens = |m: &[Msg]| model::count_tokens(kb) + m.iter().map(|x| model::count_tokens(&x.text)).sum::<u64>();
    let keep_from = |m: &[Msg]| m.iter().rposition(|x| x.role == "user").unwrap_or(m.len().saturating_sub(1));
    while tokens(&msgs) > window {
        let k = keep_from(&msgs);
        if k == 0 {
            return (msgs, true);
        }
        let drop = if k >= 2 { 1 } else { 0 };
        msgs.remove(drop);
    }
    (msgs, false)
}
