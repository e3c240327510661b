//! Errors, ids, body parsing.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An OpenAI error answer: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub typ: String,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, typ: &str, message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Self {
        ApiError {
            status,
            typ: typ.to_string(),
            message: message.into(),
            param: param.map(String::from),
            code: code.map(String::from),
        }
    }
    pub fn bad_request(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message, param, code)
    }
    pub fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message, param, None)
    }
    pub fn invalid_url(method: &str, path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("Invalid URL ({method} {path})"), None, None)
    }
    pub fn unknown_parameter(name: &str) -> Self {
        Self::bad_request(format!("Unknown parameter: '{name}'."), Some(name), Some("unknown_parameter"))
    }
    pub fn missing(name: &str) -> Self {
        Self::bad_request(format!("Missing required parameter: '{name}'."), Some(name), Some("missing_required_parameter"))
    }
    pub fn invalid_type(name: &str, expected: &str, got: &Value) -> Self {
        let got = match got {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        Self::bad_request(
            format!("Invalid type for '{name}': expected {expected}, but got {got} instead."),
            Some(name),
            Some("invalid_type"),
        )
    }
    pub fn invalid_value(message: impl Into<String>, param: &str) -> Self {
        Self::bad_request(message, Some(param), Some("invalid_value"))
    }
    pub fn conversation_locked() -> Self {
        Self::bad_request(
            "Another process is currently operating on this conversation. Please retry in a few seconds.",
            Some("conversation"),
            Some("conversation_locked"),
        )
    }
    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
            None,
            None,
        )
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.typ, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// 64-bit FNV-1a: stable across runs and platforms.
/// A 200 JSON answer whose body breaks off halfway (the `CutStreamAfterDeltas` fault without `stream`).
pub fn cut_json_body(value: &Value) -> Response {
    let text = value.to_string();
    let half = text[..text.len() / 2].to_string();
    let body = async_stream::stream! {
        yield Ok::<Bytes, std::io::Error>(Bytes::from(half));
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        yield Err(std::io::Error::other("connection cut by sandbox fault"));
    };
    let mut r = Response::new(axum::body::Body::from_stream(body));
    r.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    r
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Parse a JSON object body. An empty body is an empty object.
pub fn parse_object(bytes: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::invalid_type("body", "an object", &other)),
        Err(_) => Err(ApiError::bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
            None,
            None,
        )),
    }
}

/// Reject fields the spec does not define for this body.
pub fn check_known(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::unknown_parameter(k)),
        None => Ok(()),
    }
}

/// `metadata`: absent/null → `{}`; an object of at most 16 string pairs.
pub fn metadata(body: &Map<String, Value>) -> Result<Value, ApiError> {
    match body.get("metadata") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(m)) => {
            if m.len() > 16 {
                return Err(ApiError::bad_request(
                    format!("Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an object with {} properties instead.", m.len()),
                    Some("metadata"),
                    Some("object_above_max_properties"),
                ));
            }
            for (k, v) in m {
                if !v.is_string() {
                    return Err(ApiError::invalid_type(&format!("metadata.{k}"), "a string", v));
                }
            }
            Ok(Value::Object(m.clone()))
        }
        Some(other) => Err(ApiError::invalid_type("metadata", "an object", other)),
    }
}

pub fn opt_bool(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid_type(name, "a boolean", other)),
    }
}

pub fn opt_str(body: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid_type(name, "a string", other)),
    }
}

/// Common list query: `limit` (1–100, default 20), `order` (asc|desc, default desc), `after`, `before`.
pub struct ListQuery {
    pub limit: usize,
    pub desc: bool,
    pub after: Option<String>,
    pub before: Option<String>,
    pub extra: Vec<(String, String)>,
}

pub fn list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery { limit: 20, desc: true, after: None, before: None, extra: vec![] };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "limit" => {
                let n: i64 = v.parse().map_err(|_| ApiError::invalid_type("limit", "an integer", &Value::String(v.clone())))?;
                if !(1..=100).contains(&n) {
                    let (what, bound) = if n < 1 { ("below minimum", ">= 1") } else { ("above maximum", "<= 100") };
                    return Err(ApiError::bad_request(
                        format!("Invalid 'limit': integer {what} value. Expected a value {bound}, but got {n} instead."),
                        Some("limit"),
                        Some(if n < 1 { "integer_below_min_value" } else { "integer_above_max_value" }),
                    ));
                }
                q.limit = n as usize;
            }
            "order" => match v.as_str() {
                "asc" => q.desc = false,
                "desc" => q.desc = true,
                _ => {
                    return Err(ApiError::invalid_value(
                        format!("Invalid value: '{v}'. Supported values are: 'asc' and 'desc'."),
                        "order",
                    ));
                }
            },
            "after" => q.after = Some(v),
            "before" => q.before = Some(v),
            _ => q.extra.push((k.to_string(), v)),
        }
    }
    Ok(q)
}

/// Apply a [`ListQuery`] to items (oldest first) with an `id` field; returns the OpenAI list object.
pub fn paginate(items: &[Value], q: &ListQuery) -> Value {
    let mut ordered: Vec<&Value> = items.iter().collect();
    if q.desc {
        ordered.reverse();
    }
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(after) = &q.after
        && let Some(pos) = ordered.iter().position(|v| id_of(v) == *after) {
            ordered.drain(..=pos);
        }
    if let Some(before) = &q.before
        && let Some(pos) = ordered.iter().position(|v| id_of(v) == *before) {
            ordered.truncate(pos);
        }
    let has_more = ordered.len() > q.limit;
    ordered.truncate(q.limit);
    let first = ordered.first().map(|v| id_of(v));
    let last = ordered.last().map(|v| id_of(v));
    json!({"object": "list", "data": ordered, "first_id": first, "last_id": last, "has_more": has_more})
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && s.is_char_boundary(i + 3)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serde helper: a `Duration` as integer milliseconds.
pub mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding.
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { B64[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { B64[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Inverse of [`b64_encode`] (`-`/`_` accepted for `+`/`/`); `None` on any other character.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
