//! Effects for the benchmarks.
//!
//! * [`Recorder`]: host effects that run a real turn against the sandbox and keep every exchange.
//! * [`Canned`]: host effects that replay a recorded turn from memory (no HTTP, no sockets, a virtual
//!   clock), for the wasm plugin.
//! * [`NativeCanned`]: the same replay behind the plugin crates' own `Effects` trait, for the native
//!   build of the same protocol logic.
//! * [`NativeLive`]: the plugin crates' `Effects` over the host's real OpenAI transport (the same
//!   `swapbot_openai::OpenAi` client the wasm path's `LiveEffects` uses).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use swapbot::runtime::effects::{EventSource, HostEffects, LogLevel, StreamStart};
use swapbot::runtime::{HistoryMessage, Settings, Turn};
use swapbot_openai::{ApiRequest, ApiResponse, OpenAi, SseEvent, TransportError};
use swapbot_plugin_common as pc;

/// One recorded HTTP exchange of a turn.
#[derive(Clone, Debug)]
pub enum Exchange {
    Plain { method: String, path: String, response: ApiResponse },
    /// `waited[i]`: event `i` was waited for (a new network read); the others had arrived with
    /// the one before (how often events share a read says what handing a plugin several at once
    /// could save).
    Stream { method: String, path: String, events: Vec<SseEvent>, waited: Vec<bool> },
}

pub type Script = Arc<Vec<Exchange>>;

// ---------------------------------------------------------------------------------------------
// Recording against the sandbox
// ---------------------------------------------------------------------------------------------

pub struct Recorder {
    pub openai: OpenAi,
    pub log: Arc<Mutex<Vec<Exchange>>>,
}

struct VecStream(VecDeque<SseEvent>);

#[async_trait::async_trait]
impl EventSource for VecStream {
    async fn next(&mut self) -> Result<Option<SseEvent>, TransportError> {
        Ok(self.0.pop_front())
    }
}

#[async_trait::async_trait]
impl HostEffects for Recorder {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        let (method, path) = (req.method.clone(), req.path.clone());
        let response = self.openai.send(req).await?;
        self.log.lock().unwrap().push(Exchange::Plain { method, path, response: response.clone() });
        Ok(response)
    }
    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        let (method, path) = (req.method.clone(), req.path.clone());
        match self.openai.send_stream(req).await? {
            swapbot_openai::StreamStart::Refused(r) => Ok(StreamStart::Refused(r)),
            swapbot_openai::StreamStart::Events(mut s) => {
                let (mut events, mut waited) = (Vec::new(), Vec::new());
                loop {
                    if let Some(e) = s.next_buffered() {
                        events.push(e);
                        waited.push(false);
                        continue;
                    }
                    let Some(e) = s.next_event().await? else { break };
                    events.push(e);
                    waited.push(true);
                }
                let stream = VecStream(events.iter().cloned().collect());
                self.log.lock().unwrap().push(Exchange::Stream { method, path, events, waited });
                Ok(StreamStart::Events(Box::new(stream)))
            }
        }
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

// ---------------------------------------------------------------------------------------------
// Replaying from memory into the wasm plugin
// ---------------------------------------------------------------------------------------------

pub struct Canned {
    script: Script,
    next: usize,
    clock: u64,
    pub pushed: usize,
}

impl Canned {
    pub fn new(script: Script) -> Self {
        Canned { script, next: 0, clock: 1_000_000, pushed: 0 }
    }
    fn take(&mut self, method: &str, path: &str) -> Exchange {
        let ex = self.script.get(self.next).cloned().unwrap_or_else(|| panic!("unexpected request {method} {path}"));
        self.next += 1;
        let (m, p) = match &ex {
            Exchange::Plain { method, path, .. } | Exchange::Stream { method, path, .. } => (method, path),
        };
        assert!(m == method && p == path, "script expects {m} {p}, plugin asked {method} {path}");
        ex
    }
}

#[async_trait::async_trait]
impl HostEffects for Canned {
    async fn http(&mut self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        match self.take(&req.method, &req.path) {
            Exchange::Plain { response, .. } => Ok(response),
            Exchange::Stream { .. } => panic!("script has a stream for a plain request"),
        }
    }
    async fn http_stream(&mut self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        match self.take(&req.method, &req.path) {
            Exchange::Stream { events, .. } => Ok(StreamStart::Events(Box::new(VecStream(events.into())))),
            Exchange::Plain { .. } => panic!("script has a plain answer for a stream request"),
        }
    }
    fn push_text(&mut self, delta: String) {
        self.pushed += delta.len();
    }
    fn log(&mut self, _: LogLevel, _: String) {}
    fn now_ms(&mut self) -> u64 {
        self.clock
    }
    async fn sleep_ms(&mut self, ms: u32) {
        self.clock += ms as u64;
    }
    async fn recent_history(&mut self) -> Vec<HistoryMessage> {
        vec![]
    }
}

// ---------------------------------------------------------------------------------------------
// The native build of the plugin logic
// ---------------------------------------------------------------------------------------------

fn to_pc_request(req: pc::HttpRequest) -> ApiRequest {
    ApiRequest { method: req.method, path: req.path, headers: req.headers, body: req.body }
}

fn to_pc_response(r: ApiResponse) -> pc::HttpResponse {
    pc::HttpResponse { status: r.status, headers: r.headers, body: r.body }
}

fn to_pc_event(e: SseEvent) -> pc::SseEvent {
    pc::SseEvent { event: e.event, data: e.data }
}

fn to_pc_transport(e: TransportError) -> pc::TransportError {
    match e {
        TransportError::Timeout(m) => pc::TransportError::Timeout(m),
        TransportError::Connection(m) => pc::TransportError::Connection(m),
        TransportError::Refused(m) => pc::TransportError::Refused(m),
    }
}

pub struct NativeVecStream(VecDeque<SseEvent>);

impl pc::EventSource for NativeVecStream {
    fn next_event(&mut self) -> Result<Option<pc::SseEvent>, pc::TransportError> {
        Ok(self.0.pop_front().map(to_pc_event))
    }
}

pub struct NativeCanned(pub Canned);

impl pc::Effects for NativeCanned {
    type Stream = NativeVecStream;
    fn http(&mut self, req: pc::HttpRequest) -> Result<pc::HttpResponse, pc::TransportError> {
        match self.0.take(&req.method, &req.path) {
            Exchange::Plain { response, .. } => Ok(to_pc_response(response)),
            Exchange::Stream { .. } => panic!("script has a stream for a plain request"),
        }
    }
    fn http_stream(&mut self, req: pc::HttpRequest) -> Result<pc::StreamStart<Self::Stream>, pc::TransportError> {
        match self.0.take(&req.method, &req.path) {
            Exchange::Stream { events, .. } => Ok(pc::StreamStart::Events(NativeVecStream(events.into()))),
            Exchange::Plain { .. } => panic!("script has a plain answer for a stream request"),
        }
    }
    fn push_text(&mut self, delta: &str) {
        self.0.pushed += delta.len();
    }
    fn log(&mut self, _: pc::Level, _: &str) {}
    fn now_ms(&mut self) -> u64 {
        self.0.clock
    }
    fn sleep_ms(&mut self, ms: u32) {
        self.0.clock += ms as u64;
    }
    fn recent_history(&mut self) -> Vec<pc::HistoryMessage> {
        vec![]
    }
}

/// The native logic over the host's transport. Runs on a plain thread; every effect is one
/// `block_on` on the shared runtime (the wasm path's turn is one `block_on` as a whole).
pub struct NativeLive {
    pub openai: OpenAi,
    /// Drives every call; a current-thread runtime is driven only by `Runtime::block_on`.
    pub rt: Arc<tokio::runtime::Runtime>,
    pub started: Instant,
    pub pushed: usize,
}

pub struct NativeLiveStream {
    stream: swapbot_openai::SseStream,
    rt: Arc<tokio::runtime::Runtime>,
}

impl pc::EventSource for NativeLiveStream {
    fn next_event(&mut self) -> Result<Option<pc::SseEvent>, pc::TransportError> {
        self.rt.block_on(self.stream.next_event()).map(|e| e.map(to_pc_event)).map_err(to_pc_transport)
    }
}

impl pc::Effects for NativeLive {
    type Stream = NativeLiveStream;
    fn http(&mut self, req: pc::HttpRequest) -> Result<pc::HttpResponse, pc::TransportError> {
        self.rt.block_on(self.openai.send(to_pc_request(req))).map(to_pc_response).map_err(to_pc_transport)
    }
    fn http_stream(&mut self, req: pc::HttpRequest) -> Result<pc::StreamStart<Self::Stream>, pc::TransportError> {
        match self.rt.block_on(self.openai.send_stream(to_pc_request(req))).map_err(to_pc_transport)? {
            swapbot_openai::StreamStart::Refused(r) => Ok(pc::StreamStart::Refused(to_pc_response(r))),
            swapbot_openai::StreamStart::Events(stream) => {
                Ok(pc::StreamStart::Events(NativeLiveStream { stream, rt: self.rt.clone() }))
            }
        }
    }
    fn push_text(&mut self, delta: &str) {
        self.pushed += delta.len();
    }
    fn log(&mut self, _: pc::Level, _: &str) {}
    fn now_ms(&mut self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    fn sleep_ms(&mut self, ms: u32) {
        // The same timer the host's LiveEffects sleeps on.
        let d = std::time::Duration::from_millis(ms as u64);
        self.rt.block_on(async move { tokio::time::sleep(d).await });
    }
    fn recent_history(&mut self) -> Vec<pc::HistoryMessage> {
        vec![]
    }
}

// ---------------------------------------------------------------------------------------------
// Turns
// ---------------------------------------------------------------------------------------------

/// Which plugin path a benchmark turn takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    ResponsesStream,
    ResponsesPlain,
    Assistants,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::ResponsesStream, Path::ResponsesPlain, Path::Assistants];
    pub fn plugin(self) -> &'static str {
        match self {
            Path::Assistants => "assistants",
            _ => "responses",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Path::ResponsesStream => "responses (streamed)",
            Path::ResponsesPlain => "responses (not streamed)",
            Path::Assistants => "assistants (run + poll)",
        }
    }
}

pub fn wit_settings(path: Path, poll_ms: u32) -> Settings {
    Settings {
        model: "gpt-4.1-mini".into(),
        instructions: "You are a helpful assistant in a Telegram chat. Answer concisely.".into(),
        poll_interval_ms: poll_ms,
        deadline_ms: 60_000,
        options: vec![
            ("assistant-id".into(), "asst_bench".into()),
            ("stream".into(), (path == Path::ResponsesStream).to_string()),
        ],
    }
}

pub fn wit_turn(path: Path, user: i64, session: Option<String>, text: &str, poll_ms: u32) -> Turn {
    Turn {
        user_id: user,
        session_id: session,
        cache_key: String::new(),
        text: text.into(),
        context: vec![],
        settings: wit_settings(path, poll_ms),
    }
}

pub fn native_turn(t: &Turn) -> pc::Turn {
    pc::Turn {
        user_id: t.user_id,
        session_id: t.session_id.clone(),
        cache_key: t.cache_key.clone(),
        text: t.text.clone(),
        context: vec![],
        // Contract 0.2.0: the backend's own settings (assistant-id, stream, background) are options.
        settings: pc::Settings {
            model: t.settings.model.clone(),
            instructions: t.settings.instructions.clone(),
            poll_interval_ms: t.settings.poll_interval_ms,
            deadline_ms: t.settings.deadline_ms,
            options: t.settings.options.clone(),
        },
    }
}

/// One turn of the native build of a plugin; returns the answer text.
pub fn native_chat<E: pc::Effects>(path: Path, fx: &mut E, turn: &pc::Turn) -> Result<pc::Answer, pc::ChatError> {
    match path {
        Path::Assistants => swapbot_plugin_assistants::chat(fx, turn),
        _ => swapbot_plugin_responses::chat(fx, turn),
    }
}
