//! Two Daybreak processes on one state directory (replicas on one volume, or containers where
//! both are PID 1): builds of one image are serialised and done once, nothing half-built is
//! ever taken for whole, and each server serves its own cloud-config.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::oci::{self, Comp, Image, E};
use common::{config_url, free_tcp_port, get_text, output_within, require, tempdir, Daybreak, BIN};
use testkit::pattern;

fn image() -> Image {
    Image {
        arch: "amd64",
        layers: vec![(
            vec![
                E::File("boot/vmlinuz-6.1.0-1-amd64", 0o644, 0, pattern(300_000, 1)),
                E::File(
                    "boot/initrd.img-6.1.0-1-amd64",
                    0o644,
                    0,
                    pattern(200_000, 2),
                ),
                // Big enough that two builds overlap.
                E::File("usr/share/big", 0o644, 0, pattern(40_000_000, 3)),
            ],
            Comp::Gzip,
        )],
    }
}

/// Entries and leftovers of the store's artifacts directory.
fn artifacts(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_builds_of_one_image_in_separate_pid_namespaces_make_one_entry() {
    if !require(true, &["unshare"]) {
        return;
    }
    let work = tempdir("shared-build");
    let layout = work.join("layout");
    oci::write_layout(&layout, "v1", &[image()]);
    let state = work.join("state");
    // Both are PID 1 in their own PID namespace: process IDs tell them apart no more.
    let spawn = |out: &str| {
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(BIN)
            .args(["netboot", layout.to_str().unwrap()])
            .arg(work.join(out))
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("out-a"), spawn("out-b"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ea, eb) = (
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr),
    );
    assert!(a.status.success() && b.status.success(), "{ea}\n---\n{eb}");
    let names = artifacts(&state);
    assert_eq!(names.len(), 1, "one entry, no leftovers: {names:?}");
    let built = [&ea, &eb]
        .iter()
        .filter(|e| e.contains("waiting for it") || e.contains("already built"))
        .count();
    assert!(
        built >= 1,
        "the second reused the first's build:\n{ea}\n---\n{eb}"
    );
    for out in ["out-a", "out-b"] {
        let squash = work.join(out).join("kairos.squashfs");
        let entry = state
            .join("artifacts")
            .join(&names[0])
            .join("rootfs.squashfs");
        assert_eq!(
            std::fs::read(&squash).unwrap(),
            std::fs::read(&entry).unwrap(),
            "{out} has the whole squashfs"
        );
    }
}

#[test]
fn a_second_instance_does_not_change_the_first_ones_cloud_config() {
    if !require(true, &["curl"]) {
        return;
    }
    let work = tempdir("shared-cc");
    let layout = work.join("layout");
    oci::write_layout(&layout, "v1", &[image()]);
    let state = work.join("state");
    let (cc_a, cc_b) = (work.join("a.yaml"), work.join("b.yaml"));
    std::fs::write(&cc_a, "#cloud-config\ntoken: [[[ .t ]]]\n").unwrap();
    std::fs::write(&cc_b, "#cloud-config\ntoken: other-cluster\n").unwrap();
    let port = free_tcp_port();
    let set = |k: &str, v: &str| ["--set".to_string(), format!("{k}={v}")];
    let mut args: Vec<String> = vec!["--cloud-config".into(), cc_a.display().to_string()];
    for (k, v) in [
        ("container_image", layout.display().to_string()),
        ("state_dir", state.display().to_string()),
        ("t", "cluster-a".into()),
        ("disable_http_server", "true".into()),
        ("netboot.proxy_dhcp", "false".into()),
        ("netboot_listen_addr", "127.0.0.1".into()),
        ("netboot_http_port", port.to_string()),
    ] {
        args.extend(set(k, &v));
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut d = Daybreak::start(&a, &work);
    d.wait_for(" ready\n", Duration::from_secs(60));

    // B: same state directory, another cloud-config; builds (from the store) and exits.
    let o = output_within(
        Command::new(BIN)
            .args(["--cloud-config"])
            .arg(&cc_b)
            .args(set("container_image", &layout.display().to_string()))
            .args(set("state_dir", &state.display().to_string()))
            .args(set("disable_netboot", "true"))
            .args(set("disable_http_server", "true")),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let script = get_text(&format!("http://127.0.0.1:{port}/boot.ipxe"));
    let url = config_url(&script);
    assert_eq!(get_text(&url), "#cloud-config\ntoken: cluster-a\n");
    assert!(!state.join("cloud-config.yaml").exists());
    d.terminate(Duration::from_secs(10));
}
