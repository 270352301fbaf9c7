//! `daybreak netboot IMAGE OUTDIR` against real registries (`docker-registry` on 127.0.0.1,
//! images pushed with `skopeo`) and local sources, with the squashfs checked by `unsquashfs`.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::oci::{self, Comp, Image, Registry, E};
use common::{output_within, require, tempdir, BIN};
use testkit::pattern;

const TOOLS: &[&str] = &["docker-registry", "skopeo", "unsquashfs", "htpasswd"];

/// Three layers (gzip, zstd, plain) with whiteouts, an opaque directory, hard links, a setuid
/// file owned by 1000, and two kernels with `/boot/vmlinuz` pointing at the older one.
fn merge_image(arch: &'static str) -> Image {
    Image {
        arch,
        layers: vec![
            (
                vec![
                    E::Dir("etc/", 0o755),
                    E::File("etc/hostname", 0o644, 0, b"one\n".to_vec()),
                    E::File("etc/gone", 0o600, 0, b"deleted later".to_vec()),
                    E::Dir("opt/app/", 0o750),
                    E::File("opt/app/old", 0o644, 0, b"hidden".to_vec()),
                    E::Dir("opt/app/sub/", 0o755),
                    E::File("opt/app/sub/deep", 0o644, 0, b"hidden too".to_vec()),
                    E::File("usr/bin/tool", 0o4755, 1000, pattern(300_000, 1)),
                    E::Hard("usr/bin/tool-again", "usr/bin/tool"),
                    E::Dir("boot/", 0o755),
                    E::File("boot/vmlinuz-6.1.0-9-amd64", 0o644, 0, b"kernel 9".to_vec()),
                    E::File(
                        "boot/vmlinuz-6.1.0-10-amd64",
                        0o644,
                        0,
                        pattern(2_500_000, 2),
                    ),
                    E::File(
                        "boot/initrd.img-6.1.0-9-amd64",
                        0o644,
                        0,
                        b"initrd 9".to_vec(),
                    ),
                    E::File(
                        "boot/initrd.img-6.1.0-10-amd64",
                        0o644,
                        0,
                        pattern(1_200_000, 3),
                    ),
                    E::Sym("boot/vmlinuz", "vmlinuz-6.1.0-9-amd64"),
                ],
                Comp::Gzip,
            ),
            (
                vec![
                    E::File("etc/.wh.gone", 0o644, 0, Vec::new()),
                    E::File("etc/hostname", 0o644, 0, b"two\n".to_vec()),
                    E::Dir("opt/app/", 0o755),
                    E::File("opt/app/.wh..wh..opq", 0o644, 0, Vec::new()),
                    E::File("opt/app/new", 0o640, 0, b"from layer 2".to_vec()),
                    E::File("etc/marker", 0o644, 0, arch.as_bytes().to_vec()),
                ],
                Comp::Zstd,
            ),
            (
                vec![E::File("var/lib/data", 0o600, 0, pattern(2_200_000, 4))],
                Comp::None,
            ),
        ],
    }
}

/// The merged tree `merge_image` must give, written out on disk.
fn expected_tree(dir: &Path, arch: &str) {
    let mk = |p: &str, mode: u32| {
        let d = dir.join(p);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |p: &str, mode: u32, owner: u32, data: &[u8]| {
        let f = dir.join(p);
        std::fs::write(&f, data).unwrap();
        std::os::unix::fs::chown(&f, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for (d, m) in [
        ("etc", 0o755),
        ("opt", 0o755),
        ("opt/app", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("boot", 0o755),
        ("var", 0o755),
        ("var/lib", 0o755),
    ] {
        mk(d, m);
    }
    file("etc/hostname", 0o644, 0, b"two\n");
    file("etc/marker", 0o644, 0, arch.as_bytes());
    file("opt/app/new", 0o640, 0, b"from layer 2");
    file("usr/bin/tool", 0o4755, 1000, &pattern(300_000, 1));
    std::fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool-again")).unwrap();
    file("boot/vmlinuz-6.1.0-9-amd64", 0o644, 0, b"kernel 9");
    file(
        "boot/vmlinuz-6.1.0-10-amd64",
        0o644,
        0,
        &pattern(2_500_000, 2),
    );
    file("boot/initrd.img-6.1.0-9-amd64", 0o644, 0, b"initrd 9");
    file(
        "boot/initrd.img-6.1.0-10-amd64",
        0o644,
        0,
        &pattern(1_200_000, 3),
    );
    symlink("vmlinuz-6.1.0-9-amd64", dir.join("boot/vmlinuz")).unwrap();
    file("var/lib/data", 0o600, 0, &pattern(2_200_000, 4));
}

/// Runs `daybreak netboot SOURCE OUT` with a state dir; returns (success, stderr).
fn netboot(
    source: &str,
    out: &Path,
    state: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("netboot")
        .arg(source)
        .arg(out)
        .arg("--state-dir")
        .arg(state)
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = output_within(&mut cmd, Duration::from_secs(120));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Extracts a squashfs with `unsquashfs -d` and snapshots it.
fn unsquash(img: &Path, dest: &Path) -> std::collections::BTreeMap<String, String> {
    let o = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(dest)
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    oci::snapshot(dest)
}

fn check_merged(out: &Path, work: &Path, arch: &'static str) {
    assert_eq!(
        std::fs::read(out.join("kairos-kernel")).unwrap(),
        pattern(2_500_000, 2),
        "the newest kernel wins, not the one /boot/vmlinuz points at"
    );
    assert_eq!(
        std::fs::read(out.join("kairos-initrd")).unwrap(),
        pattern(1_200_000, 3)
    );
    let expected = work.join(format!("expected-{arch}"));
    expected_tree(&expected, arch);
    let got = unsquash(
        &out.join("kairos.squashfs"),
        &work.join(format!("got-{arch}")),
    );
    assert_eq!(got, oci::snapshot(&expected));
}

fn artifact_entries(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("artifacts"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A registry holding `images` as `repo:tag`, pushed from a layout in a new work directory.
fn pushed(
    tag: &str,
    images: &[Image],
    repo: &str,
    creds: Option<(&str, &str)>,
) -> (PathBuf, Registry, String) {
    let work = tempdir(&format!("oci-{}", repo.replace('/', "-")));
    let layout = work.join("layout");
    oci::write_layout(&layout, tag, images);
    let reg = Registry::start(&work.join("reg"), creds);
    let image = reg.push(&layout, tag, repo);
    (work, reg, image)
}

#[test]
fn registry_image_is_merged_verified_and_built_once() {
    if !require(true, TOOLS) {
        return;
    }
    let (work, reg, image) = pushed("v1", &[merge_image("amd64")], "kairos/test", None);
    let digests = [reg.manifest_digest(&image, "amd64")];
    let state = work.join("state");
    let out = work.join("out");

    let (ok, err) = netboot(&image, &out, &state, &["--arch", "amd64"], &[]);
    assert!(ok, "{err}");
    assert!(err.contains(&digests[0]), "prints the digest: {err}");
    check_merged(&out, &work, "amd64");
    assert_eq!(
        artifact_entries(&state),
        vec![format!("sha256-{}", &digests[0][7..])]
    );

    // Again: nothing is pulled or built.
    let out2 = work.join("out2");
    let (ok, err) = netboot(&image, &out2, &state, &["--arch", "amd64"], &[]);
    assert!(ok && err.contains("already built"), "{err}");
    assert_eq!(
        std::fs::read(out2.join("kairos.squashfs")).unwrap(),
        std::fs::read(out.join("kairos.squashfs")).unwrap()
    );

    // Other compressors are other store entries holding the same tree.
    for comp in ["zstd", "xz"] {
        let o = work.join(format!("out-{comp}"));
        let (ok, err) = netboot(
            &image,
            &o,
            &state,
            &["--arch", "amd64", "--compression", comp],
            &[],
        );
        assert!(ok, "{comp}: {err}");
        let info = Command::new("unsquashfs")
            .arg("-s")
            .arg(o.join("kairos.squashfs"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains(&format!("Compression {comp}")));
        check_merged(&o, &work.join(comp), "amd64");
        assert!(artifact_entries(&state).contains(&format!("sha256-{}-{comp}", &digests[0][7..])));
    }

    // The registry is gone: the last known digest is used, with a warning.
    drop(reg);
    let (ok, err) = netboot(
        &image,
        &work.join("out3"),
        &state,
        &["--arch", "amd64"],
        &[],
    );
    assert!(
        ok && err.contains("warning") && err.contains(&digests[0]),
        "{err}"
    );

    // zstd is another store entry; the same tree comes out.
    let list = Command::new(BIN)
        .args(["cache", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains(&digests[0]) && list.contains("layer cache: 3 blobs"),
        "{list}"
    );

    // prune drops the layer cache and keeps what was built; --all drops everything.
    let cache = |args: &[&str]| {
        let o = Command::new(BIN)
            .arg("cache")
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let pruned = cache(&["prune"]);
    assert!(pruned.starts_with("removed 3 entries"), "{pruned}");
    let list = cache(&["list"]);
    assert!(
        list.contains(&digests[0]) && list.contains("layer cache: 0 blobs"),
        "{list}"
    );
    cache(&["prune", "--all"]);
    assert!(cache(&["list"]).contains("no built artifacts"));
    assert!(artifact_entries(&state).is_empty());
}

#[test]
fn multi_arch_index_gives_the_target_arch() {
    if !require(true, TOOLS) {
        return;
    }
    let (work, reg, image) = pushed(
        "multi",
        &[merge_image("amd64"), merge_image("arm64")],
        "kairos/multi",
        None,
    );
    let digests = [
        reg.manifest_digest(&image, "amd64"),
        reg.manifest_digest(&image, "arm64"),
    ];
    let state = work.join("state");
    for (arch, digest) in [("arm64", &digests[1]), ("amd64", &digests[0])] {
        let out = work.join(format!("out-{arch}"));
        let (ok, err) = netboot(&image, &out, &state, &["--arch", arch], &[]);
        assert!(ok && err.contains(digest.as_str()), "{arch}: {err}");
        check_merged(&out, &work, if arch == "arm64" { "arm64" } else { "amd64" });
    }
    let (ok, err) = netboot(&image, &work.join("x"), &state, &["--arch", "riscv64"], &[]);
    assert!(!ok && err.contains("linux/amd64, linux/arm64"), "{err}");
}

#[test]
fn basic_auth_comes_from_docker_config() {
    if !require(true, TOOLS) {
        return;
    }
    let (work, reg, image) = pushed(
        "v1",
        &[merge_image("amd64")],
        "private/img",
        Some(("daybreak", "s3cret")),
    );
    let state = work.join("state");
    let empty = work.join("no-config");
    std::fs::create_dir_all(&empty).unwrap();

    let (ok, err) = netboot(
        &image,
        &work.join("o1"),
        &state,
        &[],
        &[("DOCKER_CONFIG", &empty)],
    );
    assert!(!ok && err.contains("docker login"), "{err}");

    let cfg = work.join("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("daybreak:s3cret");
    std::fs::write(
        cfg.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let out = work.join("o2");
    let (ok, err) = netboot(&image, &out, &state, &[], &[("DOCKER_CONFIG", &cfg)]);
    assert!(ok, "{err}");
    check_merged(&out, &work, "amd64");

    // A credential helper (docker-credential-NAME get, server on stdin, JSON out).
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-daybreaktest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$server\" = \"{}\" ] || exit 1\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"daybreak\",\"Secret\":\"s3cret\"}}'\n",
            reg.host()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg2 = work.join("docker2");
    std::fs::create_dir_all(&cfg2).unwrap();
    std::fs::write(
        cfg2.join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"daybreaktest"}}}}"#, reg.host()),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let path = PathBuf::from(path);
    let state2 = work.join("state2");
    let (ok, err) = netboot(
        &image,
        &work.join("o3"),
        &state2,
        &[],
        &[("DOCKER_CONFIG", &cfg2), ("PATH", &path)],
    );
    assert!(ok, "credential helper: {err}");
}

#[test]
fn self_signed_registry_needs_allow_insecure_registries() {
    if !require(true, &["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let work = tempdir("oci-tls");
    let layout = work.join("layout");
    oci::write_layout(&layout, "v1", &[merge_image("amd64")]);
    let reg = Registry::start_with(&work.join("reg"), None, true);
    let image = reg.push(&layout, "v1", "tls/img");
    let state = work.join("state");
    let (ok, err) = netboot(&image, &work.join("o1"), &state, &[], &[]);
    assert!(
        !ok && err.contains("certificate is not trusted")
            && err.contains("allow-insecure-registries"),
        "{err}"
    );
    let out = work.join("o2");
    let (ok, err) = netboot(&image, &out, &state, &["--allow-insecure-registries"], &[]);
    assert!(ok, "{err}");
    check_merged(&out, &work, "amd64");
}

/// A plain-HTTP registry that is not on loopback (a LAN registry without TLS): refused without
/// `--allow-insecure-registries`, with an error that names it; pulled with it. In a private
/// network namespace, on a veth address.
#[test]
fn plain_http_registry_off_loopback_needs_allow_insecure_registries() {
    if !require(true, &["docker-registry", "skopeo", "unshare", "ip"]) {
        return;
    }
    let work = tempdir("oci-lan");
    let layout = work.join("layout");
    oci::write_layout(&layout, "v1", &[merge_image("amd64")]);
    let reg = work.join("reg");
    std::fs::create_dir_all(&reg).unwrap();
    std::fs::write(
        reg.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 10.77.0.1:5000\n  secret: daybreak-test\n",
            reg.join("data").display()
        ),
    )
    .unwrap();
    let (w, state) = (work.display(), work.join("state"));
    let script = format!(
        "set -u; ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.77.0.1/24 dev v0 && ip link set v1 up && ip link set v0 up || exit 90
         docker-registry serve {w}/reg/config.yml 2>{w}/reg/registry.log & reg=$!; trap 'kill $reg' EXIT
         for i in $(seq 1 200); do (exec 3<>/dev/tcp/10.77.0.1/5000) 2>/dev/null && break; sleep 0.05; done
         skopeo copy --quiet --dest-tls-verify=false oci:{w}/layout:v1 docker://10.77.0.1:5000/lan/img:v1 || exit 91
         {BIN} netboot 10.77.0.1:5000/lan/img:v1 {w}/o1 --state-dir {s} 2>{w}/o1.err; echo $? > {w}/o1.rc
         {BIN} netboot 10.77.0.1:5000/lan/img:v1 {w}/o2 --state-dir {s} --allow-insecure-registries 2>{w}/o2.err; echo $? > {w}/o2.rc",
        s = state.display()
    );
    let o = output_within(
        Command::new("unshare").args(["--net", "bash", "-c", &script]),
        Duration::from_secs(180),
    );
    let read = |n: &str| std::fs::read_to_string(work.join(n)).unwrap_or_default();
    assert!(
        o.status.success(),
        "setup failed ({:?}): {} {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr),
        read("reg/registry.log")
    );
    let err = read("o1.err");
    assert!(
        read("o1.rc").trim() != "0"
            && err.contains("plain HTTP, not HTTPS")
            && err.contains("allow-insecure-registries"),
        "without the flag: {err}"
    );
    assert_eq!(
        read("o2.rc").trim(),
        "0",
        "with the flag: {}",
        read("o2.err")
    );
    check_merged(&work.join("o2"), &work, "amd64");
}

#[test]
fn layouts_archives_docker_save_and_dirs() {
    if !require(true, &["unsquashfs"]) {
        return;
    }
    let work = tempdir("oci-local");
    let layout = work.join("layout");
    oci::write_layout(&layout, "v1", &[merge_image("amd64")]);
    let archive = work.join("oci-archive.tar");
    oci::tar_dir(&layout, &archive);
    let saved = work.join("docker-save.tar");
    oci::docker_save(&merge_image("amd64"), &saved);
    let state = work.join("state");
    let sources: Vec<(String, &str)> = vec![
        (layout.display().to_string(), "layout"),
        (format!("{}:v1", layout.display()), "layout-tag"),
        (format!("ocifile://{}", archive.display()), "archive"),
        (format!("file://{}", saved.display()), "docker-save"),
    ];
    for (src, name) in &sources {
        let out = work.join(format!("out-{name}"));
        let (ok, err) = netboot(src, &out, &state, &[], &[]);
        assert!(ok, "{name}: {err}");
        check_merged(&out, &work.join(format!("check-{name}")), "amd64");
    }
    // A rootfs directory: the tree extracted above, squashed again, comes out the same.
    let tree = work.join("check-layout/got-amd64");
    let out = work.join("out-dir");
    let (ok, err) = netboot(&format!("dir://{}", tree.display()), &out, &state, &[], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        unsquash(&out.join("kairos.squashfs"), &work.join("dir-again")),
        oci::snapshot(&tree)
    );
}

fn layout_with(dir: &Path, layers: Vec<(Vec<E>, Comp)>) -> Vec<String> {
    oci::write_layout(
        dir,
        "v1",
        &[Image {
            arch: "amd64",
            layers,
        }],
    )
}

fn layer_blob(layout: &Path, manifest_digest: &str, n: usize) -> PathBuf {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let d = m["layers"][n]["digest"].as_str().unwrap().to_string();
    layout.join("blobs/sha256").join(&d[7..])
}

#[test]
fn bad_images_are_refused_and_the_store_stays_empty() {
    if !require(true, TOOLS) {
        return;
    }
    let work = tempdir("oci-bad");
    let state = work.join("state");
    let boot = vec![
        E::File("boot/vmlinuz-1", 0o644, 0, b"k".to_vec()),
        E::File("boot/initrd-1", 0o644, 0, b"i".to_vec()),
    ];
    let hostile = [
        (
            "absolute",
            E::Raw(testkit::EntryType::Regular, "/etc/passwd", ""),
            "absolute path",
        ),
        (
            "dotdot",
            E::Raw(testkit::EntryType::Regular, "etc/../../x", ""),
            "path contains ..",
        ),
        (
            "hardlink",
            E::Raw(testkit::EntryType::Link, "evil", "../etc/shadow"),
            "hard link",
        ),
    ];
    for (name, entry, why) in hostile {
        let dir = work.join(name);
        let mut entries = boot.clone();
        entries.push(entry);
        let m = layout_with(&dir, vec![(entries, Comp::Gzip)]);
        let layer = layer_blob(&dir, &m[0], 0);
        let layer_digest = format!("sha256:{}", layer.file_name().unwrap().to_string_lossy());
        let (ok, err) = netboot(
            &dir.display().to_string(),
            &work.join("o"),
            &state,
            &[],
            &[],
        );
        assert!(
            !ok && err.contains(why) && err.contains(&layer_digest),
            "{name}: {err}"
        );
    }

    // No kernel: the error lists /boot.
    let dir = work.join("nokernel");
    layout_with(
        &dir,
        vec![(
            vec![E::File("boot/config-6.1", 0o644, 0, b"x".to_vec())],
            Comp::Gzip,
        )],
    );
    let (ok, err) = netboot(
        &dir.display().to_string(),
        &work.join("o"),
        &state,
        &[],
        &[],
    );
    assert!(!ok && err.contains("/boot holds: config-6.1"), "{err}");

    // A blob changed on disk, and one cut short.
    for (name, damage) in [("flipped", 0usize), ("truncated", 1)] {
        let dir = work.join(name);
        let m = layout_with(
            &dir,
            vec![(
                {
                    let mut e = boot.clone();
                    e.push(E::File("big", 0o644, 0, pattern(500_000, 9)));
                    e
                },
                Comp::Gzip,
            )],
        );
        let blob = layer_blob(&dir, &m[0], 0);
        let mut data = std::fs::read(&blob).unwrap();
        if damage == 0 {
            let n = data.len() / 2;
            data[n] ^= 0xff;
        } else {
            data.truncate(data.len() / 2);
        }
        std::fs::write(&blob, data).unwrap();
        let (ok, err) = netboot(
            &dir.display().to_string(),
            &work.join("o"),
            &state,
            &[],
            &[],
        );
        assert!(
            !ok && (err.contains("does not match its digest")
                || err.contains("damaged or truncated")),
            "{name}: {err}"
        );
    }

    // A registry that serves a corrupted blob: refused, and nothing lands in the blob cache.
    let dir = work.join("reg-layout");
    let m = layout_with(&dir, vec![(boot.clone(), Comp::Gzip)]);
    let reg = Registry::start(&work.join("reg"), None);
    let image = reg.push(&dir, "v1", "bad/img");
    let layer = layer_blob(&dir, &m[0], 0);
    let digest = format!("sha256:{}", layer.file_name().unwrap().to_string_lossy());
    let stored = reg.blob_file(&digest);
    let mut data = std::fs::read(&stored).unwrap();
    data[10] ^= 0xff;
    std::fs::write(&stored, data).unwrap();
    let (ok, err) = netboot(&image, &work.join("o"), &state, &[], &[]);
    assert!(!ok && err.contains("does not match its digest"), "{err}");
    assert!(!state.join("blobs/sha256").join(&digest[7..]).exists());

    assert!(
        artifact_entries(&state).is_empty(),
        "nothing half-built in the store: {:?}",
        artifact_entries(&state)
    );
}

#[test]
fn a_build_killed_midway_leaves_nothing_and_the_next_run_works() {
    if !require(true, &["unsquashfs"]) {
        return;
    }
    let work = tempdir("oci-kill");
    let layout = work.join("layout");
    let mut img = merge_image("amd64");
    // Enough data that the build is still running when it is killed.
    img.layers.push((
        vec![E::File("var/big", 0o644, 0, pattern(48 << 20, 5))],
        Comp::Gzip,
    ));
    oci::write_layout(&layout, "v1", &[img]);
    let state = work.join("state");
    let mut child = Command::new(BIN)
        .arg("netboot")
        .arg(&layout)
        .arg(work.join("out"))
        .arg("--state-dir")
        .arg(&state)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        let building = artifact_entries(&state)
            .iter()
            .any(|n| n.starts_with(".tmp-"));
        if building {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "the build never started or finished too fast to interrupt"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        artifact_entries(&state).iter().all(|n| n.starts_with('.')),
        "no entry under a real name after kill -9"
    );
    let out = work.join("out");
    let (ok, err) = netboot(&layout.display().to_string(), &out, &state, &[], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(out.join("kairos-kernel")).unwrap(),
        pattern(2_500_000, 2)
    );
    let got = unsquash(&out.join("kairos.squashfs"), &work.join("got"));
    assert!(got.contains_key("var/big") && got.contains_key("etc/marker"));
    assert!(
        artifact_entries(&state)
            .iter()
            .all(|n| !n.starts_with(".tmp-")),
        "the leftover of the killed run is cleaned: {:?}",
        artifact_entries(&state)
    );
}

/// Item: one build per image across a cluster relies on this: an image built twice from one
/// digest, in two state directories (two replicas), gives byte-identical artifacts: the
/// squashfs (its times are the image's, its order the tree's, whatever the threads), the
/// kernel and the initrd.
#[test]
fn one_digest_built_in_two_state_dirs_gives_the_same_bytes() {
    if !require(true, TOOLS) {
        return;
    }
    let (work, _reg, image) = pushed("v1", &[merge_image("amd64")], "kairos/twice", None);
    let mut sums = Vec::new();
    for replica in ["a", "b"] {
        let out = work.join(format!("out-{replica}"));
        let (ok, err) = netboot(
            &image,
            &out,
            &work.join(format!("state-{replica}")),
            &["--arch", "amd64"],
            &[],
        );
        assert!(ok, "{err}");
        let files: Vec<String> = ["kairos.squashfs", "kairos-kernel", "kairos-initrd"]
            .iter()
            .map(|f| oci::sha256(&std::fs::read(out.join(f)).unwrap()))
            .collect();
        sums.push(files);
        // Later than the first: any time-of-build in the output would differ.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(sums[0], sums[1]);
    let _ = std::fs::remove_dir_all(work);
}
