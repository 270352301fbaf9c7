//! Decisions for every client Daybreak has met, from byte fixtures shaped like what each one sends.

use super::tests_support::ctx;
use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const UUID: [u8; 17] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// Raw bytes of a BOOTREQUEST with the given message type and options, as a client would send.
fn packet(mtype: u8, giaddr: [u8; 4], ciaddr: [u8; 4], options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6;
    b[4..8].copy_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    b[10] = 0x80;
    b[12..16].copy_from_slice(&ciaddr);
    b[24..28].copy_from_slice(&giaddr);
    b[28..34].copy_from_slice(&MAC);
    b.extend_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, mtype]);
    for (code, value) in options {
        b.push(*code);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    }
    b.push(255);
    b
}

fn discover(options: &[(u8, &[u8])]) -> Message {
    Message::decode(&packet(1, [0; 4], [0; 4], options)).unwrap()
}

/// iPXE's feature option 175 as QEMU's e1000 ROM (iPXE 1.0.0+) sends it: PXE ext, iSCSI, AoE,
/// HTTP (0x13), HTTPS, TFTP, DNS, bzImage, ELF, ...
const IPXE_175_HTTP: &[u8] = &[
    0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0xeb, 0x03, 0x01, 0x00, 0x00, 0x17, 0x01, 0x01, 0x15,
    0x01, 0x01, 0x13, 0x01, 0x01, 0x11, 0x01, 0x01, 0x27, 0x01, 0x01, 0x19, 0x01, 0x01, 0x29, 0x01,
    0x01, 0x10, 0x01, 0x02, 0x21, 0x01, 0x01, 0x15, 0x01, 0x01,
];
/// The same build without HTTP.
const IPXE_175_NO_HTTP: &[u8] = &[0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x15, 0x01, 0x01];

fn option(msg: &Message, code: u8) -> Option<Vec<u8>> {
    msg.option(code).map(|v| v.into_owned())
}

fn file(reply: &Reply) -> String {
    String::from_utf8(reply.message.file.clone()).unwrap()
}

#[track_caller]
fn assert_offer_basics(req: &Message, reply: &Reply) {
    let m = &reply.message;
    assert_eq!(m.op, 2);
    assert_eq!(m.xid, req.xid);
    assert_eq!(m.chaddr, req.chaddr);
    assert_eq!(m.giaddr, req.giaddr);
    assert_eq!(
        m.yiaddr,
        Ipv4Addr::UNSPECIFIED,
        "a proxy never hands out addresses"
    );
    assert_eq!(m.siaddr, ctx().server);
    assert_eq!(m.flags & 0x8000, 0x8000);
    assert_eq!(option(m, 54).unwrap(), ctx().server.octets());
    for lease_opt in [1u8, 3, 51, 58, 59] {
        assert!(
            option(m, lease_opt).is_none(),
            "lease option {lease_opt} in a proxy reply"
        );
    }
    assert!(m.encode().len() >= 300);
}

#[test]
fn qemu_bios_ipxe_rom_with_http_gets_script_url() {
    let req = discover(&[
        (60, b"PXEClient:Arch:00000:UNDI:002001"),
        (93, &[0, 0]),
        (94, &[1, 2, 1]),
        (77, b"iPXE"),
        (175, IPXE_175_HTTP),
    ]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_offer_basics(&req, &r);
    assert_eq!(r.client.firmware, Firmware::Ipxe { http: true });
    assert_eq!(
        file(&r),
        "http://10.77.0.2:8090/_/ipxe?arch=0&mac=52:54:00:12:34:56"
    );
    assert_eq!(option(&r.message, 60).unwrap(), b"PXEClient");
    assert_eq!(r.message.message_type(), Some(MessageType::Offer));
    assert_eq!(r.destination, Destination::Broadcast);
    assert!(option(&r.message, 43).is_none());
}

#[test]
fn ovmf_uefi_pxe_gets_ipxe_efi_with_option_43() {
    let req = discover(&[
        (60, b"PXEClient:Arch:00007:UNDI:003000"),
        (93, &[0, 7]),
        (94, &[1, 3, 0]),
        (97, &UUID),
    ]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_offer_basics(&req, &r);
    assert_eq!(r.client.arch, Arch::EfiX64);
    assert_eq!(r.client.firmware, Firmware::Pxe);
    assert_eq!(file(&r), "ipxe.efi");
    assert_eq!(r.target, BootTarget::Tftp("ipxe.efi".into()));
    assert_eq!(option(&r.message, 43).unwrap(), vec![6, 1, 8, 255]);
    assert_eq!(option(&r.message, 97).unwrap(), UUID);
}

#[test]
fn bios_pxe_rom_gets_undionly_with_discovery_control() {
    let req = discover(&[
        (60, b"PXEClient:Arch:00000:UNDI:002001"),
        (93, &[0, 0]),
        (97, &UUID),
    ]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_offer_basics(&req, &r);
    assert_eq!(file(&r), "undionly.kpxe");
    assert_eq!(option(&r.message, 43).unwrap(), vec![6, 1, 8, 255]);
}

#[test]
fn ipxe_without_http_gets_ipxe_pxe_by_tftp_url() {
    let req = discover(&[(93, &[0, 0]), (77, b"iPXE"), (175, IPXE_175_NO_HTTP)]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_eq!(file(&r), "tftp://10.77.0.2/ipxe.pxe");
    let req = discover(&[(93, &[0, 7]), (77, b"iPXE")]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_eq!(file(&r), "tftp://10.77.0.2/ipxe.efi");
}

#[test]
fn chainloaded_ipxe_efi_breaks_the_loop() {
    // What ipxe.efi sends after OVMF loaded it: still arch 7, now with user class and HTTP.
    let req = discover(&[
        (60, b"PXEClient:Arch:00007:UNDI:003010"),
        (93, &[0, 7]),
        (77, b"iPXE"),
        (175, IPXE_175_HTTP),
    ]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_eq!(
        file(&r),
        "http://10.77.0.2:8090/_/ipxe?arch=7&mac=52:54:00:12:34:56"
    );
}

#[test]
fn pixiecore_user_class_gets_script_directly() {
    let req = discover(&[(93, &[0, 0]), (77, b"pixiecore")]);
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_eq!(r.client.firmware, Firmware::Pixiecore);
    assert!(file(&r).starts_with("http://10.77.0.2:8090/_/ipxe?"));
    // RFC 3004 length-prefixed form works too.
    let req = discover(&[(93, &[0, 7]), (77, b"\x09pixiecore")]);
    assert_eq!(
        answer(&req, &ctx(), Port::Dhcp).unwrap().client.firmware,
        Firmware::Pixiecore
    );
}

#[test]
fn uefi_http_boot_gets_http_url_and_httpclient() {
    for (arch, want) in [(16u8, Some("ipxe.efi")), (19u8, None)] {
        let req = discover(&[(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, arch])]);
        match want {
            Some(name) => {
                let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
                assert_eq!(file(&r), format!("http://10.77.0.2:8090/ipxe/{name}"));
                assert_eq!(option(&r.message, 60).unwrap(), b"HTTPClient");
                assert!(option(&r.message, 43).is_none());
            }
            None => assert!(matches!(
                answer(&req, &ctx(), Port::Dhcp),
                Err(Ignored::NoBootFile(c)) if c.arch == Arch::EfiArm64
            )),
        }
    }
}

#[test]
fn arm64_needs_a_configured_binary() {
    let req = discover(&[(60, b"PXEClient:Arch:00011:UNDI:003000"), (93, &[0, 11])]);
    assert!(matches!(
        answer(&req, &ctx(), Port::Dhcp),
        Err(Ignored::NoBootFile(c)) if c.arch == Arch::EfiArm64
    ));
    let files = BootFiles {
        efi_arm64: Some("ipxe-arm64.efi".into()),
        ..Default::default()
    };
    let c = Context {
        boot_files: &files,
        ..ctx()
    };
    let r = answer(&req, &c, Port::Dhcp).unwrap();
    assert_eq!(file(&r), "ipxe-arm64.efi");
    assert_eq!(r.client.arch, Arch::EfiArm64);
}

#[test]
fn relayed_discover_is_answered_to_giaddr() {
    let req = Message::decode(&packet(
        1,
        [10, 1, 2, 1],
        [0; 4],
        &[(93, &[0, 7]), (60, b"PXEClient")],
    ))
    .unwrap();
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_eq!(
        r.destination,
        Destination::Relay(Ipv4Addr::new(10, 1, 2, 1))
    );
    assert_eq!(r.message.giaddr, Ipv4Addr::new(10, 1, 2, 1));
}

#[test]
fn a_relays_agent_information_comes_back_in_the_reply() {
    // Circuit id and remote id sub-options, as a relay inserts them.
    let info: &[u8] = &[1, 4, b'e', b't', b'h', b'1', 2, 6, 0, 0x1b, 0x21, 1, 2, 3];
    let req = Message::decode(&packet(
        1,
        [10, 1, 2, 1],
        [0; 4],
        &[(93, &[0, 7]), (60, b"PXEClient"), (82, info)],
    ))
    .unwrap();
    let r = answer(&req, &ctx(), Port::Dhcp).unwrap();
    assert_eq!(r.message.options.last(), Some(&(82, info.to_vec())));
    // Encoded and read back: the same bytes, once, the option before END.
    let back = Message::decode(&r.message.encode()).unwrap();
    assert_eq!(back.option(82).as_deref(), Some(info));
    // Without one, none is made up.
    let plain = Message::decode(&packet(
        1,
        [10, 1, 2, 1],
        [0; 4],
        &[(93, &[0, 7]), (60, b"PXEClient")],
    ))
    .unwrap();
    let r = answer(&plain, &ctx(), Port::Dhcp).unwrap();
    assert!(r.message.option(82).is_none());
}

#[test]
fn port_4011_request_from_bios_and_uefi_gets_ack() {
    for arch in [0u8, 7] {
        let req = Message::decode(&packet(
            3,
            [0; 4],
            [10, 77, 0, 50],
            &[
                (60, b"PXEClient:Arch:00000:UNDI:002001"),
                (93, &[0, arch]),
                (97, &UUID),
                (43, &[71, 4, 0x80, 0x00, 0x00, 0x00, 255]),
            ],
        ))
        .unwrap();
        let r = answer(&req, &ctx(), Port::ProxyBoot).unwrap();
        assert_eq!(r.message.message_type(), Some(MessageType::Ack));
        assert_eq!(r.destination, Destination::Source);
        assert_eq!(r.message.ciaddr, Ipv4Addr::new(10, 77, 0, 50));
        assert_eq!(r.message.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            option(&r.message, 43).unwrap(),
            vec![6, 1, 8, 71, 4, 0x80, 0, 0, 0, 255]
        );
        let want = if arch == 0 {
            "undionly.kpxe"
        } else {
            "ipxe.efi"
        };
        assert_eq!(file(&r), want);
    }
    // INFORM works too, and a DISCOVER on 4011 does not.
    let inform = Message::decode(&packet(8, [0; 4], [0; 4], &[(93, &[0, 7])])).unwrap();
    assert!(answer(&inform, &ctx(), Port::ProxyBoot).is_ok());
    let disc = discover(&[(93, &[0, 7])]);
    assert_eq!(
        answer(&disc, &ctx(), Port::ProxyBoot),
        Err(Ignored::MessageType)
    );
}

#[test]
fn option_97_missing_or_malformed_is_not_echoed() {
    let r = answer(&discover(&[(93, &[0, 7])]), &ctx(), Port::Dhcp).unwrap();
    assert!(option(&r.message, 97).is_none());
    for bad in [&UUID[..16], &[1u8; 17][..], &[0u8; 18][..]] {
        let r = answer(&discover(&[(93, &[0, 7]), (97, bad)]), &ctx(), Port::Dhcp).unwrap();
        assert!(
            option(&r.message, 97).is_none(),
            "echoed malformed 97 {bad:?}"
        );
    }
}

#[test]
fn ordinary_dhcp_traffic_is_ignored() {
    // A plain DHCP client: no option 93.
    assert_eq!(
        answer(&discover(&[]), &ctx(), Port::Dhcp),
        Err(Ignored::NotPxe)
    );
    // A DHCPREQUEST to the real DHCP server on 67.
    let req = Message::decode(&packet(3, [0; 4], [0; 4], &[(93, &[0, 7])])).unwrap();
    assert_eq!(answer(&req, &ctx(), Port::Dhcp), Err(Ignored::MessageType));
    // A server's reply.
    let mut offer = discover(&[(93, &[0, 7])]);
    offer.op = 2;
    assert_eq!(answer(&offer, &ctx(), Port::Dhcp), Err(Ignored::NotRequest));
    // Short or unknown option 93.
    assert_eq!(
        answer(&discover(&[(93, &[7])]), &ctx(), Port::Dhcp),
        Err(Ignored::NotPxe)
    );
    assert_eq!(
        answer(&discover(&[(93, &[0, 99])]), &ctx(), Port::Dhcp),
        Err(Ignored::UnknownArch(99))
    );
    // Option 60 alone is not enough.
    assert_eq!(
        answer(&discover(&[(60, b"PXEClient")]), &ctx(), Port::Dhcp),
        Err(Ignored::NotPxe)
    );
}

#[test]
fn truncated_packets_are_errors_not_panics() {
    let full = packet(
        1,
        [0; 4],
        [0; 4],
        &[(60, b"PXEClient:Arch:00007"), (93, &[0, 7])],
    );
    for len in 0..full.len() {
        let _ = Message::decode(&full[..len]);
    }
    assert!(Message::decode(&full[..250]).is_err());
}

#[test]
fn long_urls_move_to_option_67() {
    let files = BootFiles {
        efi_x64: Some("x".repeat(200)),
        ..Default::default()
    };
    let c = Context {
        boot_files: &files,
        ..ctx()
    };
    let r = answer(&discover(&[(93, &[0, 16])]), &c, Port::Dhcp).unwrap();
    assert!(r.message.file.is_empty());
    assert!(option(&r.message, 67).unwrap().ends_with(&[b'x'; 200]));
}

#[test]
fn http_port_80_is_left_out_of_urls() {
    let mut c = ctx();
    c.http_port = 80;
    let r = answer(
        &discover(&[(93, &[0, 0]), (77, b"pixiecore")]),
        &c,
        Port::Dhcp,
    )
    .unwrap();
    assert!(file(&r).starts_with("http://10.77.0.2/_/ipxe?"));
}

#[test]
fn a_relay_address_no_relay_can_have_is_not_answered() {
    for giaddr in [
        [0, 0, 0, 5],
        [127, 0, 0, 1],
        [224, 0, 0, 1],
        [255, 255, 255, 255],
        [240, 1, 2, 3],
    ] {
        let req = Message::decode(&packet(1, giaddr, [0; 4], &[(93, &[0, 7])])).unwrap();
        assert_eq!(
            answer(&req, &ctx(), Port::Dhcp),
            Err(Ignored::BadRelay(Ipv4Addr::from(giaddr))),
            "{giaddr:?}"
        );
    }
}

#[test]
fn port_4011_answers_only_client_ports() {
    use std::net::SocketAddrV4;
    let ok =
        |a: [u8; 4], p: u16| acceptable_source(Port::ProxyBoot, SocketAddrV4::new(a.into(), p));
    assert!(ok([10, 0, 0, 9], 68));
    assert!(ok([10, 0, 0, 9], 4011));
    assert!(ok([0, 0, 0, 0], 68));
    assert!(
        !ok([10, 0, 0, 9], 53),
        "a forged source port would make us a reflector"
    );
    assert!(!ok([10, 0, 0, 9], 19));
    assert!(!ok([127, 0, 0, 1], 68));
    assert!(!ok([224, 0, 0, 1], 68));
    assert!(!ok([255, 255, 255, 255], 68));
    assert!(acceptable_source(
        Port::Dhcp,
        SocketAddrV4::new([10, 0, 0, 9].into(), 5555)
    ));
}

#[test]
fn a_request_to_the_dhcp_server_teaches_the_clients_address() {
    let req = Message::decode(&packet(
        3,
        [0; 4],
        [0; 4],
        &[(50, &[10, 0, 0, 42]), (93, &[0, 7])],
    ))
    .unwrap();
    assert_eq!(lease(&req), Some((Mac(MAC), Ipv4Addr::new(10, 0, 0, 42))));
    let renew = Message::decode(&packet(3, [0; 4], [10, 0, 0, 43], &[])).unwrap();
    assert_eq!(lease(&renew).unwrap().1, Ipv4Addr::new(10, 0, 0, 43));
    // A DISCOVER, an address no client can hold, or no address at all: nothing learned.
    for (mtype, opts) in [
        (1u8, &[(50u8, &[10u8, 0, 0, 42][..])][..]),
        (3, &[(50, &[127, 0, 0, 1][..])]),
        (3, &[(50, &[10, 0, 0][..])]),
        (3, &[]),
    ] {
        let m = Message::decode(&packet(mtype, [0; 4], [0; 4], opts)).unwrap();
        assert_eq!(lease(&m), None, "{mtype} {opts:?}");
    }
}

#[test]
fn advertise_and_port_80_shape_urls() {
    let http = HttpAddress {
        port: 80,
        advertise: Some(Ipv4Addr::new(192, 0, 2, 7)),
    };
    assert_eq!(
        http.base(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "http://192.0.2.7"
    );
    let v6 = HttpAddress::default().base("fd00::2".parse().unwrap());
    assert_eq!(v6, "http://[fd00::2]:8090");
}
