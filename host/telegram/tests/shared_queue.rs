//! Webhook mode over a shared [`UpdateQueue`] (what the host backs with PostgreSQL), here one in
//! memory that records every call, against the fake Bot API: 200 only once the update is in the
//! queue, 500 while the queue fails, leases renewed while a turn runs, the ack only after the
//! answer went out, and updates another replica enqueued taken by polling.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swapbot_fake_telegram::FakeTelegram;
use swapbot_telegram::inbox::Stored;
use swapbot_telegram::{
    BotOptions, Sender, SetWebhookOptions, TurnHandler, TurnResult, UpdateQueue, WebhookConfig, WebhookSecret,
    run_webhook_with_queue, set_webhook,
};
use teloxide::Bot;
use teloxide::types::Update;
use tokio::sync::mpsc::UnboundedSender;

const TOKEN: &str = "5550001234:AAHfakeTokenSecretPart_abcdefgh";
const SECRET: &str = "shared-replica-secret_42";
const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_millis(300);

#[derive(Default)]
struct State {
    accepted: HashSet<u32>,
    /// Every update accepted, in order.
    delivered: Vec<Update>,
    ready: VecDeque<Update>,
    taken: HashSet<u32>,
    /// Every renewal call, with the ids it named.
    extends: Vec<Vec<u32>>,
    /// Acked ids, with the number of bot messages in the update's chat at that moment.
    acks: Vec<(u32, usize)>,
    released: usize,
}

struct MemoryQueue {
    state: Mutex<State>,
    failing: std::sync::atomic::AtomicBool,
    fake: Arc<FakeTelegram>,
}

impl MemoryQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

#[async_trait::async_trait]
impl UpdateQueue for MemoryQueue {
    async fn enqueue(&self, update: &Update) -> anyhow::Result<Stored> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("the database does not answer");
        }
        let mut s = self.state();
        if !s.accepted.insert(update.id.0) {
            return Ok(Stored::Duplicate);
        }
        s.ready.push_back(update.clone());
        s.delivered.push(update.clone());
        Ok(Stored::New)
    }

    async fn take(&self, limit: usize) -> anyhow::Result<Vec<Update>> {
        let mut s = self.state();
        let n = limit.min(s.ready.len());
        let taken: Vec<Update> = s.ready.drain(..n).collect();
        for u in &taken {
            s.taken.insert(u.id.0);
        }
        Ok(taken)
    }

    async fn extend(&self, ids: &[u32]) -> anyhow::Result<Vec<u32>> {
        self.state().extends.push(ids.to_vec());
        Ok(vec![])
    }

    async fn ack(&self, id: u32) -> anyhow::Result<()> {
        // Every update of this test is from USER's private chat.
        let answered = self.fake.messages_in(USER).iter().filter(|m| m.from_bot).count();
        self.state().acks.push((id, answered));
        Ok(())
    }

    async fn release(&self) -> anyhow::Result<()> {
        self.state().released += 1;
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        Some(LEASE)
    }

    fn poll_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

const USER: i64 = 5_000_000_001;

/// Answers after `delay`, recording when each turn ran.
struct Slow {
    delay: Duration,
    turns: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TurnHandler for Slow {
    async fn turn(&self, _who: Sender, text: String, _deltas: UnboundedSender<String>) -> TurnResult {
        self.turns.lock().unwrap().push(text.clone());
        tokio::time::sleep(self.delay).await;
        TurnResult::Answer(format!("answer to {text}"))
    }
    async fn reset(&self, _who: Sender) -> anyhow::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_queue_is_written_before_the_200_renewed_while_the_turn_runs_and_acked_after_the_answer() {
    let fake = Arc::new(FakeTelegram::start().await);
    let queue = Arc::new(MemoryQueue { state: Mutex::default(), failing: true.into(), fake: fake.clone() });
    let handler = Arc::new(Slow { delay: LEASE * 4, turns: Mutex::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = WebhookConfig::new(addr, WebhookSecret::new(SECRET).unwrap());
    let bot = Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = BotOptions { stop_grace: Duration::from_millis(200), ..BotOptions::default() };
    let server = tokio::spawn(run_webhook_with_queue(listener, bot.clone(), handler.clone(), options, config, queue.clone(), async move {
        let _ = stopped.await;
    }));
    let hook = SetWebhookOptions { max_connections: Some(2), ..Default::default() };
    set_webhook(&bot, &format!("http://{addr}/telegram"), &WebhookSecret::new(SECRET).unwrap(), &hook).await.unwrap();

    // The queue fails: Telegram gets a 500 and delivers again; nothing runs meanwhile.
    // The fake numbers updates from 1.
    fake.push_text(USER, USER, "first", true);
    let first = 1u32;
    assert!(fake.wait_for(WAIT, |f| f.deliveries().iter().filter(|d| d.status == Some(500)).count() >= 2).await);
    assert!(handler.turns.lock().unwrap().is_empty(), "a turn ran for an update that was not durable");
    assert!(fake.pending_updates() == 1, "Telegram still holds it");
    queue.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(fake.wait_for(WAIT, |f| f.messages_in(USER).iter().any(|m| m.from_bot)).await, "never answered");
    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await);

    // Renewed while it ran (the turn took four leases), and acked once, after its answer was sent.
    let deadline = Instant::now() + WAIT;
    while queue.state().acks.is_empty() {
        assert!(Instant::now() < deadline, "never acked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    {
        let s = queue.state();
        let renewals = s.extends.iter().filter(|ids| ids.contains(&first)).count();
        assert!(renewals >= 2, "the lease of a running turn was renewed {renewals} times: {:?}", s.extends);
        assert_eq!(s.acks, vec![(first, 1)], "acked before the answer went out, or more than once");
    }

    // What another replica enqueued (not through this endpoint, no local wake-up) is taken by polling.
    // A copy of the first update as another replica would have accepted it: another id, another text.
    let mut body = serde_json::to_value(&queue.state().delivered[0]).unwrap();
    body["update_id"] = 777.into();
    body["message"]["message_id"] = 77.into();
    body["message"]["text"] = "from another replica".into();
    // From text: teloxide's `Update` does not deserialize from a `serde_json::Value` (the message
    // comes out as `UpdateKind::Error`).
    let foreign: Update = serde_json::from_str(&body.to_string()).unwrap();
    assert!(swapbot_telegram::inbox::Inbox::keeps(&foreign), "{body} -> {foreign:?}");
    assert_eq!(queue.enqueue(&foreign).await.unwrap(), Stored::New);
    let answered = fake.wait_for(WAIT, |f| f.messages_in(USER).iter().filter(|m| m.from_bot).count() == 2).await;
    assert!(answered, "{:?} turns {:?}", fake.messages_in(USER), handler.turns.lock().unwrap());
    assert!(fake.messages_in(USER).iter().any(|m| m.text == "answer to from another replica"));

    // A redelivery of an answered update is acknowledged and not run again.
    fake.redeliver(i64::from(first));
    assert!(fake.wait_for(WAIT, |f| f.pending_updates() == 0).await);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("did not stop").unwrap().unwrap();
    assert_eq!(*handler.turns.lock().unwrap(), ["first", "from another replica"]);
    let s = queue.state();
    assert_eq!(s.acks.iter().map(|a| a.0).collect::<Vec<_>>(), [first, 777]);
    assert_eq!(s.released, 1, "the stop gives up what it held");
}
