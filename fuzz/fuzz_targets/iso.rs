//! An ISO image as a file: opened, its netboot files looked up, its root and /boot listed, and
//! each file's extents checked to lie inside the image.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut f) = daybreak_fuzz::memfile() else {
        return;
    };
    f.write_all(data).unwrap();
    let path = daybreak_fuzz::path_of(&f);
    let Ok(iso) = iso9660::Iso::open(&path) else {
        return;
    };
    for dir in ["/", "/boot", "/boot/../boot"] {
        let _ = iso.list(dir);
    }
    for path in ["/boot/kernel", "/boot/initrd", "/rootfs.squashfs"] {
        if let Ok(e) = iso.file(path) {
            for x in &e.extents {
                assert!(x.offset.saturating_add(x.len) <= data.len() as u64, "{x:?}");
            }
        }
    }
});
