//! What the sandbox's HTTP tests share: a client for its API on 127.0.0.1 and readers of its answers.
#![allow(dead_code)] // each test file uses part of it

use reqwest::StatusCode;
use serde_json::Value;
use swapbot_sandbox::Sandbox;

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(sb: &Sandbox) -> Client {
        Client { http: reqwest::Client::new(), base: sb.base_url() }
    }
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path)).bearer_auth("sk-test");
        if path.starts_with("/threads") { rb.header("OpenAI-Beta", "assistants=v2") } else { rb }
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::POST, path).json(&body).send().await.unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::DELETE, path).send().await.unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }
    /// Raw body text of a POST (for streams).
    pub async fn post_text(&self, path: &str, body: Value) -> (StatusCode, String) {
        let r = self.req(reqwest::Method::POST, path).json(&body).send().await.unwrap();
        let st = r.status();
        (st, r.text().await.unwrap_or_default())
    }
    /// A streamed POST: the parsed events (event name, data) and whether the body ended cleanly.
    pub async fn stream(&self, path: &str, body: Value) -> (Vec<(String, Value)>, bool) {
        let r = self.req(reqwest::Method::POST, path).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        read_events(r).await
    }
}

pub async fn read_events(mut r: reqwest::Response) -> (Vec<(String, Value)>, bool) {
    let mut buf = Vec::new();
    let clean = loop {
        match r.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    (parse_sse(&String::from_utf8(buf).unwrap()), clean)
}

pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        let v = serde_json::from_str(&data).unwrap_or(Value::String(data));
        out.push((event, v));
    }
    out
}

/// The answer text of a response object: join of output_text parts of message items.
pub fn output_text(resp: &Value) -> String {
    resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter(|p| p["type"] == "output_text")
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect()
}

