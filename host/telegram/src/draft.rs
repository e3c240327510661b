//! `sendMessageDraft` (Bot API 9.3+) as a teloxide payload: teloxide 0.17 has no method for it.
//! It goes through teloxide's own request path (`JsonRequest`), so its errors redact the token like every
//! other teloxide request.

use serde::Serialize;
use teloxide::{
    Bot, RequestError,
    requests::{JsonRequest, Payload, Request},
    types::True,
};

/// Parameters of `sendMessageDraft`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendMessageDraft {
    /// Private chat id.
    pub chat_id: i64,
    /// Non-zero; the same id animates one draft in place.
    pub draft_id: i64,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i32>,
}

impl Payload for SendMessageDraft {
    type Output = True;
    const NAME: &'static str = "SendMessageDraft";
}

/// Sends (or updates) a draft, in the private chat's topic when the question came from one.
pub async fn send_message_draft(
    bot: &Bot,
    chat_id: i64,
    draft_id: i64,
    message_thread_id: Option<i32>,
    text: String,
) -> Result<(), RequestError> {
    debug_assert!(draft_id != 0, "draft_id must be non-zero");
    let payload = SendMessageDraft { chat_id, draft_id, text, parse_mode: None, message_thread_id };
    JsonRequest::new(bot.clone(), payload).send().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_without_empty_options() {
        let p = SendMessageDraft { chat_id: 5, draft_id: 9, text: "hi".into(), parse_mode: None, message_thread_id: None };
        assert_eq!(serde_json::to_value(&p).unwrap(), serde_json::json!({"chat_id": 5, "draft_id": 9, "text": "hi"}));
        assert_eq!(<SendMessageDraft as Payload>::NAME, "SendMessageDraft");
    }
}
