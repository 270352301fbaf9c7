//! Who may speak for a machine, over real sockets: a machine and an attacker on one bridged
//! link with the server (three network namespaces), the attacker naming the machine's MAC in
//! every form the URL parser takes, and presenting the machine's own URLs. The server's
//! neighbour table (ARP) tells them apart: the attacker gets nothing of the machine's, the
//! machine keeps getting its own, and the doubts are logged, counted in /metrics and shown on
//! the machine's timeline.

mod common;

use std::time::Duration;

use common::{config_url, in_netns, ip, output_within, require, tempdir, Daybreak, Netns};

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

fn link() -> Link {
    let id = std::process::id();
    let [s, v, a] = ["s", "v", "a"].map(|n| format!("dbid{id}{n}"));
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

const BASE: &str = "http://10.76.0.2:8090";

#[test]
fn a_request_naming_another_hosts_mac_gets_nothing_of_that_machines_own() {
    if !require(true, &["ip", "curl"]) {
        return;
    }
    let l = link();
    let dir = tempdir("identity");
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    std::fs::write(
        dir.join("machines.yaml"),
        format!(
            "- mac: {VICTIM}\n  hostname: vault-1\n  cloud_config: |\n    #cloud-config\n    password: s3cret-of-vault-1\n    done: [[[ .daybreak.installed_url ]]]\n"
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let (d, s) = (dir.clone(), state.to_str().unwrap().to_string());
    let server = in_netns(&l.server, move || {
        Daybreak::start(
            &[
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
                &s,
                "--no-proxy-dhcp",
            ],
            &d,
        )
    });

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
