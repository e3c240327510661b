//! Native tests: every harness case file as its own test (the same scripted exchanges the
//! host's `swapbot plugin test` replays against the wasm build), plus unit tests.

use super::*;
use swapbot_plugin_common::testing::*;

swapbot_plugin_common::plugin_case_tests!(
    new_thread_run_poll,
    existing_thread_reused,
    gone_thread_replaced,
    run_failed,
    run_expired_new_thread,
    run_timeout_cancels,
    api_gone,
    api_gone_with_stored_thread,
    rate_limited,
    server_error,
    active_run_busy,
    active_run_busy_on_run,
    missing_assistant_id,
);


fn exchange(v: serde_json::Value) -> Exchange {
    parse_exchange(&v)
}

fn turn(session: Option<&str>) -> Turn {
    Turn {
        user_id: 5_000_000_001,
        session_id: session.map(Into::into),
        cache_key: String::new(),
        text: "hi".into(),
        context: vec![],
        settings: Settings {
            options: vec![(ASSISTANT_ID.into(), "asst_1".into())],
            ..Settings::default()
        },
    }
}

#[test]
fn describe_names_the_backend() {
    let d = describe();
    assert_eq!(d.name, "assistants");
    assert_eq!(d.contract, swapbot_plugin_common::CONTRACT);
    assert_eq!(d.id_map.as_deref(), Some("user_threads.json"));
}

#[test]
fn every_request_carries_the_beta_header() {
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(
                json!({"request": {"method": "POST", "path": "/threads/t/messages"}, "response": {"status": 200, "body": {"id": "m"}}}),
            ),
            exchange(
                json!({"request": {"method": "POST", "path": "/threads/t/runs"}, "response": {"status": 200, "body": {"id": "r", "status": "completed"}}}),
            ),
            exchange(
                json!({"request": {"method": "GET", "path": "/threads/t/messages?order=desc&limit=20&run_id=r"}, "response": {"status": 200, "body": {"data": [
                {"role": "assistant", "content": [{"type": "image_file", "image_file": {}}, {"type": "text", "text": {"value": "ok"}}]},
                {"role": "user", "content": [{"type": "text", "text": {"value": "hi"}}]}]}}}),
            ),
        ],
        vec![],
    );
    let a = chat(&mut fx, &turn(Some("t"))).unwrap();
    assert_eq!(a.text, "ok");
    assert_eq!(a.usage, None);
    for r in &fx.requests {
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == "OpenAI-Beta" && v == "assistants=v2"),
            "{}",
            r.path
        );
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == "Content-Type" && v == "application/json"),
            "{}",
            r.path
        );
        if let Some(b) = &r.body {
            assert!(!b.contains("null"), "{b}");
        }
    }
}

#[test]
fn api_gone_message_names_the_date_and_the_flag() {
    let mut fx = ScriptedEffects::new(
        vec![exchange(
            json!({"request": {"method": "POST", "path": "/threads"}, "response": {"status": 410, "body": {"raw": "Gone"}}}),
        )],
        vec![],
    );
    let e = chat(&mut fx, &turn(None)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ApiGone);
    assert!(e.message.contains("2026-08-26"));
    assert!(e.message.contains("USE_OPENAI_RESPONSES=true"));
}

#[test]
fn requires_action_is_cancelled() {
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(
                json!({"request": {"method": "POST", "path": "/threads/t/messages"}, "response": {"status": 200, "body": {"id": "m"}}}),
            ),
            exchange(
                json!({"request": {"method": "POST", "path": "/threads/t/runs"}, "response": {"status": 200, "body": {"id": "r", "status": "requires_action"}}}),
            ),
            exchange(
                json!({"request": {"method": "POST", "path": "/threads/t/runs/r/cancel"}, "response": {"status": 200, "body": {"id": "r"}}}),
            ),
        ],
        vec![],
    );
    let e = chat(&mut fx, &turn(Some("t"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ModelFailed);
    assert_eq!(e.turn_id.as_deref(), Some("r"));
}

#[test]
fn run_text_keeps_creation_order() {
    let list = json!({"data": [
        {"role": "assistant", "content": [{"type": "text", "text": {"value": "second"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": {"value": "first"}}]},
    ]});
    assert_eq!(run_text(&list), "first\n\nsecond");
}

#[test]
fn usage_comes_from_the_run() {
    let case = Case::parse(include_str!("../cases/new_thread_run_poll.json"));
    let mut fx = ScriptedEffects::new(case.exchanges, case.history);
    let a = chat(&mut fx, &case.turn).unwrap();
    fx.assert_done();
    assert_eq!(
        a.usage,
        Some(Usage {
            input_tokens: 123,
            cached_input_tokens: 0,
            output_tokens: 45,
            reasoning_tokens: 0,
        })
    );
    // the poll slept once per GET of the run
    assert_eq!(fx.slept, 2 * 500);
}

#[test]
fn truncation_strategy_is_the_assistants_default_unless_set() {
    let mut s = Settings::default();
    assert_eq!(truncation_strategy(&s).unwrap(), None);
    s.options = vec![("truncation-strategy".into(), "auto".into())];
    assert_eq!(truncation_strategy(&s).unwrap(), Some(json!({"type": "auto"})));
    s.options = vec![("truncation-strategy".into(), "last_messages:12".into())];
    assert_eq!(
        truncation_strategy(&s).unwrap(),
        Some(json!({"type": "last_messages", "last_messages": 12}))
    );
    for bad in ["last_messages:0", "last_messages", "everything"] {
        s.options = vec![("truncation-strategy".into(), bad.into())];
        assert_eq!(truncation_strategy(&s).unwrap_err().kind, ErrorKind::Config, "{bad}");
    }
}

#[test]
fn the_run_carries_the_truncation_strategy_and_the_input_layout_moves_context_into_the_message() {
    let mut t = turn(Some("thread_1"));
    t.context = vec![ContextChunk {
        source: "faq.md".into(),
        text: "Swaps settle fast.".into(),
        score: 0.9,
    }];
    t.settings.options.extend([
        ("truncation-strategy".into(), "last_messages:4".into()),
        ("context-layout".into(), "input".into()),
    ]);
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(json!({"request": {"method": "POST", "path": "/threads/thread_1/messages",
                "body": {"role": "user", "content": format!("hi{CONTEXT_HEADER}[1] (faq.md) Swaps settle fast.")}},
                "response": {"status": 200, "body": {"id": "msg_1"}}})),
            exchange(json!({"request": {"method": "POST", "path": "/threads/thread_1/runs",
                "body": {"assistant_id": "asst_1", "truncation_strategy": {"type": "last_messages", "last_messages": 4}},
                "absent": ["additional_instructions"]},
                "response": {"status": 200, "body": {"id": "run_1", "status": "completed", "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}}})),
            exchange(json!({"request": {"method": "GET", "path": "/threads/thread_1/messages?order=desc&limit=20&run_id=run_1"},
                "response": {"status": 200, "body": {"data": [{"role": "assistant", "content": [{"type": "text", "text": {"value": "fast"}}]}]}}})),
        ],
        vec![],
    );
    let a = chat(&mut fx, &t).unwrap();
    fx.assert_done();
    assert_eq!(a.text, "fast");
}

#[test]
fn runs_and_message_lists_read_into_types_say_what_their_values_say() {
    let list = json!({"object": "list", "data": [
        {"role": "assistant", "content": [{"type": "text", "text": {"value": " second ", "annotations": []}},
            {"type": "image_file", "image_file": {"file_id": "f"}}]},
        {"role": "user", "content": [{"type": "text", "text": {"value": "question"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": {"value": "first \"quoted\"\n"}}], "metadata": {}},
    ], "first_id": "msg_1", "has_more": false});
    let body = list.to_string();
    assert_eq!(serde_json::from_str::<WireList>(&body).unwrap().text(), run_text(&list));
    assert_eq!(run_text(&list), "first \"quoted\"\n\nsecond");

    let usage = json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 8}});
    let typed = Run::parse("run", &json!({"id": "run_1", "status": "completed", "usage": usage, "tools": []}).to_string()).unwrap();
    assert_eq!((typed.id.as_deref(), typed.status.as_deref()), (Some("run_1"), Some("completed")));
    let u = typed.usage.unwrap();
    assert_eq!((u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens), (12, 8, 3, 0));
    // A status that is not a string reads as absent (queued), as the Value path reads it.
    let odd = Run::parse("run", &json!({"id": "run_1", "status": 7, "usage": usage}).to_string()).unwrap();
    assert_eq!((odd.status, odd.usage.map(|u| u.input_tokens)), (None, Some(12)));
    assert!(Run::parse("run", "not json").is_err());
}
