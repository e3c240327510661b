//! A misbehaving backend for the runtime's limit tests. What it does depends on the turn text:
//! "loop" spins forever, "alloc" grows memory without end, "panic" panics, "sleepy" asks the
//! host to sleep for long, "started then panic" / "started then sleepy" first report a new
//! session (`conv_hostile_<user>`), anything else answers "survived: <text>".
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "../../../wit", world: "backend" });

use swapbot::backend::types as wt;

struct Hostile;

impl Guest for Hostile {
    fn describe() -> wt::Description {
        wt::Description {
            name: "responses".into(),
            version: "6.6.6-hostile".into(),
            contract: "0.2.0".into(),
            id_map: Some("user_conversations.json".into()),
            session_label: "conversation_id".into(),
            turn_label: "response_id".into(),
        }
    }

    fn chat(turn: wt::Turn) -> Result<wt::Answer, wt::ChatError> {
        let text = match turn.text.strip_prefix("started then ") {
            Some(rest) => {
                swapbot::backend::host::session_started(&format!("conv_hostile_{}", turn.user_id));
                rest
            }
            None => turn.text.as_str(),
        };
        match text {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "sleepy" => {
                swapbot::backend::host::sleep_ms(3_600_000);
                Err(wt::ChatError {
                    kind: wt::ErrorKind::Timeout,
                    message: "woke up".into(),
                    retryable: false,
                    retry_after_ms: None,
                    session_id: None,
                    turn_id: None,
                    usage: None,
                })
            }
            text => Ok(wt::Answer {
                text: format!("survived: {text}"),
                session_id: Some(turn.session_id.unwrap_or_else(|| "conv_hostile".into())),
                turn_id: "resp_hostile".into(),
                new_session: false,
                replayed: 0,
                usage: None,
            }),
        }
    }
}

export!(Hostile);
