//! `swapbot-bench GROUP [--out FILE]`: one benchmark group per call; `scripts/bench.sh` runs them all
//! and `swapbot-bench report` turns their raw JSON lines into `bench/results.{json,md}`.
//!
//! Groups (issue 6): `overhead` (1), `native` (2), `first-text` (3), `load` (4 and part of 6),
//! `swap` (5), `memory` (6), `startup` (7); issue 9: `cost` (8); issue 14: `replicas` (9). `bot` and `memory-child` are the processes the
//! groups start. `BENCH_QUICK=1` runs every group with few samples (a smoke run).

mod bot;
mod common;
mod cost;
mod e2e;
mod effects;
mod lifecycle;
mod plugin;
mod replicas;
mod report;

use std::path::PathBuf;

const USAGE: &str = "usage: swapbot-bench overhead|native|first-text|load|swap|memory|startup|cost|replicas [--out FILE]\n       \
swapbot-bench report RAW.jsonl... --json FILE --md FILE [--total-secs N]";

#[global_allocator]
static ALLOCATOR: swapbot::Allocator = swapbot::ALLOCATOR;

// Before the runtime's first allocation (a constructor, not a call in `main`).
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = swapbot::configure_allocator;

fn main() -> anyhow::Result<()> {
    swapbot::tune_process_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let group = args.first().cloned().unwrap_or_default();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let rt = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    match group.as_str() {
        "bot" => return bot::serve(),
        "memory-child" => {
            let data = PathBuf::from(args.get(1).ok_or_else(|| anyhow::anyhow!(USAGE))?);
            let users: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
            return lifecycle::memory_child(&data, users);
        }
        "report" => {
            let mut raw = vec![];
            let mut i = 1;
            while i < args.len() {
                if args[i].starts_with("--") {
                    i += 2;
                    continue;
                }
                raw.push(PathBuf::from(&args[i]));
                i += 1;
            }
            let json = flag("--json").ok_or_else(|| anyhow::anyhow!(USAGE))?;
            let md = flag("--md").ok_or_else(|| anyhow::anyhow!(USAGE))?;
            let total = flag("--total-secs").and_then(|p| p.to_str().and_then(|s| s.parse().ok()));
            return report::report(&raw, &json, &md, total);
        }
        _ => {}
    }
    let out = common::Out::new(flag("--out"));
    eprintln!("== swapbot-bench {group}{}", if quick { " (quick)" } else { "" });
    match group.as_str() {
        "overhead" => rt()?.block_on(plugin::overhead(&out, if quick { 200 } else { 2000 })),
        "profile-turn" => {
            let path = args.get(1).cloned().unwrap_or_else(|| "streamed".into());
            let iters = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20_000);
            rt()?.block_on(plugin::profile_turn(&path, iters))
        }
        "profile-live" => {
            let path = args.get(1).cloned().unwrap_or_else(|| "plain".into());
            let iters = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(5_000);
            plugin::profile_live(&path, iters)
        }
        "native" => plugin::wasm_vs_native(&out, if quick { 2 } else { 8 }, if quick { 20 } else { 60 }),
        "first-text" => rt()?.block_on(e2e::first_text(&out, if quick { 3 } else { 12 })),
        "load" => rt()?.block_on(e2e::load(&out, quick)),
        "swap" => rt()?.block_on(lifecycle::hot_swap(&out, if quick { 2 } else { 5 }, if quick { 4 } else { 20 })),
        "memory" => lifecycle::memory(&out, quick),
        "cost" => rt()?.block_on(cost::cost(&out)),
        "replicas" => rt()?.block_on(replicas::replicas(&out, quick)),
        "startup" => lifecycle::startup(&out, if quick { 2 } else { 5 }, if quick { 3 } else { 10 }),
        _ => anyhow::bail!(USAGE),
    }
}
