//! The admin surface over real sockets: the status page, `/api/machines` and `/metrics` on a
//! listener of their own (never the boot port), a token for an address others reach, checked
//! whether a client sends it as a bearer token or as HTTP Basic, and a `Host` check against DNS
//! rebinding.

mod common;

use std::time::Duration;

use common::{free_tcp_port, output_within, require, tempdir, Daybreak, BIN};

/// `curl ARGS URL`: the status code and the response headers and body.
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let o = output_within(
        std::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url),
        Duration::from_secs(20),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (text, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), text.to_string())
}

fn files(tag: &str) -> std::path::PathBuf {
    let dir = tempdir(tag);
    std::fs::write(dir.join("vmlinuz"), "kernel").unwrap();
    dir
}

fn serve(dir: &std::path::Path, extra: &[&str]) -> (Daybreak, u16) {
    let state = dir.join("state");
    let mut args = vec![
        "serve",
        "--kernel",
        "vmlinuz",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend(extra);
    let (d, http, _) = Daybreak::start_loopback(&args, dir);
    (d, http)
}

#[test]
fn the_status_page_api_and_metrics_are_on_the_admin_listener_not_the_boot_port() {
    if !require(false, &["curl"]) {
        return;
    }
    let dir = files("admin-apart");
    let (d, http) = serve(&dir, &[]);
    let boot = format!("http://127.0.0.1:{http}");
    let admin = d.admin();
    for path in [
        "/",
        "/status",
        "/metrics",
        "/api/machines",
        "/api/machines/52:54:00:00:00:01",
    ] {
        assert_eq!(
            curl(&[], &format!("{boot}{path}")).0,
            404,
            "boot port {path}"
        );
    }
    let (code, page) = curl(&[], &format!("{admin}/"));
    assert!(code == 200 && page.contains("Daybreak: machines"), "{page}");
    let (code, list) = curl(&[], &format!("{admin}/api/machines?limit=5"));
    assert!(code == 200 && list.contains("\"total\":0"), "{list}");
    let (code, metrics) = curl(&[], &format!("{admin}/metrics"));
    assert!(code == 200 && metrics.contains("daybreak_"), "{metrics}");
    assert!(d.admin().starts_with("http://127.0.0.1:"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `daybreak serve --kernel vmlinuz --no-proxy-dhcp ARGS` in `dir`, expected to refuse to
/// start: its error output.
fn refused(dir: &std::path::Path, args: &[&str]) -> String {
    let o = output_within(
        std::process::Command::new(BIN)
            .args(["serve", "--kernel", "vmlinuz", "--no-proxy-dhcp"])
            .args(args)
            .current_dir(dir),
        Duration::from_secs(20),
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "it started: {e}");
    e
}

#[test]
fn an_admin_address_others_reach_needs_a_token() {
    let dir = files("admin-needs-token");
    let port = free_tcp_port().to_string();
    let e = refused(&dir, &["--http-port", &port, "--admin-listen", "0.0.0.0:0"]);
    assert!(
        e.contains("--admin-listen 0.0.0.0:0") && e.contains("--admin-token-file"),
        "{e}"
    );
    std::fs::write(dir.join("short"), "abc\n").unwrap();
    let e = refused(
        &dir,
        &["--admin-listen", "0.0.0.0:0", "--admin-token-file", "short"],
    );
    assert!(e.contains("at least 16"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_admin_token_is_asked_for_and_checked() {
    if !require(false, &["curl"]) {
        return;
    }
    let dir = files("admin-token");
    let token = dir.join("token");
    std::fs::write(&token, "correct-horse-battery-staple\n").unwrap();
    let (d, _) = serve(&dir, &["--admin-token-file", token.to_str().unwrap()]);
    let metrics = format!("{}/metrics", d.admin());
    let (code, head) = curl(&[], &metrics);
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    for wrong in [
        &["-H", "Authorization: Bearer correct-horse-battery-stapl"][..],
        &["-u", "admin:wrong"][..],
        &["-H", "Authorization: Basic !!!"][..],
    ] {
        assert_eq!(curl(wrong, &metrics).0, 401, "{wrong:?}");
    }
    assert_eq!(
        curl(
            &["-H", "Authorization: Bearer correct-horse-battery-staple"],
            &metrics
        )
        .0,
        200
    );
    // What a browser sends after asking: Basic, any user.
    assert_eq!(
        curl(&["-u", "ops:correct-horse-battery-staple"], &metrics).0,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_web_page_cannot_read_the_api_through_a_name_pointed_at_this_host() {
    if !require(false, &["curl"]) {
        return;
    }
    let dir = files("admin-host");
    let (d, _) = serve(&dir, &["--admin-host", "boot.lan"]);
    let api = format!("{}/api/machines", d.admin());
    // DNS rebinding: the browser sends the attacker's name as the Host.
    for host in [
        "attacker.example",
        "attacker.example:8091",
        "127.0.0.1.nip.io",
    ] {
        let (code, _) = curl(&["-H", &format!("Host: {host}")], &api);
        assert_eq!(code, 403, "{host}");
    }
    for host in ["boot.lan:8091", "localhost", "127.0.0.1:8091"] {
        let (code, _) = curl(&["-H", &format!("Host: {host}")], &api);
        assert_eq!(code, 200, "{host}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An open status page follows the machines by server-sent events: the list at once, then again
/// only when it changed (`daybreak machines forget` took a machine out of the store), never the
/// same list twice.
#[test]
fn open_pages_follow_the_machines_by_server_sent_events() {
    if !require(false, &["curl"]) {
        return;
    }
    let dir = files("admin-events");
    let records = dir.join("state/machines");
    std::fs::create_dir_all(&records).unwrap();
    for d in [&dir.join("state"), &records] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    std::fs::write(
        records.join("525400000002.json"),
        r#"{"mac":"52:54:00:00:00:02","first_seen":1796000000,"last_seen":1796000000,"boots":1}"#,
    )
    .unwrap();
    let (d, _) = serve(&dir, &[]);
    let url = format!("{}/api/machines/events", d.admin());
    let follower = std::thread::spawn(move || {
        let o = output_within(
            std::process::Command::new("curl").args(["-sN", "--max-time", "7", &url]),
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_millis(2500));
    let state = dir.join("state");
    let forgot = output_within(
        std::process::Command::new(BIN).args([
            "machines",
            "forget",
            "52:54:00:00:00:02",
            "--state-dir",
            state.to_str().unwrap(),
        ]),
        Duration::from_secs(20),
    );
    assert!(forgot.status.success(), "{forgot:?}");
    let events = follower.join().unwrap();
    let data: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(
        data.len() >= 2 && data.len() <= 3,
        "the list at once and when it changed, not every second: {events}"
    );
    assert!(
        data[0].contains(r#""full":true"#) && data[0].contains("52:54:00:00:00:02"),
        "{events}"
    );
    // Then only what changed: the machine gone, no list.
    let last = data.last().unwrap();
    assert!(
        last.contains(r#""full":false"#)
            && last.contains(r#""total":0"#)
            && last.contains(r#""machines":[],"gone":["52:54:00:00:00:02"]"#),
        "{events}"
    );
    assert!(
        data.windows(2).all(|w| w[0] != w[1]),
        "the same list twice: {events}"
    );
    assert!(events.lines().filter(|l| l.starts_with("id: ")).count() == data.len());
    let _ = std::fs::remove_dir_all(&dir);
}
