//! Machine profiles: the `--machines` file (or the config file's `machines:` list). Each entry
//! selects machines by MAC, UUID (option 97) and architecture, and says how they boot: the
//! action, a hostname, the kernel command line, the cloud-config and its template values.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use serde_json::{Map, Value};

pub use pxe::{CpuArch, Mac, Machine, Uuid};

/// The largest machines file read (and the largest cloud-config an entry may name).
pub const MAX_FILE: usize = 16 << 20;
/// Entries in one file.
pub const MAX_ENTRIES: usize = 100_000;

/// What a machine is told when it network-boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Boot the image (Kairos installs from its cloud-config); once the machine has called back
    /// that its install finished, boot from its disk.
    Install,
    /// Boot the image every time, install or not.
    Live,
    /// Boot from the local disk.
    Local,
    /// No answer at all: another server (or nobody) boots it.
    Ignore,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Live => "live",
            Action::Local => "local",
            Action::Ignore => "ignore",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "install" => Action::Install,
            "live" => Action::Live,
            "local" => Action::Local,
            "ignore" => Action::Ignore,
            _ => return None,
        })
    }
}

/// What a profile may select a machine by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub mac: Option<Mac>,
    pub uuid: Option<Uuid>,
    pub arch: Option<CpuArch>,
}

impl Selector {
    fn is_empty(&self) -> bool {
        self.mac.is_none() && self.uuid.is_none() && self.arch.is_none()
    }

    /// Every selector given matches (a machine whose UUID or architecture is not known yet does
    /// not match an entry that asks for one).
    fn matches(&self, m: &Machine) -> bool {
        self.mac.is_none_or(|x| x == m.mac)
            && self
                .uuid
                .is_none_or(|x| m.uuid.is_some_and(|u| u.same_machine(&x)))
            && self.arch.is_none_or(|x| m.arch == Some(x))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `name:`, or `entry N` (from 1).
    pub name: String,
    pub select: Selector,
    pub hostname: Option<String>,
    pub action: Action,
    /// Kernel arguments replacing the command's (`root=live:` and `config_url=` are still set).
    pub cmdline: Option<String>,
    /// A cloud-config template of its own (`cloud_config`, or the text of `cloud_config_file`).
    pub cloud_config: Option<String>,
    /// Template values: every other key (`role: master` is `[[[ .role ]]]`).
    /// A list, not a map: a fleet holds thousands of profiles, most with a value or two.
    pub vars: Vec<(String, Value)>,
    /// Its own image, built (once, whoever asks for it) beside the command's.
    pub image: Option<Image>,
}

/// The entries of a machines file, in order: the first whose selectors all match is a
/// machine's; an entry without selectors is the default for every other machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profiles {
    pub entries: Vec<Profile>,
    /// Entries by the MAC they select (a fleet of thousands is looked up per packet), those
    /// that select by UUID or architecture alone, and the default entry.
    by_mac: HashMap<Mac, Vec<usize>>,
    others: Vec<usize>,
    default: Option<usize>,
}

/// What a profile boots instead of the command's image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Image {
    /// An OCI image, in any form `container_image` takes.
    Container(String),
    /// A Kairos ISO: a path or an http(s) URL.
    Iso(String),
    /// Files as they are.
    Files {
        kernel: PathBuf,
        initrds: Vec<PathBuf>,
        rootfs: Option<PathBuf>,
    },
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Image::Container(s) => write!(f, "container_image {s}"),
            Image::Iso(s) => write!(f, "iso {s}"),
            Image::Files { kernel, .. } => write!(f, "kernel {}", kernel.display()),
        }
    }
}

/// The release keys pick an ISO by name for the whole command; a machine names its ISO.
const RELEASE_KEYS: &[&str] = &[
    "repository",
    "release_version",
    "flavor",
    "artifact_version",
];

impl Profiles {
    /// Reads a machines file; `cloud_config_file` paths are relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<Profiles> {
        let text = read_capped(path, "machines file")?;
        Profiles::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| anyhow!("machines file {}: {e:#}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Profiles> {
        if text.trim().is_empty() {
            return Ok(Profiles::default());
        }
        let v: Value = serde_saphyr::from_str(text).map_err(|e| anyhow!("not valid YAML: {e}"))?;
        Profiles::from_value(&v, base)
    }

    /// From the YAML list (or `{machines: [...]}`).
    pub fn from_value(v: &Value, base: &Path) -> anyhow::Result<Profiles> {
        let list = match v {
            Value::Array(a) => a,
            Value::Object(m) if m.contains_key("machines") => match &m["machines"] {
                Value::Array(a) => a,
                Value::Null => return Ok(Profiles::default()),
                _ => bail!("machines: must be a list of entries (- mac: …)"),
            },
            Value::Null => return Ok(Profiles::default()),
            _ => bail!("must be a list of entries, each like: - mac: 52:54:00:12:34:56"),
        };
        if list.len() > MAX_ENTRIES {
            bail!("{} entries; at most {MAX_ENTRIES}", list.len());
        }
        let mut out = Profiles::default();
        let mut seen: HashMap<Selector, usize> = HashMap::new();
        for (i, e) in list.iter().enumerate() {
            let p = entry(i, e, base).map_err(|err| anyhow!("entry {}: {err:#}", i + 1))?;
            if let Some(&other) = seen.get(&p.select) {
                let other = &out.entries[other].name;
                if p.select.is_empty() {
                    bail!(
                        "entry {} ({}) is a second entry without mac, uuid or arch; {other} is already the default",
                        i + 1,
                        p.name,
                    );
                }
                bail!(
                    "entry {} ({}) selects the same machines as {other}; merge them",
                    i + 1,
                    p.name,
                );
            }
            seen.insert(p.select.clone(), i);
            match p.select.mac {
                _ if p.select.is_empty() => out.default = Some(i),
                Some(mac) => out.by_mac.entry(mac).or_default().push(i),
                None => out.others.push(i),
            }
            out.entries.push(p);
        }
        Ok(out)
    }

    /// The profile of machine `m`: the first entry whose selectors match, else the default entry.
    pub fn find(&self, m: &Machine) -> Option<&Profile> {
        self.by_mac
            .get(&m.mac)
            .into_iter()
            .flatten()
            .chain(&self.others)
            .filter(|&&i| self.entries[i].select.matches(m))
            .min()
            .or(self.default.as_ref())
            .map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A machines file as a store shares it with every replica (`daybreak machines apply`): JSON of
/// the same list, each `cloud_config_file` (a file or a URL, read here, by the operator) made
/// its text (`cloud_config`). Checked exactly as `--machines FILE` is, first; an entry naming a
/// local image file is refused (what a shared store says is read as hostile, so a replica never
/// opens a local path, nor fetches a URL for a cloud-config, that it names).
pub fn shared_text(path: &Path) -> anyhow::Result<(Profiles, Vec<u8>)> {
    let profiles = Profiles::load(path)?;
    let text = read_capped(path, "machines file")?;
    let base = artifacts::absolute(path.parent().unwrap_or(Path::new(".")));
    let mut v: Value = if text.trim().is_empty() {
        Value::Array(Vec::new())
    } else {
        serde_saphyr::from_str(&text).map_err(|e| anyhow!("not valid YAML: {e}"))?
    };
    let list = match &mut v {
        Value::Object(m) => m.get_mut("machines"),
        other => Some(other),
    };
    if let Some(Value::Array(entries)) = list {
        for e in entries {
            let Value::Object(m) = e else { continue };
            if let Some(Value::String(f)) = m.get("cloud_config_file").cloned() {
                let t = match artifacts::is_url(&f) {
                    true => crate::template::read_text(&f, "cloud_config_file")?,
                    false => read_capped(&base.join(&f), "cloud_config_file")?,
                };
                m.remove("cloud_config_file");
                m.insert("cloud_config".into(), Value::String(t));
            }
        }
    }
    let bytes = serde_json::to_vec(&v)?;
    let shared =
        from_shared(&bytes).map_err(|e| anyhow!("machines file {}: {e:#}", path.display()))?;
    debug_assert_eq!(shared.len(), profiles.len());
    Ok((profiles, bytes))
}

/// Profiles from what a store shares, read as hostile: checked as a file is, no entry may name
/// a local file (a kernel, an initrd, a squashfs or an ISO on this host), and cloud-configs are
/// inline (a URL to fetch would let whoever writes the store make every replica fetch any URL
/// and hand the answer to a machine).
pub fn from_shared(bytes: &[u8]) -> anyhow::Result<Profiles> {
    if bytes.len() > MAX_FILE {
        bail!("larger than {} MiB", MAX_FILE >> 20);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("not UTF-8 text"))?;
    let mut v: Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let list = match &mut v {
        Value::Object(m) => m.get_mut("machines"),
        other => Some(other),
    };
    if let Some(Value::Array(entries)) = list {
        for (i, e) in entries.iter_mut().enumerate() {
            let Value::Object(m) = e else { continue };
            let refuse = |key: &str| {
                anyhow!("entry {}: {key} names a file on this host or a URL to fetch; profiles shared by replicas name images by a registry container_image or an iso URL, and carry cloud-configs inline (daybreak machines apply puts a cloud_config_file's text in)", i + 1)
            };
            for key in ["kernel", "initrd", "rootfs", "cloud_config_file"] {
                if m.get(key).is_some_and(|v| !v.is_null()) {
                    return Err(refuse(key));
                }
            }
            if let Some(Value::String(s)) = m.get("iso") {
                if !artifacts::is_url(s) {
                    return Err(refuse("iso"));
                }
            }
            // Only a registry: a path, dir://, file:// would be read on this host.
            if let Some(Value::String(c)) = m.get_mut("container_image") {
                let bare = c
                    .strip_prefix("oci://")
                    .or_else(|| c.strip_prefix("docker://"))
                    .unwrap_or(c);
                if bare.contains("://") || bare.starts_with(['/', '.', '~']) {
                    return Err(refuse("container_image"));
                }
                *c = format!("oci://{bare}");
            }
        }
    }
    Profiles::from_value(&v, Path::new("/"))
}

/// A machines file, watched for edits (by its time, size and inode: an editor's rename counts).
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    seen: Option<(std::time::SystemTime, u64, u64)>,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl Watched {
    /// The file's profiles, and the watch on it.
    pub fn load(path: &Path) -> anyhow::Result<(Profiles, Watched)> {
        let w = Watched {
            path: path.to_path_buf(),
            seen: stamp(path),
        };
        Ok((Profiles::load(path)?, w))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's profiles again when it changed since the last look; `None` when it did not.
    pub fn edited(&mut self) -> Option<anyhow::Result<Profiles>> {
        let now = stamp(&self.path);
        if now == self.seen {
            return None;
        }
        self.seen = now;
        let p = Profiles::load(&self.path);
        if let Ok(p) = &p {
            tracing::info!(
                file = %self.path.display(),
                entries = p.len(),
                "machines file changed: the new profiles apply from each machine's next boot"
            );
        }
        Some(p)
    }
}

fn read_capped(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_FILE as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    if text.len() > MAX_FILE {
        bail!(
            "the {what} {} is larger than {} MiB",
            path.display(),
            MAX_FILE >> 20
        );
    }
    Ok(text)
}

fn string<'a>(m: &'a Map<String, Value>, key: &str) -> anyhow::Result<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("{key} must be text, not {other}"),
    }
}

/// A host name as RFC 1123 allows it: letters, digits, `-`, dots between labels.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn entry(i: usize, v: &Value, base: &Path) -> anyhow::Result<Profile> {
    let Value::Object(m) = v else {
        bail!("must be a mapping (mac: …, action: …), not {v}");
    };
    for k in RELEASE_KEYS {
        if m.contains_key(*k) {
            bail!("{k}: a machine names its own image with container_image or iso (a path or URL of the ISO)");
        }
    }
    let image = image(m, base)?;
    let mut select = Selector::default();
    if let Some(s) = string(m, "mac")? {
        select.mac = Some(s.parse().map_err(|e| anyhow!("mac {e}"))?);
    }
    if let Some(s) = string(m, "uuid")? {
        select.uuid = Some(s.parse().map_err(|e| anyhow!("uuid {e}"))?);
    }
    if let Some(s) = string(m, "arch")? {
        select.arch = Some(s.parse().map_err(|e| anyhow!("arch {e}"))?);
    }
    let name = match string(m, "name")? {
        Some(n) if !n.is_empty() && n.len() <= 64 && !n.chars().any(char::is_control) => {
            n.to_string()
        }
        Some(n) => bail!("name {n:?} must be 1 to 64 printable characters"),
        None => format!("entry {}", i + 1),
    };
    let hostname = string(m, "hostname")?
        .map(|h| {
            valid_hostname(h).then(|| h.to_string()).ok_or_else(|| {
                anyhow!("hostname {h:?}: letters, digits and '-', dots between labels")
            })
        })
        .transpose()?;
    let action = match string(m, "action")? {
        None => Action::Install,
        Some(a) => Action::parse(a)
            .ok_or_else(|| anyhow!("action {a:?}: one of install, live, local, ignore"))?,
    };
    let cmdline = match (m.get("netboot"), m.get("netboot.cmdline")) {
        (_, Some(_)) => string(m, "netboot.cmdline")?,
        (Some(Value::Object(n)), None) => string(n, "cmdline")?,
        (Some(other), None) if !other.is_null() => bail!("netboot must be a mapping (cmdline: …)"),
        _ => None,
    };
    if let Some(c) = cmdline {
        if c.contains("{{") {
            bail!("netboot.cmdline: {{{{ ID … }}}} templates are for --cmdline; a machine's command line is plain text");
        }
        if c.chars().any(char::is_control) {
            bail!("netboot.cmdline must be one line");
        }
        if let Err(e) = crate::render::check_ipxe(c) {
            bail!("netboot.cmdline: {e}; write it without that word");
        }
    }
    let cloud_config = match (string(m, "cloud_config")?, string(m, "cloud_config_file")?) {
        (Some(_), Some(_)) => bail!("give cloud_config or cloud_config_file, not both"),
        (Some(t), None) => Some(t.to_string()),
        (None, Some(src)) if artifacts::is_url(src) => {
            let t = crate::template::read_text(src, "cloud_config_file")?;
            if t.len() > MAX_FILE {
                bail!(
                    "cloud_config_file {src} is larger than {} MiB",
                    MAX_FILE >> 20
                );
            }
            Some(t)
        }
        (None, Some(p)) => Some(read_capped(&base.join(p), "cloud_config_file")?),
        (None, None) => None,
    };
    if let Some(t) = &cloud_config {
        // Template errors now, not when the machine asks.
        crate::template::render(t, &Map::new())
            .map_err(|e| anyhow!("cloud-config template: {e}"))?;
    }
    const KNOWN: &[&str] = &[
        "mac",
        "uuid",
        "arch",
        "name",
        "hostname",
        "action",
        "netboot",
        "netboot.cmdline",
        "cloud_config",
        "cloud_config_file",
        "container_image",
        "iso",
        "kernel",
        "initrd",
        "rootfs",
    ];
    let mut vars = Vec::new();
    for (k, v) in m {
        if KNOWN.contains(&k.as_str()) {
            continue;
        }
        if k == "daybreak" {
            bail!("daybreak is Daybreak's own template key ([[[ .daybreak.installed_url ]]]); choose another name");
        }
        vars.push((k.clone(), v.clone()));
    }
    vars.shrink_to_fit();
    Ok(Profile {
        name,
        select,
        hostname,
        action,
        cmdline: cmdline.map(str::to_string),
        cloud_config,
        vars,
        image,
    })
}

/// `container_image`, `iso`, or `kernel` with `initrd` and `rootfs` (paths relative to the
/// machines file), one of them.
fn image(m: &Map<String, Value>, base: &Path) -> anyhow::Result<Option<Image>> {
    let container = string(m, "container_image")?;
    let iso = string(m, "iso")?;
    let kernel = string(m, "kernel")?;
    let initrds: Vec<PathBuf> = match m.get("initrd") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![base.join(s)],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(base.join(s)),
                other => Err(anyhow!("initrd: each must be a path, not {other}")),
            })
            .collect::<anyhow::Result<_>>()?,
        Some(other) => bail!("initrd must be a path or a list of paths, not {other}"),
    };
    let rootfs = string(m, "rootfs")?.map(|r| base.join(r));
    let files = kernel.is_some() || !initrds.is_empty() || rootfs.is_some();
    match (container, iso, files) {
        (Some(c), None, false) if !c.is_empty() => Ok(Some(Image::Container(c.to_string()))),
        (None, Some(i), false) if !i.is_empty() => Ok(Some(Image::Iso(if artifacts::is_url(i) {
            i.to_string()
        } else {
            base.join(i).to_string_lossy().into_owned()
        }))),
        (None, None, true) => match kernel {
            Some(k) => Ok(Some(Image::Files {
                kernel: base.join(k),
                initrds,
                rootfs,
            })),
            None => bail!("initrd and rootfs need a kernel: give kernel too"),
        },
        (None, None, false) => Ok(None),
        _ => bail!("give one image: container_image, iso, or kernel (with initrd and rootfs)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const B: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x57]);

    fn m(mac: Mac) -> Machine {
        Machine {
            mac,
            uuid: None,
            arch: Some(CpuArch::Amd64),
        }
    }

    #[test]
    fn entries_select_by_mac_uuid_and_arch_and_the_default_takes_the_rest() {
        let p = Profiles::parse(
            "- mac: 52:54:00:12:34:56\n  hostname: cp-1\n  role: master\n  action: live\n\
             - uuid: 00112233-4455-6677-8899-AABBCCDDEEFF\n  action: local\n\
             - arch: arm64\n  name: arms\n  netboot:\n    cmdline: console=ttyAMA0\n\
             - action: ignore\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(p.len(), 4);
        let a = p.find(&m(A)).unwrap();
        assert_eq!(
            (a.name.as_str(), a.hostname.as_deref(), a.action),
            ("entry 1", Some("cp-1"), Action::Live)
        );
        assert_eq!(a.vars, [("role".to_string(), Value::from("master"))]);
        assert_eq!(p.find(&m(B)).unwrap().action, Action::Ignore);
        // The UUID as written, or with its first three fields swapped (SMBIOS order).
        let u: Uuid = "00112233-4455-6677-8899-aabbccddeeff".parse().unwrap();
        for uuid in [u, u.swapped()] {
            let found = p
                .find(&Machine {
                    uuid: Some(uuid),
                    ..m(B)
                })
                .unwrap();
            assert_eq!(found.action, Action::Local);
        }
        let arm = p
            .find(&Machine {
                arch: Some(CpuArch::Arm64),
                ..m(B)
            })
            .unwrap();
        assert_eq!(
            (arm.name.as_str(), arm.cmdline.as_deref()),
            ("arms", Some("console=ttyAMA0"))
        );
        // File order decides between an entry by MAC and an earlier one by architecture.
        let p = Profiles::parse(
            "- arch: amd64\n  name: every-amd64\n- mac: 52:54:00:12:34:56\n  name: a\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(p.find(&m(A)).unwrap().name, "every-amd64");
        let arm = Machine {
            arch: Some(CpuArch::Arm64),
            ..m(A)
        };
        assert_eq!(p.find(&arm).unwrap().name, "a");
        // No default entry: unlisted machines get no profile (the command's own settings).
        let p = Profiles::parse("- mac: 52-54-00-12-34-56\n", Path::new(".")).unwrap();
        assert!(p.find(&m(A)).is_some() && p.find(&m(B)).is_none());
        // Images of their own: relative paths from the machines file.
        let p = Profiles::parse(
            "- mac: 52:54:00:12:34:56\n  container_image: quay.io/kairos/alpine:3.21\n\
             - mac: 52:54:00:12:34:57\n  iso: k.iso\n\
             - arch: arm64\n  kernel: k\n  initrd: [i1, i2]\n  rootfs: r\n",
            Path::new("/m"),
        )
        .unwrap();
        let images: Vec<_> = p.entries.iter().map(|e| e.image.clone().unwrap()).collect();
        assert_eq!(
            images[0],
            Image::Container("quay.io/kairos/alpine:3.21".into())
        );
        assert_eq!(images[1], Image::Iso("/m/k.iso".into()));
        assert_eq!(
            images[2],
            Image::Files {
                kernel: "/m/k".into(),
                initrds: vec!["/m/i1".into(), "/m/i2".into()],
                rootfs: Some("/m/r".into())
            }
        );
        assert!(p.entries[0].vars.is_empty());
    }

    #[test]
    fn mistakes_name_the_entry_and_the_fix() {
        for (text, want) in [
            ("mac: x", "must be a list"),
            (
                "- mac: 52:54:00\n",
                "entry 1: mac \"52:54:00\" is not a MAC",
            ),
            (
                "- {}\n- action: reboot\n",
                "entry 2: action \"reboot\": one of install",
            ),
            ("- arch: riscv64\n", "amd64 or arm64"),
            ("- uuid: 1234\n", "uuid must be text, not 1234"),
            ("- uuid: 'x-1234'\n", "is not a UUID"),
            ("- hostname: 'a b'\n", "hostname \"a b\""),
            ("- container_image: x\n  iso: y.iso\n", "give one image"),
            ("- initrd: i\n", "need a kernel"),
            ("- release_version: v3\n", "names its own image"),
            (
                "- netboot:\n    cmdline: 'a {{ ID \"/x\" }}'\n",
                "plain text",
            ),
            (
                "- netboot.cmdline: 'quiet ; shell'\n",
                "iPXE would end the command there",
            ),
            ("- cloud_config: 'a [[[ x'\n", "cloud-config template"),
            ("- cloud_config: a\n  cloud_config_file: b\n", "not both"),
            ("- daybreak: 1\n", "Daybreak's own template key"),
            (
                "- action: live\n- action: ignore\n",
                "second entry without mac",
            ),
            (
                "- mac: 52:54:00:12:34:56\n- mac: 52:54:00:12:34:56\n",
                "same machines as entry 1",
            ),
            (
                "- cloud_config_file: /nonexistent/x.yaml\n",
                "cannot read the cloud_config_file",
            ),
            ("- [\n", "not valid YAML"),
        ] {
            let e = format!("{:#}", Profiles::parse(text, Path::new(".")).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn cloud_config_file_is_read_beside_the_machines_file() {
        let d = testkit::tempdir("profiles-cc");
        std::fs::write(
            d.join("w.yaml"),
            "#cloud-config\nhostname: [[[ .hostname ]]]\n",
        )
        .unwrap();
        let p = Profiles::parse("- cloud_config_file: w.yaml\n", &d).unwrap();
        assert!(p.entries[0]
            .cloud_config
            .as_deref()
            .unwrap()
            .starts_with("#cloud-config"));
        let _ = std::fs::remove_dir_all(d);
    }

    /// Item: profiles a store shares are read as hostile: no entry may name a file on the
    /// replica's host (a cloud-config, a kernel, an initrd, a squashfs, an ISO, an image
    /// directory or archive); images come from a registry or an ISO URL.
    #[test]
    fn shared_profiles_never_name_a_file_on_this_host() {
        for bad in [
            r#"[{"kernel":"/etc/shadow"}]"#,
            r#"[{"container_image":"dir:///"}]"#,
            r#"[{"container_image":"/root/layout"}]"#,
            r#"[{"container_image":"./x"}]"#,
            r#"[{"container_image":"file:///root/x.tar"}]"#,
            r#"[{"cloud_config_file":"/etc/shadow"}]"#,
            r#"[{"cloud_config_file":"http://169.254.169.254/latest/user-data"}]"#,
            r#"[{"iso":"/var/lib/x.iso"}]"#,
            r#"{"machines":[{"rootfs":"/etc/passwd"}]}"#,
            r#"[{"initrd":["/etc/shadow"]}]"#,
        ] {
            let e = from_shared(bad.as_bytes()).unwrap_err();
            assert!(
                format!("{e}").contains("names a file on this host"),
                "{bad}: {e}"
            );
        }
        let ok = from_shared(br#"[{"mac":"52:54:00:00:00:01","container_image":"quay.io/kairos/ubuntu:24.04","cloud_config":"x"}]"#).unwrap();
        assert!(
            matches!(&ok.entries[0].image, Some(Image::Container(c)) if c == "oci://quay.io/kairos/ubuntu:24.04")
        );
        assert!(from_shared(b"\xff").is_err() && from_shared(b"{not json").is_err());
        // What apply writes: the local cloud_config_file inlined; a local image refused.
        let d = testkit::tempdir("profiles-shared");
        std::fs::write(d.join("w.yaml"), "#cloud-config\nrole: worker\n").unwrap();
        std::fs::write(
            d.join("m.yaml"),
            "- mac: 52:54:00:00:00:02\n  cloud_config_file: w.yaml\n",
        )
        .unwrap();
        let (p, bytes) = shared_text(&d.join("m.yaml")).unwrap();
        let again = from_shared(&bytes).unwrap();
        assert_eq!(p.entries[0].cloud_config, again.entries[0].cloud_config);
        assert!(!String::from_utf8_lossy(&bytes).contains("w.yaml"));
        std::fs::write(d.join("k.yaml"), "- kernel: vmlinuz\n").unwrap();
        std::fs::write(d.join("vmlinuz"), "k").unwrap();
        let e = shared_text(&d.join("k.yaml")).unwrap_err();
        assert!(
            format!("{e:#}").contains("names a file on this host"),
            "{e:#}"
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
