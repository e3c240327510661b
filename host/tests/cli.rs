//! The commands as an operator types them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn an_invalid_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [("RESPONSES_ROLLOUT_PERCENT", "150"), ("USE_OPENAI_RESPONSES", "perhaps"), ("OPENAI_EMBEDDING_DIMENSIONS", "abc"), ("WORKER_THREADS", "0")] {
        let out = Command::new(env!("CARGO_BIN_EXE_swapbot"))
            .arg("run")
            .current_dir(dir.path())
            .env_clear()
            .env("OPENAI_API_KEY", "sk-cli-test-123456")
            .env(name, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(lines[0].contains(name), "{name}: {stderr}");
        assert!(!stderr.contains("sk-cli-test-123456"));
    }
}

/// The README's first command: `make run` on a machine with no configuration opens a terminal
/// chat answered by the local sandbox, with the sample knowledge base.
#[test]
fn make_run_with_no_configuration_answers_in_the_terminal() {
    let root = repo();
    assert!(root.join("target/release/swapbot-sandbox").exists(), "run `make build` first (make test does)");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(root.join("scripts/run.sh"))
        .current_dir(&root)
        .env_remove("OPENAI_API_KEY")
        .env_remove("TELOXIDE_TOKEN")
        .env_remove("OPENAI_BASE_URL")
        .env("USE_OPENAI_RESPONSES", "true")
        .env("DATA_DIR", dir.path().join("data"))
        .env("LOG_DIR", dir.path().join("logs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"My name is Ada.\nWhat is my name?\nHow do I roll back?\n/quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no OPENAI_API_KEY") && stderr.contains("no TELOXIDE_TOKEN"), "{stderr}");
    assert!(stdout.contains("Nice to meet you, Ada."), "{stdout}");
    assert!(stdout.contains("Your name is Ada."), "{stdout}");
    assert!(stdout.contains("(from rollout.md)"), "retrieval from the sample knowledge base: {stdout}");
    assert!(dir.path().join("data/user_conversations.json").exists());
}
