//! Builds the running product from its configuration: storage migration, the registry of
//! plugins, each backend's transport, the turn service. Shared by `run`, `ask` and the tests.

use std::sync::Arc;

use swapbot_openai::{OpenAi, OpenAiConfig};

use crate::config::Config;
use crate::registry::Registry;
use crate::runtime::{Limits, PluginRuntime};
use crate::turn::transport::{TransportLimits, Transports};
use crate::turn::{ContextSource, TurnService, TurnSettings};
use crate::telemetry::turnlog::TurnLog;

pub struct App {
    pub config: Config,
    pub service: Arc<TurnService>,
    pub plugins: Arc<Registry>,
    pub kb: Option<swapbot_kb::Kb>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// The shared store (`DATABASE_URL`); None: everything in `DATA_DIR`.
    pub pg: Option<swapbot_pg::PgStore>,
}

/// Connects to `DATABASE_URL` and applies pending migrations. The error is one line without the
/// password: unreachable, or a schema newer than this binary.
pub async fn database(config: &Config) -> anyhow::Result<Option<swapbot_pg::PgStore>> {
    let Some(url) = &config.database_url else { return Ok(None) };
    let mut options = swapbot_pg::StoreOptions::new(config.database_pool_size);
    options.lock_connections = config.database_lock_connections;
    let pg = swapbot_pg::PgStore::connect_with(url, options).await?;
    tracing::info!(database = %swapbot_pg::redact_url(url), "state in PostgreSQL");
    Ok(Some(pg))
}

/// The knowledge base as the turn pipeline sees it: chunks, or none and a note why.
pub struct KbContext(pub swapbot_kb::Kb);

#[async_trait::async_trait]
impl ContextSource for KbContext {
    async fn context(&self, question: &str) -> crate::turn::Context {
        let retrieval = self.0.retrieve(question).await;
        let chunks = retrieval
            .chunks
            .into_iter()
            .map(|c| crate::runtime::ContextChunk { source: c.source, text: c.text, score: c.score })
            .collect();
        crate::turn::Context { chunks, note: retrieval.note, embedding_tokens: retrieval.embedding_tokens }
    }
}

/// The OpenAI transport of the knowledge base's embeddings (`OPENAI_BASE_URL`, `OPENAI_API_KEY`).
pub fn openai(config: &Config) -> anyhow::Result<OpenAi> {
    let api_key = config.require_api_key()?.to_owned();
    let mut openai_config = OpenAiConfig::new(config.openai_base_url.clone(), api_key);
    openai_config.request_timeout = config.openai_timeout;
    openai_config.stream_idle_timeout = config.openai_timeout;
    openai_config.max_retry_wait = config.max_retry_wait;
    openai_config.max_body_bytes = config.openai_max_body_bytes;
    // No stream outlives the turn it serves, whatever the server keeps sending.
    openai_config.stream_max_duration = config.turn_timeout;
    OpenAi::new(openai_config).map_err(|e| anyhow::anyhow!("invalid setting OPENAI_BASE_URL: {e}"))
}

/// The knowledge base from its settings (no network I/O).
pub fn knowledge_base(kb: swapbot_kb::KbConfig, openai: OpenAi) -> anyhow::Result<swapbot_kb::Kb> {
    kb.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    swapbot_kb::Kb::from_openai(kb, openai).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Builds the product; `kb` is the knowledge base's settings (None: no retrieval).
pub async fn build(config: Config, kb: Option<swapbot_kb::KbConfig>) -> anyhow::Result<App> {
    let kb = match kb {
        // Embeddings are OpenAI's: a bot whose backends are all local servers runs without them.
        Some(_) if config.openai_api_key.is_none() => {
            tracing::warn!("OPENAI_API_KEY is not set: answering without the knowledge base");
            None
        }
        Some(kb) => Some(knowledge_base(kb, openai(&config)?)?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("invalid setting DATA_DIR: cannot create {}: {e}", config.data_dir.display()))?;
    crate::state::migrate(&config.data_dir)?;
    // Before the plugins load: a replica that cannot share the state does not start at all.
    let pg = database(&config).await?;
    // Temp files of writes a crash or a full disk interrupted would fill a small disk again.
    for dir in [config.data_dir.clone(), config.data_dir.join("history"), config.data_dir.join(".plugin-cache")] {
        crate::state::remove_stale_temp_files(&dir);
    }

    let limits = Limits {
        memory_bytes: config.plugin_memory_mb << 20,
        turn_timeout: config.turn_timeout,
        pooling: config.plugin_pooling,
        pool_size: config.plugin_pool_size,
        ..Limits::default()
    };
    let runtime = PluginRuntime::new(limits)?;
    let cache = config.data_dir.join(".plugin-cache");
    let plugins = Arc::new(
        Registry::new(runtime, &config.plugin_dir, Some(cache))
            .with_compiler(config.plugin_compiler.clone())
            .with_max_file_bytes(config.plugin_max_file_bytes),
    );
    let metrics = crate::telemetry::metrics::Metrics::new();
    if let Some(pg) = &pg {
        let pg = pg.clone();
        metrics.count_db_statements(move || pg.queries());
    }
    let weak = Arc::downgrade(&plugins);
    let observed = metrics.clone();
    plugins.set_observer(move |backend, ok| {
        observed.plugin_swap(backend, ok);
        if let Some(plugin) = weak.upgrade().and_then(|set| set.get(backend)).filter(|_| ok) {
            observed.set_plugin_info(backend, &plugin.description.version, &plugin.sha256);
        }
    });
    for (backend, outcome) in plugins.load_all().await {
        if let Err(err) = outcome {
            tracing::error!(backend, %err, "plugin refused");
        }
    }
    if plugins.loaded().is_empty() {
        anyhow::bail!(
            "invalid setting PLUGIN_DIR: no valid plugin (<name>.wasm) in {} (run `make build`)",
            config.plugin_dir.display()
        );
    }
    let settings = TurnSettings::from_config(&config);
    let transports = Transports::new(
        config.backends.clone(),
        TransportLimits {
            max_body_bytes: config.openai_max_body_bytes,
            max_retry_wait: config.max_retry_wait,
            stream_max_duration: config.turn_timeout,
        },
    );
    // The backends users are routed to must be reachable as configured: a missing key is a start
    // error naming its variable, not an error reply to every user.
    for backend in config.routing.backends() {
        let backend_config = config.backends.get(backend);
        if let Err(err) = transports.get(backend, &backend_config) {
            anyhow::bail!("backend {backend}: {err}");
        }
        if plugins.get(backend).is_none() {
            tracing::warn!(
                backend,
                file = %plugins.file_of(backend).display(),
                "no plugin for a backend the routing uses: turns routed to it fail until the file is there (run `make build`)"
            );
        }
    }

    if let Some(kb) = &kb {
        tracing::info!(status = %kb.status().await, "knowledge base");
    }
    let context = kb.clone().map(|kb| Arc::new(KbContext(kb)) as Arc<dyn ContextSource>);
    let turn_log = TurnLog::open(&config.log_dir)
        .map_err(|e| anyhow::anyhow!("invalid setting LOG_DIR: cannot use {}: {e}", config.log_dir.display()))?;
    let prices = match &config.prices_file {
        Some(path) => crate::usage::PriceTable::with_overrides(path)?,
        None => crate::usage::PriceTable::shipped(),
    };
    let usage_journal = config.data_dir.join("usage.jsonl");
    let ledger = if let Some(pg) = &pg {
        // Every replica's use, in the database; no journal (the usage table is the record, and a
        // journal imported later would count its turns twice).
        crate::usage::Ledger::shared(pg.clone(), crate::calendar::unix_ms_now())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the usage from the database: {e}"))?
    } else if config.usage_journal {
        crate::usage::Ledger::open(usage_journal.clone(), crate::calendar::unix_ms_now())
            .map_err(|e| anyhow::anyhow!("invalid setting DATA_DIR: cannot use {}: {e}", usage_journal.display()))?
    } else {
        crate::usage::Ledger::in_memory()
    };
    let embedding_model = kb.as_ref().map(|kb| kb.config().embedding_model.clone()).unwrap_or_default();
    let models: std::collections::BTreeSet<String> =
        config.routing.backends().into_iter().map(|b| config.backends.get(b).model).chain([embedding_model.clone()]).collect();
    for model in models.iter().filter(|m| !m.is_empty()) {
        if prices.get(model).is_none() {
            let budgets = if config.budgets.any() { "; budgets in dollars never trigger for it" } else { "" };
            tracing::warn!(model, "no price for this model in the price table (PRICES_FILE): its cost counts as 0{budgets}");
        }
    }
    let accounting = crate::turn::Accounting {
        ledger,
        prices,
        budgets: config.budgets,
        admins: config.admin_user_ids.clone(),
        embedding_model,
    };
    let service = TurnService::new(
            plugins.clone(),
            transports,
            settings,
            config.routing.clone(),
            &config.data_dir,
            turn_log,
            context,
            metrics.clone(),
        )
        .with_accounting(accounting);
    let service = Arc::new(match &pg {
        Some(pg) => service
            .with_store(Arc::new(crate::state::PgSessionStore::new(pg.clone()))),
        None => service,
    });
    Ok(App { config, service, plugins, kb, metrics, pg })
}
