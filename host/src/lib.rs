//! swapbot: a Telegram assistant bot whose backends are hot-swappable WebAssembly plugins.
//!
//! Dependencies run one way, top to bottom:
//! - `frontend`: Telegram and the terminal chat, feeding `turn`.
//! - `turn`: the pipeline of one user turn (budget, session, knowledge base, plugin call, retry
//!   policy, durable ids and history, the user's reply).
//! - `routing`: which backend answers a user (default, canary, test users; `rollout.json`, `/rollout`).
//! - `registry`: the set of loaded backends (directory watch, compile cache, self-test gate).
//! - `runtime`: the wasm engine, limits, host imports, one bindings module per contract version.
//! - `state`: id maps, history, atomic files. `usage`: tokens, prices, budgets.
//! - `config`: environment and `swapbot.toml`. `telemetry`: logs, metrics, the turn log.
//! - `dev`: the harness CLI and recording, for plugin authors.
//! - `memory`: the process's allocator and how it gives memory back. `descriptors`: its open-file
//!   limit.

pub mod app;
pub mod calendar;
pub mod config;
pub mod descriptors;
pub mod dev;
pub mod frontend;
pub mod memory;
pub mod registry;
pub mod report;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod telemetry;
pub mod turn;
pub mod usage;

pub use memory::{ALLOCATOR, Allocator, configure_allocator, tune_process_memory};
