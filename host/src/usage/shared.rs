//! The ledger shared by replicas (`DATABASE_URL`): every replica's use, so a budget is reached by
//! the sum of what all of them spent and `/usage` shows it wherever it is asked.
//!
//! A turn never waits on the database. It counts into the ledger in memory, as without a database,
//! and its entry waits in the ledger's unflushed list. A writer task, woken by each entry, writes
//! whatever is unflushed in one statement (a group commit: under load one write covers every turn
//! that ended while the previous one was in flight), so a killed replica loses at most the last
//! milliseconds' entries (the write in flight and what was recorded meanwhile). Once a second a reader task reads back the per-day sums of the month
//! (`usage_daily`, kept by a trigger; only the rows changed since its last read, between full
//! reads) and makes them the counters, plus whatever this replica has not written yet. Writes and
//! reads take turns (one mutex), so a read never misses nor double counts a batch in flight.
//!
//! So the counters are this replica's own use exactly, and the others' as of at most [`REFRESH`]
//! (plus their write, milliseconds) ago: a budget can be overrun by what the other replicas spend
//! within that second, never by the number of replicas times the budget.
//!
//! While the database is unreachable, each replica goes on counting its own use (and keeps it to
//! write later, up to [`MAX_UNFLUSHED`] entries); the others' use is then what it was at the last
//! read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::ledger::{Base, Entry, Ledger, State, Totals};
use super::prices::TokenCounts;
use crate::calendar::{civil_from_days, days_from_civil};

/// How often a replica reads everyone's use (and retries a write that failed).
pub const REFRESH: Duration = Duration::from_secs(1);
/// Added to the time since the last read when reading only changed rows: a row's `updated_at` is
/// its transaction's start, and a transaction can commit a little after that.
const CHANGE_MARGIN: Duration = Duration::from_secs(5);
/// Between two full reads (which also catch a change committed later than [`CHANGE_MARGIN`]).
const FULL_READ_EVERY: Duration = Duration::from_secs(60);
/// Entries kept for the database while it cannot be written (the oldest are dropped past this).
pub const MAX_UNFLUSHED: usize = 100_000;

const DAY_MS: u64 = 86_400_000;

impl Ledger {
    /// A ledger of every replica's use in `pg`: reads the month's sums now (a start fails if it
    /// cannot) and keeps them fresh from a task on the current Tokio runtime, which ends with
    /// the ledger.
    pub async fn shared(pg: swapbot_pg::PgStore, now_ms: u64) -> anyhow::Result<Ledger> {
        let mut rollup = Rollup::default();
        let started = Instant::now();
        let rows = pg.usage_days(month_start_day(now_ms), None).await?;
        rollup.apply(rows, true);
        let mut ledger = Ledger::in_memory();
        {
            let mut state = ledger.state.lock().unwrap();
            state.unflushed = Some(Vec::new());
            state.replace_base(rollup.base(now_ms), now_ms);
        }
        ledger.database = Some(pg.clone());
        let sync = Arc::new(tokio::sync::Mutex::new(DatabaseSync { pg, rollup, last_read: Some(started), last_full: started }));
        let recorded = Arc::new(tokio::sync::Notify::new());
        ledger.sync = Some(sync.clone());
        ledger.recorded = Some(recorded.clone());
        tokio::spawn(DatabaseSync::write_loop(sync.clone(), Arc::downgrade(&ledger.state), recorded));
        tokio::spawn(DatabaseSync::read_loop(sync, Arc::downgrade(&ledger.state)));
        Ok(ledger)
    }
}

/// The database's per-day sums of the current month, by (day, user).
#[derive(Default)]
struct Rollup {
    days: HashMap<(i64, i64), Totals>,
}

impl Rollup {
    fn apply(&mut self, rows: Vec<swapbot_pg::UsageDay>, full: bool) {
        if full {
            self.days.clear();
        }
        for row in rows {
            self.days.insert((row.day, row.user_id), totals_from_pg(&row.totals));
        }
    }

    fn base(&mut self, now_ms: u64) -> Base {
        let from = month_start_day(now_ms);
        self.days.retain(|(day, _), _| *day >= from);
        let mut base = Base::default();
        for ((day, user), totals) in &self.days {
            base.add_day(*day as u64, *user, totals, now_ms);
        }
        base
    }
}

pub(super) struct DatabaseSync {
    pg: swapbot_pg::PgStore,
    rollup: Rollup,
    /// When the last successful read started (None: the next read is a full one).
    last_read: Option<Instant>,
    last_full: Instant,
}

/// Logs a database outage once when it starts and once when it ends, not at every try.
struct Outage {
    lost: &'static str,
    back: &'static str,
    failing: bool,
}

impl Outage {
    /// Whether `result` succeeded.
    fn note<E: std::fmt::Display>(&mut self, result: Result<(), E>) -> bool {
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("{}", self.back);
                }
                true
            }
            Err(err) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(%err, "{}", self.lost);
                }
                false
            }
        }
    }
}

impl DatabaseSync {
    /// Writes as soon as something was recorded, until the ledger is dropped.
    async fn write_loop(this: Arc<tokio::sync::Mutex<DatabaseSync>>, state: Weak<Mutex<State>>, recorded: Arc<tokio::sync::Notify>) {
        let mut outage = Outage {
            lost: "usage: cannot write to the database; counting this replica's use until it is back",
            back: "usage: the database takes this replica's use again",
            failing: false,
        };
        loop {
            // The timeout only notices a dropped ledger; a failed write is retried by the reader.
            let _ = tokio::time::timeout(REFRESH, recorded.notified()).await;
            let Some(shared) = state.upgrade() else { return };
            let written = this.lock().await.flush(&shared).await;
            drop(shared);
            if !outage.note(written) {
                // Not at the pace of turns while the database is away.
                tokio::time::sleep(REFRESH).await;
            }
        }
    }

    /// Reads everyone's use once per [`REFRESH`], until the ledger is dropped.
    async fn read_loop(this: Arc<tokio::sync::Mutex<DatabaseSync>>, state: Weak<Mutex<State>>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut outage = Outage {
            lost: "usage: cannot read the database; other replicas' use stays as last read",
            back: "usage: the database is read again",
            failing: false,
        };
        loop {
            tick.tick().await;
            let Some(shared) = state.upgrade() else { return };
            let outcome = this.lock().await.once(&shared).await;
            drop(shared);
            outage.note(outcome);
        }
    }

    /// Writes what is unflushed in one statement; on failure keeps it, in order, to write later.
    async fn flush(&mut self, shared: &Arc<Mutex<State>>) -> Result<(), swapbot_pg::StoreError> {
        let batch = std::mem::take(shared.lock().unwrap().unflushed.get_or_insert_default());
        if batch.is_empty() {
            return Ok(());
        }
        let written = self.pg.record_usage_batch(&batch.iter().map(entry_to_pg).collect::<Vec<_>>()).await;
        if written.is_err() {
            // Still this replica's use: back in front of what was recorded meanwhile.
            let mut state = shared.lock().unwrap();
            let unflushed = state.unflushed.get_or_insert_default();
            let later = std::mem::replace(unflushed, batch);
            unflushed.extend(later);
            if unflushed.len() > MAX_UNFLUSHED {
                let dropped = unflushed.len() - MAX_UNFLUSHED;
                unflushed.drain(..dropped);
                tracing::error!(dropped, "usage: entries the database could not take are dropped");
            }
        }
        written
    }

    /// Writes what is unflushed, then reads everyone's sums and makes them the counters (plus
    /// what is still unflushed, should the write have failed).
    async fn once(&mut self, shared: &Arc<Mutex<State>>) -> Result<(), swapbot_pg::StoreError> {
        let written = self.flush(shared).await;
        let started = Instant::now();
        let now_ms = crate::calendar::unix_ms_now();
        let full = self.last_read.is_none() || self.last_full.elapsed() >= FULL_READ_EVERY;
        let window = match self.last_read {
            Some(last) if !full => Some(last.elapsed() + CHANGE_MARGIN),
            _ => None,
        };
        let rows = match self.pg.usage_days(month_start_day(now_ms), window).await {
            Ok(rows) => rows,
            Err(err) => {
                self.last_read = None;
                return Err(err);
            }
        };
        self.rollup.apply(rows, full);
        self.last_read = Some(started);
        if full {
            self.last_full = started;
        }
        // Built outside the lock (a month of rows); only the swap holds it.
        let base = self.rollup.base(now_ms);
        shared.lock().unwrap().replace_base(base, now_ms);
        written
    }
}

/// A dropped ledger's last entries go to the database if a runtime is still there to send them.
pub(super) fn flush_on_drop(pg: swapbot_pg::PgStore, state: &Mutex<State>) {
    let batch = state.lock().map(|mut s| s.unflushed.take().unwrap_or_default()).unwrap_or_default();
    if batch.is_empty() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let entries: Vec<_> = batch.iter().map(entry_to_pg).collect();
        runtime.spawn(async move {
            if let Err(err) = pg.record_usage_batch(&entries).await {
                tracing::warn!(%err, lost = entries.len(), "usage: the last entries did not reach the database");
            }
        });
    }
}

/// The first day (days since the epoch) of `now_ms`'s UTC month.
fn month_start_day(now_ms: u64) -> i64 {
    let (y, m, _) = civil_from_days((now_ms / DAY_MS) as i64);
    days_from_civil(y, m, 1)
}

fn entry_to_pg(e: &Entry) -> swapbot_pg::UsageEntry {
    swapbot_pg::UsageEntry {
        t_unix_ms: e.t_unix_ms,
        user_id: e.user_id,
        backend: e.backend.clone(),
        model: e.model.clone(),
        tokens: swapbot_pg::TokenCounts {
            input: e.tokens.input,
            cached_input: e.tokens.cached_input,
            output: e.tokens.output,
            reasoning: e.tokens.reasoning,
            embedding: e.tokens.embedding,
        },
        micro_usd: e.micro_usd,
    }
}

fn totals_from_pg(t: &swapbot_pg::UsageTotals) -> Totals {
    Totals {
        turns: t.turns,
        tokens: TokenCounts {
            input: t.tokens.input,
            cached_input: t.tokens.cached_input,
            output: t.tokens.output,
            reasoning: t.tokens.reasoning,
            embedding: t.tokens.embedding,
        },
        micro_usd: t.micro_usd,
    }
}

impl Ledger {
    /// Writes what is unflushed and reads everyone's use now, instead of at the next tick (tests,
    /// and a graceful stop). Without a database: nothing.
    pub async fn sync_shared(&self) -> anyhow::Result<()> {
        let Some(sync) = &self.sync else { return Ok(()) };
        sync.lock().await.once(&self.state).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_160_600_000 + 14 * DAY_MS; // 2026-12-15 21:30 UTC

    fn day_row(day: i64, user_id: i64, turns: u64, input: u64) -> swapbot_pg::UsageDay {
        swapbot_pg::UsageDay {
            day,
            user_id,
            totals: swapbot_pg::UsageTotals { turns, tokens: swapbot_pg::TokenCounts { input, ..Default::default() }, micro_usd: turns },
        }
    }

    #[test]
    fn the_database_sums_become_day_and_month_counters_plus_what_is_unflushed() {
        let today = (NOW / DAY_MS) as i64;
        assert_eq!(month_start_day(NOW), today - 14);
        let mut rollup = Rollup::default();
        // Last month's day (read just before midnight of the 1st, say) counts for nothing now.
        rollup.apply(vec![day_row(today, 1, 2, 100), day_row(today - 3, 1, 1, 10), day_row(today - 20, 1, 5, 1000), day_row(today, 2, 1, 7)], true);
        let mut state = State::default();
        state.unflushed = Some(vec![]);
        state.unflushed.as_mut().unwrap().push(Entry {
            t_unix_ms: NOW,
            user_id: 1,
            backend: "responses".into(),
            model: "m".into(),
            tokens: TokenCounts { input: 1, ..Default::default() },
            micro_usd: 0,
        });
        state.replace_base(rollup.base(NOW), NOW);
        let shared = Arc::new(Mutex::new(state));
        let mut ledger = Ledger::in_memory();
        ledger.state = shared;
        let one = ledger.usage_of(1, NOW);
        assert_eq!((one.day.turns, one.day.tokens.input), (3, 101), "today's sums and the unflushed entry");
        assert_eq!((one.month.turns, one.month.tokens.input), (4, 111), "not last month's");
        assert_eq!(ledger.total(NOW).day.turns, 4);
        assert_eq!(rollup.days.len(), 3, "last month's rows are forgotten");
        // A later read of only the changed rows replaces those rows' sums, keeps the others.
        rollup.apply(vec![day_row(today, 2, 3, 9)], false);
        assert_eq!(rollup.days[&(today, 2)].turns, 3);
        assert_eq!(rollup.days[&(today, 1)].turns, 2);
    }
}
