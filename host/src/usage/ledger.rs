//! Usage counters per user and overall, per UTC day and month, exact under parallel turns (one
//! mutex, no read-modify-write across an await) and durable in an append-only journal,
//! `DATA_DIR/usage.jsonl`, that one writer thread appends to. A turn never waits on the disk; a
//! kill -9 loses at most the lines not yet handed to the kernel (microseconds' worth). At start
//! the journal is read back (a torn or bad line is skipped) and entries of past months are dropped
//! by an atomic rewrite, so the file holds one month at most.
//!
//! With a database ([`Ledger::shared`], see [`super::shared`]) there is no journal: the counters
//! are every replica's use as the database last had it plus what this replica counted since.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::prices::TokenCounts;
use crate::calendar::{civil_from_days, days_from_civil};

const DAY_MS: u64 = 86_400_000;
/// Unwritten journal bytes kept while the disk fails.
const MAX_PENDING_BYTES: usize = 8 << 20;

#[derive(Clone, Copy, Debug)]
pub enum Period {
    Day,
    Month,
}

/// Sums over some turns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub turns: u64,
    pub tokens: TokenCounts,
    pub micro_usd: u64,
}

impl Totals {
    /// What budgets in tokens count: input + output + embeddings.
    pub fn tokens(&self) -> u64 {
        self.tokens.input + self.tokens.output + self.tokens.embedding
    }

    /// Adds sums of other turns (a day of the database's rollup).
    pub(super) fn merge(&mut self, other: &Totals) {
        self.turns += other.turns;
        let (t, o) = (&mut self.tokens, &other.tokens);
        t.input += o.input;
        t.cached_input += o.cached_input;
        t.output += o.output;
        t.reasoning += o.reasoning;
        t.embedding += o.embedding;
        self.micro_usd += other.micro_usd;
    }

    fn add(&mut self, e: &Entry) {
        self.turns += 1;
        let t = &mut self.tokens;
        t.input += e.tokens.input;
        t.cached_input += e.tokens.cached_input;
        t.output += e.tokens.output;
        t.reasoning += e.tokens.reasoning;
        t.embedding += e.tokens.embedding;
        self.micro_usd += e.micro_usd;
    }
}

/// One user's (or everyone's) use in the current day and month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub day: Totals,
    pub month: Totals,
}

/// One billed turn, as a journal line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub t_unix_ms: u64,
    pub user_id: i64,
    pub backend: String,
    pub model: String,
    pub tokens: TokenCounts,
    pub micro_usd: u64,
}

#[derive(Default)]
struct Counters {
    day: u64,
    month: (i64, u32),
    usage: Usage,
}

impl Counters {
    /// Forgets the day or month that is over. Only forward: a clock read a moment earlier (or
    /// stepped back) never wipes the current period.
    fn roll(&mut self, now_ms: u64) {
        let (day, month) = (now_ms / DAY_MS, month_of(now_ms));
        if month > self.month {
            self.month = month;
            self.usage.month = Totals::default();
        }
        if day > self.day {
            self.day = day;
            self.usage.day = Totals::default();
        }
    }

    fn add(&mut self, e: &Entry, now_ms: u64) {
        self.roll(now_ms);
        if month_of(e.t_unix_ms) == self.month {
            self.usage.month.add(e);
            if e.t_unix_ms / DAY_MS == self.day {
                self.usage.day.add(e);
            }
        }
    }

    /// Adds one UTC day's sums (`day`: days since the epoch).
    fn add_day(&mut self, day: u64, totals: &Totals, now_ms: u64) {
        self.roll(now_ms);
        if month_of(day * DAY_MS) == self.month {
            self.usage.month.merge(totals);
            if day == self.day {
                self.usage.day.merge(totals);
            }
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    users: HashMap<i64, Counters>,
    total: Counters,
    /// Shared mode: entries counted here and not yet written to the database, oldest first.
    pub(super) unflushed: Option<Vec<Entry>>,
}

/// Counters built from per-day sums, outside the ledger's lock; see [`State::replace_base`].
#[derive(Default)]
pub(super) struct Base {
    users: HashMap<i64, Counters>,
    total: Counters,
}

impl Base {
    pub(super) fn add_day(&mut self, day: u64, user_id: i64, totals: &Totals, now_ms: u64) {
        self.users.entry(user_id).or_default().add_day(day, totals, now_ms);
        self.total.add_day(day, totals, now_ms);
    }
}

impl State {
    /// The database's sums become the counters, plus what is still unflushed here.
    pub(super) fn replace_base(&mut self, base: Base, now_ms: u64) {
        let Base { mut users, mut total } = base;
        for e in self.unflushed.iter().flatten() {
            users.entry(e.user_id).or_default().add(e, now_ms);
            total.add(e, now_ms);
        }
        self.users = users;
        self.total = total;
    }
}

enum Job {
    Line(String),
    Sync(mpsc::Sender<()>),
}

pub struct Ledger {
    /// Shared with the database sync task in shared mode (which holds it weakly: it ends with the ledger).
    pub(super) state: Arc<Mutex<State>>,
    journal: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Shared mode: where the last unflushed entries go when the ledger is dropped.
    pub(super) database: Option<swapbot_pg::PgStore>,
    pub(super) sync: Option<Arc<tokio::sync::Mutex<super::shared::DatabaseSync>>>,
    /// Shared mode: wakes the database writer.
    pub(super) recorded: Option<Arc<tokio::sync::Notify>>,
}

impl Ledger {
    /// Counters only, nothing on disk (tests, `swapbot ask`).
    pub fn in_memory() -> Self {
        Self { state: Arc::default(), journal: None, writer: None, database: None, sync: None, recorded: None }
    }

    /// Reads `path` back and appends to it from now on.
    pub fn open(path: PathBuf, now_ms: u64) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (entries, dropped) = read_journal(&path, now_ms);
        if dropped > 0 {
            rewrite(&path, &entries)?;
            tracing::info!(path = %path.display(), dropped, kept = entries.len(), "usage journal: entries of past months dropped");
        }
        let mut state = State::default();
        for e in &entries {
            state.users.entry(e.user_id).or_default().add(e, now_ms);
            state.total.add(e, now_ms);
        }
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new().name("usage-journal".into()).spawn(move || write_loop(path, rx))?;
        Ok(Self { state: Arc::new(Mutex::new(state)), journal: Some(tx), writer: Some(writer), database: None, sync: None, recorded: None })
    }

    /// Counts one billed turn and hands its line to the journal writer.
    pub fn record(&self, entry: Entry, now_ms: u64) {
        {
            let mut state = self.state.lock().unwrap();
            // Now and then forget users who used nothing this month, so the map does not keep
            // every user ever seen.
            if state.users.len() >= 4096 && state.users.len().is_power_of_two() {
                state.users.retain(|_, c| {
                    c.roll(now_ms);
                    c.usage.month.turns > 0
                });
            }
            state.users.entry(entry.user_id).or_default().add(&entry, now_ms);
            state.total.add(&entry, now_ms);
            if let Some(unflushed) = &mut state.unflushed {
                unflushed.push(entry.clone());
            }
        }
        if let Some(recorded) = &self.recorded {
            recorded.notify_one();
        }
        if let Some(tx) = &self.journal {
            let line = serde_json::to_string(&entry).unwrap_or_default();
            let _ = tx.send(Job::Line(line));
        }
    }

    pub fn usage_of(&self, user_id: i64, now_ms: u64) -> Usage {
        let mut state = self.state.lock().unwrap();
        match state.users.get_mut(&user_id) {
            Some(c) => {
                c.roll(now_ms);
                c.usage
            }
            None => Usage::default(),
        }
    }

    pub fn total(&self, now_ms: u64) -> Usage {
        let mut state = self.state.lock().unwrap();
        state.total.roll(now_ms);
        state.total.usage
    }

    /// The `n` users with the most tokens this month, heaviest first.
    pub fn top(&self, n: usize, now_ms: u64) -> Vec<(i64, Totals)> {
        let mut state = self.state.lock().unwrap();
        let mut all: Vec<(i64, Totals)> = state
            .users
            .iter_mut()
            .map(|(id, c)| {
                c.roll(now_ms);
                (*id, c.usage.month)
            })
            .filter(|(_, t)| t.turns > 0)
            .collect();
        all.sort_by(|a, b| b.1.tokens().cmp(&a.1.tokens()).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Waits until every line recorded so far is written and fsynced.
    pub fn sync(&self) {
        if let Some(tx) = &self.journal {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(Job::Sync(done_tx)).is_ok() {
                if let Some(writer) = &self.writer {
                    writer.thread().unpark();
                }
                let _ = done_rx.recv();
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some(pg) = self.database.take() {
            super::shared::flush_on_drop(pg, &self.state);
        }
        // Closing the channel lets the writer drain and exit.
        self.journal.take();
        if let Some(w) = self.writer.take() {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

/// How long usage lines gather before one write and sync covers them all.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

fn write_loop(path: PathBuf, rx: mpsc::Receiver<Job>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut waiting: Vec<mpsc::Sender<()>> = Vec::new();
    let mut failing = false;
    // Kept open between groups; reopened after a failed write (the file may have been replaced).
    let mut file: Option<std::fs::File> = None;
    loop {
        // Block for one job, then take whatever else is queued: one write and one fsync per group.
        let first = if pending.is_empty() {
            match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            }
        };
        let mut closed = false;
        let take = |job: Job, pending: &mut Vec<u8>, waiting: &mut Vec<mpsc::Sender<()>>| match job {
            Job::Line(line) => {
                pending.extend_from_slice(line.as_bytes());
                pending.push(b'\n');
            }
            Job::Sync(done) => waiting.push(done),
        };
        let gathering = std::time::Instant::now();
        if let Some(job) = first {
            take(job, &mut pending, &mut waiting);
        }
        // Lines gather for a moment before the sync: nothing waits on them (a turn's usage is
        // counted in memory), and under load one sync then covers a hundred turns instead of
        // one or two. A line does not wake this thread while it gathers (a blocking receive would
        // be woken by every one: a thread wake per turn); a `sync` call and the drop unpark it,
        // so a `sync` is served at once.
        loop {
            match rx.try_recv() {
                Ok(job) => {
                    take(job, &mut pending, &mut waiting);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let left = GATHER.saturating_sub(gathering.elapsed());
            if !waiting.is_empty() || pending.is_empty() || left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
        if !pending.is_empty() {
            match append(&mut file, &path, &pending) {
                Ok(()) => {
                    if failing {
                        tracing::info!(path = %path.display(), "usage journal writable again");
                        failing = false;
                    }
                    pending.clear();
                }
                Err(err) => {
                    // Kept in memory and tried again: counters stay right meanwhile. Past the cap the
                    // oldest lines go (the counters in memory still have them until a restart).
                    if !failing {
                        tracing::error!(path = %path.display(), %err, "cannot write the usage journal; will retry");
                        failing = true;
                    }
                    if pending.len() > MAX_PENDING_BYTES {
                        let cut = pending.len() - MAX_PENDING_BYTES;
                        let cut = pending[cut..].iter().position(|b| *b == b'\n').map_or(pending.len(), |p| cut + p + 1);
                        pending.drain(..cut);
                        tracing::error!(path = %path.display(), dropped_bytes = cut, "usage journal: unwritten lines dropped");
                    }
                }
            }
        }
        if pending.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        if closed {
            if !pending.is_empty() {
                let _ = append(&mut file, &path, &pending);
            }
            break;
        }
    }
}

fn append(file: &mut Option<std::fs::File>, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let f = match file {
        Some(f) => f,
        None => file.insert(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
    };
    let written = f.write_all(bytes).and_then(|()| f.sync_data());
    if written.is_err() {
        *file = None;
    }
    written
}

/// Entries of the current month; and how many older (or unreadable) lines were seen.
fn read_journal(path: &Path, now_ms: u64) -> (Vec<Entry>, usize) {
    let Ok(file) = std::fs::File::open(path) else { return (vec![], 0) };
    let month = month_of(now_ms);
    let (mut kept, mut dropped) = (vec![], 0);
    for line in std::io::BufReader::new(file).split(b'\n') {
        let Ok(line) = line else { break };
        match serde_json::from_slice::<Entry>(&line) {
            Ok(e) if month_of(e.t_unix_ms) == month => kept.push(e),
            Ok(_) => dropped += 1,
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => {
                tracing::warn!(path = %path.display(), "usage journal: skipping an unreadable line");
                dropped += 1;
            }
        }
    }
    (kept, dropped)
}

fn rewrite(path: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut body = String::new();
    for e in entries {
        body.push_str(&serde_json::to_string(e)?);
        body.push('\n');
    }
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(result?)
}

/// (year, month) of a Unix time in milliseconds, UTC.
pub fn month_of(unix_ms: u64) -> (i64, u32) {
    let (y, m, _) = civil_from_days((unix_ms / DAY_MS) as i64);
    (y, m as u32)
}

/// When the current day or month ends, in Unix milliseconds (UTC).
pub fn period_end_ms(period: Period, now_ms: u64) -> u64 {
    match period {
        Period::Day => (now_ms / DAY_MS + 1) * DAY_MS,
        Period::Month => {
            let (y, m) = month_of(now_ms);
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, i64::from(m), 1) as u64 * DAY_MS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_160_600_000 + 14 * DAY_MS; // 2026-12-15 21:30 UTC

    fn entry(user_id: i64, t: u64, input: u64) -> Entry {
        Entry {
            t_unix_ms: t,
            user_id,
            backend: "responses".into(),
            model: "gpt-4.1-mini".into(),
            tokens: TokenCounts { input, output: 10, ..Default::default() },
            micro_usd: 5,
        }
    }

    #[test]
    fn calendar_math() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(month_of(NOW), (2026, 12));
        assert_eq!(days_from_civil(2026, 12, 15), (NOW / DAY_MS) as i64);
        assert_eq!(period_end_ms(Period::Month, NOW), days_from_civil(2027, 1, 1) as u64 * DAY_MS);
    }

    #[test]
    fn counters_survive_a_reopen_and_past_months_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        {
            let ledger = Ledger::open(path.clone(), NOW).unwrap();
            ledger.record(entry(1, NOW - 40 * DAY_MS, 100), NOW); // November
            ledger.record(entry(1, NOW - DAY_MS, 100), NOW); // yesterday
            ledger.record(entry(1, NOW, 100), NOW);
            ledger.record(entry(2, NOW, 1000), NOW);
            ledger.sync();
        }
        // A torn last line (a full disk, a kill mid-write) is skipped.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"t_unix_ms\":17").unwrap();
        let ledger = Ledger::open(path.clone(), NOW).unwrap();
        let u = ledger.usage_of(1, NOW);
        assert_eq!((u.day.turns, u.month.turns), (1, 2));
        assert_eq!(u.month.tokens(), 220);
        assert_eq!(ledger.total(NOW).day.tokens(), 110 + 1010);
        assert_eq!(ledger.top(1, NOW)[0].0, 2);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 3, "the November entry and the torn line are gone from the file");
        // The next day the day counters start again.
        assert_eq!(ledger.usage_of(1, NOW + DAY_MS).day, Totals::default());
        assert_eq!(ledger.usage_of(1, NOW + DAY_MS).month.turns, 2);
    }

    #[test]
    fn parallel_records_are_exact() {
        let ledger = std::sync::Arc::new(Ledger::in_memory());
        let threads: Vec<_> = (0..20)
            .map(|u| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        ledger.record(entry(u, NOW, 3), NOW);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ledger.total(NOW).month.turns, 20 * 500);
        assert_eq!(ledger.total(NOW).month.tokens(), 20 * 500 * 13);
        assert_eq!(ledger.usage_of(7, NOW).day.micro_usd, 500 * 5);
    }
}
