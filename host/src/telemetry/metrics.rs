//! Prometheus metrics for observing a canary: a hand-written text exposition (format 0.0.4) served
//! on `METRICS_ADDR` at `/metrics`, beside a `/healthz` readiness probe.
//!
//! Everything is fed from two places in the host: [`Metrics::record_turn`] once per finished turn
//! (the same [`TurnRecord`] the turn log gets) and [`Metrics::plugin_swap`] / [`Metrics::set_plugin_info`]
//! when the plugin set loads, swaps or refuses a module.
//!
//! Series (all prefixed `swapbot_`):
//! - `swapbot_turns_total{backend,outcome}` counter
//! - `swapbot_turn_errors_total{backend,kind}` counter (turns whose outcome is not `ok`, by `error_kind`)
//! - `swapbot_retries_total{backend}` counter
//! - `swapbot_turn_latency_seconds{backend}` histogram (t0 to the end of the turn)
//! - `swapbot_time_to_first_token_seconds{backend}` histogram (turns that have a ttft)
//! - `swapbot_kb_latency_seconds{backend}` histogram (knowledge-base lookup of the turn)
//! - `swapbot_tokens_total{backend,kind="input|cached_input|output|reasoning|embedding"}` counter
//!   (usage the API reported; `input` includes `cached_input`, `output` includes `reasoning`)
//! - `swapbot_cost_microdollars_total{backend}` counter (from the price table)
//! - `swapbot_plugin_swaps_total{backend,result="swapped|refused"}` counter
//! - `swapbot_plugin_info{backend,version,sha256}` gauge, always 1, one series per backend
//! - `swapbot_db_statements_total` counter (with `DATABASE_URL`: statements this replica sent to
//!   PostgreSQL, turns and background work alike; what `make bench` divides by turns)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::telemetry::turnlog::TurnRecord;

/// Upper bounds, in milliseconds, of the turn latency histogram buckets.
pub const LATENCY_BUCKETS_MS: &[u64] =
    &[100, 250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000];
/// Upper bounds, in milliseconds, of the time-to-first-token histogram buckets.
pub const TTFT_BUCKETS_MS: &[u64] = &[50, 100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 20_000, 30_000];
/// Upper bounds, in milliseconds, of the knowledge-base latency histogram buckets.
pub const KB_BUCKETS_MS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000];

/// Prometheus `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [u64],
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    counts: Vec<u64>,
    sum_ms: u64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum_ms: 0, count: 0 }
    }

    fn observe(&mut self, ms: u64) {
        let slot = self.bounds.iter().position(|&b| ms <= b).unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    turns: BTreeMap<(String, String), u64>,
    errors: BTreeMap<(String, String), u64>,
    retries: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
    ttft: BTreeMap<String, Histogram>,
    kb: BTreeMap<String, Histogram>,
    swaps: BTreeMap<(String, &'static str), u64>,
    info: BTreeMap<String, (String, String)>,
    tokens: BTreeMap<(String, &'static str), u64>,
    cost_micro_usd: BTreeMap<String, u64>,
    routing: Option<String>,
    db_statements: Option<StatementCount>,
}

/// Reads a store's statement counter at render time (the store counts; metrics only show it).
type StatementCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Per-backend turn counts since the process started, e.g. for `/rollout`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnCounts {
    pub backend: String,
    pub turns: u64,
    pub errors: u64,
}

impl TurnCounts {
    /// Errors over turns, 0 when there were no turns.
    pub fn error_rate(&self) -> f64 {
        if self.turns == 0 { 0.0 } else { self.errors as f64 / self.turns as f64 }
    }
}

/// The process's metrics. One mutex around plain maps: a turn takes it once, for microseconds.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one finished turn (ok or not). Call it where the turn log line is written.
    pub fn record_turn(&self, record: &TurnRecord) {
        let backend = label_or(&record.backend, "unknown");
        let outcome = label_or(&record.outcome, "unknown");
        let mut inner = self.lock();
        *inner.turns.entry((backend.clone(), outcome.clone())).or_default() += 1;
        if outcome == "refused" {
            // Over a budget: no request was made, nothing to time.
            return;
        }
        if outcome != "ok" {
            let kind = record.error_kind.clone().filter(|k| !k.is_empty()).unwrap_or_else(|| "unknown".into());
            *inner.errors.entry((backend.clone(), kind)).or_default() += 1;
        }
        *inner.retries.entry(backend.clone()).or_default() += u64::from(record.retries);
        inner
            .latency
            .entry(backend.clone())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS_MS))
            .observe(record.latency_ms);
        if let Some(ttft) = record.ttft_ms {
            inner.ttft.entry(backend.clone()).or_insert_with(|| Histogram::new(TTFT_BUCKETS_MS)).observe(ttft);
        }
        let counts = [
            ("input", record.input_tokens),
            ("cached_input", record.cached_input_tokens),
            ("output", record.output_tokens),
            ("reasoning", record.reasoning_tokens),
            ("embedding", record.embedding_tokens),
        ];
        if counts.iter().any(|(_, n)| n.is_some()) {
            for (kind, n) in counts {
                *inner.tokens.entry((backend.clone(), kind)).or_default() += n.unwrap_or(0);
            }
        }
        if let Some(usd) = record.cost_usd {
            *inner.cost_micro_usd.entry(backend.clone()).or_default() += (usd * 1e6).round() as u64;
        }
        inner.kb.entry(backend).or_insert_with(|| Histogram::new(KB_BUCKETS_MS)).observe(record.kb_ms);
    }

    /// Counts one attempted swap of `backend`'s module: `ok` when it was swapped in, false when refused.
    pub fn plugin_swap(&self, backend: &str, ok: bool) {
        let result = if ok { "swapped" } else { "refused" };
        let mut inner = self.lock();
        *inner.swaps.entry((label_or(backend, "unknown"), result)).or_default() += 1;
        // Both series exist from the first event, so rate() and alerts see a 0 rather than nothing.
        let other = if ok { "refused" } else { "swapped" };
        inner.swaps.entry((label_or(backend, "unknown"), other)).or_default();
    }

    /// The routing in force: replicas showing different ones have not all applied a rollout.
    pub fn set_routing(&self, routing: &str) {
        self.lock().routing = Some(routing.to_string());
    }

    /// The module now serving `backend`; replaces the backend's previous info series.
    pub fn set_plugin_info(&self, backend: &str, version: &str, sha256: &str) {
        self.lock().info.insert(label_or(backend, "unknown"), (version.to_string(), sha256.to_string()));
    }

    /// Shows `read()` as `swapbot_db_statements_total` (e.g. `PgStore::queries`).
    pub fn count_db_statements(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        self.lock().db_statements = Some(Arc::new(read));
    }

    /// Turns and errors per backend since start, sorted by backend name.
    pub fn turn_counts(&self) -> Vec<TurnCounts> {
        let inner = self.lock();
        let mut out: BTreeMap<&str, TurnCounts> = BTreeMap::new();
        for ((backend, outcome), n) in &inner.turns {
            let entry = out
                .entry(backend.as_str())
                .or_insert_with(|| TurnCounts { backend: backend.clone(), ..TurnCounts::default() });
            entry.turns += n;
            if outcome != "ok" && outcome != "refused" {
                entry.errors += n;
            }
        }
        out.into_values().collect()
    }

    /// The Prometheus text exposition, format 0.0.4.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(4096);

        header(&mut out, "swapbot_turns_total", "counter", "Finished turns by backend and outcome.");
        for ((backend, outcome), n) in &inner.turns {
            sample(&mut out, "swapbot_turns_total", &[("backend", backend), ("outcome", outcome)], *n);
        }

        header(&mut out, "swapbot_turn_errors_total", "counter", "Failed turns by backend and error kind.");
        for ((backend, kind), n) in &inner.errors {
            sample(&mut out, "swapbot_turn_errors_total", &[("backend", backend), ("kind", kind)], *n);
        }

        header(&mut out, "swapbot_retries_total", "counter", "Retries made by turns, by backend.");
        for (backend, n) in &inner.retries {
            sample(&mut out, "swapbot_retries_total", &[("backend", backend)], *n);
        }

        histogram(
            &mut out,
            "swapbot_turn_latency_seconds",
            "Turn latency from the first request to the end of the turn.",
            &inner.latency,
        );
        histogram(
            &mut out,
            "swapbot_time_to_first_token_seconds",
            "Time from the first request to the first answer text shown.",
            &inner.ttft,
        );
        histogram(&mut out, "swapbot_kb_latency_seconds", "Knowledge-base lookup latency per turn.", &inner.kb);

        header(&mut out, "swapbot_tokens_total", "counter", "Tokens the API reported, by backend and kind.");
        for ((backend, kind), n) in &inner.tokens {
            sample(&mut out, "swapbot_tokens_total", &[("backend", backend), ("kind", kind)], *n);
        }

        header(&mut out, "swapbot_cost_microdollars_total", "counter", "Cost of the turns from the price table, in millionths of a US dollar.");
        for (backend, n) in &inner.cost_micro_usd {
            sample(&mut out, "swapbot_cost_microdollars_total", &[("backend", backend)], *n);
        }

        header(&mut out, "swapbot_plugin_swaps_total", "counter", "Plugin modules swapped in or refused, by backend.");
        for ((backend, result), n) in &inner.swaps {
            sample(&mut out, "swapbot_plugin_swaps_total", &[("backend", backend), ("result", result)], *n);
        }

        header(&mut out, "swapbot_plugin_info", "gauge", "The plugin module serving each backend.");
        for (backend, (version, sha256)) in &inner.info {
            sample(
                &mut out,
                "swapbot_plugin_info",
                &[("backend", backend), ("version", version), ("sha256", sha256)],
                1,
            );
        }

        if let Some(routing) = &inner.routing {
            header(&mut out, "swapbot_routing_info", "gauge", "The routing in force (after the rollout).");
            sample(&mut out, "swapbot_routing_info", &[("routing", routing)], 1);
        }

        if let Some(read) = &inner.db_statements {
            header(&mut out, "swapbot_db_statements_total", "counter", "Statements sent to PostgreSQL by this replica (turns and background work).");
            sample(&mut out, "swapbot_db_statements_total", &[], read());
        }
        out
    }
}

fn label_or(value: &str, fallback: &str) -> String {
    if value.is_empty() { fallback.to_string() } else { value.to_string() }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn sample(out: &mut String, name: &str, label_pairs: &[(&str, &str)], value: u64) {
    out.push_str(name);
    labels(out, label_pairs);
    let _ = writeln!(out, " {value}");
}

/// Milliseconds as seconds, without float noise (`250` → `0.25`, `1000` → `1`).
fn seconds(ms: u64) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

fn histogram(out: &mut String, name: &str, help: &str, series: &BTreeMap<String, Histogram>) {
    header(out, name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (backend, h) in series {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = h.bounds.get(i).map(|&b| seconds(b)).unwrap_or_else(|| "+Inf".into());
            sample(out, &bucket, &[("backend", backend), ("le", &le)], cumulative);
        }
        out.push_str(name);
        out.push_str("_sum");
        labels(out, &[("backend", backend)]);
        let _ = writeln!(out, " {}", seconds(h.sum_ms));
        sample(out, &format!("{name}_count"), &[("backend", backend)], h.count);
    }
}

/// Serves `GET /metrics` and `GET /healthz` (200 `ok` when `ready` is true, else 503 `starting`) on
/// `addr` until the returned task is aborted. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::http::{StatusCode, header::CONTENT_TYPE as CT};
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("invalid setting METRICS_ADDR: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(CT, CONTENT_TYPE)], metrics.render()) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Acquire) {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics on /metrics, readiness on /healthz");
    Ok((bound, task))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_statement_count_is_read_when_rendered() {
        let metrics = Metrics::new();
        assert!(!metrics.render().contains("swapbot_db_statements_total"), "no database, no series");
        let count = Arc::new(std::sync::atomic::AtomicU64::new(7));
        let read = count.clone();
        metrics.count_db_statements(move || read.load(Ordering::Relaxed));
        assert!(metrics.render().contains("\nswapbot_db_statements_total 7\n"));
        count.store(12, Ordering::Relaxed);
        assert!(metrics.render().contains("\nswapbot_db_statements_total 12\n"));
    }
}
