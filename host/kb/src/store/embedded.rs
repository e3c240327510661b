//! The embedded default store: one file under `DATA_DIR/kb/`, loaded into a contiguous matrix of
//! normalised f32 vectors and searched by brute-force cosine similarity.
//!
//! File layout (`store.swkb`): magic `SWKB1\n\0\0`, u64 LE header length, header JSON (model,
//! dimension, records without vectors), `count × dimension` f32 LE, then the SHA-256 of everything
//! before it. Written whole to a temp file, fsynced, renamed over the old one, directory fsynced: a
//! crash leaves the old or the new file, never a mix. A file that fails its checks is renamed to
//! `store.swkb.corrupt-<unix time>` with an error log line, never overwritten.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Entry, Readiness, Record, StoreMeta, VectorStore, mismatch_message};
use crate::{Chunk, KbError};

const MAGIC: &[u8; 8] = b"SWKB1\n\0\0";
pub const FILE_NAME: &str = "store.swkb";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    id: String,
    source: String,
    heading: String,
    chunk_index: u32,
    content_hash: String,
    text: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    model: Option<String>,
    dimension: usize,
    records: Vec<Meta>,
}

#[derive(Default)]
struct Inner {
    model: Option<String>,
    dim: usize,
    metas: Vec<Meta>,
    /// Row-major `metas.len() × dim`, every row L2-normalised.
    matrix: Vec<f32>,
    index: HashMap<String, usize>,
    dirty: bool,
}

impl Inner {
    fn meta(&self) -> StoreMeta {
        StoreMeta {
            model: self.model.clone(),
            dimension: (self.dim > 0).then_some(self.dim),
            count: self.metas.len(),
        }
    }

    fn top_k(&self, q: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        if self.dim == 0 || q.len() != self.dim || k == 0 {
            return best;
        }
        for (row, v) in self.matrix.chunks_exact(self.dim).enumerate() {
            let s = dot(q, v);
            if best.len() == k && s <= best[k - 1].1 {
                continue;
            }
            let pos = best.partition_point(|&(_, b)| b >= s);
            best.insert(pos, (row, s));
            best.truncate(k);
        }
        best
    }
}

/// Dot product with 8 independent accumulators so the compiler vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// File identity used to notice an ingest by another process.
type Stamp = Option<(u64, SystemTime)>;

pub struct EmbeddedStore {
    dir: PathBuf,
    inner: Arc<RwLock<Inner>>,
    stamp: Mutex<Stamp>,
    /// Set when the last load found a corrupt file: reported in the next empty retrieval.
    corrupt_note: Mutex<Option<String>>,
}

impl EmbeddedStore {
    /// Opens (or starts) the store in `dir`. A corrupt file is moved aside, never an error.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KbError> {
        let dir = dir.into();
        let store = Self {
            dir,
            inner: Arc::new(RwLock::new(Inner::default())),
            stamp: Mutex::new(None),
            corrupt_note: Mutex::new(None),
        };
        store.reload()?;
        Ok(store)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn current_stamp(&self) -> Stamp {
        let m = fs::metadata(self.path()).ok()?;
        Some((m.len(), m.modified().ok()?))
    }

    /// Re-reads the file when another process (e.g. `swapbot kb ingest`) replaced it.
    fn refresh_if_changed(&self) {
        let now = self.current_stamp();
        let changed = *self.stamp.lock().unwrap() != now;
        if changed && !self.inner.read().unwrap().dirty {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "knowledge base: could not reload the embedded store");
            }
        }
    }

    fn reload(&self) -> Result<(), KbError> {
        let path = self.path();
        let stamp = self.current_stamp();
        let loaded = match fs::read(&path) {
            Ok(bytes) => match decode(&bytes) {
                Ok(inner) => inner,
                Err(why) => {
                    let aside = path.with_file_name(format!(
                        "{FILE_NAME}.corrupt-{}",
                        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
                    ));
                    fs::rename(&path, &aside).map_err(|e| KbError::io(&path, e))?;
                    let note = format!(
                        "the embedded knowledge-base file {} was corrupt ({why}); moved it aside to {} — \
                         re-ingest with `swapbot kb ingest DIR`",
                        path.display(),
                        aside.display()
                    );
                    tracing::error!("{note}");
                    *self.corrupt_note.lock().unwrap() = Some(note);
                    Inner::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Inner::default(),
            Err(e) => return Err(KbError::io(&path, e)),
        };
        *self.inner.write().unwrap() = loaded;
        *self.stamp.lock().unwrap() = if self.path().exists() { stamp } else { None };
        Ok(())
    }

    fn write_file(&self) -> Result<(), KbError> {
        let bytes = {
            let inner = self.inner.read().unwrap();
            if !inner.dirty {
                return Ok(());
            }
            encode(&inner)?
        };
        fs::create_dir_all(&self.dir).map_err(|e| KbError::io(&self.dir, e))?;
        let path = self.path();
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            if let Ok(d) = fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(KbError::io(&path, e));
        }
        self.inner.write().unwrap().dirty = false;
        *self.stamp.lock().unwrap() = self.current_stamp();
        Ok(())
    }

    /// Synchronous query (benches; the async path runs this on the blocking pool).
    pub fn query_sync(&self, vector: &[f32], k: usize) -> Vec<Chunk> {
        query_inner(&self.inner.read().unwrap(), vector, k)
    }

    /// Synchronous upsert (benches and tests); `embedding` is normalised here.
    pub fn upsert_sync(&self, records: Vec<Record>) -> Result<(), KbError> {
        let mut inner = self.inner.write().unwrap();
        for mut r in records {
            crate::embed::normalize(&mut r.embedding);
            if inner.dim == 0 && inner.metas.is_empty() {
                inner.dim = r.embedding.len();
            }
            if r.embedding.len() != inner.dim {
                return Err(KbError::Mismatch(mismatch_message(
                    &self.describe(),
                    inner.model.as_deref(),
                    Some(inner.dim),
                    "the current model",
                    Some(r.embedding.len()),
                )));
            }
            let meta = Meta {
                id: r.id.clone(),
                source: r.source,
                heading: r.heading,
                chunk_index: r.chunk_index,
                content_hash: r.content_hash,
                text: r.text,
            };
            let dim = inner.dim;
            match inner.index.get(&r.id).copied() {
                Some(row) => {
                    inner.matrix[row * dim..(row + 1) * dim].copy_from_slice(&r.embedding);
                    inner.metas[row] = meta;
                }
                None => {
                    let row = inner.metas.len();
                    inner.matrix.extend_from_slice(&r.embedding);
                    inner.metas.push(meta);
                    inner.index.insert(r.id, row);
                }
            }
            inner.dirty = true;
        }
        Ok(())
    }

    fn delete_sync(&self, ids: Vec<String>) {
        let mut inner = self.inner.write().unwrap();
        let dim = inner.dim;
        for id in ids {
            let Some(row) = inner.index.remove(&id) else { continue };
            let last = inner.metas.len() - 1;
            if row != last {
                inner.matrix.copy_within(last * dim..(last + 1) * dim, row * dim);
                inner.metas.swap(row, last);
                let moved = inner.metas[row].id.clone();
                inner.index.insert(moved, row);
            }
            inner.metas.pop();
            inner.matrix.truncate(last * dim);
            inner.dirty = true;
        }
    }

    /// Writes the file if anything changed (benches and tests).
    pub fn commit_sync(&self) -> Result<(), KbError> {
        self.write_file()
    }
}

fn query_inner(inner: &Inner, vector: &[f32], k: usize) -> Vec<Chunk> {
    let mut q = vector.to_vec();
    crate::embed::normalize(&mut q);
    inner
        .top_k(&q, k)
        .into_iter()
        .map(|(row, score)| {
            let m = &inner.metas[row];
            Chunk { source: m.source.clone(), text: m.text.clone(), score }
        })
        .collect()
}

fn encode(inner: &Inner) -> Result<Vec<u8>, KbError> {
    let header = Header {
        version: 1,
        model: inner.model.clone(),
        dimension: inner.dim,
        records: inner.metas.clone(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| KbError::Store(format!("encoding the store: {e}")))?;
    let mut out = Vec::with_capacity(16 + json.len() + inner.matrix.len() * 4 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for x in &inner.matrix {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Inner, String> {
    if bytes.len() < MAGIC.len() + 8 + 32 || &bytes[..8] != MAGIC {
        return Err("not a swapbot knowledge-base file (bad magic or truncated)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch (torn or modified file)".into());
    }
    let hlen = u64::from_le_bytes(body[8..16].try_into().unwrap()) as usize;
    let hend = 16usize.checked_add(hlen).filter(|&e| e <= body.len()).ok_or("header length out of range")?;
    let header: Header = serde_json::from_slice(&body[16..hend]).map_err(|e| format!("header: {e}"))?;
    if header.version != 1 {
        return Err(format!("unknown version {}", header.version));
    }
    let floats = &body[hend..];
    let n = header.records.len();
    if floats.len() != n * header.dimension * 4 {
        return Err(format!("{} vector bytes for {n} records of {} dimensions", floats.len(), header.dimension));
    }
    let matrix: Vec<f32> = floats.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let index = header.records.iter().enumerate().map(|(i, m)| (m.id.clone(), i)).collect();
    Ok(Inner { model: header.model, dim: header.dimension, metas: header.records, matrix, index, dirty: false })
}

impl VectorStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("the embedded store at {}", self.path().display())
    }

    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            self.refresh_if_changed();
            let meta = self.inner.read().unwrap().meta();
            if meta.count == 0 {
                let corrupt = self.corrupt_note.lock().unwrap().clone();
                return Readiness::Empty(corrupt.unwrap_or_else(|| {
                    format!("the knowledge base is empty ({}); run `swapbot kb ingest DIR`", self.describe())
                }));
            }
            Readiness::Ready(meta)
        })
    }

    fn query<'a>(&'a self, vector: &'a [f32], k: usize) -> BoxFuture<'a, Result<Vec<Chunk>, KbError>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let v = vector.to_vec();
            tokio::task::spawn_blocking(move || query_inner(&inner.read().unwrap(), &v, k))
                .await
                .map_err(|e| KbError::Store(format!("query task failed: {e}")))
        })
    }

    fn meta(&self) -> BoxFuture<'_, Result<StoreMeta, KbError>> {
        Box::pin(async move {
            self.refresh_if_changed();
            Ok(self.inner.read().unwrap().meta())
        })
    }

    fn entries(&self) -> BoxFuture<'_, Result<Vec<Entry>, KbError>> {
        Box::pin(async move {
            let inner = self.inner.read().unwrap();
            Ok(inner
                .metas
                .iter()
                .map(|m| Entry { id: m.id.clone(), source: Some(m.source.clone()), content_hash: Some(m.content_hash.clone()) })
                .collect())
        })
    }

    fn prepare<'a>(&'a self, model: &'a str, dimension: usize) -> BoxFuture<'a, Result<(), KbError>> {
        Box::pin(async move {
            let mut inner = self.inner.write().unwrap();
            let model_ok = inner.model.as_deref().is_none_or(|m| m == model);
            let dim_ok = inner.metas.is_empty() || inner.dim == dimension;
            if !model_ok || !dim_ok {
                return Err(KbError::Mismatch(mismatch_message(
                    &self.describe(),
                    inner.model.as_deref(),
                    (inner.dim > 0).then_some(inner.dim),
                    model,
                    Some(dimension),
                )));
            }
            if inner.model.as_deref() != Some(model) || inner.dim != dimension {
                inner.model = Some(model.to_string());
                inner.dim = dimension;
                inner.dirty = true;
            }
            Ok(())
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move {
            *self.inner.write().unwrap() = Inner { dirty: true, ..Inner::default() };
            *self.corrupt_note.lock().unwrap() = None;
            Ok(())
        })
    }

    fn upsert(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move { self.upsert_sync(records) })
    }

    fn delete(&self, ids: Vec<String>) -> BoxFuture<'_, Result<(), KbError>> {
        Box::pin(async move {
            self.delete_sync(ids);
            Ok(())
        })
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), KbError>> {
        // Ingest-only (CLI), so plain blocking file IO is fine here.
        Box::pin(async move { self.write_file() })
    }

    fn status(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let m = self.inner.read().unwrap().meta();
            format!(
                "{}: {} chunks, model {}, {} dimensions",
                self.describe(),
                m.count,
                m.model.as_deref().unwrap_or("-"),
                m.dimension.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
            )
        })
    }
}

impl EmbeddedStore {
    /// For tests: the directory holding the file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
