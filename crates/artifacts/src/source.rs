//! One way from a source to the files a netboot needs, whatever the source: an OCI image
//! (registry, archive, layout, `dir://`), a Kairos ISO on disk, or an ISO at an http(s) URL
//! (downloaded into the store first, resumed and verified). What comes out is the same for all:
//! kernel, initrds and root squashfs, each a path with the [`Extent`]s that make it up (one
//! extent for a file of its own, the ISO's extents for a file inside one), and where they came
//! from. Callers copy extents or serve them, and never ask "ISO or image?" again.

use std::path::{Path, PathBuf};

use crate::digest::hex;
use crate::download::{self, DownloadError};
use crate::extent::{self, Extent};
use crate::image::{self, ImageError, Report, Request};
use crate::oci::{OciError, Source};
use crate::store::{StateError, Store};
use iso9660::{Entry, Iso, IsoError};

/// One boot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// The file the bytes are in (an artifact of the store, or the ISO).
    pub path: PathBuf,
    pub extents: Vec<Extent>,
    /// Its name where it came from (`vmlinuz-6.1.0-9-amd64`, `/boot/kernel`), for messages.
    pub name: String,
}

impl BootFile {
    pub fn size(&self) -> u64 {
        extent::total(&self.extents)
    }

    /// A file of its own, whole.
    pub fn whole(path: PathBuf, name: String) -> std::io::Result<BootFile> {
        let len = std::fs::metadata(&path)?.len();
        Ok(BootFile {
            path,
            extents: vec![Extent { offset: 0, len }],
            name,
        })
    }

    /// Whether the bytes are the whole file at `path` (so it can be linked or served as is).
    pub fn is_whole_file(&self) -> bool {
        matches!(self.extents[..], [Extent { offset: 0, len }]
            if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == len))
    }
}

/// Where the files came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An OCI image, built into the store (or found there).
    Image {
        digest: String,
        built: bool,
        dir: PathBuf,
    },
    /// A Kairos ISO, read in place; `name` is its file name as the user knows it (a download's
    /// cache name carries a prefix it does not show).
    Iso { path: PathBuf, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSet {
    pub kernel: BootFile,
    pub initrds: Vec<BootFile>,
    pub rootfs: BootFile,
    pub origin: Origin,
    /// The image's own Secure Boot chain (shim, network GRUB), when it carries one.
    pub signed_chain: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Iso(#[from] IsoError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a download tells as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// Another process sharing the state directory is downloading it; this one waits.
    Waiting {
        url: String,
    },
    Progress {
        done: u64,
        total: Option<u64>,
    },
    /// It was in the store already.
    Cached {
        path: PathBuf,
    },
    Done {
        verified: bool,
    },
}

/// Whether `source` names an ISO: an http(s) URL (images come from registries by reference, so a
/// URL is a release ISO), or a local file that is one.
pub(crate) fn is_iso(source: &str) -> Result<bool, OciError> {
    Ok(is_url(source) || matches!(Source::parse(source)?, Source::Iso(_)))
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The boot files of `req.source`. Images go through the store (pulled and built once, telling
/// `report`); ISOs are read where they are, after a download into the store for a URL (telling
/// `fetch`).
pub fn open(
    req: &Request,
    report: &dyn Report,
    fetch: &mut dyn FnMut(Fetch),
) -> Result<BootSet, SourceError> {
    if !is_iso(&req.source)? {
        return from_image(req, report);
    }
    open_iso(&req.source, &req.state_dir, fetch)
}

/// The boot files of an ISO: a local file, or an http(s) URL downloaded into the store under
/// `state_dir` first (telling `fetch`).
pub fn open_iso(
    source: &str,
    state_dir: &Path,
    fetch: &mut dyn FnMut(Fetch),
) -> Result<BootSet, SourceError> {
    if !is_url(source) {
        return from_iso_file(PathBuf::from(source));
    }
    let store = Store::open(state_dir)?;
    let path = download_iso(source, &store, fetch)?;
    from_iso(path, url_file_name(source))
}

/// The boot files of an ISO on disk, known by its own file name.
pub fn from_iso_file(path: PathBuf) -> Result<BootSet, SourceError> {
    let name = path
        .file_name()
        .map_or_else(|| "image.iso".into(), |n| n.to_string_lossy().into_owned());
    from_iso(path, name)
}

/// The boot files of an ISO on disk.
pub(crate) fn from_iso(path: PathBuf, name: String) -> Result<BootSet, SourceError> {
    let iso = Iso::open(&path)?;
    // Where a Kairos ISO holds its netboot files.
    let file = |inside: &str| -> Result<BootFile, IsoError> {
        let e: Entry = iso.file(inside)?;
        Ok(BootFile {
            path: path.clone(),
            extents: e.extents.into_iter().map(Extent::from).collect(),
            name: inside.to_string(),
        })
    };
    Ok(BootSet {
        kernel: file("/boot/kernel")?,
        initrds: vec![file("/boot/initrd")?],
        rootfs: file("/rootfs.squashfs")?,
        origin: Origin::Iso {
            path: path.clone(),
            name,
        },
        signed_chain: None,
    })
}

fn from_image(req: &Request, report: &dyn Report) -> Result<BootSet, SourceError> {
    let got = image::obtain(req, report)?;
    let a = &got.artifacts;
    let whole = |path: PathBuf, name: &str| {
        BootFile::whole(path.clone(), name.to_string())
            .map_err(|source| SourceError::Io { path, source })
    };
    Ok(BootSet {
        kernel: whole(a.kernel(), &a.meta.kernel)?,
        initrds: vec![whole(a.initrd(), &a.meta.initrd)?],
        rootfs: whole(a.rootfs(), "rootfs.squashfs")?,
        origin: Origin::Image {
            digest: got.digest.clone(),
            built: got.built,
            dir: a.dir.clone(),
        },
        signed_chain: a.signed_chain(),
    })
}

/// A file name with anything but letters, digits and `.`, `_`, `+`, `-` made `_`: safe in a
/// URL, an iPXE script line and a directory.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The last path segment of a URL, made a safe file name.
fn url_file_name(url: &str) -> String {
    let name = safe_name(url.rsplit('/').next().unwrap_or("download.iso"));
    let name = name.trim_start_matches('.');
    if name.is_empty() {
        "download.iso".into()
    } else {
        name.into()
    }
}

/// Where a downloaded ISO is cached: `DOWNLOADS/<hash of URL>-<file name>`, so two URLs with
/// the same file name never share a cache entry.
fn cache_path(url: &str, downloads: &Path) -> (PathBuf, String) {
    use sha2::Digest as _;
    let tag = hex(&sha2::Sha256::digest(url.as_bytes())[..6]);
    (downloads.join(format!("{tag}-{}", url_file_name(url))), tag)
}

/// Downloads `url` into the store (resumed, verified against the published .sha256, reused once
/// complete); two processes sharing the state directory never write one download at once.
fn download_iso(
    url: &str,
    store: &Store,
    fetch: &mut dyn FnMut(Fetch),
) -> Result<PathBuf, SourceError> {
    let (dest, tag) = cache_path(url, &store.downloads_dir());
    let mut waited = false;
    let _held = store
        .lock(&format!("download-{tag}"), || waited = true)
        .map_err(|source| SourceError::Io {
            path: store.root().join("locks"),
            source,
        })?;
    if waited {
        fetch(Fetch::Waiting { url: url.into() });
    }
    let out = download::download(url, &dest, &mut |done, total| {
        fetch(Fetch::Progress { done, total })
    })?;
    fetch(match out {
        download::Outcome::Cached => Fetch::Cached { path: dest.clone() },
        download::Outcome::Downloaded { verified, .. } => Fetch::Done { verified },
    });
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_are_safe_and_distinct() {
        let d = Path::new("/state/downloads");
        let (a, _) = cache_path(
            "https://github.com/kairos-io/kairos/releases/download/v3.7.2/kairos-x.iso",
            d,
        );
        let (b, _) = cache_path("https://mirror.example/kairos-x.iso", d);
        assert_ne!(a, b);
        assert!(a.starts_with(d) && a.to_string_lossy().ends_with("-kairos-x.iso"));
        let (evil, _) = cache_path("http://x/..%2f..%2fetc%2fpasswd", d);
        assert_eq!(evil.parent().unwrap(), d);
        assert!(!evil.file_name().unwrap().to_string_lossy().contains('/'));
        assert_eq!(url_file_name("https://x/kairos.iso"), "kairos.iso");
        assert_eq!(url_file_name("https://x/"), "download.iso");
    }
}
