//! Hot swap: modules replaced under a steady stream of turns, broken modules refused while the
//! old one keeps serving, self-test cases, and the compile cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use swapbot::config::Config;
use swapbot::runtime::{Limits, PluginRuntime};
use swapbot::registry::{Compiler, LoadOutcome, Registry};
use swapbot_sandbox::{Sandbox, SandboxConfig};

mod common;
use common::{install, repo, test_plugin, wait_until};


fn built(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("target/plugins").join(name)).expect("run `make build`")
}


/// The same module with a custom section appended: another sha256, the same behaviour.
fn variant(bytes: &[u8], n: u32) -> Vec<u8> {
    let name = b"swapbot-variant";
    let payload = n.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(size as u8); // LEB128, < 128
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}


fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}


struct Setup {
    app: swapbot::app::App,
    sandbox: Sandbox,
    plugin_dir: PathBuf,
    swaps: Arc<AtomicUsize>,
    refusals: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    install(&plugin_dir, "responses.wasm", &built("responses.wasm"));
    install(&plugin_dir, "assistants.wasm", &built("assistants.wasm"));
    let vars: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), "sk-swap-test".into()),
        ("OPENAI_BASE_URL".into(), sandbox.base_url()),
        ("DATA_DIR".into(), dir.path().join("data").display().to_string()),
        ("LOG_DIR".into(), dir.path().join("logs").display().to_string()),
        ("PLUGIN_DIR".into(), plugin_dir.display().to_string()),
        ("USE_OPENAI_RESPONSES".into(), "true".into()),
    ];
    let config = Config::from_lookup(|n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap();
    let app = swapbot::app::build(config, None).await.unwrap();
    let swaps = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(AtomicUsize::new(0));
    let (s, r) = (swaps.clone(), refusals.clone());
    app.plugins.set_observer(move |_, ok| {
        if ok { s.fetch_add(1, Ordering::SeqCst) } else { r.fetch_add(1, Ordering::SeqCst) };
    });
    tokio::spawn(app.plugins.clone().watch());
    // Let the watch start before files change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Setup { app, sandbox, plugin_dir, swaps, refusals, _dir: dir }
}

fn serving_sha(app: &swapbot::app::App) -> String {
    app.plugins.get("responses").unwrap().sha256.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_a_steady_stream_of_turns_lose_and_duplicate_nothing() {
    let s = setup().await;
    let base = built("responses.wasm");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut users = vec![];
    for user in 1..=4i64 {
        let service = s.app.service.clone();
        let stop = stop.clone();
        users.push(tokio::spawn(async move {
            let mut answered = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let text = format!("echo: u{user} n{answered}");
                let outcome = service.turn(user, &text, None).await;
                assert_eq!(outcome.reply.as_deref(), Ok(&text["echo: ".len()..]), "turn lost during a swap");
                answered += 1;
            }
            answered
        }));
    }
    for n in 1..=20u32 {
        let bytes = variant(&base, n);
        install(&s.plugin_dir, "responses.wasm", &bytes);
        let want = sha(&bytes);
        assert!(wait_until(|| serving_sha(&s.app) == want).await, "swap {n} not picked up");
    }
    stop.store(true, Ordering::SeqCst);
    let mut turns = 0;
    for u in users {
        turns += u.await.unwrap();
    }
    assert!(s.swaps.load(Ordering::SeqCst) >= 20);
    assert_eq!(s.refusals.load(Ordering::SeqCst), 0);
    let posts = s.sandbox.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/responses")).count();
    assert_eq!(posts, turns, "every turn sent exactly one response: none lost, none duplicated");
    assert!(turns >= 20);
}

#[tokio::test]
async fn broken_modules_are_refused_and_the_old_one_keeps_serving() {
    let s = setup().await;
    let good = serving_sha(&s.app);
    let real = built("responses.wasm");
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage", b"this is not wasm at all".to_vec()),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("other contract", test_plugin("future.wasm")),
        ("the other backend", built("assistants.wasm")),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        install(&s.plugin_dir, "responses.wasm", bytes);
        assert!(wait_until(|| s.refusals.load(Ordering::SeqCst) > i).await, "{what} was not refused");
        assert_eq!(serving_sha(&s.app), good, "{what} replaced the serving module");
        let outcome = s.app.service.turn(1, "echo: still serving", None).await;
        assert_eq!(outcome.reply.as_deref(), Ok("still serving"), "after {what}");
    }
    // Other names in the directory are not plugins.
    std::fs::write(s.plugin_dir.join(".responses.wasm.swap-tmp"), b"junk").unwrap();
    std::fs::write(s.plugin_dir.join("responses.wasm~"), b"junk").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.refusals.load(Ordering::SeqCst), cases.len());
}

#[tokio::test]
async fn self_test_cases_shipped_beside_a_module_must_pass() {
    let s = setup().await;
    let cases_dir = s.plugin_dir.join("responses.cases");
    std::fs::create_dir_all(&cases_dir).unwrap();
    for name in ["stream_pushes_deltas.json", "reuses_live_conversation.json"] {
        std::fs::copy(repo().join("plugins/responses/cases").join(name), cases_dir.join(name)).unwrap();
    }
    let good = serving_sha(&s.app);
    // A module that validates as a component and describes itself right, but speaks nonsense.
    install(&s.plugin_dir, "responses.wasm", &test_plugin("hostile.wasm"));
    assert!(wait_until(|| s.refusals.load(Ordering::SeqCst) == 1).await);
    assert_eq!(serving_sha(&s.app), good);
    // The real one passes its cases and is swapped in.
    let next = variant(&built("responses.wasm"), 99);
    install(&s.plugin_dir, "responses.wasm", &next);
    assert!(wait_until(|| serving_sha(&s.app) == sha(&next)).await);
}

#[tokio::test]
async fn a_restart_with_unchanged_plugins_uses_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install(&plugins, "responses.wasm", &built("responses.wasm"));
    let cache = dir.path().join("cache");
    let load = || async {
        let set = Registry::new(PluginRuntime::new(Limits::default()).unwrap(), &plugins, Some(cache.clone()));
        set.reload("responses").await.unwrap()
    };
    assert!(matches!(load().await, LoadOutcome::Loaded { cached: false, .. }));
    assert!(matches!(load().await, LoadOutcome::Loaded { cached: true, .. }));
    // A corrupt cache entry costs a recompile, not a refusal.
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        std::fs::write(entry.path(), b"corrupt").unwrap();
    }
    assert!(matches!(load().await, LoadOutcome::Loaded { cached: false, .. }));
}

/// `swapbot run` compiles in a child process of its own binary. Here the child is the real
/// binary behind a wrapper that counts its calls.
#[tokio::test]
async fn plugins_compile_in_a_child_process_once_and_a_broken_compiler_costs_only_the_in_process_compile() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install(&plugins, "responses.wasm", &built("responses.wasm"));
    let calls = dir.path().join("calls");
    let script = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho \"$@ home=${{HOME:-none}}\" >> '{}'\n{body}\n", calls.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Compiler::Child(path)
    };
    let real = script("compiler", format!("exec '{}' \"$@\"", env!("CARGO_BIN_EXE_swapbot")));
    let calls_made = || std::fs::read_to_string(&calls).map(|t| t.lines().count()).unwrap_or(0);
    let load = |compiler: Compiler, cache: &str| {
        let set = Registry::new(PluginRuntime::new(Limits::default()).unwrap(), &plugins, Some(dir.path().join(cache)))
            .with_compiler(compiler);
        async move {
            let outcome = set.reload("responses").await;
            (outcome, set.get("responses"))
        }
    };
    let (outcome, plugin) = load(real.clone(), "cache").await;
    assert!(matches!(outcome.unwrap(), LoadOutcome::Loaded { cached: false, .. }));
    assert_eq!(plugin.unwrap().description.name, "responses");
    assert_eq!(calls_made(), 1, "compiled by the child");
    let call = std::fs::read_to_string(&calls).unwrap();
    assert!(call.starts_with("compile-plugin --memory-bytes 67108864"), "{call}");
    // The child gets none of the bot's environment (its keys and tokens among it).
    assert!(call.trim_end().ends_with("home=none"), "{call}");
    // The child's artifact went into the cache: the next start compiles nothing.
    let (outcome, _) = load(real.clone(), "cache").await;
    assert!(matches!(outcome.unwrap(), LoadOutcome::Loaded { cached: true, .. }));
    assert_eq!(calls_made(), 1);

    // A compiler that fails, or answers garbage: the plugin is compiled in this process.
    for (name, body) in [("failing", "echo 'out of memory' >&2; exit 3".to_string()), ("garbage", "cat >/dev/null; echo not-an-artifact".into())] {
        let (outcome, plugin) = load(script(name, body), name).await;
        assert!(matches!(outcome.unwrap(), LoadOutcome::Loaded { cached: false, .. }), "{name}");
        assert_eq!(plugin.unwrap().description.name, "responses");
    }
    assert_eq!(calls_made(), 3);
    // A module that is not one is refused as such, whoever compiles it.
    install(&plugins, "responses.wasm", b"\0asm not really");
    let (outcome, plugin) = load(real, "broken").await;
    assert!(matches!(outcome, Err(swapbot::runtime::PluginError::Compile(_))), "{outcome:?}");
    assert!(plugin.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_in_flight_finishes_on_its_module_and_the_next_turn_takes_the_new_one() {
    let s = setup().await;
    // The model takes a while, so the swap lands in the middle of the turn.
    s.sandbox.inject(
        swapbot_sandbox::Fault::on("/responses", swapbot_sandbox::FaultKind::DelayBeforeResponse(Duration::from_millis(1500)))
            .method("POST"),
    );
    let service = s.app.service.clone();
    let in_flight = tokio::spawn(async move { service.turn(77, "echo: old module", None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replacement = test_plugin("hostile.wasm");
    install(&s.plugin_dir, "responses.wasm", &replacement);
    assert!(wait_until(|| serving_sha(&s.app) == sha(&replacement)).await);
    let old = in_flight.await.unwrap();
    assert_eq!(old.reply.as_deref(), Ok("old module"), "the turn in flight kept its module");
    assert_eq!(old.record.plugin_version, "0.1.0");
    let new = s.app.service.turn(78, "hello", None).await;
    assert_eq!(new.reply.as_deref(), Ok("survived: hello"));
    assert_eq!(new.record.plugin_version, "6.6.6-hostile");
}
