//! The tokio layer around [`crate::endpoint::handle`]: receives datagrams on a [`udp::Socket`]
//! (which says which interface and local address each arrived on), and sends the reply out of
//! that same interface. Port 67 is often taken by a DHCP server on the same host: then the socket
//! is [`udp::Socket::raw`], and nothing here changes.
//!
//! Nothing between receiving a DISCOVER and sending its OFFER waits on disk, network or a lock.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use udp::Socket;

use crate::endpoint::{handle, Datagram, Dropped, Settings};
use crate::{Ignored, Port};

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
}

/// See [`Config::allow`].
#[derive(Clone)]
pub struct Allow(pub Arc<dyn Fn(&crate::Client) -> bool + Send + Sync>);

impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allow")
    }
}

/// What the driver tells the rest of the server, besides its log lines.
#[derive(Debug, Clone)]
pub enum Event {
    /// An offer (port 67) or an ack (port 4011) went out.
    Answered {
        mac: crate::Mac,
        firmware: String,
        /// The boot path chosen (`UEFI PXE, then iPXE`), as the offer line names it.
        path: &'static str,
        target: String,
        port: Port,
    },
    /// A client told the network's DHCP server which address it takes ([`crate::lease`]).
    Lease { mac: crate::Mac, ip: Ipv4Addr },
}

/// Where [`Event`]s go. Called on the DHCP path: it must not block.
#[derive(Clone)]
pub struct Sink(pub Arc<dyn Fn(Event) + Send + Sync>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// Receives and answers forever. Cancel by dropping the future (UDP receive is cancel-safe).
pub async fn run(socket: Socket, port: Port, config: Arc<Config>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; crate::message::MAX_MESSAGE_LEN + 64];
    let port_name = match port {
        Port::Dhcp => "proxydhcp",
        Port::ProxyBoot => "pxe-4011",
    };
    let mut seen_drops = 0u64;
    loop {
        let rx = match socket.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(port = port_name, error = %e, "receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = rx.drops {
            // The kernel's count for this socket; the stats add up both sockets' growth.
            let before = seen_drops;
            seen_drops = u64::from(total);
            if seen_drops > before {
                stats
                    .kernel_drops
                    .fetch_add(seen_drops - before, Ordering::Relaxed);
                tracing::warn!(
                    port = port_name,
                    dropped = seen_drops - before,
                    "the kernel dropped requests: the receive buffer was full"
                );
            }
        }
        let truncated = rx.len == usize::MAX;
        let datagram = Datagram {
            bytes: if truncated { &[] } else { &buf[..rx.len] },
            source: rx.source,
            ifindex: rx.ifindex,
            local: rx.local,
            truncated,
        };
        let handled = handle(&datagram, port, &config.settings, udp::interface_ipv4);
        if let (Some(sink), Some((mac, ip))) = (&config.events, handled.lease) {
            (sink.0)(Event::Lease { mac, ip });
        }
        let t = match handled.outcome {
            Ok(t) => t,
            Err(why) => {
                note_dropped(&why, port_name, &datagram, &stats);
                continue;
            }
        };
        if let Some(allow) = &config.allow {
            if !(allow.0)(&t.reply.client) {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
                stats.unanswered("not_allowed");
                tracing::debug!(
                    port = port_name,
                    mac = %t.reply.client.mac,
                    "not answered: this machine is not to be booted (yet)"
                );
                continue;
            }
        }
        match socket
            .send(&t.bytes, t.destination, t.ifindex, t.source)
            .await
        {
            Ok(()) => {
                stats.answered.fetch_add(1, Ordering::Relaxed);
                let kind = match port {
                    Port::Dhcp => "offer",
                    Port::ProxyBoot => "ack",
                };
                let client = &t.reply.client;
                let firmware = firmware_label(client);
                tracing::info!(
                    mac = %client.mac,
                    firmware = %firmware,
                    path = boot_path(client, t.reply.loader),
                    boot = t.reply.target.as_str(),
                    to = %t.destination,
                    "{kind}"
                );
                if let Some(sink) = &config.events {
                    (sink.0)(Event::Answered {
                        mac: client.mac,
                        firmware,
                        path: boot_path(client, t.reply.loader),
                        target: t.reply.target.as_str().to_string(),
                        port,
                    });
                }
            }
            Err(e) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(mac = %t.reply.client.mac, to = %t.destination, error = %e, "sending reply failed");
            }
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
        Dropped::Ignored(Ignored::NoBootFile(arch)) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                arch = arch.name(),
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
    let what = match c.firmware {
        crate::Firmware::Pxe => "PXE",
        crate::Firmware::Ipxe { http: true } => "iPXE",
        crate::Firmware::Ipxe { http: false } => "iPXE (no HTTP)",
        crate::Firmware::Pixiecore => "iPXE (pixiecore)",
        crate::Firmware::HttpBoot => "HTTP boot",
    };
    format!("{} {}", c.arch.name(), what)
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
            Dropped::Ignored(Ignored::NoBootFile(crate::Arch::EfiArm64)),
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
