//! `daybreak netboot ISO OUTDIR [PREFIX]`: the kernel, initrd and squashfs out of a Kairos ISO,
//! read without mounting it and written atomically.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use artifacts::iso::{Entry, Iso};

use crate::progress::Progress;

/// Explains a write failure in terms of the output directory and what to do.
fn write_error(e: io::Error, dest: &Path, size: u64) -> anyhow::Error {
    let dir = dest.parent().unwrap_or(Path::new("."));
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => anyhow!(
            "disk full writing {} ({size} bytes needed); nothing was left behind: free space in {} or choose another OUTDIR",
            dest.display(),
            dir.display()
        ),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => anyhow!(
            "cannot write to {}: {e}; choose a writable OUTDIR or fix its permissions",
            dir.display()
        ),
        _ => anyhow!("writing {} failed: {e}", dest.display()),
    }
}

pub fn run(source: &Path, outdir: &Path, prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let prefix = if prefix.is_empty() { "kairos" } else { prefix };
    let iso = Iso::open(source)?;
    let files = iso.netboot_files()?;
    std::fs::create_dir_all(outdir).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => {
            anyhow!(
                "cannot create {}: permission denied; choose a writable OUTDIR",
                outdir.display()
            )
        }
        _ => anyhow!("cannot create {}: {e}", outdir.display()),
    })?;
    let src =
        std::fs::File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let jobs: [(&Entry, String); 3] = [
        (&files.kernel, format!("{prefix}-kernel")),
        (&files.initrd, format!("{prefix}-initrd")),
        (&files.rootfs, format!("{prefix}.squashfs")),
    ];
    let mut written = Vec::new();
    for (entry, name) in jobs {
        let dest = outdir.join(&name);
        let mut bar = Progress::new(&name, entry.size());
        artifacts::write::copy_extents_atomic(&src, &entry.extents, &dest, &mut |n| bar.update(n))
            .map_err(|e| write_error(e, &dest, entry.size()))?;
        bar.finish();
        written.push(dest);
    }
    Ok(written)
}
