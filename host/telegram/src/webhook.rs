//! Receiving updates by webhook, and registering the webhook (an explicit operator step).
//!
//! The endpoint is a plain axum route rather than teloxide's `webhooks-axum`: teloxide answers 200 as soon
//! as the update is in an in-memory channel (a crash then loses it), makes up a random secret when none is
//! given (a second replica would refuse every update) and registers / deletes the webhook at start / stop
//! (one replica stopping would cut every other off). Here 200 means "in the durable inbox", the secret is
//! the operator's, and registering is [`set_webhook`], run once.
//!
//! Answers to Telegram:
//! - 401 for a missing or wrong `X-Telegram-Bot-Api-Secret-Token` (nothing is read or taken);
//! - 413 for a body over [`WebhookConfig::max_body_bytes`];
//! - 200 for a body that is not an update: the secret proved it came from Telegram, and a redelivery would
//!   be the same bytes, so refusing it would only make Telegram retry garbage (the polling path skips such an
//!   update the same way); it is logged by update_id, never by content;
//! - 500 when the inbox cannot be written (a file that cannot be fsynced, a database that does not
//!   answer or does not commit): Telegram retries later, nothing is lost;
//! - 200 once the update is durable in the inbox, the file one or the database's (or is a duplicate of
//!   one already accepted: a no-op).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use futures::Stream;
use teloxide::{
    Bot,
    payloads::{DeleteWebhookSetters, SetWebhookSetters},
    prelude::Requester,
    requests::Request,
    stop::{StopFlag, StopToken, mk_stop_token},
    types::{AllowedUpdate, Update},
    update_listeners::{StatefulListener, UpdateListener},
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{debug, error, warn};

use crate::inbox::{Inbox, Stored};
use crate::queue::Taker;
use crate::updates::repair_lone_surrogates;

/// The header Telegram sends the registered secret in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
/// `WEBHOOK_PATH` when unset.
pub const DEFAULT_WEBHOOK_PATH: &str = "/telegram";
/// `WEBHOOK_LISTEN` when unset: loopback, behind the TLS-terminating proxy Telegram talks to.
pub const DEFAULT_WEBHOOK_LISTEN: &str = "127.0.0.1:8443";
/// Largest update body taken. Updates are a few KiB (4096-character texts, file ids, not files).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// How updates reach the bot (`TELEGRAM_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TelegramMode {
    #[default]
    Polling,
    Webhook,
}

impl TelegramMode {
    /// `polling` or `webhook` (any case); empty is polling.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "polling" => Ok(TelegramMode::Polling),
            "webhook" => Ok(TelegramMode::Webhook),
            _ => anyhow::bail!("TELEGRAM_MODE must be polling or webhook"),
        }
    }

    /// `TELEGRAM_MODE`, polling when unset.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(&std::env::var("TELEGRAM_MODE").unwrap_or_default())
    }
}

/// The secret Telegram sends with every update (`WEBHOOK_SECRET`): shared by every replica, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// 1–256 characters of `A-Z a-z 0-9 _ -`, as Telegram allows. The error never echoes the value.
    pub fn new(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            anyhow::bail!("WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -");
        }
        Ok(WebhookSecret(s.to_string()))
    }

    /// `WEBHOOK_SECRET`; required.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("WEBHOOK_SECRET") {
            Ok(s) if !s.trim().is_empty() => Self::new(&s),
            _ => anyhow::bail!("WEBHOOK_SECRET is required in webhook mode (the same value on every replica)"),
        }
    }

    /// Compares in time independent of where the values differ, so the secret cannot be guessed byte
    /// by byte from response times.
    pub fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = (expected.len() != given.len()) as u8;
        for (i, e) in expected.iter().enumerate() {
            diff |= e ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Where and how the webhook endpoint is served.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `WEBHOOK_LISTEN`, default [`DEFAULT_WEBHOOK_LISTEN`].
    pub listen: SocketAddr,
    /// `WEBHOOK_PATH`, default [`DEFAULT_WEBHOOK_PATH`].
    pub path: String,
    /// `WEBHOOK_SECRET`, required.
    pub secret: WebhookSecret,
    pub max_body_bytes: usize,
}

impl WebhookConfig {
    pub fn new(listen: SocketAddr, secret: WebhookSecret) -> Self {
        WebhookConfig { listen, path: DEFAULT_WEBHOOK_PATH.to_string(), secret, max_body_bytes: DEFAULT_MAX_BODY_BYTES }
    }

    /// From `WEBHOOK_LISTEN`, `WEBHOOK_PATH` and `WEBHOOK_SECRET`.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let listen = var("WEBHOOK_LISTEN").unwrap_or_else(|| DEFAULT_WEBHOOK_LISTEN.to_string());
        let listen = listen
            .parse()
            .map_err(|_| anyhow::anyhow!("WEBHOOK_LISTEN must be an address and port such as 127.0.0.1:8443"))?;
        let mut config = WebhookConfig::new(listen, WebhookSecret::from_env()?);
        if let Some(path) = var("WEBHOOK_PATH") {
            config.path = parse_path(&path)?;
        }
        Ok(config)
    }
}

fn parse_path(path: &str) -> anyhow::Result<String> {
    if !path.starts_with('/') || path.contains(['?', '#', ' ', '{', '}']) {
        anyhow::bail!("WEBHOOK_PATH must be a path starting with / (such as /telegram)");
    }
    Ok(path.to_string())
}

/// Ids of updates not kept by the inbox (callback queries, membership changes…) taken lately: a
/// redelivery of one is dropped. Bounded: Telegram redelivers within hours, not after thousands more.
struct RecentIds {
    order: VecDeque<u32>,
    set: HashSet<u32>,
}

impl RecentIds {
    const KEPT: usize = 10_000;

    /// Whether `id` is new (and remembers it).
    fn insert(&mut self, id: u32) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::KEPT
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

pub(crate) struct Intake {
    secret: WebhookSecret,
    max_body_bytes: usize,
    /// Questions go to its queue (durable), and it brings them to the dispatcher.
    taker: Arc<Taker>,
    /// Other updates go to the dispatcher straight away.
    tx: UnboundedSender<Update>,
    recent: Mutex<RecentIds>,
}

impl Intake {
    pub(crate) fn new(config: &WebhookConfig, taker: Arc<Taker>, tx: UnboundedSender<Update>) -> Arc<Self> {
        Arc::new(Intake {
            secret: config.secret.clone(),
            max_body_bytes: config.max_body_bytes,
            taker,
            tx,
            recent: Mutex::new(RecentIds { order: VecDeque::new(), set: HashSet::new() }),
        })
    }
}

pub(crate) fn router(path: &str, intake: Arc<Intake>) -> Router {
    Router::new().route(path, post(receive)).with_state(intake)
}

/// Decodes an update body, repairing lone UTF-16 surrogate escapes like the poller does.
fn decode(body: &[u8]) -> Option<Update> {
    if let Ok(update) = serde_json::from_slice(body) {
        return Some(update);
    }
    let repaired = repair_lone_surrogates(std::str::from_utf8(body).ok()?);
    serde_json::from_str(&repaired).ok()
}

async fn receive(State(intake): State<Arc<Intake>>, headers: HeaderMap, body: Body) -> StatusCode {
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !intake.secret.matches(given) {
        warn!("refused a webhook request without the right secret token");
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(body) = axum::body::to_bytes(body, intake.max_body_bytes).await else {
        warn!(limit = intake.max_body_bytes, "refused a webhook request: the body is too large or was cut");
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let Some(update) = decode(&body) else {
        let update_id = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v.get("update_id")?.as_i64());
        warn!(?update_id, bytes = body.len(), "a webhook update did not decode; skipped");
        return StatusCode::OK;
    };
    let id = update.id.0;
    if Inbox::keeps(&update) {
        match intake.taker.queue().enqueue(&update).await {
            Ok(Stored::New) => {
                intake.recent.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                // Durable: this process's taker brings it to the dispatcher (and if this process dies
                // first, a restart, or with a shared inbox another replica, answers it).
                intake.taker.wake();
                return StatusCode::OK;
            }
            Ok(Stored::Duplicate) => {
                debug!(update_id = id, "dropped a second delivery of an update");
                return StatusCode::OK;
            }
            Err(err) => {
                error!(update_id = id, err = %format!("{err:#}"), "could not write an update to the inbox; Telegram will deliver it again");
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
    }
    if !intake.recent.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
        debug!(update_id = id, "dropped a second delivery of an update");
        return StatusCode::OK;
    }
    if intake.tx.send(update).is_err() {
        // Not durable and no one to hand it to: let Telegram deliver it to a replica that runs.
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::OK
}

pub(crate) struct WebhookListen {
    rx: Arc<tokio::sync::Mutex<UnboundedReceiver<Update>>>,
    token: StopToken,
    flag: StopFlag,
}

/// The dispatcher's update listener in webhook mode: what the endpoint took. It never calls the Bot API
/// (no getUpdates, no deleteWebhook). The receiver outlives one listener: a getMe retry builds another.
pub(crate) fn listener(rx: Arc<tokio::sync::Mutex<UnboundedReceiver<Update>>>) -> impl UpdateListener<Err = Infallible> {
    let (token, flag) = mk_stop_token();
    StatefulListener::new(WebhookListen { rx, token, flag }, stream, |state: &mut WebhookListen| state.token.clone())
}

fn stream(state: &mut WebhookListen) -> impl Stream<Item = Result<Update, Infallible>> + Send + '_ {
    futures::stream::unfold(state, |state| async move {
        let rx = state.rx.clone();
        let mut rx = rx.lock().await;
        let next = tokio::select! {
            next = rx.recv() => next,
            () = state.flag.clone() => None,
        };
        drop(rx);
        next.map(|update| (Ok(update), state))
    })
}

/// Optional settings of [`set_webhook`].
#[derive(Debug, Clone, Default)]
pub struct SetWebhookOptions {
    /// Parallel connections Telegram opens (1–100; Telegram's default 40).
    pub max_connections: Option<u8>,
    /// Drop the updates Telegram holds undelivered.
    pub drop_pending_updates: bool,
    /// `None`: keep what was registered before.
    pub allowed_updates: Option<Vec<AllowedUpdate>>,
}

fn api_error(what: &str, e: &teloxide::RequestError, bot: &Bot) -> anyhow::Error {
    anyhow::anyhow!("{what} failed: {}", crate::describe(e, bot.token()))
}

/// Registers `url` as the bot's webhook with `secret`. An explicit operator step (`swapbot webhook set`):
/// never done at start or stop. The error names neither the URL nor the secret.
pub async fn set_webhook(bot: &Bot, url: &str, secret: &WebhookSecret, options: &SetWebhookOptions) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(url.trim()).map_err(|_| anyhow::anyhow!("the webhook URL is not a valid URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        anyhow::bail!("the webhook URL must be an https:// URL");
    }
    let mut request = bot.set_webhook(url).secret_token(secret.expose());
    if let Some(n) = options.max_connections {
        if !(1..=100).contains(&n) {
            anyhow::bail!("max_connections must be 1-100");
        }
        request = request.max_connections(n);
    }
    if options.drop_pending_updates {
        request = request.drop_pending_updates(true);
    }
    if let Some(kinds) = &options.allowed_updates {
        request = request.allowed_updates(kinds.clone());
    }
    request.send().await.map_err(|e| api_error("setWebhook", &e, bot))?;
    Ok(())
}

/// Removes the webhook (`swapbot webhook delete`); polling works again afterwards.
pub async fn delete_webhook(bot: &Bot, drop_pending_updates: bool) -> anyhow::Result<()> {
    let mut request = bot.delete_webhook();
    if drop_pending_updates {
        request = request.drop_pending_updates(true);
    }
    request.send().await.map_err(|e| api_error("deleteWebhook", &e, bot))?;
    Ok(())
}

/// What `getWebhookInfo` says, printable (`swapbot webhook info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSummary {
    /// `None`: no webhook (the bot polls).
    pub url: Option<String>,
    pub pending_update_count: u32,
    pub last_error_message: Option<String>,
    /// Unix time of the last delivery error.
    pub last_error_date: Option<i64>,
    pub max_connections: Option<u32>,
    /// As Telegram names them (`message`, `callback_query`, …); `None`: Telegram's default set.
    pub allowed_updates: Option<Vec<String>>,
}

impl fmt::Display for WebhookSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "url: {}", self.url.as_deref().unwrap_or("(none: the bot polls)"))?;
        writeln!(f, "pending_update_count: {}", self.pending_update_count)?;
        match (&self.last_error_message, self.last_error_date) {
            (Some(message), date) => {
                let when = date.map(utc_time).unwrap_or_else(|| "unknown time".into());
                writeln!(f, "last_error: {message} (at {when})")?;
            }
            (None, _) => writeln!(f, "last_error: none")?,
        }
        match self.max_connections {
            Some(n) => writeln!(f, "max_connections: {n}")?,
            None => writeln!(f, "max_connections: default")?,
        }
        match &self.allowed_updates {
            Some(kinds) => write!(f, "allowed_updates: {}", kinds.join(", ")),
            None => write!(f, "allowed_updates: default"),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time (days to civil date after Howard Hinnant).
fn utc_time(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// `getWebhookInfo`, summarised.
pub async fn webhook_info(bot: &Bot) -> anyhow::Result<WebhookSummary> {
    let info = bot.get_webhook_info().send().await.map_err(|e| api_error("getWebhookInfo", &e, bot))?;
    let allowed_updates = info.allowed_updates.map(|kinds| {
        kinds
            .iter()
            .map(|k| serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{k:?}")))
            .collect()
    });
    Ok(WebhookSummary {
        url: info.url.map(|u| u.to_string()),
        pending_update_count: info.pending_update_count,
        last_error_message: info.last_error_message,
        last_error_date: info.last_error_date.map(|d| d.timestamp()),
        max_connections: info.max_connections,
        allowed_updates,
    })
}

/// `swapbot webhook set URL [--max-connections N] [--drop-pending-updates] | delete [--drop-pending-updates]
/// | info`: runs one and returns what to print. `set` takes the secret from `WEBHOOK_SECRET`.
pub async fn webhook_cli(bot: &Bot, args: &[String]) -> anyhow::Result<String> {
    const USAGE: &str =
        "usage: swapbot webhook set URL [--max-connections N] [--drop-pending-updates] | delete [--drop-pending-updates] | info";
    let drop_pending = args.iter().skip(1).any(|a| a == "--drop-pending-updates");
    match args.first().map(String::as_str) {
        Some("set") => {
            let url = args.get(1).filter(|a| !a.starts_with("--")).ok_or_else(|| anyhow::anyhow!(USAGE))?;
            let mut options = SetWebhookOptions { drop_pending_updates: drop_pending, ..Default::default() };
            let mut rest = args[2..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--max-connections" => {
                        let n = rest.next().and_then(|n| n.parse().ok()).ok_or_else(|| anyhow::anyhow!("--max-connections takes a number 1-100"))?;
                        options.max_connections = Some(n);
                    }
                    "--drop-pending-updates" => {}
                    _ => anyhow::bail!(USAGE),
                }
            }
            set_webhook(bot, url, &WebhookSecret::from_env()?, &options).await?;
            Ok(format!("webhook set\n{}", webhook_info(bot).await?))
        }
        Some("delete") => {
            if args[1..].iter().any(|a| a != "--drop-pending-updates") {
                anyhow::bail!(USAGE);
            }
            delete_webhook(bot, drop_pending).await?;
            Ok("webhook deleted".to_string())
        }
        Some("info") if args.len() == 1 => Ok(webhook_info(bot).await?.to_string()),
        _ => anyhow::bail!(USAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings() {
        assert_eq!(TelegramMode::parse("").unwrap(), TelegramMode::Polling);
        assert_eq!(TelegramMode::parse("Webhook").unwrap(), TelegramMode::Webhook);
        assert!(TelegramMode::parse("push").unwrap_err().to_string().contains("TELEGRAM_MODE"));
        let e = WebhookSecret::new("has space s3cr3t").unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(!format!("{:?}", WebhookSecret::new("s3cr3t").unwrap()).contains("s3cr3t"));
        assert_eq!(parse_path("/tg/hook").unwrap(), "/tg/hook");
        assert!(parse_path("telegram").is_err());
    }

    #[test]
    fn formats_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(1_709_251_199), "2024-02-29 23:59:59 UTC");
    }

    #[test]
    fn secret_compare() {
        let s = WebhookSecret::new("abc-DEF_123").unwrap();
        assert!(s.matches(b"abc-DEF_123"));
        assert!(!s.matches(b"abc-DEF_12"));
        assert!(!s.matches(b"abc-DEF_1234"));
        assert!(!s.matches(b"abc-DEF_124"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn recent_ids_are_bounded() {
        let mut r = RecentIds { order: VecDeque::new(), set: HashSet::new() };
        assert!(r.insert(1));
        assert!(!r.insert(1));
        for id in 2..=(RecentIds::KEPT as u32 + 1) {
            r.insert(id);
        }
        assert!(r.set.len() <= RecentIds::KEPT);
        assert!(r.insert(1), "forgotten after KEPT more");
    }
}
