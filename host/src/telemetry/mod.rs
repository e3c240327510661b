//! Logging to stderr and to rotated files under `LOG_DIR`, with every secret redacted from
//! every line, whatever produced it (our code, teloxide, reqwest, a plugin's log import).

pub mod metrics;
pub mod turnlog;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Replaces each secret in `text` with `<redacted>`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

/// A `MakeWriter` whose writers buffer one event and redact it before passing it on.
#[derive(Clone)]
pub struct Redacting<M> {
    inner: M,
    secrets: Arc<Vec<String>>,
}

impl<M> Redacting<M> {
    pub fn new(inner: M, secrets: Vec<String>) -> Self {
        Self { inner, secrets: Arc::new(secrets) }
    }
}

pub struct RedactingWriter<W: Write> {
    inner: W,
    secrets: Arc<Vec<String>>,
    buffer: Vec<u8>,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            let text = String::from_utf8_lossy(&self.buffer).into_owned();
            self.buffer.clear();
            self.inner.write_all(redact(&text, &self.secrets).as_bytes())?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter { inner: self.inner.make_writer(), secrets: self.secrets.clone(), buffer: Vec::new() }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info).
/// The returned guard flushes the file log on drop.
/// `quiet_stderr` keeps stderr to warnings unless `RUST_LOG` says otherwise (the terminal chat
/// shares the screen with the log); the files always get the full level.
pub fn init(log_dir: Option<&Path>, secrets: Vec<String>, quiet_stderr: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::Layer;
    let level = |quiet: bool| {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(if quiet { "warn" } else { "info" }))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(Redacting::new(std::io::stderr, secrets.clone()))
        .with_target(false)
        .with_filter(level(quiet_stderr));
    let (file_layer, guard) = match log_dir.and_then(|dir| {
        std::fs::create_dir_all(dir).ok()?;
        tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("swapbot")
            .filename_suffix("log")
            .max_log_files(14)
            .build(dir)
            .ok()
    }) {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            // JSON lines for machines; a field formatter of its own also keeps the two layers from
            // appending the same span fields twice.
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(Redacting::new(writer, secrets))
                .with_filter(level(false));
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(stderr).with(file_layer).try_init();
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_everywhere_in_a_line() {
        let secrets = vec!["123456:ABCsecret".to_string(), "ABCsecret".to_string(), "sk-test-999999".into()];
        let line = "GET https://api.telegram.org/bot123456:ABCsecret/getMe failed; key sk-test-999999; tail ABCsecret";
        let out = redact(line, &secrets);
        assert!(!out.contains("ABCsecret") && !out.contains("sk-test-999999"), "{out}");
        assert!(out.contains("/bot<redacted>/getMe"));
    }
}
