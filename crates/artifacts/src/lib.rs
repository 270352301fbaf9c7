//! Sources to netboot artifacts, behind one entry: [`open`] takes a source (an OCI image in a
//! registry, a layout, an archive or a directory; a Kairos ISO on disk or at a URL) and gives a
//! [`BootSet`]: kernel, initrds and rootfs, each a file with the extents that hold it, and the
//! origin. Images are pulled ([`registry`]), their layers merged ([`rootfs`]) into a squashfs
//! (the `squashfs` crate) and kept in the [`Store`]; ISOs are read without mounting (the
//! `iso9660` crate). Files land through atomic writes ([`copy_extents_atomic`]).
//!
//! Everything read here is untrusted input: digests are validated and verified, lengths are
//! checked against what is there, and a file only appears under its final name once it is
//! complete and on disk.
//!
//! The modules are private but for the parts with an API of their own: OCI documents and
//! references ([`oci`]), the registry client ([`registry`]), the layer merge ([`rootfs`]) and
//! the build from layers ([`build`]).

#![warn(unreachable_pub)]

mod boot_files;
pub mod build;
mod digest;
mod download;
mod extent;
mod image;
mod lock;
pub mod oci;
pub mod registry;
mod release;
pub mod rootfs;
mod source;
mod store;
mod write;

pub use digest::{hex, printable, Digest};
pub use download::{download, fetch_verified, sha256_file, DownloadError, Outcome};
pub use extent::Extent;
pub use image::{Event, ImageError, Peers, Report, Request, Turn};
pub use iso9660::{Iso, IsoError};
pub use lock::{random_hex, Lock};
pub use release::ReleaseKeys;
pub use source::{
    from_iso_file, is_url, open, open_iso, safe_name, BootFile, BootSet, Fetch, Origin, SourceError,
};
pub use squashfs::Compression;
pub use store::{absolute, default_state_dir, now, Artifacts, Key, Meta, Store};
pub use write::{copy_extents_atomic, link_atomic, read_small, write_atomic, Stop};
