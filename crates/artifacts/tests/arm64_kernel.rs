//! arm64 images ship `vmlinuz` gzip-compressed, which UEFI and iPXE cannot start: the kernel
//! built from one is the arm64 `Image` inside; other kernels are kept byte for byte.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn image(root: &Path, kernel: &[u8]) {
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join("boot/vmlinuz-6.1.0-9-arm64"), kernel).unwrap();
    fs::write(root.join("boot/initrd.img-6.1.0-9-arm64"), b"initrd").unwrap();
}

fn kernel_of(root: &Path, state: &Path) -> Vec<u8> {
    let set = common::open_quietly(&format!("dir://{}", root.display()), state).unwrap();
    fs::read(&set.kernel.path).unwrap()
}

#[test]
fn a_gzip_compressed_arm64_kernel_is_served_unpacked() {
    let work = testkit::tempdir("arm64-kernel");
    let state = work.join("state");
    // An arm64 Image: "MZ", then its magic at 0x38.
    let mut arm = testkit::pattern(4096, 7);
    arm[..2].copy_from_slice(b"MZ");
    arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
    image(&work.join("arm"), &gzip(&arm));
    assert_eq!(kernel_of(&work.join("arm"), &state), arm);
    // gzip of something else, and a kernel that is not compressed: as they are.
    let other = gzip(&testkit::pattern(4096, 8));
    image(&work.join("other"), &other);
    assert_eq!(kernel_of(&work.join("other"), &state), other);
    image(&work.join("plain"), &arm);
    assert_eq!(kernel_of(&work.join("plain"), &state), arm);
    // A truncated stream is left alone too, not an error.
    let cut = gzip(&arm)[..40].to_vec();
    image(&work.join("cut"), &cut);
    assert_eq!(kernel_of(&work.join("cut"), &state), cut);
    let _ = fs::remove_dir_all(work);
}
