//! One datagram in, at most one concrete send out: the whole ProxyDHCP decision, I/O-free. The
//! driver receives (with the interface and local address the kernel reports), calls [`handle`],
//! and sends exactly what comes back; which interface answers, from which address and to where
//! are decided here, so byte fixtures test them without root or sockets (as quinn-proto's
//! `Endpoint::handle` returns a `Transmit`).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::message::{DecodeError, Message};
use crate::{
    acceptable_source, answer, lease, BootFiles, Context, Destination, HttpAddress, Ignored, Port,
    Reply,
};

/// A datagram as the socket received it.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub source: SocketAddrV4,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// Our address on that interface, as the kernel picked it for replies (unspecified when it
    /// did not say).
    pub local: Ipv4Addr,
    /// It was longer than the receive buffer.
    pub truncated: bool,
}

/// What the endpoint knows besides the datagram.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The boot HTTP server; its `advertise` overrides the per-interface server address in
    /// replies (siaddr, option 54, URLs).
    pub http: HttpAddress,
    pub boot_files: BootFiles,
    /// Only answer requests that arrive on these interface indexes; empty means all.
    pub interfaces: Vec<u32>,
}

/// A reply to send, exactly: to `destination`, from `source`, out of `ifindex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddrV4,
    pub source: Ipv4Addr,
    pub ifindex: u32,
    pub bytes: Vec<u8>,
    /// What was decided, for logs and boot events.
    pub reply: Reply,
}

/// Why a datagram got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// It came in on an interface this server does not answer on.
    OtherInterface(u32),
    Oversized,
    /// From a port or address no client uses (see [`acceptable_source`]).
    BadSource(SocketAddrV4),
    Malformed(DecodeError),
    /// The receiving interface has no IPv4 address to answer from.
    NoAddress(u32),
    /// Well-formed, and not ours to answer (see [`Ignored`]).
    Ignored(Ignored),
}

impl Dropped {
    /// A short name for why, for counters (`other_interface`, `not_pxe`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            Dropped::OtherInterface(_) => "other_interface",
            Dropped::Oversized => "oversized",
            Dropped::BadSource(_) | Dropped::Ignored(Ignored::BadSource) => "bad_source",
            Dropped::Malformed(_) => "malformed",
            Dropped::NoAddress(_) => "no_address",
            Dropped::Ignored(Ignored::NotRequest) => "not_request",
            Dropped::Ignored(Ignored::MessageType) => "message_type",
            Dropped::Ignored(Ignored::NotPxe) => "not_pxe",
            Dropped::Ignored(Ignored::NotEthernet) => "not_ethernet",
            Dropped::Ignored(Ignored::UnknownArch(_)) => "unknown_arch",
            Dropped::Ignored(Ignored::NoBootFile(_)) => "no_boot_file",
            Dropped::Ignored(Ignored::BadRelay(_)) => "bad_relay",
        }
    }
}

/// The decision for one datagram, and the address the sender holds, if it said so: a DHCPREQUEST
/// to the network's DHCP server seen on port 67 (see [`lease`]), or a request to port 4011
/// answered here, sent from the address in its `ciaddr` (as firmware does once it has a lease;
/// also the only sign of a client behind a relay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub outcome: Result<Transmit, Dropped>,
    pub lease: Option<(crate::Mac, Ipv4Addr)>,
}

fn dropped(why: Dropped) -> Handled {
    Handled {
        outcome: Err(why),
        lease: None,
    }
}

/// Decides what to send for `d`, received on `port`. `interface_address` names an interface's
/// IPv4 address, asked only when the kernel did not report the local address.
pub fn handle(
    d: &Datagram<'_>,
    port: Port,
    settings: &Settings,
    interface_address: impl FnOnce(u32) -> Option<Ipv4Addr>,
) -> Handled {
    if !settings.interfaces.is_empty() && !settings.interfaces.contains(&d.ifindex) {
        return dropped(Dropped::OtherInterface(d.ifindex));
    }
    if d.truncated {
        return dropped(Dropped::Oversized);
    }
    if !acceptable_source(port, d.source) {
        return dropped(Dropped::BadSource(d.source));
    }
    let msg = match Message::decode(d.bytes) {
        Ok(m) => m,
        Err(e) => return dropped(Dropped::Malformed(e)),
    };
    let lease = match port {
        Port::Dhcp => lease(&msg),
        Port::ProxyBoot => None,
    };
    // The reply leaves from the address the request reached; `--advertise` is only what the
    // reply names (NAT, a port forward, a shared address another host holds), never its source:
    // this host may not hold it.
    let local = match d.local.is_unspecified() {
        false => Some(d.local),
        true => interface_address(d.ifindex),
    };
    let server = match (settings.http.advertise, local) {
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Handled {
                outcome: Err(Dropped::NoAddress(d.ifindex)),
                lease,
            }
        }
    };
    let ctx = Context {
        server,
        http_port: settings.http.port,
        boot_files: &settings.boot_files,
    };
    let outcome = answer(&msg, &ctx, port)
        .map_err(Dropped::Ignored)
        .map(|reply| {
            let destination = match reply.destination {
                Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
                Destination::Relay(gw) => SocketAddrV4::new(gw, 67),
                // A client without an address yet cannot be reached by unicast.
                Destination::Source if d.source.ip().is_unspecified() => {
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, d.source.port())
                }
                Destination::Source => d.source,
            };
            Transmit {
                destination,
                // Unknown (no address on the interface, an advertised one named): the kernel
                // chooses, as for any socket.
                source: local.unwrap_or(Ipv4Addr::UNSPECIFIED),
                ifindex: d.ifindex,
                bytes: reply.message.encode(),
                reply,
            }
        });
    let lease = lease.or_else(|| {
        let from_itself = port == Port::ProxyBoot
            && outcome.is_ok()
            && msg.ciaddr == *d.source.ip()
            && crate::routable_unicast(msg.ciaddr);
        from_itself
            .then(|| msg.mac().map(|m| (m, msg.ciaddr)))
            .flatten()
    });
    Handled { outcome, lease }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageType};
    use crate::Mac;

    fn settings() -> Settings {
        Settings {
            http: HttpAddress::default(),
            boot_files: BootFiles::default(),
            interfaces: vec![],
        }
    }

    /// A request as firmware sends it: message type, giaddr, ciaddr, and options.
    fn request(mtype: u8, giaddr: [u8; 4], ciaddr: [u8; 4], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let opts = options.iter().map(|(c, v)| (*c, v.to_vec()));
        let mut m = Message::client_request(MessageType::from_u8(mtype), 0xabcd, mac, opts);
        (m.giaddr, m.ciaddr) = (giaddr.into(), ciaddr.into());
        m.encode()
    }

    fn at(bytes: &[u8], source: ([u8; 4], u16), ifindex: u32, local: [u8; 4]) -> Datagram<'_> {
        Datagram {
            bytes,
            source: SocketAddrV4::new(source.0.into(), source.1),
            ifindex,
            local: local.into(),
            truncated: false,
        }
    }

    fn no_lookup(_: u32) -> Option<Ipv4Addr> {
        panic!("the local address was known")
    }

    #[test]
    fn an_advertised_address_is_named_in_the_reply_never_its_source() {
        let uefi = request(1, [0; 4], [0; 4], &[(93, &[0, 7])]);
        let mut s = settings();
        s.http.advertise = Some(Ipv4Addr::new(10, 236, 0, 100));
        // This host holds 10.236.0.10 on the interface; the advertised address is not its own.
        let t = handle(
            &at(&uefi, ([0; 4], 68), 3, [10, 236, 0, 10]),
            Port::Dhcp,
            &s,
            no_lookup,
        )
        .outcome
        .unwrap();
        assert_eq!(t.source, Ipv4Addr::new(10, 236, 0, 10));
        let m = Message::decode(&t.bytes).unwrap();
        assert_eq!(m.siaddr, Ipv4Addr::new(10, 236, 0, 100));
        assert_eq!(
            &m.option(54).unwrap()[..],
            Ipv4Addr::new(10, 236, 0, 100).octets()
        );
        // The local address unknown to the socket: the interface's, still not the advertised.
        let t = handle(&at(&uefi, ([0; 4], 68), 3, [0; 4]), Port::Dhcp, &s, |_| {
            Some(Ipv4Addr::new(10, 236, 0, 10))
        })
        .outcome
        .unwrap();
        assert_eq!(t.source, Ipv4Addr::new(10, 236, 0, 10));
    }

    #[test]
    fn a_broadcast_discover_is_answered_by_broadcast_out_of_its_interface() {
        let uefi = request(1, [0; 4], [0; 4], &[(93, &[0, 7])]);
        let h = handle(
            &at(&uefi, ([0; 4], 68), 3, [10, 0, 0, 2]),
            Port::Dhcp,
            &settings(),
            no_lookup,
        );
        let t = h.outcome.unwrap();
        assert_eq!(t.destination, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!((t.source, t.ifindex), (Ipv4Addr::new(10, 0, 0, 2), 3));
        let m = Message::decode(&t.bytes).unwrap();
        assert_eq!(m.siaddr, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(m.file, b"ipxe.efi");
    }

    #[test]
    fn a_relayed_discover_goes_back_to_the_relay_from_the_local_address() {
        let relayed = request(1, [10, 9, 8, 1], [0; 4], &[(93, &[0, 0])]);
        let h = handle(
            &at(&relayed, ([10, 9, 8, 1], 67), 2, [192, 168, 1, 5]),
            Port::Dhcp,
            &settings(),
            no_lookup,
        );
        let t = h.outcome.unwrap();
        assert_eq!(
            t.destination,
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 8, 1), 67)
        );
        assert_eq!(t.source, Ipv4Addr::new(192, 168, 1, 5));
    }

    #[test]
    fn port_4011_answers_the_source_and_a_client_without_an_address_by_broadcast() {
        let req = request(3, [0; 4], [10, 0, 0, 50], &[(93, &[0, 7])]);
        let s = settings();
        let t = handle(
            &at(&req, ([10, 0, 0, 50], 4011), 1, [10, 0, 0, 2]),
            Port::ProxyBoot,
            &s,
            no_lookup,
        )
        .outcome
        .unwrap();
        assert_eq!(
            t.destination,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 4011)
        );
        let t = handle(
            &at(&req, ([0; 4], 68), 1, [10, 0, 0, 2]),
            Port::ProxyBoot,
            &s,
            no_lookup,
        )
        .outcome
        .unwrap();
        assert_eq!(t.destination, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        // From a port no client uses: nothing sent anywhere.
        let h = handle(
            &at(&req, ([10, 0, 0, 50], 53), 1, [10, 0, 0, 2]),
            Port::ProxyBoot,
            &s,
            no_lookup,
        );
        assert!(matches!(h.outcome, Err(Dropped::BadSource(_))));
    }

    #[test]
    fn interfaces_outside_the_list_get_nothing_and_advertise_wins() {
        let uefi = request(1, [0; 4], [0; 4], &[(93, &[0, 7])]);
        let only_eth1 = Settings {
            interfaces: vec![5],
            ..settings()
        };
        let h = handle(
            &at(&uefi, ([0; 4], 68), 4, [10, 0, 0, 2]),
            Port::Dhcp,
            &only_eth1,
            no_lookup,
        );
        assert_eq!(h.outcome, Err(Dropped::OtherInterface(4)));
        let nat = Settings {
            http: HttpAddress {
                port: 8090,
                advertise: Some(Ipv4Addr::new(203, 0, 113, 7)),
            },
            ..settings()
        };
        let t = handle(
            &at(&uefi, ([0; 4], 68), 4, [10, 0, 0, 2]),
            Port::Dhcp,
            &nat,
            no_lookup,
        )
        .outcome
        .unwrap();
        // Named in the reply; sent from the address the request reached.
        assert_eq!(t.source, Ipv4Addr::new(10, 0, 0, 2));
        let m = Message::decode(&t.bytes).unwrap();
        assert_eq!(m.siaddr, Ipv4Addr::new(203, 0, 113, 7));
        // The kernel did not say the local address: the interface's is asked, and without one
        // there is no answer.
        let h = handle(
            &at(&uefi, ([0; 4], 68), 4, [0; 4]),
            Port::Dhcp,
            &settings(),
            |i| (i == 4).then_some(Ipv4Addr::new(10, 1, 1, 1)),
        );
        assert_eq!(h.outcome.unwrap().source, Ipv4Addr::new(10, 1, 1, 1));
        let h = handle(
            &at(&uefi, ([0; 4], 68), 4, [0; 4]),
            Port::Dhcp,
            &settings(),
            |_| None,
        );
        assert_eq!(h.outcome, Err(Dropped::NoAddress(4)));
    }

    #[test]
    fn a_request_to_the_dhcp_server_is_not_answered_but_teaches_the_address() {
        let req = request(3, [0; 4], [0; 4], &[(50, &[10, 0, 0, 77]), (93, &[0, 7])]);
        let h = handle(
            &at(&req, ([0; 4], 68), 1, [10, 0, 0, 2]),
            Port::Dhcp,
            &settings(),
            no_lookup,
        );
        assert_eq!(h.outcome, Err(Dropped::Ignored(Ignored::MessageType)));
        assert_eq!(
            h.lease,
            Some((
                Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                Ipv4Addr::new(10, 0, 0, 77)
            ))
        );
        let junk = [0u8; 10];
        let h = handle(
            &at(&junk, ([0; 4], 68), 1, [10, 0, 0, 2]),
            Port::Dhcp,
            &settings(),
            no_lookup,
        );
        assert!(matches!(h.outcome, Err(Dropped::Malformed(_))));
    }

    #[test]
    fn a_request_to_4011_from_its_own_address_teaches_the_address() {
        let opts: &[(u8, &[u8])] = &[
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
            (93, &[0, 7]),
            (94, &[1, 3, 0]),
        ];
        let req = request(3, [0; 4], [10, 0, 0, 77], opts);
        let h = handle(
            &at(&req, ([10, 0, 0, 77], 68), 1, [10, 0, 0, 2]),
            Port::ProxyBoot,
            &settings(),
            no_lookup,
        );
        assert!(h.outcome.is_ok(), "{:?}", h.outcome);
        assert_eq!(
            h.lease,
            Some((
                Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                Ipv4Addr::new(10, 0, 0, 77)
            ))
        );
        // A ciaddr other than the sender's is a claim about someone else: not learned.
        let h = handle(
            &at(&req, ([10, 0, 0, 78], 68), 1, [10, 0, 0, 2]),
            Port::ProxyBoot,
            &settings(),
            no_lookup,
        );
        assert!(h.outcome.is_ok());
        assert_eq!(h.lease, None);
    }
}
