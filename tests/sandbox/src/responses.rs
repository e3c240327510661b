//! Responses and Conversations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value, json};

use crate::context;
use crate::model::{self, Msg};
use crate::usage::{Bill, Endpoint};
use crate::util::{self, ApiError, check_known, metadata, now, opt_bool, opt_str};
use crate::{FaultKind, Shared, Store as SbState, StreamFault};

const RESPONSE_FIELDS: &[&str] = &[
    "background", "context_management", "conversation", "include", "input", "instructions", "max_output_tokens",
    "max_tool_calls", "metadata", "model", "moderation", "parallel_tool_calls", "previous_response_id", "prompt",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning", "safety_identifier",
    "service_tier", "store", "stream", "stream_options", "temperature", "text", "tool_choice", "tools",
    "top_logprobs", "top_p", "truncation", "user",
];

pub struct Conversation {
    pub id: String,
    pub created_at: u64,
    pub metadata: Value,
    /// Oldest first, normalised.
    pub items: Vec<Value>,
    /// The response currently running on it.
    pub locked_by: Option<String>,
}

impl Conversation {
    fn to_json(&self) -> Value {
        json!({"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata})
    }
}

pub struct StoredResponse {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub instructions: Option<String>,
    pub conversation: Option<String>,
    pub previous_response_id: Option<String>,
    pub metadata: Value,
    pub store: bool,
    pub background: bool,
    pub max_output_tokens: Option<u64>,
    pub status: String,
    /// The final output items (shown once the response is completed or incomplete).
    pub output: Vec<Value>,
    pub input_items: Vec<Value>,
    pub usage: Value,
    pub error: Value,
    pub completed_at: Option<u64>,
    /// Status once the text is produced: `completed` or `incomplete` (max_output_tokens).
    pub final_status: String,
    pub polls: u32,
    pub started: Instant,
    pub total_delay: Duration,
    pub truncation: &'static str,
    pub prompt_cache_key: Option<String>,
    pub user: Option<String>,
    pub safety_identifier: Option<String>,
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "incomplete")
}

impl StoredResponse {
    pub fn to_json(&self) -> Value {
        let shown = matches!(self.status.as_str(), "completed" | "incomplete");
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": self.background,
            "completed_at": self.completed_at,
            "conversation": self.conversation.as_ref().map(|c| json!({"id": c})),
            "error": self.error,
            "incomplete_details": if self.status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": null,
            "model": self.model,
            "output": if shown { Value::Array(self.output.clone()) } else { json!([]) },
            "parallel_tool_calls": true,
            "previous_response_id": self.previous_response_id,
            "prompt_cache_key": self.prompt_cache_key,
            "reasoning": {"effort": null, "summary": null},
            "safety_identifier": self.safety_identifier,
            "service_tier": "default",
            "store": self.store,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": self.truncation,
            "usage": if shown { self.usage.clone() } else { Value::Null },
            "user": self.user,
            "metadata": self.metadata,
        })
    }
}

/// Move a response to a terminal status; on completed/incomplete append its input and output items to its
/// conversation. Always releases the conversation lock. Returns the response object.
pub(crate) fn finish(sh: &Shared, st: &mut SbState, id: &str, status: &str) -> Option<Value> {
    let r = st.responses.get_mut(id)?;
    if is_terminal(&r.status) {
        return Some(r.to_json());
    }
    r.status = status.to_string();
    match status {
        "completed" | "incomplete" => {
            r.completed_at = Some(now());
            sh.bill(Bill {
                endpoint: Endpoint::Responses,
                model: &r.model,
                usage: &r.usage,
                cache_key: r.prompt_cache_key.as_deref(),
                user: r.safety_identifier.as_deref().or(r.user.as_deref()),
                conversation: r.conversation.as_deref(),
            });
        }
        "failed" => r.error = json!({"code": "server_error", "message": "The model failed to generate a response."}),
        _ => {}
    }
    let out = r.to_json();
    let append: Vec<Value> = if matches!(status, "completed" | "incomplete") {
        r.input_items.iter().chain(r.output.iter()).cloned().collect()
    } else {
        vec![]
    };
    let conv = r.conversation.clone();
    if !r.store {
        st.responses.remove(id);
    }
    if let Some(c) = conv.and_then(|c| st.conversations.get_mut(&c)) {
        if c.locked_by.as_deref() == Some(id) {
            c.locked_by = None;
        }
        c.items.extend(append);
    }
    Some(out)
}

/// Releases the conversation (status `cancelled`) if the request or stream is dropped before it finished.
struct Pending {
    sh: Arc<Shared>,
    id: String,
    armed: bool,
}

impl Pending {
    fn finish(&mut self, status: &str) -> Value {
        self.armed = false;
        let mut st = self.sh.state.lock().unwrap();
        finish(&self.sh, &mut st, &self.id, status).unwrap_or(Value::Null)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut st) = self.sh.state.lock() {
                finish(&self.sh, &mut st, &self.id, "cancelled");
            }
    }
}

/// The text of a message item (joined text parts), with its role; `None` for other item types.
pub fn item_msg(item: &Value) -> Option<Msg> {
    let t = item.get("type").and_then(Value::as_str).unwrap_or("message");
    if t != "message" {
        return None;
    }
    let role = item.get("role")?.as_str()?;
    let text = match item.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("text") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => o.get("value").and_then(Value::as_str).map(String::from),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => return None,
    };
    Some(Msg::new(role, &text))
}

/// Validate one input/conversation item like the live API and normalise it
/// (`{id, type:"message", status:"completed", role, content:[parts]}`).
pub(crate) fn normalize_item(sh: &Shared, v: &Value, param: &str) -> Result<Value, ApiError> {
    let Value::Object(o) = v else { return Err(ApiError::invalid_type(param, "an object", v)) };
    let typ = match o.get("type") {
        None | Some(Value::Null) => "message",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(ApiError::invalid_type(&format!("{param}.type"), "a string", other)),
    };
    if typ == "compaction" {
        // A compaction item (from a response's output or /responses/compact) must carry our encrypted_content.
        let content = match o.get("encrypted_content") {
            Some(Value::String(c)) => c.clone(),
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{param}.encrypted_content"))),
            Some(other) => return Err(ApiError::invalid_type(&format!("{param}.encrypted_content"), "a string", other)),
        };
        if context::Summary::decode(&content).is_none() {
            let which = o.get("id").and_then(Value::as_str).unwrap_or(param);
            return Err(ApiError::bad_request(
                format!("The encrypted content for item {which} could not be verified."),
                Some(&format!("{param}.encrypted_content")),
                Some("invalid_encrypted_content"),
            ));
        }
        let id = o.get("id").and_then(Value::as_str).map(String::from).unwrap_or_else(|| sh.id("cmp"));
        return Ok(json!({"id": id, "type": "compaction", "encrypted_content": content}));
    }
    if typ != "message" {
        // Other item kinds (function_call_output, reasoning, …) are kept as given, with an id.
        let mut item = o.clone();
        if !item.contains_key("id") {
            let prefix = if typ == "reasoning" { "rs" } else { "item" };
            item.insert("id".into(), json!(sh.id(prefix)));
        }
        return Ok(Value::Object(item));
    }
    let role = match o.get("role") {
        Some(Value::String(r)) => r.as_str(),
        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{param}.role"))),
        Some(other) => return Err(ApiError::invalid_type(&format!("{param}.role"), "a string", other)),
    };
    if !matches!(role, "user" | "assistant" | "system" | "developer") {
        return Err(ApiError::invalid_value(
            format!("Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."),
            &format!("{param}.role"),
        ));
    }
    let assistant = role == "assistant";
    let content = match o.get("content") {
        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{param}.content"))),
        Some(Value::String(s)) => {
            if assistant {
                vec![json!({"type": "output_text", "text": s, "annotations": [], "logprobs": []})]
            } else {
                vec![json!({"type": "input_text", "text": s})]
            }
        }
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let pp = format!("{param}.content[{j}]");
                let Value::Object(po) = p else { return Err(ApiError::invalid_type(&pp, "an object", p)) };
                let pt = po.get("type").and_then(Value::as_str).ok_or_else(|| ApiError::missing(&format!("{pp}.type")))?;
                if assistant {
                    if !matches!(pt, "output_text" | "refusal") {
                        return Err(ApiError::invalid_value(
                            format!("Invalid value: '{pt}'. Supported values are: 'output_text' and 'refusal'."),
                            &pp,
                        ));
                    }
                } else if !matches!(pt, "input_text" | "input_image" | "input_file" | "input_audio") {
                    return Err(ApiError::invalid_value(
                        format!("Invalid value: '{pt}'. Supported values are: 'input_text', 'input_image', 'input_file', and 'input_audio'."),
                        &pp,
                    ));
                }
                let mut part = po.clone();
                if matches!(pt, "input_text" | "output_text") {
                    match po.get("text") {
                        Some(Value::String(_)) => {}
                        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{pp}.text"))),
                        Some(other) => return Err(ApiError::invalid_type(&format!("{pp}.text"), "a string", other)),
                    }
                }
                if pt == "output_text" && !part.contains_key("annotations") {
                    part.insert("annotations".into(), json!([]));
                }
                out.push(Value::Object(part));
            }
            out
        }
        Some(other) => return Err(ApiError::invalid_type(&format!("{param}.content"), "a string or an array", other)),
    };
    let id = o.get("id").and_then(Value::as_str).map(String::from).unwrap_or_else(|| sh.id("msg"));
    Ok(json!({"id": id, "type": "message", "status": "completed", "role": role, "content": content}))
}

fn normalize_items(sh: &Shared, v: Option<&Value>, name: &str, max: Option<usize>) -> Result<Vec<Value>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => {
            if let Some(max) = max
                && a.len() > max {
                    return Err(ApiError::bad_request(
                        format!("Invalid '{name}': array too long. Expected an array with maximum length {max}, but got an array with length {} instead.", a.len()),
                        Some(name),
                        Some("array_above_max_length"),
                    ));
                }
            a.iter().enumerate().map(|(i, it)| normalize_item(sh, it, &format!("{name}[{i}]"))).collect()
        }
        Some(other) => Err(ApiError::invalid_type(name, "an array", other)),
    }
}

fn is_reasoning_model(model: &str) -> bool {
    ["gpt-5", "o1", "o3", "o4"].iter().any(|p| model.starts_with(p))
}

/// One SSE frame; the data starts with `type` and `sequence_number` like the live API.
fn sse(event: &str, data: Value, seq: &mut u64) -> Bytes {
    let rest = data.to_string();
    let rest = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')).unwrap_or("");
    let sep = if rest.is_empty() { "" } else { "," };
    let frame = format!("event: {event}\ndata: {{\"type\":{},\"sequence_number\":{}{sep}{rest}}}\n\n", json!(event), *seq);
    *seq += 1;
    Bytes::from(frame)
}

fn conv_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Conversation with id '{id}' not found."), None)
}

/// POST /v1/responses
/// The parsed body fields shared by `/responses`, `/responses/input_tokens` and `/responses/compact`.
struct Common {
    model: String,
    conv_id: Option<String>,
    prev: Option<String>,
    instructions: Option<String>,
    input_items: Vec<Value>,
    auto_truncate: bool,
    prompt_cache_key: Option<String>,
    /// The input ended with a `compaction_trigger` item (removed from `input_items`).
    compact_now: bool,
}

fn parse_common(sh: &Shared, body: &Map<String, Value>, model_required: bool) -> Result<Common, ApiError> {
    let model = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) if model_required => return Err(ApiError::missing("model")),
        None | Some(Value::Null) | Some(Value::String(_)) => "gpt-4o".to_string(),
        Some(other) => return Err(ApiError::invalid_type("model", "a string", other)),
    };
    let conv_id = match body.get("conversation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => match o.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => return Err(ApiError::missing("conversation.id")),
        },
        Some(other) => return Err(ApiError::invalid_type("conversation", "a string or an object", other)),
    };
    let prev = opt_str(body, "previous_response_id")?;
    if conv_id.is_some() && prev.is_some() {
        return Err(ApiError::bad_request(
            "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or 'conversation'.",
            None,
            Some("mutually_exclusive_parameters"),
        ));
    }
    let instructions = opt_str(body, "instructions")?;
    let auto_truncate = match body.get("truncation") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "auto" => true,
        Some(Value::String(s)) if s == "disabled" => false,
        Some(Value::String(s)) => {
            return Err(ApiError::invalid_value(format!("Invalid value: '{s}'. Supported values are: 'auto' and 'disabled'."), "truncation"));
        }
        Some(other) => return Err(ApiError::invalid_type("truncation", "a string", other)),
    };
    let prompt_cache_key = opt_str(body, "prompt_cache_key")?;
    let mut input_items = match body.get("input") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![normalize_item(sh, &json!({"role": "user", "content": s}), "input")?],
        Some(v @ Value::Array(_)) => normalize_items(sh, Some(v), "input", None)?,
        Some(other) => return Err(ApiError::invalid_type("input", "a string or an array", other)),
    };
    // `{"type": "compaction_trigger"}`: compact now; only as the final input item.
    let mut compact_now = false;
    if let Some(i) = input_items.iter().position(|v| v["type"] == "compaction_trigger") {
        if i + 1 != input_items.len() {
            return Err(ApiError::invalid_value(
                "Invalid 'input': a 'compaction_trigger' item must be the final input item.",
                &format!("input[{i}]"),
            ));
        }
        input_items.pop();
        compact_now = true;
    }
    Ok(Common { model, conv_id, prev, instructions, input_items, auto_truncate, prompt_cache_key, compact_now })
}

/// `context_management`: `null` or an array (at least 1) of `{type: "compaction", compact_threshold?}`.
/// Returns the threshold (absent/null threshold: 80% of the window).
fn parse_context_management(body: &Map<String, Value>, min: u64, window: u64) -> Result<Option<u64>, ApiError> {
    let entries = match body.get("context_management") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(ApiError::invalid_type("context_management", "an array", other)),
    };
    if entries.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid 'context_management': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("context_management"),
            Some("empty_array"),
        ));
    }
    let mut threshold = None;
    for (i, e) in entries.iter().enumerate() {
        let p = format!("context_management[{i}]");
        let Value::Object(o) = e else { return Err(ApiError::invalid_type(&p, "an object", e)) };
        if let Some(k) = o.keys().find(|k| !["type", "compact_threshold"].contains(&k.as_str())) {
            return Err(ApiError::unknown_parameter(&format!("{p}.{k}")));
        }
        match o.get("type") {
            Some(Value::String(t)) if t == "compaction" => {}
            Some(Value::String(t)) => {
                return Err(ApiError::invalid_value(format!("Invalid value: '{t}'. Supported values are: 'compaction'."), &format!("{p}.type")));
            }
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{p}.type"))),
            Some(other) => return Err(ApiError::invalid_type(&format!("{p}.type"), "a string", other)),
        }
        let th = match o.get("compact_threshold") {
            None | Some(Value::Null) => window / 10 * 8,
            Some(Value::Number(n)) if n.as_u64().is_some() || n.as_i64().is_some() => {
                let v = n.as_i64().unwrap_or(i64::MAX);
                if v < min as i64 {
                    return Err(ApiError::bad_request(
                        format!("Invalid '{p}.compact_threshold': integer below minimum value. Expected a value >= {min}, but got {v} instead."),
                        Some(&format!("{p}.compact_threshold")),
                        Some("integer_below_min_value"),
                    ));
                }
                v as u64
            }
            Some(other) => return Err(ApiError::invalid_type(&format!("{p}.compact_threshold"), "an integer", other)),
        };
        threshold = Some(threshold.map_or(th, |t: u64| t.min(th)));
    }
    Ok(threshold)
}

/// The stored items a request continues from: its conversation's items, or the `previous_response_id`
/// chain (each response's input and output items, oldest first).
fn prior_items(st: &SbState, conv_id: Option<&str>, prev: Option<&str>) -> Result<Vec<Value>, ApiError> {
    if let Some(c) = conv_id {
        let conv = st.conversations.get(c).ok_or_else(|| conv_not_found(c))?;
        return Ok(conv.items.clone());
    }
    let Some(p) = prev else { return Ok(vec![]) };
    let mut cur = Some(st.responses.get(p).ok_or_else(|| {
        ApiError::not_found(format!("Previous response with id '{p}' not found."), Some("previous_response_id"))
    })?);
    let mut chain = Vec::new();
    while let Some(r) = cur {
        chain.push(r);
        cur = r.previous_response_id.as_ref().and_then(|id| st.responses.get(id));
    }
    let mut items = Vec::new();
    for r in chain.iter().rev() {
        items.extend(r.input_items.iter().cloned());
        if matches!(r.status.as_str(), "completed" | "incomplete") {
            items.extend(r.output.iter().cloned());
        }
    }
    Ok(items)
}

/// The prompt cache scope of a request: its `prompt_cache_key`, else its conversation, else one scope
/// per model (always within the model).
fn cache_scope(model: &str, key: Option<&str>, conv: Option<&str>) -> String {
    match (key, conv) {
        (Some(k), _) => format!("{model}\u{0}key:{k}"),
        (None, Some(c)) => format!("{model}\u{0}conv:{c}"),
        _ => format!("{model}\u{0}"),
    }
}

/// The instructions text the model reads, the current user message, and the history for the model.
fn model_inputs(plan: &context::Plan, instructions: &Option<String>) -> (String, String, Vec<Msg>) {
    let mut history = plan.history();
    let input_msgs: Vec<Msg> = plan
        .input
        .iter()
        .filter(|s| s.summary.is_none() && matches!(s.role.as_str(), "user" | "assistant" | "system" | "developer"))
        .map(|s| Msg::new(&s.role, &s.text))
        .collect();
    for s in &plan.input {
        if let Some(sum) = &s.summary {
            history.extend(sum.history());
        }
    }
    let cur = input_msgs.iter().rposition(|m| m.role == "user");
    let current = cur.map(|i| input_msgs[i].text.clone()).unwrap_or_default();
    let mut kb = instructions.clone().unwrap_or_default();
    for (i, m) in input_msgs.iter().enumerate() {
        if Some(i) != cur {
            if matches!(m.role.as_str(), "system" | "developer") {
                kb.push('\n');
                kb.push_str(&m.text);
            }
            history.push(m.clone());
        }
    }
    (kb, current, history)
}

/// Reasoning tokens a reasoning model spends: 8 + the word tokens of the current message.
pub(crate) fn reasoning_tokens(model: &str, current: &str) -> u64 {
    if is_reasoning_model(model) { 8 + model::count_tokens(current) } else { 0 }
}

pub(crate) fn response_usage(input: u64, cached: u64, output: u64, reasoning: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    })
}

/// POST /v1/responses
pub async fn create(State(sh): State<Arc<Shared>>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let fault = parts.extensions.get::<StreamFault>().map(|f| f.0.clone());
    let bytes = to_bytes(body, usize::MAX).await.map_err(|_| ApiError::server_error())?;
    let body = util::parse_object(&bytes)?;
    check_known(&body, RESPONSE_FIELDS)?;
    let Common { model, conv_id, prev, instructions, input_items, auto_truncate, prompt_cache_key, compact_now } =
        parse_common(&sh, &body, true)?;
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    let background = opt_bool(&body, "background")?.unwrap_or(false);
    let store = opt_bool(&body, "store")?.unwrap_or(true);
    if background && !store {
        return Err(ApiError::bad_request("Background mode requires store=true.", Some("background"), None));
    }
    let meta = metadata(&body)?;
    let user = opt_str(&body, "user")?;
    let safety_identifier = opt_str(&body, "safety_identifier")?;
    let max_output_tokens = match body.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            let n = n.as_u64().unwrap();
            if n < 16 {
                return Err(ApiError::bad_request(
                    format!("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {n} instead."),
                    Some("max_output_tokens"),
                    Some("integer_below_min_value"),
                ));
            }
            Some(n)
        }
        Some(other) => return Err(ApiError::invalid_type("max_output_tokens", "an integer", other)),
    };
    let cfg = sh.config();
    let window = cfg.window_for(&model);
    let mut compact_threshold = parse_context_management(&body, cfg.min_compact_threshold, window)?;
    if compact_now {
        compact_threshold = Some(0);
    }

    // Decide the answer and register the response under the state lock.
    let (id, msg_id, tokens, final_status, snapshot) = {
        let mut st = sh.state.lock().unwrap();
        if let Some(c) = &conv_id
            && st.conversations.get(c).is_some_and(|c| c.locked_by.is_some()) {
                return Err(ApiError::conversation_locked());
            }
        let prior = prior_items(&st, conv_id.as_deref(), prev.as_deref())?;
        let limits = context::Limits { window, auto_truncate, compact_threshold };
        let plan = context::plan(instructions.as_deref().unwrap_or(""), &prior, &input_items, &limits)?;
        let (kb, current, history) = model_inputs(&plan, &instructions);
        let answer = model::answer(&history, &current, &kb);
        let input_tokens = plan.input_tokens;
        let scope = cache_scope(&model, prompt_cache_key.as_deref(), conv_id.as_deref());
        let cached = st.cache_lookup(scope, plan.sequence.clone(), &cfg).min(input_tokens);
        let reasoning = reasoning_tokens(&model, &current);
        let mut tokens = model::tokens(&answer);
        let mut final_status = "completed";
        if let Some(m) = max_output_tokens {
            let room = m.saturating_sub(reasoning);
            if tokens.len() as u64 > room {
                tokens.truncate(room as usize);
                final_status = "incomplete";
            }
        }
        let text: String = tokens.concat();
        let id = sh.id("resp");
        let msg_id = sh.id("msg");
        let mut output = Vec::new();
        let mut compaction_tokens = 0;
        if let Some(s) = &plan.compaction {
            compaction_tokens = model::count_tokens(&s.text());
            output.push(s.item(sh.id("cmp")));
        }
        if is_reasoning_model(&model) {
            output.push(json!({"id": sh.id("rs"), "type": "reasoning", "summary": []}));
        }
        output.push(json!({
            "id": msg_id, "type": "message", "status": final_status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }));
        let output_tokens = tokens.len() as u64 + reasoning + compaction_tokens;
        let n = tokens.len() as u32;
        let total_delay = cfg.time_to_first_token + cfg.token_interval * n.saturating_sub(1);
        let r = StoredResponse {
            id: id.clone(),
            created_at: now(),
            model: model.clone(),
            instructions: instructions.clone(),
            conversation: conv_id.clone(),
            previous_response_id: prev.clone(),
            metadata: meta,
            store,
            background,
            max_output_tokens,
            status: if background && !stream { "queued".into() } else { "in_progress".into() },
            output,
            input_items,
            usage: response_usage(input_tokens, cached, output_tokens, reasoning),
            error: Value::Null,
            completed_at: None,
            final_status: final_status.to_string(),
            polls: 0,
            started: Instant::now(),
            total_delay,
            truncation: if auto_truncate { "auto" } else { "disabled" },
            prompt_cache_key: prompt_cache_key.clone(),
            user,
            safety_identifier,
        };
        let snapshot = r.to_json();
        st.responses.insert(id.clone(), r);
        if let Some(c) = &conv_id
            && let Some(conv) = st.conversations.get_mut(c) {
                conv.locked_by = Some(id.clone());
            }
        (id, msg_id, tokens, final_status.to_string(), snapshot)
    };
    if background && !stream {
        // Completes on a later poll (GET /responses/{id}).
        return Ok((StatusCode::OK, Json(snapshot)).into_response());
    }
    let mut pending = Pending { sh: sh.clone(), id: id.clone(), armed: true };
    if !stream {
        match fault {
            Some(FaultKind::StreamFailed) => return Ok(Json(pending.finish("failed")).into_response()),
            Some(FaultKind::ErrorEvent) => {
                pending.finish("failed");
                return Err(ApiError::server_error());
            }
            Some(FaultKind::CutStreamAfterDeltas(_)) => {
                pending.finish("failed");
                return Ok(util::cut_json_body(&snapshot));
            }
            _ => {}
        }
        let total = cfg.time_to_first_token + cfg.token_interval * (tokens.len() as u32).saturating_sub(1);
        if !total.is_zero() {
            tokio::time::sleep(total).await;
        }
        return Ok(Json(pending.finish(&final_status)).into_response());
    }

    let ttft = cfg.time_to_first_token;
    let interval = cfg.token_interval;
    let final_output = {
        let st = sh.state.lock().unwrap();
        st.responses.get(&id).map(|r| r.output.clone()).unwrap_or_default()
    };
    let s = async_stream::stream! {
        let mut pending = pending;
        let mut seq = 0u64;
        yield Ok::<Bytes, std::io::Error>(sse("response.created", json!({"response": snapshot}), &mut seq));
        yield Ok(sse("response.in_progress", json!({"response": snapshot}), &mut seq));
        match fault {
            Some(FaultKind::StreamFailed) => {
                let r = pending.finish("failed");
                yield Ok(sse("response.failed", json!({"response": r}), &mut seq));
                return;
            }
            Some(FaultKind::ErrorEvent) => {
                pending.finish("failed");
                yield Ok(sse("error", json!({"error": {
                    "type": "server_error", "code": "server_error",
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "param": null}}), &mut seq));
                return;
            }
            _ => {}
        }
        let cut = match fault { Some(FaultKind::CutStreamAfterDeltas(n)) => Some(n as usize), _ => None };
        let mut index = 0usize;
        for item in &final_output {
            if item["type"] != "message" {
                yield Ok(sse("response.output_item.added", json!({"output_index": index, "item": item}), &mut seq));
                yield Ok(sse("response.output_item.done", json!({"output_index": index, "item": item}), &mut seq));
                index += 1;
            }
        }
        let text: String = tokens.concat();
        yield Ok(sse("response.output_item.added", json!({"output_index": index,
            "item": {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}), &mut seq));
        yield Ok(sse("response.content_part.added", json!({"item_id": msg_id, "output_index": index, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}), &mut seq));
        for (i, tok) in tokens.iter().enumerate() {
            if cut == Some(i) {
                pending.finish("failed");
                // let hyper flush what was sent, then break the connection
                tokio::time::sleep(Duration::from_millis(30)).await;
                yield Err(std::io::Error::other("stream cut by sandbox fault"));
                return;
            }
            let wait = if i == 0 { ttft } else { interval };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let pad = "abcdefghijklmnop";
            let obf = &pad[..(16 - tok.len() % 16).min(16)];
            yield Ok(sse("response.output_text.delta", json!({"item_id": msg_id, "output_index": index, "content_index": 0,
                "delta": tok, "logprobs": [], "obfuscation": obf}), &mut seq));
        }
        if cut.is_some_and(|n| n >= tokens.len()) {
            pending.finish("failed");
            tokio::time::sleep(Duration::from_millis(30)).await;
            yield Err(std::io::Error::other("stream cut by sandbox fault"));
            return;
        }
        yield Ok(sse("response.output_text.done", json!({"item_id": msg_id, "output_index": index, "content_index": 0,
            "text": text, "logprobs": []}), &mut seq));
        let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
        yield Ok(sse("response.content_part.done", json!({"item_id": msg_id, "output_index": index, "content_index": 0,
            "part": part}), &mut seq));
        let item = final_output.last().cloned().unwrap_or(Value::Null);
        yield Ok(sse("response.output_item.done", json!({"output_index": index, "item": item}), &mut seq));
        let r = pending.finish(&final_status);
        let event = if final_status == "incomplete" { "response.incomplete" } else { "response.completed" };
        yield Ok(sse(event, json!({"response": r}), &mut seq));
    };
    let mut r = Response::new(Body::from_stream(s));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// Poll a background response: polls 1..=run_steps see in_progress, later ones complete it once the delay elapsed.
fn advance(sh: &Shared, st: &mut SbState, id: &str) {
    let run_steps = sh.config().run_steps;
    let Some(r) = st.responses.get_mut(id) else { return };
    if !r.background || is_terminal(&r.status) {
        return;
    }
    r.polls += 1;
    if r.polls > run_steps && r.started.elapsed() >= r.total_delay {
        let fs = r.final_status.clone();
        finish(sh, st, id, &fs);
    } else {
        r.status = "in_progress".into();
    }
}

fn resp_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Response with id '{id}' not found."), None)
}

/// GET /v1/responses/{id}
pub async fn retrieve(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut st = sh.state.lock().unwrap();
    advance(&sh, &mut st, &id);
    st.responses.get(&id).map(|r| Json(r.to_json())).ok_or_else(|| resp_not_found(&id))
}

/// DELETE /v1/responses/{id}
pub async fn delete(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut st = sh.state.lock().unwrap();
    if !st.responses.contains_key(&id) {
        return Err(resp_not_found(&id));
    }
    finish(&sh, &mut st, &id, "cancelled");
    st.responses.remove(&id);
    Ok(Json(json!({"id": id, "object": "response.deleted", "deleted": true})))
}

/// POST /v1/responses/{id}/cancel (background responses only)
pub async fn cancel(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut st = sh.state.lock().unwrap();
    let r = st.responses.get(&id).ok_or_else(|| resp_not_found(&id))?;
    if !r.background {
        return Err(ApiError::bad_request("Only responses created with background=true can be cancelled.", None, None));
    }
    match r.status.as_str() {
        "cancelled" => Ok(Json(r.to_json())),
        s if is_terminal(s) => Err(ApiError::bad_request(format!("Cannot cancel a {s} response."), None, None)),
        _ => Ok(Json(finish(&sh, &mut st, &id, "cancelled").unwrap_or(Value::Null))),
    }
}

async fn read_body(bytes: Bytes) -> Result<Map<String, Value>, ApiError> {
    util::parse_object(&bytes)
}

/// POST /v1/conversations
pub async fn create_conversation(State(sh): State<Arc<Shared>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = read_body(bytes).await?;
    check_known(&body, &["items", "metadata"])?;
    let meta = metadata(&body)?;
    let items = normalize_items(&sh, body.get("items"), "items", Some(20))?;
    let conv = Conversation { id: sh.id("conv"), created_at: now(), metadata: meta, items, locked_by: None };
    let out = conv.to_json();
    sh.state.lock().unwrap().conversations.insert(conv.id.clone(), conv);
    Ok(Json(out))
}

/// GET /v1/conversations/{id}
pub async fn get_conversation(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let st = sh.state.lock().unwrap();
    st.conversations.get(&id).map(|c| Json(c.to_json())).ok_or_else(|| conv_not_found(&id))
}

/// POST /v1/conversations/{id} `{metadata}`
pub async fn update_conversation(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(bytes).await?;
    check_known(&body, &["metadata"])?;
    if !body.contains_key("metadata") {
        return Err(ApiError::missing("metadata"));
    }
    let meta = metadata(&body)?;
    let mut st = sh.state.lock().unwrap();
    let c = st.conversations.get_mut(&id).ok_or_else(|| conv_not_found(&id))?;
    c.metadata = meta;
    Ok(Json(c.to_json()))
}

/// DELETE /v1/conversations/{id}
pub async fn delete_conversation(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut st = sh.state.lock().unwrap();
    st.conversations.remove(&id).ok_or_else(|| conv_not_found(&id))?;
    Ok(Json(json!({"id": id, "object": "conversation.deleted", "deleted": true})))
}

/// POST /v1/conversations/{id}/items `{items}` (1–20 items)
pub async fn add_items(State(sh): State<Arc<Shared>>, Path(id): Path<String>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = read_body(bytes).await?;
    check_known(&body, &["items"])?;
    if !body.contains_key("items") {
        return Err(ApiError::missing("items"));
    }
    if !sh.state.lock().unwrap().conversations.contains_key(&id) {
        return Err(conv_not_found(&id));
    }
    let items = normalize_items(&sh, body.get("items"), "items", Some(20))?;
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid 'items': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("items"),
            Some("empty_array"),
        ));
    }
    let mut st = sh.state.lock().unwrap();
    let c = st.conversations.get_mut(&id).ok_or_else(|| conv_not_found(&id))?;
    c.items.extend(items.iter().cloned());
    let first = items.first().and_then(|v| v.get("id")).cloned();
    let last = items.last().and_then(|v| v.get("id")).cloned();
    Ok(Json(json!({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": false})))
}

/// GET /v1/conversations/{id}/items?limit&order&after
pub async fn list_items(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = util::list_query(q.as_deref())?;
    let st = sh.state.lock().unwrap();
    let c = st.conversations.get(&id).ok_or_else(|| conv_not_found(&id))?;
    Ok(Json(util::paginate(&c.items, &q)))
}

/// GET /v1/conversations/{id}/items/{item_id}
pub async fn get_item(
    State(sh): State<Arc<Shared>>,
    Path((id, item_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let st = sh.state.lock().unwrap();
    let c = st.conversations.get(&id).ok_or_else(|| conv_not_found(&id))?;
    c.items
        .iter()
        .find(|i| i.get("id").and_then(Value::as_str) == Some(item_id.as_str()))
        .map(|i| Json(i.clone()))
        .ok_or_else(|| ApiError::not_found(format!("Item with id '{item_id}' not found."), None))
}

const INPUT_TOKENS_FIELDS: &[&str] = &[
    "conversation", "input", "instructions", "model", "parallel_tool_calls", "personality", "previous_response_id",
    "reasoning", "text", "tool_choice", "tools", "truncation",
];

/// POST /v1/responses/input_tokens: the input tokens the request would bill (after `truncation: "auto"`;
/// with truncation disabled the whole context is counted, even over the window).
pub async fn input_tokens(State(sh): State<Arc<Shared>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = read_body(bytes).await?;
    check_known(&body, INPUT_TOKENS_FIELDS)?;
    let c = parse_common(&sh, &body, false)?;
    let cfg = sh.config();
    let st = sh.state.lock().unwrap();
    let prior = prior_items(&st, c.conv_id.as_deref(), c.prev.as_deref())?;
    let window = if c.auto_truncate { cfg.window_for(&c.model) } else { u64::MAX };
    let limits = context::Limits { window, auto_truncate: c.auto_truncate, compact_threshold: None };
    let plan = context::plan(c.instructions.as_deref().unwrap_or(""), &prior, &c.input_items, &limits)?;
    Ok(Json(json!({"object": "response.input_tokens", "input_tokens": plan.input_tokens})))
}

const COMPACT_FIELDS: &[&str] = &[
    "input", "instructions", "model", "previous_response_id", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "service_tier",
];

/// POST /v1/responses/compact: the visible user messages, then one compaction item for the rest.
pub async fn compact(State(sh): State<Arc<Shared>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = read_body(bytes).await?;
    check_known(&body, COMPACT_FIELDS)?;
    let c = parse_common(&sh, &body, true)?;
    let cfg = sh.config();
    let out = {
        let st = sh.state.lock().unwrap();
        let prior = prior_items(&st, None, c.prev.as_deref())?;
        let limits = context::Limits { window: cfg.window_for(&c.model), auto_truncate: false, compact_threshold: None };
        let plan = context::plan(c.instructions.as_deref().unwrap_or(""), &prior, &c.input_items, &limits)?;
        let all: Vec<&Value> = prior.iter().chain(c.input_items.iter()).collect();
        let hides = |v: &Value| {
            v["type"] == "compaction"
                && v["encrypted_content"].as_str().and_then(context::Summary::decode).is_some_and(|s| s.hides)
        };
        let start = all.iter().rposition(|v| hides(v)).unwrap_or(0);
        let mut summary = context::Summary::default();
        let mut output = Vec::new();
        for v in &all[start..] {
            if v["type"] == "compaction" {
                if let Some(s) = v["encrypted_content"].as_str().and_then(context::Summary::decode) {
                    summary.absorb(&s);
                }
            } else if item_msg(v).is_some_and(|m| m.role == "user") {
                output.push((*v).clone());
            }
        }
        summary.prune();
        let out_tokens = model::count_tokens(&summary.text());
        output.push(summary.item(sh.id("cmp")));
        let usage = response_usage(plan.input_tokens, 0, out_tokens, 0);
        json!({"id": sh.id("resp"), "object": "response.compaction", "created_at": now(), "output": output, "usage": usage})
    };
    sh.bill(Bill {
        endpoint: Endpoint::Compact,
        model: &c.model,
        usage: &out["usage"],
        cache_key: c.prompt_cache_key.as_deref(),
        user: None,
        conversation: None,
    });
    Ok(Json(out))
}
