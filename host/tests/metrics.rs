//! The Prometheus endpoint: counters and histogram buckets of recorded turns, plugin swaps and info,
//! and the readiness probe.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use swapbot::telemetry::metrics::{Metrics, TurnCounts, serve};
use swapbot::telemetry::turnlog::TurnRecord;

fn turn(backend: &str, latency_ms: u64, ttft_ms: Option<u64>, retries: u32, error_kind: Option<&str>) -> TurnRecord {
    TurnRecord {
        backend: backend.into(),
        outcome: if error_kind.is_some() { "error".into() } else { "ok".into() },
        error_kind: error_kind.map(String::from),
        latency_ms,
        ttft_ms,
        retries,
        kb_ms: 4,
        ..TurnRecord::default()
    }
}

/// The samples of an exposition, by series name with labels exactly as rendered.
fn samples(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (series.to_string(), value.to_string())
        })
        .collect()
}

fn record_sample(metrics: &Metrics) {
    // responses: 4 turns: 80 ms, 400 ms, 1.5 s, 45 s (an error: timeout after 2 retries).
    metrics.record_turn(&turn("responses", 80, Some(40), 0, None));
    metrics.record_turn(&turn("responses", 400, Some(120), 1, None));
    metrics.record_turn(&turn("responses", 1_500, Some(600), 0, None));
    metrics.record_turn(&turn("responses", 45_000, None, 2, Some("timeout")));
    // assistants: 2 turns, one failed without a kind.
    metrics.record_turn(&turn("assistants", 3_000, None, 0, None));
    metrics.record_turn(&turn("assistants", 250_000, None, 0, Some("")));
    metrics.plugin_swap("responses", true);
    metrics.plugin_swap("responses", false);
    metrics.plugin_swap("responses", true);
    metrics.set_plugin_info("responses", "0.1.0", "aaaa");
    metrics.set_plugin_info("responses", "0.2.0", "bbbb");
    metrics.set_plugin_info("assistants", "1.0.0", "cccc");
}

#[test]
fn render_counts_turns_and_fills_buckets() {
    let metrics = Metrics::new();
    record_sample(&metrics);
    let text = metrics.render();
    let s = samples(&text);
    let get = |k: &str| s.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}")).as_str();

    assert_eq!(get(r#"swapbot_turns_total{backend="responses",outcome="ok"}"#), "3");
    assert_eq!(get(r#"swapbot_turns_total{backend="responses",outcome="error"}"#), "1");
    assert_eq!(get(r#"swapbot_turns_total{backend="assistants",outcome="ok"}"#), "1");
    assert_eq!(get(r#"swapbot_turns_total{backend="assistants",outcome="error"}"#), "1");
    assert_eq!(get(r#"swapbot_turn_errors_total{backend="responses",kind="timeout"}"#), "1");
    assert_eq!(get(r#"swapbot_turn_errors_total{backend="assistants",kind="unknown"}"#), "1");
    assert_eq!(get(r#"swapbot_retries_total{backend="responses"}"#), "3");
    assert_eq!(get(r#"swapbot_retries_total{backend="assistants"}"#), "0");

    // Latency buckets are cumulative, bounds in seconds.
    let lat = |le: &str| get(&format!(r#"swapbot_turn_latency_seconds_bucket{{backend="responses",le="{le}"}}"#)).to_string();
    assert_eq!(lat("0.1"), "1");
    assert_eq!(lat("0.25"), "1");
    assert_eq!(lat("0.5"), "2");
    assert_eq!(lat("1"), "2");
    assert_eq!(lat("2"), "3");
    assert_eq!(lat("30"), "3");
    assert_eq!(lat("60"), "4");
    assert_eq!(lat("+Inf"), "4");
    assert_eq!(get(r#"swapbot_turn_latency_seconds_count{backend="responses"}"#), "4");
    assert_eq!(get(r#"swapbot_turn_latency_seconds_sum{backend="responses"}"#), "46.98");
    // 250 s is above every bound: only +Inf holds it.
    assert_eq!(get(r#"swapbot_turn_latency_seconds_bucket{backend="assistants",le="120"}"#), "1");
    assert_eq!(get(r#"swapbot_turn_latency_seconds_bucket{backend="assistants",le="+Inf"}"#), "2");

    // ttft: only the turns that have one.
    let ttft = |le: &str| {
        get(&format!(r#"swapbot_time_to_first_token_seconds_bucket{{backend="responses",le="{le}"}}"#)).to_string()
    };
    assert_eq!(ttft("0.05"), "1");
    assert_eq!(ttft("0.1"), "1");
    assert_eq!(ttft("0.25"), "2");
    assert_eq!(ttft("0.5"), "2");
    assert_eq!(ttft("0.75"), "3");
    assert_eq!(ttft("+Inf"), "3");
    assert_eq!(get(r#"swapbot_time_to_first_token_seconds_count{backend="responses"}"#), "3");
    assert_eq!(get(r#"swapbot_time_to_first_token_seconds_sum{backend="responses"}"#), "0.76");
    assert!(!text.contains(r#"swapbot_time_to_first_token_seconds_count{backend="assistants"}"#));

    // kb latency: 4 ms each turn.
    assert_eq!(get(r#"swapbot_kb_latency_seconds_bucket{backend="responses",le="0.002"}"#), "0");
    assert_eq!(get(r#"swapbot_kb_latency_seconds_bucket{backend="responses",le="0.005"}"#), "4");
    assert_eq!(get(r#"swapbot_kb_latency_seconds_sum{backend="responses"}"#), "0.016");

    assert_eq!(get(r#"swapbot_plugin_swaps_total{backend="responses",result="swapped"}"#), "2");
    assert_eq!(get(r#"swapbot_plugin_swaps_total{backend="responses",result="refused"}"#), "1");
    assert_eq!(get(r#"swapbot_plugin_info{backend="responses",version="0.2.0",sha256="bbbb"}"#), "1");
    assert_eq!(get(r#"swapbot_plugin_info{backend="assistants",version="1.0.0",sha256="cccc"}"#), "1");
    assert!(!text.contains("aaaa"), "the replaced module's info series is gone");

    // Label values are escaped; seconds are exact decimals.
    let odd = Metrics::new();
    odd.set_plugin_info("responses", "1.0 \"beta\"\\x\ny", "dd");
    odd.record_turn(&turn("responses", 7_501, Some(1), 0, None));
    let odd_text = odd.render();
    assert!(odd_text.contains(r#"version="1.0 \"beta\"\\x\ny""#), "{odd_text}");
    assert!(odd_text.contains("swapbot_turn_latency_seconds_sum{backend=\"responses\"} 7.501\n"), "{odd_text}");
    assert!(odd_text.contains("swapbot_time_to_first_token_seconds_sum{backend=\"responses\"} 0.001\n"), "{odd_text}");

    // Every family is declared once, with a type.
    for family in [
        "swapbot_turns_total counter",
        "swapbot_turn_latency_seconds histogram",
        "swapbot_time_to_first_token_seconds histogram",
        "swapbot_kb_latency_seconds histogram",
        "swapbot_retries_total counter",
        "swapbot_plugin_swaps_total counter",
        "swapbot_plugin_info gauge",
    ] {
        assert_eq!(text.matches(&format!("# TYPE {family}\n")).count(), 1, "{family}");
    }

    assert_eq!(
        metrics.turn_counts(),
        vec![
            TurnCounts { backend: "assistants".into(), turns: 2, errors: 1 },
            TurnCounts { backend: "responses".into(), turns: 4, errors: 1 },
        ]
    );
    assert_eq!(metrics.turn_counts()[1].error_rate(), 0.25);
}

#[tokio::test]
async fn the_endpoint_serves_metrics_and_readiness() {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), ready.clone()).await.unwrap();
    assert_ne!(addr.port(), 0);
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    ready.store(true, Ordering::Release);
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap().trim(), "ok");

    // Recorded after the server started: the endpoint shows live figures.
    record_sample(&metrics);
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.unwrap();
    assert_eq!(text, metrics.render());
    let s = samples(&text);
    assert_eq!(s[r#"swapbot_turns_total{backend="responses",outcome="ok"}"#], "3");
    assert_eq!(s[r#"swapbot_turn_latency_seconds_bucket{backend="responses",le="2"}"#], "3");
    assert_eq!(s[r#"swapbot_plugin_swaps_total{backend="responses",result="refused"}"#], "1");

    metrics.record_turn(&turn("responses", 10, Some(5), 0, None));
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(samples(&text)[r#"swapbot_turns_total{backend="responses",outcome="ok"}"#], "4");

    let missing = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // A busy address is an error naming the setting, not a panic.
    let err = serve(addr, metrics.clone(), ready.clone()).await.unwrap_err();
    assert!(err.to_string().contains("METRICS_ADDR"), "{err}");
    task.abort();
}
