//! A durable inbox: a question Telegram delivered is answered exactly once, even across a
//! SIGKILL or a stop mid-turn.
//!
//! Telegram forgets an update once a later `getUpdates` names a higher offset. The poller writes
//! every fetched message to `<dir>/<update_id>.json` (fsynced) before it asks for the next batch,
//! the dispatcher removes the file when the turn has ended (answered or apologised for), and at
//! start every file left is replayed, oldest first, before polling resumes past the highest id
//! (so Telegram does not deliver it a second time).
//!
//! A webhook answers Telegram 200 only after [`Inbox::store`] returned. Telegram redelivers an update
//! it got no 2xx for (a 200 lost in a crash, a slow answer), so the inbox also remembers which ids
//! it has taken: `<dir>/done/<update_id>` markers, kept [`DONE_KEPT`] (Telegram keeps an update about
//! 24 hours), make a second delivery of the same update a no-op, in flight or answered.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use teloxide::types::{Update, UpdateKind};
use tracing::{info, warn};

/// How long an answered update's id is remembered: longer than Telegram retries a delivery.
pub const DONE_KEPT: Duration = Duration::from_secs(48 * 3600);

#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    answered: AtomicU32,
}

/// What [`Inbox::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Durable now: the caller delivers it to the dispatcher.
    New,
    /// Already in the inbox or already answered: the caller drops it.
    Duplicate,
}

impl Inbox {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("done"))?;
        let inbox = Self { dir, answered: AtomicU32::new(0) };
        inbox.prune_done();
        Ok(inbox)
    }

    fn file(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn done_marker(&self, id: u32) -> PathBuf {
        self.dir.join("done").join(id.to_string())
    }

    /// Forgets answered ids older than [`DONE_KEPT`].
    fn prune_done(&self) {
        let Ok(entries) = fs::read_dir(self.dir.join("done")) else { return };
        for entry in entries.filter_map(Result::ok) {
            let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > DONE_KEPT);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Whether an update must go through the inbox: messages (the questions) do; other kinds
    /// carry nothing to answer.
    pub fn keeps(update: &Update) -> bool {
        matches!(update.kind, UpdateKind::Message(_))
    }

    /// Makes an update durable (written, fsynced, linked into place, directory fsynced), unless the
    /// same update_id is already in the inbox or was answered: safe against a concurrent store of the
    /// same id (the link into place is create-if-absent).
    pub fn store(&self, update: &Update) -> std::io::Result<Stored> {
        self.store_batch_with(&[update], false).pop().expect("one result per update")
    }

    /// [`store`](Self::store) for every update of one `getUpdates` answer, as a group commit: each
    /// file is written in place and fsynced, then the directory is fsynced once for the whole batch
    /// (it was once per update). When it returns, every update it says is
    /// [`Stored::New`] is durable. One result per update, in order.
    ///
    /// For the poller, the only writer of the ids it fetched; a webhook, which may get the same
    /// update twice at once, stores through [`store`](Self::store).
    pub fn store_batch(&self, updates: &[&Update]) -> Vec<std::io::Result<Stored>> {
        self.store_batch_with(updates, true)
    }

    /// `exclusive`: no other store of these ids runs at the same time.
    fn store_batch_with(&self, updates: &[&Update], exclusive: bool) -> Vec<std::io::Result<Stored>> {
        static TMP: AtomicU32 = AtomicU32::new(0);
        let mut results: Vec<Option<std::io::Result<Stored>>> = Vec::with_capacity(updates.len());
        let mut linked = vec![];
        for (i, update) in updates.iter().enumerate() {
            let id = update.id.0;
            let path = self.file(id);
            if path.exists() || self.done_marker(id).exists() {
                results.push(Some(Ok(Stored::Duplicate)));
                continue;
            }
            let json = match serde_json::to_vec(update) {
                Ok(json) => json,
                Err(err) => {
                    results.push(Some(Err(std::io::Error::other(err))));
                    continue;
                }
            };
            let written = if exclusive {
                // The only writer of its ids (the poller): the file is created in place, create-if-absent,
                // and fsynced before the next one is written, so after a crash only the last one can be
                // torn, and it is unconfirmed (`pending` sets it aside; Telegram delivers it again).
                // One file per question instead of a temp file, a link and an unlink.
                match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => {
                        let written = file.write_all(&json).and_then(|()| file.sync_all());
                        if written.is_err() {
                            // Not durable: no half-written copy may pass for a stored update.
                            let _ = fs::remove_file(&path);
                        }
                        written
                    }
                    Err(err) => Err(err),
                }
            } else {
                let tmp = self.dir.join(format!(".{id}.tmp-{}-{}", std::process::id(), TMP.fetch_add(1, Ordering::Relaxed)));
                let written = (|| {
                    let mut file = fs::File::create(&tmp)?;
                    file.write_all(&json)?;
                    file.sync_all()?;
                    fs::hard_link(&tmp, &path)
                })();
                let _ = fs::remove_file(&tmp);
                written
            };
            match written {
                Ok(()) => {
                    results.push(None);
                    linked.push(i);
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => results.push(Some(Ok(Stored::Duplicate))),
                Err(err) => results.push(Some(Err(err))),
            }
        }
        if !linked.is_empty() {
            // One directory fsync makes every link of the batch durable.
            if let Ok(dir) = fs::File::open(&self.dir) {
                let _ = dir.sync_all();
            }
        }
        for i in linked {
            let id = updates[i].id.0;
            // Answered between the check above and the link: the link is a stale copy.
            results[i] = Some(if self.done_marker(id).exists() {
                let _ = fs::remove_file(self.file(id));
                Ok(Stored::Duplicate)
            } else {
                Ok(Stored::New)
            });
        }
        results.into_iter().map(|r| r.expect("every update has a result")).collect()
    }

    /// The update's turn has ended: forget it, remembering its id against redeliveries. The update's
    /// file becomes its marker by one rename (no new file per turn: creating one cost an inode
    /// allocation, and the removal another metadata update): a crash leaves either the question
    /// (replayed) or the marker (answered), never both, never neither.
    pub fn done(&self, id: u32) {
        let marker = self.done_marker(id);
        match fs::rename(self.file(id), &marker) {
            Ok(()) => {}
            // Not in the inbox (its store failed, or a replayed copy was removed): the marker alone.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if let Err(err) = fs::File::create(&marker) {
                    warn!(update_id = id, %err, "could not mark an update answered; a redelivery would be answered again");
                }
            }
            Err(err) => {
                warn!(update_id = id, %err, "could not move an answered update out of the inbox");
                if let Err(err) = fs::File::create(&marker) {
                    warn!(update_id = id, %err, "could not mark an update answered; a redelivery would be answered again");
                }
                let _ = fs::remove_file(self.file(id));
            }
        }
        if self.answered.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.prune_done();
        }
    }

    /// Whether an update_id was answered (within [`DONE_KEPT`]).
    pub fn answered(&self, id: u32) -> bool {
        self.done_marker(id).exists()
    }

    /// Updates left by an earlier run, oldest first. One that does not parse is moved aside.
    pub fn pending(&self) -> Vec<Update> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return vec![] };
        let mut found: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".json")?.parse().ok()?;
                Some((id, e.path()))
            })
            .collect();
        found.sort();
        let mut updates = vec![];
        for (id, path) in found {
            if self.answered(id) {
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Update>(&b).ok()) {
                Some(update) if update.id.0 == id => updates.push(update),
                _ => {
                    warn!(file = %path.display(), "unreadable update in the inbox: moved aside");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        if !updates.is_empty() {
            info!(count = updates.len(), "replaying updates a previous run did not finish");
        }
        updates
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

    #[test]
    fn stored_updates_come_back_in_order_until_done() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        for id in [12, 3, 7] {
            assert_eq!(inbox.store(&update(id)).unwrap(), Stored::New);
        }
        assert_eq!(inbox.store(&update(12)).unwrap(), Stored::Duplicate, "a second delivery while it waits");
        inbox.done(7);
        let again = Inbox::open(&dir).unwrap();
        let ids: Vec<u32> = again.pending().iter().map(|u| u.id.0).collect();
        assert_eq!(ids, [3, 12]);
        assert_eq!(again.pending()[0], update(3), "the update as it was delivered");
        fs::write(dir.join("20.json"), "{torn").unwrap();
        assert_eq!(again.pending().len(), 2);
        assert!(dir.join("20.corrupt").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_answered_update_is_not_taken_again_after_a_restart() {
        let dir = tempfile_dir();
        let inbox = Inbox::open(&dir).unwrap();
        inbox.store(&update(5)).unwrap();
        inbox.done(5);
        let again = Inbox::open(&dir).unwrap();
        assert_eq!(again.store(&update(5)).unwrap(), Stored::Duplicate);
        assert!(again.pending().is_empty());
        // A crash between the marker and the removal: answered, so not replayed.
        again.store(&update(6)).unwrap();
        fs::File::create(dir.join("done").join("6")).unwrap();
        assert!(Inbox::open(&dir).unwrap().pending().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swapbot-inbox-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }
}
