//! Native tests: every harness case file as its own test (the same scripted exchanges the
//! host's `swapbot plugin test` replays against the wasm build), plus unit tests.

use super::*;
use serde_json::json;
use swapbot_plugin_common::testing::*;

swapbot_plugin_common::plugin_case_tests!(
    stream_three_parts,
    non_streamed,
    history_bounded_by_budget,
    rate_limited_retry_after,
    quota_exhausted,
    server_error_5xx,
    auth_invalid_key,
    context_length_exceeded,
    cut_stream,
    stream_ends_without_done,
    malformed_json,
    malformed_chunk,
    invalid_stream_option,
);

fn turn(options: &[(&str, &str)]) -> Turn {
    Turn {
        user_id: 7,
        session_id: None,
        cache_key: "ck-7".into(),
        text: "hi".into(),
        context: vec![],
        settings: Settings {
            model: "llama3.2".into(),
            instructions: "Be brief.".into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Settings::default()
        },
    }
}

fn plan(options: &[(&str, &str)]) -> Plan {
    Plan::of(&turn(options).settings).unwrap()
}

fn completion(content: Value, finish: &str) -> Exchange {
    parse_exchange(&json!({
        "request": {"method": "POST", "path": "/chat/completions"},
        "response": {"status": 200, "body": {"id": "chatcmpl-9", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 5}}}}
    }))
}

fn plain(ex: Exchange) -> (Result<Answer, ChatError>, ScriptedEffects) {
    let mut fx = ScriptedEffects::new(vec![ex], vec![]);
    let r = chat(&mut fx, &turn(&[("stream", "false")]));
    (r, fx)
}

#[test]
fn describe_is_stateless() {
    let d = describe();
    assert_eq!(d.name, "chat");
    assert_eq!(d.id_map, None);
    assert_eq!(d.turn_label, "completion_id");
    assert_eq!(d.contract, CONTRACT);
}

#[test]
fn estimate_counts_ascii_by_quarters_and_other_scripts_per_character() {
    assert_eq!(estimate_tokens(""), MESSAGE_OVERHEAD);
    assert_eq!(estimate_tokens("abcd"), 1 + MESSAGE_OVERHEAD);
    assert_eq!(estimate_tokens("abcde"), 2 + MESSAGE_OVERHEAD);
    // Cyrillic is ~2 bytes a character but about a token each: bytes/4 would undercount it.
    assert_eq!(estimate_tokens("привет"), 6 + MESSAGE_OVERHEAD);
}

#[test]
fn history_is_cut_in_whole_exchanges_from_the_newest() {
    let h = vec![
        HistoryMessage::user("q1 aaaa aaaa aaaa"),
        HistoryMessage::assistant("a1 bbbb bbbb bbbb"),
        HistoryMessage::user("q2"),
        HistoryMessage::assistant("a2"),
    ];
    let pair2 = estimate_tokens("q2") + estimate_tokens("a2");
    // Room for the newest pair and half of the older one: the older pair goes whole.
    let kept = bounded_history(&h, pair2 + estimate_tokens("a1 bbbb bbbb bbbb"));
    assert_eq!(kept, vec![&h[2], &h[3]]);
    // Room for less than the newest pair: nothing (never an answer without its question).
    assert!(bounded_history(&h, pair2 - 1).is_empty());
    assert_eq!(bounded_history(&h, u64::MAX).len(), 4);
}

#[test]
fn an_unanswered_question_is_its_own_unit() {
    // The last turn failed: the host kept the question without an answer.
    let h = vec![
        HistoryMessage::user("q1"),
        HistoryMessage::assistant("a1"),
        HistoryMessage::user("q2 (unanswered)"),
    ];
    let kept = bounded_history(&h, estimate_tokens("q2 (unanswered)"));
    assert_eq!(kept, vec![&h[2]]);
}

#[test]
fn the_context_window_bounds_the_history_too() {
    let t = turn(&[]);
    let h: Vec<HistoryMessage> = (0..40)
        .flat_map(|i| [HistoryMessage::user(format!("question {i}")), HistoryMessage::assistant(format!("answer {i}"))])
        .collect();
    let (_, all) = request_body(&t, &plan(&[]), &h);
    assert_eq!(all, 80);
    let fixed = estimate_tokens("Be brief.") + estimate_tokens("hi") + 100;
    let window = fixed + 3 * (estimate_tokens("question 10") + estimate_tokens("answer 10"));
    let p = plan(&[("context-window", &window.to_string()), ("max-tokens", "100")]);
    let (body, n) = request_body(&t, &p, &h);
    assert_eq!(n, 6);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 8);
    assert_eq!(msgs[1]["content"], "question 37");
    assert_eq!(msgs[7], json!({"role": "user", "content": "hi"}));
    assert_eq!(body["max_completion_tokens"], 100);
    // A window too small for anything but the new message still sends the new message.
    let (body, n) = request_body(&t, &plan(&[("context-window", "1")]), &h);
    assert_eq!((n, body["messages"].as_array().unwrap().len()), (0, 2));
}

#[test]
fn options_shape_the_body() {
    let t = turn(&[]);
    let p = plan(&[("temperature", "0.2"), ("prompt-cache-key", "true"), ("stream", "false")]);
    let (body, _) = request_body(&t, &p, &[]);
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["prompt_cache_key"], "ck-7");
    assert!(body.get("stream").is_none() && body.get("stream_options").is_none());
    let (body, _) = request_body(&t, &plan(&[]), &[]);
    assert!(body.get("prompt_cache_key").is_none() && body.get("temperature").is_none());
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[test]
fn the_input_layout_puts_the_context_after_the_question() {
    let mut t = turn(&[("context-layout", "input")]);
    t.context = vec![ContextChunk { source: "faq.md".into(), text: "Fast.".into(), score: 0.9 }];
    let (body, _) = request_body(&t, &Plan::of(&t.settings).unwrap(), &[]);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(body["messages"][1]["content"], format!("hi{CONTEXT_HEADER}[1] (faq.md) Fast."));
}

#[test]
fn bad_options_are_config_errors() {
    for (k, v) in [
        ("history-tokens", "lots"),
        ("context-window", "0"),
        ("max-tokens", "-1"),
        ("temperature", "3"),
        ("prompt-cache-key", "on"),
        ("context-layout", "top"),
    ] {
        let e = Plan::of(&turn(&[(k, v)]).settings).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{k}={v}");
        assert!(e.message.contains(k), "{k}: {}", e.message);
    }
    let mut t = turn(&[]);
    t.settings.model = " ".into();
    let mut fx = ScriptedEffects::new(vec![], vec![]);
    assert_eq!(chat(&mut fx, &t).unwrap_err().kind, ErrorKind::Config);
    assert!(fx.requests.is_empty());
}

#[test]
fn a_cut_answer_at_the_token_limit_is_still_the_answer() {
    let (r, fx) = plain(completion(json!("Partial answer"), "length"));
    assert_eq!(r.unwrap().text, "Partial answer");
    assert!(fx.logs.iter().any(|(l, m)| *l == Level::Warn && m.contains("token limit")));
}

#[test]
fn no_text_at_the_token_limit_is_model_failed_with_its_usage() {
    let (r, _) = plain(completion(json!(""), "length"));
    let e = r.unwrap_err();
    assert_eq!((e.kind, e.turn_id.as_deref()), (ErrorKind::ModelFailed, Some("chatcmpl-9")));
    assert_eq!(e.usage.map(|u| u.reasoning_tokens), Some(5));
}

#[test]
fn the_content_filter_and_refusals_are_model_failed() {
    let (r, _) = plain(completion(json!("Some"), "content_filter"));
    assert!(r.unwrap_err().message.contains("content filter"));
    let refused = parse_exchange(&json!({
        "request": {"method": "POST", "path": "/chat/completions"},
        "response": {"status": 200, "body": {"id": "chatcmpl-8", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}]}}
    }));
    let e = plain(refused).0.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ModelFailed);
    assert!(e.message.contains("can't help"), "{}", e.message);
}

#[test]
fn a_finish_reason_without_done_is_a_finished_answer() {
    let ex = parse_exchange(&json!({
        "request": {"method": "POST", "path": "/chat/completions"},
        "sse": [
            {"data": {"id": "chatcmpl-5", "choices": [{"index": 0, "delta": {"content": "Done."}, "finish_reason": null}]}},
            {"data": {"id": "chatcmpl-5", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}}
        ]
    }));
    let mut fx = ScriptedEffects::new(vec![ex], vec![]);
    let a = chat(&mut fx, &turn(&[])).unwrap();
    assert_eq!((a.text.as_str(), a.turn_id.as_str(), a.usage), ("Done.", "chatcmpl-5", None));
}

#[test]
fn an_error_chunk_is_classified_and_not_retried_after_text() {
    let ex = parse_exchange(&json!({
        "request": {"method": "POST", "path": "/chat/completions"},
        "sse": [
            {"data": {"id": "chatcmpl-6", "choices": [{"index": 0, "delta": {"content": "Hal"}, "finish_reason": null}]}},
            {"data": {"error": {"message": "The server had an error", "type": "server_error", "code": "server_error"}}}
        ]
    }));
    let mut fx = ScriptedEffects::new(vec![ex], vec![]);
    let e = chat(&mut fx, &turn(&[])).unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::Server, false));
    assert_eq!(e.turn_id.as_deref(), Some("chatcmpl-6"));
}

#[test]
fn a_stream_past_the_deadline_is_a_timeout() {
    struct Slow(ScriptedEffects);
    impl Effects for Slow {
        type Stream = ScriptedStream;
        fn http(&mut self, r: HttpRequest) -> Result<HttpResponse, TransportError> {
            self.0.http(r)
        }
        fn http_stream(&mut self, r: HttpRequest) -> Result<StreamStart<ScriptedStream>, TransportError> {
            self.0.http_stream(r)
        }
        fn push_text(&mut self, d: &str) {
            self.0.push_text(d)
        }
        fn log(&mut self, l: Level, m: &str) {
            self.0.log(l, m)
        }
        // Every look at the clock is a minute later.
        fn now_ms(&mut self) -> u64 {
            self.0.now += 60_000;
            self.0.now
        }
        fn sleep_ms(&mut self, ms: u32) {
            self.0.sleep_ms(ms)
        }
        fn recent_history(&mut self) -> Vec<HistoryMessage> {
            self.0.recent_history()
        }
    }
    let ex = parse_exchange(&json!({
        "request": {"method": "POST", "path": "/chat/completions"},
        "sse": [{"data": {"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}}]
    }));
    let mut t = turn(&[]);
    t.settings.deadline_ms = 90_000;
    let mut fx = Slow(ScriptedEffects::new(vec![ex], vec![]));
    let e = chat(&mut fx, &t).unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::Timeout, false));
}
