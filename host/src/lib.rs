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

pub mod app;
pub mod calendar;
pub mod config;
pub mod dev;
pub mod frontend;
pub mod registry;
pub mod report;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod telemetry;
pub mod turn;
pub mod usage;

/// The allocator of the `swapbot` binary (and of the bench, so it measures the same): glibc's
/// per-thread arenas grew and shrank with `mprotect` on every burst of turns, and its
/// malloc/free were a tenth of a turn's CPU.
pub type Allocator = mimalloc::MiMalloc;
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` of mimalloc's `mi_option_t` (libmimalloc-sys names no constant).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the allocator's options before its first allocation, so it must run before `main`
/// (Rust's runtime allocates before `main` starts): each binary with [`Allocator`] puts it in
/// `.init_array` (see `host/src/main.rs`).
///
/// mimalloc then commits its arenas on demand rather than up front. With eager commit (its
/// default where the kernel overcommits) the memory it purged stayed resident: an idle bot held
/// ~4 MiB more (15.5 against 11.2 MiB of anonymous memory; CPU per turn unchanged in `make bench`).
pub extern "C" fn configure_allocator() {
    // Safety: sets one of mimalloc's global options; no thread but this one exists yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// Called first thing in `main`: no transparent huge pages for this process. The allocator's
/// fresh pages and the plugins' linear memories are touched a few KiB at a time, and with THP
/// every first touch zeroed a whole 2 MiB page: a tenth of a saturated turn's CPU.
pub fn tune_process_memory() {
    #[cfg(target_os = "linux")]
    // Safety: PR_SET_THP_DISABLE only sets a flag of this process's memory map.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
