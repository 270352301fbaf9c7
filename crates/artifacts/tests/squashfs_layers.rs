//! Layers merged into a squashfs, checked with the real `unsquashfs` (listing with owners and
//! modes, and extraction compared byte for byte) and, where loop devices work, by mounting the
//! image with the kernel's own squashfs driver.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Command;

use artifacts::rootfs::{MergeError, Tree};
use artifacts::Compression;
use squashfs::Writer;
use testkit::{pattern, tempdir, EntryType, Layer};

fn build(layers: &[Vec<u8>], img: &Path, comp: Compression) -> Result<Tree, MergeError> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(img)
        .unwrap();
    let mut w = Writer::new(f, comp, 1 << 17, 2).unwrap();
    let mut tree = Tree::new();
    for (i, l) in layers.iter().enumerate() {
        tree.apply_layer(&mut w, i as u32 + 1, &format!("layer{i}"), &l[..])?;
    }
    w.finish(&tree).map_err(MergeError::Write)?;
    Ok(tree)
}

/// `unsquashfs -lln`: path → (mode string, owner, size-or-device, link target).
fn listing(img: &Path) -> BTreeMap<String, (String, String, String, String)> {
    let out = Command::new("unsquashfs")
        .args(["-lln", "-d", ""])
        .arg(img)
        .output()
        .expect("unsquashfs (squashfs-tools) is installed by scripts/install-deps.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut m = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.len() > 10 && l.as_bytes()[1] != b' ')
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !"dl-cbps".contains(&f[0][..1]) {
            continue;
        }
        // mode owner size date time path [-> target]; devices print "major, minor".
        let (size, rest) = if f[2].ends_with(',') {
            (format!("{} {}", f[2], f[3]), &f[6..])
        } else {
            (f[2].to_string(), &f[5..])
        };
        let path = rest[0].to_string();
        let target = if rest.len() >= 3 && rest[1] == "->" {
            rest[2].to_string()
        } else {
            String::new()
        };
        m.insert(path, (f[0].to_string(), f[1].to_string(), size, target));
    }
    m
}

/// `unsquashfs -d dest img`; with `xattrs`, extended attributes are written back too.
fn extract(img: &Path, dest: &Path, xattrs: bool) {
    let _ = std::fs::remove_dir_all(dest);
    let out = Command::new("unsquashfs")
        .args(["-q", "-n"])
        .args((!xattrs).then_some("-no-xattrs"))
        .arg("-d")
        .arg(dest)
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn layers_merge_with_whiteouts_links_and_modes() {
    let dir = tempdir("sq-merge");
    let big = pattern(300_000, 7);
    let mut sparse = vec![0u8; 400_000];
    sparse[399_999] = 1;
    let l1 = Layer::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/hostname", 0o644, 0, b"layer1\n")
        .file("etc/gone", 0o600, 0, b"deleted by layer 2")
        .dir("opt/app/", 0o750)
        .file("opt/app/old", 0o644, 0, b"hidden by the opaque dir")
        .dir("opt/app/sub/", 0o755)
        .file("opt/app/sub/deep", 0o644, 0, b"also hidden")
        .file("usr/bin/tool", 0o4755, 1000, &big)
        .link(EntryType::Link, "usr/bin/tool-again", "usr/bin/tool")
        .link(EntryType::Symlink, "usr/bin/t", "tool")
        .link(EntryType::Symlink, "bin", "usr/bin")
        .file("var/sparse", 0o644, 0, &sparse)
        .file("var/empty", 0o644, 0, b"")
        .special(EntryType::Char, "dev/null", 1, 3)
        .special(EntryType::Block, "dev/loop30", 7, 30)
        .special(EntryType::Fifo, "run/fifo", 0, 0)
        .bytes();
    let l2 = Layer::new()
        .file("etc/.wh.gone", 0o644, 0, b"")
        .file("etc/hostname", 0o644, 0, b"layer2\n")
        .dir("opt/app/", 0o755)
        .file("opt/app/.wh..wh..opq", 0o644, 0, b"")
        .file("opt/app/new", 0o644, 0, b"from layer 2")
        // Through the `bin` symlink: lands in usr/bin, inside the root.
        .file("bin/added", 0o755, 0, b"#!/bin/sh\n")
        .bytes();

    for comp in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
        let img = dir.join(format!("root-{}.squashfs", comp.name()));
        build(&[l1.clone(), l2.clone()], &img, comp).unwrap();
        let l = listing(&img);
        let get = |p: &str| l.get(p).unwrap_or_else(|| panic!("{p} missing: {l:#?}"));
        assert!(!l.contains_key("/etc/gone"), "whiteout");
        assert!(!l.contains_key("/opt/app/old") && !l.contains_key("/opt/app/sub"));
        assert_eq!(get("/opt/app").0, "drwxr-xr-x");
        assert_eq!(get("/usr/bin/tool").0, "-rwsr-xr-x");
        assert_eq!(get("/usr/bin/tool").1, "1000/1000");
        assert_eq!(get("/usr/bin/t").3, "tool");
        assert_eq!(get("/bin").3, "usr/bin");
        assert_eq!(get("/dev/null").0, "crw-r-----");
        assert_eq!(get("/dev/null").2, "1, 3");
        assert_eq!(get("/dev/loop30").2, "7, 30");
        assert!(get("/run/fifo").0.starts_with('p'));

        let out = dir.join(format!("x-{}", comp.name()));
        extract(&img, &out, false);
        let read = |p: &str| std::fs::read(out.join(p)).unwrap();
        assert_eq!(read("etc/hostname"), b"layer2\n");
        assert_eq!(read("opt/app/new"), b"from layer 2");
        assert_eq!(read("usr/bin/tool"), big);
        assert_eq!(read("usr/bin/tool-again"), big);
        assert_eq!(read("usr/bin/added"), b"#!/bin/sh\n");
        assert_eq!(read("var/sparse"), sparse);
        assert_eq!(read("var/empty"), b"");
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(out.join("usr/bin/tool")).unwrap();
        let b = std::fs::metadata(out.join("usr/bin/tool-again")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link kept");
    }
}

#[test]
fn hostile_entries_are_refused_with_layer_and_entry() {
    let dir = tempdir("sq-hostile");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            Layer::new()
                .raw(EntryType::Regular, "/etc/passwd", "", b"x")
                .bytes(),
            "absolute path",
        ),
        (
            "dotdot",
            Layer::new()
                .raw(EntryType::Regular, "a/../../etc/passwd", "", b"x")
                .bytes(),
            "..",
        ),
        (
            "hardlink",
            Layer::new()
                .raw(EntryType::Link, "evil", "../../etc/shadow", b"")
                .bytes(),
            "hard link",
        ),
        (
            "hardlink-missing",
            Layer::new()
                .link(EntryType::Link, "evil", "etc/shadow")
                .bytes(),
            "not in the image",
        ),
    ];
    for (name, layer, why) in cases {
        let img = dir.join(format!("{name}.squashfs"));
        let err = build(&[layer], &img, Compression::Gzip).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, MergeError::Hostile { .. })
                && msg.contains("layer0")
                && msg.contains(why),
            "{name}: {msg}"
        );
    }
}

#[test]
fn truncated_layer_is_corrupt() {
    let dir = tempdir("sq-trunc");
    let l = Layer::new()
        .file("big", 0o644, 0, &pattern(200_000, 3))
        .bytes();
    let err = build(
        &[l[..100_000].to_vec()],
        &dir.join("t.squashfs"),
        Compression::Gzip,
    )
    .unwrap_err();
    assert!(matches!(err, MergeError::Corrupt { .. }), "{err}");
}

#[test]
fn kernel_mounts_the_image() {
    if !testkit::require(true, &["mount"]) {
        return;
    }
    if !Path::new("/dev/loop-control").exists() {
        testkit::skip("no loop devices");
        return;
    }
    let dir = tempdir("sq-mount");
    let data = pattern(3_000_000, 11);
    let l = Layer::new()
        .file("boot/vmlinuz-6.1.0-9", 0o644, 0, b"old")
        .file("data/blob", 0o644, 0, &data)
        .file("data/small", 0o600, 42, b"small")
        .file_xattrs("data/tagged", b"x", &[("user.daybreak", b"kept")])
        .bytes();
    let img = dir.join("m.squashfs");
    build(&[l], &img, Compression::Gzip).unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(&img)
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        testkit::skip("mount -o loop failed here");
        return;
    }
    let blob = std::fs::read(mnt.join("data/blob"));
    let small = std::fs::read(mnt.join("data/small"));
    let tagged = getxattr(&mnt.join("data/tagged"), "user.daybreak");
    Command::new("umount").arg(&mnt).status().unwrap();
    assert_eq!(
        tagged.as_deref(),
        Some(&b"kept"[..]),
        "the kernel reads the xattr table"
    );
    assert_eq!(blob.unwrap(), data);
    assert_eq!(small.unwrap(), b"small");
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

#[test]
fn extended_attributes_are_kept() {
    // Only root's unsquashfs can restore security.* attributes to compare.
    if !testkit::require(true, &["unsquashfs"]) {
        return;
    }
    let dir = tempdir("sq-xattr");
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l = Layer::new()
        .file_xattrs(
            "usr/bin/ping",
            b"ping",
            &[("security.capability", cap), ("user.note", b"hi")],
        )
        .file_xattrs("usr/bin/other", b"other", &[("user.note", b"hi")])
        .file_xattrs(
            "usr/bin/same",
            b"same",
            &[("security.capability", cap), ("user.note", b"hi")],
        )
        .bytes();
    for comp in [Compression::Gzip, Compression::Zstd] {
        let img = dir.join(format!("x-{}.squashfs", comp.name()));
        build(std::slice::from_ref(&l), &img, comp).unwrap();
        let out = dir.join(format!("x-{}", comp.name()));
        extract(&img, &out, true);
        assert_eq!(
            getxattr(&out.join("usr/bin/ping"), "security.capability").as_deref(),
            Some(cap)
        );
        assert_eq!(
            getxattr(&out.join("usr/bin/ping"), "user.note").as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(
            getxattr(&out.join("usr/bin/same"), "security.capability").as_deref(),
            Some(cap)
        );
        assert_eq!(
            getxattr(&out.join("usr/bin/other"), "user.note").as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(
            getxattr(&out.join("usr/bin/other"), "security.capability"),
            None
        );
    }
}

/// A symlink that climbs above `/` is kept, and stops at `/` like the kernel's: an entry
/// written through it lands inside the image.
#[test]
fn a_symlink_climbing_above_the_root_is_clamped_not_refused() {
    let dir = tempdir("sq-clamp");
    let img = dir.join("clamp.squashfs");
    let layer = Layer::new()
        .dir("etc", 0o755)
        .raw(EntryType::Symlink, "usr/evil", "../../../etc", b"")
        .file("usr/evil/planted", 0o644, 0, b"inside")
        .bytes();
    build(&[layer], &img, Compression::Gzip).unwrap();
    let l = listing(&img);
    assert_eq!(l["/usr/evil"].3, "../../../etc", "{l:?}");
    assert!(l.contains_key("/etc/planted"), "{l:?}");
}

/// Directories nested through a chain of symlinked parents (each path short, the tree deep)
/// are bounded like any other: the build stops with an error, and nothing recursed over it.
#[test]
fn nesting_through_symlinked_directories_is_bounded() {
    let dir = tempdir("sq-deep");
    let deep = vec!["a"; 400].join("/");
    let layer = Layer::new()
        .dir(&deep, 0o755)
        .link(EntryType::Symlink, "j1", &deep)
        .dir(&format!("j1/{deep}"), 0o755)
        .bytes();
    let err = build(&[layer], &dir.join("deep.squashfs"), Compression::Gzip)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nest deeper than 512"), "{err}");
    // 500 levels is fine, and is written without recursion.
    let ok = Layer::new()
        .dir(&deep, 0o755)
        .link(EntryType::Symlink, "j1", &deep)
        .file(&format!("j1/{}/f", vec!["b"; 99].join("/")), 0o644, 0, b"x")
        .bytes();
    let img = dir.join("ok.squashfs");
    build(&[ok], &img, Compression::Gzip).unwrap();
    let l = listing(&img);
    let f = format!("/{deep}/{}/f", vec!["b"; 99].join("/"));
    assert!(l.contains_key(&f), "{} entries", l.len());
}
