//! The bot end to end: the real teloxide client against the fake Bot API on 127.0.0.1, the
//! real turn service with the real plugins, and the OpenAI sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swapbot::config::Config;
use swapbot::frontend::BotHandler;
use swapbot::routing::rollout::Rollout;
use swapbot::routing::bucket;
use swapbot_fake_telegram::{FakeFailure, FakeTelegram};
use swapbot_sandbox::{Fault, FaultKind, Sandbox, SandboxConfig};
use swapbot_telegram::{BotOptions, TurnHandler, run_polling_until};
use teloxide::Bot;

const KEY: &str = "sk-test-bot-abcdef123456";
const TOKEN: &str = "123456789:AAbotSECRETtokenXYZ";
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct World {
    fake: FakeTelegram,
    sandbox: Sandbox,
    app: swapbot::app::App,
    rollout: Arc<Rollout>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn vars(sandbox: &Sandbox, dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), KEY.into()),
        ("OPENAI_BASE_URL".into(), sandbox.base_url()),
        ("ASSISTANT_ID".into(), "asst_test".into()),
        ("DATA_DIR".into(), dir.join("data").display().to_string()),
        ("LOG_DIR".into(), dir.join("logs").display().to_string()),
        ("PLUGIN_DIR".into(), repo().join("target/plugins").display().to_string()),
        ("POLL_INTERVAL_MS".into(), "50".into()),
        ("TELOXIDE_TOKEN".into(), TOKEN.into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    vars
}

async fn world_in(dir: tempfile::TempDir, extra: &[(&str, &str)]) -> World {
    let sandbox = Sandbox::start(SandboxConfig { api_key: Some(KEY.into()), ..Default::default() }).await.unwrap();
    let vars = vars(&sandbox, dir.path(), extra);
    let get = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = Config::from_lookup(get).unwrap();
    let app = swapbot::app::build(config, None).await.unwrap();
    let rollout = Rollout::new(&app.config.data_dir, app.config.routing.clone(), app.service.clone(), app.config.admin_user_ids.clone());
    rollout.apply_file().unwrap();
    let fake = FakeTelegram::start().await;
    let bot = Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap());
    let handler: Arc<dyn TurnHandler> =
        Arc::new(BotHandler { service: app.service.clone(), rollout: rollout.clone(), group_sessions: app.config.group_sessions });
    let options = BotOptions {
        draft_interval: Duration::from_millis(20),
        edit_interval: Duration::from_millis(20),
        group_mode: app.config.group_mode,
        ..BotOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_polling_until(bot, handler, options, async move {
        let _ = stopped.await;
    }));
    World { fake, sandbox, app, rollout, stop: Some(stop), task: Some(task), _dir: dir }
}

async fn world(extra: &[(&str, &str)]) -> World {
    world_in(tempfile::tempdir().unwrap(), extra).await
}

impl World {
    /// Sends a private message and waits for the bot's n-th message in that chat.
    async fn say(&self, user: i64, text: &str) -> String {
        let before = self.bot_messages(user).len();
        self.fake.push_text(user, user, text, true);
        let arrived = self.fake.wait_for(WAIT, |f| bot_texts(f, user).len() > before).await;
        assert!(arrived, "no answer to {text:?} for user {user}");
        self.bot_messages(user).last().unwrap().clone()
    }

    /// Sends a message in a group and waits for the bot's answer to it (the message replying to it).
    /// Use with `RESPONSES_STREAM=false`: a streamed group answer is edited while it grows.
    async fn say_in(&self, user: i64, group: i64, text: &str) -> String {
        let asked = self.fake.push_text(user, group, text, false);
        let answered = |f: &FakeTelegram| f.messages_in(group).into_iter().find(|m| m.reply_to == Some(asked));
        assert!(self.fake.wait_for(WAIT, |f| answered(f).is_some()).await, "no answer to {text:?} in {group}");
        answered(&self.fake).unwrap().text
    }

    fn bot_messages(&self, chat: i64) -> Vec<String> {
        bot_texts(&self.fake, chat)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let stopped = tokio::time::timeout(Duration::from_secs(5), self.task.take().unwrap()).await;
        assert!(stopped.is_ok(), "the bot did not stop");
        assert!(self.fake.tokens_seen().iter().all(|t| t == TOKEN));
    }
}

fn bot_texts(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.messages_in(chat).into_iter().filter(|m| m.from_bot && !m.deleted).map(|m| m.text).collect()
}

#[tokio::test]
async fn a_three_turn_dialog_keeps_context_on_each_path() {
    // User 10 is a test user (new path), user 11 is outside a 0% rollout (legacy path).
    let w = world(&[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_ROLLOUT_PERCENT", "0"), ("RESPONSES_TEST_USERS", "10")]).await;
    // Tokens arrive over time, as from a real model, so the stream is visible.
    w.sandbox.set_config(|c| c.token_interval = Duration::from_millis(40));
    for user in [10, 11] {
        assert_eq!(w.say(user, "My name is Ada.").await, "Nice to meet you, Ada.");
        assert_eq!(w.say(user, "remember the code is 77").await, "OK, I will remember: the code is 77.");
        assert_eq!(w.say(user, "What is my name?").await, "Your name is Ada.");
        assert_eq!(w.bot_messages(user).len(), 3, "exactly one bot message per answer");
    }
    assert_eq!(w.sandbox.conversation_count(), 1);
    assert_eq!(w.sandbox.thread_count(), 1);
    // The private chat streamed drafts on the new path before the final message.
    assert!(w.fake.calls_of("sendMessageDraft").iter().any(|c| c.chat_id == Some(10)));
    w.stop().await;
}

async fn parallel_users(n: i64) {
    let w = world(&[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_ROLLOUT_PERCENT", "50")]).await;
    let w = Arc::new(w);
    let mut tasks = vec![];
    for user in 1000..1000 + n {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.say(user, &format!("My name is U{user}.")).await;
            w.say(user, "What is my name?").await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("Your name is U{}.", 1000 + i as i64));
    }
    let on_new = (1000..1000 + n).filter(|&u| bucket(u) < 50).count();
    assert_eq!(w.sandbox.conversation_count(), on_new, "one conversation per new-path user");
    assert_eq!(w.sandbox.thread_count(), n as usize - on_new, "one thread per legacy user");
    Arc::try_unwrap(w).ok().unwrap().stop().await;
}

#[tokio::test]
async fn five_users_in_parallel_never_cross_talk() {
    parallel_users(5).await;
}

#[tokio::test]
async fn fifty_users_in_parallel_never_cross_talk() {
    parallel_users(50).await;
}

#[tokio::test]
async fn migration_from_the_python_bots_files_keeps_legacy_users_and_starts_new_ones_clean() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // What the Python bot's json.dump(Dict[int, str]) wrote.
    let python = "{\"7\": \"thread_python_7\", \"8000000000\": \"thread_python_8\"}";
    std::fs::write(data.join("user_threads.json"), python).unwrap();
    let w = world_in(dir, &[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_ROLLOUT_PERCENT", "100")]).await;
    assert_eq!(std::fs::read_to_string(data.join("user_conversations.json")).unwrap(), "{}");
    assert_eq!(w.say(7, "echo: hi").await, "hi");
    assert_eq!(std::fs::read_to_string(data.join("user_threads.json")).unwrap(), python, "legacy map untouched");
    let conversations: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("user_conversations.json")).unwrap()).unwrap();
    assert!(conversations["7"].as_str().unwrap().starts_with("conv_"));
    w.stop().await;
}

#[tokio::test]
async fn a_user_moved_from_legacy_to_new_keeps_the_thread_of_the_talk() {
    let w = world(&[("ADMIN_USER_IDS", "1")]).await;
    assert_eq!(w.say(42, "My name is Grace.").await, "Nice to meet you, Grace.");
    assert_eq!(w.sandbox.thread_count(), 1);
    // The operator turns the new path on for this test user, without a restart.
    let answer = w.say(1, "/rollout add-test-user 42").await;
    assert!(answer.contains("42"), "{answer}");
    w.say(1, "/rollout on").await;
    assert_eq!(w.say(42, "What is my name?").await, "Your name is Grace.");
    assert_eq!(w.sandbox.conversation_count(), 1);
    let rollout: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(w.rollout.path()).unwrap()).unwrap();
    assert_eq!(rollout["use_openai_responses"], true);
    assert_eq!(rollout["updated_by"], "telegram:1");
    w.stop().await;
}

#[tokio::test]
async fn rollout_changes_move_exactly_the_expected_users_and_non_admins_get_no_hint() {
    let w = world(&[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_ROLLOUT_PERCENT", "0"), ("ADMIN_USER_IDS", "1")]).await;
    let users: Vec<i64> = (500..540).collect();
    // From the rollout file.
    std::fs::write(w.rollout.path(), r#"{"rollout_percent": 30}"#).unwrap();
    w.rollout.apply_file().unwrap();
    for &u in &users {
        let expected = if bucket(u) < 30 { "responses" } else { "assistants" };
        assert_eq!(w.app.service.routing().route(u).0, expected);
    }
    for &u in &users[..10] {
        w.say(u, "echo: x").await;
    }
    let expected_new = users[..10].iter().filter(|&&u| bucket(u) < 30).count();
    assert_eq!(w.sandbox.conversation_count(), expected_new);
    // From the admin command.
    w.say(1, "/rollout percent 60").await;
    for &u in &users {
        assert_eq!(w.app.service.routing().route(u).0 == "responses", bucket(u) < 60, "user {u}");
    }
    // A non-admin's /rollout is answered like any unknown command, and changes nothing.
    let unknown = w.say(2, "/frobnicate").await;
    let refused = w.say(2, "/rollout percent 0").await;
    assert_eq!(refused, unknown);
    assert!(!refused.to_lowercase().contains("rollout"));
    assert_eq!(w.app.service.routing().canary.as_ref().unwrap().percent, 60);
    w.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_a_lasting_one_gets_a_short_human_message() {
    let w = world(&[("USE_OPENAI_RESPONSES", "true")]).await;
    w.sandbox.inject(Fault::on("/responses", FaultKind::Status { status: 503, code: None, message: "overloaded".into() }).method("POST"));
    assert_eq!(w.say(5, "echo: once more").await, "once more");
    w.sandbox.inject(Fault::on("/responses", FaultKind::Status { status: 500, code: None, message: "boom".into() }).method("POST").times(2));
    let human = w.say(5, "echo: lost").await;
    assert!(human.starts_with("Sorry"), "{human}");
    for internal in ["{", "500", "boom", "server", "Error", KEY] {
        assert!(!human.contains(internal), "{human:?} shows {internal:?}");
    }
    // The failed turn did not enter the conversation.
    assert_eq!(w.say(5, "count").await, "This conversation has 1 earlier user message.");
    w.stop().await;
}

#[tokio::test]
async fn long_answers_are_split_and_non_text_gets_a_polite_answer() {
    let w = world(&[("USE_OPENAI_RESPONSES", "true")]).await;
    w.fake.push_text(6, 6, "long answer 9000", true);
    assert!(w.fake.wait_for(WAIT, |f| bot_texts(f, 6).len() >= 3).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parts = w.bot_messages(6);
    assert!(parts.iter().all(|p| p.encode_utf16().count() <= 4096));
    let joined: usize = parts.iter().map(|p| p.len()).sum();
    assert!(joined >= 8900, "{joined} chars delivered");
    w.fake.push_photo(7, 7, true);
    assert!(w.fake.wait_for(WAIT, |f| bot_texts(f, 7).len() == 1).await);
    assert_eq!(w.sandbox.requests().iter().filter(|r| r.body.to_string().contains("photo")).count(), 0);
    w.stop().await;
}

#[tokio::test]
async fn a_telegram_429_is_waited_out_without_losing_the_answer() {
    let w = world(&[("USE_OPENAI_RESPONSES", "false")]).await;
    w.fake.fail_next("sendMessage", 1, FakeFailure::TooManyRequests { retry_after: 1 });
    assert_eq!(w.say(8, "echo: patience").await, "patience");
    w.stop().await;
}

/// The real binary, killed with SIGKILL while many users write: every file still parses, and
/// every answer a user saw has its id and history on disk.
#[tokio::test]
async fn a_crash_mid_write_leaves_every_file_whole() {
    let sandbox = Sandbox::start(SandboxConfig { api_key: Some(KEY.into()), ..Default::default() }).await.unwrap();
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swapbot"));
    cmd.arg("run").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars(&sandbox, dir.path(), &[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_ROLLOUT_PERCENT", "50"), ("RUST_LOG", "info")]) {
        cmd.env(k, v);
    }
    cmd.env("TELOXIDE_API_URL", fake.api_url());
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    for round in 0..6 {
        for user in 1..=20i64 {
            fake.push_text(user, user, &format!("echo: r{round} u{user}"), true);
        }
    }
    // Let some turns finish, then kill it in the middle of the rest.
    fake.wait_for(WAIT, |f| (1..=20).map(|u| bot_texts(f, u).len()).sum::<usize>() >= 30).await;
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let data = dir.path().join("data");
    for file in ["user_threads.json", "user_conversations.json"] {
        if let Ok(text) = std::fs::read_to_string(data.join(file)) {
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{file} torn: {e}"));
        }
    }
    // Every user who saw an answer has a session id stored.
    let threads = std::fs::read_to_string(data.join("user_threads.json")).unwrap_or("{}".into());
    let convs = std::fs::read_to_string(data.join("user_conversations.json")).unwrap_or("{}".into());
    for user in 1..=20i64 {
        if !bot_texts(&fake, user).is_empty() {
            let key = format!("\"{user}\"");
            assert!(threads.contains(&key) || convs.contains(&key), "user {user} answered but no id on disk");
        }
    }
    // Nothing printed or logged holds a secret.
    let mut everything = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    for entry in std::fs::read_dir(dir.path().join("logs")).unwrap().flatten() {
        everything.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    assert!(everything.contains("ready"), "the bot never got ready: {everything}");
    for secret in [KEY, TOKEN, "AAbotSECRETtokenXYZ"] {
        assert!(!everything.contains(secret), "a secret leaked into the output or logs");
    }
    // A restart reads everything back.
    let service_vars = vars(&sandbox, dir.path(), &[]);
    let config = Config::from_lookup(|n| service_vars.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap();
    let app = swapbot::app::build(config, None).await.unwrap();
    for user in 1..=20i64 {
        let history = app.service.history().recent(user);
        assert_eq!(history.len() % 2, 0, "user {user}: history holds whole exchanges");
    }
}

#[tokio::test]
async fn sigterm_stops_the_bot_promptly_with_everything_on_disk() {
    let sandbox = Sandbox::start(SandboxConfig { api_key: Some(KEY.into()), ..Default::default() }).await.unwrap();
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapbot"));
    cmd.arg("run").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars(&sandbox, dir.path(), &[("USE_OPENAI_RESPONSES", "true")]) {
        cmd.env(k, v);
    }
    cmd.env("TELOXIDE_API_URL", fake.api_url()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    fake.push_text(3, 3, "echo: before stop", true);
    assert!(fake.wait_for(WAIT, |f| !bot_texts(f, 3).is_empty()).await);
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(pid, 15) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("did not stop after SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
    let convs = std::fs::read_to_string(dir.path().join("data/user_conversations.json")).unwrap();
    assert!(convs.contains("\"3\""));
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

// ---- Groups ----

const GROUP: i64 = -1_001_234_567_890;
const GROUP2: i64 = -1_002_222_333_444;
const AT_BOT: &str = "@swapbot_test_bot";

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[tokio::test]
async fn private_and_group_context_never_mix_in_either_direction_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A Python bot's legacy map: group turns must leave it byte for byte as it is.
    let python = "{\"8000000000\": \"thread_python_8\"}";
    std::fs::write(data.join("user_threads.json"), python).unwrap();
    // User 10 is on the new path, user 11 on the legacy one.
    let w = world_in(
        dir,
        &[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_ROLLOUT_PERCENT", "0"), ("RESPONSES_TEST_USERS", "10"), ("RESPONSES_STREAM", "false")],
    )
    .await;
    w.fake.set_chat(GROUP, swapbot_fake_telegram::ChatKind::Supergroup);
    for user in [10, 11] {
        assert_eq!(w.say(user, "My name is Ada.").await, "Nice to meet you, Ada.");
        // The private secret does not reach the group...
        assert_eq!(w.say_in(user, GROUP, &format!("{AT_BOT} What is my name?")).await, "I don't know your name yet.");
        assert_eq!(w.say_in(user, GROUP, &format!("{AT_BOT} My name is Bob.")).await, "Nice to meet you, Bob.");
        // ...nor the group's the private chat.
        assert_eq!(w.say(user, "What is my name?").await, "Your name is Ada.");
        assert_eq!(w.say_in(user, GROUP, &format!("{AT_BOT} What is my name?")).await, "Your name is Bob.");
        // The model gets the question without the mention.
        assert_eq!(w.say_in(user, GROUP, &format!("{AT_BOT} echo: just this")).await, "just this");
    }
    // One session per user per chat, on the user's side of the canary in both chats.
    assert_eq!(w.sandbox.conversation_count(), 2);
    assert_eq!(w.sandbox.thread_count(), 2);
    let convs = read_json(&data.join("user_conversations.json"));
    assert_eq!(convs.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["10"], "private map holds private chats only");
    let group_convs = read_json(&data.join("group_conversations.json"));
    assert_eq!(group_convs.as_object().unwrap().keys().collect::<Vec<_>>(), vec![&format!("{GROUP}:10")]);
    assert_ne!(group_convs[format!("{GROUP}:10")], convs["10"]);
    let threads = read_json(&data.join("user_threads.json"));
    assert!(threads["11"].as_str().unwrap().starts_with("thread_"));
    let group_threads = read_json(&data.join("group_threads.json"));
    assert_eq!(group_threads.as_object().unwrap().keys().collect::<Vec<_>>(), vec![&format!("{GROUP}:11")]);
    assert_eq!(threads["8000000000"], "thread_python_8", "the Python bot's entries stay");
    w.stop().await;
}

#[tokio::test]
async fn new_in_a_group_forgets_only_that_group_session() {
    let w = world(&[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_STREAM", "false")]).await;
    let user = 20;
    assert_eq!(w.say(user, "My name is Ada.").await, "Nice to meet you, Ada.");
    assert_eq!(w.say_in(user, GROUP, &format!("{AT_BOT} My name is Bob.")).await, "Nice to meet you, Bob.");
    assert_eq!(w.say_in(user, GROUP2, &format!("{AT_BOT} My name is Cy.")).await, "Nice to meet you, Cy.");
    assert_eq!(w.say_in(user, GROUP, "/new").await, swapbot_telegram::RESET_DONE_TEXT);
    assert_eq!(w.say_in(user, GROUP, &format!("{AT_BOT} What is my name?")).await, "I don't know your name yet.");
    assert_eq!(w.say(user, "What is my name?").await, "Your name is Ada.");
    assert_eq!(w.say_in(user, GROUP2, &format!("{AT_BOT} What is my name?")).await, "Your name is Cy.");
    // And /new in the private chat leaves the groups alone.
    assert_eq!(w.say(user, "/new").await, swapbot_telegram::RESET_DONE_TEXT);
    assert_eq!(w.say(user, "What is my name?").await, "I don't know your name yet.");
    assert_eq!(w.say_in(user, GROUP2, &format!("{AT_BOT} What is my name?")).await, "Your name is Cy.");
    w.stop().await;
}

#[tokio::test]
async fn per_group_sessions_are_shared_by_the_group_and_replies_to_the_bot_count_as_addressed() {
    let w = world(&[("USE_OPENAI_RESPONSES", "true"), ("RESPONSES_STREAM", "false"), ("GROUP_SESSIONS", "per-group")]).await;
    w.fake.set_chat(GROUP, swapbot_fake_telegram::ChatKind::Supergroup);
    assert_eq!(w.say_in(30, GROUP, &format!("{AT_BOT} My name is Team.")).await, "Nice to meet you, Team.");
    // Not addressed: no turn, no answer.
    w.fake.push_text(31, GROUP, "what is my name? (asking the room)", false);
    assert_eq!(w.say_in(31, GROUP, &format!("{AT_BOT} What is my name?")).await, "Your name is Team.");
    // A reply to the bot's message is addressed without a mention.
    let last = w.fake.messages_in(GROUP).last().unwrap().message_id;
    let asked = w.fake.push_group_text(31, GROUP, "count", None, Some(last));
    assert!(w.fake.wait_for(WAIT, |f| f.messages_in(GROUP).iter().any(|m| m.reply_to == Some(asked))).await);
    let answer = w.fake.messages_in(GROUP).into_iter().find(|m| m.reply_to == Some(asked)).unwrap().text;
    assert_eq!(answer, "This conversation has 2 earlier user messages.");
    assert_eq!(w.bot_messages(GROUP).len(), 3, "the unaddressed message got nothing");
    // 30's private chat is their own.
    assert_eq!(w.say(30, "What is my name?").await, "I don't know your name yet.");
    let group_convs = read_json(&w.app.config.data_dir.join("group_conversations.json"));
    assert_eq!(group_convs.as_object().unwrap().keys().collect::<Vec<_>>(), vec![&GROUP.to_string()]);
    w.stop().await;
}

/// How soon a group sees the first words of a streamed answer (printed; no time is asserted): the first
/// text is a paced message that is edited into the answer, and it shows before the answer is complete.
#[tokio::test]
async fn a_streamed_group_answer_shows_its_first_words_before_it_completes() {
    let w = world(&[("USE_OPENAI_RESPONSES", "true")]).await;
    // Tokens arrive over time, as from a real model.
    w.sandbox.set_config(|c| c.token_interval = Duration::from_millis(40));
    w.fake.set_chat(GROUP, swapbot_fake_telegram::ChatKind::Forum);
    let topic = w.fake.create_topic(GROUP, "Questions");
    let pushed = tokio::time::Instant::now();
    let asked = w.fake.push_group_text(40, GROUP, &format!("{AT_BOT} long answer 600"), Some(topic), None);
    let full = swapbot_sandbox::model::long_answer(600);
    let full = full.trim();
    let complete = |f: &FakeTelegram| f.messages_in(GROUP).iter().any(|m| m.reply_to == Some(asked) && m.text == full);
    assert!(w.fake.wait_for(WAIT, complete).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls: Vec<_> =
        w.fake.calls_in(GROUP).into_iter().filter(|c| c.ok() && (c.method == "sendMessage" || c.method == "editMessageText")).collect();
    let first = &calls[0];
    let last = calls.last().unwrap();
    let answer = w.fake.messages_in(GROUP).into_iter().find(|m| m.reply_to == Some(asked)).unwrap();
    assert_eq!(first.method, "sendMessage");
    assert_eq!(first.params["message_thread_id"], topic);
    assert!(first.text().unwrap().len() < answer.text.len(), "the first words came before the whole answer");
    assert!(answer.text.starts_with(first.text().unwrap()));
    assert_eq!(answer.thread_id, Some(topic));
    assert!(answer.edits >= 1);
    println!(
        "group_first_words_ms={} group_answer_complete_ms={} updates={}",
        (first.at - pushed.into_std()).as_millis(),
        (last.at - pushed.into_std()).as_millis(),
        calls.len()
    );
    w.stop().await;
}
