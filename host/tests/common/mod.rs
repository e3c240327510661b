//! What the host's end-to-end tests share: the built plugins and guests, and a bot (`app::build`
//! as `swapbot run` does it) against the OpenAI sandbox on 127.0.0.1.
#![allow(dead_code)] // each test file uses part of it

use std::path::PathBuf;

use swapbot::config::Config;
use swapbot_sandbox::{Sandbox, SandboxConfig};

pub const KEY: &str = "sk-test-host-0123456789";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/plugins` with both shipped plugins, built by `make build`.
pub fn plugin_dir() -> PathBuf {
    let dir = repo().join("target/plugins");
    assert!(
        dir.join("responses.wasm").exists() && dir.join("assistants.wasm").exists(),
        "plugins missing in {}: run `make build` (make test does)",
        dir.display()
    );
    dir
}

/// A guest of `tests/guests`, built by `make test-guests`.
pub fn test_plugin(name: &str) -> Vec<u8> {
    let path = repo().join("target/test-plugins").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: run `make test-guests`", path.display()))
}

pub struct Bot {
    pub app: swapbot::app::App,
    pub sandbox: Sandbox,
    pub _data: tempfile::TempDir,
}

/// A bot on a fresh data dir against a default sandbox; `extra` settings win.
pub async fn bot(extra: &[(&str, &str)]) -> Bot {
    bot_with(SandboxConfig::default(), extra).await
}

/// Like [`bot`], with a sandbox configured by the test (its key is always [`KEY`]).
pub async fn bot_with(sandbox: SandboxConfig, extra: &[(&str, &str)]) -> Bot {
    let sandbox = Sandbox::start(SandboxConfig { api_key: Some(KEY.into()), ..sandbox }).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), KEY.into()),
        ("OPENAI_BASE_URL".into(), sandbox.base_url()),
        ("ASSISTANT_ID".into(), "asst_test".into()),
        ("DATA_DIR".into(), data.path().join("data").display().to_string()),
        ("LOG_DIR".into(), data.path().join("logs").display().to_string()),
        ("PLUGIN_DIR".into(), plugin_dir().display().to_string()),
        ("POLL_INTERVAL_MS".into(), "50".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let lookup = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = Config::from_vars(&vars).unwrap();
    let kb = swapbot_kb::KbConfig::from_lookup(lookup).unwrap();
    let app = swapbot::app::build(config, Some(kb)).await.unwrap();
    Bot { app, sandbox, _data: data }
}

/// Every turn log line the bot has written so far.
pub fn turn_log(bot: &Bot) -> String {
    std::fs::read_dir(&bot.app.config.log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("turns"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

/// How `make plugins` installs a plugin: write beside, then rename over.
pub fn install(dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.swap-tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Polls `cond` for up to 10 s; whether it came true.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}
