//! Settings from the environment (a `.env` file fills only what the environment leaves unset).
//! A missing or invalid setting is one clear error naming it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::routing::Routing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { name, message: message.into() }
}

#[derive(Clone)]
pub struct Config {
    pub openai_api_key: Option<String>,
    pub openai_base_url: String,
    pub model: String,
    pub instructions: String,
    pub assistant_id: Option<String>,
    pub responses_stream: bool,
    pub responses_background: bool,
    pub poll_interval: Duration,
    pub run_deadline: Duration,
    pub openai_timeout: Duration,
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
    /// Options handed to one backend's plugin (`settings.options`), by backend name.
    pub backend_options: std::collections::BTreeMap<String, Vec<(String, String)>>,
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
}

impl std::fmt::Debug for Config {
    // Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "<set>"))
            .field("openai_base_url", &self.openai_base_url)
            .field("model", &self.model)
            .field("routing", &self.routing)
            .field("data_dir", &self.data_dir)
            .field("plugin_dir", &self.plugin_dir)
            .field("telegram_token", &self.telegram_token.as_ref().map(|_| "<set>"))
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

impl Config {
    /// Reads `.env` (if present) without overriding the environment, then the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = |name: &'static str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let flag = |name: &'static str, default: bool| -> Result<bool, ConfigError> {
            match text(name) {
                None => Ok(default),
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(invalid(name, format!("expected true or false, got {v:?}"))),
                },
            }
        };
        let number = |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
            match text(name) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(invalid(name, format!("expected an integer from {min} to {max}, got {v:?}"))),
                },
            }
        };
        let ids = |name: &'static str| -> Result<Option<BTreeSet<i64>>, ConfigError> {
            let Some(v) = text(name) else { return Ok(None) };
            v.split([',', ' ', ';'])
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i64>().map_err(|_| invalid(name, format!("{s:?} is not a Telegram user id"))))
                .collect::<Result<BTreeSet<_>, _>>()
                .map(Some)
        };

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
        let routing = Routing {
            use_responses: flag("USE_OPENAI_RESPONSES", false)?,
            rollout_percent: number("RESPONSES_ROLLOUT_PERCENT", 100, 0, 100)? as u8,
            test_users: ids("RESPONSES_TEST_USERS")?.unwrap_or_default(),
        };
        // Where a backend puts knowledge-base context: the plugin option `context-layout`.
        let layout = |name: &'static str| -> Result<Option<(String, String)>, ConfigError> {
            match text(name).as_deref() {
                None => Ok(None),
                Some(v @ ("input" | "instructions")) => Ok(Some(("context-layout".into(), v.into()))),
                Some(other) => Err(invalid(name, format!("expected input or instructions, got {other:?}"))),
            }
        };
        let mut backend_options = std::collections::BTreeMap::<String, Vec<(String, String)>>::new();
        let mut responses_options = vec![];
        match text("RESPONSES_CONTEXT").as_deref() {
            None | Some("truncate") => responses_options.push(("context".to_owned(), "truncate".to_owned())),
            Some("compact") => {
                responses_options.push(("context".into(), "compact".into()));
                let threshold = number("RESPONSES_COMPACT_THRESHOLD", 100_000, 1000, 100_000_000)?;
                responses_options.push(("compact-threshold".into(), threshold.to_string()));
            }
            Some(other) => return Err(invalid("RESPONSES_CONTEXT", format!("expected truncate or compact, got {other:?}"))),
        }
        responses_options.extend(layout("RESPONSES_CONTEXT_LAYOUT")?);
        backend_options.insert("responses".into(), responses_options);
        let mut assistants_options = vec![];
        if let Some(v) = text("ASSISTANTS_TRUNCATION") {
            let valid = v == "auto"
                || v.strip_prefix("last_messages:").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1);
            if !valid {
                return Err(invalid("ASSISTANTS_TRUNCATION", format!("expected auto or last_messages:N, got {v:?}")));
            }
            assistants_options.push(("truncation-strategy".into(), v));
        }
        assistants_options.extend(layout("ASSISTANTS_CONTEXT_LAYOUT")?);
        backend_options.insert("assistants".into(), assistants_options);
        let budget = |name: &'static str| -> Result<Option<crate::usage::Limit>, ConfigError> {
            text(name).map(|v| crate::usage::Limit::parse(&v).map_err(|m| invalid(name, m))).transpose()
        };
        let budgets = crate::usage::Budgets {
            user_day: budget("BUDGET_USER_DAY")?,
            user_month: budget("BUDGET_USER_MONTH")?,
            total_day: budget("BUDGET_TOTAL_DAY")?,
            total_month: budget("BUDGET_TOTAL_MONTH")?,
        };
        let assistant_id = text("ASSISTANT_ID");
        if let Some(id) = &assistant_id {
            if !id.starts_with("asst_") {
                return Err(invalid("ASSISTANT_ID", format!("expected an id like asst_…, got {id:?}")));
            }
        }
        Ok(Config {
            openai_api_key: text("OPENAI_API_KEY"),
            openai_base_url,
            model: text("OPENAI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.into()),
            instructions,
            assistant_id,
            responses_stream: flag("RESPONSES_STREAM", true)?,
            responses_background: flag("RESPONSES_BACKGROUND", false)?,
            poll_interval: Duration::from_millis(number("POLL_INTERVAL_MS", 500, 50, 60_000)?),
            run_deadline: Duration::from_secs(number("RUN_DEADLINE_SECS", 90, 1, 3600)?),
            openai_timeout: Duration::from_secs(number("OPENAI_TIMEOUT_SECS", 60, 1, 3600)?),
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
            plugin_dir: text("PLUGIN_DIR").unwrap_or_else(|| "target/plugins".into()).into(),
            telegram_token: text("TELOXIDE_TOKEN"),
            allowed_user_ids: allow_list("ALLOWED_USER_IDS", get("ALLOWED_USER_IDS").is_some(), ids("ALLOWED_USER_IDS")?)?,
            admin_user_ids: ids("ADMIN_USER_IDS")?.unwrap_or_default(),
            plugin_memory_mb: number("PLUGIN_MEMORY_MB", 64, 8, 4096)? as usize,
            plugin_pooling: flag("PLUGIN_POOLING", false)?,
            plugin_pool_size: number("PLUGIN_POOL_SIZE", 256, 1, 100_000)? as u32,
            backend_options,
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
        if let Some(token) = &self.telegram_token {
            secrets.push(token.clone());
            if let Some((_, secret)) = token.split_once(':') {
                secrets.push(secret.to_owned());
            }
        }
        secrets.retain(|s| s.len() >= 6);
        secrets
    }
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
        assert!(!c.routing.use_responses);
        assert_eq!(c.routing.rollout_percent, 100);
        assert!(c.responses_stream);
        assert_eq!(c.openai_base_url, DEFAULT_BASE_URL);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.plugin_dir, PathBuf::from("target/plugins"));
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
        assert_eq!(c.routing.test_users, [1, 5_000_000_000].into());
    }

    #[test]
    fn context_settings_become_backend_options() {
        let c = config(&[]).unwrap();
        assert_eq!(c.backend_options["responses"], [("context".to_string(), "truncate".to_string())]);
        assert!(c.backend_options["assistants"].is_empty());
        let c = config(&[
            ("RESPONSES_CONTEXT", "compact"),
            ("RESPONSES_COMPACT_THRESHOLD", "20000"),
            ("RESPONSES_CONTEXT_LAYOUT", "instructions"),
            ("ASSISTANTS_TRUNCATION", "last_messages:10"),
        ])
        .unwrap();
        let opt = |b: &str, k: &str| c.backend_options[b].iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(opt("responses", "context").as_deref(), Some("compact"));
        assert_eq!(opt("responses", "compact-threshold").as_deref(), Some("20000"));
        assert_eq!(opt("responses", "context-layout").as_deref(), Some("instructions"));
        assert_eq!(opt("assistants", "truncation-strategy").as_deref(), Some("last_messages:10"));
        for (name, value) in [
            ("RESPONSES_CONTEXT", "forget"),
            ("RESPONSES_COMPACT_THRESHOLD", "999"),
            ("RESPONSES_CONTEXT_LAYOUT", "top"),
            ("ASSISTANTS_TRUNCATION", "last_messages:0"),
            ("BUDGET_USER_DAY", "lots"),
        ] {
            let pairs = [("RESPONSES_CONTEXT", "compact"), (name, value)];
            assert_eq!(config(&pairs).unwrap_err().name, name);
        }
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
