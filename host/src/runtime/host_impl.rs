//! The contract's `host` interface, implemented over a turn's [`HostEffects`](super::HostEffects).
//!
//! Every contract version the host serves has the same `host` interface so far; the
//! [`impl_host_interface!`] macro implements one version's generated traits, so that the versions
//! cannot drift apart. A version whose `host` interface changes gets its own impl in its
//! `since_v0_*` module instead.

/// The most a plugin may write into the host's log in one call.
const MAX_LOG_MESSAGE: usize = 2000;

/// Bounds what a plugin can write into the host's logs.
pub(super) fn bounded_log_message(mut message: String) -> String {
    if message.len() > MAX_LOG_MESSAGE {
        let mut cut = MAX_LOG_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Implements `types::Host`, `host::Host` and `host::HostEventStream` of one contract version's
/// bindings (`$host`, `$types`: the generated modules) for [`TurnState`].
macro_rules! impl_host_interface {
    ($host:path, $types:path) => {
        $crate::runtime::host_impl::impl_host_interface!($host, $types, {});
    };
    // `$extra`: methods of `host::Host` that only this version has.
    ($host:path, $types:path, { $($extra:item)* }) => {
        const _: () = {
            use wasmtime::component::Resource;
            use $host as host;
            use $types as types;
            use $crate::runtime::effects::{EventStreamHandle, LogLevel, StreamStart};
            use $crate::runtime::host_impl::bounded_log_message;
            use $crate::runtime::TurnState;

            impl types::Host for TurnState {}

            fn to_api(req: host::Request) -> swapbot_openai::ApiRequest {
                swapbot_openai::ApiRequest { method: req.method, path: req.path, headers: req.headers, body: req.body }
            }

            fn from_api(resp: swapbot_openai::ApiResponse) -> host::Response {
                host::Response { status: resp.status, headers: resp.headers, body: resp.body }
            }

            fn transport(err: swapbot_openai::TransportError) -> host::TransportError {
                match err {
                    swapbot_openai::TransportError::Timeout(m) => host::TransportError::Timeout(m),
                    swapbot_openai::TransportError::Connection(m) => host::TransportError::Connection(m),
                    swapbot_openai::TransportError::Refused(m) => host::TransportError::Refused(m),
                }
            }

            impl host::Host for TurnState {
                async fn http(&mut self, req: host::Request) -> Result<host::Response, host::TransportError> {
                    let result = self.effects.http(to_api(req)).await;
                    self.returned_from_host();
                    result.map(from_api).map_err(transport)
                }

                async fn http_stream(&mut self, req: host::Request) -> Result<host::StreamStart, host::TransportError> {
                    let result = self.effects.http_stream(to_api(req)).await;
                    self.returned_from_host();
                    match result.map_err(transport)? {
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
                    self.effects.push_text(delta);
                    self.returned_from_host();
                }

                async fn log(&mut self, level: host::Level, message: String) {
                    let level = match level {
                        host::Level::Debug => LogLevel::Debug,
                        host::Level::Info => LogLevel::Info,
                        host::Level::Warn => LogLevel::Warn,
                        host::Level::Error => LogLevel::Error,
                    };
                    self.effects.log(level, bounded_log_message(message));
                    self.returned_from_host();
                }

                async fn now_ms(&mut self) -> u64 {
                    self.returned_from_host();
                    self.effects.now_ms()
                }

                async fn sleep_ms(&mut self, ms: u32) {
                    self.effects.sleep_ms(ms).await;
                    self.returned_from_host();
                }

                $($extra)*

                async fn recent_history(&mut self) -> Vec<types::HistoryMessage> {
                    let history = self.effects.recent_history().await;
                    self.returned_from_host();
                    history
                        .into_iter()
                        .map(|m| types::HistoryMessage {
                            role: match m.role {
                                $crate::runtime::Role::User => types::Role::User,
                                $crate::runtime::Role::Assistant => types::Role::Assistant,
                            },
                            text: m.text,
                        })
                        .collect()
                }
            }

            impl host::HostEventStream for TurnState {
                async fn next(
                    &mut self,
                    stream: Resource<EventStreamHandle>,
                ) -> Result<Option<host::SseEvent>, host::TransportError> {
                    let handle = self
                        .table
                        .get_mut(&stream)
                        .map_err(|e| host::TransportError::Refused(format!("unknown stream: {e}")))?;
                    let result = handle.0.next().await;
                    self.returned_from_host();
                    result
                        .map(|event| event.map(|e| host::SseEvent { event: e.event, data: e.data }))
                        .map_err(transport)
                }

                async fn drop(&mut self, stream: Resource<EventStreamHandle>) -> wasmtime::Result<()> {
                    self.table.delete(stream)?;
                    Ok(())
                }
            }
        };
    };
}
pub(super) use impl_host_interface;
