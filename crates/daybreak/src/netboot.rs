//! `daybreak netboot SOURCE OUTDIR [PREFIX]`: the kernel, initrd and squashfs of an image. A
//! Kairos ISO is read without mounting it; an OCI image (registry, archive, layout, rootfs
//! directory) goes through the store, so the same digest is built once.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use artifacts::iso::Iso;

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

/// Where a downloaded ISO is cached: `DOWNLOADS/<hash of URL>-<file name>`, so two URLs with
/// the same file name never share a cache entry.
fn cache_path(url: &str, downloads: &Path) -> PathBuf {
    use sha2::Digest;
    let name = crate::boot::safe_name(url.rsplit('/').next().unwrap_or("download.iso"));
    let name = name.trim_start_matches('.');
    let tag = artifacts::digest::hex(&sha2::Sha256::digest(url.as_bytes())[..6]);
    downloads.join(format!("{tag}-{name}"))
}

/// A local ISO path as is; an http(s) URL downloaded into the cache first (resumed, verified
/// against the published .sha256, reused once complete).
pub fn local_iso(source: &Path, state_dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(url) = source
        .to_str()
        .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
    else {
        return Ok(source.to_path_buf());
    };
    let store = artifacts::store::Store::open(state_dir)?;
    let dest = cache_path(url, &store.downloads_dir());
    let tag = dest
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .unwrap_or_default();
    // Two processes sharing the state directory never write one download at once.
    let _held = store.lock(&format!("download-{tag}"), || {
        eprintln!("another Daybreak process is downloading {url}; waiting for it")
    })?;
    let mut bar: Option<Progress> = None;
    let out = artifacts::download::download(url, &dest, &mut |done, total| {
        bar.get_or_insert_with(|| Progress::new("download", total.unwrap_or(0)))
            .update(done);
    })?;
    match out {
        artifacts::download::Outcome::Cached => eprintln!("using cached {}", dest.display()),
        artifacts::download::Outcome::Downloaded { verified, .. } => {
            if let Some(b) = bar {
                b.finish();
            }
            if !verified {
                eprintln!("note: {url} has no published .sha256; the download is not verified");
            }
        }
    }
    Ok(dest)
}

/// How to turn an OCI image into artifacts.
pub struct ImageOptions {
    pub arch: String,
    pub insecure: bool,
    pub compression: artifacts::squashfs::Compression,
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

/// Builds (or finds in the store) the artifacts of an OCI image source.
pub fn obtain_image(
    source: &str,
    state_dir: &Path,
    opts: &ImageOptions,
) -> anyhow::Result<artifacts::image::Obtained> {
    let req = artifacts::image::Request {
        source: source.to_string(),
        arch: opts.arch.clone(),
        insecure: opts.insecure,
        compression: opts.compression,
        state_dir: artifacts::image::absolute(state_dir),
    };
    Ok(artifacts::image::obtain(
        &req,
        &crate::progress::ImageProgress::default(),
    )?)
}

/// Whether a source names an ISO: a local ISO file, or an http(s) URL (images come from
/// registries by reference, so a URL is a release ISO to download).
pub fn is_iso(source: &str) -> anyhow::Result<bool> {
    Ok(source.starts_with("http://")
        || source.starts_with("https://")
        || matches!(
            artifacts::oci::Source::parse(source)?,
            artifacts::oci::Source::Iso(_)
        ))
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
    if !is_iso(source)? {
        let got = obtain_image(source, state_dir, opts)?;
        create_outdir(outdir)?;
        let a = &got.artifacts;
        let mut written = Vec::new();
        for (src, name) in [a.kernel(), a.initrd(), a.rootfs()]
            .into_iter()
            .zip(output_names(prefix))
        {
            let dest = outdir.join(&name);
            if !artifacts::write::link_atomic(&src, &dest) {
                let f = std::fs::File::open(&src)
                    .with_context(|| format!("cannot read {}", src.display()))?;
                let len = f.metadata()?.len();
                let extent = artifacts::extent::Extent { offset: 0, len };
                let _signals = crate::interrupt::Guard::new();
                artifacts::write::copy_extents_atomic(
                    &f,
                    &[extent],
                    &dest,
                    &crate::interrupt::STOP,
                    &mut |_| {},
                )
                .map_err(|e| write_error(e, &dest, len))?;
            }
            written.push(dest);
        }
        eprintln!("image digest: {}", got.digest);
        return Ok(written);
    }
    let source = &local_iso(Path::new(source), state_dir)?;
    let iso = Iso::open(source)?;
    let files = iso.netboot_files()?;
    create_outdir(outdir)?;
    let src =
        std::fs::File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let mut written = Vec::new();
    for (entry, name) in [&files.kernel, &files.initrd, &files.rootfs]
        .into_iter()
        .zip(output_names(prefix))
    {
        let dest = outdir.join(&name);
        let mut bar = Progress::new(&name, entry.size());
        let _signals = crate::interrupt::Guard::new();
        artifacts::write::copy_extents_atomic(
            &src,
            &entry.extents,
            &dest,
            &crate::interrupt::STOP,
            &mut |n| bar.update(n),
        )
        .map_err(|e| write_error(e, &dest, entry.size()))?;
        bar.finish();
        written.push(dest);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_are_safe_and_distinct() {
        let d = Path::new("/state/downloads");
        let a = cache_path(
            "https://github.com/kairos-io/kairos/releases/download/v3.7.2/kairos-x.iso",
            d,
        );
        let b = cache_path("https://mirror.example/kairos-x.iso", d);
        assert_ne!(a, b);
        assert!(
            a.starts_with("/state/downloads") && a.to_string_lossy().ends_with("-kairos-x.iso")
        );
        let evil = cache_path("http://x/..%2f..%2fetc%2fpasswd", d);
        assert_eq!(evil.parent().unwrap(), Path::new("/state/downloads"));
        assert!(!evil.file_name().unwrap().to_string_lossy().contains('/'));
    }
}
