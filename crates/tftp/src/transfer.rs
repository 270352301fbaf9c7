//! One read transfer as a pure state machine: packets and the current time go in, packets to send
//! and a deadline come out. No sockets and no clock of its own, so every path — option
//! negotiation, UEFI's size probe, windowed sends, lost ACKs, block-number rollover — is tested
//! deterministically.

use std::time::{Duration, Instant};

use crate::packet::{self, code, Packet};

/// Server-side bounds on what clients may negotiate.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest block size granted. 1468 fills a 1500-byte Ethernet frame (20 IP + 8 UDP + 4 TFTP);
    /// larger blocks fragment, and fragments are what PXE stacks lose.
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
    /// Retransmissions of the same window before giving up.
    pub max_retries: u32,
    /// Longest retransmission timeout a client may ask for (RFC 2349 allows 255 s); a request
    /// for more is not granted and the default applies. A spoofed request must not hold a socket
    /// for minutes.
    pub max_timeout: Duration,
    /// Longest a whole transfer may take, however it goes; iPXE is a few hundred KB.
    pub max_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
            max_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(120),
        }
    }
}

/// Until the client has acknowledged something, it may not be the one who asked (UDP sources are
/// easy to forge): it gets one packet and one retransmission of it, no window, and no ERROR
/// when it stays silent. A forged 17-byte request so buys at most two replies.
const RETRIES_BEFORE_FIRST_ACK: u32 = 1;

/// Why a request got an ERROR instead of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The ERROR packet to send back.
    pub packet: Vec<u8>,
    pub reason: String,
}

fn refuse(code: u16, reason: impl Into<String>) -> Refused {
    let reason = reason.into();
    Refused {
        packet: packet::error(code, &reason),
        reason,
    }
}

/// How a transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    /// The last block was acknowledged.
    Complete,
    /// The client sent an ERROR. After an OACK this is normal: UEFI asks for `tsize`, reads it
    /// from the OACK, aborts with error 8 and asks again.
    ClientAborted {
        after_oack: bool,
        code: u16,
        message: String,
    },
    /// The client stopped answering.
    TimedOut,
}

/// What the request asked for and what was granted, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub filename: String,
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    pub tsize: bool,
}

/// Maps a requested name onto a registered one. Leading slashes go (firmware sends both
/// `ipxe.efi` and `/ipxe.efi`), backslashes are read as slashes (Windows-made configs), and any
/// `..` component is refused outright: names never reach the filesystem, and must not look as if
/// they could.
pub fn normalize(name: &str) -> Result<String, Refused> {
    let name = name.replace('\\', "/");
    if name.split('/').any(|c| c == "..") {
        return Err(refuse(
            code::ACCESS_VIOLATION,
            format!("refused path with '..': {name}"),
        ));
    }
    let trimmed = name.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(refuse(code::FILE_NOT_FOUND, "empty file name"));
    }
    Ok(trimmed.to_string())
}

pub struct Transfer {
    file: bytes::Bytes,
    blksize: usize,
    windowsize: u64,
    timeout: Duration,
    max_retries: u32,
    /// Number of DATA blocks, counting the final short (possibly empty) one.
    total_blocks: u64,
    /// Highest block acknowledged, counted from 1 without wrapping.
    acked: u64,
    /// Highest block sent.
    sent: u64,
    /// The OACK, while it awaits ACK 0.
    oack: Option<Vec<u8>>,
    retries: u32,
    deadline: Instant,
    /// When the whole transfer must be over.
    end_by: Instant,
    /// The client has acknowledged something: it is really at the address it claims.
    confirmed: bool,
    status: Status,
    pub negotiated: Negotiated,
    /// Packets sent again after a timeout.
    pub retransmits: u64,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("negotiated", &self.negotiated)
            .field("len", &self.file.len())
            .field("acked", &self.acked)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Transfer {
    /// Accepts or refuses a request. `lookup` maps a normalized name to the file's bytes. On
    /// success the first packets to send are pushed to `out`.
    pub fn start(
        request: &[u8],
        lookup: impl FnOnce(&str) -> Option<bytes::Bytes>,
        limits: &Limits,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<Transfer, Refused> {
        let (filename, mode, options) = match Packet::parse(request) {
            Ok(Packet::Rrq {
                filename,
                mode,
                options,
            }) => (filename, mode, options),
            Ok(Packet::Wrq { .. }) => {
                return Err(refuse(code::ACCESS_VIOLATION, "this server is read-only"))
            }
            Ok(_) => return Err(refuse(code::ILLEGAL_OPERATION, "expected a read request")),
            Err(e) => {
                return Err(refuse(
                    code::ILLEGAL_OPERATION,
                    format!("malformed request: {e}"),
                ))
            }
        };
        if !mode.eq_ignore_ascii_case("octet") {
            return Err(refuse(
                code::NOT_DEFINED,
                format!("mode {mode:?} is not supported; request mode \"octet\""),
            ));
        }
        let name = normalize(&filename)?;
        let file = lookup(&name)
            .ok_or_else(|| refuse(code::FILE_NOT_FOUND, format!("file not found: {name}")))?;

        let mut blksize: u16 = 512;
        let mut windowsize: u16 = 1;
        let mut timeout = limits.default_timeout;
        let mut tsize = false;
        let mut granted: Vec<(String, String)> = Vec::new();
        for (key, value) in &options {
            let Ok(n) = value.trim().parse::<u64>() else {
                continue;
            };
            match key.as_str() {
                "blksize" if n >= 8 => {
                    blksize = n.min(u64::from(limits.max_blksize)).min(65464) as u16;
                    granted.push((key.clone(), blksize.to_string()));
                }
                "windowsize" if n >= 1 => {
                    windowsize = n.min(u64::from(limits.max_windowsize)).min(65535) as u16;
                    granted.push((key.clone(), windowsize.to_string()));
                }
                "timeout" if n >= 1 && Duration::from_secs(n) <= limits.max_timeout => {
                    timeout = Duration::from_secs(n);
                    granted.push((key.clone(), n.to_string()));
                }
                "tsize" => {
                    tsize = true;
                    granted.push((key.clone(), file.len().to_string()));
                }
                _ => {}
            }
        }
        let mut t = Transfer {
            total_blocks: file.len() as u64 / u64::from(blksize) + 1,
            file,
            blksize: usize::from(blksize),
            windowsize: u64::from(windowsize),
            timeout,
            max_retries: limits.max_retries,
            acked: 0,
            sent: 0,
            oack: None,
            retries: 0,
            deadline: now + timeout,
            end_by: now + limits.max_duration,
            confirmed: false,
            status: Status::Running,
            negotiated: Negotiated {
                filename: name,
                blksize,
                windowsize,
                timeout,
                tsize,
            },
            retransmits: 0,
        };
        if granted.is_empty() {
            t.send_window(now, out);
        } else {
            let p = packet::oack(&granted);
            out.push(p.clone());
            t.oack = Some(p);
        }
        Ok(t)
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// When [`Transfer::on_timeout`] should next be called.
    pub fn deadline(&self) -> Instant {
        self.deadline.min(self.end_by)
    }

    /// Whether the client has acknowledged anything yet.
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    pub fn file_len(&self) -> usize {
        self.file.len()
    }

    fn send_window(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let first = self.acked + 1;
        let window = if self.confirmed { self.windowsize } else { 1 };
        let last = (self.acked + window).min(self.total_blocks);
        for abs in first..=last {
            let start = ((abs - 1) as usize)
                .saturating_mul(self.blksize)
                .min(self.file.len());
            let end = (start + self.blksize).min(self.file.len());
            out.push(packet::data(abs as u16, &self.file[start..end]));
        }
        self.sent = last;
        self.deadline = now + self.timeout;
    }

    /// Handles a datagram from the client.
    pub fn on_packet(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Vec<u8>>) -> &Status {
        if self.status != Status::Running {
            return &self.status;
        }
        if now >= self.end_by {
            return self.on_timeout(now, out);
        }
        match Packet::parse(bytes) {
            Ok(Packet::Ack { block }) => {
                if self.oack.is_some() {
                    if block == 0 {
                        self.oack = None;
                        self.retries = 0;
                        self.confirmed = true;
                        self.send_window(now, out);
                    }
                    return &self.status;
                }
                // Which unacknowledged block does this 16-bit number name? Only blocks we have
                // sent and not yet had acknowledged qualify; anything else is a duplicate or stale.
                let ahead = u64::from(block.wrapping_sub(self.acked as u16));
                if ahead == 0 || self.acked + ahead > self.sent {
                    return &self.status;
                }
                self.acked += ahead;
                self.retries = 0;
                self.confirmed = true;
                if self.acked == self.total_blocks {
                    self.status = Status::Complete;
                } else {
                    self.send_window(now, out);
                }
            }
            Ok(Packet::Error { code, message }) => {
                self.status = Status::ClientAborted {
                    after_oack: self.oack.is_some(),
                    code,
                    message,
                };
            }
            // Stray DATA, a repeated request, garbage: not part of this transfer.
            _ => {}
        }
        &self.status
    }

    /// Call at or after [`Transfer::deadline`]: retransmits what is unacknowledged, or gives up.
    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) -> &Status {
        if self.status != Status::Running || now < self.deadline() {
            return &self.status;
        }
        if now >= self.end_by {
            self.status = Status::TimedOut;
            out.push(packet::error(code::NOT_DEFINED, "transfer took too long"));
            return &self.status;
        }
        self.retries += 1;
        let allowed = if self.confirmed {
            self.max_retries
        } else {
            RETRIES_BEFORE_FIRST_ACK
        };
        if self.retries > allowed {
            self.status = Status::TimedOut;
            if self.confirmed {
                out.push(packet::error(
                    code::NOT_DEFINED,
                    "timed out waiting for ACK",
                ));
            }
            return &self.status;
        }
        let before = out.len();
        match &self.oack {
            Some(p) => {
                out.push(p.clone());
                self.deadline = now + self.timeout;
            }
            None => self.send_window(now, out),
        }
        self.retransmits += (out.len() - before) as u64;
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ack, error, rrq};

    fn file(len: usize) -> bytes::Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    fn start(req: &[u8], f: bytes::Bytes, out: &mut Vec<Vec<u8>>) -> Result<Transfer, Refused> {
        Transfer::start(
            req,
            |n| (n == "ipxe.efi").then_some(f),
            &Limits::default(),
            Instant::now(),
            out,
        )
    }

    fn data_of(p: &[u8]) -> (u16, &[u8]) {
        match Packet::parse(p).unwrap() {
            Packet::Data { block, data } => (block, data),
            other => panic!("expected DATA, got {other:?}"),
        }
    }

    /// Runs a lossless client to completion and returns what it received.
    fn drain(t: &mut Transfer, mut pending: Vec<Vec<u8>>) -> Vec<u8> {
        let mut got = Vec::new();
        let now = Instant::now();
        let mut rounds = 0;
        while t.status() == &Status::Running {
            rounds += 1;
            assert!(rounds < 100_000);
            let mut last = None;
            for p in pending.drain(..) {
                let (b, d) = data_of(&p);
                got.extend_from_slice(d);
                last = Some(b);
            }
            t.on_packet(&ack(last.expect("a window")), now, &mut pending);
        }
        got
    }

    #[test]
    fn plain_request_sends_512_byte_blocks() {
        let f = file(1300);
        let mut out = vec![];
        let mut t = start(&rrq("ipxe.efi", "octet", &[]), f.clone(), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(data_of(&out[0]), (1, &f[..512]));
        assert_eq!(drain(&mut t, out), &f[..]);
        assert_eq!(t.status(), &Status::Complete);
    }

    #[test]
    fn options_are_negotiated_and_clamped() {
        let f = file(5000);
        let mut out = vec![];
        let req = rrq(
            "/ipxe.efi",
            "OCTET",
            &[
                ("tsize", "0"),
                ("blksize", "65464"),
                ("windowsize", "1000"),
                ("timeout", "3"),
                ("x-odd", "1"),
            ],
        );
        let mut t = start(&req, f.clone(), &mut out).unwrap();
        match Packet::parse(&out[0]).unwrap() {
            Packet::Oack { options } => assert_eq!(
                options,
                vec![
                    ("tsize".into(), "5000".into()),
                    ("blksize".into(), "1468".into()),
                    ("windowsize".into(), "64".into()),
                    ("timeout".into(), "3".into()),
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.negotiated.timeout, Duration::from_secs(3));
        out.clear();
        t.on_packet(&ack(0), Instant::now(), &mut out);
        // Windowsize 64 covers the whole 4-block file at once.
        assert_eq!(out.len(), 4);
        assert_eq!(drain(&mut t, out), &f[..]);
    }

    #[test]
    fn uefi_size_probe_ends_after_oack() {
        let mut out = vec![];
        let req = rrq(
            "ipxe.efi",
            "octet",
            &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
        );
        let mut t = start(&req, file(1_000_000), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        let st = t.on_packet(
            &error(8, "User aborted the transfer"),
            Instant::now(),
            &mut out,
        );
        assert!(matches!(
            st,
            Status::ClientAborted {
                after_oack: true,
                code: 8,
                ..
            }
        ));
        assert!(out.is_empty(), "nothing is sent after the client aborts");
        let later = Instant::now() + Duration::from_secs(60);
        t.on_timeout(later, &mut out);
        assert!(out.is_empty(), "no retransmission after an abort");
    }

    #[test]
    fn windowed_transfer_with_mid_window_ack_resends_from_there() {
        let f = file(10 * 1468);
        let mut out = vec![];
        let req = rrq(
            "ipxe.efi",
            "octet",
            &[("blksize", "1468"), ("windowsize", "4")],
        );
        let mut t = start(&req, f.clone(), &mut out).unwrap();
        out.clear();
        t.on_packet(&ack(0), Instant::now(), &mut out);
        assert_eq!(
            out.iter().map(|p| data_of(p).0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        out.clear();
        // Block 3 was lost: the client acknowledges 2.
        t.on_packet(&ack(2), Instant::now(), &mut out);
        assert_eq!(
            out.iter().map(|p| data_of(p).0).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(drain(&mut t, out).len(), f.len() - 2 * 1468);
        assert_eq!(t.status(), &Status::Complete);
    }

    #[test]
    fn an_unacknowledged_request_gets_two_packets_at_most() {
        // A forged 17-byte RRQ: block 1 once, one retransmission, then silence.
        let req = rrq(
            "ipxe.efi",
            "octet",
            &[("windowsize", "64"), ("blksize", "1468")],
        );
        let mut out = vec![];
        let mut t = start(&rrq("ipxe.efi", "octet", &[]), file(100_000), &mut out).unwrap();
        let mut now = Instant::now();
        for _ in 0..10 {
            now += Duration::from_secs(1);
            t.on_timeout(now, &mut out);
        }
        assert_eq!(out.len(), 2, "block 1 and one retransmission");
        assert!(out.iter().all(|p| data_of(p).0 == 1));
        assert_eq!(t.status(), &Status::TimedOut);
        // With options, the OACK stands in for block 1: no window before ACK 0.
        let mut out = vec![];
        let mut t = start(&req, file(100_000), &mut out).unwrap();
        for _ in 0..10 {
            now += Duration::from_secs(1);
            t.on_timeout(now, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|p| matches!(Packet::parse(p), Ok(Packet::Oack { .. }))));
        // A client that asks without options gets one block until its first ACK, then windows.
        let mut out = vec![];
        let mut t = start(&req, file(100_000), &mut out).unwrap();
        out.clear();
        t.on_packet(&ack(0), now, &mut out);
        assert_eq!(out.len(), 64, "the window opens once the client answered");
    }

    #[test]
    fn long_timeouts_are_not_granted_and_transfers_end_in_time() {
        let mut out = vec![];
        let req = rrq("ipxe.efi", "octet", &[("timeout", "255"), ("tsize", "0")]);
        let t = start(&req, file(10_000), &mut out).unwrap();
        match Packet::parse(&out[0]).unwrap() {
            Packet::Oack { options } => {
                assert!(options.iter().all(|(k, _)| k != "timeout"), "{options:?}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.negotiated.timeout, Duration::from_secs(1));
        // A client that acknowledges just often enough to keep a transfer alive (one block per
        // 0.9 s of a 1 MB file) is ended at the overall limit.
        let start_at = Instant::now();
        let mut now = start_at;
        let mut out = vec![];
        let mut t = start(&rrq("ipxe.efi", "octet", &[]), file(1_000_000), &mut out).unwrap();
        let mut block = 0u16;
        while t.status() == &Status::Running {
            now += Duration::from_millis(900);
            block = block.wrapping_add(1);
            t.on_packet(&ack(block), now, &mut out);
            t.on_timeout(now, &mut out);
            assert!(now - start_at < Duration::from_secs(200));
        }
        assert_eq!(t.status(), &Status::TimedOut);
        let took = now - start_at;
        let max = Limits::default().max_duration;
        assert!(
            took >= max && took <= max + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(matches!(
            Packet::parse(out.last().unwrap()),
            Ok(Packet::Error { .. })
        ));
    }

    #[test]
    fn timeout_retransmits_then_gives_up() {
        let mut out = vec![];
        let mut t = start(&rrq("ipxe.efi", "octet", &[]), file(2000), &mut out).unwrap();
        out.clear();
        let mut now = Instant::now();
        t.on_packet(&ack(1), now, &mut out);
        let first = out[0].clone();
        out.clear();
        t.on_timeout(now, &mut out);
        assert!(out.is_empty(), "not yet due");
        for _ in 0..5 {
            now += Duration::from_secs(1);
            t.on_timeout(now, &mut out);
            assert_eq!(out.pop().unwrap(), first);
        }
        assert_eq!(t.retransmits, 5);
        now += Duration::from_secs(1);
        assert_eq!(t.on_timeout(now, &mut out), &Status::TimedOut);
        assert!(matches!(Packet::parse(&out[0]), Ok(Packet::Error { .. })));
    }

    #[test]
    fn oack_is_retransmitted_on_timeout_once() {
        let mut out = vec![];
        let mut t = start(
            &rrq("ipxe.efi", "octet", &[("tsize", "0")]),
            file(10),
            &mut out,
        )
        .unwrap();
        let oack = out.pop().unwrap();
        t.on_timeout(Instant::now() + Duration::from_secs(2), &mut out);
        assert_eq!(out, vec![oack]);
    }

    #[test]
    fn duplicate_acks_do_not_resend() {
        let mut out = vec![];
        let mut t = start(&rrq("ipxe.efi", "octet", &[]), file(2000), &mut out).unwrap();
        out.clear();
        t.on_packet(&ack(1), Instant::now(), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        // Sorcerer's Apprentice: a duplicate ACK must not trigger a second copy of block 2.
        t.on_packet(&ack(1), Instant::now(), &mut out);
        assert!(out.is_empty());
        // An ACK for a block not yet sent is ignored too.
        t.on_packet(&ack(7), Instant::now(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        // 70,000 blocks of 8 bytes: the 16-bit block number wraps once.
        let f = file(70_000 * 8 + 3);
        let mut out = vec![];
        let mut t = start(
            &rrq(
                "ipxe.efi",
                "octet",
                &[("blksize", "8"), ("windowsize", "16")],
            ),
            f.clone(),
            &mut out,
        )
        .unwrap();
        out.clear();
        t.on_packet(&ack(0), Instant::now(), &mut out);
        assert_eq!(drain(&mut t, out), &f[..]);
        assert_eq!(t.status(), &Status::Complete);
    }

    #[test]
    fn exact_multiple_ends_with_empty_block() {
        let f = file(1024);
        let mut out = vec![];
        let mut t = start(&rrq("ipxe.efi", "octet", &[]), f.clone(), &mut out).unwrap();
        out.clear();
        t.on_packet(&ack(1), Instant::now(), &mut out);
        out.clear();
        t.on_packet(&ack(2), Instant::now(), &mut out);
        assert_eq!(data_of(&out[0]), (3, &[][..]));
        t.on_packet(&ack(3), Instant::now(), &mut out);
        assert_eq!(t.status(), &Status::Complete);
    }

    #[test]
    fn refusals_carry_error_packets() {
        let mut out = vec![];
        let f = file(10);
        let e = start(&rrq("ipxe.efi", "netascii", &[]), f.clone(), &mut out)
            .err()
            .unwrap();
        assert!(matches!(
            Packet::parse(&e.packet),
            Ok(Packet::Error { code: 0, .. })
        ));
        assert!(e.reason.contains("octet"));
        let e = start(&rrq("../etc/passwd", "octet", &[]), f.clone(), &mut out)
            .err()
            .unwrap();
        assert!(matches!(
            Packet::parse(&e.packet),
            Ok(Packet::Error { code: 2, .. })
        ));
        let e = start(&rrq("a/../../ipxe.efi", "octet", &[]), f.clone(), &mut out)
            .err()
            .unwrap();
        assert!(matches!(
            Packet::parse(&e.packet),
            Ok(Packet::Error { code: 2, .. })
        ));
        let e = start(&rrq("..\\ipxe.efi", "octet", &[]), f.clone(), &mut out)
            .err()
            .unwrap();
        assert!(matches!(
            Packet::parse(&e.packet),
            Ok(Packet::Error { code: 2, .. })
        ));
        let e = start(&rrq("nope", "octet", &[]), f.clone(), &mut out)
            .err()
            .unwrap();
        assert!(matches!(
            Packet::parse(&e.packet),
            Ok(Packet::Error { code: 1, .. })
        ));
        let mut wrq = rrq("ipxe.efi", "octet", &[]);
        wrq[1] = 2;
        let e = start(&wrq, f.clone(), &mut out).err().unwrap();
        assert!(matches!(
            Packet::parse(&e.packet),
            Ok(Packet::Error { code: 2, .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn leading_slash_and_backslash_normalize() {
        assert_eq!(normalize("/ipxe.efi").unwrap(), "ipxe.efi");
        assert_eq!(normalize("efi\\ipxe.efi").unwrap(), "efi/ipxe.efi");
        assert!(normalize("/").is_err());
    }
}
