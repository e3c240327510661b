//! `run_polling` stops within 3 s of a real SIGTERM or SIGINT, even while the Bot API answers 502 (teloxide
//! holds a 5xx answer for 10 s) and a turn is running. The test re-runs this binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swapbot_fake_telegram::{FakeFailure, FakeTelegram};
use swapbot_telegram::{BotOptions, Sender, TurnHandler, TurnResult, run_polling};
use teloxide::Bot;

const CHILD_ENV: &str = "SWAPBOT_TELEGRAM_SIGNAL_CHILD";

struct Slow;
#[async_trait::async_trait]
impl TurnHandler for Slow {
    async fn turn(&self, _: Sender, _: String, _: tokio::sync::mpsc::UnboundedSender<String>) -> TurnResult {
        tokio::time::sleep(Duration::from_secs(60)).await;
        TurnResult::Answer("late".into())
    }
    async fn reset(&self, _: Sender) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Runs only in the child: serve until a signal arrives.
#[tokio::test]
async fn child_mode() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let fake = FakeTelegram::start().await;
    let bot = Bot::new("5550007777:AAHsignalTestSecret").set_api_url(fake.api_url().parse().unwrap());
    let fake = Arc::new(fake);
    let f = fake.clone();
    tokio::spawn(async move {
        // A turn that is still running when the signal comes…
        f.push_text(9, 9, "take your time", true);
        f.wait_for(Duration::from_secs(30), |f| !f.calls_of("sendChatAction").is_empty()).await;
        // …and a Bot API answering 502 to the long poll.
        f.fail_next("getUpdates", 10, FakeFailure::BadGateway);
        f.wait_for(Duration::from_secs(30), |f| f.calls_of("getUpdates").iter().any(|c| !c.ok())).await;
        println!("READY");
    });
    run_polling(bot, Arc::new(Slow), BotOptions::default()).await.unwrap();
    println!("STOPPED");
}

fn stops_within_3s(signal: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["child_mode", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let left = ready_by.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("READY") => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                panic!("child never became ready");
            }
        }
    }
    let sent = Instant::now();
    let st = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child exited with {status}");
            break;
        }
        if sent.elapsed() > Duration::from_secs(3) {
            let _ = child.kill();
            panic!("SIG{signal} did not stop run_polling within 3 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines: Vec<String> = rx.try_iter().collect();
    assert!(lines.iter().any(|l| l.contains("STOPPED")), "{lines:?}");
}

#[test]
fn sigterm_stops_within_3s() {
    stops_within_3s("TERM");
}

#[test]
fn sigint_stops_within_3s() {
    stops_within_3s("INT");
}
