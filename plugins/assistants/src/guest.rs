//! The wasm component: the `backend` world's exports over the host's imports.

// The generated bindings have a 15-argument lowering function.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../wit", world: "backend" });

include!("../../common/src/guest_glue.rs");

struct Component;

impl Guest for Component {
    fn describe() -> wt::Description {
        to_description(crate::describe())
    }

    fn chat(turn: wt::Turn) -> Result<wt::Answer, wt::ChatError> {
        let turn = from_turn(turn);
        crate::chat(&mut HostEffects, &turn)
            .map(to_answer)
            .map_err(|e| {
                log_error(&e);
                to_error(e)
            })
    }

    fn replay(
        session_id: String,
        history: Vec<wt::HistoryMessage>,
        settings: wt::Settings,
    ) -> Result<u32, wt::ChatError> {
        let history: Vec<c::HistoryMessage> = history.into_iter().map(from_history).collect();
        crate::replay(
            &mut HostEffects,
            &session_id,
            &history,
            &from_settings(settings),
        )
        .map_err(|e| {
            log_error(&e);
            to_error(e)
        })
    }
}

export!(Component);
