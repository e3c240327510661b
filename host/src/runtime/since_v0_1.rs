//! Contract `swapbot:backend@0.1.0`, served beside the latest: its bindings, and conversions
//! between its types and the latest ones. Everything outside this module sees only the latest
//! types.
//!
//! What 0.1.0 lacks is filled in on the way back: no cached or reasoning token counts (0), no
//! `context-overflow` kind (its `bad-request` naming `context_length_exceeded` becomes one), no
//! usage of a failed turn. What it cannot receive is
//! dropped on the way in: `turn.cache-key` and the options that were not fields in 0.1.0. 0.1.0's
//! `replay` export is never called.

use super::bindings::swapbot::backend::types as latest;

pub const VERSION: &str = "0.1.0";

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "backend",
        imports: { default: async },
        exports: { default: async },
        with: {
            "swapbot:backend/host.event-stream": crate::runtime::effects::EventStreamHandle,
        },
    });
}

use bindings::swapbot::backend::types as v0_1;

super::host_impl::impl_host_interface!(
    crate::runtime::since_v0_1::bindings::swapbot::backend::host,
    crate::runtime::since_v0_1::bindings::swapbot::backend::types
);

/// 0.1.0 had the shipped backends' options as fields; 0.2.0 has them as options.
pub fn settings(s: &latest::Settings) -> v0_1::Settings {
    let option = |key: &str| s.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let flag = |key: &str, default: bool| match option(key) {
        Some(v) => v.eq_ignore_ascii_case("true"),
        None => default,
    };
    v0_1::Settings {
        model: s.model.clone(),
        instructions: s.instructions.clone(),
        assistant_id: option("assistant-id").map(str::to_owned),
        stream: flag("stream", true),
        background: flag("background", false),
        poll_interval_ms: s.poll_interval_ms,
        deadline_ms: s.deadline_ms,
    }
}

pub fn turn(t: &latest::Turn) -> v0_1::Turn {
    v0_1::Turn {
        user_id: t.user_id,
        session_id: t.session_id.clone(),
        text: t.text.clone(),
        context: t
            .context
            .iter()
            .map(|c| v0_1::ContextChunk { source: c.source.clone(), text: c.text.clone(), score: c.score })
            .collect(),
        settings: settings(&t.settings),
    }
}

pub fn answer(a: v0_1::Answer) -> latest::Answer {
    latest::Answer {
        text: a.text,
        session_id: Some(a.session_id),
        turn_id: a.turn_id,
        new_session: a.new_session,
        replayed: a.replayed,
        usage: a.usage.map(|u| latest::Usage {
            input_tokens: u.input_tokens,
            cached_input_tokens: 0,
            output_tokens: u.output_tokens,
            reasoning_tokens: 0,
        }),
    }
}

fn kind(k: v0_1::ErrorKind) -> latest::ErrorKind {
    use latest::ErrorKind as L;
    use v0_1::ErrorKind as K;
    match k {
        K::Timeout => L::Timeout,
        K::Connection => L::Connection,
        K::RateLimited => L::RateLimited,
        K::Quota => L::Quota,
        K::Server => L::Server,
        K::SessionBusy => L::SessionBusy,
        K::SessionGone => L::SessionGone,
        K::ApiGone => L::ApiGone,
        K::Auth => L::Auth,
        K::BadRequest => L::BadRequest,
        K::BadResponse => L::BadResponse,
        K::StreamCut => L::StreamCut,
        K::ModelFailed => L::ModelFailed,
        K::Config => L::Config,
    }
}

pub fn error(e: v0_1::ChatError) -> latest::ChatError {
    // 0.1.0 has no context-overflow kind: its plugins report the API's code in a bad-request.
    let kind = match e.kind {
        v0_1::ErrorKind::BadRequest if e.message.contains("context_length_exceeded") => latest::ErrorKind::ContextOverflow,
        other => kind(other),
    };
    latest::ChatError {
        kind,
        message: e.message,
        retryable: e.retryable,
        retry_after_ms: e.retry_after_ms,
        session_id: e.session_id,
        turn_id: e.turn_id,
        usage: None,
    }
}

pub fn description(d: v0_1::Description) -> latest::Description {
    latest::Description {
        name: d.name,
        version: d.version,
        contract: d.contract,
        id_map: Some(d.id_map),
        session_label: d.session_label,
        turn_label: d.turn_label,
    }
}
