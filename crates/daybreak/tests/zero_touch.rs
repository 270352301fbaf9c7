//! The default command (`daybreak [CONFIG] --set … --cloud-config …`) without firmware: settings
//! from a file, a URL and --set, the cloud-config template, every error of the settings, the
//! artifact file server (which never hands out the cloud-config), and a second start of the same
//! image from the store. QEMU boots are in netboot_qemu.rs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::oci::{self, Comp, Image, Registry, E};
use common::{config_url, free_tcp_port, get_text, output_within, require, tempdir, Daybreak, BIN};
use testkit::pattern;

fn image() -> Image {
    Image {
        arch: "amd64",
        layers: vec![
            (
                vec![
                    E::File("boot/vmlinuz-6.1.0-1-amd64", 0o644, 0, pattern(400_000, 1)),
                    E::File(
                        "boot/initrd.img-6.1.0-1-amd64",
                        0o644,
                        0,
                        pattern(300_000, 2),
                    ),
                ],
                Comp::Gzip,
            ),
            (
                vec![E::File("etc/marker", 0o644, 0, b"zero touch".to_vec())],
                Comp::Gzip,
            ),
        ],
    }
}

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    let o = match stdin {
        Some(text) => {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
        None => output_within(cmd.stdin(Stdio::null()), Duration::from_secs(60)),
    };
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Serves each (path, body) over HTTP on loopback, `n` requests in all; other paths get 404.
/// Returns the base URL.
fn serve_files(routes: Vec<(String, Vec<u8>)>, n: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("");
            match routes.iter().find(|(p, _)| p == path) {
                Some((_, body)) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    base
}

/// `--set KEY=VALUE` for each pair.
fn sets(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
        .collect()
}

/// The default command with only the artifact file server (on a free loopback port), once
/// ready: `args` name the source and anything else.
fn artifact_server(work: &Path, state: &Path, mut args: Vec<String>) -> (Daybreak, u16) {
    let port = free_tcp_port();
    args.extend(sets(&[
        ("state_dir", state.display().to_string()),
        ("disable_netboot", "true".into()),
        ("listen_addr", format!("127.0.0.1:{port}")),
    ]));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut d = Daybreak::start(&a, work);
    d.wait_for(" ready", Duration::from_secs(30));
    (d, port)
}

/// Starts the default command with `args` and its netboot servers on loopback (no ProxyDHCP,
/// no artifact server), and returns the cloud-config a booting machine gets: the `config_url=`
/// of the boot script, fetched. TFTP's port 69 needs root; only this helper binds it here.
fn rendered_cloud_config(work: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let addr = "127.0.0.1".to_string();
    let port = free_tcp_port();
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(sets(&[
        ("disable_netboot", "false".into()),
        ("disable_http_server", "true".into()),
        ("netboot.proxy_dhcp", "false".into()),
        ("netboot_listen_addr", addr.clone()),
        ("netboot_http_port", port.to_string()),
    ]));
    let log = work.join(format!("rendered-{n}.log"));
    let mut child = Command::new(BIN)
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let mut d = Daybreak { child, log };
    d.wait_for(" ready\n", Duration::from_secs(60));
    let script = get_text(&format!("http://{addr}:{port}/boot.ipxe"));
    let url = config_url(&script);
    let body = get_text(&url);
    for guess in ["/cloud-config.yaml", "/_/file?name=cloud-config.yaml"] {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{addr}:{port}{guess}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "404", "{guess}");
    }
    d.terminate(Duration::from_secs(15));
    body
}

fn layout(work: &Path) -> String {
    let dir = work.join("layout");
    oci::write_layout(&dir, "v1", &[image()]);
    dir.display().to_string()
}

#[test]
fn settings_from_file_url_and_set_with_the_template_rendered() {
    let work = tempdir("zt-config");
    let img = layout(&work);
    let cc = work.join("cc.yaml");
    std::fs::write(
        &cc,
        "#cloud-config\nusers:\n- name: kairos\n  passwd: [[[.kairos.password]]]\nhostname: \"[[[ .nothing.here ]]]\"\n",
    )
    .unwrap();
    let yaml = |state: &Path| {
        format!(
            "container_image: {img}\nstate_dir: {}\ndisable_netboot: true\ndisable_http_server: true\nkairos:\n  password: from-file\n",
            state.display()
        )
    };
    // By path, with --set winning over the file.
    let file_state = work.join("state-file");
    let cfg = work.join("config.yaml");
    std::fs::write(&cfg, yaml(&file_state)).unwrap();
    let (ok, err) = run(
        &[
            cfg.to_str().unwrap(),
            "--set",
            "kairos.password=from-set",
            "--cloud-config",
            cc.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("image built"), "{err}");
    assert!(
        !file_state.join("cloud-config.yaml").exists(),
        "the rendered cloud-config never touches the disk"
    );
    if require(true, &["curl"]) {
        // --set-file (a secret kept off the command line) wins over --set.
        let pw = work.join("pw");
        std::fs::write(&pw, "from-set-file\n").unwrap();
        let set_file = format!("kairos.password={}", pw.display());
        let served = rendered_cloud_config(
            &work,
            &[
                cfg.to_str().unwrap(),
                "--set",
                "kairos.password=from-set",
                "--set-file",
                &set_file,
                "--cloud-config",
                cc.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(
            served,
            "#cloud-config\nusers:\n- name: kairos\n  passwd: from-set-file\nhostname: \"\"\n"
        );
    }

    // By URL, with the cloud-config on stdin; flags after the positional argument.
    let url_state = work.join("state-url");
    let url = format!(
        "{}/config.yaml",
        serve_files(
            vec![("/config.yaml".into(), yaml(&url_state).into_bytes())],
            2
        )
    );
    let (ok, err) = run(
        &["--cloud-config", "-", &url, "--set", "insecure=true"],
        Some("#cloud-config\npw: [[[.kairos.password]]]\n"),
    );
    assert!(ok, "{err}");
    if require(true, &["curl"]) {
        let served = rendered_cloud_config(
            &work,
            &["--cloud-config", "-", &url, "--set", "insecure=true"],
            Some("#cloud-config\npw: [[[.kairos.password]]]\n"),
        );
        assert_eq!(served, "#cloud-config\npw: from-file\n");
    }
    // Relative state_dir: from the working directory.
    let (ok, err) = {
        let o = output_within(
            Command::new(BIN)
                .current_dir(&work)
                .args(["--set", &format!("container_image={img}")])
                .args([
                    "--set",
                    "state_dir=rel-state",
                    "--set",
                    "disable_netboot=true",
                ])
                .args(["--set", "disable_http_server=true"]),
            Duration::from_secs(60),
        );
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(ok && work.join("rel-state/artifacts").is_dir(), "{err}");
}

#[test]
fn every_settings_error_says_what_to_do() {
    let work = tempdir("zt-errors");
    let img = layout(&work);
    let state = work.join("state");
    let st = format!("state_dir={}", state.display());
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--set".to_string(),
            format!("container_image={img}"),
            "--set".into(),
            st.clone(),
            "--set".into(),
            "disable_netboot=true".into(),
            "--set".into(),
            "disable_http_server=true".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, Option<&str>, &str)> = vec![
        (
            vec!["--set".into(), "container_image".into()],
            None,
            "has no '='",
        ),
        (vec!["--set".into(), st.clone()], None, "nothing to boot"),
        (
            base(&["--set", "netboot_http_port=http"]),
            None,
            "not a port number",
        ),
        (
            base(&["--set", "listen_addr=nowhere"]),
            None,
            "not ADDRESS:PORT",
        ),
        (base(&["--set", "arch=sparc"]), None, "use amd64 or arm64"),
        (
            base(&["--set", "disable_netboot=maybe"]),
            None,
            "must be true or false",
        ),
        (base(&["--cloud-config", "-"]), Some("  \n"), "is empty"),
        (
            base(&["--cloud-config", "-"]),
            Some("a: [[[ .x "),
            "never closed",
        ),
        (
            base(&["--cloud-config", "/nonexistent/cc.yaml"]),
            None,
            "/nonexistent/cc.yaml",
        ),
        (
            vec!["/nonexistent/config.yaml".into()],
            None,
            "cannot read the config file",
        ),
        (base(&["--set", "release_version=v3.7.2"]), None, ""),
    ];
    for (args, stdin, want) in cases {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (ok, err) = run(&a, stdin);
        if want.is_empty() {
            // container_image wins over release keys.
            assert!(ok, "{args:?}: {err}");
            continue;
        }
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
    // A config that is not a mapping, and one that is not YAML.
    let bad = work.join("bad.yaml");
    std::fs::write(&bad, "- a\n- b\n").unwrap();
    let (ok, err) = run(&[bad.to_str().unwrap()], None);
    assert!(!ok && err.contains("must be a YAML mapping"), "{err}");
    std::fs::write(&bad, "a: [\n").unwrap();
    let (ok, err) = run(&[bad.to_str().unwrap()], None);
    assert!(!ok && err.contains("not valid YAML"), "{err}");
    // The release keys without container_image: missing ones are named.
    let (ok, err) = run(&["--set", "release_version=v3.7.2", "--set", &st], None);
    assert!(
        !ok && err.contains("release key repository is empty"),
        "{err}"
    );
    // Unknown keys warn and name the closest; template keys do not warn.
    let (ok, err) = run(
        &base(&[
            "--set",
            "netboot_http_prot=1",
            "--set",
            "kairos.password=x",
            "--cloud-config",
            "-",
        ])
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>(),
        Some("#cloud-config\np: [[[.kairos.password]]]\n"),
    );
    assert!(
        ok && err.contains("did you mean \"netboot_http_port\""),
        "{err}"
    );
    assert!(!err.contains("\"kairos\""), "{err}");
}

#[test]
fn artifact_server_serves_artifacts_and_never_the_cloud_config() {
    if !require(false, &["curl"]) {
        return;
    }
    let work = tempdir("zt-files");
    let img = layout(&work);
    let state = work.join("state");
    let cc = work.join("cc.yaml");
    std::fs::write(&cc, "#cloud-config\npassword: secret\n").unwrap();
    let mut args = sets(&[("container_image", img)]);
    args.extend(["--cloud-config".into(), cc.display().to_string()]);
    let (mut d, port) = artifact_server(&work, &state, args.clone());
    let get = |path: &str| {
        let o = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        let mut body = o.stdout;
        let code_at = body.iter().rposition(|&b| b == b'\n').unwrap();
        let code = String::from_utf8_lossy(&body[code_at + 1..]).into_owned();
        body.truncate(code_at);
        (code, body)
    };
    assert_eq!(get("/kernel"), ("200".into(), pattern(400_000, 1)));
    assert_eq!(get("/initrd0").1, pattern(300_000, 2));
    let (code, index) = get("/");
    assert_eq!(code, "200");
    let index = String::from_utf8_lossy(&index).into_owned();
    assert!(
        index.contains("kernel") && index.contains("rootfs.squashfs"),
        "{index}"
    );
    assert!(!index.contains("cloud-config"), "{index}");
    for p in [
        "/cloud-config.yaml",
        "/_/file?name=cloud-config.yaml",
        "/../cloud-config.yaml",
    ] {
        assert_eq!(get(p).0, "404", "{p}");
    }
    d.terminate(Duration::from_secs(15));

    // A second start of the same image comes from the store.
    let (mut d, _) = artifact_server(&work, &state, args);
    let log = d.log_text();
    assert!(log.contains("built before"), "{log}");
    d.terminate(Duration::from_secs(15));
}

#[test]
fn a_registry_image_second_start_is_from_the_store() {
    if !require(true, &["docker-registry", "skopeo"]) {
        return;
    }
    let work = tempdir("zt-reg");
    let dir = work.join("layout");
    oci::write_layout(&dir, "v1", &[image()]);
    let reg = Registry::start(&work.join("reg"), None);
    let image = reg.push(&dir, "v1", "kairos/zt");
    let state = work.join("state");
    for round in 0..2 {
        let (ok, err) = run(
            &[
                "--set",
                &format!("container_image={image}"),
                "--set",
                &format!("state_dir={}", state.display()),
                "--set",
                "disable_netboot=true",
                "--set",
                "disable_http_server=true",
            ],
            None,
        );
        assert!(ok, "{err}");
        let want = if round == 0 {
            "image built"
        } else {
            "built before"
        };
        assert!(err.contains(want), "round {round}: {err}");
    }
}

/// A Kairos-layout ISO made by xorriso: (path, kernel, initrd, squashfs).
fn kairos_iso(work: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>, Vec<u8>) {
    let tree = work.join("iso-tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    let (k, i, r) = (
        pattern(200_000, 7),
        pattern(150_000, 8),
        pattern(900_000, 9),
    );
    std::fs::write(tree.join("boot/kernel"), &k).unwrap();
    std::fs::write(tree.join("boot/initrd"), &i).unwrap();
    std::fs::write(tree.join("rootfs.squashfs"), &r).unwrap();
    let iso = work.join("kairos.iso");
    testkit::mkisofs(&tree, &iso, &["-R", "-J"]);
    (iso, k, i, r)
}

fn curl(url: &str) -> Vec<u8> {
    let o = Command::new("curl").args(["-sf", url]).output().unwrap();
    assert!(o.status.success(), "GET {url} failed");
    o.stdout
}

#[test]
fn release_keys_and_iso_images_are_served_from_the_iso() {
    if !require(false, &["xorriso", "curl"]) {
        return;
    }
    let work = tempdir("zt-iso");
    let (iso, k, i, r) = kairos_iso(&work);
    let bytes = std::fs::read(&iso).unwrap();
    let name = "kairos-ubuntu-24.04-core-amd64-generic-v3.7.2";
    let path = format!("/kairos-io/kairos/releases/download/v3.7.2/{name}.iso");
    let base = serve_files(vec![(path, bytes)], 4);
    let state = work.join("state");
    let release = [
        "--set",
        "repository=kairos-io/kairos",
        "--set",
        "release_version=v3.7.2",
        "--set",
        "flavor=ubuntu",
        "--set",
        "flavor_release=24.04",
        "--set",
        "artifact_version=v3.7.2",
    ];
    let mut args: Vec<String> = release.iter().map(|s| s.to_string()).collect();
    args.extend(sets(&[("release_base_url", base)]));
    let (mut d, port) = artifact_server(&work, &state, args);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert!(curl(&url("/kernel")) == k);
    assert!(curl(&url("/initrd0")) == i);
    assert!(curl(&url("/rootfs.squashfs")) == r);
    // The whole ISO too, byte for byte (from the descriptor the plan holds).
    assert!(curl(&url(&format!("/{name}.iso"))) == std::fs::read(&iso).unwrap());
    d.terminate(Duration::from_secs(15));

    // container_image may be an ISO too.
    let args = sets(&[("container_image", iso.display().to_string())]);
    let (mut d, port) = artifact_server(&work, &state, args);
    assert!(curl(&format!("http://127.0.0.1:{port}/rootfs.squashfs")) == r);
    d.terminate(Duration::from_secs(15));
}

/// `start-pixie` given an ISO as SQUASHFS serves everything from it (in a private network
/// namespace, since start-pixie always binds the DHCP ports).
#[test]
fn start_pixie_serves_an_iso_in_place() {
    if !require(true, &["xorriso", "curl", "unshare", "ip"]) {
        return;
    }
    let work = tempdir("zt-pixie");
    let (iso, k, _, _) = kairos_iso(&work);
    let cc = work.join("cc.yaml");
    std::fs::write(&cc, "#cloud-config\n").unwrap();
    let port = free_tcp_port();
    let script = format!(
        "ip link set lo up; {BIN} start-pixie {cc} {iso} 127.0.0.1 {port} none none >{log} 2>&1 & pid=$!; \
         for i in $(seq 1 100); do grep -q ' ready' {log} && break; sleep 0.1; done; \
         curl -sf http://127.0.0.1:{port}/kernel > {out}; kill $pid; wait $pid",
        cc = cc.display(),
        iso = iso.display(),
        log = work.join("pixie.log").display(),
        out = work.join("kernel.out").display(),
    );
    let o = output_within(
        Command::new("unshare").args(["--net", "sh", "-c", &script]),
        Duration::from_secs(60),
    );
    let log = std::fs::read_to_string(work.join("pixie.log")).unwrap_or_default();
    assert!(o.status.success() || log.contains("ready"), "{log}");
    assert!(
        std::fs::read(work.join("kernel.out")).unwrap() == k,
        "{log}"
    );
    // pixiecore's line for it, which AuroraBoot's web UI shows.
    assert!(
        log.contains("[HTTP] Sent file \"kernel\" to 127.0.0.1:"),
        "{log}"
    );
}
