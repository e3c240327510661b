//! Budgets and `/usage` across replicas: two bots (`app::build`, as `swapbot run` builds one) on
//! one real PostgreSQL, each with its own DATA_DIR, stand for two replicas. A user's spend on one
//! counts on the other, so a budget is reached by the sum of both.
//!
//! Each side's sync with the database runs once a second on its own; the test calls it
//! (`Ledger::sync_shared`) where it needs the other's use, instead of waiting for it.

mod common;
#[path = "../pg/tests/common/mod.rs"]
mod pgcluster;

use swapbot_sandbox::{Sandbox, SandboxConfig};

/// A replica: its own DATA_DIR, the shared sandbox (a conversation made through one replica is
/// continued through another) and `extra` settings.
struct Replica {
    app: swapbot::app::App,
    _data: tempfile::TempDir,
}

async fn replica(sandbox: &Sandbox, extra: &[(&str, &str)]) -> Replica {
    let data = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), common::KEY.into()),
        ("OPENAI_BASE_URL".into(), sandbox.base_url()),
        ("DATA_DIR".into(), data.path().join("data").display().to_string()),
        ("LOG_DIR".into(), data.path().join("logs").display().to_string()),
        ("PLUGIN_DIR".into(), common::plugin_dir().display().to_string()),
        ("ASSISTANT_ID".into(), "asst_test".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = swapbot::config::Config::from_vars(&vars).unwrap();
    Replica { app: swapbot::app::build(config, None).await.unwrap(), _data: data }
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig { api_key: Some(common::KEY.into()), ..SandboxConfig::default() }).await.unwrap()
}

const USER: i64 = 4242;
const ADMIN: i64 = 9001;

/// Tokens (input + output, what a token budget counts) of a user's first and second turn against
/// the sandbox, which is deterministic: measured on a bot of its own, without a database.
async fn tokens_of_two_turns() -> (u64, u64) {
    let sandbox = sandbox().await;
    let bot = replica(&sandbox, &[]).await;
    let service = &bot.app.service;
    let mut tokens = vec![];
    for text in ["first question", "second question"] {
        let outcome = service.turn_on("responses", "test", USER, text, None).await;
        assert!(outcome.reply.is_ok(), "{:?}", outcome.reply);
        tokens.push(outcome.record.input_tokens.unwrap() + outcome.record.output_tokens.unwrap());
    }
    drop(bot);
    sandbox.shutdown().await;
    (tokens[0], tokens[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_reached_in_sum_refuses_on_every_replica_and_usage_shows_both() {
    let (first, second) = tokens_of_two_turns().await;
    // More than either turn alone, no more than both: only the sum reaches it.
    let budget = first.max(second) + 1;
    assert!(budget <= first + second);

    let pg = pgcluster::TestCluster::start();
    let url = pg.url();
    let settings = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOL_SIZE", "2"),
        ("DATABASE_LOCK_CONNECTIONS", "2"),
        ("ADMIN_USER_IDS", "9001"),
    ];
    let budget_setting = format!("{budget} tokens");
    let mut with_budget = settings.to_vec();
    with_budget.push(("BUDGET_USER_DAY", &budget_setting));
    let sandbox = sandbox().await;
    let a = replica(&sandbox, &with_budget).await;
    let b = replica(&sandbox, &with_budget).await;
    let (on_a, on_b) = (a.app.service.clone(), b.app.service.clone());

    let turn = on_a.turn_on("responses", "test", USER, "first question", None).await;
    assert!(turn.reply.is_ok(), "{:?}", turn.reply);
    on_a.accounting().ledger.sync_shared().await.unwrap();
    on_b.accounting().ledger.sync_shared().await.unwrap();

    // B has counted nothing itself, yet shows A's turn.
    let usage_on_b = swapbot::frontend::usage_command(&on_b, USER, &[]);
    assert!(usage_on_b.contains(&format!("today: 1 answer, {first} tokens")), "{usage_on_b}");

    // Below the budget on B (first < budget): the conversation goes on there.
    let turn = on_b.turn_on("responses", "test", USER, "second question", None).await;
    assert!(turn.reply.is_ok(), "one turn on each side is within the budget: {:?}", turn.reply);
    on_b.accounting().ledger.sync_shared().await.unwrap();
    on_a.accounting().ledger.sync_shared().await.unwrap();

    // Each side alone counted less than the budget; together they reach it: both refuse.
    for (side, service) in [("A", &on_a), ("B", &on_b)] {
        let refused = service.turn_on("responses", "test", USER, "third question", None).await;
        let sentence = refused.reply.expect_err(side);
        assert!(sentence.contains("today's allowance"), "{side}: {sentence}");
        assert_eq!(refused.record.outcome, "refused", "{side}");
        let usage = swapbot::frontend::usage_command(service, USER, &[]);
        assert!(usage.contains(&format!("today: 2 answers, {} tokens", first + second)), "{side}: {usage}");
    }
    // Another user is not held back by this one's spend.
    assert!(on_a.turn_on("responses", "test", USER + 1, "hello", None).await.reply.is_ok());

    // An admin's `/usage top` on B lists the user with both sides' turns.
    on_a.accounting().ledger.sync_shared().await.unwrap();
    on_b.accounting().ledger.sync_shared().await.unwrap();
    let top = swapbot::frontend::usage_command(&on_b, ADMIN, &["top"]);
    assert!(top.contains(&format!("1. {USER}: 2 answers")), "{top}");
    assert!(top.contains("everyone: 3 answers"), "{top}");

    // The database has every turn once: refused turns bill nothing, and no journal is written.
    let admin = pg.admin().await;
    let rows: i64 = admin.query_one("SELECT count(*) FROM usage", &[]).await.unwrap().get(0);
    assert_eq!(rows, 3);
    for bot in [&a, &b] {
        assert!(!bot.app.config.data_dir.join("usage.jsonl").exists(), "the database is the record");
    }
    drop((on_a, on_b, a, b));
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_later_counts_what_the_others_spent_this_month() {
    let pg = pgcluster::TestCluster::start();
    let url = pg.url();
    let settings = [("DATABASE_URL", url.as_str()), ("DATABASE_POOL_SIZE", "2"), ("DATABASE_LOCK_CONNECTIONS", "2"), ("BUDGET_USER_DAY", "1 tokens")];
    let sandbox = sandbox().await;
    let a = replica(&sandbox, &settings).await;
    assert!(a.app.service.turn_on("responses", "test", USER, "hello", None).await.reply.is_ok());
    a.app.service.accounting().ledger.sync_shared().await.unwrap();

    // Started after: its first turn for the user is already refused, with no sync of its own yet.
    let b = replica(&sandbox, &settings).await;
    let before = sandbox.requests().len();
    let refused = b.app.service.turn_on("responses", "test", USER, "hello again", None).await;
    assert_eq!(refused.record.outcome, "refused");
    assert_eq!(sandbox.requests().len(), before, "a refused turn makes no request");
    drop((a, b));
    sandbox.shutdown().await;
}
