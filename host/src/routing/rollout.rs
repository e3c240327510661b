//! Changing the rollout while the bot runs: `DATA_DIR/rollout.json` (watched; its values win
//! over the environment's) and the admins' `/rollout` commands, which write that file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::routing::{Backend, Routing};
use crate::turn::TurnService;

pub const FILE_NAME: &str = "rollout.json";

/// The rollout file. Absent fields fall back to the environment's values.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RolloutFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_openai_responses: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_users: Option<BTreeSet<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_unix: Option<u64>,
}

impl RolloutFile {
    fn over(&self, base: &Routing) -> Routing {
        Routing {
            use_responses: self.use_openai_responses.unwrap_or(base.use_responses),
            rollout_percent: self.rollout_percent.unwrap_or(base.rollout_percent).min(100),
            test_users: self.test_users.clone().unwrap_or_else(|| base.test_users.clone()),
        }
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
                file.over(&self.env)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => self.env.clone(),
            Err(err) => anyhow::bail!("{}: {err}", self.path.display()),
        };
        let before = self.service.routing();
        if *before != routing {
            tracing::info!(
                use_openai_responses = routing.use_responses,
                rollout_percent = routing.rollout_percent,
                test_users = ?routing.test_users,
                "rollout changed"
            );
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
        file.use_openai_responses.get_or_insert(current.use_responses);
        file.rollout_percent.get_or_insert(current.rollout_percent);
        file.test_users.get_or_insert_with(|| current.test_users.clone());
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
        let result = match args.as_slice() {
            [] | ["status"] => Ok(self.status()),
            ["on"] => self.write(user_id, |f| f.use_openai_responses = Some(true)).map(|r| describe("flag on", &r)),
            ["off"] => self.write(user_id, |f| f.use_openai_responses = Some(false)).map(|r| describe("flag off (rollback)", &r)),
            ["percent", n] => match n.trim_end_matches('%').parse::<u8>() {
                Ok(p) if p <= 100 => self.write(user_id, |f| f.rollout_percent = Some(p)).map(|r| describe("percent set", &r)),
                _ => Ok("Usage: /rollout percent N (0–100)".into()),
            },
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
            _ => Ok("Usage: /rollout [on|off|percent N|add-test-user ID|remove-test-user ID]".into()),
        };
        Some(result.unwrap_or_else(|err| {
            tracing::error!(%err, "rollout command failed");
            "The rollout could not be changed; see the log.".into()
        }))
    }

    /// The state an admin sees with `/rollout`.
    pub fn status(&self) -> String {
        let routing = self.service.routing();
        let mut out = describe("rollout", &routing);
        let stats = self.service.stats();
        for backend in Backend::ALL {
            let plugin = self.service.plugins().get(backend);
            let s = stats.get(&backend).copied().unwrap_or_default();
            let rate = if s.turns == 0 { 0.0 } else { 100.0 * s.errors as f64 / s.turns as f64 };
            out.push_str(&format!(
                "\n{}: plugin {}, {} turns, {:.1}% errors since start",
                backend.name(),
                plugin.map(|p| format!("v{} ({})", p.description.version, &p.sha256[..12])).unwrap_or_else(|| "not loaded".into()),
                s.turns,
                rate
            ));
        }
        out
    }
}

fn describe(what: &str, r: &Routing) -> String {
    format!(
        "{what}: USE_OPENAI_RESPONSES={} RESPONSES_ROLLOUT_PERCENT={} test users: {}",
        r.use_responses,
        r.rollout_percent,
        if r.test_users.is_empty() {
            "none".to_string()
        } else {
            r.test_users.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")
        }
    )
}
