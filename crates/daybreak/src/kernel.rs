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

/// What of a kernel is read for its facts: the headers are in its first page.
const HEAD: u64 = 64 << 10;

impl KernelFacts {
    /// The facts of a kernel's bytes.
    pub fn of(kernel: &[u8]) -> KernelFacts {
        KernelFacts {
            signed: signed(kernel),
            arch: kernel_arch(kernel),
        }
    }

    /// The facts of a kernel `len` bytes long, read through `read_at(offset, buf)`: its first
    /// [`HEAD`] bytes and its signature's header, whatever its size.
    pub fn read(len: u64, read_at: &dyn Fn(u64, &mut [u8]) -> std::io::Result<()>) -> KernelFacts {
        let mut head = vec![0u8; len.min(HEAD) as usize];
        if read_at(0, &mut head).is_err() {
            return KernelFacts::default();
        }
        let signed = cert_table(&head).is_some_and(|(offset, size)| {
            let mut cert = [0u8; 8];
            offset.checked_add(size).is_some_and(|end| end <= len)
                && read_at(offset, &mut cert).is_ok()
                && cert_ok(&cert, size)
        });
        KernelFacts {
            signed,
            arch: kernel_arch(&head),
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
    cert_table(pe).is_some_and(|(offset, size)| {
        offset
            .checked_add(size)
            .is_some_and(|end| end <= pe.len() as u64)
            && pe
                .get(offset as usize..offset as usize + 8)
                .is_some_and(|c| cert_ok(c, size))
    })
}

/// Where a PE image's certificate table is (offset, size), from its headers; `None` for
/// anything that is not a PE image with one.
fn cert_table(pe: &[u8]) -> Option<(u64, u64)> {
    let pe_at = pe_header(pe)?;
    let opt = pe_at + 24;
    // PE32+ (every x86-64 and arm64 kernel) or PE32.
    let (count_at, dirs_at) = match u16_at(pe, opt)? {
        0x20b => (opt + 108, opt + 112),
        0x10b => (opt + 92, opt + 96),
        _ => return None,
    };
    if u32_at(pe, count_at)? <= 4 {
        return None;
    }
    let (offset, size) = (u32_at(pe, dirs_at + 32)?, u32_at(pe, dirs_at + 36)?);
    (size >= 8).then_some((u64::from(offset), u64::from(size)))
}

/// Whether `cert` (the first 8 bytes of a certificate table `size` bytes long) starts a
/// PKCS#7 `WIN_CERTIFICATE` (revision 2.0) that fits the table.
fn cert_ok(cert: &[u8], size: u64) -> bool {
    let (Some(length), Some(rev), Some(ty)) = (u32_at(cert, 0), u16_at(cert, 4), u16_at(cert, 6))
    else {
        return false;
    };
    length >= 8 && u64::from(length) <= size && rev == 0x0200 && ty == 0x0002
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE32+ image, with a certificate table of `cert` when given.
    pub(crate) fn pe(cert: Option<(u16, u16)>) -> Vec<u8> {
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

    /// Item: the whole kernel was read into memory for its facts. Now its head and its
    /// signature's header are: a kernel of any size costs 64 KiB.
    #[test]
    fn a_kernels_facts_are_read_from_its_head_and_its_signature_only() {
        let mut k = pe(Some((0x0200, 0x0002)));
        // The certificate table far out, as in a real kernel (after megabytes of code).
        let far = 5u32 << 20;
        let dirs = 0x80 + 24 + 112;
        k[dirs + 32..dirs + 36].copy_from_slice(&far.to_le_bytes());
        k.resize(far as usize + 256, 0);
        k[far as usize..far as usize + 4].copy_from_slice(&256u32.to_le_bytes());
        k[far as usize + 4..far as usize + 6].copy_from_slice(&0x0200u16.to_le_bytes());
        k[far as usize + 6..far as usize + 8].copy_from_slice(&0x0002u16.to_le_bytes());
        let read = std::cell::RefCell::new(0u64);
        let read_at = |off: u64, buf: &mut [u8]| -> std::io::Result<()> {
            *read.borrow_mut() += buf.len() as u64;
            buf.copy_from_slice(&k[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        let facts = KernelFacts::read(k.len() as u64, &read_at);
        assert_eq!(facts, KernelFacts::of(&k));
        assert!(facts.signed);
        assert!(*read.borrow() <= HEAD + 8, "{} bytes read", read.borrow());
        // A table past the end of the file is no signature.
        assert!(!KernelFacts::read(far as u64, &|o, b| read_at(o, b)).signed);
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
