//! The thread around [`crate::endpoint::handle`]: receives datagrams on a [`udp::Blocking`]
//! socket (which says which interface and local address each arrived on), and sends the reply
//! out of that same interface. Port 67 is often taken by a DHCP server on the same host: then
//! the socket is [`udp::Socket::raw`], and nothing here changes.
//!
//! A thread of its own per socket, waiting in the kernel: a request wakes it directly, with no
//! task to schedule. Nothing between receiving a DISCOVER and sending its OFFER waits on disk,
//! network or a lock, and what an answer means beyond the reply (its log line, the machine's
//! timeline) is handed to a [`Sink`] that only queues it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use udp::{Blocking, Socket, Stop};

use crate::endpoint::{handle, Datagram, Dropped, Settings};
use crate::{Ignored, Port, Reply};

/// Counters a status page or metrics endpoint can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    pub ignored: AtomicU64,
    pub malformed: AtomicU64,
    pub send_errors: AtomicU64,
    /// Requests the kernel dropped because the receive buffer was full (`SO_RXQ_OVFL`).
    pub kernel_drops: AtomicU64,
    /// Datagrams not answered, by [`Dropped::reason`] (and `not_allowed`, for machines a
    /// [`Config::allow`] said no to), in the order of [`UNANSWERED`].
    pub unanswered: [AtomicU64; UNANSWERED.len()],
}

/// The reasons [`Stats::unanswered`] counts.
pub const UNANSWERED: [&str; 13] = [
    "not_request",
    "message_type",
    "not_pxe",
    "not_ethernet",
    "unknown_arch",
    "no_boot_file",
    "bad_relay",
    "bad_source",
    "other_interface",
    "oversized",
    "malformed",
    "no_address",
    "not_allowed",
];

impl Stats {
    /// Counts a datagram not answered for `reason` (one of [`UNANSWERED`]).
    pub fn unanswered(&self, reason: &str) {
        if let Some(i) = UNANSWERED.iter().position(|r| *r == reason) {
            self.unanswered[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The unanswered counts, by reason.
    pub fn unanswered_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        UNANSWERED
            .iter()
            .zip(&self.unanswered)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }
}

impl Stats {
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        [
            ("received", self.received.load(Ordering::Relaxed)),
            ("answered", self.answered.load(Ordering::Relaxed)),
            ("ignored", self.ignored.load(Ordering::Relaxed)),
            ("malformed", self.malformed.load(Ordering::Relaxed)),
            ("send_errors", self.send_errors.load(Ordering::Relaxed)),
            ("kernel_drops", self.kernel_drops.load(Ordering::Relaxed)),
        ]
    }
}

/// What the driver needs to answer.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    /// Told of each answer and of each address a client takes.
    pub events: Option<Sink>,
    /// Which machines to answer (by MAC, `aa:bb:cc:dd:ee:ff`, UUID or architecture); all when
    /// absent. Called on the DHCP path: it must not block (an API behind it answers from a
    /// cache, machine profiles from memory).
    pub allow: Option<Allow>,
    /// The settings for a machine [`Allowed::Chain`]: these, with the Secure Boot chain's shim
    /// for UEFI x64 PXE firmware (`efi_x64_signed`). Made once, not per request.
    pub chain: Option<Settings>,
}

/// What [`Config::allow`] says of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// No answer (yet).
    No,
    /// The answer [`Config::settings`] give.
    Yes,
    /// The answer [`Config::chain`] gives: its kernel is signed, so UEFI x64 PXE firmware gets
    /// the Secure Boot chain though other machines get iPXE (an API names each machine's
    /// kernel).
    Chain,
}

/// See [`Config::allow`].
#[derive(Clone)]
pub struct Allow(pub Arc<dyn Fn(&crate::Client) -> Allowed + Send + Sync>);

impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allow")
    }
}

/// An offer (port 67) or an ack (port 4011) that went out.
#[derive(Debug, Clone)]
pub struct Answered {
    pub client: crate::Client,
    pub loader: crate::Loader,
    pub target: crate::BootTarget,
    pub to: std::net::SocketAddrV4,
    pub port: Port,
}

impl Answered {
    /// The boot path chosen (`UEFI PXE, then iPXE`), as the offer line names it.
    pub fn path(&self) -> &'static str {
        boot_path(&self.client, self.loader)
    }

    /// The offer's (or ack's) log line: one per machine step at `info`.
    pub fn log(&self) {
        let kind = match self.port {
            Port::Dhcp => "offer",
            Port::ProxyBoot => "ack",
        };
        tracing::info!(
            mac = %self.client.mac,
            firmware = %Label(&self.client),
            path = self.path(),
            boot = self.target.as_str(),
            to = %self.to,
            "{kind}"
        );
    }
}

/// What the driver tells the rest of the server, besides its warnings.
#[derive(Debug, Clone)]
pub enum Event {
    Answered(Answered),
    /// A client told the network's DHCP server which address it takes ([`crate::lease`]).
    Lease {
        mac: crate::Mac,
        ip: Ipv4Addr,
    },
    /// A PXE client got no offer because nothing here boots its architecture (no loader for
    /// it): its machine is told why on its timeline.
    NoLoader(crate::Client),
}

/// Where [`Event`]s go, each moved there after its reply left. Called on the DHCP path: it
/// must not block, nor do anything an answer would wait for (log lines included: queue it).
#[derive(Clone)]
pub struct Sink(pub Arc<dyn Fn(Event) + Send + Sync>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// Receives and answers on the calling thread, until the socket's [`udp::Stop`] is set. What
/// has arrived is taken in one call ([`udp::BATCH`] at most) and answered in order.
pub fn run(socket: Blocking, port: Port, config: Arc<Config>, stats: Arc<Stats>) {
    let mut batch = udp::Batch::new(crate::message::MAX_MESSAGE_LEN + 64);
    let mut one = One {
        socket: &socket,
        port,
        port_name: match port {
            Port::Dhcp => "proxydhcp",
            Port::ProxyBoot => "pxe-4011",
        },
        config: &config,
        stats: &stats,
        seen_drops: 0,
    };
    loop {
        match socket.recv_batch(&mut batch) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(port = one.port_name, error = %e, "receive failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        }
        for (bytes, rx) in batch.datagrams() {
            one.answer(bytes, rx);
        }
    }
}

/// What answering one datagram needs.
struct One<'a> {
    socket: &'a Blocking,
    port: Port,
    port_name: &'static str,
    config: &'a Config,
    stats: &'a Stats,
    /// The kernel's count of datagrams it dropped on this socket, as last seen.
    seen_drops: u64,
}

impl One<'_> {
    fn answer(&mut self, bytes: &[u8], rx: &udp::Received) {
        let (config, stats, port_name) = (self.config, self.stats, self.port_name);
        stats.received.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = rx.drops {
            // The kernel's count for this socket; the stats add up both sockets' growth.
            let before = self.seen_drops;
            self.seen_drops = u64::from(total);
            if self.seen_drops > before {
                stats
                    .kernel_drops
                    .fetch_add(self.seen_drops - before, Ordering::Relaxed);
                tracing::warn!(
                    port = port_name,
                    dropped = self.seen_drops - before,
                    "the kernel dropped requests: the receive buffer was full"
                );
            }
        }
        let datagram = Datagram {
            bytes,
            source: rx.source,
            ifindex: rx.ifindex,
            local: rx.local,
            truncated: rx.len == usize::MAX,
        };
        let handled = handle(&datagram, self.port, &config.settings, udp::interface_ipv4);
        if let (Some(sink), Some((mac, ip))) = (&config.events, handled.lease) {
            (sink.0)(Event::Lease { mac, ip });
        }
        let mut t = match handled.outcome {
            Ok(t) => t,
            Err(why) => {
                if let (Dropped::Ignored(Ignored::NoBootFile(client)), Some(sink)) =
                    (&why, &config.events)
                {
                    (sink.0)(Event::NoLoader(*client));
                }
                return note_dropped(&why, port_name, &datagram, stats);
            }
        };
        if let Some(allow) = &config.allow {
            let allowed = (allow.0)(&t.reply.client);
            if let (Allowed::Chain, Some(chain)) = (allowed, &config.chain) {
                // Answered again with the chain's settings: rare (an API's machine with a
                // signed kernel), and the same pure function.
                if t.reply.loader != crate::Loader::SecureBootChain {
                    if let Ok(c) = handle(&datagram, self.port, chain, udp::interface_ipv4).outcome
                    {
                        t = c;
                    }
                }
            }
            if allowed == Allowed::No {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
                stats.unanswered("not_allowed");
                tracing::debug!(
                    port = port_name,
                    mac = %t.reply.client.mac,
                    "not answered: this machine is not to be booted (yet)"
                );
                return;
            }
        }
        if let Err(e) = self
            .socket
            .send(&t.bytes, t.destination, t.ifindex, t.source)
        {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(mac = %t.reply.client.mac, to = %t.destination, error = %e, "sending reply failed");
            return;
        }
        stats.answered.fetch_add(1, Ordering::Relaxed);
        // Told after the reply left, and only moved: its log line and everything else it
        // means are the sink's, off this path.
        if let Some(sink) = &config.events {
            let Reply {
                client,
                target,
                loader,
                ..
            } = t.reply;
            (sink.0)(Event::Answered(Answered {
                client,
                loader,
                target,
                to: t.destination,
                port: self.port,
            }));
        }
    }
}

/// Counts and logs a datagram that got no answer: most are ordinary traffic, so only what an
/// operator should act on is above debug.
fn note_dropped(why: &Dropped, port_name: &str, d: &Datagram<'_>, stats: &Stats) {
    stats.unanswered(why.reason());
    match why {
        Dropped::Oversized | Dropped::Malformed(_) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(port = port_name, from = %d.source, reason = ?why, "dropped malformed packet");
        }
        Dropped::NoAddress(ifindex) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                ifindex,
                "request on an interface with no IPv4 address; ignored"
            );
        }
        Dropped::Ignored(Ignored::NoBootFile(client)) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                arch = client.arch.name(),
                from = %d.source,
                "no iPXE binary for this architecture; not answering (see --ipxe-arm64)"
            );
        }
        other => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(port = port_name, from = %d.source, reason = ?other, "not answered");
        }
    }
}

/// The boot path an answer (sending `loader`) puts a machine on, for the offer's log line.
pub fn boot_path(c: &crate::Client, loader: crate::Loader) -> &'static str {
    use crate::{Arch, Firmware, Loader};
    match (c.firmware, c.arch) {
        (Firmware::Pxe, _) if loader == Loader::SecureBootChain => {
            "UEFI PXE, then the Secure Boot chain"
        }
        (Firmware::Pxe, Arch::Bios) => "BIOS PXE, then iPXE",
        (Firmware::Pxe, Arch::EfiArm64) => "arm64 UEFI PXE, then iPXE",
        (Firmware::Pxe, _) => "UEFI PXE, then iPXE",
        (Firmware::HttpBoot, Arch::EfiArm64) => "arm64 UEFI HTTP Boot, then iPXE",
        (Firmware::HttpBoot, _) => "UEFI HTTP Boot, then iPXE",
        (Firmware::Ipxe { http: false }, _) => "iPXE without HTTP, then an iPXE with it",
        (Firmware::Ipxe { http: true } | Firmware::Pixiecore, _) => "iPXE: the boot script",
    }
}

/// A short human label: "UEFI x64 PXE", "BIOS iPXE (HTTP)".
pub fn firmware_label(c: &crate::Client) -> String {
    Label(c).to_string()
}

/// [`firmware_label`] as it is written, without a string of its own.
struct Label<'a>(&'a crate::Client);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0.firmware {
            crate::Firmware::Pxe => "PXE",
            crate::Firmware::Ipxe { http: true } => "iPXE",
            crate::Firmware::Ipxe { http: false } => "iPXE (no HTTP)",
            crate::Firmware::Pixiecore => "iPXE (pixiecore)",
            crate::Firmware::HttpBoot => "HTTP boot",
        };
        write!(f, "{} {}", self.0.arch.name(), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_a_datagram_is_not_answered_is_counted() {
        use crate::message::DecodeError;
        let stats = Stats::default();
        let source = std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 68);
        let all = [
            Dropped::OtherInterface(1),
            Dropped::Oversized,
            Dropped::BadSource(source),
            Dropped::Malformed(DecodeError::BadMagic),
            Dropped::NoAddress(1),
            Dropped::Ignored(Ignored::NotRequest),
            Dropped::Ignored(Ignored::MessageType),
            Dropped::Ignored(Ignored::NotPxe),
            Dropped::Ignored(Ignored::NotEthernet),
            Dropped::Ignored(Ignored::UnknownArch(99)),
            Dropped::Ignored(Ignored::NoBootFile(crate::Client {
                arch: crate::Arch::EfiArm64,
                arch_code: 11,
                firmware: crate::Firmware::Pxe,
                mac: crate::Mac::from([2, 0, 0, 0, 0, 1]),
                uuid: None,
            })),
            Dropped::Ignored(Ignored::BadRelay(Ipv4Addr::LOCALHOST)),
            Dropped::Ignored(Ignored::BadSource),
        ];
        for d in &all {
            assert!(UNANSWERED.contains(&d.reason()), "{d:?}");
            stats.unanswered(d.reason());
        }
        stats.unanswered("not_allowed");
        let total: u64 = stats.unanswered_counts().map(|(_, n)| n).sum();
        assert_eq!(total, all.len() as u64 + 1);
    }

    #[test]
    fn the_offer_line_names_each_boot_path() {
        use crate::message::{Message, MessageType};
        let client = |opts: Vec<(u8, Vec<u8>)>| {
            let m = Message::client_request(MessageType::Discover, 1, [2, 0, 0, 0, 0, 1], opts);
            crate::classify(&m).unwrap()
        };
        let http = (60, b"HTTPClient".to_vec());
        for (opts, want) in [
            (vec![(93, vec![0, 0])], "BIOS PXE, then iPXE"),
            (vec![(93, vec![0, 7])], "UEFI PXE, then iPXE"),
            (vec![(93, vec![0, 11])], "arm64 UEFI PXE, then iPXE"),
            (
                vec![(93, vec![0, 16]), http.clone()],
                "UEFI HTTP Boot, then iPXE",
            ),
            (
                vec![(93, vec![0, 19]), http],
                "arm64 UEFI HTTP Boot, then iPXE",
            ),
            (
                vec![
                    (93, vec![0, 0]),
                    (77, b"iPXE".to_vec()),
                    (175, vec![0x13, 1, 1]),
                ],
                "iPXE: the boot script",
            ),
            (
                vec![(93, vec![0, 0]), (77, b"iPXE".to_vec())],
                "iPXE without HTTP, then an iPXE with it",
            ),
        ] {
            let c = client(opts.clone());
            let loader = match c.firmware {
                crate::Firmware::Pixiecore | crate::Firmware::Ipxe { http: true } => {
                    crate::Loader::Script
                }
                _ => crate::Loader::Ipxe,
            };
            assert_eq!(boot_path(&c, loader), want, "{opts:?}");
        }
        let uefi = client(vec![(93, vec![0, 7])]);
        assert_eq!(
            boot_path(&uefi, crate::Loader::SecureBootChain),
            "UEFI PXE, then the Secure Boot chain"
        );
    }
}
