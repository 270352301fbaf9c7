//! Unauthenticated packets cannot stop the server. Under the common 1,024-descriptor limit,
//! 1,200 forged TFTP requests (never acknowledged, from 1,200 addresses) and 1,050 idle TCP
//! connections (from 42 addresses) are held open while a real client downloads over HTTP and
//! TFTP; the server never runs out of descriptors. A single unacknowledged request gets at
//! most two packets back, and hostile names reach the log escaped.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_port, raise_own_nofile, require, tempdir, Daybreak};
use testkit::pattern;

const IPXE_EFI: &[u8] = include_bytes!("../ipxe/ipxe.efi");

/// `daybreak serve` on loopback, started with a hard limit of 1,024 descriptors.
fn start_limited(dir: &Path, kernel: &Path) -> (Daybreak, u16, u16) {
    let (http, tftp) = (free_tcp_port(), free_udp_port());
    let (h, t) = (http.to_string(), tftp.to_string());
    let args = [
        "serve",
        "--kernel",
        kernel.to_str().unwrap(),
        "--listen",
        "127.0.0.1",
        "--no-proxy-dhcp",
        "--debug",
        "--http-port",
        &h,
        "--tftp-port",
        &t,
    ];
    (Daybreak::start_with(&args, dir, Some(1024)), http, tftp)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn curl(args: &[&str]) -> Result<Vec<u8>, String> {
    let o = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn a_flood_of_requests_and_idle_connections_does_not_stop_a_real_download() {
    if !require(false, &["curl"]) {
        return;
    }
    raise_own_nofile();
    let dir = tempdir("flood");
    let kernel_bytes = pattern(3_000_000, 5);
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, &kernel_bytes).unwrap();
    let (server, http, tftp) = start_limited(&dir, &kernel);
    let pid = server.child.id();
    let http_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, http));
    let tftp_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, tftp));

    // 1,050 idle connections, 25 from each of 42 addresses.
    let mut idle = Vec::new();
    for i in 0..1050u32 {
        let src = Ipv4Addr::new(127, 1, (i / 25) as u8, (i % 25 + 1) as u8);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        if s.connect_timeout(&http_addr.into(), Duration::from_secs(2))
            .is_ok()
        {
            idle.push(s);
        }
    }
    // 1,200 forged requests, one from each of 1,200 addresses, never acknowledged. The
    // sockets stay open so that no ICMP error tells the server the clients are gone.
    let rrq = tftp::packet::rrq("ipxe.efi", "octet", &[("blksize", "1468")]);
    let mut forged = Vec::new();
    for i in 0..1200u32 {
        let src = Ipv4Addr::new(127, 2, (i / 200) as u8, (i % 200 + 1) as u8);
        let s = UdpSocket::bind((src, 0)).unwrap();
        s.send_to(&rrq, tftp_addr).unwrap();
        forged.push(s);
    }
    let peak = open_fds(pid);
    assert!(
        peak < 1024,
        "the server stays within its descriptors: {peak}"
    );

    // A real client, while all of that is held open.
    let started = Instant::now();
    let got = curl(&[&format!("http://127.0.0.1:{http}/kernel")]).expect("HTTP during the flood");
    assert!(got == kernel_bytes, "the kernel arrives whole");
    let got = curl(&[
        "--tftp-blksize",
        "1468",
        &format!("tftp://127.0.0.1:{tftp}/ipxe.efi"),
    ])
    .expect("TFTP during the flood");
    assert!(got == IPXE_EFI, "iPXE arrives whole");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "both downloads within seconds: {:?}",
        started.elapsed()
    );
    assert!(open_fds(pid) < 1024);

    // The idle connections that were shed to make room are closed by the server.
    let closed = idle
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            matches!((&mut &**s).read(&mut [0u8; 64]), Ok(0))
        })
        .count();
    assert!(closed > 0, "some idle connections were shed");
    drop(idle);
    drop(forged);
    let log = server.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
}

#[test]
fn an_unanswered_request_gets_two_packets_at_most() {
    let dir = tempdir("amplify");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"k").unwrap();
    let (server, http, tftp) = start_limited(&dir, &kernel);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let rrq = tftp::packet::rrq("ipxe.efi", "octet", &[]);
    s.send_to(&rrq, ("127.0.0.1", tftp)).unwrap();
    let (mut packets, mut bytes) = (0, 0);
    let until = Instant::now() + Duration::from_secs(6);
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            packets += 1;
            bytes += n;
        }
    }
    assert_eq!(packets, 2, "block 1 and one retransmission, no ERROR");
    assert!(
        bytes <= 2 * 516,
        "{bytes} bytes for a {}-byte request",
        rrq.len()
    );

    // A name full of control characters is logged escaped.
    let evil = tftp::packet::rrq("x\n2026-01-01 INFO forged\u{1b}[2J", "octet", &[]);
    s.send_to(&evil, ("127.0.0.1", tftp)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // And an HTTP path that decodes to a line break and an escape code.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    std::io::Write::write_all(
        &mut c,
        b"GET /x%0A2026-01-01%20INFO%20forged%1B%5B2J HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log_text();
    assert!(
        !log.contains("\n2026-01-01 INFO forged") && !log.contains('\u{1b}'),
        "{log}"
    );
    assert!(
        log.contains("tftp request refused") && log.contains("http 404"),
        "{log}"
    );
}
