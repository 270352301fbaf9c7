//! The machine store across the process boundary: a machine's install callback is on disk before
//! it is answered, so a `kill -9` right after loses nothing; a restarted server boots the machine
//! from its disk; `daybreak machines` lists, shows, reinstalls (a running server follows within
//! seconds) and forgets it, and refuses what is not a MAC.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{config_url, get_text, output_within, require, tempdir, Lan, BIN};

const MAC: &str = "52:54:00:ab:cd:01";

fn machines(state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = output_within(
        Command::new(BIN)
            .arg("machines")
            .args(args)
            .arg("--state-dir")
            .arg(state),
        Duration::from_secs(20),
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The machine asks for its script (and whatever else `then` fetches) from its own address.
fn script(lan: &Lan) -> String {
    let url = format!("{}/_/ipxe?arch=0&mac={MAC}", lan.base());
    lan.machine(move || get_text(&url))
}

/// `url`, fetched by the machine.
fn fetch(lan: &Lan, url: &str) -> String {
    let url = url.to_string();
    lan.machine(move || get_text(&url))
}

#[test]
fn an_install_survives_kill_9_and_daybreak_machines_manages_it() {
    if !require(true, &["ip", "curl"]) {
        return;
    }
    let lan = Lan::new("mc", 1, MAC);
    let dir = tempdir("machines-cli");
    for f in ["vmlinuz", "initrd", "rootfs.squashfs"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    std::fs::write(
        dir.join("machines.yaml"),
        format!(
            "- mac: {MAC}\n  hostname: worker-9\n  cloud_config: |\n    #cloud-config\n    done: [[[ .daybreak.installed_url ]]]\n"
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let args = [
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
        s,
    ];
    let mut server = lan.start(&args, &dir);
    let first = script(&lan);
    assert!(first.contains("boot kernel"), "{first}");
    let config = fetch(&lan, &config_url(&first));
    let done = config
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .unwrap()
        .to_string();
    assert_eq!(fetch(&lan, &done), "installed\n");
    // No grace: the record is on disk once the machine has its answer.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (code, out, err) = machines(&state, &["show", MAC]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"installed_at\":") && out.contains(MAC),
        "{out}"
    );
    let (_, list, _) = machines(&state, &[]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(MAC) && l.contains("installed")),
        "{list}"
    );

    // A new server boots it from its disk.
    let _server = lan.start(&args, &dir);
    assert!(script(&lan).contains("sanboot --no-describe --drive 0x80"));
    // Reinstall from the command line; the running server follows within seconds.
    let (code, out, _) = machines(&state, &["reinstall", MAC]);
    assert_eq!(code, 0);
    assert!(out.contains("installs again"), "{out}");
    let start = Instant::now();
    while !script(&lan).contains("boot kernel") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server did not follow the reinstall"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, _) = machines(&state, &["forget", MAC]);
    assert_eq!(code, 0);
    let (code, _, err) = machines(&state, &["show", MAC]);
    assert_eq!(code, 1);
    assert!(err.contains("is not remembered"), "{err}");
    let (code, _, err) = machines(&state, &["reinstall", "../../etc/passwd"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a MAC address"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
