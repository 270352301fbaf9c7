//! Secure Boot: whether the kernel being served carries an Authenticode signature. UEFI x64
//! machines then get the signed chain: shim (signed by Microsoft's UEFI CA) loads the signed
//! network GRUB, which reads its configuration ([`crate::render::grub`]) and loads the kernel and
//! initrds over HTTP with the same command line as the iPXE script. iPXE is unsigned: firmware
//! that enforces Secure Boot refuses it, so a signed kernel goes this way.

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
}
