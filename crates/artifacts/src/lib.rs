//! Sources to netboot artifacts. Today: Kairos ISOs, read without mounting ([`iso`]), and the
//! atomic copy that lands files in an output directory or the cache ([`write`]).
//!
//! Everything read here is untrusted input: lengths are checked against what is there, and a
//! file only appears under its final name once it is complete and on disk.

pub mod download;
pub mod iso;
pub mod release;
pub mod write;
