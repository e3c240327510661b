//! A misbehaving backend for the runtime's limit tests. What it does depends on the turn text:
//! "loop" spins forever, "pulse" spends 4 × 150 ms of guest CPU with a call of the contract
//! after each piece, "spin" 1.5 s in one piece, "alloc" grows memory without end, "panic" panics, "sleepy" asks the
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
            // Guest CPU in 150 ms pieces (timed on the WASI clock), each ended by a call of
            // the contract (`now-ms`): 600 ms in all, within a 300 ms slice.
            "pulse" => {
                for _ in 0..4 {
                    spin(std::time::Duration::from_millis(150));
                    swapbot::backend::host::now_ms();
                }
                Ok(answer("pulsed", turn.session_id))
            }
            // More than the slice in one piece: reading the WASI clock does not end a slice.
            "spin" => {
                spin(std::time::Duration::from_millis(1500));
                Ok(answer("spun", turn.session_id))
            }
            // Never busy for long between two calls of the contract, so each call restarts its
            // slice: only the turn's timeout ends it.
            "chatter" => loop {
                std::hint::black_box(swapbot::backend::host::now_ms());
            },
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
            text => Ok(answer(&format!("survived: {text}"), turn.session_id)),
        }
    }
}

fn answer(text: &str, session: Option<String>) -> wt::Answer {
    wt::Answer {
        text: text.into(),
        session_id: Some(session.unwrap_or_else(|| "conv_hostile".into())),
        turn_id: "resp_hostile".into(),
        new_session: false,
        replayed: 0,
        usage: None,
    }
}

fn spin(for_: std::time::Duration) {
    let started = std::time::Instant::now();
    let mut x: u64 = 0;
    while started.elapsed() < for_ {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

export!(Hostile);
