//! On a filesystem that shares blocks (XFS with reflink, made here on a loop device), extents
//! that start on a block boundary are cloned, not copied: the output's extents are shared and
//! its bytes equal the source's. A misaligned extent (an ISO sector that is not on a 4 KiB
//! boundary) is copied instead, with the same bytes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::Extent;
use artifacts::{copy_extents_atomic, Stop};
use testkit::pattern;

/// Unmounts on drop, so a failed assertion does not leave the loop mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        // Lazy: detaches even while a file on it is still open (a failed assertion).
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn shared(path: &Path) -> bool {
    let o = Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).contains("shared")
}

#[test]
fn aligned_extents_are_cloned_on_xfs() {
    if !testkit::require(true, &["mkfs.xfs", "filefrag"]) {
        return;
    }
    if !Path::new("/dev/loop-control").exists() {
        testkit::skip("no loop devices");
        return;
    }
    let dir = testkit::tempdir("reflink");
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let img = dir.join("xfs.img");
    File::create(&img).unwrap().set_len(512 << 20).unwrap();
    let st = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.xfs failed");
    let mnt = dir.join("mnt");
    let st = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        testkit::skip("mount -o loop of an XFS image failed here");
        return;
    }
    let _mounted = Mounted(mnt.clone());

    let data = pattern(80 << 20, 21);
    std::fs::write(mnt.join("src.iso"), &data).unwrap();
    let src = File::open(mnt.join("src.iso")).unwrap();
    let want = |extents: &[Extent]| -> Vec<u8> {
        extents
            .iter()
            .flat_map(|e| data[e.offset as usize..(e.offset + e.len) as usize].to_vec())
            .collect()
    };

    // Block-aligned starts (a multi-extent file; the last extent ends mid-block).
    let aligned = [
        Extent {
            offset: 8 << 20,
            len: 32 << 20,
        },
        Extent {
            offset: 4096,
            len: (16 << 20) + 1234,
        },
    ];
    let out = mnt.join("cloned");
    let mut last = 0;
    copy_extents_atomic(&src, &aligned, &out, &Stop::new(), &mut |n| last = n).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == want(&aligned),
        "cloned bytes differ"
    );
    assert_eq!(last, (48 << 20) + 1234);
    assert!(shared(&out), "aligned extents were copied, not cloned");

    // An extent on a 2 KiB sector: copied.
    let misaligned = [Extent {
        offset: 2048,
        len: 8 << 20,
    }];
    let out = mnt.join("copied");
    copy_extents_atomic(&src, &misaligned, &out, &Stop::new(), &mut |_| {}).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == want(&misaligned),
        "copied bytes differ"
    );
    assert!(!shared(&out), "a misaligned extent cannot be shared");
    drop(src);
    drop(_mounted);
    std::fs::remove_dir_all(&dir).unwrap();
}
