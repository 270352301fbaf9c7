//! Boot events: one type for what the servers see each machine do, from the ProxyDHCP offer to
//! the last byte of the squashfs, keyed by MAC. This is the seam that machine profiles, the
//! status page and metrics read (by [`Hub::subscribe`]); the log lines of TFTP and HTTP carry the
//! MAC from here too, so every line of one boot can be found by it.
//!
//! TFTP and HTTP see only an address. The hub learns which MAC holds which address from what the
//! machine itself says: the DHCPREQUEST it sends the network's DHCP server (ProxyDHCP sees it
//! broadcast) and the `mac=` of the iPXE script URL. The table is bounded; the oldest entries go.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::broadcast;

/// Addresses remembered; past this the oldest are forgotten (a LAN has far fewer machines).
const MAX_LEASES: usize = 65_536;
/// How long after its PXE exchange an address counts as a machine booting with us.
const BOOTING: std::time::Duration = std::time::Duration::from_secs(600);
/// Events kept for a subscriber that falls behind (it then skips ahead, and is told how far).
const BACKLOG: usize = 4096;

/// A step of one machine's boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// ProxyDHCP answered: an offer (port 67) or an ack (port 4011).
    Offer {
        firmware: String,
        /// The boot path chosen (`BIOS PXE, then iPXE`).
        path: &'static str,
        target: String,
        port: pxe::Port,
    },
    /// The machine took this address from the network's DHCP server.
    Lease,
    /// The iPXE binary over TFTP, whole (`ok`) or not.
    Loader { file: String, bytes: u64, ok: bool },
    /// iPXE fetched its boot script.
    Script,
    /// A file over HTTP (kernel, initrd, squashfs, cloud-config), or a part of one.
    File { name: String, bytes: u64, ms: u64 },
    /// A large file on its way: the bytes of this response sent so far (once a second).
    Sending { name: String, bytes: u64 },
    /// The script's last request before the kernel starts.
    Booting,
    /// The machine fetched its own cloud-config (its profile's, at its own URL).
    Config,
    /// The machine called back that its install finished.
    Installed,
    /// The machine was told to boot from its local disk.
    LocalBoot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvent {
    pub at: std::time::SystemTime,
    pub mac: Option<Mac>,
    /// The machine's address and port, when it spoke from one (DHCP offers go to a MAC).
    pub peer: Option<SocketAddr>,
    pub step: Step,
}

pub struct Hub {
    leases: Mutex<HashMap<IpAddr, (Mac, Instant)>>,
    tx: broadcast::Sender<BootEvent>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            leases: Mutex::default(),
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

pub use pxe::Mac;

impl Hub {
    /// Remembers that `mac` holds `ip`.
    pub fn learn(&self, ip: IpAddr, mac: Mac) {
        let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() >= MAX_LEASES && !l.contains_key(&ip) {
            // Full (a flood of made-up requests, most likely): keep what was seen in the last
            // hour, or start over. Amortised, so the DHCP path never scans the table per packet.
            l.retain(|_, (_, t)| t.elapsed() < std::time::Duration::from_secs(3600));
            if l.len() >= MAX_LEASES / 2 {
                l.clear();
            }
        }
        l.insert(ip, (mac, Instant::now()));
    }

    /// A MAC a request from `ip` names (a script URL's `mac=`): learned unless the network's
    /// DHCP already says another machine holds `ip`, which a request cannot overrule. True when
    /// the claim stands.
    pub fn claim(&self, ip: IpAddr, mac: Mac) -> bool {
        match self.mac_of(ip) {
            Some(known) if known != mac => false,
            _ => {
                self.learn(ip, mac);
                true
            }
        }
    }

    /// The MAC known to hold `ip`.
    pub fn mac_of(&self, ip: IpAddr) -> Option<Mac> {
        let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.get(&ip).map(|(m, _)| *m)
    }

    /// Whether a machine took `ip` in a PXE exchange (or named it in a script request) within
    /// the last few minutes: TFTP keeps such a client's transfer when forged requests crowd in.
    pub fn booting(&self, ip: IpAddr) -> bool {
        let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.get(&ip).is_some_and(|(_, t)| t.elapsed() < BOOTING)
    }

    /// Records a step: the MAC is the one given, else the one known for `peer`'s address.
    pub fn emit(&self, peer: Option<SocketAddr>, mac: Option<Mac>, step: Step) -> BootEvent {
        let mac = mac.or_else(|| peer.and_then(|p| self.mac_of(p.ip())));
        let e = BootEvent {
            at: std::time::SystemTime::now(),
            mac,
            peer,
            step,
        };
        // Nobody listening is fine: the status page and metrics subscribe when they run.
        let _ = self.tx.send(e.clone());
        e
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BootEvent> {
        self.tx.subscribe()
    }

    /// What ProxyDHCP reports.
    pub fn on_dhcp(&self, e: pxe::driver::Event) {
        match e {
            pxe::driver::Event::Lease { mac, ip } => {
                self.learn(ip.into(), mac);
                // Its DHCPREQUEST came from the client port.
                self.emit(Some(SocketAddr::from((ip, 68))), Some(mac), Step::Lease);
            }
            pxe::driver::Event::Answered {
                mac,
                firmware,
                path,
                target,
                port,
            } => {
                self.emit(
                    None,
                    Some(mac),
                    Step::Offer {
                        firmware,
                        path,
                        target,
                        port,
                    },
                );
            }
        }
    }

    /// What TFTP reports: its log line, with the MAC when known, and the event.
    pub fn on_tftp(&self, r: tftp::Report) {
        let ip = r.peer.ip();
        let mac = self.mac_of(ip);
        tftp::log_report(&r, mac.as_ref().map(|m| m as &dyn std::fmt::Display));
        let ok = r.outcome == tftp::Outcome::Complete;
        if ok
            || matches!(
                r.outcome,
                tftp::Outcome::Aborted { .. } | tftp::Outcome::TimedOut { confirmed: true }
            )
        {
            self.emit(
                Some(r.peer),
                None,
                Step::Loader {
                    file: r.file,
                    bytes: r.bytes as u64,
                    ok,
                },
            );
        }
    }
}

/// What the boot HTTP server reports: clients booting now, a large body's progress, each file
/// sent (its log line, with the MAC when known, and the event).
impl http::Observer for Hub {
    fn known(&self, ip: IpAddr) -> bool {
        self.booting(ip)
    }

    fn progress(&self, peer: SocketAddr, name: &str, bytes: u64) {
        self.emit(
            Some(peer),
            None,
            Step::Sending {
                name: name.to_string(),
                bytes,
            },
        );
    }

    fn sent(&self, r: &http::Report) {
        // Lines of one boot carry its MAC, once the machine has said it (DHCP, the script URL).
        let mac = self.mac_of(r.peer.ip());
        http::log_report(r, mac.as_ref().map(|m| m as &dyn std::fmt::Display));
        if r.error.is_none() && !r.is_internal() {
            self.emit(
                Some(r.peer),
                mac,
                Step::File {
                    name: r.name.clone(),
                    bytes: r.count,
                    ms: r.ms,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_learned_from_the_lease_name_later_steps() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        let ip: IpAddr = "10.0.0.42".parse().unwrap();
        hub.on_dhcp(pxe::driver::Event::Lease {
            mac: "52:54:00:AA:bb:01".parse().unwrap(),
            ip: "10.0.0.42".parse().unwrap(),
        });
        let e = hub.emit(Some(SocketAddr::new(ip, 4321)), None, Step::Script);
        assert_eq!(
            e.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        assert_eq!(rx.try_recv().unwrap().step, Step::Lease);
        assert_eq!(rx.try_recv().unwrap().step, Step::Script);
        let other = hub.emit(Some("10.0.0.7:80".parse().unwrap()), None, Step::Booting);
        assert_eq!(other.mac, None);
    }

    #[test]
    fn a_request_cannot_claim_an_address_dhcp_gave_another_machine() {
        let hub = Hub::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let (one, two): (Mac, Mac) = (
            "52:54:00:00:00:01".parse().unwrap(),
            "52-54-00-00-00-02".parse().unwrap(),
        );
        assert!(hub.claim(ip, one));
        assert!(hub.claim(ip, one));
        assert!(!hub.claim(ip, two));
        assert_eq!(hub.mac_of(ip), Some(one));
    }

    #[test]
    fn the_table_is_bounded() {
        let hub = Hub::default();
        for i in 0..(MAX_LEASES as u32 + 10) {
            hub.learn(IpAddr::V4(i.into()), Mac([0x52, 0x54, 0, 0, 0, 1]));
        }
        assert!(hub.leases.lock().unwrap().len() <= MAX_LEASES);
    }
}
