//! The process's file descriptors. Sockets to the Bot API and to OpenAI grow with the users in
//! flight, and the history journal keeps user files open between their appends; both draw on
//! one soft limit, which is 1024 under systemd and most shells while the hard limit is far
//! higher. The bot raises its soft limit to the hard one at start (as Go's runtime does for
//! every program), and sizes what it keeps open from the limit it got.

/// Raises the soft limit on open files to the hard limit; returns the soft limit now in force
/// (the old one if it cannot be raised). Called first thing in `main`. Linux only: elsewhere a
/// hard limit may be "unlimited", which no soft limit can be set to.
pub fn raise_open_file_limit() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(limit) = nofile()
        && limit.rlim_cur < limit.rlim_max
    {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // Safety: sets this process's own limit from a local struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur as u64;
        }
    }
    open_file_limit()
}

/// The soft limit on open files in force now (1024 where it cannot be read).
pub fn open_file_limit() -> u64 {
    #[cfg(unix)]
    if let Some(limit) = nofile() {
        return limit.rlim_cur as u64;
    }
    1024
}

#[cfg(unix)]
fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: getrlimit fills a local struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// How many history files one journal may keep open. A bot has two (private chats, groups):
/// an eighth of the limit each leaves three quarters to sockets and everything else; within 16
/// and 4096 each (a few MiB of the kernel's memory).
pub fn history_files_kept() -> usize {
    (open_file_limit() / 8).clamp(16, 4096) as usize
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Puts the test process's own limit back however the test ends: while it is lowered, the
    /// other tests in this binary share it.
    struct Restore(libc::rlimit);

    impl Drop for Restore {
        fn drop(&mut self) {
            // Safety: sets this process's own limit from a local struct.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
        }
    }

    /// A bot started under a shell's or systemd's 1024 gets the hard limit, and the journal's
    /// share follows the limit it got.
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = nofile().expect("the open-file limit");
        let _restore = Restore(limit);
        let lowered = libc::rlimit { rlim_cur: limit.rlim_max.min(256), rlim_max: limit.rlim_max };
        // Safety: lowers this process's own soft limit from a local struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let hard = limit.rlim_max as u64;
        let lowered_share = history_files_kept();
        let raised = raise_open_file_limit();
        assert_eq!(lowered_share, (hard.min(256) / 8).max(16) as usize);
        assert_eq!(raised, hard);
        assert_eq!(open_file_limit(), hard);
        assert_eq!(history_files_kept(), (hard / 8).clamp(16, 4096) as usize);
    }
}
