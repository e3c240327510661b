//! The knowledge base of swapbot: retrieval on every turn, ingestion and inspection.
//!
//! The host owns it: [`Kb::retrieve`] embeds the user's text through the host's OpenAI transport
//! (`POST /embeddings`), asks the vector store (ChromaDB when `CHROMA_URL` is set, else the embedded
//! file store under `DATA_DIR/kb/`) for the `KB_TOP_K` nearest chunks and returns them with their
//! source and score. It never fails a turn: an unreachable, empty or mismatched store gives an empty
//! [`Retrieval`] with a `note` for the log.

pub mod chunker;
pub mod config;
pub mod embed;
pub mod ingest;
pub mod store;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{ChromaConfig, KbConfig, check_embedding_config};
pub use embed::{Embedder, HashEmbedder, JsonTransport, OpenAiEmbedder};
pub use ingest::{IngestOptions, IngestSummary};
pub use store::{Readiness, StoreMeta, VectorStore, chroma::ChromaStore, embedded::EmbeddedStore};

#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// A setting that cannot work; refused at start-up.
    #[error("knowledge-base configuration: {0}")]
    Config(String),
    #[error("embedding request failed: {message}")]
    Embedding { status: Option<u16>, message: String },
    /// The store was built with another embedding model or dimension.
    #[error("{0}")]
    Mismatch(String),
    /// The store cannot be reached (down, timeout, 5xx).
    #[error("knowledge base unavailable: {0}")]
    Unavailable(String),
    #[error("knowledge-base store: {0}")]
    Store(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl KbError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        KbError::Io { path: path.display().to_string(), source }
    }
}

/// One retrieved chunk. `text` starts with its heading path on its own line when it has one.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Chunk {
    /// Path of the source file relative to the ingested directory (or the old bot's `source`).
    pub source: String,
    pub text: String,
    /// Cosine similarity, higher is closer (1.0 = same direction).
    pub score: f32,
}

/// What a turn receives: the nearest chunks, best first, or none and why.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Retrieval {
    pub chunks: Vec<Chunk>,
    /// Set when `chunks` is empty for a reason worth logging (unreachable, empty, mismatch, …).
    pub note: Option<String>,
    /// Tokens the embeddings API billed for the question.
    pub embedding_tokens: u64,
}

impl Retrieval {
    fn empty(note: impl Into<String>) -> Self {
        Retrieval { chunks: vec![], note: Some(note.into()), embedding_tokens: 0 }
    }
}

/// The knowledge base: an embedder, a store and the settings. Cheap to clone.
#[derive(Clone)]
pub struct Kb {
    config: Arc<KbConfig>,
    embedder: Arc<dyn Embedder>,
    store: Arc<dyn VectorStore>,
}

impl fmt::Debug for Kb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kb").field("store", &self.store.describe()).finish_non_exhaustive()
    }
}

impl Kb {
    /// The knowledge base over the host's OpenAI transport, with the store `config` selects.
    /// Does no network I/O; loads the embedded store file if that is the store.
    pub fn from_openai(config: KbConfig, openai: swapbot_openai::OpenAi) -> Result<Self, KbError> {
        let embedder = OpenAiEmbedder::new(openai, config.embedding_model.clone(), config.embedding_dimensions)?;
        Self::new(config, Arc::new(embedder))
    }

    /// Any embedder (tests, offline demos) with the store `config` selects.
    pub fn new(config: KbConfig, embedder: Arc<dyn Embedder>) -> Result<Self, KbError> {
        config.check()?;
        let store: Arc<dyn VectorStore> = match &config.chroma {
            Some(c) => Arc::new(ChromaStore::new(c.clone())?),
            None => Arc::new(EmbeddedStore::open(config.embedded_dir())?),
        };
        Ok(Self::with_store(config, embedder, store))
    }

    /// Any embedder and any store.
    pub fn with_store(config: KbConfig, embedder: Arc<dyn Embedder>, store: Arc<dyn VectorStore>) -> Self {
        Self { config: Arc::new(config), embedder, store }
    }

    pub fn config(&self) -> &KbConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    /// e.g. `the embedded store at data/kb/store.swkb`.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// One line for the start-up log: store, chunk count, model, dimension (Chroma: heartbeat first).
    pub async fn status(&self) -> String {
        self.store.status().await
    }

    /// The chunks for one turn. Never an error: on any problem the result is empty with a `note`.
    pub async fn retrieve(&self, question: &str) -> Retrieval {
        if question.trim().is_empty() {
            return Retrieval::default();
        }
        let meta = match self.store.readiness().await {
            Readiness::Ready(m) => m,
            Readiness::Empty(why) | Readiness::Unavailable(why) => return Retrieval::empty(why),
        };
        if let Some(m) = meta.model.as_deref() {
            if m != self.config.embedding_model
                || matches!((meta.dimension, self.config.embedding_dimensions), (Some(a), Some(b)) if a != b as usize)
            {
                return Retrieval::empty(self.mismatch(&meta, None));
            }
        }
        let input = vec![embed::truncate_for_input(question).to_string()];
        let (vector, embedding_tokens) = match tokio::time::timeout(self.config.retrieve_embed_timeout, self.embedder.embed_billed(&input)).await {
            Err(_) => {
                return Retrieval::empty(format!(
                    "embedding the question took longer than {} ms",
                    self.config.retrieve_embed_timeout.as_millis()
                ));
            }
            Ok(Err(e)) => return Retrieval::empty(e.to_string()),
            Ok(Ok((mut v, billed))) => match v.pop() {
                Some(v) if !v.is_empty() => (v, billed),
                _ => return Retrieval::empty("the embeddings answer held no vector"),
            },
        };
        if let Some(d) = meta.dimension {
            if d != vector.len() {
                return Retrieval::empty(self.mismatch(&meta, Some(vector.len())));
            }
        }
        let mut vector = vector;
        embed::normalize(&mut vector);
        match self.store.query(&vector, self.config.top_k).await {
            Ok(chunks) if chunks.is_empty() => Retrieval { embedding_tokens, ..Retrieval::empty("the store returned no chunks") },
            Ok(chunks) => Retrieval { chunks, note: None, embedding_tokens },
            Err(e) => Retrieval { embedding_tokens, ..Retrieval::empty(e.to_string()) },
        }
    }

    fn mismatch(&self, meta: &StoreMeta, got_dim: Option<usize>) -> String {
        store::mismatch_message(
            &self.store.describe(),
            meta.model.as_deref(),
            meta.dimension,
            &self.config.embedding_model,
            got_dim.or(self.config.embedding_dimensions.map(|d| d as usize)),
        )
    }

    /// `swapbot kb search "question"`: what a turn would receive, with scores and timing.
    pub async fn search(&self, question: &str) -> SearchReport {
        let started = Instant::now();
        let retrieval = self.retrieve(question).await;
        SearchReport { store: self.store.describe(), question: question.to_string(), retrieval, elapsed: started.elapsed() }
    }

    /// `swapbot kb ingest DIR`: reads .md/.txt under `dir`, chunks, embeds what changed, upserts,
    /// deletes chunks that no longer exist in changed files. Progress goes to stderr only when it
    /// is a terminal (or as `options.progress` says); print the returned summary (its `Display`).
    pub async fn ingest(&self, dir: &Path, options: IngestOptions) -> Result<IngestSummary, KbError> {
        ingest::run(self, dir, options).await
    }
}

impl Kb {
    /// For `make run` on a fresh machine: ingests `dir` (e.g. `kb-sample/`) only when the store
    /// holds no chunks yet. `Ok(None)` when it already had some.
    pub async fn seed_if_empty(&self, dir: &Path) -> Result<Option<IngestSummary>, KbError> {
        if self.store.meta().await?.count > 0 {
            return Ok(None);
        }
        self.ingest(dir, IngestOptions::default()).await.map(Some)
    }
}

/// The answer of [`Kb::search`]; its `Display` is what the CLI prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchReport {
    pub store: String,
    pub question: String,
    pub retrieval: Retrieval,
    #[serde(serialize_with = "ser_ms")]
    pub elapsed: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl fmt::Display for SearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Knowledge base: {}", self.store)?;
        if let Some(note) = &self.retrieval.note {
            writeln!(f, "No chunks: {note}")?;
        }
        for (i, c) in self.retrieval.chunks.iter().enumerate() {
            writeln!(f, "\n#{} score {:.3}  {}", i + 1, c.score, c.source)?;
            for line in c.text.lines() {
                writeln!(f, "    {line}")?;
            }
        }
        write!(f, "\n{} chunk(s) in {:.0} ms", self.retrieval.chunks.len(), self.elapsed.as_secs_f64() * 1000.0)
    }
}
