//! A registry's or a layout's JSON: parsed as a manifest or an index, a platform picked, and
//! every digest in it checked to be usable as a file name.
#![no_main]

use libfuzzer_sys::fuzz_target;

use artifacts::oci::{select_platform, Document, Reference};
use artifacts::Digest;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = Document::parse(data, "fuzz") {
        let descs = doc
            .manifests
            .iter()
            .flatten()
            .chain(doc.layers.iter().flatten())
            .chain(doc.config.iter());
        for d in descs {
            let hex = d.digest.hex();
            assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        for arch in ["amd64", "arm64", "arm64/v8", "riscv64"] {
            let _ = select_platform(doc.manifests.as_deref().unwrap_or(&[]), arch, "fuzz");
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Digest::parse(s);
        if let Ok(r) = Reference::parse(s) {
            let _ = r.to_string();
        }
    }
});
