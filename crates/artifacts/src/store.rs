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
use crate::write::sync_dir;
use squashfs::Compression;

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
    /// Sizes of kernel, initrd and squashfs, recorded last: an entry whose files do not have
    /// them is incomplete.
    #[serde(default)]
    pub sizes: Option<[u64; 3]>,
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
    /// The image's own signed shim and network GRUB, when it carries both.
    pub fn signed_chain(&self) -> Option<(PathBuf, PathBuf)> {
        let regular = |p: PathBuf| {
            fs::symlink_metadata(&p)
                .is_ok_and(|m| m.file_type().is_file())
                .then_some(p)
        };
        Some((
            regular(self.dir.join(crate::build::SHIM))?,
            regular(self.dir.join(crate::build::GRUB))?,
        ))
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

    /// Named by the content (a digest): an entry that exists is the one wanted, never rebuilt.
    pub fn content_addressed(&self) -> bool {
        self.0.starts_with("sha256-")
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

/// A state directory that must not be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}; choose a writable state_dir")]
    Io { path: PathBuf, source: io::Error },
    #[error("state directory {path} is unsafe: {why}. Another user could change what machines boot or what this process deletes; remove it or fix it, or choose another state_dir (default {default})", default = default_state_dir().display())]
    Unsafe { path: PathBuf, why: String },
}

/// Where the state lives unless told otherwise: `/var/lib/daybreak` for root, the user's
/// `$XDG_STATE_HOME/daybreak` (`~/.local/state/daybreak`) for anyone else. Never a fixed name
/// in a world-writable directory, which any local user could create first.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/daybreak");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("daybreak"),
        _ => home
            .map(|h| h.join(".local/state/daybreak"))
            .unwrap_or_else(|| PathBuf::from("daybreak-state")),
    }
}

/// The ssh rule for a state directory, applied to the path as the kernel resolves it: every
/// directory above it belongs to root or to us and is writable by nobody else, unless it is
/// sticky (as `/tmp` is, where others cannot move our entries); a symlink on the way belongs
/// to root or to us; the directory itself belongs to us and is writable by nobody else.
fn check_state_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let unsafe_ = |why: String| StateError::Unsafe {
        path: dir.to_path_buf(),
        why,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    };
    // Symlinks in the path as written: a link another user owns could be pointed anywhere.
    let mut prefix = PathBuf::new();
    for c in dir.components() {
        prefix.push(c);
        if let Ok(m) = fs::symlink_metadata(&prefix) {
            if m.file_type().is_symlink() && m.uid() != 0 && m.uid() != me {
                return Err(unsafe_(format!(
                    "{} is a symlink owned by uid {}",
                    prefix.display(),
                    m.uid()
                )));
            }
        }
    }
    let real = dir.canonicalize().map_err(io(dir))?;
    let mut at = PathBuf::new();
    let parts: Vec<_> = real.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let m = fs::symlink_metadata(&at).map_err(io(&at))?;
        let mode = m.mode();
        let last = i + 1 == parts.len();
        if last {
            if !m.is_dir() {
                return Err(unsafe_("it is not a directory".into()));
            }
            if m.uid() != me {
                return Err(unsafe_(format!(
                    "it belongs to uid {}, not to this user (uid {me})",
                    m.uid()
                )));
            }
            if mode & 0o022 != 0 {
                return Err(unsafe_(format!(
                    "its mode {:o} lets others write to it (chmod go-w {})",
                    mode & 0o7777,
                    real.display()
                )));
            }
        } else {
            if m.uid() != 0 && m.uid() != me {
                return Err(unsafe_(format!(
                    "{} above it belongs to uid {}",
                    at.display(),
                    m.uid()
                )));
            }
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(unsafe_(format!(
                    "{} above it is writable by others and not sticky",
                    at.display()
                )));
            }
        }
    }
    Ok(())
}

/// The key of a build's leftover: `.tmp-KEY.SUFFIX` (a build) or `.old-KEY.SUFFIX` (a replaced
/// entry on its way out).
fn leftover_key(name: &str) -> Option<&str> {
    let rest = name
        .strip_prefix(".tmp-")
        .or_else(|| name.strip_prefix(".old-"))?;
    let key = rest.split_once('.')?.0;
    Key::parse(key).map(|_| key)
}

/// Whether `path` is a directory itself, not a symlink to one: what is listed or emptied in the
/// store must be, so a planted link cannot point a prune at another directory.
fn real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// `read_dir`, only of a real directory.
fn entries(path: &Path) -> impl Iterator<Item = fs::DirEntry> {
    real_dir(path)
        .then(|| fs::read_dir(path).ok())
        .flatten()
        .into_iter()
        .flatten()
        .flatten()
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
    /// Opens the state directory (relative paths are taken from the working directory),
    /// creating it with mode 0700 if missing, and refuses one that is not safe to trust.
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        let root = absolute(state_dir);
        if fs::symlink_metadata(&root).is_err() {
            if let Some(parent) = root.parent() {
                fs::create_dir_all(parent).map_err(|source| StateError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            use std::os::unix::fs::DirBuilderExt;
            match fs::DirBuilder::new().mode(0o700).create(&root) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StateError::Io { path: root, source }),
            }
        }
        check_state_dir(&root)?;
        let store = Store { root };
        // Leftovers of builds that were killed go at every start.
        store.clean_stale();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Where downloaded ISOs are kept.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// The complete entry for `key`, if there is one: a real directory whose files are
    /// regular files (never symlinks), with its completeness marker.
    pub fn get(&self, key: &Key) -> Option<Artifacts> {
        let dir = self.artifacts_dir().join(key.as_str());
        if !real_dir(&self.artifacts_dir()) || !real_dir(&dir) {
            return None;
        }
        let regular = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file());
        let marker = dir.join("meta.json");
        if !regular(&marker) {
            return None;
        }
        let meta: Meta = serde_json::from_slice(&fs::read(marker).ok()?).ok()?;
        let sizes = meta.sizes?;
        let a = Artifacts { dir, meta };
        let size = |p: &Path| {
            fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.file_type().is_file())
                .map(|m| m.len())
        };
        [a.kernel(), a.initrd(), a.rootfs()]
            .iter()
            .zip(sizes)
            .all(|(p, want)| size(p) == Some(want))
            .then_some(a)
    }

    /// Builds the entry `key` with `fill`, which writes the three files into the directory it
    /// is given and returns the metadata. Nothing appears under `key` unless `fill` succeeds.
    /// An existing entry is replaced (for sources without a digest, such as directories).
    ///
    /// Builds of one key are serialised by a lock, across processes sharing the state
    /// directory: a second server asking for an image the first is building waits (`waiting` is
    /// called once), then takes the finished entry instead of building it again.
    pub fn put<E: From<io::Error>>(
        &self,
        key: &Key,
        waiting: impl FnOnce(),
        fill: impl FnOnce(&Path) -> Result<Meta, E>,
    ) -> Result<Artifacts, E> {
        let base = self.artifacts_dir();
        fs::create_dir_all(&base)?;
        let _lock = self.lock(&format!("build-{key}"), waiting)?;
        if key.content_addressed() {
            if let Some(a) = self.get(key) {
                return Ok(a);
            }
        }
        // Holding the key's lock, any temporary of this key is a dead build's.
        for e in entries(&base) {
            if leftover_key(&e.file_name().to_string_lossy()) == Some(key.as_str()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        self.clean_stale();
        let tmp = base.join(format!(".tmp-{key}.{}", crate::lock::unique_suffix()));
        fs::create_dir(&tmp)?;
        let result = (|| {
            let mut meta = fill(&tmp)?;
            // Entries are immutable; outputs may be hard links to them.
            let mut sizes = [0u64; 3];
            for (f, size) in [KERNEL, INITRD, ROOTFS].iter().zip(&mut sizes) {
                use std::os::unix::fs::PermissionsExt;
                let path = tmp.join(f);
                fs::set_permissions(&path, fs::Permissions::from_mode(0o444))?;
                *size = fs::symlink_metadata(&path)?.len();
            }
            // meta.json, with the sizes, is the completeness marker: written last, checked by get.
            meta.sizes = Some(sizes);
            let json = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
            crate::write::write_atomic(&tmp.join("meta.json"), &json, 0o644)?;
            sync_dir(&tmp);
            let dest = base.join(key.as_str());
            if fs::symlink_metadata(&dest).is_ok() {
                let old = base.join(format!(".old-{key}.{}", crate::lock::unique_suffix()));
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

    /// Takes the lock `name` of this state directory (`locks/NAME`), waiting if another process
    /// holds it.
    pub fn lock(&self, name: &str, waiting: impl FnOnce()) -> io::Result<crate::lock::Lock> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir)?;
        crate::lock::Lock::exclusive(&dir.join(name), waiting)
    }

    fn try_lock(&self, name: &str) -> Option<crate::lock::Lock> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).ok()?;
        crate::lock::Lock::try_exclusive(&dir.join(name)).ok()?
    }

    /// The lock a blob download holds, so two processes never write one `.part` file.
    pub fn lock_blob(
        &self,
        digest: &Digest,
        waiting: impl FnOnce(),
    ) -> io::Result<crate::lock::Lock> {
        self.lock(&format!("blob-{}", digest.hex()), waiting)
    }

    /// Removes what builds that are gone left behind: temporary and replaced entry directories
    /// whose key nobody holds the build lock of (so never a build at work in another process).
    pub fn clean_stale(&self) -> Pruned {
        let mut p = Pruned::default();
        for e in entries(&self.artifacts_dir()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = leftover_key(&name) else {
                continue;
            };
            if let Some(_lock) = self.try_lock(&format!("build-{key}")) {
                p.bytes += du(&e.path());
                p.entries += 1;
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
        p
    }

    /// Every complete entry, newest first.
    pub fn list(&self) -> Vec<Artifacts> {
        let mut v: Vec<Artifacts> = entries(&self.artifacts_dir())
            .filter_map(|e| self.get(&Key::parse(e.file_name().to_str()?)?))
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.meta.created));
        v
    }

    /// Bytes and count of cached layer blobs.
    pub fn blobs(&self) -> (u64, u64) {
        entries(&self.blob_dir())
            .filter_map(|e| e.metadata().ok())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
    }

    /// Removes layer blobs (only needed to build again), leftovers of interrupted runs, and
    /// with `all`, every artifact entry and downloaded ISO too.
    pub fn prune(&self, all: bool) -> Pruned {
        let mut p = self.clean_stale();
        // `remove_dir_all` does not follow symlinks inside what it removes; a symlink met here
        // is removed itself, never what it points at.
        let mut remove = |path: PathBuf| {
            if let Ok(m) = fs::symlink_metadata(&path) {
                p.bytes += du(&path);
                p.entries += 1;
                let _ = if m.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        };
        // What another process is downloading or building (it holds the lock) stays.
        let lock_of = |e: &fs::DirEntry, kind: &str, sep: char| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.split(sep).next().unwrap_or_default().to_string();
            self.try_lock(&format!("{kind}-{id}"))
        };
        for e in entries(&self.blob_dir()) {
            if let Some(_held) = lock_of(&e, "blob", '.') {
                remove(e.path());
            }
        }
        if all {
            for e in entries(&self.artifacts_dir()) {
                if Key::parse(&e.file_name().to_string_lossy()).is_some() {
                    if let Some(_held) = lock_of(&e, "build", '/') {
                        remove(e.path());
                    }
                }
            }
            for e in entries(&self.downloads_dir()) {
                if let Some(_held) = lock_of(&e, "download", '-') {
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
            let _ = crate::write::write_atomic(&path, &json, 0o644);
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

/// Where a state directory path points: relative paths are taken from the working directory.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
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

    fn meta() -> Meta {
        Meta {
            source: "test".into(),
            digest: "sha256:x".into(),
            arch: "amd64".into(),
            compression: "gzip".into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd".into(),
            created: now(),
            sizes: None,
        }
    }

    fn fill(dir: &Path) -> io::Result<Meta> {
        for (f, n) in [(KERNEL, 10), (INITRD, 20), (ROOTFS, 30)] {
            fs::write(dir.join(f), vec![7u8; n])?;
        }
        Ok(meta())
    }

    fn store(tag: &str) -> (PathBuf, Store) {
        let dir = testkit::tempdir(&format!("store-{tag}"));
        let s = Store::open(&dir.join("state")).unwrap();
        (dir, s)
    }

    #[test]
    fn an_entry_is_built_once_and_found_whole() {
        let (dir, s) = store("once");
        let key = Key::image(&Digest::of(b"img"), Compression::Gzip);
        assert!(s.get(&key).is_none());
        let a = s.put(&key, || panic!("nobody else builds"), fill).unwrap();
        assert_eq!(a.meta.sizes, Some([10, 20, 30]), "sizes recorded last");
        assert_eq!(a.size(), 60);
        // Content-addressed: the next put takes the entry, without building.
        let b = s
            .put(
                &key,
                || {},
                |_: &Path| -> io::Result<Meta> { panic!("built twice") },
            )
            .unwrap();
        assert_eq!(b.dir, a.dir);
        assert_eq!(s.list().len(), 1);
        // Nothing but the entry and its lock is left.
        let names: Vec<String> = fs::read_dir(dir.join("state/artifacts"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [key.as_str()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_build_leaves_nothing_and_an_incomplete_entry_is_not_taken() {
        let (dir, s) = store("fail");
        let key = Key::image(&Digest::of(b"img"), Compression::Gzip);
        let e = s
            .put(
                &key,
                || {},
                |d: &Path| -> io::Result<Meta> {
                    fs::write(d.join(KERNEL), b"half")?;
                    Err(io::Error::other("disk full"))
                },
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert!(s.get(&key).is_none());
        assert_eq!(
            fs::read_dir(dir.join("state/artifacts")).unwrap().count(),
            0
        );
        // A whole entry whose squashfs was cut short (or swapped for a symlink) is not whole.
        let a = s.put(&key, || {}, fill).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(a.rootfs(), fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(a.rootfs(), b"short").unwrap();
        }
        assert!(s.get(&key).is_none(), "sizes checked");
        fs::remove_file(a.rootfs()).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", a.rootfs()).unwrap();
        assert!(s.get(&key).is_none(), "a symlink is no file of an entry");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_a_reference_resolved_to_is_recalled_for_its_arch() {
        let (dir, s) = store("refs");
        let d = Digest::of(b"manifest");
        assert_eq!(s.recall("quay.io/kairos/x:v1", "amd64"), None);
        s.remember("quay.io/kairos/x:v1", "amd64", &d);
        assert_eq!(s.recall("quay.io/kairos/x:v1", "amd64"), Some(d));
        assert_eq!(s.recall("quay.io/kairos/x:v1", "arm64"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prune_keeps_what_another_process_holds() {
        let (dir, s) = store("prune");
        let blobs = dir.join("state/blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let (free, held) = (Digest::of(b"a"), Digest::of(b"b"));
        fs::write(s.blob_path(&free), b"a").unwrap();
        fs::write(blobs.join(format!("{}.part", held.hex())), b"b").unwrap();
        let lock = s.lock_blob(&held, || {}).unwrap();
        let p = s.prune(false);
        assert_eq!(p.entries, 1);
        assert!(!s.blob_path(&free).exists());
        assert!(
            blobs.join(format!("{}.part", held.hex())).exists(),
            "a download at work stays"
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }
}
