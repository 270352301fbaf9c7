//! A SIGINT in the middle of a long copy stops it and leaves nothing behind, neither the
//! destination nor its temporary file; the process survives to say so. (Its own test binary:
//! the signal handler is process-wide.)

use std::fs::File;
use std::path::Path;

use artifacts::iso::Extent;
use artifacts::write::{copy_extents_atomic, interrupted};

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "src")
        .collect()
}

#[test]
fn a_signal_mid_copy_leaves_nothing_behind() {
    // Started as a background job, this process may have inherited SIGINT ignored, which the
    // copy respects; the test wants the usual default.
    // SAFETY: resetting a signal to its default action in this single-test process.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let dir = testkit::tempdir("interrupt");
    let src_path = dir.join("src");
    let len = 80u64 << 20;
    std::fs::write(&src_path, testkit::pattern(len as usize, 9)).unwrap();
    let src = File::open(&src_path).unwrap();
    let dest = dir.join("out.squashfs");
    let mut raised = false;
    let mut last = 0;
    let r = copy_extents_atomic(&src, &[Extent { offset: 0, len }], &dest, &mut |n| {
        last = n;
        if !raised {
            raised = true;
            // SAFETY: raise only sends a signal to this thread; the copy's handler catches it.
            unsafe { libc::raise(libc::SIGINT) };
        }
    });
    let err = r.expect_err("the copy went on after SIGINT");
    assert!(err.to_string().contains("SIGINT"), "{err}");
    assert!(last < len, "stopped after {last} of {len} bytes");
    assert_eq!(interrupted(), Some(libc::SIGINT));
    assert!(
        leftovers(&dir).is_empty(),
        "left behind: {:?}",
        leftovers(&dir)
    );
    // A later copy runs normally (the handler is gone, the flag reset).
    copy_extents_atomic(
        &src,
        &[Extent {
            offset: 0,
            len: 4096,
        }],
        &dest,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(interrupted(), None);
    // A SIGINT the parent asked to ignore (nohup, a background job) stays ignored.
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let mut raised = false;
    copy_extents_atomic(&src, &[Extent { offset: 0, len }], &dest, &mut |_| {
        if !raised {
            raised = true;
            // SAFETY: as above; ignored by disposition.
            unsafe { libc::raise(libc::SIGINT) };
        }
    })
    .unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), len);
    std::fs::remove_dir_all(&dir).unwrap();
}
