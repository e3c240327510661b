//! The one HTTP transport to OpenAI (or an OpenAI-compatible server).
//!
//! Plugins and the knowledge base never hold the API key or build URLs: they hand this crate a
//! method, a path relative to the base URL and a body. This crate adds the base URL, the
//! `Authorization` header and timeouts, and keeps secrets out of every error it returns.

mod sse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

pub use sse::{DEFAULT_MAX_EVENT_BYTES, SseError, SseEvent, SseParser};

#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// e.g. `https://api.openai.com/v1`; paths are appended to it.
    pub base_url: String,
    /// Empty: no `Authorization` header at all.
    pub api_key: String,
    /// Bound on a whole non-streamed request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Bound on the time without a complete line on a stream (and before its headers). Bytes
    /// that never end a line do not count as life.
    pub stream_idle_timeout: Duration,
    /// Bound on a whole stream, whatever the server sends (the host sets the turn timeout).
    pub stream_max_duration: Duration,
    /// Bound on a non-streamed body and on one line or event of a stream.
    pub max_body_bytes: usize,
    /// The longest server-requested wait (`Retry-After`) the host honours before a retry; a
    /// longer one is not waited for at all (see [`capped_wait`]).
    pub max_retry_wait: Duration,
}

/// Default of [`OpenAiConfig::max_retry_wait`]: a user waits a few seconds, not the hours a
/// server may ask for.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: api_key.into(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(60),
            stream_max_duration: Duration::from_secs(150),
            max_body_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
        }
    }
}

/// A request relative to the base URL.
#[derive(Clone, Debug, Default)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ApiResponse {
    pub status: u16,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ApiResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no HTTP answer. Messages never contain the key or a full URL with secrets.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("refused by the host: {0}")]
    Refused(String),
}

/// An error of the JSON convenience call: a transport failure or a non-2xx answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("unparsable answer: {0}")]
    BadBody(String),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How a stream request started.
pub enum StreamStart {
    Events(SseStream),
    /// A non-2xx answer, read whole.
    Refused(ApiResponse),
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Server-sent events of one streamed response, parsed incrementally.
pub struct SseStream {
    bytes: ByteStream,
    parser: SseParser,
    idle_timeout: Duration,
    /// When the last complete line arrived (or the stream started).
    last_line: Instant,
    /// The stream is cut here whatever arrives.
    deadline: Instant,
    max_duration: Duration,
    finished: bool,
    /// One timer for the whole stream, armed at the earlier of the idle bound and the deadline as
    /// they stood when it was armed; re-armed only when it fires early (lines came since). A timer
    /// per read would insert into tokio's wheel, and often wake its driver thread, at every event.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl SseStream {
    /// An event that has already arrived and been parsed, without waiting; `None` when the next
    /// one has yet to come (or the stream is over: [`next_event`](Self::next_event) says which).
    pub fn next_buffered(&mut self) -> Option<SseEvent> {
        self.parser.next_event()
    }

    /// The next event; `None` at the end of the stream. A stream that breaks mid-way, stays
    /// without a complete line for the idle timeout, outlasts its deadline or sends a line or event
    /// over the size limit is an error.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, TransportError> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(self.parser.finish());
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(TransportError::Timeout(format!(
                    "the stream lasted longer than {} s",
                    self.max_duration.as_secs()
                )));
            }
            let idle_until = self.last_line + self.idle_timeout;
            if now >= idle_until {
                return Err(TransportError::Timeout(format!(
                    "no complete line on the stream for {} s",
                    self.idle_timeout.as_secs()
                )));
            }
            let wake = idle_until.min(self.deadline);
            if self.timer.deadline() <= now.into() {
                self.timer.as_mut().reset(wake.into());
            }
            let (bytes, timer) = (&mut self.bytes, &mut self.timer);
            let next = std::future::poll_fn(|cx| match bytes.as_mut().poll_next(cx) {
                std::task::Poll::Ready(item) => std::task::Poll::Ready(Ok(item)),
                std::task::Poll::Pending => timer.as_mut().poll(cx).map(Err),
            });
            match next.await {
                // The checks above say which bound it was (or that lines came since it was armed).
                Err(()) => continue,
                Ok(None) => self.finished = true,
                Ok(Some(Ok(chunk))) => {
                    let lines = self
                        .parser
                        .feed(&chunk)
                        .map_err(|e| TransportError::Refused(e.to_string()))?;
                    if lines > 0 {
                        self.last_line = Instant::now();
                    }
                    // A server that never stops sending must not keep this task from yielding:
                    // the turn's own timeout and other users' turns need the worker too.
                    tokio::task::consume_budget().await;
                }
                Ok(Some(Err(err))) => return Err(classify(err)),
            }
        }
    }
}

/// The OpenAI transport. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct OpenAi {
    client: reqwest::Client,
    base_url: Arc<str>,
    /// The base URL parsed once; every request URL must stay under it after normalisation.
    base: Arc<reqwest::Url>,
    /// `None` for a server that takes no key (a local OpenAI-compatible server).
    auth: Option<Arc<str>>,
    config: Arc<OpenAiConfig>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl OpenAi {
    pub fn new(config: OpenAiConfig) -> Result<Self, TransportError> {
        let base = config.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(TransportError::Refused(format!(
                "OPENAI_BASE_URL must start with http:// or https://, got {base:?}"
            )));
        }
        let parsed = reqwest::Url::parse(&base)
            .ok()
            .filter(|u| u.host_str().is_some() && !u.cannot_be_a_base() && u.query().is_none() && u.fragment().is_none())
            .ok_or_else(|| TransportError::Refused("OPENAI_BASE_URL is not a valid base URL".into()))?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("swapbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Connection(e.without_url().to_string()))?;
        Ok(Self {
            client,
            base_url: base.into(),
            base: Arc::new(parsed),
            auth: (!config.api_key.is_empty()).then(|| format!("Bearer {}", config.api_key).into()),
            config: Arc::new(config),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of a plugin's path, refused unless it stays under the base URL. The requests
    /// carry the API key, so the check runs on the URL as parsed and normalised (what is sent),
    /// not only on the text a plugin handed in.
    fn url_for(&self, path: &str) -> Result<reqwest::Url, TransportError> {
        let refuse = || TransportError::Refused(format!("path {path:?} is not a path under the API base URL"));
        let path_part = path.split('?').next().unwrap_or_default().to_ascii_lowercase();
        // Cheap refusals first. The URL parser silently drops tab, LF and CR (hiding a `..`), and a
        // server may decode `%2e`, `%2f` or `%5c` after this check: none has a use in an API path.
        if !path.starts_with('/')
            || path.contains("..")
            || path.contains("://")
            || path.contains('#')
            || path.contains('\\')
            || path.chars().any(char::is_control)
            || ["%2e", "%2f", "%5c"].iter().any(|e| path_part.contains(e))
        {
            return Err(refuse());
        }
        normalised_under_base(&self.base, path).ok_or_else(refuse)
    }

    /// Builds the request; refuses paths that would leave the API.
    fn build(&self, req: &ApiRequest) -> Result<reqwest::RequestBuilder, TransportError> {
        let url = self.url_for(&req.path)?;
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| TransportError::Refused(format!("unknown method {:?}", req.method)))?;
        let mut builder = self.client.request(method, url);
        if let Some(auth) = &self.auth {
            builder = builder.header(reqwest::header::AUTHORIZATION, &**auth);
        }
        for (name, value) in &req.headers {
            // The key is the host's: a plugin cannot replace or read it.
            if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("host") {
                return Err(TransportError::Refused(format!("header {name:?} is set by the host")));
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &req.body {
            let has_type = req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
            if !has_type {
                builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            builder = builder.body(body.clone());
        }
        Ok(builder)
    }

    /// One attempt, no retry: the caller decides what is safe to repeat.
    pub async fn send(&self, req: ApiRequest) -> Result<ApiResponse, TransportError> {
        let builder = self.build(&req)?.timeout(self.config.request_timeout);
        let response = builder.send().await.map_err(classify)?;
        read_whole(response, self.config.max_body_bytes).await
    }

    /// One streamed attempt: 2xx answers yield their events, others are read whole.
    pub async fn send_stream(&self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        let builder = self.build(&req)?.header(reqwest::header::ACCEPT, "text/event-stream");
        let response = tokio::time::timeout(self.config.stream_idle_timeout, builder.send())
            .await
            .map_err(|_| TransportError::Timeout("no answer to the stream request".into()))?
            .map_err(classify)?;
        if !response.status().is_success() {
            return Ok(StreamStart::Refused(read_whole(response, self.config.max_body_bytes).await?));
        }
        let now = Instant::now();
        let deadline = now + self.config.stream_max_duration;
        Ok(StreamStart::Events(SseStream {
            bytes: Box::pin(response.bytes_stream()),
            parser: SseParser::with_limit(self.config.max_body_bytes),
            idle_timeout: self.config.stream_idle_timeout,
            last_line: now,
            deadline,
            max_duration: self.config.stream_max_duration,
            finished: false,
            timer: Box::pin(tokio::time::sleep_until((now + self.config.stream_idle_timeout).min(deadline).into())),
        }))
    }

    /// POST a JSON body and parse a JSON answer, retrying once when that is safe and useful
    /// (timeouts, connection errors, 408/409/429 except quota, 5xx).
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let req = ApiRequest {
            method: "POST".into(),
            path: path.into(),
            headers: vec![],
            body: Some(body.to_string()),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send(req.clone()).await;
            let wait = match &outcome {
                Err(TransportError::Refused(_)) => None,
                Err(_) => Some(backoff(attempt)),
                Ok(resp) => retry_wait(
                    resp.status,
                    resp.header("retry-after"),
                    error_code(&resp.body).as_deref(),
                    attempt,
                    self.config.max_retry_wait,
                ),
            };
            match (outcome, wait) {
                (Ok(resp), _) if (200..300).contains(&resp.status) => {
                    return serde_json::from_str(&resp.body)
                        .map_err(|e| ApiError::BadBody(format!("{e} (HTTP {})", resp.status)));
                }
                (outcome, Some(wait)) if attempt < 2 => {
                    tracing::warn!(path, attempt, wait_ms = wait.as_millis() as u64, "retrying OpenAI call");
                    let _ = outcome;
                    tokio::time::sleep(wait).await;
                }
                (Err(err), _) => return Err(err.into()),
                (Ok(resp), _) => return Err(status_error(&resp)),
            }
        }
    }
}

/// `base` + `path` parsed as the HTTP client will send it, if it stays on the base's origin and
/// under its path (dot segments, in any encoding the parser understands, already resolved).
fn normalised_under_base(base: &reqwest::Url, path: &str) -> Option<reqwest::Url> {
    let joined = format!("{}{}", base.as_str().trim_end_matches('/'), path);
    let url = reqwest::Url::parse(&joined).ok()?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username() == base.username()
        && url.password() == base.password();
    let base_path = base.path().trim_end_matches('/');
    let under = url.path().strip_prefix(base_path).is_some_and(|rest| rest.starts_with('/'));
    (same_origin && under && url.fragment().is_none()).then_some(url)
}

/// The error of a non-2xx answer, with OpenAI's `error.message` and `error.code` when present.
pub fn status_error(resp: &ApiResponse) -> ApiError {
    let parsed: Option<Value> = serde_json::from_str(&resp.body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{} bytes of non-JSON body", resp.body.len()));
    ApiError::Status {
        status: resp.status,
        code: error_code(&resp.body),
        message,
    }
}

fn error_code(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    e.get("code")
        .and_then(Value::as_str)
        .or_else(|| e.get("type").and_then(Value::as_str))
        .map(str::to_owned)
}

/// When a failed attempt is worth one more, how long to wait first. `None` = do not retry.
pub fn retry_wait(
    status: u16,
    retry_after: Option<&str>,
    code: Option<&str>,
    attempt: u32,
    max_wait: Duration,
) -> Option<Duration> {
    let retryable = matches!(status, 408 | 409 | 429) || (500..600).contains(&status);
    if !retryable || code == Some("insufficient_quota") {
        return None;
    }
    match retry_after.and_then(parse_retry_after) {
        Some(wait) => capped_wait(wait, max_wait),
        None => Some(backoff(attempt)),
    }
}

/// The host's one policy for a wait a server (or a plugin relaying it) asks for: honoured up to
/// `max_wait`, and beyond it not at all. Sleeping a capped part of a longer wait would only make
/// the retry fail again later, while the caller (holding the user's turn) could answer now.
pub fn capped_wait(requested: Duration, max_wait: Duration) -> Option<Duration> {
    (requested <= max_wait).then_some(requested)
}

/// Retry-After in seconds (possibly fractional); HTTP dates are not used by OpenAI.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// About 0.5 s, then 1 s, with jitter, as OpenAI's SDKs do.
pub fn backoff(attempt: u32) -> Duration {
    let base = 500u64 << attempt.saturating_sub(1).min(4);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base - jitter)
}

/// Reads a body up to `max` bytes; a larger one is refused as soon as it is known to be larger
/// (by its `Content-Length`, or while reading), so memory never holds more than `max`.
async fn read_whole(response: reqwest::Response, max: usize) -> Result<ApiResponse, TransportError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let too_large = || TransportError::Refused(format!("response body larger than {max} bytes (HTTP {status})"));
    if response.content_length().is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(classify)?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let body = match String::from_utf8(body) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    };
    Ok(ApiResponse { status, headers, body })
}

/// Maps a reqwest error to a transport error without its URL.
fn classify(err: reqwest::Error) -> TransportError {
    let timeout = err.is_timeout();
    let text = describe(&err.without_url());
    if timeout {
        TransportError::Timeout(text)
    } else {
        TransportError::Connection(text)
    }
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_follows_the_sdks() {
        let max = DEFAULT_MAX_RETRY_WAIT;
        assert_eq!(retry_wait(429, Some("2"), None, 1, max), Some(Duration::from_secs(2)));
        assert_eq!(retry_wait(429, None, Some("insufficient_quota"), 1, max), None);
        assert_eq!(retry_wait(400, None, None, 1, max), None);
        assert_eq!(retry_wait(404, None, None, 1, max), None);
        let wait = retry_wait(503, None, None, 1, max).unwrap();
        assert!(wait <= Duration::from_millis(500) && wait >= Duration::from_millis(375));
    }

    #[test]
    fn a_server_requested_wait_beyond_the_cap_is_not_taken() {
        let max = Duration::from_secs(5);
        assert_eq!(retry_wait(429, Some("5"), None, 1, max), Some(Duration::from_secs(5)));
        assert_eq!(retry_wait(429, Some("5.5"), None, 1, max), None);
        assert_eq!(retry_wait(503, Some("100000"), None, 1, max), None);
        assert_eq!(retry_wait(429, Some("60"), None, 1, Duration::from_secs(120)), Some(Duration::from_secs(60)));
        assert_eq!(capped_wait(Duration::from_secs(100_000), max), None);
        assert_eq!(capped_wait(Duration::from_millis(1500), max), Some(Duration::from_millis(1500)));
    }

    /// A 429 asking for a long wait: `post_json` (the knowledge base's embeddings) answers at once
    /// with the status instead of sleeping.
    #[tokio::test]
    async fn post_json_does_not_sleep_a_wait_beyond_the_cap() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/v1/embeddings",
            axum::routing::post(move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "100")],
                        r#"{"error":{"message":"slow down","code":"rate_limit_exceeded"}}"#,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let api = OpenAi::new(OpenAiConfig::new(format!("http://{addr}/v1"), "sk-test")).unwrap();
        // The guard only turns a hang (the bug) into a failure; it asserts no speed.
        let result = tokio::time::timeout(Duration::from_secs(30), api.post_json("/embeddings", &serde_json::json!({})))
            .await
            .expect("post_json slept the server's 100 s");
        assert_eq!(result.unwrap_err().status(), Some(429));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "not retried");
    }

    #[test]
    fn paths_outside_the_api_are_refused() {
        let api = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "sk-secret")).unwrap();
        for path in ["https://evil.example/x", "../x", "/a/../../b", "relative"] {
            let req = ApiRequest { method: "GET".into(), path: path.into(), ..Default::default() };
            assert!(matches!(api.build(&req), Err(TransportError::Refused(_))), "{path}");
        }
        for path in ["/models", "/conversations/conv_1/items?limit=20&after=a%2Fb", "/responses/resp_1/cancel"] {
            let req = ApiRequest { method: "GET".into(), path: path.into(), ..Default::default() };
            let url = api.build(&req).unwrap().build().unwrap().url().clone();
            assert!(url.path().starts_with("/v1/"), "{path}: {url}");
        }
        let req = ApiRequest {
            method: "GET".into(),
            path: "/models".into(),
            headers: vec![("Authorization".into(), "Bearer stolen".into())],
            body: None,
        };
        assert!(matches!(api.build(&req), Err(TransportError::Refused(_))));
    }

    /// Item 8 of the hardening issue: each of these reached a path outside `/v1` with the key.
    const ESCAPES: [&str; 14] = [
        "/%2e%2e/admin",
        "/%2E%2E/admin",
        "/.%2e/admin",
        "/%2e./admin",
        "/x/%2e%2e/%2e%2e/admin",
        "/.\t./admin",
        "/.\n./admin",
        "/.\r./admin",
        "/\t../admin",
        "/..\t/admin",
        "/x/.\n./.\r./admin",
        "/..%2fadmin",
        "/%5c..%5cadmin",
        "/..\\admin",
    ];

    #[test]
    fn encoded_and_hidden_dot_segments_are_refused() {
        let api = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "sk-secret")).unwrap();
        for path in ESCAPES {
            let req = ApiRequest { method: "GET".into(), path: path.into(), ..Default::default() };
            assert!(matches!(api.build(&req), Err(TransportError::Refused(_))), "{path:?}");
        }
    }

    #[test]
    fn the_normalised_url_is_checked_not_only_the_text() {
        // Without the cheap text checks, the parsed URL alone still refuses every escape the
        // parser resolves (dot segments in %2e form, or split by a tab, LF or CR).
        let base = reqwest::Url::parse("http://127.0.0.1:9/v1").unwrap();
        for path in ["/%2e%2e/admin", "/.%2e/admin", "/%2e./admin", "/.\t./admin", "/.\n./admin", "/.\r./admin", "/x/%2e%2e/%2e%2e/admin", "/../admin", "@evil.example/x"] {
            assert_eq!(normalised_under_base(&base, path), None, "{path:?}");
        }
        assert_eq!(normalised_under_base(&base, "/models").unwrap().as_str(), "http://127.0.0.1:9/v1/models");
        assert_eq!(normalised_under_base(&base, "/a/../models").unwrap().path(), "/v1/models");
        let nested = reqwest::Url::parse("https://proxy.example/openai/v1").unwrap();
        assert_eq!(normalised_under_base(&nested, "/../v2/x"), None);
        assert_eq!(normalised_under_base(&nested, "s/x"), None, "/v1s is not under /v1");
    }

    #[tokio::test]
    async fn connection_errors_do_not_carry_the_key() {
        let api = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "sk-very-secret")).unwrap();
        let err = api
            .send(ApiRequest { method: "GET".into(), path: "/models".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Connection(_)));
        assert!(!format!("{err:?}").contains("sk-very-secret"));
    }
}
