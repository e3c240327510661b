//! Webhook mode against the fake Bot API on 127.0.0.1, which delivers updates the way Telegram does
//! (POST with the secret header, retried with backoff until a 2xx). Waits are "it happens at all" bounds.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use swapbot_fake_telegram::FakeTelegram;
use swapbot_telegram::{
    BotOptions, Sender, SetWebhookOptions, TurnHandler, TurnResult, WebhookConfig, WebhookSecret, delete_webhook,
    run_webhook_on, set_webhook, webhook_info,
};
use teloxide::{Bot, prelude::Requester, requests::Request, types::AllowedUpdate};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

const TOKEN: &str = "5550001234:AAHfakeTokenSecretPart_abcdefgh";
const SECRET: &str = "shared-replica-secret_42";
const WAIT: Duration = Duration::from_secs(30);
const USER: i64 = 5_000_000_001;

#[derive(Default)]
struct Recorder {
    turns: Mutex<Vec<String>>,
    /// Turns never end: a process that took updates and died before answering.
    stall: bool,
    started: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

#[async_trait::async_trait]
impl TurnHandler for Recorder {
    async fn turn(&self, _who: Sender, text: String, _deltas: UnboundedSender<String>) -> TurnResult {
        self.turns.lock().unwrap().push(text.clone());
        if self.stall {
            if let Some(started) = self.started.lock().unwrap().as_ref() {
                let _ = started.send(());
            }
            std::future::pending::<()>().await;
        }
        TurnResult::Answer(format!("answer to {text}"))
    }
    async fn reset(&self, _who: Sender) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Recorder {
    fn turns(&self) -> Vec<String> {
        self.turns.lock().unwrap().clone()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("swapbot-webhook-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn bot(fake: &FakeTelegram) -> Bot {
    Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap())
}

fn options(inbox: &std::path::Path) -> BotOptions {
    BotOptions { inbox_dir: Some(inbox.to_path_buf()), ..BotOptions::default() }
}

fn secret() -> WebhookSecret {
    WebhookSecret::new(SECRET).unwrap()
}

/// A running webhook process.
struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(fake: &FakeTelegram, handler: Arc<Recorder>, inbox: &std::path::Path, secret: &str) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, fake, handler, inbox, secret)
    }

    fn start_on(
        listener: tokio::net::TcpListener,
        fake: &FakeTelegram,
        handler: Arc<Recorder>,
        inbox: &std::path::Path,
        secret: &str,
    ) -> Server {
        let addr = listener.local_addr().unwrap();
        let config = WebhookConfig::new(addr, WebhookSecret::new(secret).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_webhook_on(listener, bot(fake), handler, options(inbox), config, async move {
            let _ = stopped.await;
        }));
        Server { url: format!("http://{addr}/telegram"), stop: Some(stop), task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        done.expect("the webhook process did not stop").unwrap().unwrap();
    }
}

fn answers(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.messages_in(chat).into_iter().map(|m| m.text).collect()
}

/// The process never asks for updates or drops the webhook: other replicas rely on it.
fn assert_no_polling_calls(fake: &FakeTelegram) {
    assert!(fake.calls_of("getUpdates").is_empty());
    assert!(fake.calls_of("deleteWebhook").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_info_delete_round_trip_and_getupdates_conflicts() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let before = webhook_info(&bot).await.unwrap();
    assert_eq!(before.url, None);

    let options = SetWebhookOptions {
        max_connections: Some(3),
        drop_pending_updates: false,
        allowed_updates: Some(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery]),
    };
    set_webhook(&bot, "https://bot.example.com/telegram", &secret(), &options).await.unwrap();
    let info = webhook_info(&bot).await.unwrap();
    assert_eq!(info.url.as_deref(), Some("https://bot.example.com/telegram"));
    assert_eq!(info.max_connections, Some(3));
    assert_eq!(info.allowed_updates, Some(vec!["message".to_string(), "callback_query".to_string()]));
    let printed = info.to_string();
    assert!(printed.contains("pending_update_count: 0") && printed.contains("bot.example.com"), "{printed}");
    assert!(!printed.contains(SECRET));
    let set = fake.calls_of("setWebhook");
    assert_eq!(set.last().unwrap().params["secret_token"], SECRET, "the shared secret is registered");

    // Like Telegram: polling is refused while a webhook is set.
    let polled = bot.get_updates().send().await;
    assert!(polled.is_err());
    assert!(fake.calls_of("getUpdates")[0].error.as_deref().unwrap().starts_with("Conflict"));

    fake.push_text(USER, USER, "waiting", true);
    assert_eq!(webhook_info(&bot).await.unwrap().pending_update_count, 1);

    delete_webhook(&bot, false).await.unwrap();
    assert_eq!(webhook_info(&bot).await.unwrap().url, None);
    let polled = bot.get_updates().send().await.unwrap();
    assert_eq!(polled.len(), 1, "the update waited for whoever fetches it next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_the_handler_once_and_duplicates_are_dropped() {
    let fake = FakeTelegram::start().await;
    let inbox = temp_dir("e2e");
    let handler = Arc::new(Recorder::default());
    let server = Server::start(&fake, handler.clone(), &inbox, SECRET).await;
    let options = SetWebhookOptions { max_connections: Some(4), ..Default::default() };
    set_webhook(&bot(&fake), &server.url, &secret(), &options).await.unwrap();

    let other = USER + 1;
    fake.push_text(USER, USER, "first", true);
    fake.push_text(other, other, "second", true);
    assert!(fake.wait_for(WAIT, |f| f.messages_in(USER).len() == 1 && f.messages_in(other).len() == 1).await);
    assert_eq!(answers(&fake, USER), ["answer to first"]);
    assert_eq!(answers(&fake, other), ["answer to second"]);
    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await);

    // Telegram delivers an update again when it missed the 200: twice at once, and once after the answer.
    // The fake numbers updates from 1, in the order they were pushed.
    fake.redeliver(1);
    fake.redeliver(1);
    fake.redeliver(2);
    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await, "duplicates are acknowledged");
    assert_eq!(fake.deliveries().iter().filter(|d| d.ok()).count(), 5);
    // A third update after the duplicates: once it is answered, the duplicates have been dispatched if they were.
    fake.push_text(USER, USER, "third", true);
    assert!(fake.wait_for(WAIT, |f| f.messages_in(USER).len() >= 2).await);
    assert_eq!(answers(&fake, USER), ["answer to first", "answer to third"]);
    assert_eq!(answers(&fake, other), ["answer to second"]);
    let mut turns = handler.turns();
    turns.sort();
    assert_eq!(turns, ["first", "second", "third"]);

    // Straight to the endpoint: no or a wrong secret is refused and not taken; garbage is acknowledged.
    let client = reqwest::Client::new();
    let update = json!({"update_id": 900, "message": {"message_id": 1, "date": 1700000000, "chat": {"id": USER, "type": "private", "first_name": "U"}, "from": {"id": USER, "is_bot": false, "first_name": "U"}, "text": "forged"}});
    let r = client.post(&server.url).json(&update).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.post(&server.url).header("X-Telegram-Bot-Api-Secret-Token", "shared-replica-secret_43").json(&update).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.post(&server.url).header("X-Telegram-Bot-Api-Secret-Token", SECRET).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 200, "Telegram would redeliver garbage forever");
    let huge = "x".repeat(2 << 20);
    let r = client.post(&server.url).header("X-Telegram-Bot-Api-Secret-Token", SECRET).body(huge).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(!inbox.join("900.json").exists() && !inbox.join("done").join("900").exists());

    server.stop().await;
    assert_no_polling_calls(&fake);
    assert_eq!(handler.turns().len(), 3, "the forged update was never handled");
    let _ = std::fs::remove_dir_all(&inbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_until_the_registration_is_fixed() {
    let fake = FakeTelegram::start().await;
    let inbox = temp_dir("secret");
    let handler = Arc::new(Recorder::default());
    let server = Server::start(&fake, handler.clone(), &inbox, SECRET).await;
    let wrong = WebhookSecret::new("a-stale-secret").unwrap();
    set_webhook(&bot(&fake), &server.url, &wrong, &SetWebhookOptions::default()).await.unwrap();

    fake.push_text(USER, USER, "hello", true);
    assert!(fake.wait_for(WAIT, |f| f.deliveries().iter().filter(|d| d.status == Some(401)).count() >= 2).await);
    assert!(handler.turns().is_empty());
    assert_eq!(fake.pending_updates(), 1, "Telegram keeps it");
    let info = webhook_info(&bot(&fake)).await.unwrap();
    assert!(info.last_error_message.as_deref().unwrap_or_default().contains("401"), "{info:?}");

    set_webhook(&bot(&fake), &server.url, &secret(), &SetWebhookOptions::default()).await.unwrap();
    assert!(fake.wait_for(WAIT, |f| f.messages_in(USER).len() == 1 && f.pending_updates() == 0).await);
    assert_eq!(answers(&fake, USER), ["answer to hello"]);
    assert_eq!(handler.turns(), ["hello"]);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&inbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_sent_while_the_server_is_down_is_answered_once_it_is_up() {
    let fake = FakeTelegram::start().await;
    let inbox = temp_dir("down");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/telegram");
    set_webhook(&bot(&fake), &url, &secret(), &SetWebhookOptions::default()).await.unwrap();

    fake.push_text(USER, USER, "are you there", true);
    assert!(fake.wait_for(WAIT, |f| f.deliveries().iter().filter(|d| d.status.is_none()).count() >= 2).await);
    assert_eq!(fake.pending_updates(), 1);

    let handler = Arc::new(Recorder::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let server = Server::start_on(listener, &fake, handler.clone(), &inbox, SECRET);
    assert!(fake.wait_for(WAIT, |f| f.messages_in(USER).len() == 1 && f.pending_updates() == 0).await);
    assert_eq!(answers(&fake, USER), ["answer to are you there"]);
    assert_eq!(handler.turns(), ["are you there"]);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&inbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_acknowledged_before_a_crash_is_answered_after_the_restart() {
    let fake = FakeTelegram::start().await;
    let inbox = temp_dir("crash");

    // The first process runs on a runtime of its own, so that dropping it kills everything it runs.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let stalled = Arc::new(Recorder { stall: true, started: Mutex::new(Some(started_tx)), ..Default::default() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    {
        let _in = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let config = WebhookConfig::new(addr, secret());
        runtime.spawn(run_webhook_on(listener, bot(&fake), stalled.clone(), options(&inbox), config, std::future::pending()));
    }
    set_webhook(&bot(&fake), &format!("http://{addr}/telegram"), &secret(), &SetWebhookOptions::default()).await.unwrap();
    fake.push_text(USER, USER, "do not lose me", true);
    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await, "acknowledged with a 200");
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(WAIT)).await.unwrap().expect("the turn started");
    runtime.shutdown_background();
    assert!(fake.messages_in(USER).is_empty(), "never answered before the crash");

    let handler = Arc::new(Recorder::default());
    let server = Server::start(&fake, handler.clone(), &inbox, SECRET).await;
    set_webhook(&bot(&fake), &server.url, &secret(), &SetWebhookOptions::default()).await.unwrap();
    assert!(fake.wait_for(WAIT, |f| !f.messages_in(USER).is_empty()).await);
    assert_eq!(answers(&fake, USER), ["answer to do not lose me"]);
    assert_eq!(handler.turns(), ["do not lose me"]);
    // Telegram delivering it again now (it missed a 200 once) changes nothing.
    let id = fake.deliveries()[0].update_id;
    fake.redeliver(id);
    fake.push_text(USER, USER, "next", true);
    assert!(fake.wait_for(WAIT, |f| f.messages_in(USER).len() >= 2 && f.pending_updates() == 0).await);
    assert_eq!(answers(&fake, USER), ["answer to do not lose me", "answer to next"]);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&inbox);
}
