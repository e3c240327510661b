//! Session keys' stable text form, and the turn lock's hash of it.
//!
//! `private:<user>` is a private chat (and the terminal chat, `swapbot ask`); `group:<chat>:<user>`
//! is one member's session in a group (`GROUP_SESSIONS=per-user`), `group:<chat>` the group's
//! shared one (`per-group`). The host's `SessionKey` maps onto these one to one.

pub fn private(user_id: i64) -> String {
    format!("private:{user_id}")
}

pub fn group(chat_id: i64, user_id: Option<i64>) -> String {
    match user_id {
        Some(user) => format!("group:{chat_id}:{user}"),
        None => format!("group:{chat_id}"),
    }
}

/// A group key as the file store writes it in `group_*.json` (`"<chat>:<user>"` or `"<chat>"`).
pub(crate) fn from_group_map_key(key: &str) -> Option<String> {
    let key = key.trim();
    match key.split_once(':') {
        Some((chat, user)) => Some(group(chat.parse().ok()?, Some(user.parse().ok()?))),
        None => Some(group(key.parse().ok()?, None)),
    }
}

/// A group history file's stem as the file store names it (`<chat>_<user>` or `<chat>`).
pub(crate) fn from_group_file_stem(stem: &str) -> Option<String> {
    match stem.split_once('_') {
        Some((chat, user)) => Some(group(chat.parse().ok()?, Some(user.parse().ok()?))),
        None => Some(group(stem.parse().ok()?, None)),
    }
}

/// The advisory lock key of a session: 64-bit FNV-1a of the key text. Stable across builds and
/// replicas (std's hasher is not), and 64 bits rather than `hashtext`'s 32 so that two busy
/// sessions wait on each other by collision about never.
pub fn lock_hash(key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"swapbot-session:".iter().chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_the_file_stores_forms() {
        assert_eq!(private(123456789012), "private:123456789012");
        assert_eq!(
            from_group_map_key("-1001:7").as_deref(),
            Some("group:-1001:7")
        );
        assert_eq!(from_group_map_key("-1001").as_deref(), Some("group:-1001"));
        assert_eq!(
            from_group_file_stem("-1001_7").as_deref(),
            Some("group:-1001:7")
        );
        assert_eq!(from_group_map_key("x:7"), None);
    }

    #[test]
    fn the_lock_hash_is_fixed() {
        // Replicas of different builds must agree: this value may never change.
        assert_eq!(lock_hash("private:1"), lock_hash("private:1"));
        assert_ne!(lock_hash("private:1"), lock_hash("private:2"));
        // FNV-1a 64 of "swapbot-session:private:1", computed independently.
        assert_eq!(lock_hash("private:1") as u64, 0xadbb_511e_2d00_77e6);
    }
}
