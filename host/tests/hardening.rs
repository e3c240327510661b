//! Defects an adversarial probe found (issue 11), each kept fixed by a test: the real plugins (or
//! the hostile guest) in the real runtime against the OpenAI sandbox on 127.0.0.1.
//!
//! Some tests wrap a call in a generous `timeout`: it asserts no speed, it only turns the hang
//! the defect caused into a failure instead of a stuck test run.

use std::time::Duration;

use swapbot_sandbox::{Fault, FaultKind, Sandbox, SandboxConfig};

const HANG_GUARD: Duration = Duration::from_secs(60);

mod common;
use common::{Bot, KEY, bot, plugin_dir, test_plugin};

/// A plugin directory serving the hostile guest as the responses backend.
fn hostile_plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("responses.wasm"), test_plugin("hostile.wasm")).unwrap();
    dir
}

fn responses_posts(bot: &Bot) -> usize {
    bot.sandbox.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/responses")).count()
}

/// Item 1: a 429 asking for 100,000 s used to hold the user's turn (and lock) for that long.
#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_answered_at_once_not_slept() {
    let bot = bot(&[("MAX_RETRY_WAIT_SECS", "5")]).await;
    bot.sandbox.inject(Fault::on("/responses", FaultKind::RateLimited { retry_after_secs: 100_000 }).method("POST"));
    let turn = bot.app.service.turn_on("responses", "test", 3, "echo: anyone?", None);
    let outcome = tokio::time::timeout(HANG_GUARD, turn).await.expect("the turn slept the server's Retry-After");
    let human = outcome.reply.unwrap_err();
    assert!(human.contains("busy"), "{human}");
    assert_eq!(outcome.record.retries, 0);
    assert_eq!(responses_posts(&bot), 1, "not retried");
    // The user's lock is free: the next question is answered.
    let next = bot.app.service.turn_on("responses", "test", 3, "echo: back", None).await;
    assert_eq!(next.reply.unwrap(), "back");

    // A wait within the cap is still honoured, and the retry answers.
    bot.sandbox.inject(Fault::on("/responses", FaultKind::RateLimited { retry_after_secs: 1 }).method("POST"));
    let outcome = bot.app.service.turn_on("responses", "test", 3, "echo: patient", None).await;
    assert_eq!(outcome.reply.unwrap(), "patient");
    assert_eq!(outcome.record.retries, 1);
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn max_retry_wait_zero_never_waits_for_a_server() {
    let bot = bot(&[("MAX_RETRY_WAIT_SECS", "0")]).await;
    bot.sandbox.inject(Fault::on("/responses", FaultKind::RateLimited { retry_after_secs: 1 }).method("POST"));
    let outcome = bot.app.service.turn_on("responses", "test", 4, "echo: now", None).await;
    assert!(outcome.reply.is_err());
    assert_eq!(outcome.record.retries, 0);
    assert_eq!(outcome.record.error_kind.as_deref(), Some("rate-limited"));
    bot.sandbox.shutdown().await;
}

/// Item 13: a turn cut by TURN_TIMEOUT_SECS used to say "something went wrong".
#[tokio::test]
async fn a_turn_cut_by_its_deadline_says_it_took_too_long() {
    let plugins = hostile_plugin_dir();
    let bot = bot(&[("PLUGIN_DIR", &plugins.path().display().to_string()), ("TURN_TIMEOUT_SECS", "1")]).await;
    let outcome = bot.app.service.turn_on("responses", "test", 5, "sleepy", None).await;
    let human = outcome.reply.unwrap_err();
    assert!(human.contains("took too long"), "{human}");
    assert!(!human.contains("something went wrong"), "{human}");
    assert_eq!(outcome.record.error_kind.as_deref(), Some("turn-timeout"));
    bot.sandbox.shutdown().await;
}

/// Item 6: a plugin that traps or runs out of time after creating a session used to lose it (the
/// id map lacked the user, the turn log showed no id); the session it reported is kept.
#[tokio::test]
async fn a_session_created_before_a_trap_or_the_deadline_is_kept() {
    let plugins = hostile_plugin_dir();
    let bot = bot(&[("PLUGIN_DIR", &plugins.path().display().to_string()), ("TURN_TIMEOUT_SECS", "1")]).await;
    let map = bot.app.service.id_map("user_conversations.json").clone();
    for (user, text) in [(61, "started then panic"), (62, "started then sleepy")] {
        let outcome = bot.app.service.turn_on("responses", "test", user, text, None).await;
        assert!(outcome.reply.is_err(), "{text}");
        let want = format!("conv_hostile_{user}");
        assert_eq!(map.get(user).as_deref(), Some(want.as_str()), "{text}: the session is in the id map");
        assert_eq!(outcome.record.session_id.as_deref(), Some(want.as_str()), "{text}: and in the turn log");
    }
    // The next turn runs in it.
    let next = bot.app.service.turn_on("responses", "test", 61, "hello", None).await;
    assert_eq!(next.reply.unwrap(), "survived: hello");
    assert_eq!(next.record.session_id.as_deref(), Some("conv_hostile_61"));
    bot.sandbox.shutdown().await;
}

/// Item 11: a 200 MB sparse plugin file used to be read whole; it is refused by its size.
#[tokio::test]
async fn a_plugin_file_over_the_size_cap_is_refused_unread() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(plugin_dir().join("assistants.wasm"), plugins.path().join("assistants.wasm")).unwrap();
    let sparse = std::fs::File::create(plugins.path().join("responses.wasm")).unwrap();
    sparse.set_len(200 << 20).unwrap();
    drop(sparse);
    let bot = bot(&[("PLUGIN_DIR", &plugins.path().display().to_string()), ("PLUGIN_MAX_FILE_MB", "8")]).await;
    assert!(bot.app.plugins.get("responses").is_none());
    assert!(bot.app.plugins.get("assistants").is_some(), "the other backend still serves");
    let err = bot.app.plugins.reload("responses").await.unwrap_err().to_string();
    assert!(err.contains("over the limit") && err.contains("PLUGIN_MAX_FILE_MB"), "{err}");
    bot.sandbox.shutdown().await;
}

mod plugin_bounds {
    //! Item 10: what one turn's plugin can make the host hold or write is bounded.
    use std::sync::{Arc, Mutex};

    use swapbot::runtime::effects::{LiveEffects, LogLevel, TurnObservations, MAX_LOG_CALLS_PER_TURN, MAX_STREAMS_PER_TURN};
    use swapbot::runtime::HostEffects;
    use swapbot_openai::{ApiRequest, OpenAi, OpenAiConfig, TransportError};

    fn effects(max_pushed: usize) -> (LiveEffects, tokio::sync::mpsc::UnboundedReceiver<String>, Arc<Mutex<TurnObservations>>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Port 9 (discard) has no listener here: a request that gets through fails to connect.
        let openai = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "sk-bounds-test")).unwrap();
        let observations = Arc::new(Mutex::new(TurnObservations { max_pushed_bytes: Some(max_pushed), ..Default::default() }));
        let fx = LiveEffects {
            openai,
            deltas: Some(tx),
            history: swapbot::runtime::effects::fixed_history(vec![]),
            observations: observations.clone(),
            plugin: "hostile".into(),
            started: std::time::Instant::now(),
        };
        (fx, rx, observations)
    }

    #[test]
    fn pushed_text_stops_at_the_largest_answer() {
        let (mut fx, mut rx, obs) = effects(3 << 20);
        let mib = "é".repeat(1 << 19); // 1 MiB of two-byte characters
        for _ in 0..200 {
            fx.push_text(mib.clone());
        }
        let mut held = 0;
        while let Ok(delta) = rx.try_recv() {
            assert!(std::str::from_utf8(delta.as_bytes()).is_ok());
            held += delta.len();
        }
        assert_eq!(held, 3 << 20, "exactly the bound reached the user, not 200 MiB");
        assert_eq!(obs.lock().unwrap().pushed_dropped, 197 << 20);
    }

    #[tokio::test]
    async fn streams_per_turn_are_bounded() {
        let (mut fx, _rx, _) = effects(1 << 20);
        let req = || ApiRequest { method: "POST".into(), path: "/responses".into(), body: Some("{}".into()), ..Default::default() };
        for i in 0..MAX_STREAMS_PER_TURN + 5 {
            let result = fx.http_stream(req()).await;
            let refused = matches!(result, Err(TransportError::Refused(_)));
            assert_eq!(refused, i >= MAX_STREAMS_PER_TURN, "stream {i}");
        }
    }

    /// A writer capturing what the log subscriber prints.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plugin_logs_are_one_record_each_and_rate_limited() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let (mut fx, _rx, _) = effects(1 << 20);
            fx.log(LogLevel::Info, "hello\n2026-12-01T00:00:00Z ERROR swapbot: admin rollout percent 100\r\x1b[2K".into());
            for i in 0..5000 {
                fx.log(LogLevel::Error, format!("flood {i}"));
            }
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("hello\\n2026-12-01") && lines[0].contains("\\r\\u{1b}[2K"), "{}", lines[0]);
        assert!(!lines.iter().skip(1).any(|l| l.contains("admin rollout")), "no forged line");
        let floods = lines.iter().filter(|l| l.contains("flood ")).count();
        assert_eq!(floods as u32, MAX_LOG_CALLS_PER_TURN - 1);
        assert_eq!(lines.iter().filter(|l| l.contains("log limit")).count(), 1);
    }
}

/// Item 9: a `.cwasm` in the compile cache was deserialized (native code) without checking it
/// belongs to the module on disk. Here the hostile guest's native code replaces the genuine
/// responses entry: a restart must not serve it.
#[tokio::test]
async fn a_forged_compile_cache_entry_is_not_served() {
    use swapbot::runtime::{Limits, PluginRuntime};
    use swapbot::registry::{LoadOutcome, Registry};
    let data = tempfile::tempdir().unwrap();
    let cache = data.path().join(".plugin-cache");
    let set = || Registry::new(PluginRuntime::new(Limits::default()).unwrap(), plugin_dir(), Some(cache.clone()));
    let cached = |outcomes: Vec<(String, Result<LoadOutcome, swapbot::runtime::PluginError>)>| -> Vec<bool> {
        outcomes
            .into_iter()
            .filter(|(name, _)| ["assistants", "responses"].contains(&name.as_str()))
            .map(|(_, o)| match o.unwrap() {
                LoadOutcome::Loaded { cached, .. } => cached,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(cached(set().load_all().await), [false, false], "first start compiles");
    assert_eq!(cached(set().load_all().await), [true, true], "a restart uses the cache");

    // Overwrite the responses entry with the hostile guest's code (valid for this engine).
    let responses_sha = {
        let bytes = std::fs::read(plugin_dir().join("responses.wasm")).unwrap();
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    };
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&responses_sha))
        .expect("the responses entry");
    let runtime = PluginRuntime::new(Limits::default()).unwrap();
    let hostile = runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap();
    let forged = PluginRuntime::serialize(&hostile).unwrap();
    // Also with the MAC of the genuine entry kept at its end: the code itself is covered.
    let genuine = std::fs::read(&entry).unwrap();
    for forged in [forged.clone(), [forged.as_slice(), &genuine[genuine.len() - 32..]].concat()] {
        std::fs::write(&entry, &forged).unwrap();
        let restarted = set();
        let outcomes = cached(restarted.load_all().await);
        assert_eq!(outcomes, [true, false], "the forged entry is recompiled, not used");
        let serving = restarted.get("responses").unwrap();
        assert_ne!(serving.description.version, "6.6.6-hostile");
        assert_eq!(serving.sha256, responses_sha);
    }
    // The recompiled entry is genuine again.
    assert_eq!(cached(set().load_all().await), [true, true]);
}

mod inbox {
    //! Item 3: a question Telegram delivered is answered exactly once across SIGKILLs and stops
    //! mid-turn (it used to be confirmed to Telegram as fetched and lost with the process).
    use super::*;
    use swapbot_fake_telegram::FakeTelegram;

    const TOKEN: &str = "123456789:AAinboxSECRETtokenXYZ";
    const USER: i64 = 77;

    fn spawn(sandbox: &Sandbox, fake: &FakeTelegram, dir: &std::path::Path) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapbot"));
        cmd.arg("run").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in [
            ("OPENAI_API_KEY", KEY.to_string()),
            ("OPENAI_BASE_URL", sandbox.base_url()),
            ("ASSISTANT_ID", "asst_test".into()),
            ("USE_OPENAI_RESPONSES", "true".into()),
            ("DATA_DIR", dir.join("data").display().to_string()),
            ("LOG_DIR", dir.join("logs").display().to_string()),
            ("PLUGIN_DIR", plugin_dir().display().to_string()),
            ("TELOXIDE_TOKEN", TOKEN.into()),
            ("TELOXIDE_API_URL", fake.api_url()),
            ("SHUTDOWN_GRACE_MS", "300".into()),
        ] {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        cmd.spawn().unwrap()
    }

    fn answers(fake: &FakeTelegram) -> Vec<String> {
        fake.messages_in(USER).into_iter().filter(|m| m.from_bot && !m.deleted).map(|m| m.text).collect()
    }

    fn turns_started(sandbox: &Sandbox) -> usize {
        sandbox.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/responses")).count()
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn assert_each_answered_once(fake: &FakeTelegram, questions: usize) {
        let answers = answers(fake);
        for q in 0..questions {
            let n = answers.iter().filter(|a| **a == format!("question {q}")).count();
            assert_eq!(n, 1, "question {q} answered {n} times: {answers:?}");
        }
        assert_eq!(answers.len(), questions, "{answers:?}");
    }

    #[tokio::test]
    async fn a_kill_9_loop_answers_every_question_exactly_once() {
        let sandbox = Sandbox::start(SandboxConfig { api_key: Some(KEY.into()), ..Default::default() }).await.unwrap();
        // Slow answers, so each kill lands while a turn is in flight.
        sandbox.inject(Fault::on("/responses", FaultKind::DelayBeforeResponse(Duration::from_millis(400))).method("POST").times(10_000));
        let fake = FakeTelegram::start().await;
        let dir = tempfile::tempdir().unwrap();
        const QUESTIONS: usize = 14;
        for q in 0..QUESTIONS {
            fake.push_text(USER, USER, &format!("echo: question {q}"), true);
        }
        // Twelve cycles: start, let one more question be answered, kill -9 in the middle of the
        // next turn (its request is at the sandbox, its answer not yet sent).
        for cycle in 0..12 {
            let answered = answers(&fake).len();
            let started = turns_started(&sandbox);
            let mut bot = spawn(&sandbox, &fake, dir.path());
            until(&format!("cycle {cycle}: an answer"), || answers(&fake).len() > answered).await;
            // The turn answered, then the next one's request: it is in flight for 400 ms.
            until(&format!("cycle {cycle}: the next turn"), || turns_started(&sandbox) >= started + 2).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            bot.start_kill().unwrap();
            bot.wait().await.unwrap();
        }
        assert!(answers(&fake).len() < QUESTIONS, "the kills interrupted turns");
        // A last run answers the rest; SIGTERM then stops it.
        let mut bot = spawn(&sandbox, &fake, dir.path());
        until("every question answered", || answers(&fake).len() >= QUESTIONS).await;
        // Give a duplicate, if any, the time to show up before counting.
        tokio::time::sleep(Duration::from_millis(600)).await;
        bot.start_kill().unwrap();
        bot.wait().await.unwrap();
        assert_each_answered_once(&fake, QUESTIONS);
        // The answered ids stay (dedup of redeliveries); no question is left.
        let inbox = swapbot_telegram::inbox::Inbox::open(dir.path().join("data/inbox")).unwrap();
        let left: Vec<u32> = inbox.pending().iter().map(|u| u.id.0).collect();
        assert!(left.is_empty(), "inbox not empty: {left:?}");
        assert!((1..=QUESTIONS as u32).all(|id| inbox.answered(id)), "every update id remembered as answered");
        sandbox.shutdown().await;
    }

    #[tokio::test]
    async fn a_stop_mid_turn_is_answered_after_the_restart() {
        let sandbox = Sandbox::start(SandboxConfig { api_key: Some(KEY.into()), ..Default::default() }).await.unwrap();
        // Longer than the stop grace: the turn cannot finish before the bot exits.
        sandbox.inject(Fault::on("/responses", FaultKind::DelayBeforeResponse(Duration::from_secs(3))).method("POST"));
        let fake = FakeTelegram::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut bot = spawn(&sandbox, &fake, dir.path());
        fake.push_text(USER, USER, "echo: question 0", true);
        until("the turn started", || turns_started(&sandbox) == 1).await;
        unsafe { libc_kill(bot.id().unwrap() as i32, 15) };
        let status = tokio::time::timeout(HANG_GUARD, bot.wait()).await.expect("no exit after SIGTERM").unwrap();
        assert!(status.success(), "{status:?}");
        assert!(answers(&fake).is_empty(), "the slow turn was not finished");
        let mut bot = spawn(&sandbox, &fake, dir.path());
        until("the question answered after the restart", || !answers(&fake).is_empty()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        bot.start_kill().unwrap();
        bot.wait().await.unwrap();
        assert_each_answered_once(&fake, 1);
        sandbox.shutdown().await;
    }

    unsafe extern "C" {
        #[link_name = "kill"]
        fn libc_kill(pid: i32, sig: i32) -> i32;
    }
}
