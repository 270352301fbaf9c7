//! The content-addressed store in the state directory.
//!
//! ```text
//! STATE_DIR/
//!   artifacts/sha256-<hex>[-zstd|-xz]/   kernel, initrd, rootfs.squashfs, meta.json
//!   blobs/sha256/<hex>                   layer blobs as pulled (verified)
//!   refs/<hash of reference>.json        last digest a tag resolved to (for offline starts)
//! ```
//!
//! An artifact directory is built under a hidden temporary name and renamed into place once
//! every file in it is fsynced, so `kill -9` at any moment leaves either nothing or a whole
//! entry; a leftover temporary directory is removed by the next run once its process is gone.
//! An entry that exists is complete, so the same digest is never built twice.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::build::{INITRD, KERNEL, ROOTFS};
use crate::digest::Digest;
use crate::squashfs::Compression;
use crate::write::sync_dir;

/// What an artifact directory holds besides the three files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The image as the user named it.
    pub source: String,
    pub digest: String,
    pub arch: String,
    pub compression: String,
    /// Names of the kernel and initrd inside the image's /boot.
    pub kernel: String,
    pub initrd: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// A complete store entry.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Artifacts {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join(KERNEL)
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join(INITRD)
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS)
    }
    /// Bytes on disk of the three files.
    pub fn size(&self) -> u64 {
        [self.kernel(), self.initrd(), self.rootfs()]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    arch: String,
    digest: Digest,
}

/// The name of a store entry. It can only be made from a [`Digest`] (or the hash that stands
/// for a directory source), and [`Key::parse`] accepts only names such a key could have, so a
/// key is always one plain path component: no `/`, no `..`, never absolute, never hidden.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// `sha256-<hex>` plus the compression when it is not the default.
    pub fn image(digest: &Digest, comp: Compression) -> Key {
        Key::with(format!("sha256-{}", digest.hex()), comp)
    }

    /// A `dir://` source, which has no digest: named by a hash of its canonical path.
    pub fn dir(canonical: &Path, comp: Compression) -> Key {
        let h = Digest::of(canonical.as_os_str().as_encoded_bytes());
        Key::with(format!("dir-{}", &h.hex()[..16]), comp)
    }

    fn with(base: String, comp: Compression) -> Key {
        match comp {
            Compression::Gzip => Key(base),
            c => Key(format!("{base}-{}", c.name())),
        }
    }

    /// A directory name found in the store, if it is one a key could have.
    pub fn parse(name: &str) -> Option<Key> {
        let ok = (1..=96).contains(&name.len())
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then(|| Key(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Store {
    root: PathBuf,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `prune` removed.
#[derive(Debug, Default, Clone)]
pub struct Pruned {
    pub entries: u64,
    pub bytes: u64,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            root: state_dir.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The complete entry for `key`, if there is one.
    pub fn get(&self, key: &Key) -> Option<Artifacts> {
        let dir = self.artifacts_dir().join(key.as_str());
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join("meta.json")).ok()?).ok()?;
        let a = Artifacts { dir, meta };
        [a.kernel(), a.initrd(), a.rootfs()]
            .iter()
            .all(|p| p.is_file())
            .then_some(a)
    }

    /// Builds the entry `key` with `fill`, which writes the three files into the directory it
    /// is given and returns the metadata. Nothing appears under `key` unless `fill` succeeds.
    /// An existing entry is replaced (for sources without a digest, such as directories).
    pub fn put<E: From<io::Error>>(
        &self,
        key: &Key,
        fill: impl FnOnce(&Path) -> Result<Meta, E>,
    ) -> Result<Artifacts, E> {
        let base = self.artifacts_dir();
        fs::create_dir_all(&base)?;
        self.clean_stale();
        let tmp = base.join(format!(".tmp-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let result = (|| {
            let meta = fill(&tmp)?;
            // Entries are immutable; outputs may be hard links to them.
            for f in [KERNEL, INITRD, ROOTFS] {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(tmp.join(f), fs::Permissions::from_mode(0o444))?;
            }
            let json = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
            crate::write::write_atomic(&tmp.join("meta.json"), &json)?;
            sync_dir(&tmp);
            let dest = base.join(key.as_str());
            if dest.exists() {
                let old = base.join(format!(".old-{key}-{}", std::process::id()));
                fs::rename(&dest, &old)?;
                let _ = fs::remove_dir_all(&old);
            }
            fs::rename(&tmp, &dest)?;
            sync_dir(&base);
            Ok(Artifacts { dir: dest, meta })
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Removes temporary directories and partial blobs left by processes that are gone.
    pub fn clean_stale(&self) -> Pruned {
        let mut p = Pruned::default();
        // `.tmp-KEY-PID` (a build) and `.old-KEY-PID` (a replaced entry on its way out).
        let pid_of = |name: &str| -> Option<u32> {
            let rest = name
                .strip_prefix(".tmp-")
                .or_else(|| name.strip_prefix(".old-"))?;
            rest.rsplit('-').next()?.parse().ok()
        };
        let Ok(rd) = fs::read_dir(self.artifacts_dir()) else {
            return p;
        };
        for e in rd.flatten() {
            let pid = pid_of(&e.file_name().to_string_lossy());
            if pid.is_some_and(|pid| pid != std::process::id() && !crate::write::pid_alive(pid)) {
                p.bytes += du(&e.path());
                p.entries += 1;
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
        p
    }

    /// Every complete entry, newest first.
    pub fn list(&self) -> Vec<Artifacts> {
        let mut v: Vec<Artifacts> = fs::read_dir(self.artifacts_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.get(&Key::parse(e.file_name().to_str()?)?))
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.meta.created));
        v
    }

    /// Bytes and count of cached layer blobs.
    pub fn blobs(&self) -> (u64, u64) {
        let dir = self.root.join("blobs/sha256");
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
    }

    /// Removes layer blobs (only needed to build again), leftovers of interrupted runs, and
    /// with `all`, every artifact entry and downloaded ISO too.
    pub fn prune(&self, all: bool) -> Pruned {
        let mut p = self.clean_stale();
        let mut remove = |path: PathBuf| {
            if path.exists() {
                p.bytes += du(&path);
                p.entries += 1;
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        };
        if let Ok(rd) = fs::read_dir(self.root.join("blobs/sha256")) {
            for e in rd.flatten() {
                remove(e.path());
            }
        }
        if all {
            for a in self.list() {
                remove(a.dir);
            }
            if let Ok(rd) = fs::read_dir(self.root.join("downloads")) {
                for e in rd.flatten() {
                    remove(e.path());
                }
            }
            remove(self.root.join("refs"));
        }
        p
    }

    fn ref_path(&self, reference: &str, arch: &str) -> PathBuf {
        let h = Digest::of(format!("{reference}\n{arch}").as_bytes());
        self.root
            .join("refs")
            .join(format!("{}.json", &h.hex()[..16]))
    }

    /// Records what `reference` resolved to, for starts without the registry.
    pub fn remember(&self, reference: &str, arch: &str, digest: &Digest) {
        let rec = RefRecord {
            reference: reference.into(),
            arch: arch.into(),
            digest: digest.clone(),
        };
        let path = self.ref_path(reference, arch);
        if let (Some(dir), Ok(json)) = (path.parent(), serde_json::to_vec(&rec)) {
            let _ = fs::create_dir_all(dir);
            let _ = crate::write::write_atomic(&path, &json);
        }
    }

    /// The digest `reference` last resolved to.
    pub fn recall(&self, reference: &str, arch: &str) -> Option<Digest> {
        let rec: RefRecord =
            serde_json::from_slice(&fs::read(self.ref_path(reference, arch)).ok()?).ok()?;
        (rec.reference == reference && rec.arch == arch).then_some(rec.digest)
    }
}

fn du(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| du(&e.path()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_plain_path_component() {
        let d = Digest::of(b"x");
        assert_eq!(
            Key::image(&d, Compression::Zstd).as_str(),
            format!("sha256-{}-zstd", d.hex())
        );
        let k = Key::dir(Path::new("/srv/root"), Compression::Gzip);
        assert!(k.as_str().starts_with("dir-") && Key::parse(k.as_str()).is_some());
        for bad in [
            "",
            ".",
            "..",
            ".tmp-x-1",
            "a/b",
            "/etc",
            "A",
            "x y",
            &"a".repeat(97),
        ] {
            assert!(Key::parse(bad).is_none(), "{bad:?}");
        }
    }
}
