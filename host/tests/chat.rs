//! The Chat Completions backend end to end, as the other backends are tested: a 3-turn dialog
//! whose memory is the host's history, parallel users, and the faults of its API — over its own
//! section's transport (base URL, model, key) against the sandbox.

mod common;

use common::{Bot, KEY};
use swapbot_sandbox::{Fault, FaultKind};

/// A bot whose `chat` backend has its own section: its own key variable and model.
async fn chat_bot(stream: &str) -> Bot {
    let bot = common::bot(&[
        ("CHAT_KEY", KEY),
        ("BACKEND_CHAT_API_KEY_ENV", "CHAT_KEY"),
        ("BACKEND_CHAT_MODEL", "gpt-4o-mini"),
        ("BACKEND_CHAT_OPTIONS", &format!("stream={stream}")),
    ])
    .await;
    assert!(bot.app.plugins.get("chat").is_some(), "chat.wasm missing in target/plugins: run `make build`");
    bot
}

async fn ask(bot: &Bot, user: i64, text: &str) -> Result<String, String> {
    bot.app.service.turn_on("chat", "test", user, text, None).await.reply
}

fn chat_posts(bot: &Bot) -> Vec<swapbot_sandbox::RecordedRequest> {
    bot.sandbox.requests().into_iter().filter(|r| r.method == "POST" && r.path.ends_with("/chat/completions")).collect()
}

#[tokio::test]
async fn a_three_turn_dialog_keeps_context_through_the_hosts_history() {
    for stream in ["true", "false"] {
        let bot = chat_bot(stream).await;
        assert_eq!(ask(&bot, 7, "My name is Ada.").await.unwrap(), "Nice to meet you, Ada.");
        assert_eq!(ask(&bot, 7, "remember the door code is 4512").await.unwrap(), "OK, I will remember: the door code is 4512.");
        assert_eq!(ask(&bot, 7, "What is my name?").await.unwrap(), "Your name is Ada.", "stream={stream}");
        let posts = chat_posts(&bot);
        assert_eq!(posts.len(), 3);
        // Stateless: the third request carries the whole talk, oldest first, then the question.
        let messages = posts[2].body["messages"].as_array().unwrap();
        let texts: Vec<&str> = messages.iter().filter_map(|m| m["content"].as_str()).collect();
        assert_eq!(messages[0]["role"], "system");
        assert!(texts.contains(&"My name is Ada.") && texts.last() == Some(&"What is my name?"), "{texts:?}");
        assert_eq!(posts[2].body["model"], "gpt-4o-mini");
        assert_eq!(posts[2].body["stream"].as_bool().unwrap_or(false), stream == "true");
        // Its own key, and no session kept for it.
        assert!(posts.iter().all(|r| r.header("authorization") == Some(&format!("Bearer {KEY}")[..])));
        let outcome = bot.app.service.turn_on("chat", "test", 7, "What is my name?", None).await;
        assert_eq!(outcome.record.session_id, None);
        bot.sandbox.shutdown().await;
    }
}

#[tokio::test]
async fn parallel_users_keep_their_own_talk() {
    let bot = std::sync::Arc::new(chat_bot("true").await);
    let tasks: Vec<_> = (1..=20i64)
        .map(|user| {
            let bot = bot.clone();
            tokio::spawn(async move {
                ask(&bot, user, &format!("My name is User{user}.")).await.unwrap();
                ask(&bot, user, "What is my name?").await.unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), format!("Your name is User{}.", i + 1));
    }
}

#[tokio::test]
async fn its_faults_are_retried_once_or_told_to_the_user_in_one_sentence() {
    let bot = chat_bot("true").await;
    bot.sandbox.inject(Fault::on("/chat/completions", FaultKind::RateLimited { retry_after_secs: 1 }).method("POST"));
    let outcome = bot.app.service.turn_on("chat", "test", 3, "echo: still here", None).await;
    assert_eq!(outcome.reply.unwrap(), "still here");
    assert_eq!(outcome.record.retries, 1);

    bot.sandbox.inject(Fault::on("/chat/completions", FaultKind::Status { status: 500, code: None, message: "boom".into() }).method("POST").times(2));
    let before = chat_posts(&bot).len();
    let human = ask(&bot, 3, "echo: lost").await.unwrap_err();
    assert!(!human.contains("500") && !human.contains("boom"), "{human}");
    assert_eq!(chat_posts(&bot).len() - before, 2, "two attempts, never more");

    bot.sandbox.inject(Fault::on("/chat/completions", FaultKind::Quota).method("POST"));
    let outcome = bot.app.service.turn_on("chat", "test", 3, "echo: quota", None).await;
    assert_eq!(outcome.record.error_kind.as_deref(), Some("quota"));

    bot.sandbox.inject(Fault::on("/chat/completions", FaultKind::Malformed).method("POST"));
    let outcome = bot.app.service.turn_on("chat", "test", 3, "echo: garbage", None).await;
    // A garbage body on a stream is no stream at all: retried once (nothing was shown), then answered.
    assert_eq!(outcome.reply.as_deref(), Ok("garbage"), "{:?}", outcome.record);
    assert_eq!(outcome.record.retries, 1);

    // A stream cut after text was shown is not replayed (the user saw part of an answer).
    bot.sandbox.inject(Fault::on("/chat/completions", FaultKind::CutStreamAfterDeltas(2)).method("POST"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let before = chat_posts(&bot).len();
    let outcome = bot.app.service.turn_on("chat", "test", 3, "long answer 300", Some(tx)).await;
    assert_eq!(outcome.record.error_kind.as_deref(), Some("stream-cut"));
    assert!(rx.try_recv().is_ok(), "text was shown before the cut");
    assert_eq!(chat_posts(&bot).len() - before, 1);

    // Failed turns left no trace in the history: the next turn works on the talk as it was.
    assert_eq!(ask(&bot, 3, "echo: back").await.unwrap(), "back");
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_backend_routed_to_without_its_key_stops_start_up_naming_the_variable() {
    let sandbox = swapbot_sandbox::Sandbox::start(Default::default()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let vars = [
        ("OPENAI_API_KEY", KEY.to_string()),
        ("OPENAI_BASE_URL", sandbox.base_url()),
        ("DATA_DIR", data.path().join("d").display().to_string()),
        ("LOG_DIR", data.path().join("l").display().to_string()),
        ("PLUGIN_DIR", common::plugin_dir().display().to_string()),
        ("DEFAULT_BACKEND", "chat".into()),
        ("BACKEND_CHAT_API_KEY_ENV", "GROQ_API_KEY".into()),
    ];
    let config = swapbot::config::Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
    let err = swapbot::app::build(config, None).await.err().expect("start-up refused").to_string();
    assert!(err.contains("backend chat") && err.contains("GROQ_API_KEY"), "{err}");
    assert!(!err.contains(KEY), "{err}");
}

#[tokio::test]
async fn each_backend_has_its_own_server_and_key_and_no_other_backend_sees_it() {
    const CHAT_KEY: &str = "sk-local-chat-server-key-42";
    let local = swapbot_sandbox::Sandbox::start(swapbot_sandbox::SandboxConfig { api_key: Some(CHAT_KEY.into()), ..Default::default() })
        .await
        .unwrap();
    let url = local.base_url();
    let bot = common::bot(&[("LOCAL_LLM_KEY", CHAT_KEY), ("BACKEND_CHAT_BASE_URL", &url), ("BACKEND_CHAT_API_KEY_ENV", "LOCAL_LLM_KEY")]).await;
    assert_eq!(ask(&bot, 5, "My name is Lin.").await.unwrap(), "Nice to meet you, Lin.");
    bot.app.service.turn_on("responses", "test", 5, "My name is Lin.", None).await.reply.unwrap();
    // chat went to its own server with its own key; responses to OpenAI's (the main sandbox).
    let local_requests = local.requests();
    assert!(!local_requests.is_empty());
    assert!(local_requests.iter().all(|r| r.path.ends_with("/chat/completions") && r.header("authorization") == Some(&format!("Bearer {CHAT_KEY}")[..])));
    let main = bot.sandbox.requests();
    assert!(main.iter().all(|r| !r.path.ends_with("/chat/completions")));
    assert!(main.iter().all(|r| r.header("authorization") != Some(&format!("Bearer {CHAT_KEY}")[..])));
    // The log never holds either key.
    let log = common::turn_log(&bot);
    assert!(!log.contains(CHAT_KEY) && !log.contains(KEY));
    local.shutdown().await;
}
