//! Images written from a tree built by hand, in each compression, read back by the real
//! `unsquashfs`: the listing (types, modes, owners, sizes, link targets, devices) and the
//! extracted bytes, hard links and extended attributes.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use squashfs::{Compression, Kind, Meta, Tree, Writer};
use testkit::{pattern, tempdir};

const BLOCK: u32 = 4096;

fn meta(mode: u32, uid: u32) -> Meta {
    Meta {
        mode,
        uid,
        gid: uid,
        mtime: 1_700_000_000,
    }
}

/// Writes the test tree into `img`; returns the contents of /etc/hostname and /big.
fn write_image(img: &Path, comp: Compression) -> (Vec<u8>, Vec<u8>) {
    let small = b"daybreak-node-1\n".to_vec();
    let big = pattern(3 * BLOCK as usize + 100, 7);
    let zeros = vec![0u8; 2 * BLOCK as usize];
    let mut w = Writer::new(File::create(img).unwrap(), comp, BLOCK, 2).unwrap();
    let mut tree = Tree::new();
    let file = |w: &mut Writer, data: &[u8]| {
        Kind::File(w.add_file(&mut &data[..], data.len() as u64).unwrap())
    };
    let etc = tree
        .add(
            Tree::ROOT,
            b"etc",
            meta(0o755, 0),
            Kind::Dir(Default::default()),
        )
        .unwrap();
    let host = tree
        .add(etc, b"hostname", meta(0o640, 1000), file(&mut w, &small))
        .unwrap();
    tree.inodes[host].xattrs = vec![(b"user.daybreak".to_vec(), b"yes".to_vec())];
    tree.add(Tree::ROOT, b"big", meta(0o644, 0), file(&mut w, &big));
    tree.add(Tree::ROOT, b"zeros", meta(0o600, 0), file(&mut w, &zeros));
    tree.add(Tree::ROOT, b"empty", meta(0o644, 0), file(&mut w, b""));
    let link = Kind::Symlink(b"etc/hostname".to_vec());
    tree.add(Tree::ROOT, b"link", meta(0o777, 0), link);
    tree.link(Tree::ROOT, b"hard", host).unwrap();
    tree.add(Tree::ROOT, b"null", meta(0o666, 0), Kind::Char((1, 3)));
    tree.add(Tree::ROOT, b"fifo", meta(0o600, 0), Kind::Fifo);
    assert!(tree.add(host, b"x", meta(0o644, 0), Kind::Fifo).is_none());
    let (summary, image) = w.finish(&tree).unwrap();
    assert_eq!(summary.inodes, 9, "{summary:?}");
    image.into_file().sync_all().unwrap();
    (small, big)
}

fn unsquashfs(args: &[&str], img: &Path) -> String {
    let out = Command::new("unsquashfs")
        .args(args)
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "unsquashfs {args:?}: {text}{err}");
    text
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn unsquashfs_reads_back_every_kind_in_every_compression() {
    if !testkit::require(true, &["unsquashfs"]) {
        return;
    }
    for comp in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
        let dir = tempdir(&format!("squashfs-{}", comp.name()));
        let img = dir.join("t.squashfs");
        let (small, big) = write_image(&img, comp);

        let listing = unsquashfs(&["-lln", "-d", ""], &img);
        let line = |path: &str| {
            listing
                .lines()
                .find(|l| l.split_whitespace().nth(5) == Some(path))
                .unwrap_or_else(|| panic!("{path} missing from:\n{listing}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("/etc/hostname")[..3],
            ["-rw-r-----", "1000/1000", "16"]
        );
        assert_eq!(line("/big")[..3], ["-rw-r--r--", "0/0", "12388"]);
        assert_eq!(line("/zeros")[2], "8192");
        assert_eq!(line("/empty")[2], "0");
        assert_eq!(line("/link")[0], "lrwxrwxrwx");
        assert!(listing.contains("/link -> etc/hostname"), "{listing}");
        assert_eq!(line("/fifo")[0], "prw-------");
        let null = listing.lines().find(|l| l.ends_with(" /null")).unwrap();
        assert!(
            null.starts_with("crw-rw-rw- 0/0") && null.contains(" 1,  3 "),
            "{null}"
        );
        assert_eq!(line("/etc")[0], "drwxr-xr-x");

        let out = dir.join("x");
        unsquashfs(&["-q", "-n", "-d", out.to_str().unwrap()], &img);
        assert_eq!(std::fs::read(out.join("etc/hostname")).unwrap(), small);
        assert_eq!(std::fs::read(out.join("big")).unwrap(), big);
        assert_eq!(std::fs::read(out.join("zeros")).unwrap(), vec![0; 8192]);
        let (a, b) = (
            std::fs::metadata(out.join("hard")).unwrap(),
            std::fs::metadata(out.join("etc/hostname")).unwrap(),
        );
        assert_eq!(
            (a.ino(), a.nlink()),
            (b.ino(), 2),
            "a hard link, not a copy"
        );
        assert_eq!(
            xattr(&out.join("etc/hostname"), "user.daybreak").as_deref(),
            Some(&b"yes"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn only_namespaces_squashfs_can_hold_are_kept() {
    assert!(squashfs::xattr_supported(b"security.capability"));
    assert!(squashfs::xattr_supported(b"user.x"));
    assert!(squashfs::xattr_supported(b"trusted.overlay.opaque"));
    assert!(!squashfs::xattr_supported(b"system.posix_acl_access"));
    assert_eq!(
        "lz4".parse::<Compression>().unwrap_err().to_string(),
        "unknown compression \"lz4\": use gzip, zstd or xz"
    );
}
