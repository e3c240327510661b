//! `swapbot report`: the figures match a turn log written here, record by record.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use swapbot::report::{
    build_report, format_rfc3339, nearest_rank, parse_time, parse_window, Percentiles, ReportOptions,
};
use swapbot::telemetry::turnlog::TurnRecord;

/// 2025-01-01T00:00:00Z
const T0: u64 = 1_735_689_600_000;

fn record(backend: &str, i: u64, latency_ms: u64, ok: bool) -> TurnRecord {
    let start = T0 + i * 60_000;
    TurnRecord {
        t0_unix_ms: start,
        tn_unix_ms: start + latency_ms,
        user_id: i as i64,
        backend: backend.into(),
        route: "percent".into(),
        plugin_version: format!("{backend}-1.0.0"),
        session_label: if backend == "responses" { "conversation_id".into() } else { "thread_id".into() },
        session_id: Some(format!("s{i}")),
        turn_label: if backend == "responses" { "response_id".into() } else { "run_id".into() },
        turn_id: Some(format!("t{i}")),
        ttft_ms: ok.then_some(latency_ms / 2),
        latency_ms,
        retries: 0,
        outcome: if ok { "ok".into() } else { "error".into() },
        error_kind: (!ok).then(|| "upstream".into()),
        kb_ms: 3,
        ..TurnRecord::default()
    }
}

/// responses: 100 turns, latencies 1..=100 ms, turn i at T0 + i minutes; turns 10, 20, …, 100 failed
/// (10 errors; the ones at multiples of 30 are timeouts); turns 1..=5 retried twice; ttft = latency/2 on ok turns.
/// assistants: 50 turns, latencies 10, 20, …, 500 ms, 1 error (turn 7, no kind), no ttft.
fn sample_log(dir: &Path) {
    let mut responses = Vec::new();
    for i in 1..=100u64 {
        let mut r = record("responses", i, i, i % 10 != 0);
        if i % 30 == 0 {
            r.error_kind = Some("timeout".into());
        }
        if i <= 5 {
            r.retries = 2;
        }
        responses.push(r);
    }
    let mut assistants = Vec::new();
    for i in 1..=50u64 {
        let mut r = record("assistants", i, i * 10, i != 7);
        r.ttft_ms = None;
        if i == 7 {
            r.error_kind = None;
        }
        assistants.push(r);
    }
    // Two daily files plus one file that is not a turn log; the records interleave across files.
    let mut day1 = std::fs::File::create(dir.join("turns.2025-01-01.log")).unwrap();
    let mut day2 = std::fs::File::create(dir.join("turns.2025-01-02.log")).unwrap();
    for (n, r) in responses.iter().chain(assistants.iter()).enumerate() {
        let file = if n % 2 == 0 { &mut day1 } else { &mut day2 };
        writeln!(file, "{}", r.to_line()).unwrap();
    }
    // Garbage: not JSON, a truncated line, a JSON array, an object without a backend, a wrong type.
    writeln!(day1, "this is not json").unwrap();
    writeln!(day1, "{}", &responses[0].to_line()[..40]).unwrap();
    writeln!(day2, "[1, 2, 3]").unwrap();
    writeln!(day2, r#"{{"outcome":"ok","latency_ms":5}}"#).unwrap();
    writeln!(day2, r#"{{"backend":"responses","outcome":"ok","latency_ms":"fast"}}"#).unwrap();
    writeln!(day2).unwrap();
    let mut other = std::fs::File::create(dir.join("swapbot.2025-01-01.log")).unwrap();
    writeln!(other, "{}", responses[0].to_line()).unwrap();
}

#[test]
fn figures_match_the_log() {
    let dir = tempfile::tempdir().unwrap();
    sample_log(dir.path());
    let report = build_report(dir.path(), &ReportOptions::all()).unwrap();

    assert_eq!(report.files.len(), 2, "only turns.* files: {:?}", report.files);
    assert_eq!(report.lines, 155);
    assert_eq!(report.skipped, 5);
    assert_eq!(report.outside_window, 0);
    assert_eq!(report.backends.iter().map(|b| b.backend.as_str()).collect::<Vec<_>>(), ["assistants", "responses"]);

    let r = report.backend("responses").unwrap();
    assert_eq!(r.turns, 100);
    assert_eq!(r.errors, 10);
    assert!((r.error_rate - 0.10).abs() < 1e-12);
    assert_eq!(r.latency_ms, Some(Percentiles { samples: 100, p50: 50, p95: 95, p99: 99, max: 100 }));
    // ttft on the 90 ok turns: i/2 for i in 1..=100 except multiples of 10.
    let mut ttft: Vec<u64> = (1..=100u64).filter(|i| i % 10 != 0).map(|i| i / 2).collect();
    ttft.sort();
    assert_eq!(ttft.len(), 90);
    // Nearest rank: p50 → rank 45, p95 → rank ceil(85.5) = 86, p99 → rank ceil(89.1) = 90.
    let expected = Percentiles { samples: 90, p50: ttft[44], p95: ttft[85], p99: ttft[89], max: 49 };
    assert_eq!(r.ttft_ms, Some(expected));
    assert_eq!((expected.p50, expected.p95, expected.p99), (24, 47, 49));
    assert_eq!(r.retries, 10);
    assert_eq!(r.turns_with_retries, 5);
    assert_eq!(r.error_kinds.get("upstream"), Some(&7));
    assert_eq!(r.error_kinds.get("timeout"), Some(&3));
    assert_eq!(r.plugin_versions.get("responses-1.0.0"), Some(&100));

    let a = report.backend("assistants").unwrap();
    assert_eq!(a.turns, 50);
    assert_eq!(a.errors, 1);
    assert!((a.error_rate - 0.02).abs() < 1e-12);
    // 10..=500 step 10: p50 → rank 25 = 250, p95 → rank ceil(47.5) = 48 = 480, p99 → rank ceil(49.5) = 50 = 500.
    assert_eq!(a.latency_ms, Some(Percentiles { samples: 50, p50: 250, p95: 480, p99: 500, max: 500 }));
    assert_eq!(a.ttft_ms, None);
    assert_eq!(a.retries, 0);
    assert_eq!(a.error_kinds.get("unknown"), Some(&1));

    assert_eq!(report.first_turn_ms, Some(T0 + 60_000 + 1));
    assert_eq!(report.last_turn_ms, Some(T0 + 100 * 60_000 + 100));

    assert_eq!(report.verdicts.len(), 1);
    assert_eq!(
        report.verdicts[0],
        "responses vs assistants: error rate 10.00% vs 2.00% (+8.00 pp); p95 latency 95 ms vs 480 ms (-80.2%) \
         — few turns (assistants has 50 turns): the figures are noisy"
    );
}

#[test]
fn the_table_and_json_carry_the_figures() {
    let dir = tempfile::tempdir().unwrap();
    sample_log(dir.path());
    let report = build_report(dir.path(), &ReportOptions::all()).unwrap();
    let table = report.to_string();
    eprintln!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("backend")).expect(&table);
    let row = |name: &str| -> Vec<String> {
        lines[header..]
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(row("responses"), ["responses", "100", "10", "10.00%", "50", "95", "99", "24", "47", "49", "10"]);
    assert_eq!(row("assistants"), ["assistants", "50", "1", "2.00%", "250", "480", "500", "-", "-", "-", "0"]);
    // Aligned: the rows of the table all end at the same column.
    let widths: Vec<usize> = lines[header..header + 3].iter().map(|l| l.chars().count()).collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
    assert!(table.contains("5 unparsable skipped"), "{table}");
    assert!(table.contains("verdict: responses vs assistants"), "{table}");

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["skipped"], 5);
    let responses = json["backends"].as_array().unwrap().iter().find(|b| b["backend"] == "responses").unwrap();
    assert_eq!(responses["turns"], 100);
    assert_eq!(responses["errors"], 10);
    assert_eq!(responses["latency_ms"]["p95"], 95);
    assert_eq!(responses["ttft_ms"]["p99"], 49);
}

#[test]
fn the_window_selects_turns_by_finish_time() {
    let dir = tempfile::tempdir().unwrap();
    sample_log(dir.path());
    // Turns 1..=50 of each backend finish before T0 + 50 min + 1 min; the window [T0 + 51 min, T0 + 81 min)
    // holds turns 51..=80 of responses (finish T0 + i min + i ms) and none of assistants (i ≤ 50).
    let options = ReportOptions { from_ms: Some(T0 + 51 * 60_000), to_ms: Some(T0 + 81 * 60_000) };
    let report = build_report(dir.path(), &options).unwrap();
    assert_eq!(report.backends.len(), 1);
    let r = report.backend("responses").unwrap();
    assert_eq!(r.turns, 30);
    assert_eq!(r.errors, 3); // 60, 70, 80
    assert!((r.error_rate - 0.1).abs() < 1e-12);
    // Latencies 51..=80: p50 → rank 15 = 65, p95 → rank ceil(28.5) = 29 = 79, p99 → rank ceil(29.7) = 30 = 80.
    assert_eq!(r.latency_ms, Some(Percentiles { samples: 30, p50: 65, p95: 79, p99: 80, max: 80 }));
    assert_eq!(r.error_kinds.get("timeout"), Some(&1)); // 60
    assert_eq!(r.retries, 0);
    assert_eq!(report.outside_window, 150 - 30);
    assert!(report.verdicts.is_empty());

    // --since relative to a fixed now: the last 10 minutes before turn 100's start + 1 min.
    let since = ReportOptions::since_at(Duration::from_secs(600), T0 + 101 * 60_000);
    assert_eq!(since.from_ms, Some(T0 + 91 * 60_000));
    let report = build_report(dir.path(), &since).unwrap();
    assert_eq!(report.backend("responses").unwrap().turns, 10); // 91..=100
    assert_eq!(report.backend("responses").unwrap().errors, 1); // 100

    // A window with nothing in it.
    let empty = build_report(dir.path(), &ReportOptions { from_ms: Some(T0 + 1_000 * 60_000), to_ms: None }).unwrap();
    assert!(empty.backends.is_empty());
    assert!(empty.to_string().contains("no turns in the window"));
}

#[test]
fn lines_from_older_versions_and_extra_fields_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turns.log");
    std::fs::write(
        &path,
        concat!(
            r#"{"backend":"responses","outcome":"ok","latency_ms":120,"tn_unix_ms":5,"future_field":{"x":1}}"#,
            "\n",
            r#"{"backend":"responses","outcome":"error","latency_ms":80,"tn_unix_ms":6,"error_kind":"rate_limited","retries":3}"#,
            "\n",
        ),
    )
    .unwrap();
    // LOG_DIR may also name one file.
    let report = build_report(&path, &ReportOptions::all()).unwrap();
    assert_eq!(report.skipped, 0);
    let r = report.backend("responses").unwrap();
    assert_eq!((r.turns, r.errors, r.retries), (2, 1, 3));
    assert_eq!(r.latency_ms.unwrap().p50, 80);
    assert_eq!(r.latency_ms.unwrap().p99, 120);

    let missing = build_report(&dir.path().join("nope"), &ReportOptions::all()).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn windows_times_and_ranks_parse() {
    assert_eq!(parse_window("30m").unwrap(), Duration::from_secs(1800));
    assert_eq!(parse_window("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_window("2d").unwrap(), Duration::from_secs(172_800));
    assert_eq!(parse_window("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_window("1w").unwrap(), Duration::from_secs(604_800));
    for bad in ["", "1", "h", "1x", "1.5h", "-1h"] {
        assert!(parse_window(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_time("1735689600000").unwrap(), T0);
    assert_eq!(parse_time("2025-01-01T00:00:00Z").unwrap(), T0);
    assert_eq!(parse_time("2025-01-01T02:00:00.250+02:00").unwrap(), T0 + 250);
    assert_eq!(parse_time("2025-01-01").unwrap(), T0);
    assert!(parse_time("2025-13-01T00:00:00Z").is_err());
    assert!(parse_time("2025-01-01T00:00:00").is_err(), "an offset is required");
    assert!(parse_time("2001-02-29").is_err());
    assert!(parse_time("yesterday").is_err());
    assert_eq!(parse_time("2000-02-29").unwrap(), 951_782_400_000);
    assert_eq!(parse_time("1970-01-01T01:00:00.5+01:00").unwrap(), 500);
    assert_eq!(format_rfc3339(T0 + 999), "2025-01-01T00:00:00Z");
    for ms in [0u64, 951_782_400_000, 1_700_000_000_000, 4_102_444_800_000] {
        assert_eq!(parse_time(&format_rfc3339(ms)).unwrap(), ms);
    }

    assert_eq!(nearest_rank(&[7], 50), 7);
    assert_eq!(nearest_rank(&[1, 2], 50), 1);
    assert_eq!(nearest_rank(&[1, 2], 51), 2);
    assert_eq!(nearest_rank(&[1, 2, 3, 4], 99), 4);
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Report(swapbot::report::ReportArgs),
}

#[test]
fn the_cli_arguments_parse() {
    use clap::{CommandFactory, Parser};
    Cli::command().debug_assert();
    let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| match cli.command {
        Sub::Report(args) => args,
    });

    let args = parse(&["swapbot", "report", "/var/log/swapbot", "--since", "1h30m", "--json"]).unwrap();
    assert_eq!(args.log_dir, Path::new("/var/log/swapbot"));
    assert_eq!(args.since, Some(Duration::from_secs(5400)));
    assert!(args.json);
    let window = args.options();
    assert!(window.from_ms.is_some() && window.to_ms.is_none());

    let args = parse(&["swapbot", "report", "logs", "--from", "2025-01-01T00:00:00Z", "--to", "1735693200000"]).unwrap();
    assert_eq!(args.options(), ReportOptions { from_ms: Some(T0), to_ms: Some(T0 + 3_600_000) });
    assert!(!args.json);

    assert!(parse(&["swapbot", "report", "--since", "1h", "--from", "0"]).is_err(), "--since excludes --from");
    assert!(parse(&["swapbot", "report", "--since", "soon"]).is_err());
    assert!(parse(&["swapbot", "report", "--to", "yesterday"]).is_err());
}
