//! The Chat Completions backend (`POST /chat/completions`): the API every OpenAI-compatible
//! server speaks (OpenAI, Ollama, vLLM, llama.cpp, LM Studio, …).
//!
//! Stateless: there is no server-side session. Each turn sends the system message (the
//! instructions, with the knowledge-base context in the default layout), the host's
//! `recent-history()` cut to a token budget, and the user's message.
//!
//! Options (`[backends.chat.options]`):
//! * `stream` (`true`/`false`, default `true`): stream the answer (`stream_options.include_usage`).
//! * `history-tokens` (default 6000): the most estimated tokens of history one prompt carries.
//! * `context-window` (unset: no limit): the model's window; the history then also fits in what
//!   the window leaves after the system message, the user's message and `max-tokens`.
//! * `max-tokens`: `max_completion_tokens`.
//! * `temperature` (0 to 2).
//! * `context-layout` (`instructions`, the default, or `input`): see [`ContextLayout`].
//! * `prompt-cache-key` (`true`/`false`, default `false`): send the turn's cache key as
//!   `prompt_cache_key` (OpenAI's; off by default because not every compatible server accepts it).
//!
//! `finish_reason`: `stop` is an answer; `length` with text is the (cut) answer, logged as a
//! warning, since a cut answer still helps the user more than none, and without text (the
//! whole budget went to reasoning) is `model-failed`; `content_filter`, `tool_calls` and
//! `function_call` (no tools are sent) are `model-failed`.

use serde_json::{Value, json};
pub use swapbot_plugin_common as common;
use swapbot_plugin_common::*;

pub const NAME: &str = "chat";
pub const PATH: &str = "/chat/completions";

pub const HISTORY_TOKENS: &str = "history-tokens";
pub const DEFAULT_HISTORY_TOKENS: u64 = 6_000;
pub const CONTEXT_WINDOW: &str = "context-window";
pub const MAX_TOKENS: &str = "max-tokens";
pub const TEMPERATURE: &str = "temperature";
pub const PROMPT_CACHE_KEY: &str = "prompt-cache-key";

/// The Chat Completions backend, as the wasm component exports it.
pub struct Chat;

impl Backend for Chat {
    fn describe() -> Description {
        describe()
    }
    fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError> {
        chat(fx, turn)
    }
}

swapbot_plugin_common::export_backend!(Chat);

pub fn describe() -> Description {
    Description {
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        contract: CONTRACT.into(),
        // Stateless: the host keeps the conversation (its history) and no ids.
        id_map: None,
        session_label: "-".into(),
        turn_label: "completion_id".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Token estimate and the history budget
// ---------------------------------------------------------------------------------------------

/// What one message costs besides its text (role and separators in the chat template; OpenAI
/// documents 3 to 4 for its models).
pub const MESSAGE_OVERHEAD: u64 = 4;

/// An estimate of the tokens of `text` as one message: a quarter of the ASCII bytes (OpenAI's
/// rule of thumb for English, ~4 characters a token) plus one per non-ASCII character (Cyrillic,
/// CJK and emoji take ~0.5 to 1.5 tokens a character in the common BPE vocabularies, so this
/// errs on the long side for most of them), plus [`MESSAGE_OVERHEAD`].
///
/// Not tiktoken: its vocabularies are megabytes that would multiply this plugin's size many
/// times over, and they would be exact only for OpenAI's models anyway, while this backend also
/// serves Llama, Qwen or Mistral models with their own tokenizers. An estimate that is cheap
/// and a little pessimistic is what a budget needs.
pub fn estimate_tokens(text: &str) -> u64 {
    let (mut ascii, mut other) = (0u64, 0u64);
    for ch in text.chars() {
        if ch.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4) + other + MESSAGE_OVERHEAD
}

/// The newest part of `history` whose estimate fits `budget`, oldest first.
///
/// The history is cut in whole exchanges: a user message and the assistant answer after it go
/// or stay together (an answer without its question, or a question without its answer, reads to
/// the model as a different conversation). Cutting stops at the first exchange that does not
/// fit, so what is kept is always the contiguous recent past. Empty messages are dropped (the API
/// refuses empty content).
pub fn bounded_history(history: &[HistoryMessage], budget: u64) -> Vec<&HistoryMessage> {
    let msgs = replayable(history);
    // Units from the newest: [user, assistant] pairs, or a single message without its partner.
    let mut units: Vec<&[&HistoryMessage]> = Vec::new();
    let mut end = msgs.len();
    while end > 0 {
        let start = if end >= 2
            && msgs[end - 1].role == Role::Assistant
            && msgs[end - 2].role == Role::User
        {
            end - 2
        } else {
            end - 1
        };
        units.push(&msgs[start..end]);
        end = start;
    }
    let mut used = 0u64;
    let mut kept = 0usize;
    for unit in &units {
        let cost: u64 = unit.iter().map(|m| estimate_tokens(&m.text)).sum();
        if used + cost > budget {
            break;
        }
        used += cost;
        kept += unit.len();
    }
    msgs[msgs.len() - kept..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------------------------

/// The turn's settings, read and checked before any request.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub stream: bool,
    pub layout: ContextLayout,
    pub history_tokens: u64,
    pub context_window: Option<u64>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub cache_key: bool,
}

impl Plan {
    pub fn of(settings: &Settings) -> Result<Plan, ChatError> {
        if settings.model.trim().is_empty() {
            return Err(ChatError::config("no model configured for the Chat Completions backend"));
        }
        let positive = |key: &str| -> Result<Option<u64>, ChatError> {
            match settings.option(key) {
                None => Ok(None),
                Some(_) => match settings.number(key, 0)? {
                    0 => Err(ChatError::config(format!("{key}=0: expected at least 1"))),
                    n => Ok(Some(n)),
                },
            }
        };
        let temperature = match settings.option(TEMPERATURE) {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(t) if (0.0..=2.0).contains(&t) => Some(t),
                _ => {
                    return Err(ChatError::config(format!(
                        "{TEMPERATURE}={v:?}: expected a number from 0 to 2"
                    )));
                }
            },
        };
        Ok(Plan {
            stream: settings.stream()?,
            layout: ContextLayout::of(settings, ContextLayout::Instructions)?,
            history_tokens: settings.number(HISTORY_TOKENS, DEFAULT_HISTORY_TOKENS)?,
            context_window: positive(CONTEXT_WINDOW)?,
            max_tokens: positive(MAX_TOKENS)?,
            temperature,
            cache_key: settings.flag(PROMPT_CACHE_KEY, false)?,
        })
    }
}

/// The request body, and how many history messages it carries.
pub fn request_body(turn: &Turn, plan: &Plan, history: &[HistoryMessage]) -> (Value, u32) {
    let (system, user) = match plan.layout {
        ContextLayout::Instructions => (
            build_instructions(&turn.settings.instructions, &turn.context),
            turn.text.clone(),
        ),
        ContextLayout::Input => (
            turn.settings.instructions.clone(),
            format!("{}{}", turn.text, context_block(&turn.context)),
        ),
    };
    let mut budget = plan.history_tokens;
    if let Some(window) = plan.context_window {
        let fixed = estimate_tokens(&system) + estimate_tokens(&user) + plan.max_tokens.unwrap_or(0);
        budget = budget.min(window.saturating_sub(fixed));
    }
    let kept = bounded_history(history, budget);
    let mut messages = Vec::with_capacity(kept.len() + 2);
    if !system.trim().is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &kept {
        messages.push(json!({"role": m.role.as_str(), "content": m.text}));
    }
    messages.push(json!({"role": "user", "content": user}));
    let mut body = json!({"model": turn.settings.model, "messages": messages});
    if plan.stream {
        body["stream"] = Value::Bool(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(n) = plan.max_tokens {
        body["max_completion_tokens"] = json!(n);
    }
    if let Some(t) = plan.temperature {
        body["temperature"] = json!(t);
    }
    if plan.cache_key && !turn.cache_key.is_empty() {
        body["prompt_cache_key"] = Value::String(turn.cache_key.clone());
    }
    (body, kept.len() as u32)
}

// ---------------------------------------------------------------------------------------------
// The turn
// ---------------------------------------------------------------------------------------------

/// One user turn.
pub fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError> {
    let plan = Plan::of(&turn.settings)?;
    let history = fx.recent_history();
    let (body, replayed) = request_body(turn, &plan, &history);
    fx.log(
        Level::Debug,
        &format!("{PATH}: {replayed} of {} history message(s) in the prompt", history.len()),
    );
    let req = HttpRequest::post(PATH).json(&body);
    let done = if plan.stream {
        stream_turn(fx, turn, req)?
    } else {
        plain_turn(fx, req)?
    };
    let text = done.text.trim().to_owned();
    Ok(Answer {
        text,
        session_id: None,
        turn_id: done.id,
        // The host's history is the conversation: nothing is created, every turn carries it.
        new_session: false,
        replayed,
        usage: done.usage,
    })
}

/// What a finished completion gave.
#[derive(Debug, PartialEq)]
pub struct Completion {
    pub id: String,
    pub text: String,
    pub usage: Option<Usage>,
}

/// `usage` of a completion or of the last chunk.
pub fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        input_tokens: n("/prompt_tokens"),
        cached_input_tokens: n("/prompt_tokens_details/cached_tokens"),
        output_tokens: n("/completion_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    })
}

/// The verdict on a finished choice (see the crate docs for the `finish_reason` rules).
fn finished<E: Effects>(
    fx: &mut E,
    id: &str,
    text: String,
    finish: Option<&str>,
    usage: Option<Usage>,
) -> Result<Completion, ChatError> {
    let failed = |why: String| Err(ChatError::model_failed(why).with_turn(Some(id)).with_usage(usage));
    match finish {
        Some("content_filter") => return failed(format!("completion {id} stopped by the content filter")),
        Some(r @ ("tool_calls" | "function_call")) => {
            return failed(format!("completion {id} ended with {r} (tools are not supported)"));
        }
        Some("length") if text.trim().is_empty() => {
            return failed(format!("completion {id} hit the token limit before any text (finish_reason length)"));
        }
        Some("length") => fx.log(Level::Warn, &format!("completion {id}: answer cut at the token limit (finish_reason length)")),
        _ => {}
    }
    if text.trim().is_empty() {
        return failed(format!("completion {id} has no text"));
    }
    Ok(Completion {
        id: id.to_owned(),
        text,
        usage,
    })
}

/// `POST /chat/completions` without streaming.
pub fn plain_turn<E: Effects>(fx: &mut E, req: HttpRequest) -> Result<Completion, ChatError> {
    let what = req.what();
    let v = call_json(fx, req, |_| None)?;
    let id = req_str(&what, &v, "id")?.to_owned();
    let usage = usage_of(&v);
    let Some(choice) = v.pointer("/choices/0") else {
        return Err(ChatError::bad_response(format!("{what}: completion {id} has no choices")).with_turn(Some(&id)));
    };
    let message = choice.get("message");
    let text = message.and_then(|m| m.get("content")).and_then(Value::as_str).unwrap_or("");
    if text.is_empty()
        && let Some(refusal) = message.and_then(|m| m.get("refusal")).and_then(Value::as_str)
    {
        return Err(ChatError::model_failed(format!("completion {id} refused: {refusal}"))
            .with_turn(Some(&id))
            .with_usage(usage));
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    finished(fx, &id, text.to_owned(), finish, usage)
}

/// What a stream has given so far.
#[derive(Default)]
struct StreamState {
    id: Option<String>,
    text: String,
    finish: Option<String>,
    usage: Option<Usage>,
    pushed: bool,
}

impl StreamState {
    /// An error after text was shown is not retryable: a retry would show the answer twice.
    fn fail(&self, e: ChatError) -> ChatError {
        let retryable = e.retryable && !self.pushed;
        e.with_retryable(retryable).with_turn(self.id.as_deref()).with_usage(self.usage)
    }
}

/// `POST /chat/completions` with `stream: true`: `chat.completion.chunk` events, each delta pushed
/// to the user, until `data: [DONE]`.
pub fn stream_turn<E: Effects>(fx: &mut E, turn: &Turn, req: HttpRequest) -> Result<Completion, ChatError> {
    let what = req.what();
    let started = fx.now_ms();
    let deadline = turn.settings.deadline();
    let mut events = match fx.http_stream(req).map_err(|e| classify_transport(&what, &e))? {
        StreamStart::Events(s) => s,
        StreamStart::Refused(resp) => return Err(classify_http(&what, &resp)),
    };
    let mut st = StreamState::default();
    let mut done = false;
    loop {
        let elapsed = fx.now_ms().saturating_sub(started);
        if elapsed >= deadline {
            let e = ChatError::new(ErrorKind::Timeout, format!("{what}: stream still open after {elapsed} ms"), false);
            return Err(st.fail(e));
        }
        let event = match events.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                let e = ChatError::new(ErrorKind::StreamCut, format!("{what}: stream broke: {}", transport_text(&e)), true);
                return Err(st.fail(e));
            }
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        if data.is_empty() {
            continue;
        }
        let v = parse_json(&what, data).map_err(|e| st.fail(e))?;
        if v.get("error").is_some() {
            let e = classify_api_error(&format!("{what}: stream error"), &ApiError::from_value(&v));
            return Err(st.fail(e));
        }
        if st.id.is_none()
            && let Some(id) = opt_str(&v, "id").filter(|s| !s.is_empty())
        {
            st.id = Some(id.to_owned());
        }
        if let Some(u) = usage_of(&v) {
            st.usage = Some(u);
        }
        let Some(choice) = v.pointer("/choices/0") else { continue };
        if let Some(delta) = choice.pointer("/delta/content").and_then(Value::as_str)
            && !delta.is_empty()
        {
            fx.push_text(delta);
            st.pushed = true;
            st.text.push_str(delta);
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            st.finish = Some(r.to_owned());
        }
    }
    // `[DONE]` is the end of a stream; a server that closes right after the finish_reason chunk
    // has still finished the answer (only its usage chunk may be missing).
    if !done && st.finish.is_none() {
        let e = ChatError::new(ErrorKind::StreamCut, format!("{what}: stream ended before [DONE] or a finish_reason"), true);
        return Err(st.fail(e));
    }
    let Some(id) = st.id.clone() else {
        return Err(st.fail(ChatError::bad_response(format!("{what}: stream without a completion id"))));
    };
    let text = std::mem::take(&mut st.text);
    finished(fx, &id, text, st.finish.as_deref(), st.usage)
}

fn transport_text(e: &TransportError) -> &str {
    match e {
        TransportError::Timeout(m) | TransportError::Connection(m) | TransportError::Refused(m) => m,
    }
}

#[cfg(test)]
mod tests;
