//! A stop requested in the middle of a long copy (what the binary's SIGINT and SIGTERM handlers
//! do) ends it at the next chunk and leaves nothing behind, neither the destination nor its
//! temporary file; a later copy runs normally.

use std::fs::File;
use std::path::Path;

use artifacts::Extent;
use artifacts::{copy_extents_atomic, Stop};

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "src")
        .collect()
}

#[test]
fn a_stop_mid_copy_leaves_nothing_behind() {
    let dir = testkit::tempdir("interrupt");
    let src_path = dir.join("src");
    let len = 80u64 << 20;
    std::fs::write(&src_path, testkit::pattern(len as usize, 9)).unwrap();
    let src = File::open(&src_path).unwrap();
    let dest = dir.join("out.squashfs");
    let stop = Stop::new();
    let mut last = 0;
    let r = copy_extents_atomic(&src, &[Extent { offset: 0, len }], &dest, &stop, &mut |n| {
        last = n;
        stop.request(libc::SIGINT);
    });
    let err = r.expect_err("the copy went on after the stop");
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "{err}");
    assert!(last < len, "stopped after {last} of {len} bytes");
    assert_eq!(stop.requested(), Some(libc::SIGINT));
    assert!(
        leftovers(&dir).is_empty(),
        "left behind: {:?}",
        leftovers(&dir)
    );
    // A later copy runs normally once the request is cleared.
    stop.reset();
    copy_extents_atomic(
        &src,
        &[Extent { offset: 0, len }],
        &dest,
        &stop,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), len);
    std::fs::remove_dir_all(&dir).unwrap();
}
