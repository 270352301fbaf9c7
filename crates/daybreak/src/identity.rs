//! Who may speak for a machine. Nothing a booting machine sends is authenticated: any host on
//! the LAN can put any MAC in a DHCP packet or a URL. What a request names is therefore only
//! believed when something the requester cannot forge from its own address agrees:
//!
//! - **On a link of this host**, the kernel's neighbour entry for the request's address (who
//!   answered ARP for it, [`udp::neighbor`]) must be the MAC the request names. Another host
//!   using its own address cannot change that without sending frames as that MAC.
//! - **Behind a router** (a DHCP relay), there is no such entry: the address must be the one a
//!   PXE exchange of this boot bound to the MAC (a DHCPREQUEST or a port 4011 request seen in
//!   the last [`BOOT`]), and no other address may have claimed the MAC in that time: a second
//!   claimant makes both doubtful.
//!
//! A request that fails gets nothing personal (its MAC's own script, cloud-config, install
//! callback, GRUB configuration or API files): it gets the safest answer for that MAC (its disk
//! when it is installed, otherwise a wait), and the doubt is logged, counted and shown. A host
//! that takes a machine's MAC *and* address on the wire is that machine as far as any PXE
//! server can tell: that is where the line is (README, "Threat model").

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pxe::Mac;

/// How long a PXE exchange binds a MAC to an address: one boot, from the firmware's DHCP to
/// the kernel fetching its cloud-config.
pub const BOOT: Duration = Duration::from_secs(600);
/// Bindings remembered; past this the oldest go (a flood of made-up MACs cannot grow it).
const MAX_BOUND: usize = 65_536;

/// Why a request may not speak for the machine it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doubt {
    /// The address is on our link, and the host that answers for it is another MAC.
    OtherLink(Mac),
    /// No PXE exchange of this boot bound the MAC to this address (routed requests).
    Unbound,
    /// Another address claimed the MAC in this boot (routed requests).
    Conflict(IpAddr),
}

impl Doubt {
    /// The label of the metric (`daybreak_identity_doubts_total{reason=…}`).
    pub fn reason(&self) -> &'static str {
        REASONS[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            Doubt::OtherLink(_) => 0,
            Doubt::Unbound => 1,
            Doubt::Conflict(_) => 2,
        }
    }
}

impl std::fmt::Display for Doubt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Doubt::OtherLink(m) => write!(f, "the host at that address is {m}"),
            Doubt::Unbound => f.write_str("no PXE exchange of this boot bound it to that address"),
            Doubt::Conflict(ip) => write!(f, "{ip} claimed it too in this boot"),
        }
    }
}

/// A request's standing for the MAC it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// It is that machine, as far as can be told.
    Vouched,
    Doubted(Doubt),
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    ip: IpAddr,
    at: Instant,
    /// A second address that claimed the MAC within [`BOOT`] of the first.
    other: Option<IpAddr>,
}

/// MACs bound to addresses by PXE exchanges, and the doubts counted.
#[derive(Debug, Default)]
pub struct Bindings {
    bound: Mutex<HashMap<Mac, Bound>>,
    doubts: [AtomicU64; 3],
}

impl Bindings {
    /// A PXE exchange (a DHCPREQUEST naming its address, a port 4011 request from it) binds
    /// `mac` to `ip`, at `now`.
    pub fn bind(&self, mac: Mac, ip: IpAddr, now: Instant) {
        let mut b = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        crate::bounded::make_room(&mut b, &mac, MAX_BOUND, |b| b.at);
        match b.get_mut(&mac) {
            Some(old) if now.saturating_duration_since(old.at) < BOOT => {
                if old.ip == ip {
                    old.at = now;
                } else {
                    if old.other.is_none() {
                        tracing::warn!(mac = %mac, first = %old.ip, second = %ip, "two addresses claim one MAC in one boot: neither gets anything personal until the boot is over");
                    }
                    old.other = Some(ip);
                }
            }
            _ => {
                b.insert(
                    mac,
                    Bound {
                        ip,
                        at: now,
                        other: None,
                    },
                );
            }
        }
    }

    /// Whether a request from `peer` may speak for `mac`; `link` is the kernel's neighbour
    /// entry for `peer` ([`udp::neighbor`]), `None` when `peer` is not on our link. A doubt is
    /// counted.
    pub fn vouch(&self, mac: Mac, peer: IpAddr, link: Option<Mac>, now: Instant) -> Vouch {
        let v = self.judge(mac, peer, link, now);
        if let Vouch::Doubted(d) = v {
            self.doubts[d.index()].fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    /// [`Bindings::vouch`] without counting anything: for attributing what an address did
    /// (a failure) rather than answering a request.
    pub fn judge(&self, mac: Mac, peer: IpAddr, link: Option<Mac>, now: Instant) -> Vouch {
        match link {
            Some(l) if l == mac => Vouch::Vouched,
            Some(other) => Vouch::Doubted(Doubt::OtherLink(other)),
            None => {
                let b = self.bound.lock().unwrap_or_else(|e| e.into_inner());
                match b.get(&mac) {
                    Some(b) if now.saturating_duration_since(b.at) >= BOOT => {
                        Vouch::Doubted(Doubt::Unbound)
                    }
                    Some(Bound {
                        other: Some(o), ip, ..
                    }) => Vouch::Doubted(Doubt::Conflict(if *ip == peer { *o } else { *ip })),
                    Some(b) if b.ip == peer => Vouch::Vouched,
                    _ => Vouch::Doubted(Doubt::Unbound),
                }
            }
        }
    }

    /// Requests doubted so far, by reason.
    pub fn doubts(&self) -> [(&'static str, u64); 3] {
        let n = |i: usize| self.doubts[i].load(Ordering::Relaxed);
        [(REASONS[0], n(0)), (REASONS[1], n(1)), (REASONS[2], n(2))]
    }
}

/// The metric's labels, in [`Bindings::doubts`]'s order.
const REASONS: [&str; 3] = ["other_link_address", "unbound", "conflict"];

/// The kernel's neighbour entry for `peer` as a MAC, when `peer` is on one of our links.
pub fn link_address(peer: IpAddr) -> Option<Mac> {
    match peer {
        IpAddr::V4(v4) => udp::neighbor(v4).map(Mac),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xa]);
    const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xb]);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn on_our_link_the_neighbour_entry_decides() {
        let b = Bindings::default();
        let now = Instant::now();
        assert_eq!(b.vouch(A, ip(5), Some(A), now), Vouch::Vouched);
        // Naming A from a host whose address answers as B: never A, whatever DHCP said.
        b.bind(A, ip(6), now);
        assert_eq!(
            b.vouch(A, ip(6), Some(B), now),
            Vouch::Doubted(Doubt::OtherLink(B))
        );
    }

    #[test]
    fn behind_a_router_only_the_address_of_this_boots_exchange_speaks_for_a_mac() {
        let b = Bindings::default();
        let now = Instant::now();
        assert_eq!(b.vouch(A, ip(5), None, now), Vouch::Doubted(Doubt::Unbound));
        b.bind(A, ip(5), now);
        assert_eq!(b.vouch(A, ip(5), None, now), Vouch::Vouched);
        assert_eq!(b.vouch(A, ip(9), None, now), Vouch::Doubted(Doubt::Unbound));
        // The boot is over: bound again by the next exchange.
        let later = now + BOOT;
        assert_eq!(
            b.vouch(A, ip(5), None, later),
            Vouch::Doubted(Doubt::Unbound)
        );
        b.bind(A, ip(7), later);
        assert_eq!(b.vouch(A, ip(7), None, later), Vouch::Vouched);
    }

    #[test]
    fn a_second_claimant_in_one_boot_gets_nothing_and_neither_does_the_first() {
        let b = Bindings::default();
        let now = Instant::now();
        b.bind(A, ip(5), now);
        b.bind(A, ip(66), now + Duration::from_secs(1));
        assert_eq!(
            b.vouch(A, ip(66), None, now),
            Vouch::Doubted(Doubt::Conflict(ip(5)))
        );
        assert_eq!(
            b.vouch(A, ip(5), None, now),
            Vouch::Doubted(Doubt::Conflict(ip(66)))
        );
        let counted: u64 = b.doubts().iter().map(|(_, n)| n).sum();
        assert_eq!(counted, 2);
        assert_eq!(b.doubts()[2], ("conflict", 2));
    }

    #[test]
    fn the_table_is_bounded() {
        let b = Bindings::default();
        let now = Instant::now();
        for i in 0..(MAX_BOUND as u32 + 100) {
            let m = Mac([0x52, 0x54, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            b.bind(m, ip(1), now);
        }
        assert!(b.bound.lock().unwrap().len() <= MAX_BOUND);
    }
}
