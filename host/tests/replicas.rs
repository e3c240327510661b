//! Several replicas behind a load balancer, for real: a throwaway PostgreSQL cluster, three
//! `swapbot run` processes in webhook mode sharing it (each with its own DATA_DIR), a real nginx
//! in front of them, the fake Bot API delivering to nginx, and the OpenAI sandbox.
//!
//! Needs `initdb`/`pg_ctl` and `nginx` (CI installs the Debian packages `postgresql` and `nginx`).

#[path = "../pg/tests/common/mod.rs"]
mod pgcluster;
#[path = "../../tests/support/nginx.rs"]
mod nginx;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgcluster::TestCluster;
use swapbot_fake_telegram::FakeTelegram;
use swapbot_sandbox::{Fault, FaultKind, Sandbox, SandboxConfig};

const KEY: &str = "sk-test-replicas-abcdef123456";
const TOKEN: &str = "123456789:AAreplicasSECRETtokenXYZ";
const SECRET: &str = "replicas-webhook-SECRET-42";
const ADMIN: i64 = 9000;
/// Reached only when something is broken (a loaded 2-core machine included).
const WAIT: Duration = Duration::from_secs(120);
/// `INBOX_LEASE_SECS` of the replicas: what a dead replica's questions wait for at most.
const LEASE: Duration = Duration::from_secs(4);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
}

/// Waits (polling, with a deadline) until a TCP port accepts connections.
async fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} is not listening on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Replica {
    dir: PathBuf,
    plugin_dir: PathBuf,
    port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

struct Env {
    database_url: String,
    sandbox_url: String,
    api_url: String,
}

impl Env {
    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swapbot"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OPENAI_API_KEY", KEY)
            .env("OPENAI_BASE_URL", &self.sandbox_url)
            .env("DEFAULT_BACKEND", "responses")
            .env("CANARY_BACKEND", "")
            .env("DATA_DIR", dir.join("data"))
            .env("LOG_DIR", dir.join("logs"))
            .env("TELOXIDE_TOKEN", TOKEN)
            .env("TELOXIDE_API_URL", &self.api_url)
            .env("TELEGRAM_MODE", "webhook")
            .env("WEBHOOK_SECRET", SECRET)
            .env("DATABASE_URL", &self.database_url)
            .env("DATABASE_POOL_SIZE", "3")
            .env("DATABASE_LOCK_CONNECTIONS", "8")
            .env("ADMIN_USER_IDS", ADMIN.to_string())
            .env("INBOX_LEASE_SECS", LEASE.as_secs().to_string())
            .env("RUST_LOG", "info")
            .current_dir(dir);
        cmd
    }

    fn start(&self, replica: &mut Replica) {
        let log = std::fs::File::create(replica.dir.join(format!("stderr-{}.log", free_port()))).unwrap();
        let child = self
            .command(&replica.dir)
            .arg("run")
            .env("PLUGIN_DIR", &replica.plugin_dir)
            .env("WEBHOOK_LISTEN", format!("127.0.0.1:{}", replica.port))
            .env("METRICS_ADDR", format!("127.0.0.1:{}", replica.metrics_port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        replica.child = Some(child);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn metrics(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Every finished turn in a replica's turn log: (user, start, end).
fn turns_logged(dir: &Path) -> Vec<(i64, u64, u64)> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("turns") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let get = |k: &str| v.get(k).and_then(|x| x.as_u64());
            if let (Some(user), Some(t0), Some(tn)) = (v.get("user_id").and_then(|x| x.as_i64()), get("t0_unix_ms"), get("tn_unix_ms")) {
                out.push((user, t0, tn));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_answer_every_update_once() {
    let pg = TestCluster::start();
    let sandbox = Sandbox::start(SandboxConfig {
        api_key: Some(KEY.into()),
        // Turns long enough that a replica is killed with some in flight.
        time_to_first_token: Duration::from_millis(150),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    })
    .await
    .unwrap();
    // The first turns wait at the model: a replica killed meanwhile dies mid-turn.
    sandbox.inject(Fault::on("/responses", FaultKind::DelayBeforeResponse(Duration::from_millis(1500))).method("POST").times(15));
    let fake = FakeTelegram::start().await;
    let work = tempfile::tempdir().unwrap();
    let env = Env { database_url: pg.url(), sandbox_url: sandbox.base_url(), api_url: fake.api_url() };

    // The operator's steps, as the README gives them.
    let migrated = env.command(work.path()).args(["db", "migrate"]).output().unwrap();
    assert!(migrated.status.success(), "db migrate: {}", String::from_utf8_lossy(&migrated.stderr));

    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| {
            let dir = work.path().join(format!("replica{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            // The third replica serves one plugin less: `/rollout` must point it out.
            let plugin_dir = if i == 2 {
                let only = dir.join("plugins");
                std::fs::create_dir_all(&only).unwrap();
                for name in ["chat.wasm", "responses.wasm"] {
                    std::fs::copy(repo().join("target/plugins").join(name), only.join(name)).unwrap();
                }
                only
            } else {
                repo().join("target/plugins")
            };
            Replica { dir, plugin_dir, port: free_port(), metrics_port: free_port(), child: None }
        })
        .collect();
    for replica in replicas.iter_mut() {
        env.start(replica);
    }
    for (i, replica) in replicas.iter_mut().enumerate() {
        let (port, child) = (replica.port, replica.child.as_mut().unwrap());
        wait_listening(port, child, &format!("replica {i}")).await;
    }
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx_port = free_port();
    let mut nginx = nginx::Nginx::start(&nginx_dir, nginx_port, "/telegram", &replicas.iter().map(|r| r.port).collect::<Vec<_>>())
        .expect("nginx is not installed (apt-get install nginx)");
    wait_listening(nginx_port, &mut nginx.child, "nginx").await;

    let set = env
        .command(work.path())
        .args(["webhook", "set", &format!("http://127.0.0.1:{nginx_port}/telegram"), "--max-connections", "12"])
        .output()
        .unwrap();
    assert!(set.status.success(), "webhook set: {}", String::from_utf8_lossy(&set.stderr));
    let printed = String::from_utf8_lossy(&set.stdout).to_string() + &String::from_utf8_lossy(&set.stderr);
    assert!(!printed.contains(SECRET) && !printed.contains("AAreplicasSECRET"), "a secret was printed: {printed}");

    // 30 users, two questions each sent back to back: consecutive updates go to different
    // replicas, so one user's two turns race on two replicas unless the session lock holds.
    let users: Vec<i64> = (1001..=1030).collect();
    let mut questions: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for &u in &users[..15] {
        for k in 0..2 {
            let q = format!("question {k} from user {u}");
            fake.push_text(u, u, &q, true);
            questions.entry(u).or_default().push(q);
        }
    }
    // One replica dies without a word while it holds updates it took from the shared inbox (each
    // one accepted: Telegram got its 200), while the first answers are still held at the model (so
    // it dies mid-turn, not in the instant between sending an answer and acking it, which no Bot
    // API call can make atomic). It is not restarted until the others answered everything.
    let answered = |f: &FakeTelegram| users.iter().map(|&u| f.messages_in(u).iter().filter(|m| m.from_bot).count()).sum::<usize>();
    let admin = pg.admin().await;
    let replica1 = std::fs::read_to_string(replicas[1].dir.join("data/.replica-id")).unwrap().trim().to_owned();
    let deadline = Instant::now() + WAIT;
    let held: Vec<String> = loop {
        let rows = admin
            .query(
                "SELECT body->'message'->>'text' FROM inbox WHERE claimed_by = $1 AND lease_until > now()",
                &[&replica1],
            )
            .await
            .unwrap();
        if !rows.is_empty() {
            break rows.iter().map(|r| r.get(0)).collect();
        }
        assert!(Instant::now() < deadline, "replica 1 took no update from the inbox");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(answered(&fake), 0, "the model's delay is meant to hold every first answer");
    replicas[1].child.as_mut().unwrap().kill().unwrap();
    replicas[1].child.as_mut().unwrap().wait().unwrap();
    let killed_at = Instant::now();
    for &u in &users[15..] {
        for k in 0..2 {
            let q = format!("question {k} from user {u}");
            fake.push_text(u, u, &q, true);
            questions.entry(u).or_default().push(q);
        }
    }
    // What the dead replica held is answered by the others once its leases ran out.
    let all_answers = |f: &FakeTelegram| users.iter().flat_map(|&u| f.messages_in(u)).filter(|m| m.from_bot).map(|m| m.text).collect::<Vec<_>>();
    assert!(
        fake.wait_for(WAIT, |f| held.iter().all(|q| all_answers(f).iter().any(|a| a.contains(q.as_str())))).await,
        "the questions the killed replica held were not answered by the others: {held:?}"
    );
    let recovered = killed_at.elapsed();
    eprintln!("the killed replica held {} question(s); the others answered them {recovered:?} after the kill", held.len());
    assert!(recovered >= LEASE / 2, "taken before the lease ran out: {recovered:?}");
    assert!(recovered < LEASE + Duration::from_secs(20), "{recovered:?}: far more than the lease");
    let total: usize = questions.values().map(Vec::len).sum();
    assert!(
        fake.wait_for(WAIT, |f| answered(f) >= total).await,
        "answered {} of {total} questions without replica 1",
        answered(&fake)
    );
    // An update leaves the inbox when its turn ends, just after its answer went out: polled, so
    // the check does not race the last turns' acknowledgements.
    let drained_by = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows: i64 = admin.query_one("SELECT count(*) FROM inbox", &[]).await.unwrap().get(0);
        if rows == 0 || Instant::now() > drained_by {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rows, 0, "the inbox is empty once everything is answered");
    // Its supervisor restarts it, later: nothing is left for it, and it answers nothing again.
    env.start(&mut replicas[1]);
    let (port, child) = (replicas[1].port, replicas[1].child.as_mut().unwrap());
    wait_listening(port, child, "replica 1 restarted").await;

    // The rollout: changed through one replica, applied by every one.
    fake.push_text(ADMIN, ADMIN, "/rollout default chat", true);
    assert!(fake.wait_for(WAIT, |f| f.messages_in(ADMIN).iter().any(|m| m.from_bot)).await, "no answer to /rollout");
    let reply = fake.messages_in(ADMIN).iter().find(|m| m.from_bot).unwrap().text.clone();
    assert!(reply.contains("default set"), "{reply}");
    for (i, replica) in replicas.iter().enumerate() {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = metrics(replica.metrics_port).await;
            if text.contains("swapbot_routing_info{routing=\"default chat") {
                break;
            }
            assert!(Instant::now() < deadline, "replica {i} did not apply the rollout:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A replica serving other plugins shows in `/rollout`, whichever replica answers it.
    let deadline = Instant::now() + WAIT;
    loop {
        let before = fake.messages_in(ADMIN).iter().filter(|m| m.from_bot).count();
        fake.push_text(ADMIN, ADMIN, "/rollout", true);
        assert!(fake.wait_for(WAIT, |f| f.messages_in(ADMIN).iter().filter(|m| m.from_bot).count() > before).await);
        let status = fake.messages_in(ADMIN).iter().filter(|m| m.from_bot).next_back().unwrap().text.clone();
        if status.contains("serves other plugins") {
            assert!(status.contains("default chat"), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no replica pointed out the other plugin set: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every replica stops (a graceful stop lets turns in flight end): nothing more can be sent.
    for replica in replicas.iter_mut() {
        let child = replica.child.as_mut().unwrap();
        signal(child, "TERM");
        let _ = child.wait();
    }

    // Each question answered exactly once (the sandbox echoes it in its answer).
    for (u, qs) in &questions {
        let answers: Vec<String> = fake.messages_in(*u).iter().filter(|m| m.from_bot).map(|m| m.text.clone()).collect();
        for q in qs {
            let n = answers.iter().filter(|a| a.contains(q.as_str())).count();
            assert_eq!(n, 1, "user {u}: {q:?} answered {n} times; answers: {answers:?}");
        }
        assert_eq!(answers.len(), qs.len(), "user {u}: {answers:?}");
        for (answer, q) in answers.iter().zip(qs) {
            assert!(answer.contains(q.as_str()), "user {u}: answered out of order: {answers:?}");
        }
    }

    // No two turns of one user ran at once, on any replica.
    let mut by_user: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
    for replica in &replicas {
        for (user, t0, tn) in turns_logged(&replica.dir) {
            by_user.entry(user).or_default().push((t0, tn));
        }
    }
    for u in &users {
        let turns = by_user.get_mut(u).unwrap_or_else(|| panic!("no turn of user {u} logged"));
        turns.sort();
        for pair in turns.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "user {u}: two turns overlapped: {turns:?}");
        }
    }

    // The shared history: every exchange once, in order.
    for (u, qs) in &questions {
        let rows = admin
            .query(
                "SELECT role, text FROM history WHERE session_key = $1 ORDER BY exchange, pos",
                &[&format!("private:{u}")],
            )
            .await
            .unwrap();
        let texts: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(texts.len(), 2 * qs.len(), "user {u}: {texts:?}");
        for q in qs {
            let asked = texts.iter().filter(|(role, t)| role == "user" && t == q).count();
            assert_eq!(asked, 1, "user {u}: {q:?} stored {asked} times: {texts:?}");
        }
        let asked: Vec<&String> = texts.iter().filter(|(role, _)| role == "user").map(|(_, t)| t).collect();
        assert_eq!(asked, qs.iter().collect::<Vec<_>>(), "user {u}: turns ran out of order");
        for pair in texts.chunks(2) {
            assert_eq!((pair[0].0.as_str(), pair[1].0.as_str()), ("user", "assistant"), "user {u}: {texts:?}");
            assert!(pair[1].1.contains(&pair[0].1), "user {u}: an answer stored with another question: {texts:?}");
        }
    }
    // Every replica reported what it serves, under one id across its restart.
    let reported = admin.query("SELECT replica_id, plugins FROM replicas", &[]).await.unwrap();
    assert_eq!(reported.len(), 3, "{reported:?}");
    let mut sets: Vec<Vec<String>> = vec![];
    for row in &reported {
        let plugins: serde_json::Value = row.get(1);
        assert!(plugins.as_array().unwrap().iter().all(|p| p["sha256"].as_str().is_some_and(|h| h.len() == 64)), "{plugins}");
        sets.push(plugins.as_array().unwrap().iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect());
    }
    sets.sort();
    assert_eq!(sets, [vec!["assistants", "chat", "responses"], vec!["assistants", "chat", "responses"], vec!["chat", "responses"]]);
    let usage: i64 = admin.query_one("SELECT count(*) FROM usage", &[]).await.unwrap().get(0);
    assert!(usage >= total as i64, "usage rows {usage} for {total} turns");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_a_database_newer_than_itself_in_one_line() {
    let pg = TestCluster::start();
    let work = tempfile::tempdir().unwrap();
    let env = Env {
        database_url: pg.url().replace("swapbot@", "swapbot:db-PASSWORD-1234@"),
        sandbox_url: "http://127.0.0.1:9/v1".into(),
        api_url: "http://127.0.0.1:9".into(),
    };
    let migrated = env.command(work.path()).args(["db", "migrate"]).output().unwrap();
    assert!(migrated.status.success(), "db migrate: {}", String::from_utf8_lossy(&migrated.stderr));
    pg.admin().await.batch_execute("INSERT INTO schema_migrations (version) VALUES (999)").await.unwrap();

    let out = env.command(work.path()).arg("run").env("WEBHOOK_LISTEN", format!("127.0.0.1:{}", free_port())).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("999") && lines[0].contains("newer"), "{stderr}");
    assert!(!stderr.contains("db-PASSWORD-1234"), "{stderr}");

    // Unreachable: one line, no password either.
    let port = free_port();
    let gone = Env { database_url: format!("postgres://swapbot:db-PASSWORD-1234@127.0.0.1:{port}/postgres"), ..env };
    let out = gone.command(work.path()).arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("unreachable"), "{stderr}");
    assert!(!stderr.contains("db-PASSWORD-1234"), "{stderr}");
}
