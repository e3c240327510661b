//! Native tests: every harness case file as its own test (the same scripted exchanges the
//! host's `swapbot plugin test` replays against the wasm build), plus unit tests.

use super::*;
use swapbot_plugin_common::testing::*;

swapbot_plugin_common::plugin_case_tests!(
    creates_conversation_when_none,
    creates_conversation_without_history,
    reuses_live_conversation,
    replaces_gone_conversation,
    stream_pushes_deltas,
    stream_done_marker,
    non_stream_plain,
    background_poll,
    background_timeout_cancels,
    server_error_5xx,
    rate_limited_retry_after,
    quota_exhausted,
    malformed_json,
    cut_stream,
    stream_eof_before_text,
    conversation_locked,
    response_failed,
    response_incomplete,
    error_event_nested,
    error_event_flat,
    transport_timeout,
    new_conversation_replays_in_batches,
    context_length_exceeded,
    compaction_requested,
);


fn settings() -> Settings {
    Settings {
        model: "gpt-4.1-mini".into(),
        instructions: "Be brief.".into(),
        ..Settings::default()
    }
}

fn turn(session: Option<&str>) -> Turn {
    Turn {
        user_id: 5_000_000_001,
        session_id: session.map(Into::into),
        cache_key: String::new(),
        text: "hi".into(),
        context: vec![],
        settings: settings(),
    }
}

fn exchange(v: serde_json::Value) -> Exchange {
    parse_exchange(&v)
}

#[test]
fn describe_names_the_backend() {
    let d = describe();
    assert_eq!(d.name, "responses");
    assert_eq!(d.contract, swapbot_plugin_common::CONTRACT);
    assert_eq!(d.id_map.as_deref(), Some("user_conversations.json"));
    assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn deltas_are_pushed_before_the_stream_ends() {
    // The stream is cut after the deltas: they were already pushed one by one.
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(
                json!({"request": {"method": "POST", "path": "/responses"}, "sse": [
                {"data": {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}},
                {"data": {"type": "response.output_text.delta", "delta": "a"}},
                {"data": {"type": "response.output_text.delta", "delta": "b"}},
            ], "cut": true}),
            ),
        ],
        vec![],
    );
    let e = chat(&mut fx, &turn(Some("conv_1"))).unwrap_err();
    assert_eq!(fx.pushes, 2);
    assert_eq!(fx.pushed, "ab");
    assert_eq!(e.kind, ErrorKind::StreamCut);
    assert!(!e.retryable);
    assert_eq!(e.turn_id.as_deref(), Some("resp_1"));
    assert_eq!(e.session_id, None);
}

#[test]
fn stream_events_are_read_field_by_field_whatever_their_escapes_or_odd_fields() {
    // Deltas with escapes are unescaped; a field of an unexpected type is ignored, not the
    // event; the type may come from the `event:` line alone; a response id comes from
    // `response.created` even when the object around it has fields of every kind.
    let mut fx = ScriptedEffects::new(
        vec![exchange(json!({"request": {"method": "POST", "path": "/responses"}, "sse": [
            {"data": {"type": "response.created", "response": {"id": "resp_7", "status": "in_progress",
                "output": [], "usage": null, "metadata": {"k": [1, 2.5, true]}, "instructions": "say \"hi\""}}},
            {"data": {"type": "response.output_text.delta", "delta": "Say \"hi\"\n"}},
            {"data": {"type": "response.output_text.delta", "delta": "ok ", "text": ["odd"], "item_id": 5}},
            {"event": "response.output_text.delta", "data": {"delta": "café"}},
            {"data": {"type": "response.completed", "response": {"id": "resp_7", "status": "completed", "output": [],
                "usage": {"input_tokens": 3, "output_tokens": 4}}}},
        ]}))],
        vec![],
    );
    let a = chat(&mut fx, &turn(Some("conv_1"))).unwrap();
    assert_eq!(fx.pushed, "Say \"hi\"\nok café");
    assert_eq!(fx.pushes, 3);
    assert_eq!(a.turn_id, "resp_7");
    // No output in the completed response: the answer is the deltas, trimmed.
    assert_eq!(a.text, "Say \"hi\"\nok café");
    assert_eq!(a.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((3, 4)));
}

#[test]
fn events_named_for_what_the_turn_does_not_read_go_unparsed_and_others_by_their_type() {
    // Named by their `event:` line, `in_progress` once the id is known and the items and parts
    // added and done are passed over unread: here their data would mislead (another id, a
    // terminal type, a different text) or not parse at all. An event under any other name, the
    // SSE default `message` here, is read by its `type`.
    let mut fx = ScriptedEffects::new(
        vec![exchange(json!({"request": {"method": "POST", "path": "/responses"}, "sse": [
            {"event": "response.created", "data": {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}},
            {"event": "response.in_progress", "data": {"type": "response.incomplete", "response": {"id": "resp_other", "status": "incomplete"}}},
            {"event": "response.output_item.added", "data": "{not json"},
            {"event": "response.content_part.added", "data": {"type": "response.failed", "response": {"status": "failed"}}},
            {"event": "message", "data": {"type": "response.output_text.delta", "delta": "Hi"}},
            {"event": "response.output_text.delta", "data": {"type": "response.output_text.delta", "delta": " there"}},
            {"event": "response.content_part.done", "data": {"type": "response.completed", "response": {"id": "resp_x", "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "wrong"}]}]}}},
            {"event": "response.output_item.done", "data": "{also not json"},
            {"event": "response.completed", "data": {"type": "response.completed", "response": {"status": "completed", "output": []}}},
        ]}))],
        vec![],
    );
    let a = chat(&mut fx, &turn(Some("conv_1"))).unwrap();
    assert_eq!((a.turn_id.as_str(), a.text.as_str()), ("resp_1", "Hi there"));
    assert_eq!(fx.pushed, "Hi there");
    assert!(fx.logs.iter().all(|(_, m)| !m.contains("unparsable")), "{:?}", fx.logs);

    // Before a `created`, an `in_progress` is where the id comes from: it is read.
    let mut fx = ScriptedEffects::new(
        vec![exchange(json!({"request": {"method": "POST", "path": "/responses"}, "sse": [
            {"event": "response.in_progress", "data": {"type": "response.in_progress", "response": {"id": "resp_2"}}},
            {"event": "response.output_text.delta", "data": {"type": "response.output_text.delta", "delta": "ok"}},
            {"event": "response.completed", "data": {"type": "response.completed", "response": {"status": "completed"}}},
        ]}))],
        vec![],
    );
    assert_eq!(chat(&mut fx, &turn(Some("conv_1"))).unwrap().turn_id, "resp_2");
}

#[test]
fn a_created_event_is_scanned_for_its_id_alone_or_read_as_a_full_parse_reads_it() {
    // Named by its `event:` line, an event that can carry the id is scanned for the response's
    // id: the echoed request around it is skipped, an escaped id unescaped. An id that is not a
    // string is declined to the full parse, which reads it as no id, so the next such event
    // gives one; a `type` that says otherwise is read by the full parse, by that type.
    let named = |name: &str, data: &str| json!({"event": name, "data": data});
    let rest = [
        json!({"event": "response.output_text.delta", "data": {"type": "response.output_text.delta", "delta": "ok"}}),
        json!({"event": "response.completed", "data": {"type": "response.completed", "response": {"status": "completed"}}}),
    ];
    let run = |first: Vec<serde_json::Value>| {
        let sse: Vec<_> = first.into_iter().chain(rest.iter().cloned()).collect();
        let mut fx = ScriptedEffects::new(
            vec![exchange(json!({"request": {"method": "POST", "path": "/responses"}, "sse": sse}))],
            vec![],
        );
        let r = chat(&mut fx, &turn(Some("conv_1")));
        (r, fx.pushed)
    };
    let (a, _) = run(vec![
        named("response.created", r#"{"type":"response.created","response":{"id":7,"instructions":"x"}}"#),
        named(
            "response.in_progress",
            r#"{"type":"response.in_progress","response":{"instructions":"ctx \"q\"","tools":[{"a":[1,{}]}],"id":"resp_\u0033"}}"#,
        ),
    ]);
    assert_eq!(a.unwrap().turn_id, "resp_3");
    let (r, pushed) = run(vec![named(
        "response.created",
        r#"{"type":"response.failed","response":{"id":"resp_f","status":"failed","error":{"code":"server_error","message":"boom"}}}"#,
    )]);
    assert!(r.is_err(), "{r:?}");
    assert_eq!(pushed, "");
}

#[test]
fn text_deltas_scanned_without_a_parser_read_as_a_full_parse_reads_them() {
    // An event its `event:` line names a text delta is read by a scan of its members; what the
    // scan declines (a repeated member, a delta that is not a string, broken JSON) and an event
    // whose `type` says otherwise go to the full parse, as every event did before.
    let delta = |data: &str| json!({"event": "response.output_text.delta", "data": data});
    let mut fx = ScriptedEffects::new(
        vec![exchange(json!({"request": {"method": "POST", "path": "/responses"}, "sse": [
            {"event": "response.created", "data": {"type": "response.created", "response": {"id": "resp_1"}}},
            delta(r#"{"type":"response.output_text.delta","sequence_number":4,"delta":"Line\none \"q\" caf\u00e9 \ud83d\ude00","logprobs":[],"obfuscation":"ab"}"#),
            delta(r#"{"delta":" untyped,","item_id":"msg_1"}"#),
            delta(r#"{"type":"response.output_text.delta","delta":" first","delta":" last"}"#),
            delta(r#"{"type":"response.output_text.delta","delta":5}"#),
            delta(r#"{"type":"response.output_text.done","text":"Done text."}"#),
            delta(r#"{"type":"response.output_text.delta","delta":" cut"#),
            {"event": "response.completed", "data": {"type": "response.completed", "response": {"status": "completed", "output": []}}},
        ]}))],
        vec![],
    );
    let a = chat(&mut fx, &turn(Some("conv_1"))).unwrap();
    assert_eq!(fx.pushed, "Line\none \"q\" café 😀 untyped, last");
    // The `done` event was read by its type: its text is the answer's (the completed response has none).
    assert_eq!((a.turn_id.as_str(), a.text.as_str()), ("resp_1", "Done text."));
    let unparsable: Vec<_> = fx.logs.iter().filter(|(_, m)| m.contains("unparsable")).collect();
    assert_eq!(unparsable.len(), 1, "{:?}", fx.logs);
    assert!(unparsable[0].1.contains("cut"), "{unparsable:?}");
}

#[test]
fn a_completed_response_gives_its_text_and_usage_whatever_else_it_holds() {
    let run = |response: serde_json::Value| {
        let mut fx = ScriptedEffects::new(
            vec![exchange(json!({"request": {"method": "POST", "path": "/responses"}, "sse": [
                {"data": {"type": "response.output_text.delta", "delta": "streamed"}},
                {"data": {"type": "response.completed", "response": response}},
            ]}))],
            vec![],
        );
        chat(&mut fx, &turn(Some("conv_1"))).unwrap()
    };
    let usage = json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6},
        "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15});
    let message = json!({"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": "Hello, ", "annotations": []}, {"type": "refusal", "refusal": "no"},
        {"type": "output_text", "text": "Ada."}]});
    // The usual shape, and one whose reasoning item holds a string where a list was expected.
    for output in [json!([{"type": "reasoning", "summary": []}, message]), json!([{"type": "reasoning", "content": "odd"}, message])] {
        let a = run(json!({"id": "resp_9", "status": "completed", "output": output, "usage": usage,
            "instructions": "Be brief.", "tools": [], "metadata": {}}));
        assert_eq!((a.turn_id.as_str(), a.text.as_str()), ("resp_9", "Hello, Ada."));
        let u = a.usage.unwrap();
        assert_eq!((u.input_tokens, u.cached_input_tokens, u.output_tokens, u.reasoning_tokens), (10, 6, 5, 2));
    }
    // No output text: the deltas are the answer.
    let a = run(json!({"id": "resp_9", "status": "completed", "output": [], "usage": null}));
    assert_eq!((a.text.as_str(), a.usage.is_none()), ("streamed", true));
}

#[test]
fn request_body_omits_optional_fields() {
    let mut t = turn(Some("conv_1"));
    t.settings.instructions = String::new();
    let b = response_body(&t, "conv_1").unwrap();
    let o = b.as_object().unwrap();
    let mut keys: Vec<_> = o.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["conversation", "input", "model", "truncation"]);
    assert!(!b.to_string().contains("null"));
}

fn chunk(text: &str) -> ContextChunk {
    ContextChunk {
        source: "faq.md".into(),
        text: text.into(),
        score: 0.9,
    }
}

#[test]
fn every_response_bounds_its_context_and_names_its_cache_key() {
    let mut t = turn(Some("conv_1"));
    t.cache_key = "sb-1234".into();
    let b = response_body(&t, "conv_1").unwrap();
    assert_eq!(b["truncation"], "auto");
    assert_eq!(b["prompt_cache_key"], "sb-1234");
    assert!(b.get("context_management").is_none());
}

#[test]
fn compact_mode_asks_for_server_side_compaction_at_the_threshold() {
    let mut t = turn(Some("conv_1"));
    t.settings.options = vec![
        ("context".into(), "compact".into()),
        ("compact-threshold".into(), "5000".into()),
    ];
    let b = response_body(&t, "conv_1").unwrap();
    assert_eq!(
        b["context_management"],
        json!([{"type": "compaction", "compact_threshold": 5000}])
    );
    // Truncation stays on as the backstop: compaction alone can still overflow.
    assert_eq!(b["truncation"], "auto");
    t.settings.options = vec![("context".into(), "compact".into())];
    let b = response_body(&t, "conv_1").unwrap();
    assert_eq!(
        b["context_management"][0]["compact_threshold"],
        DEFAULT_COMPACT_THRESHOLD
    );
}

#[test]
fn bad_context_options_are_config_errors_before_any_request() {
    for (k, v) in [
        ("context", "forget"),
        ("compact-threshold", "999"),
        ("context-layout", "sideways"),
    ] {
        let mut t = turn(None);
        t.settings.options = vec![("context".into(), "compact".into()), (k.into(), v.into())];
        let mut fx = ScriptedEffects::new(vec![], vec![]);
        let e = chat(&mut fx, &t).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{k}={v}");
        assert!(e.message.contains(k), "{}", e.message);
        assert!(fx.requests.is_empty());
    }
}

#[test]
fn context_goes_after_the_question_by_default_and_into_instructions_on_request() {
    let mut t = turn(Some("conv_1"));
    t.context = vec![chunk("Swaps settle within 10 minutes.")];
    let b = response_body(&t, "conv_1").unwrap();
    // The instructions stay the same every turn, so the prompt's prefix can be cached.
    assert_eq!(b["instructions"], "Be brief.");
    let parts = b["input"][0]["content"].as_array().unwrap();
    assert_eq!(parts[0]["text"], "hi");
    assert_eq!(
        parts[1]["text"],
        format!("{CONTEXT_HEADER}[1] (faq.md) Swaps settle within 10 minutes.")
    );
    t.settings.options = vec![("context-layout".into(), "instructions".into())];
    let b = response_body(&t, "conv_1").unwrap();
    assert_eq!(b["input"][0]["content"].as_array().unwrap().len(), 1);
    assert!(b["instructions"].as_str().unwrap().ends_with("[1] (faq.md) Swaps settle within 10 minutes."));
}

#[test]
fn context_length_exceeded_is_a_context_overflow_not_a_retry() {
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(
                json!({"request": {"method": "POST", "path": "/responses"}, "response": {"status": 400, "body": {"error": {
                    "message": "Your input exceeds the context window of this model. Please adjust your input and try again.",
                    "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}}}}),
            ),
        ],
        vec![],
    );
    let e = chat(&mut fx, &turn(Some("conv_1"))).unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::ContextOverflow, false));
}

#[test]
fn missing_model_is_a_config_error() {
    let mut t = turn(None);
    t.settings.model = " ".into();
    let mut fx = ScriptedEffects::new(vec![], vec![]);
    let e = chat(&mut fx, &t).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(fx.requests.is_empty());
}

#[test]
fn a_stored_conversation_is_used_without_a_check_or_the_history() {
    let mut fx = ScriptedEffects::new(vec![], vec![HistoryMessage::user("x")]);
    let s = open_conversation(&mut fx, Some("conv_1")).unwrap();
    assert_eq!(
        s,
        Session {
            id: "conv_1".into(),
            new: false,
            replayed: 0
        }
    );
    assert_eq!(fx.history_calls, 0);
    assert!(fx.requests.is_empty(), "no GET /conversations/{{id}} before the turn");
}

#[test]
fn failure_while_appending_keeps_the_new_conversation() {
    let h: Vec<HistoryMessage> = (0..21)
        .map(|i| HistoryMessage::user(format!("m{i}")))
        .collect();
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(
                json!({"request": {"method": "POST", "path": "/conversations"}, "response": {"status": 200, "body": {"id": "conv_9"}}}),
            ),
            exchange(
                json!({"request": {"method": "POST", "path": "/conversations/conv_9/items"}, "response": {"status": 503, "body": {}}}),
            ),
        ],
        h,
    );
    let e = chat(&mut fx, &turn(None)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Server);
    assert_eq!(e.session_id.as_deref(), Some("conv_9"));
}

#[test]
fn empty_history_texts_are_not_replayed() {
    let h = vec![
        HistoryMessage::user("a"),
        HistoryMessage::assistant("  "),
        HistoryMessage::assistant("b"),
    ];
    let mut fx = ScriptedEffects::new(
        vec![exchange(
            json!({"request": {"method": "POST", "path": "/conversations", "body": {"items": [
            {"type": "message", "role": "user", "content": "a"},
            {"type": "message", "role": "assistant", "content": "b"}]}},
            "response": {"status": 200, "body": {"id": "conv_1"}}}),
        )],
        vec![],
    );
    let s = create_conversation(&mut fx, &h).unwrap();
    assert_eq!(s.replayed, 2);
}

#[test]
fn output_text_joins_every_message_part_in_order() {
    let r = json!({"output": [
        {"type": "message", "content": [{"type": "output_text", "text": "A"}, {"type": "refusal", "refusal": "no"}]},
        {"type": "function_call"},
        {"type": "message", "content": [{"type": "output_text", "text": "B"}]},
    ]});
    assert_eq!(output_text(&r), "AB");
}

#[test]
fn background_poll_tolerates_a_transient_poll_failure() {
    let mut t = turn(Some("conv_1"));
    t.settings.options = vec![("stream".into(), "false".into()), ("background".into(), "true".into())];
    let done = json!({"id": "resp_1", "status": "completed", "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}]});
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(
                json!({"request": {"method": "POST", "path": "/responses", "body": {"background": true}}, "response": {"status": 200, "body": {"id": "resp_1", "status": "queued"}}}),
            ),
            exchange(
                json!({"request": {"method": "GET", "path": "/responses/resp_1"}, "transport_error": "connection"}),
            ),
            exchange(
                json!({"request": {"method": "GET", "path": "/responses/resp_1"}, "response": {"status": 200, "body": done}}),
            ),
        ],
        vec![],
    );
    let a = chat(&mut fx, &t).unwrap();
    assert_eq!(a.text, "ok");
    assert_eq!(fx.slept, 2 * u64::from(t.settings.poll_interval_ms));
}

/// Runs a case file's script natively and returns the answer (for checks the harness format
/// does not express, e.g. usage).
fn run_script(case: &str) -> Answer {
    let case = Case::parse(case);
    let mut fx = ScriptedEffects::new(case.exchanges, case.history);
    let a = chat(&mut fx, &case.turn).unwrap();
    fx.assert_done();
    a
}

#[test]
fn usage_comes_from_the_completed_response() {
    let want = Some(Usage {
        input_tokens: 37,
        cached_input_tokens: 0,
        output_tokens: 11,
        reasoning_tokens: 0,
    });
    assert_eq!(
        run_script(include_str!("../cases/creates_conversation_when_none.json")).usage,
        want
    );
    assert_eq!(
        run_script(include_str!("../cases/non_stream_plain.json")).usage,
        want
    );
    assert_eq!(
        run_script(include_str!("../cases/background_poll.json")).usage,
        want
    );
}

#[test]
fn usage_reads_cached_and_reasoning_tokens() {
    let u = usage_of(&json!({"usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 1920},
        "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 30}, "total_tokens": 2050}}));
    assert_eq!(
        u,
        Some(Usage {
            input_tokens: 2000,
            cached_input_tokens: 1920,
            output_tokens: 50,
            reasoning_tokens: 30
        })
    );
    assert_eq!(usage_of(&json!({"usage": null})), None);
}

#[test]
fn a_gone_conversation_is_replaced_once_and_a_model_404_is_not() {
    let gone = |id: &str| {
        json!({"request": {"method": "POST", "path": "/responses", "body": {"conversation": id}}, "response": {"status": 404,
            "body": {"error": {"message": format!("Conversation with id '{id}' not found."), "type": "invalid_request_error", "code": null}}}})
    };
    // The new conversation is gone as well (a broken server): one replacement, not a loop.
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(gone("conv_1")),
            exchange(
                json!({"request": {"method": "POST", "path": "/conversations"}, "response": {"status": 200, "body": {"id": "conv_2"}}}),
            ),
            exchange(gone("conv_2")),
        ],
        vec![],
    );
    let e = chat(&mut fx, &turn(Some("conv_1"))).unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::SessionGone, true));
    assert_eq!(e.session_id.as_deref(), Some("conv_2"), "the conversation it created is handed back");
    assert_eq!(fx.requests.len(), 3);
    let mut fx = ScriptedEffects::new(
        vec![exchange(
            json!({"request": {"method": "POST", "path": "/responses"}, "response": {"status": 404, "body": {"error": {
                "message": "The model `gpt-x` does not exist", "type": "invalid_request_error", "code": "model_not_found"}}}}),
        )],
        vec![],
    );
    let e = chat(&mut fx, &turn(Some("conv_1"))).unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::BadRequest, false));
    assert_eq!(fx.requests.len(), 1, "a missing model is not a missing conversation");
}

#[test]
fn an_incomplete_response_hands_back_what_it_billed() {
    let incomplete = json!({"id": "resp_9", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
        "output": [], "usage": {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 768},
        "output_tokens": 64, "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 964}});
    let mut t = turn(Some("conv_1"));
    t.settings.options = vec![("stream".into(), "false".into())];
    let mut fx = ScriptedEffects::new(
        vec![
            exchange(json!({"request": {"method": "POST", "path": "/responses"}, "response": {"status": 200, "body": incomplete}})),
        ],
        vec![],
    );
    let e = chat(&mut fx, &t).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ModelFailed);
    assert_eq!(
        e.usage,
        Some(Usage { input_tokens: 900, cached_input_tokens: 768, output_tokens: 64, reasoning_tokens: 64 })
    );
}

#[test]
fn a_new_conversation_is_reported_to_the_host_as_soon_as_it_exists() {
    let case = Case::parse(include_str!("../cases/creates_conversation_when_none.json"));
    let mut fx = ScriptedEffects::new(case.exchanges, case.history);
    let a = chat(&mut fx, &case.turn).unwrap();
    assert_eq!(fx.started, [a.session_id.clone().unwrap()]);
    // A stored, live conversation is not reported again.
    let case = Case::parse(include_str!("../cases/reuses_live_conversation.json"));
    let mut fx = ScriptedEffects::new(case.exchanges, case.history);
    chat(&mut fx, &case.turn).unwrap();
    assert!(fx.started.is_empty());
}
