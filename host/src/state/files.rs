//! Durable per-user state: the id maps (`user_threads.json`, `user_conversations.json`, in the
//! format the Python bot wrote) and each user's recent messages for replay.
//!
//! Id maps are rewritten whole with temp file + fsync + rename + directory fsync, so a crash
//! leaves each file old or new. History is an append-only JSON-lines file per user, made durable
//! by the directory's write-ahead journal (`journal.rs`: one sync for every exchange committed
//! meanwhile); a record that does not parse (a crash mid-append, a full disk cutting a record,
//! even mid-character) is skipped on load and the records after it are read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::state::session::group_map_file;

/// Who wrote a message of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One message of a session's history, as the host keeps it (plugins get it through their
/// contract's own type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub text: String,
}

/// Messages kept per user: at least the last 50 turns (user + assistant).
pub const HISTORY_LIMIT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{file_name}{TMP_MARK}{}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if written.is_err() {
        // A half-written temp file on a full disk keeps it full after the disk is cleared.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(file = %tmp.display(), %err, "could not remove a failed write's temp file"),
        }
        return written;
    }
    // The rename itself must survive a power cut.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// What names a temp file of [`write_atomic`]: `.<name>.tmp-<pid>`.
const TMP_MARK: &str = ".tmp-";

/// Removes the temp files of atomic writes that a crash or a failed write left in `dir`, and
/// returns how many. A temp file of another live process (`swapbot ask` beside the bot) is left
/// alone: only our own pid's, a dead process's, or (without `/proc`) an hour-old one goes.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let proc_fs = Path::new("/proc/self").exists();
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(TMP_MARK)).map(|(_, pid)| pid) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let stale = if pid == std::process::id() {
            true
        } else if proc_fs {
            !Path::new(&format!("/proc/{pid}")).exists()
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600))
        };
        if stale && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::warn!(dir = %dir.display(), removed, "removed temp files left by failed or interrupted writes");
    }
    removed
}

/// Moves an untrustworthy file aside (never deletes it) and says so.
fn quarantine(path: &Path, why: &str) -> Option<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_file_name(format!(
        "{}.corrupt-{stamp}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    match fs::rename(path, &aside) {
        Ok(()) => {
            tracing::error!(file = %path.display(), moved_to = %aside.display(), "{why}: file moved aside, starting without it");
            Some(aside)
        }
        Err(err) => {
            tracing::error!(file = %path.display(), %err, "{why}, and it could not be moved aside");
            None
        }
    }
}

/// What keys an id map or a history: a user id (private chats, written as the Python bot did) or a group
/// session's key (`crate::state::GroupKey`). `to_key` is the JSON object key, `file_stem` the history
/// file's name.
pub trait StoreKey: Copy + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static {
    fn to_key(&self) -> String;
    fn from_key(key: &str) -> Option<Self>;
    fn file_stem(&self) -> String {
        self.to_key()
    }
}

impl StoreKey for i64 {
    fn to_key(&self) -> String {
        self.to_string()
    }
    fn from_key(key: &str) -> Option<Self> {
        key.trim().parse().ok()
    }
}

/// A `{"<user id>": "<id>"}` map kept in one JSON file (or `{"<group key>": "<id>"}` for groups).
pub struct IdMap<K = i64> {
    path: PathBuf,
    entries: Mutex<Entries<K>>,
    /// Serialises file writes; holds the version of the map last made durable.
    write_lock: Mutex<u64>,
}

struct Entries<K> {
    map: BTreeMap<K, String>,
    /// Bumped by every change; a write covers every change up to the version it rendered.
    version: u64,
}

impl IdMap {
    /// Loads a user-id map; a corrupt or unreadable file is moved aside and the map starts empty.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self::open_keyed(path)
    }
}

impl<K: StoreKey> IdMap<K> {
    /// Loads a map with keys of type `K` (see [`IdMap::open`]).
    pub fn open_keyed(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let entries = match fs::read(&path) {
            Ok(bytes) => match parse_id_map(&bytes) {
                Ok(map) => map,
                Err(why) => {
                    quarantine(&path, &format!("{} is not a valid id map ({why})", path.display()));
                    BTreeMap::new()
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => {
                quarantine(&path, &format!("{} is unreadable ({err})", path.display()));
                BTreeMap::new()
            }
        };
        Self { path, entries: Mutex::new(Entries { map: entries, version: 0 }), write_lock: Mutex::new(0) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, user: K) -> Option<String> {
        self.entries.lock().unwrap().map.get(&user).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `id` for `user` and makes it durable before returning.
    pub fn set(&self, user: K, id: &str) -> Result<(), StorageError> {
        self.change(|map| {
            if map.get(&user).map(String::as_str) == Some(id) {
                return false;
            }
            map.insert(user, id.to_owned());
            true
        })
    }

    pub fn remove(&self, user: K) -> Result<(), StorageError> {
        self.change(|map| map.remove(&user).is_some())
    }

    /// Writes the map if a change is not on disk yet (an earlier write failed).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.change(|_| false)
    }

    /// Whether a change is only in memory.
    pub fn is_dirty(&self) -> bool {
        let version = self.entries.lock().unwrap().version;
        *self.write_lock.lock().unwrap() < version
    }

    /// Applies a change in memory, then makes it durable. Group commit: when many users change
    /// the map at once, one write covers every change made before it rendered the file, and the
    /// others return without writing again. A call that changes nothing still writes while an
    /// earlier write failed: the map stays dirty until a write succeeds (comparing with the
    /// memory alone would call a lost change done).
    fn change(&self, apply: impl FnOnce(&mut BTreeMap<K, String>) -> bool) -> Result<(), StorageError> {
        let mine = {
            let mut entries = self.entries.lock().unwrap();
            if apply(&mut entries.map) {
                entries.version += 1;
            }
            entries.version
        };
        let mut durable = self.write_lock.lock().unwrap();
        if *durable >= mine {
            return Ok(());
        }
        let (snapshot, version) = {
            let entries = self.entries.lock().unwrap();
            (render_id_map(&entries.map), entries.version)
        };
        write_atomic(&self.path, snapshot.as_bytes())?;
        *durable = version;
        Ok(())
    }
}

fn parse_id_map<K: StoreKey>(bytes: &[u8]) -> Result<BTreeMap<K, String>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let mut map = BTreeMap::new();
    for (key, id) in object {
        let user = K::from_key(key).ok_or_else(|| format!("key {key:?} is not a user id"))?;
        let id = id.as_str().ok_or_else(|| format!("value for {key} is not a string"))?;
        map.insert(user, id.to_owned());
    }
    Ok(map)
}

fn render_id_map<K: StoreKey>(entries: &BTreeMap<K, String>) -> String {
    let object: serde_json::Map<String, serde_json::Value> =
        entries.iter().map(|(k, v)| (k.to_key(), serde_json::Value::String(v.clone()))).collect();
    serde_json::to_string(&object).unwrap_or_else(|_| "{}".into())
}

/// Start-up migration: an operator coming from the Python bot has `user_threads.json` only.
/// Create an empty `user_conversations.json` and never touch `user_threads.json` (a rollback
/// still needs it). Returns whether it migrated.
pub fn migrate(data_dir: &Path) -> Result<bool, StorageError> {
    let mut migrated = false;
    // Group sessions follow the same rule in their own pair of files.
    let pairs = crate::config::legacy::LEGACY_ID_MAPS
        .iter()
        .flat_map(|(legacy, new)| [(legacy.to_string(), new.to_string()), (group_map_file(legacy), group_map_file(new))]);
    for (legacy, new) in pairs {
        let threads = data_dir.join(legacy);
        let conversations = data_dir.join(new);
        if threads.exists() && !conversations.exists() {
            write_atomic(&conversations, b"{}")?;
            tracing::info!(
                from = %threads.display(),
                created = %conversations.display(),
                "migration: created an empty conversation map; the legacy map is kept for rollback"
            );
            migrated = true;
        }
    }
    Ok(migrated)
}

#[derive(Serialize, Deserialize)]
struct HistoryRecord {
    role: String,
    text: String,
}

/// Each user's (or group session's) recent messages, both roles, bounded, durable.
///
/// The messages live in the files only: a turn in a session that exists never reads them, and a
/// bot with many users would otherwise hold every user's last 100 messages (~3 KiB a user at 20
/// short ones). What an append needs to know of a file (its line count, a torn tail) is kept for
/// the users seen lately.
pub struct HistoryStore<K = i64> {
    dir: PathBuf,
    users: Mutex<HashMap<K, Arc<UserEntry>>>,
    /// Makes appends durable in groups; `None` when it could not be opened (the store then
    /// syncs each user file itself, as it did before the journal).
    journal: Option<super::journal::Journal>,
}

struct UserEntry {
    history: Mutex<UserHistory>,
    /// Held by an append from the moment its record is queued until it is in the file, and by a
    /// clear: the next append counts the lines of a file that has every earlier record. Async,
    /// so an async append waits for the journal with the task parked, not a thread.
    writing: tokio::sync::Mutex<()>,
}

struct UserHistory {
    lines_on_disk: usize,
    /// The file ends mid-line (a crash tore the last record): the next append starts a new line.
    /// Known from the read and our own writes, so an append does not read the file back.
    torn_tail: bool,
}

/// A history file as read: the last [`HISTORY_LIMIT`] messages, and what an append needs.
struct ReadHistory {
    messages: VecDeque<Message>,
    lines: usize,
    torn_tail: bool,
}

impl HistoryStore {
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self::open_keyed(dir)
    }
}

/// Above this many users known, those with no turn running are forgotten (re-read on their next).
const USERS_KEPT: usize = 4096;

impl<K: StoreKey> HistoryStore<K> {
    /// A history with keys of type `K` (see [`HistoryStore::open`]).
    pub fn open_keyed(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        // Replays what an unclean stop left in the journal before any file is read.
        let journal = match super::journal::Journal::open(&dir, render_exchange) {
            Ok(journal) => Some(journal),
            Err(err) => {
                tracing::error!(dir = %dir.display(), %err, "cannot open the history journal; every exchange is synced on its own");
                None
            }
        };
        Self { dir, users: Mutex::new(HashMap::new()), journal }
    }

    fn file(&self, user: K) -> PathBuf {
        self.dir.join(format!("{}.jsonl", user.file_stem()))
    }

    /// The user's entry, with the file read once if it is new; the read is handed back then.
    fn user(&self, user: K) -> (Arc<UserEntry>, Option<ReadHistory>) {
        let mut users = self.users.lock().unwrap();
        if let Some(entry) = users.get(&user) {
            return (entry.clone(), None);
        }
        if users.len() >= USERS_KEPT && users.len().is_power_of_two() {
            users.retain(|_, entry| Arc::strong_count(entry) > 1);
        }
        let read = self.read(user);
        let history = Mutex::new(UserHistory { lines_on_disk: read.lines, torn_tail: read.torn_tail });
        let entry = Arc::new(UserEntry { history, writing: tokio::sync::Mutex::new(()) });
        users.insert(user, entry.clone());
        (entry, Some(read))
    }

    fn read(&self, user: K) -> ReadHistory {
        let path = self.file(user);
        let mut messages = VecDeque::new();
        let mut lines = 0;
        let mut torn_tail = false;
        if let Ok(file) = File::open(&path) {
            // Split on bytes, not `lines()`: a record cut mid-character is invalid UTF-8, and
            // reading it as text would end the whole file there.
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(file = %path.display(), %err, "history unreadable past this point");
                        break;
                    }
                }
                // A last line without its newline (a write cut short) is torn even when it
                // parses: the next append must not glue onto it.
                torn_tail = line.last() != Some(&b'\n');
                if !torn_tail {
                    line.pop();
                }
                lines += 1;
                // A torn or invalid record is skipped; the records after it are kept.
                let Ok(record) = serde_json::from_slice::<HistoryRecord>(&line) else {
                    if !line.is_empty() {
                        tracing::warn!(file = %path.display(), line = lines, "skipped an unreadable history record");
                    }
                    continue;
                };
                let role = if record.role == "assistant" { Role::Assistant } else { Role::User };
                messages.push_back(Message { role, text: record.text });
                if messages.len() > HISTORY_LIMIT {
                    messages.pop_front();
                }
            }
        }
        ReadHistory { messages, lines, torn_tail }
    }

    /// The user's messages, oldest first.
    pub fn recent(&self, user: K) -> Vec<Message> {
        let (handle, read) = self.user(user);
        if let Some(read) = read {
            return read.messages.into();
        }
        // Under the user's lock: a compaction is not half seen (an append's two lines are one write).
        let _history = handle.history.lock().unwrap();
        self.read(user).messages.into()
    }

    /// Appends one finished exchange durably: in the journal's next group commit, then to the
    /// user's file. Blocks; not from an async context (see [`HistoryStore::append_turn_async`]).
    pub fn append_turn(&self, user: K, question: &str, answer: &str) -> Result<(), StorageError> {
        let (entry, _) = self.user(user);
        let _writing = entry.writing.blocking_lock();
        let mut history = entry.history.lock().unwrap();
        let path = self.file(user);
        let out = exchange_bytes(&history, question, answer);
        let written = match &self.journal {
            Some(journal) => journal.append(&path, history.lines_on_disk, question, answer, out),
            None => self.append_synced(&path, &out),
        };
        self.appended(user, &mut history, written)?;
        if history.lines_on_disk > HISTORY_LIMIT * 2 {
            self.compact(user, &mut history)?;
        }
        Ok(())
    }

    /// [`HistoryStore::append_turn`] for async callers: the wait for the journal's group commit
    /// parks the task, where a blocking call would hop to the blocking pool and back (two more
    /// thread wakes in every turn). A user not seen lately has their file read here, as
    /// [`HistoryStore::recent`] does.
    pub async fn append_turn_async(self: &Arc<Self>, user: K, question: &str, answer: &str) -> Result<(), StorageError> {
        let Some(journal) = &self.journal else {
            let (me, question, answer) = (self.clone(), question.to_owned(), answer.to_owned());
            return off_the_workers(move || me.append_turn(user, &question, &answer)).await;
        };
        let (entry, _) = self.user(user);
        let _writing = entry.writing.lock().await;
        let path = self.file(user);
        let queued = {
            let history = entry.history.lock().unwrap();
            journal.submit(&path, history.lines_on_disk, question, answer, exchange_bytes(&history, question, answer))
        };
        let written = match queued {
            Ok(done) => done.await.unwrap_or_else(|_| Err(std::io::Error::other("the history journal is stopped"))),
            Err(err) => Err(err),
        };
        let compact = {
            let mut history = entry.history.lock().unwrap();
            self.appended(user, &mut history, written)?;
            history.lines_on_disk > HISTORY_LIMIT * 2
        };
        if compact {
            // Every HISTORY_LIMIT / 2 exchanges; it syncs and rewrites the file.
            let me = self.clone();
            off_the_workers(move || {
                let (entry, _) = me.user(user);
                let mut history = entry.history.lock().unwrap();
                me.compact(user, &mut history)
            })
            .await?;
        }
        Ok(())
    }

    /// Counts an append's lines, or after a failure learns from the file where it ends now.
    fn appended(&self, user: K, history: &mut UserHistory, written: std::io::Result<()>) -> Result<(), StorageError> {
        if let Err(source) = written {
            // The file may end anywhere now: what the next append needs is read back from it.
            let read = self.read(user);
            history.lines_on_disk = read.lines;
            history.torn_tail = read.torn_tail;
            return Err(StorageError::Io { path: self.file(user), source });
        }
        history.torn_tail = false;
        history.lines_on_disk += 2;
        Ok(())
    }

    /// Rewrites a file grown past twice [`HISTORY_LIMIT`] lines with the last messages only, so
    /// a file stays bounded. The journal first learns that the file holds everything before
    /// (synced), so that no older record is replayed into the shorter file.
    fn compact(&self, user: K, history: &mut UserHistory) -> Result<(), StorageError> {
        let path = self.file(user);
        if let Some(journal) = &self.journal {
            File::open(&path).and_then(|f| f.sync_data()).map_err(io_err(&path))?;
            journal.barrier(&path, super::journal::Barrier::Synced).map_err(io_err(&path))?;
        }
        let kept = self.read(user).messages;
        let mut compact = Vec::new();
        for m in &kept {
            let role = if m.role == Role::Assistant { "assistant" } else { "user" };
            compact.extend_from_slice(&serde_json::to_vec(&HistoryRecord { role: role.into(), text: m.text.clone() }).unwrap_or_default());
            compact.push(b'\n');
        }
        write_atomic(&path, &compact)?;
        history.lines_on_disk = kept.len();
        history.torn_tail = false;
        Ok(())
    }

    /// Without a journal: the record is appended and synced on its own.
    fn append_synced(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let open = || OpenOptions::new().create(true).append(true).open(path);
        // The directory is made with the first history, not checked on every append.
        let mut file = match open() {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir)?;
                open()
            }
            other => other,
        }?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    /// Forgets a user's history, on disk too.
    pub fn clear(&self, user: K) -> Result<(), StorageError> {
        let (entry, _) = self.user(user);
        let _writing = entry.writing.blocking_lock();
        let mut history = entry.history.lock().unwrap();
        let path = self.file(user);
        // Through the journal, so that a replay after a crash does not bring the history back.
        let removed = match &self.journal {
            Some(journal) => journal.barrier(&path, super::journal::Barrier::Cleared),
            None => match fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            },
        };
        removed.map_err(|source| StorageError::Io { path, source })?;
        history.lines_on_disk = 0;
        history.torn_tail = false;
        Ok(())
    }

    /// How many users the store keeps what an append needs of (their messages stay on disk).
    pub fn users_in_memory(&self) -> usize {
        self.users.lock().unwrap().len()
    }
}

/// An exchange as its file's two lines; after a torn line (an earlier crash) on a line of its own.
fn exchange_bytes(history: &UserHistory, question: &str, answer: &str) -> Vec<u8> {
    let mut out = render_exchange(question, answer);
    if history.torn_tail {
        out.insert(0, b'\n');
    }
    out
}

/// Runs blocking file work (syncs, rewrites) on the blocking pool.
async fn off_the_workers(f: impl FnOnce() -> Result<(), StorageError> + Send + 'static) -> Result<(), StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StorageError::Io { path: PathBuf::new(), source: std::io::Error::other(format!("history task failed: {e}")) })
    })
}

/// Replays the history journals under `data_dir` into the history files (what opening the
/// file store does), for tools that read the files themselves.
pub fn replay_history_journals(data_dir: &Path) {
    let history = data_dir.join("history");
    if history.is_dir() {
        drop(HistoryStore::open(&history));
        if history.join("groups").is_dir() {
            drop(HistoryStore::<crate::state::GroupKey>::open_keyed(history.join("groups")));
        }
    }
}

/// An exchange as its two lines in a history file.
fn render_exchange(question: &str, answer: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (role, text) in [("user", question), ("assistant", answer)] {
        out.extend_from_slice(&serde_json::to_vec(&HistoryRecord { role: role.into(), text: text.into() }).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_python_bots_file_and_keeps_big_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user_threads.json");
        // json.dump of Dict[int, str] writes int keys as strings.
        fs::write(&path, r#"{"123456789012": "thread_abc", "42": "thread_x"}"#).unwrap();
        let map = IdMap::open(&path);
        assert_eq!(map.get(123456789012).as_deref(), Some("thread_abc"));
        assert_eq!(map.get(42).as_deref(), Some("thread_x"));
        map.set(7, "thread_new").unwrap();
        let reread = IdMap::open(&path);
        assert_eq!(reread.get(7).as_deref(), Some("thread_new"));
        assert_eq!(reread.get(123456789012).as_deref(), Some("thread_abc"));
    }

    #[test]
    fn concurrent_writers_all_end_up_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user_conversations.json");
        let map = Arc::new(IdMap::open(&path));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        map.set(t * 1000 + i, &format!("conv_{t}_{i}")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let reread = IdMap::open(&path);
        assert_eq!(reread.len(), 400);
        assert_eq!(reread.get(7049).as_deref(), Some("conv_7_49"));
    }

    #[test]
    fn a_corrupt_map_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user_conversations.json");
        fs::write(&path, "{\"1\": \"conv_a\", tor").unwrap();
        let map = IdMap::open(&path);
        assert!(map.is_empty());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(fs::read_to_string(aside[0].path()).unwrap(), "{\"1\": \"conv_a\", tor");
    }

    #[test]
    fn migration_creates_an_empty_map_and_leaves_threads_alone() {
        let dir = tempfile::tempdir().unwrap();
        let threads = dir.path().join("user_threads.json");
        fs::write(&threads, r#"{"1": "thread_1"}"#).unwrap();
        assert!(migrate(dir.path()).unwrap());
        assert_eq!(fs::read_to_string(&threads).unwrap(), r#"{"1": "thread_1"}"#);
        assert_eq!(fs::read_to_string(dir.path().join("user_conversations.json")).unwrap(), "{}");
        assert!(!migrate(dir.path()).unwrap(), "runs once");
    }

    #[test]
    fn history_is_bounded_durable_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path());
        for i in 0..60 {
            store.append_turn(5, &format!("q{i}"), &format!("a{i}")).unwrap();
        }
        let recent = store.recent(5);
        assert_eq!(recent.len(), HISTORY_LIMIT);
        assert_eq!(recent[0].text, "q10");
        assert_eq!(recent.last().unwrap().text, "a59");
        // A crash mid-append leaves half a line.
        let path = dir.path().join("5.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"role\":\"user\",\"te").unwrap();
        drop(f);
        let reopened = HistoryStore::open(dir.path());
        let texts = |m: &[Message]| m.iter().map(|m| (m.role == Role::User, m.text.clone())).collect::<Vec<_>>();
        assert_eq!(texts(&reopened.recent(5)), texts(&recent));
        reopened.append_turn(5, "after crash", "ok").unwrap();
        reopened.append_turn(5, "and after that", "fine").unwrap();
        let again = HistoryStore::open(dir.path()).recent(5);
        assert_eq!(again.last().unwrap().text, "fine");
        assert_eq!(again[again.len() - 4].text, "after crash");
        // The torn line was ended once: no blank line, so the line counts the journal's records
        // carry stay those of the file.
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\n\n"), "{text}");
    }

    /// The journal's writer keeps user files open between appends: an exchange after a clear
    /// (the file removed) or a compaction (a new file renamed over it) must reach the file the
    /// path names now, not the one it named before.
    #[test]
    fn an_exchange_after_a_clear_or_a_compaction_lands_in_the_file_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path());
        let path = dir.path().join("6.jsonl");
        let on_disk = || fs::read_to_string(&path).unwrap_or_default();
        store.append_turn(6, "before", "the clear").unwrap();
        store.clear(6).unwrap();
        store.append_turn(6, "after", "the clear").unwrap();
        assert_eq!(on_disk(), "{\"role\":\"user\",\"text\":\"after\"}\n{\"role\":\"assistant\",\"text\":\"the clear\"}\n");
        // Past twice the limit the file is rewritten; every later exchange is in the new one.
        for i in 0..HISTORY_LIMIT + 3 {
            store.append_turn(6, &format!("q{i}"), &format!("a{i}")).unwrap();
        }
        let text = on_disk();
        assert!(text.lines().count() <= HISTORY_LIMIT * 2, "{text}");
        assert!(text.ends_with(&format!("\"a{}\"}}\n", HISTORY_LIMIT + 2)), "{text}");
        assert!(!text.contains("\"before\""), "{text}");
    }

    /// A write cut just before a record's newline leaves a last line that parses: it is torn all
    /// the same, and the next exchange goes on a line of its own.
    #[test]
    fn a_whole_record_without_its_newline_is_not_glued_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("9.jsonl");
        fs::write(&path, b"{\"role\":\"user\",\"text\":\"q0\"}\n{\"role\":\"assistant\",\"text\":\"a0\"}").unwrap();
        let store = HistoryStore::open(dir.path());
        store.append_turn(9, "q1", "a1").unwrap();
        store.append_turn(9, "q2", "a2").unwrap();
        let texts: Vec<_> = HistoryStore::open(dir.path()).recent(9).into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["q0", "a0", "q1", "a1", "q2", "a2"]);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 6);
    }

    /// The path a turn takes: the wait for the group commit is async; compaction still bounds the
    /// file, and what was appended survives a reopen (the journal replayed or checkpointed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_appends_are_durable_ordered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(HistoryStore::open(dir.path()));
        let users = (1..=4i64).map(|user| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..120 {
                    store.append_turn_async(user, &format!("q{user}.{i}"), &format!("a{user}.{i}")).await.unwrap();
                }
            })
        });
        for user in users.collect::<Vec<_>>() {
            user.await.unwrap();
        }
        for user in 1..=4i64 {
            let recent = store.recent(user);
            assert_eq!(recent.len(), HISTORY_LIMIT);
            assert_eq!(recent[0].text, format!("q{user}.70"));
            assert_eq!(recent.last().unwrap().text, format!("a{user}.119"));
            let lines = fs::read_to_string(dir.path().join(format!("{user}.jsonl"))).unwrap().lines().count();
            assert!(lines <= HISTORY_LIMIT * 2, "compacted: {lines} lines");
        }
        drop(store);
        let reopened = HistoryStore::open(dir.path());
        assert_eq!(reopened.recent(3).last().unwrap().text, "a3.119");
    }
    /// A directory where the temp file would go makes every write fail, like a full disk does,
    /// until it is removed.
    fn block_writes(path: &Path) -> PathBuf {
        let name = path.file_name().unwrap().to_str().unwrap();
        let blocker = path.with_file_name(format!(".{name}{TMP_MARK}{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        blocker
    }

    #[test]
    fn a_failed_id_map_write_stays_dirty_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user_conversations.json");
        let map = IdMap::open(&path);
        map.set(1, "conv_one").unwrap();
        let blocker = block_writes(&path);
        assert!(map.set(2, "conv_two").is_err());
        assert!(map.is_dirty());
        assert!(map.set(2, "conv_two").is_err(), "still failing: still an error, not Ok");
        fs::remove_dir(&blocker).unwrap();
        // The disk recovered: the same call (no change in memory) now writes.
        map.set(2, "conv_two").unwrap();
        assert!(!map.is_dirty());
        assert_eq!(IdMap::open(&path).get(2).as_deref(), Some("conv_two"));

        // A removal that failed is retried by a later unrelated call too.
        let blocker = block_writes(&path);
        assert!(map.remove(1).is_err());
        fs::remove_dir(&blocker).unwrap();
        map.flush().unwrap();
        let reread = IdMap::open(&path);
        assert_eq!(reread.get(1), None);
        assert_eq!(reread.get(2).as_deref(), Some("conv_two"));
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the target is a non-empty directory.
        let target = dir.path().join("state.json");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        assert!(write_atomic(&target, b"{}").is_err());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("state.json")], "no temp file left");
    }

    #[test]
    fn a_full_disk_leaves_no_temp_file() {
        // A real full disk where this test may mount a tiny tmpfs (root on Linux); elsewhere the
        // rename failure above covers the same clean-up path.
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let target = dir.path().join("user_conversations.json");
        let result = write_atomic(&target, &vec![b'x'; 1 << 20]);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        // After the disk is full, a small write must fit again: nothing was left behind.
        let small = write_atomic(&target, b"{}");
        let _ = std::process::Command::new("umount").arg(dir.path()).status();
        assert!(result.is_err(), "1 MiB does not fit in 64 KiB");
        assert!(left.is_empty(), "left behind: {left:?}");
        small.unwrap();
    }

    #[test]
    fn stale_temp_files_are_removed_at_start_but_not_a_live_process_s() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(format!(".user_threads.json{TMP_MARK}{}", std::process::id()));
        // No process has pid u32::MAX (Linux caps pids far below it).
        let dead = dir.path().join(format!(".history.jsonl{TMP_MARK}{}", u32::MAX));
        let parent_pid = std::os::unix::process::parent_id();
        let live = dir.path().join(format!(".rollout.json{TMP_MARK}{parent_pid}"));
        for f in [&ours, &dead, &live] {
            fs::write(f, "partial").unwrap();
        }
        fs::write(dir.path().join("user_threads.json"), "{}").unwrap();
        fs::write(dir.path().join("notes.tmp-1"), "not ours: no leading dot").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()), 2);
        assert!(!ours.exists() && !dead.exists());
        assert!(live.exists(), "a live process's write in progress is left alone");
        assert!(dir.path().join("user_threads.json").exists() && dir.path().join("notes.tmp-1").exists());
    }

    #[test]
    fn a_record_cut_mid_character_is_skipped_and_the_next_ones_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path());
        store.append_turn(8, "Привет", "Здравствуйте").unwrap();
        // A full disk cut the next record inside a two-byte character.
        let path = dir.path().join("8.jsonl");
        let record = "{\"role\":\"user\",\"text\":\"Приве".as_bytes();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&record[..record.len() - 1]).unwrap();
        drop(f);
        // The disk recovered and the next exchange was written after it.
        let store = HistoryStore::open(dir.path());
        store.append_turn(8, "second question", "second answer").unwrap();
        // Junk in the middle of the file is skipped too.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\xff\xfe not json\n").unwrap();
        drop(f);
        store.append_turn(8, "third question", "third answer").unwrap();
        let texts: Vec<_> = HistoryStore::open(dir.path()).recent(8).into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["Привет", "Здравствуйте", "second question", "second answer", "third question", "third answer"]);
    }
}
