//! Long polling that one bad update cannot stop.
//!
//! teloxide's `Polling` parses a `getUpdates` answer as a whole: one update it cannot decode (a lone
//! UTF-16 surrogate escape was enough) failed every poll at the same offset and wedged the bot for
//! everyone. Here an answer that does not parse is read update by update: lone surrogates become
//! U+FFFD, an update that still does not decode is skipped past its `update_id` with a log line, and
//! the others are delivered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde_json::Value;
use teloxide::{
    Bot, RequestError,
    errors::AsResponseParameters,
    payloads::GetUpdatesSetters,
    prelude::Requester,
    requests::Request,
    stop::{StopFlag, StopToken, mk_stop_token},
    types::Update,
    update_listeners::{StatefulListener, UpdateListener},
};
use tracing::warn;

use crate::inbox::{Inbox, Stored};
use crate::pacing::polling_backoff;

/// What an undecodable `getUpdates` answer still yields.
#[derive(Debug, Default)]
pub struct Salvaged {
    pub updates: Vec<Update>,
    /// Ids of updates skipped because they do not decode even after repair.
    pub skipped: Vec<i64>,
    /// The highest `update_id` seen (decoded or not): the next offset is past it.
    pub last_id: Option<i64>,
}

/// Replaces JSON `\uXXXX` escapes of unpaired UTF-16 surrogates with `\uFFFD`, which every JSON
/// parser accepts; paired surrogates and everything else are left as they are.
pub fn repair_lone_surrogates(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let hex_at = |i: usize| -> Option<u32> {
        let digits = raw.get(i..i + 4)?;
        if digits.bytes().all(|b| b.is_ascii_hexdigit()) { u32::from_str_radix(digits, 16).ok() } else { None }
    };
    // The code unit of a `\uXXXX` escape starting at byte `i`.
    let escape_at = |i: usize| -> Option<u32> {
        (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u')).then(|| hex_at(i + 2)).flatten()
    };
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(high @ 0xD800..=0xDBFF) if matches!(escape_at(i + 6), Some(0xDC00..=0xDFFF)) => {
                let _ = high;
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.push_str(&raw[copied..i]);
                out.push_str("\\uFFFD");
                i += 6;
                copied = i;
            }
            Some(_) => i += 6,
            // Any other escape (`\\`, `\"`, `\n`, …): skip both bytes so an escaped backslash
            // followed by `u` is not read as an escape.
            None => i += 2,
        }
    }
    out.push_str(&raw[copied.min(raw.len())..]);
    out
}

/// Reads a `getUpdates` answer that failed to parse as a whole, update by update.
pub fn salvage(raw: &str) -> Salvaged {
    let mut salvaged = Salvaged::default();
    let repaired = repair_lone_surrogates(raw);
    let Ok(body) = serde_json::from_str::<Value>(&repaired) else {
        // Not JSON even after repair: the ids are still findable, so the poller moves past them.
        salvaged.skipped = scan_update_ids(raw).filter(|id| usable_id(*id)).collect();
        salvaged.last_id = salvaged.skipped.iter().copied().max();
        return salvaged;
    };
    let items = body.get("result").and_then(Value::as_array).cloned().unwrap_or_default();
    for item in items {
        let id = item.get("update_id").and_then(Value::as_i64).filter(|id| usable_id(*id));
        if let Some(id) = id {
            salvaged.last_id = Some(salvaged.last_id.map_or(id, |last| last.max(id)));
        }
        // From text, not from the `Value`: teloxide's `Update` does not decode from a `Value`.
        match serde_json::from_str::<Update>(&item.to_string()) {
            Ok(update) => salvaged.updates.push(update),
            Err(_) => salvaged.skipped.extend(id),
        }
    }
    salvaged
}

/// An id an offset can move past (Telegram's fit in an i32).
fn usable_id(id: i64) -> bool {
    (0..i64::from(i32::MAX)).contains(&id)
}

/// Every `"update_id": N` in a text, without parsing it as JSON.
fn scan_update_ids(raw: &str) -> impl Iterator<Item = i64> + '_ {
    raw.match_indices("\"update_id\"").filter_map(move |(at, key)| {
        let rest = raw[at + key.len()..].trim_start().strip_prefix(':')?.trim_start();
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

pub(crate) struct PollState {
    bot: Bot,
    offset: i32,
    timeout: Duration,
    buffer: VecDeque<Update>,
    errors: u32,
    token: StopToken,
    flag: StopFlag,
    inbox: Option<Arc<Inbox>>,
}

impl PollState {
    /// Queues fetched updates for the dispatcher; with an inbox, each question is durable before
    /// the next `getUpdates` (which confirms it to Telegram) is sent.
    fn queue(&mut self, updates: impl IntoIterator<Item = Update>) {
        let updates: Vec<Update> = updates.into_iter().collect();
        let Some(inbox) = &self.inbox else {
            self.buffer.extend(updates);
            return;
        };
        // One group commit for the questions of this answer, before the next getUpdates confirms them.
        let kept: Vec<usize> = (0..updates.len()).filter(|&i| Inbox::keeps(&updates[i])).collect();
        let batch: Vec<&Update> = kept.iter().map(|&i| &updates[i]).collect();
        let mut stored = inbox.store_batch(&batch).into_iter();
        let mut results: Vec<Option<std::io::Result<Stored>>> = (0..updates.len()).map(|_| None).collect();
        for &i in &kept {
            results[i] = stored.next();
        }
        for (update, result) in updates.into_iter().zip(results) {
            match result {
                None | Some(Ok(Stored::New)) => {}
                // Answered before a crash that came before its offset was confirmed.
                Some(Ok(Stored::Duplicate)) => continue,
                Some(Err(err)) => {
                    tracing::error!(update_id = update.id.0, %err, "could not write an update to the inbox; a crash now would lose it")
                }
            }
            self.buffer.push_back(update);
        }
    }
}

/// The update listener the dispatcher runs: long polling like teloxide's, salvaging bad answers;
/// with an inbox, first the updates an earlier run left unfinished.
pub(crate) fn listener(bot: Bot, timeout: Duration, inbox: Option<Arc<Inbox>>) -> impl UpdateListener<Err = RequestError> {
    let (token, flag) = mk_stop_token();
    let replay = inbox.as_ref().map(|inbox| inbox.pending()).unwrap_or_default();
    // Polling resumes past what is replayed: Telegram must not deliver it a second time.
    let offset = replay.last().map_or(0, |u| u.id.as_offset());
    let buffer = replay.into_iter().collect();
    let state = PollState { bot, offset, timeout, buffer, errors: 0, token, flag, inbox };
    StatefulListener::new(state, updates, |state: &mut PollState| state.token.clone())
}

fn updates(state: &mut PollState) -> impl Stream<Item = Result<Update, RequestError>> + Send + '_ {
    futures::stream::unfold(state, |state| async move {
        loop {
            if let Some(update) = state.buffer.pop_front() {
                return Some((Ok(update), state));
            }
            if state.flag.is_stopped() {
                // Confirm what was delivered, so a restart does not see it again.
                let _ = state.bot.get_updates().offset(state.offset).limit(1).timeout(0).send().await;
                return None;
            }
            let request = state.bot.get_updates().offset(state.offset).timeout(state.timeout.as_secs() as u32).send();
            let result = tokio::select! {
                result = request => result,
                () = state.flag.clone() => continue,
            };
            match result {
                Ok(updates) => {
                    state.errors = 0;
                    if let Some(last) = updates.last() {
                        state.offset = state.offset.max(last.id.as_offset());
                    }
                    state.queue(updates);
                }
                Err(RequestError::InvalidJson { raw, .. }) => {
                    let salvaged = salvage(&raw);
                    // The log names ids only: the raw answer holds users' messages.
                    warn!(
                        delivered = salvaged.updates.len(),
                        skipped = ?salvaged.skipped,
                        "a getUpdates answer did not parse; read it update by update"
                    );
                    match salvaged.last_id {
                        Some(last) => {
                            state.offset = state.offset.max((last + 1) as i32);
                            state.queue(salvaged.updates);
                        }
                        None => {
                            let wait = polling_backoff(state.errors);
                            state.errors = state.errors.saturating_add(1);
                            sleep_or_stop(wait, &state.flag).await;
                        }
                    }
                }
                Err(err) => {
                    let wait = match err.retry_after() {
                        Some(after) => after.duration(),
                        None => {
                            let wait = polling_backoff(state.errors);
                            state.errors = state.errors.saturating_add(1);
                            wait
                        }
                    };
                    // The dispatcher's error handler logs it (redacted); then wait and poll again.
                    sleep_or_stop(wait, &state.flag).await;
                    return Some((Err(err), state));
                }
            }
        }
    })
}

async fn sleep_or_stop(wait: Duration, flag: &StopFlag) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = flag.clone() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_are_repaired_and_pairs_kept() {
        assert_eq!(repair_lone_surrogates(r#""a\ud800b""#), r#""a\uFFFDb""#);
        assert_eq!(repair_lone_surrogates(r#""\udc00""#), r#""\uFFFD""#);
        assert_eq!(repair_lone_surrogates(r#""\ud83d\ude00""#), r#""\ud83d\ude00""#, "a pair is an emoji");
        assert_eq!(repair_lone_surrogates(r#""\ud83d\u0041""#), r#""\uFFFD\u0041""#);
        assert_eq!(repair_lone_surrogates(r#""\\ud800""#), r#""\\ud800""#, "an escaped backslash, not an escape");
        assert_eq!(repair_lone_surrogates(r#""Привет \ud800""#), r#""Привет \uFFFD""#);
        assert_eq!(repair_lone_surrogates(r#"\u12"#), r#"\u12"#);
    }

    fn message(id: i64, text: &str) -> String {
        format!(
            r#"{{"update_id":{id},"message":{{"message_id":{id},"date":1700000000,"chat":{{"id":5,"type":"private","first_name":"U"}},"from":{{"id":5,"is_bot":false,"first_name":"U"}},"text":"{text}"}}}}"#
        )
    }

    #[test]
    fn a_bad_update_does_not_take_the_others_down() {
        let raw = format!(r#"{{"ok":true,"result":[{},{},{}]}}"#, message(7, "fine"), message(8, r"bad \ud800 text"), r#"{"update_id":9,"message":"not a message"}"#);
        assert!(serde_json::from_str::<Value>(&raw).is_err(), "the answer as Telegram sent it does not parse");
        let salvaged = salvage(&raw);
        let ids: Vec<u32> = salvaged.updates.iter().map(|u| u.id.0).collect();
        // The repaired one is delivered too; one of a kind teloxide does not know is its to ignore.
        assert_eq!(ids, [7, 8, 9]);
        assert!(salvaged.skipped.is_empty());
        assert_eq!(salvaged.last_id, Some(9));
        assert!(matches!(&salvaged.updates[1].kind, teloxide::types::UpdateKind::Message(m) if m.text() == Some("bad \u{FFFD} text")), "{:?}", salvaged.updates[1].kind);
        // Garbage that is not JSON at all still moves the poller past its ids.
        let salvaged = salvage(r#"{"ok":true,"result":[{"update_id": 41, "message": {]}"#);
        assert_eq!(salvaged.last_id, Some(41));
        assert_eq!(salvaged.skipped, [41]);
    }
}
