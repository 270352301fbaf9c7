//! The merged root filesystem of an image, built in memory from its layers, one tar stream at a
//! time, with the OCI whiteout rules.
//!
//! Only names and metadata live here. File contents go straight from the tar stream into the
//! squashfs [`Writer`], which hands back where they went; a file that a later layer replaces or
//! deletes just stops being referenced. So an image is read once, never unpacked to disk.
//!
//! Every layer is untrusted. Entries with absolute paths or `..` and hard links to anything
//! outside the tree are refused with an error that names the layer and the entry. A path whose
//! parent is a symlink is resolved inside the root, the way the kernel would inside a chroot
//! (a symlink that climbs above `/` stops there), so no entry can land outside it. The tree is
//! bounded however the entries are arranged: directories nest at most [`MAX_DEPTH`] deep, even
//! through symlinked parents, and an image holds at most [`MAX_INODES`] entries; nothing here
//! or in the squashfs writer recurses on image data.

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::squashfs::{FileData, Writer};

/// Deepest directory nesting accepted, in a path from a layer and in the tree it builds (a
/// chain of symlinked parents can nest directories far deeper than any one path is long).
pub const MAX_DEPTH: usize = 512;
/// Most entries (files, directories, links) an image may have: a Kairos image has about 100,000.
pub const MAX_INODES: usize = 4_000_000;
/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_HOPS: usize = 40;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, set-id and sticky bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

#[derive(Debug)]
pub enum Kind {
    Dir(BTreeMap<Vec<u8>, usize>),
    File(FileData),
    Symlink(Vec<u8>),
    Block((u32, u32)),
    Char((u32, u32)),
    Fifo,
    Socket,
}

/// Extended attributes: full names (`security.capability`) and raw values, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug)]
pub struct Inode {
    pub meta: Meta,
    pub kind: Kind,
    pub xattrs: Xattrs,
    /// The last layer that declared this entry or walked through it (opaque directories hide
    /// what no later layer touched).
    touched: u32,
}

impl Inode {
    pub fn mode_with_type(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir(_) => libc::S_IFDIR,
            Kind::File(_) => libc::S_IFREG,
            Kind::Symlink(_) => libc::S_IFLNK,
            Kind::Block(_) => libc::S_IFBLK,
            Kind::Char(_) => libc::S_IFCHR,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        };
        ty | (self.meta.mode & 0o7777)
    }
}

/// An arena of inodes; directories map names to arena indices, so hard links share one index.
#[derive(Debug)]
pub struct Tree {
    pub inodes: Vec<Inode>,
    /// How deep each directory is (the root is 0); 0 for other inodes.
    depth: Vec<u16>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("layer {layer}: refusing entry {entry:?}: {why}; the image is not safe to use")]
    Hostile {
        layer: String,
        entry: String,
        why: String,
    },
    #[error("layer {layer} is damaged or truncated ({source}); pull the image again")]
    Corrupt { layer: String, source: io::Error },
    #[error("writing the squashfs failed: {0}")]
    Write(io::Error),
}

/// Counts for one applied layer.
#[derive(Debug, Default, Clone)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
    /// Paths of entries with extended attributes squashfs cannot hold (outside the user.,
    /// trusted. and security. namespaces), which are dropped.
    pub xattr_paths: Vec<String>,
}

fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The components of a path from a layer, or why it is refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains ..".into()),
            c if c.len() > 255 => return Err("name longer than 255 bytes".into()),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("path deeper than {MAX_DEPTH} levels"));
    }
    Ok(out)
}

impl Tree {
    pub const ROOT: usize = 0;

    pub fn new() -> Tree {
        Tree {
            inodes: vec![Inode {
                meta: Meta {
                    mode: 0o755,
                    ..Meta::default()
                },
                kind: Kind::Dir(BTreeMap::new()),
                xattrs: Vec::new(),
                touched: 0,
            }],
            depth: vec![0],
        }
    }

    pub fn children(&self, dir: usize) -> Option<&BTreeMap<Vec<u8>, usize>> {
        match &self.inodes[dir].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
        match &mut self.inodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("children_mut on a non-directory"),
        }
    }

    /// Adds an inode as `name` in directory `parent` (replacing what was there), within the
    /// bounds on depth and count.
    fn add(
        &mut self,
        parent: usize,
        name: &[u8],
        meta: Meta,
        kind: Kind,
        touched: u32,
    ) -> Result<usize, String> {
        if self.inodes.len() >= MAX_INODES {
            return Err(format!("the image has more than {MAX_INODES} entries"));
        }
        let depth = if matches!(kind, Kind::Dir(_)) {
            let d = usize::from(self.depth[parent]) + 1;
            if d > MAX_DEPTH {
                return Err(format!(
                    "directories nest deeper than {MAX_DEPTH} levels (through symlinked parents)"
                ));
            }
            d as u16
        } else {
            0
        };
        self.inodes.push(Inode {
            meta,
            kind,
            xattrs: Vec::new(),
            touched,
        });
        self.depth.push(depth);
        let id = self.inodes.len() - 1;
        self.children_mut(parent).insert(name.to_vec(), id);
        Ok(id)
    }

    /// Resolves `path` (absolute or relative to the root) inside the tree, following symlinks
    /// with `..` and absolute targets kept inside the root. `follow_last` decides whether a
    /// final symlink is followed.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> Option<usize> {
        let mut stack: Vec<usize> = vec![Tree::ROOT];
        let mut todo: Vec<Vec<u8>> = path
            .split(|&b| b == b'/')
            .rev()
            .map(|c| c.to_vec())
            .collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = *stack.last()?;
            let id = *self.children(dir)?.get(&c)?;
            let last = todo.iter().all(|t| t.is_empty() || t == b".");
            if let Kind::Symlink(target) = &self.inodes[id].kind {
                if last && !follow_last {
                    stack.push(id);
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                todo.extend(target.split(|&b| b == b'/').rev().map(|c| c.to_vec()));
                continue;
            }
            stack.push(id);
        }
        stack.last().copied()
    }

    /// The directory `components` names, created (as 0755 root:root) where missing; symlinks on
    /// the way are followed inside the root. Marks every directory walked as touched by `layer`.
    fn parent_dir(&mut self, components: &[&[u8]], layer: u32) -> Result<usize, String> {
        let mut dir = Tree::ROOT;
        for (i, &c) in components.iter().enumerate() {
            let next = match self.children(dir).and_then(|ch| ch.get(c)).copied() {
                Some(id) => match self.inodes[id].kind {
                    Kind::Dir(_) => id,
                    Kind::Symlink(_) => {
                        let joined = components[..=i].join(&b'/');
                        match self.resolve(&joined, true) {
                            Some(t) if matches!(self.inodes[t].kind, Kind::Dir(_)) => t,
                            _ => {
                                return Err(format!(
                                    "parent {} is a symlink that does not lead to a directory",
                                    display(&joined)
                                ))
                            }
                        }
                    }
                    _ => {
                        return Err(format!(
                            "parent {} is not a directory",
                            display(&components[..=i].join(&b'/'))
                        ))
                    }
                },
                None => self.add(
                    dir,
                    c,
                    Meta {
                        mode: 0o755,
                        ..Meta::default()
                    },
                    Kind::Dir(BTreeMap::new()),
                    layer,
                )?,
            };
            self.inodes[next].touched = layer;
            dir = next;
        }
        Ok(dir)
    }

    /// Hides, below `dir`, everything that `layer` neither declared nor walked through.
    fn make_opaque(&mut self, dir: usize, layer: u32) {
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            let keep: Vec<(Vec<u8>, usize)> = self
                .children(d)
                .into_iter()
                .flatten()
                .filter(|(_, &c)| self.inodes[c].touched >= layer)
                .map(|(n, &c)| (n.clone(), c))
                .collect();
            for (_, c) in &keep {
                if matches!(self.inodes[*c].kind, Kind::Dir(_)) {
                    todo.push(*c);
                }
            }
            *self.children_mut(d) = keep.into_iter().collect();
        }
    }

    /// Applies one layer (an uncompressed tar stream) on top of the tree; file data goes to
    /// `writer`. `layer` counts from 1 in application order; `name` (its digest) is for errors.
    pub fn apply_layer(
        &mut self,
        writer: &mut Writer,
        layer: u32,
        name: &str,
        reader: impl Read,
    ) -> Result<LayerStats, MergeError> {
        let corrupt = |source: io::Error| MergeError::Corrupt {
            layer: name.to_string(),
            source,
        };
        let mut stats = LayerStats::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            stats.entries += 1;
            let raw = entry.path_bytes().into_owned();
            let hostile = |why: String| MergeError::Hostile {
                layer: name.to_string(),
                entry: display(&raw),
                why,
            };
            let ty = entry.header().entry_type();
            if matches!(
                ty,
                tar::EntryType::XGlobalHeader
                    | tar::EntryType::XHeader
                    | tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
            ) {
                continue;
            }
            let parts = components(&raw).map_err(hostile)?;
            let Some((&base, parents)) = parts.split_last() else {
                // "./": the root directory's own metadata.
                if ty.is_dir() {
                    self.inodes[Tree::ROOT].meta = meta_of(entry.header());
                }
                continue;
            };
            let meta = meta_of(entry.header());

            if let Some(hidden) = base.strip_prefix(b".wh.") {
                let parent = self.parent_dir(parents, layer).map_err(hostile)?;
                if hidden == b".wh..opq" {
                    self.make_opaque(parent, layer);
                } else if !hidden.starts_with(b".wh.") {
                    self.children_mut(parent).remove(hidden);
                }
                continue;
            }

            let mut xattrs: Xattrs = Vec::new();
            if let Ok(Some(pax)) = entry.pax_extensions() {
                for e in pax.flatten() {
                    if let Some(name) = e.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                        if crate::squashfs::xattr_supported(name) {
                            xattrs.push((name.to_vec(), e.value_bytes().to_vec()));
                        } else {
                            stats.xattr_paths.push(display(&raw));
                        }
                    }
                }
            }
            xattrs.sort();

            let parent = self.parent_dir(parents, layer).map_err(hostile)?;
            let existing = self.children(parent).and_then(|c| c.get(base)).copied();
            let kind = match ty {
                tar::EntryType::Directory => {
                    if let Some(id) = existing {
                        if matches!(self.inodes[id].kind, Kind::Dir(_)) {
                            self.inodes[id].meta = meta;
                            self.inodes[id].xattrs = xattrs;
                            self.inodes[id].touched = layer;
                            continue;
                        }
                    }
                    Kind::Dir(BTreeMap::new())
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    let fd = writer.add_file(&mut entry, size).map_err(|e| match e {
                        crate::squashfs::AddError::Read(e) => corrupt(e),
                        crate::squashfs::AddError::Write(e) => MergeError::Write(e),
                    })?;
                    stats.bytes += size;
                    Kind::File(fd)
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    if target.is_empty() {
                        return Err(hostile("symlink without a target".into()));
                    }
                    // Kept as written: one that climbs above `/` stops there, at boot as here.
                    Kind::Symlink(target)
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let tparts = components(&target).map_err(|why| {
                        hostile(format!("hard link to {}: {why}", display(&target)))
                    })?;
                    let id = self
                        .resolve(&tparts.join(&b'/'), false)
                        .filter(|&id| id != Tree::ROOT)
                        .ok_or_else(|| {
                            hostile(format!(
                                "hard link to {}, which is not in the image",
                                display(&target)
                            ))
                        })?;
                    if matches!(self.inodes[id].kind, Kind::Dir(_)) {
                        return Err(hostile(format!(
                            "hard link to directory {}",
                            display(&target)
                        )));
                    }
                    self.inodes[id].touched = layer;
                    self.children_mut(parent).insert(base.to_vec(), id);
                    continue;
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let header = entry.header();
                    let dev = (
                        header.device_major().ok().flatten().unwrap_or(0),
                        header.device_minor().ok().flatten().unwrap_or(0),
                    );
                    if ty == tar::EntryType::Char {
                        Kind::Char(dev)
                    } else {
                        Kind::Block(dev)
                    }
                }
                tar::EntryType::Fifo => Kind::Fifo,
                _ => continue,
            };
            let id = self.add(parent, base, meta, kind, layer).map_err(hostile)?;
            self.inodes[id].xattrs = xattrs;
        }
        Ok(stats)
    }

    /// Adds a hard link at `path` to the inode already at `target` (for directory sources).
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<(), String> {
        let id = self
            .resolve(target, false)
            .ok_or_else(|| format!("hard link target {} is missing", display(target)))?;
        let parts = components(path)?;
        let Some((&base, parents)) = parts.split_last() else {
            return Err("hard link to the root".into());
        };
        let parent = self.parent_dir(parents, 1)?;
        self.children_mut(parent).insert(base.to_vec(), id);
        Ok(())
    }

    /// Adds a file, directory or symlink at `path` (for sources that are not tar streams);
    /// returns its inode (the root's for an empty path, whose metadata it sets).
    pub fn insert(&mut self, path: &[u8], meta: Meta, kind: Kind) -> Result<usize, String> {
        let parts = components(path)?;
        let Some((&base, parents)) = parts.split_last() else {
            self.inodes[Tree::ROOT].meta = meta;
            return Ok(Tree::ROOT);
        };
        let parent = self.parent_dir(parents, 1)?;
        self.add(parent, base, meta, kind, 1)
    }
}

fn meta_of(h: &tar::Header) -> Meta {
    Meta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().unwrap_or(0).min(u32::MAX as u64) as u32,
        gid: h.gid().unwrap_or(0).min(u32::MAX as u64) as u32,
        mtime: h.mtime().unwrap_or(0).min(u32::MAX as u64) as u32,
    }
}

/// Splits a name into runs of digits and non-digits and compares digit runs by value, so
/// `vmlinuz-6.1.0-10` sorts after `vmlinuz-6.1.0-9`.
pub fn version_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    fn runs(s: &[u8]) -> Vec<(bool, &[u8])> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=s.len() {
            if i == s.len() || s[i].is_ascii_digit() != s[start].is_ascii_digit() {
                out.push((s[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for ((da, xa), (db, xb)) in ra.iter().zip(rb.iter()) {
        let o = if *da && *db {
            let (ta, tb) = (trim_zeros(xa), trim_zeros(xb));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if o.is_ne() {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let i = d.iter().position(|&b| b != b'0').unwrap_or(d.len());
    &d[i..]
}

/// How a `/boot` name ranks before its version is compared: backups (`vmlinuz.old`,
/// `initrd.img.bak`, `…~`) last, then names without a version (`vmlinuz`, usually a link to one
/// that has it), then versioned names.
fn boot_rank(version: &[u8]) -> u8 {
    let backup = version.ends_with(b".old")
        || version.ends_with(b".bak")
        || version.ends_with(b"~")
        || version.ends_with(b".dpkg-old");
    if backup {
        0
    } else if version.iter().any(u8::is_ascii_digit) {
        2
    } else {
        1
    }
}

/// The kernel and initrd chosen from `/boot`.
#[derive(Debug, Clone)]
pub struct BootPick {
    pub kernel_name: String,
    pub kernel: usize,
    pub initrd_name: String,
    pub initrd: usize,
}

const KERNEL_PREFIXES: [&str; 5] = ["vmlinuz", "Image", "zImage", "uImage", "image"];
const INITRD_PREFIXES: [&str; 2] = ["initrd", "initramfs"];

/// The version part of a boot file name: what follows the prefix.
fn version_of<'a>(name: &'a [u8], prefixes: &[&str]) -> Option<&'a [u8]> {
    prefixes
        .iter()
        .find_map(|p| name.strip_prefix(p.as_bytes()))
}

impl Tree {
    /// Picks the kernel and initrd from `/boot`, as a pair that boots:
    /// 1. the newest kernel (version-aware) that has an initrd of its own version
    ///    (`initrd.img-V`, `initramfs-V.img`, `initrd-V`);
    /// 2. else, with an unversioned initrd (Kairos builds exactly one, `/boot/initrd`, for the
    ///    kernel `/boot/vmlinuz` points at), the kernel the unversioned kernel name resolves
    ///    to, or the newest;
    /// 3. else the newest kernel and the newest initrd.
    ///
    /// Backups (`.old`, `.bak`, `~`) never win. Symlinks resolve inside the image. The error
    /// lists what `/boot` holds.
    pub fn boot_files(&self) -> Result<BootPick, String> {
        let listing = || -> String {
            let names: Vec<String> = self
                .resolve(b"/boot", true)
                .and_then(|b| self.children(b))
                .map(|c| c.keys().map(|k| display(k)).collect())
                .unwrap_or_default();
            if names.is_empty() {
                "/boot is missing or empty".into()
            } else {
                format!("/boot holds: {}", names.join(", "))
            }
        };
        let boot = self.resolve(b"/boot", true).and_then(|b| self.children(b));
        let candidates = |prefixes: &[&str]| -> Vec<(Vec<u8>, usize)> {
            let mut v: Vec<(Vec<u8>, usize)> = boot
                .into_iter()
                .flatten()
                .filter(|(n, _)| version_of(n, prefixes).is_some())
                .filter_map(|(n, _)| {
                    Some((n.clone(), self.file_at(&[b"/boot/", &n[..]].concat())?))
                })
                .collect();
            v.sort_by(|a, b| {
                let (va, vb) = (
                    version_of(&a.0, prefixes).unwrap_or_default(),
                    version_of(&b.0, prefixes).unwrap_or_default(),
                );
                boot_rank(va)
                    .cmp(&boot_rank(vb))
                    .then_with(|| version_cmp(va, vb))
            });
            v
        };
        let kernels = candidates(&KERNEL_PREFIXES);
        let initrds = candidates(&INITRD_PREFIXES);
        let Some(newest) = kernels.last().cloned() else {
            return self.modules_pair().ok_or_else(|| {
                format!(
                    "no kernel (vmlinuz*, Image*, …) in /boot, nor a vmlinuz with an initramfs.img in /usr/lib/modules/VERSION; {}",
                    listing()
                )
            });
        };
        let Some(newest_initrd) = initrds.last().cloned() else {
            return Err(format!(
                "no initrd (initrd*, initramfs*) in /boot; {}",
                listing()
            ));
        };
        let version = |name: &[u8], prefixes: &[&str]| -> Vec<u8> {
            let v = version_of(name, prefixes).unwrap_or_default();
            let v = v.strip_prefix(b".img").unwrap_or(v);
            let v = v.strip_prefix(b"-").unwrap_or(v);
            v.strip_suffix(b".img").unwrap_or(v).to_vec()
        };
        let own_initrd = |k: &(Vec<u8>, usize)| {
            let kv = version(&k.0, &KERNEL_PREFIXES);
            if kv.is_empty() || boot_rank(&kv) == 0 {
                return None;
            }
            initrds
                .iter()
                .rev()
                .find(|i| version(&i.0, &INITRD_PREFIXES) == kv)
                .map(|i| (k.clone(), i.clone()))
        };
        let unversioned = |list: &[(Vec<u8>, usize)], prefixes: &[&str]| {
            list.iter()
                .find(|(n, _)| boot_rank(version_of(n, prefixes).unwrap_or_default()) == 1)
                .cloned()
        };
        let ((kname, kernel), (iname, initrd)) = kernels
            .iter()
            .rev()
            .find_map(own_initrd)
            .or_else(|| {
                let i = unversioned(&initrds, &INITRD_PREFIXES)?;
                // The kernel the image names without a version, reported by its own name.
                let k = unversioned(&kernels, &KERNEL_PREFIXES)
                    .and_then(|(_, id)| kernels.iter().rev().find(|k| k.1 == id).cloned())
                    .unwrap_or_else(|| newest.clone());
                Some((k, i))
            })
            .unwrap_or((newest, newest_initrd));
        Ok(BootPick {
            kernel_name: display(&kname),
            kernel,
            initrd_name: display(&iname),
            initrd,
        })
    }

    /// The regular file at `path`, symlinks followed inside the image.
    fn file_at(&self, path: &[u8]) -> Option<usize> {
        let id = self.resolve(path, true)?;
        matches!(self.inodes[id].kind, Kind::File(_)).then_some(id)
    }

    /// Images that keep the kernel beside its modules and nothing in `/boot` (bootc, Fedora
    /// CoreOS): `/usr/lib/modules/VERSION/vmlinuz` and `initramfs.img`, newest version first.
    fn modules_pair(&self) -> Option<BootPick> {
        let dir = self.resolve(b"/usr/lib/modules", true)?;
        let mut versions: Vec<&Vec<u8>> = self.children(dir)?.keys().collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        versions.into_iter().rev().find_map(|v| {
            let file = |name: &str| {
                let path = [b"/usr/lib/modules/", &v[..], b"/", name.as_bytes()].concat();
                Some((display(&path), self.file_at(&path)?))
            };
            let ((kernel_name, kernel), (initrd_name, initrd)) =
                (file("vmlinuz")?, file("initramfs.img")?);
            Some(BootPick {
                kernel_name,
                kernel,
                initrd_name,
                initrd,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            version_cmp(b"-6.1.0-10-amd64", b"-6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(version_cmp(b"-5.15.0", b"-6.1.0"), Ordering::Less);
        assert_eq!(version_cmp(b"", b"-6.1.0"), Ordering::Less);
        assert_eq!(version_cmp(b"-6.1.01", b"-6.1.1"), Ordering::Equal);
    }

    /// `/boot` as real images lay it out; each picks the pair that boots.
    #[test]
    fn boot_pairs_of_real_layouts() {
        let pick = |entries: &[(&str, Option<&str>)]| -> (String, String) {
            let mut t = Tree::new();
            for (name, target) in entries {
                let path = format!("boot/{name}");
                let kind = match target {
                    Some(to) => Kind::Symlink(to.as_bytes().to_vec()),
                    None => Kind::File(FileData::default()),
                };
                t.insert(path.as_bytes(), Meta::default(), kind).unwrap();
            }
            let p = t.boot_files().unwrap();
            (p.kernel_name, p.initrd_name)
        };
        let names = |k: &str, i: &str| (k.to_string(), i.to_string());
        // Kairos (kairos-init removes every initrd, then `dracut -f /boot/initrd KVER`).
        assert_eq!(
            pick(&[
                ("vmlinuz", Some("vmlinuz-6.8.0-49-generic")),
                ("vmlinuz-6.8.0-49-generic", None),
                ("config-6.8.0-49-generic", None),
                ("System.map-6.8.0-49-generic", None),
                ("initrd", None),
            ]),
            names("vmlinuz-6.8.0-49-generic", "initrd")
        );
        // Kairos with a second, newer kernel installed: /boot/initrd was built for the kernel
        // /boot/vmlinuz points at, so that is the pair (the newer kernel has no initrd).
        assert_eq!(
            pick(&[
                ("vmlinuz", Some("vmlinuz-6.8.0-49-generic")),
                ("vmlinuz-6.8.0-49-generic", None),
                ("vmlinuz-6.11.0-9-generic", None),
                ("initrd", None),
            ]),
            names("vmlinuz-6.8.0-49-generic", "initrd")
        );
        // A newer kernel whose initrd was never generated loses to an older complete pair.
        assert_eq!(
            pick(&[
                ("vmlinuz-6.1.0-9-amd64", None),
                ("vmlinuz-6.1.0-10-amd64", None),
                ("initrd.img-6.1.0-9-amd64", None),
            ]),
            names("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64")
        );
        // Arch: the fallback initramfs is not the kernel's own.
        assert_eq!(
            pick(&[
                ("vmlinuz-linux", None),
                ("initramfs-linux-fallback.img", None),
                ("initramfs-linux.img", None),
            ]),
            names("vmlinuz-linux", "initramfs-linux.img")
        );
        // Debian with two kernels and initramfs-tools' symlinks.
        assert_eq!(
            pick(&[
                ("vmlinuz", Some("vmlinuz-6.1.0-10-amd64")),
                ("vmlinuz.old", Some("vmlinuz-6.1.0-9-amd64")),
                ("initrd.img", Some("initrd.img-6.1.0-10-amd64")),
                ("initrd.img.old", Some("initrd.img-6.1.0-9-amd64")),
                ("vmlinuz-6.1.0-9-amd64", None),
                ("vmlinuz-6.1.0-10-amd64", None),
                ("initrd.img-6.1.0-9-amd64", None),
                ("initrd.img-6.1.0-10-amd64", None),
            ]),
            names("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64")
        );
        // Fedora, with the rescue pair that must not win.
        assert_eq!(
            pick(&[
                ("vmlinuz-0-rescue-4f1c", None),
                ("initramfs-0-rescue-4f1c.img", None),
                ("vmlinuz-6.5.6-300.fc39.x86_64", None),
                ("initramfs-6.5.6-300.fc39.x86_64.img", None),
            ]),
            names(
                "vmlinuz-6.5.6-300.fc39.x86_64",
                "initramfs-6.5.6-300.fc39.x86_64.img"
            )
        );
        // bootc / Fedora CoreOS: nothing in /boot, the kernel beside its modules.
        let mut t = Tree::new();
        for (path, kind) in [
            ("usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz", true),
            ("usr/lib/modules/6.5.6-300.fc39.x86_64/initramfs.img", true),
            ("usr/lib/modules/6.10.1-200.fc40.x86_64/vmlinuz", true),
            ("usr/lib/modules/6.10.1-200.fc40.x86_64/initramfs.img", true),
            ("usr/lib/modules/6.11.0-1.fc41.x86_64/vmlinuz", true),
            ("boot", false),
        ] {
            let k = if kind {
                Kind::File(FileData::default())
            } else {
                Kind::Dir(BTreeMap::new())
            };
            t.insert(path.as_bytes(), Meta::default(), k).unwrap();
        }
        let p = t.boot_files().unwrap();
        assert_eq!(
            (p.kernel_name.as_str(), p.initrd_name.as_str()),
            (
                "/usr/lib/modules/6.10.1-200.fc40.x86_64/vmlinuz",
                "/usr/lib/modules/6.10.1-200.fc40.x86_64/initramfs.img"
            ),
            "the newest version that has both files"
        );
        // Alpine: `vmlinuz-lts` and `initramfs-lts`, no version numbers at all.
        assert_eq!(
            pick(&[("vmlinuz-lts", None), ("initramfs-lts", None)]),
            names("vmlinuz-lts", "initramfs-lts")
        );
    }

    #[test]
    fn backups_and_unversioned_names_lose() {
        let mut names: Vec<&[u8]> =
            vec![b".old", b"-6.8.0-45", b"", b"-6.8.0-52", b"-6.8.0-52.bak"];
        names.sort_by(|a, b| {
            boot_rank(a)
                .cmp(&boot_rank(b))
                .then_with(|| version_cmp(a, b))
        });
        assert_eq!(names.last().unwrap(), b"-6.8.0-52");
        assert!(
            names[..2].iter().all(|n| boot_rank(n) == 0),
            "backups rank lowest"
        );
        assert_eq!(names[2], b"", "then the unversioned name");
    }

    #[test]
    fn paths_are_checked() {
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert_eq!(components(b"./etc//x/.").unwrap(), vec![&b"etc"[..], b"x"]);
    }
}
