//! The transport against a hostile OpenAI-compatible server on 127.0.0.1: streams that never end
//! a line, trickle bytes, or keep a connection busy forever, and bodies too large to hold.
//!
//! The `timeout` around each call asserts no speed: it only turns the hang these servers caused
//! before into a failure instead of a stuck test run.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use swapbot_openai::{ApiRequest, OpenAi, OpenAiConfig, StreamStart, TransportError};

const HANG_GUARD: Duration = Duration::from_secs(30);

fn sse(body: Body) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/event-stream")], body)
}

/// An endless body of `chunk`, sent every `every` (or as fast as the socket takes it).
fn endless(chunk: &'static [u8], every: Option<Duration>) -> Body {
    let stream = futures::stream::unfold((), move |()| async move {
        if let Some(every) = every {
            tokio::time::sleep(every).await;
        }
        Some((Ok::<_, Infallible>(Bytes::from_static(chunk)), ()))
    });
    Body::from_stream(stream)
}

async fn hostile_server() -> String {
    static A_LOT: [u8; 64 << 10] = [b'a'; 64 << 10];
    let app = axum::Router::new()
        // 2xx, bytes as fast as possible, never a newline.
        .route("/v1/flood", post(|| async { sse(endless(&A_LOT, None)) }))
        // 2xx, one byte every 20 ms, never a newline.
        .route("/v1/trickle", post(|| async { sse(endless(b"a", Some(Duration::from_millis(20)))) }))
        // 2xx, a keep-alive comment every 20 ms, forever.
        .route("/v1/keepalive", post(|| async { sse(endless(b": ping\n", Some(Duration::from_millis(20)))) }))
        // 2xx, one `data:` line per chunk, the event never ends.
        .route("/v1/endless-event", post(|| async { sse(endless(b"data: 0123456789abcdef0123456789abcdef\n", None)) }))
        // A non-streamed body far beyond the cap, with and without a Content-Length.
        .route("/v1/huge", get(|| async { vec![b'x'; 8 << 20] }))
        .route("/v1/huge-chunked", get(|| async { Body::from_stream(futures::stream::StreamExt::take(
            futures::stream::repeat_with(|| Ok::<_, Infallible>(Bytes::from_static(&A_LOT))),
            128,
        )) }))
        // 2xx, a whole event every 40 ms, 25 of them, then the end.
        .route("/v1/slow-events", post(|| async {
            let events = futures::stream::unfold(0, |n| async move {
                (n < 25).then_some(n)?;
                tokio::time::sleep(Duration::from_millis(40)).await;
                Some((Ok::<_, Infallible>(Bytes::from(format!("data: {{\"n\":{n}}}\n\n"))), n + 1))
            });
            sse(Body::from_stream(events))
        }))
        .route("/v1/fine", get(|| async { "{\"ok\":true}" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn client(base: &str, edit: impl FnOnce(&mut OpenAiConfig)) -> OpenAi {
    let mut config = OpenAiConfig::new(base, "sk-hostile-test-key");
    edit(&mut config);
    OpenAi::new(config).unwrap()
}

/// Reads events until the stream ends or fails.
async fn drain(api: &OpenAi, path: &str) -> Result<usize, TransportError> {
    let req = ApiRequest { method: "POST".into(), path: path.into(), body: Some("{}".into()), ..Default::default() };
    let StreamStart::Events(mut stream) = api.send_stream(req).await? else { panic!("refused") };
    let mut events = 0;
    while stream.next_event().await?.is_some() {
        events += 1;
    }
    Ok(events)
}

#[tokio::test]
async fn a_stream_without_newlines_is_cut_at_the_line_limit() {
    let base = hostile_server().await;
    let api = client(&base, |c| c.max_body_bytes = 1 << 20);
    let result = tokio::time::timeout(HANG_GUARD, drain(&api, "/flood")).await.expect("the flood was never cut");
    match result {
        Err(TransportError::Refused(message)) => assert!(message.contains("line"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_event_that_never_ends_is_cut_at_the_event_limit() {
    let base = hostile_server().await;
    let api = client(&base, |c| c.max_body_bytes = 1 << 20);
    let result = tokio::time::timeout(HANG_GUARD, drain(&api, "/endless-event")).await.expect("never cut");
    match result {
        Err(TransportError::Refused(message)) => assert!(message.contains("event"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bytes_that_never_end_a_line_do_not_keep_a_stream_alive() {
    let base = hostile_server().await;
    let api = client(&base, |c| c.stream_idle_timeout = Duration::from_millis(300));
    let result = tokio::time::timeout(HANG_GUARD, drain(&api, "/trickle")).await.expect("the trickle was never cut");
    assert!(matches!(&result, Err(TransportError::Timeout(m)) if m.contains("no complete line")), "{result:?}");
}

/// The idle bound restarts with every complete line: a stream that takes five idle timeouts in
/// all, but never waits one between lines, is read to its end.
#[tokio::test]
async fn a_slow_stream_that_keeps_sending_lines_is_read_to_its_end() {
    let base = hostile_server().await;
    let api = client(&base, |c| c.stream_idle_timeout = Duration::from_millis(200));
    let result = tokio::time::timeout(HANG_GUARD, drain(&api, "/slow-events")).await.expect("never ended");
    assert_eq!(result.unwrap(), 25);
}

#[tokio::test]
async fn a_stream_ends_by_its_deadline_whatever_the_server_sends() {
    let base = hostile_server().await;
    let api = client(&base, |c| {
        c.stream_idle_timeout = Duration::from_secs(10);
        c.stream_max_duration = Duration::from_millis(500);
    });
    let result = tokio::time::timeout(HANG_GUARD, drain(&api, "/keepalive")).await.expect("the stream outlived its deadline");
    assert!(matches!(&result, Err(TransportError::Timeout(m)) if m.contains("longer than")), "{result:?}");
}

#[tokio::test]
async fn a_body_beyond_the_cap_is_refused_without_reading_it_whole() {
    let base = hostile_server().await;
    let api = client(&base, |c| c.max_body_bytes = 1 << 20);
    let get = |path: &str| ApiRequest { method: "GET".into(), path: path.into(), ..Default::default() };
    for path in ["/huge", "/huge-chunked"] {
        let result = api.send(get(path)).await;
        assert!(matches!(&result, Err(TransportError::Refused(m)) if m.contains("larger than")), "{path}: {result:?}");
    }
    let fine = api.send(get("/fine")).await.unwrap();
    assert_eq!(fine.body, "{\"ok\":true}");
}
