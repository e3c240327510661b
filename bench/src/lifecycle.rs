//! Groups 5, 6 (seeded users) and 7: hot swap, memory per known user, start-up.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swapbot::runtime::{Limits, PluginRuntime};
use swapbot::registry::{LoadOutcome, Registry};

use crate::common::{Out, Samples, plugin_path, record, remove_dir, root, rss_mib, scratch};
use crate::effects::{Canned, Path as TurnPath, wit_turn};

/// The module with a custom section appended: a different file (new hash, no cache hit), same code.
fn variant(base: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"swapbot-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = base.to_vec();
    out.push(0); // custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn install(dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{file}.swap-tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(file))
}

/// Group 5: rename of a new module → first turn served by the new module, through the host's
/// directory watcher (`Registry::watch`, as `swapbot run` starts it) and through a direct
/// `Registry::reload` call (the part of it that is not waiting for the watcher).
pub async fn hot_swap(out: &Out, cold_runs: usize, cached_runs: usize) -> anyhow::Result<()> {
    const EXCLUDES: &str = "HTTP of the first turn (canned, in memory); the turn starts as soon as the new module is in \
        its slot (polled every 0.5 ms)";
    let g = "5 hot swap";
    for (backend, path) in [("responses", TurnPath::ResponsesStream), ("assistants", TurnPath::Assistants)] {
        let name = path.plugin();
        let (script, session) = crate::plugin::record_turn(path).await?;
        let turn = wit_turn(path, 1, Some(session), "hello", 500);
        let base = std::fs::read(plugin_path(name))?;
        for watched in [true, false] {
            let work = scratch("swap");
            let dir = work.join("plugins");
            std::fs::create_dir_all(&dir)?;
            install(&dir, &format!("{backend}.wasm"), &base)?;
            // Compiled the way `swapbot run` compiles: in a child process of the binary.
            let compiler = swapbot::registry::Compiler::Child(root().join("target/release/swapbot"));
            let set = Arc::new(
                Registry::new(PluginRuntime::new(Limits::default())?, &dir, Some(work.join("cache"))).with_compiler(compiler),
            );
            set.reload(backend).await?;
            let watcher = if watched {
                let w = tokio::spawn(set.clone().watch());
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some(w)
            } else {
                None
            };
            let swap = |bytes: Vec<u8>| {
                let set = set.clone();
                let dir = dir.clone();
                let turn = turn.clone();
                let script = script.clone();
                async move {
                    let old = set.get(backend).map(|p| p.sha256.clone());
                    let t0 = Instant::now();
                    install(&dir, &format!("{backend}.wasm"), &bytes)?;
                    let mut cached = None;
                    if !watched {
                        match set.reload(backend).await? {
                            LoadOutcome::Loaded { cached: c, .. } => cached = Some(c),
                            other => anyhow::bail!("reload did not load a new module: {other:?}"),
                        }
                    }
                    let deadline = t0 + Duration::from_secs(60);
                    let plugin = loop {
                        let p = set.get(backend).unwrap();
                        if Some(&p.sha256) != old.as_ref() {
                            break p;
                        }
                        if Instant::now() > deadline {
                            anyhow::bail!("the new module was not picked up within 60 s");
                        }
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    };
                    set.runtime()
                        .chat(&plugin, turn, Box::new(Canned::new(script)))
                        .await?
                        .map_err(|e| anyhow::anyhow!("first turn failed: {}", e.message))?;
                    Ok::<_, anyhow::Error>((t0.elapsed(), cached, plugin.compile_time))
                }
            };
            let (mut cold, mut compile) = (Samples::new(), Samples::new());
            for i in 0..cold_runs {
                let (d, cached, c) = swap(variant(&base, &format!("cold-{i}-{}-{}", std::process::id(), watched))).await?;
                assert!(cached != Some(true));
                cold.push_dur_ms(d);
                compile.push_dur_ms(c);
            }
            // Two versions that are both in the compile cache, swapped back and forth.
            let a = variant(&base, "cached-a");
            let b = variant(&base, "cached-b");
            swap(a.clone()).await?;
            swap(b.clone()).await?;
            let mut warm = Samples::new();
            for i in 0..cached_runs {
                let (d, cached, _) = swap(if i % 2 == 0 { a.clone() } else { b.clone() }).await?;
                assert!(cached != Some(false));
                warm.push_dur_ms(d);
            }
            let how = if watched { "directory watcher" } else { "direct reload() call" };
            out.emit(
                record(g, &format!("{name}.wasm via {how}: rename → first turn on new module, cold compile"), "ms", &cold, EXCLUDES)
                    .note(format!(
                        "module {} KiB; compiled in a child process (`swapbot compile-plugin`, as `swapbot run` does), then loaded and validated here in a median {:.0} ms{}",
                        base.len() / 1024,
                        compile.median(),
                        if watched { "; the watcher waits 40 ms (SETTLE) for a copy to finish before loading" } else { "" }
                    )),
            );
            out.emit(
                record(g, &format!("{name}.wasm via {how}: rename → first turn on new module, compile cache hit"), "ms", &warm, EXCLUDES)
                    .note("artifact deserialised from the on-disk cache (content hash + engine hash)"),
            );
            if let Some(w) = watcher {
                w.abort();
            }
            remove_dir(&work);
        }
    }
    Ok(())
}

/// Writes a data dir the way the bot leaves it: N users with a conversation id and `history` messages each.
fn seed(data: &Path, users: usize, messages: usize) -> anyhow::Result<()> {
    let hist = data.join("history");
    std::fs::create_dir_all(&hist)?;
    let mut map = serde_json::Map::new();
    for i in 0..users {
        let user = 100_000 + i as i64;
        map.insert(user.to_string(), serde_json::Value::String(format!("conv_{:032x}", user)));
        let mut lines = String::new();
        for m in 0..messages {
            let (role, text) = if m % 2 == 0 {
                ("user", format!("Question number {m} from user {user}: what about the weather in Paris tomorrow?"))
            } else {
                ("assistant", format!("Answer {m}: it will be sunny in Paris tomorrow with a light breeze and 21 °C."))
            };
            lines.push_str(&serde_json::json!({"role": role, "text": text}).to_string());
            lines.push('\n');
        }
        std::fs::write(hist.join(format!("{user}.jsonl")), lines)?;
    }
    std::fs::write(data.join("user_conversations.json"), serde_json::to_vec_pretty(&map)?)?;
    std::fs::write(data.join("user_threads.json"), b"{}")?;
    Ok(())
}

/// `swapbot-bench memory-child DATA USERS`: builds the app on a seeded data dir, makes every user's
/// history resident the way a turn does, prints RSS in MiB.
pub fn memory_child(data: &Path, users: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let data_s = data.display().to_string();
        let logs = data.join("../logs").display().to_string();
        let plugins = root().join("target/plugins").display().to_string();
        let env = [
            ("OPENAI_API_KEY", "sk-bench-key"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("DATA_DIR", data_s.as_str()),
            ("LOG_DIR", logs.as_str()),
            ("PLUGIN_DIR", plugins.as_str()),
            ("USE_OPENAI_RESPONSES", "true"),
        ];
        let config = swapbot::config::Config::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?;
        let app = swapbot::app::build(config, None).await?;
        let map = app.service.id_map("user_conversations.json");
        for i in 0..users {
            let user = 100_000 + i as i64;
            std::hint::black_box(map.get(user));
            std::hint::black_box(app.service.history().recent(user));
        }
        println!("{} {}", rss_mib(None), app.service.history().users_in_memory());
        Ok(())
    })
}

/// Group 6: RSS with 0, 1000 and 10000 users known.
pub fn memory(out: &Out, quick: bool) -> anyhow::Result<()> {
    const MESSAGES: usize = 20;
    let me = std::env::current_exe()?;
    let mut base = f64::NAN;
    for users in [0usize, 1000, 10_000] {
        let work = scratch("mem");
        let data = work.join("data");
        seed(&data, users, MESSAGES)?;
        let mut s = Samples::new();
        // Run 0 fills the compile cache (a cold compile leaves more memory behind); not counted.
        for run in 0..=if quick { 1 } else { 3 } {
            let o = Command::new(&me).arg("memory-child").arg(&data).arg(users.to_string()).stderr(Stdio::null()).output()?;
            let text = String::from_utf8_lossy(&o.stdout);
            let rss: f64 = text.split_whitespace().next().and_then(|v| v.parse().ok()).ok_or_else(|| anyhow::anyhow!("memory-child: {text}"))?;
            if run > 0 {
                s.push(rss);
            }
        }
        let med = s.median();
        let name = if users == 0 {
            base = med;
            "library: RSS after app::build, no users".to_string()
        } else {
            format!("library: RSS with {users} users known")
        };
        let mut r = record("6 memory", &name, "MiB", &s, "Telegram (not started), the sandbox; per-user turn locks (only a turn creates one)");
        r = r.note(if users == 0 {
            "both plugins loaded from the compile cache; app::build as `swapbot run` does it, without the knowledge base".to_string()
        } else {
            format!(
                "{users} conversation ids in the id map and {MESSAGES} history messages (~85 chars) per user loaded as a turn loads them; \
                 {:.1} KiB per user above the empty figure",
                (med - base) * 1024.0 / users as f64
            )
        });
        if users == 10_000 {
            r = r.goal("≤ 1 KiB per known user", (med - base) * 1024.0 / users as f64 <= 1.0);
        }
        out.emit(r);
        remove_dir(&work);
    }
    Ok(())
}

/// Group 7: `swapbot run` (terminal mode) from spawn to its ready line, cold and with the compile cache.
pub fn startup(out: &Out, cold_runs: usize, cached_runs: usize) -> anyhow::Result<()> {
    let bin = root().join("target/release/swapbot");
    // Time to ready, and the resident memory once it has settled there.
    let run = |data: &Path| -> anyhow::Result<(Duration, f64)> {
        let t0 = Instant::now();
        let mut child = Command::new(&bin)
            .arg("run")
            .current_dir(data.parent().unwrap())
            .env("OPENAI_API_KEY", "sk-bench-key")
            .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
            .env("DATA_DIR", data)
            .env("LOG_DIR", data.parent().unwrap().join("logs"))
            .env("PLUGIN_DIR", root().join("target/plugins"))
            .env("RUST_LOG", "warn")
            .env_remove("TELOXIDE_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().unwrap();
        let mut ready = None;
        // Kept open until the child is stopped: a closed stderr would end it before it is measured.
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line?;
            if line.contains("terminal chat as user") {
                ready = Some(t0.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let rss = crate::common::rss_mib(Some(child.id()));
        drop(child.stdin.take()); // EOF: the chat ends
        let _ = child.kill();
        let _ = child.wait();
        drop(lines);
        Ok((ready.ok_or_else(|| anyhow::anyhow!("swapbot run never printed its ready line"))?, rss))
    };
    let (mut cold, mut cached) = (Samples::new(), Samples::new());
    let (mut cold_rss, mut cached_rss) = (Samples::new(), Samples::new());
    let work = scratch("start");
    for i in 0..cold_runs {
        let data = work.join(format!("cold-{i}"));
        let (ready, rss) = run(&data)?;
        cold.push_dur_ms(ready);
        cold_rss.0.push(rss);
    }
    let data = work.join("cached");
    run(&data)?; // fills the compile cache
    for _ in 0..cached_runs {
        let (ready, rss) = run(&data)?;
        cached.push_dur_ms(ready);
        cached_rss.0.push(rss);
    }
    const EXCLUDES: &str = "Telegram (terminal mode: `swapbot run` without a token; ready = its \"terminal chat\" line); \
        nothing is fetched over the network at start";
    out.emit(record("7 start-up", "swapbot run: process start → ready, cold (both plugins compiled)", "ms", &cold, EXCLUDES));
    let ratio = cold.median() / cached.median();
    out.emit(
        record("7 start-up", "swapbot run: process start → ready, compile cache hit", "ms", &cached, EXCLUDES)
            .note(format!("cold ÷ cached {ratio:.1}×")),
    );
    for (rss, how) in [(&cold_rss, "cold start (every plugin compiled)"), (&cached_rss, "plugins from the compile cache")] {
        out.emit(
            record("6 memory", &format!("bot RSS idle, terminal mode, {how}"), "MiB", rss, EXCLUDES)
                .goal("≤ 30 MiB", rss.median() <= 30.0)
                .note("300 ms after the ready line"),
        );
    }
    remove_dir(&work);
    let _: Option<PathBuf> = None;
    let _ = Arc::new(());
    Ok(())
}
