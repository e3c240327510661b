//! The history's write-ahead journal: an exchange is durable once its line in the journal is
//! synced, and one `fdatasync` of the journal covers every exchange committed meanwhile (a
//! group commit). Each user's own file is appended right after, without a sync.
//!
//! The journal is rotated every [`ROTATE_RECORDS`] records or [`ROTATE_AFTER`]; a checkpoint
//! thread then syncs the user files the old journal touched, once each, and deletes it. At open,
//! the journals left by a crash are replayed into the user files: a record is appended when its
//! file has exactly the lines it had before the record, and skipped when the file is past them.
//!
//! A batch whose write or sync fails is cut back out of the journal before its callers hear of
//! the failure. Should that fail too, replay ignores what such a batch leaves once the file's
//! next record shows it: a record that a later one at the same line count replaces, and a
//! `cleared` barrier followed by an exchange that did not start afresh. Left last before a
//! crash, such a record is replayed (its answer was shown; only saving it was reported failed),
//! and such a barrier clears the file (what its user asked for).
//!
//! Journal lines (`journal.<seq>.log`, JSON):
//! - `{"f":"<file name>","n":<lines before>,"q":"…","a":"…"}`: an exchange;
//! - `{"f":…,"barrier":"synced"}`: every earlier record of the file is in the file and synced
//!   (written before a compaction rewrites the file, so older records are not replayed into it);
//! - `{"f":…,"barrier":"cleared"}`: the file was removed (its history forgotten).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Records per journal before it is rotated and checkpointed (~16 MiB of short exchanges).
/// A checkpoint syncs every user file its journal touched, so a longer journal means fewer
/// syncs per turn when many users talk: at 4096 records (under two seconds at 2500 turns a
/// second), 1000 users cost a quarter of a sync per turn in checkpoints.
const ROTATE_RECORDS: usize = 32768;
/// A journal with records is rotated at least this often, so a crash replays at most this much.
const ROTATE_AFTER: Duration = Duration::from_secs(30);
/// The pause between two file syncs of a large checkpoint.
const CHECKPOINT_PACE: Duration = Duration::from_millis(1);

#[derive(Serialize, Deserialize)]
struct Record {
    f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    barrier: Option<Barrier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Barrier {
    /// The file holds every earlier record, synced.
    Synced,
    /// The file is removed.
    Cleared,
}

enum Job {
    /// Append `bytes` to `file` once `line` is durable. A oneshot, so an async caller is woken
    /// by the writer directly.
    Append { file: PathBuf, line: Vec<u8>, bytes: Vec<u8>, reply: tokio::sync::oneshot::Sender<io::Result<()>> },
    /// Make `line` durable; with [`Barrier::Cleared`], then remove `file`.
    Barrier { file: PathBuf, line: Vec<u8>, barrier: Barrier, reply: mpsc::Sender<io::Result<()>> },
}

pub struct Journal {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// Replays what a crash left in `dir`'s journals into the user files (`render` turns a
    /// record's question and answer into the lines its file holds), then starts a new journal.
    pub fn open(dir: &Path, render: fn(&str, &str) -> Vec<u8>) -> io::Result<Journal> {
        Self::open_with(dir, render, Arc::new(Faults::default()))
    }

    fn open_with(dir: &Path, render: fn(&str, &str) -> Vec<u8>, faults: Arc<Faults>) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let seq = replay(dir, render)?;
        let path = journal_path(dir, seq + 1);
        let file = open_to_append(&path)?;
        let (tx, rx) = mpsc::channel();
        let dir = dir.to_owned();
        let writer = std::thread::Builder::new()
            .name("history-journal".into())
            .spawn(move || write_loop(dir, seq + 1, file, rx, &faults))?;
        Ok(Journal { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) })
    }

    /// Appends `bytes` (the rendered exchange, with a leading newline if the file's tail is
    /// torn) to `file`, after the exchange is durable in the journal. Returns when both are done.
    /// Not from an async context (it blocks); see [`Journal::submit`].
    pub fn append(&self, file: &Path, lines_before: usize, question: &str, answer: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.submit(file, lines_before, question, answer, bytes)?.blocking_recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues what [`Journal::append`] does; the receiver answers when both are done. Records
    /// are written in the order they are submitted.
    pub fn submit(
        &self,
        file: &Path,
        lines_before: usize,
        question: &str,
        answer: &str,
        bytes: Vec<u8>,
    ) -> io::Result<tokio::sync::oneshot::Receiver<io::Result<()>>> {
        let record = Record {
            f: file_name(file),
            n: Some(lines_before),
            q: Some(question.to_owned()),
            a: Some(answer.to_owned()),
            barrier: None,
        };
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(Job::Append { file: file.to_owned(), line: line_of(&record), bytes, reply })?;
        Ok(done)
    }

    /// Makes `barrier` durable for `file` (and with [`Barrier::Cleared`] removes the file).
    pub fn barrier(&self, file: &Path, barrier: Barrier) -> io::Result<()> {
        let record = Record { f: file_name(file), n: None, q: None, a: None, barrier: Some(barrier) };
        let (reply, done) = mpsc::channel();
        self.send(Job::Barrier { file: file.to_owned(), line: line_of(&record), barrier, reply })?;
        done.recv().unwrap_or_else(|_| Err(stopped()))
    }

    fn send(&self, job: Job) -> io::Result<()> {
        match self.tx.lock().unwrap().as_ref() {
            Some(tx) => tx.send(job).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }
}

impl Drop for Journal {
    /// The writer checkpoints what it has and exits.
    fn drop(&mut self) {
        self.tx.lock().unwrap().take();
        if let Some(writer) = self.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
    }
}

/// Failures a test makes the writer meet; in the product, none (every check is a constant `None`).
#[cfg(not(test))]
#[derive(Default)]
struct Faults;

#[cfg(not(test))]
impl Faults {
    #[inline(always)]
    fn write(&self, _: &mut File, _: &[u8]) -> Option<io::Error> {
        None
    }
    #[inline(always)]
    fn sync(&self) -> Option<io::Error> {
        None
    }
    #[inline(always)]
    fn undo(&self) -> Option<io::Error> {
        None
    }
}

#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// The next batch: write this many of its bytes, then fail as a full disk does.
    cut_next_write_at: Mutex<Option<usize>>,
    /// The next sync fails (the bytes are written).
    fail_next_sync: std::sync::atomic::AtomicBool,
    /// Undoing a failed write fails too.
    fail_undo: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Faults {
    fn write(&self, file: &mut File, buf: &[u8]) -> Option<io::Error> {
        let at = self.cut_next_write_at.lock().unwrap().take()?;
        file.write_all(&buf[..at.min(buf.len())]).ok()?;
        Some(io::Error::from_raw_os_error(28)) // ENOSPC
    }
    fn sync(&self) -> Option<io::Error> {
        self.fail_next_sync.swap(false, std::sync::atomic::Ordering::Relaxed).then(|| io::Error::from_raw_os_error(5)) // EIO
    }
    fn undo(&self) -> Option<io::Error> {
        self.fail_undo.load(std::sync::atomic::Ordering::Relaxed).then(|| io::Error::from_raw_os_error(5))
    }
}

fn stopped() -> io::Error {
    io::Error::other("the history journal is stopped")
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn line_of(record: &Record) -> Vec<u8> {
    let mut line = serde_json::to_vec(record).unwrap_or_default();
    line.push(b'\n');
    line
}

fn journal_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("journal.{seq}.log"))
}

/// The journals in `dir`, oldest first.
fn journals(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = vec![];
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_prefix("journal.")?.strip_suffix(".log")?.parse().ok()) else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn open_to_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn append_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    open_to_append(path)?.write_all(bytes)
}

/// The user files the writer appends to, kept open so that a user's next exchange is a
/// `write` and an `fstat` instead of an `open`, a `write` and a `close` (see `bench/NOTES.md`).
/// A descriptor must name the file its path names now. The store's own renames and removals
/// go through barriers, and a barrier closes its file's descriptor (a compaction renames a new
/// file over the path after its `synced` barrier, a clear removes it). Anything else that
/// removes or replaces a file (`swapbot ask` beside the bot compacting the same user, an
/// operator's `rm`) leaves the descriptor's file without a name: the `fstat` before each write
/// sees no link left and the path is opened again, as every append did before this cache.
struct OpenFiles {
    files: HashMap<PathBuf, File>,
    /// At most this many ([`crate::descriptors::history_files_kept`]).
    kept: usize,
}

impl OpenFiles {
    fn new(kept: usize) -> Self {
        Self { files: HashMap::new(), kept: kept.max(1) }
    }

    fn append(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if let Some(file) = self.files.get(path) {
            if !file.metadata().is_ok_and(|m| m.nlink() > 0) {
                self.files.remove(path);
            }
        }
        let file = match self.files.get_mut(path) {
            Some(file) => file,
            None => {
                if self.files.len() >= self.kept {
                    // Half of them at once: a miss past the limit is then amortised O(1), and
                    // no one file is the one closed at every miss.
                    let mut keep = true;
                    self.files.retain(|_, _| {
                        keep = !keep;
                        keep
                    });
                }
                let file = open_to_append(path)?;
                self.files.entry(path.to_owned()).or_insert(file)
            }
        };
        let written = file.write_all(bytes);
        if written.is_err() {
            self.files.remove(path);
        }
        written
    }

    fn close(&mut self, path: &Path) {
        self.files.remove(path);
    }
}

fn sync_file(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_data(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// A user file as replay sees it: the byte offset after each complete line.
fn line_ends(path: &Path) -> io::Result<Vec<u64>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(err) => return Err(err),
    };
    Ok(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i as u64 + 1).collect())
}

/// Replays every journal in `dir` into its user files, syncs them, removes the journals, and
/// returns the last sequence number seen (0 if none).
fn replay(dir: &Path, render: fn(&str, &str) -> Vec<u8>) -> io::Result<u64> {
    let found = journals(dir)?;
    let Some(&(last_seq, _)) = found.last() else { return Ok(0) };
    let mut records: Vec<Record> = vec![];
    for (_, path) in &found {
        for line in BufReader::new(File::open(path)?).split(b'\n') {
            // A torn last line was never acknowledged: it is not replayed.
            if let Ok(record) = serde_json::from_slice::<Record>(&line?) {
                records.push(record);
            }
        }
    }
    // Per file, only what follows its last barrier is replayed; a file cleared last is removed
    // first (an unsynced unlink may not have survived the crash).
    let last_barrier = effective_barriers(&records);
    let superseded = superseded(&records, &last_barrier);
    let mut touched: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut applied, mut skipped) = (0usize, 0usize);
    for (name, (_, barrier)) in &last_barrier {
        if *barrier == Barrier::Cleared {
            match fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            touched.insert((*name).to_owned(), vec![]);
        }
    }
    for (i, r) in records.iter().enumerate() {
        let (Some(n), Some(q), Some(a)) = (r.n, &r.q, &r.a) else { continue };
        if before_last_barrier(&last_barrier, r, i) || superseded.contains(&i) || r.f.contains(['/', '\\']) || r.f.is_empty() {
            continue;
        }
        let path = dir.join(&r.f);
        if !touched.contains_key(&r.f) {
            let ends = line_ends(&path)?;
            touched.insert(r.f.clone(), ends);
        }
        let ends = touched.get_mut(&r.f).expect("inserted above");
        let len_now = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let complete = ends.len();
        let torn = ends.last().copied().unwrap_or(0) < len_now;
        // `n` counted the file's lines as the store does: complete ones plus a torn tail. An
        // applied record made that n + 2 complete lines.
        let (keep, newline_first) = if complete >= n + 2 {
            skipped += 1;
            continue;
        } else if complete >= n {
            // Not applied, or torn part-way: cut back to the lines it followed.
            (if n == 0 { 0 } else { ends[n - 1] }, false)
        } else if complete + 1 == n && torn {
            // It followed a torn line and was not applied: it starts by ending that line.
            (len_now, true)
        } else {
            // The file is short of what the record followed: compacted or replaced after it.
            skipped += 1;
            continue;
        };
        OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(keep)).or_else(|err| {
            if err.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(err) }
        })?;
        let mut bytes = if newline_first { vec![b'\n'] } else { vec![] };
        bytes.extend_from_slice(&render(q, a));
        append_file(&path, &bytes)?;
        ends.truncate(n.min(complete));
        for (j, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                ends.push(keep + j as u64 + 1);
            }
        }
        applied += 1;
    }
    for name in touched.keys() {
        sync_file(&dir.join(name))?;
    }
    sync_dir(dir);
    for (_, path) in &found {
        fs::remove_file(path)?;
    }
    sync_dir(dir);
    if applied > 0 {
        tracing::info!(dir = %dir.display(), applied, already_on_disk = skipped, "history journal: exchanges an unclean stop kept out of the history files are in them now");
    }
    Ok(last_seq)
}

/// Per file, the index of the last barrier that took effect. A write that failed may leave its
/// records in the journal when it could not be undone (see [`undo_failed_write`]); a `cleared`
/// barrier that failed left the file as it was, so the file's next exchange followed its old
/// lines (`n` > 0) instead of an empty file: such a barrier is not one.
fn effective_barriers(records: &[Record]) -> HashMap<&str, (usize, Barrier)> {
    let mut last: HashMap<&str, (usize, Barrier)> = HashMap::new();
    // A `cleared` barrier waiting for its file's next exchange to say whether it took effect,
    // and the barrier it would replace.
    let mut pending: HashMap<&str, (usize, Option<(usize, Barrier)>)> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let f = r.f.as_str();
        match (r.barrier, r.n) {
            (Some(b), _) => {
                let before = match pending.remove(f) {
                    // `cleared` twice with nothing between: the file's next exchange tells for
                    // both (a clear that worked leaves 0 lines, and so does a second one).
                    Some((_, before)) if b == Barrier::Cleared => before,
                    // An earlier `cleared` that nothing followed stands.
                    _ => last.get(f).copied(),
                };
                if b == Barrier::Cleared {
                    pending.insert(f, (i, before));
                }
                last.insert(f, (i, b));
            }
            (None, Some(n)) => {
                if let Some((_, before)) = pending.remove(f) {
                    if n > 0 {
                        match before {
                            Some(b) => last.insert(f, b),
                            None => last.remove(f),
                        };
                    }
                }
            }
            (None, None) => {}
        }
    }
    last
}

/// Whether record `i` comes before its file's last barrier (which it then does not outlive).
fn before_last_barrier(barriers: &HashMap<&str, (usize, Barrier)>, r: &Record, i: usize) -> bool {
    barriers.get(r.f.as_str()).is_some_and(|(at, _)| *at > i)
}

/// Records that a later record of the same file, after its last barrier, replaces: one with the
/// same `n`. A successful append moves its file's count on, so two records at one count mean
/// the first failed (it was kept in the journal, or its file append failed), and the store
/// wrote the second where the first would have gone. Applying the first would make the second
/// look applied already.
fn superseded(records: &[Record], barriers: &HashMap<&str, (usize, Barrier)>) -> HashSet<usize> {
    let mut latest: HashMap<(&str, usize), usize> = HashMap::new();
    let mut out = HashSet::new();
    for (i, r) in records.iter().enumerate() {
        let (Some(n), None) = (r.n, r.barrier) else { continue };
        if before_last_barrier(barriers, r, i) {
            continue;
        }
        if let Some(earlier) = latest.insert((r.f.as_str(), n), i) {
            out.insert(earlier);
        }
    }
    out
}

/// Writes and syncs a batch of journal lines.
fn write_batch(file: &mut File, buf: &[u8], faults: &Faults) -> io::Result<()> {
    if let Some(err) = faults.write(file, buf) {
        return Err(err);
    }
    file.write_all(buf)?;
    if let Some(err) = faults.sync() {
        return Err(err);
    }
    file.sync_data()
}

/// After a failed batch, cuts the journal back to `len` (where the last good batch ended) and
/// syncs that: whole records written before the failure must not stay, since their callers were
/// told they failed. If this fails too, replay's rules ([`superseded`], [`effective_barriers`])
/// keep the acknowledged records that follow such leftovers.
fn undo_failed_write(file: &mut File, len: u64, faults: &Faults) -> io::Result<()> {
    if let Some(err) = faults.undo() {
        return Err(err);
    }
    file.set_len(len)?;
    file.sync_data()
}

fn write_loop(dir: PathBuf, mut seq: u64, mut file: File, rx: mpsc::Receiver<Job>, faults: &Faults) {
    // Where the last good batch ended; `None` when not known (nothing is cut back then).
    let mut len = file.metadata().map(|m| m.len()).ok();
    let mut records = 0usize;
    let mut opened = Instant::now();
    let mut dirty: HashSet<PathBuf> = HashSet::new();
    let mut open_files = OpenFiles::new(crate::descriptors::history_files_kept());
    // A failed write may have left part of a line: the next one starts on a new line.
    let mut torn = false;
    // The checkpoint running or done, syncing the files of the journal before this one.
    let mut checkpoint: Option<std::thread::JoinHandle<()>> = None;
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set when the process stops: a checkpoint then runs unpaced.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let first = match rx.recv_timeout(ROTATE_AFTER) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while let Ok(job) = rx.try_recv() {
            batch.push(job);
        }
        if !batch.is_empty() {
            let mut buf = Vec::new();
            if torn {
                buf.push(b'\n');
            }
            for job in &batch {
                match job {
                    Job::Append { line, .. } | Job::Barrier { line, .. } => buf.extend_from_slice(line),
                }
            }
            match write_batch(&mut file, &buf, faults) {
                Err(err) => {
                    match len.map(|len| undo_failed_write(&mut file, len, faults)) {
                        Some(Ok(())) => torn = false,
                        failed => {
                            torn = true;
                            // What the failed batch left counts as written (a torn line, then
                            // records replay's rules keep harmless): the next good batch goes
                            // after it, and a later cut must not reach back into that batch.
                            len = file.metadata().map(|m| m.len()).ok();
                            if let Some(Err(undo)) = failed {
                                tracing::error!(dir = %dir.display(), err = %undo, "cannot cut a failed write out of the history journal; a restart replays it under its rules");
                            }
                        }
                    }
                    tracing::error!(dir = %dir.display(), %err, "cannot write the history journal");
                    for job in batch {
                        let failed = Err(io::Error::new(err.kind(), err.to_string()));
                        let _ = match job {
                            Job::Append { reply, .. } => reply.send(failed).ok(),
                            Job::Barrier { reply, .. } => reply.send(failed).ok(),
                        };
                    }
                    continue;
                }
                Ok(()) => {
                    torn = false;
                    len = len.map(|len| len + buf.len() as u64);
                }
            }
            records += batch.len();
            for job in batch {
                match job {
                    Job::Append { file, bytes, reply, .. } => {
                        let _ = reply.send(open_files.append(&file, &bytes));
                        dirty.insert(file);
                    }
                    Job::Barrier { file, barrier, reply, .. } => {
                        open_files.close(&file);
                        let result = match barrier {
                            Barrier::Synced => Ok(()),
                            Barrier::Cleared => match fs::remove_file(&file) {
                                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                                _ => Ok(()),
                            },
                        };
                        let _ = reply.send(result);
                    }
                }
            }
        }
        let due = records >= ROTATE_RECORDS || (records > 0 && opened.elapsed() >= ROTATE_AFTER);
        if due && checkpoint.as_ref().is_none_or(|c| c.is_finished()) {
            let next = journal_path(&dir, seq + 1);
            match open_to_append(&next) {
                Ok(new_file) => {
                    sync_dir(&dir);
                    let old = journal_path(&dir, seq);
                    seq += 1;
                    file = new_file;
                    len = Some(0);
                    records = 0;
                    opened = Instant::now();
                    torn = false;
                    let files = std::mem::take(&mut dirty);
                    let (dir, failed_once, stopping) = (dir.clone(), failed_once.clone(), stopping.clone());
                    checkpoint = std::thread::Builder::new()
                        .name("history-checkpoint".into())
                        .spawn(move || checkpoint_files(&dir, &old, files, &failed_once, &stopping))
                        .ok();
                }
                Err(err) => tracing::warn!(dir = %dir.display(), %err, "cannot rotate the history journal; keeping the current one"),
            }
        }
    }
    // Stopping: the last journal is checkpointed in place.
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(c) = checkpoint.take() {
        let _ = c.join();
    }
    let current = journal_path(&dir, seq);
    checkpoint_files(&dir, &current, dirty, &failed_once, &stopping);
}

/// Syncs `files`, then deletes the journal that made them durable. On a failure the journal
/// stays and is replayed at the next start.
fn checkpoint_files(dir: &Path, journal: &Path, files: HashSet<PathBuf>, failed_once: &std::sync::atomic::AtomicBool, stopping: &std::sync::atomic::AtomicBool) {
    // After one failure no journal is deleted until the next start replays them all: a newer
    // journal's barriers are what keep an older one's records out of a compacted file.
    if failed_once.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    // Paced: a checkpoint after a busy interval syncs a thousand files, and back to back they
    // queued the turns' own journal syncs behind them on the device (paced p99 4.1 -> 5.2 ms at
    // 1000 users). Spread out, a thousand take about a second, well inside the next rotation.
    let pace = if files.len() > 32 { CHECKPOINT_PACE } else { Duration::ZERO };
    for file in &files {
        if !pace.is_zero() && !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(pace);
        }
        if let Err(err) = sync_file(file) {
            if !failed_once.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(file = %file.display(), %err, "cannot sync a history file; its journal is kept for the next start");
            }
            return;
        }
    }
    if fs::remove_file(journal).is_ok() {
        sync_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past its limit the cache closes files and opens them again; a file removed or replaced
    /// behind the writer's back is opened again by its path: every byte lands in the file the
    /// path names.
    #[test]
    fn kept_files_follow_their_paths_past_the_limit_and_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = OpenFiles::new(2);
        let path = |n: usize| dir.path().join(format!("{n}.jsonl"));
        for round in 0..3 {
            for n in 0..5 {
                files.append(&path(n), format!("{round}\n").as_bytes()).unwrap();
            }
        }
        assert!(files.files.len() <= 2);
        let mut one = OpenFiles::new(1);
        one.append(&path(7), b"x\n").unwrap();
        one.append(&path(8), b"y\n").unwrap();
        assert_eq!(one.files.len(), 1);
        for n in 0..5 {
            assert_eq!(fs::read_to_string(path(n)).unwrap(), "0\n1\n2\n");
        }
        files.append(&path(0), b"3\n").unwrap();
        fs::remove_file(path(0)).unwrap();
        files.append(&path(0), b"after rm\n").unwrap();
        assert_eq!(fs::read_to_string(path(0)).unwrap(), "after rm\n");
        fs::write(dir.path().join("new"), b"replaced\n").unwrap();
        fs::rename(dir.path().join("new"), path(0)).unwrap();
        files.append(&path(0), b"after rename\n").unwrap();
        assert_eq!(fs::read_to_string(path(0)).unwrap(), "replaced\nafter rename\n");
    }

    fn render(q: &str, a: &str) -> Vec<u8> {
        format!("Q {q}\nA {a}\n").into_bytes()
    }

    fn exchange(f: &str, n: usize, q: &str) -> String {
        let r = Record { f: f.into(), n: Some(n), q: Some(q.into()), a: Some(format!("re {q}")), barrier: None };
        String::from_utf8(line_of(&r)).unwrap()
    }

    fn barrier(f: &str, b: Barrier) -> String {
        String::from_utf8(line_of(&Record { f: f.into(), n: None, q: None, a: None, barrier: Some(b) })).unwrap()
    }

    /// What a crash can leave: records in the journal that their files have, lack, or hold
    /// part of. Replay makes every file hold each acknowledged exchange exactly once.
    #[test]
    fn replay_applies_what_the_files_lack_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // has both records; lacks the second; holds half of the second; followed a torn line.
        fs::write(d.join("a.jsonl"), "Q 1\nA re 1\nQ 2\nA re 2\n").unwrap();
        fs::write(d.join("b.jsonl"), "Q 1\nA re 1\n").unwrap();
        fs::write(d.join("c.jsonl"), "Q 1\nA re 1\nQ 2\nA r").unwrap();
        fs::write(d.join("e.jsonl"), "Q 0\nA re 0\n{\"torn").unwrap();
        let mut journal = String::new();
        for f in ["a.jsonl", "b.jsonl", "c.jsonl"] {
            journal += &exchange(f, 0, "1");
            journal += &exchange(f, 2, "2");
        }
        // A file that never reached the disk, and one that followed a torn line (3 lines as the
        // store counts them: two and the torn one).
        journal += &exchange("new.jsonl", 0, "1");
        journal += &exchange("e.jsonl", 3, "1");
        // A torn last journal line was never acknowledged.
        journal += "{\"f\":\"b.jsonl\",\"n\":4,\"q\":\"3";
        fs::write(journal_path(d, 7), journal).unwrap();

        assert_eq!(replay(d, render).unwrap(), 7);
        let both = "Q 1\nA re 1\nQ 2\nA re 2\n";
        for f in ["a.jsonl", "b.jsonl", "c.jsonl"] {
            assert_eq!(fs::read_to_string(d.join(f)).unwrap(), both, "{f}");
        }
        assert_eq!(fs::read_to_string(d.join("new.jsonl")).unwrap(), "Q 1\nA re 1\n");
        assert_eq!(fs::read_to_string(d.join("e.jsonl")).unwrap(), "Q 0\nA re 0\n{\"torn\nQ 1\nA re 1\n");
        assert!(journals(d).unwrap().is_empty(), "replayed journals are removed");
        // A second replay (a crash during the first) changes nothing.
        assert_eq!(replay(d, render).unwrap(), 0);
        assert_eq!(fs::read_to_string(d.join("b.jsonl")).unwrap(), both);
    }

    #[test]
    fn barriers_keep_forgotten_and_compacted_history_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Cleared, then one new exchange: the unlink did not survive the crash, the new one was
        // not written. Compacted to one exchange (two lines), after which a record with the same
        // line count as an older one followed.
        fs::write(d.join("gone.jsonl"), "Q secret\nA re secret\n").unwrap();
        fs::write(d.join("short.jsonl"), "Q 2\nA re 2\n").unwrap();
        let journal = [
            exchange("gone.jsonl", 0, "secret"),
            barrier("gone.jsonl", Barrier::Cleared),
            exchange("gone.jsonl", 0, "fresh"),
            exchange("short.jsonl", 0, "1"),
            exchange("short.jsonl", 2, "2"),
            barrier("short.jsonl", Barrier::Synced),
            exchange("short.jsonl", 2, "3"),
        ]
        .concat();
        fs::write(journal_path(d, 1), &journal[..journal.len() / 2]).unwrap();
        fs::write(journal_path(d, 2), &journal[journal.len() / 2..]).unwrap();

        replay(d, render).unwrap();
        assert_eq!(fs::read_to_string(d.join("gone.jsonl")).unwrap(), "Q fresh\nA re fresh\n");
        assert_eq!(fs::read_to_string(d.join("short.jsonl")).unwrap(), "Q 2\nA re 2\nQ 3\nA re 3\n");
    }

    /// What a failed write can leave in the journal when it cannot be cut out: a record its
    /// caller was told failed, at the same line count as the acknowledged one the store wrote
    /// next; and a `cleared` barrier that did not clear (the file's next exchange followed its
    /// old lines).
    #[test]
    fn replay_ignores_what_a_failed_write_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("dup.jsonl"), "Q 1\nA re 1\n").unwrap();
        fs::write(d.join("kept.jsonl"), "Q 1\nA re 1\n").unwrap();
        fs::write(d.join("twice.jsonl"), "Q 1\nA re 1\n").unwrap();
        let journal = [
            exchange("dup.jsonl", 2, "failed"),
            exchange("dup.jsonl", 2, "acked"),
            exchange("dup.jsonl", 4, "next"),
            barrier("kept.jsonl", Barrier::Cleared),
            exchange("kept.jsonl", 2, "2"),
            barrier("twice.jsonl", Barrier::Cleared),
            barrier("twice.jsonl", Barrier::Cleared),
            exchange("twice.jsonl", 2, "2"),
        ]
        .concat();
        fs::write(journal_path(d, 3), journal).unwrap();

        replay(d, render).unwrap();
        assert_eq!(fs::read_to_string(d.join("dup.jsonl")).unwrap(), "Q 1\nA re 1\nQ acked\nA re acked\nQ next\nA re next\n");
        assert_eq!(fs::read_to_string(d.join("kept.jsonl")).unwrap(), "Q 1\nA re 1\nQ 2\nA re 2\n");
        assert_eq!(fs::read_to_string(d.join("twice.jsonl")).unwrap(), "Q 1\nA re 1\nQ 2\nA re 2\n");
    }

    /// A cut that failed leaves its batch in the journal; the next failure's cut must stop at
    /// the end of the good batch written after it, not reach back into it.
    #[test]
    fn a_cut_after_a_failed_cut_keeps_the_good_batch_between() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (journal, faults, path) = faulty_journal(d);
        faults.fail_undo.store(true, Relaxed);
        faults.fail_next_sync.store(true, Relaxed);
        journal.append(&path, 2, "A", "ok", render("A", "ok")).unwrap_err();
        faults.fail_undo.store(false, Relaxed);
        journal.append(&path, 2, "B", "ok", render("B", "ok")).unwrap();
        faults.fail_next_sync.store(true, Relaxed);
        journal.append(&path, 4, "C", "ok", render("C", "ok")).unwrap_err();
        journal.append(&path, 4, "D", "ok", render("D", "ok")).unwrap();

        let in_journal = current_journal(d);
        assert!(!in_journal.contains("\"C\""), "{in_journal}");
        let after = crash_and_replay(d, &[("u.jsonl", "Q 1\nA ok\n")]);
        assert_eq!(fs::read_to_string(after.path().join("u.jsonl")).unwrap(), "Q 1\nA ok\nQ B\nA ok\nQ D\nA ok\n", "{in_journal}");
        drop(journal);
    }

    /// A crash right after `appends`: the user files lost what was not synced, the journal
    /// (synced) is what a restart replays.
    fn crash_and_replay(d: &Path, user_files_at_crash: &[(&str, &str)]) -> tempfile::TempDir {
        let after = tempfile::tempdir().unwrap();
        for (_, path) in journals(d).unwrap() {
            fs::copy(&path, after.path().join(path.file_name().unwrap())).unwrap();
        }
        for (name, text) in user_files_at_crash {
            fs::write(after.path().join(name), text).unwrap();
        }
        replay(after.path(), render).unwrap();
        after
    }

    /// A journal in `d` whose writer meets the returned faults, with one exchange written to
    /// `u.jsonl` (its path is returned).
    fn faulty_journal(d: &Path) -> (Journal, Arc<Faults>, PathBuf) {
        let faults = Arc::new(Faults::default());
        let journal = Journal::open_with(d, render, faults.clone()).unwrap();
        let path = d.join("u.jsonl");
        journal.append(&path, 0, "1", "ok", render("1", "ok")).unwrap();
        (journal, faults, path)
    }

    fn current_journal(d: &Path) -> String {
        let (_, current) = journals(d).unwrap().pop().unwrap();
        fs::read_to_string(current).unwrap()
    }

    /// A batch whose write or sync fails is cut back out of the journal, so the next record,
    /// written at the same line count, is the one a restart replays; and when the cut fails
    /// too, replay still keeps the acknowledged record and not the failed one.
    #[test]
    fn a_failed_journal_write_is_cut_out_and_never_replayed_over_an_acknowledged_one() {
        for (fault, undo_fails) in [("sync", false), ("partial write", false), ("sync", true)] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let (journal, faults, path) = faulty_journal(d);

            faults.fail_undo.store(undo_fails, std::sync::atomic::Ordering::Relaxed);
            match fault {
                "sync" => faults.fail_next_sync.store(true, std::sync::atomic::Ordering::Relaxed),
                _ => *faults.cut_next_write_at.lock().unwrap() = Some(10),
            }
            let failed = journal.append(&path, 2, "failed", "ok", render("failed", "ok"));
            let err = failed.unwrap_err().to_string();
            assert!(err.contains(if fault == "sync" { "os error 5" } else { "os error 28" }), "{fault}: {err}");
            faults.fail_undo.store(false, std::sync::atomic::Ordering::Relaxed);
            // The store counts what its file holds: the failed exchange is not in it.
            journal.append(&path, 2, "acked", "ok", render("acked", "ok")).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), "Q 1\nA ok\nQ acked\nA ok\n");

            let in_journal = current_journal(d);
            assert_eq!(in_journal.contains("failed"), undo_fails, "{fault}, undo fails: {undo_fails}: {in_journal}");
            assert!(in_journal.lines().all(|l| serde_json::from_str::<Record>(l).is_ok() || undo_fails), "{in_journal}");

            // The second exchange never reached the disk before the crash.
            let after = crash_and_replay(d, &[("u.jsonl", "Q 1\nA ok\n")]);
            assert_eq!(
                fs::read_to_string(after.path().join("u.jsonl")).unwrap(),
                "Q 1\nA ok\nQ acked\nA ok\n",
                "{fault}, undo fails: {undo_fails}"
            );
            drop(journal);
        }
    }

    #[test]
    fn appends_reach_the_files_and_a_clean_stop_leaves_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let journal = Journal::open(d, render).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let journal = &journal;
                let path = d.join(format!("{t}.jsonl"));
                move || {
                    for i in 0..50 {
                        let q = format!("{t}-{i}");
                        journal.append(&path, i * 2, &q, "ok", render(&q, "ok")).unwrap();
                    }
                }
            })
            .collect();
        std::thread::scope(|s| {
            for f in threads {
                s.spawn(f);
            }
        });
        for t in 0..4 {
            let text = fs::read_to_string(d.join(format!("{t}.jsonl"))).unwrap();
            assert_eq!(text.lines().count(), 100);
            assert!(text.ends_with(&format!("Q {t}-49\nA ok\n")));
        }
        journal.barrier(&d.join("0.jsonl"), Barrier::Cleared).unwrap();
        assert!(!d.join("0.jsonl").exists());
        drop(journal);
        assert!(journals(d).unwrap().is_empty(), "{:?}", journals(d).unwrap());
        // Nothing to replay: the files stay as they are.
        Journal::open(d, render).unwrap();
        assert!(!d.join("0.jsonl").exists());
        assert_eq!(fs::read_to_string(d.join("1.jsonl")).unwrap().lines().count(), 100);
    }
}
