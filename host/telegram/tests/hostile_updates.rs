//! The poller against a Bot API whose `getUpdates` answer teloxide cannot decode (a lone UTF-16
//! surrogate escape in one message): it used to fail every poll at the same offset, for everyone.
//! A tiny Bot API on 127.0.0.1 serves the answer byte for byte as a server could send it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use serde_json::{Value, json};
use swapbot_telegram::{BotOptions, Sender, TurnHandler, TurnResult, run_polling_until};
use teloxide::Bot;

const TOKEN: &str = "5550001234:AAHfakeTokenSecretPart_abcdefgh";
const USER: i64 = 5_000_000_001;

#[derive(Default)]
struct Api {
    polls: Mutex<Vec<i64>>,
    sent: Mutex<Vec<String>>,
}

fn message(id: i64, text: &str) -> String {
    format!(
        r#"{{"update_id":{id},"message":{{"message_id":{id},"date":1700000000,"chat":{{"id":{USER},"type":"private","first_name":"U"}},"from":{{"id":{USER},"is_bot":false,"first_name":"U"}},"text":"{text}"}}}}"#
    )
}

async fn method(State(api): State<Arc<Api>>, Path((_bot, method)): Path<(String, String)>, body: String) -> impl axum::response::IntoResponse {
    let params: Value = serde_json::from_str(&body).unwrap_or(json!({}));
    let ok = |result: Value| json!({"ok": true, "result": result}).to_string();
    // teloxide names methods in PascalCase (`GetUpdates`); the Bot API ignores the case.
    let body = match method.to_ascii_lowercase().as_str() {
        "getme" => ok(json!({
            "id": 1, "is_bot": true, "first_name": "SwapBot", "username": "swapbot_test",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false,
        })),
        "getupdates" => {
            let offset = params["offset"].as_i64().unwrap_or(0);
            api.polls.lock().unwrap().push(offset);
            if offset <= 1 {
                // As a server could send it: `\ud800` alone is not valid JSON text for serde.
                format!(r#"{{"ok":true,"result":[{},{}]}}"#, message(1, r"broken \ud800 text"), message(2, "fine"))
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ok(json!([]))
            }
        }
        "sendmessage" => {
            api.sent.lock().unwrap().push(params["text"].as_str().unwrap_or_default().to_owned());
            ok(json!({
                "message_id": 100, "date": 1700000000,
                "chat": {"id": USER, "type": "private", "first_name": "U"},
                "from": {"id": 1, "is_bot": true, "first_name": "SwapBot"},
                "text": params["text"],
            }))
        }
        _ => ok(json!(true)),
    };
    ([(CONTENT_TYPE, "application/json")], body)
}

struct Echo;

#[async_trait::async_trait]
impl TurnHandler for Echo {
    async fn turn(&self, _who: Sender, text: String, _deltas: tokio::sync::mpsc::UnboundedSender<String>) -> TurnResult {
        TurnResult::Answer(format!("echo: {text}"))
    }
    async fn reset(&self, _who: Sender) -> anyhow::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn one_undecodable_update_does_not_wedge_the_poller() {
    let api = Arc::new(Api::default());
    let app = axum::Router::new().route("/{bot}/{method}", axum::routing::post(method)).with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let bot = Bot::new(TOKEN).set_api_url(format!("http://{addr}").parse().unwrap());
    let options = BotOptions { draft_interval: Duration::from_millis(20), ..BotOptions::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let polling = tokio::spawn(run_polling_until(bot, Arc::new(Echo), options, async move {
        let _ = stopped.await;
    }));

    // Both messages get their answer; the poller moved past them. The deadline only turns the
    // old hang into a failure.
    let answered = async {
        loop {
            let sent = api.sent.lock().unwrap().clone();
            if sent.len() >= 2 {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut sent = tokio::time::timeout(Duration::from_secs(30), answered)
        .await
        .unwrap_or_else(|_| panic!("the poller is wedged: polls {:?}, sent {:?}", api.polls.lock().unwrap(), api.sent.lock().unwrap()));
    sent.sort();
    assert_eq!(sent, ["echo: broken \u{FFFD} text", "echo: fine"]);
    let polls = api.polls.lock().unwrap().clone();
    assert!(polls.iter().any(|&o| o == 3), "moved on past update 2: {polls:?}");
    assert_eq!(polls.iter().filter(|&&o| o <= 1).count(), 1, "the bad answer was not asked for again: {polls:?}");
    let _ = stop.send(());
    polling.await.unwrap().unwrap();
}
