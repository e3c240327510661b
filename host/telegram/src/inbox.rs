//! A durable inbox: a question Telegram delivered is answered exactly once, even across a
//! SIGKILL or a stop mid-turn.
//!
//! Telegram forgets an update once a later `getUpdates` names a higher offset. The poller makes
//! every fetched message durable here before it asks for the next batch, the dispatcher marks it
//! done when the turn has ended (answered or apologised for), and at start every update not done
//! is replayed, oldest first, before polling resumes past the highest id (so Telegram does not
//! deliver it a second time).
//!
//! A webhook answers Telegram 200 only after [`Inbox::store`] returned. Telegram redelivers an update
//! it got no 2xx for (a 200 lost in a crash, a slow answer), so the inbox also remembers which ids
//! it has answered, for [`DONE_KEPT`] (Telegram keeps an update about 24 hours): a second delivery
//! of the same update is a no-op, in flight or answered.
//!
//! On disk the inbox is one append-only file, `<dir>/log`, of lines
//!
//! ```text
//! +<update_id> <the update as JSON>      a question taken
//! -<update_id> <unix seconds>            its turn ended
//! ```
//!
//! One `write` and one `fdatasync` make a whole `getUpdates` batch durable, and concurrent webhook
//! stores share one `fdatasync` (group commit). Ending a turn is one unsynced `write`: it becomes
//! durable with the next store's sync, and a crash before that replays the question, as a crash
//! between the answer and the mark always could. The log was one file per question with a rename
//! into `done/` at the end; creating, syncing and renaming those files was a third of the bot's CPU
//! per turn (see `bench/NOTES.md`). When most of the log is dead the log is rewritten (to a
//! temp file, synced, renamed over it). A torn last line (a crash mid-write) was never confirmed to
//! Telegram and is dropped; an unreadable line elsewhere is copied to `log.corrupt` and skipped.
//! The layout before the log (`<id>.json` files and `done/<id>` markers) is read once and moved in.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use teloxide::types::{Update, UpdateKind};
use tracing::{info, warn};

/// How long an answered update's id is remembered: longer than Telegram retries a delivery.
pub const DONE_KEPT: Duration = Duration::from_secs(48 * 3600);

/// The log is rewritten when it is larger than this and most of it is dead.
const COMPACT_AFTER_BYTES: u64 = 1 << 20;
/// About what one answered id takes in a rewritten log (`-<id> <unix seconds>\n`).
const DONE_LINE_BYTES: u64 = 24;

#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    log: Mutex<Log>,
    /// How much of which log is written: (generation, bytes). A rewrite starts a new generation.
    /// Locked briefly, after `log` or `synced`, never before them.
    written: Mutex<Position>,
    /// How much of which log is known to be on disk; a store waits until it covers its own line.
    synced: Mutex<Position>,
}

/// A place in the log: its generation (one per rewrite) and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    generation: u64,
    offset: u64,
}

#[derive(Debug)]
struct Log {
    file: Arc<File>,
    generation: u64,
    /// Bytes written (not necessarily synced).
    len: u64,
    /// Bytes the live entries would take in a rewritten log.
    live_bytes: u64,
    /// Rewrite when larger than this (and mostly dead).
    compact_after: u64,
    /// Questions taken and not done: the line as written (for a rewrite) and where it ends (a
    /// second delivery waits until that much is synced before it is told "duplicate").
    pending: HashMap<u32, (Vec<u8>, Position)>,
    /// Answered ids, with the unix second their turn ended.
    done: HashMap<u32, u64>,
}

/// What [`Inbox::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Durable now: the caller delivers it to the dispatcher.
    New,
    /// Already in the inbox or already answered: the caller drops it.
    Duplicate,
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Appends lines that cannot be used to `<dir>/log.corrupt`, for whoever looks into it.
fn set_aside(dir: &Path, lines: &[&[u8]]) -> std::io::Result<()> {
    let mut aside = OpenOptions::new().create(true).append(true).open(dir.join("log.corrupt"))?;
    for line in lines {
        aside.write_all(line)?;
        aside.write_all(b"\n")?;
    }
    aside.sync_all()
}

/// One line of the log, parsed.
enum Line<'a> {
    Taken(u32, &'a [u8]),
    Done(u32, u64),
}

fn parse_line(line: &[u8]) -> Option<Line<'_>> {
    let (&sign, rest) = line.split_first()?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let id: u32 = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    let tail = &rest[space + 1..];
    match sign {
        b'+' => Some(Line::Taken(id, tail)),
        b'-' => Some(Line::Done(id, std::str::from_utf8(tail).ok()?.parse().ok()?)),
        _ => None,
    }
}

impl Inbox {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        Self::open_compacting_after(dir.into(), COMPACT_AFTER_BYTES)
    }

    fn open_compacting_after(dir: PathBuf, compact_after: u64) -> std::io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let path = dir.join("log");
        let mut pending: HashMap<u32, (Vec<u8>, Position)> = HashMap::new();
        let mut done: HashMap<u32, u64> = HashMap::new();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(err) => return Err(err),
        };
        // Only lines ending in a newline were ever synced whole; a torn tail was never confirmed.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut corrupt = vec![];
        for line in bytes[..whole].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some(Line::Taken(id, json)) => {
                    if !done.contains_key(&id) {
                        pending.insert(id, (json.to_vec(), Position::default()));
                    }
                }
                Some(Line::Done(id, at)) => {
                    pending.remove(&id);
                    done.insert(id, at);
                }
                None => corrupt.push(line),
            }
        }
        if !corrupt.is_empty() {
            warn!(lines = corrupt.len(), "unreadable lines in the inbox log: copied to log.corrupt and skipped");
            set_aside(&dir, &corrupt)?;
        }
        let legacy = Self::read_legacy(&dir, &mut pending, &mut done);
        // Start from a clean log: torn tail and corrupt lines gone, old answered ids forgotten.
        let now = unix_secs();
        done.retain(|_, at| now.saturating_sub(*at) <= DONE_KEPT.as_secs());
        let file = Self::rewrite(&dir, &pending, &done)?;
        if let Some(legacy) = legacy {
            legacy.remove();
        }
        let len = file.metadata()?.len();
        let live_bytes = live_bytes(&pending, &done);
        let log = Log { file: Arc::new(file), generation: 0, len, live_bytes, compact_after, pending, done };
        let at = Position { generation: 0, offset: len };
        Ok(Self { dir, log: Mutex::new(log), written: Mutex::new(at), synced: Mutex::new(at) })
    }

    /// The layout before the log: `<id>.json` per question, `done/<id>` per answered id.
    fn read_legacy(dir: &Path, pending: &mut HashMap<u32, (Vec<u8>, Position)>, done: &mut HashMap<u32, u64>) -> Option<Legacy> {
        let mut legacy = Legacy { files: vec![], done_dir: None };
        if let Ok(entries) = fs::read_dir(dir.join("done")) {
            for entry in entries.filter_map(Result::ok) {
                let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                let at = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
                pending.remove(&id);
                done.insert(id, at);
            }
            legacy.done_dir = Some(dir.join("done"));
        }
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<u32>().ok()) else { continue };
                let path = entry.path();
                match fs::read(&path).ok().filter(|b| serde_json::from_slice::<Update>(b).is_ok_and(|u| u.id.0 == id)) {
                    Some(json) if !done.contains_key(&id) => {
                        // Compact, so it is one line.
                        let json = serde_json::from_slice::<serde_json::Value>(&json).and_then(|v| serde_json::to_vec(&v)).unwrap_or(json);
                        pending.insert(id, (json, Position::default()));
                        legacy.files.push(path);
                    }
                    Some(_) => legacy.files.push(path),
                    None => {
                        warn!(file = %path.display(), "unreadable update in the inbox: moved aside");
                        let _ = fs::rename(&path, path.with_extension("corrupt"));
                    }
                }
            }
        }
        (legacy.done_dir.is_some() || !legacy.files.is_empty()).then_some(legacy)
    }

    /// Writes a log of exactly these entries in place of the current one, durably, and returns it
    /// open for appending.
    fn rewrite(dir: &Path, pending: &HashMap<u32, (Vec<u8>, Position)>, done: &HashMap<u32, u64>) -> std::io::Result<File> {
        let mut out = Vec::with_capacity(pending.values().map(|(j, _)| j.len() + 16).sum::<usize>() + done.len() * 24);
        let mut ids: Vec<&u32> = pending.keys().collect();
        ids.sort();
        for id in ids {
            out.extend_from_slice(format!("+{id} ").as_bytes());
            out.extend_from_slice(&pending[id].0);
            out.push(b'\n');
        }
        for (id, at) in done {
            out.extend_from_slice(format!("-{id} {at}\n").as_bytes());
        }
        let tmp = dir.join("log.tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&out)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, dir.join("log"))?;
        sync_dir(dir);
        OpenOptions::new().append(true).open(dir.join("log"))
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an update must go through the inbox: messages (the questions) do; other kinds
    /// carry nothing to answer.
    pub fn keeps(update: &Update) -> bool {
        matches!(update.kind, UpdateKind::Message(_))
    }

    /// Makes an update durable, unless the same update_id is already in the inbox or was answered.
    /// Safe against a concurrent store of the same id: the second is told [`Stored::Duplicate`]
    /// only once the first is on disk.
    pub fn store(&self, update: &Update) -> std::io::Result<Stored> {
        self.store_batch(&[update]).pop().expect("one result per update")
    }

    /// [`store`](Self::store) for every update of one `getUpdates` answer: one write and one
    /// fdatasync for all of them. When it returns, every update it says is [`Stored::New`] (or a
    /// duplicate of one in flight) is durable. One result per update, in order.
    pub fn store_batch(&self, updates: &[&Update]) -> Vec<std::io::Result<Stored>> {
        let mut results: Vec<std::io::Result<Stored>> = Vec::with_capacity(updates.len());
        let mut taken = vec![];
        let (end, file) = {
            let mut log = self.lock();
            let mut out = Vec::new();
            let mut wait_for = Position::default();
            for update in updates {
                let id = update.id.0;
                if log.done.contains_key(&id) {
                    results.push(Ok(Stored::Duplicate));
                    continue;
                }
                if let Some(&(_, ends)) = log.pending.get(&id) {
                    // A later generation was synced whole by its rewrite: waiting on this log covers it.
                    if ends.generation == log.generation {
                        wait_for.offset = wait_for.offset.max(ends.offset);
                    }
                    results.push(Ok(Stored::Duplicate));
                    continue;
                }
                let json = match serde_json::to_vec(update) {
                    Ok(json) => json,
                    Err(err) => {
                        results.push(Err(std::io::Error::other(err)));
                        continue;
                    }
                };
                out.extend_from_slice(format!("+{id} ").as_bytes());
                out.extend_from_slice(&json);
                out.push(b'\n');
                let ends = Position { generation: log.generation, offset: log.len + out.len() as u64 };
                log.live_bytes += json.len() as u64 + 16;
                log.pending.insert(id, (json, ends));
                taken.push((results.len(), id));
                results.push(Ok(Stored::New));
                wait_for.offset = ends.offset;
            }
            if !out.is_empty() {
                let file = log.file.clone();
                if let Err(err) = (&*file).write_all(&out) {
                    // Not written whole: the next write starts on a new line, and nothing of this
                    // batch counts as taken (Telegram delivers it again).
                    let _ = (&*file).write_all(b"\n");
                    for &(i, id) in &taken {
                        log.forget(id);
                        results[i] = Err(std::io::Error::new(err.kind(), err.to_string()));
                    }
                    log.len = file.metadata().map_or(log.len, |m| m.len());
                    self.note_written(&log);
                    return results;
                }
                log.len += out.len() as u64;
                self.note_written(&log);
            }
            wait_for.generation = log.generation;
            (wait_for, log.file.clone())
        };
        if let Err(err) = self.sync_to(end, &file) {
            let mut log = self.lock();
            for (i, r) in results.iter_mut().enumerate() {
                if r.is_ok() {
                    *r = Err(std::io::Error::new(err.kind(), err.to_string()));
                }
                if let Some(&(_, id)) = taken.iter().find(|(j, _)| *j == i) {
                    log.forget(id);
                }
            }
        }
        results
    }

    /// Waits until the log is on disk up to `end`: one fdatasync covers every store written
    /// before it started (group commit).
    fn sync_to(&self, end: Position, file: &File) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if synced.generation > end.generation || (synced.generation == end.generation && synced.offset >= end.offset) {
            return Ok(());
        }
        let covers = *self.written.lock().unwrap_or_else(|e| e.into_inner());
        if covers.generation != end.generation {
            // Rewritten meanwhile: the rewrite synced everything the old log held.
            return Ok(());
        }
        file.sync_data()?;
        *synced = covers;
        Ok(())
    }

    fn note_written(&self, log: &Log) {
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = Position { generation: log.generation, offset: log.len };
    }

    /// The update's turn has ended: forget it, remembering its id against redeliveries.
    pub fn done(&self, id: u32) {
        let mut log = self.lock();
        log.forget(id);
        let at = unix_secs();
        if log.done.insert(id, at).is_none() {
            log.live_bytes += DONE_LINE_BYTES;
        }
        let line = format!("-{id} {at}\n");
        match (&*log.file).write_all(line.as_bytes()) {
            Ok(()) => {
                log.len += line.len() as u64;
                self.note_written(&log);
            }
            Err(err) => {
                warn!(update_id = id, %err, "could not mark an update answered; a restart would answer it again");
                let _ = (&*log.file).write_all(b"\n");
                log.len = log.file.metadata().map_or(log.len, |m| m.len());
                self.note_written(&log);
            }
        }
        if log.len > log.compact_after && log.len > 2 * log.live_bytes {
            self.compact(&mut log);
        }
    }

    /// Rewrites the log with only what is live; old answered ids are forgotten.
    fn compact(&self, log: &mut Log) {
        let now = unix_secs();
        log.done.retain(|_, at| now.saturating_sub(*at) <= DONE_KEPT.as_secs());
        // Everything of the old log must be durable before the new one replaces it.
        let _ = log.file.sync_data();
        match Self::rewrite(&self.dir, &log.pending, &log.done) {
            Ok(file) => {
                let len = file.metadata().map_or(0, |m| m.len());
                log.file = Arc::new(file);
                log.generation += 1;
                log.len = len;
                log.live_bytes = live_bytes(&log.pending, &log.done);
                let at = Position { generation: log.generation, offset: len };
                *self.synced.lock().unwrap_or_else(|e| e.into_inner()) = at;
                self.note_written(log);
            }
            Err(err) => warn!(%err, "could not rewrite the inbox log; it keeps growing until the next try"),
        }
    }

    /// Whether an update_id was answered (within [`DONE_KEPT`]).
    pub fn answered(&self, id: u32) -> bool {
        self.lock().done.contains_key(&id)
    }

    /// Updates taken and not done (left by an earlier run, or in flight), oldest first. One that
    /// does not parse is copied to `log.corrupt` and forgotten.
    pub fn pending(&self) -> Vec<Update> {
        let mut log = self.lock();
        let mut ids: Vec<u32> = log.pending.keys().copied().collect();
        ids.sort();
        let mut updates = vec![];
        for id in ids {
            match serde_json::from_slice::<Update>(&log.pending[&id].0) {
                Ok(update) if update.id.0 == id => updates.push(update),
                _ => {
                    warn!(update_id = id, "unreadable update in the inbox: moved aside");
                    let mut line = format!("+{id} ").into_bytes();
                    line.extend_from_slice(&log.pending[&id].0);
                    if set_aside(&self.dir, &[&line]).is_ok() {
                        // Ended in the log too, so the next start does not set it aside again.
                        log.forget(id);
                        let ended = format!("-{id} {}\n", unix_secs());
                        if (&*log.file).write_all(ended.as_bytes()).is_ok() {
                            log.len += ended.len() as u64;
                            self.note_written(&log);
                        }
                    }
                }
            }
        }
        drop(log);
        if !updates.is_empty() {
            info!(count = updates.len(), "replaying updates a previous run did not finish");
        }
        updates
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Log {
    /// Drops a taken question from memory (done, or its store failed).
    fn forget(&mut self, id: u32) {
        if let Some((json, _)) = self.pending.remove(&id) {
            self.live_bytes = self.live_bytes.saturating_sub(json.len() as u64 + 16);
        }
    }
}

fn live_bytes(pending: &HashMap<u32, (Vec<u8>, Position)>, done: &HashMap<u32, u64>) -> u64 {
    pending.values().map(|(json, _)| json.len() as u64 + 16).sum::<u64>() + done.len() as u64 * DONE_LINE_BYTES
}

/// The files of the layout before the log, removed once the log holds what they said.
struct Legacy {
    files: Vec<PathBuf>,
    done_dir: Option<PathBuf>,
}

impl Legacy {
    fn remove(self) {
        for file in self.files {
            let _ = fs::remove_file(file);
        }
        if let Some(dir) = self.done_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: u32) -> Update {
        serde_json::from_str(&format!(
            r#"{{"update_id":{id},"message":{{"message_id":{id},"date":1700000000,"chat":{{"id":5,"type":"private","first_name":"U"}},"from":{{"id":5,"is_bot":false,"first_name":"U"}},"text":"q{id}"}}}}"#
        ))
        .unwrap()
    }

    fn ids(inbox: &Inbox) -> Vec<u32> {
        inbox.pending().iter().map(|u| u.id.0).collect()
    }

    #[test]
    fn stored_updates_come_back_in_order_until_done() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        for id in [12, 3, 7] {
            assert_eq!(inbox.store(&update(id)).unwrap(), Stored::New);
        }
        assert_eq!(inbox.store(&update(12)).unwrap(), Stored::Duplicate, "a second delivery while it waits");
        inbox.done(7);
        drop(inbox);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(ids(&again), [3, 12]);
        assert_eq!(again.pending()[0], update(3), "the update as it was delivered");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_is_one_group_commit_with_duplicates_resolved_inside_it() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        inbox.store(&update(1)).unwrap();
        let (a, b, c) = (update(1), update(2), update(2));
        let results: Vec<Stored> = inbox.store_batch(&[&a, &b, &c]).into_iter().map(Result::unwrap).collect();
        assert_eq!(results, [Stored::Duplicate, Stored::New, Stored::Duplicate]);
        drop(inbox);
        assert_eq!(ids(&Inbox::open(&dir).unwrap()), [1, 2]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_answered_update_is_not_taken_again_after_a_restart() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        inbox.store(&update(5)).unwrap();
        inbox.done(5);
        drop(inbox);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(again.store(&update(5)).unwrap(), Stored::Duplicate);
        assert!(again.answered(5));
        assert!(again.pending().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_a_corrupt_line_set_aside() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        inbox.store(&update(1)).unwrap();
        inbox.store(&update(2)).unwrap();
        drop(inbox);
        let mut log = OpenOptions::new().append(true).open(dir.join("log")).unwrap();
        // A line of garbage, then a crash in the middle of writing update 3.
        log.write_all(b"garbage in the middle\n+3 {\"update_id\":3,\"mess").unwrap();
        drop(log);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(ids(&again), [1, 2]);
        assert_eq!(fs::read_to_string(dir.join("log.corrupt")).unwrap(), "garbage in the middle\n");
        // Update 3 was never confirmed: its redelivery is new, and lands on a line of its own.
        assert_eq!(again.store(&update(3)).unwrap(), Stored::New);
        drop(again);
        assert_eq!(ids(&Inbox::open(&dir).unwrap()), [1, 2, 3]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_update_that_does_not_parse_is_set_aside_once() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        inbox.store(&update(1)).unwrap();
        drop(inbox);
        let mut log = OpenOptions::new().append(true).open(dir.join("log")).unwrap();
        log.write_all(b"+2 {not json}\n").unwrap();
        drop(log);
        let inbox = Inbox::open(&dir).unwrap();
        assert_eq!(ids(&inbox), [1]);
        drop(inbox);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(ids(&again), [1]);
        let aside = fs::read_to_string(dir.join("log.corrupt")).unwrap();
        assert_eq!(aside.lines().count(), 1, "set aside once, not at every start: {aside}");
        assert!(aside.starts_with("+2 "));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_log_is_rewritten_when_mostly_dead_and_keeps_what_is_live() {
        let dir = tempfile_dir();
        let inbox = Inbox::open_compacting_after(dir.clone(), 16 << 10).unwrap();
        inbox.store(&update(1)).unwrap();
        let mut largest = 0;
        for id in 2..500 {
            inbox.store(&update(id)).unwrap();
            inbox.done(id);
            largest = largest.max(fs::metadata(dir.join("log")).unwrap().len());
        }
        // 500 questions take ~150 KiB of log; rewritten, the answered ones are short lines.
        assert!(largest < 40 << 10, "the log grew to {largest} bytes");
        drop(inbox);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(ids(&again), [1]);
        assert!(again.answered(2) && again.answered(499));
        assert!(!again.answered(500));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_stores_of_one_id_take_it_once() {
        let dir = tempfile_dir();
        let inbox = Arc::new(Inbox::open(&dir).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let inbox = inbox.clone();
                std::thread::spawn(move || (0..50).map(|id| inbox.store(&update(id)).unwrap()).filter(|s| *s == Stored::New).count())
            })
            .collect();
        let new: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(new, 50);
        drop(inbox);
        assert_eq!(ids(&Inbox::open(&dir).unwrap()), (0..50).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_layout_before_the_log_is_moved_in() {
        let dir = tempfile_dir();
        fs::create_dir_all(dir.join("done")).unwrap();
        fs::write(dir.join("4.json"), serde_json::to_vec_pretty(&update(4)).unwrap()).unwrap();
        fs::write(dir.join("6.json"), serde_json::to_vec(&update(6)).unwrap()).unwrap();
        fs::write(dir.join("20.json"), "{torn").unwrap();
        // Answered before a crash that left its file (the old layout's window).
        fs::File::create(dir.join("done").join("6")).unwrap();
        fs::File::create(dir.join("done").join("3")).unwrap();
        let inbox = Inbox::open(&dir).unwrap();
        assert_eq!(ids(&inbox), [4]);
        assert!(inbox.answered(3) && inbox.answered(6));
        assert!(!dir.join("4.json").exists() && !dir.join("done").exists());
        assert!(dir.join("20.corrupt").exists());
        drop(inbox);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(again.pending(), [update(4)]);
        assert_eq!(again.store(&update(3)).unwrap(), Stored::Duplicate);
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swapbot-inbox-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }
}
