//! A fake Telegram Bot API server on 127.0.0.1 for swapbot's tests.
//!
//! It speaks the subset of the Bot API the bot uses (`POST {api_url}/bot{token}/{method}` with a JSON body),
//! keeps a model of every chat (messages after edits and deletes, drafts), records every call with its
//! parameters, the token it was made with and when it came, and can inject faults (429, 502, "can't parse
//! entities") into the next calls of a method.
//!
//! ```no_run
//! # async fn demo() {
//! use swapbot_fake_telegram::{FakeTelegram, FakeFailure};
//! let fake = FakeTelegram::start().await;
//! // teloxide: Bot::new("123:TEST").set_api_url(fake.api_url())
//! fake.push_text(42, 42, "hello", true);
//! fake.fail_next("sendMessage", 1, FakeFailure::TooManyRequests { retry_after: 1 });
//! let msgs = fake.wait_for_messages(42, 1, std::time::Duration::from_secs(10)).await;
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::{
    Router,
    extract::{Path, State as AxState},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// The bot user the fake answers `getMe` with.
pub const BOT_USER_ID: i64 = 7_000_000_001;
/// The bot's username in `getMe`.
pub const BOT_USERNAME: &str = "swapbot_test_bot";

/// A fault to inject into the next call(s) of a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeFailure {
    /// HTTP 429 with `{"ok":false,"error_code":429,...,"parameters":{"retry_after":N}}`.
    TooManyRequests { retry_after: u64 },
    /// HTTP 502 with nginx's HTML body (what a proxy in front of the Bot API answers).
    BadGateway,
    /// HTTP 400 "Bad Request: can't parse entities: ..." (only meaningful for sendMessage / editMessageText;
    /// the fault applies to the next call whatever its parse_mode).
    CantParseEntities,
}

/// One recorded Bot API call.
#[derive(Clone, Debug)]
pub struct Call {
    /// Canonical camelCase method name (`sendMessage`), whatever case the client used.
    pub method: String,
    /// The JSON parameters as sent.
    pub params: Value,
    /// The chat the call was about (`chat_id` parameter), when it had one.
    pub chat_id: Option<i64>,
    /// When the call arrived (for ordering and pacing checks).
    pub at: Instant,
    /// The token in the URL (`/bot{token}/...`).
    pub token: String,
    /// `None` when the call succeeded, otherwise the error description answered.
    pub error: Option<String>,
}

impl Call {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
    /// `params.text` as a string, if any.
    pub fn text(&self) -> Option<&str> {
        self.params.get("text").and_then(Value::as_str)
    }
}

/// A message as it looks in the chat now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeMessage {
    pub message_id: i64,
    pub chat_id: i64,
    /// Visible text (HTML markup already rendered away).
    pub text: String,
    pub from_bot: bool,
    /// The forum topic it is in (`None`: the General topic, or not a forum).
    pub thread_id: Option<i64>,
    /// The message it replies to (`reply_parameters.message_id` of the send).
    pub reply_to: Option<i64>,
    /// parse_mode of the last send or edit.
    pub parse_mode: Option<String>,
    /// How many successful edits the message had.
    pub edits: u32,
    pub deleted: bool,
}

/// What kind of chat a chat id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatKind {
    Private,
    /// A basic group (`type: group`).
    Group,
    /// A supergroup without topics.
    Supergroup,
    /// A supergroup with topics (`is_forum: true`).
    Forum,
    Channel,
}

#[derive(Clone, Debug)]
struct ChatInfo {
    kind: ChatKind,
    private: bool,
}

#[derive(Default)]
struct ChatState {
    info: Option<ChatInfo>,
    next_message_id: i64,
    /// Every message (the bot's and the users'), by id.
    messages: BTreeMap<i64, FakeMessage>,
    /// Forum topics: thread id → the creation service message (JSON).
    topics: BTreeMap<i64, Value>,
    /// Current draft per draft_id (cleared by a sent message).
    drafts: BTreeMap<i64, String>,
}

/// An update waiting to be fetched or delivered.
#[derive(Clone)]
struct Queued {
    /// Unique per queued copy: a redelivered update_id is a second copy.
    seq: u64,
    id: i64,
    json: Value,
}

#[derive(Clone)]
struct Webhook {
    url: String,
    secret: Option<String>,
    max_connections: usize,
    allowed_updates: Option<Value>,
}

/// One attempt to deliver an update to the webhook.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub update_id: i64,
    /// The HTTP status answered; `None` when the connection failed or timed out.
    pub status: Option<u16>,
    /// The `X-Telegram-Bot-Api-Secret-Token` sent, if any.
    pub secret: Option<String>,
}

impl Delivery {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Default)]
struct Inner {
    updates: VecDeque<Queued>,
    next_seq: u64,
    /// Every update ever queued, by id (for [`FakeTelegram::redeliver`]).
    history: BTreeMap<i64, Value>,
    webhook: Option<Webhook>,
    /// Bumped by every setWebhook / deleteWebhook: delivery workers of an older one stop.
    webhook_gen: u64,
    /// Queued copies (by seq) being POSTed right now.
    in_flight: std::collections::HashSet<u64>,
    /// Queued copies (by seq) that failed: (failures so far, not before).
    retry: HashMap<u64, (u32, Instant)>,
    last_error: Option<(i64, String)>,
    deliveries: Vec<Delivery>,
    next_update_id: i64,
    calls: Vec<Call>,
    /// getUpdates requests that have arrived (a call is recorded only when it is answered, and a
    /// long poll with nothing to deliver is answered at its timeout).
    polls_started: usize,
    chats: HashMap<i64, ChatState>,
    failures: HashMap<String, VecDeque<FakeFailure>>,
    /// Calls (by lowercase method) answered only after a pause: a slow Bot API.
    delays: HashMap<String, VecDeque<Duration>>,
    tokens: Vec<String>,
    /// Callback query ids sent and not answered yet.
    open_callbacks: Vec<String>,
    next_callback: i64,
}

impl Inner {
    fn enqueue(&mut self, id: i64, json: Value) {
        self.history.insert(id, json.clone());
        self.next_seq += 1;
        self.updates.push_back(Queued { seq: self.next_seq, id, json });
    }
}

struct Shared {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// TCP connections accepted: a client that keeps its connections alive opens few.
    connections: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The running fake server. Dropping it stops the server.
pub struct FakeTelegram {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

const KNOWN_METHODS: &[&str] = &[
    "getMe",
    "getUpdates",
    "sendMessage",
    "editMessageText",
    "sendChatAction",
    "sendMessageDraft",
    "deleteMessage",
    "setMyCommands",
    "deleteWebhook",
    "setWebhook",
    "getWebhookInfo",
    "answerCallbackQuery",
    "close",
    "logOut",
];

/// Canonical camelCase name of a method name in any case (`SendMessage`, `sendmessage` → `sendMessage`).
pub fn canonical_method(name: &str) -> String {
    KNOWN_METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(name))
        .map(|m| m.to_string())
        .unwrap_or_else(|| name.to_string())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Renders Bot API HTML the way Telegram validates it: known tags are removed, `&lt; &gt; &amp; &quot;`
/// and numeric entities are decoded; a stray `<` or `&` is an error ("can't parse entities").
pub fn render_html(s: &str) -> Result<String, String> {
    const TAGS: &[&str] = &[
        "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler", "span",
        "blockquote", "tg-emoji", "br",
    ];
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(['<', '&']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with('<') {
            let end = tail
                .find('>')
                .ok_or_else(|| format!("Unclosed start tag at byte offset {}", s.len() - tail.len()))?;
            let inner = tail[1..end].trim_start_matches('/');
            let name: String =
                inner.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>();
            if !TAGS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "Unsupported start tag \"{}\" at byte offset {}",
                    name,
                    s.len() - tail.len()
                ));
            }
            rest = &tail[end + 1..];
        } else {
            let end = tail
                .find(';')
                .filter(|e| *e <= 10)
                .ok_or_else(|| format!("Character entity expected at byte offset {}", s.len() - tail.len()))?;
            let ent = &tail[1..end];
            let decoded = match ent {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                _ if ent.starts_with('#') => {
                    let n = if let Some(h) = ent[1..].strip_prefix(['x', 'X']) {
                        u32::from_str_radix(h, 16).ok()
                    } else {
                        ent[1..].parse::<u32>().ok()
                    };
                    n.and_then(char::from_u32)
                        .ok_or_else(|| format!("Unsupported HTML entity \"&{ent};\""))?
                }
                _ => return Err(format!("Unsupported HTML entity \"&{ent};\"")),
            };
            out.push(decoded);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl FakeTelegram {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> FakeTelegram {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { next_update_id: 1, ..Default::default() }),
            changed,
            connections: Default::default(),
        });
        let app = Router::new()
            .route("/{bot}/{method}", post(handle_post).get(handle_get))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let counted = shared.clone();
        tokio::spawn(async move {
            // Streamed answers are many small writes: without TCP_NODELAY, Nagle and delayed
            // ACKs hold each for ~40 ms, which no real server does.
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(move |tcp| {
                counted.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeTelegram { addr, shared, stop: Some(stop) }
    }

    /// Base URL for `TELOXIDE_API_URL` / `Bot::set_api_url` (no trailing slash).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Same as [`api_url`](Self::api_url), parsed.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares what kind of chat `chat_id` is (before pushing into it); chats not declared are private when
    /// pushed to with `private: true` and basic groups otherwise.
    pub fn set_chat(&self, chat_id: i64, kind: ChatKind) {
        let mut g = self.lock();
        g.chats.entry(chat_id).or_default().info = Some(ChatInfo { kind, private: kind == ChatKind::Private });
    }

    fn push_message(&self, user_id: i64, chat_id: i64, private: bool, content: Value) -> i64 {
        let mut g = self.lock();
        let chat = g.chats.entry(chat_id).or_default();
        let kind = match &chat.info {
            Some(info) => info.kind,
            None if private => ChatKind::Private,
            None => ChatKind::Group,
        };
        chat.info = Some(ChatInfo { kind, private: kind == ChatKind::Private });
        chat.next_message_id += 1;
        let message_id = chat.next_message_id;
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat_json(chat_id, kind),
            "from": {
                "id": user_id,
                "is_bot": false,
                "first_name": format!("User{user_id}"),
                "username": format!("user{user_id}"),
                "language_code": "en",
            },
        });
        if let (Some(m), Some(c)) = (message.as_object_mut(), content.as_object()) {
            for (k, v) in c {
                m.insert(k.clone(), v.clone());
            }
        }
        let from_bot = message["from"]["id"].as_i64() == Some(BOT_USER_ID);
        // A service message is no one's text: kept as the topic's creation message only.
        let service = message.get("forum_topic_created").is_some();
        if !service {
            chat.messages.insert(
                message_id,
                FakeMessage {
                    message_id,
                    chat_id,
                    text: message.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
                    from_bot,
                    thread_id: message.get("message_thread_id").and_then(Value::as_i64),
                    reply_to: message.pointer("/reply_to_message/message_id").and_then(Value::as_i64),
                    parse_mode: None,
                    edits: 0,
                    deleted: false,
                },
            );
        }
        if service {
            chat.topics.insert(message_id, message.clone());
        }
        let update_id = g.next_update_id;
        g.next_update_id += 1;
        g.enqueue(update_id, json!({ "update_id": update_id, "message": message }));
        drop(g);
        self.shared.bump();
        message_id
    }

    /// Queues a text message from `user_id` in `chat_id`; returns its message_id.
    /// Entities are computed like Telegram's: a text starting with `/` carries a `bot_command` entity, and
    /// every `@username` a `mention` entity.
    pub fn push_text(&self, user_id: i64, chat_id: i64, text: &str, private: bool) -> i64 {
        self.push_message(user_id, chat_id, private, text_content(text))
    }

    /// Queues a text message in a group chat: in forum topic `topic` (`None`: General) and/or replying to
    /// message `reply_to` of that chat. A topic message carries `message_thread_id`, `is_topic_message` and,
    /// when it replies to nothing else, the topic's creation message as `reply_to_message`, like Telegram's.
    pub fn push_group_text(&self, user_id: i64, chat_id: i64, text: &str, topic: Option<i64>, reply_to: Option<i64>) -> i64 {
        let mut content = text_content(text);
        {
            let g = self.lock();
            let chat = g.chats.get(&chat_id);
            if let Some(t) = topic {
                content["message_thread_id"] = json!(t);
                content["is_topic_message"] = json!(true);
                if let Some(created) = chat.and_then(|c| c.topics.get(&t)) {
                    content["reply_to_message"] = created.clone();
                }
            }
            if let Some(r) = reply_to {
                let replied = chat.and_then(|c| c.messages.get(&r)).map(|m| {
                    let kind = chat.and_then(|c| c.info.as_ref()).map(|i| i.kind).unwrap_or(ChatKind::Group);
                    let mut v = json!({
                        "message_id": m.message_id,
                        "date": unix_now(),
                        "chat": chat_json(chat_id, kind),
                        "from": if m.from_bot { bot_user_json() } else { json!({ "id": 1, "is_bot": false, "first_name": "Someone" }) },
                        "text": m.text,
                    });
                    if let Some(t) = m.thread_id {
                        v["message_thread_id"] = json!(t);
                        v["is_topic_message"] = json!(true);
                    }
                    v
                });
                if let Some(v) = replied {
                    content["reply_to_message"] = v;
                }
            }
        }
        self.push_message(user_id, chat_id, false, content)
    }

    /// Creates a forum topic in `chat_id` (declared a [`ChatKind::Forum`]) the way a bot's
    /// `createForumTopic` does: a `forum_topic_created` service message sent by the bot, whose id is the
    /// topic's `message_thread_id`. Returns that id.
    pub fn create_topic(&self, chat_id: i64, name: &str) -> i64 {
        let next = self.lock().chats.get(&chat_id).map(|c| c.next_message_id + 1).unwrap_or(1);
        let content = json!({
            "from": bot_user_json(),
            "message_thread_id": next,
            "is_topic_message": true,
            "forum_topic_created": { "name": name, "icon_color": 7322096 },
        });
        self.push_message(BOT_USER_ID, chat_id, false, content)
    }

    /// Queues a message with arbitrary fields (media, `entities`, a `from` of another bot, service
    /// fields…) merged over a plain message from `user_id` in `chat_id`; returns its message_id.
    pub fn push_custom(&self, user_id: i64, chat_id: i64, private: bool, content: Value) -> i64 {
        self.push_message(user_id, chat_id, private, content)
    }

    /// Queues an update of any other kind: `kind` is its field (`edited_message`, `channel_post`,
    /// `my_chat_member`, …) and `payload` its object.
    pub fn push_update(&self, kind: &str, payload: Value) {
        let mut g = self.lock();
        let update_id = g.next_update_id;
        g.next_update_id += 1;
        g.enqueue(update_id, json!({ "update_id": update_id, kind: payload }));
        drop(g);
        self.shared.bump();
    }

    /// Queues a callback query (a pressed inline button) from `user_id` on message `message_id` of
    /// `chat_id`; returns the query id, which `answerCallbackQuery` must answer.
    pub fn push_callback_query(&self, user_id: i64, chat_id: i64, message_id: i64, data: &str) -> String {
        let (id, kind) = {
            let mut g = self.lock();
            g.next_callback += 1;
            let id = format!("cbq{}", g.next_callback);
            g.open_callbacks.push(id.clone());
            let kind = g.chats.get(&chat_id).and_then(|c| c.info.as_ref()).map(|i| i.kind).unwrap_or(ChatKind::Private);
            (id, kind)
        };
        self.push_update(
            "callback_query",
            json!({
                "id": id,
                "from": { "id": user_id, "is_bot": false, "first_name": format!("User{user_id}") },
                "message": { "message_id": message_id, "date": unix_now(), "chat": chat_json(chat_id, kind), "from": bot_user_json(), "text": "a message with a button" },
                "chat_instance": "42",
                "data": data,
            }),
        );
        id
    }

    /// Deletes a message in a chat (a user deleting their question while the bot is answering).
    pub fn delete_message(&self, chat_id: i64, message_id: i64) {
        if let Some(m) = self.lock().chats.get_mut(&chat_id).and_then(|c| c.messages.get_mut(&message_id)) {
            m.deleted = true;
        }
        self.shared.bump();
    }

    /// Callback query ids not answered yet.
    pub fn open_callback_queries(&self) -> Vec<String> {
        self.lock().open_callbacks.clone()
    }

    /// Every message in a chat, users' included, as it looks now (deleted ones left out), oldest first.
    pub fn all_messages_in(&self, chat_id: i64) -> Vec<FakeMessage> {
        let g = self.lock();
        g.chats.get(&chat_id).map(|c| c.messages.values().filter(|m| !m.deleted).cloned().collect()).unwrap_or_default()
    }

    /// Queues a photo message (no text) from `user_id` in `chat_id`; returns its message_id.
    pub fn push_photo(&self, user_id: i64, chat_id: i64, private: bool) -> i64 {
        let content = json!({
            "photo": [{
                "file_id": "AgACAgIAAxkBAAIBfakephoto",
                "file_unique_id": "AQADfakephoto",
                "width": 90,
                "height": 90,
                "file_size": 1234,
            }],
        });
        self.push_message(user_id, chat_id, private, content)
    }

    /// Makes the next `n` calls of `method` (any case) fail with `failure`.
    pub fn fail_next(&self, method: &str, n: usize, failure: FakeFailure) {
        let mut g = self.lock();
        let q = g.failures.entry(method.to_ascii_lowercase()).or_default();
        for _ in 0..n {
            q.push_back(failure.clone());
        }
    }

    /// Answers the next `n` calls of `method` (any case) only after `pause`, as a slow Bot API does.
    /// A call is recorded when it is answered.
    pub fn delay_next(&self, method: &str, n: usize, pause: Duration) {
        let mut g = self.lock();
        let q = g.delays.entry(method.to_ascii_lowercase()).or_default();
        q.extend(std::iter::repeat_n(pause, n));
    }

    /// How many TCP connections the fake has accepted.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every call answered so far, in the order answered (failed ones included, with `error` set); a call
    /// delayed by [`Self::delay_next`] comes after those answered meanwhile, and one whose client gave up
    /// waiting is missing. `at` is when it arrived.
    pub fn sent(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls of one method (any case), in order.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.lock().calls.iter().filter(|c| c.method.eq_ignore_ascii_case(method)).cloned().collect()
    }

    /// How many getUpdates requests have arrived, answered or still waiting: a bot is polling
    /// once this grows, without waiting out its first long poll.
    pub fn polls_started(&self) -> usize {
        self.lock().polls_started
    }

    /// Calls about one chat, in the order answered (see [`Self::sent`]; `at` is when each arrived).
    pub fn calls_in(&self, chat_id: i64) -> Vec<Call> {
        self.lock().calls.iter().filter(|c| c.chat_id == Some(chat_id)).cloned().collect()
    }

    /// Distinct tokens seen in request URLs, in order of first use.
    pub fn tokens_seen(&self) -> Vec<String> {
        self.lock().tokens.clone()
    }

    /// The bot's messages in a chat as they look now (after edits; deleted ones left out), oldest first.
    pub fn messages_in(&self, chat_id: i64) -> Vec<FakeMessage> {
        let g = self.lock();
        g.chats
            .get(&chat_id)
            .map(|c| c.messages.values().filter(|m| m.from_bot && !m.deleted).cloned().collect())
            .unwrap_or_default()
    }

    /// Current drafts in a chat (draft_id → text); a sent message clears them.
    pub fn drafts_in(&self, chat_id: i64) -> BTreeMap<i64, String> {
        self.lock().chats.get(&chat_id).map(|c| c.drafts.clone()).unwrap_or_default()
    }

    /// Number of updates queued and not yet confirmed by a later getUpdates offset (or, with a webhook,
    /// not yet answered with a 2xx).
    pub fn pending_updates(&self) -> usize {
        self.lock().updates.len()
    }

    /// Queues a copy of an update already queued once (same update_id, same content), as Telegram does
    /// when it did not see a 2xx for a delivery that was in fact processed.
    pub fn redeliver(&self, update_id: i64) {
        let mut g = self.lock();
        let json = g.history.get(&update_id).cloned().expect("redeliver: no such update");
        g.next_seq += 1;
        let seq = g.next_seq;
        g.updates.push_back(Queued { seq, id: update_id, json });
        drop(g);
        self.shared.bump();
    }

    /// Every webhook delivery attempt so far, in order of completion.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// The webhook URL set, if any.
    pub fn webhook_url(&self) -> Option<String> {
        self.lock().webhook.as_ref().map(|w| w.url.clone())
    }

    /// Waits until the bot has at least `n` visible messages in `chat_id` (or `timeout`), returns them.
    pub async fn wait_for_messages(&self, chat_id: i64, n: usize, timeout: Duration) -> Vec<FakeMessage> {
        self.wait_for(timeout, |f| f.messages_in(chat_id).len() >= n).await;
        self.messages_in(chat_id)
    }

    /// Waits until `cond` holds (checked after every change) or `timeout`; returns whether it holds.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&FakeTelegram) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            if cond(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return cond(self),
            }
        }
    }
}

fn chat_json(chat_id: i64, kind: ChatKind) -> Value {
    match kind {
        ChatKind::Private => json!({ "id": chat_id, "type": "private", "first_name": format!("User{chat_id}"), "username": format!("user{chat_id}") }),
        ChatKind::Group => json!({ "id": chat_id, "type": "group", "title": format!("Group {chat_id}") }),
        ChatKind::Supergroup => json!({ "id": chat_id, "type": "supergroup", "title": format!("Supergroup {chat_id}") }),
        ChatKind::Forum => json!({ "id": chat_id, "type": "supergroup", "title": format!("Forum {chat_id}"), "is_forum": true }),
        ChatKind::Channel => json!({ "id": chat_id, "type": "channel", "title": format!("Channel {chat_id}") }),
    }
}

/// A text message's content with the entities Telegram would compute: `bot_command` for a leading
/// `/command`, `mention` for every `@username` (5–32 of `[A-Za-z0-9_]`, not inside a word or a command).
fn text_content(text: &str) -> Value {
    let mut entities = vec![];
    if text.starts_with('/') {
        let len = utf16_len(text.split_whitespace().next().unwrap_or(text));
        entities.push(json!({ "type": "bot_command", "offset": 0, "length": len }));
    }
    for (i, _) in text.match_indices('@') {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '/') {
            continue;
        }
        let name_len = text[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').count();
        if (5..=32).contains(&name_len) {
            entities.push(json!({ "type": "mention", "offset": utf16_len(&text[..i]), "length": name_len + 1 }));
        }
    }
    let mut content = json!({ "text": text });
    if !entities.is_empty() {
        content["entities"] = Value::Array(entities);
    }
    content
}

fn bot_user_json() -> Value {
    json!({ "id": BOT_USER_ID, "is_bot": true, "first_name": "SwapBot", "username": BOT_USERNAME })
}

fn ok(result: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({ "ok": true, "result": result }))).into_response()
}

struct ApiErr {
    code: u16,
    description: String,
    retry_after: Option<u64>,
    html: bool,
}

impl ApiErr {
    fn bad_request(d: impl Into<String>) -> Self {
        ApiErr { code: 400, description: format!("Bad Request: {}", d.into()), retry_after: None, html: false }
    }
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::BAD_REQUEST);
        if self.html {
            let body = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n";
            return (status, [("content-type", "text/html")], body).into_response();
        }
        let mut v = json!({ "ok": false, "error_code": self.code, "description": self.description });
        if let Some(r) = self.retry_after {
            v["parameters"] = json!({ "retry_after": r });
        }
        (status, axum::Json(v)).into_response()
    }
}

fn failure_err(f: &FakeFailure) -> ApiErr {
    match f {
        FakeFailure::TooManyRequests { retry_after } => ApiErr {
            code: 429,
            description: format!("Too Many Requests: retry after {retry_after}"),
            retry_after: Some(*retry_after),
            html: false,
        },
        FakeFailure::BadGateway => {
            ApiErr { code: 502, description: "502 Bad Gateway".into(), retry_after: None, html: true }
        }
        FakeFailure::CantParseEntities => ApiErr::bad_request(
            "can't parse entities: Can't find end of the entity starting at byte offset 0",
        ),
    }
}

fn param_i64(p: &Value, key: &str) -> Option<i64> {
    match p.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn handle_get(
    state: AxState<Arc<Shared>>,
    path: Path<(String, String)>,
    query: axum::extract::RawQuery,
) -> Response {
    // Accept GET with query parameters too (curl-style debugging); values are strings.
    let mut params = serde_json::Map::new();
    if let Some(q) = query.0 {
        for pair in q.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                params.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
    }
    handle(state, path, Bytes::from(Value::Object(params).to_string())).await
}

async fn handle_post(
    state: AxState<Arc<Shared>>,
    path: Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    // teloxide sends setWebhook (it may carry a certificate) as multipart/form-data.
    if let Some(boundary) = content_type.strip_prefix("multipart/form-data").and_then(|r| r.split("boundary=").nth(1)) {
        let boundary = boundary.trim_matches('"').to_string();
        let Some(params) = parse_multipart(&body, &boundary) else {
            return ApiErr::bad_request("invalid multipart body").into_response();
        };
        return handle(state, path, Bytes::from(params.to_string())).await;
    }
    handle(state, path, body).await
}

/// The text fields of a multipart/form-data body as a JSON object (a field holding a JSON array or
/// object, like `allowed_updates`, as that value).
fn parse_multipart(body: &[u8], boundary: &str) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let delimiter = format!("--{boundary}");
    let mut fields = serde_json::Map::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let (head, value) = part.split_once("\r\n\r\n")?;
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        let name = head.split("name=\"").nth(1)?.split('"').next()?;
        let parsed = match serde_json::from_str::<Value>(value) {
            Ok(v @ (Value::Array(_) | Value::Object(_))) => v,
            _ => Value::String(value.to_string()),
        };
        fields.insert(name.to_string(), parsed);
    }
    Some(Value::Object(fields))
}

fn param_bool(p: &Value, key: &str) -> bool {
    match p.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// Sets or removes the webhook; a new one gets fresh delivery workers.
fn set_webhook(shared: &Arc<Shared>, params: &Value, delete: bool) -> Result<Value, ApiErr> {
    let url = if delete { "" } else { params.get("url").and_then(Value::as_str).unwrap_or("") };
    let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let hook = if url.is_empty() {
        None
    } else {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ApiErr::bad_request("bad webhook: An HTTPS URL must be provided for webhook"));
        }
        let secret = params.get("secret_token").and_then(Value::as_str).map(str::to_string);
        if let Some(s) = &secret
            && (s.is_empty() || s.len() > 256 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(ApiErr::bad_request("secret token contains unallowed characters"));
        }
        let max_connections = param_i64(params, "max_connections").unwrap_or(40).clamp(1, 100) as usize;
        Some(Webhook { url: url.to_string(), secret, max_connections, allowed_updates: params.get("allowed_updates").cloned() })
    };
    if param_bool(params, "drop_pending_updates") {
        g.updates.clear();
    }
    g.webhook_gen += 1;
    // A new registration is tried at once, not after the old one's backoff.
    g.retry.clear();
    let generation = g.webhook_gen;
    let workers = hook.as_ref().map_or(0, |h| h.max_connections);
    g.webhook = hook;
    drop(g);
    for _ in 0..workers {
        tokio::spawn(webhook_worker(shared.clone(), generation));
    }
    shared.bump();
    Ok(json!(true))
}

/// How long a failed delivery waits before the next attempt.
fn webhook_backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(2))
}

enum Job {
    Wait(Option<Instant>),
    Deliver(Queued, Webhook),
}

/// One webhook connection: POSTs the oldest update not being delivered, one at a time; an update
/// leaves the queue only on a 2xx, otherwise it is retried after a backoff, before any later one.
async fn webhook_worker(shared: Arc<Shared>, generation: u64) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
    let mut rx = shared.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let job = {
            let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            let Some(hook) = g.webhook.clone().filter(|_| g.webhook_gen == generation) else { return };
            let next = g.updates.iter().find(|q| !g.in_flight.contains(&q.seq)).cloned();
            match next {
                None => Job::Wait(None),
                Some(q) => match g.retry.get(&q.seq) {
                    Some((_, at)) if *at > Instant::now() => Job::Wait(Some(*at)),
                    _ => {
                        g.in_flight.insert(q.seq);
                        Job::Deliver(q, hook)
                    }
                },
            }
        };
        let (queued, hook) = match job {
            Job::Wait(until) => {
                match until {
                    Some(at) => {
                        let _ = tokio::time::timeout_at(at.into(), rx.changed()).await;
                    }
                    None => {
                        let _ = rx.changed().await;
                    }
                }
                continue;
            }
            Job::Deliver(q, hook) => (q, hook),
        };
        let mut request = client.post(&hook.url).json(&queued.json);
        if let Some(secret) = &hook.secret {
            request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
        }
        let result = request.send().await;
        let status = result.as_ref().ok().map(|r| r.status());
        {
            let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.in_flight.remove(&queued.seq);
            g.deliveries.push(Delivery { update_id: queued.id, status: status.map(|s| s.as_u16()), secret: hook.secret.clone() });
            match status {
                Some(s) if s.is_success() => {
                    g.updates.retain(|q| q.seq != queued.seq);
                    g.retry.remove(&queued.seq);
                }
                _ => {
                    let message = match (&result, status) {
                        (_, Some(s)) => format!("Wrong response from the webhook: {} {}", s.as_u16(), s.canonical_reason().unwrap_or("")),
                        (Err(e), None) if e.is_timeout() => "Read timeout expired".to_string(),
                        _ => "Connection refused".to_string(),
                    };
                    g.last_error = Some((unix_now(), message.trim().to_string()));
                    let failures = g.retry.get(&queued.seq).map_or(0, |(n, _)| *n) + 1;
                    g.retry.insert(queued.seq, (failures, Instant::now() + webhook_backoff(failures - 1)));
                }
            }
        }
        shared.bump();
    }
}

async fn handle(AxState(shared): AxState<Arc<Shared>>, Path((bot, method)): Path<(String, String)>, body: Bytes) -> Response {
    let Some(token) = bot.strip_prefix("bot").map(str::to_string) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"ok":false,"error_code":404,"description":"Not Found"})))
            .into_response();
    };
    let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return ApiErr::bad_request("invalid JSON body").into_response();
            }
        }
    };
    let method = canonical_method(&method);
    let chat_id = param_i64(&params, "chat_id");
    let at = Instant::now();

    // Injected failure or pause?
    let (injected, delay) = {
        let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !g.tokens.contains(&token) {
            g.tokens.push(token.clone());
        }
        let key = method.to_ascii_lowercase();
        (g.failures.get_mut(&key).and_then(VecDeque::pop_front), g.delays.get_mut(&key).and_then(VecDeque::pop_front))
    };
    if let Some(pause) = delay {
        tokio::time::sleep(pause).await;
    }
    if let Some(f) = injected {
        let err = failure_err(&f);
        record(&shared, &method, &params, chat_id, at, &token, Some(err.description.clone()));
        return err.into_response();
    }

    if method == "setWebhook" || method == "deleteWebhook" {
        let res = set_webhook(&shared, &params, method == "deleteWebhook");
        let error = res.as_ref().err().map(|e| e.description.clone());
        record(&shared, &method, &params, chat_id, at, &token, error);
        return match res {
            Ok(v) => ok(v),
            Err(e) => e.into_response(),
        };
    }

    let webhook_set = shared.inner.lock().unwrap_or_else(|e| e.into_inner()).webhook.is_some();
    if method == "getUpdates" && webhook_set {
        let err = ApiErr {
            code: 409,
            description: "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first".into(),
            retry_after: None,
            html: false,
        };
        record(&shared, &method, &params, chat_id, at, &token, Some(err.description.clone()));
        return err.into_response();
    }

    if method == "getUpdates" {
        shared.inner.lock().unwrap_or_else(|e| e.into_inner()).polls_started += 1;
        let res = get_updates(&shared, &params).await;
        record(&shared, &method, &params, chat_id, at, &token, None);
        return ok(res);
    }

    let res = {
        let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        dispatch(&mut g, &method, &params, chat_id)
    };
    match res {
        Ok(v) => {
            record(&shared, &method, &params, chat_id, at, &token, None);
            ok(v)
        }
        Err(e) => {
            record(&shared, &method, &params, chat_id, at, &token, Some(e.description.clone()));
            e.into_response()
        }
    }
}

fn record(
    shared: &Shared,
    method: &str,
    params: &Value,
    chat_id: Option<i64>,
    at: Instant,
    token: &str,
    error: Option<String>,
) {
    {
        let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.calls.push(Call {
            method: method.to_string(),
            params: params.clone(),
            chat_id,
            at,
            token: token.to_string(),
            error,
        });
    }
    shared.bump();
}

async fn get_updates(shared: &Shared, params: &Value) -> Value {
    let offset = param_i64(params, "offset").unwrap_or(0);
    let limit = param_i64(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = param_i64(params, "timeout").unwrap_or(0).clamp(0, 50) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut rx = shared.changed.subscribe();
    loop {
        {
            let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            if offset < 0 {
                let keep = (-offset) as usize;
                while g.updates.len() > keep {
                    g.updates.pop_front();
                }
            } else {
                while g.updates.front().is_some_and(|q| q.id < offset) {
                    g.updates.pop_front();
                }
            }
            let out: Vec<Value> = g.updates.iter().take(limit).map(|q| q.json.clone()).collect();
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Value::Array(out);
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            // One last look happens at the top of the loop.
            continue;
        }
    }
}

fn text_param(params: &Value) -> Result<(String, Option<String>), ApiErr> {
    let raw = params.get("text").and_then(Value::as_str).unwrap_or("");
    let parse_mode = params.get("parse_mode").and_then(Value::as_str).map(str::to_string);
    let text = match parse_mode.as_deref() {
        Some(m) if m.eq_ignore_ascii_case("html") => {
            render_html(raw).map_err(|e| ApiErr::bad_request(format!("can't parse entities: {e}")))?
        }
        Some(m) if m.eq_ignore_ascii_case("markdownv2") || m.eq_ignore_ascii_case("markdown") => raw.to_string(),
        Some(m) => return Err(ApiErr::bad_request(format!("unsupported parse_mode {m:?}"))),
        None => raw.to_string(),
    };
    if text.trim().is_empty() {
        return Err(ApiErr::bad_request("message text is empty"));
    }
    if utf16_len(&text) > 4096 {
        return Err(ApiErr::bad_request("message is too long"));
    }
    Ok((text, parse_mode))
}

fn message_json(m: &FakeMessage, kind: ChatKind, edited: bool) -> Value {
    let mut v = json!({
        "message_id": m.message_id,
        "date": unix_now(),
        "chat": chat_json(m.chat_id, kind),
        "from": bot_user_json(),
        "text": m.text,
    });
    if let Some(t) = m.thread_id {
        v["message_thread_id"] = json!(t);
        v["is_topic_message"] = json!(true);
    }
    if edited {
        v["edit_date"] = json!(unix_now());
    }
    v
}

/// `message_thread_id` of a send: only into an existing topic of a forum, like Telegram.
fn thread_param(chat: &ChatState, params: &Value) -> Result<Option<i64>, ApiErr> {
    let Some(t) = param_i64(params, "message_thread_id") else { return Ok(None) };
    let forum = chat.info.as_ref().is_some_and(|i| i.kind == ChatKind::Forum);
    if !forum || !chat.topics.contains_key(&t) {
        return Err(ApiErr::bad_request("message thread not found"));
    }
    Ok(Some(t))
}

/// `reply_parameters` of a send: the replied message must exist unless `allow_sending_without_reply`.
fn reply_param(chat: &ChatState, params: &Value) -> Result<Option<i64>, ApiErr> {
    let Some(rp) = params.get("reply_parameters") else { return Ok(None) };
    let id = param_i64(rp, "message_id").ok_or_else(|| ApiErr::bad_request("reply_parameters.message_id is empty"))?;
    let exists = chat.messages.get(&id).is_some_and(|m| !m.deleted);
    if !exists {
        if rp.get("allow_sending_without_reply").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        return Err(ApiErr::bad_request("message to be replied not found"));
    }
    Ok(Some(id))
}

fn chat_kind(chat: &ChatState) -> ChatKind {
    chat.info.as_ref().map(|i| i.kind).unwrap_or(ChatKind::Private)
}

fn known_chat<'a>(g: &'a mut Inner, chat_id: Option<i64>) -> Result<(i64, &'a mut ChatState), ApiErr> {
    let id = chat_id.ok_or_else(|| ApiErr::bad_request("chat_id is empty"))?;
    match g.chats.get_mut(&id) {
        Some(c) if c.info.is_some() => Ok((id, c)),
        _ => Err(ApiErr::bad_request("chat not found")),
    }
}

fn dispatch(g: &mut Inner, method: &str, params: &Value, chat_id: Option<i64>) -> Result<Value, ApiErr> {
    match method {
        "getMe" => Ok(json!({
            "id": BOT_USER_ID,
            "is_bot": true,
            "first_name": "SwapBot",
            "username": BOT_USERNAME,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": false,
            "has_main_web_app": false,
        })),
        "setMyCommands" | "close" | "logOut" => Ok(json!(true)),
        "getWebhookInfo" => {
            let mut info = json!({ "url": "", "has_custom_certificate": false, "pending_update_count": g.updates.len() });
            if let Some(w) = &g.webhook {
                info["url"] = json!(w.url);
                info["max_connections"] = json!(w.max_connections);
                if let Some(a) = &w.allowed_updates {
                    info["allowed_updates"] = a.clone();
                }
            }
            if let Some((date, message)) = &g.last_error {
                info["last_error_date"] = json!(date);
                info["last_error_message"] = json!(message);
            }
            Ok(info)
        }
        "sendChatAction" => {
            let (_, chat) = known_chat(g, chat_id)?;
            thread_param(chat, params)?;
            Ok(json!(true))
        }
        "answerCallbackQuery" => {
            let id = params.get("callback_query_id").and_then(Value::as_str).unwrap_or_default().to_string();
            match g.open_callbacks.iter().position(|q| *q == id) {
                Some(i) => {
                    g.open_callbacks.remove(i);
                    Ok(json!(true))
                }
                None => Err(ApiErr::bad_request("query is too old and response timeout expired or query ID is invalid")),
            }
        }
        "sendMessage" => {
            let (text, parse_mode) = text_param(params)?;
            let (chat_id, chat) = known_chat(g, chat_id)?;
            let kind = chat_kind(chat);
            let thread_id = thread_param(chat, params)?;
            let reply_to = reply_param(chat, params)?;
            chat.next_message_id += 1;
            let m = FakeMessage {
                message_id: chat.next_message_id,
                chat_id,
                text,
                from_bot: true,
                thread_id,
                reply_to,
                parse_mode,
                edits: 0,
                deleted: false,
            };
            chat.drafts.clear();
            let v = message_json(&m, kind, false);
            chat.messages.insert(m.message_id, m);
            Ok(v)
        }
        "editMessageText" => {
            let (chat_id, chat) = known_chat(g, chat_id)?;
            let kind = chat_kind(chat);
            let mid = param_i64(params, "message_id").ok_or_else(|| ApiErr::bad_request("message_id is empty"))?;
            let (text, parse_mode) = text_param(params)?;
            let m = chat
                .messages
                .get_mut(&mid)
                .filter(|m| !m.deleted)
                .ok_or_else(|| ApiErr::bad_request("message to edit not found"))?;
            if !m.from_bot {
                return Err(ApiErr::bad_request("message can't be edited"));
            }
            if m.text == text {
                return Err(ApiErr::bad_request(
                    "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
                ));
            }
            m.text = text;
            m.parse_mode = parse_mode;
            m.edits += 1;
            let _ = chat_id;
            Ok(message_json(m, kind, true))
        }
        "deleteMessage" => {
            let (_, chat) = known_chat(g, chat_id)?;
            let mid = param_i64(params, "message_id").ok_or_else(|| ApiErr::bad_request("message_id is empty"))?;
            match chat.messages.get_mut(&mid).filter(|m| !m.deleted) {
                Some(m) => {
                    m.deleted = true;
                    Ok(json!(true))
                }
                None => Err(ApiErr::bad_request("message to delete not found")),
            }
        }
        "sendMessageDraft" => {
            let (_, chat) = known_chat(g, chat_id)?;
            if !chat.info.as_ref().is_some_and(|i| i.private) {
                return Err(ApiErr::bad_request("TEXTDRAFT_PEER_INVALID"));
            }
            let draft_id = param_i64(params, "draft_id").unwrap_or(0);
            if draft_id == 0 {
                return Err(ApiErr::bad_request("draft_id must be non-zero"));
            }
            let (text, _) = text_param(params)?;
            chat.drafts.insert(draft_id, text);
            Ok(json!(true))
        }
        _ => Err(ApiErr { code: 404, description: "Not Found".into(), retry_after: None, html: false }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_rendering() {
        assert_eq!(render_html("a &lt;b&gt; &amp; <b>c</b>").unwrap(), "a <b> & c");
        assert!(render_html("1 < 2").is_err());
        assert!(render_html("a & b").is_err());
        assert!(render_html("<foo>x</foo>").is_err());
        assert_eq!(render_html("&#65;&#x42;").unwrap(), "AB");
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_method("SendMessage"), "sendMessage");
        assert_eq!(canonical_method("GETUPDATES"), "getUpdates");
        assert_eq!(canonical_method("whatever"), "whatever");
    }

    #[tokio::test]
    async fn roundtrip_and_long_poll() {
        let fake = FakeTelegram::start().await;
        let c = reqwest::Client::new();
        let url = |m: &str| format!("{}/bot1:SECRET/{m}", fake.api_url());
        let me: Value = c.post(url("GetMe")).json(&json!({})).send().await.unwrap().json().await.unwrap();
        assert_eq!(me["result"]["username"], BOT_USERNAME);

        // A long poll is answered as soon as an update arrives.
        let poll = c.post(url("getUpdates")).json(&json!({"offset": 0, "timeout": 20})).send();
        let pusher = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            fake.push_text(5, 5, "/start", true);
        };
        let (resp, ()) = tokio::join!(poll, pusher);
        let v: Value = resp.unwrap().json().await.unwrap();
        let ups = v["result"].as_array().unwrap();
        assert_eq!(ups.len(), 1);
        let id = ups[0]["update_id"].as_i64().unwrap();
        // Offset confirms it.
        let v: Value =
            c.post(url("getUpdates")).json(&json!({"offset": id + 1, "timeout": 0})).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["result"].as_array().unwrap().len(), 0);

        let v: Value = c
            .post(url("sendMessage"))
            .json(&json!({"chat_id": 5, "text": "x &lt; y", "parse_mode": "HTML"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mid = v["result"]["message_id"].as_i64().unwrap();
        let r = c
            .post(url("editMessageText"))
            .json(&json!({"chat_id": 5, "message_id": mid, "text": "x < y"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        fake.fail_next("sendmessage", 1, FakeFailure::TooManyRequests { retry_after: 3 });
        let r = c.post(url("SendMessage")).json(&json!({"chat_id": 5, "text": "hi"})).send().await.unwrap();
        assert_eq!(r.status(), 429);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["parameters"]["retry_after"], 3);
        assert_eq!(fake.messages_in(5).iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["x < y"]);
        assert_eq!(fake.tokens_seen(), vec!["1:SECRET".to_string()]);
        assert!(fake.calls_in(5).len() >= 3);
    }
}
