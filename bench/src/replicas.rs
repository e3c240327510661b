//! Group `replicas` (issue 14 item 5): 1, 2 and 3 replicas of `target/release/swapbot run` in webhook
//! mode on one PostgreSQL, behind a real nginx, the fake Bot API delivering webhooks through nginx
//! and the sandbox answering at once. Per replica count: throughput (saturated rounds), host-added
//! latency (paced, below saturation), CPU per turn (replicas, PostgreSQL, nginx), and what a turn
//! costs the database (statements from the replicas' `swapbot_db_statements_total`, transactions
//! from `pg_stat_database` as a cross-check).
//!
//! The cluster and nginx are the tests' own helpers (`host/pg/tests/common/mod.rs`,
//! `tests/support/nginx.rs`), included by path so the bench runs exactly what the tests run.

#[path = "../../host/pg/tests/common/mod.rs"]
mod pgcluster;
#[path = "../../tests/support/nginx.rs"]
mod nginx;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use swapbot_fake_telegram::FakeTelegram;
use swapbot_sandbox::{Sandbox, SandboxConfig};

use crate::common::{Out, Samples, record, remove_dir, root, scratch};

const GROUP: &str = "9 replicas";
const TOKEN: &str = "7000000002:AAreplicaBenchTokenNotASecret";
const SECRET: &str = "replicas-bench-webhook-secret";
const QUESTION: &str = "Hello! Can you tell me something about the weather in Paris today?";
/// Per replica: query pool + lock pool + the rollout listener stay under the throwaway cluster's
/// `max_connections` (60) with three replicas.
const POOL: &str = "4";
const LOCKS: &str = "12";
const USERS: usize = 100;
/// The paced run's rate, the same for every replica count so latencies compare.
const PACED_RATE: f64 = 40.0;

/// Why the group cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if !nginx::installed() {
        return Some("nginx is not installed (apt-get install nginx)".into());
    }
    let on_path = Command::new("sh").args(["-c", "command -v initdb"]).output().is_ok_and(|o| o.status.success());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).any(|e| e.path().join("bin/initdb").exists()))
        .unwrap_or(false);
    if !on_path && !debian {
        return Some("PostgreSQL's initdb is not installed (apt-get install postgresql)".into());
    }
    // As root the cluster runs as `postgres` (the server refuses root), the user Debian's package makes.
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root && !Command::new("id").arg("postgres").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
        return Some("running as root and there is no postgres user to run the server as".into());
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Replica {
    child: Child,
    port: u16,
    metrics_port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        crate::bot::stop(&mut self.child, Duration::from_secs(5));
    }
}

struct Setup {
    database_url: String,
    sandbox_url: String,
    api_url: String,
}

impl Setup {
    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(root().join("target/release/swapbot"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OPENAI_API_KEY", "sk-bench-key")
            .env("OPENAI_BASE_URL", &self.sandbox_url)
            .env("DEFAULT_BACKEND", "responses")
            .env("CANARY_BACKEND", "")
            .env("PLUGIN_DIR", root().join("target/plugins"))
            .env("DATA_DIR", dir.join("data"))
            .env("LOG_DIR", dir.join("logs"))
            .env("TELOXIDE_TOKEN", TOKEN)
            .env("TELOXIDE_API_URL", &self.api_url)
            .env("TELEGRAM_MODE", "webhook")
            .env("WEBHOOK_SECRET", SECRET)
            .env("DATABASE_URL", &self.database_url)
            .env("DATABASE_POOL_SIZE", POOL)
            .env("DATABASE_LOCK_CONNECTIONS", LOCKS)
            .env("RUST_LOG", "warn")
            .current_dir(dir);
        cmd
    }

    fn start(&self, dir: &Path) -> anyhow::Result<Replica> {
        std::fs::create_dir_all(dir)?;
        let (port, metrics_port) = (free_port(), free_port());
        let child = self
            .command(dir)
            .arg("run")
            .env("WEBHOOK_LISTEN", format!("127.0.0.1:{port}"))
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .spawn()?;
        Ok(Replica { child, port, metrics_port })
    }

    fn run(&self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command(dir).args(args).output()?;
        anyhow::ensure!(out.status.success(), "swapbot {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    }
}

async fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!("{what} exited ({status}) before listening: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} is not listening on {port} after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `swapbot_db_statements_total` of one replica (0 before it has a store).
async fn statements(metrics_port: u16) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("swapbot_db_statements_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

async fn all_statements(replicas: &[Replica]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for r in replicas {
        sum += statements(r.metrics_port).await?;
    }
    Ok(sum)
}

/// Committed + rolled-back transactions of `db` as the server's statistics have them. Backends
/// report at most once a second, so the caller waits before reading.
async fn transactions(admin: &tokio_postgres::Client, db: &str) -> anyhow::Result<i64> {
    admin.batch_execute("SELECT pg_stat_clear_snapshot()").await?;
    let row = admin
        .query_one("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1", &[&db])
        .await?;
    Ok(row.get(0))
}

/// user + system CPU of a process and of every descendant, live or reaped (`cutime`/`cstime`):
/// PostgreSQL and nginx work in child processes.
fn tree_cpu(pid: u32) -> Duration {
    fn fields(pid: u32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
    }
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let all: Vec<(u32, Vec<String>)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, fields(p)?)))
                .collect()
        })
        .unwrap_or_default();
    let parent_of: HashMap<u32, u32> = all.iter().filter_map(|(p, f)| Some((*p, f.get(1)?.parse().ok()?))).collect();
    let descends = |mut p: u32| loop {
        if p == pid {
            return true;
        }
        match parent_of.get(&p) {
            Some(&parent) if parent > 1 && parent != p => p = parent,
            _ => return false,
        }
    };
    let mut ticks = 0.0;
    for (p, f) in &all {
        if descends(*p) {
            // utime, stime, cutime, cstime: fields 14–17 of stat, 11–14 after the command name.
            ticks += (11..=14).filter_map(|i| f.get(i)?.parse::<f64>().ok()).sum::<f64>();
        }
    }
    Duration::from_secs_f64(ticks / tick)
}

struct Pids {
    replicas: Vec<u32>,
    postgres: u32,
    nginx: u32,
}

#[derive(Default, Clone, Copy)]
struct Cpu {
    replicas: Duration,
    postgres: Duration,
    nginx: Duration,
}

impl Pids {
    fn cpu(&self) -> Cpu {
        Cpu {
            replicas: self.replicas.iter().map(|&p| tree_cpu(p)).sum(),
            postgres: tree_cpu(self.postgres),
            nginx: tree_cpu(self.nginx),
        }
    }
}

fn per_turn_us(after: Duration, before: Duration, turns: usize) -> f64 {
    after.saturating_sub(before).as_secs_f64() * 1e6 / turns.max(1) as f64
}


async fn wait_answers(fake: &FakeTelegram, pushed: &HashMap<i64, Vec<Instant>>, skip: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut waiting: Vec<(i64, usize)> = pushed.iter().map(|(u, t)| (*u, skip + t.len())).collect();
    while !waiting.is_empty() {
        waiting.retain(|&(u, want)| fake.messages_in(u).iter().filter(|m| m.from_bot).count() < want);
        anyhow::ensure!(Instant::now() < deadline, "{} users still waiting for an answer after 120 s", waiting.len());
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    Ok(())
}

struct Run {
    turns: usize,
    secs: f64,
    latencies: Samples,
    errors: usize,
}

/// Every user sends one message; the next round starts once every user has the answer.
async fn saturated(fake: &FakeTelegram, users: &[i64], rounds: usize, skip: usize) -> anyhow::Result<Run> {
    let mut pushed: HashMap<i64, Vec<Instant>> = HashMap::new();
    let start = Instant::now();
    for round in 0..rounds {
        let mut this_round: HashMap<i64, Vec<Instant>> = HashMap::new();
        for &u in users {
            let now = Instant::now();
            pushed.entry(u).or_default().push(now);
            this_round.entry(u).or_default().push(now);
            fake.push_text(u, u, QUESTION, true);
        }
        wait_answers(fake, &this_round, skip + round).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let (latencies, errors) = crate::e2e::latencies(fake, &pushed, skip);
    Ok(Run { turns: users.len() * rounds, secs, latencies, errors })
}

/// Messages at a steady total rate spread over the users, for `secs`.
async fn paced(fake: &FakeTelegram, users: &[i64], rate: f64, secs: f64, skip: usize) -> anyhow::Result<Run> {
    let mut pushed: HashMap<i64, Vec<Instant>> = HashMap::new();
    let n = (rate * secs) as usize;
    let start = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let u = users[i % users.len()];
        pushed.entry(u).or_default().push(Instant::now());
        fake.push_text(u, u, QUESTION, true);
    }
    wait_answers(fake, &pushed, skip).await?;
    let secs = start.elapsed().as_secs_f64();
    let (latencies, errors) = crate::e2e::latencies(fake, &pushed, skip);
    Ok(Run { turns: n, secs, latencies, errors })
}

pub async fn replicas(out: &Out, quick: bool) -> anyhow::Result<()> {
    if let Some(why) = missing_tools() {
        eprintln!("  replicas: skipped: {why}");
        return Ok(());
    }
    for f in ["target/release/swapbot", "target/plugins/responses.wasm"] {
        anyhow::ensure!(root().join(f).exists(), "{f} is missing (run make build)");
    }
    let pg = pgcluster::TestCluster::start();
    let postmaster: u32 = std::fs::read_to_string(pg.dir().join("data/postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL pid in postmaster.pid"))?;
    let admin = pg.admin().await;
    // BENCH_REPLICAS_STATEMENT_LOG=FILE: every statement the server ran, copied to FILE at the end
    // (to see what a turn sends; slows the server, so not for the figures).
    let statement_log = std::env::var_os("BENCH_REPLICAS_STATEMENT_LOG").map(std::path::PathBuf::from);
    if statement_log.is_some() {
        // One statement per call: ALTER SYSTEM refuses the implicit transaction of a multi-statement batch.
        for sql in ["ALTER SYSTEM SET log_statement = 'all'", "ALTER SYSTEM SET log_line_prefix = '%m %d %a '", "SELECT pg_reload_conf()"] {
            admin.batch_execute(sql).await?;
        }
    }
    let sandbox = Sandbox::start(SandboxConfig::default()).await?;
    let rounds = if quick { 2 } else { 20 };
    let paced_secs = if quick { 3.0 } else { 8.0 };
    let excludes = "the model (sandbox, zero delay). Latency is the update's arrival at the fake Bot API → the answer's \
        sendMessage arriving there: webhook delivery through nginx, the replica's durable queueing, the turn (PostgreSQL \
        session lock, id map, history, usage), the sandbox's and the fake Telegram's own work. Every process (replicas, \
        PostgreSQL, nginx, the bench with the sandbox and the fake Bot API) shares the same cores";
    let mut throughput_of_one = None;
    for n in 1..=3usize {
        let db = format!("bench_replicas_{n}");
        let database_url = pg.create_database(&db).await;
        let work = scratch("replicas");
        let fake = FakeTelegram::start().await;
        let setup = Setup { database_url, sandbox_url: sandbox.base_url(), api_url: fake.api_url() };
        setup.run(&work, &["db", "migrate"])?;
        let mut replicas = vec![];
        for i in 0..n {
            replicas.push(setup.start(&work.join(format!("replica{i}")))?);
        }
        for (i, r) in replicas.iter_mut().enumerate() {
            let log = work.join(format!("replica{i}/stderr.log"));
            wait_listening(r.port, &mut r.child, &format!("replica {i}"), &log).await?;
        }
        let nginx_dir = work.join("nginx");
        std::fs::create_dir_all(&nginx_dir)?;
        let nginx_port = free_port();
        let upstreams: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let mut lb = nginx::Nginx::start(&nginx_dir, nginx_port, "/telegram", &upstreams)?;
        wait_listening(nginx_port, &mut lb.child, "nginx", &nginx_dir.join("error.log")).await?;
        setup.run(&work, &["webhook", "set", &format!("http://127.0.0.1:{nginx_port}/telegram"), "--max-connections", "40"])?;
        let pids = Pids { replicas: replicas.iter().map(|r| r.child.id()).collect(), postgres: postmaster, nginx: lb.pid() };

        let users: Vec<i64> = (1..=USERS as i64).map(|u| 30_000 + u).collect();
        // Every user's first turn (a new conversation, an id-map row): not measured.
        saturated(&fake, &users, 1, 0).await?;

        // The server's statistics lag behind: a backend reports its transactions when it next ends
        // one a second after its last report, or after 10 s idle. Settle before every reading.
        let settle = Duration::from_secs(11);
        tokio::time::sleep(settle).await;
        // The background's statements (heartbeats, usage sync), idle, to tell a turn's own cost.
        let idle_secs = 5.0;
        let (idle0, idle_tx0) = (all_statements(&replicas).await?, transactions(&admin, &db).await?);
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        let (idle1, idle_tx1) = (all_statements(&replicas).await?, transactions(&admin, &db).await?);
        let idle_rate = (idle1 - idle0) as f64 / idle_secs;
        let idle_tx_rate = (idle_tx1 - idle_tx0) as f64 / idle_secs;

        let (cpu0, st0, tx0) = (pids.cpu(), all_statements(&replicas).await?, idle_tx1);
        let measured = Instant::now();
        let sat = saturated(&fake, &users, rounds, 1).await?;
        let (cpu1, st1) = (pids.cpu(), all_statements(&replicas).await?);
        tokio::time::sleep(settle).await;
        let tx1 = transactions(&admin, &db).await?;
        let tx_window = measured.elapsed().as_secs_f64();
        let tput = sat.turns as f64 / sat.secs;
        let statements_per_turn = (st1 - st0) as f64 / sat.turns as f64;
        let background = idle_rate * sat.secs / sat.turns as f64;
        let tx_per_turn = ((tx1 - tx0) as f64 - idle_tx_rate * tx_window) / sat.turns as f64;
        let label = format!("{n} replica{}", if n == 1 { "" } else { "s" });
        let scale = match throughput_of_one {
            Some(one) if n > 1 => format!("; {:.2}× the 1-replica figure", tput / one),
            _ => String::new(),
        };
        if n == 1 {
            throughput_of_one = Some(tput);
        }
        out.emit(
            record(GROUP, &format!("{label}, {USERS} users, saturated: throughput"), "turns/s", &Samples(vec![tput]), excludes)
                .note(format!(
                    "{} turns in {:.1} s ({rounds} rounds: every user sends, next round when all are answered){scale}; {} error answers",
                    sat.turns, sat.secs, sat.errors
                )),
        );
        let p99 = sat.latencies.pct(99.0);
        out.emit(
            record(GROUP, &format!("{label}, saturated: latency p50 (p99 in note)"), "ms", &sat.latencies, excludes)
                .note(format!("p99 {p99:.1} ms; all {USERS} users write at once, so this includes queueing")),
        );
        out.emit(
            record(GROUP, &format!("{label}: CPU per turn, replicas + PostgreSQL + nginx"), "µs", &Samples(vec![
                per_turn_us(cpu1.replicas + cpu1.postgres + cpu1.nginx, cpu0.replicas + cpu0.postgres + cpu0.nginx, sat.turns),
            ]), excludes)
            .note(format!(
                "replicas {:.0} µs, PostgreSQL (all its processes) {:.0} µs, nginx {:.0} µs per turn, over the saturated run",
                per_turn_us(cpu1.replicas, cpu0.replicas, sat.turns),
                per_turn_us(cpu1.postgres, cpu0.postgres, sat.turns),
                per_turn_us(cpu1.nginx, cpu0.nginx, sat.turns)
            )),
        );
        out.emit(
            record(GROUP, &format!("{label}: database statements per turn"), "statements", &Samples(vec![statements_per_turn]), excludes)
                .note(format!(
                    "sum of the replicas' swapbot_db_statements_total over the saturated run ÷ turns; each is one round trip \
                     (a statement's first use on a connection adds one prepare); of these ≈ {background:.2} per turn are \
                     background work (heartbeats, the usage sync: {idle_rate:.1} statements/s idle); \
                     server cross-check: {tx_per_turn:.2} transactions per turn (pg_stat_database xact_commit + xact_rollback, \
                     idle rate {idle_tx_rate:.1}/s subtracted)"
                )),
        );
        let paced_run = paced(&fake, &users, PACED_RATE, paced_secs, 1 + rounds).await?;
        let p99 = paced_run.latencies.pct(99.0);
        out.emit(
            record(GROUP, &format!("{label}, paced at {PACED_RATE:.0} turns/s: host-added latency p50 (p99 in note)"), "ms", &paced_run.latencies, excludes)
                .note(format!(
                    "p99 {p99:.1} ms; {} turns in {:.1} s, {} error answers; the model answers at once, so all of it is added by the \
                     path above",
                    paced_run.turns, paced_run.secs, paced_run.errors
                )),
        );
        drop(lb);
        drop(replicas);
        drop(fake);
        remove_dir(&work);
    }
    sandbox.shutdown().await;
    if let Some(to) = statement_log {
        std::fs::copy(pg.dir().join("log"), &to)?;
        eprintln!("  replicas: the server's statement log is in {}", to.display());
    }
    drop(admin);
    drop(pg);
    Ok(())
}
