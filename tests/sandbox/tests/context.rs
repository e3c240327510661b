//! Context windows, truncation, compaction, prompt caching, usage and the chat completions API,
//! over real HTTP on 127.0.0.1.

use reqwest::StatusCode;
use serde_json::{Value, json};
use swapbot_sandbox::{Sandbox, SandboxConfig, Usage};

mod common;
use common::{Client, output_text, parse_sse as sse};

async fn start(cfg: SandboxConfig) -> (Sandbox, Client) {
    let sb = Sandbox::start(cfg).await.unwrap();
    let c = Client::new(&sb);
    (sb, c)
}

fn window(n: u64) -> SandboxConfig {
    SandboxConfig { context_window: Some(n), ..Default::default() }
}

async fn new_conversation(c: &Client) -> String {
    let (st, v) = c.post("/conversations", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn turn(conv: &str, text: &str, extra: Value) -> Value {
    let mut b = json!({"model": "gpt-4.1-mini", "conversation": conv, "input": text});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

const OVERFLOW: &str = "Your input exceeds the context window of this model. Please adjust your input and try again.";

fn assert_overflow(st: StatusCode, v: &Value) {
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v,
        &json!({"error": {"message": OVERFLOW, "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}})
    );
}

// ---------------------------------------------------------------- windows and truncation

#[tokio::test]
async fn over_the_window_without_truncation_is_400_and_stores_nothing() {
    let (sb, c) = start(window(40)).await;
    let conv = new_conversation(&c).await;
    // each turn: 6 input tokens + 8 answer tokens ("You said: ...")
    let mut turns = 0;
    loop {
        let (st, v) = c.post("/responses", turn(&conv, "one two three four five six", json!({}))).await;
        if st != StatusCode::OK {
            assert_overflow(st, &v);
            break;
        }
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() <= 40);
        assert_eq!(v["truncation"], "disabled");
        turns += 1;
        assert!(turns < 10);
    }
    // 14 tokens per finished turn: the third turn would see 28 + 6 = 34, the fourth 42 > 40
    assert_eq!(turns, 3);
    let items = sb.conversation_items(&conv).unwrap().len();
    assert_eq!(items, 6, "the refused turn left nothing");
    // streamed and background are refused the same way, before any stream starts
    let (st, v) = c.post("/responses", turn(&conv, "one two three four five six", json!({"stream": true}))).await;
    assert_overflow(st, &v);
    let (st, v) = c.post("/responses", turn(&conv, "one two three four five six", json!({"background": true}))).await;
    assert_overflow(st, &v);
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), items);
    // the conversation is not locked by a refused turn: a short auto turn goes through
    let (st, _) = c.post("/responses", turn(&conv, "hi", json!({"truncation": "auto"}))).await;
    assert_eq!(st, StatusCode::OK);
    // invalid truncation value
    let (st, v) = c.post("/responses", turn(&conv, "hi", json!({"truncation": "sometimes"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "truncation");
    // the window of the table: gpt-4 is 8192 tokens
    sb.set_config(|c| c.context_window = None);
    let long = "word ".repeat(9000);
    let (st, v) = c.post("/responses", json!({"model": "gpt-4", "input": long})).await;
    assert_overflow(st, &v);
    let (st, _) = c.post("/responses", json!({"model": "gpt-4.1-mini", "input": long})).await;
    assert_eq!(st, StatusCode::OK);
    // per-model override
    sb.set_config(|c| c.model_context_windows = vec![("gpt-4.1-mini".into(), 100)]);
    let (st, v) = c.post("/responses", json!({"model": "gpt-4.1-mini", "input": long})).await;
    assert_overflow(st, &v);
    sb.shutdown().await;
}

#[tokio::test]
async fn auto_truncation_drops_the_oldest_items_from_the_view_only() {
    let (sb, c) = start(window(40)).await;
    let conv = new_conversation(&c).await;
    let auto = json!({"truncation": "auto"});
    let (_, v) = c.post("/responses", turn(&conv, "my name is Ann", auto.clone())).await;
    assert_eq!(output_text(&v), "Nice to meet you, Ann.");
    assert_eq!(v["truncation"], "auto");
    let (_, v) = c.post("/responses", turn(&conv, "what is my name?", auto.clone())).await;
    assert_eq!(output_text(&v), "Your name is Ann.");
    for i in 0..6 {
        let (st, v) = c.post("/responses", turn(&conv, &format!("filler number {i} here"), auto.clone())).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() <= 40, "{v}");
    }
    let (_, v) = c.post("/responses", turn(&conv, "what is my name?", auto.clone())).await;
    assert_eq!(output_text(&v), "I don't know your name yet.", "the name dropped out of the view");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() <= 40);
    let items = sb.conversation_items(&conv).unwrap();
    assert_eq!(items.len(), 18, "the stored conversation keeps everything");
    assert_eq!(items[0]["content"][0]["text"], "my name is Ann");
    // the last turns are always seen
    let (_, v) = c.post("/responses", turn(&conv, "my secret is Owl", auto.clone())).await;
    assert_eq!(output_text(&v), "OK, your secret is Owl.");
    let (_, v) = c.post("/responses", turn(&conv, "what is my secret?", auto.clone())).await;
    assert_eq!(output_text(&v), "Your secret is Owl.");
    // the new input alone over the window: 400 even with auto, and nothing stored
    let before = sb.conversation_items(&conv).unwrap().len();
    let (st, v) = c.post("/responses", turn(&conv, &"x ".repeat(41), auto.clone())).await;
    assert_overflow(st, &v);
    // instructions count too
    let (st, v) = c.post("/responses", turn(&conv, "hi", json!({"truncation": "auto", "instructions": "y ".repeat(40)}))).await;
    assert_overflow(st, &v);
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), before);
    // previous_response_id chains truncate the same way
    let (_, r1) = c.post("/responses", json!({"model": "gpt-4o", "input": "my name is Zed", "truncation": "auto"})).await;
    let mut prev = r1["id"].as_str().unwrap().to_string();
    for i in 0..5 {
        let (_, r) = c.post("/responses", json!({"model": "gpt-4o", "input": format!("chain filler {i} words"), "previous_response_id": prev, "truncation": "auto"})).await;
        prev = r["id"].as_str().unwrap().to_string();
    }
    let (_, r) = c.post("/responses", json!({"model": "gpt-4o", "input": "what is my name?", "previous_response_id": prev, "truncation": "auto"})).await;
    assert_eq!(output_text(&r), "I don't know your name yet.");
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "what is my name?", "previous_response_id": prev})).await;
    assert_overflow(st, &v);
    sb.shutdown().await;
}

#[tokio::test]
async fn streamed_and_background_turns_truncate_too() {
    let (sb, c) = start(window(30)).await;
    let conv = new_conversation(&c).await;
    let (_, v) = c.post("/responses", turn(&conv, "my name is Bo", json!({}))).await;
    assert_eq!(output_text(&v), "Nice to meet you, Bo.");
    for i in 0..4 {
        let (st, _) = c.post("/responses", turn(&conv, &format!("some filler text {i}"), json!({"truncation": "auto"}))).await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, body) = c.post_text("/responses", turn(&conv, "what is my name?", json!({"truncation": "auto", "stream": true}))).await;
    assert_eq!(st, StatusCode::OK);
    let events = sse(&body);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(output_text(done), "I don't know your name yet.");
    assert!(done["usage"]["input_tokens"].as_u64().unwrap() <= 30);
    let (st, v) = c.post("/responses", turn(&conv, "what is my name?", json!({"truncation": "auto", "background": true}))).await;
    assert_eq!(st, StatusCode::OK);
    let id = v["id"].as_str().unwrap();
    let mut last = Value::Null;
    for _ in 0..5 {
        let (_, p) = c.get(&format!("/responses/{id}")).await;
        if p["status"] == "completed" {
            last = p;
            break;
        }
    }
    assert_eq!(output_text(&last), "I don't know your name yet.");
    assert!(last["usage"]["input_tokens"].as_u64().unwrap() <= 30);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- compaction

fn small_compaction() -> SandboxConfig {
    SandboxConfig { context_window: Some(200), min_compact_threshold: 10, ..Default::default() }
}

#[tokio::test]
async fn server_side_compaction_replaces_older_items_for_the_model() {
    let (sb, c) = start(small_compaction()).await;
    let conv = new_conversation(&c).await;
    let cm = json!({"context_management": [{"type": "compaction", "compact_threshold": 40}]});
    let (_, v) = c.post("/responses", turn(&conv, "my secret is Blue Fox", cm.clone())).await;
    assert_eq!(output_text(&v), "OK, your secret is Blue Fox.");
    assert_eq!(v["output"].as_array().unwrap().len(), 1, "under the threshold: no compaction");
    let mut compacted = None;
    for i in 0..6 {
        let (st, v) = c.post("/responses", turn(&conv, &format!("filler message number {i}"), cm.clone())).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if v["output"][0]["type"] == "compaction" {
            compacted = Some((i, v));
            break;
        }
    }
    let (_, v) = compacted.expect("the context crossed the threshold");
    let item = &v["output"][0];
    assert!(item["id"].as_str().unwrap().starts_with("cmp_"));
    assert!(item["encrypted_content"].as_str().unwrap().len() > 10);
    assert_eq!(v["output"][1]["type"], "message");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 40, "the compaction pass read the whole context");
    // the stored conversation keeps every item and gains the compaction item
    let items = sb.conversation_items(&conv).unwrap();
    assert_eq!(items.iter().filter(|i| i["type"] == "compaction").count(), 1);
    assert_eq!(items[0]["content"][0]["text"], "my secret is Blue Fox");
    let (_, listed) = c.get(&format!("/conversations/{conv}/items?order=desc&limit=2")).await;
    assert_eq!(listed["data"][1]["type"], "compaction");
    // the next turn sees the compaction item instead of the older items: cheap, and still knows
    let (_, v) = c.post("/responses", turn(&conv, "what is my secret?", cm.clone())).await;
    assert_eq!(output_text(&v), "Your secret is Blue Fox.");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() < 40, "{}", v["usage"]);
    let (_, v) = c.post("/responses", turn(&conv, "count", cm.clone())).await;
    let n = sb.conversation_items(&conv).unwrap().iter().filter(|i| i["role"] == "user").count() - 1;
    assert_eq!(output_text(&v), format!("This conversation has {n} earlier user messages."));
    // streamed: the compaction item is an output item of the stream
    let conv2 = new_conversation(&c).await;
    let (_, _) = c.post("/responses", turn(&conv2, &"many words in this message ".repeat(10), json!({}))).await;
    let (_, body) = c.post_text("/responses", turn(&conv2, "echo: hi", json!({"stream": true, "context_management": [{"type": "compaction", "compact_threshold": 20}]}))).await;
    let events = sse(&body);
    let added: Vec<&Value> = events.iter().filter(|(e, _)| e == "response.output_item.added").map(|(_, d)| d).collect();
    assert_eq!(added[0]["item"]["type"], "compaction");
    assert_eq!(added[1]["item"]["type"], "message");
    assert_eq!(added[1]["output_index"], 1);
    assert_eq!(output_text(&events.last().unwrap().1["response"]), "hi");
    sb.shutdown().await;
}

#[tokio::test]
async fn context_management_is_validated_per_the_spec() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let body = |cm: Value| json!({"model": "gpt-4o", "input": "hi", "context_management": cm});
    let (st, v) = c.post("/responses", body(json!([{"type": "compaction", "compact_threshold": 500}]))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "integer_below_min_value");
    assert_eq!(v["error"]["param"], "context_management[0].compact_threshold");
    let (st, v) = c.post("/responses", body(json!([{"type": "summary"}]))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "context_management[0].type");
    let (st, v) = c.post("/responses", body(json!([]))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "empty_array");
    let (st, v) = c.post("/responses", body(json!([{"compact_threshold": 5000}]))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "missing_required_parameter");
    let (st, v) = c.post("/responses", body(json!([{"type": "compaction", "every": 3}]))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "unknown_parameter");
    let (st, v) = c.post("/responses", body(json!({"type": "compaction"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_type");
    let (st, _) = c.post("/responses", body(json!([{"type": "compaction", "compact_threshold": 1000}]))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = c.post("/responses", body(json!([{"type": "compaction", "compact_threshold": null}]))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = c.post("/responses", body(Value::Null)).await;
    assert_eq!(st, StatusCode::OK);
    sb.shutdown().await;
}

#[tokio::test]
async fn standalone_compact_keeps_user_messages_and_one_compaction_item() {
    let (sb, c) = start(small_compaction()).await;
    let input = json!([
        {"role": "user", "content": "my name is Kim"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Nice to meet you, Kim.", "annotations": [], "logprobs": []}]},
        {"role": "user", "content": "remember the keys are under the mat"},
        {"role": "assistant", "content": "OK, I will remember: the keys are under the mat."},
    ]);
    let (st, v) = c.post("/responses/compact", json!({"model": "gpt-4.1-mini", "input": input, "prompt_cache_key": "u1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "response.compaction");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert!(v["created_at"].is_u64());
    let out = v["output"].as_array().unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0]["role"], "user");
    assert_eq!(out[0]["content"][0]["type"], "input_text");
    assert!(out[0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(out[1]["content"][0]["text"], "remember the keys are under the mat");
    assert_eq!(out[2]["type"], "compaction");
    assert!(out[2]["id"].as_str().unwrap().starts_with("cmp_"));
    let u = &v["usage"];
    assert_eq!(u["input_tokens"], 4 + 5 + 7 + 10);
    assert_eq!(u["total_tokens"], u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap());
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 0);
    // the compacted window is the next input
    let mut next = out.clone();
    next.push(json!({"role": "user", "content": "what is my name?"}));
    let (_, r) = c.post("/responses", json!({"model": "gpt-4.1-mini", "input": next})).await;
    assert_eq!(output_text(&r), "Your name is Kim.");
    let mut next = out.clone();
    next.push(json!({"role": "user", "content": "what did I ask you to remember?"}));
    let (_, r) = c.post("/responses", json!({"model": "gpt-4.1-mini", "input": next})).await;
    assert_eq!(output_text(&r), "You asked me to remember: the keys are under the mat.");
    // compaction items can be added to a conversation, and are checked
    let conv = new_conversation(&c).await;
    let (st, v) = c.post(&format!("/conversations/{conv}/items"), json!({"items": out})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, r) = c.post("/responses", turn(&conv, "what is my name?", json!({}))).await;
    assert_eq!(output_text(&r), "Your name is Kim.");
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": [{"type": "compaction", "encrypted_content": "forged"}, {"role": "user", "content": "hi"}]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_encrypted_content");
    // previous_response_id works; conversation does not exist on this endpoint; model is required
    let (_, r1) = c.post("/responses", json!({"model": "gpt-4o", "input": "my dog is Rex"})).await;
    let (st, v) = c.post("/responses/compact", json!({"model": "gpt-4o", "previous_response_id": r1["id"]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["output"][0]["content"][0]["text"], "my dog is Rex");
    let (st, v) = c.post("/responses/compact", json!({"model": "gpt-4o", "conversation": conv})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "unknown_parameter");
    let (st, v) = c.post("/responses/compact", json!({"input": "x"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "model");
    // over the window
    let (st, v) = c.post("/responses/compact", json!({"model": "gpt-4o", "input": "z ".repeat(201)})).await;
    assert_overflow(st, &v);
    let t = sb.usage_totals();
    assert_eq!(t.compact.requests, 2);
    assert_eq!(t.by_prompt_cache_key["u1"].input_tokens, 26);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- prompt caching and usage

#[tokio::test]
async fn cached_tokens_are_the_shared_prefix_of_the_same_cache_key() {
    let cfg = SandboxConfig { cache_min_tokens: 16, cache_step_tokens: 8, ..Default::default() };
    let (sb, c) = start(cfg).await;
    let instructions = "alpha ".repeat(20);
    let conv = new_conversation(&c).await;
    let body = |text: &str, key: Option<&str>| {
        let mut b = json!({"model": "gpt-4.1-mini", "conversation": conv, "instructions": instructions, "input": text});
        if let Some(k) = key {
            b["prompt_cache_key"] = json!(k);
        }
        b
    };
    let (_, r1) = c.post("/responses", body("one two three", Some("user-1"))).await;
    assert_eq!(r1["prompt_cache_key"], "user-1");
    assert_eq!(r1["usage"]["input_tokens"], 23);
    assert_eq!(r1["usage"]["input_tokens_details"]["cached_tokens"], 0, "first request: nothing cached");
    assert_eq!(r1["usage"]["input_tokens_details"]["cache_write_tokens"], 0);
    // turn 2: instructions (20) + "one two three" (3) + answer (5) + input (2) = 30; shared prefix 23 → 16 + 0*8
    let (_, r2) = c.post("/responses", body("four five", Some("user-1"))).await;
    assert_eq!(r2["usage"]["input_tokens"], 30);
    assert_eq!(r2["usage"]["input_tokens_details"]["cached_tokens"], 16);
    // turn 3: shared prefix 30 → 16 + 8 = 24
    let (_, r3) = c.post("/responses", body("six", Some("user-1"))).await;
    assert_eq!(r3["usage"]["input_tokens_details"]["cached_tokens"], 24);
    // another key has no previous request
    let (_, r4) = c.post("/responses", body("seven", Some("user-2"))).await;
    assert_eq!(r4["usage"]["input_tokens_details"]["cached_tokens"], 0);
    // without a key the conversation is the scope
    let (_, r5) = c.post("/responses", body("eight", None)).await;
    assert_eq!(r5["usage"]["input_tokens_details"]["cached_tokens"], 0);
    let (_, r6) = c.post("/responses", body("nine", None)).await;
    let input6 = r6["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(r6["usage"]["input_tokens_details"]["cached_tokens"], json!(16 + (input6 - 1 - 16) / 8 * 8));
    // changing instructions (what comes first) breaks the prefix
    let mut b = body("ten", Some("user-1"));
    b["instructions"] = json!("beta ".repeat(20));
    let (_, r7) = c.post("/responses", b).await;
    assert_eq!(r7["usage"]["input_tokens_details"]["cached_tokens"], 0);
    // live thresholds by default: short prompts are never cached
    sb.set_config(|c| {
        c.cache_min_tokens = 1024;
        c.cache_step_tokens = 128;
    });
    let (_, r8) = c.post("/responses", body("eleven", Some("user-1"))).await;
    let (_, r9) = c.post("/responses", body("twelve", Some("user-1"))).await;
    assert_eq!(r8["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(r9["usage"]["input_tokens_details"]["cached_tokens"], 0);
    let big = "gamma ".repeat(1500);
    let (_, a) = c.post("/responses", json!({"model": "gpt-4.1-mini", "instructions": big, "input": "a", "prompt_cache_key": "big"})).await;
    let (_, b) = c.post("/responses", json!({"model": "gpt-4.1-mini", "instructions": big, "input": "b", "prompt_cache_key": "big"})).await;
    assert_eq!(a["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(b["usage"]["input_tokens_details"]["cached_tokens"], 1024 + 3 * 128, "1500 shared → 1408");
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "x", "prompt_cache_key": 5})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "prompt_cache_key");
    sb.shutdown().await;
}

#[tokio::test]
async fn usage_counts_the_whole_context_and_the_totals_add_up() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let conv = new_conversation(&c).await;
    let mut expect = Usage::default();
    let mut add = |u: &Value| {
        expect.requests += 1;
        expect.input_tokens += u["input_tokens"].as_u64().unwrap();
        expect.cached_tokens += u["input_tokens_details"]["cached_tokens"].as_u64().unwrap();
        expect.output_tokens += u["output_tokens"].as_u64().unwrap();
        expect.reasoning_tokens += u["output_tokens_details"]["reasoning_tokens"].as_u64().unwrap();
        expect.total_tokens += u["total_tokens"].as_u64().unwrap();
    };
    let body = |text: &str| json!({"model": "gpt-4o", "conversation": conv, "instructions": "be brief", "input": text, "prompt_cache_key": "k1", "safety_identifier": "u-7"});
    let (_, r1) = c.post("/responses", body("my name is Eve")).await;
    assert_eq!(r1["usage"]["input_tokens"], 2 + 4);
    assert_eq!(r1["usage"]["output_tokens"], 5);
    assert_eq!(r1["usage"]["total_tokens"], 11);
    assert_eq!(r1["safety_identifier"], "u-7");
    add(&r1["usage"]);
    let (_, r2) = c.post("/responses", body("what is my name?")).await;
    assert_eq!(r2["usage"]["input_tokens"], 2 + 4 + 5 + 4, "instructions + conversation + input");
    add(&r2["usage"]);
    // reasoning models: reasoning tokens are part of the output tokens
    let (_, r3) = c.post("/responses", json!({"model": "o4-mini", "input": "echo: a b c"})).await;
    let u = &r3["usage"];
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 8 + 4, "8 + the words of the current message");
    assert_eq!(u["output_tokens"], 3 + 12);
    add(u);
    // streamed
    let (_, text) = c.post_text("/responses", json!({"model": "gpt-5-mini", "input": "echo: x y", "stream": true})).await;
    let done = sse(&text).last().unwrap().1["response"].clone();
    assert_eq!(done["usage"]["output_tokens_details"]["reasoning_tokens"], 8 + 3);
    add(&done["usage"]);
    let t = sb.usage_totals();
    assert_eq!(t.responses, expect);
    assert_eq!(t.all, expect);
    assert_eq!(t.by_prompt_cache_key["k1"].requests, 2);
    assert_eq!(t.by_user["u-7"].input_tokens, 6 + 15);
    assert_eq!(t.by_conversation[&conv].requests, 2);
    assert_eq!(t.by_model["o4-mini"].reasoning_tokens, 12);
    // runs and embeddings are summed on their own
    let (_, th) = c.post("/threads", json!({"messages": [{"role": "user", "content": "echo: one two"}]})).await;
    let thread = th["id"].as_str().unwrap().to_string();
    let done = run_to_end(&c, &thread, json!({"assistant_id": "asst_1", "instructions": "hi there"})).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"], json!({"prompt_tokens": 2 + 3, "completion_tokens": 2, "total_tokens": 7}));
    let (_, e) = c.post("/embeddings", json!({"model": "text-embedding-3-small", "input": ["a b", "c"]})).await;
    assert_eq!(e["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let t = sb.usage_totals();
    assert_eq!(t.runs.input_tokens, 5);
    assert_eq!(t.runs.output_tokens, 2);
    assert_eq!(t.by_conversation[&thread].total_tokens, 7);
    assert_eq!(t.embeddings.input_tokens, 3);
    assert_eq!(t.all.requests, expect.requests + 2);
    // failed or cut answers bill nothing
    sb.inject(swapbot_sandbox::Fault::on("/responses", swapbot_sandbox::FaultKind::StreamFailed));
    c.post("/responses", json!({"model": "gpt-4o", "input": "x"})).await;
    assert_eq!(sb.usage_totals().responses, expect);
    // the admin route shows the same, and resets
    let root = sb.base_url().trim_end_matches("/v1").to_string();
    let http = reqwest::Client::new();
    let v: Value = http.get(format!("{root}/_sandbox/usage")).send().await.unwrap().json().await.unwrap();
    assert_eq!(serde_json::from_value::<swapbot_sandbox::UsageTotals>(v.clone()).unwrap(), sb.usage_totals());
    assert_eq!(v["responses"]["input_tokens"], json!(expect.input_tokens));
    assert_eq!(v["by_prompt_cache_key"]["k1"]["requests"], 2);
    assert_eq!(sb.requests().iter().filter(|r| r.path.contains("_sandbox")).count(), 0);
    http.delete(format!("{root}/_sandbox/usage")).send().await.unwrap();
    assert_eq!(sb.usage_totals(), Default::default());
    sb.shutdown().await;
}

#[tokio::test]
async fn input_tokens_endpoint_counts_the_would_be_context() {
    let (sb, c) = start(window(20)).await;
    let conv = new_conversation(&c).await;
    c.post("/responses", turn(&conv, "one two three", json!({}))).await; // 3 + 5
    let (st, v) = c.post("/responses/input_tokens", json!({"model": "gpt-4o", "conversation": conv, "input": "four five", "instructions": "a b"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"object": "response.input_tokens", "input_tokens": 2 + 8 + 2}));
    let (_, v) = c.post("/responses/input_tokens", json!({"model": "gpt-4o", "conversation": conv, "input": "x ".repeat(15)})).await;
    assert_eq!(v["input_tokens"], 8 + 15, "disabled: counted even over the window");
    let (_, v) = c.post("/responses/input_tokens", json!({"model": "gpt-4o", "conversation": conv, "input": "x ".repeat(15), "truncation": "auto"})).await;
    assert_eq!(v["input_tokens"], 5 + 15, "auto: what would be seen (the oldest item dropped)");
    sb.shutdown().await;
}

// ---------------------------------------------------------------- assistants truncation

async fn run_to_end(c: &Client, thread: &str, body: Value) -> Value {
    let (st, run) = c.post(&format!("/threads/{thread}/runs"), body).await;
    assert_eq!(st, StatusCode::OK, "{run}");
    for _ in 0..10 {
        let (_, v) = c.get(&format!("/threads/{thread}/runs/{}", run["id"].as_str().unwrap())).await;
        if !matches!(v["status"].as_str(), Some("queued" | "in_progress")) {
            return v;
        }
    }
    panic!("run never ended");
}

async fn last_answer(c: &Client, thread: &str) -> String {
    let (_, l) = c.get(&format!("/threads/{thread}/messages?limit=1")).await;
    l["data"][0]["content"][0]["text"]["value"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn runs_truncate_with_their_strategy_and_never_overflow() {
    let (sb, c) = start(window(30)).await;
    let (_, th) = c.post("/threads", json!({"messages": [
        {"role": "user", "content": "my name is Ivy"},
        {"role": "assistant", "content": "Nice to meet you, Ivy."},
        {"role": "user", "content": "my pet is a cat"},
        {"role": "assistant", "content": "OK, your pet is a cat."},
        {"role": "user", "content": "what is my name?"},
    ]})).await;
    let thread = th["id"].as_str().unwrap().to_string();
    // auto (the default): fits; 4 + 5 + 5 + 6 + 4 = 24 tokens
    let run = run_to_end(&c, &thread, json!({"assistant_id": "asst_1"})).await;
    assert_eq!(run["truncation_strategy"], json!({"type": "auto", "last_messages": null}));
    assert_eq!(run["usage"]["prompt_tokens"], 24);
    assert_eq!(last_answer(&c, &thread).await, "Your name is Ivy.");
    // last_messages: only the last N messages are seen
    c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "what is my name?"})).await;
    let run = run_to_end(&c, &thread, json!({"assistant_id": "asst_1", "truncation_strategy": {"type": "last_messages", "last_messages": 2}})).await;
    assert_eq!(run["truncation_strategy"], json!({"type": "last_messages", "last_messages": 2}));
    assert_eq!(run["usage"]["prompt_tokens"], 4 + 4);
    assert_eq!(last_answer(&c, &thread).await, "I don't know your name yet.");
    // auto over the window drops messages from the middle: the first one stays
    for i in 0..3 {
        c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": format!("filler {i}")})).await;
        run_to_end(&c, &thread, json!({"assistant_id": "asst_1"})).await;
    }
    c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "what is my pet?"})).await;
    let run = run_to_end(&c, &thread, json!({"assistant_id": "asst_1"})).await;
    assert_eq!(run["status"], "completed");
    assert!(run["usage"]["prompt_tokens"].as_u64().unwrap() <= 30);
    assert_eq!(last_answer(&c, &thread).await, "I don't know your pet yet.");
    c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "what is my name?"})).await;
    run_to_end(&c, &thread, json!({"assistant_id": "asst_1"})).await;
    assert_eq!(last_answer(&c, &thread).await, "Your name is Ivy.");
    // max_prompt_tokens lowers the limit (minimum 256 per the spec)
    let (st, v) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_1", "max_prompt_tokens": 10})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // the latest message alone over the window: the run ends incomplete, adds no message, bills nothing
    let before = sb.thread_messages(&thread).unwrap().len();
    c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "w ".repeat(31)})).await;
    let run = run_to_end(&c, &thread, json!({"assistant_id": "asst_1"})).await;
    assert_eq!(run["status"], "incomplete");
    assert_eq!(run["incomplete_details"]["reason"], "max_prompt_tokens");
    assert_eq!(sb.thread_messages(&thread).unwrap().len(), before + 1);
    // invalid strategies
    let (st, v) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_1", "truncation_strategy": {"type": "first"}})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "truncation_strategy.type");
    let (st, _) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_1", "truncation_strategy": {"type": "last_messages", "last_messages": 0}})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- fidelity

#[tokio::test]
async fn assistant_output_text_items_are_accepted_and_facts_are_remembered() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let (st, v) = c.post("/conversations", json!({"items": [
        {"type": "message", "role": "user", "content": "my secret is Red Kite"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "OK, your secret is Red Kite."}]},
    ]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let a = v["id"].as_str().unwrap().to_string();
    let items = sb.conversation_items(&a).unwrap();
    assert_eq!(items[1]["content"][0]["type"], "output_text");
    assert_eq!(items[1]["content"][0]["annotations"], json!([]));
    let (st, v) = c.post(&format!("/conversations/{a}/items"), json!({"items": [
        {"role": "assistant", "content": [{"type": "output_text", "text": "Anything else?"}]}]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = c.post(&format!("/conversations/{a}/items"), json!({"items": [
        {"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("'output_text'") && msg.contains("'refusal'"), "{msg}");
    assert_eq!(v["error"]["param"], "items[0].content[0]");
    let b = new_conversation(&c).await;
    let (_, _) = c.post("/responses", turn(&b, "Hi! My secret is Green Owl.", json!({}))).await;
    let (_, va) = c.post("/responses", turn(&a, "What is my secret?", json!({}))).await;
    let (_, vb) = c.post("/responses", turn(&b, "What is my secret?", json!({}))).await;
    assert_eq!(output_text(&va), "Your secret is Red Kite.");
    assert_eq!(output_text(&vb), "Your secret is Green Owl.");
    let (_, vc) = c.post("/responses", json!({"model": "gpt-4o", "input": "what's my favourite colour?"})).await;
    assert_eq!(output_text(&vc), "I don't know your favourite colour yet.");
    sb.shutdown().await;
}

// ---------------------------------------------------------------- chat completions

#[tokio::test]
async fn chat_completions_plain_and_streamed() {
    let (sb, c) = start(SandboxConfig { cache_min_tokens: 4, cache_step_tokens: 2, ..Default::default() }).await;
    let messages = json!([
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "my name is Lu"},
        {"role": "assistant", "content": "Nice to meet you, Lu."},
        {"role": "user", "content": [{"type": "text", "text": "what is my name?"}]},
    ]);
    let (st, v) = c.post("/chat/completions", json!({"model": "gpt-4o-mini", "messages": messages, "prompt_cache_key": "p"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Your name is Lu.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 3 + 4 + 5 + 4);
    assert_eq!(u["completion_tokens"], 4);
    assert_eq!(u["total_tokens"], 20);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 0);
    // stateless: another request without the history knows nothing
    let (_, v) = c.post("/chat/completions", json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "what is my name?"}]})).await;
    assert_eq!(v["choices"][0]["message"]["content"], "I don't know your name yet.");
    // streamed with usage: role chunk, content chunks, finish chunk, usage chunk, [DONE]
    let (st, text) = c.post_text("/chat/completions", json!({"model": "gpt-4o-mini", "messages": messages, "stream": true,
        "stream_options": {"include_usage": true}, "prompt_cache_key": "p"})).await;
    assert_eq!(st, StatusCode::OK);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("event:"));
    let chunks: Vec<Value> = sse(&text).into_iter().map(|(_, d)| d).filter(|d| d.is_object()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["obfuscation"].is_string()), "obfuscation is on by default: {text}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Your name is Lu.");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish["usage"].is_null());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 16);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 4 + 12 / 2 * 2, "same key, same messages: 16 shared");
    // without include_usage there is no usage chunk
    let (_, text) = c.post_text("/chat/completions", json!({"model": "gpt-4o-mini", "messages": messages, "stream": true})).await;
    assert!(!text.contains("\"usage\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
    let (_, text) = c.post_text("/chat/completions", json!({"model": "gpt-4o-mini", "messages": messages, "stream": true,
        "stream_options": {"include_obfuscation": false}})).await;
    assert!(!text.contains("obfuscation") && text.ends_with("data: [DONE]\n\n"), "{text}");
    // max_tokens → length
    let (_, v) = c.post("/chat/completions", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "long answer 500"}], "max_completion_tokens": 5})).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // reasoning model
    let (_, v) = c.post("/chat/completions", json!({"model": "o3-mini", "messages": [{"role": "user", "content": "echo: a"}]})).await;
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 10);
    assert_eq!(v["usage"]["completion_tokens"], 11);
    // context window, chat style
    sb.set_config(|c| c.context_window = Some(10));
    let (st, v) = c.post("/chat/completions", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a b c d e f g h i j k"}]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "messages");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "This model's maximum context length is 10 tokens. However, your messages resulted in 11 tokens. Please reduce the length of the messages.");
    // validation
    let (st, v) = c.post("/chat/completions", json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "empty_array");
    let (st, v) = c.post("/chat/completions", json!({"model": "gpt-4o", "input": "x", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "unknown_parameter");
    let (st, _) = c.post("/chat/completions", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // faults: cut stream, error chunk
    sb.set_config(|c| c.context_window = None);
    sb.inject(swapbot_sandbox::Fault::on("/chat/completions", swapbot_sandbox::FaultKind::CutStreamAfterDeltas(1)));
    let r = c.req(reqwest::Method::POST, "/chat/completions").json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "echo: a b c"}], "stream": true})).send().await.unwrap();
    assert!(r.text().await.is_err() , "cut");
    sb.inject(swapbot_sandbox::Fault::on("/chat/completions", swapbot_sandbox::FaultKind::ErrorEvent));
    let (_, text) = c.post_text("/chat/completions", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": true})).await;
    assert!(text.contains("\"error\"") && !text.contains("[DONE]"));
    sb.inject(swapbot_sandbox::Fault::on("/chat/completions", swapbot_sandbox::FaultKind::RateLimited { retry_after_secs: 1 }));
    let (st, _) = c.post("/chat/completions", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let t = sb.usage_totals();
    assert_eq!(t.chat.requests, 7, "plain ×4 (incl. max_tokens, reasoning), streamed ×3; cut and failed ones bill nothing");
    assert_eq!(t.by_prompt_cache_key["p"].requests, 2);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- binary and admin config

#[tokio::test]
async fn binary_and_admin_config_set_the_window_and_cache() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapbot-sandbox"))
        .args(["--port", "0", "--context-window", "12", "--model-window", "gpt-4o=5", "--cache-min-tokens", "2", "--cache-step-tokens", "1", "--min-compact-threshold", "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let base = first.strip_prefix("export OPENAI_BASE_URL=").unwrap().to_string();
    let http = reqwest::Client::new();
    let post = |body: Value| http.post(format!("{base}/responses")).json(&body).send();
    let r = post(json!({"model": "gpt-4.1-mini", "input": "a b c d e f g h i j k l m"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(json!({"model": "gpt-4o", "input": "a b c d e f"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(json!({"model": "gpt-4.1-mini", "input": "a b c", "context_management": [{"type": "compaction", "compact_threshold": 3}]})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let root = base.trim_end_matches("/v1");
    let cfg: Value = http.get(format!("{root}/_sandbox/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["context_window"], 12);
    assert_eq!(cfg["model_context_windows"]["gpt-4o"], 5);
    assert_eq!(cfg["cache_min_tokens"], 2);
    assert_eq!(cfg["cache_step_tokens"], 1);
    assert_eq!(cfg["min_compact_threshold"], 3);
    let cfg: Value = http.post(format!("{root}/_sandbox/config")).json(&json!({"context_window": null, "cache_min_tokens": 1024})).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["context_window"], Value::Null);
    let r = post(json!({"model": "gpt-4.1-mini", "input": "a b c d e f g h i j k l m"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn compaction_trigger_compacts_now() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let conv = new_conversation(&c).await;
    c.post("/responses", turn(&conv, "my name is Tao", json!({}))).await;
    c.post("/responses", turn(&conv, "hello there", json!({}))).await;
    let (st, v) = c.post("/responses", turn(&conv, "", json!({"input": [{"role": "user", "content": "what is my name?"}, {"type": "compaction_trigger"}]}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["output"][0]["type"], "compaction");
    assert_eq!(output_text(&v), "Your name is Tao.");
    assert!(!sb.conversation_items(&conv).unwrap().iter().any(|i| i["type"] == "compaction_trigger"));
    let (_, v) = c.post("/responses", turn(&conv, "what is my name?", json!({}))).await;
    assert_eq!(output_text(&v), "Your name is Tao.");
    assert_eq!(v["usage"]["input_tokens"], 5 + 4 + 4 + 4, "compaction item (5 words + the name fact) + last answer + input");
    let (st, _) = c.post("/responses", turn(&conv, "", json!({"input": [{"type": "compaction_trigger"}, {"role": "user", "content": "hi"}]}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_thousand_turns_stay_answered_and_flat() {
    let (sb, c) = start(window(300)).await;
    let conv = new_conversation(&c).await;
    let started = std::time::Instant::now();
    let mut last_input = 0;
    for i in 0..1000 {
        let text = if i % 10 == 0 { format!("my lucky number is {i}") } else { format!("just chatting, turn {i} of many") };
        let (st, v) = c.post("/responses", turn(&conv, &text, json!({"truncation": "auto", "prompt_cache_key": "u"}))).await;
        assert_eq!(st, StatusCode::OK, "turn {i}: {v}");
        last_input = v["usage"]["input_tokens"].as_u64().unwrap();
        assert!(last_input <= 300);
    }
    assert!(last_input > 250, "full window: {last_input}");
    let (_, v) = c.post("/responses", turn(&conv, "what is my lucky number?", json!({"truncation": "auto"}))).await;
    assert_eq!(output_text(&v), "Your lucky number is 990.");
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), 2002);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    sb.shutdown().await;
}

#[tokio::test]
async fn run_max_completion_tokens_ends_incomplete() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let (_, th) = c.post("/threads", json!({"messages": [{"role": "user", "content": "long answer 5000"}]})).await;
    let thread = th["id"].as_str().unwrap().to_string();
    let run = run_to_end(&c, &thread, json!({"assistant_id": "asst_1", "max_completion_tokens": 300})).await;
    assert_eq!(run["status"], "incomplete");
    assert_eq!(run["incomplete_details"]["reason"], "max_completion_tokens");
    assert_eq!(run["max_completion_tokens"], 300);
    assert_eq!(run["usage"]["completion_tokens"], 300);
    let msgs = sb.thread_messages(&thread).unwrap();
    assert_eq!(msgs.last().unwrap()["status"], "incomplete");
    assert_eq!(sb.usage_totals().runs.output_tokens, 300);
    let (st, _) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_1", "max_completion_tokens": 10})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    sb.shutdown().await;
}

#[tokio::test]
async fn repeated_compaction_stays_bounded_and_keeps_the_recent_facts() {
    let cfg = SandboxConfig { context_window: Some(400), min_compact_threshold: 10, ..Default::default() };
    let (sb, c) = start(cfg).await;
    let conv = new_conversation(&c).await;
    let cm = json!({"context_management": [{"type": "compaction", "compact_threshold": 250}]});
    let mut compactions = 0;
    for i in 0..200 {
        let (st, v) = c.post("/responses", turn(&conv, &format!("remember fact number {i} with a few more words"), cm.clone())).await;
        assert_eq!(st, StatusCode::OK, "turn {i}: {v}");
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() <= 400, "turn {i}: {}", v["usage"]);
        compactions += (v["output"][0]["type"] == "compaction") as u32;
    }
    assert!(compactions > 10, "{compactions}");
    let (_, v) = c.post("/responses", turn(&conv, "What did I ask you to remember?", cm.clone())).await;
    let recall = output_text(&v);
    for i in [197, 198, 199] {
        assert!(recall.contains(&format!("fact number {i} ")), "{recall}");
    }
    assert!(!recall.contains("fact number 0 "), "the oldest facts of a bounded summary are gone");
    let (_, v) = c.post("/responses", turn(&conv, "count", cm.clone())).await;
    assert_eq!(output_text(&v), "This conversation has 201 earlier user messages.");
    sb.shutdown().await;
}
