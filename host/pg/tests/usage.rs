//! Usage shared by replicas, against a real PostgreSQL: two `PgStore`s on one database stand for
//! two replicas. The per-day sums (`usage_daily`) are what budgets and `/usage` read.

mod common;

use std::time::Duration;

use common::TestCluster;
use swapbot_pg::{PgStore, TokenCounts, UsageDay, UsageEntry};

const DAY_MS: u64 = 86_400_000;

fn entry(t_unix_ms: u64, user_id: i64, input: u64, micro_usd: u64) -> UsageEntry {
    UsageEntry {
        t_unix_ms,
        user_id,
        backend: "responses".into(),
        model: "gpt-4.1-mini".into(),
        tokens: TokenCounts { input, cached_input: 1, output: 10, reasoning: 2, embedding: 3 },
        micro_usd,
    }
}

fn sorted(mut days: Vec<UsageDay>) -> Vec<(i64, i64, u64, u64, u64)> {
    days.sort_by_key(|d| (d.day, d.user_id));
    days.iter().map(|d| (d.day, d.user_id, d.totals.turns, d.totals.tokens.input, d.totals.micro_usd)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_batches_sum_per_day_and_user() {
    let pg = TestCluster::start();
    let a = PgStore::connect(&pg.url(), 2).await.unwrap();
    let b = PgStore::connect(&pg.url(), 2).await.unwrap();
    let day = 20_000u64; // days since the epoch
    let t = day * DAY_MS + 1_000;

    // One statement per batch, whatever its size.
    let before = a.queries();
    a.record_usage_batch(&[entry(t, 1, 100, 5), entry(t + 1, 2, 200, 7), entry(t - DAY_MS, 1, 50, 1)]).await.unwrap();
    assert_eq!(a.queries() - before, 1);
    a.record_usage_batch(&[]).await.unwrap();
    assert_eq!(a.queries() - before, 1, "an empty batch sends nothing");
    b.record_usage_batch(&[entry(t + 2, 1, 300, 11)]).await.unwrap();
    // The single-row path (and so `swapbot db import`, which inserts into the same table) rolls up too.
    b.record_usage(&entry(t + 3, 2, 1, 1)).await.unwrap();

    let d = day as i64;
    let everyone = sorted(a.usage_days(d - 1, None).await.unwrap());
    assert_eq!(everyone, vec![(d - 1, 1, 1, 50, 1), (d, 1, 2, 400, 16), (d, 2, 2, 201, 8)]);
    assert_eq!(sorted(b.usage_days(d, None).await.unwrap()), vec![(d, 1, 2, 400, 16), (d, 2, 2, 201, 8)], "from `from_day` on");
    let full = a.usage_days(d, None).await.unwrap();
    let one = full.iter().find(|r| r.user_id == 1).unwrap().totals;
    assert_eq!(
        one.tokens,
        TokenCounts { input: 400, cached_input: 2, output: 20, reasoning: 4, embedding: 6 },
        "every kind of token is summed"
    );
    // The raw rows stay, one per turn, for reports.
    assert_eq!(a.usage_since(Some(1), 0).await.unwrap().turns, 3);

    // Only what changed lately: a row updated by an old transaction is left out, one just updated is in.
    let admin = pg.admin().await;
    admin.batch_execute("UPDATE usage_daily SET updated_at = now() - interval '1 hour'").await.unwrap();
    assert!(a.usage_days(d, Some(Duration::from_secs(60))).await.unwrap().is_empty());
    b.record_usage_batch(&[entry(t + 4, 2, 9, 0)]).await.unwrap();
    let changed = sorted(a.usage_days(d, Some(Duration::from_secs(60))).await.unwrap());
    assert_eq!(changed, vec![(d, 2, 3, 210, 8)], "the changed row, with its whole day's sums");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_counts_rows_recorded_before_it_existed_and_imported_ones() {
    let pg = TestCluster::start();
    let store = PgStore::connect(&pg.url(), 2).await.unwrap();
    // As a database at schema 3 had them: rows, and no per-day sums. Migration 4 adds them up.
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "DROP TRIGGER usage_roll_up ON usage; DELETE FROM usage_daily; \
             INSERT INTO usage (t_unix_ms, user_id, backend, model, input, cached_input, output, reasoning, embedding, micro_usd) \
             VALUES (86400000, 5, 'r', 'm', 10, 0, 1, 0, 0, 2), (86400001, 5, 'r', 'm', 20, 0, 1, 0, 0, 3); \
             DROP TABLE usage_daily; DROP FUNCTION usage_roll_up(); DELETE FROM schema_migrations WHERE version = 4",
        )
        .await
        .unwrap();
    let migrated = store.migrate().await.unwrap();
    assert_eq!(migrated.applied, vec![4]);
    assert_eq!(sorted(store.usage_days(0, None).await.unwrap()), vec![(1, 5, 2, 30, 5)]);

    // A usage journal imported by `swapbot db import` lands in the sums as well.
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::to_string(&entry(2 * DAY_MS, 6, 70, 9)).unwrap();
    std::fs::write(dir.path().join("usage.jsonl"), format!("{line}\n")).unwrap();
    store.import_data_dir(dir.path()).await.unwrap();
    store.import_data_dir(dir.path()).await.unwrap();
    assert_eq!(sorted(store.usage_days(0, None).await.unwrap()), vec![(1, 5, 2, 30, 5), (2, 6, 1, 70, 9)], "imported once");
}
