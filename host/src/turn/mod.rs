//! The turn pipeline every front end uses (Telegram, the terminal chat, `swapbot ask`):
//! route → one turn per session at a time → budget → session id → knowledge base → plugin on
//! its backend's transport (with the [`retry`] policy) → ids and history made durable → one log
//! line and the user's [`replies`].

pub mod replies;
pub mod retry;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::calendar::unix_ms_now as unix_ms;

use arc_swap::ArcSwap;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use crate::config::{BackendConfig, Config};
use crate::registry::Registry;
use crate::routing::Routing;
use crate::runtime::effects::{LiveEffects, TurnObservations};
use crate::runtime::{ContextChunk, ErrorKind, PluginError, Settings, Turn};
use crate::state::{FileStore, SessionHistory, SessionIds, SessionKey, SessionStore};
use crate::state::{HistoryStore, IdMap};
use replies::{EMPTY, GENERIC, TOO_SLOW, UNAVAILABLE};
use transport::Transports;
use crate::telemetry::turnlog::{TurnLog, TurnRecord};
use crate::usage::{Budgets, Ledger, PriceTable, TokenCounts};

/// Knowledge-base context for a turn.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub chunks: Vec<ContextChunk>,
    /// Why there are no chunks, when that is worth a log line.
    pub note: Option<String>,
    /// What the embeddings call of the lookup billed.
    pub embedding_tokens: u64,
}

/// Knowledge-base context for a turn. A source that fails returns no chunks and a note.
#[async_trait::async_trait]
pub trait ContextSource: Send + Sync {
    async fn context(&self, question: &str) -> Context;
}

/// Counting, pricing and capping what turns cost.
pub struct Accounting {
    pub ledger: Ledger,
    pub prices: PriceTable,
    pub budgets: Budgets,
    /// Exempt from budgets.
    pub admins: std::collections::BTreeSet<i64>,
    /// Prices the knowledge base's embeddings.
    pub embedding_model: String,
}

impl Default for Accounting {
    fn default() -> Self {
        Self {
            ledger: Ledger::in_memory(),
            prices: PriceTable::shipped(),
            budgets: Budgets::default(),
            admins: Default::default(),
            embedding_model: "text-embedding-3-small".into(),
        }
    }
}

/// The settings of turns: every backend's, and the host's caps.
#[derive(Clone, Debug)]
pub struct TurnSettings {
    pub backends: crate::config::Backends,
    /// The longest server-requested wait a retry honours (`MAX_RETRY_WAIT_SECS`).
    pub max_retry_wait: Duration,
    /// The most answer text a plugin may push in one turn.
    pub max_pushed_bytes: usize,
}

impl TurnSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            backends: config.backends.clone(),
            max_retry_wait: config.max_retry_wait,
            // The largest answer Telegram gets: its message cap × 4096 UTF-16 units, at most 4
            // bytes of UTF-8 per unit.
            max_pushed_bytes: config.telegram_max_messages * 4096 * 4,
        }
    }
}

/// What a plugin is handed of its backend's settings (never its base URL or key).
pub fn plugin_settings(backend: &BackendConfig) -> Settings {
    Settings {
        model: backend.model.clone(),
        instructions: backend.instructions.clone(),
        poll_interval_ms: backend.poll_interval.as_millis().min(u32::MAX as u128) as u32,
        deadline_ms: backend.deadline.as_millis().min(u32::MAX as u128) as u32,
        options: backend.options.clone(),
    }
}

/// The prompt-cache key of a session: stable across turns and restarts, different for a user's
/// private chat and each of their group sessions. It is sent to the API, so it is keyed with a
/// secret of this installation (`DATA_DIR/.prompt-cache-salt`): a plain hash of a Telegram id
/// could be reversed by trying every id.
pub fn cache_key(salt: &str, session: impl Into<SessionKey>) -> String {
    use sha2::{Digest, Sha256};
    let seed = match session.into() {
        SessionKey::Private(user_id) => format!("{salt} private {user_id}"),
        SessionKey::Group(group) => format!("{salt} group {}", crate::state::StoreKey::to_key(&group)),
    };
    let digest = Sha256::digest(seed.as_bytes());
    format!("swapbot-{}", hex::encode(&digest[..8]))
}

/// The installation's prompt-cache salt, made at first start.
fn cache_salt(data_dir: &std::path::Path) -> String {
    let path = data_dir.join(".prompt-cache-salt");
    if let Ok(salt) = std::fs::read_to_string(&path) {
        let salt = salt.trim();
        if salt.len() >= 16 {
            return salt.to_owned();
        }
    }
    let salt = hex::encode(rand::random::<[u8; 16]>());
    if let Err(err) = std::fs::write(&path, &salt) {
        // Keys then change at the next start: the cache is cold once, nothing else is lost.
        tracing::warn!(path = %path.display(), %err, "cannot store the prompt-cache salt");
    }
    salt
}

/// How a turn ended, for the front end.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub backend: String,
    /// The answer, or one short human sentence for the user.
    pub reply: Result<String, String>,
    pub record: TurnRecord,
}

#[derive(Default, Clone, Copy, Debug)]
pub struct BackendStats {
    pub turns: u64,
    pub errors: u64,
}

pub struct TurnService {
    plugins: Arc<Registry>,
    transports: Transports,
    settings: TurnSettings,
    routing: ArcSwap<Routing>,
    /// `DATA_DIR`'s files: the state of turns unless a database replaces it (`with_store`).
    files: Arc<FileStore>,
    /// What turns read and write: `files`, or PostgreSQL shared by replicas.
    store: Arc<dyn SessionStore>,
    turn_log: TurnLog,
    context: Option<Arc<dyn ContextSource>>,
    stats: Mutex<HashMap<String, BackendStats>>,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    accounting: Accounting,
    cache_salt: String,
    /// Why turns go without knowledge-base context, logged when it starts or changes.
    kb_warning: OngoingWarning,
}

/// A condition that holds for many turns in a row (an empty knowledge base, a ChromaDB that is
/// down) is logged when it starts or changes and then every [`OngoingWarning::REPEAT`], not on
/// every turn: a bot without a knowledge base wrote a warning per turn, and formatting it was a
/// tenth of the turn's CPU.
#[derive(Default)]
struct OngoingWarning {
    last: Mutex<Option<(String, Instant)>>,
}

impl OngoingWarning {
    const REPEAT: std::time::Duration = std::time::Duration::from_secs(600);

    /// Whether `note` is to be logged now; `None` says the condition ended.
    fn should_log(&self, note: Option<&str>) -> bool {
        let mut last = self.last.lock().unwrap();
        let Some(note) = note else {
            *last = None;
            return false;
        };
        if last.as_ref().is_some_and(|(seen, at)| seen == note && at.elapsed() < Self::REPEAT) {
            return false;
        }
        *last = Some((note.to_owned(), Instant::now()));
        true
    }
}

impl TurnService {
    pub fn new(
        plugins: Arc<Registry>,
        transports: Transports,
        settings: TurnSettings,
        routing: Routing,
        data_dir: &std::path::Path,
        turn_log: TurnLog,
        context: Option<Arc<dyn ContextSource>>,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
    ) -> Self {
        let files = Arc::new(FileStore::open(data_dir));
        metrics.set_routing(&routing.to_string());
        Self {
            plugins,
            transports,
            settings,
            routing: ArcSwap::from_pointee(routing),
            files: files.clone(),
            store: files,
            turn_log,
            context,
            stats: Mutex::new(HashMap::new()),
            metrics,
            accounting: Accounting::default(),
            cache_salt: cache_salt(data_dir),
            kb_warning: OngoingWarning::default(),
        }
    }

    /// Replaces the default accounting (in memory, shipped prices, no budgets).
    pub fn with_accounting(mut self, accounting: Accounting) -> Self {
        self.accounting = accounting;
        self
    }

    /// Replaces the file store as the state of turns (PostgreSQL with `DATABASE_URL`).
    pub fn with_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = store;
        self
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    pub fn accounting(&self) -> &Accounting {
        &self.accounting
    }

    /// The prompt-cache key this service sends for a session.
    pub fn cache_key(&self, session: impl Into<SessionKey>) -> String {
        cache_key(&self.cache_salt, session)
    }

    pub fn plugins(&self) -> &Arc<Registry> {
        &self.plugins
    }

    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    pub fn set_routing(&self, routing: Routing) {
        self.metrics.set_routing(&routing.to_string());
        self.routing.store(Arc::new(routing));
    }

    pub fn stats(&self) -> HashMap<String, BackendStats> {
        self.stats.lock().unwrap().clone()
    }

    /// The private sessions' ids of the backends that name `file` as their id map.
    pub fn id_map(&self, file: &str) -> Arc<IdMap> {
        self.session_ids(file).private
    }

    pub fn settings(&self) -> &TurnSettings {
        &self.settings
    }

    /// The file store's private history (`DATA_DIR/history`; not what turns use on a database).
    pub fn history(&self) -> &HistoryStore {
        &self.files.history().private
    }

    /// A backend's session ids in the file store (private and group) by the private map's file
    /// name, which the registry has checked to be a plain file of this backend's under `DATA_DIR`.
    pub fn session_ids(&self, file: &str) -> SessionIds {
        self.files.session_ids(file)
    }

    /// The file store's replay history of every kind of session.
    pub fn session_history(&self) -> SessionHistory {
        self.files.history().clone()
    }

    /// /new: forget a session (a user id: their private chat's) on every backend and the history that
    /// would be replayed. A group session's /new leaves the user's private chat and other groups alone.
    pub async fn reset(&self, session: impl Into<SessionKey>) -> anyhow::Result<()> {
        let session = session.into();
        let _turn = self.store.lock_turn(session).await?;
        // Every backend's map, loaded or not: a backend swapped out must not bring an old
        // session back when it returns.
        let maps: Vec<String> = self.plugins.loaded().values().filter_map(|p| p.description.id_map.clone()).collect();
        self.store.remove_sessions(&maps, session).await?;
        self.store.clear_history(session).await?;
        tracing::info!(session = %session.label(), "user started a new conversation");
        Ok(())
    }

    /// Runs one turn of the user's private chat on the backend the routing picks for this user.
    pub async fn turn(&self, user_id: i64, text: &str, deltas: Option<UnboundedSender<String>>) -> TurnOutcome {
        self.turn_in(user_id, SessionKey::Private(user_id), text, deltas).await
    }

    /// Runs one turn of `session` (written by `user_id`) on the backend the routing picks for the user: a
    /// user is on the same side of the canary in private chats and groups.
    pub async fn turn_in(
        &self,
        user_id: i64,
        session: SessionKey,
        text: &str,
        deltas: Option<UnboundedSender<String>>,
    ) -> TurnOutcome {
        let routing = self.routing.load();
        let (backend, reason) = routing.route(user_id);
        let span = tracing::info_span!(
            "turn",
            user_id,
            session = %session.label(),
            backend,
            route = reason.as_str(),
            session_id = tracing::field::Empty,
            turn_id = tracing::field::Empty,
        );
        let backend = backend.to_owned();
        drop(routing);
        self.turn_on_in(&backend, reason.as_str(), user_id, session, text, deltas).instrument(span).await
    }

    /// Runs one turn of the user's private chat on a given backend (`swapbot ask --backend`).
    pub async fn turn_on(
        &self,
        backend: &str,
        route: &str,
        user_id: i64,
        text: &str,
        deltas: Option<UnboundedSender<String>>,
    ) -> TurnOutcome {
        self.turn_on_in(backend, route, user_id, SessionKey::Private(user_id), text, deltas).await
    }

    async fn turn_on_in(
        &self,
        backend: &str,
        route: &str,
        user_id: i64,
        session: SessionKey,
        text: &str,
        deltas: Option<UnboundedSender<String>>,
    ) -> TurnOutcome {
        let one_turn_per_session = self.store.lock_turn(session).await;
        let started = Instant::now();
        let t0_unix_ms = unix_ms();
        let mut record = TurnRecord {
            t0_unix_ms,
            user_id,
            session: session.label(),
            backend: backend.into(),
            route: route.into(),
            ..Default::default()
        };

        let now_ms = unix_ms();
        let over_budget = if self.accounting.admins.contains(&user_id) {
            Ok(())
        } else {
            crate::usage::check(&self.accounting.budgets, &self.accounting.ledger, user_id, now_ms)
        };
        let reply = match (one_turn_per_session.as_ref(), over_budget) {
            (Err(err), _) => {
                tracing::error!(%err, "cannot take the session's turn lock");
                record.error_kind = Some("storage".into());
                Err(UNAVAILABLE.into())
            }
            (Ok(_), Ok(())) => self.run_turn(backend, user_id, session, text, deltas, started, &mut record).await,
            (Ok(_), Err(exceeded)) => {
                tracing::info!(?exceeded, "turn refused: over budget");
                record.error_kind = Some(OVER_BUDGET.into());
                Err(exceeded.sentence(now_ms))
            }
        };
        self.account(&mut record);

        record.tn_unix_ms = unix_ms();
        record.latency_ms = started.elapsed().as_millis() as u64;
        if record.ttft_ms.is_none() && reply.is_ok() {
            record.ttft_ms = Some(record.latency_ms);
        }
        // A turn refused by a budget made no request: not an error of the backend.
        record.outcome = match (&reply, record.error_kind.as_deref()) {
            (Ok(_), _) => "ok".into(),
            (Err(_), Some(OVER_BUDGET)) => "refused".into(),
            (Err(_), _) => "error".into(),
        };
        {
            let mut stats = self.stats.lock().unwrap();
            let entry = stats.entry(backend.to_owned()).or_default();
            entry.turns += 1;
            entry.errors += (record.outcome == "error") as u64;
        }
        self.turn_log.write(&record);
        self.metrics.record_turn(&record);
        TurnOutcome { backend: backend.to_owned(), reply, record }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_turn(
        &self,
        backend: &str,
        user_id: i64,
        session: SessionKey,
        text: &str,
        deltas: Option<UnboundedSender<String>>,
        started: Instant,
        record: &mut TurnRecord,
    ) -> Result<String, String> {
        let Some(plugin) = self.plugins.get(backend) else {
            tracing::error!(backend, file = %self.plugins.file_of(backend).display(), "no plugin loaded for this backend");
            record.error_kind = Some("plugin-missing".into());
            return Err(UNAVAILABLE.into());
        };
        record.plugin_version = plugin.description.version.clone();
        record.session_label = plugin.description.session_label.clone();
        record.turn_label = plugin.description.turn_label.clone();
        let config = self.settings.backends.get(backend);
        let openai = match self.transports.get(backend, &config) {
            Ok(openai) => openai,
            Err(err) => {
                tracing::error!(backend, %err, "the backend's transport is not configured");
                record.error_kind = Some("config".into());
                return Err(UNAVAILABLE.into());
            }
        };
        // A stateless backend keeps no session ids: its conversation is the history.
        let id_map = plugin.description.id_map.clone();
        let mut session_id = match &id_map {
            Some(map) => match self.store.session_id(map, session).await {
                Ok(id) => id,
                Err(err) => {
                    tracing::error!(%err, "cannot read the session id");
                    record.error_kind = Some("storage".into());
                    return Err(UNAVAILABLE.into());
                }
            },
            None => None,
        };
        record.session_id = session_id.clone();

        let context = match &self.context {
            Some(source) => {
                let kb_started = Instant::now();
                let Context { chunks, note, embedding_tokens } = source.context(text).await;
                record.kb_ms = kb_started.elapsed().as_millis() as u64;
                record.kb_chunks = chunks.len() as u32;
                record.embedding_tokens = (embedding_tokens > 0).then_some(embedding_tokens);
                if self.kb_warning.should_log(note.as_deref()) {
                    tracing::warn!(note = %note.unwrap_or_default(), "answering without knowledge-base context (logged again when the reason changes, or in 10 minutes)");
                }
                chunks
            }
            None => vec![],
        };
        let settings = plugin_settings(&config);
        record.model = settings.model.clone();

        // Text pushed past the largest answer a front end delivers would only be held, never shown.
        let observations = Arc::new(Mutex::new(TurnObservations {
            max_pushed_bytes: Some(self.settings.max_pushed_bytes),
            ..Default::default()
        }));
        let mut attempt = 0;
        // Set while a turn retries in a new session because the stored one no longer fits the
        // model's window: the session it left, kept unless the new one works.
        let mut left_session: Option<Option<String>> = None;
        loop {
            attempt += 1;
            let turn = Turn {
                user_id,
                session_id: session_id.clone(),
                cache_key: cache_key(&self.cache_salt, session),
                text: text.to_owned(),
                context: context.clone(),
                settings: settings.clone(),
            };
            let bounded = left_session.is_some();
            let store = self.store.clone();
            let effects = LiveEffects {
                openai: openai.clone(),
                deltas: deltas.clone(),
                // Read when the plugin asks (under the session's turn lock, so nothing changes it
                // meanwhile), not for every turn.
                history: Box::new(move || {
                    let store = store.clone();
                    Box::pin(async move {
                        match store.recent(session).await {
                            Ok(mut recent) => {
                                if bounded && recent.len() > FRESH_SESSION_REPLAY {
                                    recent.drain(..recent.len() - FRESH_SESSION_REPLAY);
                                }
                                recent.into_iter().map(for_plugin).collect()
                            }
                            Err(err) => {
                                // The plugin goes on without it (a new session starts empty);
                                // the failure is the operator's to see.
                                tracing::error!(%err, "cannot read the history for the plugin; it gets none");
                                vec![]
                            }
                        }
                    })
                }),
                observations: observations.clone(),
                plugin: plugin.description.name.clone(),
                started: Instant::now(),
            };
            let result = self.plugins.runtime().chat(&plugin, turn, Box::new(effects)).await;
            let obs = observations.lock().unwrap().clone();
            if let Some(first) = obs.first_text_at {
                record.ttft_ms = Some(first.duration_since(started).as_millis() as u64);
            }
            match result {
                Ok(Ok(answer)) => {
                    let current = tracing::Span::current();
                    if let Some(id) = &answer.session_id {
                        current.record("session_id", id.as_str());
                    }
                    current.record("turn_id", answer.turn_id.as_str());
                    record.session_id = answer.session_id.clone();
                    record.turn_id = Some(answer.turn_id.clone());
                    record.new_session = answer.new_session;
                    record.replayed = answer.replayed;
                    add_usage(record, answer.usage);
                    if let Some(Some(left)) = &left_session {
                        tracing::warn!(left = %left, new = ?answer.session_id, "continued in a new conversation: the old one no longer fit the model's window");
                    }
                    let answer_text = answer.text.trim().to_owned();
                    // The id and the exchange are durable before the user sees the answer.
                    let durable = async {
                        // Written only when it changed: most turns continue the session they read.
                        if let (Some(map), Some(id)) = (&id_map, &answer.session_id)
                            && session_id.as_ref() != Some(id)
                        {
                            self.store
                                .set_session_id(map, session, id)
                                .await
                                .map_err(|e| format!("could not store the session id: {e}"))?;
                        }
                        if !answer_text.is_empty() {
                            self.store
                                .append_exchange(session, text, &answer_text)
                                .await
                                .map_err(|e| format!("could not store the history: {e}"))?;
                        }
                        Ok::<(), String>(())
                    };
                    if let Err(err) = durable.await {
                        tracing::error!(%err, "storage");
                    }
                    if answer_text.is_empty() {
                        record.error_kind = Some("empty-answer".into());
                        return Err(EMPTY.into());
                    }
                    return Ok(answer_text);
                }
                Ok(Err(error)) => {
                    record.error_kind = Some(error.kind.as_str().into());
                    record.turn_id = error.turn_id.clone().or(record.turn_id.take());
                    add_usage(record, error.usage);
                    let shown_text = obs.pushed_chars > 0;
                    if error.kind == ErrorKind::ContextOverflow && left_session.is_none() && session_id.is_some() && !shown_text {
                        // The message may fit while the stored conversation does not (a server
                        // that ignores truncation): once, in a new session with a bounded replay.
                        tracing::warn!(message = %error.message, "the session no longer fits the model's window: trying once in a new one");
                        left_session = Some(session_id.take());
                        record.retries += 1;
                        continue;
                    }
                    // A session the new-session attempt created is dropped when it failed too: the
                    // user keeps the one they had.
                    let keep_created = left_session.is_none();
                    let created = error.session_id.as_ref().or(obs.session_started.as_ref());
                    if let (Some(new_session), Some(id_map)) = (created.filter(|_| keep_created), &id_map) {
                        // A session created before the failure is kept: the retry and the
                        // next turn use it instead of creating another.
                        if session_id.as_deref() != Some(new_session) {
                            if let Err(err) = self.store.set_session_id(id_map, session, new_session).await {
                                tracing::error!(%err, "could not store the session id");
                            }
                            session_id = Some(new_session.clone());
                            record.session_id = session_id.clone();
                        }
                    }
                    if matches!(error.kind, ErrorKind::ApiGone) {
                        tracing::error!(
                            backend,
                            "the backend API no longer exists ({}); move its users to another backend (/rollout)",
                            error.message
                        );
                        return Err(UNAVAILABLE.into());
                    }
                    if let Some(wait) = retry::next_attempt(&error, attempt, shown_text, self.settings.max_retry_wait) {
                        tracing::warn!(kind = error.kind.as_str(), wait_ms = wait.as_millis() as u64, message = %error.message, "retrying the turn once");
                        record.retries += 1;
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    tracing::warn!(kind = error.kind.as_str(), message = %error.message, retryable = error.retryable, shown_text, "turn failed");
                    return Err(replies::for_error(&error).into());
                }
                Err(plugin_error) => {
                    record.error_kind = Some(plugin_error_name(&plugin_error).into());
                    tracing::error!(error = %plugin_error, "plugin failed the turn");
                    // A session the plugin created before it trapped or ran out of time is kept:
                    // the next turn continues in it instead of losing what it holds.
                    if let Some(created) = obs.session_started.as_ref().filter(|_| left_session.is_none())
                        && session_id.as_deref() != Some(created)
                        && let Some(id_map) = &id_map
                    {
                        if let Err(err) = self.store.set_session_id(id_map, session, created).await {
                            tracing::error!(%err, "could not store the session id");
                        }
                        record.session_id = Some(created.clone());
                    }
                    // A turn cut by its deadline says so; other plugin failures are ours.
                    if matches!(plugin_error, PluginError::Timeout(_)) {
                        return Err(TOO_SLOW.into());
                    }
                    return Err(GENERIC.into());
                }
            }
        }
    }
}

impl TurnService {
    /// Prices a finished turn's tokens and counts them for the user and overall (in memory; the
    /// journal line is written off the turn's path).
    fn account(&self, record: &mut TurnRecord) {
        let tokens = TokenCounts {
            input: record.input_tokens.unwrap_or(0),
            cached_input: record.cached_input_tokens.unwrap_or(0),
            output: record.output_tokens.unwrap_or(0),
            reasoning: record.reasoning_tokens.unwrap_or(0),
            embedding: record.embedding_tokens.unwrap_or(0),
        };
        if tokens == TokenCounts::default() {
            return;
        }
        let a = &self.accounting;
        let micro_usd = a.prices.micro_usd(&record.model, &a.embedding_model, &tokens);
        record.cost_usd = Some(micro_usd as f64 / 1e6);
        // Counted when the turn ended, the moment its cost was known.
        let now = unix_ms();
        a.ledger.record(
            crate::usage::ledger::Entry {
                t_unix_ms: now,
                user_id: record.user_id,
                backend: record.backend.clone(),
                model: record.model.clone(),
                tokens,
                micro_usd,
            },
            now,
        );
    }

    /// Runs one plugin call of a turn exactly as `turn_on` would (same session, context and
    /// history) while recording its HTTP exchanges, and returns them as a harness case.
    /// Nothing is stored: recording never changes the user's state.
    pub async fn record_case(&self, backend: &str, user_id: i64, text: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        let plugin = self.plugins.get(backend).ok_or_else(|| anyhow::anyhow!("no {backend} plugin loaded"))?;
        let config = self.settings.backends.get(backend);
        let openai = self.transports.get(backend, &config).map_err(|e| anyhow::anyhow!("backend {backend}: {e}"))?;
        let session_id = match plugin.description.id_map.as_deref() {
            Some(map) => self.store.session_id(map, SessionKey::Private(user_id)).await?,
            None => None,
        };
        let context = match &self.context {
            Some(source) => source.context(text).await.chunks,
            None => vec![],
        };
        let turn = Turn {
            user_id,
            session_id,
            cache_key: cache_key(&self.cache_salt, user_id),
            text: text.to_owned(),
            context,
            settings: plugin_settings(&config),
        };
        let history: Vec<_> = self.store.recent(SessionKey::Private(user_id)).await?.into_iter().map(for_plugin).collect();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let live = LiveEffects {
            openai,
            deltas: Some(tx),
            history: crate::runtime::effects::fixed_history(history.clone()),
            observations: Default::default(),
            plugin: plugin.description.name.clone(),
            started: Instant::now(),
        };
        let (recorder, exchanges) = crate::dev::harness::Recorder::new(Box::new(live));
        let outcome = self.plugins.runtime().chat(&plugin, turn.clone(), Box::new(recorder)).await?;
        let mut pushed = String::new();
        while let Ok(delta) = rx.try_recv() {
            pushed.push_str(&delta);
        }
        let exchanges = exchanges.lock().unwrap().clone();
        Ok(crate::dev::harness::recorded_case(name, &turn, &history, exchanges, &outcome, &pushed))
    }
}

const OVER_BUDGET: &str = "over-budget";

/// A message of the host's history as the contract hands it to a plugin.
fn for_plugin(m: crate::state::Message) -> crate::runtime::HistoryMessage {
    let role = match m.role {
        crate::state::Role::User => crate::runtime::Role::User,
        crate::state::Role::Assistant => crate::runtime::Role::Assistant,
    };
    crate::runtime::HistoryMessage { role, text: m.text }
}

/// History messages replayed into a new session when the old one no longer fits the window.
const FRESH_SESSION_REPLAY: usize = 20;

/// Adds one call's billed usage to the turn's (a turn may be billed more than once: retries).
fn add_usage(record: &mut TurnRecord, usage: Option<crate::runtime::Usage>) {
    let Some(u) = usage else { return };
    let add = |field: &mut Option<u64>, n: u64| *field = Some(field.unwrap_or(0) + n);
    add(&mut record.input_tokens, u.input_tokens);
    add(&mut record.cached_input_tokens, u.cached_input_tokens);
    add(&mut record.output_tokens, u.output_tokens);
    add(&mut record.reasoning_tokens, u.reasoning_tokens);
}

fn plugin_error_name(err: &PluginError) -> &'static str {
    match err {
        PluginError::CpuLimit(_) => "plugin-cpu-limit",
        PluginError::MemoryLimit(_) => "plugin-memory-limit",
        PluginError::Timeout(_) => "turn-timeout",
        PluginError::Trap(_) => "plugin-trap",
        _ => "plugin-invalid",
    }
}


#[cfg(test)]
mod tests {
    use super::OngoingWarning;

    #[test]
    fn an_ongoing_warning_is_logged_when_it_starts_changes_or_returns() {
        let w = OngoingWarning::default();
        let empty = Some("the knowledge base is empty");
        assert!(w.should_log(empty));
        assert!(!w.should_log(empty), "not again on the next turn");
        assert!(w.should_log(Some("ChromaDB is unreachable")), "a new reason is logged");
        assert!(!w.should_log(None));
        assert!(w.should_log(Some("ChromaDB is unreachable")), "a reason that came back is logged");
    }
}
