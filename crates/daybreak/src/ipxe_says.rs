//! iPXE's own words about a boot: the error number its script reports when a step fails
//! (`${errno}`, [`render`](crate::render) writes the report), and the lines an iPXE built with
//! syslog sends once the script sets `syslog` to this server (UDP 514).
//!
//! Syslog is as hostile as any packet: a line is only filed under a machine when it comes from
//! the address of a machine booting here that can be told who it is
//! ([`Hub::speaking_for`]), at most [`PER_SENDER`] a second from one address (one /64 for IPv6)
//! and [`IN_ALL`] a second in all, each cut to [`LINE`] characters with its control characters
//! escaped. iPXE's error lines (they name an error at `ipxe.org/XXXXXXXX`) become the machine's
//! failure.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bounded::PerKey;
use crate::events::{Hub, Step};

/// The syslog port iPXE sends to.
pub const PORT: u16 = 514;
/// Lines filed a second from one address (one /64).
pub const PER_SENDER: u32 = 20;
/// Lines filed a second from everyone.
pub const IN_ALL: u32 = 400;
/// Characters of a line kept.
pub const LINE: usize = 400;
/// Bytes of a datagram read; the rest is cut off.
const DATAGRAM: usize = 1024;
/// Senders whose rate is remembered.
const SENDERS: usize = 4096;

/// What iPXE's POSIX-like error codes (bits 30–24 of its error numbers) mean, for the ones a
/// boot meets.
const POSIX: [(u32, &str); 24] = [
    (0x02, "Permission denied"),
    (0x0a, "Device or resource busy"),
    (0x0b, "Operation canceled"),
    (0x0d, "Connection aborted"),
    (0x0e, "Connection refused"),
    (0x0f, "Connection reset"),
    (0x16, "File too large"),
    (0x17, "Host is unreachable"),
    (0x1c, "Invalid argument"),
    (0x1d, "Input/output error"),
    (0x26, "Network is down"),
    (0x27, "Connection aborted by network"),
    (0x28, "Network unreachable"),
    (0x2c, "No such device"),
    (0x2d, "No such file or directory"),
    (0x2e, "Exec format error"),
    (0x31, "Not enough space"),
    (0x34, "No space left on device"),
    (0x3c, "Operation not supported"),
    (0x41, "Operation not permitted"),
    (0x43, "Protocol error"),
    (0x44, "Protocol not supported"),
    (0x4b, "Timer expired"),
    (0x4c, "Connection timed out"),
];

/// iPXE's error number as its `${errno}` writes it (`0x4c0a6035`).
pub fn parse_errno(text: &str) -> Option<u32> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// What error number `errno` means, with the page iPXE gives for it:
/// `Connection timed out (https://ipxe.org/4c0a6035)`.
pub fn error_text(errno: u32) -> String {
    let posix = (errno >> 24) & 0x7f;
    let what = POSIX
        .iter()
        .find(|(code, _)| *code == posix)
        .map_or("error", |(_, what)| *what);
    format!("{what} (https://ipxe.org/{errno:08x})")
}

/// The step of a boot script that failed, by the name the script gives it, as a stage.
pub fn script_stage(step: &str) -> Option<&'static str> {
    match step {
        "kernel" => Some("kernel"),
        "initrd" => Some("initrd"),
        "boot" => Some("booting"),
        _ => None,
    }
}

/// The message of a syslog datagram: after `<PRI>`, from iPXE's tag `ipxe: ` on when it is
/// there (iPXE puts its host name before it, RFC 3164 senders a time stamp and a host), cut to
/// [`LINE`] characters and escaped; `None` for what is not syslog or says nothing.
pub fn message(datagram: &[u8]) -> Option<String> {
    let rest = datagram.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|b| *b == b'>')?;
    let pri: u16 = std::str::from_utf8(&rest[..close]).ok()?.parse().ok()?;
    if close == 0 || pri > 191 {
        return None;
    }
    let text = String::from_utf8_lossy(&rest[close + 1..]);
    let head = text.char_indices().nth(128).map_or(text.len(), |(i, _)| i);
    let text = match text[..head].find("ipxe: ") {
        Some(at) => &text[at + "ipxe: ".len()..],
        None => &text[..],
    };
    let mut line = String::new();
    for c in text.trim().chars().take(LINE) {
        match c.is_control() {
            true => line.extend(c.escape_debug()),
            false => line.push(c),
        }
    }
    (!line.is_empty()).then_some(line)
}

/// The stage a line of iPXE's failed at, when it tells of an error (it names one at
/// `ipxe.org/`) of this boot: the file of the URL it names, or the boot itself ("Could not
/// boot"). Other errors (a second NIC that found no DHCP server) are only lines.
pub fn failure_stage(line: &str) -> Option<&'static str> {
    let at = line.find("ipxe.org/")?;
    let code = line[at + "ipxe.org/".len()..]
        .trim_start_matches("err/")
        .get(..8)?;
    if !code.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let url = line
        .split_whitespace()
        .filter(|w| !w.contains("ipxe.org/"))
        .find_map(|w| w.split_once("://"))
        .map(|(_, rest)| rest.split_once('/').map_or("", |(_, path)| path));
    match url {
        Some(path) => Some(crate::events::stage_of(path.trim_end_matches('.'))),
        None => line.contains("boot").then_some("booting"),
    }
}

/// What came in, counted (`daybreak_syslog_lines_total{outcome}`).
#[derive(Debug, Default)]
pub struct Stats {
    pub filed: AtomicU64,
    /// From an address no machine booting here holds.
    pub unknown: AtomicU64,
    /// Over the rate of its address, or of everyone.
    pub limited: AtomicU64,
    pub malformed: AtomicU64,
}

impl Stats {
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        [
            ("filed", self.filed.load(Relaxed)),
            ("unknown_sender", self.unknown.load(Relaxed)),
            ("rate_limited", self.limited.load(Relaxed)),
            ("malformed", self.malformed.load(Relaxed)),
        ]
    }
}

/// Whose rate a sender's lines count against: its address, or its /64.
fn sender(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// Receives syslog on `sock` until the task is dropped, filing what machines booting here say.
pub async fn receive(sock: tokio::net::UdpSocket, hub: Arc<Hub>) {
    let per_sender = PerKey::new(PER_SENDER, Duration::from_secs(1), SENDERS);
    let in_all = PerKey::new(IN_ALL, Duration::from_secs(1), 1);
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        file(&buf[..n], from, &hub, (&per_sender, &in_all));
    }
}

/// Files one datagram from `from`, if its sender may be heard.
fn file(
    datagram: &[u8],
    from: SocketAddr,
    hub: &Hub,
    (per_sender, in_all): (&PerKey<IpAddr>, &PerKey<()>),
) {
    let (ip, stats) = (from.ip(), &hub.syslog);
    let Some(mac) = hub.booting(ip).then(|| hub.speaking_for(ip)).flatten() else {
        stats.unknown.fetch_add(1, Relaxed);
        return;
    };
    let now = Instant::now();
    if !per_sender.take(sender(ip), now) || !in_all.take((), now) {
        stats.limited.fetch_add(1, Relaxed);
        return;
    }
    let Some(line) = message(datagram) else {
        stats.malformed.fetch_add(1, Relaxed);
        return;
    };
    stats.filed.fetch_add(1, Relaxed);
    let step = match failure_stage(&line) {
        Some(stage) => {
            tracing::warn!(mac = %mac, client = %ip, stage, "iPXE says: {line}");
            Step::Failed {
                stage,
                kind: "ipxe",
                why: format!("iPXE: {line}"),
            }
        }
        None => {
            tracing::info!(mac = %mac, client = %ip, "iPXE says: {line}");
            Step::Said { line }
        }
    };
    hub.emit(Some(from), Some(mac), step);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_numbers_are_told_in_words_with_their_page() {
        assert_eq!(parse_errno("0x4c0a6035"), Some(0x4c0a_6035));
        assert_eq!(
            error_text(0x4c0a_6035),
            "Connection timed out (https://ipxe.org/4c0a6035)"
        );
        assert_eq!(
            error_text(0x2d0c_613b),
            "No such file or directory (https://ipxe.org/2d0c613b)"
        );
        assert_eq!(error_text(0x7f00_0001), "error (https://ipxe.org/7f000001)");
        for bad in ["", "0x", "0x123456789", "zz", "0x-1", "${errno}"] {
            assert_eq!(parse_errno(bad), None, "{bad}");
        }
        assert_eq!(script_stage("boot"), Some("booting"));
        assert_eq!(script_stage("rootfs"), None);
    }

    #[test]
    fn a_syslog_line_is_its_message_bounded_and_escaped() {
        assert_eq!(
            message(b"<14>ipxe: http://10.0.0.1:8090/kernel... ok\n").as_deref(),
            Some("http://10.0.0.1:8090/kernel... ok")
        );
        // iPXE with a host name; an RFC 3164 sender (logger) with its time stamp.
        assert_eq!(
            message(b"<11>node-7 ipxe: Could not boot").as_deref(),
            Some("Could not boot")
        );
        assert_eq!(
            message(b"<13>Dec  8 00:10:00 host ipxe: hello").as_deref(),
            Some("hello")
        );
        assert_eq!(message(b"<13>other text").as_deref(), Some("other text"));
        let long = [b"<14>ipxe: ".as_slice(), &[b'a'; 2000]].concat();
        assert_eq!(message(&long).unwrap().chars().count(), LINE);
        let hostile = message(b"<14>ipxe: a\x1b[2Jb\nc").unwrap();
        assert!(!hostile.chars().any(char::is_control), "{hostile:?}");
        for bad in [
            &b""[..],
            b"hello",
            b"<>x",
            b"<999>x",
            b"<1234>x",
            b"<14>",
            b"<14>ipxe:   ",
            b"<14",
        ] {
            assert_eq!(message(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Not UTF-8, and a multi-byte character at the head's edge: no panic.
        assert!(message(b"<14>\xff\xfe ipxe: x").is_some());
        let edge = [b"<14>".as_slice(), "é".repeat(200).as_bytes()].concat();
        assert!(message(&edge).is_some());
    }

    #[test]
    fn error_lines_name_the_stage_they_failed_at() {
        let timed_out =
            "http://10.0.0.1:8090/kernel... Connection timed out (https://ipxe.org/4c0a6035)";
        assert_eq!(failure_stage(timed_out), Some("kernel"));
        assert_eq!(
            failure_stage(
                "http://10.0.0.1:8090/initrd0... No such file (http://ipxe.org/2d0c613b)"
            ),
            Some("initrd")
        );
        assert_eq!(
            failure_stage(
                "Could not boot image: Exec format error (https://ipxe.org/err/2e008081)"
            ),
            Some("booting")
        );
        assert_eq!(failure_stage("http://10.0.0.1:8090/kernel... ok"), None);
        assert_eq!(failure_stage("see ipxe.org/zz for help"), None);
        assert_eq!(
            failure_stage("Configuring (net1 52:54:00:00:00:02).... No configuration methods succeeded (https://ipxe.org/040ee186)"),
            None
        );
        assert_eq!(failure_stage("ipxe.org/4c0a"), None);
    }

    proptest::proptest! {
        /// Any datagram: no panic, a line within bounds and without control characters.
        #[test]
        fn any_datagram_is_a_bounded_line_or_nothing(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1500)) {
            if let Some(line) = message(&bytes) {
                proptest::prop_assert!(!line.is_empty() && !line.chars().any(char::is_control));
                proptest::prop_assert!(line.chars().count() <= LINE * 6);
                let _ = failure_stage(&line);
            }
            let _ = parse_errno(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn only_machines_booting_here_are_heard_and_each_at_a_bounded_rate() {
        let hub = Hub::with_link(|ip| match ip {
            IpAddr::V4(v4) if v4.octets()[3] == 10 => "52:54:00:00:00:0a".parse().ok(),
            _ => None,
        });
        let (per, all) = (
            PerKey::new(PER_SENDER, Duration::from_secs(60), SENDERS),
            PerKey::new(IN_ALL, Duration::from_secs(60), 1),
        );
        let machine: SocketAddr = "10.0.0.10:1234".parse().unwrap();
        let stranger: SocketAddr = "10.0.0.66:1234".parse().unwrap();
        let stats = &hub.syslog;
        let line = b"<14>ipxe: http://10.0.0.1/kernel... ok";
        file(line, machine, &hub, (&per, &all));
        assert_eq!(stats.unknown.load(Relaxed), 1, "no PXE exchange yet");
        hub.learn(machine.ip(), "52:54:00:00:00:0a".parse().unwrap(), false);
        hub.learn(stranger.ip(), "52:54:00:00:00:0a".parse().unwrap(), false);
        for _ in 0..100 {
            file(line, machine, &hub, (&per, &all));
            file(line, stranger, &hub, (&per, &all));
        }
        assert_eq!(stats.filed.load(Relaxed), u64::from(PER_SENDER));
        assert_eq!(stats.limited.load(Relaxed), 100 - u64::from(PER_SENDER));
        // The stranger named the machine in a DHCPREQUEST, but its neighbour entry is not it.
        assert_eq!(stats.unknown.load(Relaxed), 101);
    }
}
