//! Each backend's own HTTP transport: its base URL, its key (none for a local server), its
//! timeouts. A plugin only ever reaches its own backend's API, with a key no other plugin sees.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use swapbot_openai::{OpenAi, OpenAiConfig};

use crate::config::{BackendConfig, Backends};

/// The host's bounds that hold for every backend's transport.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    pub max_body_bytes: usize,
    pub max_retry_wait: Duration,
    /// No stream outlives the turn it serves, whatever the server keeps sending.
    pub stream_max_duration: Duration,
}

pub struct Transports {
    backends: Backends,
    limits: TransportLimits,
    /// Built at a backend's first turn and kept (its connection pool with it), rebuilt when its
    /// settings change.
    built: Mutex<HashMap<String, (BackendConfig, OpenAi)>>,
}

impl Transports {
    pub fn new(backends: Backends, limits: TransportLimits) -> Self {
        Self { backends, limits, built: Mutex::new(HashMap::new()) }
    }

    /// The transport of `backend` with settings `config`; an error names what is missing (the key
    /// variable, a bad base URL) and never a key.
    pub fn get(&self, backend: &str, config: &BackendConfig) -> Result<OpenAi, String> {
        let mut built = self.built.lock().unwrap();
        if let Some((seen, openai)) = built.get(backend)
            && seen == config
        {
            return Ok(openai.clone());
        }
        let key = self.backends.api_key(config).map_err(|e| e.message)?;
        let mut c = OpenAiConfig::new(config.base_url.clone(), key.unwrap_or_default());
        c.request_timeout = config.request_timeout;
        c.stream_idle_timeout = config.request_timeout;
        c.max_retry_wait = self.limits.max_retry_wait;
        c.max_body_bytes = self.limits.max_body_bytes;
        c.stream_max_duration = self.limits.stream_max_duration;
        let openai = OpenAi::new(c).map_err(|e| format!("base_url {}: {e}", config.base_url))?;
        built.insert(backend.to_owned(), (config.clone(), openai.clone()));
        Ok(openai)
    }
}
