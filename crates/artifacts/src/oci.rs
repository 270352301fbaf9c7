//! OCI images as Daybreak meets them: references (`quay.io/kairos/ubuntu:24.04`, `alpine`,
//! `oci://…`, `docker://…`), the other source forms (`file://` docker-save or OCI-archive
//! tarballs, OCI layout directories, `dir://` root filesystems, ISO files), manifests and indexes,
//! and the choice of the manifest for a target platform.
//!
//! An index is resolved for the *target* architecture and variant, never the host's. Layers are
//! read as raw blobs: their compression (gzip, zstd or none) is taken from their first bytes, not
//! from a media type that tools get wrong, and their digest is checked as they stream by.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::digest::printable;
pub use crate::digest::Digest;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{shown} is not an image reference ({1}); write it like quay.io/kairos/ubuntu:24.04 or alpine@sha256:…", shown = printable(.0, 200))]
    BadReference(String, String),
    #[error("{path}: {why}")]
    Source { path: PathBuf, why: String },
    #[error("{what} is not a valid manifest or index: {why}")]
    BadDocument { what: String, why: String },
    #[error("{what} has no image for linux/{arch}; it has: {have}. Pick one with --arch")]
    NoPlatform {
        what: String,
        arch: String,
        have: String,
    },
    #[error("{what}: content does not match its digest (expected {expected}, got {actual}); the data is corrupt or was tampered with")]
    Digest {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A registry reference, normalised the way Docker does (`alpine` is
/// `docker.io/library/alpine:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        let bad = |why: &str| OciError::BadReference(s.to_string(), why.to_string());
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => match Digest::parse(d) {
                Ok(d) => (r, Some(d)),
                Err(_) => return Err(bad("the digest must be sha256: and 64 hex digits")),
            },
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), rest.to_string()),
        };
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) if !registry.ends_with(']') => (h, Some(p)),
            _ => (registry.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && (host.starts_with('[')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
        if !host_ok || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad(
                "the registry must be a host name with an optional numeric port",
            ));
        }
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p.to_string(), Some(t.to_string())),
            _ => (path, None),
        };
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.is_empty()
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
            || repository.split('/').any(|c| c.is_empty())
        {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - /",
            ));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad(
                    "the tag must be letters, digits and . _ - (at most 128)",
                ));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host that serves Docker Hub's API.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an image comes from, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Registry(Reference),
    /// A docker-save or OCI-archive tarball.
    Archive(PathBuf),
    /// An OCI layout directory, optionally with the tag to pick from its index.
    Layout(PathBuf, Option<String>),
    /// A root filesystem directory, taken as is.
    Dir(PathBuf),
    /// A Kairos ISO (read by [`crate::Iso`]).
    Iso(PathBuf),
}

fn is_iso(path: &Path) -> bool {
    let mut magic = [0u8; 5];
    File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(0x8001))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && &magic == b"CD001"
}

fn is_tar(path: &Path) -> bool {
    let mut head = [0u8; 263];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && (&head[257..262] == b"ustar" || head.starts_with(&[0x1f, 0x8b]))
}

impl Source {
    /// Every `container_image` form of AuroraBoot, plus local paths as they are.
    pub fn parse(s: &str) -> Result<Source, OciError> {
        if let Some(p) = s.strip_prefix("dir://") {
            return Ok(Source::Dir(PathBuf::from(p)));
        }
        if let Some(p) = s
            .strip_prefix("file://")
            .or_else(|| s.strip_prefix("ocifile://"))
        {
            return Ok(Source::Archive(PathBuf::from(p)));
        }
        if let Some(r) = s
            .strip_prefix("oci://")
            .or_else(|| s.strip_prefix("docker://"))
        {
            return Ok(Source::Registry(Reference::parse(r)?));
        }
        let path = Path::new(s);
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                return Ok(if path.join("oci-layout").is_file() {
                    Source::Layout(path.to_path_buf(), None)
                } else {
                    Source::Dir(path.to_path_buf())
                });
            }
            // A tarball (docker save, OCI archive) goes to the archive reader; anything else is
            // taken for an ISO, whose reader says clearly when it is not one.
            return Ok(if !is_iso(path) && is_tar(path) {
                Source::Archive(path.to_path_buf())
            } else {
                Source::Iso(path.to_path_buf())
            });
        }
        // `LAYOUT:TAG`, as skopeo writes oci:LAYOUT:TAG.
        if let Some((p, tag)) = s.rsplit_once(':') {
            if Path::new(p).join("oci-layout").is_file() {
                return Ok(Source::Layout(PathBuf::from(p), Some(tag.to_string())));
            }
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s.ends_with(".iso")
        {
            return Err(OciError::Source {
                path: path.to_path_buf(),
                why: "no such file or directory".into(),
            });
        }
        Ok(Source::Registry(Reference::parse(s)?))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Validated while parsing: a document with any malformed digest is refused whole.
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// A manifest or an index, as one document type (registries serve either for a tag).
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

impl Document {
    pub fn parse(bytes: &[u8], what: &str) -> Result<Document, OciError> {
        let d: Document = serde_json::from_slice(bytes).map_err(|e| OciError::BadDocument {
            what: what.to_string(),
            why: e.to_string(),
        })?;
        if d.manifests.is_some() == d.layers.is_some() {
            return Err(OciError::BadDocument {
                what: what.to_string(),
                why: "neither an index (manifests) nor an image manifest (layers)".into(),
            });
        }
        Ok(d)
    }

    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
    }
}

/// The host's architecture in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// Picks the manifest of `index` for linux/`arch` (arm64 means variant v8 or none).
pub fn select_platform<'a>(
    index: &'a [Descriptor],
    arch: &str,
    what: &str,
) -> Result<&'a Descriptor, OciError> {
    let (arch, variant) = match arch.split_once('/') {
        Some((a, v)) => (a, Some(v)),
        None => (arch, None),
    };
    let fits = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == "linux"
                && p.architecture == arch
                && match (variant, p.variant.as_deref()) {
                    (Some(want), have) => have == Some(want),
                    (None, None) => true,
                    (None, Some(v)) => arch == "arm64" && v == "v8",
                }
        })
    };
    if let Some(d) = index.iter().find(fits) {
        return Ok(d);
    }
    // An index without platforms (a single image wrapped in an index, as skopeo writes
    // OCI layouts) holds just that image.
    let plain: Vec<&Descriptor> = index.iter().filter(|d| d.platform.is_none()).collect();
    if plain.len() == 1 && index.len() == 1 {
        return Ok(plain[0]);
    }
    let have: Vec<String> = index
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(OciError::NoPlatform {
        what: what.to_string(),
        arch: arch.to_string(),
        have: if have.is_empty() {
            "no platforms".into()
        } else {
            have.join(", ")
        },
    })
}

/// One layer blob: a byte range of a local file and the digest it must have.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
    /// Expected sha256 of the raw (compressed) bytes; `None` when the source has none to offer.
    pub digest: Option<Digest>,
    /// Name for messages: the digest, or the member name in an archive.
    pub name: String,
}

/// A local image, ready to merge: its identity and its layers in order.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The manifest digest (or, for docker-save archives, the image id).
    pub digest: Digest,
    pub layers: Vec<LayerBlob>,
}

/// Reads a blob of an OCI layout directory, checking its digest.
fn read_layout_blob(dir: &Path, digest: &Digest, limit: u64) -> Result<Vec<u8>, OciError> {
    let path = dir.join("blobs/sha256").join(digest.hex());
    let mut data = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(limit).read_to_end(&mut data))
        .map_err(io_err(&path))?;
    verify_document(&data, digest, &path.display().to_string())?;
    Ok(data)
}

/// Checks that `data` is what `expected` names: every document fetched by digest goes
/// through here, from a layout, an archive or a registry.
pub fn verify_document(data: &[u8], expected: &Digest, what: &str) -> Result<(), OciError> {
    let actual = Digest::of(data);
    if &actual != expected {
        return Err(OciError::Digest {
            what: what.to_string(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

/// Manifests, indexes and configs are small; anything bigger is refused unread.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// Follows index → manifest for `arch` in a layout directory (or in an extracted archive).
fn resolve_in_layout(
    dir: &Path,
    tag: Option<&str>,
    arch: &str,
) -> Result<(Digest, Document), OciError> {
    let index_path = dir.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(io_err(&index_path))?;
    let what = index_path.display().to_string();
    let index = Document::parse(&bytes, &what)?;
    let entries = index.manifests.unwrap_or_default();
    let picked: Vec<Descriptor> = match tag {
        Some(t) => entries
            .iter()
            .filter(|d| {
                d.annotations.as_ref().is_some_and(|a| {
                    a.get("org.opencontainers.image.ref.name")
                        .is_some_and(|n| n == t || n.rsplit(':').next() == Some(t))
                })
            })
            .cloned()
            .collect(),
        None => entries,
    };
    if picked.is_empty() {
        return Err(OciError::Source {
            path: dir.to_path_buf(),
            why: format!("no image tagged {:?} in index.json", tag.unwrap_or("")),
        });
    }
    let mut desc = select_platform(&picked, arch, &what)?.clone();
    for _ in 0..4 {
        let bytes = read_layout_blob(dir, &desc.digest, MAX_DOCUMENT)?;
        let doc = Document::parse(&bytes, desc.digest.as_str())?;
        if !doc.is_index() {
            return Ok((desc.digest, doc));
        }
        desc = select_platform(
            doc.manifests.as_deref().unwrap_or(&[]),
            arch,
            desc.digest.as_str(),
        )?
        .clone();
    }
    Err(OciError::BadDocument {
        what,
        why: "indexes nested too deep".into(),
    })
}

/// An OCI layout directory's image for `arch`.
pub fn open_layout(dir: &Path, tag: Option<&str>, arch: &str) -> Result<LocalImage, OciError> {
    let (digest, manifest) = resolve_in_layout(dir, tag, arch)?;
    let layers = manifest
        .layers
        .unwrap_or_default()
        .into_iter()
        .map(|l| {
            let path = dir.join("blobs/sha256").join(l.digest.hex());
            let size = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            Ok(LayerBlob {
                path,
                offset: 0,
                size,
                name: l.digest.to_string(),
                digest: Some(l.digest),
            })
        })
        .collect::<Result<_, OciError>>()?;
    Ok(LocalImage { digest, layers })
}

#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A docker-save or OCI-archive tarball: members are read in place (no extraction), by offset.
pub fn open_archive(path: &Path, arch: &str) -> Result<LocalImage, OciError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(io_err(path))?;
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        return Err(OciError::Source {
            path: path.to_path_buf(),
            why: "the archive is gzip-compressed; decompress it first (gunzip) and pass the .tar"
                .into(),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut members: HashMap<String, (u64, u64)> = HashMap::new();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries_with_seek().map_err(io_err(path))? {
        let entry = entry.map_err(io_err(path))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = name.trim_start_matches("./").to_string();
        members.insert(name, (entry.raw_file_position(), entry.size()));
    }
    let not_image = || OciError::Source {
        path: path.to_path_buf(),
        why: "not a docker-save or OCI-archive tarball (no manifest.json or index.json inside)"
            .into(),
    };
    let read_member = |name: &str| -> Result<Vec<u8>, OciError> {
        let &(off, size) = members.get(name).ok_or_else(|| OciError::Source {
            path: path.to_path_buf(),
            why: format!("the archive lacks {name}"),
        })?;
        if size > MAX_DOCUMENT {
            return Err(OciError::Source {
                path: path.to_path_buf(),
                why: format!("{name} is implausibly large"),
            });
        }
        let mut buf = vec![0u8; size as usize];
        use std::os::unix::fs::FileExt;
        File::open(path)
            .and_then(|f| f.read_exact_at(&mut buf, off))
            .map_err(io_err(path))?;
        Ok(buf)
    };
    let blob = |digest: &Digest, name: String| -> Result<LayerBlob, OciError> {
        let member = format!("blobs/sha256/{}", digest.hex());
        let &(offset, size) = members.get(&member).ok_or_else(|| OciError::Source {
            path: path.to_path_buf(),
            why: format!("the archive lacks {member}"),
        })?;
        Ok(LayerBlob {
            path: path.to_path_buf(),
            offset,
            size,
            digest: Some(digest.clone()),
            name,
        })
    };

    if members.contains_key("index.json") && members.contains_key("oci-layout") {
        let what = format!("{}:index.json", path.display());
        let index = Document::parse(&read_member("index.json")?, &what)?;
        let mut desc =
            select_platform(index.manifests.as_deref().unwrap_or(&[]), arch, &what)?.clone();
        for _ in 0..4 {
            let bytes = read_member(&format!("blobs/sha256/{}", desc.digest.hex()))?;
            verify_document(
                &bytes,
                &desc.digest,
                &format!("{}:{}", path.display(), desc.digest),
            )?;
            let doc = Document::parse(&bytes, desc.digest.as_str())?;
            if let Some(m) = &doc.manifests {
                desc = select_platform(m, arch, desc.digest.as_str())?.clone();
                continue;
            }
            let layers = doc
                .layers
                .unwrap_or_default()
                .iter()
                .map(|l| blob(&l.digest, l.digest.to_string()))
                .collect::<Result<_, _>>()?;
            return Ok(LocalImage {
                digest: desc.digest,
                layers,
            });
        }
        return Err(not_image());
    }

    let manifest = read_member("manifest.json").map_err(|_| not_image())?;
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&manifest).map_err(|e| OciError::BadDocument {
            what: format!("{}:manifest.json", path.display()),
            why: e.to_string(),
        })?;
    let entry = entries.first().ok_or_else(not_image)?;
    if entries.len() > 1 {
        return Err(OciError::Source {
            path: path.to_path_buf(),
            why: "the archive holds several images; save just one".into(),
        });
    }
    let config = read_member(&entry.config)?;
    let layers = entry
        .layers
        .iter()
        .map(|name| {
            let name = name.trim_start_matches("./");
            match name
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            {
                Some(d) => blob(&d, name.to_string()),
                None => {
                    let &(offset, size) = members.get(name).ok_or_else(|| OciError::Source {
                        path: path.to_path_buf(),
                        why: format!("the archive lacks {name}"),
                    })?;
                    Ok(LayerBlob {
                        path: path.to_path_buf(),
                        offset,
                        size,
                        digest: None,
                        name: name.to_string(),
                    })
                }
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(LocalImage {
        digest: Digest::of(&config),
        layers,
    })
}

/// The running hash of what a [`Hashing`] reader has seen.
pub struct HashState {
    hasher: Sha256,
    bytes: u64,
}

/// Hashes the bytes as they are read, to check a blob's digest without a second pass.
pub struct Hashing<R> {
    inner: R,
    state: Rc<RefCell<HashState>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        s.hasher.update(&buf[..n]);
        s.bytes += n as u64;
        Ok(n)
    }
}

/// An open layer: an uncompressing reader of its tar stream, and a way to check its digest
/// once the merge has read what it needs.
pub struct OpenLayer<'a> {
    pub tar: Box<dyn Read + 'a>,
    blob: &'a LayerBlob,
    state: Rc<RefCell<HashState>>,
    /// Raw (compressed) bytes read so far, for progress.
    pub progress: Rc<RefCell<HashState>>,
}

impl LayerBlob {
    /// Opens the blob; compression is recognised from the first bytes.
    pub fn open(&self) -> Result<OpenLayer<'_>, OciError> {
        let mut f = File::open(&self.path).map_err(io_err(&self.path))?;
        f.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(&self.path))?;
        let state = Rc::new(RefCell::new(HashState {
            hasher: Sha256::new(),
            bytes: 0,
        }));
        let mut raw = io::BufReader::with_capacity(
            1 << 20,
            Hashing {
                inner: f.take(self.size),
                state: state.clone(),
            },
        );
        let head = io::BufRead::fill_buf(&mut raw).map_err(io_err(&self.path))?;
        let tar: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(raw))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(io_err(&self.path))?)
        } else {
            Box::new(raw)
        };
        Ok(OpenLayer {
            tar,
            blob: self,
            progress: state.clone(),
            state,
        })
    }
}

impl LayerBlob {
    /// Hashes the whole blob and compares it with its digest: when a layer fails to
    /// decompress, this tells a corrupted download from a broken image.
    pub fn check_digest(&self) -> Result<(), OciError> {
        let Some(expected) = &self.digest else {
            return Ok(());
        };
        let mut f = File::open(&self.path).map_err(io_err(&self.path))?;
        f.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(&self.path))?;
        let mut h = Sha256::new();
        io::copy(&mut f.take(self.size), &mut h).map_err(io_err(&self.path))?;
        self.compare(expected, h)
    }

    fn compare(&self, expected: &Digest, hashed: Sha256) -> Result<(), OciError> {
        let actual = Digest::from_hash(&hashed.finalize());
        if &actual != expected {
            return Err(OciError::Digest {
                what: format!("layer {}", self.name),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl HashState {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl OpenLayer<'_> {
    /// Reads what the merge left unread (tar padding, the end of the compressed stream) and
    /// checks the digest of the whole blob.
    pub fn verify(mut self) -> Result<(), OciError> {
        let path = self.blob.path.clone();
        io::copy(&mut self.tar, &mut io::sink()).map_err(io_err(&path))?;
        drop(self.tar);
        let Some(expected) = &self.blob.digest else {
            return Ok(());
        };
        let s = self.state.borrow();
        if s.bytes < self.blob.size {
            // Bytes after the end of the compressed stream belong to the blob too (rare):
            // hash the blob whole.
            return self.blob.check_digest();
        }
        self.blob.compare(expected, s.hasher.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/alpine", Some("latest"))
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse(
            "quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3",
        )
        .unwrap();
        assert_eq!(r.registry, "quay.io");
        assert_eq!(r.repository, "kairos/ubuntu");
        assert_eq!(
            r.tag.as_deref(),
            Some("24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/img/x@{d}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.clone()),
            ("127.0.0.1:5000", "img/x", None)
        );
        assert_eq!(r.digest.unwrap().as_str(), d);
        let r = Reference::parse("localhost/foo:1").unwrap();
        assert_eq!(r.registry, "localhost");
        for bad in ["UPPER/case", "a//b", "x@sha256:12", "x:bad/tag", ""] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_by_prefix() {
        assert_eq!(
            Source::parse("dir:///srv/root").unwrap(),
            Source::Dir("/srv/root".into())
        );
        assert_eq!(
            Source::parse("ocifile:///tmp/x.tar").unwrap(),
            Source::Archive("/tmp/x.tar".into())
        );
        assert!(matches!(
            Source::parse("docker://alpine:3").unwrap(),
            Source::Registry(_)
        ));
        assert!(Source::parse("/nonexistent/kairos.iso").is_err());
    }

    #[test]
    fn platform_is_the_target_not_the_host() {
        let json = br#"{"manifests":[
            {"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1,"platform":{"os":"unknown","architecture":"unknown"}}]}"#;
        let d = Document::parse(json, "x").unwrap();
        let m = d.manifests.unwrap();
        assert!(select_platform(&m, "arm64", "x")
            .unwrap()
            .digest
            .hex()
            .starts_with('2'));
        assert!(select_platform(&m, "amd64", "x")
            .unwrap()
            .digest
            .hex()
            .starts_with('1'));
        let e = select_platform(&m, "riscv64", "x").unwrap_err().to_string();
        assert!(e.contains("linux/amd64, linux/arm64/v8"), "{e}");
    }
}
