//! The wasm component side of every plugin: the bindings of `wit/backend.wit` (generated here
//! once, so the plugins cannot drift from each other), [`HostEffects`] (the [`Effects`] over the
//! host's imports) and the conversions between the WIT types and this crate's mirrors.
//!
//! A plugin exports itself with [`export_backend!`](crate::export_backend); it needs neither
//! wit-bindgen nor the WIT file.

// The generated bindings have a 15-argument lowering function.
#![allow(clippy::too_many_arguments)]

/// The generated bindings. `pub_export_macro` makes their `export!` usable from the plugin
/// crates, where the component's exports must be defined (the cdylib is the plugin).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "backend",
        pub_export_macro: true,
        default_bindings_module: "swapbot_plugin_common::guest::bindings",
    });
}

use crate::{Backend, Effects};

/// Every plugin's allocator: an instance lives for one turn (see [`crate::arena`]).
#[global_allocator]
static ALLOCATOR: crate::arena::TurnArena = crate::arena::TurnArena::new();

use bindings::swapbot::backend::host as wh;
use bindings::swapbot::backend::types as wt;
use crate as c;

/// The `Effects` of a plugin running in the host: every call is an import.
pub struct HostEffects;

pub struct HostStream(wh::EventStream);

impl c::EventSource for HostStream {
    fn next_event(&mut self) -> Result<Option<c::SseEvent>, c::TransportError> {
        match self.0.next() {
            Ok(Some(e)) => Ok(Some(c::SseEvent {
                event: e.event,
                data: e.data,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(from_transport(e)),
        }
    }
}

fn to_request(r: c::HttpRequest) -> wh::Request {
    wh::Request {
        method: r.method,
        path: r.path,
        headers: r.headers,
        body: r.body,
    }
}

fn from_response(r: wh::Response) -> c::HttpResponse {
    c::HttpResponse {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

fn from_transport(e: wh::TransportError) -> c::TransportError {
    match e {
        wh::TransportError::Timeout(m) => c::TransportError::Timeout(m),
        wh::TransportError::Connection(m) => c::TransportError::Connection(m),
        wh::TransportError::Refused(m) => c::TransportError::Refused(m),
    }
}

impl Effects for HostEffects {
    type Stream = HostStream;

    fn http(&mut self, req: c::HttpRequest) -> Result<c::HttpResponse, c::TransportError> {
        wh::http(&to_request(req))
            .map(from_response)
            .map_err(from_transport)
    }

    fn http_stream(
        &mut self,
        req: c::HttpRequest,
    ) -> Result<c::StreamStart<HostStream>, c::TransportError> {
        match wh::http_stream(&to_request(req)) {
            Ok(wh::StreamStart::Events(s)) => Ok(c::StreamStart::Events(HostStream(s))),
            Ok(wh::StreamStart::Refused(r)) => Ok(c::StreamStart::Refused(from_response(r))),
            Err(e) => Err(from_transport(e)),
        }
    }

    fn push_text(&mut self, delta: &str) {
        wh::push_text(delta);
    }

    fn log(&mut self, level: c::Level, msg: &str) {
        let level = match level {
            c::Level::Debug => wh::Level::Debug,
            c::Level::Info => wh::Level::Info,
            c::Level::Warn => wh::Level::Warn,
            c::Level::Error => wh::Level::Error,
        };
        wh::log(level, msg);
    }

    fn now_ms(&mut self) -> u64 {
        wh::now_ms()
    }

    fn sleep_ms(&mut self, ms: u32) {
        wh::sleep_ms(ms);
    }

    fn session_started(&mut self, session_id: &str) {
        wh::session_started(session_id);
    }

    fn recent_history(&mut self) -> Vec<c::HistoryMessage> {
        wh::recent_history().into_iter().map(from_history).collect()
    }
}

fn from_history(m: wt::HistoryMessage) -> c::HistoryMessage {
    let role = match m.role {
        wt::Role::User => c::Role::User,
        wt::Role::Assistant => c::Role::Assistant,
    };
    c::HistoryMessage { role, text: m.text }
}

fn from_settings(s: wt::Settings) -> c::Settings {
    c::Settings {
        model: s.model,
        instructions: s.instructions,
        poll_interval_ms: s.poll_interval_ms,
        deadline_ms: s.deadline_ms,
        options: s.options,
    }
}

pub fn from_turn(t: wt::Turn) -> c::Turn {
    c::Turn {
        user_id: t.user_id,
        session_id: t.session_id,
        cache_key: t.cache_key,
        text: t.text,
        context: t
            .context
            .into_iter()
            .map(|ch| c::ContextChunk {
                source: ch.source,
                text: ch.text,
                score: ch.score,
            })
            .collect(),
        settings: from_settings(t.settings),
    }
}

fn to_usage(u: c::Usage) -> wt::Usage {
    wt::Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
    }
}

pub fn to_answer(a: c::Answer) -> wt::Answer {
    wt::Answer {
        text: a.text,
        session_id: a.session_id,
        turn_id: a.turn_id,
        new_session: a.new_session,
        replayed: a.replayed,
        usage: a.usage.map(to_usage),
    }
}

fn to_kind(k: c::ErrorKind) -> wt::ErrorKind {
    use c::ErrorKind as K;
    use wt::ErrorKind as W;
    match k {
        K::Timeout => W::Timeout,
        K::Connection => W::Connection,
        K::RateLimited => W::RateLimited,
        K::Quota => W::Quota,
        K::Server => W::Server,
        K::SessionBusy => W::SessionBusy,
        K::SessionGone => W::SessionGone,
        K::ApiGone => W::ApiGone,
        K::Auth => W::Auth,
        K::BadRequest => W::BadRequest,
        K::BadResponse => W::BadResponse,
        K::StreamCut => W::StreamCut,
        K::ModelFailed => W::ModelFailed,
        K::Config => W::Config,
        K::ContextOverflow => W::ContextOverflow,
    }
}

pub fn to_error(e: c::ChatError) -> wt::ChatError {
    wt::ChatError {
        kind: to_kind(e.kind),
        message: e.message,
        retryable: e.retryable,
        retry_after_ms: e.retry_after_ms,
        session_id: e.session_id,
        turn_id: e.turn_id,
        usage: e.usage.map(to_usage),
    }
}

pub fn to_description(d: c::Description) -> wt::Description {
    wt::Description {
        name: d.name,
        version: d.version,
        contract: d.contract,
        id_map: d.id_map,
        session_label: d.session_label,
        turn_label: d.turn_label,
    }
}

/// Log a failed turn through the host before handing the error back.
fn log_error(e: &c::ChatError) {
    wh::log(wh::Level::Warn, &e.to_string());
}


/// The `describe` export of backend `B`.
pub fn describe<B: Backend>() -> wt::Description {
    to_description(B::describe())
}

/// The `chat` export of backend `B`, on the host's imports; a failure is logged through the host
/// before it is handed back.
pub fn chat<B: Backend>(turn: wt::Turn) -> Result<wt::Answer, wt::ChatError> {
    let turn = from_turn(turn);
    B::chat(&mut HostEffects, &turn).map(to_answer).map_err(|e| {
        log_error(&e);
        to_error(e)
    })
}
