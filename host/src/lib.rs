//! swapbot: a Telegram assistant bot whose OpenAI backend is a hot-swappable WebAssembly plugin.

pub mod app;
pub mod calendar;
pub mod config;
pub mod harness;
pub mod metrics;
pub mod plugin;
pub mod plugins;
pub mod report;
pub mod router;
pub mod service;
pub mod session;
pub mod storage;
pub mod telemetry;
pub mod terminal;
pub mod turnlog;
pub mod usage;
pub mod rollout;
pub mod frontend;
