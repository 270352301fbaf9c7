//! The merged root filesystem of an image, built in memory from its layers, one tar stream at a
//! time, with the OCI whiteout rules.
//!
//! Only names and metadata live here. File contents go straight from the tar stream into a
//! [`Sink`] (the squashfs writer), which hands back where they went; a file that a later layer
//! replaces or deletes just stops being referenced. So an image is read once, never unpacked to
//! disk. Which kernel and initrd boot is chosen in `boot_files` ([`Tree::boot_files`]).
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

pub use squashfs::{AddError, FileData, Inode, Kind, Meta, Xattrs};

/// Where file contents go while the tree keeps names and metadata (the squashfs writer): the
/// tree owns this seam, so it depends on no writer.
pub trait Sink {
    /// Reads exactly `size` bytes of one file from `r` and stores them.
    fn add_file(&mut self, r: &mut dyn Read, size: u64) -> Result<FileData, AddError>;
    /// Whether an extended attribute of this name can be kept.
    fn keeps_xattr(&self, name: &[u8]) -> bool;
}

impl Sink for squashfs::Writer {
    fn add_file(&mut self, r: &mut dyn Read, size: u64) -> Result<FileData, AddError> {
        squashfs::Writer::add_file(self, r, size)
    }
    fn keeps_xattr(&self, name: &[u8]) -> bool {
        squashfs::xattr_supported(name)
    }
}

/// Deepest directory nesting accepted, in a path from a layer and in the tree it builds (a
/// chain of symlinked parents can nest directories far deeper than any one path is long).
pub const MAX_DEPTH: usize = 512;
/// Most entries (files, directories, links) an image may have: a Kairos image has about 100,000.
pub const MAX_INODES: usize = 4_000_000;
/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_HOPS: usize = 40;

/// The image's filesystem as the layers so far make it: the [`squashfs::Tree`] the writer takes
/// (read through `Deref`), with what merging needs per inode beside it.
#[derive(Debug)]
pub struct Tree {
    fs: squashfs::Tree,
    /// How deep each directory is (the root is 0); 0 for other inodes.
    depth: Vec<u16>,
    /// The last layer that declared each inode or walked through it (opaque directories hide
    /// what no later layer touched).
    touched: Vec<u32>,
}

impl std::ops::Deref for Tree {
    type Target = squashfs::Tree;
    fn deref(&self) -> &squashfs::Tree {
        &self.fs
    }
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

pub(crate) fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The components of a path from a layer, or why it is refused.
/// Why an entry cannot go into the tree: the bounds it breaks, or a path that leaves the root
/// or runs through something that is not a directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("absolute path")]
    Absolute,
    #[error("path contains ..")]
    DotDot,
    #[error("name longer than 255 bytes")]
    LongName,
    #[error("path deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the image has more than {MAX_INODES} entries")]
    TooMany,
    #[error("directories nest deeper than {MAX_DEPTH} levels (through symlinked parents)")]
    NestsTooDeep,
    #[error("parent {0} is a symlink that does not lead to a directory")]
    SymlinkParent(String),
    #[error("parent {0} is not a directory")]
    NotDir(String),
    #[error("hard link target {0} is missing")]
    LinkTargetMissing(String),
    #[error("hard link to the root")]
    LinkToRoot,
}

fn components(raw: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    if raw.starts_with(b"/") {
        return Err(TreeError::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(TreeError::DotDot),
            c if c.len() > 255 => return Err(TreeError::LongName),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(TreeError::TooDeep);
    }
    Ok(out)
}

impl Tree {
    pub const ROOT: usize = squashfs::Tree::ROOT;

    pub fn new() -> Tree {
        Tree {
            fs: squashfs::Tree::new(),
            depth: vec![0],
            touched: vec![0],
        }
    }

    /// Sets the extended attributes of inode `id`.
    pub fn set_xattrs(&mut self, id: usize, xattrs: Xattrs) {
        self.fs.inodes[id].xattrs = xattrs;
    }

    fn children_mut(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
        match &mut self.fs.inodes[dir].kind {
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
    ) -> Result<usize, TreeError> {
        if self.inodes.len() >= MAX_INODES {
            return Err(TreeError::TooMany);
        }
        let depth = if matches!(kind, Kind::Dir(_)) {
            let d = usize::from(self.depth[parent]) + 1;
            if d > MAX_DEPTH {
                return Err(TreeError::NestsTooDeep);
            }
            d as u16
        } else {
            0
        };
        let id = self
            .fs
            .add(parent, name, meta, kind)
            .expect("the parent is a directory");
        self.depth.push(depth);
        self.touched.push(touched);
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
    fn parent_dir(&mut self, components: &[&[u8]], layer: u32) -> Result<usize, TreeError> {
        let mut dir = Tree::ROOT;
        for (i, &c) in components.iter().enumerate() {
            let next = match self.children(dir).and_then(|ch| ch.get(c)).copied() {
                Some(id) => match self.inodes[id].kind {
                    Kind::Dir(_) => id,
                    Kind::Symlink(_) => {
                        let joined = components[..=i].join(&b'/');
                        match self.resolve(&joined, true) {
                            Some(t) if matches!(self.inodes[t].kind, Kind::Dir(_)) => t,
                            _ => return Err(TreeError::SymlinkParent(display(&joined))),
                        }
                    }
                    _ => return Err(TreeError::NotDir(display(&components[..=i].join(&b'/')))),
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
            self.touched[next] = layer;
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
                .filter(|(_, &c)| self.touched[c] >= layer)
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
        writer: &mut dyn Sink,
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
            let hostile = |why: &dyn std::fmt::Display| MergeError::Hostile {
                layer: name.to_string(),
                entry: display(&raw),
                why: why.to_string(),
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
            let parts = components(&raw).map_err(|e| hostile(&e))?;
            let Some((&base, parents)) = parts.split_last() else {
                // "./": the root directory's own metadata.
                if ty.is_dir() {
                    self.fs.inodes[Tree::ROOT].meta = meta_of(entry.header());
                }
                continue;
            };
            let meta = meta_of(entry.header());

            if let Some(hidden) = base.strip_prefix(b".wh.") {
                let parent = self.parent_dir(parents, layer).map_err(|e| hostile(&e))?;
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
                        if writer.keeps_xattr(name) {
                            xattrs.push((name.to_vec(), e.value_bytes().to_vec()));
                        } else {
                            stats.xattr_paths.push(display(&raw));
                        }
                    }
                }
            }
            xattrs.sort();

            let parent = self.parent_dir(parents, layer).map_err(|e| hostile(&e))?;
            let existing = self.children(parent).and_then(|c| c.get(base)).copied();
            let kind = match ty {
                tar::EntryType::Directory => {
                    if let Some(id) = existing {
                        if matches!(self.inodes[id].kind, Kind::Dir(_)) {
                            self.fs.inodes[id].meta = meta;
                            self.fs.inodes[id].xattrs = xattrs;
                            self.touched[id] = layer;
                            continue;
                        }
                    }
                    Kind::Dir(BTreeMap::new())
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    let fd = writer.add_file(&mut entry, size).map_err(|e| match e {
                        AddError::Read(e) => corrupt(e),
                        AddError::Write(e) => MergeError::Write(e),
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
                        return Err(hostile(&"symlink without a target"));
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
                        hostile(&format!("hard link to {}: {why}", display(&target)))
                    })?;
                    let id = self
                        .resolve(&tparts.join(&b'/'), false)
                        .filter(|&id| id != Tree::ROOT)
                        .ok_or_else(|| {
                            hostile(&format!(
                                "hard link to {}, which is not in the image",
                                display(&target)
                            ))
                        })?;
                    if matches!(self.inodes[id].kind, Kind::Dir(_)) {
                        return Err(hostile(&format!(
                            "hard link to directory {}",
                            display(&target)
                        )));
                    }
                    self.touched[id] = layer;
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
            let id = self
                .add(parent, base, meta, kind, layer)
                .map_err(|e| hostile(&e))?;
            self.fs.inodes[id].xattrs = xattrs;
        }
        Ok(stats)
    }

    /// Adds a hard link at `path` to the inode already at `target` (for directory sources).
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<(), TreeError> {
        let id = self
            .resolve(target, false)
            .ok_or_else(|| TreeError::LinkTargetMissing(display(target)))?;
        let parts = components(path)?;
        let Some((&base, parents)) = parts.split_last() else {
            return Err(TreeError::LinkToRoot);
        };
        let parent = self.parent_dir(parents, 1)?;
        self.children_mut(parent).insert(base.to_vec(), id);
        Ok(())
    }

    /// Adds a file, directory or symlink at `path` (for sources that are not tar streams);
    /// returns its inode (the root's for an empty path, whose metadata it sets).
    pub fn insert(&mut self, path: &[u8], meta: Meta, kind: Kind) -> Result<usize, TreeError> {
        let parts = components(path)?;
        let Some((&base, parents)) = parts.split_last() else {
            self.fs.inodes[Tree::ROOT].meta = meta;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert_eq!(components(b"./etc//x/.").unwrap(), vec![&b"etc"[..], b"x"]);
    }

    #[test]
    fn inserts_say_why_they_are_refused() {
        let mut t = Tree::new();
        let file = || Kind::Symlink(b"x".to_vec());
        t.insert(b"etc", Meta::default(), file()).unwrap();
        assert_eq!(
            t.insert(b"etc/passwd", Meta::default(), file()),
            Err(TreeError::SymlinkParent("etc".into()))
        );
        assert_eq!(
            t.insert(b"/abs", Meta::default(), file()),
            Err(TreeError::Absolute)
        );
        assert_eq!(
            t.link(b"a", b"missing"),
            Err(TreeError::LinkTargetMissing("missing".into()))
        );
        assert_eq!(t.link(b"", b"etc"), Err(TreeError::LinkToRoot));
        assert_eq!(
            TreeError::NotDir("usr/bin".into()).to_string(),
            "parent usr/bin is not a directory"
        );
    }
}
