//! Vector stores: ChromaDB over HTTP, and the embedded file-backed default.

pub mod chroma;
pub mod embedded;

use futures::future::BoxFuture;

use crate::{Chunk, KbError};

/// One chunk as stored: ids are stable across re-ingests (relative path + chunk index).
#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    /// Path relative to the ingested directory, with `/` separators.
    pub source: String,
    /// Heading path, e.g. `Rollout > Canary` ("" outside any section).
    pub heading: String,
    pub chunk_index: u32,
    /// Hash of `text`: an unchanged chunk is not re-embedded.
    pub content_hash: String,
    /// What was embedded and what a turn receives.
    pub text: String,
    pub embedding: Vec<f32>,
}

/// What an ingest needs to know about a stored chunk.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub source: Option<String>,
    pub content_hash: Option<String>,
}

/// What a store was built with. `None` = not recorded (e.g. a collection of the old Python bot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreMeta {
    pub model: Option<String>,
    pub dimension: Option<usize>,
    pub count: usize,
}

/// Whether a store can answer a query now.
#[derive(Clone, Debug)]
pub enum Readiness {
    Ready(StoreMeta),
    /// Nothing to search (no file / no collection / no chunks): the reason.
    Empty(String),
    /// Unreachable or failing: the reason.
    Unavailable(String),
}

/// A vector store. Object-safe: the knowledge base holds an `Arc<dyn VectorStore>`.
pub trait VectorStore: Send + Sync {
    /// e.g. `embedded store at data/kb/store.swkb` or `ChromaDB http://… collection swapbot_kb`.
    fn describe(&self) -> String;

    /// Turn path: cheap, bounded by short timeouts, never blocks on a slow server for long.
    fn readiness(&self) -> BoxFuture<'_, Readiness>;

    /// Turn path: the `k` nearest chunks to a normalised vector, best first, score = cosine similarity.
    fn query<'a>(&'a self, vector: &'a [f32], k: usize) -> BoxFuture<'a, Result<Vec<Chunk>, KbError>>;

    /// Ingest path: model, dimension and count, or an error when the store cannot be reached.
    fn meta(&self) -> BoxFuture<'_, Result<StoreMeta, KbError>>;

    /// Ingest path: every stored chunk's id, source and content hash.
    fn entries(&self) -> BoxFuture<'_, Result<Vec<Entry>, KbError>>;

    /// Ingest path: creates the store if needed and records the model and dimension; refuses a
    /// store built with another model or dimension.
    fn prepare<'a>(&'a self, model: &'a str, dimension: usize) -> BoxFuture<'a, Result<(), KbError>>;

    /// Ingest path: drops every chunk and the recorded model (`--rebuild`).
    fn clear(&self) -> BoxFuture<'_, Result<(), KbError>>;

    fn upsert(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), KbError>>;

    fn delete(&self, ids: Vec<String>) -> BoxFuture<'_, Result<(), KbError>>;

    /// Makes everything upserted or deleted so far durable.
    fn commit(&self) -> BoxFuture<'_, Result<(), KbError>>;

    /// Process-local health line for start-up logs (Chroma: heartbeat).
    fn status(&self) -> BoxFuture<'_, String>;
}

/// The message of a refused model/dimension mismatch, with the way out.
pub fn mismatch_message(
    store: &str,
    stored_model: Option<&str>,
    stored_dim: Option<usize>,
    model: &str,
    dim: Option<usize>,
) -> String {
    let built = match (stored_model, stored_dim) {
        (Some(m), Some(d)) => format!("{m} ({d} dimensions)"),
        (Some(m), None) => m.to_string(),
        (None, Some(d)) => format!("an unrecorded model ({d} dimensions)"),
        (None, None) => "another embedding model".to_string(),
    };
    let now = match dim {
        Some(d) => format!("{model} ({d} dimensions)"),
        None => model.to_string(),
    };
    format!(
        "the knowledge base in {store} was built with {built}, but this process embeds with {now}. \
         Re-ingest it with the current model: `swapbot kb ingest DIR --rebuild` (drops the old vectors), \
         or set OPENAI_EMBEDDING_MODEL/OPENAI_EMBEDDING_DIMENSIONS back to what it was built with"
    )
}
