//! Link options of the `swapbot` binary.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Relative relocations packed (DT_RELR): the 1.3 MiB of `.rela.dyn` the loader reads at
    // every start, and keeps resident, shrink to a few KiB. Needs glibc 2.36 where it runs; the
    // binary is built where it runs, so the build machine's glibc decides.
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && glibc_at_least(2, 36) {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// From `getconf GNU_LIBC_VERSION` ("glibc 2.36"); `false` when it cannot tell.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = std::process::Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.split_whitespace().nth(1) else { return false };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
