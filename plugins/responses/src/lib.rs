//! The Responses backend: one conversation per user (`/conversations`), one `POST /responses`
//! per turn, streamed (variant B) or not (variant A, plain or `background: true` + polling).
//!
//! The logic is generic over [`Effects`]: the wasm guest runs it on the host's imports, native
//! tests on a scripted fake.

use serde_json::{Value, json};
pub use swapbot_plugin_common as common;
use swapbot_plugin_common::*;

pub const NAME: &str = "responses";
pub const ID_MAP: &str = "user_conversations.json";

/// The Responses backend, as the wasm component exports it.
pub struct Responses;

impl Backend for Responses {
    fn describe() -> Description {
        describe()
    }
    fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError> {
        chat(fx, turn)
    }
}

swapbot_plugin_common::export_backend!(Responses);

pub fn describe() -> Description {
    Description {
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        contract: CONTRACT.into(),
        id_map: Some(ID_MAP.into()),
        session_label: "conversation_id".into(),
        turn_label: "response_id".into(),
    }
}

/// The session a turn runs in.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub new: bool,
    pub replayed: u32,
}

/// One conversation item for a replayed message. Plain string content for both roles: the one
/// form the live API and the spec both accept.
pub fn history_item(m: &HistoryMessage) -> Value {
    json!({"type": "message", "role": m.role.as_str(), "content": m.text})
}

/// The conversation a turn runs in: the stored one, taken on trust (no `GET /conversations/{id}`
/// first: the spec calls that check optional, and it cost every turn a round trip; a conversation
/// that is gone shows as a 404 on `POST /responses`, see [`chat`]), or a new one replaying
/// `recent_history()`.
pub fn open_conversation<E: Effects>(
    fx: &mut E,
    session_id: Option<&str>,
) -> Result<Session, ChatError> {
    if let Some(id) = session_id.filter(|s| !s.is_empty()) {
        return Ok(Session {
            id: id.to_owned(),
            new: false,
            replayed: 0,
        });
    }
    let history = fx.recent_history();
    create_conversation(fx, &history)
}

/// `POST /conversations` with the first ≤20 items, then the rest in batches.
pub fn create_conversation<E: Effects>(
    fx: &mut E,
    history: &[HistoryMessage],
) -> Result<Session, ChatError> {
    let items: Vec<Value> = replayable(history).into_iter().map(history_item).collect();
    let first = items.len().min(MAX_ITEMS_PER_CALL);
    let body = if first == 0 {
        json!({})
    } else {
        json!({"items": items[..first]})
    };
    let req = HttpRequest::post("/conversations").json(&body);
    let v = call_json(fx, req, |_| None)?;
    let id = req_str("POST /conversations", &v, "id")?.to_owned();
    fx.session_started(&id);
    fx.log(
        Level::Info,
        &format!("created conversation {id} with {first} item(s)"),
    );
    append_items(fx, &id, &items[first..]).map_err(|e| e.with_session(Some(&id)))?;
    Ok(Session {
        id,
        new: true,
        replayed: items.len() as u32,
    })
}

fn append_items<E: Effects>(fx: &mut E, id: &str, items: &[Value]) -> Result<(), ChatError> {
    for batch in items.chunks(MAX_ITEMS_PER_CALL) {
        let req = HttpRequest::post(format!("/conversations/{}/items", path_segment(id)))
            .json(&json!({"items": batch}));
        let mut gone = false;
        call_json(fx, req, |r| {
            gone = r.status == 404;
            None
        })
        .map_err(|e| {
            if gone {
                ChatError::new(ErrorKind::SessionGone, e.message, false)
            } else {
                e
            }
        })?;
    }
    Ok(())
}

/// How a conversation is kept within the model's context window (option `context`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextMode {
    /// `truncation: "auto"`: the oldest items drop out of what the model sees.
    Truncate,
    /// Server-side compaction at a token threshold, with truncation as the backstop.
    Compact { threshold: u64 },
}

/// The smallest `compact_threshold` the API accepts.
pub const MIN_COMPACT_THRESHOLD: u64 = 1000;
pub const DEFAULT_COMPACT_THRESHOLD: u64 = 100_000;

impl ContextMode {
    pub fn of(settings: &Settings) -> Result<ContextMode, ChatError> {
        match settings.option("context") {
            None | Some("truncate") => Ok(ContextMode::Truncate),
            Some("compact") => {
                let threshold = match settings.option("compact-threshold") {
                    None => DEFAULT_COMPACT_THRESHOLD,
                    Some(v) => v
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n >= MIN_COMPACT_THRESHOLD)
                        .ok_or_else(|| {
                            ChatError::config(format!(
                                "compact-threshold={v:?}: expected a whole number of tokens, at least {MIN_COMPACT_THRESHOLD}"
                            ))
                        })?,
                };
                Ok(ContextMode::Compact { threshold })
            }
            Some(other) => Err(ChatError::config(format!(
                "context={other:?}: expected `truncate` or `compact`"
            ))),
        }
    }
}

/// The `POST /responses` body for a turn (without `stream` / `background`).
///
/// The prompt is laid out for the prompt cache: `instructions` stays the same every turn, the
/// conversation follows, and the turn's context comes last, after the user's words
/// ([`ContextLayout::Input`], the default).
pub fn response_body(turn: &Turn, conversation: &str) -> Result<Value, ChatError> {
    let layout = ContextLayout::of(&turn.settings, ContextLayout::Input)?;
    let mode = ContextMode::of(&turn.settings)?;
    let mut content = vec![json!({"type": "input_text", "text": turn.text})];
    let instructions = match layout {
        ContextLayout::Instructions => build_instructions(&turn.settings.instructions, &turn.context),
        ContextLayout::Input => {
            let block = context_block(&turn.context);
            if !block.is_empty() {
                content.push(json!({"type": "input_text", "text": block}));
            }
            turn.settings.instructions.clone()
        }
    };
    let mut body = json!({
        "model": turn.settings.model,
        "conversation": conversation,
        "input": [{"role": "user", "content": content}],
        // Without it a conversation that outgrows the window is refused for good.
        "truncation": "auto",
    });
    if let ContextMode::Compact { threshold } = mode {
        body["context_management"] = json!([{"type": "compaction", "compact_threshold": threshold}]);
    }
    if !turn.cache_key.is_empty() {
        body["prompt_cache_key"] = Value::String(turn.cache_key.clone());
    }
    if !instructions.is_empty() {
        body["instructions"] = Value::String(instructions);
    }
    Ok(body)
}

/// A 404 on `POST /responses` that names the conversation (not e.g. `model_not_found`): the
/// stored conversation is gone (deleted, expired, another project's). Nothing was applied: [`chat`]
/// starts a new conversation and asks again.
fn conversation_gone(resp: &HttpResponse, conversation: &str) -> Option<ChatError> {
    let api = ApiError::from_body(&resp.body);
    let names_it = api.message.to_ascii_lowercase().contains("conversation")
        || api.message.contains(conversation);
    (resp.status == 404 && api.code != "model_not_found" && names_it).then(|| {
        ChatError::new(
            ErrorKind::SessionGone,
            format!("POST /responses: conversation {conversation} not found (HTTP 404)"),
            true,
        )
    })
}

/// One user turn.
pub fn chat<E: Effects>(fx: &mut E, turn: &Turn) -> Result<Answer, ChatError> {
    if turn.settings.model.trim().is_empty() {
        return Err(ChatError::config(
            "no model configured for the Responses backend",
        ));
    }
    // Settings are checked before anything is created.
    ContextLayout::of(&turn.settings, ContextLayout::Input)?;
    ContextMode::of(&turn.settings)?;
    let stream = turn.settings.stream()?;
    let background = turn.settings.background()?;
    let mut session = open_conversation(fx, turn.session_id.as_deref())?;
    let ask = |fx: &mut E, id: &str| {
        if stream {
            stream_turn(fx, turn, id)
        } else {
            plain_turn(fx, turn, id, background)
        }
    };
    let mut result = ask(fx, &session.id);
    if let Err(e) = &result
        && e.kind == ErrorKind::SessionGone
        && !session.new
    {
        // Refused before anything streamed: once, in a new conversation with the history.
        fx.log(
            Level::Info,
            &format!("conversation {} is gone (404): starting a new one", session.id),
        );
        session = open_conversation(fx, None)?;
        result = ask(fx, &session.id);
    }
    let created = if session.new {
        Some(session.id.as_str())
    } else {
        None
    };
    match result {
        Ok(done) => Ok(Answer {
            text: done.text,
            session_id: Some(session.id.clone()),
            turn_id: done.id,
            new_session: session.new,
            replayed: session.replayed,
            usage: done.usage,
        }),
        Err(e) => Err(e.with_session(created)),
    }
}

/// What a finished response gave.
#[derive(Debug)]
pub struct Finished {
    pub id: String,
    pub text: String,
    pub usage: Option<Usage>,
}

/// The text of a response object: every `output_text` part of every `message` item, joined.
pub fn output_text(response: &Value) -> String {
    let mut out = String::new();
    for item in response
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if item.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        for part in item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("type").and_then(Value::as_str) == Some("output_text")
                && let Some(t) = part.get("text").and_then(Value::as_str)
            {
                out.push_str(t);
            }
        }
    }
    out
}

pub fn usage_of(response: &Value) -> Option<Usage> {
    let u = response.get("usage")?;
    if !u.is_object() {
        return None;
    }
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        input_tokens: n("/input_tokens"),
        cached_input_tokens: n("/input_tokens_details/cached_tokens"),
        output_tokens: n("/output_tokens"),
        reasoning_tokens: n("/output_tokens_details/reasoning_tokens"),
    })
}

/// A response object that ended without an answer → model-failed (with its reason).
fn unfinished(response: &Value, status: &str) -> ChatError {
    let id = opt_str(response, "id");
    let detail = match unfinished_detail(response, status, "error") {
        d if !d.is_empty() => d,
        _ if status == "incomplete" => "unknown reason".to_owned(),
        _ => "no details".to_owned(),
    };
    ChatError::model_failed(format!("response {} {status}: {detail}", id.unwrap_or("?")))
        .with_turn(id)
        .with_usage(usage_of(response))
}

fn finish(response: &Value, id: &str) -> Result<Finished, ChatError> {
    let text = output_text(response).trim().to_owned();
    if text.is_empty() {
        return Err(ChatError::model_failed(format!(
            "response {id} completed without output text"
        ))
        .with_turn(Some(id))
        .with_usage(usage_of(response)));
    }
    Ok(Finished {
        id: id.to_owned(),
        text,
        usage: usage_of(response),
    })
}

// ---------------------------------------------------------------------------------------------
// Variant B: streaming
// ---------------------------------------------------------------------------------------------

/// Stream one response, pushing text deltas as they arrive.
pub fn stream_turn<E: Effects>(
    fx: &mut E,
    turn: &Turn,
    conversation: &str,
) -> Result<Finished, ChatError> {
    let mut body = response_body(turn, conversation)?;
    body["stream"] = Value::Bool(true);
    let req = HttpRequest::post("/responses")
        .header("Accept", "text/event-stream")
        .json(&body);
    let what = req.what();
    let start = fx
        .http_stream(req)
        .map_err(|e| classify_transport(&what, &e))?;
    let mut events = match start {
        StreamStart::Events(s) => s,
        StreamStart::Refused(resp) => {
            return Err(conversation_gone(&resp, conversation)
                .unwrap_or_else(|| classify_http(&what, &resp)));
        }
    };
    let mut st = StreamState::default();
    let r = st.run(fx, &mut events);
    // Never make a turn retryable once its text reached the user.
    r.map_err(|e| {
        let retryable = e.retryable && !st.pushed;
        e.with_turn(st.id.as_deref()).with_retryable(retryable)
    })
}

/// A stream event, read in one pass into the few fields the loop uses; the rest (for most
/// events a whole response object echoing the request) is skipped, not built.
struct Event<'a> {
    ty: Option<JsonStr<'a>>,
    delta: Option<JsonStr<'a>>,
    text: Option<JsonStr<'a>>,
    /// The event's `response` object, when it has one.
    response: Option<Summary>,
}

impl<'a> Event<'a> {
    /// An event whose fields do not fit the types read ([`Wire`]) is read as a [`Value`]
    /// instead: a field of an unexpected type is ignored, as if absent, rather than costing
    /// the event.
    fn parse(data: &'a str) -> Result<Self, serde_json::Error> {
        if let Ok(w) = serde_json::from_str::<Wire>(data) {
            return Ok(Event { ty: w.ty, delta: w.delta, text: w.text, response: w.response.map(WireResponse::summary) });
        }
        let v: Value = serde_json::from_str(data)?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(|s| JsonStr(s.to_owned().into()));
        Ok(Event {
            ty: field("type"),
            delta: field("delta"),
            text: field("text"),
            response: v.get("response").map(Summary::of_value),
        })
    }
}

/// What [`Event::parse`] reads of an event.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    delta: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    text: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    response: Option<WireResponse<'a>>,
}

#[derive(serde::Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    status: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    output: Option<Vec<WireItem<'a>>>,
    usage: Option<WireUsage>,
}

#[derive(serde::Deserialize)]
struct WireItem<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<WirePart<'a>>>,
}

#[derive(serde::Deserialize)]
struct WirePart<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<JsonStr<'a>>,
    #[serde(borrow)]
    text: Option<JsonStr<'a>>,
}

#[derive(serde::Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<CachedTokens>,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    output_tokens_details: Option<ReasoningTokens>,
}

impl WireResponse<'_> {
    /// The same as [`Summary::of_value`] of the same object.
    fn summary(self) -> Summary {
        let mut text = String::new();
        for item in self.output.iter().flatten().filter(|i| i.ty.as_deref() == Some("message")) {
            for part in item.content.iter().flatten().filter(|p| p.ty.as_deref() == Some("output_text")) {
                if let Some(t) = &part.text {
                    text.push_str(t);
                }
            }
        }
        Summary {
            id: self.id.map(|id| id.0.into_owned()),
            text,
            usage: self.usage.map(|u| Usage {
                input_tokens: u.input_tokens,
                cached_input_tokens: u.input_tokens_details.map_or(0, |d| d.cached_tokens),
                output_tokens: u.output_tokens,
                reasoning_tokens: u.output_tokens_details.map_or(0, |d| d.reasoning_tokens),
            }),
        }
    }
}

/// The `response` object of a terminal event (null when it has none).
fn response_of(data: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct WithResponse {
        #[serde(default)]
        response: Value,
    }
    serde_json::from_str::<WithResponse>(data).map(|e| e.response).unwrap_or(Value::Null)
}

const TEXT_DELTA: &str = "response.output_text.delta";

#[derive(Default)]
struct StreamState {
    id: Option<String>,
    deltas: String,
    done_texts: Vec<String>,
    pushed: bool,
}

impl StreamState {
    fn run<E: Effects>(
        &mut self,
        fx: &mut E,
        events: &mut E::Stream,
    ) -> Result<Finished, ChatError> {
        loop {
            let ev = match events.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Err(self.cut("the stream ended before a terminal event")),
                Err(e) => {
                    let why = match e {
                        TransportError::Timeout(m) => format!("timed out: {m}"),
                        TransportError::Connection(m) | TransportError::Refused(m) => m,
                    };
                    return Err(self.cut(&format!("the stream broke: {why}")));
                }
            };
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                return Err(self.cut("[DONE] before a terminal event"));
            }
            if ev.event.as_deref().is_some_and(|name| self.passes_over(name)) {
                continue;
            }
            // Most of a stream is text deltas: read their two members without a parser. The
            // scan declines whatever it cannot read exactly, and the full parse below has it.
            if ev.event.as_deref() == Some(TEXT_DELTA)
                && let Some([ty, delta]) = scan::top_level_strs(data, ["type", "delta"])
                && ty.as_deref().is_none_or(|ty| ty == TEXT_DELTA)
            {
                self.push_delta(fx, delta.as_deref());
                continue;
            }
            // Until the id is known, the first of these is read for it alone, and it echoes the
            // whole request (instructions, tools, and under `context-layout=instructions` the
            // knowledge-base context): read the id one object down without a parser.
            if let Some(name @ ("response.created" | "response.in_progress" | "response.queued")) = ev.event.as_deref()
                && let Some(([ty], response)) = scan::nested_strs(data, ["type"], "response", ["id"])
                && ty.as_deref().is_none_or(|ty| ty == name)
            {
                self.id = response.and_then(|[id]| id).map(std::borrow::Cow::into_owned);
                continue;
            }
            let event = match Event::parse(data) {
                Ok(event) => event,
                Err(e) => {
                    fx.log(
                        Level::Warn,
                        &format!(
                            "skipping an unparsable stream event ({e}): {}",
                            truncate(data, 80)
                        ),
                    );
                    continue;
                }
            };
            let ty = event.ty.as_deref().or(ev.event.as_deref()).unwrap_or("");
            match ty {
                "response.created" | "response.in_progress" | "response.queued"
                    if self.id.is_none() =>
                {
                    self.id = event.response.and_then(|r| r.id);
                }
                TEXT_DELTA => self.push_delta(fx, event.delta.as_deref()),
                "response.output_text.done" => {
                    if let Some(t) = event.text {
                        self.done_texts.push(t.0.into_owned());
                    }
                }
                "response.completed" => {
                    return self.complete(fx, event.response.unwrap_or_default());
                }
                "response.failed" | "response.incomplete" | "response.cancelled" => {
                    let status = ty.trim_start_matches("response.");
                    return Err(unfinished(&response_of(data), status));
                }
                "error" => {
                    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    let api = ApiError::from_value(&v);
                    return Err(classify_api_error("error event in the stream", &api));
                }
                _ => {}
            }
        }
    }

    fn push_delta<E: Effects>(&mut self, fx: &mut E, delta: Option<&str>) {
        if let Some(d) = delta
            && !d.is_empty()
        {
            fx.push_text(d);
            self.pushed = true;
            self.deltas.push_str(d);
        }
    }

    /// Whether an event its `event:` line names this way can go unparsed: nothing in it is read.
    /// The name is the event's `type` (the wire), and most of a stream's bytes are in events
    /// read for nothing: `in_progress` repeats the whole response object `created` had (its
    /// instructions, and the knowledge-base context under `context-layout=instructions`), the
    /// `*.done` items and parts repeat the whole text. Only names of a plain answer's events are passed over; any other name, the
    /// SSE default `message` say, is parsed and matched by its `type`, as before.
    fn passes_over(&self, name: &str) -> bool {
        match name {
            "response.created" | "response.in_progress" | "response.queued" => self.id.is_some(),
            "response.output_item.added"
            | "response.output_item.done"
            | "response.content_part.added"
            | "response.content_part.done" => true,
            _ => false,
        }
    }

    fn cut(&self, why: &str) -> ChatError {
        ChatError::new(
            ErrorKind::StreamCut,
            format!("POST /responses: {why}"),
            !self.pushed,
        )
    }

    fn complete<E: Effects>(&mut self, fx: &mut E, resp: Summary) -> Result<Finished, ChatError> {
        let id = resp.id.or(self.id.take()).unwrap_or_default();
        let from_output = resp.text;
        let from_done = self.done_texts.concat();
        // The completed response is authoritative; then the done events; then the deltas.
        let text = if !from_output.trim().is_empty() {
            if from_output != self.deltas {
                fx.log(
                    Level::Debug,
                    "streamed deltas differ from the completed response's text",
                );
            }
            from_output
        } else if !from_done.trim().is_empty() {
            from_done
        } else {
            self.deltas.clone()
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(ChatError::model_failed(format!(
                "response {id} completed without output text"
            ))
            .with_usage(resp.usage));
        }
        Ok(Finished {
            id,
            text,
            usage: resp.usage,
        })
    }
}

/// What a response object says: its id, its output text ([`output_text`]) and its usage
/// ([`usage_of`]).
#[derive(Default)]
struct Summary {
    id: Option<String>,
    text: String,
    usage: Option<Usage>,
}

impl Summary {
    fn of_value(v: &Value) -> Self {
        Summary { id: opt_str(v, "id").map(str::to_owned), text: output_text(v), usage: usage_of(v) }
    }
}

// ---------------------------------------------------------------------------------------------
// Variant A: no streaming
// ---------------------------------------------------------------------------------------------

const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "incomplete"];

/// One `POST /responses` without `stream`; with `background: true` poll until it ends.
pub fn plain_turn<E: Effects>(
    fx: &mut E,
    turn: &Turn,
    conversation: &str,
    background: bool,
) -> Result<Finished, ChatError> {
    let started = fx.now_ms();
    let mut body = response_body(turn, conversation)?;
    if background {
        body["background"] = Value::Bool(true);
    }
    let req = HttpRequest::post("/responses").json(&body);
    let answer = call_ok(fx, req, |r| conversation_gone(r, conversation))?;
    // The usual answer, a completed response with text, is read into types; anything else
    // (in progress, failed, odd) as a Value, below.
    if let Ok(wire) = serde_json::from_str::<WireResponse>(&answer.body)
        && wire.status.as_deref().is_none_or(|s| s == "completed")
        && wire.id.as_deref().is_some_and(|id| !id.is_empty())
    {
        let summary = wire.summary();
        let text = summary.text.trim();
        if !text.is_empty() {
            return Ok(Finished { id: summary.id.unwrap_or_default(), text: text.to_owned(), usage: summary.usage });
        }
    }
    let mut resp = parse_json("POST /responses", &answer.body)?;
    let id = req_str("POST /responses", &resp, "id")?.to_owned();
    let poll = turn.settings.poll_interval();
    let deadline = turn.settings.deadline();
    loop {
        let status = opt_str(&resp, "status").unwrap_or("completed").to_owned();
        match status.as_str() {
            "completed" => return finish(&resp, &id),
            s if TERMINAL.contains(&s) => return Err(unfinished(&resp, s).with_turn(Some(&id))),
            _ => {}
        }
        let elapsed = fx.now_ms().saturating_sub(started);
        if elapsed >= deadline {
            let cancel = HttpRequest::post(format!("/responses/{}/cancel", path_segment(&id)))
                .json(&json!({}));
            if let Err(e) = call_json(fx, cancel, |_| None) {
                fx.log(Level::Warn, &format!("cancelling response {id}: {e}"));
            }
            return Err(ChatError::new(
                ErrorKind::Timeout,
                format!("response {id} still {status} after {elapsed} ms: cancelled"),
                false,
            )
            .with_turn(Some(&id)));
        }
        let wait = u64::from(poll).min(deadline - elapsed).max(1) as u32;
        fx.sleep_ms(wait);
        let get = HttpRequest::get(format!("/responses/{}", path_segment(&id)));
        match call_json(fx, get, |_| None) {
            Ok(v) => resp = v,
            Err(e) if is_transient(&e) => {
                fx.log(Level::Warn, &format!("polling response {id}: {e}"));
            }
            Err(e) => return Err(e.with_turn(Some(&id))),
        }
    }
}

#[cfg(test)]
mod tests;
