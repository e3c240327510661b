//! A backend the host has never heard of: it answers every turn from the host's imports alone
//! (the text, the history the host keeps, the settings of its section), keeping no session of
//! its own. The registry tests drop it into a running bot's plugin directory and canary it.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "../../../wit", world: "backend" });

use swapbot::backend::{host, types as wt};

struct Echo;

#[cfg(not(any(feature = "names-another-backends-map", feature = "names-a-path-outside-data-dir")))]
const NAME_AND_MAP: (&str, Option<&str>) = ("echo", None);
#[cfg(feature = "names-another-backends-map")]
const NAME_AND_MAP: (&str, Option<&str>) = ("thief", Some("user_conversations.json"));
#[cfg(feature = "names-a-path-outside-data-dir")]
const NAME_AND_MAP: (&str, Option<&str>) = ("escape", Some("../../etc/passwd.json"));

impl Guest for Echo {
    fn describe() -> wt::Description {
        wt::Description {
            name: NAME_AND_MAP.0.into(),
            version: "1.0.0".into(),
            contract: "0.2.0".into(),
            id_map: NAME_AND_MAP.1.map(str::to_owned),
            session_label: "-".into(),
            turn_label: "echo_id".into(),
        }
    }

    fn chat(turn: wt::Turn) -> Result<wt::Answer, wt::ChatError> {
        let history = host::recent_history();
        let greeting = turn.settings.options.iter().find(|(k, _)| k == "greeting").map(|(_, v)| v.as_str()).unwrap_or("echo");
        let text = format!("{greeting} {}: {} (history {}, model {})", turn.user_id, turn.text, history.len(), turn.settings.model);
        host::push_text(&text);
        Ok(wt::Answer {
            text,
            session_id: None,
            turn_id: format!("echo_{}", history.len()),
            new_session: false,
            replayed: 0,
            usage: None,
        })
    }
}

export!(Echo);
