//! Ctrl-C and SIGTERM during a long copy (`daybreak netboot` extracting 3 GB): the copy stops at
//! its next chunk and its temporary file is removed, so a Ctrl-C leaves no hidden gigabytes
//! behind, and the command exits as shells expect (130, 143). The process owns its signals, so
//! this lives in the binary: the library only watches the [`Stop`] it is given.

use artifacts::Stop;

/// What long copies watch; set by the handlers below.
pub static STOP: Stop = Stop::new();

extern "C" fn note_signal(sig: libc::c_int) {
    STOP.request(sig);
}

/// The signal that stopped the last copy, if one did.
pub fn interrupted() -> Option<i32> {
    STOP.requested()
}

/// While alive, SIGINT and SIGTERM do not kill the process but request [`STOP`]. The handlers
/// are one-shot (`SA_RESETHAND`): a second signal kills as usual. A signal the parent set to be
/// ignored (nohup, a background job) stays ignored.
pub struct Guard {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl Guard {
    pub fn new() -> Guard {
        STOP.reset();
        let mut old = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which
            // is async-signal-safe; the previous action is kept and restored on drop.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as usize;
                act.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut prev) != 0
                    || prev.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                if libc::sigaction(sig, &act, std::ptr::null_mut()) == 0 {
                    old.push((sig, prev));
                }
            }
        }
        Guard { old }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restores the action saved in `new`.
            unsafe {
                libc::sigaction(*sig, prev, std::ptr::null_mut());
            }
        }
    }
}

/// The signal's name for messages.
pub fn name(sig: i32) -> &'static str {
    if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, in order: signals are process-wide, and SIGINT is raised only while a handler
    /// or SIG_IGN is in place, so the test process itself is never at risk.
    #[test]
    fn signals_request_a_stop_only_while_guarded_and_ignored_ones_stay_ignored() {
        // SAFETY: signal dispositions of this test process; raise targets this thread.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            let g = Guard::new();
            libc::raise(libc::SIGINT);
            assert_eq!(interrupted(), Some(libc::SIGINT));
            drop(g);
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            let g = Guard::new();
            assert_eq!(interrupted(), None, "a new guard starts clear");
            libc::raise(libc::SIGINT);
            assert_eq!(interrupted(), None, "an ignored SIGINT stays ignored");
            drop(g);
        }
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
    }
}
