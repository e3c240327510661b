//! POST /v1/chat/completions: stateless, the model sees the request's messages.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::context;
use crate::model::{self, Msg};
use crate::responses::reasoning_tokens;
use crate::usage::{Bill, Endpoint};
use crate::util::{self, ApiError, check_known, metadata, now, opt_bool, opt_str};
use crate::{FaultKind, Shared, StreamFault};

const CHAT_FIELDS: &[&str] = &[
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "messages", "metadata", "modalities", "model", "moderation", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
];

/// `{role, content}`: role system | developer | user | assistant | tool | function; content a string or
/// an array of parts (their `text`s are read).
fn parse_messages(body: &Map<String, Value>) -> Result<Vec<Msg>, ApiError> {
    let arr = match body.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(ApiError::invalid_type("messages", "an array", other)),
    };
    if arr.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    let mut out = Vec::new();
    for (i, m) in arr.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Value::Object(o) = m else { return Err(ApiError::invalid_type(&p, "an object", m)) };
        let role = match o.get("role") {
            Some(Value::String(r)) if matches!(r.as_str(), "system" | "developer" | "user" | "assistant" | "tool" | "function") => r.clone(),
            Some(Value::String(r)) => {
                return Err(ApiError::invalid_value(
                    format!("Invalid value: '{r}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
                    &format!("{p}.role"),
                ));
            }
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{p}.role"))),
            Some(other) => return Err(ApiError::invalid_type(&format!("{p}.role"), "a string", other)),
        };
        let text = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{p}.content"))),
            Some(other) => return Err(ApiError::invalid_type(&format!("{p}.content"), "a string or an array", other)),
        };
        out.push(Msg::new(&role, &text));
    }
    Ok(out)
}

fn chat_usage(prompt: u64, cached: u64, completion: u64, reasoning: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// POST /v1/chat/completions
pub async fn create(State(sh): State<Arc<Shared>>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let fault = parts.extensions.get::<StreamFault>().map(|f| f.0.clone());
    let bytes = to_bytes(body, usize::MAX).await.map_err(|_| ApiError::server_error())?;
    let body = util::parse_object(&bytes)?;
    check_known(&body, CHAT_FIELDS)?;
    let model_name = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => return Err(ApiError::missing("model")),
        Some(other) => return Err(ApiError::invalid_type("model", "a string", other)),
    };
    let msgs = parse_messages(&body)?;
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    // `obfuscation` on every chunk is the API's default; only `include_obfuscation: false` drops it.
    let (include_usage, include_obfuscation) = match body.get("stream_options") {
        None | Some(Value::Null) => (false, true),
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::bad_request(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    Some("stream_options"),
                    None,
                ));
            }
            (
                o.get("include_usage").and_then(Value::as_bool).unwrap_or(false),
                o.get("include_obfuscation").and_then(Value::as_bool).unwrap_or(true),
            )
        }
        Some(other) => return Err(ApiError::invalid_type("stream_options", "an object", other)),
    };
    metadata(&body)?;
    let cache_key = opt_str(&body, "prompt_cache_key")?;
    let user = opt_str(&body, "safety_identifier")?.or(opt_str(&body, "user")?);
    let max_tokens = match body.get("max_completion_tokens").or(body.get("max_tokens")) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.as_u64(),
        Some(other) => return Err(ApiError::invalid_type("max_completion_tokens", "an integer", other)),
    };
    let cfg = sh.config();
    let window = cfg.window_for(&model_name);
    let prompt_tokens = msgs.iter().map(|m| model::count_tokens(&m.text)).sum::<u64>().max(1);
    if prompt_tokens > window {
        return Err(ApiError::bad_request(
            format!("This model's maximum context length is {window} tokens. However, your messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages."),
            Some("messages"),
            Some("context_length_exceeded"),
        ));
    }
    let cur = msgs.iter().rposition(|m| m.role == "user");
    let current = cur.map(|i| msgs[i].text.clone()).unwrap_or_default();
    let mut kb = String::new();
    let mut history = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if Some(i) == cur {
            continue;
        }
        if matches!(m.role.as_str(), "system" | "developer") {
            kb.push_str(&m.text);
            kb.push('\n');
        }
        history.push(m.clone());
    }
    let answer = model::answer(&history, &current, &kb);
    let reasoning = reasoning_tokens(&model_name, &current);
    let mut tokens = model::tokens(&answer);
    let mut finish_reason = "stop";
    if let Some(m) = max_tokens {
        let room = m.saturating_sub(reasoning) as usize;
        if tokens.len() > room {
            tokens.truncate(room);
            finish_reason = "length";
        }
    }
    let cached = {
        let parts: Vec<(&str, &str)> = msgs.iter().map(|m| (m.role.as_str(), m.text.as_str())).collect();
        let scope = match &cache_key {
            Some(k) => format!("{model_name}\u{0}key:{k}"),
            None => format!("{model_name}\u{0}"),
        };
        sh.state.lock().unwrap().cache_lookup(scope, context::sequence_of(&parts), &cfg).min(prompt_tokens)
    };
    let usage = chat_usage(prompt_tokens, cached, tokens.len() as u64 + reasoning, reasoning);
    let id = format!("chatcmpl-{}", &sh.id("c")[2..31]);
    let created = now();
    let bill = move |sh: &Shared, usage: &Value| {
        sh.bill(Bill { endpoint: Endpoint::Chat, model: &model_name, usage, cache_key: cache_key.as_deref(), user: user.as_deref(), conversation: None });
    };
    let model_out = body["model"].clone();
    let ttft = cfg.time_to_first_token;
    let interval = cfg.token_interval;

    if !stream {
        match fault {
            Some(FaultKind::StreamFailed) | Some(FaultKind::ErrorEvent) => return Err(ApiError::server_error()),
            _ => {}
        }
        let total = ttft + interval * (tokens.len() as u32).saturating_sub(1);
        if !total.is_zero() {
            tokio::time::sleep(total).await;
        }
        let text: String = tokens.concat();
        let out = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model_out,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                "logprobs": null, "finish_reason": finish_reason}],
            "usage": usage, "service_tier": "default", "system_fingerprint": null,
        });
        if let Some(FaultKind::CutStreamAfterDeltas(_)) = fault {
            return Ok(util::cut_json_body(&out));
        }
        bill(&sh, &usage);
        return Ok((StatusCode::OK, axum::Json(out)).into_response());
    }

    let chunk = move |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_out,
            "service_tier": "default", "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        if include_obfuscation {
            // Random-looking padding that evens out the chunk sizes, as the API sends it.
            let len = c["choices"][0]["delta"]["content"].as_str().map_or(0, str::len);
            c["obfuscation"] = Value::String("abcdefghijklmnop"[..(16 - len % 16).min(16)].to_owned());
        }
        c
    };
    let s = async_stream::stream! {
        yield Ok::<Bytes, std::io::Error>(data(&chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)));
        if matches!(fault, Some(FaultKind::StreamFailed) | Some(FaultKind::ErrorEvent)) {
            yield Ok(data(&json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error", "param": null, "code": "server_error"}})));
            return;
        }
        let cut = match fault { Some(FaultKind::CutStreamAfterDeltas(n)) => Some(n as usize), _ => None };
        for (i, tok) in tokens.iter().enumerate() {
            if cut == Some(i) {
                tokio::time::sleep(Duration::from_millis(30)).await;
                yield Err(std::io::Error::other("stream cut by sandbox fault"));
                return;
            }
            let wait = if i == 0 { ttft } else { interval };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            yield Ok(data(&chunk(json!({"content": tok}), Value::Null)));
        }
        if cut.is_some_and(|n| n >= tokens.len()) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            yield Err(std::io::Error::other("stream cut by sandbox fault"));
            return;
        }
        let mut last = chunk(json!({}), json!(finish_reason));
        if include_usage {
            yield Ok(data(&last));
            last["choices"] = json!([]);
            last["usage"] = usage.clone();
        }
        yield Ok(data(&last));
        bill(&sh, &usage);
        yield Ok(Bytes::from("data: [DONE]\n\n"));
    };
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream; charset=utf-8"));
    Ok(r)
}
