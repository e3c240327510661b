//! Whose conversation a turn continues. A private chat's session is keyed by the user id, exactly as the
//! Python bot stored it in `user_threads.json` / `user_conversations.json`; a group's session lives in maps
//! of its own (`group_threads.json` / `group_conversations.json`, `history/groups/`), so nothing a user
//! said in private reaches a group answer, and nothing said in a group reaches a private one.

use std::sync::Arc;

use super::files::Message;
use crate::state::{HistoryStore, IdMap, StorageError, StoreKey};

/// How sessions in groups are keyed (`GROUP_SESSIONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupSessions {
    /// One session per (group, user): each member has their own conversation with the bot in that group.
    #[default]
    PerUser,
    /// One session per group, shared by its members (the bot follows the group's whole talk with it).
    PerGroup,
}

impl std::str::FromStr for GroupSessions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "per-user" | "per_user" | "user" => Ok(GroupSessions::PerUser),
            "per-group" | "per_group" | "group" => Ok(GroupSessions::PerGroup),
            other => Err(format!("expected per-user or per-group, got {other:?}")),
        }
    }
}

/// A group session's key: the group, and the user unless the group shares one session. Written
/// `"<chat>:<user>"` (or `"<chat>"`) in the group maps and `<chat>_<user>.jsonl` as a history file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub chat: i64,
    pub user: Option<i64>,
}

impl StoreKey for GroupKey {
    fn to_key(&self) -> String {
        match self.user {
            Some(user) => format!("{}:{user}", self.chat),
            None => self.chat.to_string(),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        let key = key.trim();
        match key.split_once(':') {
            Some((chat, user)) => Some(GroupKey { chat: chat.parse().ok()?, user: Some(user.parse().ok()?) }),
            None => Some(GroupKey { chat: key.parse().ok()?, user: None }),
        }
    }

    fn file_stem(&self) -> String {
        match self.user {
            Some(user) => format!("{}_{user}", self.chat),
            None => self.chat.to_string(),
        }
    }
}

/// The session a turn belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKey {
    /// A private chat (also the terminal chat and `swapbot ask`): the user id.
    Private(i64),
    Group(GroupKey),
}

impl SessionKey {
    /// The session of a message from `user_id` in `chat_id`.
    pub fn for_chat(user_id: i64, chat_id: i64, private: bool, groups: GroupSessions) -> Self {
        if private {
            return SessionKey::Private(user_id);
        }
        let user = match groups {
            GroupSessions::PerUser => Some(user_id),
            GroupSessions::PerGroup => None,
        };
        SessionKey::Group(GroupKey { chat: chat_id, user })
    }

    /// For log lines: `private` or `group:<key>`.
    pub fn label(&self) -> String {
        match self {
            SessionKey::Private(_) => "private".into(),
            SessionKey::Group(g) => format!("group:{}", g.to_key()),
        }
    }
}

impl From<i64> for SessionKey {
    fn from(user_id: i64) -> Self {
        SessionKey::Private(user_id)
    }
}

/// The group map kept beside a backend's private map: `user_threads.json` → `group_threads.json`.
/// Group session maps are derived from the private ones: a plugin's id map cannot start with it.
pub const GROUP_MAP_PREFIX: &str = "group_";

pub fn group_map_file(private_file: &str) -> String {
    format!("{GROUP_MAP_PREFIX}{}", private_file.strip_prefix("user_").unwrap_or(private_file))
}

/// One backend's session ids, both kinds of key.
#[derive(Clone)]
pub struct SessionIds {
    pub private: Arc<IdMap>,
    pub groups: Arc<IdMap<GroupKey>>,
}

impl SessionIds {
    pub fn get(&self, key: SessionKey) -> Option<String> {
        match key {
            SessionKey::Private(user) => self.private.get(user),
            SessionKey::Group(g) => self.groups.get(g),
        }
    }

    pub fn set(&self, key: SessionKey, id: &str) -> Result<(), StorageError> {
        match key {
            SessionKey::Private(user) => self.private.set(user, id),
            SessionKey::Group(g) => self.groups.set(g, id),
        }
    }

    pub fn remove(&self, key: SessionKey) -> Result<(), StorageError> {
        match key {
            SessionKey::Private(user) => self.private.remove(user),
            SessionKey::Group(g) => self.groups.remove(g),
        }
    }
}

/// The replay history, both kinds of key.
#[derive(Clone)]
pub struct SessionHistory {
    pub private: Arc<HistoryStore>,
    pub groups: Arc<HistoryStore<GroupKey>>,
}

impl SessionHistory {
    pub fn recent(&self, key: SessionKey) -> Vec<Message> {
        match key {
            SessionKey::Private(user) => self.private.recent(user),
            SessionKey::Group(g) => self.groups.recent(g),
        }
    }

    pub fn append_turn(&self, key: SessionKey, question: &str, answer: &str) -> Result<(), StorageError> {
        match key {
            SessionKey::Private(user) => self.private.append_turn(user, question, answer),
            SessionKey::Group(g) => self.groups.append_turn(g, question, answer),
        }
    }

    pub async fn append_turn_async(&self, key: SessionKey, question: &str, answer: &str) -> Result<(), StorageError> {
        match key {
            SessionKey::Private(user) => self.private.append_turn_async(user, question, answer).await,
            SessionKey::Group(g) => self.groups.append_turn_async(g, question, answer).await,
        }
    }

    pub fn clear(&self, key: SessionKey) -> Result<(), StorageError> {
        match key {
            SessionKey::Private(user) => self.private.clear(user),
            SessionKey::Group(g) => self.groups.clear(g),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_chat_kind_and_setting() {
        assert_eq!(SessionKey::for_chat(42, 42, true, GroupSessions::PerGroup), SessionKey::Private(42));
        assert_eq!(
            SessionKey::for_chat(42, -100, false, GroupSessions::PerUser),
            SessionKey::Group(GroupKey { chat: -100, user: Some(42) })
        );
        assert_eq!(SessionKey::for_chat(42, -100, false, GroupSessions::PerGroup), SessionKey::Group(GroupKey { chat: -100, user: None }));
        assert_eq!("per-group".parse::<GroupSessions>().unwrap(), GroupSessions::PerGroup);
        assert!("per-topic".parse::<GroupSessions>().is_err());
    }

    #[test]
    fn group_keys_round_trip_with_big_negative_ids() {
        for key in [GroupKey { chat: -1_001_234_567_890, user: Some(5_000_000_001) }, GroupKey { chat: -42, user: None }] {
            assert_eq!(GroupKey::from_key(&key.to_key()), Some(key));
        }
        assert_eq!(GroupKey { chat: -1001, user: Some(7) }.to_key(), "-1001:7");
        assert_eq!(GroupKey { chat: -1001, user: Some(7) }.file_stem(), "-1001_7");
        assert_eq!(GroupKey::from_key("x:1"), None);
        assert_eq!(group_map_file("user_conversations.json"), "group_conversations.json");
        assert_eq!(group_map_file("user_threads.json"), "group_threads.json");
    }

    #[test]
    fn private_and_group_sessions_live_in_separate_files() {
        let dir = tempfile::tempdir().unwrap();
        let ids = SessionIds {
            private: Arc::new(IdMap::open(dir.path().join("user_conversations.json"))),
            groups: Arc::new(IdMap::open_keyed(dir.path().join("group_conversations.json"))),
        };
        let group = SessionKey::Group(GroupKey { chat: -1001, user: Some(7) });
        ids.set(SessionKey::Private(7), "conv_private").unwrap();
        ids.set(group, "conv_group").unwrap();
        assert_eq!(ids.get(SessionKey::Private(7)).as_deref(), Some("conv_private"));
        assert_eq!(ids.get(group).as_deref(), Some("conv_group"));
        // The private file is the Python bot's format, untouched by group sessions.
        assert_eq!(std::fs::read_to_string(dir.path().join("user_conversations.json")).unwrap(), r#"{"7":"conv_private"}"#);
        assert_eq!(std::fs::read_to_string(dir.path().join("group_conversations.json")).unwrap(), r#"{"-1001:7":"conv_group"}"#);
        ids.remove(group).unwrap();
        assert_eq!(ids.get(group), None);
        assert_eq!(ids.get(SessionKey::Private(7)).as_deref(), Some("conv_private"));
        let reread: IdMap<GroupKey> = IdMap::open_keyed(dir.path().join("group_conversations.json"));
        assert!(reread.is_empty());
    }

    #[test]
    fn private_and_group_histories_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let history = SessionHistory {
            private: Arc::new(HistoryStore::open(dir.path().join("history"))),
            groups: Arc::new(HistoryStore::open_keyed(dir.path().join("history/groups"))),
        };
        let group = SessionKey::Group(GroupKey { chat: -1001, user: Some(7) });
        history.append_turn(SessionKey::Private(7), "my secret is 42", "noted").unwrap();
        history.append_turn(group, "hello group", "hi").unwrap();
        let texts = |key| history.recent(key).into_iter().map(|m| m.text).collect::<Vec<_>>();
        assert_eq!(texts(SessionKey::Private(7)), vec!["my secret is 42", "noted"]);
        assert_eq!(texts(group), vec!["hello group", "hi"]);
        assert!(dir.path().join("history/7.jsonl").exists());
        assert!(dir.path().join("history/groups/-1001_7.jsonl").exists());
        history.clear(group).unwrap();
        assert!(texts(group).is_empty());
        assert_eq!(texts(SessionKey::Private(7)).len(), 2, "/new in a group keeps the private history");
    }
}
