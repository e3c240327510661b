//! The core end to end: the real plugins (built by `make build` into target/plugins) in the
//! real runtime, talking real HTTP to the OpenAI sandbox on 127.0.0.1.

use std::sync::Arc;

use swapbot::runtime::{Limits, PluginError, PluginRuntime};
use swapbot_sandbox::{Fault, FaultKind};

mod common;
use common::{Bot, KEY, bot, plugin_dir, repo, test_plugin};

async fn ask(bot: &Bot, backend: &str, user: i64, text: &str) -> Result<String, String> {
    bot.app.service.turn_on(backend, "test", user, text, None).await.reply
}

#[tokio::test]
async fn a_three_turn_dialog_keeps_context_on_both_backends() {
    for (backend, stream) in [("responses", "true"), ("responses", "false"), ("assistants", "true")] {
        let bot = bot(&[("RESPONSES_STREAM", stream)]).await;
        assert_eq!(ask(&bot, backend, 7, "My name is Ada.").await.unwrap(), "Nice to meet you, Ada.");
        assert_eq!(ask(&bot, backend, 7, "remember the door code is 4512").await.unwrap(), "OK, I will remember: the door code is 4512.");
        assert_eq!(ask(&bot, backend, 7, "What is my name?").await.unwrap(), "Your name is Ada.", "{backend} stream={stream}");
        // One session for the user, reused on every turn.
        match backend {
            "responses" => assert_eq!(bot.sandbox.conversation_count(), 1),
            _ => assert_eq!(bot.sandbox.thread_count(), 1),
        }
        let requests = bot.sandbox.requests();
        assert!(requests.iter().all(|r| r.header("authorization") == Some(&format!("Bearer {KEY}")[..])));
        bot.sandbox.shutdown().await;
    }
}

#[tokio::test]
async fn the_new_path_sends_one_response_per_turn_with_the_conversation() {
    let bot = bot(&[]).await;
    ask(&bot, "responses", 9, "hello").await.unwrap();
    ask(&bot, "responses", 9, "again").await.unwrap();
    let posts: Vec<_> = bot.sandbox.requests().into_iter().filter(|r| r.method == "POST" && r.path.ends_with("/responses")).collect();
    assert_eq!(posts.len(), 2);
    let conv = bot.app.service.id_map("user_conversations.json").get(9).unwrap();
    for post in &posts {
        assert_eq!(post.body["conversation"], conv.as_str());
        assert_eq!(post.body["stream"], true);
        assert!(post.body.get("previous_response_id").is_none() && post.body.get("assistant_id").is_none());
    }
    // Only this turn's message goes in `input`: the conversation holds the rest.
    assert_eq!(posts[1].body["input"].as_array().unwrap().len(), 1);
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn parallel_users_never_see_each_others_context() {
    let bot = Arc::new(bot(&[]).await);
    let mut tasks = vec![];
    for user in 1..=5i64 {
        let bot = bot.clone();
        tasks.push(tokio::spawn(async move {
            let backend = if user % 2 == 0 { "assistants" } else { "responses" };
            ask(&bot, backend, user, &format!("My name is User{user}.")).await.unwrap();
            ask(&bot, backend, user, "What is my name?").await.unwrap()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), format!("Your name is User{}.", i + 1));
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_once_and_a_lasting_one_gets_a_human_message() {
    let bot = bot(&[]).await;
    bot.sandbox.inject(Fault::on("/responses", FaultKind::RateLimited { retry_after_secs: 1 }).method("POST"));
    let outcome = bot.app.service.turn_on("responses", "test", 3, "echo: still here", None).await;
    assert_eq!(outcome.reply.unwrap(), "still here");
    assert_eq!(outcome.record.retries, 1);

    bot.sandbox.inject(Fault::on("/responses", FaultKind::Status { status: 500, code: None, message: "boom".into() }).method("POST").times(2));
    let outcome = bot.app.service.turn_on("responses", "test", 3, "echo: lost", None).await;
    let human = outcome.reply.unwrap_err();
    assert!(!human.contains('{') && !human.contains("500") && !human.contains("boom"), "{human}");
    let posts = bot.sandbox.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/responses")).count();
    assert_eq!(posts, 4, "two attempts per turn, never more");
    // The failed turn did not enter the history; the next turn works.
    assert_eq!(ask(&bot, "responses", 3, "echo: back").await.unwrap(), "back");
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_stream_cut_after_text_is_not_replayed() {
    let bot = bot(&[]).await;
    bot.sandbox.inject(Fault::on("/responses", FaultKind::CutStreamAfterDeltas(2)).method("POST"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = bot.app.service.turn_on("responses", "test", 4, "long answer 300", Some(tx)).await;
    assert!(outcome.reply.is_err());
    assert!(rx.try_recv().is_ok(), "text was shown before the cut");
    let posts = bot.sandbox.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/responses")).count();
    assert_eq!(posts, 1);
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_sunset_assistants_api_is_reported_as_gone() {
    let bot = bot(&[]).await;
    bot.sandbox.set_config(|c| c.assistants_gone = true);
    let outcome = bot.app.service.turn_on("assistants", "test", 5, "hello", None).await;
    assert!(outcome.reply.is_err());
    assert_eq!(outcome.record.error_kind.as_deref(), Some("api-gone"));
    let posts = bot.sandbox.requests().iter().filter(|r| r.path.ends_with("/threads")).count();
    assert_eq!(posts, 1, "a gone API is not retried");
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_user_moving_to_the_new_path_gets_the_history_replayed() {
    let bot = bot(&[]).await;
    ask(&bot, "assistants", 11, "My name is Grace.").await.unwrap();
    ask(&bot, "assistants", 11, "remember tea at five").await.unwrap();
    assert_eq!(ask(&bot, "responses", 11, "What is my name?").await.unwrap(), "Your name is Grace.");
    assert_eq!(
        ask(&bot, "responses", 11, "what did I ask you to remember?").await.unwrap(),
        "You asked me to remember: tea at five."
    );
    let conv = bot.app.service.id_map("user_conversations.json").get(11).unwrap();
    let items = bot.sandbox.conversation_items(&conv).unwrap();
    assert!(items.len() >= 4 + 2 * 2, "replayed 4 messages plus two turns, got {}", items.len());
    bot.sandbox.shutdown().await;
}

fn hostile_runtime() -> PluginRuntime {
    PluginRuntime::new(Limits {
        memory_bytes: 32 << 20,
        cpu_slice: std::time::Duration::from_millis(300),
        turn_timeout: std::time::Duration::from_secs(5),
        ..Limits::default()
    })
    .unwrap()
}

fn turn(text: &str) -> swapbot::runtime::Turn {
    swapbot::runtime::Turn {
        user_id: 1,
        session_id: None,
        cache_key: "k".into(),
        text: text.into(),
        context: vec![],
        settings: swapbot::runtime::Settings {
            model: "m".into(),
            instructions: "i".into(),
            poll_interval_ms: 10,
            deadline_ms: 1000,
            options: vec![("context".into(), "truncate".into())],
        },
    }
}

#[tokio::test]
async fn a_plugin_that_loops_allocates_or_panics_fails_only_its_turn() {
    let runtime = hostile_runtime();
    let plugin = runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap();
    let none = || Box::new(swapbot::runtime::effects::NoEffects);
    let looped = runtime.chat(&plugin, turn("loop"), none()).await;
    assert!(matches!(looped, Err(PluginError::CpuLimit(_))), "{looped:?}");
    let grown = runtime.chat(&plugin, turn("alloc"), none()).await;
    assert!(matches!(grown, Err(PluginError::MemoryLimit(32))), "{grown:?}");
    let panicked = runtime.chat(&plugin, turn("panic"), none()).await;
    assert!(matches!(panicked, Err(PluginError::Trap(_))), "{panicked:?}");
    // The same module keeps serving: each turn has a fresh store.
    let fine = runtime.chat(&plugin, turn("hello"), none()).await.unwrap().unwrap();
    assert_eq!(fine.text, "survived: hello");
}

/// A guest that keeps the CPU yields its thread at every epoch tick, so the other turns on a runtime worker
/// go on while it runs out its slice.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_guest_yields_its_thread_while_it_runs_out_its_slice() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runtime = hostile_runtime();
    let plugin = runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap();
    let beats = Arc::new(AtomicUsize::new(0));
    let heart = tokio::spawn({
        let beats = beats.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                beats.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::task::yield_now().await;
    let looped = runtime.chat(&plugin, turn("loop"), Box::new(swapbot::runtime::effects::NoEffects)).await;
    let beats_during = beats.load(Ordering::Relaxed);
    heart.abort();
    assert!(matches!(looped, Err(PluginError::CpuLimit(_))), "{looped:?}");
    // 300 ms of guest CPU with a yield every 10 ms tick: about 30 chances for a 5 ms heartbeat.
    assert!(beats_during >= 5, "the looping guest held the thread: {beats_during} beats during its slice");
}

#[tokio::test]
async fn the_cpu_slice_counts_guest_time_between_calls_of_the_contract() {
    // 300 ms slice: 4 × 150 ms of guest CPU each ended by a host call is obeyed; 1.5 s with
    // only WASI clock reads in it is not.
    let runtime = hostile_runtime();
    let plugin = runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap();
    let none = || Box::new(swapbot::runtime::effects::NoEffects);
    let pulsed = runtime.chat(&plugin, turn("pulse"), none()).await;
    assert_eq!(pulsed.unwrap().unwrap().text, "pulsed");
    let spun = runtime.chat(&plugin, turn("spin"), none()).await;
    assert!(matches!(spun, Err(PluginError::CpuLimit(_))), "{spun:?}");
}

#[tokio::test]
async fn a_turn_that_waits_forever_is_cut_by_the_turn_timeout() {
    struct RealSleep;
    #[async_trait::async_trait]
    impl swapbot::runtime::HostEffects for RealSleep {
        async fn http(&mut self, _: swapbot_openai::ApiRequest) -> Result<swapbot_openai::ApiResponse, swapbot_openai::TransportError> {
            unreachable!()
        }
        async fn http_stream(&mut self, _: swapbot_openai::ApiRequest) -> Result<swapbot::runtime::StreamStart, swapbot_openai::TransportError> {
            unreachable!()
        }
        fn push_text(&mut self, _: String) {}
        fn log(&mut self, _: swapbot::runtime::effects::LogLevel, _: String) {}
        fn now_ms(&mut self) -> u64 {
            0
        }
        async fn sleep_ms(&mut self, ms: u32) {
            tokio::time::sleep(std::time::Duration::from_millis(ms as u64)).await
        }
        async fn recent_history(&mut self) -> Vec<swapbot::runtime::HistoryMessage> {
            vec![]
        }
    }
    let runtime = PluginRuntime::new(Limits { turn_timeout: std::time::Duration::from_millis(500), ..Limits::default() }).unwrap();
    let plugin = runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap();
    let slept = runtime.chat(&plugin, turn("sleepy"), Box::new(RealSleep)).await;
    assert!(matches!(slept, Err(PluginError::Timeout(_))), "{slept:?}");
}

/// A guest whose quick calls of the contract keep restarting its CPU slice still meets the turn's timeout:
/// it yields at every epoch tick, and the timeout is checked when the call is pending.
#[test]
fn a_guest_that_calls_the_host_in_a_loop_is_cut_by_the_turn_timeout() {
    let workers = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let chatted = workers.block_on(async {
        let limits = Limits {
            cpu_slice: std::time::Duration::from_millis(300),
            turn_timeout: std::time::Duration::from_millis(500),
            ..Limits::default()
        };
        let runtime = Arc::new(PluginRuntime::new(limits).unwrap());
        let plugin = runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap();
        let chatter = tokio::spawn(async move {
            runtime.chat(&plugin, turn("chatter"), Box::new(swapbot::runtime::effects::NoEffects)).await
        });
        // Waited for from another task: a guest that never yields holds its worker, not this one.
        tokio::time::timeout(std::time::Duration::from_secs(30), chatter).await
    });
    // Such a guest would also hold the runtime's shutdown: leave its worker behind.
    workers.shutdown_background();
    let chatted = chatted.expect("the turn ran far past its timeout").unwrap();
    assert!(matches!(chatted, Err(PluginError::Timeout(_))), "{chatted:?}");
}

#[tokio::test]
async fn a_module_for_another_contract_version_is_refused_naming_both() {
    let runtime = hostile_runtime();
    let err = runtime.load(&test_plugin("future.wasm"), None).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PluginError::ContractMismatch { .. }), "{text}");
    assert!(text.contains("0.9.0") && text.contains("0.2.0") && text.contains("0.1.0"), "{text}");
    let garbage = runtime.load(b"\0asm garbage", None).await.unwrap_err();
    assert!(matches!(garbage, PluginError::Compile(_)), "{garbage}");
}

/// Records what crosses the boundary, for the 0.1.0 plugin's test.
#[derive(Default, Clone)]
struct Seen(Arc<std::sync::Mutex<(Vec<String>, Vec<String>)>>);

#[async_trait::async_trait]
impl swapbot::runtime::HostEffects for Seen {
    async fn http(&mut self, _: swapbot_openai::ApiRequest) -> Result<swapbot_openai::ApiResponse, swapbot_openai::TransportError> {
        Err(swapbot_openai::TransportError::Refused("no HTTP here".into()))
    }
    async fn http_stream(&mut self, _: swapbot_openai::ApiRequest) -> Result<swapbot::runtime::StreamStart, swapbot_openai::TransportError> {
        Err(swapbot_openai::TransportError::Refused("no HTTP here".into()))
    }
    fn push_text(&mut self, delta: String) {
        self.0.lock().unwrap().0.push(delta);
    }
    fn log(&mut self, _: swapbot::runtime::effects::LogLevel, message: String) {
        self.0.lock().unwrap().1.push(message);
    }
    fn now_ms(&mut self) -> u64 {
        3
    }
    async fn sleep_ms(&mut self, _: u32) {}
    async fn recent_history(&mut self) -> Vec<swapbot::runtime::HistoryMessage> {
        vec![swapbot::runtime::HistoryMessage { role: swapbot::runtime::Role::User, text: "earlier".into() }]
    }
}

#[tokio::test]
async fn a_plugin_built_for_contract_0_1_0_still_answers_beside_0_2_0() {
    let runtime = hostile_runtime();
    let legacy = runtime.load(&test_plugin("legacy-v0.1.wasm"), Some("legacy")).await.unwrap();
    assert_eq!(legacy.description.contract, "0.1.0");
    let current = runtime.load(&std::fs::read(plugin_dir().join("responses.wasm")).unwrap(), Some("responses")).await.unwrap();
    assert_eq!(current.description.contract, swapbot::runtime::CONTRACT_VERSION);

    let seen = Seen::default();
    let mut t = turn("hello");
    t.user_id = 5_000_000_001;
    let answer = runtime.chat(&legacy, t.clone(), Box::new(seen.clone())).await.unwrap().unwrap();
    // The turn went in (id, text, settings) and the host's imports answered (history, clock).
    assert_eq!(answer.text, "legacy 5000000001: hello (history 1, model m, 0 chunk(s))");
    assert_eq!(answer.turn_id, "resp_legacy_3");
    let usage = answer.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens), (11, 0, 7, 0));
    let (pushed, logs) = seen.0.lock().unwrap().clone();
    assert_eq!(pushed, [answer.text.clone()]);
    assert_eq!(logs, ["legacy plugin answering"]);
    // Errors convert too, with the session the turn created.
    let failed = runtime.chat(&legacy, turn("fail"), Box::new(seen.clone())).await.unwrap().unwrap_err();
    assert_eq!(failed.kind, swapbot::runtime::ErrorKind::RateLimited);
    assert_eq!((failed.retryable, failed.retry_after_ms, failed.session_id.as_deref()), (true, Some(1), Some("conv_legacy_new")));
}

#[tokio::test]
async fn a_plugin_under_the_wrong_file_name_is_refused() {
    let runtime = hostile_runtime();
    let bytes = std::fs::read(plugin_dir().join("assistants.wasm")).unwrap();
    let err = runtime.load(&bytes, Some("responses")).await.unwrap_err();
    assert!(matches!(err, PluginError::WrongName { .. }), "{err}");
}

#[tokio::test]
async fn ids_and_history_are_on_disk_as_soon_as_the_turn_ends() {
    let bot = bot(&[]).await;
    ask(&bot, "responses", 5_000_000_001, "My name is Linus.").await.unwrap();
    let data = bot.app.config.data_dir.clone();
    let map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("user_conversations.json")).unwrap()).unwrap();
    assert!(map["5000000001"].as_str().unwrap().starts_with("conv_"));
    let history = std::fs::read_to_string(data.join("history/5000000001.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 2);
    // Turn log line with both ids and the latency.
    let logs = common::turn_log(&bot);
    let line: serde_json::Value = serde_json::from_str(logs.lines().last().unwrap()).unwrap();
    assert!(line["conversation_id"].as_str().unwrap().starts_with("conv_"));
    assert!(line["response_id"].as_str().unwrap().starts_with("resp_"));
    assert!(line["latency_ms"].is_u64());
    assert!(!logs.contains(KEY));
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn retrieval_puts_the_right_chunk_into_the_prompt_on_both_backends() {
    let bot = bot(&[]).await;
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(docs.path().join("office.md"), "# Office\n\nThe office wifi password is swordfish-42. Guests use the lobby network.\n").unwrap();
    std::fs::write(docs.path().join("lunch.md"), "# Lunch\n\nLunch is served at noon in the canteen on the second floor.\n").unwrap();
    let kb = bot.app.kb.as_ref().unwrap();
    kb.ingest(docs.path(), swapbot_kb::IngestOptions { progress: Some(false), ..Default::default() }).await.unwrap();

    let outcome = bot.app.service.turn_on("responses", "test", 21, "What is the office wifi password?", None).await;
    assert!(outcome.reply.unwrap().contains("office.md"));
    assert!(outcome.record.kb_chunks >= 1);
    bot.app.service.turn_on("assistants", "test", 22, "What is the office wifi password?", None).await.reply.unwrap();

    let requests = bot.sandbox.requests();
    let response = requests.iter().find(|r| r.path.ends_with("/responses") && r.method == "POST").unwrap();
    // Responses: after the question, in the turn's input, so that the instructions (the start of
    // the prompt) stay the same every turn and the prompt cache can hold the conversation.
    let parts = response.body["input"][0]["content"].as_array().unwrap();
    assert_eq!(parts[0]["text"], "What is the office wifi password?");
    let context = parts[1]["text"].as_str().unwrap();
    assert!(context.contains("swordfish-42") && context.contains("(office.md)"), "{context}");
    assert!(!response.body["instructions"].as_str().unwrap().contains("swordfish-42"));
    // Assistants: the run's additional instructions, as the old bot sent it.
    let run = requests.iter().find(|r| r.path.ends_with("/runs") && r.method == "POST").unwrap();
    assert!(run.body["additional_instructions"].as_str().unwrap().contains("swordfish-42"));
    // The host's own history (what it replays) keeps only the question.
    let history = std::fs::read_to_string(bot.app.config.data_dir.join("history/21.jsonl")).unwrap();
    let question = history.lines().next().unwrap();
    assert!(question.contains("office wifi") && !question.contains("swordfish-42"), "{history}");
    let embeddings = requests.iter().filter(|r| r.path.ends_with("/embeddings")).count();
    assert!(embeddings >= 3, "ingest + one per turn");
    bot.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_case_recorded_from_a_real_run_replays_green_in_the_harness() {
    for stream in ["true", "false"] {
        let bot = bot(&[("RESPONSES_STREAM", stream)]).await;
        ask(&bot, "responses", 31, "My name is Ada.").await.unwrap();
        let case = bot.app.service.record_case("responses", 31, "What is my name?", "recorded").await.unwrap();
        assert_eq!(case["expect"]["ok"]["text"], "Your name is Ada.");
        let recorded = bot.sandbox.requests().len();
        let case = swapbot::dev::harness::Case::parse(&case.to_string()).unwrap();
        let plugin = bot.app.plugins.get("responses").unwrap();
        let result = swapbot::dev::harness::run_case(bot.app.plugins.runtime(), &plugin, case).await;
        assert!(result.passed(), "{:?}", result.failures);
        assert_eq!(bot.sandbox.requests().len(), recorded, "the harness replays without the network");
        bot.sandbox.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pooling_more_turns_than_slots_wait_for_a_slot_instead_of_failing() {
    let runtime = PluginRuntime::new(Limits { pooling: true, pool_size: 2, ..Limits::default() }).unwrap();
    let plugin = Arc::new(runtime.load(&test_plugin("hostile.wasm"), None).await.unwrap());
    let mut turns = vec![];
    for i in 0..12 {
        let (runtime, plugin) = (runtime.clone(), plugin.clone());
        turns.push(tokio::spawn(async move {
            runtime.chat(&plugin, turn(&format!("t{i}")), Box::new(swapbot::runtime::effects::NoEffects)).await
        }));
    }
    for (i, t) in turns.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap().unwrap().text, format!("survived: t{i}"));
    }
    // The pool is bounded for real: a memory hog still hits the per-instance limit.
    let grown = runtime.chat(&plugin, turn("alloc"), Box::new(swapbot::runtime::effects::NoEffects)).await;
    assert!(matches!(grown, Err(PluginError::MemoryLimit(_)) | Err(PluginError::Trap(_))), "{grown:?}");
}

#[tokio::test]
async fn the_harness_fails_a_case_the_plugin_does_not_follow() {
    let runtime = hostile_runtime();
    let plugin = runtime.load(&std::fs::read(plugin_dir().join("responses.wasm")).unwrap(), None).await.unwrap();
    let text = std::fs::read_to_string(repo().join("plugins/responses/cases/reuses_live_conversation.json")).unwrap();
    let case = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut v);
        swapbot::dev::harness::Case::parse(&v.to_string()).unwrap()
    };
    let good = swapbot::dev::harness::run_case(&runtime, &plugin, case(&|_| {})).await;
    assert!(good.passed(), "{:?}", good.failures);
    let extra = swapbot::dev::harness::run_case(&runtime, &plugin, case(&|v| {
        let last = v["exchanges"].as_array().unwrap().last().unwrap().clone();
        v["exchanges"].as_array_mut().unwrap().push(last);
    }))
    .await;
    assert!(extra.failures.iter().any(|f| f.contains("never requested")), "{:?}", extra.failures);
    let wrong = swapbot::dev::harness::run_case(&runtime, &plugin, case(&|v| v["exchanges"][0]["request"]["path"] = "/conversations/other".into())).await;
    assert!(wrong.failures.iter().any(|f| f.contains("does not match")), "{:?}", wrong.failures);
}
