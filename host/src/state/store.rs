//! What a turn needs of the state, behind one trait with two implementations chosen at start:
//! [`FileStore`] (`DATA_DIR`, one process) and [`PgSessionStore`] (`DATABASE_URL`, any number of
//! replicas sharing one database).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{GroupKey, HistoryStore, IdMap, Message, Role, SessionHistory, SessionIds, SessionKey, StorageError, group_map_file};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Files(#[from] StorageError),
    #[error("{0}")]
    Database(#[from] swapbot_pg::StoreError),
    #[error("a storage task failed: {0}")]
    Task(String),
}

/// Held for the whole turn of one session; dropping it lets the session's next turn run.
pub struct TurnLock {
    _held: Box<dyn Send + Sync>,
}

/// Session ids (per backend id map, named by the map's file name), the replay history, and the
/// one-turn-per-session lock.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    async fn session_id(&self, map: &str, key: SessionKey) -> Result<Option<String>, StoreError>;
    async fn set_session_id(&self, map: &str, key: SessionKey, id: &str) -> Result<(), StoreError>;
    /// Forgets `key`'s session in every map named, and in any other the store knows of.
    async fn remove_sessions(&self, maps: &[String], key: SessionKey) -> Result<(), StoreError>;
    /// The session's history, oldest first.
    async fn recent(&self, key: SessionKey) -> Result<Vec<Message>, StoreError>;
    async fn append_exchange(&self, key: SessionKey, question: &str, answer: &str) -> Result<(), StoreError>;
    async fn clear_history(&self, key: SessionKey) -> Result<(), StoreError>;
    /// Waits until no other turn of `key` runs (in this process, or with a database in any
    /// replica) and holds that until the lock is dropped.
    async fn lock_turn(&self, key: SessionKey) -> Result<TurnLock, StoreError>;
}

/// The file store under `DATA_DIR`, as one process has always kept it.
pub struct FileStore {
    data_dir: PathBuf,
    /// Each backend's session ids (private and group), by the id map its plugin names, opened
    /// when a plugin first names it.
    session_maps: Mutex<HashMap<String, SessionIds>>,
    history: SessionHistory,
    /// One turn per session at a time (a session's conversation takes one response at a time).
    user_locks: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl FileStore {
    pub fn open(data_dir: &std::path::Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            session_maps: Mutex::new(HashMap::new()),
            history: SessionHistory {
                private: Arc::new(HistoryStore::open(data_dir.join("history"))),
                groups: Arc::new(HistoryStore::open_keyed(data_dir.join("history").join("groups"))),
            },
            user_locks: Mutex::new(HashMap::new()),
        }
    }

    /// A backend's session ids (private and group) by the private map's file name, which the
    /// registry has checked to be a plain file of this backend's under `DATA_DIR`.
    pub fn session_ids(&self, file: &str) -> SessionIds {
        let mut maps = self.session_maps.lock().unwrap();
        maps.entry(file.to_owned())
            .or_insert_with(|| SessionIds {
                private: Arc::new(IdMap::open(self.data_dir.join(file))),
                groups: Arc::new(IdMap::<GroupKey>::open_keyed(self.data_dir.join(group_map_file(file)))),
            })
            .clone()
    }

    pub fn history(&self) -> &SessionHistory {
        &self.history
    }

    fn known_maps(&self) -> Vec<String> {
        self.session_maps.lock().unwrap().keys().cloned().collect()
    }
}

/// Runs a write that fsyncs off the async workers.
async fn blocking(f: impl FnOnce() -> Result<(), StorageError> + Send + 'static) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))?.map_err(StoreError::from)
}

#[async_trait::async_trait]
impl SessionStore for FileStore {
    async fn session_id(&self, map: &str, key: SessionKey) -> Result<Option<String>, StoreError> {
        Ok(self.session_ids(map).get(key))
    }

    async fn set_session_id(&self, map: &str, key: SessionKey, id: &str) -> Result<(), StoreError> {
        let (ids, id) = (self.session_ids(map), id.to_owned());
        blocking(move || ids.set(key, &id)).await
    }

    async fn remove_sessions(&self, maps: &[String], key: SessionKey) -> Result<(), StoreError> {
        let mut all: std::collections::BTreeSet<String> = maps.iter().cloned().collect();
        all.extend(self.known_maps());
        for map in all {
            let ids = self.session_ids(&map);
            blocking(move || ids.remove(key)).await?;
        }
        Ok(())
    }

    async fn recent(&self, key: SessionKey) -> Result<Vec<Message>, StoreError> {
        Ok(self.history.recent(key))
    }

    async fn append_exchange(&self, key: SessionKey, question: &str, answer: &str) -> Result<(), StoreError> {
        self.history.append_turn_async(key, question, answer).await.map_err(StoreError::from)
    }

    async fn clear_history(&self, key: SessionKey) -> Result<(), StoreError> {
        let history = self.history.clone();
        blocking(move || history.clear(key)).await
    }

    async fn lock_turn(&self, key: SessionKey) -> Result<TurnLock, StoreError> {
        let lock = {
            let mut locks = self.user_locks.lock().unwrap();
            // Forget the locks nobody holds, now and then, so the map does not grow with every
            // user ever seen.
            if locks.len() >= 4096 && locks.len().is_power_of_two() {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(key).or_default().clone()
        };
        Ok(TurnLock { _held: Box::new(lock.lock_owned().await) })
    }
}

/// The PostgreSQL store: every replica sees the same sessions, and a session's turn lock is a
/// server-side advisory lock, released when the turn ends or when the replica's connection dies.
pub struct PgSessionStore {
    pg: swapbot_pg::PgStore,
}

impl PgSessionStore {
    pub fn new(pg: swapbot_pg::PgStore) -> Self {
        Self { pg }
    }
}

/// The session key's stable text form in the database.
pub fn pg_key(key: SessionKey) -> String {
    match key {
        SessionKey::Private(user) => swapbot_pg::key::private(user),
        SessionKey::Group(g) => swapbot_pg::key::group(g.chat, g.user),
    }
}

#[async_trait::async_trait]
impl SessionStore for PgSessionStore {
    async fn session_id(&self, map: &str, key: SessionKey) -> Result<Option<String>, StoreError> {
        Ok(self.pg.session_id(map, &pg_key(key)).await?)
    }

    async fn set_session_id(&self, map: &str, key: SessionKey, id: &str) -> Result<(), StoreError> {
        Ok(self.pg.set_session_id(map, &pg_key(key), id).await?)
    }

    async fn remove_sessions(&self, _maps: &[String], key: SessionKey) -> Result<(), StoreError> {
        // One statement forgets the key in every map, loaded or not.
        self.pg.remove_session(&pg_key(key)).await?;
        Ok(())
    }

    async fn recent(&self, key: SessionKey) -> Result<Vec<Message>, StoreError> {
        let rows = self.pg.recent(&pg_key(key)).await?;
        Ok(rows
            .into_iter()
            .map(|(role, text)| Message {
                role: match role {
                    swapbot_pg::Role::User => Role::User,
                    swapbot_pg::Role::Assistant => Role::Assistant,
                },
                text,
            })
            .collect())
    }

    async fn append_exchange(&self, key: SessionKey, question: &str, answer: &str) -> Result<(), StoreError> {
        Ok(self.pg.append_exchange(&pg_key(key), question, answer).await?)
    }

    async fn clear_history(&self, key: SessionKey) -> Result<(), StoreError> {
        self.pg.clear_history(&pg_key(key)).await?;
        Ok(())
    }

    async fn lock_turn(&self, key: SessionKey) -> Result<TurnLock, StoreError> {
        let guard = self.pg.lock_session(&pg_key(key)).await?;
        Ok(TurnLock { _held: Box::new(guard) })
    }
}
