//! The ISO reader against images made by xorriso with the Kairos layout, in every naming scheme.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use testkit::{pattern, tempdir};

use iso9660::{Entry, Iso, IsoError};

/// The three netboot files of a Kairos ISO, where Kairos puts them.
#[derive(Debug)]
struct Netboot {
    kernel: Entry,
    initrd: Entry,
    rootfs: Entry,
}

fn netboot_files(iso: &Iso) -> Result<Netboot, IsoError> {
    Ok(Netboot {
        kernel: iso.file("/boot/kernel")?,
        initrd: iso.file("/boot/initrd")?,
        rootfs: iso.file("/rootfs.squashfs")?,
    })
}

fn have_xorriso() -> bool {
    testkit::require(false, &["xorriso"])
}

struct Tree {
    root: PathBuf,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    rootfs: Vec<u8>,
}

/// A Kairos-shaped tree; `symlink` makes /boot/kernel a link to /boot/vmlinuz-6.1.0-9-amd64.
fn tree(dir: &Path, symlink: bool) -> Tree {
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let t = Tree {
        root: root.clone(),
        kernel: pattern(300_001, 1),
        initrd: pattern(120_000, 2),
        rootfs: pattern(1_000_000, 3),
    };
    if symlink {
        std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), &t.kernel).unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.1.0-9-amd64", root.join("boot/kernel")).unwrap();
    } else {
        std::fs::write(root.join("boot/kernel"), &t.kernel).unwrap();
    }
    std::fs::write(root.join("boot/initrd"), &t.initrd).unwrap();
    std::fs::write(root.join("rootfs.squashfs"), &t.rootfs).unwrap();
    std::fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
    std::fs::write(root.join("EFI/BOOT/grub.cfg"), b"menuentry").unwrap();
    t
}

fn mkisofs(dir: &Path, name: &str, flags: &[&str], root: &Path) -> PathBuf {
    let iso = dir.join(name);
    testkit::mkisofs(root, &iso, flags);
    iso
}

fn contents(iso: &Path, e: &Entry) -> Vec<u8> {
    let f = File::open(iso).unwrap();
    let mut out = Vec::new();
    for x in &e.extents {
        let mut buf = vec![0u8; x.len as usize];
        f.read_exact_at(&mut buf, x.offset).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

fn check(iso_path: &Path, t: &Tree) {
    let iso = Iso::open(iso_path).unwrap();
    let files = netboot_files(&iso).unwrap();
    assert!(
        contents(iso_path, &files.kernel) == t.kernel,
        "kernel differs"
    );
    assert!(
        contents(iso_path, &files.initrd) == t.initrd,
        "initrd differs"
    );
    assert!(
        contents(iso_path, &files.rootfs) == t.rootfs,
        "rootfs differs"
    );
    for e in [&files.kernel, &files.initrd, &files.rootfs] {
        assert_eq!(e.extents.len(), 1, "small files are one extent");
    }
}

#[test]
fn rock_ridge_and_joliet_with_symlinked_kernel() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-rrj");
    let t = tree(&dir, true);
    let iso = mkisofs(&dir, "rrj.iso", &["-R", "-J"], &t.root);
    check(&iso, &t);
    let listing: Vec<String> = Iso::open(&iso)
        .unwrap()
        .list("/boot")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        listing.contains(&"vmlinuz-6.1.0-9-amd64".to_string()),
        "{listing:?}"
    );
}

#[test]
fn rock_ridge_only_with_symlinked_kernel() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-rr");
    let t = tree(&dir, true);
    check(&mkisofs(&dir, "rr.iso", &["-R"], &t.root), &t);
}

#[test]
fn joliet_only() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-joliet");
    let t = tree(&dir, false);
    check(&mkisofs(&dir, "j.iso", &["-J"], &t.root), &t);
}

#[test]
fn plain_iso9660_level3() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-plain");
    let t = tree(&dir, false);
    check(
        &mkisofs(&dir, "plain.iso", &["-iso-level", "3"], &t.root),
        &t,
    );
}

/// A file over 4 GiB is stored as several extents; it must read back whole.
#[test]
fn multi_extent_file_over_4gib() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-big");
    let t = tree(&dir, false);
    let big = t.root.join("rootfs.squashfs");
    let size: u64 = (4 << 30) + 12_345;
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&big)
            .unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"HEAD-MARK", 0).unwrap();
        f.write_all_at(b"MIDDLE", (4 << 30) - 3).unwrap();
        f.write_all_at(b"TAIL-MARK", size - 9).unwrap();
    }
    let iso_path = mkisofs(&dir, "big.iso", &["-R", "-J", "-iso-level", "3"], &t.root);
    std::fs::remove_file(&big).unwrap();
    let iso = Iso::open(&iso_path).unwrap();
    let files = netboot_files(&iso).unwrap();
    assert!(
        files.rootfs.extents.len() >= 2,
        "expected a multi-extent file: {:?}",
        files.rootfs.extents
    );
    assert_eq!(files.rootfs.size(), size);
    // Read the marks through the extent list, across the extent boundary.
    let f = File::open(&iso_path).unwrap();
    let read_at = |pos: u64, len: usize| -> Vec<u8> {
        let mut out = Vec::new();
        let mut base = 0u64;
        for x in &files.rootfs.extents {
            let (start, end) = (base, base + x.len);
            let (a, b) = (pos.max(start), (pos + len as u64).min(end));
            if a < b {
                let mut buf = vec![0u8; (b - a) as usize];
                f.read_exact_at(&mut buf, x.offset + (a - start)).unwrap();
                out.extend_from_slice(&buf);
            }
            base = end;
        }
        out
    };
    assert_eq!(read_at(0, 9), b"HEAD-MARK");
    assert_eq!(read_at((4 << 30) - 3, 6), b"MIDDLE");
    assert_eq!(read_at(size - 9, 9), b"TAIL-MARK");
    drop(f);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_files_list_what_the_iso_holds() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-missing");
    let t = tree(&dir, false);
    std::fs::remove_file(t.root.join("boot/initrd")).unwrap();
    let iso = mkisofs(&dir, "noinitrd.iso", &["-R", "-J"], &t.root);
    let e = netboot_files(&Iso::open(&iso).unwrap()).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, IsoError::NotFound { .. }));
    assert!(msg.contains("/boot/initrd"), "{msg}");
    assert!(msg.contains("/boot holds: kernel"), "{msg}");
    assert!(
        msg.contains("EFI/") && msg.contains("rootfs.squashfs"),
        "{msg}"
    );
}

#[test]
fn truncated_iso_is_reported_as_truncated() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-trunc");
    let t = tree(&dir, false);
    let iso = mkisofs(&dir, "t.iso", &["-R", "-J"], &t.root);
    let len = std::fs::metadata(&iso).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&iso).unwrap();
    f.set_len(len / 2).unwrap();
    let e = Iso::open(&iso)
        .and_then(|i| netboot_files(&i))
        .err()
        .unwrap();
    assert!(matches!(e, IsoError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// Symlinks whose targets walk `..` back and forth: a lookup that needs a few thousand steps
/// resolves (each directory read once), one that needs more is refused with the reason.
#[test]
fn long_symlink_walks_are_bounded() {
    if !have_xorriso() {
        return;
    }
    let dir = tempdir("iso-walk");
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let kernel = pattern(4096, 4);
    std::fs::write(root.join("boot/vmlinuz"), &kernel).unwrap();
    std::fs::write(root.join("boot/initrd"), b"i").unwrap();
    std::fs::write(root.join("rootfs.squashfs"), b"r").unwrap();
    // Rock Ridge keeps a symlink target under 1 KB: 100 round trips of 3 steps each.
    let walk = "../boot/".repeat(100);
    // /boot/ok → k1 → vmlinuz: about 600 steps. /boot/kernel → h1 → … → h20 → vmlinuz: more
    // than 4,096.
    let link = |name: &str, to: &str| {
        std::os::unix::fs::symlink(format!("{walk}{to}"), root.join("boot").join(name)).unwrap()
    };
    link("ok", "k1");
    link("k1", "vmlinuz");
    link("kernel", "h1");
    for i in 1..20 {
        link(&format!("h{i}"), &format!("h{}", i + 1));
    }
    link("h20", "vmlinuz");
    let iso_path = mkisofs(&dir, "walk.iso", &["-R"], &root);
    let iso = Iso::open(&iso_path).unwrap();
    let e = iso.lookup("/boot/ok").unwrap();
    assert!(contents(&iso_path, &e) == kernel);
    let err = netboot_files(&iso).unwrap_err().to_string();
    assert!(err.contains("more than 4096 steps"), "{err}");
}
