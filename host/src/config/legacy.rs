//! The two backends swapbot ships with and the environment of the bot it replaces. This is the
//! one place in the host that names a backend: everything else works on whatever plugins are
//! in `PLUGIN_DIR` (a test keeps it so).
//!
//! The preset keeps the Python bot's meaning exactly: `USE_OPENAI_RESPONSES` turns the canary on,
//! `RESPONSES_ROLLOUT_PERCENT` and `RESPONSES_TEST_USERS` are its percent and test users, the
//! default is the Assistants backend, and the canary target is the Responses one.

use super::{ConfigError, invalid};

/// The legacy backend (Assistants API: threads and runs): the default of the preset.
pub const DEFAULT_BACKEND: &str = "assistants";
/// The new backend (Responses + Conversations): the canary target of the preset.
pub const CANARY_BACKEND: &str = "responses";

/// The id map of the legacy backend, in the Python bot's format, and the new backend's map that
/// the first start beside it creates empty (the legacy one is kept for a rollback).
pub const LEGACY_ID_MAPS: [(&str, &str); 1] = [("user_threads.json", "user_conversations.json")];

/// The backend a `swapbot report` compares the others against when none is named.
pub const REPORT_BASELINE: &str = DEFAULT_BACKEND;

/// Options of the two shipped backends from their environment variables (which win over the
/// config file's `[backends.<name>.options]`).
pub(crate) fn options_from_env(env: &super::env::Env) -> Result<Vec<(&'static str, Vec<(String, String)>)>, ConfigError> {
    let text = |name: &'static str| env.text(name);
    let flag = |name: &'static str| env.flag_opt(name).map(|v| v.map(|b| b.to_string()));
    // Where a backend puts knowledge-base context: the plugin option `context-layout`.
    let layout = |name: &'static str| -> Result<Option<(String, String)>, ConfigError> {
        match text(name).as_deref() {
            None => Ok(None),
            Some(v @ ("input" | "instructions")) => Ok(Some(("context-layout".into(), v.into()))),
            Some(other) => Err(invalid(name, format!("expected input or instructions, got {other:?}"))),
        }
    };
    let mut responses = vec![];
    if let Some(v) = flag("RESPONSES_STREAM")? {
        responses.push(("stream".to_owned(), v));
    }
    if let Some(v) = flag("RESPONSES_BACKGROUND")? {
        responses.push(("background".to_owned(), v));
    }
    match text("RESPONSES_CONTEXT").as_deref() {
        None => {}
        Some("truncate") => responses.push(("context".to_owned(), "truncate".to_owned())),
        Some("compact") => {
            responses.push(("context".into(), "compact".into()));
            let threshold = env.number("RESPONSES_COMPACT_THRESHOLD", 100_000, 1000, 100_000_000)?;
            responses.push(("compact-threshold".into(), threshold.to_string()));
        }
        Some(other) => return Err(invalid("RESPONSES_CONTEXT", format!("expected truncate or compact, got {other:?}"))),
    }
    responses.extend(layout("RESPONSES_CONTEXT_LAYOUT")?);

    let mut assistants = vec![];
    if let Some(id) = text("ASSISTANT_ID") {
        if !id.starts_with("asst_") {
            return Err(invalid("ASSISTANT_ID", format!("expected an id like asst_…, got {id:?}")));
        }
        assistants.push(("assistant-id".to_owned(), id));
    }
    if let Some(v) = text("ASSISTANTS_TRUNCATION") {
        let valid = v == "auto" || v.strip_prefix("last_messages:").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1);
        if !valid {
            return Err(invalid("ASSISTANTS_TRUNCATION", format!("expected auto or last_messages:N, got {v:?}")));
        }
        assistants.push(("truncation-strategy".into(), v));
    }
    assistants.extend(layout("ASSISTANTS_CONTEXT_LAYOUT")?);
    Ok(vec![(CANARY_BACKEND, responses), (DEFAULT_BACKEND, assistants)])
}
