//! Group 8 (issue 9): what one long conversation costs. Billed input tokens per turn at turns 1,
//! 10, 50 and 100 of one user's conversation, per backend and per knowledge-base layout, against
//! the sandbox with the live prompt-cache rules (from 1024 tokens, in steps of 128), a context
//! window that fills within the run, and the knowledge base seeded from `kb-sample/` (so every
//! turn carries retrieved chunks); cost at the shipped price table.

use swapbot_sandbox::{Sandbox, SandboxConfig};

use crate::common::{Out, Samples, record, remove_dir, root, scratch};

const TURNS: usize = 100;
/// The shipped default layout of a backend.
fn default_layout(backend: &str) -> &'static str {
    match backend {
        "responses" => "input",
        _ => "instructions",
    }
}
const MARKS: [usize; 4] = [1, 10, 50, 100];
/// Small enough that the conversation outgrows it within the run.
const WINDOW: u64 = 8_000;

/// Questions for the knowledge base (short answers from a chunk) alternate with requests for a
/// ~120-word answer, so that answers weigh in the conversation as they do in a real one.
const QUESTIONS: [&str; 6] = [
    "How do I roll back to the old backend?",
    "long answer 700",
    "What does the canary percentage do?",
    "long answer 700",
    "How are plugins swapped without a restart?",
    "long answer 700",
];

struct Turn {
    input: u64,
    cached: u64,
    output: u64,
    cost_usd: f64,
}

/// Compaction threshold of the `compact` runs: half the window.
const COMPACT_AT: u64 = WINDOW / 2;

/// `window`: `None` is the model's real window (gpt-4.1-mini: about 1M tokens, never full here).
async fn conversation(backend: &str, layout: &str, mode: &str, window: Option<u64>) -> anyhow::Result<Vec<Turn>> {
    let sandbox = Sandbox::start(SandboxConfig { context_window: window, ..Default::default() }).await?;
    let work = scratch("cost");
    let env: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), "sk-bench-key".into()),
        ("OPENAI_BASE_URL".into(), sandbox.base_url()),
        ("ASSISTANT_ID".into(), "asst_bench".into()),
        ("DATA_DIR".into(), work.join("data").display().to_string()),
        ("LOG_DIR".into(), work.join("logs").display().to_string()),
        ("PLUGIN_DIR".into(), root().join("target/plugins").display().to_string()),
        ("POLL_INTERVAL_MS".into(), "50".into()),
        ("RESPONSES_CONTEXT_LAYOUT".into(), layout.into()),
        ("ASSISTANTS_CONTEXT_LAYOUT".into(), layout.into()),
        ("ASSISTANTS_TRUNCATION".into(), "auto".into()),
        ("RESPONSES_CONTEXT".into(), mode.into()),
        ("RESPONSES_COMPACT_THRESHOLD".into(), COMPACT_AT.to_string()),
    ];
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let config = swapbot::config::Config::from_lookup(lookup)?;
    let kb = swapbot_kb::KbConfig::from_lookup(lookup)?;
    let app = swapbot::app::build(config, Some(kb)).await?;
    let options = swapbot_kb::IngestOptions { progress: Some(false), ..Default::default() };
    app.kb.as_ref().expect("knowledge base").ingest(&root().join("kb-sample"), options).await?;
    let mut turns = Vec::with_capacity(TURNS);
    for i in 0..TURNS {
        let q = QUESTIONS[i % QUESTIONS.len()];
        let q = if q.starts_with("long answer") { q.to_owned() } else { format!("{q} (question {})", i + 1) };
        let outcome = app.service.turn_on(backend, "bench", 4242, &q, None).await;
        outcome.reply.map_err(|e| anyhow::anyhow!("turn {} on {backend}/{layout}: {e}", i + 1))?;
        let r = outcome.record;
        turns.push(Turn {
            input: r.input_tokens.unwrap_or(0),
            cached: r.cached_input_tokens.unwrap_or(0),
            output: r.output_tokens.unwrap_or(0),
            cost_usd: r.cost_usd.unwrap_or(0.0),
        });
    }
    drop(app);
    sandbox.shutdown().await;
    remove_dir(&work);
    Ok(turns)
}

pub async fn cost(out: &Out) -> anyhow::Result<()> {
    let small = Some(WINDOW);
    let runs = [
        ("responses", "instructions", "truncate", None),
        ("responses", "input", "truncate", None),
        ("responses", "instructions", "truncate", small),
        ("responses", "input", "truncate", small),
        ("responses", "instructions", "compact", small),
        ("responses", "input", "compact", small),
        ("assistants", "instructions", "truncate", small),
        ("assistants", "input", "truncate", small),
    ];
    for (backend, layout, mode, window) in runs {
        {
            let default = (layout, mode) == (default_layout(backend), "truncate");
            let default = if default { " (default)" } else { "" };
            let window_label = match window {
                Some(w) => format!("{w}-token window"),
                None => "real window".to_owned(),
            };
            let label = match backend {
                "responses" => format!("{backend}, {mode}, {window_label}, context in {layout}{default}"),
                _ => format!("{backend}, {window_label}, context in {layout}{default}"),
            };
            let default = !default.is_empty();
            let turns = conversation(backend, layout, mode, window).await?;
            for mark in MARKS {
                let t = &turns[mark - 1];
                let mut s = Samples::new();
                s.push(t.input as f64);
                let cached_share = if t.input == 0 { 0.0 } else { t.cached as f64 / t.input as f64 };
                out.emit(
                    record("8 cost", &format!("{label}: billed input tokens at turn {mark}"), "tokens", &s, "one conversation, sandbox word tokens")
                        .note(format!(
                            "{} cached ({:.0}%), {} output; ${:.6} at the shipped gpt-4.1-mini prices",
                            t.cached,
                            cached_share * 100.0,
                            t.output,
                            t.cost_usd
                        )),
                );
            }
            // From the third turn on: the share of input tokens served from the cache, and the cost.
            let later = &turns[2..];
            let input: u64 = later.iter().map(|t| t.input).sum();
            let cached: u64 = later.iter().map(|t| t.cached).sum();
            let mut share = Samples::new();
            share.push(if input == 0 { 0.0 } else { cached as f64 * 100.0 / input as f64 });
            let mut r = record("8 cost", &format!("{label}: input tokens cached, turns 3–{TURNS}"), "%", &share, "");
            if default && backend == "responses" {
                r = r.goal("≥ 80% with the default layout", share.median() >= 80.0);
            }
            out.emit(r);
            let mut total = Samples::new();
            total.push(turns.iter().map(|t| t.cost_usd).sum::<f64>() * 1e6);
            out.emit(record("8 cost", &format!("{label}: cost of {TURNS} turns"), "µUSD", &total, "embeddings included"));
            let (t50, t100) = (turns[49].input as f64, turns[99].input as f64);
            let mut flat = Samples::new();
            flat.push(if t50 == 0.0 { 0.0 } else { (t100 - t50) / t50 * 100.0 });
            let mut r = record("8 cost", &format!("{label}: billed input, turn 100 vs turn 50"), "%", &flat, "");
            if window.is_some() {
                r = r.goal("flat once the window is full (|Δ| ≤ 10%)", flat.median().abs() <= 10.0);
            }
            out.emit(r);
        }
    }
    Ok(())
}
