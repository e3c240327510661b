//! A backend built for contract swapbot:backend@0.1.0, as a plugin compiled before 0.2.0 was
//! released would be: the host must keep serving it beside 0.2.0 plugins. It answers from the
//! host's imports only (history, clock, log, pushed text), so a test sees every value cross the
//! 0.1.0 boundary both ways.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "backend" });

use swapbot::backend::{host, types as wt};

struct Legacy;

impl Guest for Legacy {
    fn describe() -> wt::Description {
        wt::Description {
            name: "legacy".into(),
            version: "0.1.7".into(),
            contract: "0.1.0".into(),
            id_map: "user_conversations.json".into(),
            session_label: "conversation_id".into(),
            turn_label: "response_id".into(),
        }
    }

    fn chat(turn: wt::Turn) -> Result<wt::Answer, wt::ChatError> {
        if turn.text == "fail" {
            return Err(wt::ChatError {
                kind: wt::ErrorKind::RateLimited,
                message: "legacy plugin fails on purpose".into(),
                retryable: true,
                retry_after_ms: Some(1),
                session_id: Some("conv_legacy_new".into()),
                turn_id: None,
            });
        }
        host::log(host::Level::Info, "legacy plugin answering");
        let history = host::recent_history();
        let text = format!(
            "legacy {}: {} (history {}, model {}, {} chunk(s))",
            turn.user_id,
            turn.text,
            history.len(),
            turn.settings.model,
            turn.context.len()
        );
        host::push_text(&text);
        Ok(wt::Answer {
            text,
            session_id: turn.session_id.unwrap_or_else(|| "conv_legacy".into()),
            turn_id: format!("resp_legacy_{}", host::now_ms() % 7),
            new_session: false,
            replayed: 0,
            usage: Some(wt::Usage { input_tokens: 11, output_tokens: 7 }),
        })
    }

    fn replay(_: String, history: Vec<wt::HistoryMessage>, _: wt::Settings) -> Result<u32, wt::ChatError> {
        Ok(history.len() as u32)
    }
}

export!(Legacy);
