//! `swapbot-sandbox --port N [--api-key K] [--ttft-ms N] [--token-interval-ms N] [--run-steps N] [--assistants-gone]
//! [--context-window N] [--model-window MODEL=N]… [--cache-min-tokens N] [--cache-step-tokens N] [--min-compact-threshold N]`
//!
//! Prints the two `export` lines to paste, then serves until Ctrl-C (or SIGTERM).

use std::time::Duration;

use swapbot_sandbox::{Sandbox, SandboxConfig};

const USAGE: &str = "usage: swapbot-sandbox [--port N] [--api-key K] [--ttft-ms N] [--token-interval-ms N] [--run-steps N] [--assistants-gone] \
[--context-window N] [--model-window MODEL=N]... [--cache-min-tokens N] [--cache-step-tokens N] [--min-compact-threshold N]";

fn parse() -> Result<(SandboxConfig, u16), String> {
    let mut cfg = SandboxConfig::default();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{what} needs a value\n{USAGE}"))
        };
        let num = |s: String, what: &str| -> Result<u64, String> { s.parse::<u64>().map_err(|_| format!("{what}: not a number: {s}")) };
        match name.as_str() {
            "--port" | "-p" => port = num(value("--port")?, "--port")?.try_into().map_err(|_| "--port: out of range".to_string())?,
            "--api-key" => cfg.api_key = Some(value("--api-key")?),
            "--ttft-ms" => cfg.time_to_first_token = Duration::from_millis(num(value("--ttft-ms")?, "--ttft-ms")?),
            "--token-interval-ms" => cfg.token_interval = Duration::from_millis(num(value("--token-interval-ms")?, "--token-interval-ms")?),
            "--run-steps" => cfg.run_steps = num(value("--run-steps")?, "--run-steps")? as u32,
            "--assistants-gone" => cfg.assistants_gone = true,
            "--context-window" => cfg.context_window = Some(num(value("--context-window")?, "--context-window")?),
            "--model-window" => {
                let v = value("--model-window")?;
                let (m, n) = v.rsplit_once('=').ok_or_else(|| format!("--model-window: expected MODEL=N, got {v}"))?;
                cfg.model_context_windows.push((m.to_string(), num(n.to_string(), "--model-window")?));
            }
            "--cache-min-tokens" => cfg.cache_min_tokens = num(value("--cache-min-tokens")?, "--cache-min-tokens")?,
            "--cache-step-tokens" => cfg.cache_step_tokens = num(value("--cache-step-tokens")?, "--cache-step-tokens")?.max(1),
            "--min-compact-threshold" => cfg.min_compact_threshold = num(value("--min-compact-threshold")?, "--min-compact-threshold")?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument: {other}\n{USAGE}")),
        }
    }
    Ok((cfg, port))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cfg, port) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let key = cfg.api_key.clone().unwrap_or_else(|| "sk-sandbox".to_string());
    let sb = Sandbox::start_on(cfg, port).await?;
    println!("export OPENAI_BASE_URL={}", sb.base_url());
    println!("export OPENAI_API_KEY={key}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await?;
    sb.shutdown().await;
    Ok(())
}
