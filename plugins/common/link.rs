//! The build script of every backend plugin (`build = "../common/link.rs"`).
//!
//! A turn's instance starts with linear memory enough for the whole turn. Memory a turn grows
//! costs an `mprotect` when it grows and another when the pooled slot is reset for the next
//! turn, each a TLB shootdown on every core; untouched initial memory costs nothing (the
//! host's pool only rewrites the pages a turn dirtied).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=--initial-memory={}", 4 << 20);
    }
}
