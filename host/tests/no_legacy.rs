//! The legacy protocol lives in plugins/assistants only. Removing the legacy path is deleting
//! that plugin and its id map: the host must hold no code that knows threads or runs.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_host_has_no_code_that_knows_threads_or_runs() {
    let host = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    for dir in ["src", "openai/src", "kb/src", "telegram/src"] {
        sources(&host.join(dir), &mut files);
    }
    assert!(files.len() > 10, "scanned {} files", files.len());
    let forbidden = ["/threads", "/runs", "assistants=v2", "OpenAI-Beta", "thread.run", "thread.message"];
    let mut found = vec![];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for word in forbidden {
                if line.contains(word) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "legacy protocol in the host:\n{}", found.join("\n"));
}
