//! Groups: whether a message is addressed to the bot, and the text the model gets from it.
//!
//! A bot that answers every message talks over people, so in groups (unless the operator sets
//! `GROUP_MODE=all`) only a message that mentions the bot, replies to one of its messages or is a command
//! for it starts a turn. Private chats are always addressed.

use teloxide::types::{Me, Message, MessageEntityKind, MessageEntityRef, MessageKind};

use crate::parse_command;

/// What the bot answers in groups and supergroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupMode {
    /// Only messages addressed to the bot: a mention, a reply to its message, a command for it.
    #[default]
    Mention,
    /// Every message (commands meant for another bot excepted).
    All,
}

impl std::str::FromStr for GroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mention" | "mentions" | "addressed" => Ok(GroupMode::Mention),
            "all" => Ok(GroupMode::All),
            other => Err(format!("expected mention or all, got {other:?}")),
        }
    }
}

/// The entities of the text, or of the caption for media.
fn entities(msg: &Message) -> Vec<MessageEntityRef<'_>> {
    msg.parse_entities().or_else(|| msg.parse_caption_entities()).unwrap_or_default()
}

fn is_bot_mention(e: &MessageEntityRef<'_>, me: &Me) -> bool {
    match e.kind() {
        MessageEntityKind::Mention => {
            let name = e.text().trim_start_matches('@');
            me.user.username.as_deref().is_some_and(|u| !u.is_empty() && u.eq_ignore_ascii_case(name))
        }
        MessageEntityKind::TextMention { user } => user.id == me.user.id,
        _ => false,
    }
}

/// The text (or caption) mentions the bot: a `mention` entity of its username or a `text_mention` of it.
pub fn mentions_bot(msg: &Message, me: &Me) -> bool {
    entities(msg).iter().any(|e| is_bot_mention(e, me))
}

/// The message replies to one of the bot's messages. In a forum topic every message carries a
/// `reply_to_message` that is the topic's creation service message (sent by the bot when the bot made the
/// topic): that is the topic, not a reply.
pub fn replies_to_bot(msg: &Message, me: &Me) -> bool {
    let Some(replied) = msg.reply_to_message() else { return false };
    if matches!(replied.kind, MessageKind::ForumTopicCreated(_)) {
        return false;
    }
    if msg.is_topic_message && msg.thread_id.is_some_and(|t| t.0 == replied.id) {
        return false;
    }
    replied.from.as_ref().is_some_and(|u| u.id == me.user.id)
}

/// Whether a message should get an answer. Private chats: always. Groups: a command for this bot
/// (`/cmd@thisbot`, or a bare `/cmd` as Telegram delivers it), a mention, a reply to the bot; with
/// [`GroupMode::All`] everything but commands for other bots.
pub fn is_addressed(msg: &Message, me: &Me, mode: GroupMode) -> bool {
    if msg.chat.is_private() {
        return true;
    }
    let bot_name = me.user.username.as_deref().unwrap_or("");
    if let Some(cmd) = msg.text().and_then(|t| parse_command(t, bot_name)) {
        return !cmd.for_other_bot;
    }
    mode == GroupMode::All || mentions_bot(msg, me) || replies_to_bot(msg, me)
}

/// The message text with the bot's mentions removed (the model should get the question, not "@bot"): the
/// pieces between mentions are trimmed and joined by one space (none before punctuation), and a `,` or `:`
/// right after a leading mention ("@bot, what is…") goes with it.
pub fn strip_bot_mentions(msg: &Message, me: &Me) -> Option<String> {
    let text = msg.text()?;
    let mut cuts: Vec<std::ops::Range<usize>> =
        entities(msg).iter().filter(|e| is_bot_mention(e, me)).map(|e| e.range()).collect();
    cuts.sort_by_key(|r| r.start);
    let mut pieces = vec![];
    let mut pos = 0;
    for cut in cuts {
        if cut.start < pos {
            continue;
        }
        pieces.push(&text[pos..cut.start]);
        pos = cut.end;
    }
    pieces.push(&text[pos..]);
    let mut out = String::new();
    for piece in pieces {
        let mut piece = piece.trim();
        if out.is_empty() {
            piece = piece.trim_start_matches([',', ':']).trim_start();
        }
        if piece.is_empty() {
            continue;
        }
        if !out.is_empty() && !piece.starts_with([',', '.', '?', '!', ';', ':']) {
            out.push(' ');
        }
        out.push_str(piece);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOT_ID: u64 = 7_000_000_001;

    fn me() -> Me {
        serde_json::from_value(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "SwapBot", "username": "swapbot_test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false,
        }))
        .unwrap()
    }

    fn user(id: u64) -> serde_json::Value {
        json!({ "id": id, "is_bot": id == BOT_ID, "first_name": "U" })
    }

    fn utf16(s: &str) -> usize {
        s.encode_utf16().count()
    }

    /// A group text message with `mention` entities computed like Telegram's, plus `extra` fields.
    fn group_msg(text: &str, extra: serde_json::Value) -> Message {
        let mut entities = vec![];
        for (i, _) in text.match_indices('@') {
            let len = text[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').count();
            entities.push(json!({ "type": "mention", "offset": utf16(&text[..i]), "length": len + 1 }));
        }
        if text.starts_with('/') {
            entities.push(json!({ "type": "bot_command", "offset": 0, "length": utf16(text.split_whitespace().next().unwrap()) }));
        }
        let mut v = json!({
            "message_id": 10, "date": 0,
            "chat": { "id": -1001, "type": "supergroup", "title": "G", "is_forum": true },
            "from": user(42), "text": text, "entities": entities,
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn what_counts_as_addressed() {
        let me = me();
        let m = GroupMode::Mention;
        assert!(is_addressed(&group_msg("@swapbot_test_bot hi", json!({})), &me, m));
        assert!(is_addressed(&group_msg("hi @SwapBot_Test_Bot", json!({})), &me, m), "usernames are case-insensitive");
        assert!(!is_addressed(&group_msg("hi @other_bot", json!({})), &me, m));
        assert!(!is_addressed(&group_msg("hi everyone", json!({})), &me, m));
        assert!(is_addressed(&group_msg("/new", json!({})), &me, m));
        assert!(is_addressed(&group_msg("/new@swapbot_test_bot", json!({})), &me, m));
        assert!(!is_addressed(&group_msg("/new@other_bot", json!({})), &me, m));
        assert!(!is_addressed(&group_msg("/new@other_bot", json!({})), &me, GroupMode::All));
        assert!(is_addressed(&group_msg("hi everyone", json!({})), &me, GroupMode::All));
        // text_mention of the bot (a user without username would look like this).
        let tm = group_msg("hey bot", json!({ "entities": [{ "type": "text_mention", "offset": 4, "length": 3, "user": user(BOT_ID) }] }));
        assert!(is_addressed(&tm, &me, m));
        let tm_other = group_msg("hey bob", json!({ "entities": [{ "type": "text_mention", "offset": 4, "length": 3, "user": user(43) }] }));
        assert!(!is_addressed(&tm_other, &me, m));
        // A reply to the bot's message, and to someone else's.
        let reply = |from: u64| json!({ "reply_to_message": { "message_id": 5, "date": 0, "chat": { "id": -1001, "type": "supergroup", "title": "G" }, "from": user(from), "text": "earlier" } });
        assert!(is_addressed(&group_msg("and then?", reply(BOT_ID)), &me, m));
        assert!(!is_addressed(&group_msg("and then?", reply(43)), &me, m));
    }

    #[test]
    fn the_topic_creation_message_is_not_a_reply_to_the_bot() {
        let me = me();
        // The bot created the topic: its creation message is "from" the bot, and every topic message
        // carries it as reply_to_message.
        let in_topic = json!({
            "message_thread_id": 3, "is_topic_message": true,
            "reply_to_message": {
                "message_id": 3, "date": 0, "chat": { "id": -1001, "type": "supergroup", "title": "G", "is_forum": true },
                "from": user(BOT_ID), "message_thread_id": 3, "is_topic_message": true,
                "forum_topic_created": { "name": "Ideas", "icon_color": 7322096 },
            },
        });
        assert!(!is_addressed(&group_msg("talking among ourselves", in_topic.clone()), &me, GroupMode::Mention));
        assert!(is_addressed(&group_msg("@swapbot_test_bot help us", in_topic), &me, GroupMode::Mention));
    }

    #[test]
    fn the_mention_is_stripped_from_the_question() {
        let me = me();
        let s = |t: &str| strip_bot_mentions(&group_msg(t, json!({})), &me).unwrap();
        assert_eq!(s("@swapbot_test_bot what is my name?"), "what is my name?");
        assert_eq!(s("@swapbot_test_bot, what is my name?"), "what is my name?");
        assert_eq!(s("what is my name @swapbot_test_bot?"), "what is my name?");
        assert_eq!(s("hey @swapbot_test_bot  tell @other_bot hi"), "hey tell @other_bot hi");
        assert_eq!(s("тест 🙂 @swapbot_test_bot ok"), "тест 🙂 ok", "offsets are UTF-16 units");
        assert_eq!(s("@swapbot_test_bot"), "");
        assert_eq!(s("line one\n@swapbot_test_bot\nline two"), "line one line two");
        assert_eq!(s("no mention here"), "no mention here");
    }

    #[test]
    fn parses_the_setting() {
        assert_eq!("mention".parse::<GroupMode>().unwrap(), GroupMode::Mention);
        assert_eq!(" ALL ".parse::<GroupMode>().unwrap(), GroupMode::All);
        assert!("sometimes".parse::<GroupMode>().is_err());
    }
}
