//! Against a real ChromaDB server (`pip install chromadb`), started and stopped by each test.
//! Skipped, loudly, only when the `chroma` executable is absent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use swapbot_kb::{ChromaConfig, IngestOptions, Kb, KbConfig, KbError};

fn opts() -> IngestOptions {
    IngestOptions { progress: Some(false), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroma_reingest_replaces_and_never_duplicates() {
    let Some(server) = ChromaServer::start().await else { return };
    let docs = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let emb = CountingEmbedder::new(DIM);
    let kb = chroma_kb(&server.url, "swapbot_test", emb.clone());
    let status = kb.status().await;
    assert!(status.contains("does not exist"), "{status}");

    let first = kb.ingest(docs.path(), opts()).await.unwrap();
    let count = kb.store().meta().await.unwrap().count;
    assert_eq!(count, first.chunks);
    let second = kb.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!((second.embedded, second.unchanged), (0, first.chunks));
    assert_eq!(kb.store().meta().await.unwrap().count, count);
    assert_eq!(emb.inputs(), first.chunks);

    write_docs(docs.path(), &[("rollout.md", "# Rollout\n\nRollbacks now need a signed change ticket from the on-call zebra.\n")]);
    let third = kb.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!((third.embedded, third.deleted), (1, 1));
    assert_eq!(kb.store().meta().await.unwrap().count, count - 1);
    // The turn path caches the collection briefly; a fresh handle sees the change at once.
    let kb = chroma_kb(&server.url, "swapbot_test", emb.clone());
    let r = kb.retrieve("who signs the change ticket, the on-call zebra?").await;
    assert!(r.chunks[0].text.contains("zebra"), "{r:#?}");
    assert!(r.chunks.iter().all(|c| !c.text.contains("To roll back")), "{r:#?}");
    let status = kb.status().await;
    assert!(status.contains(&format!("{} chunks", count - 1)) && status.contains("text-embedding-3-small"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroma_and_embedded_give_the_same_chunks() {
    let Some(server) = ChromaServer::start().await else { return };
    let docs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let chroma = chroma_kb(&server.url, "same_chunks", CountingEmbedder::new(DIM));
    let embedded = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    chroma.ingest(docs.path(), opts()).await.unwrap();
    embedded.ingest(docs.path(), opts()).await.unwrap();
    for (q, source, phrase) in QUESTIONS {
        let a = chroma.retrieve(q).await;
        let b = embedded.retrieve(q).await;
        assert!(a.note.is_none() && b.note.is_none(), "{a:?} {b:?}");
        assert_eq!(&a.chunks[0].source, source, "{q}: {a:#?}");
        assert!(a.chunks[0].text.contains(phrase));
        // Same chunks in the same order, except among ties: the fake embedder gives every chunk
        // without a shared word a score of 0, and equal scores may come back in any order.
        let key = |r: &swapbot_kb::Retrieval| {
            r.chunks.iter().filter(|c| c.score > 0.02).map(|c| (c.source.clone(), c.text.clone())).collect::<Vec<_>>()
        };
        assert!(!key(&a).is_empty());
        assert_eq!(key(&a), key(&b), "{q}");
        for (x, y) in a.chunks.iter().zip(&b.chunks) {
            assert!((x.score - y.score).abs() < 1e-3, "{q}: chroma {} vs embedded {}", x.score, y.score);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroma_mismatch_is_refused_clearly() {
    let Some(server) = ChromaServer::start().await else { return };
    let docs = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    chroma_kb(&server.url, "mismatch", CountingEmbedder::new(DIM)).ingest(docs.path(), opts()).await.unwrap();

    // Other model.
    let mut cfg = KbConfig::new("/unused");
    cfg.embedding_model = "text-embedding-3-large".into();
    let mut c = ChromaConfig::new(&server.url);
    c.collection = "mismatch".into();
    cfg.chroma = Some(c.clone());
    let emb = CountingEmbedder::new(DIM);
    let kb = Kb::new(cfg.clone(), emb.clone()).unwrap();
    let note = kb.retrieve("penguins").await.note.unwrap();
    assert!(note.contains("text-embedding-3-small") && note.contains("text-embedding-3-large") && note.contains("--rebuild"), "{note}");
    assert!(matches!(kb.ingest(docs.path(), opts()).await, Err(KbError::Mismatch(m)) if m.contains("--rebuild")));
    assert_eq!(emb.inputs(), 0);

    // Same model, other dimension (OPENAI_EMBEDDING_DIMENSIONS changed).
    let mut cfg2 = KbConfig::new("/unused");
    cfg2.embedding_dimensions = Some(DIM as u32 / 2);
    cfg2.chroma = Some(c);
    let kb = Kb::new(cfg2, CountingEmbedder::new(DIM / 2)).unwrap();
    let note = kb.retrieve("penguins").await.note.unwrap();
    assert!(note.contains("256") && note.contains("128") && note.contains("--rebuild"), "{note}");
    assert!(matches!(kb.ingest(docs.path(), opts()).await, Err(KbError::Mismatch(_))));

    // --rebuild with the new model.
    let kb = Kb::new(cfg, CountingEmbedder::new(DIM)).unwrap();
    let s = kb.ingest(docs.path(), IngestOptions { rebuild: true, ..opts() }).await.unwrap();
    let meta = kb.store().meta().await.unwrap();
    assert_eq!((meta.model.as_deref(), meta.count), (Some("text-embedding-3-large"), s.chunks));
    assert!(kb.retrieve("emperor penguins antarctica").await.note.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_python_bot_collection_is_queried_as_it_is() {
    let Some(server) = ChromaServer::start().await else { return };
    // What the old bot left: default (l2) space, documents + metadatas with `source`, no model recorded.
    let http = reqwest::Client::new();
    let coll: serde_json::Value = http
        .post(format!("{}/collections", server.db_url()))
        .json(&json!({"name": "legacy_kb", "get_or_create": true}))
        .send().await.unwrap().json().await.unwrap();
    let id = coll["id"].as_str().unwrap();
    let emb = swapbot_kb::HashEmbedder::new(DIM);
    let texts = ["Penguins live in Antarctica and eat krill.", "Bake sourdough bread with steam.", "The lighthouse keeper polishes the brass lamp."];
    let resp = http
        .post(format!("{}/collections/{id}/upsert", server.db_url()))
        .json(&json!({
            "ids": ["doc-1", "doc-2", "doc-3"],
            "embeddings": texts.iter().map(|t| emb.embed_one(t)).collect::<Vec<_>>(),
            "documents": texts,
            "metadatas": [{"source": "animals.txt"}, {"source": "kitchen.txt"}, {"page": 3}],
        }))
        .send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    let kb = chroma_kb(&server.url, "legacy_kb", CountingEmbedder::new(DIM));
    let r = kb.retrieve("what do penguins eat in antarctica").await;
    assert!(r.note.is_none(), "{r:?}");
    assert_eq!(r.chunks.len(), 3);
    assert_eq!(r.chunks[0].source, "animals.txt");
    assert_eq!(r.chunks[0].text, texts[0]);
    assert!(r.chunks[0].score > r.chunks[1].score);
    assert!(r.chunks.iter().any(|c| c.source == "doc-3"), "no `source`: the id stands in");
    // l2 distance of unit vectors is turned into the same cosine score the embedded store gives.
    let cos = swapbot_kb::store::embedded::dot(&emb.embed_one("what do penguins eat in antarctica"), &emb.embed_one(texts[0]));
    assert!((r.chunks[0].score - cos).abs() < 1e-3, "{} vs {cos}", r.chunks[0].score);

    // A query with another dimension is refused clearly, not sent as a failing turn.
    let kb = chroma_kb(&server.url, "legacy_kb", CountingEmbedder::new(64));
    let note = kb.retrieve("penguins").await.note.unwrap();
    assert!(note.contains("256") && note.contains("64") && note.contains("--rebuild"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroma_down_or_slow_gives_an_empty_retrieval_with_a_note() {
    // Down: nothing listens on the port. Needs no chroma executable.
    let port = free_port();
    let kb = chroma_kb(&format!("http://127.0.0.1:{port}"), "down_kb", CountingEmbedder::new(DIM));
    let r = tokio::time::timeout(Duration::from_secs(30), kb.retrieve("penguins")).await.expect("retrieve must not hang");
    assert!(r.chunks.is_empty());
    assert!(r.note.as_deref().unwrap().contains("unreachable"), "{r:?}");
    // The next turn does not wait on it again during the cooldown.
    let r = kb.retrieve("penguins").await;
    assert!(r.note.as_deref().unwrap().contains("skipping it"), "{r:?}");
    assert!(kb.status().await.contains("unreachable"));

    // Slow: accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cfg = KbConfig::new("/unused");
    let mut c = ChromaConfig::new(format!("http://{addr}"));
    c.request_timeout = Duration::from_millis(300);
    cfg.chroma = Some(c);
    let kb = Kb::new(cfg, CountingEmbedder::new(DIM)).unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), kb.retrieve("penguins")).await.expect("retrieve must not hang");
    eprintln!("slow chroma: empty retrieval after {:?}", started.elapsed());
    assert!(r.chunks.is_empty());
    assert!(r.note.as_deref().unwrap().contains("no answer within 300 ms"), "{r:?}");
    hold.abort();

    // A server that dies between turns: the turn still gets an answer without context.
    let Some(server) = ChromaServer::start().await else { return };
    let docs = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let kb = chroma_kb(&server.url, "dies_kb", CountingEmbedder::new(DIM));
    kb.ingest(docs.path(), opts()).await.unwrap();
    assert!(kb.retrieve("emperor penguins antarctica").await.note.is_none());
    drop(server);
    let r = tokio::time::timeout(Duration::from_secs(30), kb.retrieve("emperor penguins antarctica")).await.unwrap();
    assert!(r.chunks.is_empty() && r.note.is_some(), "{r:?}");
}
