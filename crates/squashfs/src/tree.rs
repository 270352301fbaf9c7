//! The filesystem an image holds, as the writer takes it: an arena of inodes in which
//! directories map names to indices, so hard links share one index. Only names and metadata
//! live here; a file's data is already in the image, and the tree keeps where ([`FileData`]).

use std::collections::BTreeMap;

use crate::FileData;

/// Ownership, permissions and time of an inode.
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
    /// Major and minor device numbers.
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
}

/// The inodes of an image; index [`Tree::ROOT`] is the root directory.
#[derive(Debug)]
pub struct Tree {
    pub inodes: Vec<Inode>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    pub const ROOT: usize = 0;

    /// A tree holding only the root directory (mode 0755, owned by root).
    pub fn new() -> Tree {
        Tree {
            inodes: vec![Inode {
                meta: Meta {
                    mode: 0o755,
                    ..Meta::default()
                },
                kind: Kind::Dir(BTreeMap::new()),
                xattrs: Vec::new(),
            }],
        }
    }

    /// The entries of directory `dir`; `None` if it is not a directory.
    pub fn children(&self, dir: usize) -> Option<&BTreeMap<Vec<u8>, usize>> {
        match &self.inodes.get(dir)?.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Adds an inode named `name` to directory `parent`, replacing what had that name, and
    /// returns its index; `None` if `parent` is not a directory.
    pub fn add(&mut self, parent: usize, name: &[u8], meta: Meta, kind: Kind) -> Option<usize> {
        self.children(parent)?;
        self.inodes.push(Inode {
            meta,
            kind,
            xattrs: Vec::new(),
        });
        let id = self.inodes.len() - 1;
        self.link(parent, name, id)?;
        Some(id)
    }

    /// Names inode `id` as `name` in directory `parent` too (a hard link); `None` if `parent`
    /// is not a directory.
    pub fn link(&mut self, parent: usize, name: &[u8], id: usize) -> Option<()> {
        match &mut self.inodes.get_mut(parent)?.kind {
            Kind::Dir(c) => {
                c.insert(name.to_vec(), id);
                Some(())
            }
            _ => None,
        }
    }
}
