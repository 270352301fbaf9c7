//! Who may speak for a machine, over real sockets: a machine and an attacker on one bridged
//! link with the server (three network namespaces), the attacker naming the machine's MAC in
//! every form the URL parser takes, and presenting the machine's own URLs. The server's
//! neighbour table (ARP) tells them apart: the attacker gets nothing of the machine's, the
//! machine keeps getting its own, and the doubts are logged, counted in /metrics and shown on
//! the machine's timeline. And the flood of the last round, from addresses a forged DHCPREQUEST
//! made "known": the machine still boots, under the common 1,024-descriptor limit.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    config_url, in_netns, ip, output_within, raise_own_nofile, require, tempdir, Daybreak, Netns,
};
use pxe::message::{Message, MessageType};

const VICTIM: &str = "52:54:00:12:34:01";
const ATTACKER: &str = "52:54:00:66:66:66";

/// The server (`s`, 10.76.0.2, a bridge) with the machine (`v`, .10) and the attacker (`a`,
/// .66) on its link; removed when the guard drops.
struct Link {
    server: String,
    victim: String,
    attacker: String,
    _guard: Netns,
}

fn link(tag: &str) -> Link {
    let id = std::process::id();
    let [s, v, a] = ["s", "v", "a"].map(|n| format!("db{tag}{id}{n}"));
    for n in [&s, &v, &a] {
        ip(&["netns", "add", n]);
    }
    let guard = Netns {
        names: vec![s.clone(), v.clone(), a.clone()],
    };
    ip(&["-n", &s, "link", "set", "lo", "up"]);
    ip(&["-n", &s, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &s, "addr", "add", "10.76.0.2/24", "dev", "br0"]);
    ip(&["-n", &s, "link", "set", "br0", "up"]);
    for (ns, mac, addr, port) in [
        (&v, VICTIM, "10.76.0.10/24", "pv"),
        (&a, ATTACKER, "10.76.0.66/24", "pa"),
    ] {
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &s,
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "address", mac]);
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &s, "link", "set", port, "master", "br0"]);
        ip(&["-n", &s, "link", "set", port, "up"]);
    }
    Link {
        server: s,
        victim: v,
        attacker: a,
        _guard: guard,
    }
}

/// `url` fetched from namespace `ns`: the status code and the body.
fn fetch(ns: &str, url: &str) -> (u16, String) {
    let url = url.to_string();
    in_netns(ns, move || {
        let o = output_within(
            std::process::Command::new("curl").args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                &url,
            ]),
            Duration::from_secs(20),
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    })
}

/// `daybreak serve` in the server's namespace, from `dir` (its kernel, initrd and squashfs)
/// with a machines file giving the victim a secret of its own and an install callback.
fn vault_server(l: &Link, dir: &std::path::Path, extra: &[&str], nofile: Option<u64>) -> Daybreak {
    std::fs::write(
        dir.join("machines.yaml"),
        format!(
            "- mac: {VICTIM}\n  hostname: vault-1\n  cloud_config: |\n    #cloud-config\n    password: s3cret-of-vault-1\n    done: [[[ .daybreak.installed_url ]]]\n"
        ),
    )
    .unwrap();
    let state = dir.join("state").to_str().unwrap().to_string();
    let args: Vec<String> = [
        "serve",
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd",
        "--rootfs",
        "rootfs.squashfs",
        "--machines",
        "machines.yaml",
        "--state-dir",
        &state,
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    let d = dir.to_path_buf();
    in_netns(&l.server, move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Daybreak::start_with(&a, &d, nofile)
    })
}

const BASE: &str = "http://10.76.0.2:8090";

#[test]
fn a_request_naming_another_hosts_mac_gets_nothing_of_that_machines_own() {
    if !require(true, &["ip", "curl"]) {
        return;
    }
    let l = link("id");
    let dir = tempdir("identity");
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let server = vault_server(&l, &dir, &["--no-proxy-dhcp"], None);

    // The machine gets its own script and cloud-config.
    let (code, mine) = fetch(&l.victim, &format!("{BASE}/_/ipxe?arch=0&mac={VICTIM}"));
    assert_eq!(code, 200);
    let config = config_url(&mine);
    let (code, text) = fetch(&l.victim, &config);
    assert!(
        code == 200 && text.contains("s3cret-of-vault-1"),
        "{code} {text}"
    );
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .unwrap()
        .to_string();

    // The attacker names the machine's MAC, in each form the parser takes: a wait, nothing of
    // the machine's (no kernel, no cloud-config URL, no arch it could set).
    for form in [
        VICTIM,
        "525400123401",
        "52-54-00-12-34-01",
        "5254.0012.3401",
    ] {
        let (code, got) = fetch(&l.attacker, &format!("{BASE}/_/ipxe?arch=11&mac={form}"));
        assert_eq!(code, 200, "{form}");
        assert!(
            !got.contains("kernel") && !got.contains("config_url") && got.contains("sleep"),
            "{form}: {got}"
        );
        let (_, grub) = fetch(&l.attacker, &format!("{BASE}/_/grub/{form}.cfg"));
        assert!(!grub.contains("linux"), "{form}: {grub}");
    }
    // The machine's own URLs, leaked: not from another host.
    assert_eq!(fetch(&l.attacker, &config).0, 404);
    assert_eq!(fetch(&l.attacker, &done).0, 404);
    // Nothing changed for the machine: it is not installed, and still gets its own.
    let (_, again) = fetch(&l.victim, &format!("{BASE}/_/ipxe?arch=0&mac={VICTIM}"));
    assert!(
        again.contains("boot kernel") && again.contains("config_url="),
        "{again}"
    );

    // Logged, counted, shown.
    std::thread::sleep(Duration::from_millis(300));
    let log = server.log_text();
    assert!(
        log.contains("a request names a machine it may not speak for")
            && log.contains(&format!("named={VICTIM}"))
            && log.contains(ATTACKER),
        "{log}"
    );
    // The admin surface is not on the boot port: on the server's loopback only.
    for path in [
        "/metrics",
        "/api/machines",
        &format!("/api/machines/{VICTIM}"),
    ] {
        assert_eq!(
            fetch(&l.attacker, &format!("{BASE}{path}")).0,
            404,
            "{path}"
        );
    }
    let admin = server.admin();
    let (_, metrics) = fetch(&l.server, &format!("{admin}/metrics"));
    let doubts: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("daybreak_identity_doubts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(doubts >= 10, "{metrics}");
    let (_, shown) = fetch(&l.server, &format!("{admin}/api/machines/{VICTIM}"));
    assert!(
        shown.contains("got nothing of its own") && shown.contains("10.76.0.66"),
        "{shown}"
    );
    assert!(
        !shown.contains("arm64"),
        "the attacker's arch= changed nothing: {shown}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mac` telling the network's DHCP server it takes `addr` (option 50), broadcast on the link
/// from port 68, as every machine does: what makes an address "known" to ProxyDHCP.
fn dhcp_request(sock: &UdpSocket, mac: [u8; 6], addr: Ipv4Addr, xid: u32) {
    let m = Message::client_request(
        MessageType::Request,
        xid,
        mac,
        vec![
            (50, addr.octets().to_vec()),
            (60, b"PXEClient:Arch:00007:UNDI:003000".to_vec()),
        ],
    );
    sock.send_to(&m.encode(), (Ipv4Addr::BROADCAST, 67))
        .unwrap();
}

/// A socket on `eth0`, port 68, that may broadcast.
fn dhcp_socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(b"eth0")).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .unwrap();
    s.into()
}

fn mac_bytes(text: &str) -> [u8; 6] {
    let v: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

#[test]
fn a_flood_from_known_addresses_does_not_stop_a_real_machine() {
    if !require(true, &["ip", "curl"]) {
        return;
    }
    raise_own_nofile();
    let l = link("kf");
    let dir = tempdir("known-flood");
    let kernel = testkit::pattern(3_000_000, 9);
    std::fs::write(dir.join("vmlinuz"), &kernel).unwrap();
    for f in ["initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let server = vault_server(&l, &dir, &["--interface", "br0"], Some(1024));
    let pid = server.child.id();

    // The attacker: 64 addresses of its own on the link, each made "known" by forged
    // DHCPREQUESTs (naming the machine's MAC, and a MAC of its own), then from each of them
    // 6 TFTP requests never acknowledged, asked again every second, and 32 idle connections.
    for k in 0..64u8 {
        let a = format!("10.76.0.{}/24", 100 + k);
        ip(&["-n", &l.attacker, "addr", "add", &a, "dev", "eth0"]);
    }
    let (held_tx, held_rx) = mpsc::channel::<(usize, usize)>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let a = l.attacker.clone();
    let attacker = std::thread::spawn(move || {
        in_netns(&a, move || {
            let dhcp = dhcp_socket();
            for k in 0..64u8 {
                let addr = Ipv4Addr::new(10, 76, 0, 100 + k);
                dhcp_request(&dhcp, mac_bytes(VICTIM), addr, 0x0a00 | u32::from(k));
                dhcp_request(&dhcp, [2, 0, 0, 0, 0x66, k], addr, 0x0b00 | u32::from(k));
            }
            std::thread::sleep(Duration::from_millis(500));
            let server = Ipv4Addr::new(10, 76, 0, 2);
            let rrq = tftp::packet::rrq("ipxe.efi", "octet", &[("blksize", "1468")]);
            let mut udp = Vec::new();
            let mut idle = Vec::new();
            for k in 0..64u8 {
                let src = Ipv4Addr::new(10, 76, 0, 100 + k);
                for _ in 0..6 {
                    let s = UdpSocket::bind((src, 0)).unwrap();
                    s.send_to(&rrq, (server, 69)).unwrap();
                    udp.push(s);
                }
                for _ in 0..32 {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    s.bind(&std::net::SocketAddr::from((src, 0)).into())
                        .unwrap();
                    let to = std::net::SocketAddr::from((server, 8090));
                    if s.connect_timeout(&to.into(), Duration::from_secs(2))
                        .is_ok()
                    {
                        idle.push(s);
                    }
                }
            }
            held_tx.send((udp.len(), idle.len())).unwrap();
            // Asked again every second while the machine boots (bounded: 60 s at most).
            let until = Instant::now() + Duration::from_secs(60);
            while stop_rx.recv_timeout(Duration::from_secs(1)).is_err() && Instant::now() < until {
                for s in &udp {
                    let _ = s.send_to(&rrq, (server, 69));
                }
            }
            drop((udp, idle));
            // A script by the machine's MAC, from a known address.
            let mut c = std::net::TcpStream::connect_timeout(
                &SocketAddrV4::new(server, 8090).into(),
                Duration::from_secs(5),
            );
            let mut got = String::new();
            if let Ok(c) = c.as_mut() {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = std::io::Write::write_all(
                    c,
                    format!("GET /_/ipxe?arch=7&mac={VICTIM} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                let _ = std::io::Read::read_to_string(c, &mut got);
            }
            got
        })
    });
    let (forged, idle) = held_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the attacker's flood is up");
    assert!(
        forged == 384 && idle > 1024,
        "{forged} requests, {idle} connections held"
    );
    let peak = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        peak < 1024,
        "the server stays within its descriptors: {peak}"
    );

    // The machine, while all of that is held: its DHCPREQUEST, then iPXE over TFTP, its own
    // script and cloud-config, and the kernel over HTTP.
    let started = Instant::now();
    let v = l.victim.clone();
    // Files, not pipes: a pipe nobody reads until the end holds 64 KiB.
    let (efi_file, kernel_file) = (dir.join("got-ipxe.efi"), dir.join("got-kernel"));
    let (ef, kf) = (efi_file.clone(), kernel_file.clone());
    let (efi_ok, script) = in_netns(&v, move || {
        let efi_file = ef;
        dhcp_request(
            &dhcp_socket(),
            mac_bytes(VICTIM),
            Ipv4Addr::new(10, 76, 0, 10),
            0x1234,
        );
        std::thread::sleep(Duration::from_millis(300));
        let o = output_within(
            std::process::Command::new("curl").args([
                "-sS",
                "--fail",
                "--max-time",
                "30",
                "--tftp-blksize",
                "1468",
                "-o",
                efi_file.to_str().unwrap(),
                "tftp://10.76.0.2/ipxe.efi",
            ]),
            Duration::from_secs(40),
        );
        let script = output_within(
            std::process::Command::new("curl").args([
                "-sS",
                "--fail",
                "--max-time",
                "30",
                &format!("{BASE}/_/ipxe?arch=7&mac={VICTIM}"),
            ]),
            Duration::from_secs(40),
        );
        (
            o.status.success(),
            String::from_utf8_lossy(&script.stdout).into_owned(),
        )
    });
    assert!(efi_ok, "iPXE over TFTP during the flood");
    assert!(
        std::fs::read(&efi_file).unwrap() == include_bytes!("../ipxe/ipxe.efi"),
        "iPXE arrives whole"
    );
    assert!(script.contains("config_url="), "its own script: {script}");
    let (code, config) = fetch(&l.victim, &config_url(&script));
    assert!(
        code == 200 && config.contains("s3cret-of-vault-1"),
        "{code} {config}"
    );
    let v = l.victim.clone();
    in_netns(&v, move || {
        output_within(
            std::process::Command::new("curl").args([
                "-sS",
                "--fail",
                "--max-time",
                "30",
                "-o",
                kf.to_str().unwrap(),
                &format!("{BASE}/kernel"),
            ]),
            Duration::from_secs(40),
        )
    });
    assert!(
        std::fs::read(&kernel_file).unwrap_or_default() == kernel,
        "the kernel arrives whole"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the machine's files within seconds: {:?}",
        started.elapsed()
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < 1024, "{fds}");

    stop_tx.send(()).unwrap();
    let stolen = attacker.join().unwrap();
    assert!(
        stolen.starts_with("HTTP/1.1 200")
            && stolen.contains("sleep")
            && !stolen.contains("config_url")
            && !stolen.contains("kernel"),
        "a known address naming the machine gets nothing of its own: {stolen}"
    );
    let log = server.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A machine's failures are named on its timeline: a file it asked for that is not here, a
/// download cut off mid-way; `/api/machines/MAC` gives the phase, the stage and the failure, and
/// the status page in headless Chromium shows the machine failing, with its reason.
#[test]
fn a_machines_missing_file_and_cut_off_download_are_its_failures() {
    if !require(true, &["ip", "curl", "chromium"]) {
        return;
    }
    let l = link("fl");
    let dir = tempdir("failures");
    std::fs::write(dir.join("vmlinuz"), testkit::pattern(64_000_000, 3)).unwrap();
    for f in ["initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let server = vault_server(&l, &dir, &["--no-proxy-dhcp"], None);
    let admin = server.admin();
    let api = format!("{admin}/api/machines/{VICTIM}");
    // The machine asks for its script as itself, then for an initrd this server does not have.
    assert_eq!(
        fetch(&l.victim, &format!("{BASE}/_/ipxe?arch=0&mac={VICTIM}")).0,
        200
    );
    assert_eq!(fetch(&l.victim, &format!("{BASE}/initrd9")).0, 404);
    let until = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let (_, shown) = fetch(&l.server, &api);
        if shown.contains(r#""phase":"failed""#) || Instant::now() > until {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        shown.contains(r#""stage":"initrd""#)
            && shown.contains(r#""kind":"not found""#)
            && shown.contains(r#""last_good":"script""#),
        "{shown}"
    );
    // The kernel, read slowly and given up after a second: cut off.
    in_netns(&l.victim, move || {
        let _ = output_within(
            std::process::Command::new("curl").args([
                "-sS",
                "--limit-rate",
                "200k",
                "--max-time",
                "1",
                "-o",
                "/dev/null",
                &format!("{BASE}/kernel"),
            ]),
            Duration::from_secs(20),
        );
    });
    let until = Instant::now() + Duration::from_secs(15);
    let shown = loop {
        let (_, shown) = fetch(&l.server, &api);
        if shown.contains(r#""kind":"cut off""#) || Instant::now() > until {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        shown.contains(r#""phase":"failed""#)
            && shown.contains(r#""stage":"kernel""#)
            && shown.contains("kernel cut off after"),
        "{shown}"
    );
    // The page, as a browser runs it (its script fetches /api/machines).
    let out = common::workspace_root().join("target/e2e-out");
    std::fs::create_dir_all(&out).unwrap();
    let (page, shot, home) = (
        admin.clone(),
        out.join("failing-machine.png"),
        dir.join("chrome"),
    );
    let dom = in_netns(&l.server, move || {
        let chrome = |extra: &[&str], hash: &str| {
            let mut c = std::process::Command::new("chromium");
            c.env("HOME", &home)
                .args(["--headless", "--no-sandbox", "--disable-gpu"])
                .args(["--disable-dev-shm-usage", "--no-first-run"])
                .arg(format!("--user-data-dir={}", home.display()))
                .args(extra)
                .arg(format!("{page}/{hash}"));
            output_within(&mut c, Duration::from_secs(60))
        };
        // The failing machine with its row open: its timeline under it.
        let _ = chrome(
            &[
                "--virtual-time-budget=4000",
                "--window-size=1400,520",
                &format!("--screenshot={}", shot.display()),
            ],
            &format!("#open={VICTIM}"),
        );
        let dom = |hash: &str| {
            let c = chrome(&["--virtual-time-budget=4000", "--dump-dom"], hash);
            String::from_utf8_lossy(&c.stdout).into_owned()
        };
        // The page as a desktop browser runs it: following the server's events, on the real
        // clock (a stream open stops headless Chrome's virtual one).
        let mut b = common::browser::Browser::open(&format!("{page}/#live=events"), &home);
        let live = b.eval_until(
            "document.documentElement.outerHTML",
            "kernel cut off after",
            Duration::from_secs(15),
        );
        drop(b);
        (
            dom(""),
            dom("#filter=vault%20failed"),
            dom("#filter=nothing-like-it"),
            dom(&format!("#open={VICTIM}")),
            live,
        )
    });
    let (dom, matching, none, opened, live) = dom;
    let row = |dom: &str| {
        dom.split("<tr ")
            .find(|r| r.contains(VICTIM))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no row for the machine: {dom}"))
    };
    assert!(
        live.contains(r#"data-live="events""#) && !dom.contains(r#"data-live="events""#),
        "the live page follows the events, headless Chrome's virtual clock polls"
    );
    assert!(
        row(&live).contains("kernel cut off after"),
        "the page following the events shows the machine failing: {live}"
    );
    // An opened row shows the machine's timeline: every step with its time, and the failure.
    let detail = opened
        .split("<tr ")
        .find(|r| r.starts_with(&format!("class=\"detail\" data-detail-mac=\"{VICTIM}\"")))
        .unwrap_or_else(|| panic!("no timeline under the machine's row: {opened}"));
    assert!(
        detail.contains("boot script")
            && detail.contains("failed at kernel (cut off)")
            && detail.contains("FAILED at initrd (not found)")
            && detail.contains("last good step:"),
        "{detail}"
    );
    assert!(
        !dom.contains("data-detail-mac"),
        "rows are closed unless opened: {dom}"
    );
    assert!(
        matching.contains(VICTIM) && matching.contains("1 match the filter"),
        "{matching}"
    );
    assert!(
        !none.contains(r#"<tr data-mac"#) && none.contains("0 match the filter"),
        "{none}"
    );
    assert!(
        dom.contains("failed: 1"),
        "counts per phase at the top: {dom}"
    );
    let row = row(&dom);
    assert!(
        row.contains("failed at kernel") && row.contains("kernel cut off after"),
        "{row}"
    );
    assert!(dom.contains("1 failed"), "the summary counts it: {dom}");
    let (_, metrics) = fetch(&l.server, &format!("{admin}/metrics"));
    assert!(
        metrics.contains(r#"daybreak_boot_failures_total{kind="cut off",stage="kernel"} 1"#)
            && metrics
                .contains(r#"daybreak_boot_failures_total{kind="not found",stage="initrd"} 1"#),
        "{metrics}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lines sent from namespace `ns` to the server's syslog port as `logger` (util-linux, RFC 3164,
/// tag `ipxe`, as iPXE tags its lines) sends them.
fn logger(ns: &str, lines: &[&str]) {
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    in_netns(ns, move || {
        for line in &lines {
            let o = output_within(
                std::process::Command::new("logger").args([
                    "--server",
                    "10.76.0.2",
                    "--port",
                    "514",
                    "--udp",
                    "--rfc3164",
                    "-t",
                    "ipxe",
                    line,
                ]),
                Duration::from_secs(10),
            );
            assert!(o.status.success(), "logger: {o:?}");
        }
    });
}

/// `/api/machines/VICTIM` once it contains `want` (or after 10 s).
fn shown_once(l: &Link, api: &str, want: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, shown) = fetch(&l.server, api);
        if shown.contains(want) || Instant::now() > until {
            return shown;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// iPXE's own words become the machine's: a script step that fails reports its step and iPXE's
/// error number (told in words with iPXE's page), and iPXE's syslog lines (UDP 514) are filed
/// under the machine that sent them, its error lines as its failure. The attacker on the same
/// link can do neither for the machine, a flood is cut to a few lines a second, and a second
/// server that cannot have port 514 starts anyway, saying so.
#[test]
fn ipxe_failures_and_syslog_lines_are_the_machines_own() {
    if !require(true, &["ip", "curl", "logger"]) {
        return;
    }
    let l = link("sl");
    let dir = tempdir("syslog");
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let server = vault_server(&l, &dir, &["--no-proxy-dhcp"], None);
    let admin = server.admin();
    let api = format!("{admin}/api/machines/{VICTIM}");
    let (code, script) = fetch(&l.victim, &format!("{BASE}/_/ipxe?arch=7&mac={VICTIM}"));
    assert_eq!(code, 200);
    let report = format!("{BASE}/_/booting?mac={VICTIM}");
    for want in [
        "#!ipxe\nset syslog 10.76.0.2 ||\n",
        "set daybreak_step kernel\nkernel --name kernel http://10.76.0.2:8090/kernel || goto daybreak_failed\n",
        &format!(":daybreak_failed\nimgfetch --name failed {report}&failed=${{daybreak_step}}&errno=${{errno}} ||\n"),
    ] {
        assert!(script.contains(want), "{want:?} in {script}");
    }
    // The attacker reports a failure for the machine: not its to report.
    let forged = format!("{report}&failed=initrd&errno=0x2d0c613b");
    assert_eq!(fetch(&l.attacker, &forged).0, 404);
    // The machine's iPXE timed out fetching the kernel.
    assert_eq!(
        fetch(
            &l.victim,
            &format!("{report}&failed=kernel&errno=0x4c0a6035")
        )
        .0,
        200
    );
    let shown = shown_once(&l, &api, r#""kind":"ipxe""#);
    assert!(
        shown.contains(r#""phase":"failed""#)
            && shown.contains(r#""stage":"kernel""#)
            && shown.contains("iPXE could not download the kernel: Connection timed out (https://ipxe.org/4c0a6035)")
            && !shown.contains("No such file"),
        "{shown}"
    );
    // Nonsense in the report is refused, not filed.
    for q in ["failed=rootfs&errno=0x1", "failed=kernel&errno=zz"] {
        let (code, _) = fetch(&l.victim, &format!("{report}&{q}"));
        assert!(code == 404 || q.ends_with("zz"), "{q}: {code}");
    }
    // iPXE's lines by syslog: a plain one, then an error naming the initrd.
    logger(
        &l.victim,
        &[
            "http://10.76.0.2:8090/kernel... ok",
            "http://10.76.0.2:8090/initrd... Connection reset (https://ipxe.org/0f0c6039)",
        ],
    );
    let shown = shown_once(&l, &api, "Connection reset");
    assert!(
        shown.contains("iPXE: http://10.76.0.2:8090/kernel... ok")
            && shown.contains(r#""stage":"initrd""#)
            && shown.contains(r#""kind":"ipxe""#),
        "{shown}"
    );
    // The attacker's lines are nobody's.
    logger(
        &l.attacker,
        &["http://10.76.0.2:8090/kernel... forged by the attacker"],
    );
    // A flood from the machine: a few lines a second are filed, the rest counted.
    in_netns(&l.victim, || {
        let s = UdpSocket::bind("10.76.0.10:0").unwrap();
        for i in 0..300 {
            let _ = s.send_to(format!("<14>ipxe: flood {i}").as_bytes(), "10.76.0.2:514");
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, metrics) = fetch(&l.server, &format!("{admin}/metrics"));
    let count = |outcome: &str| -> u64 {
        let key = format!("daybreak_syslog_lines_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
    };
    assert!(count("unknown_sender") >= 1, "{metrics}");
    assert!(
        count("rate_limited") >= 200 && count("filed") <= 2 + 2 * 20,
        "{metrics}"
    );
    let (_, shown) = fetch(&l.server, &api);
    assert!(!shown.contains("forged by the attacker"), "{shown}");
    // Another server on the same host: port 514 is taken, it starts anyway and says why.
    let other = dir.to_path_buf();
    let mut second = in_netns(&l.server, move || {
        Daybreak::start(
            &[
                "serve",
                "--kernel",
                "vmlinuz",
                "--initrd",
                "initrd",
                "--no-proxy-dhcp",
                "--http-port",
                "8190",
                "--tftp-port",
                "6969",
                "--admin-listen",
                "off",
            ],
            &other,
        )
    });
    second.wait_for(
        "cannot be bound for iPXE's syslog lines",
        Duration::from_secs(10),
    );
    drop(second);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
