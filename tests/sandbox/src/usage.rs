//! What the sandbox billed: the sums of the `usage` objects of every answer it gave.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Token sums (and how many billed answers they come from).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Billed answers.
    pub requests: u64,
    /// `input_tokens` / `prompt_tokens` (cached ones included).
    pub input_tokens: u64,
    /// `input_tokens_details.cached_tokens` / `prompt_tokens_details.cached_tokens`.
    pub cached_tokens: u64,
    /// `output_tokens` / `completion_tokens` (reasoning ones included).
    pub output_tokens: u64,
    /// `output_tokens_details.reasoning_tokens` / `completion_tokens_details.reasoning_tokens`.
    pub reasoning_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.cached_tokens += o.cached_tokens;
        self.output_tokens += o.output_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.total_tokens += o.total_tokens;
    }

    /// One answer's usage object, in either shape (`input_tokens`… of Responses, `prompt_tokens`… of
    /// runs, chat completions and embeddings).
    pub fn of(v: &Value) -> Usage {
        let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        if v.get("input_tokens").is_some() {
            Usage {
                requests: 1,
                input_tokens: n("/input_tokens"),
                cached_tokens: n("/input_tokens_details/cached_tokens"),
                output_tokens: n("/output_tokens"),
                reasoning_tokens: n("/output_tokens_details/reasoning_tokens"),
                total_tokens: n("/total_tokens"),
            }
        } else {
            Usage {
                requests: 1,
                input_tokens: n("/prompt_tokens"),
                cached_tokens: n("/prompt_tokens_details/cached_tokens"),
                output_tokens: n("/completion_tokens"),
                reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
                total_tokens: n("/total_tokens"),
            }
        }
    }
}

/// The endpoint kinds usage is summed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /responses` (plain, streamed, background).
    Responses,
    /// `POST /responses/compact`.
    Compact,
    /// Assistants runs.
    Runs,
    /// `POST /embeddings`.
    Embeddings,
    /// `POST /chat/completions`.
    Chat,
}

/// Everything billed since start (or the last reset), as [`crate::Sandbox::usage_totals`] and
/// `GET /_sandbox/usage` show it. Keys of the maps: the model name; the request's `prompt_cache_key`;
/// its `safety_identifier`, else its `user`; the conversation id or thread id. Answers without one
/// are not in that map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub all: Usage,
    pub responses: Usage,
    pub compact: Usage,
    pub runs: Usage,
    pub embeddings: Usage,
    pub chat: Usage,
    pub by_model: BTreeMap<String, Usage>,
    pub by_prompt_cache_key: BTreeMap<String, Usage>,
    pub by_user: BTreeMap<String, Usage>,
    pub by_conversation: BTreeMap<String, Usage>,
}

/// One billed answer.
pub(crate) struct Bill<'a> {
    pub endpoint: Endpoint,
    pub model: &'a str,
    pub usage: &'a Value,
    pub cache_key: Option<&'a str>,
    pub user: Option<&'a str>,
    pub conversation: Option<&'a str>,
}

impl UsageTotals {
    pub(crate) fn record(&mut self, b: Bill) {
        let u = Usage::of(b.usage);
        self.all.add(&u);
        match b.endpoint {
            Endpoint::Responses => self.responses.add(&u),
            Endpoint::Compact => self.compact.add(&u),
            Endpoint::Runs => self.runs.add(&u),
            Endpoint::Embeddings => self.embeddings.add(&u),
            Endpoint::Chat => self.chat.add(&u),
        }
        self.by_model.entry(b.model.to_string()).or_default().add(&u);
        if let Some(k) = b.cache_key {
            self.by_prompt_cache_key.entry(k.to_string()).or_default().add(&u);
        }
        if let Some(k) = b.user {
            self.by_user.entry(k.to_string()).or_default().add(&u);
        }
        if let Some(k) = b.conversation {
            self.by_conversation.entry(k.to_string()).or_default().add(&u);
        }
    }
}
