//! swapbot's PostgreSQL store (`DATABASE_URL`): what the file store keeps in `DATA_DIR`, shared
//! by every replica of the bot, plus what only several replicas need (durable update dedup, a
//! leased inbox, a turn lock per session, a replica list, rollout change notifications).
//!
//! Built on tokio-postgres and deadpool-postgres rather than sqlx or diesel: they add a few
//! crates instead of a macro and driver stack that costs minutes on a 2-core build, and they
//! need no database at compile time (sqlx's checked queries want one, or an offline cache kept in
//! step). The queries are few and fixed; the tests run every one of them against a real server.
//!
//! # Session keys
//! Methods take a session key as its stable text form (see [`key`]): `private:<user>`,
//! `group:<chat>:<user>` (one session per member) or `group:<chat>` (one per group). Id maps are
//! named as the file store names the backend's private map (`user_threads.json`,
//! `user_conversations.json`); a group session lives in the same map under its group key, where
//! the file store keeps a separate `group_*.json` file.
//!
//! # Connections
//! A store holds two pools: `pool_size` connections for queries, and `lock_connections` for
//! [`PgStore::lock_session`], each of which stays checked out for a whole turn (seconds to
//! minutes of model time). Keeping them apart means turns waiting on the model never starve the
//! short queries; the lock pool's size bounds the turns one replica runs at once across all
//! sessions (a further `lock_session` waits). [`PgStore::listen_rollout`] opens one more.
//! A replica therefore uses up to `pool_size + lock_connections + 1` server connections, and
//! `replicas × that` must stay below the server's `max_connections` (100 by default).

mod import;
pub mod key;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};

pub use import::ImportReport;

/// Messages kept per session, as the file store keeps (`HISTORY_LIMIT`).
pub const HISTORY_LIMIT: i64 = 100;

/// The channel [`PgStore::set_rollout`] notifies.
pub const ROLLOUT_CHANNEL: &str = "swapbot_rollout";

/// The embedded migrations, in order. A version is never edited once released: a change is a
/// new file.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_claimed_by.sql")),
    (3, include_str!("../migrations/0003_inbox_order.sql")),
    (4, include_str!("../migrations/0004_usage_daily.sql")),
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The two-int advisory lock key replicas take while migrating. Session locks use the one-bigint
/// form, which PostgreSQL keeps apart from this one, so no session hash can collide with it.
const MIGRATION_LOCK: (i32, i32) = (0x7377_6170, 1); // "swap", 1

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    InvalidUrl(String),
    #[error("database {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "database schema is version {database}, newer than this binary knows ({binary}): upgrade swapbot or use another database"
    )]
    SchemaTooNew { database: i32, binary: i32 },
    #[error("database error: {0}")]
    Query(String),
    #[error("{path}: {reason}")]
    Import { path: String, reason: String },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        StoreError::Query(one_line(&err))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        StoreError::Query(one_line(&err))
    }
}

/// An error and its causes on one line: tokio-postgres says only "db error" at the top and puts
/// the server's message in the source.
fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `DATABASE_URL` fit for a log line: user, hosts, ports and database, never the password.
pub fn redact_url(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(config) => redacted(&config),
        Err(_) => "<invalid DATABASE_URL>".into(),
    }
}

/// The password `DATABASE_URL` carries, if any: for the host's list of strings never logged.
pub fn url_password(url: &str) -> Option<String> {
    let config = tokio_postgres::Config::from_str(url).ok()?;
    let password = config.get_password()?;
    Some(String::from_utf8_lossy(password).into_owned())
}

/// The connection string without its password, for messages: `postgres://user@host:port/db`.
pub fn redacted(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config
        .get_dbname()
        .map(|d| format!("/{d}"))
        .unwrap_or_default();
    format!("postgres://{user}{}{db}", hosts.join(","))
}

/// Who said a history message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    fn parse(text: &str) -> Role {
        // As the file store reads it: anything but "assistant" is the user's.
        if text == "assistant" {
            Role::Assistant
        } else {
            Role::User
        }
    }
}

/// Tokens billed for one turn, as the usage journal writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenCounts {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
    pub reasoning: u64,
    pub embedding: u64,
}

/// One billed turn: the usage journal's line (`usage.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub t_unix_ms: u64,
    pub user_id: i64,
    pub backend: String,
    pub model: String,
    #[serde(default)]
    pub tokens: TokenCounts,
    #[serde(default)]
    pub micro_usd: u64,
}

/// Sums over some turns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub turns: u64,
    pub tokens: TokenCounts,
    pub micro_usd: u64,
}

/// One user's use on one UTC day (`usage_daily`), summed over every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageDay {
    /// Days since the Unix epoch (`t_unix_ms / 86_400_000`).
    pub day: i64,
    pub user_id: i64,
    pub totals: UsageTotals,
}

/// An update taken from the inbox under a lease.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingUpdate {
    pub update_id: i64,
    pub body: serde_json::Value,
    /// How many times a replica took it, this time included: above 1, an earlier taker died or
    /// ran past its lease.
    pub attempts: i32,
}

/// One plugin a replica serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginBuild {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// A replica's last report.
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    pub replica_id: String,
    pub plugins: Vec<PluginBuild>,
    pub heartbeat_unix_ms: i64,
    /// By the database's clock, so replicas' clock skew does not matter.
    pub seconds_since_heartbeat: f64,
}

/// What [`PgStore::migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// Versions applied by this call, oldest first; empty when the schema was current.
    pub applied: Vec<i32>,
    pub version: i32,
}

/// How a store connects.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Connections for queries.
    pub pool_size: usize,
    /// Connections for turn locks: the most turns one replica holds a lock for at once.
    pub lock_connections: usize,
    /// Apply pending migrations on connect (the bot); `swapbot db migrate` can say false and
    /// call [`PgStore::migrate`] itself to report what it applied.
    pub migrate: bool,
}

impl StoreOptions {
    pub fn new(pool_size: usize) -> Self {
        Self {
            pool_size: pool_size.max(1),
            lock_connections: pool_size.max(1),
            migrate: true,
        }
    }
}

/// The store. Cheap to clone; clones share the pools and the query counter.
#[derive(Clone)]
pub struct PgStore {
    config: tokio_postgres::Config,
    pool: Pool,
    locks: Pool,
    queries: Arc<AtomicU64>,
}

type Param<'a> = &'a (dyn ToSql + Sync);

impl PgStore {
    /// Connects, checks the server answers, and applies pending migrations.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        Self::connect_with(url, StoreOptions::new(pool_size)).await
    }

    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(one_line(&e)))?;
        if config.get_connect_timeout().is_none() {
            // An unroutable host would otherwise hang start-up for the OS's TCP timeout.
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("swapbot");
        }
        if config.get_options().is_none() {
            // The migrations' `IF NOT EXISTS` notices would be logged as lines of their own (a
            // start refused for a newer schema must say so in one).
            config.options("-c client_min_messages=warning");
        }
        let pool = build_pool(config.clone(), options.pool_size)?;
        let mut lock_config = config.clone();
        // Our own name, so an operator (and the tests) can tell lock holders in pg_stat_activity;
        // and a backend waiting for a lock whose client went away gives up within a second
        // instead of taking the lock for nobody.
        lock_config.application_name("swapbot-session-lock");
        lock_config.options("-c client_connection_check_interval=1000 -c client_min_messages=warning");
        let locks = build_pool(lock_config, options.lock_connections)?;
        let store = PgStore {
            config,
            pool,
            locks,
            queries: Arc::new(AtomicU64::new(0)),
        };
        // The first connection tells an unreachable database apart from a failing query.
        let client = store.pool.get().await.map_err(|e| {
            // The driver's error, without the pool's "error occurred while creating" wrapper.
            let reason = match &e {
                deadpool_postgres::PoolError::Backend(inner) => one_line(inner),
                other => one_line(other),
            };
            StoreError::Unreachable {
                url: redacted(&store.config),
                reason,
            }
        })?;
        drop(client);
        if options.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Statements sent to the server since the store was made (every clone counts into one
    /// counter): a benchmark divides it by turns. A statement's first use on a connection also
    /// prepares it once; that is not counted.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn counted(&self, n: u64) {
        self.queries.fetch_add(n, Ordering::Relaxed);
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(StoreError::from)
    }

    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        self.counted(1);
        Ok(client.query(&statement, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        self.counted(1);
        Ok(client.execute(&statement, params).await?)
    }

    /// The schema version the database is at (0: none).
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        // Two steps: a query naming a missing table fails when planned.
        let exists: bool = self
            .query("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await?[0]
            .get(0);
        if !exists {
            return Ok(0);
        }
        Ok(self
            .query(
                "SELECT COALESCE(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?[0]
            .get(0))
    }

    /// Applies the migrations the database lacks, in one transaction under an advisory lock:
    /// replicas starting at once apply them once, the others wait and find nothing to do.
    pub async fn migrate(&self) -> Result<Migrated, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
        )
        .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
                version INTEGER PRIMARY KEY, \
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        self.counted(4);
        if current > SCHEMA_VERSION {
            tx.rollback().await?;
            self.counted(1);
            return Err(StoreError::SchemaTooNew {
                database: current,
                binary: SCHEMA_VERSION,
            });
        }
        let mut applied = Vec::new();
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| StoreError::Query(format!("migration {version}: {}", one_line(&e))))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            self.counted(2);
            applied.push(*version);
        }
        tx.commit().await?;
        self.counted(1);
        if !applied.is_empty() {
            tracing::info!(?applied, version = SCHEMA_VERSION, "database migrated");
        }
        Ok(Migrated {
            applied,
            version: current.max(SCHEMA_VERSION),
        })
    }

    // --- id maps ---------------------------------------------------------------------------

    /// The session id `key` has in the backend's id map `map` (e.g. `user_conversations.json`).
    pub async fn session_id(&self, map: &str, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT session_id FROM session_ids WHERE map = $1 AND session_key = $2",
                &[&map, &key],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub async fn set_session_id(&self, map: &str, key: &str, id: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO session_ids (map, session_key, session_id) VALUES ($1, $2, $3) \
             ON CONFLICT (map, session_key) DO UPDATE SET session_id = EXCLUDED.session_id, updated_at = now() \
             WHERE session_ids.session_id IS DISTINCT FROM EXCLUDED.session_id",
            &[&map, &key, &id],
        )
        .await?;
        Ok(())
    }

    /// Forgets `key`'s session in every map (`/new`, or a backend switch); returns how many.
    pub async fn remove_session(&self, key: &str) -> Result<u64, StoreError> {
        self.execute("DELETE FROM session_ids WHERE session_key = $1", &[&key])
            .await
    }

    /// Every `(key, session id)` of a map, by key: for export and checks after an import.
    pub async fn all_sessions(&self, map: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .query("SELECT session_key, session_id FROM session_ids WHERE map = $1 ORDER BY session_key", &[&map])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    // --- history ---------------------------------------------------------------------------

    /// Appends one finished exchange and trims the session to the last [`HISTORY_LIMIT`]
    /// messages, in one statement (atomic, one round trip).
    pub async fn append_exchange(
        &self,
        key: &str,
        user_text: &str,
        assistant_text: &str,
    ) -> Result<(), StoreError> {
        // The DELETE sees the table as it was before this statement, not the two new rows, so
        // the cut-off is computed over the old rows plus the new ones. The rows to go are locked
        // oldest first before any is deleted: two appends to one session (the bot serialises
        // its turns, `swapbot ask` beside it does not) then queue on the same first row instead
        // of each locking rows the other needs next, which PostgreSQL breaks as a deadlock.
        self.execute(
            "WITH ex AS (SELECT nextval('history_exchange_seq') AS e), \
             new AS ( \
                INSERT INTO history (session_key, exchange, pos, role, text) \
                SELECT $1, e, 0, 'user', $2 FROM ex UNION ALL SELECT $1, e, 1, 'assistant', $3 FROM ex \
                RETURNING exchange, pos), \
             seen AS (SELECT exchange, pos FROM history WHERE session_key = $1 UNION ALL SELECT exchange, pos FROM new), \
             cut AS (SELECT exchange, pos FROM seen ORDER BY exchange DESC, pos DESC OFFSET $4::bigint - 1 LIMIT 1), \
             doomed AS (SELECT h.exchange, h.pos FROM history h, cut \
                WHERE h.session_key = $1 AND (h.exchange, h.pos) < (cut.exchange, cut.pos) \
                ORDER BY h.exchange, h.pos FOR UPDATE OF h) \
             DELETE FROM history h USING doomed d \
             WHERE h.session_key = $1 AND h.exchange = d.exchange AND h.pos = d.pos",
            &[&key, &user_text, &assistant_text, &HISTORY_LIMIT],
        )
        .await?;
        Ok(())
    }

    /// The session's messages, oldest first (at most [`HISTORY_LIMIT`]).
    pub async fn recent(&self, key: &str) -> Result<Vec<(Role, String)>, StoreError> {
        let rows = self
            .query(
                "SELECT role, text FROM (SELECT exchange, pos, role, text FROM history WHERE session_key = $1 \
                 ORDER BY exchange DESC, pos DESC LIMIT $2) last ORDER BY exchange, pos",
                &[&key, &HISTORY_LIMIT],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (Role::parse(r.get(0)), r.get(1)))
            .collect())
    }

    pub async fn clear_history(&self, key: &str) -> Result<u64, StoreError> {
        self.execute("DELETE FROM history WHERE session_key = $1", &[&key])
            .await
    }

    // --- usage -----------------------------------------------------------------------------

    pub async fn record_usage(&self, entry: &UsageEntry) -> Result<(), StoreError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let t = &entry.tokens;
        self.execute(
            "INSERT INTO usage (t_unix_ms, user_id, backend, model, input, cached_input, output, reasoning, embedding, micro_usd) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &n(entry.t_unix_ms),
                &entry.user_id,
                &entry.backend,
                &entry.model,
                &n(t.input),
                &n(t.cached_input),
                &n(t.output),
                &n(t.reasoning),
                &n(t.embedding),
                &n(entry.micro_usd),
            ],
        )
        .await?;
        Ok(())
    }

    /// Records several billed turns in one statement (one round trip, one transaction): a
    /// replica's flush of what it counted since the last one. Nothing for an empty slice.
    pub async fn record_usage_batch(&self, entries: &[UsageEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let column = |f: &dyn Fn(&UsageEntry) -> i64| entries.iter().map(f).collect::<Vec<i64>>();
        let t = column(&|e| n(e.t_unix_ms));
        let user = column(&|e| e.user_id);
        let backend: Vec<&str> = entries.iter().map(|e| e.backend.as_str()).collect();
        let model: Vec<&str> = entries.iter().map(|e| e.model.as_str()).collect();
        let input = column(&|e| n(e.tokens.input));
        let cached = column(&|e| n(e.tokens.cached_input));
        let output = column(&|e| n(e.tokens.output));
        let reasoning = column(&|e| n(e.tokens.reasoning));
        let embedding = column(&|e| n(e.tokens.embedding));
        let micro_usd = column(&|e| n(e.micro_usd));
        self.execute(
            "INSERT INTO usage (t_unix_ms, user_id, backend, model, input, cached_input, output, reasoning, embedding, micro_usd) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
             $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])",
            &[&t, &user, &backend, &model, &input, &cached, &output, &reasoning, &embedding, &micro_usd],
        )
        .await?;
        Ok(())
    }

    /// Every user's use per UTC day from `from_day` on (days since the epoch), summed over every
    /// replica; with `changed_within`, only the (day, user) rows updated that recently by the
    /// database's clock (a refresh between full reads: rows hold totals, so reading one again is
    /// harmless and a window longer than the refresh interval misses nothing committed in time).
    pub async fn usage_days(
        &self,
        from_day: i64,
        changed_within: Option<Duration>,
    ) -> Result<Vec<UsageDay>, StoreError> {
        let within = changed_within.map(|d| d.as_secs_f64());
        let rows = self
            .query(
                "SELECT day, user_id, turns, input, cached_input, output, reasoning, embedding, micro_usd \
                 FROM usage_daily WHERE day >= $1 \
                 AND ($2::float8 IS NULL OR updated_at > now() - make_interval(secs => $2::float8))",
                &[&from_day, &within],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let u = |i: usize| r.get::<_, i64>(i).max(0) as u64;
                UsageDay {
                    day: r.get(0),
                    user_id: r.get(1),
                    totals: UsageTotals {
                        turns: u(2),
                        tokens: TokenCounts {
                            input: u(3),
                            cached_input: u(4),
                            output: u(5),
                            reasoning: u(6),
                            embedding: u(7),
                        },
                        micro_usd: u(8),
                    },
                }
            })
            .collect())
    }

    /// Totals of the turns at or after `since_unix_ms`, of one user or of everyone. The ledger's
    /// day and month are `since` = the start of the UTC day or month.
    pub async fn usage_since(
        &self,
        user: Option<i64>,
        since_unix_ms: u64,
    ) -> Result<UsageTotals, StoreError> {
        let since = i64::try_from(since_unix_ms).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT count(*)::bigint, COALESCE(sum(input), 0)::bigint, COALESCE(sum(cached_input), 0)::bigint, \
                 COALESCE(sum(output), 0)::bigint, COALESCE(sum(reasoning), 0)::bigint, \
                 COALESCE(sum(embedding), 0)::bigint, COALESCE(sum(micro_usd), 0)::bigint \
                 FROM usage WHERE t_unix_ms >= $1 AND ($2::bigint IS NULL OR user_id = $2)",
                &[&since, &user],
            )
            .await?;
        let r = &rows[0];
        let u = |i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok(UsageTotals {
            turns: u(0),
            tokens: TokenCounts {
                input: u(1),
                cached_input: u(2),
                output: u(3),
                reasoning: u(4),
                embedding: u(5),
            },
            micro_usd: u(6),
        })
    }

    // --- rollout ---------------------------------------------------------------------------

    pub async fn rollout(&self) -> Result<Option<serde_json::Value>, StoreError> {
        let rows = self.query("SELECT value FROM rollout", &[]).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Stores the rollout and tells every listener (`NOTIFY swapbot_rollout`, delivered when the
    /// write commits; one statement).
    pub async fn set_rollout(&self, value: &serde_json::Value) -> Result<(), StoreError> {
        self.execute(
            "WITH up AS (INSERT INTO rollout (singleton, value) VALUES (true, $1) \
             ON CONFLICT (singleton) DO UPDATE SET value = EXCLUDED.value, updated_at = now() RETURNING 1) \
             SELECT pg_notify($2, '') FROM up",
            &[value, &ROLLOUT_CHANNEL],
        )
        .await?;
        Ok(())
    }

    /// Rollout changes, as they are written by any replica: each new value once (writing the
    /// value in force again sends nothing). A dedicated connection LISTENs; when it drops, it
    /// reconnects (with a backoff) and sends the rollout if it changed meanwhile, so a change
    /// made while it was away is not missed. The task ends when the receiver is dropped.
    pub async fn listen_rollout(&self) -> Result<RolloutChanges, StoreError> {
        let mut config = self.config.clone();
        config.application_name("swapbot-rollout-listener");
        // The first connection is made here so an error reaches the caller.
        let first = listen(&config).await.map_err(|e| StoreError::Unreachable {
            url: redacted(&config),
            reason: e,
        })?;
        let (tx, rx) = mpsc::channel(16);
        let (connected_tx, connected_rx) = tokio::sync::watch::channel(1u64);
        tokio::spawn(listen_loop(config, first, tx, connected_tx));
        Ok(RolloutChanges {
            rx,
            connected: connected_rx,
        })
    }

    // --- updates ---------------------------------------------------------------------------

    /// Forgets accepted update ids older than `age` (Telegram re-delivers for a day at most).
    pub async fn prune_processed(&self, age: Duration) -> Result<u64, StoreError> {
        let secs = age.as_secs_f64();
        self.execute(
            "DELETE FROM processed_updates WHERE claimed_at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await
    }

    /// Makes a delivered update durable in the inbox (webhook mode) before Telegram is told it
    /// arrived. Returns false when it was accepted before (queued, in flight or answered): the
    /// caller answers Telegram 200 and does nothing else.
    ///
    /// One statement: the id goes into `processed_updates` and the body into `inbox` together.
    /// The id's primary key is the dedup: two deliveries of one update racing (Telegram's retry,
    /// a proxy's next upstream) serialise on it, and the second finds it taken, also while the
    /// first is being acked (the id stays in `processed_updates` when its row leaves the inbox).
    pub async fn enqueue_update(
        &self,
        update_id: i64,
        body: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "WITH accepted AS (INSERT INTO processed_updates (update_id) VALUES ($1) \
                   ON CONFLICT DO NOTHING RETURNING update_id) \
                 INSERT INTO inbox (update_id, body, chat_id) \
                 SELECT update_id, $2, ($2::jsonb->'message'->'chat'->>'id')::bigint FROM accepted \
                 ON CONFLICT (update_id) DO NOTHING",
                &[&update_id, body],
            )
            .await?;
        Ok(n == 1)
    }

    /// Takes up to `limit` updates nobody holds (never taken, or whose taker's lease ran out:
    /// it died or stalled), oldest first, and leases them to `replica_id` for `lease`. Replicas
    /// taking at once get different rows (`FOR UPDATE SKIP LOCKED`). The caller answers each and
    /// then calls [`PgStore::ack_update`]; one not acked before its lease ends is taken again.
    ///
    /// Order per chat: a row is not taken while an earlier row of its chat is in the inbox
    /// (leased by anyone, or waiting), so one chat has at most one update in flight across all
    /// replicas and they run in update_id order, also when a taker dies (its row is retaken
    /// first, the later ones wait behind it). Telegram delivers in parallel (`max_connections`),
    /// so a later update can commit before an earlier one: a row is taken at once only when
    /// the id before it was accepted already (update ids are consecutive per bot), otherwise
    /// once it is `settle` old, time for the earlier delivery to arrive. An update id that is
    /// not a message (never queued) makes the next message wait `settle` once.
    pub async fn take_pending(
        &self,
        replica_id: &str,
        limit: i64,
        lease: Duration,
        settle: Duration,
    ) -> Result<Vec<PendingUpdate>, StoreError> {
        let secs = lease.as_secs_f64();
        let settle = settle.as_secs_f64();
        let rows = self
            .query(
                "WITH due AS (SELECT i.update_id FROM inbox i \
                   WHERE (i.lease_until IS NULL OR i.lease_until < now()) \
                     AND NOT EXISTS (SELECT 1 FROM inbox e WHERE e.chat_id = i.chat_id AND e.update_id < i.update_id) \
                     AND (i.received_at <= now() - make_interval(secs => $4) \
                          OR EXISTS (SELECT 1 FROM processed_updates p WHERE p.update_id = i.update_id - 1)) \
                   ORDER BY i.update_id LIMIT $2 FOR UPDATE OF i SKIP LOCKED) \
                 UPDATE inbox SET claimed_by = $1, lease_until = now() + make_interval(secs => $3), attempts = attempts + 1 \
                 FROM due WHERE inbox.update_id = due.update_id \
                 RETURNING inbox.update_id, inbox.body, inbox.attempts",
                &[&replica_id, &limit, &secs, &settle],
            )
            .await?;
        let mut taken: Vec<PendingUpdate> = rows
            .iter()
            .map(|r| PendingUpdate {
                update_id: r.get(0),
                body: r.get(1),
                attempts: r.get(2),
            })
            .collect();
        taken.sort_by_key(|u| u.update_id);
        Ok(taken)
    }

    /// Keeps the updates leased to `replica_id` for `lease` from now (turns running long), in
    /// one statement. Returns the ids still held: one missing was lost, another replica took it
    /// after its lease ran out (or it was acked meanwhile).
    pub async fn extend_leases(
        &self,
        update_ids: &[i64],
        replica_id: &str,
        lease: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        if update_ids.is_empty() {
            return Ok(vec![]);
        }
        let secs = lease.as_secs_f64();
        let rows = self
            .query(
                "UPDATE inbox SET lease_until = now() + make_interval(secs => $3) \
                 WHERE update_id = ANY($1) AND claimed_by = $2 RETURNING update_id",
                &[&update_ids, &replica_id, &secs],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Gives up every lease `replica_id` holds, so any replica takes those updates at once
    /// rather than after the lease: at a replica's start (the same replica restarted: nothing of
    /// its old run is in flight) and at its stop (what it did not finish). `REPLICA_ID` must be
    /// unique per running replica, or this hands a live replica's turns to others.
    pub async fn release_leases(&self, replica_id: &str) -> Result<u64, StoreError> {
        self.execute(
            "UPDATE inbox SET lease_until = NULL WHERE claimed_by = $1 AND lease_until IS NOT NULL",
            &[&replica_id],
        )
        .await
    }

    /// The update's turn ended (answered or apologised for): it leaves the inbox; its id stays
    /// in `processed_updates`, so a later delivery of it is not enqueued again. One statement.
    pub async fn ack_update(&self, update_id: i64) -> Result<(), StoreError> {
        // The insert covers a row `db import` put in the inbox without its id.
        self.execute(
            "WITH gone AS (DELETE FROM inbox WHERE update_id = $1) \
             INSERT INTO processed_updates (update_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&update_id],
        )
        .await?;
        Ok(())
    }

    // --- turn lock -------------------------------------------------------------------------

    /// Waits until no replica runs a turn of `key`, and holds that until the guard is dropped
    /// or released. The lock is a session-level advisory lock on a connection of the lock pool
    /// held for the whole turn: if this replica dies, its connection closes and PostgreSQL
    /// releases the lock. Cancelling the wait (dropping the future) discards the connection, so
    /// a lock granted late is not left on a pooled connection.
    ///
    /// While all `lock_connections` are held by turns, this waits for one to come back (of any
    /// session): size the lock pool to the replica's turn concurrency.
    pub async fn lock_session(&self, key: &str) -> Result<SessionGuard, StoreError> {
        let conn = self.locks.get().await?;
        let mut pending = Discard(Some(conn));
        let hash = key::lock_hash(key);
        let client = pending.0.as_ref().expect("held");
        let statement = client
            .prepare_cached("SELECT pg_backend_pid(), pg_advisory_lock($1)")
            .await?;
        self.counted(1);
        let row = client.query_one(&statement, &[&hash]).await?;
        let backend_pid: i32 = row.get(0);
        let conn = pending.0.take().expect("held");
        Ok(SessionGuard {
            conn: Some(conn),
            hash,
            backend_pid,
            queries: self.queries.clone(),
        })
    }

    // --- replicas --------------------------------------------------------------------------

    /// Records what `replica_id` serves, and that it is alive now (call it every heartbeat).
    pub async fn report_replica(
        &self,
        replica_id: &str,
        plugins: &[PluginBuild],
    ) -> Result<(), StoreError> {
        let plugins = serde_json::to_value(plugins).unwrap_or_default();
        self.execute(
            "INSERT INTO replicas (replica_id, plugins) VALUES ($1, $2) \
             ON CONFLICT (replica_id) DO UPDATE SET plugins = EXCLUDED.plugins, heartbeat_at = now()",
            &[&replica_id, &plugins],
        )
        .await?;
        Ok(())
    }

    /// Every replica that ever reported, freshest first; the caller decides from
    /// `seconds_since_heartbeat` which are gone.
    pub async fn replicas(&self) -> Result<Vec<Replica>, StoreError> {
        let rows = self
            .query(
                "SELECT replica_id, plugins, (extract(epoch FROM heartbeat_at) * 1000)::bigint, \
                 extract(epoch FROM now() - heartbeat_at)::float8 FROM replicas ORDER BY heartbeat_at DESC, replica_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Replica {
                replica_id: r.get(0),
                plugins: serde_json::from_value(r.get(1)).unwrap_or_default(),
                heartbeat_unix_ms: r.get(2),
                seconds_since_heartbeat: r.get(3),
            })
            .collect())
    }

    /// Drops replicas silent for longer than `age`.
    pub async fn forget_replicas(&self, age: Duration) -> Result<u64, StoreError> {
        let secs = age.as_secs_f64();
        self.execute(
            "DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await
    }

    // --- import ----------------------------------------------------------------------------

    /// Copies a file store's `DATA_DIR` into the database; see [`ImportReport`]. Idempotent:
    /// what the database already has wins, so a second run (or one after the bot wrote newer
    /// state here) changes nothing.
    pub async fn import_data_dir(&self, dir: &std::path::Path) -> Result<ImportReport, StoreError> {
        import::import(self, dir).await
    }

    /// Row counts per table, for checks and `swapbot db status`.
    pub async fn row_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut out = Vec::new();
        for table in [
            "session_ids",
            "history",
            "usage",
            "rollout",
            "processed_updates",
            "inbox",
            "replicas",
        ] {
            let n: i64 = self
                .query(&format!("SELECT count(*) FROM {table}"), &[])
                .await?[0]
                .get(0);
            out.push((table.to_string(), n));
        }
        Ok(out)
    }
}

fn build_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .build()
        .map_err(|e| StoreError::InvalidUrl(one_line(&e)))
}

/// Drops a lock connection out of the pool unless disarmed (its `Option` taken).
struct Discard(Option<Object>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            discard(conn);
        }
    }
}

/// Closes a connection instead of returning it to the pool: PostgreSQL ends its session and
/// with it every advisory lock it holds or waits for. The cancel makes a waiting backend stop
/// at once rather than at its next client check.
fn discard(conn: Object) {
    let client = Object::take(conn);
    let cancel = client.cancel_token();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = cancel.cancel_query(NoTls).await;
        });
    }
    drop(client);
}

/// Holds a session's turn lock; see [`PgStore::lock_session`].
pub struct SessionGuard {
    conn: Option<Object>,
    hash: i64,
    backend_pid: i32,
    queries: Arc<AtomicU64>,
}

impl SessionGuard {
    /// The server process holding the lock (`pg_stat_activity.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// False once the lock's connection has closed (server restart, a terminated backend): the
    /// lock is gone and another replica may run a turn of this session.
    pub fn is_held(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Releases the lock and returns the connection to the pool, waiting for both.
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            unlock(conn, self.hash, &self.queries).await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (hash, queries) = (self.hash, self.queries.clone());
                runtime.spawn(async move { unlock(conn, hash, &queries).await });
            }
            // No runtime to unlock on: closing the connection releases the lock.
            Err(_) => discard(conn),
        }
    }
}

async fn unlock(conn: Object, hash: i64, queries: &AtomicU64) {
    // Should this future be dropped half way (its runtime shutting down), the guard closes
    // the connection rather than pooling one that may still hold the lock.
    let mut pending = Discard(Some(conn));
    let client = pending.0.as_ref().expect("held");
    queries.fetch_add(1, Ordering::Relaxed);
    // Prepared once per connection (cached): an unprepared query is a parse round trip more.
    let released = match client.prepare_cached("SELECT pg_advisory_unlock($1)").await {
        Ok(statement) => client
            .query_one(&statement, &[&hash])
            .await
            .is_ok_and(|row| row.get::<_, bool>(0)),
        Err(_) => false,
    };
    // Not released (not held, or the connection failed): the guard drops the connection, never
    // pooling one whose lock state is unknown.
    if released {
        drop(pending.0.take());
    }
}

/// Rollout changes; see [`PgStore::listen_rollout`].
pub struct RolloutChanges {
    rx: mpsc::Receiver<Option<serde_json::Value>>,
    connected: tokio::sync::watch::Receiver<u64>,
}

impl RolloutChanges {
    /// The next rollout written (None: the row was removed). None at the end only if the
    /// listener task ended, which it does not while this is alive.
    pub async fn next(&mut self) -> Option<Option<serde_json::Value>> {
        self.rx.recv().await
    }

    /// How many times the listener has connected (1 at first): grows on each reconnect.
    pub fn connections(&self) -> u64 {
        *self.connected.borrow()
    }

    /// Waits until the listener has connected at least `n` times.
    pub async fn wait_connections(&mut self, n: u64) {
        let _ = self.connected.wait_for(|c| *c >= n).await;
    }
}

struct Listening {
    client: tokio_postgres::Client,
    notifications: mpsc::UnboundedReceiver<()>,
    current: Option<serde_json::Value>,
}

async fn listen(config: &tokio_postgres::Config) -> Result<Listening, String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| one_line(&e))?;
    let (tx, notifications) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(err = %one_line(&err), "rollout listener connection lost");
                    break;
                }
            }
        }
        // Dropping `tx` tells the loop the connection is gone.
    });
    client
        .batch_execute(&format!("LISTEN {ROLLOUT_CHANNEL}"))
        .await
        .map_err(|e| one_line(&e))?;
    // Read after LISTEN: a change committed in between is then both read here and notified,
    // never neither.
    let current = read_rollout(&client).await.map_err(|e| one_line(&e))?;
    Ok(Listening {
        client,
        notifications,
        current,
    })
}

async fn read_rollout(
    client: &tokio_postgres::Client,
) -> Result<Option<serde_json::Value>, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT value FROM rollout", &[])
        .await?
        .map(|r| r.get(0)))
}

async fn listen_loop(
    config: tokio_postgres::Config,
    mut listening: Listening,
    tx: mpsc::Sender<Option<serde_json::Value>>,
    connected: tokio::sync::watch::Sender<u64>,
) {
    let mut last = listening.current.take();
    loop {
        loop {
            tokio::select! {
                note = listening.notifications.recv() => {
                    if note.is_none() {
                        break;
                    }
                    // Several notifications may be queued; one read covers them all.
                    while listening.notifications.try_recv().is_ok() {}
                    match read_rollout(&listening.client).await {
                        // A change read at reconnect is notified too: send each value once.
                        Ok(value) if value == last => {}
                        Ok(value) => {
                            last = value.clone();
                            if tx.send(value).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                _ = tx.closed() => return,
            }
        }
        let mut backoff = Duration::from_millis(100);
        listening = loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            match listen(&config).await {
                Ok(l) => break l,
                Err(err) => {
                    tracing::warn!(%err, "rollout listener cannot reconnect yet");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        connected.send_modify(|n| *n += 1);
        let value = listening.current.take();
        if value != last {
            last = value.clone();
            if tx.send(value).await.is_err() {
                return;
            }
        }
    }
}
