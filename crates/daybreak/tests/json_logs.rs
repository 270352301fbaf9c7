//! With `--log-format json`, every line a running Daybreak writes is one JSON object: what it
//! tells while it builds an image (the command's, or a machine profile's while it serves) goes
//! to the log, never to progress bars or plain lines that a log collector would choke on.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_tcp_port, get_text, require, tempdir, Daybreak, Lan};

/// A root filesystem with a kernel and an initrd in /boot: a `dir://` image.
fn tree(at: &Path) {
    std::fs::create_dir_all(at.join("boot")).unwrap();
    std::fs::create_dir_all(at.join("etc")).unwrap();
    std::fs::write(at.join("boot/vmlinuz-6.1.0"), testkit::pattern(8192, 1)).unwrap();
    std::fs::write(at.join("boot/initrd.img-6.1.0"), testkit::pattern(4096, 2)).unwrap();
    std::fs::write(at.join("etc/os-release"), "ID=test\n").unwrap();
}

/// Every line of `log` is a JSON object with a message (or fields).
fn all_json(log: &str) {
    assert!(!log.trim().is_empty(), "no log at all");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n--- the whole log:\n{log}"));
        assert!(v.is_object(), "{line}");
    }
}

#[test]
fn the_default_command_builds_its_image_in_json() {
    let dir = tempdir("json-default");
    tree(&dir.join("rootfs"));
    let port = free_tcp_port();
    let args = [
        "--log-format".to_string(),
        "json".into(),
        "--set".into(),
        format!("container_image=dir://{}", dir.join("rootfs").display()),
        "--set".into(),
        format!("state_dir={}", dir.join("state").display()),
        "--set".into(),
        "disable_netboot=true".into(),
        "--set".into(),
        format!("listen_addr=127.0.0.1:{port}"),
    ];
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = Daybreak::start(&a, &dir);
    d.wait_for("\"message\":\"ready\"", Duration::from_secs(60));
    let log = d.log_text();
    assert!(
        log.contains("building kernel, initrd and squashfs"),
        "{log}"
    );
    all_json(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_profiles_image_built_while_serving_is_logged_in_json() {
    if !require(true, &["ip", "curl"]) {
        return;
    }
    let lan = Lan::new("js", 2, "52:54:00:00:00:77");
    let dir = tempdir("json-serve");
    tree(&dir.join("rootfs"));
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    std::fs::write(
        dir.join("machines.yaml"),
        format!(
            "- mac: 52:54:00:00:00:77\n  container_image: dir://{}\n",
            dir.join("rootfs").display()
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let mut d = lan.start(
        &[
            "--log-format",
            "json",
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
            state.to_str().unwrap(),
        ],
        &dir,
    );
    // The machine asks; its image is built in the background while it is told to wait.
    let url = format!("{}/_/ipxe?arch=0&mac=52:54:00:00:00:77", lan.base());
    let ask = move || {
        let url = url.clone();
        lan.machine(move || get_text(&url))
    };
    let script = ask();
    assert!(script.contains("asking again"), "{script}");
    d.wait_for("\"message\":\"image ready\"", Duration::from_secs(60));
    let again = ask();
    assert!(again.contains("kernel --name kernel"), "{again}");
    all_json(&d.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}
