//! Writing artifacts so a crash or a full disk never leaves a half file under a real name: data
//! goes to a temporary name in the destination directory, is fsynced, then renamed into place.
//! Byte ranges of a source file are copied with `copy_file_range(2)` (in-kernel, and reflinks on
//! filesystems that support them), falling back to read/write where the kernel says no.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::iso::Extent;

/// Copies `extents` of `src`, in order, into a new file at `dest`. `progress` is called with the
/// bytes copied so far. On any error the temporary file is removed and `dest` is untouched.
pub fn copy_extents_atomic(
    src: &File,
    extents: &[Extent],
    dest: &Path,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    atomically(dest, 0o666, |out| {
        let mut done = 0u64;
        for e in extents {
            // One long sequential read: let the kernel read ahead further.
            // SAFETY: valid fd; advice only.
            unsafe {
                libc::posix_fadvise(
                    src.as_raw_fd(),
                    e.offset as i64,
                    e.len as i64,
                    libc::POSIX_FADV_SEQUENTIAL,
                );
            }
            copy_range(src, e.offset, out, done, e.len, &mut |n| progress(n))?;
            done += e.len;
        }
        Ok(())
    })
}

/// Writes `data` to `dest` atomically.
pub fn write_atomic(dest: &Path, data: &[u8]) -> io::Result<()> {
    atomically(dest, 0o666, |mut out| out.write_all(data))
}

/// Writes `data` to `dest` atomically, readable by its owner only from the first byte on (for
/// secrets: the cloud-config).
pub fn write_private(dest: &Path, data: &[u8]) -> io::Result<()> {
    atomically(dest, 0o600, |mut out| out.write_all(data))
}

/// Puts a hard link to `src` (a read-only store file) at `dest`, replacing what was there, if
/// both are on one filesystem. False when that is not possible: the caller copies instead.
pub fn link_atomic(src: &Path, dest: &Path) -> bool {
    let tmp = temp_name(dest);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        return false;
    }
    if std::fs::rename(&tmp, dest).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return false;
    }
    sync_parent(dest);
    true
}

/// Runs `fill` on a new temporary file beside `dest`, then fsyncs it and renames it to `dest`
/// (and fsyncs the directory, so the name survives a crash too). On error the temporary file goes.
fn atomically(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_name(dest);
    let result = (|| {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        sync_parent(dest);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.tmp-PID` beside `dest`: same filesystem, so the rename is atomic; hidden, so nobody
/// picks it up as the real thing.
fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir);
    }
}

/// Fsyncs a directory (its entries), best effort.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`; `progress` gets the running
/// total of this call plus `dst_off`.
fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let (mut so, mut doff, mut left) = (src_off as i64, dst_off as i64, len);
    while left > 0 {
        let chunk = left.min(64 << 20) as usize;
        // SAFETY: valid fds; the offset pointers are live locals.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut so,
                dst.as_raw_fd(),
                &mut doff,
                chunk,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => {
                    copy_plain(src, so as u64, dst, doff as u64, left, progress)
                }
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source ended early (truncated?)",
            ));
        }
        left -= n as u64;
        progress(doff as u64);
    }
    Ok(())
}

fn copy_plain(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    mut left: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], src_off)?;
        dst.write_all_at(&buf[..n], dst_off)?;
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
        progress(dst_off);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_extents_in_order_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("daybreak-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src_path = dir.join("src");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let dest = dir.join("out");
        let mut last = 0;
        let extents = [
            Extent {
                offset: 50_000,
                len: 10_000,
            },
            Extent {
                offset: 10,
                len: 20,
            },
        ];
        copy_extents_atomic(&src, &extents, &dest, &mut |n| last = n).unwrap();
        let got = std::fs::read(&dest).unwrap();
        assert_eq!(&got[..10_000], &data[50_000..60_000]);
        assert_eq!(&got[10_000..], &data[10..30]);
        assert_eq!(last, 10_020);
        // Reading past the end fails and leaves neither the destination nor a temp file.
        let dest2 = dir.join("out2");
        let err = copy_extents_atomic(
            &src,
            &[Extent {
                offset: 99_000,
                len: 5_000,
            }],
            &dest2,
            &mut |_| {},
        );
        assert!(err.is_err());
        assert!(!dest2.exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        write_atomic(&dir.join("small"), b"hello").unwrap();
        assert_eq!(std::fs::read(dir.join("small")).unwrap(), b"hello");
    }
}
