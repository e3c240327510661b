//! One JSON line per finished turn, in daily-rotated files under `LOG_DIR` (`turns.log.*`):
//! what operators' monitors and `swapbot report` read.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing_appender::rolling::{RollingFileAppender, Rotation};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TurnRecord {
    /// Unix milliseconds when the turn's first request was sent (t0).
    pub t0_unix_ms: u64,
    /// Unix milliseconds when the turn finished (tN).
    pub tn_unix_ms: u64,
    pub user_id: i64,
    /// Which of the user's chats: `private`, or `group:<chat>[:<user>]` (see `session.rs`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    pub backend: String,
    pub route: String,
    pub plugin_version: String,
    /// The backend's own names for its ids, e.g. conversation_id/response_id or thread_id/run_id.
    pub session_label: String,
    pub session_id: Option<String>,
    pub turn_label: String,
    pub turn_id: Option<String>,
    pub new_session: bool,
    pub replayed: u32,
    /// From t0 to the first answer text shown to the user (streaming), else to the answer.
    pub ttft_ms: Option<u64>,
    pub latency_ms: u64,
    pub retries: u32,
    pub outcome: String,
    pub error_kind: Option<String>,
    pub kb_chunks: u32,
    pub kb_ms: u64,
    /// The model the turn asked for (prices the tokens).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Usage the API reported: every input token the model saw (cached ones included), the
    /// cached part, every output token (reasoning included), the reasoning part.
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub cached_input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
    /// Tokens of the knowledge-base lookup's embeddings call.
    #[serde(default)]
    pub embedding_tokens: Option<u64>,
    /// The turn's cost from the price table, in US dollars (absent without usage).
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

impl TurnRecord {
    /// The line as written: the backend's id labels become field names.
    pub fn to_line(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert(
                if self.session_label.is_empty() { "session_id".into() } else { self.session_label.clone() },
                serde_json::json!(self.session_id),
            );
            object.insert(
                if self.turn_label.is_empty() { "turn_id".into() } else { self.turn_label.clone() },
                serde_json::json!(self.turn_id),
            );
        }
        value.to_string()
    }
}

pub struct TurnLog {
    file: Mutex<Option<RollingFileAppender>>,
}

impl TurnLog {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix("turns")
            .filename_suffix("log")
            .max_log_files(30)
            .build(dir)?;
        Ok(Self { file: Mutex::new(Some(appender)) })
    }

    pub fn disabled() -> Self {
        Self { file: Mutex::new(None) }
    }

    pub fn write(&self, record: &TurnRecord) {
        let mut line = record.to_line();
        // The record is this file's line; the general log repeats it only when asked
        // (`RUST_LOG=swapbot::turn=debug`): formatted and redacted twice more per turn, it cost
        // more than the turn's own bookkeeping.
        tracing::debug!(target: "swapbot::turn", "{line}");
        // One write per line (`writeln!` makes two).
        line.push('\n');
        if let Some(file) = self.file.lock().unwrap().as_mut() {
            if let Err(err) = file.write_all(line.as_bytes()) {
                tracing::warn!(%err, "could not write the turn log");
            }
        }
    }
}
