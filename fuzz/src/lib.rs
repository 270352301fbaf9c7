//! What the fuzz targets share: an anonymous in-memory file (targets that read files by path,
//! as the ISO reader does, get one per input without touching the disk).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

pub fn memfile() -> Option<File> {
    // SAFETY: a valid NUL-terminated name; the new fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

pub fn path_of(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}
