//! The binaries built into Daybreak: iPXE (Debian's `ipxe` package; see `ipxe/README.md`), the
//! Secure Boot chain, and what the netboot ISO is made of. Which machine gets which is
//! [`crate::loaders`]'s.

pub const UNDIONLY_KPXE: &[u8] = include_bytes!("../ipxe/undionly.kpxe");
pub const IPXE_PXE: &[u8] = include_bytes!("../ipxe/ipxe.pxe");
pub const IPXE_EFI: &[u8] = include_bytes!("../ipxe/ipxe.efi");
pub const SNPONLY_EFI: &[u8] = include_bytes!("../ipxe/snponly.efi");
/// UEFI arm64: iPXE's own drivers, the firmware's network driver as a fallback.
pub const IPXE_ARM64_EFI: &[u8] = include_bytes!("../ipxe/ipxe-arm64.efi");
/// iPXE as a Linux kernel, which ISOLINUX starts with a script as its initrd (the netboot ISO).
pub const IPXE_LKRN: &[u8] = include_bytes!("../ipxe/ipxe.lkrn");
/// The Secure Boot chain (Debian's `shim-signed`, `grub-efi-amd64-signed`): shim, signed by
/// Microsoft's UEFI CA, and the network GRUB signed by Debian, which shim loads as `grubx64.efi`.
pub const SHIMX64_EFI: &[u8] = include_bytes!("../ipxe/shimx64.efi");
pub const GRUBNETX64_EFI: &[u8] = include_bytes!("../ipxe/grubnetx64.efi");
/// ISOLINUX and its isohybrid MBR (Debian's `isolinux`, `syslinux-common`): the ISO's BIOS boot.
pub const ISOLINUX_BIN: &[u8] = include_bytes!("../ipxe/isolinux.bin");
pub const LDLINUX_C32: &[u8] = include_bytes!("../ipxe/ldlinux.c32");
pub const ISOHDPFX_BIN: &[u8] = include_bytes!("../ipxe/isohdpfx.bin");
/// The Debian package version the embedded binaries come from.
pub const VERSION: &str = "1.21.1+git20250501.dad20602+dfsg-1 (Debian trixie)";

/// Which built-in iPXE UEFI x64 machines get.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EfiBuild {
    /// `ipxe.efi`: iPXE's own NIC drivers (the firmware's network driver as a fallback).
    #[default]
    Ipxe,
    /// `snponly.efi`: only the firmware's own network driver, the one that just PXE-booted;
    /// for NICs that fail under `ipxe.efi`.
    Snponly,
}

/// The names the built-in binaries are served under (TFTP, and `/ipxe/NAME` over HTTP).
pub mod names {
    pub const UNDIONLY: &str = "undionly.kpxe";
    pub const IPXE_PXE: &str = "ipxe.pxe";
    pub const IPXE_EFI: &str = "ipxe.efi";
    pub const SNPONLY: &str = "snponly.efi";
    pub const ARM64: &str = "ipxe-arm64.efi";
    /// The Secure Boot chain: shim, and the network GRUB it loads under the name it asks for.
    pub const SHIM: &str = "shimx64.efi";
    pub const GRUB: &str = "grubx64.efi";
    /// What GRUB reads by TFTP: a stub that sends it to its machine's own configuration.
    pub const GRUB_CFG: &str = "grub/grub.cfg";
}

/// The built-in binaries, by name.
pub fn builtin() -> tftp::Files {
    let mut files = tftp::Files::new();
    for (name, bytes) in [
        (names::UNDIONLY, UNDIONLY_KPXE),
        (names::IPXE_PXE, IPXE_PXE),
        (names::IPXE_EFI, IPXE_EFI),
        (names::SNPONLY, SNPONLY_EFI),
        (names::SHIM, SHIMX64_EFI),
        (names::GRUB, GRUBNETX64_EFI),
        (names::ARM64, IPXE_ARM64_EFI),
    ] {
        // Served from the binary's own pages, read only when a machine asks.
        files.insert(name.into(), bytes::Bytes::from_static(bytes));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_binaries() {
        let files = builtin();
        for name in [
            names::UNDIONLY,
            names::IPXE_PXE,
            names::IPXE_EFI,
            names::SNPONLY,
            names::ARM64,
            names::SHIM,
            names::GRUB,
        ] {
            assert!(files[name].len() > 50_000, "{name} embedded");
        }
        // An EFI binary starts with "MZ"; a PXE NBP does not need to.
        assert_eq!(&files[names::IPXE_EFI][..2], b"MZ");
        assert_eq!(&files[names::ARM64][..2], b"MZ");
    }
}
