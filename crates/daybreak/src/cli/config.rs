//! The default command's settings, the AuroraBoot way: an optional YAML config file (a path or an
//! http(s) URL), then `--set key=value` on top (dotted keys nest, `true`/`false` are booleans,
//! `--set` wins), read into typed [`Settings`]. The same tree is the data of the cloud-config
//! template ([`crate::template`]).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};

use crate::template::{alias, read_text};
use serde_json::{Map, Value};

/// Every key the default command reads (`netboot.cmdline` is under `netboot`).
pub const KNOWN: &[&str] = &[
    "container_image",
    "repository",
    "release_version",
    "artifact_version",
    "flavor",
    "flavor_release",
    "variant",
    "platform",
    "model",
    "release_base_url",
    "arch",
    "allow-insecure-registries",
    "cloud_config",
    "disable_netboot",
    "disable_http_server",
    "netboot_http_port",
    "netboot_listen_addr",
    "listen_addr",
    "admin_listen",
    "admin_token_file",
    "state_dir",
    "store",
    "store_ca",
    "store_cert",
    "store_key",
    "store_auth_file",
    "netboot",
    "machines",
];

/// One `--set key=value`: the key's path and the value (booleans for `true`/`false`).
pub fn parse_set(arg: &str) -> anyhow::Result<(Vec<String>, Value)> {
    let Some((key, value)) = arg.split_once('=') else {
        bail!("--set {arg:?} has no '=': write --set key=value, e.g. --set container_image=quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3");
    };
    let path: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
    if path.iter().any(|p| p.is_empty()) {
        bail!("--set {arg:?}: the key {key:?} is empty or has an empty part");
    }
    let mut path = path;
    path[0] = alias(&path[0]).to_string();
    let v = match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        s => Value::String(s.to_string()),
    };
    Ok((path, v))
}

/// Puts `v` at `path`, creating (or replacing with) maps on the way.
pub fn set_path(root: &mut Map<String, Value>, path: &[String], v: Value) {
    let (last, parents) = path.split_last().expect("non-empty key path");
    let mut cur = root;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        cur = entry.as_object_mut().expect("just made a map");
    }
    cur.insert(last.clone(), v);
}

/// The config file as a map (an empty file is an empty map).
pub fn load_file(src: &str) -> anyhow::Result<Map<String, Value>> {
    let text = read_text(src, "config file")?;
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    // serde-saphyr: pure Rust, bounded, panic-free on any input (a config file may come from a URL).
    let v: Value = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow!("config file {src} is not valid YAML: {e}"))?;
    match v {
        Value::Object(mut m) => {
            if let Some(v) = m.remove("insecure") {
                m.entry("allow-insecure-registries").or_insert(v);
            }
            Ok(m)
        }
        Value::Null => Ok(Map::new()),
        _ => bail!(
            "config file {src} must be a YAML mapping of keys (container_image: …, state_dir: …)"
        ),
    }
}

/// The config file, then each `--set` on top.
pub fn merge(
    file: Option<&str>,
    sets: &[String],
    set_files: &[String],
) -> anyhow::Result<Map<String, Value>> {
    let mut root = match file {
        Some(f) => load_file(f)?,
        None => Map::new(),
    };
    for s in sets {
        let (path, v) = parse_set(s)?;
        set_path(&mut root, &path, v);
    }
    for s in set_files {
        let (path, v) = parse_set_file(s)?;
        set_path(&mut root, &path, v);
    }
    Ok(root)
}

/// Largest file `--set-file` reads: a secret, a certificate, a key.
const MAX_SET_FILE: u64 = 1 << 20;

/// `--set-file KEY=PATH`: the key as `--set` has it, the value read from the file (always a
/// string; one trailing newline, as `echo` and editors leave, is dropped).
pub fn parse_set_file(arg: &str) -> anyhow::Result<(Vec<String>, Value)> {
    let Some((key, path)) = arg.split_once('=') else {
        bail!("--set-file {arg:?} has no '=': write --set-file key=/path/to/file, e.g. --set-file kairos.password=/run/secrets/pw");
    };
    let (keys, _) = parse_set(&format!("{key}="))
        .map_err(|e| anyhow!("{}", e.to_string().replace("--set", "--set-file")))?;
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SET_FILE + 1).read_to_string(&mut text))
        .map_err(|e| anyhow!("--set-file {key}: cannot read {path}: {e}"))?;
    if text.len() as u64 > MAX_SET_FILE {
        bail!("--set-file {key}: {path} is larger than 1 MiB; it should hold one value");
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok((keys, Value::String(text)))
}

/// The typed settings of the default command.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub container_image: Option<String>,
    pub release: artifacts::ReleaseKeys,
    pub release_base_url: Option<String>,
    pub arch: String,
    pub insecure: bool,
    pub cloud_config: Option<String>,
    pub disable_netboot: bool,
    pub disable_http_server: bool,
    pub netboot_http_port: u16,
    pub netboot_listen_addr: Ipv4Addr,
    pub listen_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub cmdline: Option<String>,
    /// `netboot.proxy_dhcp: false` leaves DHCP to a server that already sends the boot options.
    pub proxy_dhcp: bool,
    /// Where the admin surface listens, and its token's file (flags win).
    pub admin_listen: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    /// `store:` and its files (flags win).
    pub store: crate::store::StoreConfig,
}

fn string(root: &Map<String, Value>, key: &str) -> anyhow::Result<Option<String>> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => bail!("setting {key} must be a single value, not a list or a map"),
    }
}

fn boolean(root: &Map<String, Value>, key: &str) -> anyhow::Result<bool> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.is_empty() => Ok(false),
        Some(other) => bail!("setting {key} must be true or false, not {other}"),
    }
}

/// `:8080`, `0.0.0.0:8080`, `8080`.
fn listen_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(p) = s.parse::<u16>() {
        return Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    Some(SocketAddr::new(host.parse().ok()?, port))
}

impl Settings {
    pub fn from_map(root: &Map<String, Value>) -> anyhow::Result<Settings> {
        let s = |k| string(root, k);
        let port =
            match s("netboot_http_port")? {
                None => 8090,
                Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    anyhow!("netboot_http_port {p:?} is not a port number (1-65535)")
                })?,
            };
        let netboot_listen_addr = match s("netboot_listen_addr")? {
            None => Ipv4Addr::UNSPECIFIED,
            Some(a) => a.parse().map_err(|_| {
                anyhow!("netboot_listen_addr {a:?} is not an IPv4 address (e.g. 0.0.0.0 or 192.168.1.10)")
            })?,
        };
        let listen = s("listen_addr")?.unwrap_or_else(|| ":8080".into());
        let listen_addr = listen_addr(&listen).ok_or_else(|| {
            anyhow!("listen_addr {listen:?} is not ADDRESS:PORT or :PORT (e.g. :8080)")
        })?;
        let state_dir = artifacts::absolute(
            &s("state_dir")?
                .map(PathBuf::from)
                .unwrap_or_else(artifacts::default_state_dir),
        );
        let (cmdline, proxy_dhcp) = match root.get("netboot") {
            None | Some(Value::Null) => (None, true),
            Some(Value::Object(m)) => (
                string(m, "cmdline")?,
                !matches!(m.get("proxy_dhcp"), Some(Value::Bool(false))),
            ),
            Some(_) => bail!("setting netboot must be a map (netboot.cmdline=…)"),
        };
        if let Some(Value::Object(m)) = root.get("netboot") {
            if m.get("proxy_dhcp").is_some_and(|v| !v.is_boolean()) {
                bail!("setting netboot.proxy_dhcp must be true or false");
            }
        }
        let arch = s("arch")?.unwrap_or_else(|| artifacts::oci::host_arch().to_string());
        if !["amd64", "arm64"].contains(&arch.as_str()) {
            bail!("arch {arch:?} is not supported: use amd64 or arm64");
        }
        Ok(Settings {
            container_image: s("container_image")?,
            release: artifacts::ReleaseKeys {
                repository: s("repository")?.unwrap_or_default(),
                release_version: s("release_version")?.unwrap_or_default(),
                artifact_version: s("artifact_version")?.unwrap_or_default(),
                flavor: s("flavor")?.unwrap_or_default(),
                flavor_release: s("flavor_release")?.unwrap_or_default(),
                variant: s("variant")?.unwrap_or_default(),
                platform: s("platform")?.unwrap_or_default(),
                model: s("model")?.unwrap_or_default(),
            },
            release_base_url: s("release_base_url")?,
            arch,
            insecure: boolean(root, "allow-insecure-registries")?,
            cloud_config: s("cloud_config")?,
            disable_netboot: boolean(root, "disable_netboot")?,
            disable_http_server: boolean(root, "disable_http_server")?,
            netboot_http_port: port,
            netboot_listen_addr,
            listen_addr,
            state_dir,
            cmdline,
            proxy_dhcp,
            admin_listen: s("admin_listen")?,
            admin_token_file: s("admin_token_file")?.map(PathBuf::from),
            store: crate::store::StoreConfig {
                location: match s("store")? {
                    None => Default::default(),
                    Some(u) => u.parse().map_err(|e: String| anyhow!(e))?,
                },
                ca: s("store_ca")?.map(PathBuf::from),
                cert: s("store_cert")?.map(PathBuf::from),
                key: s("store_key")?.map(PathBuf::from),
                auth_file: s("store_auth_file")?.map(PathBuf::from),
            },
        })
    }

    /// Whether any release key is set (the ISO source, used when container_image is empty).
    pub fn has_release(&self) -> bool {
        let r = &self.release;
        !(r.release_version.is_empty() && r.artifact_version.is_empty() && r.flavor.is_empty())
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Warnings for keys Daybreak does not know, unless the cloud-config template uses them.
pub fn unknown_keys(root: &Map<String, Value>, used: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for k in root.keys() {
        if KNOWN.contains(&k.as_str()) || used.contains(k) {
            continue;
        }
        let closest = KNOWN
            .iter()
            .map(|c| (distance(&k.replace('-', "_"), &c.replace('-', "_")), *c))
            .min()
            .filter(|(d, _)| *d <= 3.max(k.len() / 3));
        out.push(match closest {
            Some((_, c)) => format!("unknown key {k:?} is ignored: did you mean {c:?}?"),
            None => format!(
                "unknown key {k:?} is ignored (not a setting, and the cloud-config does not use it)"
            ),
        });
    }
    if let Some(Value::Object(m)) = root.get("netboot") {
        for k in m.keys().filter(|k| *k != "cmdline" && *k != "proxy_dhcp") {
            out.push(format!(
                "unknown key \"netboot.{k}\" is ignored: the netboot keys are cmdline and proxy_dhcp"
            ));
        }
    }
    out
}

/// The cloud-config text: `--cloud-config` (a file, an http(s) URL, or `-` for stdin) wins over
/// the inline `cloud_config` key. `None` when neither is given.
pub fn cloud_config_source(
    flag: Option<&str>,
    inline: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let text = match flag {
        Some("-") => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("cannot read the cloud-config from stdin")?;
            s
        }
        Some(src) => read_text(src, "cloud-config")?,
        None => match inline {
            Some(s) => s.to_string(),
            None => return Ok(None),
        },
    };
    if text.trim().is_empty() {
        bail!(
            "the cloud-config {} is empty; give one that starts with #cloud-config, or leave --cloud-config out",
            flag.unwrap_or("(cloud_config key)")
        );
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nest_and_win() {
        let mut root = Map::new();
        root.insert("state_dir".into(), Value::String("/from/file".into()));
        for s in [
            "netboot.cmdline=quiet splash",
            "state_dir=/from/set",
            "disable_http_server=true",
            "insecure=true",
            "kairos.password=a=b",
        ] {
            let (p, v) = parse_set(s).unwrap();
            set_path(&mut root, &p, v);
        }
        assert_eq!(root["netboot"]["cmdline"], "quiet splash");
        assert_eq!(root["state_dir"], "/from/set");
        assert_eq!(root["disable_http_server"], true);
        assert_eq!(root["allow-insecure-registries"], true);
        assert_eq!(root["kairos"]["password"], "a=b");
        let e = parse_set("container_image").unwrap_err().to_string();
        assert!(e.contains("no '='") && e.contains("container_image"), "{e}");
        let s = Settings::from_map(&root).unwrap();
        assert_eq!(s.cmdline.as_deref(), Some("quiet splash"));
        assert!(s.insecure && s.disable_http_server && !s.disable_netboot);
        assert_eq!(s.netboot_http_port, 8090);
        assert_eq!(s.listen_addr, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn unknown_keys_name_the_closest() {
        let mut root = Map::new();
        root.insert("container_imag".into(), Value::Null);
        root.insert("kairos".into(), Value::Null);
        root.insert("zzzzzzzzzzzz".into(), Value::Null);
        let used: HashSet<String> = ["kairos".to_string()].into();
        let w = unknown_keys(&root, &used).join("\n");
        assert!(w.contains("did you mean \"container_image\""), "{w}");
        assert!(!w.contains("\"kairos\""), "{w}");
        assert!(w.contains("zzzzzzzzzzzz"), "{w}");
    }

    #[test]
    fn addresses() {
        assert_eq!(listen_addr(":8080"), Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(
            listen_addr("127.0.0.1:9"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(listen_addr("nope"), None);
    }

    #[test]
    fn set_file_reads_the_value_from_a_file() {
        let d = testkit::tempdir("setfile");
        let f = d.join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let (path, v) = parse_set_file(&format!("kairos.password={}", f.display())).unwrap();
        assert_eq!(path, ["kairos", "password"]);
        assert_eq!(v, Value::String("s3cret".into()));
        let root = merge(
            None,
            &["kairos.password=x".into()],
            &[format!("kairos.password={}", f.display())],
        )
        .unwrap();
        assert_eq!(
            root["kairos"]["password"], "s3cret",
            "--set-file wins over --set"
        );
        let e = parse_set_file("nokey").unwrap_err().to_string();
        assert!(e.contains("--set-file") && e.contains("no '='"), "{e}");
        let e = parse_set_file(&format!("k={}", d.join("missing").display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
