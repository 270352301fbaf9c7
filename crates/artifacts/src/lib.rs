//! Sources to netboot artifacts: Kairos ISOs read without mounting (the `iso9660` crate), OCI
//! images merged from their layers ([`rootfs`]) into a squashfs (the `squashfs` crate), and the
//! atomic writes that land files in an output directory or the store ([`write`]).
//!
//! Everything read here is untrusted input: lengths are checked against what is there, and a
//! file only appears under its final name once it is complete and on disk.

pub mod boot_files;
pub mod build;
pub mod digest;
pub mod download;
pub mod extent;
pub mod image;
pub mod lock;
pub mod oci;
pub mod registry;
pub mod release;
pub mod rootfs;
pub mod source;
pub mod store;
pub mod write;

pub use iso9660::{Iso, IsoError};
pub use squashfs::Compression;
