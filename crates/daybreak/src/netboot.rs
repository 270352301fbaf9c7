//! `daybreak netboot SOURCE OUTDIR [PREFIX]`: the kernel, initrd and squashfs of an image. A
//! Kairos ISO is read without mounting it; an OCI image (registry, archive, layout, rootfs
//! directory) goes through the store, so the same digest is built once.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};

use crate::progress::Progress;

/// Explains a write failure in terms of the output directory and what to do.
fn write_error(e: io::Error, dest: &Path, size: u64) -> anyhow::Error {
    let dir = dest.parent().unwrap_or(Path::new("."));
    if let Some(sig) = crate::interrupt::interrupted() {
        return anyhow!(
            "stopped by {} while writing {}; nothing half-written was left behind",
            crate::interrupt::name(sig),
            dest.display()
        );
    }
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

/// The boot files of any source (an OCI image in any form, a Kairos ISO, an ISO URL), with
/// the progress bars and notes a user sees while it is pulled, built or downloaded.
pub fn open_source(
    source: &str,
    state_dir: &Path,
    opts: &ImageOptions,
) -> anyhow::Result<artifacts::BootSet> {
    let req = artifacts::Request {
        source: source.to_string(),
        arch: opts.arch.clone(),
        insecure: opts.insecure,
        compression: opts.compression,
        state_dir: artifacts::absolute(state_dir),
    };
    Ok(artifacts::open(
        &req,
        &crate::progress::ImageProgress::default(),
        &mut show_fetch(source),
    )?)
}

/// The boot files of an ISO (a local file or an http(s) URL), with a download's progress bar.
pub fn open_iso(source: &str, state_dir: &Path) -> anyhow::Result<artifacts::BootSet> {
    Ok(artifacts::open_iso(
        source,
        &artifacts::absolute(state_dir),
        &mut show_fetch(source),
    )?)
}

/// A download's progress bar and notes on stderr.
fn show_fetch(source: &str) -> impl FnMut(artifacts::Fetch) + '_ {
    use artifacts::Fetch;
    let mut bar: Option<Progress> = None;
    move |f| match f {
        Fetch::Waiting { url } => {
            eprintln!("another Daybreak process is downloading {url}; waiting for it")
        }
        Fetch::Progress { done, total } => bar
            .get_or_insert_with(|| Progress::new("download", total.unwrap_or(0)))
            .update(done),
        Fetch::Cached { path } => eprintln!("using cached {}", path.display()),
        Fetch::Done { verified } => {
            if let Some(b) = bar.take() {
                b.finish();
            }
            if !verified {
                eprintln!("note: {source} has no published .sha256; the download is not verified");
            }
        }
    }
}

/// How to turn an OCI image into artifacts.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub arch: String,
    pub insecure: bool,
    pub compression: artifacts::Compression,
}

fn create_outdir(outdir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(outdir).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => {
            anyhow!(
                "cannot create {}: permission denied; choose a writable OUTDIR",
                outdir.display()
            )
        }
        _ => anyhow!("cannot create {}: {e}", outdir.display()),
    })
}

/// AuroraBoot's output names: `PREFIX-kernel`, `PREFIX-initrd`, `PREFIX.squashfs`.
fn output_names(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}-kernel"),
        format!("{prefix}-initrd"),
        format!("{prefix}.squashfs"),
    ]
}

pub fn run(
    source: &str,
    outdir: &Path,
    prefix: &str,
    state_dir: &Path,
    opts: &ImageOptions,
) -> anyhow::Result<Vec<PathBuf>> {
    let prefix = if prefix.is_empty() { "kairos" } else { prefix };
    let set = open_source(source, state_dir, opts)?;
    create_outdir(outdir)?;
    let mut written = Vec::new();
    for (f, name) in [&set.kernel, &set.initrds[0], &set.rootfs]
        .into_iter()
        .zip(output_names(prefix))
    {
        let dest = outdir.join(&name);
        // A store artifact is immutable: a hard link costs nothing where the filesystem allows.
        if f.is_whole_file() && artifacts::link_atomic(&f.path, &dest) {
            written.push(dest);
            continue;
        }
        let src = std::fs::File::open(&f.path)
            .with_context(|| format!("cannot read {}", f.path.display()))?;
        let mut bar = Progress::new(&name, f.size());
        let _signals = crate::interrupt::Guard::new();
        artifacts::copy_extents_atomic(
            &src,
            &f.extents,
            &dest,
            &crate::interrupt::STOP,
            &mut |n| bar.update(n),
        )
        .map_err(|e| write_error(e, &dest, f.size()))?;
        bar.finish();
        written.push(dest);
    }
    if let artifacts::Origin::Image { digest, .. } = &set.origin {
        eprintln!("image digest: {digest}");
    }
    Ok(written)
}
