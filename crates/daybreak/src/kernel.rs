//! What a kernel file is: the architecture it runs on, and whether it carries an Authenticode
//! signature. A signed x86-64 kernel sends UEFI x64 machines the Secure Boot chain
//! ([`crate::loaders`]): shim (signed by Microsoft's UEFI CA) loads the signed network GRUB,
//! which reads its configuration ([`crate::render::grub`]) and loads the kernel and initrds over
//! HTTP with the same command line as the iPXE script. iPXE is unsigned: firmware that enforces
//! Secure Boot refuses it, so a signed kernel goes this way.

/// A little-endian field of a file; `None` past its end.
pub(crate) fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

pub(crate) fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Where a PE image's `PE\0\0` header starts (`MZ`, then its offset at 0x3c); `None` for
/// anything that is not a PE image.
pub(crate) fn pe_header(b: &[u8]) -> Option<usize> {
    if b.get(..2)? != b"MZ" {
        return None;
    }
    let at = u32_at(b, 0x3c)? as usize;
    (b.get(at..at + 4)? == b"PE\0\0").then_some(at)
}

/// What a kernel file is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFacts {
    pub signed: bool,
    pub arch: Option<pxe::CpuArch>,
}

impl KernelFacts {
    /// The facts of a kernel's bytes.
    pub fn of(kernel: &[u8]) -> KernelFacts {
        KernelFacts {
            signed: signed(kernel),
            arch: kernel_arch(kernel),
        }
    }
}

/// The architecture a kernel runs on: an EFI application's PE machine type (x86-64 kernels with
/// an EFI stub, arm64 `Image`, EFI zboot), else the arm64 `Image` magic or an x86 bzImage's
/// `HdrS` header. `None` for anything else (a gzip-compressed arm64 kernel, say).
pub fn kernel_arch(k: &[u8]) -> Option<pxe::CpuArch> {
    use pxe::CpuArch as Arch;
    match pe_header(k).and_then(|pe| u16_at(k, pe + 4)) {
        Some(0x8664) => return Some(Arch::Amd64),
        Some(0xaa64) => return Some(Arch::Arm64),
        _ => {}
    }
    if k.get(0x38..0x3c) == Some(b"ARM\x64") {
        return Some(Arch::Arm64);
    }
    if k.get(0x202..0x206) == Some(b"HdrS") {
        return Some(Arch::Amd64);
    }
    None
}

/// Whether `pe` is a PE image (a kernel with an EFI stub) with an Authenticode signature: its
/// certificate table (data directory 4) holds a PKCS#7 `WIN_CERTIFICATE` inside the file.
pub fn signed(pe: &[u8]) -> bool {
    let u16_at = |o: usize| u16_at(pe, o);
    let u32_at = |o: usize| u32_at(pe, o);
    let check = || -> Option<bool> {
        let Some(pe_at) = pe_header(pe) else {
            return Some(false);
        };
        let opt = pe_at + 24;
        // PE32+ (every x86-64 and arm64 kernel) or PE32.
        let (count_at, dirs_at) = match u16_at(opt)? {
            0x20b => (opt + 108, opt + 112),
            0x10b => (opt + 92, opt + 96),
            _ => return Some(false),
        };
        if u32_at(count_at)? <= 4 {
            return Some(false);
        }
        let (offset, size) = (
            u32_at(dirs_at + 32)? as usize,
            u32_at(dirs_at + 36)? as usize,
        );
        if size < 8 || offset.checked_add(size)? > pe.len() {
            return Some(false);
        }
        let length = u32_at(offset)? as usize;
        // WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA.
        Some(
            length >= 8
                && length <= size
                && u16_at(offset + 4)? == 0x0200
                && u16_at(offset + 6)? == 0x0002,
        )
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image, with a certificate table of `cert` when given.
    fn pe(cert: Option<(u16, u16)>) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let opt = 0x80 + 24;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        if let Some((rev, ty)) = cert {
            let dirs = opt + 112;
            b[dirs + 32..dirs + 36].copy_from_slice(&512u32.to_le_bytes());
            b[dirs + 36..dirs + 40].copy_from_slice(&256u32.to_le_bytes());
            b[512..516].copy_from_slice(&256u32.to_le_bytes());
            b[516..518].copy_from_slice(&rev.to_le_bytes());
            b[518..520].copy_from_slice(&ty.to_le_bytes());
        }
        b
    }

    #[test]
    fn authenticode_signatures_are_recognised() {
        assert!(signed(&pe(Some((0x0200, 0x0002)))));
        assert!(!signed(&pe(None)));
        assert!(
            !signed(&pe(Some((0x0200, 0x0001)))),
            "an X.509 cert is no signature"
        );
        assert!(!signed(b"not a PE at all"));
        let mut truncated = pe(Some((0x0200, 0x0002)));
        truncated.truncate(600);
        assert!(!signed(&truncated), "a table past the end of the file");
        assert!(!signed(&[]));
    }

    #[test]
    fn kernels_say_their_architecture() {
        use pxe::CpuArch as Arch;
        let mut pe = vec![0u8; 0x400];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(kernel_arch(&pe), Some(Arch::Arm64));
        pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        assert_eq!(kernel_arch(&pe), Some(Arch::Amd64));
        // Without a PE header: the arm64 Image magic, the x86 boot protocol's header.
        let mut image = vec![0u8; 0x400];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&image), Some(Arch::Arm64));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), Some(Arch::Amd64));
        for other in [&b"\x1f\x8b\x08"[..], b"", b"MZ", &[0u8; 0x300]] {
            assert_eq!(kernel_arch(other), None);
        }
    }
}
