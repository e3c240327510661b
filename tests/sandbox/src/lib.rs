//! # swapbot-sandbox: a stateful, deterministic OpenAI-compatible emulator
//!
//! Serves a faithful subset of the OpenAI HTTP API on `127.0.0.1` (axum + tokio), with state
//! (conversations, responses, threads, runs), deterministic answers and injectable faults.
//! It is meant for the tests of the host and the plugins, and for offline runs of the bot
//! (`swapbot-sandbox --port 8089` prints the two `export` lines to paste).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use swapbot_sandbox::{Sandbox, SandboxConfig, Fault, FaultKind};
//! let sb = Sandbox::start(SandboxConfig::default()).await?;
//! let base = sb.base_url(); // "http://127.0.0.1:PORT/v1"
//! sb.inject(Fault::on("/responses", FaultKind::RateLimited { retry_after_secs: 1 }));
//! // ... drive the code under test against `base` ...
//! assert!(sb.requests().iter().any(|r| r.path == "/v1/responses"));
//! sb.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Endpoints (all under `/v1`)
//! * Responses: `POST /responses` (plain, `stream: true`, `background: true`), `GET /responses/{id}`,
//!   `POST /responses/{id}/cancel` (background only), `DELETE /responses/{id}`,
//!   `POST /responses/compact`, `POST /responses/input_tokens`.
//! * Conversations: `POST /conversations`, `GET|POST|DELETE /conversations/{id}`,
//!   `POST|GET /conversations/{id}/items`, `GET /conversations/{id}/items/{item_id}`.
//!   Items (there and in a response's `input`): user/system/developer messages (string or `input_text`…
//!   parts), assistant messages (string, or `output_text` / `refusal` parts, `id` and `status` optional;
//!   `input_text` on an assistant is 400 "Supported values are: 'output_text' and 'refusal'."),
//!   compaction items (their `encrypted_content` is checked), other item kinds kept as given. At most 20
//!   per call.
//! * Assistants v2 (header `OpenAI-Beta: assistants=v2` required on every `/threads*` call, else 400):
//!   `POST /threads`, `GET /threads/{id}`, `POST|GET /threads/{id}/messages`,
//!   `POST|GET /threads/{id}/runs`, `GET /threads/{id}/runs/{run_id}`, `POST /threads/{id}/runs/{run_id}/cancel`.
//!   Any `assistant_id` string is accepted (there is no assistant store).
//!   With [`SandboxConfig::assistants_gone`] every `/threads*` call answers 404 `Invalid URL (METHOD /v1/threads…)`,
//!   the answer of the live API for an endpoint that does not exist.
//! * Embeddings: `POST /embeddings`.
//! * Chat Completions: `POST /chat/completions` (plain and `stream: true`), stateless.
//! * Anything else under `/v1`: 404 `Invalid URL (METHOD PATH)`.
//!
//! Every error has the OpenAI body `{"error":{"message","type","param","code"}}`. Every answer carries
//! `x-request-id`, `openai-processing-ms`, `openai-version` and `x-ratelimit-remaining-requests` headers.
//! Unknown top-level body fields (per the official OpenAPI spec) are rejected with 400
//! `unknown_parameter`, e.g. `assistant_id` on `/responses`.
//!
//! ## Authentication
//! With `api_key: Some(k)` every `/v1` request needs `Authorization: Bearer k` (401 `invalid_api_key`
//! otherwise). With `None` any request is accepted, with or without a bearer.
//!
//! ## Order of processing of one request
//! record → auth (401) → first matching [`Fault`] → `assistants_gone` / beta header check → handler.
//! Recorded requests include the ones answered with 401 or a fault. `/_sandbox/*` admin calls are not recorded.
//!
//! ## The deterministic model
//! The model sees only the history of the same conversation / thread (conversation items, then the
//! request's input; or the thread's messages before the run; or the chain of `previous_response_id`;
//! or the messages of a chat completion), never another one, and of it only what fits (see *Tokens and
//! the context window*: items dropped by truncation are not seen; a compaction item stands for the
//! items it replaced with their stated facts only). The *current message* is the last user message of the input (responses) or of
//! the thread (runs); *earlier user messages* are the user messages before it. Rules, first match wins
//! (matching is case-insensitive, the current message is trimmed):
//!
//! 1. `echo: X` → `X` (verbatim, trimmed).
//! 2. `long answer N` → a deterministic text of at least N and fewer than N+100 characters, in
//!    paragraphs (separated by `\n\n`) of sentences. N is capped at 200 000.
//! 3. contains `what is my name` → `Your name is X.` where X comes from the latest earlier user
//!    message containing `my name is X` (X ends at `.`, `,`, `!`, `?`, `;` or end of line), else
//!    `I don't know your name yet.`
//! 4. contains `what is my <thing>` or `what's my <thing>` (thing: up to 4 words, up to punctuation)
//!    → `Your <thing> is X.` where X comes from the latest earlier user message stating
//!    `my <thing> is X`, else `I don't know your <thing> yet.` A *stated fact* is `my <thing> is <value>`
//!    anywhere in a message (case-insensitive; `my` a word of its own; thing: 1 to 4 words of letters,
//!    digits, `-`, `'`, compared lowercased; value up to `.`, `,`, `!`, `?`, `;`, end of line or
//!    ` and my `, case kept); a message can state several. E.g. `my secret is Blue Fox` then
//!    `What is my secret?` → `Your secret is Blue Fox.`
//! 5. contains `my name is X` → `Nice to meet you, X.`
//! 6. contains `what did i ask you to remember` → `You asked me to remember: f1; f2.` with the facts of
//!    every earlier user message starting with `remember ` (oldest first, trailing `.!` stripped), or
//!    `You have not asked me to remember anything.`
//! 7. starts with `remember ` → `OK, I will remember: <fact>.` (trailing `.!` of the fact stripped).
//! 8. states a fact `my <thing> is X` → `OK, your <thing> is X.` (the first one stated).
//! 9. `count` (alone, optional trailing punctuation) → `This conversation has N earlier user messages.`
//!    (the earlier user messages the model sees, those folded into compaction items included).
//! 10. Knowledge base: lines of the form `[n] (source) text` found in `instructions` (responses),
//!    `instructions` / `additional_instructions` (runs), or in the current message itself (they, and a
//!    header line `Knowledge base context …:` above them, are
//!    then removed from the question). The chunk sharing the most content words (lowercase alphanumeric
//!    words of 3+ letters, minus common stop words; ties → first chunk) with the question, if any, gives
//!    `According to my notes: <chunk's first sentence> (from <source>)`.
//! 11. Otherwise `You said: <current message>`.
//!
//! Models whose name starts with `gpt-5`, `o1`, `o3` or `o4` are *reasoning models*: their output starts
//! with a `reasoning` item (`rs_…`, empty summary) before the `message` item, in plain, background and
//! streamed responses, and that item is also appended to the conversation, as the live API does.
//!
//! ## Tokens and the context window
//! A *token* is a whitespace-separated word ([`model::count_tokens`]). What the model sees for a response
//! is, in order: `instructions`, the *visible items* (the conversation's items, or the items of the
//! `previous_response_id` chain: each earlier response's input then output items), then the request's
//! `input`. Messages count the words of their text; a compaction item counts the words of
//! `[compacted context: N user messages]` plus those of the facts it keeps; reasoning items count 0;
//! other items the words of their `name`, `arguments`, `output` and `text` strings.
//!
//! Each model has a context window, the most input tokens a request may carry:
//! [`SandboxConfig::model_context_windows`] (exact name), else [`SandboxConfig::context_window`], else the
//! live table [`context::CONTEXT_WINDOWS`] (gpt-4.1*: 1 047 576; gpt-4o*: 128 000; gpt-5*: 272 000 input
//! of a 400 000 window; o1/o3/o4-mini: 200 000; gpt-4: 8 192; others 128 000).
//!
//! `POST /responses` (plain, streamed and background alike; all checks happen before anything is
//! answered, streamed or stored):
//! 1. The model sees the visible items from the latest *server-side* compaction item on (inclusive).
//! 2. instructions + input over the window → HTTP 400 `{"error": {"message": "Your input exceeds the
//!    context window of this model. Please adjust your input and try again.", "type":
//!    "invalid_request_error", "param": "input", "code": "context_length_exceeded"}}`, whatever
//!    `truncation` says. Nothing is stored, the conversation is not locked.
//! 3. `context_management: [{"type": "compaction", "compact_threshold": N}]` and the whole context over N
//!    with at least one visible earlier item → *compaction*: the response's `output` starts with a
//!    `{"id": "cmp_…", "type": "compaction", "encrypted_content": "gAAAAB…"}` item (streamed as
//!    `response.output_item.added`/`.done` before the message), which stands, for later requests, for
//!    every item before it, this turn's input included; it is appended to the conversation with the
//!    other output items (the stored conversation keeps every older item too). The compaction turn bills
//!    the whole context it read (`input_tokens`) and the compaction item's tokens as output; the turns
//!    after it see `compaction item + what follows`. The answer of the compaction turn is made from the
//!    whole context. Validation per the spec: a non-empty array of `{type: "compaction",
//!    compact_threshold?: integer >= 1000 or null}` (minimum: [`SandboxConfig::min_compact_threshold`];
//!    null/absent: 80% of the window); several entries: the smallest threshold. An input ending with
//!    `{"type": "compaction_trigger"}` compacts now (when there are earlier items), whatever the
//!    threshold; the trigger item is not stored (anywhere else in the input: 400).
//! 4. Else, the context over the window: `truncation: "disabled"` (the default) → the same 400;
//!    `"auto"` → the oldest visible items are dropped from what the model sees (not from the stored
//!    conversation) until it fits. The response object echoes `truncation`.
//!
//! What the model knows after compaction: an item's `encrypted_content` carries (base64 JSON behind the
//! `gAAAAB` prefix; opaque to clients, an altered one is 400 `invalid_encrypted_content`) how many user
//! messages it folded in and the fact-stating ones (names, `remember …`, `my <thing> is …`; the latest
//! per fact, every `remember`), at most half the window's tokens of them (the oldest facts go first). So
//! names, secrets and remembered facts survive compaction, and `count` still counts every user message;
//! anything else of the older items is forgotten.
//!
//! `POST /responses/compact` (`model` required; `input`, `instructions`, `previous_response_id`,
//! `prompt_cache_key`…; no `conversation`): answers `{"id": "resp_…", "object": "response.compaction",
//! "created_at", "output", "usage"}` where `output` is the visible user messages (with ids, oldest first)
//! then one compaction item for the rest (which hides nothing: pass the whole `output` as the next input).
//! `usage.input_tokens` = the context read (over the window → the same 400), `output_tokens` = the
//! compaction item's tokens, nothing cached.
//!
//! `POST /responses/input_tokens` → `{"object": "response.input_tokens", "input_tokens": N}`: what the
//! request would bill (with `truncation: "auto"` after dropping; else the whole context, even over the
//! window).
//!
//! ## Prompt caching
//! Every prompt is a sequence of tokens (instructions, then visible items, then input; a token is a word
//! with the role of its item, so the same words in another role differ). `cached_tokens` = the length of
//! the prefix it shares with the *previous request of the same scope*, 0 below
//! [`SandboxConfig::cache_min_tokens`] (live 1024), else that minimum plus whole
//! [`SandboxConfig::cache_step_tokens`] (live 128): 1500 shared tokens → 1408. Scope, within one model:
//! the request's `prompt_cache_key`, else its conversation, else one shared scope per model. Every
//! accepted request becomes its scope's previous request. So anything that changes in `instructions`
//! breaks the whole prefix, and truncation that drops an old item shifts it (a miss after the
//! instructions). Chat completions cache the same way (scope: `prompt_cache_key`, else the model) over
//! their messages; runs report no cached tokens (the spec has no field for it).
//!
//! ## Usage
//! Responses: `usage` = `{input_tokens, input_tokens_details: {cached_tokens, cache_write_tokens: 0},
//! output_tokens, output_tokens_details: {reasoning_tokens}, total_tokens}`; `input_tokens` = the whole
//! context seen (at least 1); `output_tokens` = text tokens (the streamed deltas) + reasoning tokens
//! (+ a compaction item's tokens); reasoning models spend `8 + words of the current message` reasoning
//! tokens (`max_output_tokens` covers both). Runs: `{prompt_tokens, completion_tokens, total_tokens}`
//! with the prompt = instructions + additional_instructions + the messages the run saw. Embeddings:
//! `{prompt_tokens, total_tokens}` (words per input, at least 1 each). Chat completions:
//! `{prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details: {cached_tokens, audio_tokens},
//! completion_tokens_details: {reasoning_tokens, audio_tokens, accepted_prediction_tokens,
//! rejected_prediction_tokens}}`.
//!
//! *Billed* = every answer that carried a usage object: a response when it completes (or ends
//! `incomplete`), a run when it completes, each compaction, embeddings, chat completions (streamed ones
//! once their last chunk is sent). Failed, cancelled and cut answers bill nothing.
//! [`Sandbox::usage_totals`] and `GET /_sandbox/usage` give the sums ([`UsageTotals`]): `all`, per
//! endpoint kind (`responses`, `compact`, `runs`, `embeddings`, `chat`), and per model, per
//! `prompt_cache_key`, per user (`safety_identifier`, else `user`) and per conversation / thread id.
//!
//! ## Assistants runs and the window
//! `truncation_strategy` on run create: absent → `{type: "auto"}`; `{type: "last_messages",
//! last_messages: N}` → the run sees the last N messages. Then, while instructions + messages are over the
//! window (the model's, or `max_prompt_tokens` when lower; minimum 256), messages are dropped from the
//! middle as the spec says (the oldest after the first, then the first), never the latest user message:
//! a run never overflows. If even that message does not fit, the run ends `incomplete`
//! (`incomplete_details.reason: "max_prompt_tokens"`), adds no message and bills nothing.
//! `max_completion_tokens` (minimum 256) cuts a longer answer: the run ends `incomplete`
//! (`max_completion_tokens`), its message is `incomplete` too, and it is billed. The run object echoes
//! `truncation_strategy`, `max_prompt_tokens` and `max_completion_tokens`.
//!
//! ## Chat completions
//! `POST /chat/completions` `{model, messages, stream?, stream_options?: {include_usage}, max_completion_tokens?
//! (or max_tokens), prompt_cache_key?, …}` (unknown fields 400): the model sees only the request's messages
//! (system/developer ones are the knowledge base; the current message is the last user one). Answer:
//! `chat.completion` with one choice (`finish_reason` `stop`, or `length` when cut by the token limit).
//! Streamed: `data:` lines only, a first chunk with `delta: {role: "assistant", content: ""}`, one chunk per
//! text token, a chunk with `finish_reason`, with `include_usage` a last chunk with `choices: []` and the
//! usage (the others carry `usage: null`), then `data: [DONE]`. Over the window: 400
//! `context_length_exceeded`, param `messages`, "This model's maximum context length is W tokens. However,
//! your messages resulted in N tokens. Please reduce the length of the messages." Faults: status ones as
//! everywhere; `CutStreamAfterDeltas(n)` cuts the stream after n content chunks (or the body);
//! `StreamFailed` / `ErrorEvent` send `data: {"error": {…}}` and end without `[DONE]` (without
//! `stream`: 500). Timing as for responses.
//!
//! ## Timing
//! Streams wait `time_to_first_token` before the first delta and `token_interval` between deltas;
//! non-streaming responses wait the same total before answering (the conversation stays locked meanwhile).
//! Runs and background responses: the create answer is `queued`; each GET is a *poll*; polls
//! 1..=`run_steps` see `in_progress`; a later poll sees `completed` once the same total delay has
//! elapsed since creation. A run's assistant message is added to the thread (with `run_id`) when the
//! run completes; a background response's items are added to its conversation when it completes.
//! Cancelling a run gives `cancelling`, the next poll `cancelled`.
//!
//! ## Faults
//! See [`Fault`] and [`FaultKind`]. Faults are kept in a queue; the first fault whose `method` (if any)
//! and `path_contains` match a request is applied and its `times` decremented (removed at 0).

mod assistants;
mod chat;
pub mod context;
mod embeddings;
pub mod model;
mod responses;
mod usage;
mod util;

pub use usage::{Endpoint, Usage, UsageTotals};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub(crate) use util::ApiError;

/// Behaviour of the emulator. `Default`: no key check, zero delays, `run_steps: 1`, assistants alive,
/// the live context windows ([`context::CONTEXT_WINDOWS`]) and the live prompt cache (from 1024 tokens,
/// in steps of 128), `compact_threshold` at least 1000 as the spec has it.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// When `Some`, require `Authorization: Bearer <key>` (else 401 with an OpenAI error body);
    /// when `None` accept any request.
    pub api_key: Option<String>,
    /// Wait before the first text delta (and part of the total time of non-streamed answers, runs
    /// and background responses).
    pub time_to_first_token: Duration,
    /// Wait between two text deltas.
    pub token_interval: Duration,
    /// Polls (GETs) a run or a background response stays `in_progress` before it can complete.
    pub run_steps: u32,
    /// `/threads*` answer 404 like the sunset Assistants API.
    pub assistants_gone: bool,
    /// When `Some(n)`, every model's context window is `n` tokens (instead of [`context::CONTEXT_WINDOWS`]).
    pub context_window: Option<u64>,
    /// Per-model windows, checked before `context_window` and the table (exact model name).
    pub model_context_windows: Vec<(String, u64)>,
    /// Prompt caching starts at this many shared prefix tokens (live: 1024).
    pub cache_min_tokens: u64,
    /// Cached tokens grow in steps of this many tokens above `cache_min_tokens` (live: 128).
    pub cache_step_tokens: u64,
    /// Smallest `context_management[].compact_threshold` accepted (spec: 1000).
    pub min_compact_threshold: u64,
}

impl SandboxConfig {
    /// The context window the sandbox applies to `model`.
    pub fn window_for(&self, model: &str) -> u64 {
        if let Some((_, w)) = self.model_context_windows.iter().find(|(m, _)| m == model) {
            return *w;
        }
        self.context_window.unwrap_or_else(|| context::default_context_window(model))
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            api_key: None,
            time_to_first_token: Duration::ZERO,
            token_interval: Duration::ZERO,
            run_steps: 1,
            assistants_gone: false,
            context_window: None,
            model_context_windows: Vec::new(),
            cache_min_tokens: 1024,
            cache_step_tokens: 128,
            min_compact_threshold: 1000,
        }
    }
}

/// One request the sandbox received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Upper-case HTTP method, e.g. `POST`.
    pub method: String,
    /// The full path including the `/v1` prefix, e.g. `/v1/responses`; no query string.
    pub path: String,
    /// The raw query string without `?` (empty when none).
    pub query: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `Null` when empty or not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A queued fault: applied to the next `times` requests whose method (if given, case-insensitive)
/// and path (containing `path_contains`, e.g. `"/responses"`) match.
///
/// JSON form for `POST /_sandbox/faults`:
/// `{"method":"POST","path_contains":"/responses","times":1,"kind":{"rate_limited":{"retry_after_secs":2}}}`;
/// unit kinds are strings (`"kind":"quota"`), `"kind":{"delay_before_response":1500}` is in milliseconds,
/// `"kind":{"cut_stream_after_deltas":3}`. `method` defaults to any, `times` to 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path_contains: String,
    #[serde(default = "one")]
    pub times: u32,
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// A fault for any method on paths containing `path_contains`, once.
    pub fn on(path_contains: impl Into<String>, kind: FaultKind) -> Fault {
        Fault { method: None, path_contains: path_contains.into(), times: 1, kind }
    }
    /// Restrict to one HTTP method.
    pub fn method(mut self, method: impl Into<String>) -> Fault {
        self.method = Some(method.into());
        self
    }
    /// Apply to this many matching requests.
    pub fn times(mut self, times: u32) -> Fault {
        self.times = times;
        self
    }
}

/// What a [`Fault`] does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer this status with an OpenAI error body (type derived from the status:
    /// `server_error` for 5xx, `invalid_request_error` otherwise).
    Status { status: u16, code: Option<String>, message: String },
    /// 429 `rate_limit_exceeded` with `Retry-After: <secs>` (and `retry-after-ms`).
    RateLimited { retry_after_secs: u32 },
    /// 429 `insufficient_quota`, no `Retry-After`.
    Quota,
    /// Sleep, then process the request normally.
    DelayBeforeResponse(#[serde(with = "util::duration_ms")] Duration),
    /// Stream faults (this one, `StreamFailed`, `ErrorEvent`) also apply to `POST /threads/{id}/runs`
    /// and `POST /chat/completions` (see the crate docs):
    /// with `stream: true` the run stream is cut after N `thread.message.delta` events / ends with
    /// `thread.run.failed` + `[DONE]` / ends with an `error` event `{code,message,param,type}`; without
    /// `stream`, `StreamFailed` makes the run end `failed` (last_error server_error) when it would have
    /// completed, `ErrorEvent` answers 500, `CutStreamAfterDeltas` is ignored. A failed run adds no message.
    ///
    /// `POST /responses` with `stream: true`: the connection is closed abruptly after N text deltas,
    /// without a terminal event (the response is marked failed, nothing is added to the conversation).
    /// Without `stream`: the body is cut (the client sees a broken body).
    CutStreamAfterDeltas(u32),
    /// 200 with a body that is not JSON (`text/plain`... `<html>` garbage, content-type application/json).
    Malformed,
    /// 400 `conversation_locked`, as if another response were running on the conversation.
    ConversationLocked,
    /// `POST /responses`: with `stream`, events `response.created`, `response.in_progress`, then
    /// `response.failed` (status failed, error `server_error`) and EOF. Without `stream`: 200 with
    /// a response object of status `failed`. Nothing is added to the conversation.
    StreamFailed,
    /// `POST /responses`: with `stream`, events `response.created`, `response.in_progress`, then an
    /// `error` event in the nested live shape `{type:"error", error:{type,code,message,param}, sequence_number}`
    /// and EOF. Without `stream`: 500 `server_error`. Nothing is added to the conversation.
    ErrorEvent,
}

pub(crate) struct Shared {
    pub config: Mutex<SandboxConfig>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub faults: Mutex<VecDeque<Fault>>,
    /// Locked after `state` when both are needed.
    pub usage: Mutex<UsageTotals>,
    pub state: Mutex<Store>,
    counter: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Store {
    pub conversations: HashMap<String, responses::Conversation>,
    pub responses: HashMap<String, responses::StoredResponse>,
    pub threads: HashMap<String, assistants::Thread>,
    /// Prompt cache: scope → token hashes of its previous prompt.
    pub cache: HashMap<String, Vec<u64>>,
}

impl Shared {
    /// A new id like the real ones: `prefix_` + hex (48 digits, or 24 for the Assistants objects).
    pub fn id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let h = util::fnv1a(format!("{prefix}{n}").as_bytes());
        match prefix {
            "thread" | "run" | "asst" | "step" => format!("{prefix}_{:012x}{:012x}", h >> 16, n & 0xffff_ffff_ffff),
            _ => format!("{prefix}_{:016x}{:016x}{:016x}", h, h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15, n),
        }
    }
    pub fn config(&self) -> SandboxConfig {
        self.config.lock().unwrap().clone()
    }
    pub(crate) fn bill(&self, b: usage::Bill) {
        self.usage.lock().unwrap().record(b);
    }
}

impl Store {
    /// `cached_tokens` for a prompt in a cache scope, remembering it as the scope's previous prompt.
    pub(crate) fn cache_lookup(&mut self, scope: String, sequence: Vec<u64>, cfg: &SandboxConfig) -> u64 {
        let cached = self
            .cache
            .get(&scope)
            .map(|prev| context::cached_tokens(prev, &sequence, cfg.cache_min_tokens, cfg.cache_step_tokens))
            .unwrap_or(0);
        self.cache.insert(scope, sequence);
        cached
    }
}

/// A running emulator. Dropping it stops the server too (abruptly); prefer [`Sandbox::shutdown`].
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    /// Start on `127.0.0.1:0` (a free port).
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        Self::start_on(config, 0).await
    }

    /// Start on `127.0.0.1:port` (0 picks a free port).
    pub async fn start_on(config: SandboxConfig, port: u16) -> anyhow::Result<Sandbox> {
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            usage: Mutex::new(UsageTotals::default()),
            state: Mutex::new(Store::default()),
            counter: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let app = router(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Streamed answers are many small writes: without TCP_NODELAY, Nagle and delayed
            // ACKs hold each for ~40 ms, which no real server does.
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Sandbox { shared, addr, stop: Some(tx), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every `/v1` request received so far, oldest first (see [`RecordedRequest`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap().clear();
    }

    /// Queue a fault (faults are matched in the order they were injected).
    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push_back(fault);
    }

    /// Drop every queued fault.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.shared.faults.lock().unwrap().iter().cloned().collect()
    }

    /// Change the configuration at run time (applies to requests that start afterwards).
    pub fn set_config(&self, f: impl FnOnce(&mut SandboxConfig)) {
        f(&mut self.shared.config.lock().unwrap());
    }

    pub fn config(&self) -> SandboxConfig {
        self.shared.config()
    }

    /// The items of a conversation, oldest first, as `GET /conversations/{id}/items?order=asc` shows them
    /// (normalised: `{id, type:"message", status, role, content:[{type:"input_text"|"output_text", text,…}]}`).
    pub fn conversation_items(&self, id: &str) -> Option<Vec<Value>> {
        self.shared.state.lock().unwrap().conversations.get(id).map(|c| c.items.clone())
    }

    /// The messages of a thread, oldest first (`thread.message` objects; text at `content[0].text.value`).
    pub fn thread_messages(&self, id: &str) -> Option<Vec<Value>> {
        self.shared.state.lock().unwrap().threads.get(id).map(|t| t.messages.clone())
    }

    /// A stored response object by id (as `GET /responses/{id}` would show it, without polling it).
    pub fn response(&self, id: &str) -> Option<Value> {
        self.shared.state.lock().unwrap().responses.get(id).map(|r| r.to_json())
    }

    /// Everything billed so far: the sums of the `usage` of every answer (see [`UsageTotals`]).
    pub fn usage_totals(&self) -> UsageTotals {
        self.shared.usage.lock().unwrap().clone()
    }

    /// Start the usage sums again from zero.
    pub fn reset_usage(&self) {
        *self.shared.usage.lock().unwrap() = UsageTotals::default();
    }

    /// Live (not deleted) conversations.
    pub fn conversation_count(&self) -> usize {
        self.shared.state.lock().unwrap().conversations.len()
    }

    pub fn thread_count(&self) -> usize {
        self.shared.state.lock().unwrap().threads.len()
    }

    /// Stop serving: graceful for up to 1 s (open streams), then abort.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(1), &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/responses", post(responses::create))
        .route("/responses/compact", post(responses::compact))
        .route("/responses/input_tokens", post(responses::input_tokens))
        .route("/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/responses/{id}/cancel", post(responses::cancel))
        .route("/conversations", post(responses::create_conversation))
        .route(
            "/conversations/{id}",
            get(responses::get_conversation).post(responses::update_conversation).delete(responses::delete_conversation),
        )
        .route("/conversations/{id}/items", post(responses::add_items).get(responses::list_items))
        .route("/conversations/{id}/items/{item_id}", get(responses::get_item))
        .route("/threads", post(assistants::create_thread))
        .route("/threads/{id}", get(assistants::get_thread))
        .route("/threads/{id}/messages", post(assistants::create_message).get(assistants::list_messages))
        .route("/threads/{id}/runs", post(assistants::create_run).get(assistants::list_runs))
        .route("/threads/{id}/runs/{run_id}", get(assistants::get_run))
        .route("/threads/{id}/runs/{run_id}/cancel", post(assistants::cancel_run))
        .route("/embeddings", post(embeddings::create))
        .route("/chat/completions", post(chat::create));
    let admin = Router::new()
        .route("/faults", post(admin_add_fault).get(admin_list_faults).delete(admin_clear_faults))
        .route("/requests", get(admin_requests).delete(admin_clear_requests))
        .route("/config", post(admin_set_config).get(admin_get_config))
        .route("/usage", get(admin_usage).delete(admin_clear_usage));
    Router::new()
        .nest("/v1", v1)
        .nest("/_sandbox", admin)
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
        .layer(middleware::from_fn_with_state(shared.clone(), front))
        .with_state(shared)
}

async fn fallback(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::invalid_url(method.as_str(), uri.path())
}

/// Stream faults handed to the handler through request extensions.
#[derive(Clone, Debug)]
pub(crate) struct StreamFault(pub FaultKind);

async fn front(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let (mut parts, body) = req.into_parts();
    let bytes = match to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return ApiError::bad_request("The request body could not be read.", None, None).into_response(),
    };
    let path = parts.uri.path().to_string();
    if path.starts_with("/_sandbox") {
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    }
    let method = parts.method.as_str().to_string();
    sh.requests.lock().unwrap().push(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    let request_id = sh.id("req");
    let mut resp = match front_checks(&sh, &mut parts, &method, &path).await {
        Some(r) => r,
        None => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    h.insert("openai-version", HeaderValue::from_static("2020-10-01"));
    h.insert("openai-processing-ms", HeaderValue::from(started.elapsed().as_millis() as u64));
    h.entry("x-ratelimit-remaining-requests").or_insert(HeaderValue::from_static("9999"));
    h.entry("x-ratelimit-remaining-tokens").or_insert(HeaderValue::from_static("1999999"));
    resp
}

/// Auth, faults and Assistants checks. `Some` answers the request right away.
async fn front_checks(sh: &Arc<Shared>, parts: &mut axum::http::request::Parts, method: &str, path: &str) -> Option<Response> {
    let cfg = sh.config();
    if let Some(key) = &cfg.api_key {
        let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let given = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).map(str::trim);
        match given {
            None | Some("") => {
                return Some(
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request_error",
                        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                        None,
                        None,
                    )
                    .into_response(),
                );
            }
            Some(k) if k != key => {
                let shown: String = if k.len() > 8 { format!("{}{}{}", &k[..3], "*".repeat(k.len() - 7), &k[k.len() - 4..]) } else { "****".into() };
                return Some(
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request_error",
                        format!("Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."),
                        None,
                        Some("invalid_api_key"),
                    )
                    .into_response(),
                );
            }
            _ => {}
        }
    }
    if let Some(kind) = take_fault(sh, method, path) {
        match kind {
            FaultKind::Status { status, code, message } => {
                let st = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let typ = if st.is_server_error() { "server_error" } else { "invalid_request_error" };
                return Some(ApiError::new(st, typ, message, None, code.as_deref()).into_response());
            }
            FaultKind::RateLimited { retry_after_secs } => {
                let mut r = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    format!("Rate limit reached for requests. Please try again in {retry_after_secs}s. Visit https://platform.openai.com/account/rate-limits to learn more."),
                    None,
                    Some("rate_limit_exceeded"),
                )
                .into_response();
                r.headers_mut().insert("retry-after", HeaderValue::from(retry_after_secs));
                r.headers_mut().insert("retry-after-ms", HeaderValue::from(retry_after_secs as u64 * 1000));
                r.headers_mut().insert("x-ratelimit-remaining-requests", HeaderValue::from_static("0"));
                return Some(r);
            }
            FaultKind::Quota => {
                return Some(
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "insufficient_quota",
                        "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                        None,
                        Some("insufficient_quota"),
                    )
                    .into_response(),
                );
            }
            FaultKind::DelayBeforeResponse(d) => tokio::time::sleep(d).await,
            FaultKind::Malformed => {
                let mut r = (StatusCode::OK, "<html><body>upstream connect error or disconnect/reset before headers {\"id\": \"resp_").into_response();
                r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                return Some(r);
            }
            FaultKind::ConversationLocked => return Some(ApiError::conversation_locked().into_response()),
            k @ (FaultKind::CutStreamAfterDeltas(_) | FaultKind::StreamFailed | FaultKind::ErrorEvent) => {
                parts.extensions.insert(StreamFault(k));
            }
        }
    }
    if path == "/v1/threads" || path.starts_with("/v1/threads/") || path == "/v1/assistants" || path.starts_with("/v1/assistants/") {
        if cfg.assistants_gone {
            return Some(ApiError::invalid_url(method, path).into_response());
        }
        let beta = parts.headers.get("openai-beta").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !beta.split(',').any(|p| p.trim() == "assistants=v2") {
            let msg = if beta.contains("assistants=v1") {
                "The v1 Assistants API has been deprecated. Please try again by setting the header 'OpenAI-Beta: assistants=v2'."
            } else {
                "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try again by setting the header 'OpenAI-Beta: assistants=v2'."
            };
            return Some(ApiError::bad_request(msg, None, Some("invalid_beta")).into_response());
        }
    }
    None
}

fn take_fault(sh: &Shared, method: &str, path: &str) -> Option<FaultKind> {
    let mut faults = sh.faults.lock().unwrap();
    let idx = faults.iter().position(|f| {
        f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method)) && path.contains(&f.path_contains)
    })?;
    let f = &mut faults[idx];
    let kind = f.kind.clone();
    if f.times <= 1 {
        faults.remove(idx);
    } else {
        f.times -= 1;
    }
    Some(kind)
}

async fn admin_add_fault(State(sh): State<Arc<Shared>>, Json(f): Json<Fault>) -> Json<Value> {
    sh.faults.lock().unwrap().push_back(f);
    Json(json!({"ok": true, "queued": sh.faults.lock().unwrap().len()}))
}

async fn admin_list_faults(State(sh): State<Arc<Shared>>) -> Json<Vec<Fault>> {
    Json(sh.faults.lock().unwrap().iter().cloned().collect())
}

async fn admin_clear_faults(State(sh): State<Arc<Shared>>) -> Json<Value> {
    sh.faults.lock().unwrap().clear();
    Json(json!({"ok": true}))
}

async fn admin_requests(State(sh): State<Arc<Shared>>) -> Json<Vec<RecordedRequest>> {
    Json(sh.requests.lock().unwrap().clone())
}

async fn admin_clear_requests(State(sh): State<Arc<Shared>>) -> Json<Value> {
    sh.requests.lock().unwrap().clear();
    Json(json!({"ok": true}))
}

fn config_json(c: &SandboxConfig) -> Value {
    json!({
        "api_key": c.api_key,
        "ttft_ms": c.time_to_first_token.as_millis() as u64,
        "token_interval_ms": c.token_interval.as_millis() as u64,
        "run_steps": c.run_steps,
        "assistants_gone": c.assistants_gone,
        "context_window": c.context_window,
        "model_context_windows": c.model_context_windows.iter().map(|(m, w)| (m.clone(), json!(w))).collect::<serde_json::Map<_, _>>(),
        "cache_min_tokens": c.cache_min_tokens,
        "cache_step_tokens": c.cache_step_tokens,
        "min_compact_threshold": c.min_compact_threshold,
    })
}

async fn admin_get_config(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(config_json(&sh.config()))
}

/// Body: any of `api_key` (string or null), `ttft_ms`, `token_interval_ms`, `run_steps`, `assistants_gone`.
async fn admin_set_config(State(sh): State<Arc<Shared>>, Json(patch): Json<Value>) -> Result<Json<Value>, ApiError> {
    let mut c = sh.config.lock().unwrap();
    let Some(obj) = patch.as_object() else { return Err(ApiError::bad_request("expected an object", None, None)) };
    for (k, v) in obj {
        match k.as_str() {
            "api_key" => c.api_key = v.as_str().map(String::from),
            "ttft_ms" | "time_to_first_token_ms" => c.time_to_first_token = Duration::from_millis(v.as_u64().unwrap_or(0)),
            "token_interval_ms" => c.token_interval = Duration::from_millis(v.as_u64().unwrap_or(0)),
            "run_steps" => c.run_steps = v.as_u64().unwrap_or(1) as u32,
            "assistants_gone" => c.assistants_gone = v.as_bool().unwrap_or(false),
            "context_window" => c.context_window = v.as_u64(),
            "model_context_windows" => {
                c.model_context_windows = v
                    .as_object()
                    .map(|o| o.iter().filter_map(|(m, w)| w.as_u64().map(|w| (m.clone(), w))).collect())
                    .unwrap_or_default()
            }
            "cache_min_tokens" => c.cache_min_tokens = v.as_u64().unwrap_or(1024),
            "cache_step_tokens" => c.cache_step_tokens = v.as_u64().unwrap_or(128).max(1),
            "min_compact_threshold" => c.min_compact_threshold = v.as_u64().unwrap_or(1000),
            other => return Err(ApiError::unknown_parameter(other)),
        }
    }
    Ok(Json(config_json(&c)))
}

async fn admin_usage(State(sh): State<Arc<Shared>>) -> Json<UsageTotals> {
    Json(sh.usage.lock().unwrap().clone())
}

async fn admin_clear_usage(State(sh): State<Arc<Shared>>) -> Json<Value> {
    *sh.usage.lock().unwrap() = UsageTotals::default();
    Json(json!({"ok": true}))
}
