//! Settings from the environment (a `.env` file fills only what the environment leaves unset)
//! and the config file (`swapbot.toml`: per-backend sections and the routing). A missing or
//! invalid setting is one clear error naming it (and, in the file, its line and key).

pub mod backends;
mod env;
pub mod legacy;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::routing::{Canary, Routing};
pub use backends::{BackendConfig, Backends};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

pub(crate) fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { name, message: message.into() }
}

#[derive(Clone)]
pub struct Config {
    /// `OPENAI_API_KEY`: the knowledge base's embeddings, and every backend whose settings do
    /// not name another key variable.
    pub openai_api_key: Option<String>,
    /// `OPENAI_BASE_URL`: the embeddings, and the default of every backend.
    pub openai_base_url: String,
    pub openai_timeout: Duration,
    /// Every backend's settings (`swapbot.toml` and the environment).
    pub backends: Backends,
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    pub turn_timeout: Duration,
    /// The longest server-requested wait (`Retry-After`) honoured before a retry.
    pub max_retry_wait: Duration,
    /// The largest non-streamed response body, and the largest line or event of a stream.
    pub openai_max_body_bytes: usize,
    pub routing: Routing,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub telegram_token: Option<String>,
    pub allowed_user_ids: Option<BTreeSet<i64>>,
    pub admin_user_ids: BTreeSet<i64>,
    pub plugin_memory_mb: usize,
    pub plugin_pooling: bool,
    pub plugin_pool_size: u32,
    /// Not a setting: how plugins are compiled. `swapbot run` compiles them in a child process
    /// of its own executable; everything else in this process.
    pub plugin_compiler: crate::registry::Compiler,
    /// A price table that replaces the shipped one (`PRICES_FILE`).
    pub prices_file: Option<PathBuf>,
    pub budgets: crate::usage::Budgets,
    /// Count usage into `DATA_DIR/usage.jsonl` (the bot); off for one-off commands such as
    /// `swapbot ask`, which must not rewrite the running bot's journal.
    pub usage_journal: bool,
    /// A plugin file larger than this is refused without being read.
    pub plugin_max_file_bytes: u64,
    /// Telegram messages one answer may take; a longer answer is cut with a note.
    pub telegram_max_messages: usize,
    /// `GROUP_MODE`: answer only messages addressed to the bot in groups, or all.
    pub group_mode: swapbot_telegram::GroupMode,
    /// `GROUP_SESSIONS`: one session per (group, user), or one per group.
    pub group_sessions: crate::state::GroupSessions,
    /// How long SIGTERM/SIGINT lets turns in flight finish before the bot exits.
    pub shutdown_grace: Duration,
    /// `DATABASE_URL`: the state in PostgreSQL, shared by replicas; None: in `DATA_DIR`'s files.
    pub database_url: Option<String>,
    /// `DATABASE_POOL_SIZE`: connections for queries.
    pub database_pool_size: usize,
    /// `DATABASE_LOCK_CONNECTIONS`: the most turns this replica runs at once (each holds one
    /// connection for its session's lock).
    pub database_lock_connections: usize,
    /// `REPLICA_ID`: this replica's name in the replica list (default: made once per `DATA_DIR`).
    pub replica_id: Option<String>,
    /// `INBOX_LEASE_SECS`: with a database in webhook mode, how long an update a replica took is
    /// its own before another replica may take it (the most a dead replica's questions wait).
    pub inbox_lease: Duration,
}

impl std::fmt::Debug for Config {
    // Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "<set>"))
            .field("openai_base_url", &self.openai_base_url)
            .field("config_file", &self.config_file)
            .field("routing", &self.routing)
            .field("data_dir", &self.data_dir)
            .field("plugin_dir", &self.plugin_dir)
            .field("telegram_token", &self.telegram_token.as_ref().map(|_| "<set>"))
            .field("database_url", &self.database_url.as_deref().map(swapbot_pg::redact_url))
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_MODEL: &str = "gpt-4.1-mini";
pub const DEFAULT_INSTRUCTIONS: &str =
    "You are a helpful assistant in a Telegram chat. Answer concisely. Use the knowledge base context when it is relevant.";

/// An allow-list that is set but names nobody (`" "`, `","`) must not read as "everyone": that
/// would open a private bot to the world through a typo. Unset means everyone.
fn allow_list(
    name: &'static str,
    present: bool,
    parsed: Option<BTreeSet<i64>>,
) -> Result<Option<BTreeSet<i64>>, ConfigError> {
    match parsed {
        Some(ids) if !ids.is_empty() => Ok(Some(ids)),
        _ if present => Err(invalid(name, "is set but lists no user ids (unset it to let everyone in)")),
        _ => Ok(None),
    }
}

/// The routing at start: the preset (default and canary of [`legacy`]), the file's `[routing]`
/// over it, the environment over that. `rollout.json` later wins over all of them.
fn routing_from(file: backends::FileRouting, env: &env::Env) -> Result<Routing, ConfigError> {
    let name = |var: &'static str, file: Option<String>, preset: &str| -> Result<String, ConfigError> {
        // Set but empty means none (`CANARY_BACKEND=""`: no canary).
        let set = env.is_set(var).then(|| env.text(var).unwrap_or_default());
        let value = set.or(file).unwrap_or_else(|| preset.to_owned());
        if value.is_empty() || backends::valid_backend_name(&value) {
            Ok(value)
        } else {
            Err(invalid(var, format!("{value:?} is not a backend name ([a-z][a-z0-9-]*, the plugin file's stem)")))
        }
    };
    let default = name("DEFAULT_BACKEND", file.default, legacy::DEFAULT_BACKEND)?;
    if default.is_empty() {
        return Err(invalid("DEFAULT_BACKEND", "is empty: name the backend that answers everyone off the canary"));
    }
    let canary = name("CANARY_BACKEND", file.canary, legacy::CANARY_BACKEND)?;
    let enabled = env.flag("USE_OPENAI_RESPONSES", file.canary_enabled.unwrap_or(false))?;
    let percent = env.number("RESPONSES_ROLLOUT_PERCENT", file.canary_percent.unwrap_or(100).min(100) as u64, 0, 100)? as u8;
    let test_users = env.ids("RESPONSES_TEST_USERS")?.or(file.test_users).unwrap_or_default();
    // `CANARY_BACKEND=""` (or `canary = ""`): no canary at all.
    let canary = (!canary.is_empty()).then_some(Canary { backend: canary, enabled, percent, test_users });
    Ok(Routing { default, canary })
}

impl Config {
    /// Reads `.env` (if present) without overriding the environment, then the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        let names: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
        Self::from_lookup_named(|name| std::env::var(name).ok(), &names)
    }

    /// From a list of variables (the environment as tests give it).
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
        Self::from_lookup_named(|name| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()), &names)
    }

    /// From a lookup that cannot list its variables: `BACKEND_<NAME>_*` then applies to the
    /// backends the file, the routing or the plugin directory names.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_lookup_named(get, &[])
    }

    /// `variables`: every variable name the environment has, so that `BACKEND_<NAME>_*` reaches
    /// a backend whose plugin arrives after the start.
    fn from_lookup_named(get: impl Fn(&str) -> Option<String>, variables: &[String]) -> Result<Self, ConfigError> {
        let env = env::Env::new(&get);
        let text = |name: &'static str| env.text(name);
        let flag = |name: &'static str, default: bool| env.flag(name, default);
        let number = |name: &'static str, default: u64, min: u64, max: u64| env.number(name, default, min, max);
        let ids = |name: &'static str| env.ids(name);

        let openai_base_url = text("OPENAI_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.into());
        if !(openai_base_url.starts_with("http://") || openai_base_url.starts_with("https://")) {
            return Err(invalid("OPENAI_BASE_URL", "must start with http:// or https://"));
        }
        let instructions = match (text("OPENAI_INSTRUCTIONS"), text("OPENAI_INSTRUCTIONS_FILE")) {
            (Some(inline), _) => inline,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| invalid("OPENAI_INSTRUCTIONS_FILE", format!("cannot read {path}: {e}")))?
                .trim()
                .to_owned(),
            (None, None) => DEFAULT_INSTRUCTIONS.into(),
        };
        let openai_timeout = Duration::from_secs(number("OPENAI_TIMEOUT_SECS", 60, 1, 3600)?);
        let defaults = BackendConfig {
            base_url: openai_base_url.clone(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            model: text("OPENAI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.into()),
            instructions,
            request_timeout: openai_timeout,
            poll_interval: Duration::from_millis(number("POLL_INTERVAL_MS", 500, 50, 60_000)?),
            deadline: Duration::from_secs(number("RUN_DEADLINE_SECS", 90, 1, 3600)?),
            options: vec![],
        };
        // An explicitly named file must exist; the default name is read only when present.
        let config_file = match text("SWAPBOT_CONFIG") {
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from("swapbot.toml")).filter(|p| p.is_file()),
        };
        let file = match &config_file {
            Some(path) => Some((path.as_path(), backends::read_file(path)?)),
            None => None,
        };
        let legacy_options = legacy::options_from_env(&env)?;
        let lookup = |name: &str| get(name);
        let plugin_dir: PathBuf = text("PLUGIN_DIR").unwrap_or_else(|| "target/plugins".into()).into();
        let mut names = backends::names_in_env(variables);
        if let Ok(entries) = std::fs::read_dir(&plugin_dir) {
            names.extend(entries.filter_map(|e| e.ok()).filter_map(|e| backends::backend_of_file(&e.path()).map(str::to_owned)));
        }
        let (backends, file_routing) = backends::resolve(defaults, file, legacy_options, &lookup, names)?;
        let routing = routing_from(file_routing.unwrap_or_default(), &env)?;
        let budget = |name: &'static str| -> Result<Option<crate::usage::Limit>, ConfigError> {
            text(name).map(|v| crate::usage::Limit::parse(&v).map_err(|m| invalid(name, m))).transpose()
        };
        let budgets = crate::usage::Budgets {
            user_day: budget("BUDGET_USER_DAY")?,
            user_month: budget("BUDGET_USER_MONTH")?,
            total_day: budget("BUDGET_TOTAL_DAY")?,
            total_month: budget("BUDGET_TOTAL_MONTH")?,
        };
        Ok(Config {
            openai_api_key: text("OPENAI_API_KEY"),
            openai_base_url,
            openai_timeout,
            backends,
            config_file,
            turn_timeout: Duration::from_secs(number("TURN_TIMEOUT_SECS", 150, 1, 3600)?),
            max_retry_wait: Duration::from_secs(number(
                "MAX_RETRY_WAIT_SECS",
                swapbot_openai::DEFAULT_MAX_RETRY_WAIT.as_secs(),
                0,
                600,
            )?),
            openai_max_body_bytes: (number("OPENAI_MAX_BODY_MB", 16, 1, 1024)? as usize) << 20,
            routing,
            data_dir: text("DATA_DIR").unwrap_or_else(|| "data".into()).into(),
            log_dir: text("LOG_DIR").unwrap_or_else(|| "logs".into()).into(),
            plugin_dir,
            telegram_token: text("TELOXIDE_TOKEN"),
            allowed_user_ids: allow_list("ALLOWED_USER_IDS", get("ALLOWED_USER_IDS").is_some(), ids("ALLOWED_USER_IDS")?)?,
            admin_user_ids: ids("ADMIN_USER_IDS")?.unwrap_or_default(),
            plugin_memory_mb: number("PLUGIN_MEMORY_MB", 64, 8, 4096)? as usize,
            plugin_pooling: flag("PLUGIN_POOLING", true)?,
            plugin_pool_size: number("PLUGIN_POOL_SIZE", 256, 1, 100_000)? as u32,
            plugin_compiler: crate::registry::Compiler::InProcess,
            prices_file: text("PRICES_FILE").map(PathBuf::from),
            budgets,
            usage_journal: true,
            plugin_max_file_bytes: number("PLUGIN_MAX_FILE_MB", 32, 1, 1024)? << 20,
            telegram_max_messages: number("TELEGRAM_MAX_MESSAGES", 10, 1, 1000)? as usize,
            group_mode: text("GROUP_MODE").map(|v| v.parse()).transpose().map_err(|e: String| invalid("GROUP_MODE", e))?.unwrap_or_default(),
            group_sessions: text("GROUP_SESSIONS")
                .map(|v| v.parse())
                .transpose()
                .map_err(|e: String| invalid("GROUP_SESSIONS", e))?
                .unwrap_or_default(),
            shutdown_grace: Duration::from_millis(number("SHUTDOWN_GRACE_MS", 2000, 0, 60_000)?),
            database_url: text("DATABASE_URL"),
            database_pool_size: number("DATABASE_POOL_SIZE", 8, 1, 1000)? as usize,
            database_lock_connections: number("DATABASE_LOCK_CONNECTIONS", 16, 1, 1000)? as usize,
            replica_id: text("REPLICA_ID"),
            inbox_lease: Duration::from_secs(number(
                "INBOX_LEASE_SECS",
                crate::frontend::shared_inbox::DEFAULT_LEASE.as_secs(),
                1,
                3600,
            )?),
        })
    }

    /// The API key, or the clear start-up error naming it.
    pub fn require_api_key(&self) -> Result<&str, ConfigError> {
        self.openai_api_key
            .as_deref()
            .ok_or_else(|| invalid("OPENAI_API_KEY", "not set (make sandbox prints a local one)"))
    }

    /// The secrets a log line must never contain.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![];
        if let Some(key) = &self.openai_api_key {
            secrets.push(key.clone());
        }
        secrets.extend(self.backends.key_values().map(str::to_owned));
        if let Some(token) = &self.telegram_token {
            secrets.push(token.clone());
            if let Some((_, secret)) = token.split_once(':') {
                secrets.push(secret.to_owned());
            }
        }
        if let Some(password) = self.database_url.as_deref().and_then(database_password) {
            secrets.push(password);
        }
        if let Some(secret) = std::env::var("WEBHOOK_SECRET").ok().map(|s| s.trim().to_owned()) {
            secrets.push(secret);
        }
        secrets.retain(|s| s.len() >= 6);
        secrets
    }
}

/// `WORKER_THREADS`, the async runtime's worker threads; `None` when unset (tokio's default: one per core,
/// or `TOKIO_WORKER_THREADS`). Read before the runtime exists, so not into [`Config`]; `main` loads `.env`
/// first.
pub fn worker_threads() -> Result<Option<usize>, ConfigError> {
    worker_threads_from(&|name| std::env::var(name).ok())
}

fn worker_threads_from(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<usize>, ConfigError> {
    let env = env::Env::new(get);
    if env.text("WORKER_THREADS").is_none() {
        return Ok(None);
    }
    Ok(Some(env.number("WORKER_THREADS", 1, 1, 256)? as usize))
}

/// The password a `DATABASE_URL` carries (URL or key=value form), to keep it out of logs.
fn database_password(url: &str) -> Option<String> {
    swapbot_pg::url_password(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_run_contract() {
        let c = config(&[]).unwrap();
        let canary = c.routing.canary.clone().unwrap();
        assert_eq!((c.routing.default.as_str(), canary.backend.as_str()), (legacy::DEFAULT_BACKEND, legacy::CANARY_BACKEND));
        assert!(!canary.enabled);
        assert_eq!(canary.percent, 100);
        assert_eq!(c.openai_base_url, DEFAULT_BASE_URL);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.plugin_dir, PathBuf::from("target/plugins"));
    }

    #[test]
    fn worker_threads_are_left_to_tokio_unless_set_and_refuse_zero_or_words() {
        assert_eq!(worker_threads_from(&|_| None).unwrap(), None);
        assert_eq!(worker_threads_from(&|_| Some(" ".into())).unwrap(), None);
        assert_eq!(worker_threads_from(&|_| Some("1".into())).unwrap(), Some(1));
        for bad in ["0", "two", "-1", "1000"] {
            let err = worker_threads_from(&|_| Some(bad.into())).unwrap_err();
            assert_eq!(err.name, "WORKER_THREADS", "{bad}");
        }
    }

    #[test]
    fn invalid_values_name_the_setting() {
        assert_eq!(config(&[("RESPONSES_ROLLOUT_PERCENT", "150")]).unwrap_err().name, "RESPONSES_ROLLOUT_PERCENT");
        assert_eq!(config(&[("USE_OPENAI_RESPONSES", "maybe")]).unwrap_err().name, "USE_OPENAI_RESPONSES");
        assert_eq!(config(&[("RESPONSES_TEST_USERS", "1,x")]).unwrap_err().name, "RESPONSES_TEST_USERS");
        assert_eq!(config(&[("ASSISTANT_ID", "gpt")]).unwrap_err().name, "ASSISTANT_ID");
        assert_eq!(config(&[("GROUP_MODE", "sometimes")]).unwrap_err().name, "GROUP_MODE");
        assert_eq!(config(&[("GROUP_SESSIONS", "per-topic")]).unwrap_err().name, "GROUP_SESSIONS");
        let c = config(&[("GROUP_MODE", "all"), ("GROUP_SESSIONS", "per-group")]).unwrap();
        assert_eq!((c.group_mode, c.group_sessions), (swapbot_telegram::GroupMode::All, crate::state::GroupSessions::PerGroup));
        let c = config(&[]).unwrap();
        assert_eq!((c.group_mode, c.group_sessions), (swapbot_telegram::GroupMode::Mention, crate::state::GroupSessions::PerUser));
        let c = config(&[("RESPONSES_TEST_USERS", "1, 5000000000"), ("USE_OPENAI_RESPONSES", "true")]).unwrap();
        let canary = c.routing.canary.unwrap();
        assert_eq!(canary.test_users, [1, 5_000_000_000].into());
        assert!(canary.enabled);
        assert_eq!(config(&[("DEFAULT_BACKEND", "Chat")]).unwrap_err().name, "DEFAULT_BACKEND");
        let c = config(&[("DEFAULT_BACKEND", "chat"), ("CANARY_BACKEND", "")]).unwrap();
        assert_eq!(c.routing, Routing::only("chat"));
    }

    #[test]
    fn the_shipped_backends_variables_become_their_options() {
        let c = config(&[]).unwrap();
        assert!(c.backends.get(legacy::CANARY_BACKEND).options.is_empty());
        assert!(c.backends.get(legacy::DEFAULT_BACKEND).options.is_empty());
        let c = config(&[
            ("RESPONSES_CONTEXT", "compact"),
            ("RESPONSES_COMPACT_THRESHOLD", "20000"),
            ("RESPONSES_CONTEXT_LAYOUT", "instructions"),
            ("RESPONSES_STREAM", "off"),
            ("ASSISTANTS_TRUNCATION", "last_messages:10"),
            ("ASSISTANT_ID", "asst_1"),
            ("OPENAI_MODEL", "gpt-x"),
        ])
        .unwrap();
        let new = c.backends.get(legacy::CANARY_BACKEND);
        let old = c.backends.get(legacy::DEFAULT_BACKEND);
        assert_eq!(new.option("context"), Some("compact"));
        assert_eq!(new.option("compact-threshold"), Some("20000"));
        assert_eq!(new.option("context-layout"), Some("instructions"));
        assert_eq!(new.option("stream"), Some("false"));
        assert_eq!(old.option("truncation-strategy"), Some("last_messages:10"));
        assert_eq!(old.option("assistant-id"), Some("asst_1"));
        assert_eq!((new.model.as_str(), old.model.as_str()), ("gpt-x", "gpt-x"));
        for (name, value) in [
            ("RESPONSES_CONTEXT", "forget"),
            ("RESPONSES_COMPACT_THRESHOLD", "999"),
            ("RESPONSES_CONTEXT_LAYOUT", "top"),
            ("RESPONSES_STREAM", "maybe"),
            ("ASSISTANTS_TRUNCATION", "last_messages:0"),
            ("BUDGET_USER_DAY", "lots"),
        ] {
            let pairs = [("RESPONSES_CONTEXT", "compact"), (name, value)];
            assert_eq!(config(&pairs).unwrap_err().name, name);
        }
    }

    #[test]
    fn the_config_file_sets_backends_and_routing_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swapbot.toml");
        std::fs::write(
            &path,
            "[routing]\ndefault = \"responses\"\ncanary = \"chat\"\ncanary_enabled = true\ncanary_percent = 10\n\n[backends.chat]\nbase_url = \"http://127.0.0.1:11434/v1\"\napi_key_env = \"\"\nmodel = \"llama3\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let c = config(&[("SWAPBOT_CONFIG", file)]).unwrap();
        assert_eq!(c.routing.default, "responses");
        let canary = c.routing.canary.clone().unwrap();
        assert_eq!((canary.backend.as_str(), canary.enabled, canary.percent), ("chat", true, 10));
        assert_eq!(c.backends.get("chat").model, "llama3");
        let c = config(&[("SWAPBOT_CONFIG", file), ("RESPONSES_ROLLOUT_PERCENT", "25"), ("BACKEND_CHAT_MODEL", "qwen")]).unwrap();
        assert_eq!(c.routing.canary.unwrap().percent, 25);
        assert_eq!(c.backends.get("chat").model, "qwen");
        let missing = dir.path().join("nope.toml");
        assert_eq!(config(&[("SWAPBOT_CONFIG", missing.to_str().unwrap())]).unwrap_err().name, "SWAPBOT_CONFIG");
    }

    #[test]
    fn an_allow_list_that_names_nobody_is_an_error_not_everyone() {
        for blank in ["", " ", ",", " ; , "] {
            let err = config(&[("ALLOWED_USER_IDS", blank)]).unwrap_err();
            assert_eq!(err.name, "ALLOWED_USER_IDS", "{blank:?}");
        }
        assert_eq!(config(&[]).unwrap().allowed_user_ids, None, "unset: everyone");
        assert_eq!(config(&[("ALLOWED_USER_IDS", " 7, 8 ")]).unwrap().allowed_user_ids, Some([7, 8].into()));
    }

    #[test]
    fn caps_have_sane_defaults_and_are_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(c.max_retry_wait, Duration::from_secs(5));
        assert_eq!(c.openai_max_body_bytes, 16 << 20);
        assert_eq!(c.plugin_max_file_bytes, 32 << 20);
        assert_eq!(c.telegram_max_messages, 10);
        let c = config(&[("MAX_RETRY_WAIT_SECS", "0"), ("OPENAI_MAX_BODY_MB", "2"), ("PLUGIN_MAX_FILE_MB", "3"), ("TELEGRAM_MAX_MESSAGES", "4")]).unwrap();
        assert_eq!((c.max_retry_wait, c.openai_max_body_bytes, c.plugin_max_file_bytes, c.telegram_max_messages), (Duration::ZERO, 2 << 20, 3 << 20, 4));
        assert_eq!(config(&[("TELEGRAM_MAX_MESSAGES", "0")]).unwrap_err().name, "TELEGRAM_MAX_MESSAGES");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = config(&[("OPENAI_API_KEY", "sk-live-123456"), ("TELOXIDE_TOKEN", "123:ABCDEFsecret")]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-live-123456") && !shown.contains("ABCDEFsecret"));
        assert!(c.secrets().contains(&"ABCDEFsecret".to_string()));
    }
}
