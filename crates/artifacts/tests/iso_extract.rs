//! A Kairos ISO whose squashfs is over 4 GiB (so ISO 9660 stores it as several extents), taken
//! through the one source entry and extracted the way `daybreak netboot` does it: the copy is
//! the file that went into the ISO, byte for byte.

use std::fs::File;
use std::os::unix::fs::FileExt;

use artifacts::from_iso_file;
use testkit::{pattern, tempdir};

#[test]
fn a_multi_extent_rootfs_is_extracted_whole() {
    if !testkit::require(false, &["xorriso"]) {
        return;
    }
    let dir = tempdir("iso-extract");
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/kernel"), pattern(300_001, 1)).unwrap();
    std::fs::write(root.join("boot/initrd"), pattern(120_000, 2)).unwrap();
    let big = root.join("rootfs.squashfs");
    let size: u64 = (4 << 30) + 12_345;
    {
        let f = File::create(&big).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"HEAD-MARK", 0).unwrap();
        f.write_all_at(b"MIDDLE", (4 << 30) - 3).unwrap();
        f.write_all_at(b"TAIL-MARK", size - 9).unwrap();
    }
    let iso = dir.join("big.iso");
    testkit::mkisofs(&root, &iso, &["-R", "-J", "-iso-level", "3"]);

    let set = from_iso_file(iso.clone()).unwrap();
    assert!(set.rootfs.extents.len() >= 2, "{:?}", set.rootfs.extents);
    assert_eq!(set.rootfs.size(), size);
    let out = dir.join("out.squashfs");
    artifacts::copy_extents_atomic(
        &File::open(&set.rootfs.path).unwrap(),
        &set.rootfs.extents,
        &out,
        &artifacts::Stop::new(),
        &mut |_| {},
    )
    .unwrap();
    std::fs::remove_file(&iso).unwrap();

    let (got, want) = (File::open(&out).unwrap(), File::open(&big).unwrap());
    assert_eq!(got.metadata().unwrap().len(), size);
    let (mut a, mut b) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(a.len() as u64) as usize;
        got.read_exact_at(&mut a[..n], pos).unwrap();
        want.read_exact_at(&mut b[..n], pos).unwrap();
        assert!(a[..n] == b[..n], "extracted file differs at {pos}");
        pos += n as u64;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
