//! Knowledge-base figures, as JSON lines `{name, unit, median, p95, excludes, ...}`:
//! ingest throughput (chunks/s, the embedding API's time excluded), embedded-store query latency at
//! 10k and 50k chunks × 1536 dimensions, and the same query against ChromaDB when `chroma` is on PATH.
//!
//! `cargo run --release -p swapbot-kb --example kb_bench` (env: KB_BENCH_DIM, KB_BENCH_CHROMA_N,
//! KB_BENCH_QUERIES).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::json;
use swapbot_kb::store::Record;
use swapbot_kb::{ChromaConfig, EmbeddedStore, Embedder, IngestOptions, Kb, KbConfig, KbError, VectorStore};

/// xorshift64*: fast deterministic pseudo-random vectors.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn vector(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| self.next_f32()).collect();
        swapbot_kb::embed::normalize(&mut v);
        v
    }
}

/// An "API" that answers instantly with pseudo-random vectors (its time is excluded anyway).
struct RandomEmbedder {
    dim: usize,
    seed: std::sync::Mutex<Rng>,
}
impl Embedder for RandomEmbedder {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, KbError>> {
        Box::pin(async move {
            let mut r = self.seed.lock().unwrap();
            Ok(inputs.iter().map(|_| r.vector(self.dim)).collect())
        })
    }
}

fn stats(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| xs[((xs.len() as f64 - 1.0) * p).round() as usize];
    (q(0.5), q(0.95))
}

fn emit(name: &str, unit: &str, samples: Vec<f64>, excludes: &str, extra: serde_json::Value) {
    let n = samples.len();
    let (median, p95) = stats(samples);
    let mut line = json!({"name": name, "unit": unit, "median": (median * 1000.0).round() / 1000.0, "p95": (p95 * 1000.0).round() / 1000.0, "excludes": excludes, "samples": n});
    if let (Some(o), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    println!("{line}");
}

/// Synthetic Markdown: `files` files of sections with sentences, ≈ `chunks` chunks in total.
fn write_corpus(dir: &std::path::Path, files: usize, sections_per_file: usize) {
    let words = ["swapbot", "rollout", "plugin", "canary", "conversation", "telegram", "embedding", "chunk", "latency", "replay"];
    for f in 0..files {
        let mut s = format!("# Document {f}\n\n");
        for sec in 0..sections_per_file {
            s.push_str(&format!("## Section {sec}\n\n"));
            for i in 0..9 {
                let body: Vec<&str> = (0..12).map(|k| words[(f + sec + i + k) % words.len()]).collect();
                s.push_str(&format!("Sentence {i} of section {sec} is about {}. ", body.join(" ")));
            }
            s.push_str("\n\n");
        }
        std::fs::write(dir.join(format!("doc{f:04}.md")), s).unwrap();
    }
}

fn query_samples(store: &EmbeddedStore, dim: usize, n: usize) -> Vec<f64> {
    let mut rng = Rng(0xfeed);
    (0..n)
        .map(|_| {
            let q = rng.vector(dim);
            let t = Instant::now();
            let r = store.query_sync(&q, 4);
            assert_eq!(r.len(), 4);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn fill(store: &EmbeddedStore, n: usize, dim: usize, rng: &mut Rng) {
    let batch: usize = 5000;
    let mut done = 0;
    while done < n {
        let recs: Vec<Record> = (done..(done + batch).min(n))
            .map(|i| Record {
                id: format!("id{i}"),
                source: format!("doc{}.md", i / 20),
                heading: "Doc > Section".into(),
                chunk_index: (i % 20) as u32,
                content_hash: format!("{i:x}"),
                text: format!("chunk {i} text of about one sentence"),
                embedding: rng.vector(dim),
            })
            .collect();
        done += recs.len();
        store.upsert_sync(recs).unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dim: usize = std::env::var("KB_BENCH_DIM").ok().and_then(|v| v.parse().ok()).unwrap_or(1536);
    let nq: usize = std::env::var("KB_BENCH_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let chroma_n: usize = std::env::var("KB_BENCH_CHROMA_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);

    // 1. Ingest throughput into the embedded store: read + chunk + upsert + durable write.
    let docs = tempfile::tempdir().unwrap();
    write_corpus(docs.path(), 500, 10); // ≈ 10k chunks
    let mut rates = Vec::new();
    let mut chunks = 0;
    for run in 0..5 {
        let data = tempfile::tempdir().unwrap();
        let kb = Kb::new(KbConfig::new(data.path()), Arc::new(RandomEmbedder { dim, seed: std::sync::Mutex::new(Rng(run + 1)) })).unwrap();
        let s = kb.ingest(docs.path(), IngestOptions { progress: Some(false), ..Default::default() }).await.unwrap();
        chunks = s.chunks;
        rates.push(s.chunks_per_sec_excluding_embedding());
    }
    emit(
        "ingest_embedded",
        "chunks/s",
        rates,
        "embedding API time (instant fake embedder, its time subtracted)",
        json!({"chunks": chunks, "dim": dim, "includes": "walk, read, chunk, hash, upsert, fsynced file write"}),
    );

    // 2. Embedded query latency at 10k and 50k chunks.
    let mut rng = Rng(42);
    for n in [10_000usize, 50_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fill(&store, n, dim, &mut rng);
        query_samples(&store, dim, 5); // warm-up
        emit(
            &format!("embedded_query_{}k", n / 1000),
            "ms",
            query_samples(&store, dim, nq),
            "embedding the question (one /embeddings call)",
            json!({"chunks": n, "dim": dim, "top_k": 4}),
        );
        let t = Instant::now();
        store.commit_sync().unwrap();
        let write_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        let load_ms = t.elapsed().as_secs_f64() * 1000.0;
        drop(reopened);
        emit(&format!("embedded_write_{}k", n / 1000), "ms", vec![write_ms], "nothing", json!({"chunks": n}));
        emit(&format!("embedded_load_{}k", n / 1000), "ms", vec![load_ms], "nothing", json!({"chunks": n}));
    }

    // 3. The same query against ChromaDB.
    let Some(server) = common::ChromaServer::start().await else {
        println!("{}", json!({"name": "chroma_query", "skipped": "chroma executable not found"}));
        return;
    };
    let mut cfg = ChromaConfig::new(&server.url);
    cfg.collection = "bench".into();
    cfg.request_timeout = Duration::from_secs(30);
    let store = swapbot_kb::ChromaStore::new(cfg).unwrap();
    store.prepare("text-embedding-3-small", dim).await.unwrap();
    let t = Instant::now();
    let mut rng = Rng(7);
    let mut done = 0;
    while done < chroma_n {
        let recs: Vec<Record> = (done..(done + 2000).min(chroma_n))
            .map(|i| Record {
                id: format!("id{i}"),
                source: format!("doc{}.md", i / 20),
                heading: "Doc > Section".into(),
                chunk_index: (i % 20) as u32,
                content_hash: format!("{i:x}"),
                text: format!("chunk {i} text of about one sentence"),
                embedding: rng.vector(dim),
            })
            .collect();
        done += recs.len();
        store.upsert(recs).await.unwrap();
    }
    let upsert_s = t.elapsed().as_secs_f64();
    emit("chroma_upsert", "chunks/s", vec![chroma_n as f64 / upsert_s], "embedding API time", json!({"chunks": chroma_n, "dim": dim}));
    // Wait until the collection answers queries with all of it.
    assert!(matches!(store.readiness().await, swapbot_kb::Readiness::Ready(_)));
    let mut qrng = Rng(0xfeed);
    for _ in 0..5 {
        store.query(&qrng.vector(dim), 4).await.unwrap();
    }
    let mut samples = Vec::new();
    for _ in 0..nq.min(100) {
        let q = qrng.vector(dim);
        let t = Instant::now();
        let r = store.query(&q, 4).await.unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.len(), 4);
    }
    emit(
        &format!("chroma_query_{}k", chroma_n / 1000),
        "ms",
        samples,
        "embedding the question (one /embeddings call)",
        json!({"chunks": chroma_n, "dim": dim, "top_k": 4, "includes": "HTTP round trip on 127.0.0.1, JSON"}),
    );
}
