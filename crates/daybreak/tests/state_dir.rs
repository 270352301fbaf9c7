//! The state directory is not trusted blindly: one another user prepared (owned by them,
//! writable by them, or reached through their symlink) is refused with a message that says
//! why; a new one is made 0700; prune never follows a planted symlink; and files are served
//! from the descriptor opened at start, so swapping a path for a symlink serves nothing new.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{config_url, get_text, output_within, require, tempdir, Daybreak, BIN};

fn cache_list(state: &Path) -> (bool, String) {
    let o = output_within(
        Command::new(BIN)
            .args(["cache", "list", "--state-dir"])
            .arg(state),
        Duration::from_secs(30),
    );
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn chown(path: &Path, uid: u32, follow: bool) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe {
        if follow {
            libc::chown(c.as_ptr(), uid, uid)
        } else {
            libc::lchown(c.as_ptr(), uid, uid)
        }
    };
    assert_eq!(r, 0, "chown {}", path.display());
}

#[test]
fn a_new_state_dir_is_private_and_an_open_one_is_refused() {
    let work = tempdir("state-mode");
    let state = work.join("new/state");
    let (ok, err) = cache_list(&state);
    assert!(ok, "{err}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "created private");

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, err) = cache_list(&state);
    assert!(!ok, "a world-writable state dir is refused");
    assert!(
        err.contains("unsafe") && err.contains("lets others write") && err.contains("go-w"),
        "{err}"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert!(!cache_list(&state).0, "group-writable is refused too");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(cache_list(&state).0, "0755 and ours is fine");
}

#[test]
fn a_state_dir_another_user_made_first_is_refused() {
    if !require(true, &[]) {
        return;
    }
    // /tmp/auroraboot made by someone else before root's first run.
    let work = tempdir("state-owner");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let theirs = work.join("auroraboot");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&theirs, 65534, true);
    let (ok, err) = cache_list(&theirs);
    assert!(!ok && err.contains("belongs to uid 65534"), "{err}");

    // Their symlink in a sticky directory, pointing at a directory root owns.
    let ours = work.join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = work.join("link");
    std::os::unix::fs::symlink(&ours, &link).unwrap();
    chown(&link, 65534, false);
    assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), 65534);
    let (ok, err) = cache_list(&link);
    assert!(!ok && err.contains("symlink owned by uid 65534"), "{err}");

    // A parent directory another user can write to, not sticky.
    let open = work.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, err) = cache_list(&open.join("state"));
    assert!(
        !ok && err.contains("writable by others and not sticky"),
        "{err}"
    );
}

#[test]
fn prune_never_follows_a_symlink_out_of_the_state_dir() {
    let work = tempdir("state-prune");
    let state = work.join("state");
    assert!(cache_list(&state).0);
    let victim = work.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"keep").unwrap();
    std::fs::create_dir_all(state.join("blobs")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("blobs/sha256")).unwrap();
    std::fs::create_dir_all(state.join("artifacts")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("artifacts/.tmp-x-999999")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("downloads")).unwrap();
    for all in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.args(["cache", "prune", "--state-dir"]).arg(&state);
        if all {
            cmd.arg("--all");
        }
        let o = output_within(&mut cmd, Duration::from_secs(30));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep");
}

#[test]
fn served_files_are_the_ones_opened_at_start() {
    if !require(false, &["curl"]) {
        return;
    }
    let work = tempdir("state-fd");
    let kernel = work.join("kernel");
    let cc = work.join("cc.yaml");
    let secret = work.join("shadow");
    std::fs::write(&kernel, b"the real kernel").unwrap();
    std::fs::write(&cc, b"#cloud-config\n").unwrap();
    std::fs::write(&secret, b"root:$6$secret").unwrap();
    let (mut d, http, _) = Daybreak::start_loopback(
        &[
            "serve",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cloud-config",
            cc.to_str().unwrap(),
        ],
        &work,
    );
    // Swap both paths for symlinks to the secret.
    for p in [&kernel, &cc] {
        std::fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink(&secret, p).unwrap();
    }
    let base = format!("http://127.0.0.1:{http}");
    assert_eq!(get_text(&format!("{base}/kernel")), "the real kernel");
    let script = get_text(&format!("{base}/boot.ipxe"));
    let config_url = config_url(&script);
    assert_eq!(get_text(&config_url), "#cloud-config\n");
    d.terminate(Duration::from_secs(10));
}

#[test]
fn help_names_the_safe_default() {
    let o = output_within(
        Command::new(BIN).args(["cache", "list", "--help"]),
        Duration::from_secs(10),
    );
    let help = String::from_utf8_lossy(&o.stdout);
    let want = if common::is_root() {
        "/var/lib/daybreak"
    } else {
        ".local/state/daybreak"
    };
    assert!(help.contains(want), "{help}");
}

/// What a killed build left (a temporary entry nobody holds the lock of) is gone at the next
/// start, whatever command it is; one whose build is alive stays.
#[test]
fn leftovers_of_killed_builds_go_at_the_next_start() {
    let work = tempdir("state-leftovers");
    let state = work.join("state");
    assert!(cache_list(&state).0);
    let key = format!("sha256-{}", "ab".repeat(32));
    let dead = state.join("artifacts").join(format!(".tmp-{key}.1-dead"));
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("rootfs.squashfs"), vec![0u8; 4096]).unwrap();
    let live_key = format!("sha256-{}", "cd".repeat(32));
    let live = state
        .join("artifacts")
        .join(format!(".tmp-{live_key}.1-live"));
    std::fs::create_dir_all(&live).unwrap();
    // A build at work holds its key's lock.
    std::fs::create_dir_all(state.join("locks")).unwrap();
    let lock =
        std::fs::File::create(state.join("locks").join(format!("build-{live_key}"))).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    assert!(cache_list(&state).0);
    assert!(!dead.exists(), "a dead build's leftovers are removed");
    assert!(live.exists(), "a live build's temporary entry stays");
}
