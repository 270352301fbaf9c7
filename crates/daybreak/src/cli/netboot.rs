//! `daybreak netboot SOURCE OUTDIR [PREFIX]`: the kernel, initrd and squashfs of an image. A
//! Kairos ISO is read without mounting it; an OCI image (registry, archive, layout, rootfs
//! directory) goes through the store, so the same digest is built once.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use clap::Args;

use super::interrupt;
use super::progress::Progress;
use crate::sources::ImageOptions;

#[derive(Args, Debug)]
pub struct NetbootArgs {
    /// The image: a registry reference, file://, ocifile://, dir://, an OCI layout, or an ISO.
    source: String,
    /// Where to write the files (created if missing).
    outdir: PathBuf,
    /// File name prefix; empty means "kairos".
    #[arg(default_value = "kairos")]
    prefix: String,
    /// Where artifacts, layers and downloads are kept (absolute, or relative to the working
    /// directory).
    #[arg(long, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
    /// Platform to pull from a multi-arch image (default: this machine's).
    #[arg(long, value_name = "ARCH", default_value = artifacts::oci::host_arch())]
    arch: String,
    /// Allow plain HTTP and self-signed certificates for registries (localhost and 127.0.0.0/8
    /// are always allowed plain HTTP, as Docker does).
    #[arg(long, alias = "insecure")]
    allow_insecure_registries: bool,
    /// squashfs compression: gzip (what Kairos uses), zstd (fast to boot), xz (smallest).
    #[arg(long, value_name = "ALGO", default_value = "gzip")]
    compression: artifacts::Compression,
}

/// Runs `daybreak netboot`.
pub fn command(a: NetbootArgs) -> ExitCode {
    let opts = ImageOptions {
        arch: a.arch,
        insecure: a.allow_insecure_registries,
        compression: a.compression,
        peers: None,
    };
    match run(&a.source, &a.outdir, &a.prefix, &a.state_dir, &opts) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", super::error_text(&e));
            // Stopped by a signal: exit as shells expect (130 for Ctrl-C).
            match interrupt::interrupted() {
                Some(sig) => ExitCode::from(128 + sig as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Explains a write failure in terms of the output directory and what to do.
fn write_error(e: io::Error, dest: &Path, size: u64) -> anyhow::Error {
    let dir = dest.parent().unwrap_or(Path::new("."));
    if let Some(sig) = interrupt::interrupted() {
        return anyhow!(
            "stopped by {} while writing {}; nothing half-written was left behind",
            interrupt::name(sig),
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
    let set = crate::sources::open_source(source, state_dir, opts, &*super::progress::reporter())?;
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
        let _signals = interrupt::Guard::new();
        artifacts::copy_extents_atomic(&src, &f.extents, &dest, &interrupt::STOP, &mut |n| {
            bar.update(n)
        })
        .map_err(|e| write_error(e, &dest, f.size()))?;
        bar.finish();
        written.push(dest);
    }
    if let artifacts::Origin::Image { digest, .. } = &set.origin {
        eprintln!("image digest: {digest}");
    }
    Ok(written)
}
