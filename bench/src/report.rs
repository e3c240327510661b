//! `swapbot-bench report RAW... --json FILE --md FILE`: the raw JSON lines of every group into
//! `bench/results.json` and the table `bench/results.md`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use crate::common::{Record, machine};

pub fn report(raw: &[PathBuf], json: &PathBuf, md: &PathBuf, total_secs: Option<f64>) -> anyhow::Result<()> {
    let machine = machine();
    let mut records: Vec<Record> = vec![];
    for p in raw {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut r: Record = serde_json::from_str(line)?;
            r.machine = machine.clone();
            records.push(r);
        }
    }
    std::fs::write(json, serde_json::to_string_pretty(&records)? + "\n")?;

    let mut s = String::new();
    writeln!(s, "# swapbot benchmarks")?;
    writeln!(s)?;
    writeln!(
        s,
        "Produced by `make bench` (`scripts/bench.sh`, crate `bench/`); raw figures with their spread in \
         [`results.json`](results.json). Each figure is the median of its samples; spread is p5–p95 (min–max under 20 \
         samples). Ratios compare two things measured side by side in the same run. Absolute times are from this machine:"
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "- {} · {} logical CPUs · {} RAM · Linux {} · {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["nproc"],
        machine["mem_total"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?")
    )?;
    if let Some(t) = total_secs {
        writeln!(s, "- whole `scripts/bench.sh` run: {:.0} s", t)?;
    }
    writeln!(s)?;
    let met = records.iter().filter(|r| r.pass == Some(true)).count();
    let missed = records.iter().filter(|r| r.pass == Some(false)).count();
    writeln!(s, "Goals: **{met} met, {missed} missed**.")?;
    writeln!(s)?;

    let mut groups: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        groups.entry(r.group.clone()).or_default().push(r);
    }
    for (group, rs) in groups {
        writeln!(s, "## {group}")?;
        writeln!(s)?;
        writeln!(s, "| measurement | median | spread | unit | n | goal | result | notes |")?;
        writeln!(s, "|---|---:|---|---|---:|---|---|---|")?;
        let mut excludes: Vec<&str> = vec![];
        for r in &rs {
            if !excludes.contains(&r.excludes.as_str()) {
                excludes.push(&r.excludes);
            }
            let spread = if r.runs <= 1 { "–".to_string() } else { format!("{} – {} ({})", r.spread.low, r.spread.high, r.spread.kind) };
            writeln!(
                s,
                "| {} | **{}** | {} | {} | {} | {} | {} | {} |",
                r.name,
                r.median,
                spread,
                r.unit,
                r.runs,
                r.goal.as_deref().unwrap_or(""),
                match r.pass {
                    Some(true) => "✅ met",
                    Some(false) => "❌ missed",
                    None => "",
                },
                r.note.as_deref().unwrap_or("").replace('|', "\\|")
            )?;
        }
        writeln!(s)?;
        for e in excludes {
            writeln!(s, "Excludes: {e}.")?;
            writeln!(s)?;
        }
    }
    let notes = std::env::var("BENCH_NOTES_FILE").ok().and_then(|p| std::fs::read_to_string(p).ok());
    if let Some(n) = notes {
        writeln!(s, "{n}")?;
    }
    std::fs::write(md, s)?;
    Ok(())
}
