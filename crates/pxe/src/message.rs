//! The BOOTP/DHCP wire format (RFC 2131, RFC 2132): a bounded decoder that never panics on hostile
//! input, and an encoder that produces replies real PXE firmware accepts (padded to 300 bytes, since
//! some ROMs drop shorter BOOTP frames).

use std::net::Ipv4Addr;

/// The fixed BOOTP header is 236 bytes; the magic cookie follows.
/// Where each field of the fixed BOOTP header lies (RFC 2131, figure 1), named once so decode and
/// encode cannot disagree.
pub mod field {
    use std::ops::Range;

    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    /// The options' magic cookie, after the fixed header.
    pub const MAGIC: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Replies shorter than this are dropped by some old PXE ROMs (the BOOTP minimum, RFC 951).
pub const MIN_REPLY_LEN: usize = 300;
/// The largest message we will decode; anything bigger than an Ethernet jumbo frame is not DHCP.
pub const MAX_MESSAGE_LEN: usize = 9000;

pub const OP_REQUEST: u8 = 1;
pub const OP_REPLY: u8 = 2;

/// Option codes Daybreak reads or writes.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const VENDOR_CLASS: u8 = 60;
    pub const BOOTFILE_NAME: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    /// Relay agent information (RFC 3046): a relay adds it, and a server copies it back.
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    Other(u8),
}

impl MessageType {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            n => Self::Other(n),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
            Self::Other(n) => n,
        }
    }
}

/// Why a datagram was not a DHCP message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than a BOOTP header plus magic cookie (240)")]
    TooShort(usize),
    #[error("datagram of {0} bytes is larger than any DHCP message")]
    TooLong(usize),
    #[error("missing DHCP magic cookie")]
    BadMagic,
    #[error("hardware address length {0} exceeds 16")]
    BadHlen(u8),
    #[error("option {code} claims {len} bytes but only {left} remain")]
    TruncatedOption { code: u8, len: usize, left: usize },
}

/// A decoded DHCP message. Options keep their wire order; repeated options are concatenated on
/// lookup, as RFC 3396 asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: Vec<u8>,
    pub file: Vec<u8>,
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// A client's request as firmware sends it: a BOOTREQUEST over Ethernet from `mac` with the
    /// broadcast flag, message type `mtype` (option 53) and then `options`, every address unset
    /// (set `ciaddr` or `giaddr` on the result where the client would).
    pub fn client_request(
        mtype: MessageType,
        xid: u32,
        mac: [u8; 6],
        options: impl IntoIterator<Item = (u8, Vec<u8>)>,
    ) -> Message {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        Message {
            op: 1,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0x8000,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: vec![],
            file: vec![],
            options: std::iter::once((53, vec![mtype.to_u8()]))
                .chain(options)
                .collect(),
        }
    }
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The part of a fixed-size C string field before its first NUL.
fn cstr(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

impl Message {
    /// Decodes a datagram. Every length is checked against what is actually there.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong(buf.len()));
        }
        if buf.len() < field::OPTIONS {
            return Err(DecodeError::TooShort(buf.len()));
        }
        if buf[field::MAGIC] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let hlen = buf[field::HLEN];
        if hlen > 16 {
            return Err(DecodeError::BadHlen(hlen));
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&buf[field::CHADDR]);
        let mut options = Vec::with_capacity(16);
        let mut rest = &buf[field::OPTIONS..];
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                opt::PAD => rest = tail,
                opt::END => break,
                _ => {
                    let Some((&len, tail)) = tail.split_first() else {
                        return Err(DecodeError::TruncatedOption {
                            code,
                            len: 1,
                            left: 0,
                        });
                    };
                    let len = len as usize;
                    if tail.len() < len {
                        return Err(DecodeError::TruncatedOption {
                            code,
                            len,
                            left: tail.len(),
                        });
                    }
                    options.push((code, tail[..len].to_vec()));
                    rest = &tail[len..];
                }
            }
        }
        let be16 = |r: std::ops::Range<usize>| u16::from_be_bytes([buf[r.start], buf[r.start + 1]]);
        Ok(Message {
            op: buf[field::OP],
            htype: buf[field::HTYPE],
            hlen,
            hops: buf[field::HOPS],
            xid: u32::from_be_bytes(buf[field::XID].try_into().expect("4 bytes")),
            secs: be16(field::SECS),
            flags: be16(field::FLAGS),
            ciaddr: ip(&buf[field::CIADDR]),
            yiaddr: ip(&buf[field::YIADDR]),
            siaddr: ip(&buf[field::SIADDR]),
            giaddr: ip(&buf[field::GIADDR]),
            chaddr,
            sname: cstr(&buf[field::SNAME]),
            file: cstr(&buf[field::FILE]),
            options,
        })
    }

    /// Encodes the message, splitting options longer than 255 bytes and padding to 300 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        // NUL-terminated: at most one byte less than the field.
        for (value, range) in [(&self.sname, field::SNAME), (&self.file, field::FILE)] {
            let mut f = vec![0u8; range.len()];
            let n = value.len().min(range.len() - 1);
            f[..n].copy_from_slice(&value[..n]);
            out.extend_from_slice(&f);
        }
        debug_assert_eq!(out.len(), field::MAGIC.start);
        out.extend_from_slice(&MAGIC);
        for (code, value) in &self.options {
            if value.is_empty() {
                out.extend_from_slice(&[*code, 0]);
            }
            for chunk in value.chunks(255) {
                out.push(*code);
                out.push(chunk.len() as u8);
                out.extend_from_slice(chunk);
            }
        }
        out.push(opt::END);
        if out.len() < MIN_REPLY_LEN {
            out.resize(MIN_REPLY_LEN, 0);
        }
        out
    }

    /// The value of an option, with repeated instances concatenated (RFC 3396).
    pub fn option(&self, code: u8) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        let mut found: Option<Cow<'_, [u8]>> = None;
        for (c, v) in &self.options {
            if *c == code {
                found = Some(match found {
                    // The usual case: the option once, borrowed as it is.
                    None => Cow::Borrowed(v),
                    Some(first) => Cow::Owned([&first[..], &v[..]].concat()),
                });
            }
        }
        found
    }

    pub fn message_type(&self) -> Option<MessageType> {
        self.option(opt::MESSAGE_TYPE)
            .and_then(|v| v.first().copied())
            .map(MessageType::from_u8)
    }

    /// The client hardware address, as many bytes as `hlen` says.
    pub fn hwaddr(&self) -> &[u8] {
        &self.chaddr[..self.hlen as usize]
    }

    /// The client's Ethernet address; `None` when the hardware address is not 6 bytes long.
    pub fn mac(&self) -> Option<crate::Mac> {
        <[u8; 6]>::try_from(self.hwaddr()).ok().map(crate::Mac)
    }
}

/// PXE vendor options, the sub-options of option 43 a boot server sends (PXE 2.1, table 2-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PxeOption {
    /// PXE_DISCOVERY_CONTROL (6): bit 3, [`DISCOVERY_USE_BOOT_FILE`], says "boot the file named
    /// in this packet, skip boot server discovery".
    DiscoveryControl(u8),
    /// PXE_BOOT_ITEM (71): type and layer, echoed from the client's request.
    BootItem([u8; 4]),
}

pub mod pxe_opt {
    pub const DISCOVERY_CONTROL: u8 = 6;
    pub const BOOT_ITEM: u8 = 71;
}

/// Bit 3 of PXE_DISCOVERY_CONTROL: use the boot file named in the offer. EDK2 ignores a
/// ProxyDHCP offer that names a file without it.
pub const DISCOVERY_USE_BOOT_FILE: u8 = 8;

/// Option 43's value for `opts`, END-terminated.
pub fn encode_pxe_options(opts: &[PxeOption]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in opts {
        match o {
            PxeOption::DiscoveryControl(bits) => {
                out.extend_from_slice(&[pxe_opt::DISCOVERY_CONTROL, 1, *bits])
            }
            PxeOption::BootItem(item) => {
                out.extend_from_slice(&[pxe_opt::BOOT_ITEM, 4]);
                out.extend_from_slice(item);
            }
        }
    }
    out.push(opt::END);
    out
}

/// Walks a TLV-encoded option space (option 43, 175): `(code, value)` pairs, stopping at END or at
/// the first truncated entry.
pub fn sub_options(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || loop {
        let (&code, tail) = rest.split_first()?;
        match code {
            opt::PAD => rest = tail,
            opt::END => return None,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let len = len as usize;
                if tail.len() < len {
                    rest = &[];
                    return None;
                }
                let (value, tail) = tail.split_at(len);
                rest = tail;
                return Some((code, value));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[236..240].copy_from_slice(&MAGIC);
        b
    }

    #[test]
    fn round_trip_keeps_fields_and_pads() {
        let mut b = minimal();
        b[4..8].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        b.extend_from_slice(&[53, 1, 1, 93, 2, 0, 7, 255]);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.xid, 0xdeadbeef);
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        assert_eq!(m.option(93).as_deref(), Some(&[0u8, 7][..]));
        let out = m.encode();
        assert_eq!(out.len(), MIN_REPLY_LEN);
        assert_eq!(Message::decode(&out).unwrap(), m);
    }

    #[test]
    fn rejects_short_and_bad_magic_and_truncated() {
        assert_eq!(Message::decode(&[0; 10]), Err(DecodeError::TooShort(10)));
        let mut b = minimal();
        b[236] = 0;
        assert_eq!(Message::decode(&b), Err(DecodeError::BadMagic));
        let mut b = minimal();
        b.extend_from_slice(&[60, 9, b'P']);
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::TruncatedOption {
                code: 60,
                len: 9,
                left: 1
            })
        );
        let mut b = minimal();
        b.push(60);
        assert!(matches!(
            Message::decode(&b),
            Err(DecodeError::TruncatedOption { .. })
        ));
        let mut b = minimal();
        b[2] = 17;
        assert_eq!(Message::decode(&b), Err(DecodeError::BadHlen(17)));
    }

    #[test]
    fn repeated_options_concatenate_and_long_ones_split() {
        let mut b = minimal();
        b.extend_from_slice(&[60, 2, b'a', b'b', 60, 1, b'c', 255]);
        let m = Message::decode(&b).unwrap();
        assert_eq!(&m.option(60).unwrap()[..], b"abc");
        let mut m2 = m.clone();
        m2.options = vec![(67, vec![b'x'; 300])];
        let back = Message::decode(&m2.encode()).unwrap();
        assert_eq!(back.option(67).unwrap().len(), 300);
    }

    #[test]
    fn pxe_options_encode_and_read_back() {
        let v = encode_pxe_options(&[
            PxeOption::DiscoveryControl(DISCOVERY_USE_BOOT_FILE),
            PxeOption::BootItem([0x80, 0, 0, 0]),
        ]);
        assert_eq!(v, [6, 1, 8, 71, 4, 0x80, 0, 0, 0, 255]);
        let back: Vec<_> = sub_options(&v).collect();
        assert_eq!(back, [(6u8, &[8u8][..]), (71, &[0x80, 0, 0, 0][..])]);
    }

    #[test]
    fn header_fields_tile_the_fixed_header() {
        let all = [
            field::OP..field::OP + 1,
            field::HTYPE..field::HTYPE + 1,
            field::HLEN..field::HLEN + 1,
            field::HOPS..field::HOPS + 1,
            field::XID,
            field::SECS,
            field::FLAGS,
            field::CIADDR,
            field::YIADDR,
            field::SIADDR,
            field::GIADDR,
            field::CHADDR,
            field::SNAME,
            field::FILE,
            field::MAGIC,
        ];
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(all.last().unwrap().end, field::OPTIONS);
    }

    #[test]
    fn sub_options_stop_at_truncation() {
        let v: Vec<_> = sub_options(&[6, 1, 8, 0, 71, 4, 0, 0]).collect();
        assert_eq!(v, vec![(6u8, &[8u8][..])]);
        let v: Vec<_> = sub_options(&[19, 1, 1, 255, 20, 1, 1]).collect();
        assert_eq!(v, vec![(19u8, &[1u8][..])]);
    }

    #[test]
    fn the_mac_is_the_hardware_address_when_it_is_ethernet_s() {
        let mut m = Message::decode(&minimal()).unwrap();
        m.chaddr[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(m.mac().unwrap().to_string(), "52:54:00:12:34:56");
        m.hlen = 20 - 4;
        assert_eq!(m.mac(), None);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500)) {
            let _ = Message::decode(&data);
        }

        #[test]
        fn decode_never_panics_after_valid_header(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut b = minimal();
            b.extend_from_slice(&tail);
            if let Ok(m) = Message::decode(&b) {
                let _ = crate::answer(&m, &crate::tests_support::ctx(), crate::Port::Dhcp);
                let again = Message::decode(&m.encode()).unwrap();
                proptest::prop_assert_eq!(again.xid, m.xid);
            }
        }
    }
}
