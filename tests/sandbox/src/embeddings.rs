//! POST /v1/embeddings: deterministic feature-hashed vectors.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

use crate::Shared;
use crate::usage::{Bill, Endpoint};
use crate::util::{self, ApiError, check_known, fnv1a, opt_str};

/// Native size of a known embedding model.
pub fn model_size(model: &str) -> Option<usize> {
    match model {
        "text-embedding-3-small" | "text-embedding-ada-002" => Some(1536),
        "text-embedding-3-large" => Some(3072),
        _ => None,
    }
}

/// Lowercase alphanumeric word tokens, each FNV-1a hashed into `dims` buckets with a sign bit,
/// then L2-normalised. Texts without words hash the whole (trimmed, lowercased) string.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0f32; dims];
    let lower = text.to_lowercase();
    let mut words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let whole = lower.trim().to_string();
    if words.is_empty() {
        words.push(&whole);
    }
    for w in words {
        let h = fnv1a(w.as_bytes());
        let idx = (h % dims as u64) as usize;
        let sign = if (h >> 63) & 1 == 1 { -1.0 } else { 1.0 };
        v[idx] += sign;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else if dims > 0 {
        v[0] = 1.0;
    }
    v
}

fn encode_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    util::b64_encode(&bytes)
}

pub async fn create(State(sh): State<Arc<Shared>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = util::parse_object(&bytes)?;
    check_known(&body, &["dimensions", "encoding_format", "input", "model", "user"])?;
    let model = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => return Err(ApiError::missing("model")),
        Some(other) => return Err(ApiError::invalid_type("model", "a string", other)),
    };
    let inputs: Vec<String> = match body.get("input") {
        None | Some(Value::Null) => return Err(ApiError::missing("input")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.is_empty() {
                return Err(ApiError::bad_request("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", None, None));
            }
            if a.len() > 2048 {
                return Err(ApiError::bad_request(
                    format!("Invalid 'input': array too long. Expected an array with maximum length 2048, but got an array with length {} instead.", a.len()),
                    Some("input"),
                    Some("array_above_max_length"),
                ));
            }
            if a.iter().all(Value::is_string) {
                a.iter().map(|s| s.as_str().unwrap_or("").to_string()).collect()
            } else if a.iter().all(Value::is_u64) {
                // one token array
                vec![a.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ")]
            } else if a.iter().all(|x| x.as_array().is_some_and(|t| t.iter().all(Value::is_u64))) {
                a.iter().map(|t| t.as_array().unwrap().iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ")).collect()
            } else {
                return Err(ApiError::bad_request("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", None, None));
            }
        }
        Some(other) => return Err(ApiError::invalid_type("input", "a string or an array", other)),
    };
    if inputs.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad_request("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", None, None));
    }
    let format = opt_str(&body, "encoding_format")?.unwrap_or_else(|| "float".into());
    if format != "float" && format != "base64" {
        return Err(ApiError::invalid_value(
            format!("Invalid value: '{format}'. Supported values are: 'float' and 'base64'."),
            "encoding_format",
        ));
    }
    let Some(native) = model_size(&model) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
            None,
            Some("model_not_found"),
        ));
    };
    let dims = match body.get("dimensions") {
        None | Some(Value::Null) => native,
        Some(d) => {
            if model == "text-embedding-ada-002" {
                return Err(ApiError::bad_request(
                    "This model does not support specifying dimensions.",
                    Some("dimensions"),
                    None,
                ));
            }
            match d.as_u64() {
                Some(n) if n >= 1 && n as usize <= native => n as usize,
                Some(n) if n < 1 => {
                    return Err(ApiError::bad_request(
                        format!("Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {n} instead."),
                        Some("dimensions"),
                        Some("integer_below_min_value"),
                    ));
                }
                Some(n) => {
                    return Err(ApiError::bad_request(
                        format!("Invalid 'dimensions': integer above maximum value. Expected a value <= {native}, but got {n} instead."),
                        Some("dimensions"),
                        Some("integer_above_max_value"),
                    ));
                }
                None => return Err(ApiError::invalid_type("dimensions", "an integer", d)),
            }
        }
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            tokens += s.split_whitespace().count().max(1) as u64;
            let v = embed(s, dims);
            let emb = if format == "base64" { json!(encode_base64(&v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    let user = opt_str(&body, "user")?;
    sh.bill(Bill { endpoint: Endpoint::Embeddings, model: &model, usage: &usage, cache_key: None, user: user.as_deref(), conversation: None });
    Ok(Json(json!({"object": "list", "data": data, "model": model, "usage": usage})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn deterministic_normalised_overlap() {
        let a = embed("The office opens at nine", 1536);
        assert_eq!(a, embed("the OFFICE opens at nine!", 1536));
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        let b = embed("When does the office open at nine", 1536);
        let c = embed("Bananas are yellow fruit", 1536);
        assert!(cos(&a, &b) > cos(&a, &c) + 0.3);
        assert_eq!(embed("", 8).iter().map(|x| x * x).sum::<f32>().round(), 1.0);
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
    }
}
