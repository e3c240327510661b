//! `swapbot report [LOG_DIR]`: per-backend figures from the turn logs, so an operator can decide to
//! widen or roll back a canary.
//!
//! Input: every file named `turns.*` directly under `LOG_DIR` (the daily files [`crate::telemetry::turnlog::TurnLog`]
//! writes, `turns.YYYY-MM-DD.log`), one JSON [`TurnRecord`] per line. Unknown extra fields (the backend's
//! own id labels) are ignored; fields missing from an older line take their default; a line that is not
//! a JSON object with at least `backend`, `outcome` and `latency_ms`, or whose fields have the wrong
//! type, is skipped and counted in [`Report::skipped`]. `LOG_DIR` may also name a single file.
//!
//! Window: a turn belongs to the window when its finish time (`tn_unix_ms`, or `t0_unix_ms` when a line
//! has no finish time) is in `[from, to)`. `--since 1h` means `from = now - 1h`, no upper bound.
//!
//! Figures, per backend, over the turns in the window:
//! - `turns`, `errors` (outcome other than `ok`), `error rate` = errors / turns;
//! - latency percentiles over **all** turns, ok or not (what the user waited for an answer or an error);
//! - time-to-first-token percentiles over the turns that have a `ttft_ms`;
//! - `retries`: the sum of the turns' retries.
//!
//! Percentiles are **nearest-rank**: with the `n` values sorted ascending, `pP` is the value at 1-based
//! rank `ceil(P/100 × n)` (at least 1). It is always an observed value; for the latencies 1..=100 ms,
//! p50 = 50, p95 = 95, p99 = 99.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::calendar::{civil_from_days, days_from_civil};
use crate::telemetry::turnlog::TurnRecord;

/// The backend that a canary is compared against in the verdict lines.
pub const BASELINE: &str = crate::config::legacy::REPORT_BASELINE;
/// Below this many turns a backend's verdict line says its figures are noisy.
pub const FEW_TURNS: u64 = 100;

/// Which turns a report covers: finish time in `[from_ms, to_ms)`; `None` is unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportOptions {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

impl ReportOptions {
    /// Everything in the logs.
    pub fn all() -> Self {
        Self::default()
    }

    /// The last `window` before now.
    pub fn since(window: Duration) -> Self {
        Self::since_at(window, crate::calendar::unix_ms_now())
    }

    /// The last `window` before `now_ms` (unix milliseconds).
    pub fn since_at(window: Duration, now_ms: u64) -> Self {
        Self { from_ms: Some(now_ms.saturating_sub(window.as_millis() as u64)), to_ms: None }
    }

    fn contains(&self, at_ms: u64) -> bool {
        self.from_ms.is_none_or(|from| at_ms >= from) && self.to_ms.is_none_or(|to| at_ms < to)
    }
}

/// The arguments of `swapbot report`, ready for the host's clap `Subcommand` enum:
/// `Report(swapbot::report::ReportArgs)`, then `swapbot::report::run(&args)`.
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// The directory holding the turn logs (`turns.*`), or one turn log file.
    #[arg(env = "LOG_DIR", default_value = "logs")]
    pub log_dir: PathBuf,
    /// Only turns that finished in this window before now: 30m, 1h, 2d, 1w, 1h30m.
    #[arg(long, value_parser = clap_window, conflicts_with_all = ["from", "to"])]
    pub since: Option<Duration>,
    /// Only turns that finished at or after this time: unix milliseconds or RFC 3339 (2025-01-31T12:00:00Z).
    #[arg(long, value_parser = clap_time)]
    pub from: Option<u64>,
    /// Only turns that finished before this time: unix milliseconds or RFC 3339.
    #[arg(long, value_parser = clap_time)]
    pub to: Option<u64>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ReportArgs {
    pub fn options(&self) -> ReportOptions {
        match self.since {
            Some(window) => ReportOptions::since(window),
            None => ReportOptions { from_ms: self.from, to_ms: self.to },
        }
    }
}

fn clap_window(s: &str) -> Result<Duration, String> {
    parse_window(s).map_err(|e| e.to_string())
}

fn clap_time(s: &str) -> Result<u64, String> {
    parse_time(s).map_err(|e| e.to_string())
}

/// Builds the report for `args` and prints it to stdout, as a table or as JSON.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let report = build_report(&args.log_dir, &args.options())?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Nearest-rank percentiles of a set of millisecond values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    /// `None` when there are no values.
    pub fn of(mut values: Vec<u64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        Some(Self {
            samples: values.len() as u64,
            p50: nearest_rank(&values, 50),
            p95: nearest_rank(&values, 95),
            p99: nearest_rank(&values, 99),
            max: *values.last().unwrap(),
        })
    }
}

/// The value at 1-based rank `ceil(p/100 × n)` of `sorted` (ascending, non-empty).
pub fn nearest_rank(sorted: &[u64], p: u32) -> u64 {
    let n = sorted.len();
    let rank = (p as usize * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

/// One backend's figures over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackendReport {
    pub backend: String,
    pub turns: u64,
    pub errors: u64,
    /// Turns refused by a budget (no request made): neither errors nor in the latency figures.
    pub refused: u64,
    /// errors / turns, 0..=1.
    pub error_rate: f64,
    /// Over all turns, ok or not; `None` only when there are no turns.
    pub latency_ms: Option<Percentiles>,
    /// Over the turns that have a time to first token.
    pub ttft_ms: Option<Percentiles>,
    /// Sum of the turns' retries.
    pub retries: u64,
    /// Turns that needed at least one retry.
    pub turns_with_retries: u64,
    /// Failed turns by `error_kind` (`unknown` when a failed turn has none).
    pub error_kinds: BTreeMap<String, u64>,
    /// Plugin versions that served turns in the window, with their turn counts.
    pub plugin_versions: BTreeMap<String, u64>,
    /// Sums of the usage the API reported (plain numbers for monitors).
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub embedding_tokens: u64,
    /// Turns that reported usage.
    pub turns_with_usage: u64,
    /// Input + output tokens per turn, over the turns that reported usage.
    pub tokens_per_turn: Option<Percentiles>,
    /// cached_input_tokens / input_tokens, 0..=1.
    pub cache_hit_ratio: f64,
    /// Sum of the turns' cost from the price table, US dollars.
    pub cost_usd: f64,
}

/// What `swapbot report` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub log_dir: PathBuf,
    /// The files read, in name order.
    pub files: Vec<PathBuf>,
    /// Non-empty lines read.
    pub lines: u64,
    /// Lines that could not be parsed as a turn record.
    pub skipped: u64,
    /// Parsed turns outside the window.
    pub outside_window: u64,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Finish times of the first and last turn in the window.
    pub first_turn_ms: Option<u64>,
    pub last_turn_ms: Option<u64>,
    /// Sorted by backend name.
    pub backends: Vec<BackendReport>,
    /// One factual comparison line per backend against [`BASELINE`], when both have turns.
    pub verdicts: Vec<String>,
}

impl Report {
    pub fn backend(&self, name: &str) -> Option<&BackendReport> {
        self.backends.iter().find(|b| b.backend == name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Reads the turn logs under `dir` (or the single file `dir`) and computes the figures of the turns in
/// `options`' window.
pub fn build_report(dir: &Path, options: &ReportOptions) -> anyhow::Result<Report> {
    let files = turn_files(dir)?;
    let mut report = Report {
        log_dir: dir.to_path_buf(),
        from_ms: options.from_ms,
        to_ms: options.to_ms,
        ..Report::default()
    };
    let template = serde_json::to_value(TurnRecord::default())?;
    let mut by_backend: BTreeMap<String, Vec<TurnRecord>> = BTreeMap::new();
    for file in &files {
        let handle = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let mut reader = std::io::BufReader::new(handle);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            if n == 0 {
                break;
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            report.lines += 1;
            let Some(record) = parse_line(&line, &template) else {
                report.skipped += 1;
                continue;
            };
            let at = finish_ms(&record);
            if !options.contains(at) {
                report.outside_window += 1;
                continue;
            }
            report.first_turn_ms = Some(report.first_turn_ms.map_or(at, |t| t.min(at)));
            report.last_turn_ms = Some(report.last_turn_ms.map_or(at, |t| t.max(at)));
            by_backend.entry(record.backend.clone()).or_default().push(record);
        }
    }
    report.files = files;
    report.backends = by_backend.into_iter().map(|(name, records)| backend_report(name, &records)).collect();
    report.verdicts = verdicts(&report.backends);
    Ok(report)
}

fn turn_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read the turn logs in {}: {e} (set LOG_DIR or pass the directory)", dir.display()))?;
    if meta.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("turns.") && entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// A line as a [`TurnRecord`]: known fields over the defaults, unknown fields ignored.
fn parse_line(line: &[u8], template: &serde_json::Value) -> Option<TurnRecord> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let object = value.as_object()?;
    object.get("backend")?.as_str().filter(|b| !b.is_empty())?;
    object.get("outcome")?.as_str()?;
    object.get("latency_ms")?.as_u64()?;
    let mut merged = template.clone();
    let target = merged.as_object_mut()?;
    for (key, field) in object {
        if let Some(slot) = target.get_mut(key) {
            *slot = field.clone();
        }
    }
    serde_json::from_value(merged).ok()
}

fn finish_ms(record: &TurnRecord) -> u64 {
    if record.tn_unix_ms != 0 { record.tn_unix_ms } else { record.t0_unix_ms }
}

fn backend_report(backend: String, records: &[TurnRecord]) -> BackendReport {
    let turns = records.len() as u64;
    let mut report = BackendReport { backend, turns, ..BackendReport::default() };
    let served: Vec<&TurnRecord> = records.iter().filter(|r| r.outcome != "refused").collect();
    report.refused = (records.len() - served.len()) as u64;
    for record in &served {
        if record.outcome != "ok" {
            report.errors += 1;
            let kind = record.error_kind.clone().filter(|k| !k.is_empty()).unwrap_or_else(|| "unknown".into());
            *report.error_kinds.entry(kind).or_default() += 1;
        }
        report.retries += u64::from(record.retries);
        if record.retries > 0 {
            report.turns_with_retries += 1;
        }
        if !record.plugin_version.is_empty() {
            *report.plugin_versions.entry(record.plugin_version.clone()).or_default() += 1;
        }
    }
    for record in records {
        report.input_tokens += record.input_tokens.unwrap_or(0);
        report.cached_input_tokens += record.cached_input_tokens.unwrap_or(0);
        report.output_tokens += record.output_tokens.unwrap_or(0);
        report.reasoning_tokens += record.reasoning_tokens.unwrap_or(0);
        report.embedding_tokens += record.embedding_tokens.unwrap_or(0);
        report.cost_usd += record.cost_usd.unwrap_or(0.0);
    }
    let with_usage: Vec<u64> = records
        .iter()
        .filter(|r| r.input_tokens.is_some() || r.output_tokens.is_some())
        .map(|r| r.input_tokens.unwrap_or(0) + r.output_tokens.unwrap_or(0))
        .collect();
    report.turns_with_usage = with_usage.len() as u64;
    report.tokens_per_turn = Percentiles::of(with_usage);
    report.cache_hit_ratio =
        if report.input_tokens == 0 { 0.0 } else { report.cached_input_tokens as f64 / report.input_tokens as f64 };
    report.cost_usd = (report.cost_usd * 1e6).round() / 1e6;
    let served_turns = served.len() as u64;
    report.error_rate = if served_turns == 0 { 0.0 } else { report.errors as f64 / served_turns as f64 };
    report.latency_ms = Percentiles::of(served.iter().map(|r| r.latency_ms).collect());
    report.ttft_ms = Percentiles::of(served.iter().filter_map(|r| r.ttft_ms).collect());
    report
}

fn verdicts(backends: &[BackendReport]) -> Vec<String> {
    let Some(base) = backends.iter().find(|b| b.backend == BASELINE && b.turns > 0) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for candidate in backends.iter().filter(|b| b.backend != BASELINE && b.turns > 0) {
        let mut parts = vec![format!(
            "error rate {} vs {} ({:+.2} pp)",
            percent(candidate.error_rate),
            percent(base.error_rate),
            (candidate.error_rate - base.error_rate) * 100.0
        )];
        if let (Some(c), Some(b)) = (candidate.latency_ms, base.latency_ms) {
            parts.push(format!("p95 latency {} ms vs {} ms ({})", c.p95, b.p95, relative(c.p95, b.p95)));
        }
        if let (Some(c), Some(b)) = (candidate.ttft_ms, base.ttft_ms) {
            parts.push(format!("p95 ttft {} ms vs {} ms ({})", c.p95, b.p95, relative(c.p95, b.p95)));
        }
        let mut line = format!("{} vs {}: {}", candidate.backend, base.backend, parts.join("; "));
        let few: Vec<String> = [candidate, base]
            .iter()
            .filter(|b| b.turns < FEW_TURNS)
            .map(|b| format!("{} has {} turns", b.backend, b.turns))
            .collect();
        if !few.is_empty() {
            line.push_str(&format!(" — few turns ({}): the figures are noisy", few.join(", ")));
        }
        out.push(line);
    }
    out
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

fn relative(candidate: u64, base: u64) -> String {
    if base == 0 {
        return if candidate == 0 { "same".into() } else { "baseline is 0".into() };
    }
    format!("{:+.1}%", (candidate as f64 - base as f64) / base as f64 * 100.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "turn logs: {} ({} file{}, {} line{}, {} unparsable skipped, {} outside the window)",
            self.log_dir.display(),
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            self.lines,
            if self.lines == 1 { "" } else { "s" },
            self.skipped,
            self.outside_window
        )?;
        let bound = |t: Option<u64>| t.map(format_rfc3339).unwrap_or_else(|| "…".into());
        let window = if self.from_ms.is_none() && self.to_ms.is_none() {
            "everything".to_string()
        } else {
            format!("{} to {}", bound(self.from_ms), bound(self.to_ms))
        };
        write!(f, "window: {window}")?;
        if let (Some(first), Some(last)) = (self.first_turn_ms, self.last_turn_ms) {
            write!(f, "; turns from {} to {}", format_rfc3339(first), format_rfc3339(last))?;
        }
        writeln!(f)?;
        if self.backends.is_empty() {
            return writeln!(f, "no turns in the window");
        }
        writeln!(f, "latency and ttft in ms, nearest-rank percentiles; latency over all turns, ttft over turns that have one")?;
        writeln!(f)?;

        let header = [
            "backend", "turns", "errors", "error%", "lat p50", "lat p95", "lat p99", "ttft p50", "ttft p95", "ttft p99",
            "retries",
        ];
        let dash = || "-".to_string();
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for b in &self.backends {
            let lat = |pick: fn(&Percentiles) -> u64| b.latency_ms.as_ref().map(|p| pick(p).to_string()).unwrap_or_else(dash);
            let ttft = |pick: fn(&Percentiles) -> u64| b.ttft_ms.as_ref().map(|p| pick(p).to_string()).unwrap_or_else(dash);
            rows.push(vec![
                b.backend.clone(),
                b.turns.to_string(),
                b.errors.to_string(),
                percent(b.error_rate),
                lat(|p| p.p50),
                lat(|p| p.p95),
                lat(|p| p.p99),
                ttft(|p| p.p50),
                ttft(|p| p.p95),
                ttft(|p| p.p99),
                b.retries.to_string(),
            ]);
        }
        let widths: Vec<usize> =
            (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c == 0 {
                    line.push_str(&format!("{cell:<width$}", width = widths[c]));
                } else {
                    line.push_str(&format!("  {cell:>width$}", width = widths[c]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }

        let kinds: Vec<String> = self
            .backends
            .iter()
            .filter(|b| !b.error_kinds.is_empty())
            .map(|b| {
                let list: Vec<String> = b.error_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
                format!("{}: {}", b.backend, list.join(", "))
            })
            .collect();
        if !kinds.is_empty() {
            writeln!(f)?;
            writeln!(f, "errors by kind: {}", kinds.join("; "))?;
        }
        let versions: Vec<String> = self
            .backends
            .iter()
            .filter(|b| !b.plugin_versions.is_empty())
            .map(|b| {
                let list: Vec<String> = b.plugin_versions.iter().map(|(v, n)| format!("{v} ({n})")).collect();
                format!("{}: {}", b.backend, list.join(", "))
            })
            .collect();
        if !versions.is_empty() {
            writeln!(f, "plugin versions: {}", versions.join("; "))?;
        }
        let costs: Vec<String> = self
            .backends
            .iter()
            .filter(|b| b.turns_with_usage > 0)
            .map(|b| {
                let per_turn = b.tokens_per_turn.as_ref().map(|p| format!("p50 {} p95 {}", p.p50, p.p95)).unwrap_or_default();
                format!(
                    "{}: tokens in {} (cached {}) out {} (reasoning {}), per turn {per_turn}, cache hit {}, cost ${:.4}",
                    b.backend,
                    b.input_tokens,
                    b.cached_input_tokens,
                    b.output_tokens,
                    b.reasoning_tokens,
                    percent(b.cache_hit_ratio),
                    b.cost_usd
                )
            })
            .collect();
        if !costs.is_empty() {
            writeln!(f, "usage: {}", costs.join("; "))?;
        }
        if !self.verdicts.is_empty() {
            writeln!(f)?;
            for verdict in &self.verdicts {
                writeln!(f, "verdict: {verdict}")?;
            }
        }
        Ok(())
    }
}

/// Parses a window length: one or more `<number><unit>` groups, units `s`, `m`, `h`, `d`, `w`
/// (`30m`, `1h`, `2d`, `1h30m`).
pub fn parse_window(s: &str) -> anyhow::Result<Duration> {
    let text = s.trim();
    anyhow::ensure!(!text.is_empty(), "empty window: use e.g. 30m, 1h, 2d");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => anyhow::bail!("invalid window {s:?}: unknown unit {c:?} (use s, m, h, d or w, e.g. 30m, 1h, 2d)"),
        };
        anyhow::ensure!(!digits.is_empty(), "invalid window {s:?}: a number must come before {c:?}");
        let n: u64 = digits.parse().map_err(|_| anyhow::anyhow!("invalid window {s:?}: number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| anyhow::anyhow!("invalid window {s:?}: too large"))?;
        digits.clear();
    }
    anyhow::ensure!(digits.is_empty(), "invalid window {s:?}: {digits} needs a unit (s, m, h, d or w)");
    Ok(Duration::from_secs(total))
}

/// Parses a point in time: unix milliseconds (all digits), an RFC 3339 timestamp
/// (`2025-01-31T12:00:00Z`, `2025-01-31T12:00:00.250+02:00`) or a date (`2025-01-31`, midnight UTC).
/// Returns unix milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<u64> {
    let text = s.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| anyhow::anyhow!("invalid time {s:?}: number too large"));
    }
    parse_rfc3339(text).ok_or_else(|| {
        anyhow::anyhow!("invalid time {s:?}: use unix milliseconds or RFC 3339, e.g. 2025-01-31T12:00:00Z")
    })
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return u64::try_from(days * 86_400_000).ok();
    }
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &text[start..i.min(start + 3)];
        millis = format!("{frac:0<3}").parse().ok()?;
    }
    let offset_s = match &text[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && rest.as_bytes()[3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    u64::try_from(secs * 1000 + millis).ok()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix milliseconds as RFC 3339 UTC, to the second (`2025-01-31T12:00:00Z`).
pub fn format_rfc3339(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}


