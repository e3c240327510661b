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
    fn recent_history(&mut self) -> Vec<HistoryMessage>;
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
    fn recent_history(&mut self) -> Vec<HistoryMessage> {
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
}

/// The live effects of one turn: OpenAI through the host's transport, text to the user.
pub struct LiveEffects {
    pub openai: OpenAi,
    pub deltas: Option<UnboundedSender<String>>,
    /// Read only when the plugin asks (a new session), not on every turn.
    pub history: Box<dyn Fn() -> Vec<HistoryMessage> + Send>,
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
        self.observations.lock().unwrap().http_calls += 1;
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
        {
            let mut obs = self.observations.lock().unwrap();
            obs.first_text_at.get_or_insert_with(Instant::now);
            obs.pushed_chars += delta.len();
        }
        if let Some(tx) = &self.deltas {
            let _ = tx.send(delta);
        }
    }

    fn log(&mut self, level: LogLevel, message: String) {
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

    fn recent_history(&mut self) -> Vec<HistoryMessage> {
        (self.history)()
    }
}
