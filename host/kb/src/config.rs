//! Knowledge-base configuration, read from the environment and checked at start-up.

use std::path::PathBuf;
use std::time::Duration;

use crate::KbError;

pub const DEFAULT_EMBEDDING_MODEL: &str = "text-embedding-3-small";
pub const DEFAULT_TOP_K: usize = 4;
pub const DEFAULT_COLLECTION: &str = "swapbot_kb";
pub const DEFAULT_TENANT: &str = "default_tenant";
pub const DEFAULT_DATABASE: &str = "default_database";

/// Everything the knowledge base needs besides the OpenAI transport.
#[derive(Clone, Debug)]
pub struct KbConfig {
    /// `OPENAI_EMBEDDING_MODEL` (default `text-embedding-3-small`).
    pub embedding_model: String,
    /// `OPENAI_EMBEDDING_DIMENSIONS` (optional; only text-embedding-3-* accept it).
    pub embedding_dimensions: Option<u32>,
    /// `KB_TOP_K` (default 4).
    pub top_k: usize,
    /// `DATA_DIR` (default `data`): the embedded store lives in `DATA_DIR/kb/`.
    pub data_dir: PathBuf,
    /// Set when `CHROMA_URL` is set; otherwise the embedded store is used.
    pub chroma: Option<ChromaConfig>,
    /// Bound on the embedding call of one turn's retrieval (`KB_EMBED_TIMEOUT_MS`, default 10 s).
    /// Ingestion is bounded by the transport's own timeouts only.
    pub retrieve_embed_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct ChromaConfig {
    /// `CHROMA_URL`, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// `CHROMA_TENANT` (default `default_tenant`).
    pub tenant: String,
    /// `CHROMA_DATABASE` (default `default_database`).
    pub database: String,
    /// `CHROMA_COLLECTION` (default `swapbot_kb`).
    pub collection: String,
    /// `CHROMA_AUTH_TOKEN` (optional): sent as `x-chroma-token`.
    pub auth_token: Option<String>,
    /// Connect timeout (`CHROMA_CONNECT_TIMEOUT_MS`, default 1000).
    pub connect_timeout: Duration,
    /// Per-request timeout on the turn path (`CHROMA_TIMEOUT_MS`, default 2000).
    pub request_timeout: Duration,
    /// Per-request timeout for ingestion batches (default 120 s).
    pub ingest_timeout: Duration,
    /// After a failure, turns skip Chroma for this long (default 15 s) instead of waiting on it again.
    pub cooldown: Duration,
}

impl ChromaConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_string(),
            tenant: DEFAULT_TENANT.into(),
            database: DEFAULT_DATABASE.into(),
            collection: DEFAULT_COLLECTION.into(),
            auth_token: None,
            connect_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_millis(2000),
            ingest_timeout: Duration::from_secs(120),
            cooldown: Duration::from_secs(15),
        }
    }
}

impl KbConfig {
    /// Defaults with the embedded store under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            embedding_model: DEFAULT_EMBEDDING_MODEL.into(),
            embedding_dimensions: None,
            top_k: DEFAULT_TOP_K,
            data_dir: data_dir.into(),
            chroma: None,
            retrieve_embed_timeout: Duration::from_secs(10),
        }
    }

    /// Reads the process environment (call after `.env` has been loaded) and runs [`KbConfig::check`].
    pub fn from_env() -> Result<Self, KbError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Same as [`KbConfig::from_env`] over any lookup (tests). Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, KbError> {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut cfg = KbConfig::new(get("DATA_DIR").unwrap_or_else(|| "data".into()));
        if let Some(m) = get("OPENAI_EMBEDDING_MODEL") {
            cfg.embedding_model = m;
        }
        if let Some(d) = get("OPENAI_EMBEDDING_DIMENSIONS") {
            cfg.embedding_dimensions = Some(parse_num(&d, "OPENAI_EMBEDDING_DIMENSIONS", 1, 65_536)? as u32);
        }
        if let Some(k) = get("KB_TOP_K") {
            cfg.top_k = parse_num(&k, "KB_TOP_K", 1, 100)? as usize;
        }
        if let Some(ms) = get("KB_EMBED_TIMEOUT_MS") {
            cfg.retrieve_embed_timeout = Duration::from_millis(parse_num(&ms, "KB_EMBED_TIMEOUT_MS", 1, 600_000)?);
        }
        if let Some(url) = get("CHROMA_URL") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(KbError::Config(format!(
                    "CHROMA_URL must start with http:// or https://, got {url:?}"
                )));
            }
            let mut c = ChromaConfig::new(url);
            if let Some(v) = get("CHROMA_TENANT") {
                c.tenant = v;
            }
            if let Some(v) = get("CHROMA_DATABASE") {
                c.database = v;
            }
            if let Some(v) = get("CHROMA_COLLECTION") {
                c.collection = v;
            }
            c.auth_token = get("CHROMA_AUTH_TOKEN");
            if let Some(ms) = get("CHROMA_TIMEOUT_MS") {
                c.request_timeout = Duration::from_millis(parse_num(&ms, "CHROMA_TIMEOUT_MS", 1, 600_000)?);
            }
            if let Some(ms) = get("CHROMA_CONNECT_TIMEOUT_MS") {
                c.connect_timeout =
                    Duration::from_millis(parse_num(&ms, "CHROMA_CONNECT_TIMEOUT_MS", 1, 600_000)?);
            }
            cfg.chroma = Some(c);
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// The start-up check: refuses settings the API or Chroma would refuse later.
    pub fn check(&self) -> Result<(), KbError> {
        check_embedding_config(&self.embedding_model, self.embedding_dimensions)?;
        if self.top_k == 0 {
            return Err(KbError::Config("KB_TOP_K must be at least 1".into()));
        }
        if let Some(c) = &self.chroma {
            let ok = |s: &str| {
                (3..=512).contains(&s.len())
                    && s.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
                    && s.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && s.ends_with(|ch: char| ch.is_ascii_alphanumeric())
            };
            if !ok(&c.collection) {
                return Err(KbError::Config(format!(
                    "CHROMA_COLLECTION {:?} is not a valid Chroma collection name (3-512 characters from \
                     a-z A-Z 0-9 . _ -, starting and ending with a letter or digit)",
                    c.collection
                )));
            }
        }
        Ok(())
    }

    /// Where the embedded store keeps its file.
    pub fn embedded_dir(&self) -> PathBuf {
        self.data_dir.join("kb")
    }
}

/// `dimensions` is only accepted by the text-embedding-3 family; anything else answers HTTP 400.
pub fn check_embedding_config(model: &str, dimensions: Option<u32>) -> Result<(), KbError> {
    if model.trim().is_empty() {
        return Err(KbError::Config("OPENAI_EMBEDDING_MODEL is empty".into()));
    }
    if let Some(d) = dimensions {
        if !model.starts_with("text-embedding-3-") {
            return Err(KbError::Config(format!(
                "OPENAI_EMBEDDING_DIMENSIONS={d} is set, but the embedding model {model:?} does not accept \
                 `dimensions` (only text-embedding-3-small and text-embedding-3-large do). Unset \
                 OPENAI_EMBEDDING_DIMENSIONS or choose a text-embedding-3-* model."
            )));
        }
        if d == 0 {
            return Err(KbError::Config("OPENAI_EMBEDDING_DIMENSIONS must be at least 1".into()));
        }
        let max = match model {
            "text-embedding-3-small" => Some(1536),
            "text-embedding-3-large" => Some(3072),
            _ => None,
        };
        if let Some(max) = max {
            if d > max {
                return Err(KbError::Config(format!(
                    "OPENAI_EMBEDDING_DIMENSIONS={d} exceeds the {max} dimensions of {model}"
                )));
            }
        }
    }
    Ok(())
}

fn parse_num(v: &str, name: &str, min: u64, max: u64) -> Result<u64, KbError> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(KbError::Config(format!("{name} must be an integer from {min} to {max}, got {v:?}"))),
    }
}
