//! What every benchmark shares: sample statistics, result records, CPU time, RSS, paths.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One measurement, as written to `bench/results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Benchmark group (1–7 of issue 6).
    pub group: String,
    pub name: String,
    pub unit: String,
    pub median: f64,
    /// p5–p95 of the samples (or min–max when there are fewer than 20 samples).
    pub spread: Spread,
    /// Number of samples the median is taken over.
    pub runs: usize,
    pub excludes: String,
    /// The goal for this figure, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// Whether the goal was met (None: no goal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default)]
    pub machine: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spread {
    pub kind: String,
    pub low: f64,
    pub high: f64,
}

/// Samples of one figure.
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn new() -> Self {
        Samples(Vec::new())
    }
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }
    pub fn push_dur_us(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e6);
    }
    pub fn push_dur_ms(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }
    /// Nearest-rank percentile, `p` in 0..=100.
    pub fn pct(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
        v[rank.min(v.len() - 1)]
    }
    pub fn median(&self) -> f64 {
        self.pct(50.0)
    }
    pub fn spread(&self) -> Spread {
        if self.0.len() >= 20 {
            Spread { kind: "p5-p95".into(), low: self.pct(5.0), high: self.pct(95.0) }
        } else {
            let v = self.sorted();
            Spread {
                kind: "min-max".into(),
                low: v.first().copied().unwrap_or(f64::NAN),
                high: v.last().copied().unwrap_or(f64::NAN),
            }
        }
    }
}

/// Builds a record from samples.
pub fn record(group: &str, name: &str, unit: &str, samples: &Samples, excludes: &str) -> Record {
    Record {
        group: group.into(),
        name: name.into(),
        unit: unit.into(),
        median: round(samples.median()),
        spread: {
            let s = samples.spread();
            Spread { kind: s.kind, low: round(s.low), high: round(s.high) }
        },
        runs: samples.len(),
        excludes: excludes.into(),
        goal: None,
        pass: None,
        note: None,
        machine: serde_json::Value::Null,
    }
}

impl Record {
    pub fn goal(mut self, goal: &str, pass: bool) -> Self {
        self.goal = Some(goal.into());
        self.pass = Some(pass);
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

pub fn round(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    let mag = v.abs();
    let digits = if mag >= 100.0 {
        1
    } else if mag >= 1.0 {
        2
    } else {
        4
    };
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Appends records as JSON lines to the output file (or stdout).
pub struct Out {
    path: Option<PathBuf>,
}

impl Out {
    pub fn new(path: Option<PathBuf>) -> Self {
        if let Some(p) = &path {
            let _ = std::fs::remove_file(p);
        }
        Out { path }
    }
    pub fn emit(&self, r: Record) {
        let line = serde_json::to_string(&r).unwrap();
        eprintln!(
            "  {:<58} {:>12} {:<6} [{} {} – {}] n={}{}",
            r.name,
            r.median,
            r.unit,
            r.spread.kind,
            r.spread.low,
            r.spread.high,
            r.runs,
            match r.pass {
                Some(true) => "  goal met",
                Some(false) => "  goal MISSED",
                None => "",
            }
        );
        match &self.path {
            Some(p) => {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
                writeln!(f, "{line}").unwrap();
            }
            None => println!("{line}"),
        }
    }
}

/// This process's user + system CPU time (getrusage, µs resolution).
pub fn self_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Another process's user + system CPU time from /proc/PID/stat (clock-tick resolution).
pub fn proc_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    // Fields after the ")" that closes the command name: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: f64 = fields.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    Duration::from_secs_f64(ticks / tick)
}

/// Resident set size of a process in MiB (VmRSS).
pub fn rss_mib(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A number from the environment, for the profiling knobs (`SWAPBOT_BENCH_*`); `None` when unset
/// or not a number.
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// The repository root (where `target/plugins` is), from `SWAPBOT_ROOT` or the current directory.
pub fn root() -> PathBuf {
    std::env::var_os("SWAPBOT_ROOT").map(PathBuf::from).unwrap_or_else(|| std::env::current_dir().unwrap())
}

pub fn plugin_path(name: &str) -> PathBuf {
    root().join("target/plugins").join(format!("{name}.wasm"))
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("swapbot-bench-{}-{label}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Machine facts every result carries.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    serde_json::json!({ "nproc": nproc, "cpu": cpu, "mem_total": mem, "kernel": kernel, "date": date })
}
