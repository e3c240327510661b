//! Conversations that outlive the model's context window, and what they cost: the real plugins in
//! the real runtime against the sandbox with a small window, prompt caching and usage that counts
//! the whole context the model saw.

use swapbot_sandbox::{Fault, FaultKind, SandboxConfig};

mod common;
use common::Bot;

async fn bot(sandbox: SandboxConfig, extra: &[(&str, &str)]) -> Bot {
    let mut vars = vec![("OPENAI_INSTRUCTIONS", "Be brief.")];
    vars.extend_from_slice(extra);
    common::bot_with(sandbox, &vars).await
}

async fn ask(bot: &Bot, backend: &str, user: i64, text: &str) -> Result<String, String> {
    bot.app.service.turn_on(backend, "test", user, text, None).await.reply
}

fn fact(i: usize) -> String {
    format!("k{i:03}x")
}

/// Every turn is answered, and the model always sees the last three turns, on both backends and
/// with both ways of bounding the context; the stored conversation keeps growing past the window.
#[tokio::test]
async fn a_forty_turn_dialog_past_a_small_window_is_answered_every_turn() {
    let filler = "with some words to make the conversation grow faster than the window allows";
    let variants: [(&str, &str, Vec<(&str, &str)>); 4] = [
        ("responses streamed, truncate", "responses", vec![]),
        ("responses not streamed, truncate", "responses", vec![("RESPONSES_STREAM", "false")]),
        ("responses, compact", "responses", vec![("RESPONSES_CONTEXT", "compact"), ("RESPONSES_COMPACT_THRESHOLD", "1000")]),
        ("assistants, default truncation", "assistants", vec![]),
    ];
    for (name, backend, extra) in variants {
        // Compaction starts at 1000 tokens at the least (the API's minimum), so its window is larger.
        let tokens = if name.contains("compact") { 1500 } else { 500 };
        let window = SandboxConfig { context_window: Some(tokens), ..Default::default() };
        let bot = bot(window, &extra).await;
        for i in 1..=40 {
            let answer = ask(&bot, backend, 77, &format!("remember {} {filler}", fact(i))).await;
            let answer = answer.unwrap_or_else(|e| panic!("{name}: turn {i} failed: {e}"));
            assert!(answer.contains(&fact(i)), "{name}: turn {i}: {answer}");
            if i % 10 == 0 {
                let recall = ask(&bot, backend, 77, "What did I ask you to remember?").await.unwrap();
                for recent in [i, i - 1, i - 2] {
                    assert!(recall.contains(&fact(recent)), "{name}: after turn {i} the model lost {}: {recall}", fact(recent));
                }
                if i >= 20 && !name.contains("compact") {
                    // Responses drops the oldest items; Assistants' `auto` drops from the middle.
                    let dropped = (1..=i).filter(|k| !recall.contains(&fact(*k))).count();
                    assert!(dropped > 0, "{name}: the window is small, earlier turns drop out of view: {recall}");
                }
            }
        }
        // No user locked out: nothing but successful turns in the log.
        let report = swapbot::report::build_report(&bot.app.config.log_dir, &swapbot::report::ReportOptions::all()).unwrap();
        let b = report.backend(backend).unwrap();
        assert_eq!((b.turns, b.errors), (44, 0), "{name}");
        if backend == "responses" {
            let posts: Vec<_> = bot.sandbox.requests().into_iter().filter(|r| r.method == "POST" && r.path == "/v1/responses").collect();
            assert!(posts.iter().all(|r| r.body["truncation"] == "auto"), "{name}");
            assert!(posts.iter().all(|r| r.body["prompt_cache_key"] == bot.app.service.cache_key(77)), "{name}");
            if name.contains("compact") {
                assert!(posts.iter().all(|r| r.body["context_management"][0]["compact_threshold"] == 1000), "{name}");
            }
        }
        bot.sandbox.shutdown().await;
    }
}

fn stored_conversation(bot: &Bot, user: i64) -> String {
    let map = std::fs::read_to_string(bot.app.config.data_dir.join("user_conversations.json")).unwrap();
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    map[user.to_string()].as_str().unwrap().to_owned()
}

/// The turn log line says which of the user's chats a turn was in.
#[tokio::test]
async fn the_turn_log_names_the_chat_of_the_turn() {
    use swapbot::state::{GroupSessions, SessionKey};
    let bot = bot(SandboxConfig::default(), &[]).await;
    let private = bot.app.service.turn_on("responses", "test", 7, "hello", None).await;
    assert_eq!(private.record.session, "private");
    let group = SessionKey::for_chat(7, -100555, false, GroupSessions::PerUser);
    let outcome = bot.app.service.turn_in(7, group, "hello", None).await;
    assert!(outcome.reply.is_ok());
    assert_eq!(outcome.record.session, "group:-100555:7");
    let logs = common::turn_log(&bot);
    assert!(logs.contains(r#""session":"group:-100555:7""#), "{logs}");
    assert!(logs.contains(r#""session":"private""#), "{logs}");
    bot.sandbox.shutdown().await;
}

/// A message too long for the window even with truncation gets one clear sentence (after one try
/// in a new conversation, which is dropped), and the next turn works in the conversation the user
/// had, with the earlier context intact.
#[tokio::test]
async fn a_message_longer_than_the_window_is_refused_politely_and_the_next_turn_works() {
    let bot = bot(SandboxConfig { context_window: Some(300), ..Default::default() }, &[]).await;
    ask(&bot, "responses", 5, "remember the door code is 4512").await.unwrap();
    let conversation = stored_conversation(&bot, 5);
    let huge = "blah ".repeat(400);
    let before = bot.sandbox.requests().len();
    let refused = ask(&bot, "responses", 5, &huge).await.unwrap_err();
    assert!(refused.contains("too long") && refused.contains("shorter"), "{refused}");
    let posts = bot.sandbox.requests()[before..].iter().filter(|r| r.method == "POST" && r.path == "/v1/responses").count();
    assert_eq!(posts, 2, "one more try, in a new conversation, then the sentence");
    assert_eq!(stored_conversation(&bot, 5), conversation, "the user keeps the conversation they had");
    let recall = ask(&bot, "responses", 5, "What did I ask you to remember?").await.unwrap();
    assert!(recall.contains("the door code is 4512"), "{recall}");
    // The refused message is not in the host's history either.
    let history = std::fs::read_to_string(bot.app.config.data_dir.join("history/5.jsonl")).unwrap();
    assert!(!history.contains("blah blah"), "{history}");
    bot.sandbox.shutdown().await;
}

/// A server that ignores truncation answers `context_length_exceeded` for a conversation that has
/// outgrown it although the new message is short: the turn continues in a new conversation with
/// the recent history replayed, and the user is not locked out.
#[tokio::test]
async fn a_conversation_the_server_no_longer_takes_continues_in_a_new_one() {
    let bot = bot(SandboxConfig::default(), &[]).await;
    ask(&bot, "responses", 6, "My name is Grace.").await.unwrap();
    ask(&bot, "responses", 6, "remember the meeting is at noon").await.unwrap();
    let old = stored_conversation(&bot, 6);
    let overflow = FaultKind::Status {
        status: 400,
        code: Some("context_length_exceeded".into()),
        message: "Your input exceeds the context window of this model. Please adjust your input and try again.".into(),
    };
    bot.sandbox.inject(Fault::on("/responses", overflow).method("POST").times(1));
    let answer = ask(&bot, "responses", 6, "What is my name?").await.unwrap();
    assert_eq!(answer, "Your name is Grace.", "the recent history was replayed into the new conversation");
    let new = stored_conversation(&bot, 6);
    assert_ne!(new, old);
    let recall = ask(&bot, "responses", 6, "What did I ask you to remember?").await.unwrap();
    assert!(recall.contains("the meeting is at noon"), "{recall}");
    bot.sandbox.shutdown().await;
}

/// The report's sums are what the sandbox billed, per backend, and the cost is the price table's.
#[tokio::test]
async fn the_report_sums_equal_what_the_api_billed() {
    let bot = bot(SandboxConfig { cache_min_tokens: 16, cache_step_tokens: 8, ..Default::default() }, &[]).await;
    for i in 0..6 {
        ask(&bot, "responses", 900, &format!("remember {} for the report", fact(i))).await.unwrap();
        ask(&bot, "assistants", 901, &format!("remember {} for the report", fact(i))).await.unwrap();
    }
    let billed = bot.sandbox.usage_totals();
    let report = swapbot::report::build_report(&bot.app.config.log_dir, &swapbot::report::ReportOptions::all()).unwrap();
    let responses = report.backend("responses").unwrap();
    assert_eq!(responses.input_tokens, billed.responses.input_tokens);
    assert_eq!(responses.cached_input_tokens, billed.responses.cached_tokens);
    assert_eq!(responses.output_tokens, billed.responses.output_tokens);
    assert!(responses.cached_input_tokens > 0, "the conversation's prefix is cached from the second turn");
    let assistants = report.backend("assistants").unwrap();
    assert_eq!(assistants.input_tokens, billed.runs.input_tokens);
    assert_eq!(assistants.output_tokens, billed.runs.output_tokens);
    // The cost is the shipped price of gpt-4.1-mini.
    let p = swapbot::usage::PriceTable::shipped();
    let price = p.get("gpt-4.1-mini").unwrap();
    let expected = ((billed.responses.input_tokens - billed.responses.cached_tokens) as f64 * price.input
        + billed.responses.cached_tokens as f64 * price.cached_input
        + billed.responses.output_tokens as f64 * price.output)
        / 1e6;
    assert!((responses.cost_usd - expected).abs() < 1e-5, "{} vs {expected}", responses.cost_usd);
    // And the same numbers in /metrics.
    let metrics = bot.app.metrics.render();
    let line = format!("swapbot_tokens_total{{backend=\"responses\",kind=\"input\"}} {}", billed.responses.input_tokens);
    assert!(metrics.contains(&line), "{metrics}");
    bot.sandbox.shutdown().await;
}

/// 20 users in parallel: counters exact; a user over the daily budget gets one sentence and no
/// request is made; admins are exempt; counters survive a restart.
#[tokio::test]
async fn budgets_are_exact_under_parallel_turns_and_survive_a_restart() {
    let extra = [("BUDGET_USER_DAY", "1 tokens"), ("ADMIN_USER_IDS", "1000")];
    let bot = bot(SandboxConfig::default(), &extra).await;
    let service = bot.app.service.clone();
    let turns: Vec<_> = (1000..1020)
        .map(|user| {
            let service = service.clone();
            tokio::spawn(async move { service.turn_on("responses", "test", user, "hello there", None).await })
        })
        .collect();
    let mut total_in = 0;
    for t in turns {
        let outcome = t.await.unwrap();
        assert!(outcome.reply.is_ok(), "the first turn of each user is within the budget");
        total_in += outcome.record.input_tokens.unwrap();
    }
    let now = swapbot::calendar::unix_ms_now();
    let ledger = &service.accounting().ledger;
    assert_eq!(ledger.total(now).day.turns, 20);
    assert_eq!(ledger.total(now).day.tokens.input, total_in);
    assert_eq!(total_in, bot.sandbox.usage_totals().responses.input_tokens);

    // Over the budget: one polite sentence with the reset time, and nothing sent.
    let before = bot.sandbox.requests().len();
    let refused = service.turn_on("responses", "test", 1001, "hello again", None).await;
    let sentence = refused.reply.unwrap_err();
    assert!(sentence.contains("today's allowance") && sentence.contains("resets at") && sentence.contains("UTC"), "{sentence}");
    assert_eq!(bot.sandbox.requests().len(), before, "no request for a refused turn");
    assert_eq!(refused.record.error_kind.as_deref(), Some("over-budget"));
    assert_eq!(refused.record.outcome, "refused", "a budget refusal is not an error of the backend");
    // The admin is exempt.
    service.turn_on("responses", "test", 1000, "hello again", None).await.reply.unwrap();

    // /usage shows a user their own use; /usage top is for admins.
    let mine = swapbot::frontend::usage_command(&service, 1001, &[]);
    assert!(mine.contains("today: 1 answer,"), "{mine}");
    let top = swapbot::frontend::usage_command(&service, 1000, &["top"]);
    assert!(top.contains("1. 1000:"), "the admin made two turns: {top}");
    assert_eq!(swapbot::frontend::usage_command(&service, 1001, &["top"]), "Usage: /usage");
    // As typed in Telegram: in a group, even an admin's /usage top is not answered with other users' use.
    let rollout = swapbot::routing::rollout::Rollout::new(&bot.app.config.data_dir, bot.app.config.routing.clone(), service.clone(), [1000].into());
    let handler = swapbot::frontend::BotHandler { service: service.clone(), rollout, group_sessions: bot.app.config.group_sessions };
    let admin = |private: bool| swapbot_telegram::Sender { user_id: 1000, chat_id: if private { 1000 } else { -100777 }, private, username: None };
    use swapbot_telegram::TurnHandler;
    let in_group = handler.admin(&admin(false), "/usage top").await.unwrap();
    assert_eq!(in_group, swapbot::frontend::USAGE_TOP_IN_PRIVATE);
    let in_private = handler.admin(&admin(true), "/usage top").await.unwrap();
    assert!(in_private.contains("1. 1000:"), "{in_private}");
    assert!(handler.admin(&admin(false), "/usage").await.unwrap().contains("today: 2 answers"));

    // A restart reads the journal back.
    ledger.sync();
    let config = bot.app.config.clone();
    drop(service);
    let Bot { app, sandbox, _data } = bot;
    drop(app);
    let app = swapbot::app::build(config, None).await.unwrap();
    let after = app.service.accounting().ledger.total(swapbot::calendar::unix_ms_now());
    assert_eq!(after.day.turns, 21);
    assert!(app.service.turn_on("responses", "test", 1002, "hi", None).await.reply.is_err(), "still over budget");
    sandbox.shutdown().await;
}
