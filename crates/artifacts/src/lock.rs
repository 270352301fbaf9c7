//! Advisory locks (`flock(2)`) and unique names for what several Daybreak processes may write
//! side by side: two servers sharing one state directory (replicas on one volume), a build and
//! a `cache prune`, containers whose processes are all PID 1.
//!
//! A process ID cannot tell a live writer from a dead one across PID namespaces, and it is not
//! unique there either. A lock can and is: the kernel drops it when its holder dies, however
//! that happens, so "nobody holds the lock" is exactly "whoever wrote this is gone".

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// An exclusive lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn flock(f: &File, wait: bool) -> io::Result<bool> {
    let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl Lock {
    /// Takes the lock at `path` (created if missing), waiting for its holder if there is one;
    /// `waiting` is called once before waiting.
    pub fn exclusive(path: &Path, waiting: impl FnOnce()) -> io::Result<Lock> {
        let file = open_lock_file(path)?;
        if !flock(&file, false)? {
            waiting();
            flock(&file, true)?;
        }
        Ok(Lock { _file: file })
    }

    /// Takes the lock if nobody holds it.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<Lock>> {
        let file = open_lock_file(path)?;
        Ok(flock(&file, false)?.then_some(Lock { _file: file }))
    }

    /// Locks an open file itself (a temporary being written).
    pub fn on(file: File) -> io::Result<Option<Lock>> {
        Ok(flock(&file, false)?.then_some(Lock { _file: file }))
    }
}

/// Whether something at `path` (a file or a directory) is locked by someone: a writer at work.
pub(crate) fn held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => !flock(&f, false).unwrap_or(false),
        Err(_) => false,
    }
}

/// `n` random bytes from the kernel, in hex.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), n - got, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += r as usize;
    }
    Ok(crate::digest::hex(&buf))
}

/// A suffix no other process, in this or any PID namespace, will pick: `PID-RANDOM`.
pub(crate) fn unique_suffix() -> String {
    let r = random_hex(6).unwrap_or_else(|_| {
        format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )
    });
    format!("{}-{r}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let d = testkit::tempdir("lock");
        let p = d.join("l");
        let a = Lock::exclusive(&p, || panic!("free")).unwrap();
        assert!(Lock::try_exclusive(&p).unwrap().is_none());
        assert!(held(&p));
        drop(a);
        assert!(!held(&p));
        assert!(Lock::try_exclusive(&p).unwrap().is_some());
        assert_ne!(unique_suffix(), unique_suffix());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
