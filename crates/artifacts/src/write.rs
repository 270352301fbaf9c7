//! Writing artifacts so a crash or a full disk never leaves a half file under a real name: data
//! goes to a temporary name in the destination directory, is fsynced, then renamed into place.
//!
//! Byte ranges of a source file (the extents of an ISO) are shared with the source where the
//! filesystem can (`FICLONERANGE` on btrfs, XFS, bcachefs: no time, no space) and they start on
//! a block boundary. Otherwise two threads copy them: one reads the source through the page cache
//! with sequential advice, the other writes with `O_DIRECT`. Direct writes go straight to the
//! disk, so no gigabytes of dirty pages pile up for the final fsync to flush, and a 3 GB squashfs
//! does not push the rest of the page cache out. On this project's bench disk that is 2.6-6x
//! xorriso plus sync and well ahead of `copy_file_range(2)` (bench/README.md). Where the
//! filesystem refuses `O_DIRECT`, `copy_file_range` is used (server-side copies on network
//! filesystems), falling back to read/write.
//!
//! A long copy stops cleanly when its [`Stop`] is requested (the binary does that from its
//! SIGINT and SIGTERM handlers; the library installs none), its temporary file removed; and every
//! write first removes the temporary files of its destination that a killed process left behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// Asks long copies to stop between chunks. Whoever owns the process's signals requests it (with
/// the signal's number, or any non-zero reason); a copy that sees it fails with
/// [`io::ErrorKind::Interrupted`] after removing its temporary file.
#[derive(Debug, Default)]
pub struct Stop(AtomicI32);

impl Stop {
    pub const fn new() -> Stop {
        Stop(AtomicI32::new(0))
    }

    /// Async-signal-safe: one atomic store.
    pub fn request(&self, reason: i32) {
        self.0.store(reason, Ordering::SeqCst);
    }

    pub fn requested(&self) -> Option<i32> {
        Some(self.0.load(Ordering::SeqCst)).filter(|&r| r != 0)
    }

    pub fn reset(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// What the copy loops call after each chunk: progress, and a chance to stop.
type Tick<'a> = dyn FnMut(u64) -> io::Result<()> + 'a;
use std::sync::mpsc;

use crate::extent::Extent;

/// Bytes per read and per direct write; four buffers are in flight (64 MiB).
const CHUNK: usize = 16 << 20;
const IN_FLIGHT: usize = 4;
/// `O_DIRECT` wants buffer addresses, file offsets and lengths aligned to the device's logical
/// block; 4 KiB covers every common one (and a refusal falls back to buffered writes).
const ALIGN: usize = 4096;

/// Copies `extents` of `src`, in order, into a new file at `dest`. `progress` is called with the
/// bytes copied so far. On any error, or when `stop` is requested, the temporary file is removed
/// and `dest` is untouched.
pub fn copy_extents_atomic(
    src: &File,
    extents: &[Extent],
    dest: &Path,
    stop: &Stop,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let progress = &mut |n| match stop.requested() {
        Some(_) => Err(io::Error::new(io::ErrorKind::Interrupted, "copy stopped")),
        None => {
            progress(n);
            Ok(())
        }
    };
    atomically(dest, 0o666, |out| {
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
        }
        if clone_extents(src, extents, out)? {
            return progress(extents.iter().map(|e| e.len).sum());
        }
        let direct = set_direct(out, true);
        if !direct && copy_in_kernel(src, extents, out, progress)? {
            return Ok(());
        }
        // Direct writes, or buffered ones where both O_DIRECT and copy_file_range are refused
        // (the pipeline then rewrites from the start).
        copy_direct(src, extents, out, CHUNK, direct, progress)
    })
}

/// Shares the extents' blocks with the source instead of copying them (`FICLONERANGE`: btrfs,
/// XFS, bcachefs), which takes no time and no space. Possible only on such a filesystem, with
/// source and destination on it, and when every extent starts on a block boundary: ISO extents
/// start on 2 KiB sectors, so on 4 KiB blocks about half of them do. A last partial block is
/// copied. False, with nothing written, when the filesystem says no.
fn clone_extents(src: &File, extents: &[Extent], out: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let block = out.metadata()?.blksize().max(1);
    let Some((_, rest)) = extents.split_last() else {
        return Ok(false);
    };
    if extents.iter().any(|e| e.offset % block != 0) || rest.iter().any(|e| e.len % block != 0) {
        return Ok(false);
    }
    let mut pos = 0u64;
    for e in extents {
        let whole = e.len - e.len % block;
        if whole > 0 {
            let range = libc::file_clone_range {
                src_fd: i64::from(src.as_raw_fd()),
                src_offset: e.offset,
                src_length: whole,
                dest_offset: pos,
            };
            // SAFETY: valid fds; the kernel reads `range` only during the call.
            if unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONERANGE, &range) } != 0 {
                // Not a filesystem that shares blocks (or not across these two files): undo
                // any partial sharing and copy instead.
                out.set_len(0)?;
                return Ok(false);
            }
        }
        if e.len > whole {
            let mut tail = vec![0u8; (e.len - whole) as usize];
            src.read_exact_at(&mut tail, e.offset + whole)?;
            out.write_all_at(&tail, pos + whole)?;
        }
        pos += e.len;
    }
    Ok(true)
}

/// Copies the concatenated `extents` of `src` to `out` from offset 0 with `copy_file_range`.
/// False if the kernel refuses it for these files.
fn copy_in_kernel(
    src: &File,
    extents: &[Extent],
    out: &File,
    progress: &mut Tick<'_>,
) -> io::Result<bool> {
    let mut done = 0u64;
    for e in extents {
        if !copy_range(src, e.offset, out, done, e.len, progress)? {
            return Ok(false);
        }
        done += e.len;
    }
    Ok(true)
}

/// Turns `O_DIRECT` on or off for `f`; false if the filesystem refuses it.
fn set_direct(f: &File, on: bool) -> bool {
    let fd = f.as_raw_fd();
    // SAFETY: valid fd; F_GETFL/F_SETFL only change status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

/// A heap buffer of `len` bytes starting at an `ALIGN`ed address, as `O_DIRECT` needs.
struct Aligned {
    mem: Vec<u8>,
    start: usize,
    len: usize,
    /// Bytes of data in it.
    filled: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let mem = vec![0u8; len + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Aligned {
            mem,
            start,
            len,
            filled: 0,
        }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// Copies the concatenated `extents` of `src` to `out` from offset 0, in buffers of `chunk`
/// bytes: a reader thread fills them, this thread writes them. With `direct` (`out` has
/// `O_DIRECT`), every write but the last starts and ends on a chunk boundary; the last is padded
/// with zeros to `ALIGN` and the file is then cut to its length. If the filesystem refuses a
/// direct write, the rest is written buffered.
fn copy_direct(
    src: &File,
    extents: &[Extent],
    out: &File,
    chunk: usize,
    direct: bool,
    progress: &mut Tick<'_>,
) -> io::Result<()> {
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let (full_tx, full_rx) = mpsc::sync_channel::<Aligned>(IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Aligned>();
    for _ in 0..IN_FLIGHT {
        let _ = free_tx.send(Aligned::new(chunk));
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> io::Result<()> {
            let mut parts = extents.iter().map(|e| (e.offset, e.len));
            let (mut off, mut left) = (0u64, 0u64);
            // A closed channel means the writer stopped (on an error it reports itself).
            while let Ok(mut b) = free_rx.recv() {
                let mut n = 0;
                while n < chunk {
                    if left == 0 {
                        match parts.next() {
                            Some(p) => (off, left) = p,
                            None => break,
                        }
                        continue;
                    }
                    let want = (chunk - n).min(left.min(usize::MAX as u64) as usize);
                    let got = src.read_at(&mut b.buf()[n..n + want], off)?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "source ended early (truncated?)",
                        ));
                    }
                    n += got;
                    off += got as u64;
                    left -= got as u64;
                }
                if n == 0 {
                    break;
                }
                b.filled = n;
                if full_tx.send(b).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let written = write_chunks(full_rx, free_tx, out, direct, progress);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reading thread of a copy panicked")));
        // The reader fails first when the source is short; the writer's error is then only
        // the closed channel, so the read error is the one to tell.
        read.and(written)
    })?;
    out.set_len(total)
}

/// The writing half of `copy_direct`; owns the channel ends so an error drops them and the
/// reader stops.
fn write_chunks(
    full: mpsc::Receiver<Aligned>,
    free: mpsc::Sender<Aligned>,
    out: &File,
    mut direct: bool,
    progress: &mut Tick<'_>,
) -> io::Result<()> {
    let mut pos = 0u64;
    for mut b in full {
        let n = b.filled;
        let padded = if direct { n.next_multiple_of(ALIGN) } else { n };
        b.buf()[n..padded].fill(0);
        match out.write_all_at(&b.buf()[..padded], pos) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                set_direct(out, false);
                out.write_all_at(&b.buf()[..n], pos)?;
            }
            r => r?,
        }
        pos += n as u64;
        progress(pos)?;
        let _ = free.send(b);
    }
    Ok(())
}

/// Writes `data` to `dest` atomically: a temporary file beside it (created with `mode`, never
/// through a symlink), fsynced, renamed over `dest`, the directory fsynced. A crash leaves the
/// old content or the new, never half of either.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    atomically(dest, mode, |mut out| out.write_all(data))
}

/// A small regular file's bytes, read never through a symlink (nor blocking on a FIFO planted
/// in its place); `None` for anything else: missing, not a regular file, over `max` bytes.
pub fn read_small(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes).ok()?;
    Some(bytes)
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
    clean_stale_temps(dest);
    let result = (|| {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Held while writing: this is how other processes tell a live temporary from a dead one.
        let _lock = crate::lock::Lock::on(out.try_clone()?)?;
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

/// Removes the temporary files of `dest` left by processes that are gone (killed mid-copy, or a
/// crash): those nobody holds a lock on. One younger than a few seconds is left alone, as its
/// writer may be between creating and locking it.
fn clean_stale_temps(dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix));
        if ours && stale(&e.path()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether a temporary file or directory was left by a writer that is gone: unlocked, and not
/// touched for a few seconds.
pub(crate) fn stale(path: &Path) -> bool {
    let old = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| {
            t.elapsed()
                .is_ok_and(|a| a > std::time::Duration::from_secs(5))
        });
    old && !crate::lock::held(path)
}

/// `.NAME.tmp-PID-RANDOM` beside `dest`: same filesystem, so the rename is atomic; hidden, so
/// nobody picks it up as the real thing; unique even among processes that share a PID.
fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", crate::lock::unique_suffix()))
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
/// total of this call plus `dst_off`. False if the kernel refuses (other filesystems, old
/// kernels): the caller copies another way.
fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    progress: &mut Tick<'_>,
) -> io::Result<bool> {
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
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => Ok(false),
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
        progress(doff as u64)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_extents_in_order_and_leaves_no_temp() {
        let dir = testkit::tempdir("write");
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
        copy_extents_atomic(&src, &extents, &dest, &Stop::new(), &mut |n| last = n).unwrap();
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
            &Stop::new(),
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
        write_atomic(&dir.join("small"), b"hello", 0o644).unwrap();
        assert_eq!(std::fs::read(dir.join("small")).unwrap(), b"hello");
    }

    /// Temporary files of writers that are gone (unlocked) are removed by the next write of the
    /// same name; a live writer's (locked) are left alone, and so are other names' temporaries
    /// and one just created.
    #[test]
    fn stale_temporaries_of_dead_writers_go() {
        let dir = testkit::tempdir("stale");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for n in [".out.tmp-1-dead", ".out.tmp-1-live", ".other.tmp-1-dead"] {
            std::fs::write(dir.join(n), b"half").unwrap();
            File::options()
                .write(true)
                .open(dir.join(n))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::fs::write(dir.join(".out.tmp-1-fresh"), b"x").unwrap();
        let live = File::open(dir.join(".out.tmp-1-live")).unwrap();
        let _held = crate::lock::Lock::on(live).unwrap().unwrap();
        write_atomic(&dir.join("out"), b"whole", 0o644).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".other.tmp-1-dead",
                ".out.tmp-1-fresh",
                ".out.tmp-1-live",
                "out"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Small chunks so buffers end mid-extent and extents end mid-buffer, at offsets that are not
    /// block-aligned (ISO extents start on 2 KiB sectors): direct and buffered writes give the
    /// same bytes, and the padding of the last direct write is cut off.
    #[test]
    fn chunked_copies_cross_extents() {
        let dir = testkit::tempdir("chunks");
        let src_path = dir.join("src");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let extents = [
            Extent {
                offset: 2048,
                len: 20_000,
            },
            Extent {
                offset: 100_000,
                len: 8192,
            },
            Extent {
                offset: 6144,
                len: 0,
            },
            Extent {
                offset: 150_001,
                len: 100_003,
            },
        ];
        let want: Vec<u8> = extents
            .iter()
            .flat_map(|e| data[e.offset as usize..(e.offset + e.len) as usize].to_vec())
            .collect();
        for (i, direct) in [true, false].into_iter().enumerate() {
            let out_path = dir.join(format!("out{i}"));
            let out = File::create(&out_path).unwrap();
            let direct = set_direct(&out, direct) && direct;
            let mut seen = Vec::new();
            copy_direct(&src, &extents, &out, 8192, direct, &mut |n| {
                seen.push(n);
                Ok(())
            })
            .unwrap();
            drop(out);
            assert_eq!(std::fs::read(&out_path).unwrap(), want, "direct={direct}");
            assert_eq!(seen.last(), Some(&(want.len() as u64)));
            assert!(seen.windows(2).all(|w| w[0] < w[1]));
        }
        let out_path = dir.join("in-kernel");
        let out = File::create(&out_path).unwrap();
        assert!(copy_in_kernel(&src, &extents, &out, &mut |_| Ok(())).unwrap());
        assert_eq!(std::fs::read(&out_path).unwrap(), want);
        // A source shorter than its extents says so.
        let out = File::create(dir.join("short")).unwrap();
        let past = [Extent {
            offset: 290_000,
            len: 50_000,
        }];
        let err = copy_direct(&src, &past, &out, 8192, false, &mut |_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
