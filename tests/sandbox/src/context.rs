//! What the model sees: context windows per model, the view of one request (instructions, visible items,
//! input) with truncation and compaction, the token sequence the prompt cache compares, and the
//! compaction summaries carried in `encrypted_content` (see the crate docs for the rules).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{self, Msg};
use crate::util::{self, ApiError};

/// Default context windows (the most input tokens a request may carry), by model-name prefix; the longest
/// matching prefix wins, other models get [`DEFAULT_CONTEXT_WINDOW`]. gpt-5*: 400 000-token window of
/// which 128 000 are reserved for output, so 272 000 input tokens.
pub const CONTEXT_WINDOWS: &[(&str, u64)] = &[
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("gpt-5", 272_000),
    ("o1", 200_000),
    ("o1-mini", 128_000),
    ("o3", 200_000),
    ("o4-mini", 200_000),
];

/// Window of a model the table does not name.
pub const DEFAULT_CONTEXT_WINDOW: u64 = 128_000;

/// The default context window of `model` (see [`CONTEXT_WINDOWS`]).
pub fn default_context_window(model: &str) -> u64 {
    CONTEXT_WINDOWS
        .iter()
        .filter(|(p, _)| model.starts_with(p))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, w)| *w)
        .unwrap_or(DEFAULT_CONTEXT_WINDOW)
}

/// The live error for a request over the window (`/responses`, `/responses/compact`).
pub(crate) fn context_exceeded() -> ApiError {
    ApiError::bad_request(
        "Your input exceeds the context window of this model. Please adjust your input and try again.",
        Some("input"),
        Some("context_length_exceeded"),
    )
}

const CMP_PREFIX: &str = "gAAAAB";

/// What a compaction item carries for the deterministic model: how many user messages it folded in,
/// and the user messages stating facts (names, `remember …`, `my <thing> is …`), oldest first, the
/// latest per fact only (every `remember` is kept).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub n: u64,
    pub facts: Vec<String>,
    /// Made by server-side compaction: the item replaces every item before it.
    /// (`/responses/compact` keeps the user messages next to it, so its item hides nothing.)
    #[serde(default)]
    pub hides: bool,
}

fn fact_keys(text: &str) -> (bool, Vec<String>) {
    let mut keys: Vec<String> = model::my_facts_in(text).into_iter().map(|(k, _)| k).collect();
    if model::name_in(text).is_some() && !keys.iter().any(|k| k == "name") {
        keys.push("name".into());
    }
    (model::fact_in(text).is_some(), keys)
}

impl Summary {
    pub fn encode(&self) -> String {
        format!("{CMP_PREFIX}{}", util::b64_encode(serde_json::to_string(self).unwrap_or_default().as_bytes()))
    }

    pub fn decode(s: &str) -> Option<Summary> {
        let bytes = util::b64_decode(s.strip_prefix(CMP_PREFIX)?)?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The text the model reads for this item (what its tokens are counted from):
    /// `[compacted context: N user messages]` then the kept facts.
    pub fn text(&self) -> String {
        let mut t = format!("[compacted context: {} user messages]", self.n);
        for f in &self.facts {
            t.push('\n');
            t.push_str(f);
        }
        t
    }

    /// Fold one user message in.
    pub fn absorb_user(&mut self, text: &str) {
        self.n += 1;
        let (remember, keys) = fact_keys(text);
        if remember || !keys.is_empty() {
            self.facts.push(text.to_string());
        }
    }

    /// Fold an earlier summary in.
    pub fn absorb(&mut self, other: &Summary) {
        self.n += other.n;
        self.facts.extend(other.facts.iter().cloned());
    }

    /// Keep the latest message per fact key (and every `remember`).
    pub fn prune(&mut self) {
        let mut seen: Vec<String> = Vec::new();
        let mut kept: Vec<String> = Vec::new();
        for f in self.facts.iter().rev() {
            let (remember, keys) = fact_keys(f);
            let fresh = keys.iter().any(|k| !seen.contains(k));
            if (remember || fresh) && !kept.contains(f) {
                kept.push(f.clone());
            }
            seen.extend(keys);
        }
        kept.reverse();
        self.facts = kept;
    }

    /// The earlier messages this stands for, for the model: `n - facts` empty user messages, then the facts.
    pub fn history(&self) -> Vec<Msg> {
        let blanks = self.n.saturating_sub(self.facts.len() as u64) as usize;
        let mut h: Vec<Msg> = std::iter::repeat_n(Msg::new("user", ""), blanks).collect();
        h.extend(self.facts.iter().map(|f| Msg::new("user", f)));
        h
    }

    /// A `compaction` output item carrying this summary.
    pub fn item(&self, id: String) -> Value {
        json!({"id": id, "type": "compaction", "encrypted_content": self.encode()})
    }
}

/// One item as the model sees it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// The message role, or the item type for other items (`compaction`, `reasoning`, …).
    pub role: String,
    /// What its tokens are counted from.
    pub text: String,
    pub summary: Option<Summary>,
}

impl Seen {
    pub fn new(role: &str, text: &str) -> Seen {
        Seen { role: role.into(), text: text.into(), summary: None }
    }

    /// How a stored or input item is seen: messages by their text; compaction items by their summary;
    /// reasoning items count nothing; other items by their `name`, `arguments`, `output` and `text` strings.
    pub fn of_item(item: &Value) -> Seen {
        if let Some(m) = crate::responses::item_msg(item) {
            return Seen::new(&m.role, &m.text);
        }
        let typ = item.get("type").and_then(Value::as_str).unwrap_or("item");
        match typ {
            "compaction" => {
                let s = item.get("encrypted_content").and_then(Value::as_str).and_then(Summary::decode).unwrap_or_default();
                Seen { role: "compaction".into(), text: s.text(), summary: Some(s) }
            }
            "reasoning" => Seen::new("reasoning", ""),
            _ => {
                let text: Vec<&str> =
                    ["name", "arguments", "output", "text"].iter().filter_map(|k| item.get(*k).and_then(Value::as_str)).collect();
                Seen::new(typ, &text.join(" "))
            }
        }
    }

    pub fn tokens(&self) -> u64 {
        model::count_tokens(&self.text)
    }

    fn hides(&self) -> bool {
        self.summary.as_ref().is_some_and(|s| s.hides)
    }

    fn hash_into(&self, out: &mut Vec<u64>) {
        hash_words(&self.role, &self.text, out);
    }
}

fn hash_words(role: &str, text: &str, out: &mut Vec<u64>) {
    for w in text.split_whitespace() {
        let mut b = Vec::with_capacity(role.len() + 1 + w.len());
        b.extend_from_slice(role.as_bytes());
        b.push(0);
        b.extend_from_slice(w.as_bytes());
        out.push(util::fnv1a(&b));
    }
}

/// The rules one request is planned with.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub window: u64,
    /// `truncation: "auto"`: drop the oldest visible items instead of failing.
    pub auto_truncate: bool,
    /// Server-side compaction threshold (`context_management`).
    pub compact_threshold: Option<u64>,
}

/// What the model sees for one request, and what it is billed.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The visible earlier items the answer is made from, oldest first.
    pub prior: Vec<Seen>,
    /// The visible input items.
    pub input: Vec<Seen>,
    /// `input_tokens` to bill: instructions + visible items + input (at least 1).
    pub input_tokens: u64,
    /// Set when this request compacted (server-side): the new compaction item's summary.
    pub compaction: Option<Summary>,
    /// Token hashes of the prompt, in order: instructions, visible items, input.
    pub sequence: Vec<u64>,
}

impl Plan {
    /// The earlier messages for the model (compaction summaries expanded).
    pub fn history(&self) -> Vec<Msg> {
        let mut h = Vec::new();
        for s in &self.prior {
            match &s.summary {
                Some(sum) => h.extend(sum.history()),
                None if matches!(s.role.as_str(), "user" | "assistant" | "system" | "developer") => h.push(Msg::new(&s.role, &s.text)),
                None => {}
            }
        }
        h
    }
}

/// Plan a request: `prior` are the stored items (conversation or `previous_response_id` chain), `input` the
/// request's items. Rules (first to last): the model sees items from the latest server-side compaction
/// item on; instructions + input over the window → 400; over the compaction threshold with earlier items
/// → compact them (and the input) into one summary, bill what was read; over the window → drop the
/// oldest earlier items (`auto`) or 400.
pub(crate) fn plan(instructions: &str, prior: &[Value], input: &[Value], limits: &Limits) -> Result<Plan, ApiError> {
    let mut prior: Vec<Seen> = prior.iter().map(Seen::of_item).collect();
    let mut input: Vec<Seen> = input.iter().map(Seen::of_item).collect();
    if let Some(i) = input.iter().rposition(Seen::hides) {
        prior.clear();
        input.drain(..i);
    } else if let Some(i) = prior.iter().rposition(Seen::hides) {
        prior.drain(..i);
    }
    let instr = model::count_tokens(instructions);
    let need = instr + input.iter().map(Seen::tokens).sum::<u64>();
    if need > limits.window {
        return Err(context_exceeded());
    }
    let mut total = need + prior.iter().map(Seen::tokens).sum::<u64>();
    let mut compaction = None;
    if let Some(th) = limits.compact_threshold
        && total > th
        && !prior.is_empty()
    {
        let mut s = Summary { hides: true, ..Default::default() };
        for it in prior.iter().chain(input.iter()) {
            match &it.summary {
                Some(old) => s.absorb(old),
                None if it.role == "user" => s.absorb_user(&it.text),
                None => {}
            }
        }
        s.prune();
        // A summary is bounded: at most half the window, the oldest facts go first.
        while model::count_tokens(&s.text()) > limits.window / 2 && !s.facts.is_empty() {
            s.facts.remove(0);
        }
        compaction = Some(s);
    } else if total > limits.window {
        if !limits.auto_truncate {
            return Err(context_exceeded());
        }
        while total > limits.window && !prior.is_empty() {
            total -= prior.remove(0).tokens();
        }
    }
    let mut sequence = Vec::with_capacity(total as usize);
    hash_words("instructions", instructions, &mut sequence);
    for s in prior.iter().chain(input.iter()) {
        s.hash_into(&mut sequence);
    }
    Ok(Plan { prior, input, input_tokens: total.max(1), compaction, sequence })
}

/// `cached_tokens`: the shared token prefix with the previous prompt of the same cache scope, 0 below
/// `min`, else `min` plus whole `step`s.
pub(crate) fn cached_tokens(prev: &[u64], cur: &[u64], min: u64, step: u64) -> u64 {
    let shared = prev.iter().zip(cur).take_while(|(a, b)| a == b).count() as u64;
    if shared == 0 || shared < min {
        return 0;
    }
    min + (shared - min) / step.max(1) * step.max(1)
}

/// Token hashes of a plain prompt (chat messages, run messages): each `(role, text)` in order.
pub(crate) fn sequence_of(parts: &[(&str, &str)]) -> Vec<u64> {
    let mut out = Vec::new();
    for (r, t) in parts {
        hash_words(r, t, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(default_context_window("gpt-4.1-mini"), 1_047_576);
        assert_eq!(default_context_window("gpt-4o-mini"), 128_000);
        assert_eq!(default_context_window("gpt-4"), 8_192);
        assert_eq!(default_context_window("gpt-5-mini"), 272_000);
        assert_eq!(default_context_window("o1-mini"), 128_000);
        assert_eq!(default_context_window("my-model"), DEFAULT_CONTEXT_WINDOW);
    }

    #[test]
    fn summary_roundtrip_and_prune() {
        let mut s = Summary::default();
        for t in ["my name is A", "hello", "remember milk", "my name is B", "my secret is x", "remember tea"] {
            s.absorb_user(t);
        }
        s.prune();
        assert_eq!(s.n, 6);
        assert_eq!(s.facts, vec!["remember milk", "my name is B", "my secret is x", "remember tea"]);
        let e = s.encode();
        assert!(e.starts_with("gAAAAB"));
        assert_eq!(Summary::decode(&e), Some(s.clone()));
        assert_eq!(Summary::decode("nope"), None);
        assert_eq!(s.history().len(), 6);
    }

    #[test]
    fn cache_rounding() {
        let a: Vec<u64> = (0..3000).collect();
        let mut b = a.clone();
        b[2000] = 9;
        assert_eq!(cached_tokens(&a, &b, 1024, 128), 1024 + 7 * 128);
        assert_eq!(cached_tokens(&a[..1000], &b, 1024, 128), 0);
        assert_eq!(cached_tokens(&a, &b, 10, 5), 2000);
        assert_eq!(cached_tokens(&[], &b, 0, 1), 0);
    }
}
