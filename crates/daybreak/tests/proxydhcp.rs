//! ProxyDHCP and the port 4011 boot server over real sockets: Daybreak in one network namespace,
//! a scripted client in another, joined by a veth pair. Covers the broadcast offer, the 4011
//! exchange answered to the source port, relayed requests answered to giaddr:67, and malformed
//! datagrams that are dropped and counted while the server keeps answering.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{in_netns, ip, output_within, require, tempdir, veth_pair, Daybreak, Netns};
use pxe::message::{Message, MessageType};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x78, 0x00, 0x10];

fn request(
    mtype: MessageType,
    giaddr: Ipv4Addr,
    ciaddr: Ipv4Addr,
    options: Vec<(u8, Vec<u8>)>,
) -> Vec<u8> {
    let mut m = Message::client_request(mtype, 0x0bad_cafe, MAC, options);
    (m.giaddr, m.ciaddr) = (giaddr, ciaddr);
    m.encode()
}

fn ovmf_options() -> Vec<(u8, Vec<u8>)> {
    vec![
        (60, b"PXEClient:Arch:00007:UNDI:003000".to_vec()),
        (93, vec![0, 7]),
        (94, vec![1, 3, 0]),
        (97, (0..17).collect()),
    ]
}

fn recv_reply(sock: &UdpSocket) -> Message {
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("no reply from daybreak");
        let m = Message::decode(&buf[..n]).unwrap();
        if m.op == 2 && m.xid == 0x0bad_cafe {
            assert!(n >= 300, "reply shorter than 300 bytes");
            return m;
        }
    }
}

/// A client socket bound to the veth, as DHCP clients bind theirs to the interface they boot from
/// (there is no route to 255.255.255.255 otherwise).
fn udp(port: u16) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(b"c0")).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// EDK2's DISCOVER, to broadcast from port 68.
fn ovmf_discover() -> Vec<u8> {
    request(
        MessageType::Discover,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        ovmf_options(),
    )
}

/// Starts `daybreak serve` in a server namespace joined to a client namespace (subnet
/// 10.78.`net`.0/24), runs `client` there with the server's address, stops the server cleanly
/// and returns its log.
fn with_server(tag: &str, net: u8, client: impl FnOnce(Ipv4Addr) + Send + 'static) -> String {
    with_server_args(tag, net, &[], client)
}

/// [`with_server`], `daybreak serve` given `extra` arguments too.
fn with_server_args(
    tag: &str,
    net: u8,
    extra: &[&str],
    client: impl FnOnce(Ipv4Addr) + Send + 'static,
) -> String {
    let (cns, sns, _guards) = veth_pair(
        tag,
        &format!("10.78.{net}.10/24"),
        &[&format!("10.78.{net}.2/24")],
    );
    let dir = tempdir(&format!("proxydhcp-{tag}"));
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let mut server = {
        let k = kernel.to_string_lossy().into_owned();
        let d = dir.clone();
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        in_netns(&sns, move || {
            let mut args = vec!["--debug", "serve", "--kernel", &k];
            args.extend(extra.iter().map(String::as_str));
            Daybreak::start(&args, &d)
        })
    };
    let server_ip = Ipv4Addr::new(10, 78, net, 2);
    in_netns(&cns, move || client(server_ip));
    let status = server
        .terminate(Duration::from_secs(12))
        .expect("daybreak did not stop");
    assert!(status.success());
    server.log_text()
}

/// EDK2's DISCOVER gets an offer with option 43 and the TFTP file and no address; iPXE with
/// HTTP gets the script URL; port 4011 REQUESTs (UEFI and BIOS) get an ACK there.
#[test]
fn proxydhcp_offers_and_acks_over_real_sockets() {
    if !require(true, &["ip"]) {
        return;
    }
    let log = with_server("ko", 0, |server_ip| {
        let c68 = udp(68);
        let disc = ovmf_discover();
        c68.send_to(&disc, (Ipv4Addr::BROADCAST, 67)).unwrap();
        let offer = recv_reply(&c68);
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        assert_eq!(
            offer.siaddr, server_ip,
            "siaddr is the address on the receiving interface"
        );
        assert_eq!(offer.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.file, b"ipxe.efi");
        assert_eq!(offer.option(43).unwrap(), vec![6, 1, 8, 255]);
        assert_eq!(&offer.option(54).unwrap()[..], server_ip.octets());
        assert_eq!(&offer.option(60).unwrap()[..], b"PXEClient");
        assert_eq!(offer.option(97).unwrap(), (0..17).collect::<Vec<u8>>());
        // iPXE with HTTP (option 175 feature 0x13) gets the script URL.
        let ipxe = request(
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            vec![
                (93, vec![0, 0]),
                (77, b"iPXE".to_vec()),
                (175, vec![0x13, 1, 1]),
            ],
        );
        c68.send_to(&ipxe, (Ipv4Addr::BROADCAST, 67)).unwrap();
        let offer = recv_reply(&c68);
        assert_eq!(
            String::from_utf8(offer.file.clone()).unwrap(),
            "http://10.78.0.2:8090/_/ipxe?arch=0&mac=52:54:00:78:00:10"
        );
        drop(c68);

        // Port 4011: a REQUEST from source port 4011 is answered there with an ACK.
        let c4011 = udp(4011);
        let req = request(
            MessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 78, 0, 10),
            [ovmf_options(), vec![(43, vec![71, 4, 0x80, 0, 0, 0, 255])]].concat(),
        );
        c4011.send_to(&req, (server_ip, 4011)).unwrap();
        let ack = recv_reply(&c4011);
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(ack.file, b"ipxe.efi");
        assert_eq!(
            ack.option(43).unwrap(),
            vec![6, 1, 8, 71, 4, 0x80, 0, 0, 0, 255]
        );
        // BIOS on 4011 too.
        let req = request(
            MessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 78, 0, 10),
            vec![
                (60, b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                (93, vec![0, 0]),
            ],
        );
        c4011.send_to(&req, (server_ip, 4011)).unwrap();
        assert_eq!(recv_reply(&c4011).file, b"undionly.kpxe");
    });
    assert!(log.contains("firmware=UEFI x64 PXE"), "{log}");
}

/// Malformed datagrams are dropped, logged and counted, and the server keeps answering.
#[test]
fn proxydhcp_drops_malformed_datagrams_and_keeps_answering() {
    if !require(true, &["ip"]) {
        return;
    }
    let log = with_server("km", 1, |server_ip| {
        let c68 = udp(68);
        let disc = ovmf_discover();
        let server67 = SocketAddrV4::new(server_ip, 67);
        for junk in [&b""[..], &[0u8; 10][..], &[0xffu8; 400][..], &disc[..250]] {
            c68.send_to(junk, server67).unwrap();
        }
        let mut bad_magic = disc.clone();
        bad_magic[236] = 0;
        c68.send_to(&bad_magic, server67).unwrap();
        c68.send_to(&disc, (Ipv4Addr::BROADCAST, 67)).unwrap();
        assert_eq!(recv_reply(&c68).file, b"ipxe.efi");
    });
    assert!(log.contains("dropped malformed packet"), "{log}");
    assert!(
        log.contains("(\"malformed\", 5)"),
        "five malformed datagrams counted:\n{log}"
    );
}

/// A relayed DISCOVER (giaddr set) is answered by unicast to giaddr:67; ordinary DHCP traffic
/// (no option 93) gets no answer.
#[test]
fn proxydhcp_answers_relays_and_not_plain_dhcp() {
    if !require(true, &["ip"]) {
        return;
    }
    with_server("kr", 2, |server_ip| {
        let relay = udp(67);
        let server67 = SocketAddrV4::new(server_ip, 67);
        // The relay's own information (circuit id, remote id), which it wants back.
        let info = vec![1, 4, b'v', b'l', b'a', b'n', 2, 2, 0, 7];
        let mut options = ovmf_options();
        options.push((82, info.clone()));
        let relayed = request(
            MessageType::Discover,
            Ipv4Addr::new(10, 78, 2, 10),
            Ipv4Addr::UNSPECIFIED,
            options,
        );
        relay.send_to(&relayed, server67).unwrap();
        let offer = recv_reply(&relay);
        assert_eq!(offer.giaddr, Ipv4Addr::new(10, 78, 2, 10));
        assert_eq!(offer.file, b"ipxe.efi");
        assert_eq!(offer.option(82).as_deref(), Some(&info[..]), "RFC 3046");

        relay
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let plain = request(
            MessageType::Discover,
            Ipv4Addr::new(10, 78, 2, 10),
            Ipv4Addr::UNSPECIFIED,
            vec![],
        );
        relay.send_to(&plain, server67).unwrap();
        let mut buf = [0u8; 1500];
        assert!(
            relay.recv_from(&mut buf).is_err(),
            "answered a non-PXE DISCOVER"
        );
    });
}

/// `--advertise` an address this host does not hold (NAT, a port forward): replies name it and
/// leave from the address the request reached (sent from it, the kernel refused them).
#[test]
fn an_advertised_address_this_host_does_not_hold_is_named_not_used() {
    if !require(true, &["ip"]) {
        return;
    }
    let log = with_server_args("ka", 3, &["--advertise", "10.78.3.100"], |server_ip| {
        let c68 = udp(68);
        c68.send_to(&ovmf_discover(), (Ipv4Addr::BROADCAST, 67))
            .unwrap();
        let offer = recv_reply(&c68);
        assert_eq!(offer.siaddr, Ipv4Addr::new(10, 78, 3, 100));
        assert_eq!(&offer.option(54).unwrap()[..], [10, 78, 3, 100]);
        // Port 4011, unicast to the address this host holds: answered from it.
        let mut req = Message::client_request(MessageType::Request, 0x0bad_cafe, MAC, {
            let mut o = ovmf_options();
            o.push((43, vec![71, 4, 0x80, 0, 0, 0, 255]));
            o
        });
        req.ciaddr = Ipv4Addr::new(10, 78, 3, 10);
        c68.send_to(&req.encode(), (server_ip, 4011)).unwrap();
        let ack = recv_reply(&c68);
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(ack.siaddr, Ipv4Addr::new(10, 78, 3, 100));
    });
    assert!(!log.contains("sending reply failed"), "{log}");
}

/// `--interface` naming an interface without an IPv4 address is refused at startup with a message
/// that says so and lists the interfaces that have one.
#[test]
fn interface_without_ipv4_is_a_clear_error() {
    if !require(true, &["ip"]) {
        return;
    }
    let ns = format!("dbkp{}i", std::process::id());
    ip(&["netns", "add", &ns]);
    let _guard = Netns {
        names: vec![ns.clone()],
    };
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &ns, "link", "add", "bare0", "type", "veth", "peer", "name", "bare1",
    ]);
    ip(&["-n", &ns, "link", "set", "bare0", "up"]);
    let dir = tempdir("noipv4");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let out = common::output_within(
        Command::new("ip")
            .args(["netns", "exec", &ns, common::BIN, "serve", "--kernel"])
            .arg(&kernel)
            .args(["--interface", "bare0"]),
        Duration::from_secs(20),
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("interface bare0 has no IPv4 address"), "{e}");
    assert!(e.contains("lo (127.0.0.1)"), "{e}");
}

/// On a link with two addresses, a TFTP request to either is answered from that address (PXE
/// firmware ignores replies from any other), and so is a refusal.
#[test]
fn tftp_answers_from_the_address_the_client_asked() {
    if !require(true, &["ip"]) {
        return;
    }
    let (cns, sns, _guards) = veth_pair("kt", "10.79.0.10/24", &["10.79.0.2/24", "10.79.0.3/24"]);
    let dir = tempdir("tftp-multiaddr");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let _server = {
        let k = kernel.to_string_lossy().into_owned();
        let d = dir.clone();
        in_netns(&sns, move || {
            Daybreak::start(&["serve", "--kernel", &k, "--no-proxy-dhcp"], &d)
        })
    };
    in_netns(&cns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 2048];
        for (asked, file) in [
            ("10.79.0.3", "undionly.kpxe"),
            ("10.79.0.2", "ipxe.efi"),
            ("10.79.0.3", "missing.efi"),
        ] {
            let rrq = tftp::packet::rrq(file, "octet", &[]);
            s.send_to(&rrq, (asked, 69)).unwrap();
            let (_, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(from.ip().to_string(), asked, "{file}: answered from {from}");
        }
    });
}

/// The README's promise: a flood of DISCOVERs from made-up MACs is answered, but logs at most
/// 5,000 offer lines a second; the rest are counted in the log, none lost from the count.
#[test]
fn a_flood_of_offers_logs_at_most_5000_lines_a_second_and_counts_the_rest() {
    if !require(true, &["ip"]) {
        return;
    }
    const FLOOD: u32 = 15_000;
    let started = std::time::Instant::now();
    let log = with_server("kf", 3, |_| {
        let c68 = udp(68);
        for i in 0..FLOOD {
            let mac = [0x52, 0x54, 0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let mut m = Message::client_request(MessageType::Discover, i, mac, ovmf_options());
            m.ciaddr = Ipv4Addr::UNSPECIFIED;
            c68.send_to(&m.encode(), (Ipv4Addr::BROADCAST, 67)).unwrap();
        }
        // Until the server has answered what reached it (its queue drains in well under this).
        std::thread::sleep(Duration::from_secs(3));
    });
    let seconds = started.elapsed().as_secs() + 1;
    let count = |key: &str| -> u64 {
        log.lines()
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let lines = log.lines().filter(|l| l.contains(" offer mac=")).count() as u64;
    let held = count("not_logged=");
    let dropped = count("events_dropped=");
    let answered = count("(\"answered\", ");
    eprintln!(
        "flood: {answered} answered, {lines} lines, {held} held back, {dropped} dropped, {seconds} s"
    );
    assert!(answered > 0, "the stop line counts the answers:\n{log}");
    assert_eq!(
        lines + held + dropped,
        answered,
        "every answer logged or counted"
    );
    assert!(
        held > 0,
        "{answered} answers in {seconds} s, none held back"
    );
    assert!(
        lines <= 5_000 * seconds,
        "{lines} offer lines in {seconds} s"
    );
}

/// A machine nothing here boots (an arm64 PXE client, the server holding an x86-64 kernel) gets
/// no offer, and its timeline says why: `/api/machines/MAC` has it failed at the offer, and the
/// page in headless Chromium shows it among the failing ones with the reason.
#[test]
fn a_machine_of_an_architecture_nothing_here_boots_is_told_why_it_got_no_offer() {
    if !require(true, &["ip", "curl", "chromium"]) {
        return;
    }
    let (cns, sns, _guards) = veth_pair("arch", "10.78.9.10/24", &["10.78.9.2/24"]);
    let dir = tempdir("proxydhcp-arch");
    // An x86-64 bzImage as far as its header goes ("HdrS" at 0x202, 64-bit entry).
    let mut kernel = vec![0u8; 4096];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    kernel[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    kernel[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes());
    std::fs::write(dir.join("vmlinuz"), &kernel).unwrap();
    let state = dir.join("state").to_string_lossy().into_owned();
    let d = dir.clone();
    let server = in_netns(&sns, move || {
        Daybreak::start(&["serve", "--kernel", "vmlinuz", "--state-dir", &state], &d)
    });
    let arm64 = vec![
        (60, b"PXEClient:Arch:00011:UNDI:003000".to_vec()),
        (93, vec![0, 11]),
        (94, vec![1, 3, 0]),
    ];
    in_netns(&cns, move || {
        let sock = udp(68);
        let discover = request(
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            arm64,
        );
        sock.send_to(&discover, (Ipv4Addr::BROADCAST, 67)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1500];
        assert!(sock.recv_from(&mut buf).is_err(), "an offer came");
    });
    let mac = "52:54:00:78:00:10";
    let api = format!("{}/api/machines/{mac}", server.admin());
    let page = server.admin();
    let home = dir.join("chrome");
    let (shown, dom) = in_netns(&sns, move || {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let shown = loop {
            let o = output_within(
                std::process::Command::new("curl").args(["-s", "--max-time", "5", &api]),
                Duration::from_secs(10),
            );
            let shown = String::from_utf8_lossy(&o.stdout).into_owned();
            if shown.contains("no offer") || std::time::Instant::now() > until {
                break shown;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut c = std::process::Command::new("chromium");
        c.env("HOME", &home)
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .args(["--disable-dev-shm-usage", "--no-first-run"])
            .arg(format!("--user-data-dir={}", home.display()))
            .args(["--virtual-time-budget=4000", "--dump-dom"])
            .arg(format!("{page}/"));
        let dom = output_within(&mut c, Duration::from_secs(60));
        (shown, String::from_utf8_lossy(&dom.stdout).into_owned())
    });
    assert!(
        shown.contains(r#""phase":"failed""#)
            && shown.contains(r#""stage":"offer""#)
            && shown.contains(r#""kind":"no offer""#)
            && shown.contains("nothing here boots UEFI arm64")
            && !shown.contains(r#""phase":"installed""#),
        "{shown}"
    );
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(mac))
        .unwrap_or_else(|| panic!("no row for the machine: {dom}"));
    assert!(
        row.contains("failed at offer") && row.contains("nothing here boots"),
        "{row}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
