//! The bot under test for groups 3, 4 and 6: a child process serving Telegram (the fake Bot API)
//! through the real library entry points.
//!
//! `swapbot run` answers "Telegram serving is not wired yet" at the time of writing, so when the
//! real binary cannot serve Telegram, `swapbot-bench bot` stands in for it: it does what `run`
//! does (settings from the environment, logs, `app::build` with the knowledge base from the
//! environment) and serves `swapbot_telegram::run_polling` with a handler over `TurnService::turn`.
//! When the real binary serves Telegram, the bench uses it instead and says so.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swapbot::turn::TurnService;
use swapbot_telegram::{BotOptions, Sender, TurnHandler, TurnResult};

pub const TOKEN: &str = "7000000001:AAbenchmarkTokenNotASecret";

struct Handler(Arc<TurnService>);

#[async_trait::async_trait]
impl TurnHandler for Handler {
    async fn turn(&self, who: Sender, text: String, deltas: tokio::sync::mpsc::UnboundedSender<String>) -> TurnResult {
        let outcome = self.0.turn(who.user_id, &text, Some(deltas)).await;
        match outcome.reply {
            Ok(answer) => TurnResult::Answer(answer),
            Err(human) => TurnResult::Failed(human),
        }
    }
    async fn reset(&self, who: Sender) -> anyhow::Result<()> {
        // The benchmark talks in private chats only: the user's private session.
        self.0.reset(who.user_id).await
    }
}

/// `swapbot-bench bot`: the stand-in for `swapbot run` with a Telegram token.
pub fn serve() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let config = swapbot::config::Config::from_env()?;
        let _guard = swapbot::telemetry::init(Some(&config.log_dir), config.secrets(), true);
        let token = config.telegram_token.clone().ok_or_else(|| anyhow::anyhow!("TELOXIDE_TOKEN not set"))?;
        let api_url = std::env::var("TELOXIDE_API_URL")?;
        let allowed = config.allowed_user_ids.clone().map(|s| s.into_iter().collect());
        let app = swapbot::app::build(config, Some(swapbot_kb::KbConfig::from_env()?)).await?;
        let bot = teloxide::Bot::new(token).set_api_url(api_url.parse()?);
        let options = BotOptions { allowed_user_ids: allowed, ..BotOptions::default() };
        swapbot_telegram::run_polling(bot, Arc::new(Handler(app.service.clone())), options).await
    })
}

/// A running bot child.
pub struct BotProcess {
    pub child: Child,
    /// Which program serves: the real binary or the stand-in.
    pub program: String,
}

impl BotProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(3));
    }
}

/// SIGTERM first (a graceful stop flushes logs and writes the last usage), then SIGKILL after `grace`.
pub fn stop(child: &mut Child, grace: Duration) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn(program: &Path, args: &[&str], env: &[(String, String)], stderr_to: &Path, cwd: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(stderr_to)?;
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::from(log)).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

/// Starts the bot on `env` (OPENAI_*, DATA_DIR, …), pointed at the fake Bot API, and waits until
/// it polls. Prefers `target/release/swapbot run`; falls back to the stand-in.
pub async fn start(fake: &swapbot_fake_telegram::FakeTelegram, env: &[(String, String)], work: &Path) -> anyhow::Result<BotProcess> {
    let mut env = env.to_vec();
    env.push(("TELOXIDE_TOKEN".into(), TOKEN.into()));
    env.push(("TELOXIDE_API_URL".into(), fake.api_url()));
    let real = crate::common::root().join("target/release/swapbot");
    let me = std::env::current_exe()?;
    let candidates: Vec<(std::path::PathBuf, Vec<&str>, String)> = if std::env::var_os("BENCH_STANDIN").is_some() {
        vec![(me.clone(), vec!["bot"], "swapbot-bench bot (stand-in: app::build + swapbot_telegram::run_polling)".into())]
    } else {
        vec![
            (real.clone(), vec!["run"], "target/release/swapbot run".into()),
            (me.clone(), vec!["bot"], "swapbot-bench bot (stand-in: app::build + swapbot_telegram::run_polling)".into()),
        ]
    };
    for (program, args, label) in candidates {
        let polls_before = fake.polls_started();
        let mut child = spawn(&program, &args, &env, &work.join("bot.stderr"), work)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if fake.polls_started() > polls_before {
                return Ok(BotProcess { child, program: label });
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let log = std::fs::read_to_string(work.join("bot.stderr")).unwrap_or_default();
    anyhow::bail!("no bot started polling the fake Telegram; last stderr:\n{log}")
}
