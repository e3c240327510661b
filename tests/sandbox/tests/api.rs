//! Drives the sandbox over real HTTP on 127.0.0.1 with reqwest.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use swapbot_sandbox::{Fault, FaultKind, Sandbox, SandboxConfig};

mod common;
use common::{Client, output_text, read_events};

fn deltas(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(e, _)| e == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect()
}

async fn start() -> (Sandbox, Client) {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let c = Client::new(&sb);
    (sb, c)
}

async fn new_conversation(c: &Client) -> String {
    let (st, v) = c.post("/conversations", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn ask(c: &Client, conv: &str, text: &str) -> String {
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o-mini", "conversation": conv, "input": text})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "completed");
    output_text(&v)
}

fn assert_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "not an OpenAI error body: {v}");
    assert!(e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code"), "{v}");
}

// ---------------------------------------------------------------- Responses

#[tokio::test]
async fn stream_event_sequence_is_complete_and_ordered() {
    let (sb, c) = start().await;
    let (events, clean) = c
        .stream("/responses", json!({"model": "gpt-4o-mini", "input": "echo: Hello brave new world", "instructions": "Be kind.", "stream": true}))
        .await;
    assert!(clean);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let mut expected = vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expected.extend(std::iter::repeat_n("response.output_text.delta", 4));
    expected.extend(["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]);
    assert_eq!(names, expected);
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], json!(name), "type matches event line");
        assert_eq!(data["sequence_number"], json!(i), "sequence numbers count up from 0");
    }
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(deltas(&events), "Hello brave new world");
    assert_eq!(events[5].1["delta"], " brave");
    assert_eq!(events[8].1["text"], "Hello brave new world");
    let item_id = events[2].1["item"]["id"].as_str().unwrap();
    assert!(item_id.starts_with("msg_"));
    assert!(events[4..8].iter().all(|(_, d)| d["item_id"] == item_id));
    let done = &events.last().unwrap().1["response"];
    assert!(done["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(done["status"], "completed");
    assert_eq!(output_text(done), "Hello brave new world");
    assert_eq!(done["usage"]["output_tokens"], 4);
    assert!(done["usage"]["input_tokens"].as_u64().unwrap() > 0);
    // The stored response is retrievable.
    let (st, got) = c.get(&format!("/responses/{}", done["id"].as_str().unwrap())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(output_text(&got), "Hello brave new world");
    sb.shutdown().await;
}

#[tokio::test]
async fn reasoning_models_put_a_reasoning_item_first() {
    let (sb, c) = start().await;
    let (st, v) = c.post("/responses", json!({"model": "gpt-5-mini", "input": "hello"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(v["output"][1]["type"], "message");
    assert_eq!(output_text(&v), "You said: hello");
    let (events, _) = c.stream("/responses", json!({"model": "gpt-5", "input": "echo: a b", "stream": true})).await;
    assert_eq!(events[2].1["item"]["type"], "reasoning");
    assert_eq!(events[4].1["item"]["type"], "message");
    assert_eq!(events[4].1["output_index"], 1);
    assert_eq!(deltas(&events), "a b");
    sb.shutdown().await;
}

#[tokio::test]
async fn conversation_remembers_and_another_does_not() {
    let (sb, c) = start().await;
    let a = new_conversation(&c).await;
    let b = new_conversation(&c).await;
    assert!(a.starts_with("conv_") && a != b);
    assert_eq!(ask(&c, &a, "Hi, my name is Alice.").await, "Nice to meet you, Alice.");
    assert_eq!(ask(&c, &a, "remember the door code is 1234").await, "OK, I will remember: the door code is 1234.");
    assert_eq!(ask(&c, &a, "What is my name?").await, "Your name is Alice.");
    assert_eq!(ask(&c, &a, "What did I ask you to remember?").await, "You asked me to remember: the door code is 1234.");
    assert_eq!(ask(&c, &a, "count").await, "This conversation has 4 earlier user messages.");
    assert_eq!(ask(&c, &b, "What is my name?").await, "I don't know your name yet.");
    assert_eq!(ask(&c, &b, "What did I ask you to remember?").await, "You have not asked me to remember anything.");
    assert_eq!(ask(&c, &b, "how are you").await, "You said: how are you");
    let items = sb.conversation_items(&a).unwrap();
    assert_eq!(items.len(), 10);
    assert_eq!(items[0]["role"], "user");
    assert_eq!(items[0]["content"][0]["type"], "input_text");
    assert_eq!(items[1]["role"], "assistant");
    assert_eq!(items[1]["content"][0]["text"], "Nice to meet you, Alice.");
    // streaming turns feed the conversation too
    let (events, _) = c.stream("/responses", json!({"model": "gpt-4o", "conversation": {"id": a}, "input": [{"role": "user", "content": [{"type": "input_text", "text": "what is my name?"}]}], "stream": true})).await;
    assert_eq!(deltas(&events), "Your name is Alice.");
    assert_eq!(events.last().unwrap().1["response"]["conversation"]["id"], json!(a));
    assert_eq!(sb.conversation_items(&a).unwrap().len(), 12);
    sb.shutdown().await;
}

#[tokio::test]
async fn replayed_items_are_history_and_validated_like_the_live_api() {
    let (sb, c) = start().await;
    let (st, v) = c
        .post("/conversations", json!({"metadata": {"user": "42"}, "items": [
            {"type": "message", "role": "user", "content": "my name is Bob"},
            {"type": "message", "role": "assistant", "content": "Nice to meet you, Bob."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "remember tea"}]},
        ]}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "conversation");
    assert_eq!(v["metadata"]["user"], "42");
    let conv = v["id"].as_str().unwrap().to_string();
    let (st, v) = c.post(&format!("/conversations/{conv}/items"), json!({"items": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "OK"}], "id": "msg_given", "status": "completed"},
    ]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(ask(&c, &conv, "what is my name?").await, "Your name is Bob.");
    assert_eq!(ask(&c, &conv, "what did I ask you to remember?").await, "You asked me to remember: tea.");
    assert_eq!(ask(&c, &conv, "count").await, "This conversation has 4 earlier user messages.");

    // assistant + input_text → 400 with the live message
    let (st, v) = c.post(&format!("/conversations/{conv}/items"), json!({"items": [
        {"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v);
    assert!(v["error"]["message"].as_str().unwrap().contains("Supported values are: 'output_text' and 'refusal'"), "{v}");
    // assistant + output_text without id/status is accepted, as the live API does
    let (st, v) = c.post(&format!("/conversations/{conv}/items"), json!({"items": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]}]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["data"][0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["data"][0]["content"][0]["type"], "output_text");
    // more than 20 items per call → 400
    let many: Vec<Value> = (0..21).map(|i| json!({"type": "message", "role": "user", "content": format!("m{i}")})).collect();
    let (st, v) = c.post("/conversations", json!({"items": many})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v);
    let (st, _) = c.post(&format!("/conversations/{conv}/items"), json!({"items": many})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = c.post(&format!("/conversations/{conv}/items"), json!({"items": many[..20]})).await;
    assert_eq!(st, StatusCode::OK);

    // listing: default desc, limit, after, asc
    let (st, v) = c.get(&format!("/conversations/{conv}/items?limit=2")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["content"][0]["text"], "m19");
    assert_eq!(v["has_more"], true);
    let last = v["last_id"].as_str().unwrap();
    let (_, v2) = c.get(&format!("/conversations/{conv}/items?limit=1&after={last}")).await;
    assert_eq!(v2["data"][0]["content"][0]["text"], "m17");
    let (_, v3) = c.get(&format!("/conversations/{conv}/items?order=asc&limit=1")).await;
    assert_eq!(v3["data"][0]["content"][0]["text"], "my name is Bob");
    let (st, _) = c.get(&format!("/conversations/{conv}/items?limit=101")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // get / delete / 404
    let (st, _) = c.get(&format!("/conversations/{conv}")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = c.delete(&format!("/conversations/{conv}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["deleted"], true);
    let (st, v) = c.get(&format!("/conversations/{conv}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v);
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "hi"})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v);
    assert_eq!(sb.conversation_count(), 0);
    sb.shutdown().await;
}

#[tokio::test]
async fn request_validation_follows_the_spec() {
    let (sb, c) = start().await;
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "hi", "assistant_id": "asst_1"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "unknown_parameter");
    assert_eq!(v["error"]["param"], "assistant_id");
    let (st, v) = c.post("/responses", json!({"input": "hi"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "model");
    let conv = new_conversation(&c).await;
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "hi", "conversation": conv, "previous_response_id": "resp_1"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v);
    let (st, v) = c.get("/responses/resp_nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v);
    let r = c.req(reqwest::Method::POST, "/responses").header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (st, v) = c.get("/nothing/here").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(v["error"]["message"].as_str().unwrap().starts_with("Invalid URL (GET /v1/nothing/here)"));
    // previous_response_id chains context
    let (_, r1) = c.post("/responses", json!({"model": "gpt-4o", "input": "my name is Zed"})).await;
    let (_, r2) = c.post("/responses", json!({"model": "gpt-4o", "input": "what is my name?", "previous_response_id": r1["id"]})).await;
    assert_eq!(output_text(&r2), "Your name is Zed.");
    // max_output_tokens truncates to an incomplete response
    let (_, r3) = c.post("/responses", json!({"model": "gpt-4o", "input": "long answer 2000", "max_output_tokens": 16})).await;
    assert_eq!(r3["status"], "incomplete");
    assert_eq!(r3["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r3["usage"]["output_tokens"], 16);
    sb.shutdown().await;
}

#[tokio::test]
async fn long_answer_is_long_and_deterministic() {
    let (sb, c) = start().await;
    let (_, a) = c.post("/responses", json!({"model": "gpt-4o", "input": "long answer 5000"})).await;
    let (_, b) = c.post("/responses", json!({"model": "gpt-4o", "input": "long answer 5000"})).await;
    let t = output_text(&a);
    assert!(t.len() >= 5000 && t.len() < 5100, "{}", t.len());
    assert!(t.contains("\n\n"));
    assert_eq!(t, output_text(&b));
    sb.shutdown().await;
}

#[tokio::test]
async fn knowledge_base_context_is_cited() {
    let (sb, c) = start().await;
    let instructions = "You are helpful.\nContext:\n[1] (handbook.md) The office opens at nine. Bring your badge.\n[2] (menu.txt) Lunch is served at noon.";
    let (_, v) = c.post("/responses", json!({"model": "gpt-4o", "instructions": instructions, "input": "When is lunch served?"})).await;
    assert_eq!(output_text(&v), "According to my notes: Lunch is served at noon. (from menu.txt)");
    let (_, v) = c.post("/responses", json!({"model": "gpt-4o", "instructions": instructions, "input": "what time does the office open"})).await;
    assert!(output_text(&v).ends_with(" (from handbook.md)"));
    assert!(output_text(&v).contains("The office opens at nine."));
    let (_, v) = c.post("/responses", json!({"model": "gpt-4o", "instructions": instructions, "input": "sing a song"})).await;
    assert_eq!(output_text(&v), "You said: sing a song");
    sb.shutdown().await;
}

#[tokio::test]
async fn conversation_locked_while_a_stream_runs() {
    let (sb, c) = start().await;
    sb.set_config(|cfg| cfg.time_to_first_token = Duration::from_millis(1500));
    let conv = new_conversation(&c).await;
    let a = c
        .req(reqwest::Method::POST, "/responses")
        .json(&json!({"model": "gpt-4o", "conversation": conv, "input": "my name is Ann", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "hi"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "conversation_locked");
    assert_error(&v);
    let (events, clean) = read_events(a).await;
    assert!(clean);
    assert_eq!(events.last().unwrap().0, "response.completed");
    sb.set_config(|cfg| cfg.time_to_first_token = Duration::ZERO);
    assert_eq!(ask(&c, &conv, "what is my name?").await, "Your name is Ann.");
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), 4, "the rejected turn left no trace");
    sb.shutdown().await;
}

#[tokio::test]
async fn background_response_lifecycle_and_lock() {
    let (sb, c) = start().await;
    sb.set_config(|cfg| cfg.run_steps = 2);
    let conv = new_conversation(&c).await;
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "my name is Bea", "background": true})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["status"], "queued");
    assert_eq!(v["background"], true);
    let id = v["id"].as_str().unwrap().to_string();
    // locked while the background response runs (no timing involved: it waits for polls)
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "x", "stream": true})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "conversation_locked");
    let (_, p1) = c.get(&format!("/responses/{id}")).await;
    assert_eq!(p1["status"], "in_progress");
    assert_eq!(p1["output"], json!([]));
    let (_, p2) = c.get(&format!("/responses/{id}")).await;
    assert_eq!(p2["status"], "in_progress");
    let (_, p3) = c.get(&format!("/responses/{id}")).await;
    assert_eq!(p3["status"], "completed");
    assert_eq!(output_text(&p3), "Nice to meet you, Bea.");
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), 2);
    // cancel
    let (_, v) = c.post("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "remember x", "background": true})).await;
    let id2 = v["id"].as_str().unwrap().to_string();
    let (st, v) = c.post(&format!("/responses/{id2}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["status"], "cancelled");
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), 2, "a cancelled turn adds nothing");
    let (st, _) = c.post(&format!("/responses/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "completed ones cannot be cancelled");
    let (_, plain) = c.post("/responses", json!({"model": "gpt-4o", "input": "x"})).await;
    let (st, v) = c.post(&format!("/responses/{}/cancel", plain["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v);
    assert_eq!(ask(&c, &conv, "what did I ask you to remember?").await, "You have not asked me to remember anything.");
    sb.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_clients_stay_isolated() {
    let (sb, c) = start().await;
    let c = std::sync::Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let conv = new_conversation(&c).await;
            assert_eq!(ask(&c, &conv, &format!("my name is User{i}")).await, format!("Nice to meet you, User{i}."));
            let (events, _) = c
                .stream("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "what is my name?", "stream": true}))
                .await;
            assert_eq!(deltas(&events), format!("Your name is User{i}."));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sb.conversation_count(), 50);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- Assistants

#[tokio::test]
async fn assistants_need_the_beta_header() {
    let (sb, c) = start().await;
    let r = c.http.post(format!("{}/threads", c.base)).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_error(&v);
    assert!(v["error"]["message"].as_str().unwrap().contains("OpenAI-Beta"));
    assert_eq!(sb.thread_count(), 0);
    sb.shutdown().await;
}

async fn poll_run(c: &Client, thread: &str, run: &str) -> Value {
    for _ in 0..100 {
        let (st, v) = c.get(&format!("/threads/{thread}/runs/{run}")).await;
        assert_eq!(st, StatusCode::OK);
        if !matches!(v["status"].as_str(), Some("queued" | "in_progress" | "cancelling")) {
            return v;
        }
    }
    panic!("run never finished");
}

#[tokio::test]
async fn assistants_run_lifecycle_and_active_run_rejection() {
    let (sb, c) = start().await;
    sb.set_config(|cfg| cfg.run_steps = 2);
    let (st, t) = c.post("/threads", json!({"messages": [{"role": "user", "content": "my name is Carl"}]})).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let thread = t["id"].as_str().unwrap().to_string();
    assert!(thread.starts_with("thread_"));
    let (st, _) = c.post(&format!("/threads/{thread}/runs"), json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "assistant_id is required");
    let (st, run) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(run["status"], "queued");
    let run_id = run["id"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("run_"));
    let (_, p1) = c.get(&format!("/threads/{thread}/runs/{run_id}")).await;
    assert_eq!(p1["status"], "in_progress");
    // active run: new messages and runs are refused with the live texts
    let (st, v) = c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "hello"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["message"], format!("Can't add messages to {thread} while a run {run_id} is active."));
    let (st, v) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["message"], format!("Thread {thread} already has an active run {run_id}."));
    let (_, p2) = c.get(&format!("/threads/{thread}/runs/{run_id}")).await;
    assert_eq!(p2["status"], "in_progress");
    let (_, p3) = c.get(&format!("/threads/{thread}/runs/{run_id}")).await;
    assert_eq!(p3["status"], "completed");
    assert!(p3["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (_, list) = c.get(&format!("/threads/{thread}/messages?run_id={run_id}")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["role"], "assistant");
    assert_eq!(list["data"][0]["run_id"], json!(run_id));
    assert_eq!(list["data"][0]["content"][0]["text"]["value"], "Nice to meet you, Carl.");
    // next turn remembers; order and limit work
    let (st, _) = c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "What is my name?"})).await;
    assert_eq!(st, StatusCode::OK);
    let (_, run2) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc"})).await;
    let done = poll_run(&c, &thread, run2["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    let (_, list) = c.get(&format!("/threads/{thread}/messages?order=desc&limit=1")).await;
    assert_eq!(list["data"][0]["content"][0]["text"]["value"], "Your name is Carl.");
    let (_, asc) = c.get(&format!("/threads/{thread}/messages?order=asc")).await;
    assert_eq!(asc["data"].as_array().unwrap().len(), 4);
    assert_eq!(asc["data"][0]["content"][0]["text"]["value"], "my name is Carl");
    assert_eq!(sb.thread_messages(&thread).unwrap().len(), 4);
    // another thread knows nothing
    let (_, t2) = c.post("/threads", json!({})).await;
    let t2 = t2["id"].as_str().unwrap().to_string();
    c.post(&format!("/threads/{t2}/messages"), json!({"role": "user", "content": [{"type": "text", "text": "what is my name?"}]})).await;
    let (_, r) = c.post(&format!("/threads/{t2}/runs"), json!({"assistant_id": "asst_abc", "additional_instructions": "[1] (x.md) Nothing here."})).await;
    poll_run(&c, &t2, r["id"].as_str().unwrap()).await;
    let (_, l) = c.get(&format!("/threads/{t2}/messages")).await;
    assert_eq!(l["data"][0]["content"][0]["text"]["value"], "I don't know your name yet.");
    assert_eq!(sb.thread_count(), 2);
    sb.shutdown().await;
}

#[tokio::test]
async fn run_cancel_and_unknown_ids() {
    let (sb, c) = start().await;
    sb.set_config(|cfg| cfg.run_steps = 5);
    let (_, t) = c.post("/threads", json!({"messages": [{"role": "user", "content": "hi"}]})).await;
    let thread = t["id"].as_str().unwrap().to_string();
    let (_, run) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc"})).await;
    let run_id = run["id"].as_str().unwrap();
    let (st, v) = c.post(&format!("/threads/{thread}/runs/{run_id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["status"], "cancelling");
    let done = poll_run(&c, &thread, run_id).await;
    assert_eq!(done["status"], "cancelled");
    assert_eq!(sb.thread_messages(&thread).unwrap().len(), 1, "no answer from a cancelled run");
    let (st, _) = c.post(&format!("/threads/{thread}/messages"), json!({"role": "user", "content": "again"})).await;
    assert_eq!(st, StatusCode::OK, "the thread is free again");
    let (st, v) = c.get("/threads/thread_missing").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v);
    let (st, _) = c.get(&format!("/threads/{thread}/runs/run_missing")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    sb.shutdown().await;
}

#[tokio::test]
async fn run_streaming_emits_deltas_and_done() {
    let (sb, c) = start().await;
    let (_, t) = c.post("/threads", json!({"messages": [{"role": "user", "content": "echo: one two three"}]})).await;
    let thread = t["id"].as_str().unwrap().to_string();
    let (events, clean) = c.stream(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc", "stream": true})).await;
    assert!(clean);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names[0], "thread.run.created");
    assert!(names.contains(&"thread.run.completed"));
    assert_eq!(*names.last().unwrap(), "done");
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "thread.message.delta")
        .map(|(_, d)| d["delta"]["content"][0]["text"]["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "one two three");
    let msgs = sb.thread_messages(&thread).unwrap();
    assert_eq!(msgs.last().unwrap()["content"][0]["text"]["value"], "one two three");
    sb.shutdown().await;
}

#[tokio::test]
async fn assistants_gone_answers_404() {
    let sb = Sandbox::start(SandboxConfig { assistants_gone: true, ..Default::default() }).await.unwrap();
    let c = Client::new(&sb);
    let (st, v) = c.post("/threads", json!({})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v);
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/threads"));
    let (st, _) = c.get("/threads/thread_abc/runs/run_abc").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // the Responses path still works
    let (st, _) = c.post("/responses", json!({"model": "gpt-4o", "input": "hi"})).await;
    assert_eq!(st, StatusCode::OK);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- Embeddings

async fn embed(c: &Client, body: Value) -> (StatusCode, Value) {
    c.post("/embeddings", body).await
}

fn vector(v: &Value, i: usize) -> Vec<f64> {
    v["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn embeddings_are_deterministic_sized_and_reflect_overlap() {
    let (sb, c) = start().await;
    let body = json!({"model": "text-embedding-3-small", "input": ["the cat sat on the mat", "a cat sat on a mat", "quantum chromodynamics lecture"]});
    let (st, a) = embed(&c, body.clone()).await;
    assert_eq!(st, StatusCode::OK);
    let (_, b) = embed(&c, body).await;
    assert_eq!(a, b, "deterministic");
    assert_eq!(a["object"], "list");
    assert_eq!(a["model"], "text-embedding-3-small");
    assert_eq!(a["data"].as_array().unwrap().len(), 3);
    assert_eq!(a["data"][2]["index"], 2);
    assert!(a["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let (v0, v1, v2) = (vector(&a, 0), vector(&a, 1), vector(&a, 2));
    assert_eq!(v0.len(), 1536);
    assert!((cosine(&v0, &v0) - 1.0).abs() < 1e-4, "normalised");
    assert!(cosine(&v0, &v1) > 0.4);
    assert!(cosine(&v0, &v1) > cosine(&v0, &v2) + 0.3);
    let (_, l) = embed(&c, json!({"model": "text-embedding-3-large", "input": "x"})).await;
    assert_eq!(vector(&l, 0).len(), 3072);
    let (_, d) = embed(&c, json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 256})).await;
    assert_eq!(vector(&d, 0).len(), 256);
    let (_, ada) = embed(&c, json!({"model": "text-embedding-ada-002", "input": "x"})).await;
    assert_eq!(vector(&ada, 0).len(), 1536);
    let (st, v) = embed(&c, json!({"model": "text-embedding-ada-002", "input": "x", "dimensions": 256})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v);
    let (st, v) = embed(&c, json!({"model": "text-embedding-9", "input": "x"})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
    let too_many: Vec<String> = (0..2049).map(|i| format!("t{i}")).collect();
    let (st, _) = embed(&c, json!({"model": "text-embedding-3-small", "input": too_many})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, b64) = embed(&c, json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64", "dimensions": 4})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b64["data"][0]["embedding"].as_str().unwrap().len(), 24);
    sb.shutdown().await;
}

// ---------------------------------------------------------------- Faults

#[tokio::test]
async fn status_rate_limit_and_quota_faults() {
    let (sb, c) = start().await;
    sb.inject(Fault::on("/responses", FaultKind::Status { status: 503, code: None, message: "overloaded".into() }).method("POST"));
    sb.inject(Fault::on("/responses", FaultKind::RateLimited { retry_after_secs: 7 }));
    sb.inject(Fault::on("/responses", FaultKind::Quota));
    let body = json!({"model": "gpt-4o", "input": "hi"});
    // a GET is not matched by the POST-only fault, but by the next one
    let r = c.req(reqwest::Method::GET, "/responses/resp_x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let (st, v) = c.post("/responses", body.clone()).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"]["message"], "overloaded");
    assert_eq!(v["error"]["type"], "server_error");
    let r = c.req(reqwest::Method::POST, "/responses").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    let (st, _) = c.post("/responses", body.clone()).await;
    assert_eq!(st, StatusCode::OK, "faults are used up");
    // times
    sb.inject(Fault::on("/embeddings", FaultKind::Status { status: 500, code: Some("server_error".into()), message: "boom".into() }).times(2));
    let e = json!({"model": "text-embedding-3-small", "input": "x"});
    assert_eq!(c.post("/embeddings", e.clone()).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.post("/embeddings", e.clone()).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.post("/embeddings", e.clone()).await.0, StatusCode::OK);
    assert!(sb.pending_faults().is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn delay_malformed_and_locked_faults() {
    let (sb, c) = start().await;
    sb.inject(Fault::on("/conversations", FaultKind::DelayBeforeResponse(Duration::from_millis(50))));
    let conv = new_conversation(&c).await;
    sb.inject(Fault::on("/responses", FaultKind::Malformed));
    let r = c.req(reqwest::Method::POST, "/responses").json(&json!({"model": "gpt-4o", "input": "hi"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    sb.inject(Fault::on("/responses", FaultKind::ConversationLocked));
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "hi", "conversation": conv})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "conversation_locked");
    assert_eq!(ask(&c, &conv, "count").await, "This conversation has 0 earlier user messages.");
    sb.shutdown().await;
}

#[tokio::test]
async fn cut_stream_has_no_terminal_event_and_leaves_no_trace() {
    let (sb, c) = start().await;
    let conv = new_conversation(&c).await;
    sb.inject(Fault::on("/responses", FaultKind::CutStreamAfterDeltas(2)));
    let (events, clean) = c.stream("/responses", json!({"model": "gpt-4o", "conversation": conv, "input": "echo: one two three four", "stream": true})).await;
    assert!(!clean, "the connection is closed abruptly");
    assert_eq!(deltas(&events), "one two");
    assert!(!events.iter().any(|(e, _)| matches!(e.as_str(), "response.completed" | "response.failed" | "error")));
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), 0);
    assert_eq!(ask(&c, &conv, "count").await, "This conversation has 0 earlier user messages.", "lock released");
    // without stream the body is cut
    sb.inject(Fault::on("/responses", FaultKind::CutStreamAfterDeltas(0)));
    let r = c.req(reqwest::Method::POST, "/responses").json(&json!({"model": "gpt-4o", "input": "x"})).send().await;
    if let Ok(r) = r { assert!(r.json::<Value>().await.is_err()) }
    sb.shutdown().await;
}

#[tokio::test]
async fn failed_and_error_event_streams() {
    let (sb, c) = start().await;
    let conv = new_conversation(&c).await;
    let body = json!({"model": "gpt-4o", "conversation": conv, "input": "my name is Eve", "stream": true});
    sb.inject(Fault::on("/responses", FaultKind::StreamFailed));
    let (events, clean) = c.stream("/responses", body.clone()).await;
    assert!(clean);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.failed");
    assert_eq!(data["response"]["status"], "failed");
    assert!(data["response"]["error"]["code"].is_string());
    sb.inject(Fault::on("/responses", FaultKind::ErrorEvent));
    let (events, clean) = c.stream("/responses", body.clone()).await;
    assert!(clean);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["type"], "error");
    assert!(data["error"]["message"].is_string() && data["error"]["code"].is_string());
    assert!(data["sequence_number"].is_u64());
    assert_eq!(sb.conversation_items(&conv).unwrap().len(), 0, "failed turns do not enter the conversation");
    // non-streamed variants
    sb.inject(Fault::on("/responses", FaultKind::StreamFailed));
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "x"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["status"], "failed");
    sb.inject(Fault::on("/responses", FaultKind::ErrorEvent));
    let (st, v) = c.post("/responses", json!({"model": "gpt-4o", "input": "x"})).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&v);
    let (events, _) = c.stream("/responses", body).await;
    assert_eq!(events.last().unwrap().0, "response.completed");
    sb.shutdown().await;
}

// ---------------------------------------------------------------- Auth, recording, admin, binary

#[tokio::test]
async fn api_key_is_checked_when_configured() {
    let sb = Sandbox::start(SandboxConfig { api_key: Some("sk-right".into()), ..Default::default() }).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/conversations", sb.base_url());
    let r = http.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_error(&r.json().await.unwrap());
    let r = http.post(&url).bearer_auth("sk-wrong-key-123").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(!v["error"]["message"].as_str().unwrap().contains("sk-wrong-key-123"));
    let r = http.post(&url).bearer_auth("sk-right").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sb.requests().len(), 3, "rejected requests are recorded too");
    sb.shutdown().await;
}

#[tokio::test]
async fn requests_are_recorded() {
    let (sb, c) = start().await;
    c.post("/responses", json!({"model": "gpt-4o", "input": "hi"})).await;
    c.get("/conversations/conv_x/items?limit=5&order=asc").await;
    let reqs = sb.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/responses");
    assert_eq!(reqs[0].body["input"], "hi");
    assert_eq!(reqs[0].header("Authorization"), Some("Bearer sk-test"));
    assert!(reqs[0].headers.iter().all(|(k, _)| *k == k.to_lowercase()));
    assert_eq!(reqs[1].query, "limit=5&order=asc");
    assert_eq!(reqs[1].body, Value::Null);
    sb.clear_requests();
    assert!(sb.requests().is_empty());
    let r = c.req(reqwest::Method::POST, "/responses").json(&json!({"model": "gpt-4o", "input": "hi"})).send().await.unwrap();
    assert!(r.headers().get("x-request-id").unwrap().to_str().unwrap().starts_with("req_"));
    sb.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_drive_faults_config_and_requests() {
    let (sb, c) = start().await;
    let root = sb.base_url().trim_end_matches("/v1").to_string();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{root}/_sandbox/faults"))
        .json(&json!({"path_contains": "/responses", "kind": {"rate_limited": {"retry_after_secs": 3}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.post(format!("{root}/_sandbox/faults")).json(&json!({"method": "POST", "path_contains": "/embeddings", "times": 1, "kind": "quota"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (st, _) = c.post("/responses", json!({"model": "gpt-4o", "input": "hi"})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let (st, v) = c.post("/embeddings", json!({"model": "text-embedding-3-small", "input": "x"})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["code"], "insufficient_quota");
    let r = http.post(format!("{root}/_sandbox/config")).json(&json!({"run_steps": 4, "ttft_ms": 0, "assistants_gone": true})).send().await.unwrap();
    let cfg: Value = r.json().await.unwrap();
    assert_eq!(cfg["run_steps"], 4);
    assert_eq!(sb.config().run_steps, 4);
    assert!(sb.config().assistants_gone);
    let reqs: Value = http.get(format!("{root}/_sandbox/requests")).send().await.unwrap().json().await.unwrap();
    assert_eq!(reqs.as_array().unwrap().len(), 2, "admin calls are not recorded");
    assert_eq!(reqs[0]["path"], "/v1/responses");
    // Fault JSON round-trips
    let f = Fault::on("/x", FaultKind::DelayBeforeResponse(Duration::from_millis(1500))).method("GET").times(3);
    let j = serde_json::to_value(&f).unwrap();
    assert_eq!(j["kind"]["delay_before_response"], 1500);
    assert_eq!(serde_json::from_value::<Fault>(j).unwrap(), f);
    sb.shutdown().await;
}

#[tokio::test]
async fn binary_prints_exports_and_serves() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapbot-sandbox"))
        .args(["--port", "0", "--api-key", "sk-local", "--ttft-ms", "0", "--token-interval-ms", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let second = lines.next_line().await.unwrap().unwrap();
    let base = first.strip_prefix("export OPENAI_BASE_URL=").expect(&first).to_string();
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/v1") && !base.contains(":0/"), "{base}");
    assert_eq!(second, "export OPENAI_API_KEY=sk-local");
    let r = reqwest::Client::new().post(format!("{base}/responses")).bearer_auth("sk-local").json(&json!({"model": "gpt-4o", "input": "echo: up"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(output_text(&v), "up");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn run_faults_fail_runs_without_answers() {
    let (sb, c) = start().await;
    let (_, t) = c.post("/threads", json!({"messages": [{"role": "user", "content": "echo: a b c d"}]})).await;
    let thread = t["id"].as_str().unwrap().to_string();
    // polling: StreamFailed makes the run fail
    sb.inject(Fault::on("/runs", FaultKind::StreamFailed));
    let (_, run) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc"})).await;
    let done = poll_run(&c, &thread, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["last_error"]["code"], "server_error");
    // streaming: cut after 2 deltas
    sb.inject(Fault::on("/runs", FaultKind::CutStreamAfterDeltas(2)));
    let (events, clean) = c.stream(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc", "stream": true})).await;
    assert!(!clean);
    assert_eq!(events.iter().filter(|(e, _)| e == "thread.message.delta").count(), 2);
    assert!(!events.iter().any(|(e, _)| e == "thread.run.completed" || e == "done"));
    // streaming: failed, then error event
    sb.inject(Fault::on("/runs", FaultKind::StreamFailed));
    let (events, _) = c.stream(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc", "stream": true})).await;
    assert!(events.iter().any(|(e, d)| e == "thread.run.failed" && d["status"] == "failed"));
    sb.inject(Fault::on("/runs", FaultKind::ErrorEvent));
    let (events, _) = c.stream(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc", "stream": true})).await;
    assert_eq!(events.last().unwrap().0, "error");
    sb.inject(Fault::on("/runs", FaultKind::ErrorEvent));
    let (st, v) = c.post(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc"})).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&v);
    assert_eq!(sb.thread_messages(&thread).unwrap().len(), 1, "failed runs add no message");
    // and the thread is usable again
    let (events, _) = c.stream(&format!("/threads/{thread}/runs"), json!({"assistant_id": "asst_abc", "stream": true})).await;
    assert!(events.iter().any(|(e, _)| e == "thread.run.completed"));
    assert_eq!(sb.thread_messages(&thread).unwrap().len(), 2);
    sb.shutdown().await;
}
