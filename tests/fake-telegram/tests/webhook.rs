//! The fake delivers to a webhook the way Telegram does: with the secret, in order, retrying an update
//! until it gets a 2xx, never more connections than max_connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, http::{HeaderMap, StatusCode}, routing::post};
use serde_json::{Value, json};
use swapbot_fake_telegram::FakeTelegram;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
struct Receiver {
    /// update_ids taken (answered 200), in order.
    taken: Mutex<Vec<i64>>,
    /// Requests to refuse with a 500 before taking any.
    refuse: AtomicUsize,
    active: AtomicUsize,
    most_active: AtomicUsize,
    secrets: Mutex<Vec<Option<String>>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let now = r.active.fetch_add(1, Ordering::SeqCst) + 1;
    r.most_active.fetch_max(now, Ordering::SeqCst);
    tokio::task::yield_now().await;
    r.secrets.lock().unwrap().push(headers.get("x-telegram-bot-api-secret-token").map(|v| v.to_str().unwrap().to_string()));
    let status = if r.refuse.load(Ordering::SeqCst) > 0 {
        r.refuse.fetch_sub(1, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        let v: Value = serde_json::from_str(&body).unwrap();
        r.taken.lock().unwrap().push(v["update_id"].as_i64().unwrap());
        StatusCode::OK
    };
    r.active.fetch_sub(1, Ordering::SeqCst);
    status
}

async fn serve(r: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new().route("/hook", post(receive)).with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn call(fake: &FakeTelegram, method: &str, params: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{}/bot1:SECRET/{method}", fake.api_url())).json(&params).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order_retrying_until_a_2xx() {
    let fake = FakeTelegram::start().await;
    let receiver = Arc::new(Receiver::default());
    receiver.refuse.store(3, Ordering::SeqCst);
    let url = serve(receiver.clone()).await;
    for i in 0..5 {
        fake.push_text(5, 5, &format!("m{i}"), true);
    }
    let (status, _) = call(&fake, "setWebhook", json!({"url": url, "secret_token": "s3", "max_connections": 1})).await;
    assert_eq!(status, 200);
    let (status, body) = call(&fake, "getUpdates", json!({})).await;
    assert_eq!((status, body["error_code"].as_i64()), (409, Some(409)));

    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await);
    assert_eq!(*receiver.taken.lock().unwrap(), [1, 2, 3, 4, 5], "each once, in order, after the refusals");
    assert_eq!(receiver.most_active.load(Ordering::SeqCst), 1);
    assert!(receiver.secrets.lock().unwrap().iter().all(|s| s.as_deref() == Some("s3")));
    assert_eq!(fake.deliveries().iter().filter(|d| !d.ok()).count(), 3);
    let (_, info) = call(&fake, "getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["url"], url.as_str());
    assert_eq!(info["result"]["pending_update_count"], 0);
    assert!(info["result"]["last_error_message"].as_str().unwrap().contains("500"));

    let (status, _) = call(&fake, "deleteWebhook", json!({})).await;
    assert_eq!(status, 200);
    fake.push_text(5, 5, "polled", true);
    let (status, body) = call(&fake, "getUpdates", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"].as_array().unwrap().len(), 1, "after deleteWebhook the queue is polled again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_up_to_max_connections_and_drop_pending() {
    let fake = FakeTelegram::start().await;
    for i in 0..3 {
        fake.push_text(5, 5, &format!("old{i}"), true);
    }
    let receiver = Arc::new(Receiver::default());
    let url = serve(receiver.clone()).await;
    let (status, _) = call(&fake, "setWebhook", json!({"url": url, "max_connections": 3, "drop_pending_updates": true})).await;
    assert_eq!(status, 200);
    for i in 0..30 {
        fake.push_text(5, 5, &format!("m{i}"), true);
    }
    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await);
    let mut taken = receiver.taken.lock().unwrap().clone();
    taken.sort();
    assert_eq!(taken, (4..=33).collect::<Vec<i64>>(), "the dropped ones never, the others once");
    assert!(receiver.most_active.load(Ordering::SeqCst) <= 3);
    assert!(receiver.secrets.lock().unwrap().iter().all(Option::is_none), "no secret registered, none sent");
}
