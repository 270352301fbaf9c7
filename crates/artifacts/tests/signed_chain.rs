//! An image that carries its distribution's signed shim and network GRUB (as Ubuntu-based
//! Kairos images do) keeps them beside its kernel: the Secure Boot chain that trusts its kernel.

mod common;

use std::fs;
use std::path::Path;

fn tree(root: &Path, grub: bool) {
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join("boot/vmlinuz-6.8.0-1"), b"kernel").unwrap();
    fs::write(root.join("boot/initrd.img-6.8.0-1"), b"initrd").unwrap();
    fs::create_dir_all(root.join("usr/lib/shim")).unwrap();
    // Ubuntu: the newest signed shim under .latest, the plain name a link to it.
    fs::write(
        root.join("usr/lib/shim/shimx64.efi.signed.latest"),
        b"shim of the image",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "shimx64.efi.signed.latest",
        root.join("usr/lib/shim/shimx64.efi.signed"),
    )
    .unwrap();
    if grub {
        let g = root.join("usr/lib/grub/x86_64-efi-signed");
        fs::create_dir_all(&g).unwrap();
        fs::write(g.join("grubnetx64.efi.signed"), b"grub of the image").unwrap();
    }
}

fn open(source: &Path, state: &Path) -> artifacts::BootSet {
    common::open_quietly(&format!("dir://{}", source.display()), state).unwrap()
}

#[test]
fn the_images_own_shim_and_grub_are_kept_when_it_has_both() {
    let work = testkit::tempdir("signed-chain");
    let state = work.join("state");
    tree(&work.join("with"), true);
    let set = open(&work.join("with"), &state);
    let (shim, grub) = set.signed_chain.expect("the image's chain");
    assert_eq!(fs::read(shim).unwrap(), b"shim of the image");
    assert_eq!(fs::read(grub).unwrap(), b"grub of the image");
    // From the store the second time, the same.
    assert!(open(&work.join("with"), &state).signed_chain.is_some());
    // A shim without its GRUB is no chain: Daybreak's own is served instead.
    tree(&work.join("without"), false);
    assert!(open(&work.join("without"), &state).signed_chain.is_none());
    let _ = fs::remove_dir_all(work);
}
