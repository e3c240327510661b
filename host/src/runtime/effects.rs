//! The effects a plugin may ask for, as a trait: the live implementation talks to OpenAI
//! and the user; the harness answers from a script with a virtual clock.

use std::time::Instant;

use swapbot_openai::{ApiRequest, ApiResponse, OpenAi, SseEvent, SseStream, TransportError};
use tokio::sync::mpsc::UnboundedSender;

use super::HistoryMessage;

#[async_trait::async_trait]
pub trait EventSource: Send {
    async fn next(&mut self) -> Result<Option<SseEvent>, TransportError>;
}

/// The host side of the `event-stream` resource.
pub struct EventStreamHandle(pub Box<dyn EventSource>);

pub enum StreamStart {
    Events(Box<dyn EventSource>),
    Refused(ApiResponse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[async_trait::async_trait]
pub trait HostEffects: Send {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError>;
    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError>;
    fn push_text(&mut self, delta: String);
    fn log(&mut self, level: LogLevel, message: String);
    fn now_ms(&mut self) -> u64;
    async fn sleep_ms(&mut self, ms: u32);
    async fn recent_history(&mut self) -> Vec<HistoryMessage>;
    /// The plugin created a session on the server (0.2.0 plugins say so as it happens).
    fn session_started(&mut self, _session_id: String) {}
}

/// For calls that must not reach anything, such as `describe` during validation.
pub struct NoEffects;

#[async_trait::async_trait]
impl HostEffects for NoEffects {
    async fn http(&mut self, _: ApiRequest) -> Result<ApiResponse, TransportError> {
        Err(TransportError::Refused("no HTTP during validation".into()))
    }
    async fn http_stream(&mut self, _: ApiRequest) -> Result<StreamStart, TransportError> {
        Err(TransportError::Refused("no HTTP during validation".into()))
    }
    fn push_text(&mut self, _: String) {}
    fn log(&mut self, _: LogLevel, _: String) {}
    fn now_ms(&mut self) -> u64 {
        0
    }
    async fn sleep_ms(&mut self, _: u32) {}
    async fn recent_history(&mut self) -> Vec<HistoryMessage> {
        vec![]
    }
}

/// What a live turn observed through its effects, read by the host after the turn.
#[derive(Clone, Debug, Default)]
pub struct TurnObservations {
    /// When the first answer text was pushed to the user.
    pub first_text_at: Option<Instant>,
    pub http_calls: u32,
    pub pushed_chars: usize,
    /// Bound on the text pushed in one turn (None: [`DEFAULT_MAX_PUSHED_BYTES`]); the host sets
    /// the largest answer it would deliver.
    pub max_pushed_bytes: Option<usize>,
    /// Pushed text dropped past the bound.
    pub pushed_dropped: usize,
    pub streams_opened: u32,
    pub log_calls: u32,
    pub log_bytes: usize,
    pub log_capped: bool,
    /// The last session the plugin said it created in this turn.
    pub session_started: Option<String>,
}

/// Per-turn bounds on what a plugin may make the host hold or write: without them one plugin
/// limited to 64 MiB grew the host to 2.1 GB (pushes), held 5,022 descriptors (streams) and wrote
/// 84 MB of logs in 0.4 s.
pub const DEFAULT_MAX_PUSHED_BYTES: usize = 1 << 20;
pub const MAX_STREAMS_PER_TURN: u32 = 16;
pub const MAX_LOG_CALLS_PER_TURN: u32 = 200;
pub const MAX_LOG_BYTES_PER_TURN: usize = 64 << 10;

/// A plugin's log text as one record: control characters (a newline could forge a host log
/// line, an escape sequence could rewrite a terminal) are shown escaped.
pub fn escape_log_text(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a turn's history comes from when its plugin asks for it, and only then: a turn in a
/// session that exists never does (reading it for every turn was a copy of up to 100 messages,
/// and with a database one more query).
pub type HistorySource = Box<dyn Fn() -> futures::future::BoxFuture<'static, Vec<HistoryMessage>> + Send>;

/// A history known in advance (tests, the bench, recording a case).
pub fn fixed_history(history: Vec<HistoryMessage>) -> HistorySource {
    Box::new(move || {
        let history = history.clone();
        Box::pin(async move { history })
    })
}

/// The live effects of one turn: OpenAI through the host's transport, text to the user.
pub struct LiveEffects {
    pub openai: OpenAi,
    pub deltas: Option<UnboundedSender<String>>,
    pub history: HistorySource,
    pub observations: std::sync::Arc<std::sync::Mutex<TurnObservations>>,
    pub plugin: String,
    pub started: Instant,
}

struct LiveStream(SseStream);

#[async_trait::async_trait]
impl EventSource for LiveStream {
    async fn next(&mut self) -> Result<Option<SseEvent>, TransportError> {
        self.0.next_event().await
    }
}

#[async_trait::async_trait]
impl HostEffects for LiveEffects {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        self.observations.lock().unwrap().http_calls += 1;
        tracing::debug!(method = %req.method, path = %req.path, "plugin HTTP call");
        self.openai.send(req).await
    }

    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        {
            let mut obs = self.observations.lock().unwrap();
            obs.http_calls += 1;
            if obs.streams_opened >= MAX_STREAMS_PER_TURN {
                return Err(TransportError::Refused(format!("more than {MAX_STREAMS_PER_TURN} streams in one turn")));
            }
            obs.streams_opened += 1;
        }
        tracing::debug!(method = %req.method, path = %req.path, "plugin HTTP stream");
        Ok(match self.openai.send_stream(req).await? {
            swapbot_openai::StreamStart::Events(stream) => StreamStart::Events(Box::new(LiveStream(stream))),
            swapbot_openai::StreamStart::Refused(resp) => StreamStart::Refused(resp),
        })
    }

    fn push_text(&mut self, delta: String) {
        if delta.is_empty() {
            return;
        }
        let mut delta = delta;
        {
            let mut obs = self.observations.lock().unwrap();
            let max = obs.max_pushed_bytes.unwrap_or(DEFAULT_MAX_PUSHED_BYTES);
            let room = max.saturating_sub(obs.pushed_chars);
            if delta.len() > room {
                let mut cut = room;
                while !delta.is_char_boundary(cut) {
                    cut -= 1;
                }
                if obs.pushed_dropped == 0 {
                    tracing::warn!(plugin = %self.plugin, max_bytes = max, "plugin pushed more text than an answer can hold; the rest is dropped");
                }
                obs.pushed_dropped += delta.len() - cut;
                delta.truncate(cut);
            }
            if delta.is_empty() {
                return;
            }
            obs.first_text_at.get_or_insert_with(Instant::now);
            obs.pushed_chars += delta.len();
        }
        if let Some(tx) = &self.deltas {
            let _ = tx.send(delta);
        }
    }

    fn log(&mut self, level: LogLevel, message: String) {
        // Plugins log every HTTP call at debug; at the usual info level that costs no lock,
        // count or escaping.
        if level == LogLevel::Debug && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        {
            let mut obs = self.observations.lock().unwrap();
            obs.log_calls += 1;
            obs.log_bytes += message.len();
            if obs.log_calls > MAX_LOG_CALLS_PER_TURN || obs.log_bytes > MAX_LOG_BYTES_PER_TURN {
                // One line says the rest is dropped; the plugin cannot flood the logs.
                if !obs.log_capped {
                    obs.log_capped = true;
                    tracing::warn!(plugin = %self.plugin, "plugin log limit for this turn reached; further plugin log lines are dropped");
                }
                return;
            }
        }
        let message = escape_log_text(&message);
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn sleep_ms(&mut self, ms: u32) {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000) as u64)).await;
    }

    async fn recent_history(&mut self) -> Vec<HistoryMessage> {
        (self.history)().await
    }

    fn session_started(&mut self, session_id: String) {
        if !session_id.is_empty() && session_id.len() <= 512 {
            self.observations.lock().unwrap().session_started = Some(session_id);
        }
    }
}
