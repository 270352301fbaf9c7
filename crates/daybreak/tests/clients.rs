//! Real clients against a running `daybreak serve` on loopback: curl over HTTP and TFTP, atftp
//! and busybox tftp with options, a UEFI-style size probe by hand, graceful shutdown, and the
//! one-line errors for common mistakes.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    config_url, free_tcp_port, free_udp_port, have, output_within, require, tempdir, Daybreak, Lan,
    BIN,
};
use testkit::pattern;

const IPXE_EFI: &[u8] = include_bytes!("../ipxe/ipxe.efi");
const UNDIONLY: &[u8] = include_bytes!("../ipxe/undionly.kpxe");

struct Setup {
    dir: PathBuf,
    http: u16,
    tftp: u16,
    server: Daybreak,
    kernel: Vec<u8>,
    rootfs: Vec<u8>,
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

fn setup(tag: &str) -> Setup {
    let dir = tempdir(tag);
    let kernel = pattern(3_000_001, 1);
    let rootfs = pattern(9_000_000, 2);
    let k = write(&dir, "vmlinuz", &kernel);
    let i = write(&dir, "initrd.img", b"initrd");
    let r = write(&dir, "rootfs.squashfs", &rootfs);
    let c = write(&dir, "config.yaml", b"#cloud-config\nhostname: test\n");
    let state = dir.join("state");
    let (server, http, tftp) = Daybreak::start_loopback(
        &[
            "serve",
            "--kernel",
            &k,
            "--initrd",
            &i,
            "--rootfs",
            &r,
            "--cloud-config",
            &c,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir,
    );
    Setup {
        dir,
        http,
        tftp,
        server,
        kernel,
        rootfs,
    }
}

fn curl(args: &[&str]) -> (Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .unwrap();
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The response headers of a ranged GET.
fn range_headers(url: &str, range: &str) -> String {
    let (head, _) = curl(&["-D", "-", "-o", "/dev/null", "-r", range, url]);
    String::from_utf8_lossy(&head).into_owned()
}

fn url(s: &Setup, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", s.http)
}

#[test]
fn http_serves_registered_files_with_ranges_and_head() {
    if !require(false, &["curl"]) {
        return;
    }
    let s = setup("http");
    let (body, _) = curl(&[&url(&s, "/kernel")]);
    assert!(body == s.kernel, "full download differs");
    let (body, _) = curl(&[&url(&s, "/_/file?name=rootfs.squashfs")]);
    assert!(body == s.rootfs, "pixiecore-style /_/file download differs");

    // Single ranges, as dracut uses to resume the squashfs.
    let (body, _) = curl(&["-r", "1000-1999", &url(&s, "/rootfs.squashfs")]);
    assert!(body == s.rootfs[1000..2000]);
    let (body, _) = curl(&["-r", "8999990-", &url(&s, "/rootfs.squashfs")]);
    assert!(body == s.rootfs[8_999_990..]);
    let (body, _) = curl(&["-r", "-5", &url(&s, "/rootfs.squashfs")]);
    assert!(body == s.rootfs[s.rootfs.len() - 5..]);
    let head = range_headers(&url(&s, "/kernel"), "10-19");
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.contains("Content-Range: bytes 10-19/3000001"),
        "{head}"
    );
    assert!(head.contains("Content-Length: 10"), "{head}");

    // HEAD carries the real length and no body.
    let (head, _) = curl(&["-I", &url(&s, "/rootfs.squashfs")]);
    let head = String::from_utf8_lossy(&head);
    assert!(head.contains("Content-Length: 9000000"), "{head}");
    assert!(head.contains("Accept-Ranges: bytes"), "{head}");

    // Past the end: 416 with the size.
    let head = range_headers(&url(&s, "/rootfs.squashfs"), "9000000-");
    assert!(
        head.starts_with("HTTP/1.1 416") && head.contains("bytes */9000000"),
        "{head}"
    );

    // Only registered names; nothing maps onto the filesystem.
    for path in [
        "/vmlinuz",
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/config.yaml",
        "/_/file?name=../vmlinuz",
        "/api/machines/../../etc/passwd",
    ] {
        let (code, _) = curl(&[
            "--path-as-is",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url(&s, path),
        ]);
        assert_eq!(String::from_utf8_lossy(&code), "404", "{path}");
    }
    // The boot port serves what machines fetch: the status page, /api/machines and /metrics
    // are on the admin listener.
    for path in ["/", "/status", "/metrics", "/api/machines"] {
        let (code, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url(&s, path)]);
        assert_eq!(String::from_utf8_lossy(&code), "404", "{path}");
    }
    let (page, _) = curl(&[&format!("{}/", s.server.admin())]);
    assert!(String::from_utf8_lossy(&page).contains("Daybreak: machines"));
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url(&s, "/kernel"),
    ]);
    assert_eq!(String::from_utf8_lossy(&code), "405");

    // The script points at this server and carries the Kairos command line.
    let (script, _) = curl(&[&url(&s, "/_/ipxe?arch=7&mac=52:54:00:aa:bb:cc")]);
    let script = String::from_utf8_lossy(&script);
    let base = format!("http://127.0.0.1:{}", s.http);
    // Not known by MAC (no neighbour entry on loopback): no failure report, iPXE's lines asked.
    assert!(
        script.starts_with("#!ipxe\nset syslog 127.0.0.1 ||\n"),
        "{script}"
    );
    assert!(
        script.contains(&format!("kernel --name kernel {base}/kernel\n")),
        "{script}"
    );
    assert!(
        script.contains(&format!("initrd --name initrd0 {base}/initrd0\n")),
        "{script}"
    );
    // The cloud-config is at a random per-run path, given only in the command line.
    let config_url = config_url(&script);
    let secret = config_url
        .strip_prefix(&format!("{base}/cloud-config-"))
        .and_then(|r| r.strip_suffix(".yaml"))
        .unwrap_or_else(|| panic!("{config_url}"));
    assert!(
        secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{config_url}"
    );
    assert!(
        script.contains(&format!(
            "boot kernel initrd=initrd0 rd.live.overlay.overlayfs rd.neednet=1 ip=dhcp rd.cos.disable \
             root=live:{base}/rootfs.squashfs netboot nodepair.enable config_url={config_url} \
             console=tty1 console=ttyS0 console=tty0\n"
        )),
        "{script}"
    );
    let (cc, _) = curl(&[&config_url]);
    assert_eq!(cc, b"#cloud-config\nhostname: test\n");
    for guess in [
        "/cloud-config.yaml",
        "/_/file?name=cloud-config.yaml",
        "/config.yaml",
    ] {
        let (code, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url(&s, guess)]);
        assert_eq!(String::from_utf8_lossy(&code), "404", "{guess}");
    }
    assert!(
        !s.server.log_text().contains(secret),
        "the secret path is never logged"
    );

    // Keep-alive: several requests over one connection.
    let (out, err) = curl(&[
        "-v",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &url(&s, "/initrd0"),
        &url(&s, "/kernel"),
    ]);
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing"),
        "{err}{out:?}"
    );

    let log = s.server.log_text();
    assert!(
        log.contains("http sent") && log.contains("file=kernel"),
        "{log}"
    );
    assert!(log.contains("boot script"), "{log}");
}

#[test]
fn http_serves_many_clients_at_once() {
    if !require(false, &["curl"]) {
        return;
    }
    let s = setup("http-many");
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let u = url(&s, "/rootfs.squashfs");
            std::thread::spawn(move || curl(&[&u]).0)
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap() == s.rootfs);
    }
}

#[test]
fn tftp_serves_ipxe_to_curl_atftp_and_busybox() {
    if !require(false, &["curl", "atftp", "busybox"]) {
        return;
    }
    let s = setup("tftp");
    let u = format!("tftp://127.0.0.1:{}/ipxe.efi", s.tftp);
    let (body, err) = curl(&["--tftp-blksize", "1468", &u]);
    assert!(body == IPXE_EFI, "curl tftp: {err}");
    let (body, _) = curl(&[&format!("tftp://127.0.0.1:{}/undionly.kpxe", s.tftp)]);
    assert!(body == UNDIONLY, "curl tftp with default 512-byte blocks");

    let out = s.dir.join("atftp.efi");
    let st = Command::new("atftp")
        .args([
            "--option",
            "blksize 1468",
            "--option",
            "tsize 0",
            "--option",
            "windowsize 4",
            "-g",
            "-r",
            "ipxe.efi",
            "-l",
        ])
        .arg(&out)
        .args(["127.0.0.1", &s.tftp.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(&out).unwrap() == IPXE_EFI,
        "atftp with blksize, tsize, windowsize"
    );

    let out = s.dir.join("busybox.kpxe");
    let st = Command::new("busybox")
        .args(["tftp", "-g", "-b", "1468", "-r", "undionly.kpxe", "-l"])
        .arg(&out)
        .args(["127.0.0.1", &s.tftp.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(&out).unwrap() == UNDIONLY,
        "busybox tftp with blksize"
    );

    // A missing file is an error, not a hang.
    let (body, err) = curl(&[&format!("tftp://127.0.0.1:{}/nope.efi", s.tftp)]);
    assert!(body.is_empty() && !err.is_empty());
    let log = s.server.log_text();
    assert!(
        log.contains("tftp sent") && log.contains("file=ipxe.efi"),
        "{log}"
    );
}

/// The exchange OVMF performs: RRQ with tsize/blksize/windowsize, OACK, ERROR 8 once it has the
/// size, then the real request. Also netascii and traversal refusals, by hand.
#[test]
fn tftp_uefi_size_probe_then_transfer() {
    let s = setup("tftp-uefi");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let server = ("127.0.0.1", s.tftp);
    let rrq = tftp::packet::rrq(
        "ipxe.efi",
        "octet",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
    );
    let mut buf = [0u8; 2048];

    sock.send_to(&rrq, server).unwrap();
    let (n, peer) = sock.recv_from(&mut buf).unwrap();
    match tftp::packet::Packet::parse(&buf[..n]).unwrap() {
        tftp::packet::Packet::Oack { options } => {
            assert!(
                options.contains(&("tsize".into(), IPXE_EFI.len().to_string())),
                "{options:?}"
            );
            assert!(options.contains(&("blksize".into(), "1468".into())));
            assert!(options.contains(&("windowsize".into(), "4".into())));
        }
        other => panic!("expected OACK, got {other:?}"),
    }
    sock.send_to(&tftp::packet::error(8, "size probe done"), peer)
        .unwrap();
    let probe_peer = peer;

    // The real transfer, asked for at once from the same port (as UEFI does), windowed. It comes
    // from a new transfer port, and the aborted transfer never sends again.
    sock.send_to(&rrq, server).unwrap();
    let (n, peer) = sock.recv_from(&mut buf).unwrap();
    assert_ne!(peer, probe_peer, "answer came from the aborted transfer");
    assert!(matches!(
        tftp::packet::Packet::parse(&buf[..n]),
        Ok(tftp::packet::Packet::Oack { .. })
    ));
    sock.send_to(&tftp::packet::ack(0), peer).unwrap();
    let mut got = Vec::new();
    let mut expect: u16 = 1;
    let started = Instant::now();
    'outer: loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "transfer too slow"
        );
        for _ in 0..4 {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(from, peer, "a packet from another transfer");
            let tftp::packet::Packet::Data { block, data } =
                tftp::packet::Packet::parse(&buf[..n]).unwrap()
            else {
                panic!("expected DATA");
            };
            assert_eq!(block, expect);
            got.extend_from_slice(data);
            expect = expect.wrapping_add(1);
            if data.len() < 1468 {
                sock.send_to(&tftp::packet::ack(block), peer).unwrap();
                break 'outer;
            }
        }
        sock.send_to(&tftp::packet::ack(expect.wrapping_sub(1)), peer)
            .unwrap();
    }
    assert!(got == IPXE_EFI);

    for (req, code) in [
        (tftp::packet::rrq("ipxe.efi", "netascii", &[]), 0u16),
        (tftp::packet::rrq("../../etc/passwd", "octet", &[]), 2),
        (tftp::packet::rrq("missing.efi", "octet", &[]), 1),
    ] {
        sock.send_to(&req, server).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        match tftp::packet::Packet::parse(&buf[..n]).unwrap() {
            tftp::packet::Packet::Error { code: c, .. } => assert_eq!(c, code),
            other => panic!("expected ERROR {code}, got {other:?}"),
        }
    }
    // Garbage does not take the server down.
    sock.send_to(&[0xff; 3], server).unwrap();
    sock.send_to(&[], server).unwrap();
    let (body, _) = curl(&[&format!("tftp://127.0.0.1:{}/undionly.kpxe", s.tftp)]);
    assert!(body == UNDIONLY);
}

#[test]
fn sigterm_lets_open_downloads_finish() {
    if !require(false, &["curl"]) {
        return;
    }
    let mut s = setup("shutdown");
    let u = url(&s, "/rootfs.squashfs");
    // About 2 s at this rate: the shutdown lands mid-download.
    let dl = std::thread::spawn(move || curl(&["--limit-rate", "4M", &u]).0);
    std::thread::sleep(Duration::from_millis(500));
    let status = s
        .server
        .terminate(Duration::from_secs(12))
        .expect("daybreak did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        dl.join().unwrap() == s.rootfs,
        "the open download was cut short"
    );
    let log = s.server.log_text();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

fn run_err(args: &[&str]) -> String {
    let out = output_within(Command::new(BIN).args(args), Duration::from_secs(20));
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_errors_name_the_problem_and_the_fix() {
    let dir = tempdir("errors");
    let k = write(&dir, "vmlinuz", b"k");

    let e = run_err(&[
        "serve",
        "--kernel",
        "/nonexistent/vmlinuz",
        "--no-proxy-dhcp",
    ]);
    assert!(
        e.contains("kernel file /nonexistent/vmlinuz cannot be read"),
        "{e}"
    );

    let e = run_err(&[
        "serve",
        "--kernel",
        &k,
        "--initrd",
        "/nope/initrd",
        "--no-proxy-dhcp",
    ]);
    assert!(e.contains("initrd file /nope/initrd"), "{e}");

    let e = run_err(&[
        "serve",
        "--kernel",
        &k,
        "--interface",
        "nosuchif0",
        "--no-proxy-dhcp",
    ]);
    assert!(
        e.contains("no interface named \"nosuchif0\"") && e.contains("lo (127.0.0.1)"),
        "{e}"
    );

    // A port held by another process: the message names it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let e = run_err(&[
        "serve",
        "--kernel",
        &k,
        "--listen",
        "127.0.0.1",
        "--http-port",
        &port,
        "--no-proxy-dhcp",
        "--tftp-port",
        &free_udp_port().to_string(),
    ]);
    assert!(
        e.contains(&format!("TCP port {port} (HTTP) is already in use")),
        "{e}"
    );
    assert!(e.contains("held by") && e.contains("(pid "), "{e}");

    // start-pixie takes exactly six arguments.
    let out = output_within(
        Command::new(BIN).args(["start-pixie", "a", "b", "0.0.0.0"]),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
}

#[test]
fn binding_privileged_ports_without_root_explains_capabilities() {
    if !require(true, &["setpriv"]) {
        return;
    }
    let dir = tempdir("perm");
    let k = write(&dir, "vmlinuz", b"k");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let port = free_tcp_port().to_string();
    let Some((status, e)) = common::run_as_nobody(&["serve", "--kernel", &k, "--http-port", &port])
    else {
        return;
    };
    assert!(!status.success());
    assert!(
        e.contains("no permission to bind UDP port 69 (TFTP)"),
        "{e}"
    );
    assert!(
        e.contains("CAP_NET_BIND_SERVICE") && e.contains("setcap"),
        "{e}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    if !have("curl") {
        return;
    }
    let dir = tempdir("json");
    let k = write(&dir, "vmlinuz", b"kernel");
    let (server, http, _) =
        Daybreak::start_loopback(&["--log-format", "json", "serve", "--kernel", &k], &dir);
    curl(&[&format!("http://127.0.0.1:{http}/kernel")]);
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log_text();
    let sent = log
        .lines()
        .find(|l| l.contains("http sent"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(sent.starts_with('{') && sent.ends_with('}'), "{sent}");
    assert!(
        sent.contains("\"file\":\"kernel\"") && sent.contains("\"bytes\":6"),
        "{sent}"
    );
}

/// Once a machine has said its MAC (here in the script URL, as iPXE does; ProxyDHCP learns it from
/// the DHCPREQUEST too), the TFTP and HTTP lines of its boot carry it, so one grep finds them all.
#[test]
fn lines_of_one_boot_carry_its_mac() {
    if !require(true, &["curl", "ip"]) {
        return;
    }
    // The machine on the server's link: the MAC it names is its own.
    let lan = Lan::new("ml", 3, "52:54:00:ab:cd:ef");
    let dir = tempdir("mac-lines");
    let kernel = pattern(3_000_001, 1);
    let k = write(&dir, "vmlinuz", &kernel);
    let i = write(&dir, "initrd.img", b"initrd");
    let r = write(&dir, "rootfs.squashfs", &pattern(9_000, 2));
    let state = dir.join("state");
    let server = lan.start(
        &[
            "serve",
            "--kernel",
            &k,
            "--initrd",
            &i,
            "--rootfs",
            &r,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir,
    );
    let (base, tftp) = (lan.base(), format!("tftp://{}/ipxe.efi", lan.server_ip));
    let (script, got, efi) = lan.machine(move || {
        let (script, _) = curl(&[&format!(
            "{base}/_/ipxe?arch=7&mac=52%3A54%3A00%3AAB%3Acd%3Aef"
        )]);
        let (got, _) = curl(&[&format!("{base}/kernel")]);
        let (efi, err) = curl(&[&tftp]);
        assert!(efi == IPXE_EFI, "{err}");
        (script, got, efi)
    });
    assert!(script.starts_with(b"#!ipxe") && got == kernel && efi == IPXE_EFI);
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log_text();
    let mine: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("52:54:00:ab:cd:ef"))
        .collect();
    assert!(mine.iter().any(|l| l.contains("boot script")), "{log}");
    assert!(
        mine.iter()
            .any(|l| l.contains("http sent") && l.contains("file=kernel")),
        "{log}"
    );
    assert!(
        mine.iter()
            .any(|l| l.contains("tftp sent") && l.contains("ipxe.efi")),
        "{log}"
    );
}
