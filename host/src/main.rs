use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swapbot::config::Config;

#[derive(Parser)]
#[command(name = "swapbot", version, about = "A Telegram assistant bot whose OpenAI backend is a hot-swappable WebAssembly plugin")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the bot: Telegram when TELOXIDE_TOKEN is set, else a terminal chat.
    Run {
        /// The user id of the terminal chat.
        #[arg(long, default_value_t = 1, env = "CHAT_USER_ID")]
        user: i64,
    },
    /// Run one turn from the command line, printing the answer as it streams.
    Ask {
        /// A loaded backend (a plugin file's name); without it, the routing picks.
        #[arg(long)]
        backend: Option<String>,
        #[arg(long, default_value_t = 1)]
        user: i64,
        text: String,
    },
    /// The knowledge base: ingest documents, see what a turn would receive.
    Kb {
        #[command(subcommand)]
        command: KbCommand,
    },
    /// Per-backend turns, error rate, p50/p95/p99 latency and time to first token, retries, from the turn logs.
    Report(swapbot::report::ReportArgs),
    /// Plugin tools for plugin authors.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The Telegram webhook (an explicit step: `run` never sets nor deletes it):
    /// `set URL [--max-connections N] [--drop-pending-updates] | delete [--drop-pending-updates] | info`.
    Webhook {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Internal: what `run` compiles its plugins in. Reads a module on stdin, writes the
    /// precompiled artifact to stdout.
    #[command(hide = true)]
    CompilePlugin {
        #[arg(long)]
        memory_bytes: usize,
        #[arg(long)]
        pool_size: u32,
        #[arg(long)]
        no_pooling: bool,
    },
    /// The PostgreSQL store (`DATABASE_URL`).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply pending migrations and print what was applied.
    Migrate,
    /// Copy a file store (DATA_DIR by default) into the database; running it again changes nothing.
    Import { data_dir: Option<PathBuf> },
}

#[derive(Subcommand)]
enum KbCommand {
    /// Read the .md and .txt files under DIR, chunk, embed and upsert them.
    Ingest {
        dir: PathBuf,
        /// Drop the store first (after a change of embedding model or dimensions).
        #[arg(long)]
        rebuild: bool,
    },
    /// Print the chunks a turn asking QUESTION would receive, with scores.
    Search { question: String },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run harness cases (files or directories of .json) against one plugin.
    Test { plugin: PathBuf, cases: Vec<PathBuf> },
    /// Validate a plugin and print its description.
    Info { plugin: PathBuf },
    /// Run one real turn (OPENAI_BASE_URL, OPENAI_API_KEY) and print it as a harness case file.
    Record {
        /// A loaded backend (a plugin file's name).
        #[arg(long)]
        backend: String,
        #[arg(long, default_value_t = 1)]
        user: i64,
        #[arg(long, default_value = "recorded from a real run")]
        name: String,
        text: String,
    },
}

#[global_allocator]
static ALLOCATOR: swapbot::Allocator = swapbot::ALLOCATOR;

// Before the runtime's first allocation (a constructor, not a call in `main`).
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = swapbot::configure_allocator;

fn main() -> ExitCode {
    swapbot::tune_process_memory();
    swapbot::descriptors::raise_open_file_limit();
    let cli = Cli::parse();
    // Before any thread exists: loading `.env` sets variables, and `WORKER_THREADS` may come from it.
    let _ = dotenvy::dotenv();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match swapbot::config::worker_threads() {
        Ok(Some(n)) => {
            builder.worker_threads(n);
        }
        Ok(None) => {}
        Err(err) => {
            eprintln!("swapbot: {err}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("swapbot: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("swapbot: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CompilePlugin { memory_bytes, pool_size, no_pooling } => {
            let mut module = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut module)?;
            let limits = swapbot::runtime::Limits { memory_bytes, pool_size, pooling: !no_pooling, ..Default::default() };
            let artifact = swapbot::runtime::precompile(&limits, &module)?;
            std::io::stdout().write_all(&artifact)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command: PluginCommand::Test { plugin, cases } } => {
            init_logs(None, vec![]);
            let ok = swapbot::dev::harness::run_files(&plugin, &cases).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Plugin { command: PluginCommand::Info { plugin } } => {
            init_logs(None, vec![]);
            let runtime = swapbot::runtime::PluginRuntime::new(Default::default())?;
            let bytes = std::fs::read(&plugin).map_err(|e| anyhow::anyhow!("{}: {e}", plugin.display()))?;
            let loaded = runtime.load(&bytes, None).await.map_err(|e| anyhow::anyhow!("{} refused: {e}", plugin.display()))?;
            let d = &loaded.description;
            println!(
                "name={} version={} contract={} id_map={} size={} sha256={} compile_ms={}",
                d.name,
                d.version,
                d.contract,
                d.id_map.as_deref().unwrap_or("-"),
                loaded.size,
                loaded.sha256,
                loaded.compile_time.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command: PluginCommand::Record { backend, user, name, text } } => {
            let mut config = Config::from_env()?;
            init_logs(None, config.secrets());
            config.usage_journal = false;
            let app = swapbot::app::build(config, Some(swapbot_kb::KbConfig::from_env()?)).await?;
            let case = app.service.record_case(&backend, user, &text, &name).await?;
            println!("{}", serde_json::to_string_pretty(&case)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhook { args } => {
            let config = Config::from_env()?;
            init_logs(None, config.secrets());
            let Some(bot) = swapbot_telegram::bot_from_env()? else {
                anyhow::bail!("invalid setting TELOXIDE_TOKEN: not set");
            };
            println!("{}", swapbot_telegram::webhook_cli(&bot, &args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Db { command } => {
            let config = Config::from_env()?;
            init_logs(None, config.secrets());
            let Some(url) = &config.database_url else {
                anyhow::bail!("invalid setting DATABASE_URL: not set (postgres://user:password@host:5432/db)");
            };
            let mut options = swapbot_pg::StoreOptions::new(1);
            options.migrate = false;
            let pg = swapbot_pg::PgStore::connect_with(url, options).await?;
            let migrated = pg.migrate().await?;
            match command {
                DbCommand::Migrate => {
                    let applied: Vec<String> = migrated.applied.iter().map(|v| v.to_string()).collect();
                    if applied.is_empty() {
                        println!("schema is current (version {})", migrated.version);
                    } else {
                        println!("applied migrations {}; schema is version {}", applied.join(", "), migrated.version);
                    }
                }
                DbCommand::Import { data_dir } => {
                    let dir = data_dir.unwrap_or_else(|| config.data_dir.clone());
                    // Exchanges an unclean stop left only in the history journals go into the files first.
                    swapbot::state::replay_history_journals(&dir);
                    let report = pg.import_data_dir(&dir).await?;
                    let r = &report;
                    println!(
                        "imported {}: {} session ids, {} histories ({} messages), {} usage entries, rollout {}, {} inbox updates, {} lines skipped",
                        dir.display(),
                        r.session_ids,
                        r.history_sessions,
                        r.history_messages,
                        r.usage_entries,
                        if r.rollout { "copied" } else { "not copied" },
                        r.inbox_updates,
                        r.skipped_lines
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            swapbot::report::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kb { command } => {
            let config = Config::from_env()?;
            init_logs(None, config.secrets());
            let kb = swapbot::app::knowledge_base(swapbot_kb::KbConfig::from_env()?, swapbot::app::openai(&config)?)?;
            match command {
                KbCommand::Ingest { dir, rebuild } => {
                    let options = swapbot_kb::IngestOptions { rebuild, ..Default::default() };
                    let summary = kb.ingest(&dir, options).await?;
                    println!("{summary}");
                }
                KbCommand::Search { question } => println!("{}", kb.search(&question).await),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ask { backend, user, text } => {
            let mut config = Config::from_env()?;
            init_logs(None, config.secrets());
            config.usage_journal = false;
            let app = swapbot::app::build(config, Some(swapbot_kb::KbConfig::from_env()?)).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let printer = tokio::spawn(async move {
                let mut streamed = false;
                while let Some(delta) = rx.recv().await {
                    streamed = true;
                    print!("{delta}");
                    let _ = std::io::stdout().flush();
                }
                streamed
            });
            if let Some(name) = &backend
                && app.plugins.get(name).is_none()
            {
                let loaded: Vec<String> = app.plugins.loaded().keys().cloned().collect();
                anyhow::bail!("no backend {name:?} is loaded (loaded: {})", loaded.join(", "));
            }
            let outcome = match backend.as_deref() {
                Some(backend) => app.service.turn_on(backend, "cli", user, &text, Some(tx)).await,
                None => app.service.turn(user, &text, Some(tx)).await,
            };
            let streamed = printer.await.unwrap_or(false);
            match outcome.reply {
                Ok(answer) => {
                    if streamed {
                        println!();
                    } else {
                        println!("{answer}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(human) => {
                    if streamed {
                        println!();
                    }
                    eprintln!("{human} ({})", outcome.record.error_kind.as_deref().unwrap_or("error"));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run { user } => {
            let mut config = Config::from_env()?;
            // A long-running bot compiles its plugins in a child process (see registry::compiler).
            if let Ok(exe) = std::env::current_exe() {
                config.plugin_compiler = swapbot::registry::Compiler::Child(exe);
            }
            let telegram = config.telegram_token.is_some();
            let _guard = swapbot::telemetry::init(Some(&config.log_dir), config.secrets(), !telegram);
            let metrics_addr = match std::env::var("METRICS_ADDR").ok().filter(|v| !v.trim().is_empty()) {
                Some(addr) => Some(
                    addr.trim()
                        .parse::<std::net::SocketAddr>()
                        .map_err(|_| anyhow::anyhow!("invalid setting METRICS_ADDR: expected host:port such as 127.0.0.1:9100"))?,
                ),
                None => None,
            };
            let app = swapbot::app::build(config, Some(swapbot_kb::KbConfig::from_env()?)).await?;
            if let (Some(kb), Some(seed)) = (&app.kb, std::env::var_os("KB_SEED_DIR")) {
                match kb.seed_if_empty(std::path::Path::new(&seed)).await {
                    Ok(Some(summary)) => tracing::info!(%summary, "knowledge base was empty: seeded it"),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(%err, "could not seed the knowledge base"),
                }
            }
            let (data_dir, routing, admins) =
                (&app.config.data_dir, app.config.routing.clone(), app.config.admin_user_ids.clone());
            let replica = replica_id(&app.config);
            let rollout = match &app.pg {
                Some(pg) => {
                    let rollout =
                        swapbot::routing::rollout::Rollout::shared(data_dir, routing, app.service.clone(), admins, pg.clone());
                    rollout.clone().follow().await?;
                    tracing::info!(replica = %replica, "serving as one replica of several");
                    tokio::spawn(rollout.clone().heartbeat(replica.clone(), std::time::Duration::from_secs(3)));
                    rollout
                }
                None => {
                    let rollout = swapbot::routing::rollout::Rollout::new(data_dir, routing, app.service.clone(), admins);
                    if let Err(err) = rollout.apply_file() {
                        tracing::error!(%err, "rollout file refused at start");
                    }
                    rollout
                }
            };
            tokio::spawn(rollout.clone().watch());
            let watcher = app.plugins.clone();
            tokio::spawn(async move {
                if let Err(err) = watcher.watch().await {
                    tracing::error!(%err, "plugin directory watch stopped; SIGHUP and restarts still reload");
                }
            });
            let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            if let Some(addr) = metrics_addr {
                let (bound, _server) = swapbot::telemetry::metrics::serve(addr, app.metrics.clone(), ready.clone()).await?;
                tracing::info!(%bound, "metrics on /metrics, health on /healthz");
            }
            ready.store(true, std::sync::atomic::Ordering::Release);
            let routing = app.service.routing();
            let backends: Vec<String> = app.plugins.loaded().keys().cloned().collect();
            tracing::info!(routing = %routing, backends = %backends.join(","), "ready");
            if telegram {
                let Some(bot) = swapbot_telegram::bot_from_env()? else {
                    anyhow::bail!("invalid setting TELOXIDE_TOKEN: not set");
                };
                let options = swapbot_telegram::BotOptions {
                    allowed_user_ids: app.config.allowed_user_ids.as_ref().map(|ids| ids.iter().copied().collect()),
                    max_messages: app.config.telegram_max_messages,
                    group_mode: app.config.group_mode,
                    // A question waits here until answered, across a crash or a stop mid-turn.
                    inbox_dir: Some(app.config.data_dir.join("inbox")),
                    stop_grace: app.config.shutdown_grace,
                    ..Default::default()
                };
                let handler = std::sync::Arc::new(swapbot::frontend::BotHandler {
                    service: app.service.clone(),
                    rollout,
                    group_sessions: app.config.group_sessions,
                });
                // Replicas share one inbox in the database (webhook mode): any of them answers what
                // another accepted and could not finish. A poller is alone (one getUpdates consumer per
                // bot) and keeps its file inbox.
                let webhook = swapbot_telegram::TelegramMode::from_env()? == swapbot_telegram::TelegramMode::Webhook;
                let shared_inbox: Option<std::sync::Arc<dyn swapbot_telegram::UpdateQueue>> = match &app.pg {
                    Some(pg) if webhook => Some(std::sync::Arc::new(
                        swapbot::frontend::shared_inbox::SharedInbox::open(pg.clone(), replica.clone(), app.config.inbox_lease).await?,
                    )),
                    _ => None,
                };
                swapbot_telegram::run_from_env(bot, handler, options, shared_inbox).await?;
                // The usage of the last turns is written before the process goes (every replica's
                // budgets count it).
                if let Err(err) = app.service.accounting().ledger.sync_shared().await {
                    tracing::warn!(%err, "could not write the last turns' usage to the database");
                }
                tracing::info!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            tracing::info!("no TELOXIDE_TOKEN: serving a terminal chat through the same pipeline");
            swapbot::frontend::terminal::run(app.service.clone(), user).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// This replica's name in the replica list: `REPLICA_ID`, or one made at first start and kept in
/// `DATA_DIR` (the leases it holds in the shared inbox are under this name: a restart gives them up).
fn replica_id(config: &Config) -> String {
    if let Some(id) = &config.replica_id {
        return id.clone();
    }
    let path = config.data_dir.join(".replica-id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return id.trim().to_owned();
    }
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty());
    let id = format!("{}-{}", host.unwrap_or_else(|| "swapbot".into()), hex::encode(rand::random::<[u8; 3]>()));
    if let Err(err) = std::fs::write(&path, &id) {
        tracing::warn!(path = %path.display(), %err, "cannot keep the replica id: a restart reports under a new one");
    }
    id
}

fn init_logs(
    dir: Option<&std::path::Path>,
    secrets: Vec<String>,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    swapbot::telemetry::init(dir, secrets, false)
}
