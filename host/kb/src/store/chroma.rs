//! ChromaDB over its HTTP API v2.
//!
//! Turn-path calls use short timeouts, and after a failure turns skip Chroma for a cooldown, so a
//! down or slow server costs a turn at most one short timeout. Collections of the old Python bot
//! (documents + metadatas with `source`, no recorded model) are queried as they are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{Entry, Readiness, Record, StoreMeta, VectorStore, mismatch_message};
use crate::config::ChromaConfig;
use crate::{Chunk, KbError};

const META_MODEL: &str = "embedding_model";
const META_DIM: &str = "embedding_dimension";
/// How long a looked-up collection (id, model, dimension, count) is trusted on the turn path.
const COLLECTION_TTL: Duration = Duration::from_secs(30);
const UPSERT_BATCH: usize = 500;
const PAGE: usize = 1000;

#[derive(Clone, Debug)]
struct Collection {
    id: String,
    model: Option<String>,
    dimension: Option<usize>,
    count: usize,
    /// Distance function: `cosine`, `ip` or `l2` (Chroma's default).
    space: String,
    fetched: Instant,
}

pub struct ChromaStore {
    cfg: ChromaConfig,
    client: reqwest::Client,
    cached: Mutex<Option<Collection>>,
    down_until: Mutex<Option<(Instant, String)>>,
}

enum Fail {
    /// Connection refused, timeout, 5xx: the server is not answering.
    Down(String),
    /// An answer Chroma gave (4xx): status and message.
    Refused(u16, String),
}

impl Fail {
    fn into_kb(self, what: &str) -> KbError {
        match self {
            Fail::Down(m) => KbError::Unavailable(format!("ChromaDB {what}: {m}")),
            Fail::Refused(s, m) => KbError::Store(format!("ChromaDB {what}: HTTP {s}: {m}")),
        }
    }
}

impl ChromaStore {
    pub fn new(cfg: ChromaConfig) -> Result<Self, KbError> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| KbError::Config(format!("building the ChromaDB client: {}", e.without_url())))?;
        Ok(Self { cfg, client, cached: Mutex::new(None), down_until: Mutex::new(None) })
    }

    fn db_url(&self) -> String {
        format!("{}/api/v2/tenants/{}/databases/{}", self.cfg.url, self.cfg.tenant, self.cfg.database)
    }

    fn coll_url(&self, id: &str) -> String {
        format!("{}/collections/{id}", self.db_url())
    }

    async fn call(&self, method: reqwest::Method, url: String, body: Option<&Value>, timeout: Duration) -> Result<Value, Fail> {
        let mut req = self.client.request(method, &url).timeout(timeout);
        if let Some(t) = &self.cfg.auth_token {
            req = req.header("x-chroma-token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Fail::Down(if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else if e.is_connect() {
                "connection refused or unreachable".into()
            } else {
                e.without_url().to_string()
            })
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| Fail::Down(e.without_url().to_string()))?;
        if (200..300).contains(&status) {
            return Ok(if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) });
        }
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        if status >= 500 {
            Err(Fail::Down(format!("HTTP {status}: {msg}")))
        } else {
            Err(Fail::Refused(status, msg))
        }
    }

    fn parse_collection(&self, v: &Value) -> Result<Collection, Fail> {
        let id = v.get("id").and_then(Value::as_str).ok_or_else(|| Fail::Down("collection without id".into()))?;
        let meta = v.get("metadata").cloned().unwrap_or(Value::Null);
        let space = v
            .pointer("/configuration_json/hnsw/space")
            .or_else(|| v.pointer("/configuration_json/spann/space"))
            .or_else(|| meta.get("hnsw:space"))
            .and_then(Value::as_str)
            .unwrap_or("l2")
            .to_string();
        let dimension = v
            .get("dimension")
            .and_then(Value::as_u64)
            .or_else(|| meta.get(META_DIM).and_then(Value::as_u64))
            .map(|d| d as usize);
        Ok(Collection {
            id: id.to_string(),
            model: meta.get(META_MODEL).and_then(Value::as_str).map(str::to_owned),
            dimension,
            count: 0,
            space,
            fetched: Instant::now(),
        })
    }

    /// Looks the collection up by name (no creation). `Ok(None)` when it does not exist.
    async fn lookup(&self, timeout: Duration) -> Result<Option<Collection>, Fail> {
        let url = format!("{}/collections/{}", self.db_url(), self.cfg.collection);
        let v = match self.call(reqwest::Method::GET, url, None, timeout).await {
            Ok(v) => v,
            Err(Fail::Refused(404, _)) => return Ok(None),
            Err(Fail::Refused(_, m)) if m.contains("does not exist") || m.contains("not found") => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut c = self.parse_collection(&v)?;
        let count = self.call(reqwest::Method::GET, format!("{}/count", self.coll_url(&c.id)), None, timeout).await?;
        c.count = count.as_u64().unwrap_or(0) as usize;
        if c.dimension.is_none() && c.count > 0 {
            // Older servers do not report the dimension: peek at one stored vector.
            let peek = self
                .call(reqwest::Method::POST, format!("{}/get", self.coll_url(&c.id)), Some(&json!({"limit": 1, "include": ["embeddings"]})), timeout)
                .await?;
            c.dimension = peek.pointer("/embeddings/0").and_then(Value::as_array).map(Vec::len);
        }
        Ok(Some(c))
    }

    fn mark_down(&self, why: &str) {
        *self.down_until.lock().unwrap() = Some((Instant::now() + self.cfg.cooldown, why.to_string()));
        *self.cached.lock().unwrap() = None;
    }

    fn where_(&self) -> String {
        format!("ChromaDB at {} (collection {:?})", self.cfg.url, self.cfg.collection)
    }

    async fn ensure_for_ingest(&self) -> Result<Option<Collection>, KbError> {
        self.lookup(self.cfg.ingest_timeout).await.map_err(|f| f.into_kb("collection lookup"))
    }
}

fn score(space: &str, distance: f32) -> f32 {
    match space {
        // Squared L2 between unit vectors = 2 − 2·cos.
        "l2" => 1.0 - distance / 2.0,
        // cosine distance = 1 − cos; ip distance = 1 − dot.
        _ => 1.0 - distance,
    }
}

/// The old bot's metadata may name the source differently; fall back to the id.
fn source_of(meta: &Value, id: &str) -> String {
    for key in ["source", "file", "filename", "path", "title", "url"] {
        if let Some(s) = meta.get(key).and_then(Value::as_str) {
            return s.to_string();
        }
    }
    id.to_string()
}

impl VectorStore for ChromaStore {
    fn describe(&self) -> String {
        self.where_()
    }

    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            if let Some((until, why)) = self.down_until.lock().unwrap().clone() {
                if Instant::now() < until {
                    return Readiness::Unavailable(format!(
                        "{} failed recently ({why}); skipping it for {} s",
                        self.where_(),
                        until.saturating_duration_since(Instant::now()).as_secs() + 1
                    ));
                }
            }
            let cached = self.cached.lock().unwrap().clone().filter(|c| c.fetched.elapsed() < COLLECTION_TTL);
            let coll = match cached {
                Some(c) => c,
                None => match self.lookup(self.cfg.request_timeout).await {
                    Ok(Some(c)) => {
                        *self.cached.lock().unwrap() = Some(c.clone());
                        c
                    }
                    Ok(None) => {
                        return Readiness::Empty(format!(
                            "{} does not exist yet; run `swapbot kb ingest DIR`",
                            self.where_()
                        ));
                    }
                    Err(Fail::Down(m)) => {
                        self.mark_down(&m);
                        return Readiness::Unavailable(format!("{} is unreachable: {m}", self.where_()));
                    }
                    Err(Fail::Refused(s, m)) => {
                        self.mark_down(&m);
                        return Readiness::Unavailable(format!("{} refused the lookup: HTTP {s}: {m}", self.where_()));
                    }
                },
            };
            if coll.count == 0 {
                return Readiness::Empty(format!("{} is empty; run `swapbot kb ingest DIR`", self.where_()));
            }
            Readiness::Ready(StoreMeta { model: coll.model, dimension: coll.dimension, count: coll.count })
        })
    }

    fn query<'a>(&'a self, vector: &'a [f32], k: usize) -> BoxFuture<'a, Result<Vec<Chunk>, KbError>> {
        Box::pin(async move {
            let cached = self.cached.lock().unwrap().clone();
            let coll = match cached {
                Some(c) => c,
                None => match self.lookup(self.cfg.request_timeout).await {
                    Ok(Some(c)) => {
                        *self.cached.lock().unwrap() = Some(c.clone());
                        c
                    }
                    Ok(None) => return Err(KbError::Store(format!("{} does not exist", self.where_()))),
                    Err(f) => return Err(f.into_kb("collection lookup")),
                },
            };
            let body = json!({
                "query_embeddings": [vector],
                "n_results": k,
                "include": ["documents", "metadatas", "distances"],
            });
            let url = format!("{}/query", self.coll_url(&coll.id));
            let v = match self.call(reqwest::Method::POST, url, Some(&body), self.cfg.request_timeout).await {
                Ok(v) => v,
                Err(Fail::Refused(_, m)) if m.contains("dimension") => {
                    *self.cached.lock().unwrap() = None;
                    return Err(KbError::Mismatch(format!(
                        "{}: {m}. {}",
                        self.where_(),
                        "Re-ingest it with the current model: `swapbot kb ingest DIR --rebuild`, or set \
                         OPENAI_EMBEDDING_MODEL/OPENAI_EMBEDDING_DIMENSIONS back to what it was built with"
                    )));
                }
                Err(Fail::Refused(s, m)) => {
                    *self.cached.lock().unwrap() = None;
                    return Err(KbError::Store(format!("{} refused the query: HTTP {s}: {m}", self.where_())));
                }
                Err(Fail::Down(m)) => {
                    self.mark_down(&m);
                    return Err(KbError::Unavailable(format!("{} query failed: {m}", self.where_())));
                }
            };
            let ids = v.pointer("/ids/0").and_then(Value::as_array).cloned().unwrap_or_default();
            let docs = v.pointer("/documents/0").and_then(Value::as_array).cloned().unwrap_or_default();
            let metas = v.pointer("/metadatas/0").and_then(Value::as_array).cloned().unwrap_or_default();
            let dists = v.pointer("/distances/0").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut out = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                let id = id.as_str().unwrap_or("");
                let Some(text) = docs.get(i).and_then(Value::as_str) else { continue };
                let meta = metas.get(i).cloned().unwrap_or(Value::Null);
                let d = dists.get(i).and_then(Value::as_f64).unwrap_or(f64::MAX) as f32;
                out.push(Chunk { source: source_of(&meta, id), text: text.to_string(), score: score(&coll.space, d) });
            }
            Ok(out)
        })
    }

    fn meta(&self) -> BoxFuture<'_, Result<StoreMeta, KbError>> {
        Box::pin(async move {
            Ok(match self.ensure_for_ingest().await? {
                Some(c) => StoreMeta { model: c.model, dimension: c.dimension, count: c.count },
                None => StoreMeta::default(),
            })
        })
    }

    fn entries(&self) -> BoxFuture<'_, Result<Vec<Entry>, KbError>> {
        Box::pin(async move {
            let Some(c) = self.ensure_for_ingest().await? else { return Ok(vec![]) };
            let mut out = Vec::new();
            let mut offset = 0;
            loop {
                let body = json!({"limit": PAGE, "offset": offset, "include": ["metadatas"]});
                let v = self
                    .call(reqwest::Method::POST, format!("{}/get", self.coll_url(&c.id)), Some(&body), self.cfg.ingest_timeout)
                    .await
                    .map_err(|f| f.into_kb("listing chunks"))?;
                let ids = v.get("ids").and_then(Value::as_array).cloned().unwrap_or_default();
                let metas = v.get("metadatas").and_then(Value::as_array).cloned().unwrap_or_default();
                for (i, id) in ids.iter().enumerate() {
                    let meta = metas.get(i).cloned().unwrap_or(Value::Null);
                    out.push(Entry {
                        id: id.as_str().unwrap_or("").to_string(),
                        source: meta.get("source").and_then(Value::as_str).map(str::to_owned),
                        content_hash: meta.get("content_hash").and_then(Value::as_str).map(str::to_owned),
                    });
                }
                if ids.len() < PAGE {
                    break;
                }
                offset += PAGE;
            }
            Ok(out)
        })
    }

    fn prepare<'a>(&'a self, model: &'a str, dimension: usize) -> BoxFuture<'a, Result<(), KbError>> {
        Box::pin(async move {
            let existing = self.ensure_for_ingest().await?;
            match existing {
                None => {
                    let body = json!({
                        "name": self.cfg.collection,
                        "metadata": {META_MODEL: model, META_DIM: dimension, "created_by": "swapbot"},
                        "configuration": {"hnsw": {"space": "cosine"}},
                        "get_or_create": true,
                    });
                    self.call(reqwest::Method::POST, format!("{}/collections", self.db_url()), Some(&body), self.cfg.ingest_timeout)
                        .await
                        .map_err(|f| f.into_kb("creating the collection"))?;
                }
                Some(c) => {
                    let model_ok = c.model.as_deref().is_none_or(|m| m == model);
                    let dim_ok = c.count == 0 || c.dimension.is_none_or(|d| d == dimension);
                    if !model_ok || !dim_ok {
                        return Err(KbError::Mismatch(mismatch_message(&self.where_(), c.model.as_deref(), c.dimension, model, Some(dimension))));
                    }
                    if c.model.is_none() {
                        if c.count > 0 {
                            tracing::warn!(
                                collection = %self.cfg.collection,
                                "the ChromaDB collection has no recorded embedding model (built by the old bot?); \
                                 recording {model} with {dimension} dimensions"
                            );
                        }
                        // Keep the existing metadata (minus the immutable hnsw:* keys) and add ours.
                        let url = format!("{}/collections/{}", self.db_url(), c.id);
                        let current = self
                            .call(reqwest::Method::GET, url.clone(), None, self.cfg.ingest_timeout)
                            .await
                            .map_err(|f| f.into_kb("reading the collection"))?;
                        let mut meta: Map<String, Value> = current.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
                        meta.retain(|k, _| !k.starts_with("hnsw:"));
                        meta.insert(META_MODEL.into(), json!(model));
                        meta.insert(META_DIM.into(), json!(dimension));
                        self.call(reqwest::Method::PUT, url, Some(&json!({"new_metadata": meta})), self.cfg.ingest_timeout)
                            .await
                            .map_err(|f| f.into_kb("recording the model in the collection"))?;
                    }
                }
            }
            *self.cached.lock().unwrap() = None;
            Ok(())
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move {
            let url = format!("{}/collections/{}", self.db_url(), self.cfg.collection);
            match self.call(reqwest::Method::DELETE, url, None, self.cfg.ingest_timeout).await {
                Ok(_) | Err(Fail::Refused(404, _)) => {}
                Err(Fail::Refused(_, m)) if m.contains("does not exist") => {}
                Err(f) => return Err(f.into_kb("deleting the collection")),
            }
            *self.cached.lock().unwrap() = None;
            Ok(())
        })
    }

    fn upsert(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move {
            let c = self.ensure_for_ingest().await?.ok_or_else(|| KbError::Store(format!("{} does not exist", self.where_())))?;
            for batch in records.chunks(UPSERT_BATCH) {
                let body = json!({
                    "ids": batch.iter().map(|r| &r.id).collect::<Vec<_>>(),
                    "embeddings": batch.iter().map(|r| {
                        let mut v = r.embedding.clone();
                        crate::embed::normalize(&mut v);
                        v
                    }).collect::<Vec<_>>(),
                    "documents": batch.iter().map(|r| &r.text).collect::<Vec<_>>(),
                    "metadatas": batch.iter().map(|r| json!({
                        "source": r.source,
                        "heading": r.heading,
                        "chunk_index": r.chunk_index,
                        "content_hash": r.content_hash,
                    })).collect::<Vec<_>>(),
                });
                self.call(reqwest::Method::POST, format!("{}/upsert", self.coll_url(&c.id)), Some(&body), self.cfg.ingest_timeout)
                    .await
                    .map_err(|f| f.into_kb("upsert"))?;
            }
            Ok(())
        })
    }

    fn delete(&self, ids: Vec<String>) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let Some(c) = self.ensure_for_ingest().await? else { return Ok(()) };
            for batch in ids.chunks(UPSERT_BATCH) {
                self.call(reqwest::Method::POST, format!("{}/delete", self.coll_url(&c.id)), Some(&json!({"ids": batch})), self.cfg.ingest_timeout)
                    .await
                    .map_err(|f| f.into_kb("delete"))?;
            }
            Ok(())
        })
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move {
            *self.cached.lock().unwrap() = None;
            *self.down_until.lock().unwrap() = None;
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let hb = self
                .call(reqwest::Method::GET, format!("{}/api/v2/heartbeat", self.cfg.url), None, self.cfg.request_timeout)
                .await;
            if let Err(Fail::Down(m) | Fail::Refused(_, m)) = hb {
                return format!("{} is unreachable ({m}); turns are answered without knowledge-base context", self.where_());
            }
            match self.lookup(self.cfg.request_timeout).await {
                Ok(Some(c)) => format!(
                    "{}: {} chunks, model {}, {} dimensions, distance {}",
                    self.where_(),
                    c.count,
                    c.model.as_deref().unwrap_or("unrecorded"),
                    c.dimension.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                    c.space
                ),
                Ok(None) => format!("{} does not exist yet; run `swapbot kb ingest DIR`", self.where_()),
                Err(Fail::Down(m) | Fail::Refused(_, m)) => format!("{}: {m}", self.where_()),
            }
        })
    }
}
