//! The iPXE binaries built into Daybreak (Debian's `ipxe` package; see `ipxe/README.md`), and
//! the user's overrides.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

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

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    pub bios: Option<&'a Path>,
    pub efi64: Option<&'a Path>,
    pub arm64: Option<&'a Path>,
    /// The built-in UEFI x64 build, unless `efi64` names a file (`None`: iPXE's, or the Secure
    /// Boot chain for a signed kernel, which the caller decides).
    pub efi64_build: Option<EfiBuild>,
}

/// The binaries to serve, by name, and the boot file names the ProxyDHCP answers use.
pub fn load(o: &Overrides<'_>) -> anyhow::Result<(tftp::Files, pxe::BootFiles)> {
    let read = |p: &Path, what: &str| -> anyhow::Result<Arc<[u8]>> {
        let data = std::fs::read(p)
            .with_context(|| format!("cannot read {what} iPXE binary {}", p.display()))?;
        anyhow::ensure!(
            !data.is_empty(),
            "{what} iPXE binary {} is empty",
            p.display()
        );
        Ok(data.into())
    };
    let mut files = tftp::Files::new();
    files.insert("undionly.kpxe".into(), UNDIONLY_KPXE.into());
    files.insert("ipxe.pxe".into(), IPXE_PXE.into());
    files.insert("ipxe.efi".into(), IPXE_EFI.into());
    files.insert("snponly.efi".into(), SNPONLY_EFI.into());
    files.insert("shimx64.efi".into(), SHIMX64_EFI.into());
    files.insert("grubx64.efi".into(), GRUBNETX64_EFI.into());
    // Answered with only when there is an arm64 kernel to boot (the caller decides).
    files.insert("ipxe-arm64.efi".into(), IPXE_ARM64_EFI.into());
    let mut boot = pxe::BootFiles::default();
    if let Some(p) = o.bios {
        files.insert("custom-bios.kpxe".into(), read(p, "--ipxe-bios")?);
        boot.bios = Some("custom-bios.kpxe".into());
    }
    if let Some(p) = o.efi64 {
        files.insert("custom-x64.efi".into(), read(p, "--ipxe-efi64")?);
        boot.efi_x64 = Some("custom-x64.efi".into());
    } else {
        if o.efi64_build == Some(EfiBuild::Snponly) {
            boot.efi_x64 = Some("snponly.efi".into());
        }
    }
    if let Some(p) = o.arm64 {
        files.insert("custom-arm64.efi".into(), read(p, "--ipxe-arm64")?);
        boot.efi_arm64 = Some("custom-arm64.efi".into());
    }
    Ok((files, boot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_binaries_and_overrides() {
        let (files, boot) = load(&Overrides::default()).unwrap();
        assert_eq!(boot, pxe::BootFiles::default());
        for name in [
            "undionly.kpxe",
            "ipxe.pxe",
            "ipxe.efi",
            "snponly.efi",
            "ipxe-arm64.efi",
        ] {
            assert!(files[name].len() > 50_000, "{name} embedded");
        }
        // An EFI binary starts with "MZ"; a PXE NBP does not need to.
        assert_eq!(&files["ipxe.efi"][..2], b"MZ");

        let dir = std::env::temp_dir().join(format!("daybreak-ipxe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let arm = dir.join("arm64.efi");
        std::fs::write(&arm, b"MZarm64").unwrap();
        let (_, boot) = load(&Overrides {
            efi64_build: Some(EfiBuild::Snponly),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(boot.efi_x64.as_deref(), Some("snponly.efi"));
        let (files, boot) = load(&Overrides {
            arm64: Some(&arm),
            efi64: Some(&arm),
            bios: None,
            efi64_build: Some(EfiBuild::Snponly),
        })
        .unwrap();
        assert_eq!(boot.efi_arm64.as_deref(), Some("custom-arm64.efi"));
        assert_eq!(boot.efi_x64.as_deref(), Some("custom-x64.efi"));
        assert_eq!(&files["custom-arm64.efi"][..], b"MZarm64");

        let empty = dir.join("empty.efi");
        std::fs::write(&empty, b"").unwrap();
        let e = load(&Overrides {
            bios: Some(&empty),
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("--ipxe-bios") && e.to_string().contains("empty"),
            "{e}"
        );
        let e = load(&Overrides {
            bios: Some(&dir.join("missing")),
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(
            format!("{e:#}").contains("cannot read --ipxe-bios"),
            "{e:#}"
        );
    }
}
