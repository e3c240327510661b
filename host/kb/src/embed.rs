//! Embeddings: the [`Embedder`] seam, its implementation over the host's OpenAI transport, and the
//! batching that keeps every `/embeddings` request within the API limits.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::KbError;

/// At most this many inputs per `/embeddings` request (API limit).
pub const MAX_INPUTS_PER_REQUEST: usize = 2048;
/// Estimated-token budget per request (API limit 300k).
pub const MAX_TOKENS_PER_REQUEST: usize = 300_000;
/// Estimated-token limit per input (API limit 8192).
pub const MAX_TOKENS_PER_INPUT: usize = 8192;

/// Conservative token estimate: one token per 4 characters or per 3 UTF-8 bytes, whichever is more
/// (non-Latin scripts take more tokens per character than English does).
pub fn estimate_tokens(s: &str) -> usize {
    let by_chars = s.chars().count().div_ceil(4);
    let by_bytes = s.len().div_ceil(3);
    by_chars.max(by_bytes).max(1)
}

/// Turns texts into vectors, one per input, in input order.
pub trait Embedder: Send + Sync {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, KbError>>;

    /// Like [`embed`](Self::embed), with the tokens the API billed (its `usage`; 0 when it
    /// reports none or nothing is billed).
    fn embed_billed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<(Vec<Vec<f32>>, u64), KbError>> {
        Box::pin(async move { Ok((self.embed(inputs).await?, 0)) })
    }
}

/// `usage.total_tokens` (or `prompt_tokens`) of an `/embeddings` answer.
pub fn billed_tokens(answer: &Value) -> u64 {
    let u = answer.get("usage");
    u.and_then(|u| u.get("total_tokens").or_else(|| u.get("prompt_tokens"))).and_then(Value::as_u64).unwrap_or(0)
}

/// The one thing the OpenAI embedder needs from a transport.
pub trait JsonTransport: Send + Sync {
    fn post_json<'a>(&'a self, path: &'a str, body: &'a Value) -> BoxFuture<'a, Result<Value, KbError>>;
}

impl JsonTransport for swapbot_openai::OpenAi {
    fn post_json<'a>(&'a self, path: &'a str, body: &'a Value) -> BoxFuture<'a, Result<Value, KbError>> {
        Box::pin(async move {
            swapbot_openai::OpenAi::post_json(self, path, body)
                .await
                .map_err(|e| KbError::Embedding { status: e.status(), message: e.to_string() })
        })
    }
}

/// `POST /embeddings` with `model` and, when configured, `dimensions` (an integer).
pub struct OpenAiEmbedder<T = swapbot_openai::OpenAi> {
    transport: T,
    model: String,
    dimensions: Option<u32>,
}

impl<T: JsonTransport> OpenAiEmbedder<T> {
    /// Refuses `dimensions` with a model that does not support it.
    pub fn new(transport: T, model: impl Into<String>, dimensions: Option<u32>) -> Result<Self, KbError> {
        let model = model.into();
        crate::config::check_embedding_config(&model, dimensions)?;
        Ok(Self { transport, model, dimensions })
    }

    /// The request body for one batch (public for tests and the host's request log).
    pub fn request_body(&self, inputs: &[String]) -> Value {
        let mut body = json!({
            "model": self.model,
            "input": inputs,
            "encoding_format": "float",
        });
        if let Some(d) = self.dimensions {
            body["dimensions"] = json!(d);
        }
        body
    }

    async fn embed_batch(&self, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), KbError> {
        let body = self.request_body(inputs);
        let answer = self.transport.post_json("/embeddings", &body).await?;
        Ok((parse_embeddings(&answer, inputs.len())?, billed_tokens(&answer)))
    }
}

impl<T: JsonTransport> Embedder for OpenAiEmbedder<T> {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, KbError>> {
        Box::pin(async move { Ok(self.embed_billed(inputs).await?.0) })
    }

    fn embed_billed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<(Vec<Vec<f32>>, u64), KbError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(inputs.len());
            let mut tokens = 0;
            for range in plan_batches(inputs) {
                let (vectors, billed) = self.embed_batch(&inputs[range]).await?;
                out.extend(vectors);
                tokens += billed;
            }
            Ok((out, tokens))
        })
    }
}

/// Splits inputs into consecutive batches of ≤2048 inputs and ≤300k estimated tokens.
/// An input over the per-input limit is sent alone (the caller truncates beforehand).
pub fn plan_batches(inputs: &[String]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut tokens = 0;
    for (i, s) in inputs.iter().enumerate() {
        let t = estimate_tokens(s);
        if i > start && (i - start >= MAX_INPUTS_PER_REQUEST || tokens + t > MAX_TOKENS_PER_REQUEST) {
            out.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += t;
    }
    if start < inputs.len() {
        out.push(start..inputs.len());
    }
    out
}

/// Cuts a text so its estimated tokens stay within the per-input limit (at a char boundary).
pub fn truncate_for_input(s: &str) -> &str {
    if estimate_tokens(s) <= MAX_TOKENS_PER_INPUT {
        return s;
    }
    let max_bytes = MAX_TOKENS_PER_INPUT * 3;
    let mut end = max_bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `{data:[{index, embedding}]}` → vectors in input order.
pub fn parse_embeddings(answer: &Value, expected: usize) -> Result<Vec<Vec<f32>>, KbError> {
    let bad = |why: &str| KbError::Embedding { status: None, message: format!("unexpected /embeddings answer: {why}") };
    let data = answer.get("data").and_then(Value::as_array).ok_or_else(|| bad("no `data` array"))?;
    if data.len() != expected {
        return Err(bad(&format!("{} vectors for {expected} inputs", data.len())));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (pos, item) in data.iter().enumerate() {
        let index = item.get("index").and_then(Value::as_u64).map(|i| i as usize).unwrap_or(pos);
        let emb = item.get("embedding").and_then(Value::as_array).ok_or_else(|| bad("an item without a float `embedding`"))?;
        let v: Option<Vec<f32>> = emb.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
        let v = v.ok_or_else(|| bad("a non-numeric embedding value"))?;
        if v.is_empty() {
            return Err(bad("an empty embedding"));
        }
        let slot = out.get_mut(index).ok_or_else(|| bad("an index out of range"))?;
        *slot = Some(v);
    }
    out.into_iter().map(|v| v.ok_or_else(|| bad("a missing index"))).collect()
}

/// L2-normalises in place; a zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

/// A deterministic, offline embedder: feature-hashed lower-cased words (and word bigrams), L2-normalised.
/// For tests, benches and demos without an API key; it matches shared words, not meaning.
#[derive(Clone, Debug)]
pub struct HashEmbedder {
    pub dim: usize,
}

impl HashEmbedder {
    pub fn new(dim: usize) -> Self {
        Self { dim }
    }

    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        use sha2::{Digest, Sha256};
        let mut v = vec![0f32; self.dim];
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() > 2)
            .map(|w| w.to_lowercase())
            .filter(|w| !STOP_WORDS.contains(&w.as_str()))
            .collect();
        let mut add = |feature: &str, weight: f32| {
            let h = Sha256::digest(feature.as_bytes());
            let idx = u64::from_le_bytes(h[..8].try_into().unwrap()) as usize % self.dim;
            let sign = if h[8] & 1 == 0 { 1.0 } else { -1.0 };
            v[idx] += sign * weight;
        };
        for w in &words {
            add(w, 1.0);
        }
        for pair in words.windows(2) {
            add(&format!("{} {}", pair[0], pair[1]), 0.5);
        }
        normalize(&mut v);
        v
    }
}

const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "her", "was", "one", "our", "out",
    "has", "have", "had", "how", "what", "when", "where", "which", "who", "why", "with", "this", "that",
    "from", "they", "will", "would", "there", "their", "does", "did", "its", "into", "than", "then", "them",
    "these", "those", "your", "about", "also", "use", "used",
];

impl Embedder for HashEmbedder {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, KbError>> {
        Box::pin(async move { Ok(inputs.iter().map(|s| self.embed_one(s)).collect()) })
    }
}
