//! A durable inbox: a question Telegram delivered is answered exactly once, even across a
//! SIGKILL or a stop mid-turn.
//!
//! Telegram forgets an update once a later `getUpdates` names a higher offset. The poller writes
//! every fetched message to `<dir>/<update_id>.json` (fsynced) before it asks for the next batch,
//! the dispatcher removes the file when the turn has ended (answered or apologised for), and at
//! start every file left is replayed, oldest first, before polling resumes past the highest id
//! (so Telegram does not deliver it a second time).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use teloxide::types::{Update, UpdateKind};
use tracing::{info, warn};

#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
}

impl Inbox {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn file(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Whether an update must go through the inbox: messages (the questions) do; other kinds
    /// carry nothing to answer.
    pub fn keeps(update: &Update) -> bool {
        matches!(update.kind, UpdateKind::Message(_))
    }

    /// Makes an update durable (written, fsynced, renamed into place, directory fsynced).
    pub fn store(&self, update: &Update) -> std::io::Result<()> {
        let path = self.file(update.id.0);
        if path.exists() {
            return Ok(());
        }
        let json = serde_json::to_vec(update).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{}.tmp-{}", update.id.0, std::process::id()));
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return written;
        }
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// The update's turn has ended: forget it.
    pub fn done(&self, id: u32) {
        match fs::remove_file(self.file(id)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => warn!(update_id = id, %err, "could not remove an answered update from the inbox"),
        }
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
            inbox.store(&update(id)).unwrap();
        }
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

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swapbot-inbox-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }
}
