//! Replicas on one etcd: a real 3-member etcd cluster and three Daybreak replicas, each in a
//! network namespace of its own on one bridge, with a machine beside them (its link has the MAC
//! it plays). A machine installed through one replica is sent to its disk by the others, a
//! replica's per-machine URLs are accepted by all, `daybreak machines reinstall` against the
//! store reaches every replica within 2 s; the loss of a replica, of the etcd leader and of the
//! quorum does not stop boots, and the install callback answers 503 until it can commit. A
//! replica killed mid-boot loses nothing of the boot; an image is built once across replicas
//! (the others fetch it); pixiecore's `boot` and `api` share a store too.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{in_netns, ip, output_within, require, tempdir, Daybreak, Netns, BIN};

const MAC: &str = "52:54:00:c1:00:10";

/// Namespaces on one bridge, removed when dropped.
struct Switch {
    bridge: String,
    id: String,
    guards: Vec<Netns>,
}

impl Switch {
    fn new(tag: &str) -> Switch {
        let id = format!("db{tag}{}", std::process::id());
        let bridge = format!("{id}b");
        ip(&["netns", "add", &bridge]);
        let guard = Netns {
            names: vec![bridge.clone()],
        };
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        Switch {
            bridge,
            id,
            guards: vec![guard],
        }
    }

    /// A namespace `name` plugged into the bridge with `addr`/24 (and `mac` on its link).
    fn plug(&mut self, name: &str, addr: Ipv4Addr, mac: Option<&str>) -> String {
        let ns = format!("{}{name}", self.id);
        ip(&["netns", "add", &ns]);
        self.guards.push(Netns {
            names: vec![ns.clone()],
        });
        let port = format!("p{name}");
        ip(&[
            "-n",
            &self.bridge,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "e0",
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &self.bridge,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        if let Some(m) = mac {
            ip(&["-n", &ns, "link", "set", "e0", "address", m]);
        }
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "e0"]);
        ip(&["-n", &ns, "link", "set", "e0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }
}

/// `(status, body)` of `url` fetched from namespace `ns` (000 when nothing answered).
fn fetch(ns: &str, url: &str) -> (u16, String) {
    let (ns, url) = (ns.to_string(), url.to_string());
    in_netns(&ns, move || {
        let o = output_within(
            Command::new("curl").args(["-s", "--max-time", "8", "-w", "\n%{http_code}", &url]),
            Duration::from_secs(15),
        );
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    })
}

/// A bridge (`tag`) with one etcd member at 10.NET.0.21 in a namespace of its own: the
/// switch, the member, and the store URL under `/PREFIX`; `None` when etcd is not here.
fn one_member_etcd(
    tag: &str,
    net: u8,
    prefix: &str,
) -> Option<(Switch, Vec<testkit::Etcd>, String)> {
    let mut sw = Switch::new(tag);
    let at = Ipv4Addr::new(10, net, 0, 21);
    let e0 = sw.plug("e0", at, None);
    let etcd = testkit::Etcd::cluster(&format!("{tag}-etcd"), &[(&e0, at)])?;
    Some((sw, etcd, format!("etcd://{at}:2379/{prefix}")))
}

fn waits_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn replicas_on_etcd_share_one_fleet_through_the_loss_of_a_replica_the_leader_and_the_quorum() {
    if !require(true, &["ip", "curl", "etcd", "etcdctl"]) {
        return;
    }
    let mut sw = Switch::new("cl");
    let machine = sw.plug("m", Ipv4Addr::new(10, 79, 0, 10), Some(MAC));
    let etcd_at: Vec<(String, Ipv4Addr)> = (0..3)
        .map(|i| {
            let a = Ipv4Addr::new(10, 79, 0, 21 + i);
            (sw.plug(&format!("e{i}"), a, None), a)
        })
        .collect();
    let members: Vec<(&str, Ipv4Addr)> = etcd_at.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let Some(mut etcd) = testkit::Etcd::cluster("cluster-etcd", &members) else {
        return;
    };
    let store = format!(
        "etcd://{}/fleet",
        members
            .iter()
            .map(|(_, a)| format!("{a}:2379"))
            .collect::<Vec<_>>()
            .join(",")
    );

    let dir = tempdir("cluster");
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    std::fs::write(
        dir.join("machines.yaml"),
        format!(
            "- mac: {MAC}\n  hostname: edge-1\n  cloud_config: |\n    #cloud-config\n    done: [[[ .daybreak.installed_url ]]]\n"
        ),
    )
    .unwrap();
    let mut replicas = Vec::new();
    let mut bases = Vec::new();
    for i in 0..3u8 {
        let addr = Ipv4Addr::new(10, 79, 0, 2 + i);
        let ns = sw.plug(&format!("r{i}"), addr, None);
        let rdir = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let state = rdir.join("state").to_string_lossy().into_owned();
        // Only the first brings the machines file: it applies it to the store, and the others
        // decide from the store's.
        let machines: &[&str] = if i == 0 {
            &["--machines", "../machines.yaml"]
        } else {
            &[]
        };
        let args: Vec<String> = [
            "serve",
            "--kernel",
            "../vmlinuz",
            "--initrd",
            "../initrd",
            "--rootfs",
            "../rootfs.squashfs",
            "--state-dir",
            &state,
            "--store",
            &store,
            "--no-proxy-dhcp",
        ]
        .iter()
        .chain(machines)
        .map(|s| s.to_string())
        .collect();
        let d = rdir.clone();
        replicas.push(Some(in_netns(&ns, move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Daybreak::start(&a, &d)
        })));
        bases.push((ns, format!("http://{addr}:8090")));
    }
    let script = |r: usize| fetch(&machine, &format!("{}/_/ipxe?arch=0&mac={MAC}", bases[r].1));
    let on = |r: usize, url: &str| {
        // A URL one replica made, asked of replica `r`.
        let path = &url[url.find("/_/").expect("a per-machine URL")..];
        fetch(&machine, &format!("{}{path}", bases[r].1))
    };

    // The first boot through replica 0: its cloud-config URL opens on replica 1 too.
    let (code, first) = script(0);
    assert_eq!(code, 200, "{first}");
    assert!(first.contains("boot kernel"), "{first}");
    let config_url = common::config_url(&first);
    // Open on replica 1 once replica 0's grant reached the store (the watch's lag: ms).
    let mut config = String::new();
    waits_for(
        "replica 0's URL on replica 1",
        Duration::from_secs(2),
        || {
            let (code, text) = on(1, &config_url);
            config = text;
            code == 200
        },
    );
    let done = config
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .expect("the install callback")
        .to_string();
    // Installed through replica 2.
    assert_eq!(on(2, &done), (200, "installed\n".to_string()));

    // Replica 0 dies: the others send the machine to its disk, at once.
    let mut r0 = replicas[0].take().unwrap();
    r0.child.kill().unwrap();
    r0.child.wait().unwrap();
    for r in [1, 2] {
        let (code, s) = script(r);
        assert!(
            code == 200 && s.contains("sanboot"),
            "replica {r}: {code} {s}"
        );
    }

    // `daybreak machines ARGS --store URL`, run on replica 2's host: (success, stderr).
    let machines_cli = |args: &[&str]| {
        let (ns, mut all) = (bases[2].0.clone(), vec!["machines".to_string()]);
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--store".to_string(), store.clone()]);
        in_netns(&ns, move || {
            let o = output_within(Command::new(BIN).args(&all), Duration::from_secs(20));
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
    };

    // `daybreak machines reinstall` against the store: every replica follows within 2 s.
    let (ok, err) = machines_cli(&["reinstall", MAC]);
    assert!(ok, "{err}");
    for r in [1, 2] {
        let took = waits_for("the reinstall", Duration::from_secs(2), || {
            script(r).1.contains("boot kernel")
        });
        eprintln!("replica {r} followed the reinstall in {took:?}");
    }

    // The etcd leader dies: boots go on, and a new install commits once a leader is elected.
    let leader = etcd.iter().position(|e| e.is_leader()).expect("a leader");
    etcd[leader].kill();
    let (code, s) = script(1);
    assert!(code == 200 && s.contains("boot kernel"), "{code} {s}");
    let (_, config) = on(1, &common::config_url(&s));
    let done = config
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .expect("the install callback")
        .to_string();

    // A second member dies: no quorum. Scripts are answered from the snapshot; the install
    // callback is 503 (curl --retry asks again) until the quorum is back, then it commits.
    let second = (0..3).find(|i| *i != leader).unwrap();
    etcd[second].kill();
    let t = Instant::now();
    let (code, s) = script(2);
    assert!(code == 200 && s.contains("boot kernel"), "{code} {s}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (code, _) = on(1, &done);
    assert_eq!(code, 503, "no quorum: not committed");
    etcd[second].restart();
    waits_for(
        "the install once quorum is back",
        Duration::from_secs(30),
        || on(1, &done) == (200, "installed\n".to_string()),
    );
    for r in [1, 2] {
        waits_for(
            "the install on every replica",
            Duration::from_secs(2),
            || script(r).1.contains("sanboot"),
        );
    }
    // A new machines file put in the store by `daybreak machines apply`: every replica
    // decides from it within 2 s (here: the machine boots live, with the new cloud-config).
    std::fs::write(
        dir.join("machines.yaml"),
        format!("- mac: {MAC}\n  hostname: edge-1\n  action: live\n  cloud_config: |\n    #cloud-config\n    live: true\n"),
    )
    .unwrap();
    let (ok, err) = machines_cli(&["apply", &dir.join("machines.yaml").to_string_lossy()]);
    assert!(ok, "{err}");
    for r in [1, 2] {
        waits_for("the applied profiles", Duration::from_secs(2), || {
            let (_, s) = script(r);
            s.contains("boot kernel") && on(r, &common::config_url(&s)).1.contains("live: true")
        });
    }
    // A file naming a file on a replica's host is refused, and the store keeps its profiles.
    std::fs::write(dir.join("bad.yaml"), "- kernel: /etc/shadow\n").unwrap();
    let (ok, err) = machines_cli(&["apply", &dir.join("bad.yaml").to_string_lossy()]);
    assert!(!ok && err.contains("names a file on this host"), "{err}");
    let (_, s) = script(1);
    assert!(on(1, &common::config_url(&s)).1.contains("live: true"));

    // Replica 2's /api/machines shows it installed.
    let ns = bases[2].0.clone();
    let api = in_netns(&ns, || {
        common::get_text("http://127.0.0.1:8091/api/machines")
    });
    assert!(api.contains(MAC) && api.contains("installed"), "{api}");
    // ... and the replicas sharing the store, each with its address.
    assert!(
        api.contains("\"replicas\":")
            && api.contains("\"10.79.0.3\"")
            && api.contains("\"10.79.0.4\""),
        "{api}"
    );
    // ... and the machine's steps replica 1 saw, among its own (each machine's recent
    // timeline is shared through etcd).
    let mut shown = String::new();
    waits_for(
        "replica 1's steps on replica 2",
        Duration::from_secs(3),
        || {
            let ns = ns.clone();
            shown = in_netns(&ns, || {
                common::get_text(&format!("http://127.0.0.1:8091/api/machines/{MAC}"))
            });
            shown.contains("\"replica\":") && shown.contains("boot script")
        },
    );
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let r1 = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["replica"].as_str().is_some())
        .count();
    assert!(r1 >= 2, "{shown}");
    drop(replicas);
    drop(etcd);
    let _ = std::fs::remove_dir_all(dir);
}

/// A small image: a kernel and an initrd in /boot and a few MB besides (`n` makes it another).
fn small_image(n: u32) -> common::oci::Image {
    use common::oci::{Comp, Image, E};
    Image {
        arch: "amd64",
        layers: vec![(
            vec![
                E::Dir("boot/", 0o755),
                E::File(
                    "boot/vmlinuz-6.1.0-1-amd64",
                    0o644,
                    0,
                    testkit::pattern(3_000_000, n),
                ),
                E::File(
                    "boot/initrd.img-6.1.0-1-amd64",
                    0o644,
                    0,
                    testkit::pattern(1_000_000, n + 1),
                ),
                E::Dir("var/", 0o755),
                E::File("var/data", 0o644, 0, testkit::pattern(4_000_000, n + 2)),
            ],
            Comp::Gzip,
        )],
    }
}

/// sha256 of each of an entry's three files.
fn entry_sums(state: &std::path::Path, key: &str) -> Vec<String> {
    ["kernel", "initrd", "rootfs.squashfs"]
        .iter()
        .map(|f| {
            common::oci::sha256(
                &std::fs::read(state.join("artifacts").join(key).join(f))
                    .unwrap_or_else(|e| panic!("{key}/{f}: {e}")),
            )
        })
        .collect()
}

/// Item: one build per image across the cluster: three replicas started at once with one image
/// build it once; the others wait, then fetch the builder's kernel, initrd and squashfs over
/// HTTP, checked against the sha256 it published; every member lists what it holds. A turn to
/// build held by a replica that dies expires with its lease, and another builds.
#[test]
fn an_image_is_built_once_across_the_replicas_and_fetched_by_the_others() {
    if !require(true, &["ip", "curl", "etcd", "etcdctl"]) {
        return;
    }
    let Some((mut sw, etcd, store)) = one_member_etcd("sb", 81, "builds") else {
        return;
    };
    let dir = tempdir("cluster-builds");
    let layout = dir.join("layout");
    let digest = common::oci::write_layout(&layout, "v1", &[small_image(1)])[0].clone();
    let key = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    let mut bases = Vec::new();
    for i in 0..3u8 {
        let addr = Ipv4Addr::new(10, 81, 0, 2 + i);
        sw.plug(&format!("r{i}"), addr, None);
        bases.push(format!("http://{addr}:8090"));
    }
    let start = |i: u8, image: &std::path::Path| {
        let ns = sw_ns(&sw, &format!("r{i}"));
        let rdir = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let args: Vec<String> = [
            format!("container_image={}", image.display()),
            format!("state_dir={}", rdir.join("state").display()),
            "netboot.proxy_dhcp=false".into(),
            "disable_http_server=true".into(),
        ]
        .iter()
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .chain(["--store".to_string(), store.clone()])
        .collect();
        in_netns(&ns, move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Daybreak::spawn_with(&a, &rdir, None)
        })
    };
    let mut replicas: Vec<Daybreak> = (0..3).map(|i| start(i, &layout)).collect();
    for r in &mut replicas {
        r.wait_for(" ready\n", Duration::from_secs(90));
    }
    let logs: Vec<String> = replicas.iter().map(Daybreak::log_text).collect();
    let built = logs.iter().filter(|l| l.contains("image built")).count();
    let fetched = logs
        .iter()
        .filter(|l| l.contains("artifacts fetched from another replica"))
        .count();
    assert_eq!((built, fetched), (1, 2), "{logs:#?}");
    // The same bytes everywhere, as the builder published them.
    let sums: Vec<Vec<String>> = (0..3)
        .map(|i| entry_sums(&dir.join(format!("r{i}/state")), &key))
        .collect();
    assert!(sums.iter().all(|s| *s == sums[0]), "{sums:?}");
    let published = etcd[0]
        .ctl(&[
            "get",
            "--print-value-only",
            &format!("/builds/artifacts/{key}"),
        ])
        .unwrap();
    for s in &sums[0] {
        let hex = s.trim_start_matches("sha256:");
        assert!(published.contains(hex), "{published}");
    }
    // Every member lists what it holds.
    waits_for(
        "every member listing the image",
        Duration::from_secs(5),
        || {
            let members = etcd[0]
                .ctl(&["get", "--prefix", "--print-value-only", "/builds/members/"])
                .unwrap();
            members.matches(key.as_str()).count() == 3
        },
    );
    // What the route hands out: an entry's own files, nothing else.
    let client = sw_ns(&sw, "r2");
    let url = format!("{}/_/artifacts/{key}/kernel", bases[0]);
    let got = in_netns(&client, move || {
        output_within(
            Command::new("curl").args(["-s", "-r", "10-19", "-w", "%{http_code}", &url]),
            Duration::from_secs(15),
        )
        .stdout
    });
    assert_eq!(got.len(), 13, "ten bytes and 206: {got:?}");
    assert!(got.ends_with(b"206"), "{got:?}");
    for bad in [
        format!("_/artifacts/{key}/meta.json"),
        format!("_/artifacts/{key}/../../../etc/passwd"),
        "_/artifacts/..%2f..%2fetc/passwd".to_string(),
        format!("_/artifacts/sha256-{}/kernel", "0".repeat(64)),
    ] {
        let (code, body) = fetch(&client, &format!("{}/{bad}", bases[0]));
        assert_eq!(code, 404, "{bad}: {body}");
    }

    // A turn held by a replica that died (its lease lapses): the next one waits, then builds.
    let layout2 = dir.join("layout2");
    let digest2 = common::oci::write_layout(&layout2, "v1", &[small_image(7)])[0].clone();
    let key2 = format!("sha256-{}", digest2.trim_start_matches("sha256:"));
    let lease = etcd[0].ctl(&["lease", "grant", "4"]).unwrap();
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease ID")
        .to_string();
    etcd[0]
        .ctl(&[
            "put",
            &format!("--lease={id}"),
            &format!("/builds/builds/{key2}"),
            "gone-000000",
        ])
        .unwrap();
    drop(replicas.remove(2));
    let t = Instant::now();
    let mut r2 = start(2, &layout2);
    r2.wait_for("another replica is building", Duration::from_secs(30));
    r2.wait_for(" ready\n", Duration::from_secs(90));
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(r2.log_text().contains("image built"), "{}", r2.log_text());
    drop(r2);
    drop(replicas);
    drop(etcd);
    let _ = std::fs::remove_dir_all(dir);
}

/// The namespace of a plugged name.
fn sw_ns(sw: &Switch, name: &str) -> String {
    format!("{}{name}", sw.id)
}

/// A tiny HTTP server on `listener` answering each path of `pages` with its body, 404 else.
fn serve_pages(listener: std::net::TcpListener, pages: Vec<(String, String)>) {
    use std::io::{BufRead, Write};
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut s) = conn else { continue };
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let answer = match pages.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .into(),
            };
            let _ = s.write_all(answer.as_bytes());
        }
    });
}

/// Item: `--store` on `boot` and `api` (pixiecore's commands): two `daybreak boot` replicas on
/// one etcd remember the same machines (one boots through the first, the second lists it), and
/// two `daybreak api` replicas share the URL key: a file URL one hands out opens on the other.
#[test]
fn pixiecore_boot_and_api_replicas_share_a_store() {
    if !require(true, &["ip", "curl", "etcd", "etcdctl"]) {
        return;
    }
    let Some((mut sw, etcd, store)) = one_member_etcd("pb", 82, "pixie") else {
        return;
    };
    let machine = sw.plug("m", Ipv4Addr::new(10, 82, 0, 10), Some(MAC));
    let dir = tempdir("cluster-pixie");
    for f in ["vmlinuz", "initrd"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let ns: Vec<String> = (0..2u8)
        .map(|i| sw.plug(&format!("r{i}"), Ipv4Addr::new(10, 82, 0, 2 + i), None))
        .collect();
    let base = |i: usize| format!("http://10.82.0.{}:8090", 2 + i);
    let start = |i: usize, args: Vec<String>| {
        let rdir = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let mut args = args;
        args.extend(
            [
                "-p",
                "8090",
                "--store",
                &store,
                "--state-dir",
                &rdir.join("state").to_string_lossy(),
            ]
            .map(String::from),
        );
        in_netns(&ns[i], move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Daybreak::start(&a, &rdir)
        })
    };

    // `daybreak boot`: a machine booted through one replica is listed by the other.
    let boot = |i| {
        start(
            i,
            ["boot", "../vmlinuz", "../initrd", "--cmdline", "quiet"]
                .map(String::from)
                .to_vec(),
        )
    };
    let replicas = vec![boot(0), boot(1)];
    let (code, script) = fetch(&machine, &format!("{}/_/ipxe?arch=0&mac={MAC}", base(0)));
    assert!(code == 200 && script.contains("boot kernel"), "{script}");
    let on_r1 = ns[1].clone();
    waits_for(
        "the machine on the other replica",
        Duration::from_secs(3),
        || {
            let ns = on_r1.clone();
            in_netns(&ns, || {
                common::get_text("http://127.0.0.1:8091/api/machines")
            })
            .contains(MAC)
        },
    );
    drop(replicas);

    // `daybreak api`: a file URL one replica hands out opens on the other.
    let api = sw.plug("api", Ipv4Addr::new(10, 82, 0, 30), None);
    let listener = in_netns(&api, || {
        std::net::TcpListener::bind("10.82.0.30:9000").unwrap()
    });
    serve_pages(
        listener,
        vec![
            (
                format!("/v1/boot/{MAC}"),
                r#"{"kernel":"http://10.82.0.30:9000/k","initrd":["http://10.82.0.30:9000/i"],"cmdline":"quiet"}"#.into(),
            ),
            ("/k".into(), "THE-KERNEL".into()),
            ("/i".into(), "THE-INITRD".into()),
        ],
    );
    let api_replica = |i| {
        start(
            i,
            ["api", "http://10.82.0.30:9000"].map(String::from).to_vec(),
        )
    };
    let replicas = vec![api_replica(0), api_replica(1)];
    let mut script = String::new();
    waits_for("the API's answer", Duration::from_secs(5), || {
        let (code, s) = fetch(&machine, &format!("{}/_/ipxe?arch=0&mac={MAC}", base(0)));
        script = s;
        code == 200 && script.contains("kernel")
    });
    let kernel = script
        .split_whitespace()
        .find(|w| w.starts_with(&base(0)) && !w.contains("/_/ipxe"))
        .unwrap_or_else(|| panic!("a file URL in {script}"))
        .to_string();
    let there = kernel.replace(&base(0), &base(1));
    let (code, body) = fetch(&machine, &there);
    assert_eq!((code, body.as_str()), (200, "THE-KERNEL"), "{there}");
    drop(replicas);
    drop(etcd);
    let _ = std::fs::remove_dir_all(dir);
}

/// Item: `kill -9` of a replica mid-boot: a machine whose script and cloud-config came from
/// replica 0 goes on with replica 1 once replica 0 is killed (its files, the cloud-config URL
/// replica 0 made, byte for byte, and the install callback), and is installed on every replica.
#[test]
fn a_replica_killed_mid_boot_loses_nothing_of_the_boot() {
    if !require(true, &["ip", "curl", "etcd", "etcdctl"]) {
        return;
    }
    let Some((mut sw, etcd, store)) = one_member_etcd("mk", 83, "midboot") else {
        return;
    };
    let machine = sw.plug("m", Ipv4Addr::new(10, 83, 0, 10), Some(MAC));
    let dir = tempdir("cluster-midboot");
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f.repeat(1000)).unwrap();
    }
    std::fs::write(
        dir.join("machines.yaml"),
        format!(
            "- mac: {MAC}\n  hostname: edge-2\n  cloud_config: |\n    #cloud-config\n    done: [[[ .daybreak.installed_url ]]]\n"
        ),
    )
    .unwrap();
    let mut replicas = Vec::new();
    let mut bases = Vec::new();
    for i in 0..2u8 {
        let addr = Ipv4Addr::new(10, 83, 0, 2 + i);
        let ns = sw.plug(&format!("r{i}"), addr, None);
        let rdir = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let mut args: Vec<String> = [
            "serve",
            "--kernel",
            "../vmlinuz",
            "--initrd",
            "../initrd",
            "--rootfs",
            "../rootfs.squashfs",
            "--no-proxy-dhcp",
            "--store",
            &store,
            "--state-dir",
            &rdir.join("state").to_string_lossy(),
        ]
        .map(String::from)
        .to_vec();
        if i == 0 {
            args.extend(["--machines".into(), "../machines.yaml".into()]);
        }
        let d = rdir.clone();
        replicas.push(Some(in_netns(&ns, move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Daybreak::start(&a, &d)
        })));
        bases.push(format!("http://{addr}:8090"));
    }
    let path = |url: &str| url[url.find("/_/").expect("a per-machine URL")..].to_string();
    let (code, script) = fetch(&machine, &format!("{}/_/ipxe?arch=0&mac={MAC}", bases[0]));
    assert!(code == 200 && script.contains("boot kernel"), "{script}");
    let config_url = path(&common::config_url(&script));
    let (code, config) = fetch(&machine, &format!("{}{config_url}", bases[0]));
    assert_eq!(code, 200, "{config}");
    let done = path(
        config
            .lines()
            .find_map(|l| l.strip_prefix("done: "))
            .expect("the install callback"),
    );

    // Replica 0 dies mid-boot: before the kernel, the root and the install call, once its
    // boot's grant reached the store (written a few ms after the script: a replica that dies
    // inside that window leaves a machine whose cloud-config URL opens nowhere; it boots again).
    let key = format!("/midboot/machines/{}", MAC.replace(':', ""));
    waits_for("the boot's grant in etcd", Duration::from_secs(5), || {
        etcd[0]
            .ctl(&["get", "--print-value-only", &key])
            .is_ok_and(|v| v.contains("\"grant\""))
    });
    let mut r0 = replicas[0].take().unwrap();
    r0.child.kill().unwrap();
    r0.child.wait().unwrap();
    for (name, file) in [
        ("kernel", "vmlinuz"),
        ("initrd0", "initrd"),
        ("rootfs.squashfs", "rootfs.squashfs"),
    ] {
        let got = fetch(&machine, &format!("{}/{name}", bases[1]));
        assert_eq!(got, (200, file.repeat(1000)), "{name} from replica 1");
    }
    assert_eq!(
        fetch(&machine, &format!("{}{config_url}", bases[1])),
        (200, config.replace(&bases[0], &bases[1])),
        "replica 0's cloud-config URL on replica 1: the same, but for its own address"
    );
    assert_eq!(
        fetch(&machine, &format!("{}{done}", bases[1])),
        (200, "installed\n".to_string())
    );
    let (_, s) = fetch(&machine, &format!("{}/_/ipxe?arch=0&mac={MAC}", bases[1]));
    assert!(s.contains("sanboot"), "{s}");
    let record = etcd[0].ctl(&["get", "--print-value-only", &key]).unwrap();
    assert!(record.contains("\"installed_at\""), "{record}");
    drop(replicas);
    drop(etcd);
    let _ = std::fs::remove_dir_all(dir);
}
