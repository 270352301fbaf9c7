//! A run of bytes of a file: what a boot file is made of. A file of its own is one extent from
//! offset 0; a file inside an ISO is the extents the ISO records. The writer copies extents and
//! the HTTP server sends them, so neither needs to know which kind of source they came from.

/// `len` bytes of a file from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// The bytes of all `extents` together.
pub(crate) fn total(extents: &[Extent]) -> u64 {
    extents.iter().map(|e| e.len).sum()
}

impl From<iso9660::Extent> for Extent {
    fn from(e: iso9660::Extent) -> Extent {
        Extent {
            offset: e.offset,
            len: e.len,
        }
    }
}
