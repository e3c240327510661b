use super::*;

const CASE: &str = r#"{
  "name": "usage is judged",
  "turn": {"text": "hi", "settings": {"model": "m", "options": {"stream": false, "history-tokens": 10}}},
  "exchanges": [
    {"request": {"method": "POST", "path": "/chat/completions", "headers": {"content-type": "application/json"},
                 "body": {"a": [1, {"b": 2}]}, "absent": ["c"]},
     "response": {"status": 200, "body": {"id": "r1"}}}
  ],
  "expect": {"ok": {"text": "hi", "session_id": null, "turn_id": "r1",
                    "usage": {"input_tokens": 10, "cached_input_tokens": 4, "output_tokens": 3, "reasoning_tokens": 1}}},
  "pushed": "hi"
}"#;

fn answer(usage: Option<Usage>) -> Outcome {
    Ok(Answer {
        text: "hi".into(),
        session_id: None,
        turn_id: "r1".into(),
        new_session: false,
        replayed: 0,
        usage,
    })
}

fn good_usage() -> Usage {
    Usage {
        input_tokens: 10,
        cached_input_tokens: 4,
        output_tokens: 3,
        reasoning_tokens: 1,
    }
}

fn request(body: &str) -> Request {
    Request {
        method: "POST".into(),
        path: "/chat/completions".into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Some(body.into()),
    }
}

/// Run the case the way both runners do: serve its one exchange, then judge.
fn run(body: &str, outcome: Outcome, pushed: &str) -> Vec<String> {
    let case = Case::parse(CASE).unwrap();
    let mut script = Script::new(case.exchanges.clone());
    let _ = script.answer(&request(body), false);
    judge(&case, &outcome, pushed, &script)
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    for (from, to, key) in [
        (r#""pushed": "hi""#, r#""pushd": "hi""#, "pushd"),
        (r#""model": "m""#, r#""modle": "m""#, "modle"),
        (r#""turn_id": "r1","#, r#""turn_ids": "r1","#, "turn_ids"),
        (r#""cached_input_tokens": 4"#, r#""cached_tokens": 4"#, "cached_tokens"),
        (r#""absent": ["c"]"#, r#""absnet": ["c"]"#, "absnet"),
        (r#""status": 200"#, r#""code": 200"#, "code"),
    ] {
        let text = CASE.replace(from, to);
        assert_ne!(text, CASE, "{from}");
        let err = Case::parse(&text).unwrap_err();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
}

#[test]
fn legacy_settings_fields_and_replay_calls_are_refused() {
    let err = Case::parse(&CASE.replace(r#""model": "m""#, r#""model": "m", "stream": true"#)).unwrap_err();
    assert!(err.contains("`stream`"), "{err}");
    let err = Case::parse(&CASE.replace(r#""name": "usage is judged","#, r#""name": "x", "call": "replay","#))
        .unwrap_err();
    assert!(err.contains("replay"), "{err}");
}

#[test]
fn structural_mistakes_are_errors() {
    let both = CASE.replace(r#""response": {"#, r#""transport_error": "timeout", "response": {"#);
    assert!(Case::parse(&both).unwrap_err().contains("exactly one"));
    let kind = CASE.replace(
        r#"{"ok": {"text": "hi", "session_id": null, "turn_id": "r1","#,
        r#"{"error": {"kind": "rate_limited"}, "x": {"#,
    );
    assert!(Case::parse(&kind).is_err());
    let kind = r#"{"name": "k", "turn": {"text": "t"}, "expect": {"error": {"kind": "rate_limited"}}}"#;
    assert!(Case::parse(kind).unwrap_err().contains("rate_limited"));
}

#[test]
fn options_reach_the_plugin_as_text() {
    let case = Case::parse(CASE).unwrap();
    assert_eq!(
        case.turn.settings.option_list(),
        vec![("history-tokens".to_owned(), "10".to_owned()), ("stream".to_owned(), "false".to_owned())]
    );
    assert_eq!(case.turn.user_id, DEFAULT_USER_ID);
    assert_eq!(case.turn.settings.deadline_ms, DEFAULT_DEADLINE_MS);
}

#[test]
fn expected_usage_is_compared() {
    let body = r#"{"a": [1, {"b": 2, "extra": true}]}"#;
    assert_eq!(run(body, answer(Some(good_usage())), "hi"), Vec::<String>::new());
    let missing = run(body, answer(None), "hi");
    assert!(missing.len() == 1 && missing[0].starts_with("expect.ok.usage"), "{missing:?}");
    let other = Usage {
        cached_input_tokens: 0,
        ..good_usage()
    };
    let differs = run(body, answer(Some(other)), "hi");
    assert!(differs.len() == 1 && differs[0].starts_with("expect.ok.usage"), "{differs:?}");
}

#[test]
fn null_session_expects_none() {
    let mut with_session = answer(Some(good_usage())).unwrap();
    with_session.session_id = Some("conv_1".into());
    let f = run(r#"{"a": [1, {"b": 2}]}"#, Ok(with_session), "hi");
    assert!(f.len() == 1 && f[0].starts_with("expect.ok.session_id"), "{f:?}");
}

#[test]
fn request_mismatches_fail_the_case() {
    let ok = answer(Some(good_usage()));
    let absent = run(r#"{"a": [1, {"b": 2}], "c": null}"#, ok.clone(), "hi");
    assert!(absent.iter().any(|f| f.contains("body.c must be absent")), "{absent:?}");
    let longer = run(r#"{"a": [1, {"b": 2}, 3]}"#, ok.clone(), "hi");
    assert!(longer.iter().any(|f| f.contains("3 elements, want 2")), "{longer:?}");
    let pushed = run(r#"{"a": [1, {"b": 2}]}"#, ok, "hello");
    assert!(pushed.iter().any(|f| f.starts_with("pushed text")), "{pushed:?}");
}

#[test]
fn unused_and_extra_requests_fail_the_case() {
    let case = Case::parse(CASE).unwrap();
    let script = Script::new(case.exchanges.clone());
    let f = judge(&case, &answer(Some(good_usage())), "hi", &script);
    assert!(f.iter().any(|f| f.contains("never requested")), "{f:?}");

    let mut script = Script::new(case.exchanges.clone());
    let body = r#"{"a": [1, {"b": 2}]}"#;
    assert!(matches!(script.answer(&request(body), false), Ok(Reply::Response { status: 200, .. })));
    assert!(script.answer(&request(body), false).unwrap_err().contains("unexpected request"));
    let f = judge(&case, &answer(Some(good_usage())), "hi", &script);
    assert_eq!(f.len(), 1, "{f:?}");
}

#[test]
fn error_expectations_are_compared() {
    let case = Case::parse(
        r#"{"name": "e", "turn": {"text": "t"},
            "expect": {"error": {"kind": "rate-limited", "retryable": true, "retry_after_ms": 2000, "message_contains": "HTTP 429"}}}"#,
    )
    .unwrap();
    let err = Error {
        kind: "rate-limited".into(),
        message: "POST /chat/completions: HTTP 429: slow down".into(),
        retryable: true,
        retry_after_ms: Some(2000),
        session_id: None,
        turn_id: None,
        usage: None,
    };
    let script = Script::new(vec![]);
    assert!(judge(&case, &Err(err.clone()), "", &script).is_empty());
    let later = Error {
        retry_after_ms: None,
        ..err.clone()
    };
    assert_eq!(judge(&case, &Err(later), "", &script).len(), 1);
    assert_eq!(judge(&case, &answer(None), "", &script).len(), 1);
}

#[test]
fn a_recorded_case_reads_back_and_passes() {
    let mut case = Case::parse(CASE).unwrap();
    let outcome = answer(Some(good_usage()));
    case.expect = Expect::recorded(&outcome);
    let text = serde_json::to_string_pretty(&case).unwrap();
    let back = Case::parse(&text).unwrap();
    assert_eq!(back, case);
    let mut script = Script::new(back.exchanges.clone());
    let _ = script.answer(&request(r#"{"a": [1, {"b": 2}]}"#), false);
    assert!(judge(&back, &outcome, "hi", &script).is_empty());
}

#[test]
fn raw_bodies_and_event_data() {
    let r = ScriptedResponse {
        status: 502,
        headers: BTreeMap::new(),
        body: Some(serde_json::json!({"raw": "<html>bad gateway</html>"})),
    };
    assert_eq!(r.body_text(), "<html>bad gateway</html>");
    let e = ScriptedEvent {
        event: None,
        data: serde_json::json!({"x": 1}),
    };
    assert_eq!(e.data_text(), r#"{"x":1}"#);
}

#[test]
fn stream_requests_and_scripts_must_agree() {
    let case = Case::parse(CASE).unwrap();
    let body = r#"{"a": [1, {"b": 2}]}"#;
    // A 2xx body on a stream request is read as SSE text.
    let mut script = Script::new(vec![Exchange {
        response: Some(ScriptedResponse {
            status: 200,
            headers: BTreeMap::new(),
            body: Some(serde_json::json!({"raw": "event: a\ndata: {\"x\":1}\n\ndata: one\ndata: two\n\n"})),
        }),
        ..case.exchanges[0].clone()
    }]);
    let Ok(Reply::Sse { events, cut: false }) = script.answer(&request(body), true) else { panic!() };
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event.as_deref(), Some("a"));
    assert_eq!(events[1].data, "one\ntwo");
    // An `sse` script asked without a stream fails the case.
    let mut script = Script::new(vec![Exchange {
        response: None,
        sse: Some(vec![]),
        ..case.exchanges[0].clone()
    }]);
    assert!(script.answer(&request(body), false).unwrap_err().contains("scripted as a stream"));
    assert_eq!(script.failures().len(), 1);
}
