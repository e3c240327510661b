//! The real teloxide client (`run_polling_until`) against the fake Bot API on 127.0.0.1, with a scripted
//! TurnHandler. No timing assertions beyond lower bounds the pacer guarantees and generous upper bounds for
//! "it arrives at all".

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swapbot_fake_telegram::{FakeFailure, FakeTelegram};
use swapbot_telegram::{
    BotOptions, GroupMode, HELP_TEXT, NON_TEXT_TEXT, REFUSAL_TEXT, RESET_DONE_TEXT, Sender, TurnHandler, TurnResult,
    run_polling_until,
    text::{TELEGRAM_LIMIT, utf16_len},
};
use teloxide::Bot;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

const TOKEN: &str = "5550001234:AAHfakeTokenSecretPart_abcdefgh";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Script {
    deltas: Vec<String>,
    delta_gap: Duration,
    before: Duration,
    result: TurnResult,
}

fn answer(text: &str) -> Script {
    Script { deltas: vec![], delta_gap: Duration::ZERO, before: Duration::ZERO, result: TurnResult::Answer(text.into()) }
}

fn streamed(parts: &[&str], gap_ms: u64) -> Script {
    Script {
        deltas: parts.iter().map(|s| s.to_string()).collect(),
        delta_gap: Duration::from_millis(gap_ms),
        before: Duration::ZERO,
        result: TurnResult::Answer(parts.concat()),
    }
}

type ScriptFn = dyn Fn(&Sender, &str) -> Script + Send + Sync;

struct Scripted {
    script: Box<ScriptFn>,
    turns: Mutex<Vec<(Sender, String)>>,
    finished: Mutex<Vec<String>>,
    /// (user, chat) of every /new.
    resets: Mutex<Vec<(i64, i64)>>,
}

#[async_trait::async_trait]
impl TurnHandler for Scripted {
    async fn turn(&self, who: Sender, text: String, deltas: UnboundedSender<String>) -> TurnResult {
        self.turns.lock().unwrap().push((who.clone(), text.clone()));
        let s = (self.script)(&who, &text);
        tokio::time::sleep(s.before).await;
        for d in s.deltas {
            let _ = deltas.send(d);
            tokio::time::sleep(s.delta_gap).await;
        }
        self.finished.lock().unwrap().push(text);
        s.result
    }
    async fn reset(&self, who: Sender) -> anyhow::Result<()> {
        self.resets.lock().unwrap().push((who.user_id, who.chat_id));
        Ok(())
    }
    async fn admin(&self, _who: &Sender, command: &str) -> Option<String> {
        command.starts_with("/rollout").then(|| format!("admin got {command}"))
    }
}

struct Harness {
    fake: FakeTelegram,
    handler: Arc<Scripted>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    async fn start(options: BotOptions, script: impl Fn(&Sender, &str) -> Script + Send + Sync + 'static) -> Harness {
        let fake = FakeTelegram::start().await;
        Self::start_with(fake, options, script)
    }

    fn start_with(
        fake: FakeTelegram,
        options: BotOptions,
        script: impl Fn(&Sender, &str) -> Script + Send + Sync + 'static,
    ) -> Harness {
        let handler = Arc::new(Scripted {
            script: Box::new(script),
            turns: Default::default(),
            finished: Default::default(),
            resets: Default::default(),
        });
        let bot = Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let h: Arc<dyn TurnHandler> = handler.clone();
        let task = tokio::spawn(run_polling_until(bot, h, options, async move {
            let _ = stopped.await;
        }));
        Harness { fake, handler, stop: Some(stop), task: Some(task) }
    }

    /// Stops the bot; asserts it returns within 3 s.
    async fn stop(self) -> FakeTelegram {
        let Harness { fake, stop, task, .. } = self;
        let _ = stop.unwrap().send(());
        let r = tokio::time::timeout(Duration::from_secs(3), task.unwrap()).await;
        assert!(r.is_ok(), "run_polling did not stop within 3 s");
        r.unwrap().unwrap().unwrap();
        // Every request used the configured token.
        assert_eq!(fake.tokens_seen(), vec![TOKEN.to_string()]);
        fake
    }

    fn finished(&self) -> usize {
        self.handler.finished.lock().unwrap().len()
    }

    fn texts(&self, chat: i64) -> Vec<String> {
        self.fake.messages_in(chat).into_iter().map(|m| m.text).collect()
    }
}

fn fast() -> BotOptions {
    BotOptions {
        allowed_user_ids: None,
        draft_interval: Duration::from_millis(50),
        edit_interval: Duration::from_secs(1),
        typing_interval: Duration::from_secs(4),
        group_mode: GroupMode::Mention,
        ..BotOptions::default()
    }
}

const USER: i64 = 5_000_000_001; // > 2^32, like real Telegram ids
const GROUP: i64 = -1_001_234_567_890;

/// Lets any stray extra message show up before we count.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn private_chat_gets_drafts_then_exactly_one_final_message() {
    let h = Harness::start(fast(), |_, _| streamed(&["Hello", ", world!", " How", " are", " you?"], 150)).await;
    h.fake.push_text(USER, USER, "hi there", true);
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    settle().await;
    assert_eq!(h.texts(USER), vec!["Hello, world! How are you?"]);

    let calls = h.fake.calls_in(USER);
    let drafts: Vec<_> = calls.iter().filter(|c| c.method == "sendMessageDraft").collect();
    assert!(drafts.len() >= 2, "expected several draft updates, got {}", drafts.len());
    let ids: HashSet<i64> = drafts.iter().map(|c| c.params["draft_id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one draft animated in place");
    assert!(!ids.contains(&0));
    for d in &drafts {
        assert!("Hello, world! How are you?".starts_with(d.text().unwrap()), "draft {:?}", d.text());
    }
    // Drafts come before the final message, and there is exactly one sendMessage.
    let first_send = calls.iter().position(|c| c.method == "sendMessage").unwrap();
    let last_draft = calls.iter().rposition(|c| c.method == "sendMessageDraft").unwrap();
    assert!(last_draft < first_send);
    assert_eq!(calls.iter().filter(|c| c.method == "sendMessage").count(), 1);
    assert!(calls.iter().any(|c| c.method == "sendChatAction" && c.params["action"] == "typing"));
    assert!(h.fake.drafts_in(USER).is_empty(), "the final message clears the draft");
    // HTML parse mode on the final message.
    assert_eq!(h.fake.messages_in(USER)[0].parse_mode.as_deref(), Some("HTML"));
    // The handler saw who wrote.
    let (who, text) = h.handler.turns.lock().unwrap()[0].clone();
    assert_eq!((who.user_id, who.chat_id, who.private, text.as_str()), (USER, USER, true, "hi there"));
    assert_eq!(who.username.as_deref(), Some("user5000000001"));
    h.stop().await;
}

/// The methods the bot called about `chat` between two of its final messages (`sendMessage`), one list per
/// answer.
fn calls_per_answer(fake: &FakeTelegram, chat: i64) -> Vec<Vec<String>> {
    let mut answers = vec![vec![]];
    for c in fake.calls_in(chat) {
        let last = answers.last_mut().unwrap();
        last.push(c.method.clone());
        if c.method == "sendMessage" {
            answers.push(vec![]);
        }
    }
    answers.pop();
    answers
}

/// Turns that end while a "typing…" action (or a draft) is still in flight let it land before the answer,
/// and keep its connection: an aborted request closes its connection, so every such turn used to open a new
/// one (under load two turns in three; a TLS handshake each against the real Bot API), and a late action
/// showed "typing…" under the answer.
#[tokio::test]
async fn a_typing_action_or_draft_in_flight_lands_before_the_answer_on_a_kept_connection() {
    const TURNS: usize = 4;
    // A grace far above the fake's 100 ms pause, so that a loaded machine cannot make the call miss it.
    let options = BotOptions { in_flight_grace: Duration::from_secs(2), ..fast() };
    let h = Harness::start(options, |_, text| if text.starts_with("stream") { streamed(&["Hel", "lo"], 20) } else { answer("done") })
        .await;
    h.fake.push_text(USER, USER, "warm up", true);
    h.fake.wait_for_messages(USER, 1, WAIT).await;
    settle().await;
    let connections = h.fake.connections_accepted();
    for i in 0..TURNS {
        // The answer is ready at once, the Bot API takes 100 ms over "typing…".
        h.fake.delay_next("sendChatAction", 1, Duration::from_millis(100));
        h.fake.push_text(USER, USER, &format!("question {i}"), true);
        h.fake.wait_for_messages(USER, i + 2, WAIT).await;
    }
    for i in 0..TURNS {
        // The first draft is in flight when the stream ends.
        h.fake.delay_next("sendChatAction", 1, Duration::from_millis(100));
        h.fake.delay_next("sendMessageDraft", 1, Duration::from_millis(100));
        h.fake.push_text(USER, USER, &format!("stream {i}"), true);
        h.fake.wait_for_messages(USER, TURNS + i + 2, WAIT).await;
    }
    settle().await;
    let answers = calls_per_answer(&h.fake, USER);
    assert_eq!(answers.len(), 2 * TURNS + 1, "{answers:?}");
    for (i, calls) in answers.iter().enumerate().skip(1) {
        assert!(calls.iter().any(|m| m == "sendChatAction"), "answer {i}: typing came after the answer: {calls:?}");
        if i > TURNS {
            assert!(calls.iter().any(|m| m == "sendMessageDraft"), "answer {i}: the draft came after the answer: {calls:?}");
        }
    }
    assert!(h.fake.drafts_in(USER).is_empty(), "a late draft shows under the answer");
    // At most the extra connections the first streamed turn needs (its typing and draft go at once); with
    // the calls aborted, every turn opened one.
    let opened = h.fake.connections_accepted() - connections;
    assert!(opened <= 2, "{opened} new connections for {} turns", 2 * TURNS);
    h.stop().await;
}

#[tokio::test]
async fn group_gets_one_message_edited_to_the_full_answer() {
    let parts = ["One", " two", " three", " four", " five", " six", " seven."];
    let full = parts.concat();
    let h = Harness::start(fast(), move |_, _| streamed(&parts, 400)).await;
    h.fake.push_text(USER, GROUP, "@swapbot_test_bot count please", false);
    let f = full.clone();
    assert!(h.fake.wait_for(WAIT, |fk| fk.messages_in(GROUP).first().is_some_and(|m| m.text == f)).await);
    settle().await;
    assert_eq!(h.texts(GROUP), vec![full.clone()]);
    let calls = h.fake.calls_in(GROUP);
    assert_eq!(calls.iter().filter(|c| c.method == "sendMessage" && c.ok()).count(), 1);
    assert!(calls.iter().all(|c| c.method != "sendMessageDraft"));
    let edits: Vec<_> = calls.iter().filter(|c| c.method == "editMessageText").collect();
    assert!(!edits.is_empty());
    // Preview sends/edits are paced: at least ~1 s apart (lower bound guaranteed by the pacer).
    let paced: Vec<_> =
        calls.iter().filter(|c| c.method == "editMessageText" || c.method == "sendMessage").map(|c| c.at).collect();
    for w in paced.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(900), "edits too close: {:?}", w[1] - w[0]);
    }
    h.stop().await;
}

fn long_answer() -> String {
    let para = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! \
                How vexingly quick daft zebras jump? "
        .repeat(6);
    let mut paras = Vec::new();
    for i in 0..10 {
        paras.push(format!("Part {i}: {}", para.trim()));
    }
    paras.join("\n\n")
}

#[tokio::test]
async fn long_answer_is_split_at_boundaries() {
    let text = long_answer();
    assert!(text.chars().count() > 5000);
    let t = text.clone();
    let h = Harness::start(fast(), move |_, _| answer(&t)).await;
    h.fake.push_text(USER, USER, "tell me a long story", true);
    assert!(h.fake.wait_for(WAIT, |_| h.finished() == 1).await);
    let _ = h.fake.wait_for_messages(USER, 2, WAIT).await;
    settle().await;
    let msgs = h.fake.messages_in(USER);
    assert!(msgs.len() >= 2 && msgs.len() <= 3, "{} messages", msgs.len());
    for m in &msgs {
        assert!(utf16_len(&m.text) <= TELEGRAM_LIMIT);
        // Every part ends at a paragraph (the paragraphs end with '?').
        assert!(m.text.ends_with('?'), "part does not end at a boundary: …{:?}", &m.text[m.text.len() - 20..]);
    }
    let joined = msgs.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join("\n\n");
    assert_eq!(joined, text);
    h.stop().await;
}

#[tokio::test]
async fn long_streamed_answer_in_group_is_split_and_complete() {
    let text = long_answer();
    let t = text.clone();
    let h = Harness::start(fast(), move |_, _| {
        let pieces: Vec<String> = t.split_inclusive("\n\n").map(str::to_string).collect();
        Script {
            deltas: pieces,
            delta_gap: Duration::from_millis(150),
            before: Duration::ZERO,
            result: TurnResult::Answer(t.clone()),
        }
    })
    .await;
    h.fake.push_text(USER, GROUP, "@swapbot_test_bot long one", false);
    assert!(h.fake.wait_for(WAIT, |_| h.finished() == 1).await);
    let t2 = text.clone();
    let complete = move |fk: &FakeTelegram| {
        let ms = fk.messages_in(GROUP);
        ms.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join("\n\n") == t2
    };
    assert!(h.fake.wait_for(WAIT, complete).await, "got {:?}", h.texts(GROUP).iter().map(|t| t.len()).collect::<Vec<_>>());
    settle().await;
    for m in h.fake.messages_in(GROUP) {
        assert!(utf16_len(&m.text) <= TELEGRAM_LIMIT);
    }
    h.stop().await;
}

#[tokio::test]
async fn commands_and_non_text() {
    let h = Harness::start(fast(), |_, _| answer("unused")).await;
    h.fake.push_text(USER, USER, "/start", true);
    h.fake.push_photo(USER, USER, true);
    h.fake.push_text(USER, USER, "/new", true);
    h.fake.push_text(USER, USER, "/help", true);
    h.fake.push_text(USER, USER, "/rollout 10", true);
    let msgs = h.fake.wait_for_messages(USER, 5, WAIT).await;
    let texts: Vec<_> = msgs.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec![HELP_TEXT, NON_TEXT_TEXT, RESET_DONE_TEXT, HELP_TEXT, "admin got /rollout 10"]);
    assert_eq!(*h.handler.resets.lock().unwrap(), vec![(USER, USER)]);
    assert!(h.handler.turns.lock().unwrap().is_empty());
    // Commands for another bot in a group are ignored; ours with @name are handled.
    h.fake.push_text(USER, GROUP, "/new@some_other_bot", false);
    h.fake.push_text(USER, GROUP, "/help@swapbot_test_bot", false);
    let msgs = h.fake.wait_for_messages(GROUP, 1, WAIT).await;
    settle().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text, HELP_TEXT);
    assert_eq!(h.handler.resets.lock().unwrap().len(), 1);
    // The command menu was registered.
    assert!(h.fake.wait_for(WAIT, |f| !f.calls_of("setMyCommands").is_empty()).await);
    h.stop().await;
}

#[tokio::test]
async fn disallowed_user_is_refused() {
    let mut o = fast();
    o.allowed_user_ids = Some([USER].into_iter().collect());
    let h = Harness::start(o, |_, _| answer("secret answer")).await;
    let stranger = 6_000_000_002;
    h.fake.push_text(stranger, stranger, "let me in", true);
    h.fake.push_text(USER, USER, "hello", true);
    let msgs = h.fake.wait_for_messages(stranger, 1, WAIT).await;
    assert_eq!(msgs[0].text, REFUSAL_TEXT);
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    assert_eq!(msgs[0].text, "secret answer");
    let turns = h.handler.turns.lock().unwrap().clone();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].0.user_id, USER);
    h.stop().await;
}

#[tokio::test]
async fn rate_limit_is_waited_out_and_the_answer_arrives() {
    let h = Harness::start(fast(), |_, _| answer("worth the wait")).await;
    h.fake.fail_next("sendMessage", 1, FakeFailure::TooManyRequests { retry_after: 1 });
    h.fake.push_text(USER, USER, "hello", true);
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    settle().await;
    assert_eq!(h.texts(USER), vec!["worth the wait"]);
    let sends = h.fake.calls_of("sendMessage");
    assert_eq!(sends.len(), 2);
    assert!(!sends[0].ok() && sends[1].ok());
    assert!(sends[1].at - sends[0].at >= Duration::from_secs(1), "retry_after honoured");
    drop(msgs);
    h.stop().await;
}

#[tokio::test]
async fn rejected_formatting_falls_back_to_plain_text() {
    let h = Harness::start(fast(), |_, _| answer("if a < b && c > d then <done>")).await;
    h.fake.fail_next("sendMessage", 1, FakeFailure::CantParseEntities);
    h.fake.push_text(USER, USER, "compare", true);
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    settle().await;
    assert_eq!(h.texts(USER), vec!["if a < b && c > d then <done>"]);
    let sends = h.fake.calls_of("sendMessage");
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].params["parse_mode"], "HTML");
    assert!(sends[1].params.get("parse_mode").is_none());
    assert_eq!(msgs[0].parse_mode, None);
    h.stop().await;
}

#[tokio::test]
async fn html_special_characters_survive_rendering() {
    let h = Harness::start(fast(), |_, _| answer("<b>not bold</b> & 1 < 2")).await;
    h.fake.push_text(USER, USER, "x", true);
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    assert_eq!(msgs[0].text, "<b>not bold</b> & 1 < 2");
    assert_eq!(h.fake.calls_of("sendMessage").len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn failed_turn_gets_the_human_sentence() {
    let sentence = "Sorry, I couldn't reach the assistant. Please try again in a minute.";
    let h = Harness::start(fast(), move |_, text| {
        if text == "stream then fail" {
            Script {
                deltas: vec!["Partial ans".into(), "wer".into()],
                delta_gap: Duration::from_millis(200),
                before: Duration::ZERO,
                result: TurnResult::Failed(sentence.into()),
            }
        } else {
            Script { result: TurnResult::Failed(sentence.into()), ..answer("") }
        }
    })
    .await;
    h.fake.push_text(USER, USER, "hello", true);
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    assert_eq!(msgs[0].text, sentence);
    // In a group the streamed partial answer is replaced by the sentence: still one message.
    h.fake.push_text(USER, GROUP, "@swapbot_test_bot stream then fail", false);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(GROUP).first().is_some_and(|m| m.text == sentence)).await);
    settle().await;
    assert_eq!(h.texts(GROUP), vec![sentence]);
    h.stop().await;
}

#[tokio::test]
async fn bad_gateway_from_get_updates_then_recovery() {
    let fake = FakeTelegram::start().await;
    fake.fail_next("getUpdates", 2, FakeFailure::BadGateway);
    fake.fail_next("getMe", 1, FakeFailure::BadGateway);
    let h = Harness::start_with(fake, fast(), |_, _| answer("back online"));
    h.fake.push_text(USER, USER, "are you there?", true);
    let msgs = h.fake.wait_for_messages(USER, 1, Duration::from_secs(90)).await;
    assert_eq!(msgs.first().map(|m| m.text.as_str()), Some("back online"));
    let failed = h.fake.calls_of("getUpdates").iter().filter(|c| !c.ok()).count();
    assert_eq!(failed, 2);
    // And it still stops promptly (checked in stop()).
    h.stop().await;
}

#[tokio::test]
async fn stops_promptly_during_a_turn_and_a_long_poll() {
    let h = Harness::start(fast(), |_, _| Script { before: Duration::from_secs(30), ..answer("late") }).await;
    assert!(h.fake.wait_for(WAIT, |f| !f.calls_of("getMe").is_empty()).await);
    h.fake.push_text(USER, GROUP, "@swapbot_test_bot take your time", false);
    assert!(h.fake.wait_for(WAIT, |_| !h.handler.turns.lock().unwrap().is_empty()).await);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_chat_does_not_block_another() {
    let h = Harness::start(fast(), |_, text| {
        if text == "slow" { Script { before: Duration::from_secs(3), ..answer("slow answer") } } else { answer("fast answer") }
    })
    .await;
    let other = 5_000_000_777;
    h.fake.push_text(USER, USER, "slow", true);
    assert!(h.fake.wait_for(WAIT, |_| !h.handler.turns.lock().unwrap().is_empty()).await);
    h.fake.push_text(other, other, "fast", true);
    let msgs = h.fake.wait_for_messages(other, 1, WAIT).await;
    assert_eq!(msgs[0].text, "fast answer");
    assert!(h.fake.messages_in(USER).is_empty(), "the fast chat was answered while the slow one still ran");
    let msgs = h.fake.wait_for_messages(USER, 1, WAIT).await;
    assert_eq!(msgs[0].text, "slow answer");
    h.stop().await;
}

#[tokio::test]
async fn turns_of_one_chat_run_in_order() {
    let h = Harness::start(fast(), |_, text| answer(&format!("re: {text}"))).await;
    for i in 0..5 {
        h.fake.push_text(USER, USER, &format!("m{i}"), true);
    }
    let msgs = h.fake.wait_for_messages(USER, 5, WAIT).await;
    let texts: Vec<_> = msgs.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..5).map(|i| format!("re: m{i}")).collect::<Vec<_>>());
    h.stop().await;
}

// ---- Groups, forum topics and other update kinds ----

const FORUM: i64 = -1_009_876_543_210;
const BOT: &str = "@swapbot_test_bot";

fn turn_texts(h: &Harness) -> Vec<String> {
    h.handler.turns.lock().unwrap().iter().map(|(_, t)| t.clone()).collect()
}

/// Pushes a private "ping" and waits for its answer: every update queued before it has been handled by
/// then (one chat's updates are in order, and the poller takes updates in order).
async fn barrier(h: &Harness, user: i64) {
    let before = h.fake.messages_in(user).len();
    h.fake.push_text(user, user, "ping", true);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(user).len() > before).await, "the bot stopped answering");
    settle().await;
}

#[tokio::test]
async fn a_group_is_answered_only_when_the_bot_is_addressed() {
    let h = Harness::start(fast(), |_, text| answer(&format!("re: {text}"))).await;
    h.fake.set_chat(GROUP, swapbot_fake_telegram::ChatKind::Supergroup);
    let other = 5_000_000_002;
    h.fake.push_text(USER, GROUP, "good morning everyone", false);
    h.fake.push_text(USER, GROUP, "hey @some_other_bot what's up", false);
    let q1 = h.fake.push_text(USER, GROUP, &format!("{BOT} what is the capital of France?"), false);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(GROUP).len() == 1).await);
    let bot_msg = h.fake.messages_in(GROUP)[0].message_id;
    // A reply to the bot is addressed; a reply to another user is not.
    let q2 = h.fake.push_group_text(other, GROUP, "and of Spain?", None, Some(bot_msg));
    h.fake.push_group_text(other, GROUP, "I think it's Paris", None, Some(q1));
    // text_mention (a bot without a username would be mentioned this way), and someone else's.
    let q3 = h.fake.push_custom(USER, GROUP, false, serde_json::json!({
        "text": "thanks bot",
        "entities": [{ "type": "text_mention", "offset": 7, "length": 3,
                       "user": { "id": swapbot_fake_telegram::BOT_USER_ID, "is_bot": true, "first_name": "SwapBot" } }],
    }));
    h.fake.push_custom(USER, GROUP, false, serde_json::json!({
        "text": "thanks bob",
        "entities": [{ "type": "text_mention", "offset": 7, "length": 3, "user": { "id": 77, "is_bot": false, "first_name": "Bob" } }],
    }));
    // Media: silence unless addressed (a caption mentioning the bot).
    h.fake.push_photo(USER, GROUP, false);
    h.fake.push_custom(USER, GROUP, false, serde_json::json!({
        "voice": { "file_id": "v1", "file_unique_id": "uv1", "duration": 2, "mime_type": "audio/ogg", "file_size": 4321 },
    }));
    let photo_q = h.fake.push_custom(USER, GROUP, false, serde_json::json!({
        "photo": [{ "file_id": "p1", "file_unique_id": "up1", "width": 9, "height": 9 }],
        "caption": format!("{BOT} what is this?"),
        "caption_entities": [{ "type": "mention", "offset": 0, "length": BOT.len() }],
    }));
    // Commands: bare and @this are ours, @other is not.
    h.fake.push_text(USER, GROUP, "/help", false);
    h.fake.push_text(USER, GROUP, "/new@some_other_bot", false);
    h.fake.push_text(USER, GROUP, "/frobnicate", false);
    h.fake.push_text(USER, GROUP, "/frobnicate@swapbot_test_bot", false);
    h.fake.push_text(USER, GROUP, "see you later", false);
    let expected = 6;
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(GROUP).len() >= expected).await, "got {:?}", h.texts(GROUP));
    barrier(&h, USER).await;
    // The model got the question without the mention, and only the addressed ones.
    assert_eq!(turn_texts(&h), vec!["what is the capital of France?", "and of Spain?", "thanks", "ping"]);
    let msgs = h.fake.messages_in(GROUP);
    let shown: Vec<(&str, Option<i64>)> = msgs.iter().map(|m| (m.text.as_str(), m.reply_to)).collect();
    assert_eq!(
        shown,
        vec![
            ("re: what is the capital of France?", Some(q1)),
            ("re: and of Spain?", Some(q2)),
            ("re: thanks", Some(q3)),
            (NON_TEXT_TEXT, Some(photo_q)),
            (HELP_TEXT, msgs[4].reply_to),
            (swapbot_telegram::UNKNOWN_COMMAND_TEXT, msgs[5].reply_to),
        ]
    );
    assert!(msgs.iter().all(|m| m.reply_to.is_some()), "every group answer replies to its question");
    // Every reply allows sending without the replied message (it may be deleted meanwhile).
    for c in h.fake.calls_in(GROUP).iter().filter(|c| c.method == "sendMessage") {
        assert_eq!(c.params["reply_parameters"]["allow_sending_without_reply"], true, "{:?}", c.params);
    }
    assert!(h.handler.resets.lock().unwrap().is_empty(), "/new@some_other_bot is not ours");
    // Private chats do not reply-quote: unchanged.
    assert!(h.fake.calls_in(USER).iter().all(|c| c.params.get("reply_parameters").is_none()));
    h.stop().await;
}

#[tokio::test]
async fn group_mode_all_answers_every_message_but_other_bots_commands() {
    let mut o = fast();
    o.group_mode = GroupMode::All;
    let h = Harness::start(o, |_, text| answer(&format!("re: {text}"))).await;
    h.fake.push_text(USER, GROUP, "good morning everyone", false);
    h.fake.push_text(USER, GROUP, "/new@some_other_bot", false);
    h.fake.push_text(USER, GROUP, &format!("{BOT}, still here?"), false);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(GROUP).len() >= 2).await);
    barrier(&h, USER).await;
    assert_eq!(turn_texts(&h), vec!["good morning everyone", "still here?", "ping"]);
    assert_eq!(h.texts(GROUP), vec!["re: good morning everyone", "re: still here?"]);
    h.stop().await;
}

#[tokio::test]
async fn a_forum_topic_is_answered_in_that_topic_on_every_send_edit_and_action() {
    let text = long_answer();
    let t = text.clone();
    let h = Harness::start(fast(), move |_, q| {
        if q == "long please" {
            let pieces: Vec<String> = t.split_inclusive("\n\n").map(str::to_string).collect();
            Script { deltas: pieces, delta_gap: Duration::from_millis(100), before: Duration::ZERO, result: TurnResult::Answer(t.clone()) }
        } else {
            streamed(&["In", " the", " topic", " we", " stay."], 300)
        }
    })
    .await;
    h.fake.set_chat(FORUM, swapbot_fake_telegram::ChatKind::Forum);
    // The bot made the topic (so its creation message, which every topic message replies to, is the bot's).
    let topic = h.fake.create_topic(FORUM, "Ideas");
    h.fake.push_group_text(USER, FORUM, "we talk among ourselves here", Some(topic), None);
    let q = h.fake.push_group_text(USER, FORUM, &format!("{BOT} where are we?"), Some(topic), None);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(FORUM).first().is_some_and(|m| m.text == "In the topic we stay.")).await);
    let q_long = h.fake.push_group_text(USER, FORUM, &format!("{BOT} long please"), Some(topic), None);
    let t2 = text.clone();
    let complete = move |f: &FakeTelegram| f.messages_in(FORUM).iter().skip(1).map(|m| m.text.as_str()).collect::<Vec<_>>().join("\n\n") == t2;
    assert!(h.fake.wait_for(WAIT, complete).await, "long answer incomplete: {:?}", h.texts(FORUM).len());
    settle().await;
    let topic_calls = h.fake.calls_in(FORUM);
    // A question in the General topic is answered there (no thread id).
    let q_general = h.fake.push_group_text(USER, FORUM, &format!("{BOT} and here?"), None, None);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(FORUM).iter().any(|m| m.reply_to == Some(q_general))).await);
    settle().await;

    assert_eq!(turn_texts(&h), vec!["where are we?", "long please", "and here?"], "the topic's own chatter was not addressed");
    let msgs = h.fake.messages_in(FORUM);
    let (general, in_topic): (Vec<_>, Vec<_>) = msgs.iter().partition(|m| m.reply_to == Some(q_general));
    assert_eq!(general.len(), 1);
    assert_eq!(general[0].thread_id, None);
    assert!(in_topic.len() >= 3, "the long answer was split");
    for m in &in_topic {
        assert_eq!(m.thread_id, Some(topic), "{:?} is not in the topic", m.text);
    }
    // The first message of each answer replies to its question; continuation parts do not.
    assert_eq!(in_topic[0].reply_to, Some(q));
    assert_eq!(in_topic[1].reply_to, Some(q_long));
    assert!(in_topic[2..].iter().all(|m| m.reply_to.is_none()));
    // Every call of the two topic turns went to the topic: sends and chat actions carry the thread, and
    // edits only ever touch messages in the topic.
    let topic_ids: HashSet<i64> = in_topic.iter().map(|m| m.message_id).collect();
    let mut edits = 0;
    for c in &topic_calls {
        assert!(c.ok(), "{} failed: {:?}", c.method, c.error);
        assert_ne!(c.method, "sendMessageDraft", "drafts are private-chat only");
        match c.method.as_str() {
            "sendMessage" | "sendChatAction" => assert_eq!(c.params["message_thread_id"], topic, "{}: {:?}", c.method, c.params),
            "editMessageText" => {
                edits += 1;
                assert!(topic_ids.contains(&c.params["message_id"].as_i64().unwrap()), "edit outside the topic");
            }
            _ => {}
        }
    }
    // The General topic's turn sends without a thread id.
    let general_calls = &h.fake.calls_in(FORUM)[topic_calls.len()..];
    assert!(general_calls.iter().any(|c| c.method == "sendMessage"));
    for c in general_calls.iter().filter(|c| c.method == "sendMessage" || c.method == "sendChatAction") {
        assert!(c.params.get("message_thread_id").is_none(), "{:?}", c.params);
    }
    assert!(edits >= 1, "the streamed answer was edited in place");
    h.stop().await;
}

#[tokio::test]
async fn other_update_kinds_are_handled_on_purpose_and_polling_goes_on() {
    use serde_json::json;
    let h = Harness::start(fast(), |_, text| answer(&format!("re: {text}"))).await;
    let user = |id: i64| json!({ "id": id, "is_bot": false, "first_name": "U" });
    let private_chat = json!({ "id": USER, "type": "private", "first_name": "U" });
    let group_chat = json!({ "id": GROUP, "type": "supergroup", "title": "G" });
    let channel = json!({ "id": -1_005_555_555_555i64, "type": "channel", "title": "News" });
    h.fake.push_text(USER, USER, "original question", true);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(USER).len() == 1).await);
    // An edit of the question is not a second question.
    h.fake.push_update("edited_message", json!({
        "message_id": 1, "date": 0, "edit_date": 1, "chat": private_chat, "from": user(USER), "text": "edited question",
    }));
    h.fake.push_update("channel_post", json!({
        "message_id": 1, "date": 0, "chat": channel, "sender_chat": channel, "text": "@swapbot_test_bot news",
    }));
    h.fake.push_update("edited_channel_post", json!({
        "message_id": 1, "date": 0, "edit_date": 1, "chat": channel, "sender_chat": channel, "text": "news, edited",
    }));
    h.fake.push_update("my_chat_member", json!({
        "chat": group_chat, "from": user(USER), "date": 0,
        "old_chat_member": { "user": { "id": swapbot_fake_telegram::BOT_USER_ID, "is_bot": true, "first_name": "SwapBot" }, "status": "left" },
        "new_chat_member": { "user": { "id": swapbot_fake_telegram::BOT_USER_ID, "is_bot": true, "first_name": "SwapBot" }, "status": "member" },
    }));
    let cb = h.fake.push_callback_query(USER, USER, 1, "old-button");
    // Another bot mentioning us, a service message, an unknown update kind.
    h.fake.push_custom(99, GROUP, false, json!({
        "from": { "id": 99, "is_bot": true, "first_name": "Other", "username": "other_bot" },
        "text": "@swapbot_test_bot hello bot",
        "entities": [{ "type": "mention", "offset": 0, "length": BOT.len() }],
    }));
    h.fake.push_custom(USER, GROUP, false, json!({ "new_chat_members": [user(USER + 1)] }));
    h.fake.push_update("some_future_update", json!({ "whatever": true }));
    // Media in a private chat: one sentence each.
    h.fake.push_custom(USER, USER, true, json!({ "sticker": {
        "file_id": "s1", "file_unique_id": "us1", "type": "regular", "width": 512, "height": 512, "is_animated": false, "is_video": false } }));
    h.fake.push_custom(USER, USER, true, json!({ "document": { "file_id": "d1", "file_unique_id": "ud1", "file_name": "a.pdf" } }));
    h.fake.push_custom(USER, USER, true, json!({ "voice": { "file_id": "v1", "file_unique_id": "uv1", "duration": 2, "mime_type": "audio/ogg", "file_size": 4321 } }));
    h.fake.push_text(USER, USER, "still there?", true);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(USER).len() >= 5).await, "got {:?}", h.texts(USER));
    settle().await;
    assert_eq!(turn_texts(&h), vec!["original question", "still there?"]);
    assert_eq!(h.texts(USER), vec!["re: original question", NON_TEXT_TEXT, NON_TEXT_TEXT, NON_TEXT_TEXT, "re: still there?"]);
    assert!(h.fake.messages_in(GROUP).is_empty(), "nothing said in the group");
    // The callback query was answered, so the user's client stops spinning.
    assert!(h.fake.open_callback_queries().is_empty());
    let answered = h.fake.calls_of("answerCallbackQuery");
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].params["callback_query_id"], cb);
    h.stop().await;
}

#[tokio::test]
async fn the_allow_list_refuses_only_messages_addressed_to_the_bot() {
    let mut o = fast();
    o.allowed_user_ids = Some([USER].into_iter().collect());
    let h = Harness::start(o, |_, _| answer("for members only")).await;
    let stranger = 6_000_000_002;
    h.fake.push_text(stranger, GROUP, "/new@some_other_bot", false);
    // A bare command that is not ours is likely another bot's.
    h.fake.push_text(stranger, GROUP, "/weather", false);
    h.fake.push_text(stranger, GROUP, "hello people", false);
    h.fake.push_photo(stranger, GROUP, false);
    let asked = h.fake.push_text(stranger, GROUP, &format!("{BOT} let me in"), false);
    assert!(h.fake.wait_for(WAIT, |f| !f.messages_in(GROUP).is_empty()).await);
    barrier(&h, USER).await;
    let msgs = h.fake.messages_in(GROUP);
    assert_eq!(msgs.iter().map(|m| (m.text.as_str(), m.reply_to)).collect::<Vec<_>>(), vec![(REFUSAL_TEXT, Some(asked))]);
    assert_eq!(turn_texts(&h), vec!["ping"]);
    h.stop().await;
}

#[tokio::test]
async fn commands_are_case_insensitive_and_new_resets_only_its_chat() {
    let h = Harness::start(fast(), |_, _| answer("unused")).await;
    h.fake.push_text(USER, USER, "/ROLLOUT 10", true);
    h.fake.push_text(USER, USER, "/Help", true);
    h.fake.push_text(USER, USER, "/NEW", true);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(USER).len() >= 3).await);
    h.fake.push_text(USER, GROUP, "/new@SwapBot_Test_Bot", false);
    h.fake.push_text(USER, GROUP, "/Rollout@swapbot_test_bot off", false);
    // A bare mention asks nothing: it gets the help text, the model is not called.
    h.fake.push_text(USER, GROUP, BOT, false);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(GROUP).len() >= 3).await);
    settle().await;
    assert_eq!(h.texts(USER), vec!["admin got /rollout 10", HELP_TEXT, RESET_DONE_TEXT]);
    assert_eq!(h.texts(GROUP), vec![RESET_DONE_TEXT, "admin got /rollout off", HELP_TEXT]);
    assert!(h.handler.turns.lock().unwrap().is_empty());
    // The group's /new names the group: the host forgets that session only.
    assert_eq!(*h.handler.resets.lock().unwrap(), vec![(USER, USER), (USER, GROUP)]);
    h.stop().await;
}

#[tokio::test]
async fn streaming_in_a_group_keeps_its_pace_across_turns() {
    let h = Harness::start(fast(), |_, _| streamed(&["A", " b", " c", " d."], 250)).await;
    let other = 5_000_000_002;
    // Two users' questions back to back: the second turn's first send must not come right after the
    // first turn's final edit (edits and sends share the group's ~20/min budget).
    h.fake.push_text(USER, GROUP, &format!("{BOT} one"), false);
    h.fake.push_text(other, GROUP, &format!("{BOT} two"), false);
    assert!(h.fake.wait_for(WAIT, |f| f.messages_in(GROUP).iter().filter(|m| m.text == "A b c d.").count() == 2).await);
    settle().await;
    let paced: Vec<_> = h
        .fake
        .calls_in(GROUP)
        .into_iter()
        .filter(|c| c.method == "editMessageText" || c.method == "sendMessage")
        .map(|c| c.at)
        .collect();
    assert!(paced.len() >= 4);
    for w in paced.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(900), "group updates too close: {:?}", w[1] - w[0]);
    }
    h.stop().await;
}

#[tokio::test]
async fn a_group_answer_arrives_even_when_its_question_was_deleted_meanwhile() {
    let h = Harness::start(fast(), |_, _| Script { before: Duration::from_millis(500), ..answer("still answered") }).await;
    let asked = h.fake.push_text(USER, GROUP, &format!("{BOT} quick question"), false);
    assert!(h.fake.wait_for(WAIT, |_| !h.handler.turns.lock().unwrap().is_empty()).await);
    h.fake.delete_message(GROUP, asked);
    let msgs = h.fake.wait_for_messages(GROUP, 1, WAIT).await;
    assert_eq!(msgs[0].text, "still answered");
    assert_eq!(msgs[0].reply_to, None, "the replied message is gone");
    let sends = h.fake.calls_of("sendMessage");
    assert!(sends.iter().all(|c| c.ok()), "Telegram would refuse a reply to a deleted message without allow_sending_without_reply");
    assert_eq!(sends[0].params["reply_parameters"]["message_id"], asked);
    h.stop().await;
}
