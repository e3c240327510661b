//! The embedded store, ingestion, retrieval, configuration and the OpenAI embedder's requests.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use swapbot_kb::store::embedded::FILE_NAME;
use swapbot_kb::{EmbeddedStore, IngestOptions, JsonTransport, Kb, KbConfig, KbError, OpenAiEmbedder, VectorStore, embed};

fn opts() -> IngestOptions {
    IngestOptions { progress: Some(false), ..Default::default() }
}

#[tokio::test]
async fn answer_chunk_is_retrieved_first() {
    let docs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let kb = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    let summary = kb.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!(summary.files, 4);
    assert!(summary.chunks >= 6, "{summary}");
    for (q, source, phrase) in QUESTIONS {
        let r = kb.retrieve(q).await;
        assert!(r.note.is_none(), "{q}: {:?}", r.note);
        assert_eq!(r.chunks.len(), 4);
        let top = &r.chunks[0];
        assert_eq!(&top.source, source, "{q} → {:#?}", r.chunks);
        assert!(top.text.contains(phrase), "{q} → {:#?}", r.chunks);
        assert!(r.chunks.windows(2).all(|w| w[0].score >= w[1].score));
    }
    // A chunk carries its heading path.
    let r = kb.retrieve(QUESTIONS[0].0).await;
    assert!(r.chunks[0].text.starts_with("Rollout > Rollback\n"), "{:?}", r.chunks[0].text);
    // search shows the same chunks with scores.
    let report = kb.search(QUESTIONS[0].0).await;
    assert_eq!(report.retrieval, r);
    let shown = report.to_string();
    assert!(shown.contains("score") && shown.contains("rollout.md"), "{shown}");
}

#[tokio::test]
async fn reingest_never_duplicates_and_replaces_changed_files() {
    let docs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let emb = CountingEmbedder::new(DIM);
    let kb = embedded_kb(data.path(), emb.clone());
    let first = kb.ingest(docs.path(), opts()).await.unwrap();
    let count = kb.store().meta().await.unwrap().count;
    assert_eq!(count, first.chunks);
    assert_eq!(emb.inputs(), first.chunks);

    // Unchanged: nothing embedded, nothing added.
    let second = kb.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!(second.embedded, 0);
    assert_eq!(second.unchanged, first.chunks);
    assert_eq!(kb.store().meta().await.unwrap().count, count);
    assert_eq!(emb.inputs(), first.chunks);

    // A fresh process (reload from disk) sees the same, and re-ingest still does not duplicate.
    let kb2 = embedded_kb(data.path(), emb.clone());
    assert_eq!(kb2.store().meta().await.unwrap().count, count);
    kb2.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!(kb2.store().meta().await.unwrap().count, count);

    // Changed file: its chunks are replaced; a shrunk file loses its extra chunks.
    let rollout_chunks = kb2.store().entries().await.unwrap().iter().filter(|e| e.source.as_deref() == Some("rollout.md")).count();
    assert_eq!(rollout_chunks, 2);
    write_docs(docs.path(), &[("rollout.md", "# Rollout\n\nRollbacks now need a signed change ticket from the on-call zebra.\n")]);
    let third = kb2.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!(third.embedded, 1);
    assert_eq!(third.deleted, 1);
    assert_eq!(kb2.store().meta().await.unwrap().count, count - 1);
    let r = kb2.retrieve("who signs the change ticket, the on-call zebra?").await;
    assert!(r.chunks[0].text.contains("zebra"));
    assert!(r.chunks.iter().all(|c| !c.text.contains("To roll back")), "old chunk still stored: {:#?}", r.chunks);
}

#[tokio::test]
async fn corrupt_store_file_is_moved_aside() {
    let docs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let kb = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    kb.ingest(docs.path(), opts()).await.unwrap();
    let path = data.path().join("kb").join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    let original = bytes.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55; // a flipped byte: the checksum catches it
    std::fs::write(&path, &bytes).unwrap();

    let kb = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    let r = kb.retrieve("penguins").await;
    assert!(r.chunks.is_empty());
    let note = r.note.unwrap();
    assert!(note.contains("corrupt") && note.contains("moved it aside"), "{note}");
    let aside: Vec<_> = std::fs::read_dir(data.path().join("kb"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{FILE_NAME}.corrupt-")))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(data.path().join("kb").join(&aside[0])).unwrap(), bytes, "moved, not rewritten");
    assert!(!path.exists());

    // A torn (truncated) file is moved aside too; re-ingest rebuilds.
    std::fs::write(&path, &original[..original.len() - 7]).unwrap();
    let kb = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    assert!(kb.retrieve("penguins").await.note.unwrap().contains("corrupt"));
    kb.ingest(docs.path(), opts()).await.unwrap();
    assert!(!kb.retrieve("penguins antarctica").await.chunks.is_empty());
}

#[tokio::test]
async fn model_or_dimension_mismatch_is_refused_clearly() {
    let docs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    embedded_kb(data.path(), CountingEmbedder::new(DIM)).ingest(docs.path(), opts()).await.unwrap();

    // Another model configured: retrieval is empty with the way out; ingest is refused.
    let mut cfg = KbConfig::new(data.path());
    cfg.embedding_model = "text-embedding-3-large".into();
    let emb = CountingEmbedder::new(DIM);
    let kb = Kb::new(cfg, emb.clone()).unwrap();
    let r = kb.retrieve("penguins").await;
    assert!(r.chunks.is_empty());
    let note = r.note.unwrap();
    assert!(note.contains("text-embedding-3-small") && note.contains("text-embedding-3-large"), "{note}");
    assert!(note.contains("swapbot kb ingest DIR --rebuild"), "{note}");
    assert_eq!(emb.inputs(), 0, "no embedding spent on a mismatched store");
    match kb.ingest(docs.path(), opts()).await {
        Err(KbError::Mismatch(m)) => assert!(m.contains("--rebuild"), "{m}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // --rebuild switches the store to the new model.
    let s = kb.ingest(docs.path(), IngestOptions { rebuild: true, ..opts() }).await.unwrap();
    assert_eq!(kb.store().meta().await.unwrap().model.as_deref(), Some("text-embedding-3-large"));
    assert_eq!(kb.store().meta().await.unwrap().count, s.chunks);

    // Same model, other dimension: OPENAI_EMBEDDING_DIMENSIONS changed (refused before embedding) …
    let mut cfg = KbConfig::new(data.path());
    cfg.embedding_model = "text-embedding-3-large".into();
    cfg.embedding_dimensions = Some(DIM as u32 / 2);
    let emb = CountingEmbedder::new(DIM / 2);
    let kb = Kb::new(cfg.clone(), emb.clone()).unwrap();
    let note = kb.retrieve("penguins").await.note.unwrap();
    assert!(note.contains("256 dimensions") && note.contains("128 dimensions") && note.contains("--rebuild"), "{note}");
    assert!(matches!(kb.ingest(docs.path(), opts()).await, Err(KbError::Mismatch(_))));
    assert_eq!(emb.inputs(), 0);
    // … or the model's vectors differ from the store's (caught on the vector itself).
    cfg.embedding_dimensions = None;
    let kb = Kb::new(cfg, CountingEmbedder::new(DIM / 2)).unwrap();
    let note = kb.retrieve("penguins").await.note.unwrap();
    assert!(note.contains("256 dimensions") && note.contains("128 dimensions") && note.contains("--rebuild"), "{note}");
}

#[tokio::test]
async fn seed_if_empty_ingests_the_sample_once() {
    let data = tempfile::tempdir().unwrap();
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kb-sample");
    let kb = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    let s = kb.seed_if_empty(&sample).await.unwrap().expect("first run ingests");
    assert!(s.files >= 3 && s.chunks >= 5, "{s}");
    assert!(kb.seed_if_empty(&sample).await.unwrap().is_none());
    let r = kb.retrieve("How do I roll back to the legacy Assistants path? USE_OPENAI_RESPONSES").await;
    assert_eq!(r.chunks[0].source, "rollout.md", "{r:#?}");
    assert!(r.chunks[0].text.starts_with("Rollout of the Responses path > Rollback"), "{r:#?}");
}

#[tokio::test]
async fn empty_store_gives_a_note_without_embedding() {
    let data = tempfile::tempdir().unwrap();
    let emb = CountingEmbedder::new(DIM);
    let kb = embedded_kb(data.path(), emb.clone());
    let r = kb.retrieve("anything").await;
    assert!(r.chunks.is_empty());
    assert!(r.note.unwrap().contains("empty"));
    assert_eq!(emb.inputs(), 0);
}

#[tokio::test]
async fn running_process_sees_an_ingest_by_another_process() {
    let docs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_docs(docs.path(), DOCS);
    let bot = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    assert!(bot.retrieve("penguins").await.chunks.is_empty());
    let cli = embedded_kb(data.path(), CountingEmbedder::new(DIM));
    cli.ingest(docs.path(), opts()).await.unwrap();
    assert_eq!(bot.retrieve("emperor penguins antarctica").await.chunks[0].source, "faq.txt");
}

#[test]
fn config_from_env_and_start_up_check() {
    let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let cfg = KbConfig::from_lookup(env(&[])).unwrap();
    assert_eq!(cfg.embedding_model, "text-embedding-3-small");
    assert_eq!(cfg.top_k, 4);
    assert!(cfg.chroma.is_none());
    assert_eq!(cfg.embedded_dir(), std::path::Path::new("data/kb"));

    let cfg = KbConfig::from_lookup(env(&[
        ("CHROMA_URL", "http://127.0.0.1:8000/"),
        ("CHROMA_COLLECTION", "old_bot_kb"),
        ("KB_TOP_K", "6"),
        ("OPENAI_EMBEDDING_DIMENSIONS", "512"),
    ]))
    .unwrap();
    let c = cfg.chroma.unwrap();
    assert_eq!((c.url.as_str(), c.tenant.as_str(), c.database.as_str()), ("http://127.0.0.1:8000", "default_tenant", "default_database"));
    assert_eq!(c.collection, "old_bot_kb");
    assert_eq!((cfg.top_k, cfg.embedding_dimensions), (6, Some(512)));

    let err = KbConfig::from_lookup(env(&[("OPENAI_EMBEDDING_MODEL", "text-embedding-ada-002"), ("OPENAI_EMBEDDING_DIMENSIONS", "512")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("text-embedding-ada-002") && err.contains("does not accept `dimensions`"), "{err}");
    assert!(KbConfig::from_lookup(env(&[("OPENAI_EMBEDDING_DIMENSIONS", "abc")])).is_err());
    assert!(KbConfig::from_lookup(env(&[("OPENAI_EMBEDDING_DIMENSIONS", "4000")])).is_err());
    assert!(KbConfig::from_lookup(env(&[("KB_TOP_K", "0")])).is_err());
    assert!(KbConfig::from_lookup(env(&[("CHROMA_URL", "localhost:8000")])).is_err());
    assert!(KbConfig::from_lookup(env(&[("CHROMA_URL", "http://x"), ("CHROMA_COLLECTION", "a")])).is_err());
    assert!(OpenAiEmbedder::new(Recorder::default(), "text-embedding-ada-002", Some(256)).is_err());
}

/// A transport that records bodies and answers with index-reversed fake vectors.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<Value>>>);

impl JsonTransport for Recorder {
    fn post_json<'a>(&'a self, path: &'a str, body: &'a Value) -> BoxFuture<'a, Result<Value, KbError>> {
        Box::pin(async move {
            assert_eq!(path, "/embeddings");
            self.0.lock().unwrap().push(body.clone());
            let n = body["input"].as_array().unwrap().len();
            // Out of order on purpose: the embedder must sort by `index`.
            let data: Vec<Value> = (0..n).rev().map(|i| json!({"index": i, "embedding": [i as f32, 1.0]})).collect();
            Ok(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
        })
    }
}

#[tokio::test]
async fn embeddings_requests_carry_model_and_integer_dimensions_within_limits() {
    let rec = Recorder::default();
    let e = OpenAiEmbedder::new(rec.clone(), "text-embedding-3-small", Some(512)).unwrap();
    // 5000 inputs of ~600 chars: both the 2048-input and the 300k-token limits bite.
    let inputs: Vec<String> = (0..5000).map(|i| format!("{i} {}", "word ".repeat(120))).collect();
    let out = swapbot_kb::Embedder::embed(&e, &inputs).await.unwrap();
    assert_eq!(out.len(), 5000);
    assert_eq!(out[7], vec![7.0, 1.0], "vectors in input order");
    let bodies = rec.0.lock().unwrap().clone();
    assert!(bodies.len() >= 3);
    let mut total = 0;
    for b in &bodies {
        assert_eq!(b["model"], "text-embedding-3-small");
        assert!(b["dimensions"].is_u64(), "dimensions must be an integer: {}", b["dimensions"]);
        assert_eq!(b["dimensions"], 512);
        let inp = b["input"].as_array().unwrap();
        assert!(inp.len() <= embed::MAX_INPUTS_PER_REQUEST);
        let tokens: usize = inp.iter().map(|s| embed::estimate_tokens(s.as_str().unwrap())).sum();
        assert!(tokens <= embed::MAX_TOKENS_PER_REQUEST);
        total += inp.len();
    }
    assert_eq!(total, 5000);

    // Without dimensions the field is omitted, not null.
    let rec = Recorder::default();
    let e = OpenAiEmbedder::new(rec.clone(), "text-embedding-ada-002", None).unwrap();
    swapbot_kb::Embedder::embed(&e, &["hi".to_string()]).await.unwrap();
    assert!(rec.0.lock().unwrap()[0].get("dimensions").is_none());
}

#[test]
fn embedded_store_survives_reopen_with_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let rec = |i: u32| swapbot_kb::store::Record {
        id: format!("id{i}"),
        source: "s".into(),
        heading: String::new(),
        chunk_index: i,
        content_hash: format!("h{i}"),
        text: format!("text {i}"),
        embedding: vec![i as f32, 1.0, 0.5],
    };
    store.upsert_sync((0..10).map(rec).collect()).unwrap();
    futures::executor::block_on(store.delete(vec!["id0".into(), "id5".into(), "nope".into()])).unwrap();
    store.commit_sync().unwrap();
    let again = EmbeddedStore::open(dir.path()).unwrap();
    let ids: std::collections::BTreeSet<String> =
        futures::executor::block_on(again.entries()).unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 8);
    assert!(!ids.contains("id0") && !ids.contains("id5") && ids.contains("id9"));
    let top = again.query_sync(&[9.0, 1.0, 0.5], 1);
    assert_eq!(top[0].text, "text 9");
}
