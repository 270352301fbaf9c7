//! What a network-booting machine is known by, typed once and carried from the DHCP message to
//! the status page: its MAC ([`Mac`], as smoltcp's `EthernetAddress`), the UUID its firmware
//! sends ([`Uuid`], option 97), and the CPU architecture its firmware says it is ([`CpuArch`]).
//! Text from clients and people becomes one of these at the edge ([`std::str::FromStr`]) or is
//! refused; nothing inside the server keys a table by a string a client wrote.

use std::fmt;
use std::str::FromStr;

use crate::Arch;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Twelve lowercase hex digits, no separators: the form file names and URL paths use.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(12);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl From<[u8; 6]> for Mac {
    fn from(b: [u8; 6]) -> Mac {
        Mac(b)
    }
}

/// `52:54:00:12:34:56`, lowercase: the one form Daybreak writes.
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written once from a buffer: every offer's log line has one.
        let mut text = [b':'; 17];
        for (i, b) in self.0.into_iter().enumerate() {
            text[3 * i] = HEX[usize::from(b >> 4)];
            text[3 * i + 1] = HEX[usize::from(b & 15)];
        }
        f.pad(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

/// Text that is not what it was taken for: the text (quoted, escaped, cut short) and the form
/// expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    text: String,
    what: &'static str,
    example: &'static str,
}

impl ParseError {
    fn new(s: &str, what: &'static str, example: &'static str) -> ParseError {
        let cut: String = s.chars().take(48).collect();
        ParseError {
            text: format!("{cut:?}"),
            what,
            example,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not {} ({})", self.text, self.what, self.example)
    }
}

impl std::error::Error for ParseError {}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Exactly `out.len()` bytes from hex digits, or `None`.
fn hex_bytes(digits: &[u8], out: &mut [u8]) -> Option<()> {
    if digits.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

/// Every form clients and people write a MAC in, any case: `52:54:00:12:34:56`,
/// `52-54-00-12-34-56`, `525400123456`, and `5254.0012.3456` (switches' form). Nothing else:
/// no missing leading zeros, no mixed separators.
impl FromStr for Mac {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Mac, ParseError> {
        let b = s.as_bytes();
        let mut digits = [0u8; 12];
        let groups: Option<(usize, u8)> = match b.len() {
            12 => None,
            17 if b[2] == b':' || b[2] == b'-' => Some((2, b[2])),
            14 if b[4] == b'.' => Some((4, b'.')),
            _ => return Err(ParseError::new(s, "a MAC address", "52:54:00:12:34:56")),
        };
        let ok = match groups {
            None => {
                digits.copy_from_slice(b);
                true
            }
            Some((width, sep)) => {
                let mut n = 0;
                let mut good = true;
                for (i, part) in b.split(|c| *c == sep).enumerate() {
                    if part.len() != width || n + width > 12 || i * width >= 12 {
                        good = false;
                        break;
                    }
                    digits[n..n + width].copy_from_slice(part);
                    n += width;
                }
                good && n == 12
            }
        };
        let mut mac = [0u8; 6];
        match ok.then(|| hex_bytes(&digits, &mut mac)).flatten() {
            Some(()) => Ok(Mac(mac)),
            None => Err(ParseError::new(s, "a MAC address", "52:54:00:12:34:56")),
        }
    }
}

/// A machine's UUID (SMBIOS system UUID, DHCP option 97), its 16 bytes as the client sent them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// SMBIOS (2.6 and later) stores the first three fields little-endian, and firmware sends
    /// option 97 in either order (`dmidecode` prints the swapped one): both are the same machine.
    pub fn swapped(&self) -> Uuid {
        let mut s = self.0;
        s[..4].reverse();
        s[4..6].reverse();
        s[6..8].reverse();
        Uuid(s)
    }

    /// The same machine, in either byte order.
    pub fn same_machine(&self, other: &Uuid) -> bool {
        self == other || self.swapped() == *other
    }
}

/// `8-4-4-4-12` hex digits, lowercase, the bytes in the order held.
impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// `4c4c4544-0031-3510-8052-b4c04f4e3732` or the same 32 hex digits without dashes, any case.
impl FromStr for Uuid {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Uuid, ParseError> {
        let err = || ParseError::new(s, "a UUID", "4c4c4544-0031-3510-8052-b4c04f4e3732");
        let b = s.as_bytes();
        let digits: Vec<u8> = match b.len() {
            32 => b.to_vec(),
            36 if [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') => {
                b.iter().copied().filter(|c| *c != b'-').collect()
            }
            _ => return Err(err()),
        };
        let mut out = [0u8; 16];
        hex_bytes(&digits, &mut out).ok_or_else(err)?;
        Ok(Uuid(out))
    }
}

/// A machine's CPU architecture: which kernel it runs. Firmware says it in option 93 (as
/// [`Arch`], with the boot method); people write it in machine profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CpuArch {
    Amd64,
    Arm64,
}

impl CpuArch {
    pub const ALL: [CpuArch; 2] = [CpuArch::Amd64, CpuArch::Arm64];

    /// `amd64`, `arm64`: the names OCI platforms and Debian use.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuArch::Amd64 => "amd64",
            CpuArch::Arm64 => "arm64",
        }
    }

    /// The CPU of a client's firmware architecture (32-bit UEFI counts as neither: nothing
    /// Daybreak serves boots there).
    pub fn of(a: Arch) -> Option<CpuArch> {
        match a {
            Arch::Bios | Arch::EfiX64 => Some(CpuArch::Amd64),
            Arch::EfiArm64 => Some(CpuArch::Arm64),
            Arch::EfiIa32 | Arch::EfiArm32 => None,
        }
    }
}

impl fmt::Display for CpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `amd64` (also `x86_64`, `x86-64`) or `arm64` (also `aarch64`).
impl FromStr for CpuArch {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<CpuArch, ParseError> {
        match s {
            "amd64" | "x86_64" | "x86-64" => Ok(CpuArch::Amd64),
            "arm64" | "aarch64" => Ok(CpuArch::Arm64),
            _ => Err(ParseError::new(s, "an architecture", "amd64 or arm64")),
        }
    }
}

/// What is known of a machine when Daybreak decides how it boots: pixiecore's `Machine`, with
/// the UUID that machine profiles may select by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Machine {
    pub mac: Mac,
    pub uuid: Option<Uuid>,
    pub arch: Option<CpuArch>,
}

impl Machine {
    /// A machine known by its MAC alone.
    pub fn new(mac: Mac) -> Machine {
        Machine {
            mac,
            uuid: None,
            arch: None,
        }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::{CpuArch, Mac, Uuid};
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    macro_rules! as_text {
        ($t:ty) => {
            impl Serialize for $t {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.collect_str(self)
                }
            }
            impl<'de> Deserialize<'de> for $t {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    s.parse().map_err(de::Error::custom)
                }
            }
        };
    }
    as_text!(Mac);
    as_text!(Uuid);
    as_text!(CpuArch);
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Mac = Mac([0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);

    #[test]
    fn macs_parse_in_every_usual_form_and_nothing_else() {
        for s in [
            "52:54:00:ab:cd:01",
            "52:54:00:AB:CD:01",
            "52-54-00-ab-cd-01",
            "525400abcd01",
            "525400ABCD01",
            "5254.00ab.cd01",
        ] {
            assert_eq!(s.parse::<Mac>(), Ok(M), "{s}");
        }
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54:00-ab:cd:01",
            "5:54:00:ab:cd:011",
            "zz:54:00:ab:cd:01",
            "52545400abcd01",
            "5254.00ab.cd0",
            "525400abcd0g",
            "a\n:b:c:d:e:f",
            "52::54:00:ab:cd",
            "+2:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
        assert_eq!(M.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(M.hex(), "525400abcd01");
        let e = "a\u{1b}[2Jb".parse::<Mac>().unwrap_err().to_string();
        assert!(
            !e.contains('\u{1b}') && e.contains("52:54:00:12:34:56"),
            "{e}"
        );
    }

    #[test]
    fn uuids_and_architectures() {
        let u: Uuid = "4C4C4544-0031-3510-8052-B4C04F4E3732".parse().unwrap();
        assert_eq!(u.to_string(), "4c4c4544-0031-3510-8052-b4c04f4e3732");
        assert_eq!(
            "4c4c454400313510805 2b4c04f4e3732".parse::<Uuid>().ok(),
            None
        );
        assert_eq!(
            "4c4c454400313510 8052b4c04f4e3732".parse::<Uuid>().ok(),
            None
        );
        assert_eq!("4c4c4544003135108052b4c04f4e3732".parse::<Uuid>(), Ok(u));
        assert_eq!(
            u.swapped().to_string(),
            "44454c4c-3100-1035-8052-b4c04f4e3732"
        );
        assert!(u.same_machine(&u.swapped()) && u.swapped().same_machine(&u));
        assert_eq!("aarch64".parse::<CpuArch>(), Ok(CpuArch::Arm64));
        assert_eq!("x86_64".parse::<CpuArch>(), Ok(CpuArch::Amd64));
        assert!("riscv64".parse::<CpuArch>().is_err());
        assert_eq!(CpuArch::of(Arch::Bios), Some(CpuArch::Amd64));
        assert_eq!(CpuArch::of(Arch::EfiIa32), None);
    }

    proptest::proptest! {
        /// Whatever text comes, it parses to a MAC that writes back in the one form, or is refused.
        #[test]
        fn any_text_parses_or_is_refused(s in "[0-9a-fA-F:.-]{0,20}") {
            if let Ok(m) = s.parse::<Mac>() {
                proptest::prop_assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
                proptest::prop_assert_eq!(m.hex().parse::<Mac>(), Ok(m));
            }
        }
    }
}
