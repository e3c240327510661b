//! Nothing the Telegram layer logs (its own lines and teloxide's, bridged from `log`) contains the bot token
//! or its secret part, even at debug level, through network errors, 502 pages, 429s and rejected formatting.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swapbot_fake_telegram::{FakeFailure, FakeTelegram};
use swapbot_telegram::{BotOptions, Sender, TurnHandler, TurnResult, run_polling_until};
use teloxide::Bot;
use tokio::sync::mpsc::UnboundedSender;

const TOKEN: &str = "5550009999:AAHsecretPartThatMustNeverBeLogged";
const SECRET: &str = "AAHsecretPartThatMustNeverBeLogged";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Streamer;
#[async_trait::async_trait]
impl TurnHandler for Streamer {
    async fn turn(&self, _who: Sender, _text: String, deltas: UnboundedSender<String>) -> TurnResult {
        for p in ["a < b", " and", " more"] {
            let _ = deltas.send(p.into());
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        TurnResult::Answer("a < b and more".into())
    }
    async fn reset(&self, _who: Sender) -> anyhow::Result<()> {
        anyhow::bail!("store unavailable")
    }
}

fn options() -> BotOptions {
    BotOptions {
        allowed_user_ids: None,
        draft_interval: Duration::from_millis(50),
        edit_interval: Duration::from_secs(1),
        typing_interval: Duration::from_secs(4),
        ..BotOptions::default()
    }
}

#[tokio::test]
async fn logs_never_contain_the_token() {
    let buf = Buf::default();
    let w = buf.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug,hyper=info,hyper_util=info,reqwest=debug,h2=info,rustls=info")
        .with_writer(move || w.clone())
        .with_ansi(false)
        .try_init()
        .unwrap();

    // 1. A Bot API that is not there at all: connection refused on getMe.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let bot = Bot::new(TOKEN).set_api_url(format!("http://{closed}").parse().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(run_polling_until(bot, Arc::new(Streamer), options(), async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), run).await.unwrap().unwrap().unwrap();

    // 2. A flaky one: 502 pages, 429s, rejected formatting, a failing /new.
    let fake = FakeTelegram::start().await;
    fake.fail_next("getUpdates", 1, FakeFailure::BadGateway);
    fake.fail_next("sendMessageDraft", 1, FakeFailure::BadGateway);
    fake.fail_next("sendMessage", 1, FakeFailure::TooManyRequests { retry_after: 1 });
    fake.fail_next("sendMessage", 1, FakeFailure::CantParseEntities);
    let bot = Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(run_polling_until(bot, Arc::new(Streamer), options(), async move {
        let _ = stopped.await;
    }));
    fake.push_text(42, 42, "hi", true);
    fake.push_text(42, 42, "/new", true);
    let msgs = fake.wait_for_messages(42, 2, Duration::from_secs(60)).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0].text, "a < b and more");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), run).await.unwrap().unwrap().unwrap();

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!("{logs}");
    }
    assert!(logs.contains("getMe failed"), "expected the getMe failure to be logged:\n{logs}");
    assert!(logs.contains("rate limit"), "expected the 429 to be logged:\n{logs}");
    assert!(!logs.contains(SECRET), "the token leaked into the logs:\n{logs}");
    assert!(!logs.contains("5550009999:"), "the token leaked into the logs:\n{logs}");
}
