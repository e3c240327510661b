//! swapbot's Telegram front end.
//!
//! [`run_polling`] long-polls the Bot API with teloxide, answers /start, /help and /new, refuses users outside
//! `allowed_user_ids`, and runs every text message as one turn of a [`TurnHandler`] (the host). In groups only
//! messages addressed to the bot count ([`group`]), and answers go to the question's forum topic, replying to
//! it; other update kinds are each handled on purpose (see `run_polling_until`'s schema). While a turn
//! runs, "typing…" is repeated; streamed text is shown as `sendMessageDraft` previews in private chats and as
//! one paced, edited message in groups; the final answer is sent once, split at paragraph / sentence / word
//! boundaries when longer than Telegram allows, as escaped HTML with a plain-text fallback.
//!
//! Updates of one chat are handled in order, chats in parallel (teloxide's dispatcher); turns of one user are
//! additionally serialised here (a user can write from a private chat and a group at once).

pub mod draft;
pub mod group;
pub mod inbox;
pub mod pacing;
pub mod queue;
pub mod text;
pub mod updates;
pub mod webhook;

pub use crate::queue::{FileQueue, UpdateQueue};
pub use crate::webhook::{
    SetWebhookOptions, TelegramMode, WebhookConfig, WebhookSecret, WebhookSummary, delete_webhook, set_webhook,
    webhook_cli, webhook_info,
};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use teloxide::{
    ApiError, Bot, RequestError,
    dispatching::{Dispatcher, UpdateFilterExt},
    dptree,
    prelude::Requester,
    requests::Request,
    types::{
        BotCommand, CallbackQuery, ChatAction, ChatId, ChatMemberUpdated, Me, Message, MessageId, MessageKind, ParseMode,
        ReplyParameters, ThreadId, Update,
    },
};
use teloxide::payloads::{EditMessageTextSetters, SendChatActionSetters, SendMessageSetters};
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use crate::group::GroupMode;
use crate::group::{is_addressed, strip_bot_mentions};
use crate::pacing::{Pacer, delivery_backoff, next_preview_at, polling_backoff};
use crate::text::{draft_preview, escape_html, group_preview, split_answer_capped};

/// The host side of a conversation turn.
#[async_trait::async_trait]
pub trait TurnHandler: Send + Sync + 'static {
    /// One user turn. Answer text deltas arrive on `deltas` while the answer streams (may be none for
    /// non-streaming backends).
    async fn turn(&self, who: Sender, text: String, deltas: tokio::sync::mpsc::UnboundedSender<String>) -> TurnResult;
    /// /new: forget the conversation of this chat (a private chat's, or the user's session in a group) on
    /// every backend.
    async fn reset(&self, who: Sender) -> anyhow::Result<()>;
    /// Other text commands, such as "/rollout ..." or "/usage", from `who` (the chat tells a handler whether
    /// an answer may go to a group); `None` = not handled (then answered as unknown in private chats,
    /// ignored in groups).
    async fn admin(&self, _who: &Sender, _command: &str) -> Option<String> {
        None
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub user_id: i64,
    /// The chat the message came from: the user's id for a private chat, the group's otherwise.
    pub chat_id: i64,
    /// A private chat; otherwise a group, supergroup or forum (the host keeps those sessions apart).
    pub private: bool,
    pub username: Option<String>,
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnResult {
    /// The complete answer (shown verbatim, trimmed).
    Answer(String),
    /// One short human sentence to show instead.
    Failed(String),
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct BotOptions {
    /// `None` = everyone may talk to the bot; otherwise others get a refusal.
    pub allowed_user_ids: Option<HashSet<i64>>,
    /// Minimum time between two draft updates in a private chat.
    pub draft_interval: Duration,
    /// Minimum time between two edits of the streamed message in a group (at least 1 s is enforced).
    pub edit_interval: Duration,
    /// How often "typing…" is repeated while a turn runs.
    pub typing_interval: Duration,
    /// Messages one answer may take; a longer answer is cut with a note.
    pub max_messages: usize,
    /// What the bot answers in groups (`GROUP_MODE`).
    pub group_mode: GroupMode,
    /// Where questions wait until their turn has ended (None: no durable inbox).
    pub inbox_dir: Option<std::path::PathBuf>,
    /// How long a stop lets turns in flight finish; unfinished ones wait in the inbox.
    pub stop_grace: Duration,
    /// How long a finished turn waits for its "typing…" action or draft in flight ([`IN_FLIGHT_GRACE`]).
    pub in_flight_grace: Duration,
}

impl Default for BotOptions {
    fn default() -> Self {
        BotOptions {
            allowed_user_ids: None,
            draft_interval: Duration::from_millis(500),
            // Groups allow about 20 messages a minute and edits count: one edit per 3 s stays inside.
            edit_interval: Duration::from_secs(3),
            typing_interval: Duration::from_secs(4),
            max_messages: 10,
            group_mode: GroupMode::Mention,
            inbox_dir: None,
            stop_grace: STOP_GRACE,
            in_flight_grace: IN_FLIGHT_GRACE,
        }
    }
}

/// What /start and /help answer.
pub const HELP_TEXT: &str = "Hi! I'm an AI assistant. Send me a message and I'll answer. \
I remember our conversation, so you can ask follow-up questions.\n\n\
Commands:\n/new — forget our conversation and start a fresh one\n/usage — what you used today and this month\n/help — show this message";
/// What /new answers.
pub const RESET_DONE_TEXT: &str = "Done — I've forgotten our conversation. Your next message starts a fresh one.";
pub const RESET_FAILED_TEXT: &str = "Sorry, I couldn't reset our conversation right now. Please try again in a moment.";
/// What a message without text gets.
pub const NON_TEXT_TEXT: &str = "Sorry, I can only read text messages. Please send your question as text.";
/// What users outside `allowed_user_ids` get.
pub const REFUSAL_TEXT: &str = "Sorry, this bot is private and you're not on its list of allowed users.";
pub const UNKNOWN_COMMAND_TEXT: &str = "Sorry, I don't know that command. Send /help to see what I can do.";
pub const EMPTY_ANSWER_TEXT: &str = "Sorry, I couldn't come up with an answer. Please try again.";
pub const INTERNAL_ERROR_TEXT: &str = "Sorry, something went wrong on my side. Please try again.";

/// A parsed bot command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Lowercase name without `/` and `@bot`.
    pub name: String,
    /// The text with the command word lowercased and `@botname` removed (`/ROLLOUT@bot 10` → `/rollout 10`).
    pub normalized: String,
    /// `/cmd@otherbot`: meant for another bot in the group.
    pub for_other_bot: bool,
    /// `/cmd@thisbot`: explicitly for this bot (a bare `/cmd` in a group may be for another bot).
    pub for_this_bot: bool,
}

/// Parses `/cmd[@bot] args`; `None` when the text is not a command.
pub fn parse_command(text: &str, bot_username: &str) -> Option<Command> {
    let t = text.trim();
    let rest = t.strip_prefix('/')?;
    let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (word, args) = rest.split_at(word_end);
    if word.is_empty() {
        return None;
    }
    let (name, target) = match word.split_once('@') {
        Some((n, b)) => (n, Some(b)),
        None => (word, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let for_other_bot = target.is_some_and(|b| !b.eq_ignore_ascii_case(bot_username));
    let name = name.to_ascii_lowercase();
    Some(Command { normalized: format!("/{name}{args}"), name, for_other_bot, for_this_bot: target.is_some() && !for_other_bot })
}

/// Whether a string looks like a bot token (`<digits>:<secret>`), without saying anything about it.
pub fn looks_like_token(t: &str) -> bool {
    match t.split_once(':') {
        Some((id, secret)) => {
            !id.is_empty()
                && id.chars().all(|c| c.is_ascii_digit())
                && secret.len() >= 8
                && secret.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }
        None => false,
    }
}

/// Parses a `TELOXIDE_API_URL` value (trailing slashes dropped). The error names the setting, never echoes the
/// value (it may hold credentials).
pub fn parse_api_url(s: &str) -> anyhow::Result<reqwest::Url> {
    let s = s.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(s)
        .map_err(|_| anyhow::anyhow!("TELOXIDE_API_URL is not a valid URL (expected e.g. http://127.0.0.1:8081)"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        anyhow::bail!("TELOXIDE_API_URL must be an http:// or https:// URL");
    }
    Ok(url)
}

/// The bot configured by the environment like `Bot::from_env`, but never panicking: `Ok(None)` when
/// `TELOXIDE_TOKEN` is unset or empty (the host then runs its terminal chat), an error naming the setting
/// when `TELOXIDE_TOKEN`, `TELOXIDE_API_URL` or `TELOXIDE_PROXY` is invalid. The token is never in an error.
pub fn bot_from_env() -> anyhow::Result<Option<Bot>> {
    let token = match std::env::var("TELOXIDE_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("TELOXIDE_TOKEN is not valid text"),
    };
    if !looks_like_token(&token) {
        anyhow::bail!("TELOXIDE_TOKEN is not a bot token (expected <digits>:<secret> as @BotFather gives it)");
    }
    let mut builder = teloxide::net::default_reqwest_settings();
    if let Ok(p) = std::env::var("TELOXIDE_PROXY")
        && !p.trim().is_empty()
    {
        let proxy = reqwest::Proxy::all(p.trim()).map_err(|_| anyhow::anyhow!("TELOXIDE_PROXY is not a valid proxy URL"))?;
        builder = builder.proxy(proxy);
    }
    let client = builder.build().map_err(|e| anyhow::anyhow!("could not create the HTTP client for Telegram: {e}"))?;
    let mut bot = Bot::with_client(token, client);
    if let Ok(u) = std::env::var("TELOXIDE_API_URL")
        && !u.trim().is_empty()
    {
        bot = bot.set_api_url(parse_api_url(&u)?);
    }
    Ok(Some(bot))
}

/// Removes the bot token (and its secret part after `:`) from a string meant for a log line.
pub fn redact(s: &str, token: &str) -> String {
    let mut out = s.to_string();
    if !token.is_empty() {
        out = out.replace(token, "<token:redacted>");
        if let Some((_, secret)) = token.split_once(':')
            && secret.len() >= 8
        {
            out = out.replace(secret, "<redacted>");
        }
    }
    out
}

/// How a Telegram error should be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    RetryAfter(Duration),
    NotModified,
    CantParse,
    Transient,
    Permanent,
}

pub(crate) fn classify(e: &RequestError) -> Failure {
    match e {
        RequestError::RetryAfter(s) => Failure::RetryAfter(s.duration()),
        RequestError::Api(ApiError::MessageNotModified) => Failure::NotModified,
        RequestError::Api(ApiError::CantParseEntities(_)) => Failure::CantParse,
        RequestError::Api(ApiError::Unknown(s)) if s.contains("can't parse entities") => Failure::CantParse,
        RequestError::Api(ApiError::Unknown(s)) if s.contains("message is not modified") => Failure::NotModified,
        RequestError::Network(_) | RequestError::InvalidJson { .. } | RequestError::Io(_) => Failure::Transient,
        _ => Failure::Permanent,
    }
}

/// A short, token-free description of a Telegram error for logs.
pub(crate) fn describe(e: &RequestError, token: &str) -> String {
    let s = match e {
        RequestError::InvalidJson { raw, .. } => {
            format!("the Bot API answered something that is not JSON ({} bytes, e.g. a 502 page)", raw.len())
        }
        other => {
            // Include the causes (e.g. "connection refused"); teloxide's own text stops at the first level.
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                let t = e.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                src = e.source();
            }
            s
        }
    };
    redact(&s, token)
}

/// Calls `f` until it succeeds, waiting out 429s (`retry_after`) and retrying transient failures a few times.
async fn with_retries<T, F, Fut>(bot: &Bot, what: &str, chat: i64, mut f: F) -> Result<T, RequestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    let mut limited = 0u32;
    let mut transient = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => match classify(&e) {
                Failure::RetryAfter(d) if limited < 30 => {
                    limited += 1;
                    warn!(chat_id = chat, method = what, retry_after_s = d.as_secs(), "Telegram rate limit: waiting");
                    tokio::time::sleep(d + Duration::from_millis(50)).await;
                }
                Failure::Transient if transient < 6 => {
                    let d = delivery_backoff(transient);
                    transient += 1;
                    warn!(chat_id = chat, method = what, error = %describe(&e, bot.token()), "Telegram call failed, retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
                _ => return Err(e),
            },
        }
    }
}

/// Where the bot's messages for one incoming message go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    chat: i64,
    /// The forum topic (or private-chat topic) the message came from: every send goes back into it,
    /// otherwise Telegram puts it in the General topic.
    thread: Option<ThreadId>,
    /// Groups: the message answered, so everyone sees whom an answer is for (`reply_parameters` with
    /// `allow_sending_without_reply`: the answer still arrives if the question was deleted meanwhile).
    reply_to: Option<MessageId>,
}

impl Target {
    fn of(msg: &Message) -> Self {
        Target {
            chat: msg.chat.id.0,
            // Only topic messages: in a non-forum supergroup `message_thread_id` marks a reply thread, and
            // sending with it would fail.
            thread: if msg.is_topic_message { msg.thread_id } else { None },
            reply_to: (!msg.chat.is_private()).then_some(msg.id),
        }
    }

    /// The same place, not replying (the second and later parts of a long answer).
    fn continuation(self) -> Self {
        Target { reply_to: None, ..self }
    }

    fn message(&self, bot: &Bot, text: String) -> teloxide::requests::JsonRequest<teloxide::payloads::SendMessage> {
        let mut req = bot.send_message(ChatId(self.chat), text);
        if let Some(thread) = self.thread {
            req = req.message_thread_id(thread);
        }
        if let Some(id) = self.reply_to {
            req = req.reply_parameters(ReplyParameters::new(id).allow_sending_without_reply());
        }
        req
    }
}

/// Sends one message: escaped HTML first, plain text if Telegram rejects the entities.
async fn send_text(bot: &Bot, target: Target, text: &str) -> Result<Message, RequestError> {
    let chat = target.chat;
    let html = escape_html(text);
    let r = with_retries(bot, "sendMessage", chat, || target.message(bot, html.clone()).parse_mode(ParseMode::Html).send())
        .await;
    match r {
        Err(e) if classify(&e) == Failure::CantParse => {
            info!(chat_id = chat, "Telegram rejected the formatting; sending plain text");
            with_retries(bot, "sendMessage", chat, || target.message(bot, text.to_string()).send()).await
        }
        r => r,
    }
}

/// Edits a message into `text` (HTML, plain fallback); "not modified" is success.
async fn edit_text(bot: &Bot, chat: i64, id: MessageId, text: &str) -> Result<(), RequestError> {
    let html = escape_html(text);
    let r = with_retries(bot, "editMessageText", chat, || {
        bot.edit_message_text(ChatId(chat), id, html.clone()).parse_mode(ParseMode::Html).send()
    })
    .await;
    let r = match r {
        Err(e) if classify(&e) == Failure::CantParse => {
            info!(chat_id = chat, "Telegram rejected the formatting; editing as plain text");
            with_retries(bot, "editMessageText", chat, || bot.edit_message_text(ChatId(chat), id, text.to_string()).send())
                .await
        }
        r => r,
    };
    match r {
        Ok(_) => Ok(()),
        Err(e) if classify(&e) == Failure::NotModified => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sends a short reply (help, refusal, …), logging a failure.
async fn reply(bot: &Bot, target: Target, text: &str) {
    if let Err(e) = send_text(bot, target, text).await {
        warn!(chat_id = target.chat, error = %describe(&e, bot.token()), "could not send a reply");
    }
}

/// A task that ends with its handle's owner.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the end of a turn waits, by default, for a "typing…" action or a draft already in flight before
/// the answer goes out ([`BotOptions::in_flight_grace`]). Waiting keeps them ahead of the answer (one landing
/// after it would show "typing…" or a stale draft under the answer), and keeps their keep-alive connection: an
/// aborted request closes it, and the next call pays a new connection (a TLS handshake against the real Bot
/// API). Under load most turns ended with one in flight. Only a call stalled past this is aborted, so a
/// hanging Bot API still cannot hold the answer longer.
pub const IN_FLIGHT_GRACE: Duration = Duration::from_millis(300);

/// A turn's background Bot API calls ("typing…", previews): told to stop when the turn has its result, then
/// given the grace to finish the call in flight. Dropped without [`Self::finish`] or [`Self::join`], it aborts.
struct TurnCalls {
    task: Option<tokio::task::JoinHandle<()>>,
    /// Dropped to tell the task the turn has ended.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    in_flight: Arc<std::sync::atomic::AtomicBool>,
}

/// What a turn's background task is given: the turn's end, and the flag of its call in flight.
struct Gate {
    stop: tokio::sync::oneshot::Receiver<()>,
    in_flight: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    /// Runs `call` unless the turn has ended, marked in flight from before the check until it is done
    /// (so a task that is about to call is waited for, not aborted). `None`: the turn has ended.
    async fn call<F: Future>(&mut self, call: F) -> Option<F::Output> {
        use std::sync::atomic::Ordering::SeqCst;
        self.in_flight.store(true, SeqCst);
        let ended = !matches!(self.stop.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty));
        let out = if ended { None } else { Some(call.await) };
        self.in_flight.store(false, SeqCst);
        out
    }

    /// Waits for `wait` unless the turn ends first (`None`).
    async fn unless_ended<F: Future>(&mut self, wait: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = &mut self.stop => None,
            out = wait => Some(out),
        }
    }
}

impl TurnCalls {
    fn spawn<F: Future<Output = ()> + Send + 'static>(calls: impl FnOnce(Gate) -> F) -> Self {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let in_flight = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = Gate { stop: stop_rx, in_flight: in_flight.clone() };
        TurnCalls { task: Some(tokio::spawn(calls(gate))), stop: Some(stop), in_flight }
    }

    /// Stops the task; waits up to `grace` for its call in flight. A task between calls holds no request and
    /// is aborted at once.
    async fn finish(mut self, grace: Duration) {
        self.stop.take();
        let Some(mut task) = self.task.take() else { return };
        let calling = self.in_flight.load(std::sync::atomic::Ordering::SeqCst);
        if !calling || tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }

    /// Stops the task and waits for it however long its call takes (a group's edit must land before the
    /// final one).
    async fn join(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TurnCalls {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Repeats "typing…" (in the message's topic) until the turn ends.
fn start_typing(bot: &Bot, target: Target, every: Duration) -> TurnCalls {
    let bot = bot.clone();
    let every = every.max(Duration::from_millis(500));
    let chat = target.chat;
    TurnCalls::spawn(|mut gate| async move {
        loop {
            let mut action = bot.send_chat_action(ChatId(chat), ChatAction::Typing);
            if let Some(thread) = target.thread {
                action = action.message_thread_id(thread);
            }
            // A turn that ended before this task first ran needs no "typing…".
            match gate.call(action.send()).await {
                None => return,
                Some(Err(e)) => debug!(chat_id = chat, error = %describe(&e, bot.token()), "sendChatAction failed"),
                Some(Ok(_)) => {}
            }
            if gate.unless_ended(tokio::time::sleep(every)).await.is_none() {
                return;
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreviewKind {
    /// Private chat: `sendMessageDraft` with this id.
    Draft(i64),
    /// Group: one message, edited.
    Edit,
}

/// The streamed preview of one turn.
struct Preview {
    kind: PreviewKind,
    target: Target,
    chat: i64,
    enabled: bool,
    /// Group: the message being edited (becomes the answer's first message).
    message: Option<MessageId>,
    shown: Option<String>,
    /// When the first streamed text became visible.
    first_shown: Option<Instant>,
    pacer: Pacer,
}

impl Preview {
    fn new(kind: PreviewKind, target: Target, options: &BotOptions) -> Self {
        let interval = match kind {
            PreviewKind::Draft(_) => options.draft_interval,
            PreviewKind::Edit => options.edit_interval.max(Duration::from_secs(1)),
        };
        let chat = target.chat;
        Preview { kind, target, chat, enabled: true, message: None, shown: None, first_shown: None, pacer: Pacer::new(interval) }
    }

    fn wanted(&self, acc: &str) -> Option<String> {
        match self.kind {
            PreviewKind::Draft(_) => draft_preview(acc),
            PreviewKind::Edit => group_preview(acc),
        }
    }

    /// When the next update should go out, if one is needed.
    fn due(&self, acc: &str) -> Option<Instant> {
        if !self.enabled {
            return None;
        }
        next_preview_at(&self.pacer, Instant::now(), self.shown.as_deref(), self.wanted(acc).as_deref())
    }

    async fn push(&mut self, bot: &Bot, acc: &str) {
        let Some(text) = self.wanted(acc) else { return };
        if self.shown.as_deref() == Some(text.as_str()) {
            return;
        }
        let chat = self.chat;
        self.pacer.sent(Instant::now());
        let r = match (self.kind, self.message) {
            (PreviewKind::Draft(id), _) => {
                let thread = self.target.thread.map(|t| t.0.0);
                draft::send_message_draft(bot, chat, id, thread, text.clone()).await
            }
            // The streamed message is the answer's first message: it replies to the question, in its topic.
            (PreviewKind::Edit, None) => self.target.message(bot, text.clone()).send().await.map(|m| {
                self.message = Some(m.id);
            }),
            (PreviewKind::Edit, Some(id)) => bot.edit_message_text(ChatId(chat), id, text.clone()).send().await.map(|_| ()),
        };
        match r {
            Ok(()) => {
                self.shown = Some(text);
                self.first_shown.get_or_insert_with(Instant::now);
            }
            Err(e) => match classify(&e) {
                Failure::NotModified => self.shown = Some(text),
                Failure::RetryAfter(d) => {
                    debug!(chat_id = chat, "preview rate-limited for {d:?}");
                    self.pacer.retry_after(Instant::now(), d);
                }
                Failure::Transient => {
                    debug!(chat_id = chat, error = %describe(&e, bot.token()), "preview update failed; will retry");
                }
                _ => {
                    warn!(chat_id = chat, error = %describe(&e, bot.token()), "streaming preview disabled for this turn");
                    self.enabled = false;
                }
            },
        }
    }
}

/// Pushes paced previews of the streamed text until `stop` (the turn has its result).
///
/// The task reads the deltas itself and, while the pacer holds the next update back, sleeps without
/// reading them: they wait in the channel and are taken at once when the update is due. A streamed turn
/// wakes it about twice per update, not once or twice per delta (each delta used to wake the turn's task,
/// which woke this one through a watch, mostly to learn that nothing was due yet).
async fn preview_loop(
    bot: Bot,
    preview: Arc<tokio::sync::Mutex<Preview>>,
    mut deltas: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut gate: Gate,
) {
    let mut acc = String::new();
    let mut open = true;
    loop {
        open &= take_arrived(&mut deltas, &mut acc);
        let due = preview.lock().await.due(&acc);
        match due {
            // The first update of a turn is due at once: no timer for it.
            Some(due) if due <= Instant::now() => {}
            Some(due) => {
                if gate.unless_ended(tokio::time::sleep_until(due)).await.is_none() {
                    return;
                }
            }
            // Nothing new to show: wait for more text.
            None => {
                let next = async {
                    if open { deltas.recv().await } else { std::future::pending().await }
                };
                match gate.unless_ended(next).await {
                    None => return,
                    Some(Some(d)) => acc.push_str(&d),
                    Some(None) => open = false,
                }
                continue;
            }
        }
        // The turn may have ended while this waited: its answer replaces any preview.
        let pushed = gate
            .call(async {
                open &= take_arrived(&mut deltas, &mut acc);
                preview.lock().await.push(&bot, &acc).await;
            })
            .await;
        if pushed.is_none() {
            return;
        }
    }
}

/// Appends the deltas already queued; false once the sender side is gone.
fn take_arrived(deltas: &mut tokio::sync::mpsc::UnboundedReceiver<String>, acc: &mut String) -> bool {
    loop {
        match deltas.try_recv() {
            Ok(d) => acc.push_str(&d),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return true,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Delivers the final text of a turn (answer or failure sentence) as exactly one message, or several when too
/// long. In groups the streamed message becomes the first part; if it can't be edited it is replaced. The
/// first part replies to the question (groups); every part goes to the question's topic.
async fn deliver(bot: &Bot, target: Target, preview: &mut Preview, text: &str, max_messages: usize) {
    let chat = target.chat;
    let chunks = split_answer_capped(text, max_messages);
    let mut rest: &[String] = &chunks;
    let mut next = target;
    if let (Some(mid), Some(first)) = (preview.message, chunks.first()) {
        tokio::time::sleep_until(preview.pacer.next_allowed(Instant::now())).await;
        rest = &chunks[1..];
        next = target.continuation();
        preview.pacer.sent(Instant::now());
        if let Err(e) = edit_text(bot, chat, mid, first).await {
            warn!(chat_id = chat, error = %describe(&e, bot.token()), "could not edit the streamed message; sending the answer anew");
            match send_text(bot, target, first).await {
                Ok(_) => {
                    if let Err(e) = bot.delete_message(ChatId(chat), mid).send().await {
                        debug!(chat_id = chat, error = %describe(&e, bot.token()), "could not delete the streamed message");
                    }
                }
                Err(e) => {
                    warn!(chat_id = chat, error = %describe(&e, bot.token()), "could not deliver the answer");
                    return;
                }
            }
        }
    }
    for chunk in rest {
        if let Err(e) = send_text(bot, next, chunk).await {
            warn!(chat_id = chat, error = %describe(&e, bot.token()), "could not deliver the answer");
            return;
        }
        next = target.continuation();
    }
}

struct Ctx {
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    /// Where a question is acked when its turn has ended (None: no durable inbox).
    taker: Option<Arc<queue::Taker>>,
    user_locks: std::sync::Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Groups: when the last streamed send or edit went out, so the next turn in the same group keeps the
    /// pace (about 20 messages a minute per group, edits included). Turns of one chat run one after another.
    group_paced: std::sync::Mutex<HashMap<i64, Instant>>,
}

impl Ctx {
    fn user_lock(&self, user_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut g = self.user_locks.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(user_id).or_default().clone()
    }
}

async fn run_turn(bot: &Bot, ctx: &Ctx, msg: &Message, sender: Sender, text: String) {
    let chat = sender.chat_id;
    let user_id = sender.user_id;
    let lock = ctx.user_lock(user_id);
    let _turn_guard = lock.lock().await;
    let received = Instant::now();
    let target = Target::of(msg);
    let typing = start_typing(bot, target, ctx.options.typing_interval);

    // Drafts exist only in private chats; groups get one message, edited.
    let kind = if sender.private { PreviewKind::Draft(i64::from(msg.id.0).max(1)) } else { PreviewKind::Edit };
    let mut preview = Preview::new(kind, target, &ctx.options);
    if kind == PreviewKind::Edit {
        let last = ctx.group_paced.lock().unwrap_or_else(|e| e.into_inner()).get(&chat).copied();
        if let Some(last) = last {
            preview.pacer.sent(last);
        }
    }

    let (tx, deltas) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = ctx.handler.clone();
    let turn = tokio::spawn(async move { handler.turn(sender, text, tx).await });

    // Previews run in their own task so that a slow Bot API call (teloxide holds a 502 for 10 s) delays the
    // final answer in a private chat by the grace at most.
    let preview = Arc::new(tokio::sync::Mutex::new(preview));
    let previews = TurnCalls::spawn({
        let (bot, preview) = (bot.clone(), preview.clone());
        |gate| preview_loop(bot, preview, deltas, gate)
    });

    let result = turn.await;
    // Neither "typing…" nor a preview starts once the turn has its result (both are stopped at once); the
    // calls in flight finish first.
    let grace = ctx.options.in_flight_grace;
    let previews_done = async {
        match kind {
            // Drafts are ephemeral and the final message replaces them: a draft stalled in flight is dropped.
            PreviewKind::Draft(_) => previews.finish(grace).await,
            // Groups: the edit in flight finishes, the final edit goes to the same message.
            PreviewKind::Edit => previews.join().await,
        }
    };
    tokio::join!(previews_done, typing.finish(grace));
    let mut preview = preview.lock().await;
    let first_text_at = preview.first_shown;
    let (outcome, final_text) = match result {
        Ok(TurnResult::Answer(a)) if !a.trim().is_empty() => ("answer", a.trim().to_string()),
        Ok(TurnResult::Answer(_)) => ("empty", EMPTY_ANSWER_TEXT.to_string()),
        Ok(TurnResult::Failed(s)) => ("failed", if s.trim().is_empty() { INTERNAL_ERROR_TEXT.to_string() } else { s }),
        Err(e) => {
            warn!(user_id, chat_id = chat, panicked = e.is_panic(), "turn task ended abnormally");
            ("failed", INTERNAL_ERROR_TEXT.to_string())
        }
    };
    deliver(bot, target, &mut preview, &final_text, ctx.options.max_messages).await;
    if kind == PreviewKind::Edit {
        // The answer (streamed or not) just went out: the next turn's first update waits its turn.
        let last = Instant::now();
        let mut paced = ctx.group_paced.lock().unwrap_or_else(|e| e.into_inner());
        // Entries older than a pacing interval no longer hold anything back.
        let interval = ctx.options.edit_interval.max(Duration::from_secs(1));
        paced.retain(|_, t| t.elapsed() < interval);
        paced.insert(chat, last);
    }
    info!(
        user_id,
        chat_id = chat,
        private = !matches!(kind, PreviewKind::Edit),
        topic = target.thread.map(|t| t.0.0),
        outcome,
        streamed = preview.shown.is_some(),
        first_text_ms = first_text_at.map(|t| (t - received).as_millis() as u64),
        total_ms = received.elapsed().as_millis() as u64,
        "telegram turn delivered"
    );
}

async fn on_message(bot: Bot, me: Me, msg: Message, ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let Some(from) = msg.from.as_ref() else { return Ok(()) };
    // Other bots (and Telegram's stand-ins for anonymous admins and linked channels) are not talked to:
    // two bots answering each other never stop.
    if from.is_bot {
        debug!(chat_id = msg.chat.id.0, "ignored a message from a bot");
        return Ok(());
    }
    // Service messages (members joining, pins, topics created, …) are not addressed to the bot.
    if !matches!(msg.kind, MessageKind::Common(_)) {
        debug!(chat_id = msg.chat.id.0, "ignored a service message");
        return Ok(());
    }
    // In groups, only what is addressed to the bot; everything else, refusals included, stays silent.
    if !is_addressed(&msg, &me, ctx.options.group_mode) {
        return Ok(());
    }
    let sender = Sender {
        user_id: from.id.0 as i64,
        chat_id: msg.chat.id.0,
        private: msg.chat.is_private(),
        username: from.username.clone(),
    };
    let chat = sender.chat_id;
    let target = Target::of(&msg);
    if let Some(allowed) = &ctx.options.allowed_user_ids
        && !allowed.contains(&sender.user_id)
    {
        // A bare `/cmd` in a group that is not one of ours is most likely another bot's: no refusal.
        let bot_name = me.user.username.as_deref().unwrap_or("");
        let maybe_foreign = msg.text().and_then(|t| parse_command(t, bot_name)).is_some_and(|c| {
            !sender.private && !c.for_this_bot && !matches!(c.name.as_str(), "start" | "help" | "new")
        });
        if maybe_foreign {
            return Ok(());
        }
        info!(user_id = sender.user_id, chat_id = chat, "refused: user not in ALLOWED_USER_IDS");
        reply(&bot, target, REFUSAL_TEXT).await;
        return Ok(());
    }
    // Photos, documents, voice, stickers…: one sentence (in a group only when addressed, e.g. a caption
    // mentioning the bot or a reply to it).
    if msg.text().is_none() {
        reply(&bot, target, NON_TEXT_TEXT).await;
        return Ok(());
    }
    let raw = msg.text().unwrap_or_default();
    let bot_name = me.user.username.as_deref().unwrap_or("");
    if let Some(cmd) = parse_command(raw, bot_name) {
        if cmd.for_other_bot {
            return Ok(());
        }
        match cmd.name.as_str() {
            "start" | "help" => reply(&bot, target, HELP_TEXT).await,
            "new" => {
                let lock = ctx.user_lock(sender.user_id);
                let _g = lock.lock().await;
                let user_id = sender.user_id;
                let answer = match ctx.handler.reset(sender.clone()).await {
                    Ok(()) => {
                        info!(user_id, chat_id = chat, "conversation reset by /new");
                        RESET_DONE_TEXT
                    }
                    Err(e) => {
                        warn!(user_id, chat_id = chat, error = %redact(&format!("{e:#}"), bot.token()), "/new failed");
                        RESET_FAILED_TEXT
                    }
                };
                reply(&bot, target, answer).await;
            }
            _ => match ctx.handler.admin(&sender, &cmd.normalized).await {
                Some(answer) => reply(&bot, target, &answer).await,
                // A bare unknown `/cmd` in a group may be another bot's: only `/cmd@thisbot` gets an answer.
                None if sender.private || cmd.for_this_bot => reply(&bot, target, UNKNOWN_COMMAND_TEXT).await,
                None => {}
            },
        }
        return Ok(());
    }
    let text = strip_bot_mentions(&msg, &me).unwrap_or_default();
    if text.is_empty() {
        // Just "@bot": nothing to ask the model.
        reply(&bot, target, HELP_TEXT).await;
        return Ok(());
    }
    run_turn(&bot, &ctx, &msg, sender, text).await;
    Ok(())
}

/// An edit of a message already answered is not a new question (the answer given stands, and answering
/// again would post a second answer): logged only.
async fn on_edited_message(msg: Message) -> anyhow::Result<()> {
    debug!(chat_id = msg.chat.id.0, message_id = msg.id.0, "ignored an edited message");
    Ok(())
}

/// Posts in a channel the bot administers are not questions to it.
async fn on_channel_post(msg: Message) -> anyhow::Result<()> {
    debug!(chat_id = msg.chat.id.0, "ignored a channel post");
    Ok(())
}

/// The bot sends no buttons, but a button of an older message (or another client) may still be pressed:
/// answer it so the user's client stops showing a spinner.
async fn on_callback_query(bot: Bot, q: CallbackQuery) -> anyhow::Result<()> {
    if let Err(e) = bot.answer_callback_query(q.id.clone()).send().await {
        debug!(user_id = q.from.id.0, error = %describe(&e, bot.token()), "answerCallbackQuery failed");
    }
    Ok(())
}

/// The bot was added to, removed from, promoted or restricted in a chat: worth a line for the operator.
async fn on_my_chat_member(update: ChatMemberUpdated) -> anyhow::Result<()> {
    info!(
        chat_id = update.chat.id.0,
        private = update.chat.is_private(),
        by_user_id = update.from.id.0,
        old_status = ?update.old_chat_member.status(),
        new_status = ?update.new_chat_member.status(),
        "the bot's membership in a chat changed"
    );
    Ok(())
}

/// Polling cannot run while a webhook is set. Removing it silently would cut off the replicas that
/// serve it, so it is removed with a warning (a process started in the wrong mode shows in the log).
async fn clear_webhook_for_polling(bot: &Bot) {
    match bot.get_webhook_info().send().await {
        Ok(info) if info.url.is_none() => return,
        Ok(info) => warn!(
            pending_update_count = info.pending_update_count,
            "a webhook is set for this bot; polling removes it (TELEGRAM_MODE=webhook serves it; `swapbot webhook set` registers it again)"
        ),
        Err(e) => debug!(error = %describe(&e, bot.token()), "getWebhookInfo failed"),
    }
    for attempt in 0..5u32 {
        match bot.delete_webhook().send().await {
            Ok(_) => break,
            Err(e) => {
                debug!(error = %describe(&e, bot.token()), "deleteWebhook failed");
                tokio::time::sleep(polling_backoff(attempt)).await;
            }
        }
    }
}

/// Best-effort start-up calls: in polling mode drop a webhook that would block polling (never in webhook
/// mode), register the command menu.
async fn setup(bot: Bot, polling: bool) {
    if polling {
        clear_webhook_for_polling(&bot).await;
    }
    let commands = vec![
        BotCommand::new("new", "Forget our conversation and start a fresh one"),
        BotCommand::new("usage", "What you used today and this month"),
        BotCommand::new("help", "What this bot does"),
    ];
    for attempt in 0..5u32 {
        match bot.set_my_commands(commands.clone()).send().await {
            Ok(_) => break,
            Err(e) => {
                debug!(error = %describe(&e, bot.token()), "setMyCommands failed");
                tokio::time::sleep(polling_backoff(attempt)).await;
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if r.is_err() {
                std::future::pending::<()>().await;
            }
        }
        () = term => {}
    }
}

/// How long a stop waits for the dispatcher to wind down before returning anyway (default of
/// [`BotOptions::stop_grace`]).
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// Serves Telegram by long polling until SIGINT or SIGTERM; returns within about 2 s of the signal.
pub async fn run_polling(bot: Bot, handler: Arc<dyn TurnHandler>, options: BotOptions) -> anyhow::Result<()> {
    run_polling_until(bot, handler, options, shutdown_signal()).await
}

/// Like [`run_polling`], stopping when `shutdown` resolves (tests, or a host with its own signal handling).
/// Returns within about [`BotOptions::stop_grace`] of that. Turns still running are not awaited past
/// that grace time; with an inbox they are answered after the restart.
pub async fn run_polling_until(
    bot: Bot,
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let inbox = match &options.inbox_dir {
        Some(dir) => Some(open_inbox(dir)?),
        None => None,
    };
    let token = bot.token().to_string();
    let _setup = AbortOnDrop(tokio::spawn(setup(bot.clone(), true)));
    let listener_bot = bot.clone();
    let listener_errors = Arc::new(move |e: RequestError| {
        let token = token.clone();
        async move {
            warn!(error = %describe(&e, &token), "Telegram getUpdates failed; polling continues");
        }
    });
    let listener_inbox = inbox.clone();
    // Not teloxide's `Polling`: one undecodable update would wedge it (see `updates`).
    let listeners = move || updates::listener(listener_bot.clone(), Duration::from_secs(10), listener_inbox.clone());
    // The poller stores, replays and feeds the dispatcher itself; the queue is only where a turn that
    // ended is acked. One poller per bot (Telegram refuses a second getUpdates): even with a database,
    // its inbox is the file one in its DATA_DIR, and nobody else would take from a shared one.
    let taker = inbox.map(|inbox| queue::Taker::new(Arc::new(FileQueue::new(inbox))));
    dispatch(bot, handler, options, taker, shutdown, listeners, listener_errors, "stopping Telegram polling").await
}

fn open_inbox(dir: &std::path::Path) -> anyhow::Result<Arc<inbox::Inbox>> {
    Ok(Arc::new(inbox::Inbox::open(dir).map_err(|e| anyhow::anyhow!("cannot use the inbox {}: {e}", dir.display()))?))
}

/// Serves Telegram by webhook (see [`webhook`]) on `config.listen` until SIGINT or SIGTERM. Questions
/// wait in `queue` (a shared one: several replicas) or, when `None`, in the file inbox at
/// [`BotOptions::inbox_dir`]: Telegram gets its 200 once an update is there. Calls neither setWebhook,
/// deleteWebhook nor getUpdates (register with [`set_webhook`]).
pub async fn run_webhook(
    bot: Bot,
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    config: WebhookConfig,
    queue: Option<Arc<dyn UpdateQueue>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on WEBHOOK_LISTEN {}: {e}", config.listen))?;
    let queue = match queue {
        Some(queue) => queue,
        None => file_queue(&options)?,
    };
    run_webhook_with_queue(listener, bot, handler, options, config, queue, shutdown_signal()).await
}

fn file_queue(options: &BotOptions) -> anyhow::Result<Arc<dyn UpdateQueue>> {
    let Some(dir) = &options.inbox_dir else {
        anyhow::bail!("webhook mode needs the durable inbox (BotOptions::inbox_dir)");
    };
    Ok(Arc::new(FileQueue::replaying(open_inbox(dir)?)))
}

/// Like [`run_webhook`] with the file inbox, on a bound listener (`config.listen` is not used),
/// stopping when `shutdown` resolves: the endpoint stops taking updates first, then turns in flight
/// get [`BotOptions::stop_grace`]; what is left waits in the inbox for the next start.
pub async fn run_webhook_on(
    listener: tokio::net::TcpListener,
    bot: Bot,
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    config: WebhookConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let queue = file_queue(&options)?;
    run_webhook_with_queue(listener, bot, handler, options, config, queue, shutdown).await
}

/// Like [`run_webhook_on`] with questions in `queue`. At the stop, after the grace time, what this
/// process took and did not finish is released to the other takers ([`UpdateQueue::release`]).
pub async fn run_webhook_with_queue(
    listener: tokio::net::TcpListener,
    bot: Bot,
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    config: WebhookConfig,
    queue: Arc<dyn UpdateQueue>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let taker = queue::Taker::new(queue.clone());
    // Questions come through the taker (what an earlier run left goes first); other updates
    // straight from the endpoint.
    let taking = AbortOnDrop(tokio::spawn(taker.clone().run(tx.clone())));
    let app = webhook::router(&config.path, webhook::Intake::new(&config, taker.clone(), tx));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the webhook endpoint stopped");
        }
    });
    let server = AbortOnDrop(server);
    let stop_grace = options.stop_grace;
    let shutdown = async move {
        shutdown.await;
        info!("stopping the Telegram webhook endpoint");
        // Nothing more is taken: what is not in flight stays for the others (or the next start).
        drop(taking);
        let _ = stop_server.send(());
        let mut server = server;
        let _ = tokio::time::timeout(stop_grace, &mut server.0).await;
    };
    let _setup = AbortOnDrop(tokio::spawn(setup(bot.clone(), false)));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let listeners = move || webhook::listener(rx.clone());
    let errors = teloxide::error_handlers::LoggingErrorHandler::new();
    let dispatched =
        dispatch(bot, handler, options, Some(taker), shutdown, listeners, errors, "stopping Telegram webhook dispatch").await;
    // The grace time is over: a turn still running is abandoned with the process.
    if let Err(err) = queue.release().await {
        warn!(err = %format!("{err:#}"), "could not release the updates in flight; others take them when their lease ends");
    }
    dispatched
}

/// Runs the mode `TELEGRAM_MODE` names (polling by default; webhook with `WEBHOOK_*`) until SIGINT or
/// SIGTERM. `queue`: the shared inbox of several replicas, for webhook mode (polling, one poller per
/// bot, keeps its file inbox).
pub async fn run_from_env(
    bot: Bot,
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    queue: Option<Arc<dyn UpdateQueue>>,
) -> anyhow::Result<()> {
    match TelegramMode::from_env()? {
        TelegramMode::Polling => run_polling(bot, handler, options).await,
        TelegramMode::Webhook => run_webhook(bot, handler, options, WebhookConfig::from_env()?, queue).await,
    }
}

/// The dispatcher both modes share: the same handlers, whatever feeds the updates.
#[allow(clippy::too_many_arguments)]
async fn dispatch<L, Eh>(
    bot: Bot,
    handler: Arc<dyn TurnHandler>,
    options: BotOptions,
    taker: Option<Arc<queue::Taker>>,
    shutdown: impl Future<Output = ()> + Send,
    mut listeners: impl FnMut() -> L,
    listener_errors: Arc<Eh>,
    stopping: &str,
) -> anyhow::Result<()>
where
    L: teloxide::update_listeners::UpdateListener + Send,
    L::Err: std::fmt::Debug,
    Eh: teloxide::error_handlers::ErrorHandler<L::Err> + Send + Sync,
{
    let stop_grace = options.stop_grace;
    let ctx = Arc::new(Ctx { handler, options, taker, user_locks: Default::default(), group_paced: Default::default() });
    let token = bot.token().to_string();
    tokio::pin!(shutdown);

    let mut attempt = 0u32;
    loop {
        // Every update kind the bot may get is handled on purpose; the default handler drops the rest.
        // A question leaves the inbox when its turn has ended, whatever the outcome (only messages
        // go through the inbox): acked right after its answer was sent, so a crash leaves the
        // shortest window in which an answer went out and the question is still waiting.
        let schema = dptree::entry()
            .branch(Update::filter_message().endpoint(|bot: Bot, me: Me, msg: Message, ctx: Arc<Ctx>, update: Update| async move {
                let result = on_message(bot, me, msg, ctx.clone()).await;
                if let Some(taker) = &ctx.taker {
                    taker.ack(update.id.0).await;
                }
                result
            }))
            .branch(Update::filter_edited_message().endpoint(on_edited_message))
            .branch(Update::filter_channel_post().endpoint(on_channel_post))
            .branch(Update::filter_edited_channel_post().endpoint(on_channel_post))
            .branch(Update::filter_callback_query().endpoint(on_callback_query))
            .branch(Update::filter_my_chat_member().endpoint(on_my_chat_member));
        let mut dispatcher = Dispatcher::builder(bot.clone(), schema)
            .dependencies(dptree::deps![ctx.clone()])
            .default_handler(|_| async {})
            .build();
        let stop = dispatcher.shutdown_token();
        let run = dispatcher.try_dispatch_with_listener(listeners(), listener_errors.clone());
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let d = polling_backoff(attempt);
                    attempt += 1;
                    warn!(error = %describe(&e, &token), "Telegram getMe failed; retrying in {d:?}");
                    tokio::select! {
                        () = tokio::time::sleep(d) => continue,
                        () = &mut shutdown => return Ok(()),
                    }
                }
            },
            () = &mut shutdown => {
                info!("{stopping}");
                if stop.shutdown().is_ok() {
                    let _ = tokio::time::timeout(stop_grace, &mut run).await;
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        let c = parse_command("/new", "mybot").unwrap();
        assert_eq!((c.name.as_str(), c.for_other_bot), ("new", false));
        let c = parse_command("/Help@MyBot", "mybot").unwrap();
        assert_eq!((c.name.as_str(), c.for_other_bot), ("help", false));
        let c = parse_command("/new@otherbot", "mybot").unwrap();
        assert!(c.for_other_bot);
        let c = parse_command("/rollout@mybot 10 percent", "mybot").unwrap();
        assert_eq!(c.normalized, "/rollout 10 percent");
        assert!(c.for_this_bot);
        // Case-insensitive: `/ROLLOUT` is `/rollout` (arguments are left to the command).
        let c = parse_command("/ROLLOUT@MyBot ON", "mybot").unwrap();
        assert_eq!((c.name.as_str(), c.normalized.as_str(), c.for_this_bot), ("rollout", "/rollout ON", true));
        let c = parse_command("/new", "mybot").unwrap();
        assert!(!c.for_this_bot && !c.for_other_bot, "a bare command names no bot");
        assert_eq!(parse_command("hello /new", "mybot"), None);
        assert_eq!(parse_command("/", "mybot"), None);
        assert_eq!(parse_command("/ hello", "mybot"), None);
        assert_eq!(parse_command("/path/to/file", "mybot"), None);
    }

    #[test]
    fn validates_settings() {
        assert!(looks_like_token("123456:AAHfakeTokenSecretPart_abc-def"));
        assert!(!looks_like_token("123456"));
        assert!(!looks_like_token("abc:AAHfakeTokenSecret"));
        assert!(!looks_like_token("123:short"));
        assert!(!looks_like_token("123:has space in it"));
        assert_eq!(parse_api_url("http://127.0.0.1:8081/").unwrap().as_str(), "http://127.0.0.1:8081/");
        assert_eq!(parse_api_url("https://example.com/tg/").unwrap().as_str(), "https://example.com/tg");
        let e = parse_api_url("not a url").unwrap_err().to_string();
        assert!(e.contains("TELOXIDE_API_URL"));
        assert!(parse_api_url("mailto:bot@example.com").is_err());
        assert!(parse_api_url("ftp://example.com").is_err());
    }

    #[test]
    fn redacts_token() {
        let t = "123456:ABCDEFGHijklmnop";
        assert_eq!(redact("url /bot123456:ABCDEFGHijklmnop/x", t), "url /bot<token:redacted>/x");
        assert_eq!(redact("secret ABCDEFGHijklmnop", t), "secret <redacted>");
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(classify(&RequestError::Api(ApiError::MessageNotModified)), Failure::NotModified);
        assert_eq!(
            classify(&RequestError::Api(ApiError::CantParseEntities("Bad Request: can't parse entities: x".into()))),
            Failure::CantParse
        );
        assert_eq!(
            classify(&RequestError::RetryAfter(teloxide::types::Seconds::from_seconds(7))),
            Failure::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(classify(&RequestError::Api(ApiError::BotBlocked)), Failure::Permanent);
    }

    #[test]
    fn default_options_respect_limits() {
        let o = BotOptions::default();
        assert!(o.edit_interval >= Duration::from_secs(1));
        assert!(o.typing_interval < Duration::from_secs(5));
    }
}
