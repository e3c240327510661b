//! The store against a real PostgreSQL (see `common` for how a cluster is started). Two
//! `PgStore`s on one database stand for two replicas: they share nothing but the server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::json;
use swapbot_pg::{
    HISTORY_LIMIT, PgStore, PluginBuild, Role, SCHEMA_VERSION, StoreError, TokenCounts, UsageEntry,
    UsageTotals, key,
};

/// Long enough for a loaded 2-core CI machine; reached only when something is broken.
const DEADLINE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not happen within {DEADLINE:?}"))
}

async fn count(admin: &tokio_postgres::Client, sql: &str) -> i64 {
    admin.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_when_replicas_start_together() {
    let pg = TestCluster::start();
    let url = pg.url();
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, 2).await })
        })
        .collect();
    for s in starts {
        s.await.unwrap().expect("every replica starts");
    }
    let admin = pg.admin().await;
    assert_eq!(
        count(&admin, "SELECT count(*) FROM schema_migrations").await,
        SCHEMA_VERSION as i64
    );

    let store = PgStore::connect(&url, 1).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let again = store.migrate().await.unwrap();
    assert!(
        again.applied.is_empty(),
        "re-applying is a no-op: {again:?}"
    );
    assert_eq!(again.version, SCHEMA_VERSION);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM schema_migrations").await,
        SCHEMA_VERSION as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused_in_one_line() {
    let pg = TestCluster::start();
    PgStore::connect(&pg.url(), 1).await.unwrap();
    let admin = pg.admin().await;
    admin
        .batch_execute("INSERT INTO schema_migrations (version) VALUES (999)")
        .await
        .unwrap();
    let err = PgStore::connect(&pg.url(), 1).await.err().expect("refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { database: 999, binary } if binary == SCHEMA_VERSION),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        !message.contains('\n') && message.contains("999"),
        "{message}"
    );
    // Refusing changed nothing.
    assert_eq!(
        count(&admin, "SELECT max(version)::bigint FROM schema_migrations").await,
        999
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_one_line_without_the_password() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://swapbot:hunter2secret@127.0.0.1:{port}/bot");
    let err = PgStore::connect(&url, 1).await.err().expect("unreachable");
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(
        !message.contains("hunter2secret"),
        "password leaked: {message}"
    );
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}")),
        "says which database: {message}"
    );

    let err = PgStore::connect("postgres://swapbot:hunter2secret@127.0.0.1:notaport/bot", 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
    assert_eq!(
        swapbot_pg::redact_url(&url),
        format!("postgres://swapbot@127.0.0.1:{port}/bot")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_maps_history_and_usage_round_trip() {
    let pg = TestCluster::start();
    let store = PgStore::connect(&pg.url(), 2).await.unwrap();
    let (alice, group) = (key::private(123456789012), key::group(-1001234, Some(7)));

    // Id maps: per map and per key; a group session never sees a private one.
    assert_eq!(
        store
            .session_id("user_conversations.json", &alice)
            .await
            .unwrap(),
        None
    );
    store
        .set_session_id("user_conversations.json", &alice, "conv_a")
        .await
        .unwrap();
    store
        .set_session_id("user_threads.json", &alice, "thread_a")
        .await
        .unwrap();
    store
        .set_session_id("user_conversations.json", &group, "conv_g")
        .await
        .unwrap();
    store
        .set_session_id("user_conversations.json", &alice, "conv_a2")
        .await
        .unwrap();
    assert_eq!(
        store
            .session_id("user_conversations.json", &alice)
            .await
            .unwrap()
            .as_deref(),
        Some("conv_a2")
    );
    assert_eq!(
        store
            .session_id("user_threads.json", &alice)
            .await
            .unwrap()
            .as_deref(),
        Some("thread_a")
    );
    assert_eq!(
        store.all_sessions("user_conversations.json").await.unwrap(),
        vec![
            (group.clone(), "conv_g".to_string()),
            (alice.clone(), "conv_a2".to_string())
        ]
    );
    assert_eq!(store.remove_session(&alice).await.unwrap(), 2, "every map");
    assert_eq!(
        store.session_id("user_threads.json", &alice).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .session_id("user_conversations.json", &group)
            .await
            .unwrap()
            .as_deref(),
        Some("conv_g")
    );

    // History: both roles, oldest first, the last 100 messages.
    for i in 0..60 {
        store
            .append_exchange(&alice, &format!("q{i}"), &format!("a{i}"))
            .await
            .unwrap();
    }
    store
        .append_exchange(&group, "Привет", "Здравствуйте")
        .await
        .unwrap();
    let recent = store.recent(&alice).await.unwrap();
    assert_eq!(recent.len(), HISTORY_LIMIT as usize);
    assert_eq!(recent[0], (Role::User, "q10".to_string()));
    assert_eq!(recent[1], (Role::Assistant, "a10".to_string()));
    assert_eq!(
        recent.last().unwrap(),
        &(Role::Assistant, "a59".to_string())
    );
    let admin = pg.admin().await;
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM history WHERE session_key = 'private:123456789012'"
        )
        .await,
        HISTORY_LIMIT,
        "trimmed in the table, not only in what is read"
    );
    assert_eq!(
        store.recent(&group).await.unwrap(),
        vec![
            (Role::User, "Привет".to_string()),
            (Role::Assistant, "Здравствуйте".to_string())
        ]
    );
    assert_eq!(store.clear_history(&alice).await.unwrap(), 100);
    assert!(store.recent(&alice).await.unwrap().is_empty());
    assert_eq!(store.recent(&group).await.unwrap().len(), 2);

    // Usage: totals per user and overall since a time.
    let entry = |t, user, input, micro_usd| UsageEntry {
        t_unix_ms: t,
        user_id: user,
        backend: "responses".into(),
        model: "gpt-4.1-mini".into(),
        tokens: TokenCounts {
            input,
            cached_input: 1,
            output: 10,
            reasoning: 2,
            embedding: 3,
        },
        micro_usd,
    };
    store.record_usage(&entry(1_000, 1, 100, 50)).await.unwrap();
    store.record_usage(&entry(2_000, 1, 200, 70)).await.unwrap();
    store.record_usage(&entry(2_500, 2, 400, 90)).await.unwrap();
    let user1 = store.usage_since(Some(1), 1_500).await.unwrap();
    assert_eq!(
        user1,
        UsageTotals {
            turns: 1,
            tokens: TokenCounts {
                input: 200,
                cached_input: 1,
                output: 10,
                reasoning: 2,
                embedding: 3
            },
            micro_usd: 70
        }
    );
    let all = store.usage_since(None, 0).await.unwrap();
    assert_eq!((all.turns, all.tokens.input, all.micro_usd), (3, 700, 210));
    assert_eq!(
        store.usage_since(Some(3), 0).await.unwrap(),
        UsageTotals::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_session_all_land_and_stay_bounded() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 4).await.unwrap(),
        PgStore::connect(&pg.url(), 4).await.unwrap(),
    );
    let k = key::private(5);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            let k = k.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    store
                        .append_exchange(&k, &format!("q{t}-{i}"), &format!("a{t}-{i}"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let recent = a.recent(&k).await.unwrap();
    assert_eq!(recent.len(), HISTORY_LIMIT as usize);
    // Each exchange stays whole and in order: a question is followed by its own answer.
    for pair in recent.chunks(2) {
        assert_eq!(pair[0].0, Role::User, "{recent:?}");
        assert_eq!(pair[1], (Role::Assistant, pair[0].1.replacen('q', "a", 1)));
    }
    // The appends trimmed as they went; a later one leaves exactly the limit.
    a.append_exchange(&k, "last", "done").await.unwrap();
    let admin = pg.admin().await;
    assert_eq!(
        count(&admin, "SELECT count(*) FROM history").await,
        HISTORY_LIMIT
    );
}

/// A message update of `chat` as Telegram sends it (the inbox reads the chat from the body).
fn message(id: i64, chat: i64) -> serde_json::Value {
    json!({"update_id": id, "message": {"message_id": id, "date": 1, "chat": {"id": chat, "type": "private"}, "text": format!("q{id}")}})
}

fn ids(taken: &[swapbot_pg::PendingUpdate]) -> Vec<i64> {
    taken.iter().map(|u| u.update_id).collect()
}

const LEASE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_accepted_once_across_replicas() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 2).await.unwrap(),
        PgStore::connect(&pg.url(), 2).await.unwrap(),
    );
    assert!(a.enqueue_update(1001, &message(1001, 1)).await.unwrap());
    assert!(!b.enqueue_update(1001, &message(1001, 1)).await.unwrap(), "another replica");
    assert!(!a.enqueue_update(1001, &message(1001, 1)).await.unwrap(), "a second delivery");
    // Racing deliveries of fresh ids: each id is accepted exactly once, and queued once.
    let racers: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                let mut won = 0;
                for id in 2000..2050 {
                    if s.enqueue_update(id, &message(id, id)).await.unwrap() {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let mut total = 0;
    for r in racers {
        total += r.await.unwrap();
    }
    assert_eq!(total, 50);
    let admin = pg.admin().await;
    assert_eq!(count(&admin, "SELECT count(*) FROM inbox").await, 51);
    // Answered, then delivered again while a restart (a new store) runs: still not queued.
    a.ack_update(1001).await.unwrap();
    let c = PgStore::connect(&pg.url(), 1).await.unwrap();
    assert!(!c.enqueue_update(1001, &message(1001, 1)).await.unwrap());
    assert_eq!(count(&admin, "SELECT count(*) FROM inbox WHERE update_id = 1001").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_racing_the_ack_is_not_queued_again() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 4).await.unwrap(),
        PgStore::connect(&pg.url(), 4).await.unwrap(),
    );
    // Every update acked while a second delivery of it arrives: none may come back.
    for id in 1..=200 {
        assert!(a.enqueue_update(id, &message(id, id)).await.unwrap());
    }
    let acks = tokio::spawn(async move {
        for id in 1..=200 {
            a.ack_update(id).await.unwrap();
        }
    });
    let redeliveries = tokio::spawn(async move {
        let mut queued = 0;
        for id in 1..=200 {
            queued += b.enqueue_update(id, &message(id, id)).await.unwrap() as i32;
        }
        queued
    });
    acks.await.unwrap();
    assert_eq!(redeliveries.await.unwrap(), 0);
    assert_eq!(count(&pg.admin().await, "SELECT count(*) FROM inbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_a_dead_replica_took_is_processed_by_another() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 2).await.unwrap(),
        PgStore::connect(&pg.url(), 2).await.unwrap(),
    );
    assert!(a.enqueue_update(10, &message(10, 1)).await.unwrap());
    assert!(!b.enqueue_update(10, &message(10, 1)).await.unwrap(), "delivered twice: kept once");
    assert!(a.enqueue_update(11, &message(11, 2)).await.unwrap());

    let taken = a.take_pending("replica-a", 1, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].update_id, &taken[0].body, taken[0].attempts), (10, &message(10, 1), 1));
    // B sees only what A does not hold.
    let taken_b = b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&taken_b), vec![11]);
    b.ack_update(11).await.unwrap();
    assert!(b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap().is_empty(), "10 is leased to A");

    // A dies with update 10 taken; its lease runs out, for real (a short lease).
    assert!(a.extend_leases(&[10], "replica-a", Duration::from_millis(300)).await.unwrap() == vec![10]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let retaken = b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&retaken), vec![10]);
    assert_eq!(retaken[0].attempts, 2);
    assert!(a.extend_leases(&[10], "replica-a", LEASE).await.unwrap().is_empty(), "A's lease is lost");
    assert_eq!(b.extend_leases(&[10, 99], "replica-b", LEASE).await.unwrap(), vec![10]);
    b.ack_update(10).await.unwrap();
    assert!(b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap().is_empty());
    // Answered updates are not enqueued again when Telegram redelivers them.
    assert!(!b.enqueue_update(10, &message(10, 1)).await.unwrap());
    let admin = pg.admin().await;
    assert_eq!(count(&admin, "SELECT count(*) FROM inbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_has_one_update_in_flight_in_order() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 2).await.unwrap(),
        PgStore::connect(&pg.url(), 2).await.unwrap(),
    );
    // Chat 7 writes three times, chat 8 once, between them.
    for (id, chat) in [(20, 7), (21, 8), (22, 7), (23, 7)] {
        assert!(a.enqueue_update(id, &message(id, chat)).await.unwrap());
    }
    // A batch holds each chat's earliest only.
    let first = a.take_pending("replica-a", 10, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&first), vec![20, 21]);
    // Another replica gets nothing of chat 7 while 20 is in flight.
    assert!(b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap().is_empty());
    a.ack_update(21).await.unwrap();
    assert!(b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap().is_empty());

    // A dies holding 20: once its lease runs out, 20 is taken again before 22.
    a.extend_leases(&[20], "replica-a", Duration::from_millis(200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap()), vec![20]);
    b.ack_update(20).await.unwrap();
    assert_eq!(ids(&a.take_pending("replica-a", 10, LEASE, Duration::ZERO).await.unwrap()), vec![22]);
    a.ack_update(22).await.unwrap();
    assert_eq!(ids(&b.take_pending("replica-b", 10, LEASE, Duration::ZERO).await.unwrap()), vec![23]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_update_waits_for_an_earlier_delivery_still_on_its_way() {
    let pg = TestCluster::start();
    let store = PgStore::connect(&pg.url(), 2).await.unwrap();
    let settle = Duration::from_millis(800);
    // 31 follows 30, which was accepted: taken at once. 30 follows 29, never seen (it was no
    // message, or it is still on its way): 30 waits until it is `settle` old.
    store.enqueue_update(30, &message(30, 1)).await.unwrap();
    store.enqueue_update(31, &message(31, 2)).await.unwrap();
    let waited = Instant::now();
    assert_eq!(ids(&store.take_pending("r", 10, LEASE, settle).await.unwrap()), vec![31]);
    let taken = within("the settle time", async {
        loop {
            let taken = store.take_pending("r", 10, LEASE, settle).await.unwrap();
            if !taken.is_empty() {
                return taken;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(ids(&taken), vec![30]);
    assert!(waited.elapsed() >= settle - Duration::from_millis(100), "{:?}", waited.elapsed());
    // 33 arrives before 32 (two parallel deliveries): it waits for 32...
    store.enqueue_update(33, &message(33, 3)).await.unwrap();
    assert!(store.take_pending("r", 10, LEASE, settle).await.unwrap().is_empty());
    // ... which, once there, goes first (31 was accepted), and 33 (same chat) after it.
    store.enqueue_update(32, &message(32, 3)).await.unwrap();
    assert_eq!(ids(&store.take_pending("r", 10, LEASE, settle).await.unwrap()), vec![32]);
    store.ack_update(32).await.unwrap();
    assert_eq!(ids(&store.take_pending("r", 10, LEASE, settle).await.unwrap()), vec![33]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_releases_what_its_old_run_held() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 2).await.unwrap(),
        PgStore::connect(&pg.url(), 2).await.unwrap(),
    );
    for id in [60, 61] {
        a.enqueue_update(id, &message(id, id)).await.unwrap();
    }
    assert_eq!(ids(&a.take_pending("replica-a", 1, LEASE, Duration::ZERO).await.unwrap()), vec![60]);
    assert_eq!(ids(&b.take_pending("replica-b", 1, LEASE, Duration::ZERO).await.unwrap()), vec![61]);
    // A comes back: only its own lease is given up, B keeps 61.
    assert_eq!(a.release_leases("replica-a").await.unwrap(), 1);
    let again = a.take_pending("replica-a", 10, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!((ids(&again), again[0].attempts), (vec![60], 2));
    assert_eq!(b.extend_leases(&[61], "replica-b", LEASE).await.unwrap(), vec![61]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_of_one_session_never_overlap_across_replicas() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 2).await.unwrap(),
        PgStore::connect(&pg.url(), 2).await.unwrap(),
    );
    let intervals = Arc::new(Mutex::new(Vec::<(Instant, Instant, usize)>::new()));
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            let intervals = intervals.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    let guard = store.lock_session("group:-100:7").await.unwrap();
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let end = Instant::now();
                    intervals.lock().unwrap().push((start, end, t));
                    guard.release().await;
                }
            })
        })
        .collect();
    // Another session is not held up by this one's turns.
    let other = within("lock of another session", a.lock_session("private:1"))
        .await
        .unwrap();
    for t in tasks {
        within("the turns", t).await.unwrap();
    }
    other.release().await;
    let mut all = intervals.lock().unwrap().clone();
    assert_eq!(all.len(), 32);
    all.sort_by_key(|i| i.0);
    for w in all.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "turns overlapped: {:?} (task {}) and {:?} (task {})",
            w[0],
            w[0].2,
            w[1],
            w[1].2
        );
    }
    // Both replicas ran turns.
    assert!(all.iter().any(|i| i.2 % 2 == 0) && all.iter().any(|i| i.2 % 2 == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lock_is_released_when_its_connection_dies() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 1).await.unwrap(),
        PgStore::connect(&pg.url(), 1).await.unwrap(),
    );
    let held = a.lock_session("private:42").await.unwrap();
    assert!(held.is_held());
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.lock_session("private:42").await.map(|g| g.backend_pid()) }
    });
    // The replica holding it "dies": its lock connection is closed by the server.
    let admin = pg.admin().await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&held.backend_pid()])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let b_pid = within("the other replica gets the lock", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(b_pid, held.backend_pid());
    within("the dead lock is seen as lost", async {
        while held.is_held() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(held);
    // A's pool recovers: its next lock works on a fresh connection.
    let again = within(
        "a new lock on the first replica",
        a.lock_session("private:43"),
    )
    .await
    .unwrap();
    assert!(again.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_wait_leaves_no_lock_behind() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 1).await.unwrap(),
        PgStore::connect(&pg.url(), 1).await.unwrap(),
    );
    let held = a.lock_session("private:9").await.unwrap();
    // B gives up waiting (a turn timeout); then A's turn ends.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.lock_session("private:9"))
            .await
            .is_err()
    );
    held.release().await;
    // Had B's abandoned wait been granted on a pooled connection, nobody could lock it now.
    let again = within("a lock after a cancelled wait", b.lock_session("private:9"))
        .await
        .unwrap();
    // Dropping the guard (a turn that panicked or returned early) releases it too.
    drop(again);
    within("and from the other replica", a.lock_session("private:9"))
        .await
        .unwrap()
        .release()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_change_reaches_another_replica_even_across_a_reconnect() {
    let pg = TestCluster::start();
    let (a, b) = (
        PgStore::connect(&pg.url(), 1).await.unwrap(),
        PgStore::connect(&pg.url(), 1).await.unwrap(),
    );
    assert_eq!(a.rollout().await.unwrap(), None);
    let mut changes = b.listen_rollout().await.unwrap();
    let first =
        json!({"use_openai_responses": true, "rollout_percent": 10, "updated_by": "telegram:1"});
    a.set_rollout(&first).await.unwrap();
    assert_eq!(
        within("the first change", changes.next()).await,
        Some(Some(first.clone()))
    );
    assert_eq!(b.rollout().await.unwrap(), Some(first));

    // The listener's connection drops; a change made meanwhile still arrives.
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'swapbot-rollout-listener'",
        )
        .await
        .unwrap();
    let second = json!({"use_openai_responses": true, "rollout_percent": 50});
    a.set_rollout(&second).await.unwrap();
    assert_eq!(
        within("the change across the reconnect", changes.next()).await,
        Some(Some(second.clone()))
    );
    within("the reconnect", changes.wait_connections(2)).await;
    let third = json!({"rollout_percent": 100});
    a.set_rollout(&third).await.unwrap();
    assert_eq!(
        within("a change after the reconnect", changes.next()).await,
        Some(Some(third))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_report_what_they_serve() {
    let pg = TestCluster::start();
    let store = PgStore::connect(&pg.url(), 1).await.unwrap();
    let build = |v: &str, sha: &str| PluginBuild {
        name: "responses".into(),
        version: v.into(),
        sha256: sha.into(),
    };
    store
        .report_replica("r1", &[build("0.2.0", "aa")])
        .await
        .unwrap();
    store
        .report_replica("r2", &[build("0.1.0", "bb")])
        .await
        .unwrap();
    store
        .report_replica("r1", &[build("0.2.1", "cc")])
        .await
        .unwrap();
    let mut replicas = store.replicas().await.unwrap();
    replicas.sort_by(|x, y| x.replica_id.cmp(&y.replica_id));
    assert_eq!(replicas.len(), 2);
    assert_eq!(
        replicas[0].plugins,
        vec![build("0.2.1", "cc")],
        "the latest report wins"
    );
    assert_eq!(replicas[1].plugins, vec![build("0.1.0", "bb")]);
    assert!(
        replicas
            .iter()
            .all(|r| r.seconds_since_heartbeat >= 0.0 && r.heartbeat_unix_ms > 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_turn_costs_a_known_number_of_queries() {
    let pg = TestCluster::start();
    let store = PgStore::connect(&pg.url(), 2).await.unwrap();
    let k = key::private(77);
    let before = store.queries();
    // What the host does for one private-chat turn.
    assert!(store.enqueue_update(5, &message(5, 77)).await.unwrap());
    let taken = store.take_pending("r", 1, LEASE, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&taken), vec![5]);
    let guard = store.lock_session(&k).await.unwrap();
    let _ = store
        .session_id("user_conversations.json", &k)
        .await
        .unwrap();
    let _ = store.recent(&k).await.unwrap();
    store
        .set_session_id("user_conversations.json", &k, "conv_1")
        .await
        .unwrap();
    store.append_exchange(&k, "hi", "hello").await.unwrap();
    store
        .record_usage(&UsageEntry {
            t_unix_ms: 1,
            user_id: 77,
            backend: "responses".into(),
            model: "m".into(),
            tokens: TokenCounts::default(),
            micro_usd: 0,
        })
        .await
        .unwrap();
    guard.release().await;
    store.ack_update(5).await.unwrap();
    assert_eq!(
        store.queries() - before,
        10,
        "enqueue, take, lock, get id, history, set id, append, usage, unlock, ack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_imports_once_however_often_it_is_run() {
    let pg = TestCluster::start();
    let store = PgStore::connect(&pg.url(), 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The Python bot's map (json.dump of Dict[int, str]), the Rust bot's, and a group map.
    std::fs::write(
        d.join("user_threads.json"),
        r#"{"123456789012": "thread_abc", "42": "thread_x"}"#,
    )
    .unwrap();
    std::fs::write(d.join("user_conversations.json"), r#"{"42":"conv_42"}"#).unwrap();
    std::fs::write(
        d.join("group_conversations.json"),
        r#"{"-1001:7":"conv_g7","-1002":"conv_shared"}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("rollout.json"),
        r#"{"use_openai_responses": true, "rollout_percent": 25}"#,
    )
    .unwrap();
    std::fs::create_dir_all(d.join("history/groups")).unwrap();
    let mut long = String::new();
    for i in 0..70 {
        long.push_str(&format!("{{\"role\":\"user\",\"text\":\"q{i}\"}}\n{{\"role\":\"assistant\",\"text\":\"a{i}\"}}\n"));
    }
    long.push_str("{\"role\":\"user\",\"te"); // a torn last record
    std::fs::write(d.join("history/42.jsonl"), long).unwrap();
    std::fs::write(
        d.join("history/groups/-1001_7.jsonl"),
        "{\"role\":\"user\",\"text\":\"в группе\"}\n{\"role\":\"assistant\",\"text\":\"ок\"}\n",
    )
    .unwrap();
    let line = |t: u64, user: i64| {
        format!(
            "{{\"t_unix_ms\":{t},\"user_id\":{user},\"backend\":\"responses\",\"model\":\"gpt-4.1-mini\",\
             \"tokens\":{{\"input\":100,\"cached_input\":0,\"output\":20,\"reasoning\":0,\"embedding\":0}},\"micro_usd\":40}}\n"
        )
    };
    // Two equal lines are two turns.
    let usage = format!(
        "{}{}{}not json\n",
        line(1_000, 42),
        line(1_000, 42),
        line(2_000, 7)
    );
    std::fs::write(d.join("usage.jsonl"), usage).unwrap();
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    std::fs::write(
        d.join("inbox/555.json"),
        r#"{"update_id":555,"message":{"text":"pending"}}"#,
    )
    .unwrap();
    // The inbox's log: 556 waits, 557 was answered, 558 was torn by a crash (never confirmed).
    std::fs::write(
        d.join("inbox/log"),
        "+556 {\"update_id\":556,\"message\":{\"text\":\"waits\"}}\n\
         +557 {\"update_id\":557,\"message\":{\"text\":\"answered\"}}\n\
         -557 1700000000\n\
         +558 {\"update_id\":558,\"mess",
    )
    .unwrap();

    let first = store.import_data_dir(d).await.unwrap();
    assert_eq!(first.session_ids, 5);
    assert_eq!((first.history_sessions, first.history_messages), (2, 102));
    assert_eq!(first.usage_entries, 3);
    assert!(first.rollout);
    assert_eq!(first.inbox_updates, 2, "555 from the older layout, 556 from the log");
    assert_eq!(
        first.skipped_lines, 2,
        "the torn history record and the bad usage line"
    );
    let counts = store.row_counts().await.unwrap();

    assert_eq!(
        store
            .session_id("user_threads.json", "private:123456789012")
            .await
            .unwrap()
            .as_deref(),
        Some("thread_abc")
    );
    assert_eq!(
        store
            .session_id("user_conversations.json", "private:42")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_42")
    );
    assert_eq!(
        store
            .session_id("user_conversations.json", "group:-1001:7")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_g7")
    );
    assert_eq!(
        store
            .session_id("user_conversations.json", "group:-1002")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_shared")
    );
    let history = store.recent("private:42").await.unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(history[0], (Role::User, "q20".to_string()));
    assert_eq!(history[99], (Role::Assistant, "a69".to_string()));
    assert_eq!(
        store.recent("group:-1001:7").await.unwrap()[0].1,
        "в группе"
    );
    assert_eq!(store.usage_since(Some(42), 0).await.unwrap().turns, 2);
    assert_eq!(store.usage_since(None, 0).await.unwrap().micro_usd, 120);
    assert_eq!(
        store.rollout().await.unwrap(),
        Some(json!({"use_openai_responses": true, "rollout_percent": 25}))
    );
    assert_eq!(
        store
            .take_pending("r", 10, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()[0]
            .update_id,
        555
    );

    let second = store.import_data_dir(d).await.unwrap();
    assert_eq!(
        (
            second.session_ids,
            second.history_messages,
            second.usage_entries
        ),
        (0, 0, 0)
    );
    assert!(!second.rollout && second.inbox_updates == 0);
    assert_eq!(
        store.row_counts().await.unwrap(),
        counts,
        "a second import changes nothing"
    );

    // What the bot wrote since is kept: the database wins over the files.
    store
        .set_session_id("user_threads.json", "private:42", "thread_newer")
        .await
        .unwrap();
    store.import_data_dir(d).await.unwrap();
    assert_eq!(
        store
            .session_id("user_threads.json", "private:42")
            .await
            .unwrap()
            .as_deref(),
        Some("thread_newer")
    );

    // A corrupt id map stops the import with one line naming the file, and imports nothing.
    std::fs::write(d.join("user_conversations.json"), "{\"1\": \"conv_a\", tor").unwrap();
    let err = store.import_data_dir(d).await.expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("user_conversations.json") && !message.contains('\n'),
        "{message}"
    );
}
