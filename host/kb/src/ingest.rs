//! Ingestion: files → chunks → embeddings (only for new or changed chunks) → upsert, with stable ids.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::chunker::{self, DEFAULT_CHUNK_CHARS};
use crate::embed::{self, estimate_tokens};
use crate::store::Record;
use crate::{Kb, KbError};

/// Embedded records are flushed to disk at least this often during a long ingest.
const COMMIT_EVERY: usize = 5000;

#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Drop everything first (and the recorded model): for a model or dimension change.
    pub rebuild: bool,
    /// `None`: progress on stderr only when stderr is a terminal.
    pub progress: Option<bool>,
    /// Maximum characters of a chunk body.
    pub chunk_chars: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { rebuild: false, progress: None, chunk_chars: DEFAULT_CHUNK_CHARS }
    }
}

/// The end-of-ingest summary; its `Display` is what the CLI prints.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IngestSummary {
    pub files: usize,
    pub chunks: usize,
    /// Chunks embedded and upserted (new or changed).
    pub embedded: usize,
    /// Chunks whose text was already stored under the same id.
    pub unchanged: usize,
    /// Stored chunks of the ingested files that no longer exist (the file shrank or changed).
    pub deleted: usize,
    /// Estimated tokens sent to `/embeddings`.
    pub tokens: usize,
    pub embedding_requests: usize,
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// Time spent waiting for the embeddings API.
    #[serde(serialize_with = "ser_secs")]
    pub embedding_time: Duration,
    pub store: String,
    /// Files skipped (unreadable); each with the reason.
    pub skipped: Vec<String>,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl IngestSummary {
    /// Chunks per second excluding the embedding API's own time.
    pub fn chunks_per_sec_excluding_embedding(&self) -> f64 {
        let t = self.elapsed.saturating_sub(self.embedding_time).as_secs_f64();
        if t > 0.0 { self.chunks as f64 / t } else { f64::INFINITY }
    }
}

impl fmt::Display for IngestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Ingested into {}", self.store)?;
        writeln!(
            f,
            "  files: {}, chunks: {} ({} embedded, {} unchanged, {} deleted)",
            self.files, self.chunks, self.embedded, self.unchanged, self.deleted
        )?;
        writeln!(f, "  tokens: ~{} (estimated) in {} embedding request(s)", self.tokens, self.embedding_requests)?;
        write!(
            f,
            "  time: {:.2} s ({:.2} s waiting for embeddings)",
            self.elapsed.as_secs_f64(),
            self.embedding_time.as_secs_f64()
        )?;
        for s in &self.skipped {
            write!(f, "\n  skipped: {s}")?;
        }
        Ok(())
    }
}

/// A chunk ready to embed.
#[derive(Clone, Debug)]
pub struct PlannedChunk {
    pub id: String,
    pub source: String,
    pub heading: String,
    pub chunk_index: u32,
    pub content_hash: String,
    pub text: String,
}

/// Stable id: the relative path and the chunk's position (content changes replace it in place).
pub fn chunk_id(source: &str, index: u32) -> String {
    let h = Sha256::digest(format!("swapbot-kb\0{source}\0{index}").as_bytes());
    hex::encode(&h[..16])
}

pub fn content_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// The .md/.markdown/.txt files under `dir`, recursively, sorted, skipping hidden entries.
pub fn find_files(dir: &Path) -> Result<Vec<PathBuf>, KbError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| KbError::io(&d, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| KbError::io(&d, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| KbError::io(&path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
                let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                if matches!(ext.as_deref(), Some("md" | "markdown" | "txt")) {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Chunks one file's text into planned chunks.
pub fn plan_file(source: &str, text: &str, markdown: bool, chunk_chars: usize) -> Vec<PlannedChunk> {
    chunker::chunk_document(text, markdown, chunk_chars)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let text = d.text();
            PlannedChunk {
                id: chunk_id(source, i as u32),
                source: source.to_string(),
                heading: d.heading(),
                chunk_index: i as u32,
                content_hash: content_hash(&text),
                text,
            }
        })
        .collect()
}

struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn show(&mut self, msg: impl FnOnce() -> String, force: bool) {
        if self.on && (force || self.last.elapsed() > Duration::from_millis(100)) {
            self.last = Instant::now();
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{}", msg());
            let _ = e.flush();
        }
    }

    fn done(&mut self) {
        if self.on {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

pub(crate) async fn run(kb: &Kb, dir: &Path, options: IngestOptions) -> Result<IngestSummary, KbError> {
    let started = Instant::now();
    let store = kb.store();
    let model = kb.config().embedding_model.clone();
    let mut progress = Progress { on: options.progress.unwrap_or_else(|| std::io::stderr().is_terminal()), last: Instant::now() };
    let mut summary = IngestSummary { store: store.describe(), ..Default::default() };

    if !dir.is_dir() {
        return Err(KbError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory")));
    }

    // 1. Refuse a mismatched store before spending anything on embeddings.
    if options.rebuild {
        store.clear().await?;
    }
    let meta = store.meta().await?;
    let dim_conflict = matches!((meta.dimension, kb.config().embedding_dimensions), (Some(a), Some(b)) if meta.count > 0 && a != b as usize);
    if meta.model.as_deref().is_some_and(|m| m != model) || dim_conflict {
        return Err(KbError::Mismatch(crate::store::mismatch_message(
            &store.describe(),
            meta.model.as_deref(),
            meta.dimension,
            &model,
            kb.config().embedding_dimensions.map(|d| d as usize),
        )));
    }

    // 2. Read and chunk.
    let files = find_files(dir)?;
    let mut planned = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let source = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        progress.show(|| format!("reading {}/{}: {source}", i + 1, files.len()), false);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                summary.skipped.push(format!("{source}: {e}"));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let markdown = !source.to_ascii_lowercase().ends_with(".txt");
        let chunks = plan_file(&source, &text, markdown, options.chunk_chars);
        planned.push((source, chunks));
        summary.files += 1;
    }

    // 3. Compare with what is stored.
    let existing = store.entries().await?;
    let stored: HashMap<&str, Option<&str>> = existing.iter().map(|e| (e.id.as_str(), e.content_hash.as_deref())).collect();
    let sources: HashSet<&str> = planned.iter().map(|(s, _)| s.as_str()).collect();
    let new_ids: HashSet<&str> = planned.iter().flat_map(|(_, cs)| cs.iter().map(|c| c.id.as_str())).collect();
    let stale: Vec<String> = existing
        .iter()
        .filter(|e| e.source.as_deref().is_some_and(|s| sources.contains(s)) && !new_ids.contains(e.id.as_str()))
        .map(|e| e.id.clone())
        .collect();
    let mut todo = Vec::new();
    for (_, chunks) in &planned {
        for c in chunks {
            summary.chunks += 1;
            if stored.get(c.id.as_str()).is_some_and(|h| *h == Some(c.content_hash.as_str())) {
                summary.unchanged += 1;
            } else {
                todo.push(c.clone());
            }
        }
    }

    // 4. Embed in batches within the API limits, upserting as we go.
    let inputs: Vec<String> = todo.iter().map(|c| embed::truncate_for_input(&c.text).to_string()).collect();
    let mut prepared = false;
    let mut since_commit = 0;
    for range in embed::plan_batches(&inputs) {
        let batch = &inputs[range.clone()];
        progress.show(|| format!("embedding {}/{} chunks", range.start, inputs.len()), true);
        let t = Instant::now();
        let vectors = kb.embedder.embed(batch).await?;
        summary.embedding_time += t.elapsed();
        summary.embedding_requests += 1;
        summary.tokens += batch.iter().map(|s| estimate_tokens(s)).sum::<usize>();
        if vectors.len() != batch.len() {
            return Err(KbError::Embedding { status: None, message: format!("{} vectors for {} inputs", vectors.len(), batch.len()) });
        }
        if !prepared {
            store.prepare(&model, vectors[0].len()).await?;
            prepared = true;
        }
        let records: Vec<Record> = todo[range.clone()]
            .iter()
            .zip(vectors)
            .map(|(c, embedding)| Record {
                id: c.id.clone(),
                source: c.source.clone(),
                heading: c.heading.clone(),
                chunk_index: c.chunk_index,
                content_hash: c.content_hash.clone(),
                text: c.text.clone(),
                embedding,
            })
            .collect();
        since_commit += records.len();
        store.upsert(records).await?;
        summary.embedded += range.len();
        if since_commit >= COMMIT_EVERY {
            store.commit().await?;
            since_commit = 0;
        }
    }

    // 5. Delete what the changed files no longer hold, and make it durable.
    summary.deleted = stale.len();
    store.delete(stale).await?;
    store.commit().await?;
    progress.done();
    summary.elapsed = started.elapsed();
    Ok(summary)
}
