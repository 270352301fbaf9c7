//! Test images built from scratch: tar layers, OCI layouts, archives, and a real registry
//! (Debian's `docker-registry` on 127.0.0.1) that images are pushed to with `skopeo`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testkit::{EntryType, Layer};

/// One entry of a test layer.
#[derive(Clone)]
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, u32, u64, Vec<u8>),
    Sym(&'static str, &'static str),
    Hard(&'static str, &'static str),
    /// Entry type, name and link name written into the header unchecked (for hostile layers).
    Raw(EntryType, &'static str, &'static str),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// The uncompressed tar stream of `entries`.
pub fn tar_of(entries: &[E]) -> Vec<u8> {
    entries
        .iter()
        .fold(Layer::new(), |l, e| match e {
            E::Dir(p, mode) => l.dir(p, *mode),
            E::File(p, mode, owner, data) => l.file(p, *mode, *owner, data),
            E::Sym(p, t) => l.link(EntryType::Symlink, p, t),
            E::Hard(p, t) => l.link(EntryType::Link, p, t),
            E::Raw(ty, p, t) => l.raw(*ty, p, t, b""),
        })
        .bytes()
}

pub fn compress(tar: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => tar.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::bulk::compress(tar, 3).unwrap(),
    }
}

fn media(c: Comp) -> &'static str {
    match c {
        Comp::None => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An image for one platform: its layers (entries and compression).
pub struct Image {
    pub arch: &'static str,
    pub layers: Vec<(Vec<E>, Comp)>,
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha256(data);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    d
}

/// Writes an OCI layout holding `images` under `tag` (an index of platforms when there are
/// several). Returns the digest of each image's manifest.
pub fn write_layout(dir: &Path, tag: &str, images: &[Image]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for img in images {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (entries, c) in &img.layers {
            let tar = tar_of(entries);
            diff_ids.push(sha256(&tar));
            let blob = compress(&tar, *c);
            let d = put_blob(dir, &blob);
            layers
                .push(serde_json::json!({"mediaType": media(*c), "digest": d, "size": blob.len()}));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": img.arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}
        }))
        .unwrap();
        let cd = put_blob(dir, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let md = put_blob(dir, &manifest);
        manifests.push((img.arch, md, manifest.len()));
    }
    let ann = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let top = if manifests.len() == 1 {
        let (_, d, n) = &manifests[0];
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n, "annotations": ann})
    } else {
        let list: Vec<_> = manifests
            .iter()
            .map(|(a, d, n)| serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n, "platform": {"os": "linux", "architecture": a}}))
            .collect();
        let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": list})).unwrap();
        let d = put_blob(dir, &index);
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": index.len(), "annotations": ann})
    };
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]})).unwrap(),
    )
    .unwrap();
    manifests.into_iter().map(|m| m.1).collect()
}

/// A tarball of a directory (an OCI archive when the directory is a layout).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A docker-save tarball (the legacy layout: `<n>/layer.tar` and `manifest.json`).
pub fn docker_save(img: &Image, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, (entries, _)) in img.layers.iter().enumerate() {
        let tar = tar_of(entries);
        diff_ids.push(sha256(&tar));
        let name = format!("{i}/layer.tar");
        add(&name, &tar);
        names.push(name);
    }
    let config = serde_json::to_vec(&serde_json::json!({"architecture": img.arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})).unwrap();
    let cname = format!("{}.json", &sha256(&config)[7..]);
    add(&cname, &config);
    let manifest = serde_json::to_vec(
        &serde_json::json!([{"Config": cname, "RepoTags": ["test:1"], "Layers": names}]),
    )
    .unwrap();
    add("manifest.json", &manifest);
    b.into_inner().unwrap();
}

/// A `docker-registry` on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub creds: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry storing into `dir`; with `creds`, it wants basic auth (htpasswd).
    pub fn start(dir: &Path, creds: Option<(&str, &str)>) -> Registry {
        Registry::start_with(dir, creds, false)
    }

    /// As [`Registry::start`]; with `tls`, it speaks HTTPS with a self-signed certificate.
    pub fn start_with(dir: &Path, creds: Option<(&str, &str)>, tls: bool) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = super::free_tcp_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: daybreak-test\n",
            dir.join("data").display()
        );
        if let Some((u, p)) = creds {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd (apache2-utils) failed");
            std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: daybreak-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        if tls {
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry is installed by scripts/install-deps.sh");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not start: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            dir: dir.to_path_buf(),
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of a layout's tag to `repo:tag` here (all platforms).
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> String {
        let dest = format!("docker://{}/{repo}:{tag}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = super::output_within(
            cmd.arg(format!("oci:{}:{tag}", layout.display()))
                .arg(&dest),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dest.trim_start_matches("docker://").to_string()
    }

    /// The digest of the manifest `image` serves for `arch` (skopeo may rewrite manifests on
    /// the way in, so the layout's digests are not the registry's).
    pub fn manifest_digest(&self, image: &str, arch: &str) -> String {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--creds={u}:{p}"));
        }
        let out = super::output_within(
            cmd.arg(format!("docker://{image}")),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        match doc["manifests"].as_array() {
            Some(list) => list
                .iter()
                .find(|m| m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str())
                .unwrap()
                .to_string(),
            None => sha256(&out.stdout),
        }
    }

    /// Where the registry keeps a blob's bytes on disk.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every entry under `root`: type, mode, owner and content hash (or link target), keyed by path.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                sha256(&std::fs::read(&p).unwrap())[7..19].to_string()
            };
            out.insert(
                rel,
                format!("{:o} {}:{} {what}", m.mode() & 0o7777, m.uid(), m.gid()),
            );
        }
    }
    out
}
