#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use swapbot_kb::{ChromaConfig, Embedder, HashEmbedder, Kb, KbConfig, KbError};

pub const DIM: usize = 256;

/// The deterministic fake embedder, counting the inputs it embeds.
pub struct CountingEmbedder {
    pub inner: HashEmbedder,
    pub inputs: AtomicUsize,
    pub calls: AtomicUsize,
}

impl CountingEmbedder {
    pub fn new(dim: usize) -> Arc<Self> {
        Arc::new(Self { inner: HashEmbedder::new(dim), inputs: AtomicUsize::new(0), calls: AtomicUsize::new(0) })
    }
    pub fn inputs(&self) -> usize {
        self.inputs.load(Ordering::SeqCst)
    }
}

impl Embedder for CountingEmbedder {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, KbError>> {
        self.inputs.fetch_add(inputs.len(), Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.embed(inputs)
    }
}

/// A small knowledge base where each question has exactly one right chunk.
pub const DOCS: &[(&str, &str)] = &[
    (
        "rollout.md",
        "# Rollout\n\n## Canary\n\nThe canary share is set by RESPONSES_ROLLOUT_PERCENT. A bucket is a pure function of the Telegram user id.\n\n## Rollback\n\nTo roll back, set USE_OPENAI_RESPONSES to false and restart the bot. Thread ids stay in user_threads.json.\n",
    ),
    (
        "ops/plugins.md",
        "# Plugins\n\n## Hot swap\n\nCopy a new responses.wasm into PLUGIN_DIR and the host swaps it without a restart. A module failing validation is refused.\n\n## Sandbox\n\nA plugin cannot open sockets or files. The host adds the API key for it.\n",
    ),
    (
        "faq.txt",
        "Penguins live in Antarctica and eat krill. Emperor penguins are the tallest penguins.\n\nThe lighthouse keeper polishes the brass lamp every Tuesday morning.\n",
    ),
    (
        "notes/cooking.md",
        "# Kitchen\n\nBake sourdough bread at 250 degrees with steam for twenty minutes. Let the dough proof overnight in the fridge.\n",
    ),
];

/// (question, source of the right chunk, a phrase of the right chunk)
pub const QUESTIONS: &[(&str, &str, &str)] = &[
    ("How do I roll back: set USE_OPENAI_RESPONSES false and restart?", "rollout.md", "To roll back"),
    ("what sets the canary share RESPONSES_ROLLOUT_PERCENT bucket", "rollout.md", "canary share"),
    ("Can a plugin open sockets or files in the sandbox?", "ops/plugins.md", "cannot open sockets"),
    ("Where do emperor penguins live, what do penguins eat?", "faq.txt", "Penguins live"),
    ("How long to bake sourdough bread with steam?", "notes/cooking.md", "sourdough"),
    ("When does the lighthouse keeper polish the brass lamp?", "faq.txt", "lighthouse"),
];

pub fn write_docs(dir: &Path, docs: &[(&str, &str)]) {
    for (rel, text) in docs {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

pub fn embedded_kb(data_dir: &Path, embedder: Arc<dyn Embedder>) -> Kb {
    Kb::new(KbConfig::new(data_dir), embedder).unwrap()
}

pub fn chroma_kb(url: &str, collection: &str, embedder: Arc<dyn Embedder>) -> Kb {
    let mut cfg = KbConfig::new("/nonexistent-unused");
    let mut c = ChromaConfig::new(url);
    c.collection = collection.into();
    c.request_timeout = Duration::from_millis(3000);
    cfg.chroma = Some(c);
    Kb::new(cfg, embedder).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `chroma` executable: `$CHROMA_BIN`, else `chroma` on PATH.
pub fn chroma_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMA_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("chroma")).find(|p| p.is_file())
}

/// A real Chroma server (`chroma run --path TMP --host 127.0.0.1 --port N`), killed on drop.
pub struct ChromaServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl ChromaServer {
    /// `None` (with a loud message) only when the `chroma` executable is absent.
    pub async fn start() -> Option<ChromaServer> {
        let Some(bin) = chroma_bin() else {
            // Straight to stderr, past the test harness's output capture: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED: the `chroma` executable is not on PATH (nor in $CHROMA_BIN).\n\
                 !!!!!!!! Install it with `pip install chromadb` to run the ChromaDB tests.\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("chroma.log")).unwrap();
        let child = Command::new(&bin)
            .args(["run", "--path"])
            .arg(dir.path().join("db"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let url = format!("http://127.0.0.1:{port}");
        let mut server = ChromaServer { child, url, _dir: dir };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = client.get(format!("{}/api/v2/heartbeat", server.url)).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return Some(server);
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server._dir.path().join("chroma.log")).unwrap_or_default();
                panic!("chroma exited with {status} before answering its heartbeat:\n{log}");
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(server._dir.path().join("chroma.log")).unwrap_or_default();
                panic!("chroma did not answer its heartbeat within 90 s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn db_url(&self) -> String {
        format!("{}/api/v2/tenants/default_tenant/databases/default_database", self.url)
    }
}

impl Drop for ChromaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
