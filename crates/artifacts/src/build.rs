//! One image to the three netboot files, in one pass: layers stream through decompression and
//! the merge into the squashfs writer; the kernel and initrd are then read back out of the
//! squashfs just written (they are a few dozen MB), so no file is ever unpacked to disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::boot_files::{BootFilesError, BootPick};
use crate::oci::{LayerBlob, OciError};
use crate::rootfs::{Kind, MergeError, Meta, Tree, TreeError};
use squashfs::{AddError, Compression, Image, Writer};

/// squashfs block size: 1 MiB, as `mksquashfs -b 1024k` (what Kairos uses).
pub const BLOCK_SIZE: u32 = 1 << 20;

/// Most an image's layers may unpack to, all together (a Kairos image: about 3 GB).
pub const MAX_UNPACKED: u64 = 64 << 30;
/// Most a layer may grow when decompressed, past its first `RATIO_GRACE` bytes (64 MiB): real layers
/// grow 2 to 10 times, a decompression bomb a million.
pub const MAX_RATIO: u64 = 1000;
const RATIO_GRACE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("the image has no usable kernel or initrd: {0}")]
    Boot(#[from] BootFilesError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A file of a directory source that cannot go into the image.
    #[error("{path}: {why}")]
    Tree { path: PathBuf, why: TreeError },
    #[error("layer {layer}: {why}; the image is refused")]
    Limit { layer: String, why: String },
    /// The caller could not hand over layer `layer` (its download failed); the caller holds
    /// the reason and reports it.
    #[error("layer {layer} could not be fetched")]
    LayerUnavailable { layer: usize },
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a build produced, beside the files.
#[derive(Debug, Clone)]
pub struct Built {
    pub kernel_name: String,
    pub initrd_name: String,
    pub rootfs_bytes: u64,
    pub inodes: u32,
    /// Entries that carried extended attributes, which the squashfs does not keep.
    pub xattr_paths: Vec<String>,
}

/// The file names inside an artifact directory.
pub const KERNEL: &str = "kernel";
pub const INITRD: &str = "initrd";
pub const ROOTFS: &str = "rootfs.squashfs";
/// The image's own Secure Boot chain, when it carries one: its distribution's shim (signed by
/// Microsoft's UEFI CA) and its signed network GRUB, which trust its own signed kernels.
pub const SHIM: &str = "shimx64.efi";
pub const GRUB: &str = "grubx64.efi";

/// Where distributions keep their signed shim and network GRUB (Ubuntu's `shim-signed` and
/// `grub-efi-amd64-signed`, Debian's the same), most specific first.
const SHIM_PATHS: [&[u8]; 2] = [
    b"/usr/lib/shim/shimx64.efi.signed.latest",
    b"/usr/lib/shim/shimx64.efi.signed",
];
const GRUB_PATHS: [&[u8]; 1] = [b"/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"];

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn new_writer(dir: &Path, comp: Compression) -> Result<Writer, BuildError> {
    let path = dir.join(ROOTFS);
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_at(&path))?;
    Writer::new(f, comp, BLOCK_SIZE, threads()).map_err(io_at(&path))
}

/// Builds `dir/{kernel,initrd,rootfs.squashfs}` from `count` layers applied in order;
/// `layer(i)` hands over layer `i` once it is there (it may wait for a download, so later layers
/// can still be arriving while the first ones are merged). `progress(layer index, raw bytes of
/// that layer read so far)` is called as data flows.
pub fn from_layers(
    count: usize,
    layer: &mut dyn FnMut(usize) -> Result<LayerBlob, BuildError>,
    dir: &Path,
    comp: Compression,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Built, BuildError> {
    let mut writer = new_writer(dir, comp)?;
    let mut tree = Tree::new();
    let mut xattr_paths = Vec::new();
    let mut unpacked = 0u64;
    for i in 0..count {
        let blob = &layer(i)?;
        let mut layer = blob.open()?;
        let counter = layer.progress.clone();
        let mut last = 0u64;
        let mut out = 0u64;
        let mut exceeded: Option<String> = None;
        let mut tick = |n: usize| {
            let done = counter.borrow().bytes();
            if done >= last + (4 << 20) {
                last = done;
                progress(i, done);
            }
            out += n as u64;
            unpacked += n as u64;
            let why = if unpacked > MAX_UNPACKED {
                Some(format!(
                    "the image unpacks to more than {} GiB",
                    MAX_UNPACKED >> 30
                ))
            } else if out > RATIO_GRACE && out > done.saturating_mul(MAX_RATIO) {
                Some(format!(
                    "it decompresses to more than {MAX_RATIO} times its size (a decompression bomb)"
                ))
            } else {
                None
            };
            match why {
                Some(w) => {
                    exceeded = Some(w.clone());
                    Err(io::Error::other(w))
                }
                None => Ok(()),
            }
        };
        let tar = ProgressRead {
            inner: &mut layer.tar,
            tick: &mut tick,
        };
        let applied = tree.apply_layer(&mut writer, i as u32 + 1, &blob.name, tar);
        if let Some(why) = exceeded {
            return Err(BuildError::Limit {
                layer: blob.name.clone(),
                why,
            });
        }
        let stats = match applied {
            Ok(s) => s,
            Err(e @ MergeError::Corrupt { .. }) => {
                blob.check_digest()?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = layer.verify() {
            blob.check_digest()?;
            return Err(e.into());
        }
        progress(i, blob.size);
        xattr_paths.extend(stats.xattr_paths);
    }
    finish(writer, tree, dir, xattr_paths)
}

/// Builds the artifacts from a root filesystem directory, taken as it is on disk (owners,
/// modes, links; sockets are skipped).
pub fn from_dir(root: &Path, dir: &Path, comp: Compression) -> Result<Built, BuildError> {
    let meta = std::fs::symlink_metadata(root).map_err(io_at(root))?;
    if !meta.is_dir() {
        return Err(BuildError::Io {
            path: root.to_path_buf(),
            source: io::Error::other("not a directory"),
        });
    }
    let mut writer = new_writer(dir, comp)?;
    let mut tree = Tree::new();
    let mut seen: std::collections::HashMap<(u64, u64), Vec<u8>> = Default::default();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    let m = meta_from(&meta);
    tree.insert(b"", m, Kind::Dir(Default::default()))
        .map_err(|why| BuildError::Tree {
            path: root.to_path_buf(),
            why,
        })?;
    while let Some((path, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .map_err(io_at(&path))?
            .collect::<Result<_, _>>()
            .map_err(io_at(&path))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).map_err(io_at(&p))?;
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(
                e.file_name().as_os_str(),
            ));
            let ft = md.file_type();
            use std::os::unix::fs::FileTypeExt;
            let meta = meta_from(&md);
            let kind = if ft.is_dir() {
                stack.push((p.clone(), r.clone()));
                Kind::Dir(Default::default())
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).map_err(io_at(&p))?;
                Kind::Symlink(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec())
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = seen.get(&(md.dev(), md.ino())) {
                        tree.link(&r, first).map_err(|why| BuildError::Tree {
                            path: p.clone(),
                            why,
                        })?;
                        continue;
                    }
                    seen.insert((md.dev(), md.ino()), r.clone());
                }
                let mut f = File::open(&p).map_err(io_at(&p))?;
                let fd = writer.add_file(&mut f, md.len()).map_err(|e| match e {
                    AddError::Read(e) => BuildError::Io {
                        path: p.clone(),
                        source: e,
                    },
                    AddError::Write(e) => BuildError::Merge(MergeError::Write(e)),
                })?;
                Kind::File(fd)
            } else if ft.is_char_device() || ft.is_block_device() {
                let dev = (libc::major(md.rdev()), libc::minor(md.rdev()));
                if ft.is_char_device() {
                    Kind::Char(dev)
                } else {
                    Kind::Block(dev)
                }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                continue;
            };
            let id = tree
                .insert(&r, meta, kind)
                .map_err(|why| BuildError::Tree {
                    path: p.clone(),
                    why,
                })?;
            tree.set_xattrs(id, read_xattrs(&p));
        }
    }
    finish(writer, tree, dir, Vec::new())
}

/// The attributes of a file on disk that squashfs can hold, sorted by name.
fn read_xattrs(path: &Path) -> crate::rootfs::Xattrs {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !squashfs::xattr_supported(name) {
            continue;
        }
        let Ok(cn) = std::ffi::CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer of the given length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out
}

fn meta_from(md: &std::fs::Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime().clamp(0, u32::MAX as i64) as u32,
    }
}

fn finish(
    writer: Writer,
    tree: Tree,
    dir: &Path,
    xattr_paths: Vec<String>,
) -> Result<Built, BuildError> {
    let rootfs = dir.join(ROOTFS);
    let pick: BootPick = tree.boot_files().map_err(BuildError::Boot)?;
    let (summary, image) = writer.finish(&tree).map_err(io_at(&rootfs))?;
    write_out(&image, &tree, pick.kernel, &dir.join(KERNEL))?;
    unpack_arm64_kernel(&dir.join(KERNEL))?;
    write_out(&image, &tree, pick.initrd, &dir.join(INITRD))?;
    let find = |paths: &[&[u8]]| paths.iter().find_map(|p| tree.file_at(p));
    if let (Some(shim), Some(grub)) = (find(&SHIM_PATHS), find(&GRUB_PATHS)) {
        write_out(&image, &tree, shim, &dir.join(SHIM))?;
        write_out(&image, &tree, grub, &dir.join(GRUB))?;
    }
    image.into_file().sync_all().map_err(io_at(&rootfs))?;
    Ok(Built {
        kernel_name: pick.kernel_name,
        initrd_name: pick.initrd_name,
        rootfs_bytes: summary.bytes,
        inodes: summary.inodes,
        xattr_paths,
    })
}

/// The largest kernel unpacked from gzip.
const MAX_KERNEL: u64 = 512 << 20;

/// arm64 distributions ship `vmlinuz` gzip-compressed (Debian, Ubuntu before EFI zboot), which
/// neither UEFI nor iPXE can start: a gzip stream holding an arm64 `Image` (its magic at 0x38)
/// is stored unpacked, so the kernel served is the EFI application inside. Anything else (an
/// x86 bzImage, a corrupt or oversized stream) is left as it is.
fn unpack_arm64_kernel(path: &Path) -> Result<(), BuildError> {
    use io::{Read, Write};
    let mut magic = [0u8; 2];
    let is_gzip = File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    if !is_gzip {
        return Ok(());
    }
    // The magic first: a gzip bomb that is no arm64 kernel costs 64 bytes of output, and one
    // that is streams into the file, never whole into memory, and stops at MAX_KERNEL.
    let tmp = path.with_extension("unpacked");
    let unpacked = (|| -> io::Result<bool> {
        let f = io::BufReader::new(File::open(path)?);
        let mut gz = flate2::read::GzDecoder::new(f).take(MAX_KERNEL + 1);
        let mut head = [0u8; 0x40];
        if gz.read_exact(&mut head).is_err() || head[0x38..0x3c] != *b"ARM\x64" {
            return Ok(false);
        }
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        out.write_all(&head)?;
        let n = io::copy(&mut gz, &mut out)?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        if head.len() as u64 + n > MAX_KERNEL {
            return Ok(false);
        }
        f.sync_all()?;
        Ok(true)
    })();
    match unpacked {
        Ok(true) => std::fs::rename(&tmp, path).map_err(io_at(path)),
        _ => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
    }
}

fn write_out(image: &Image, tree: &Tree, id: usize, dest: &Path) -> Result<(), BuildError> {
    let Kind::File(fd) = &tree.inodes[id].kind else {
        return Err(BuildError::Boot(BootFilesError::NotAFile {
            name: dest.display().to_string(),
        }));
    };
    let mut f = io::BufWriter::new(File::create(dest).map_err(io_at(dest))?);
    image.read_file(fd, &mut f).map_err(io_at(dest))?;
    let f = f.into_inner().map_err(|e| io_at(dest)(e.into_error()))?;
    f.sync_all().map_err(io_at(dest))
}

struct ProgressRead<'a, R> {
    inner: R,
    /// Told how many bytes came out; an error stops the read.
    tick: &'a mut dyn FnMut(usize) -> io::Result<()>,
}

impl<R: io::Read> io::Read for ProgressRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.tick)(n)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(parts: &[&[u8]], zeros: usize) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for p in parts {
            gz.write_all(p).unwrap();
        }
        let block = vec![0u8; 1 << 20];
        for _ in 0..zeros >> 20 {
            gz.write_all(&block).unwrap();
        }
        gz.finish().unwrap()
    }

    /// Item: a small gzip "arm64 kernel" used to be unpacked whole into memory before its
    /// magic was looked at. Now 64 bytes are, and an arm64 one streams to disk, capped.
    #[test]
    fn a_gzip_kernel_is_unpacked_only_when_it_is_an_arm64_image_and_never_into_memory() {
        let d = testkit::tempdir("unpack-arm64");
        let path = d.join("kernel");
        // A bomb: 600 MiB of zeros in under a MiB; no arm64 magic, left as it is.
        let bomb = gzip(&[], 600 << 20);
        assert!(bomb.len() < 1 << 20);
        std::fs::write(&path, &bomb).unwrap();
        unpack_arm64_kernel(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bomb);
        // An arm64 Image larger than the cap: left as it is too, and nothing left behind.
        let mut head = [0u8; 0x40];
        head[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let big = gzip(&[&head], (MAX_KERNEL as usize) + (1 << 20));
        std::fs::write(&path, &big).unwrap();
        unpack_arm64_kernel(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), big.len() as u64);
        assert!(!path.with_extension("unpacked").exists());
        // A real one is stored unpacked.
        let small = gzip(&[&head, b"the rest of the kernel"], 0);
        std::fs::write(&path, &small).unwrap();
        unpack_arm64_kernel(&path).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[0x38..0x3c], b"ARM\x64");
        assert!(got.ends_with(b"the rest of the kernel"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
