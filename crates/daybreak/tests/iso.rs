//! `daybreak netboot ISO OUTDIR [PREFIX]` and `daybreak serve --iso` against ISOs made by xorriso.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_tcp_port, output_within, require, skip, tempdir, Daybreak, BIN};
use testkit::pattern;

struct Kairos {
    dir: PathBuf,
    iso: PathBuf,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    rootfs: Vec<u8>,
}

/// A Kairos-shaped ISO (Rock Ridge + Joliet, /boot/kernel a symlink) from `tree`'s files.
fn kairos_iso(tag: &str, drop_initrd: bool) -> Kairos {
    let dir = tempdir(tag);
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let k = Kairos {
        iso: dir.join("kairos.iso"),
        kernel: pattern(2_000_001, 1),
        initrd: pattern(700_000, 2),
        rootfs: pattern(5_000_000, 3),
        dir: dir.clone(),
    };
    std::fs::write(root.join("boot/vmlinuz-6.6.0"), &k.kernel).unwrap();
    std::os::unix::fs::symlink("vmlinuz-6.6.0", root.join("boot/kernel")).unwrap();
    if !drop_initrd {
        std::fs::write(root.join("boot/initrd"), &k.initrd).unwrap();
    }
    std::fs::write(root.join("rootfs.squashfs"), &k.rootfs).unwrap();
    testkit::mkisofs(&root, &k.iso, &["-R", "-J"]);
    k
}

fn netboot(args: &[&Path]) -> std::process::Output {
    output_within(
        Command::new(BIN).arg("netboot").args(args),
        Duration::from_secs(60),
    )
}

#[test]
fn netboot_writes_the_three_files_and_creates_outdir() {
    if !require(false, &["xorriso"]) {
        return;
    }
    let k = kairos_iso("netboot", false);
    let out = k.dir.join("new/out");
    let r = netboot(&[&k.iso, &out, Path::new("kairos")]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(out.join("kairos-kernel")).unwrap() == k.kernel);
    assert!(std::fs::read(out.join("kairos-initrd")).unwrap() == k.initrd);
    assert!(std::fs::read(out.join("kairos.squashfs")).unwrap() == k.rootfs);
    let printed = String::from_utf8_lossy(&r.stdout);
    assert!(
        printed.contains("kairos-kernel") && printed.contains("kairos.squashfs"),
        "{printed}"
    );
    // Nothing but the three files: no temporary names left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);

    // Empty and custom prefixes.
    let r = netboot(&[&k.iso, &out, Path::new("")]);
    assert!(r.status.success());
    let r = netboot(&[&k.iso, &out, Path::new("v3")]);
    assert!(r.status.success());
    assert!(std::fs::read(out.join("v3.squashfs")).unwrap() == k.rootfs);
    assert!(out.join("v3-initrd").exists());
}

#[test]
fn netboot_errors_name_the_file_and_the_fix() {
    if !require(false, &["xorriso"]) {
        return;
    }
    let k = kairos_iso("netboot-missing", true);
    let out = k.dir.join("out");
    let r = netboot(&[&k.iso, &out]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        e.contains("has no /boot/initrd") && e.contains("/boot holds: kernel, vmlinuz-6.6.0"),
        "{e}"
    );

    let not_iso = k.dir.join("notes.txt");
    std::fs::write(&not_iso, vec![b'x'; 100_000]).unwrap();
    let e = String::from_utf8_lossy(&netboot(&[&not_iso, &out]).stderr).into_owned();
    assert!(e.contains("notes.txt is not an ISO 9660 image"), "{e}");

    let good = kairos_iso("netboot-trunc", false);
    let len = std::fs::metadata(&good.iso).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&good.iso)
        .unwrap()
        .set_len(len - 1_000_000)
        .unwrap();
    let e = String::from_utf8_lossy(&netboot(&[&good.iso, &out]).stderr).into_owned();
    assert!(
        e.contains("is truncated") && e.contains("rootfs.squashfs"),
        "{e}"
    );
    assert!(!out.join("kairos.squashfs").exists(), "a half file landed");
}

#[test]
fn netboot_into_unwritable_outdir_explains() {
    if !require(true, &["xorriso", "setpriv"]) {
        return;
    }
    let k = kairos_iso("netboot-ro", false);
    let ro = k.dir.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&k.dir, &ro] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&k.iso, std::fs::Permissions::from_mode(0o644)).unwrap();
    let Some((status, e)) =
        common::run_as_nobody(&["netboot", k.iso.to_str().unwrap(), ro.to_str().unwrap()])
    else {
        return;
    };
    assert!(!status.success());
    assert!(
        e.contains("cannot write to") && e.contains("choose a writable OUTDIR"),
        "{e}"
    );
}

#[test]
fn serve_iso_serves_files_in_place_with_ranges() {
    if !require(false, &["xorriso", "curl"]) {
        return;
    }
    let k = kairos_iso("serve-iso", false);
    let iso = k.iso.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let (server, http, _) = Daybreak::start_loopback(&["serve", "--iso", &iso], &k.dir);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ready without extracting anything"
    );
    let get = |path: &str, range: Option<&str>| -> Vec<u8> {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30"]);
        if let Some(r) = range {
            c.args(["-r", r]);
        }
        c.arg(format!("http://127.0.0.1:{http}{path}"))
            .output()
            .unwrap()
            .stdout
    };
    assert!(get("/kernel", None) == k.kernel);
    assert!(get("/initrd0", None) == k.initrd);
    assert!(get("/rootfs.squashfs", None) == k.rootfs);
    assert!(get("/rootfs.squashfs", Some("4000000-4099999")) == k.rootfs[4_000_000..4_100_000]);
    assert!(get("/kernel", Some("-100")) == k.kernel[k.kernel.len() - 100..]);
    let script = String::from_utf8(get("/boot.ipxe", None)).unwrap();
    assert!(
        script.contains(&format!(
            "root=live:http://127.0.0.1:{http}/rootfs.squashfs"
        )),
        "{script}"
    );
    drop(server);
    // Conflicting sources are refused.
    let r = output_within(
        Command::new(BIN).args(["serve", "--iso", &iso, "--kernel", "/x"]),
        Duration::from_secs(20),
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot be used with"));
}

/// `netboot` and `serve --iso` given an http:// URL download the ISO into the state dir's cache
/// once, then work from there.
#[test]
fn iso_by_url_is_downloaded_once_into_the_state_dir() {
    if !require(false, &["xorriso", "python3", "curl"]) {
        return;
    }
    let k = kairos_iso("url", false);
    let port = free_tcp_port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _web = Kill(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&k.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/kairos.iso");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = k.dir.join("state");
    let out = k.dir.join("out");
    let r = netboot(&[
        Path::new(&url),
        &out,
        Path::new("kairos"),
        Path::new("--state-dir"),
        &state,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(out.join("kairos.squashfs")).unwrap() == k.rootfs);
    let cached: Vec<_> = std::fs::read_dir(state.join("downloads"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(cached.len(), 1, "one complete file, no .part left");
    assert!(cached[0]
        .file_name()
        .to_string_lossy()
        .ends_with("-kairos.iso"));

    // serve --iso with the same URL reuses the cache.
    let state_s = state.to_string_lossy().into_owned();
    let (server, http, _) =
        Daybreak::start_loopback(&["serve", "--iso", &url, "--state-dir", &state_s], &k.dir);
    assert!(
        server.log_text().contains("using cached"),
        "{}",
        server.log_text()
    );
    let body = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{http}/initrd0")])
        .output()
        .unwrap()
        .stdout;
    assert!(body == k.initrd);
}

/// A full disk: the error says so, and no partial or temporary file is left in OUTDIR.
#[test]
fn disk_full_leaves_nothing_half_written() {
    if !require(true, &["xorriso", "unshare", "mount"]) {
        return;
    }
    let k = kairos_iso("diskfull", false);
    let small = k.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    // 3 MiB of tmpfs in a private mount namespace: the kernel and initrd fit, the squashfs not.
    let script = format!(
        "mount -t tmpfs -o size=3m tmpfs '{d}' && '{bin}' netboot '{iso}' '{d}/out'; rc=$?; ls -a '{d}/out'; exit $rc",
        d = small.display(),
        bin = BIN,
        iso = k.iso.display()
    );
    let r = output_within(
        Command::new("unshare").args(["-m", "sh", "-c", &script]),
        Duration::from_secs(60),
    );
    let e = String::from_utf8_lossy(&r.stderr);
    let listing = String::from_utf8_lossy(&r.stdout);
    if e.contains("mount:") && e.contains("permission denied") {
        skip("cannot mount a tmpfs here");
        return;
    }
    assert!(!r.status.success());
    assert!(
        e.contains("disk full writing")
            && e.contains("kairos.squashfs")
            && e.contains("nothing was left behind"),
        "{e}"
    );
    assert!(
        !listing.contains("kairos.squashfs") && !listing.contains(".tmp-"),
        "left behind:\n{listing}"
    );
    assert!(
        listing.contains("kairos-kernel") && listing.contains("kairos-initrd"),
        "{listing}"
    );
}
