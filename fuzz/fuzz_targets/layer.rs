//! A layer's tar stream, applied to an empty tree and written as a squashfs: whiteouts, links,
//! symlinked parents, hostile names. Nothing may panic, recurse without bound or grow past the
//! limits; what it refuses, it refuses with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

use artifacts::rootfs::Tree;
use artifacts::Compression;
use squashfs::Writer;

fuzz_target!(|data: &[u8]| {
    let Some(f) = daybreak_fuzz::memfile() else {
        return;
    };
    let Ok(mut w) = Writer::new(f, Compression::Gzip, 4096, 1) else {
        return;
    };
    let mut tree = Tree::new();
    // Twice, as two layers: the second sees the first's tree (whiteouts, opaque directories).
    for layer in 1..=2 {
        if tree.apply_layer(&mut w, layer, "fuzz", data).is_err() {
            break;
        }
    }
    let _ = tree.boot_files();
    let _ = w.finish(&tree);
});
