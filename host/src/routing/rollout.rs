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
}

impl Rollout {
    pub fn new(data_dir: &Path, env: Routing, service: Arc<TurnService>, admins: BTreeSet<i64>) -> Arc<Self> {
        Arc::new(Self { path: data_dir.join(FILE_NAME), env, service, admins, seen: Mutex::new(None) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file and applies it; a file that does not parse keeps the current routing.
    pub fn apply_file(&self) -> anyhow::Result<Routing> {
        let routing = match std::fs::read(&self.path) {
            Ok(bytes) => {
                let file: RolloutFile = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not valid ({e}); the current rollout stays in force", self.path.display())
                })?;
                if file.rollout_percent.is_some_and(|p| p > 100) {
                    anyhow::bail!("{}: rollout_percent must be 0–100; the current rollout stays in force", self.path.display());
                }
                if let Some(name) = file.invalid_name() {
                    anyhow::bail!("{}: {name:?} is not a backend name; the current rollout stays in force", self.path.display());
                }
                file.over(&self.env)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => self.env.clone(),
            Err(err) => anyhow::bail!("{}: {err}", self.path.display()),
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
        Ok(routing)
    }

    /// Polls the file's modification time (cheap, and robust to editors that replace files).
    pub async fn watch(self: Arc<Self>) {
        loop {
            let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            let changed = {
                let mut seen = self.seen.lock().unwrap();
                let changed = *seen != modified;
                *seen = modified;
                changed
            };
            if changed {
                if let Err(err) = self.apply_file() {
                    tracing::error!(%err, "rollout file refused");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn write(&self, who: i64, change: impl FnOnce(&mut RolloutFile)) -> anyhow::Result<Routing> {
        let mut file: RolloutFile = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Start from what is in force, so a command never resets other fields to the env.
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
        let text = serde_json::to_string_pretty(&file)?;
        crate::state::write_atomic(&self.path, text.as_bytes())?;
        let routing = self.apply_file()?;
        *self.seen.lock().unwrap() = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        tracing::info!(admin = who, file = %self.path.display(), "rollout changed by an admin");
        Ok(routing)
    }

    /// An admin's `/rollout …` command. `None` for anyone else or anything else: a non-admin
    /// gets no hint that the command exists.
    pub fn command(&self, user_id: i64, text: &str) -> Option<String> {
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
            Ok(format!("No backend {name:?} is loaded (loaded: {}). Drop {name}.wasm into the plugin directory first.", names.join(", ")))
        };
        let result = match args.as_slice() {
            [] | ["status"] => Ok(self.status()),
            ["on"] => self.write(user_id, |f| f.use_openai_responses = Some(true)).map(|r| describe("canary on", &r)),
            ["off"] => self.write(user_id, |f| f.use_openai_responses = Some(false)).map(|r| describe("canary off (rollback)", &r)),
            ["percent", n] => match parse_percent(n) {
                Some(p) => self.write(user_id, |f| f.rollout_percent = Some(p)).map(|r| describe("percent set", &r)),
                None => Ok("Usage: /rollout percent N (0–100)".into()),
            },
            ["canary", name, rest @ ..] if rest.len() <= 1 => {
                let percent = match rest.first() {
                    None => None,
                    Some(n) => match parse_percent(n) {
                        Some(p) => Some(p),
                        None => return Some("Usage: /rollout canary BACKEND [PERCENT]".into()),
                    },
                };
                if !loaded(name) {
                    not_loaded(name)
                } else {
                    self.write(user_id, |f| {
                        f.canary_backend = Some(name.to_string());
                        f.use_openai_responses = Some(true);
                        if let Some(p) = percent {
                            f.rollout_percent = Some(p);
                        }
                    })
                    .map(|r| describe("canary set", &r))
                }
            }
            ["default", name] => {
                if !loaded(name) {
                    not_loaded(name)
                } else {
                    self.write(user_id, |f| f.default_backend = Some(name.to_string())).map(|r| describe("default set", &r))
                }
            }
            ["add-test-user", id] => match id.parse::<i64>() {
                Ok(id) => self
                    .write(user_id, |f| {
                        f.test_users.get_or_insert_with(BTreeSet::new).insert(id);
                    })
                    .map(|r| describe("test user added", &r)),
                Err(_) => Ok("Usage: /rollout add-test-user USER_ID".into()),
            },
            ["remove-test-user", id] => match id.parse::<i64>() {
                Ok(id) => self
                    .write(user_id, |f| {
                        f.test_users.get_or_insert_with(BTreeSet::new).remove(&id);
                    })
                    .map(|r| describe("test user removed", &r)),
                Err(_) => Ok("Usage: /rollout remove-test-user USER_ID".into()),
            },
            _ => Ok("Usage: /rollout [status|on|off|percent N|canary BACKEND [PERCENT]|default BACKEND|add-test-user ID|remove-test-user ID]".into()),
        };
        Some(result.unwrap_or_else(|err| {
            tracing::error!(%err, "rollout command failed");
            "The rollout could not be changed; see the log.".into()
        }))
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
        out
    }
}

fn parse_percent(n: &str) -> Option<u8> {
    n.trim_end_matches('%').parse::<u8>().ok().filter(|p| *p <= 100)
}

fn describe(what: &str, r: &Routing) -> String {
    format!("{what}: {r}")
}
