//! A backend built for a future contract (swapbot:backend@0.9.0): the host must refuse it,
//! naming both versions.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "wit", world: "backend" });

use swapbot::backend::types as wt;

struct Future;

impl Guest for Future {
    fn describe() -> wt::Description {
        wt::Description {
            name: "responses".into(),
            version: "9.0.0".into(),
            contract: "0.9.0".into(),
            id_map: Some("user_conversations.json".into()),
            session_label: "conversation_id".into(),
            turn_label: "response_id".into(),
        }
    }

    fn chat(turn: wt::Turn) -> Result<wt::Answer, wt::ChatError> {
        swapbot::backend::host::log(swapbot::backend::host::Level::Info, "future plugin");
        Ok(wt::Answer {
            text: turn.text,
            session_id: Some("conv_future".into()),
            turn_id: "resp_future".into(),
            new_session: false,
            replayed: 0,
            usage: None,
        })
    }
}

export!(Future);
