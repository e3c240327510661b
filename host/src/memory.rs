//! The process's memory: the allocator, its options, and giving memory back after a plugin loads.

/// The allocator of the `swapbot` binary (and of the bench, so it measures the same): glibc's
/// per-thread arenas grew and shrank with `mprotect` on every burst of turns, and its
/// malloc/free were a tenth of a turn's CPU.
pub type Allocator = mimalloc::MiMalloc;
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

// Indices in mimalloc 3's `mi_option_t` (the same in mimalloc 2); libmimalloc-sys names neither.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

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

/// While a plugin compiles or loads, the heap it frees goes back to the system at once.
/// Cranelift allocates tens of MiB on its worker threads, and an allocator keeps what they freed
/// for later (mimalloc in their idle threads' heaps, glibc in its arenas): a bot that compiled
/// its plugins in-process at start idled at 48 MiB (glibc) or 67 MiB (mimalloc) resident,
/// against ~30 MiB when it loaded them from the compile cache. Loading reads and frees a MiB or so per
/// plugin. Rare (a load, not a turn), so the purges cost nothing that counts.
pub struct PurgeWhileLoading {
    delay: std::ffi::c_long,
}

impl PurgeWhileLoading {
    pub fn start() -> Self {
        use libmimalloc_sys as mi;
        // Safety: reads and sets one of mimalloc's global options.
        let delay = unsafe { mi::mi_option_get(MI_OPTION_PURGE_DELAY) };
        unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
        Self { delay }
    }
}

impl Drop for PurgeWhileLoading {
    fn drop(&mut self) {
        use libmimalloc_sys as mi;
        // Safety: collects this thread's heap and restores the option read in `start`.
        unsafe {
            mi::mi_collect(true);
            mi::mi_option_set(MI_OPTION_PURGE_DELAY, self.delay);
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // Safety: malloc_trim only returns unused pages of glibc's heap (the tests' allocator,
        // and C code's) to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
