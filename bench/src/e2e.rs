//! Groups 3, 4 and the whole-bot part of 6: the bot child against the fake Bot API and the sandbox.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use swapbot_fake_telegram::FakeTelegram;
use swapbot_sandbox::{Sandbox, SandboxConfig};

use crate::bot;
use crate::common::{Out, Record, Samples, env_number, proc_cpu, record, remove_dir, root, rss_mib, scratch};

const QUESTION: &str = "Hello! Can you tell me something about the weather in Paris today?";

fn bot_env(sandbox_url: &str, work: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("OPENAI_BASE_URL".into(), sandbox_url.into()),
        ("OPENAI_API_KEY".into(), "sk-bench-key".into()),
        ("DATA_DIR".into(), work.join("data").display().to_string()),
        ("LOG_DIR".into(), work.join("logs").display().to_string()),
        ("PLUGIN_DIR".into(), root().join("target/plugins").display().to_string()),
        ("ASSISTANT_ID".into(), "asst_bench".into()),
        ("USE_OPENAI_RESPONSES".into(), "true".into()),
    ];
    for (k, v) in extra {
        env.retain(|(n, _)| n != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn is_text_call(method: &str) -> bool {
    matches!(method, "sendMessageDraft" | "sendMessage" | "editMessageText")
}

/// One message from `user`, waits for the bot's answer; returns (first visible text, final answer) after arrival.
async fn one_turn(fake: &FakeTelegram, user: i64) -> anyhow::Result<(Duration, Duration)> {
    let before = fake.messages_in(user).len();
    let t0 = Instant::now();
    fake.push_text(user, user, QUESTION, true);
    if !fake.wait_for(Duration::from_secs(60), |f| f.messages_in(user).len() > before).await {
        anyhow::bail!("no answer to user {user} within 60 s");
    }
    let calls = fake.calls_in(user);
    let shown: Vec<_> = calls.iter().filter(|c| c.at >= t0 && c.ok() && is_text_call(&c.method) && c.text().is_some()).collect();
    let first = shown.first().ok_or_else(|| anyhow::anyhow!("no text call"))?.at - t0;
    let last = shown.iter().filter(|c| c.method == "sendMessage").map(|c| c.at).max().unwrap_or(t0) - t0;
    Ok((first, last))
}

/// Group 3: time to first visible text, per delivery path.
pub async fn first_text(out: &Out, turns: usize) -> anyhow::Result<()> {
    const TTFT_MS: u64 = 300;
    const TOKEN_MS: u64 = 10;
    let sandbox = Sandbox::start(SandboxConfig {
        time_to_first_token: Duration::from_millis(TTFT_MS),
        token_interval: Duration::from_millis(TOKEN_MS),
        ..Default::default()
    })
    .await?;
    let excludes = format!(
        "nothing on the bot's side: Bot API long polling, the turn pipeline, the plugin, HTTP to the sandbox, Telegram calls \
         are all in; the model's time to first token is fixed at {TTFT_MS} ms and {TOKEN_MS} ms per token (sandbox)"
    );
    let modes: [(&str, Vec<(&str, &str)>); 4] = [
        ("streaming, private chat (drafts)", vec![("RESPONSES_STREAM", "true")]),
        ("not streamed (one request)", vec![("RESPONSES_STREAM", "false")]),
        ("background + poll (default 500 ms interval)", vec![("RESPONSES_STREAM", "false"), ("RESPONSES_BACKGROUND", "true")]),
        ("legacy assistants run polling (default 500 ms interval)", vec![("USE_OPENAI_RESPONSES", "false")]),
    ];
    for (label, extra) in modes {
        let work = scratch("ttft");
        let fake = FakeTelegram::start().await;
        let bot = bot::start(&fake, &bot_env(&sandbox.base_url(), &work, &extra), &work).await?;
        let users = [501_i64, 502];
        for u in users {
            one_turn(&fake, u).await?; // creates the session, not measured
        }
        let (mut first, mut total) = (Samples::new(), Samples::new());
        for k in 0..turns {
            let (f, t) = one_turn(&fake, users[k % users.len()]).await?;
            first.push_dur_ms(f);
            total.push_dur_ms(t);
        }
        let med = first.median();
        let mut r = record("3 time to first text", &format!("{label}: update → first visible text"), "ms", &first, &excludes)
            .note(format!("final answer sent at median {:.0} ms; bot: {}", total.median(), bot.program));
        if label.starts_with("streaming") {
            let added = Samples(first.0.iter().map(|v| v - TTFT_MS as f64).collect());
            out.emit(r);
            r = record(
                "3 time to first text",
                "streaming: host-added to first visible text (visible − model TTFT)",
                "ms",
                &added,
                "the model's time to first token; includes update delivery by long polling, the conversation check (GET) \
                 and the sendMessageDraft call, so it bounds the delay after the upstream's first delta from above",
            )
            .goal("≤ 20 ms after the upstream's first delta", added.median() <= 20.0);
        }
        let _ = med;
        out.emit(r);
        drop(bot);
        drop(fake);
        remove_dir(&work);
    }
    sandbox.shutdown().await;
    Ok(())
}

struct LoadResult {
    /// Bot API calls per turn, by method, in the order of their counts.
    calls_per_turn: String,
    turns: usize,
    secs: f64,
    latencies: Samples,
    cpu_per_turn_us: f64,
    errors: usize,
}

/// What a load run counts from its start: the bot's CPU and the Bot API calls made since.
struct LoadMeter {
    bot_pid: u32,
    calls: usize,
    cpu: Duration,
    start: Instant,
}

impl LoadMeter {
    fn start(fake: &FakeTelegram, bot_pid: u32) -> Self {
        LoadMeter { bot_pid, calls: fake.sent().len(), cpu: proc_cpu(bot_pid), start: Instant::now() }
    }

    /// The run's figures, `turns` pushed as `pushed`, each answered after `done_before` earlier answers.
    fn finish(self, fake: &FakeTelegram, pushed: &HashMap<i64, Vec<Instant>>, turns: usize, done_before: usize) -> LoadResult {
        let secs = self.start.elapsed().as_secs_f64();
        let cpu = proc_cpu(self.bot_pid) - self.cpu;
        let (latencies, errors) = latencies(fake, pushed, done_before);
        let calls_per_turn = calls_per_turn(&fake.sent()[self.calls..], turns);
        LoadResult { calls_per_turn, turns, secs, latencies, cpu_per_turn_us: cpu.as_secs_f64() * 1e6 / turns as f64, errors }
    }
}

/// Sends one message per user per round (all at once), each round waits for every answer.
async fn rounds(fake: &FakeTelegram, bot_pid: u32, users: &[i64], rounds: usize, done_before: usize) -> anyhow::Result<LoadResult> {
    let mut pushed: HashMap<i64, Vec<Instant>> = HashMap::new();
    let meter = LoadMeter::start(fake, bot_pid);
    for r in 0..rounds {
        for &u in users {
            pushed.entry(u).or_default().push(Instant::now());
            fake.push_text(u, u, QUESTION, true);
        }
        let want = done_before + r + 1;
        let mut waiting: Vec<i64> = users.to_vec();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !waiting.is_empty() {
            waiting.retain(|&u| fake.messages_in(u).len() < want);
            if Instant::now() > deadline {
                anyhow::bail!("{} users still waiting after 120 s", waiting.len());
            }
            if !waiting.is_empty() {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    }
    Ok(meter.finish(fake, &pushed, users.len() * rounds, done_before))
}

/// "sendMessage 1.00, sendChatAction 1.00, …": what the bot asked of the Bot API per turn.
fn calls_per_turn(calls: &[swapbot_fake_telegram::Call], turns: usize) -> String {
    let mut by_method: HashMap<&str, usize> = HashMap::new();
    for c in calls {
        *by_method.entry(c.method.as_str()).or_default() += 1;
    }
    let mut counts: Vec<_> = by_method.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts.iter().map(|(m, n)| format!("{m} {:.2}", *n as f64 / turns.max(1) as f64)).collect::<Vec<_>>().join(", ")
}

/// Each user's k-th message pushed since `skip` earlier answers, matched with the k-th answer
/// (`sendMessage`) arriving at the fake Bot API; and how many answers were apologies.
pub(crate) fn latencies(fake: &FakeTelegram, pushed: &HashMap<i64, Vec<Instant>>, skip: usize) -> (Samples, usize) {
    let mut answers: HashMap<i64, Vec<(Instant, bool)>> = HashMap::new();
    for c in fake.sent() {
        if c.method == "sendMessage" && c.ok() {
            if let Some(chat) = c.chat_id {
                let failed = c.text().is_some_and(|t| t.starts_with("Sorry"));
                answers.entry(chat).or_default().push((c.at, failed));
            }
        }
    }
    let mut s = Samples::new();
    let mut errors = 0;
    for (u, times) in pushed {
        let a = answers.get(u).map(|v| &v[skip.min(v.len())..]).unwrap_or(&[]);
        for (t, (at, failed)) in times.iter().zip(a) {
            s.push_dur_ms(*at - *t);
            errors += *failed as usize;
        }
    }
    (s, errors)
}

/// Users send at a fixed total rate (spread evenly), for `secs`.
async fn paced(fake: &FakeTelegram, bot_pid: u32, users: &[i64], rate: f64, secs: f64, done_before: usize) -> anyhow::Result<LoadResult> {
    let mut pushed: HashMap<i64, Vec<Instant>> = HashMap::new();
    let n = (rate * secs) as usize;
    let meter = LoadMeter::start(fake, bot_pid);
    let start = meter.start;
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let u = users[i % users.len()];
        pushed.entry(u).or_default().push(Instant::now());
        fake.push_text(u, u, QUESTION, true);
    }
    // Wait for the last answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (u, times) in &pushed {
        while fake.messages_in(*u).len() < done_before + times.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    Ok(meter.finish(fake, &pushed, n, done_before))
}

/// A freshly started bot's RSS once it stops moving (two readings 500 ms apart within 0.1 MiB,
/// at most 10 s): start-up's buffers are freed and purged a little after it starts polling.
async fn settled_rss(pid: u32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss_mib(Some(pid));
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_mib(Some(pid));
        if (now - last).abs() < 0.1 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Group 4 (and the whole-bot memory figures of group 6).
pub async fn load(out: &Out, quick: bool) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxConfig::default()).await?;
    const EXCLUDES: &str = "the model (zero delay). Latency is update arrival at the fake Bot API → the answer's sendMessage \
        arriving there, so it still contains the sandbox's and the fake Telegram's own work, which share the same 2 cores \
        with the bot; CPU per turn is the bot process only";
    let g = "4 throughput";
    let mut idle_rss = Samples::new();
    // SWAPBOT_BENCH_LOAD_ROUNDS=N: N saturated rounds at 100 users (and N/4 at 1000), long
    // enough to attach `perf` to the bot; the figures are then from that longer run.
    let rounds_100: usize = env_number("SWAPBOT_BENCH_LOAD_ROUNDS").unwrap_or(if quick { 3 } else { 15 });
    for (n, measured_rounds) in [(100usize, rounds_100), (1000, if quick { 1 } else { rounds_100.div_ceil(4).max(1) })] {
        let work = scratch("load");
        let fake = FakeTelegram::start().await;
        let bot = bot::start(&fake, &bot_env(&sandbox.base_url(), &work, &[]), &work).await?;
        idle_rss.push(settled_rss(bot.pid()).await);
        let users: Vec<i64> = (1..=n as i64).map(|u| 10_000 + u).collect();
        // Round 0: every user's first turn (creates a conversation and an id-map entry).
        let first = rounds(&fake, bot.pid(), &users, 1, 0).await?;
        out.emit(
            record(g, &format!("{n} users, first turn each (new conversation): p50 latency"), "ms", &first.latencies, EXCLUDES)
                .note(format!(
                    "{:.0} turns/s, p99 {:.1} ms, bot CPU {:.0} µs/turn, {} error answers",
                    first.turns as f64 / first.secs,
                    first.latencies.pct(99.0),
                    first.cpu_per_turn_us,
                    first.errors
                )),
        );
        let mut sat = rounds(&fake, bot.pid(), &users, measured_rounds, 1).await?;
        let tput = sat.turns as f64 / sat.secs;
        out.emit(
            record(g, &format!("{n} concurrent users, saturated: throughput"), "turns/s", &Samples(vec![tput]), EXCLUDES)
                // Issue 13: 1000 concurrent users at 2500 turns/s (100 users: the earlier 1000).
                .goal(if n >= 1000 { "≥ 2500 turns/s, 0 errors" } else { "≥ 1000 turns/s on 2 cores" }, if n >= 1000 { tput >= 2500.0 && sat.errors == 0 } else { tput >= 1000.0 })
                .note(format!(
                    "{} turns in {:.1} s ({} rounds: every user sends, next round when all are answered); {} error answers; bot: {}",
                    sat.turns, sat.secs, measured_rounds, sat.errors, bot.program
                )),
        );
        let p99 = sat.latencies.pct(99.0);
        let mut r = record(g, &format!("{n} concurrent users, saturated: latency p50 (p99 in note)"), "ms", &sat.latencies, EXCLUDES)
            .goal("p99 < 5 ms", p99 < 5.0)
            .note(format!("p99 {p99:.1} ms; all users write at once, so this includes queueing (Little: {n} ÷ throughput)"));
        r.spread.kind = "p5-p95".into();
        out.emit(r);
        let mut cpu = record(g, &format!("{n} concurrent users: bot CPU per turn"), "µs", &Samples(vec![sat.cpu_per_turn_us]), EXCLUDES);
        if n == 100 {
            // Issue 13: a quarter of the 1227 µs it was.
            cpu = cpu.goal("≤ 300 µs per streamed turn", sat.cpu_per_turn_us <= 300.0);
        }
        out.emit(cpu.note(format!(
            "{:.0}% of one core at {tput:.0} turns/s; Bot API calls per turn: {}",
            sat.cpu_per_turn_us * tput / 1e4,
            sat.calls_per_turn
        )));
        // Below saturation: a steady rate, latency without queueing behind a burst.
        let rate = (tput * 0.4).clamp(20.0, 200.0).round();
        let done = 1 + measured_rounds;
        let mut p = paced(&fake, bot.pid(), &users, rate, if quick { 3.0 } else { 8.0 }, done).await?;
        let p99 = p.latencies.pct(99.0);
        out.emit(
            record(g, &format!("{n} users, paced at {rate:.0} turns/s: latency p50 (p99 in note)"), "ms", &p.latencies, EXCLUDES)
                .goal("p99 < 5 ms", p99 < 5.0)
                .note(format!("p99 {p99:.1} ms; bot CPU {:.0} µs/turn; {} error answers; Bot API calls per turn: {}", p.cpu_per_turn_us, p.errors, p.calls_per_turn)),
        );
        if n == 1000 {
            out.emit(
                record("6 memory", "bot RSS after 1000 users talked (whole bot, after the load run)", "MiB", &Samples(vec![rss_mib(Some(bot.pid()))]), "the sandbox and the fake Telegram (other processes)")
                    .note(format!("{} turns served; ids, histories, per-user locks held; bot: {}", first.turns + sat.turns + p.turns, bot.program)),
            );
        }
        sat.latencies.0.clear();
        p.latencies.0.clear();
        drop(bot);
        drop(fake);
        remove_dir(&work);
    }
    {
        // The same paced load with streaming off: what the streamed path (SSE + drafts) adds.
        let work = scratch("load");
        let fake = FakeTelegram::start().await;
        let bot = bot::start(&fake, &bot_env(&sandbox.base_url(), &work, &[("RESPONSES_STREAM", "false")]), &work).await?;
        let users: Vec<i64> = (1..=100).map(|u| 20_000 + u).collect();
        rounds(&fake, bot.pid(), &users, 1, 0).await?;
        let rate = 200.0;
        let p = paced(&fake, bot.pid(), &users, rate, if quick { 3.0 } else { 8.0 }, 1).await?;
        let p99 = p.latencies.pct(99.0);
        out.emit(
            record(g, &format!("100 users, paced at {rate:.0} turns/s, not streamed: latency p50 (p99 in note)"), "ms", &p.latencies, EXCLUDES)
                .goal("p99 < 5 ms", p99 < 5.0)
                .note(format!("p99 {p99:.1} ms; bot CPU {:.0} µs/turn; RESPONSES_STREAM=false; {} error answers", p.cpu_per_turn_us, p.errors)),
        );
        drop(bot);
        drop(fake);
        remove_dir(&work);
    }
    out.emit(
        record("6 memory", "bot RSS idle (started, plugins loaded, no user yet)", "MiB", &idle_rss, "the sandbox and the fake Telegram (other processes)")
            .goal("≤ 30 MiB", idle_rss.median() <= 30.0)
            .note("every plugin compiled (a cold start) and loaded, Telegram polling"),
    );
    sandbox.shutdown().await;
    let _: Option<Record> = None;
    Ok(())
}
