//! The one HTTP transport to OpenAI (or an OpenAI-compatible server).
//!
//! Plugins and the knowledge base never hold the API key or build URLs: they hand this crate a
//! method, a path relative to the base URL and a body. This crate adds the base URL, the
//! `Authorization` header and timeouts, and keeps secrets out of every error it returns.

mod sse;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

pub use sse::{SseEvent, SseParser};

#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// e.g. `https://api.openai.com/v1`; paths are appended to it.
    pub base_url: String,
    pub api_key: String,
    /// Bound on a whole non-streamed request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Bound on the silence between two chunks of a stream (and before its headers).
    pub stream_idle_timeout: Duration,
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: api_key.into(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(60),
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
    finished: bool,
}

impl SseStream {
    /// The next event; `None` at the end of the stream. A stream that breaks mid-way is an error.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, TransportError> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(self.parser.finish());
            }
            match tokio::time::timeout(self.idle_timeout, self.bytes.next()).await {
                Err(_) => {
                    return Err(TransportError::Timeout(format!(
                        "no data on the stream for {} s",
                        self.idle_timeout.as_secs()
                    )));
                }
                Ok(None) => self.finished = true,
                Ok(Some(Ok(chunk))) => self.parser.feed(&chunk),
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
    auth: Arc<str>,
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
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("swapbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Connection(e.without_url().to_string()))?;
        Ok(Self {
            client,
            base_url: base.into(),
            auth: format!("Bearer {}", config.api_key).into(),
            config: Arc::new(config),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Builds the request; refuses paths that would leave the API (absolute URLs, `..`).
    fn build(&self, req: &ApiRequest) -> Result<reqwest::RequestBuilder, TransportError> {
        let path = req.path.as_str();
        if !path.starts_with('/') || path.contains("..") || path.contains("://") || path.contains('#')
        {
            return Err(TransportError::Refused(format!(
                "path {path:?} is not a path under the API base URL"
            )));
        }
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| TransportError::Refused(format!("unknown method {:?}", req.method)))?;
        let mut builder = self
            .client
            .request(method, format!("{}{}", self.base_url, path))
            .header(reqwest::header::AUTHORIZATION, &*self.auth);
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
        read_whole(response).await
    }

    /// One streamed attempt: 2xx answers yield their events, others are read whole.
    pub async fn send_stream(&self, req: ApiRequest) -> Result<StreamStart, TransportError> {
        let builder = self.build(&req)?.header(reqwest::header::ACCEPT, "text/event-stream");
        let response = tokio::time::timeout(self.config.stream_idle_timeout, builder.send())
            .await
            .map_err(|_| TransportError::Timeout("no answer to the stream request".into()))?
            .map_err(classify)?;
        if !response.status().is_success() {
            return Ok(StreamStart::Refused(read_whole(response).await?));
        }
        Ok(StreamStart::Events(SseStream {
            bytes: Box::pin(response.bytes_stream()),
            parser: SseParser::default(),
            idle_timeout: self.config.stream_idle_timeout,
            finished: false,
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
                Ok(resp) => retry_wait(resp.status, resp.header("retry-after"), error_code(&resp.body).as_deref(), attempt),
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
pub fn retry_wait(status: u16, retry_after: Option<&str>, code: Option<&str>, attempt: u32) -> Option<Duration> {
    let retryable = matches!(status, 408 | 409 | 429) || (500..600).contains(&status);
    if !retryable || code == Some("insufficient_quota") {
        return None;
    }
    match retry_after.and_then(parse_retry_after) {
        Some(wait) if wait <= Duration::from_secs(120) => Some(wait),
        Some(_) => None,
        None => Some(backoff(attempt)),
    }
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

async fn read_whole(response: reqwest::Response) -> Result<ApiResponse, TransportError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.text().await.map_err(classify)?;
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
        assert_eq!(retry_wait(429, Some("2"), None, 1), Some(Duration::from_secs(2)));
        assert_eq!(retry_wait(429, None, Some("insufficient_quota"), 1), None);
        assert_eq!(retry_wait(400, None, None, 1), None);
        assert_eq!(retry_wait(404, None, None, 1), None);
        assert_eq!(retry_wait(429, Some("500"), None, 1), None, "a wait beyond 120 s is not taken");
        let wait = retry_wait(503, None, None, 1).unwrap();
        assert!(wait <= Duration::from_millis(500) && wait >= Duration::from_millis(375));
    }

    #[test]
    fn paths_outside_the_api_are_refused() {
        let api = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "sk-secret")).unwrap();
        for path in ["https://evil.example/x", "../x", "/a/../../b", "relative"] {
            let req = ApiRequest { method: "GET".into(), path: path.into(), ..Default::default() };
            assert!(matches!(api.build(&req), Err(TransportError::Refused(_))), "{path}");
        }
        let req = ApiRequest {
            method: "GET".into(),
            path: "/models".into(),
            headers: vec![("Authorization".into(), "Bearer stolen".into())],
            body: None,
        };
        assert!(matches!(api.build(&req), Err(TransportError::Refused(_))));
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
