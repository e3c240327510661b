//! The contract's `host` interface, implemented over a turn's [`HostEffects`].

use swapbot_openai::{ApiRequest, ApiResponse, TransportError as OpenAiTransportError};
use wasmtime::component::Resource;

use super::bindings::swapbot::backend::{host, types};
use super::effects::{EventStreamHandle, LogLevel, StreamStart};
use super::{HistoryMessage, TurnState};

impl types::Host for TurnState {}

fn to_api(req: host::Request) -> ApiRequest {
    ApiRequest { method: req.method, path: req.path, headers: req.headers, body: req.body }
}

fn from_api(resp: ApiResponse) -> host::Response {
    host::Response { status: resp.status, headers: resp.headers, body: resp.body }
}

fn from_transport(err: OpenAiTransportError) -> host::TransportError {
    match err {
        OpenAiTransportError::Timeout(m) => host::TransportError::Timeout(m),
        OpenAiTransportError::Connection(m) => host::TransportError::Connection(m),
        OpenAiTransportError::Refused(m) => host::TransportError::Refused(m),
    }
}

impl TurnState {
    /// Every host call ends a stretch of guest CPU time.
    fn entered_host(&mut self) {
        self.ticks_in_guest = 0;
    }
}

impl host::Host for TurnState {
    async fn http(&mut self, req: host::Request) -> Result<host::Response, host::TransportError> {
        self.entered_host();
        let result = self.effects.http(to_api(req)).await;
        self.entered_host();
        result.map(from_api).map_err(from_transport)
    }

    async fn http_stream(&mut self, req: host::Request) -> Result<host::StreamStart, host::TransportError> {
        self.entered_host();
        let result = self.effects.http_stream(to_api(req)).await;
        self.entered_host();
        match result.map_err(from_transport)? {
            StreamStart::Refused(resp) => Ok(host::StreamStart::Refused(from_api(resp))),
            StreamStart::Events(source) => {
                let handle = self
                    .table
                    .push(EventStreamHandle(source))
                    .map_err(|e| host::TransportError::Refused(format!("too many open streams: {e}")))?;
                Ok(host::StreamStart::Events(handle))
            }
        }
    }

    async fn push_text(&mut self, delta: String) {
        self.entered_host();
        self.effects.push_text(delta);
    }

    async fn log(&mut self, level: host::Level, message: String) {
        self.entered_host();
        let level = match level {
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        // Bound what a plugin can write into the host's logs.
        let mut message = message;
        if message.len() > 2000 {
            let mut cut = 2000;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.effects.log(level, message);
    }

    async fn now_ms(&mut self) -> u64 {
        self.entered_host();
        self.effects.now_ms()
    }

    async fn sleep_ms(&mut self, ms: u32) {
        self.entered_host();
        self.effects.sleep_ms(ms).await;
        self.entered_host();
    }

    async fn recent_history(&mut self) -> Vec<HistoryMessage> {
        self.entered_host();
        self.effects.recent_history()
    }
}

impl host::HostEventStream for TurnState {
    async fn next(
        &mut self,
        stream: Resource<EventStreamHandle>,
    ) -> Result<Option<host::SseEvent>, host::TransportError> {
        self.entered_host();
        let handle = self
            .table
            .get_mut(&stream)
            .map_err(|e| host::TransportError::Refused(format!("unknown stream: {e}")))?;
        let result = handle.0.next().await;
        self.entered_host();
        result
            .map(|event| event.map(|e| host::SseEvent { event: e.event, data: e.data }))
            .map_err(from_transport)
    }

    async fn drop(&mut self, stream: Resource<EventStreamHandle>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}
