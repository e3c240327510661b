//! Changing the rollout while the bot runs: `DATA_DIR/rollout.json` (watched; its values win
//! over the environment's) and the admins' `/rollout` commands, which write that file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::routing::{Canary, Routing};
use crate::turn::TurnService;

pub const FILE_NAME: &str = "rollout.json";

/// The rollout file. Absent fields fall back to the start-up routing (environment and config
/// file). The first three fields are the Python bot's and keep its meaning: the canary on or
/// off, its percent, its test users; an existing file is read as before.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RolloutFile {
    /// Whether the canary is on (`USE_OPENAI_RESPONSES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_openai_responses: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_users: Option<BTreeSet<i64>>,
    /// The backend everyone off the canary is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    /// The canary's target backend; `""` for no canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_unix: Option<u64>,
}

impl RolloutFile {
    fn over(&self, base: &Routing) -> Routing {
        let base_canary = base.canary.clone();
        let backend = self.canary_backend.clone().or_else(|| base_canary.as_ref().map(|c| c.backend.clone())).unwrap_or_default();
        let canary = (!backend.is_empty()).then(|| Canary {
            backend,
            enabled: self.use_openai_responses.or(base_canary.as_ref().map(|c| c.enabled)).unwrap_or(false),
            percent: self.rollout_percent.or(base_canary.as_ref().map(|c| c.percent)).unwrap_or(100).min(100),
            test_users: self
                .test_users
                .clone()
                .or_else(|| base_canary.as_ref().map(|c| c.test_users.clone()))
                .unwrap_or_default(),
        });
        Routing { default: self.default_backend.clone().unwrap_or_else(|| base.default.clone()), canary }
    }

    /// Backend names the file holds that are not names.
    fn invalid_name(&self) -> Option<&str> {
        let names = self.default_backend.iter().chain(self.canary_backend.iter().filter(|c| !c.is_empty()));
        names.map(String::as_str).find(|n| !crate::config::backends::valid_backend_name(n))
    }
}

pub struct Rollout {
    path: PathBuf,
    env: Routing,
    service: Arc<TurnService>,
    admins: BTreeSet<i64>,
    seen: Mutex<Option<SystemTime>>,
    shared: Option<Shared>,
}

/// With a database the rollout lives there: every replica applies each change it is notified of.
struct Shared {
    pg: swapbot_pg::PgStore,
    /// Lines for `/rollout`: the live replicas serving other plugin builds than this one.
    others: Mutex<Vec<String>>,
}

/// A change an admin's command asks for, or the answer when it asks for none.
enum Step {
    Reply(String),
    Change(&'static str, Box<dyn FnOnce(&mut RolloutFile) + Send>),
}

fn change(what: &'static str, f: impl FnOnce(&mut RolloutFile) + Send + 'static) -> Step {
    Step::Change(what, Box::new(f))
}

impl Rollout {
    pub fn new(data_dir: &Path, env: Routing, service: Arc<TurnService>, admins: BTreeSet<i64>) -> Arc<Self> {
        Arc::new(Self { path: data_dir.join(FILE_NAME), env, service, admins, seen: Mutex::new(None), shared: None })
    }

    /// The rollout in PostgreSQL: `/rollout` and edits of this replica's `rollout.json` write it
    /// there, and [`Rollout::follow`] applies what any replica writes.
    pub fn shared(
        data_dir: &Path,
        env: Routing,
        service: Arc<TurnService>,
        admins: BTreeSet<i64>,
        pg: swapbot_pg::PgStore,
    ) -> Arc<Self> {
        let shared = Some(Shared { pg, others: Mutex::new(vec![]) });
        Arc::new(Self { path: data_dir.join(FILE_NAME), env, service, admins, seen: Mutex::new(None), shared })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self, bytes: &[u8], origin: &str) -> anyhow::Result<RolloutFile> {
        let file: RolloutFile = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("{origin} is not valid ({e}); the current rollout stays in force"))?;
        if file.rollout_percent.is_some_and(|p| p > 100) {
            anyhow::bail!("{origin}: rollout_percent must be 0–100; the current rollout stays in force");
        }
        if let Some(name) = file.invalid_name() {
            anyhow::bail!("{origin}: {name:?} is not a backend name; the current rollout stays in force");
        }
        Ok(file)
    }

    /// Applies a rollout (None: the start-up routing).
    fn apply(&self, file: Option<&RolloutFile>) -> Routing {
        let routing = match file {
            Some(file) => file.over(&self.env),
            None => self.env.clone(),
        };
        let before = self.service.routing();
        if *before != routing {
            tracing::info!(routing = %routing, "rollout changed");
            for backend in routing.backends() {
                if self.service.plugins().get(backend).is_none() {
                    tracing::error!(backend, "the rollout routes users to a backend with no plugin loaded: they get an error reply");
                }
            }
            self.service.set_routing(routing.clone());
        }
        routing
    }

    /// Reads the file and applies it; a file that does not parse keeps the current routing.
    pub fn apply_file(&self) -> anyhow::Result<Routing> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(self.apply(Some(&self.parse(&bytes, &self.path.display().to_string())?))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(self.apply(None)),
            Err(err) => anyhow::bail!("{}: {err}", self.path.display()),
        }
    }

    fn apply_value(&self, value: Option<&serde_json::Value>) -> anyhow::Result<Routing> {
        match value {
            Some(value) => Ok(self.apply(Some(&self.parse(&serde_json::to_vec(value)?, "the database's rollout")?))),
            None => Ok(self.apply(None)),
        }
    }

    /// Applies the database's rollout now, then every change any replica writes (LISTEN/NOTIFY,
    /// which reconnects by itself). Files only: nothing to follow.
    pub async fn follow(self: Arc<Self>) -> anyhow::Result<()> {
        let Some(shared) = &self.shared else { return Ok(()) };
        let mut changes = shared.pg.listen_rollout().await?;
        let current = shared.pg.rollout().await?;
        if let Err(err) = self.apply_value(current.as_ref()) {
            tracing::error!(%err, "rollout refused at start");
        }
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(value) = changes.next().await {
                if let Err(err) = this.apply_value(value.as_ref()) {
                    tracing::error!(%err, "rollout refused");
                }
            }
        });
        Ok(())
    }

    /// Polls the file's modification time (cheap, and robust to editors that replace files).
    /// With a database, an edit made after start is written there (so every replica applies
    /// it); the file found at start is not, or a stale copy on one replica would undo changes.
    pub async fn watch(self: Arc<Self>) {
        let mut first = true;
        loop {
            let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            let changed = {
                let mut seen = self.seen.lock().unwrap();
                let changed = *seen != modified;
                *seen = modified;
                changed
            };
            match &self.shared {
                None if changed => {
                    if let Err(err) = self.apply_file() {
                        tracing::error!(%err, "rollout file refused");
                    }
                }
                Some(shared) if changed && !first && modified.is_some() => {
                    let stored = match std::fs::read(&self.path) {
                        Ok(bytes) => self.parse(&bytes, &self.path.display().to_string()).and_then(|f| Ok(serde_json::to_value(f)?)),
                        Err(err) => Err(anyhow::anyhow!("{}: {err}", self.path.display())),
                    };
                    match stored {
                        Ok(value) => match shared.pg.set_rollout(&value).await {
                            Ok(()) => tracing::info!(file = %self.path.display(), "rollout file edited: written to the database"),
                            Err(err) => tracing::error!(%err, "rollout file edited but not written to the database"),
                        },
                        Err(err) => tracing::error!(%err, "rollout file refused"),
                    }
                }
                _ => {}
            }
            first = false;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The rollout a change starts from: what is stored, filled with what is in force, so a
    /// command never resets other fields to the environment.
    fn changed(&self, who: i64, stored: Option<RolloutFile>, change: Box<dyn FnOnce(&mut RolloutFile) + Send>) -> RolloutFile {
        let mut file = stored.unwrap_or_default();
        let current = self.service.routing();
        file.default_backend.get_or_insert_with(|| current.default.clone());
        file.canary_backend.get_or_insert_with(|| current.canary.as_ref().map(|c| c.backend.clone()).unwrap_or_default());
        if let Some(c) = &current.canary {
            file.use_openai_responses.get_or_insert(c.enabled);
            file.rollout_percent.get_or_insert(c.percent);
            file.test_users.get_or_insert_with(|| c.test_users.clone());
        }
        change(&mut file);
        file.updated_by = Some(format!("telegram:{who}"));
        file.updated_at_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
        file
    }

    fn write(&self, who: i64, change: Box<dyn FnOnce(&mut RolloutFile) + Send>) -> anyhow::Result<Routing> {
        let stored = std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let file = self.changed(who, stored, change);
        let text = serde_json::to_string_pretty(&file)?;
        crate::state::write_atomic(&self.path, text.as_bytes())?;
        let routing = self.apply_file()?;
        *self.seen.lock().unwrap() = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        tracing::info!(admin = who, file = %self.path.display(), "rollout changed by an admin");
        Ok(routing)
    }

    async fn write_shared(&self, shared: &Shared, who: i64, change: Box<dyn FnOnce(&mut RolloutFile) + Send>) -> anyhow::Result<Routing> {
        let stored = shared.pg.rollout().await?.and_then(|v| serde_json::from_value(v).ok());
        let file = self.changed(who, stored, change);
        shared.pg.set_rollout(&serde_json::to_value(&file)?).await?;
        // Applied here at once; the other replicas apply it when notified.
        let routing = self.apply(Some(&file));
        tracing::info!(admin = who, "rollout changed by an admin (in the database)");
        Ok(routing)
    }

    /// An admin's `/rollout …` command (files only; see [`Rollout::handle`]). `None` for anyone
    /// else or anything else: a non-admin gets no hint that the command exists.
    pub fn command(&self, user_id: i64, text: &str) -> Option<String> {
        let result = match self.plan(user_id, text)? {
            Step::Reply(text) => Ok(text),
            Step::Change(what, f) => self.write(user_id, f).map(|r| describe(what, &r)),
        };
        Some(result.unwrap_or_else(|err| {
            tracing::error!(%err, "rollout command failed");
            "The rollout could not be changed; see the log.".into()
        }))
    }

    /// An admin's `/rollout …` command, written to the database when there is one.
    pub async fn handle(&self, user_id: i64, text: &str) -> Option<String> {
        let Some(shared) = &self.shared else { return self.command(user_id, text) };
        let result = match self.plan(user_id, text)? {
            Step::Reply(text) => Ok(text),
            Step::Change(what, f) => self.write_shared(shared, user_id, f).await.map(|r| describe(what, &r)),
        };
        Some(result.unwrap_or_else(|err| {
            tracing::error!(%err, "rollout command failed");
            "The rollout could not be changed; see the log.".into()
        }))
    }

    fn plan(&self, user_id: i64, text: &str) -> Option<Step> {
        if !self.admins.contains(&user_id) {
            return None;
        }
        let mut words = text.split_whitespace();
        let head = words.next()?.to_ascii_lowercase();
        if head != "/rollout" && !head.starts_with("/rollout@") {
            return None;
        }
        // `/ROLLOUT ON` is meant like `/rollout on`.
        let args: Vec<String> = words.map(str::to_ascii_lowercase).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let loaded = |name: &str| self.service.plugins().get(name).is_some();
        let not_loaded = |name: &str| {
            let names: Vec<String> = self.service.plugins().loaded().keys().cloned().collect();
            Step::Reply(format!(
                "No backend {name:?} is loaded (loaded: {}). Drop {name}.wasm into the plugin directory first.",
                names.join(", ")
            ))
        };
        let step = match args.as_slice() {
            [] | ["status"] => Step::Reply(self.status()),
            ["on"] => change("canary on", |f| f.use_openai_responses = Some(true)),
            ["off"] => change("canary off (rollback)", |f| f.use_openai_responses = Some(false)),
            ["percent", n] => match parse_percent(n) {
                Some(p) => change("percent set", move |f| f.rollout_percent = Some(p)),
                None => Step::Reply("Usage: /rollout percent N (0–100)".into()),
            },
            ["canary", name, rest @ ..] if rest.len() <= 1 => {
                let percent = match rest.first() {
                    None => None,
                    Some(n) => match parse_percent(n) {
                        Some(p) => Some(p),
                        None => return Some(Step::Reply("Usage: /rollout canary BACKEND [PERCENT]".into())),
                    },
                };
                if !loaded(name) {
                    not_loaded(name)
                } else {
                    let name = name.to_string();
                    change("canary set", move |f| {
                        f.canary_backend = Some(name);
                        f.use_openai_responses = Some(true);
                        if let Some(p) = percent {
                            f.rollout_percent = Some(p);
                        }
                    })
                }
            }
            ["default", name] => {
                if !loaded(name) {
                    not_loaded(name)
                } else {
                    let name = name.to_string();
                    change("default set", move |f| f.default_backend = Some(name))
                }
            }
            ["add-test-user", id] => match id.parse::<i64>() {
                Ok(id) => change("test user added", move |f| {
                    f.test_users.get_or_insert_with(BTreeSet::new).insert(id);
                }),
                Err(_) => Step::Reply("Usage: /rollout add-test-user USER_ID".into()),
            },
            ["remove-test-user", id] => match id.parse::<i64>() {
                Ok(id) => change("test user removed", move |f| {
                    f.test_users.get_or_insert_with(BTreeSet::new).remove(&id);
                }),
                Err(_) => Step::Reply("Usage: /rollout remove-test-user USER_ID".into()),
            },
            _ => Step::Reply("Usage: /rollout [status|on|off|percent N|canary BACKEND [PERCENT]|default BACKEND|add-test-user ID|remove-test-user ID]".into()),
        };
        Some(step)
    }

    /// What this replica serves, as other replicas compare it.
    pub fn builds(&self) -> Vec<swapbot_pg::PluginBuild> {
        let mut builds: Vec<swapbot_pg::PluginBuild> = self
            .service
            .plugins()
            .loaded()
            .iter()
            .map(|(name, p)| swapbot_pg::PluginBuild {
                name: name.clone(),
                version: p.description.version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect();
        builds.sort_by(|a, b| a.name.cmp(&b.name));
        builds
    }

    /// Every few seconds: reports what this replica serves, and notes the live replicas that
    /// serve something else for `/rollout`. Files only: nothing to do.
    pub async fn heartbeat(self: Arc<Self>, replica_id: String, every: Duration) {
        let Some(shared) = &self.shared else { return };
        let mut beats: u64 = 0;
        loop {
            // Hourly: claims older than Telegram's day of redeliveries (twice that, for a replica
            // that was down a while) and replicas silent for a day are of no use any more.
            if beats % (3600 / every.as_secs().max(1)) == 0 {
                let day = Duration::from_secs(24 * 3600);
                if let Err(err) = shared.pg.prune_processed(2 * day).await {
                    tracing::warn!(%err, "cannot prune old update claims");
                }
                let _ = shared.pg.forget_replicas(day).await;
            }
            beats += 1;
            let ours = self.builds();
            if let Err(err) = shared.pg.report_replica(&replica_id, &ours).await {
                tracing::warn!(%err, "cannot report this replica to the database");
            }
            match shared.pg.replicas().await {
                Ok(replicas) => {
                    // Three missed heartbeats: gone (or stopped), not serving anything.
                    let live = every.as_secs_f64() * 3.0 + 1.0;
                    let others: Vec<String> = replicas
                        .iter()
                        .filter(|r| r.replica_id != replica_id && r.seconds_since_heartbeat < live)
                        .filter(|r| {
                            let mut theirs = r.plugins.clone();
                            theirs.sort_by(|a, b| a.name.cmp(&b.name));
                            theirs != ours
                        })
                        .map(|r| {
                            let builds: Vec<String> = r
                                .plugins
                                .iter()
                                .map(|p| format!("{} v{} ({})", p.name, p.version, &p.sha256[..p.sha256.len().min(12)]))
                                .collect();
                            format!("replica {} serves other plugins: {}", r.replica_id, if builds.is_empty() { "none".into() } else { builds.join(", ") })
                        })
                        .collect();
                    *shared.others.lock().unwrap() = others;
                }
                Err(err) => tracing::warn!(%err, "cannot read the replica list"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The state an admin sees with `/rollout`: the routing, then every backend loaded or routed
    /// to, with its plugin and its turns since start.
    pub fn status(&self) -> String {
        let routing = self.service.routing();
        let mut out = describe("rollout", &routing);
        let stats = self.service.stats();
        let loaded = self.service.plugins().loaded();
        let mut names: BTreeSet<String> = loaded.keys().cloned().collect();
        names.extend(routing.backends().into_iter().map(str::to_owned));
        for backend in names {
            let s = stats.get(&backend).copied().unwrap_or_default();
            let rate = if s.turns == 0 { 0.0 } else { 100.0 * s.errors as f64 / s.turns as f64 };
            let plugin = loaded.get(&backend);
            out.push_str(&format!(
                "\n{backend}: plugin {}, {} turns, {:.1}% errors since start",
                plugin
                    .map(|p| format!("v{} ({}, contract {})", p.description.version, &p.sha256[..12], p.description.contract))
                    .unwrap_or_else(|| "not loaded".into()),
                s.turns,
                rate
            ));
        }
        if let Some(shared) = &self.shared {
            for line in shared.others.lock().unwrap().iter() {
                out.push('\n');
                out.push_str(line);
            }
        }
        out
    }
}

fn parse_percent(n: &str) -> Option<u8> {
    n.trim_end_matches('%').parse::<u8>().ok().filter(|p| *p <= 100)
}

fn describe(what: &str, r: &Routing) -> String {
    format!("{what}: {r}")
}
