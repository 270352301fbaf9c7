//! The boot plan: which files a booting machine gets, under which URLs, and with which kernel
//! command line; and the HTTP routes that serve them (the iPXE script, the files, and pixiecore's
//! `/_/ipxe`, `/_/file`, `/_/booting` paths, which existing setups and the Kairos generic iPXE ISO
//! use).
//!
//! URLs depend on the address a client reached us by, so the command line is kept as a template
//! and rendered per request.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::http::{loggable, query_param, Body, Reply, Request, Router};
use pxe::routes;

/// Kairos's kernel arguments (AuroraBoot's defaults), around the two URLs Daybreak fills in.
pub const DEFAULT_CMDLINE_HEAD: &str =
    "rd.live.overlay.overlayfs rd.neednet=1 ip=dhcp rd.cos.disable";
pub const DEFAULT_CMDLINE_MID: &str = "netboot nodepair.enable";
pub const DEFAULT_CMDLINE_TAIL: &str = "console=tty1 console=ttyS0 console=tty0";

/// A file the HTTP server may hand out. It is opened once, when the plan is made, and served
/// from that descriptor: whatever happens to the path afterwards (a symlink planted in its
/// place, a rename), requests get the file that was checked.
#[derive(Debug, Clone)]
pub struct BootFile {
    /// URL path below `/`, also the `name=` of `/_/file`.
    pub name: String,
    /// Where it was read from (`None` for content made in memory).
    pub path: Option<PathBuf>,
    pub size: u64,
    pub body: Body,
    /// Served only under its unguessable name, and never logged by it.
    pub secret: bool,
}

/// Where a cloud-config comes from.
#[derive(Debug, Clone)]
pub enum CloudConfig {
    File(PathBuf),
    /// Rendered by this run: kept in memory, never written to the state directory.
    Text(Arc<[u8]>),
}

impl BootFile {
    fn open(name: &str, path: &Path, what: &str) -> anyhow::Result<BootFile> {
        let cannot = || {
            format!(
                "{what} file {} cannot be read; check the path",
                path.display()
            )
        };
        let file = File::open(path).with_context(cannot)?;
        let meta = file.metadata().with_context(cannot)?;
        if !meta.is_file() {
            bail!("{what} {} is not a regular file", path.display());
        }
        Ok(BootFile {
            name: name.to_string(),
            path: Some(path.to_path_buf()),
            size: meta.len(),
            body: Body::File(Arc::new(file)),
            secret: false,
        })
    }

    fn in_iso(name: &str, iso: &Path, file: &Arc<File>, entry: &artifacts::iso::Entry) -> BootFile {
        BootFile {
            name: name.to_string(),
            path: Some(iso.to_path_buf()),
            size: entry.size(),
            body: Body::Ranges(
                file.clone(),
                entry.extents.iter().map(|e| (e.offset, e.len)).collect(),
            ),
            secret: false,
        }
    }

    /// The cloud-config, under a name made of 128 random bits that changes with every run:
    /// only machines given the kernel command line learn it.
    fn cloud_config(source: &CloudConfig) -> anyhow::Result<BootFile> {
        let token = artifacts::lock::random_hex(16).context("reading random bytes")?;
        let name = format!("cloud-config-{token}.yaml");
        let mut f = match source {
            CloudConfig::File(p) => BootFile::open(&name, p, "cloud-config")?,
            CloudConfig::Text(t) => BootFile {
                name,
                path: None,
                size: t.len() as u64,
                body: Body::Memory(t.clone()),
                secret: false,
            },
        };
        f.secret = true;
        Ok(f)
    }
}

/// A piece of the kernel command line template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The URL of a registered file, by name.
    Url(String),
}

/// What a plan is built from.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// Required unless `iso` is given.
    pub kernel: Option<PathBuf>,
    /// A Kairos ISO whose /boot/kernel, /boot/initrd and /rootfs.squashfs are served in place.
    pub iso: Option<PathBuf>,
    pub initrds: Vec<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub cloud_config: Option<CloudConfig>,
    /// Replaces the default arguments; `root=live:` and `config_url=` are still set by Daybreak.
    pub cmdline: Option<String>,
    /// Where clients reach the HTTP server (port, and an address to announce), shared with
    /// the DHCP side.
    pub http: pxe::HttpAddress,
}

pub struct Plan {
    pub kernel: BootFile,
    pub initrds: Vec<BootFile>,
    pub rootfs: Option<BootFile>,
    pub cloud_config: Option<BootFile>,
    pub extras: Vec<BootFile>,
    cmdline: Vec<Part>,
    http: pxe::HttpAddress,
    /// iPXE binaries by name, for UEFI HTTP boot (`/ipxe/NAME`).
    binaries: HashMap<String, Arc<[u8]>>,
    /// Told of scripts and `booting` calls, and of the MAC each script URL names.
    events: Option<Arc<crate::events::Hub>>,
}

/// Splits `{{ ID "path" }}` templates out of a command line, the form pixiecore and AuroraBoot
/// users write. Returns text and paths in order.
fn parse_templates(cmdline: &str) -> anyhow::Result<Vec<Result<String, PathBuf>>> {
    let mut out = Vec::new();
    let mut rest = cmdline;
    while let Some(open) = rest.find("{{") {
        out.push(Ok(rest[..open].to_string()));
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .with_context(|| format!("unclosed '{{{{' in --cmdline at: {}", &rest[open..]))?;
        let inner = after[..close].trim();
        let arg = inner
            .strip_prefix("ID")
            .map(str::trim)
            .and_then(|a| a.strip_prefix('"'))
            .and_then(|a| a.strip_suffix('"'))
            .with_context(|| {
                format!("unsupported template {{{{ {inner} }}}} in --cmdline; the only form is {{{{ ID \"/path/to/file\" }}}}")
            })?;
        out.push(Err(PathBuf::from(arg)));
        rest = &after[close + 2..];
    }
    out.push(Ok(rest.to_string()));
    Ok(out)
}

/// A file name with anything but letters, digits and `.`, `_`, `+`, `-` made `_`: safe in a
/// URL, an iPXE script line and a directory.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A name for a file registered from a path: its [`safe_name`], unique among `taken`.
fn unique_name(taken: &[&BootFile], base: &str) -> String {
    let base = safe_name(base);
    let base = base.as_str();
    let mut name = base.to_string();
    let mut n = 1;
    while taken.iter().any(|f| f.name == name)
        || name.starts_with('_')
        || name == "ipxe"
        || name == "boot.ipxe"
    {
        n += 1;
        name = format!("{n}-{base}");
    }
    name
}

impl Plan {
    pub fn new(input: &PlanInput, binaries: HashMap<String, Arc<[u8]>>) -> anyhow::Result<Plan> {
        let (kernel, initrds, rootfs) = match (&input.iso, &input.kernel) {
            (Some(iso_path), None) if input.initrds.is_empty() && input.rootfs.is_none() => {
                let iso = artifacts::iso::Iso::open(iso_path)?;
                let f = iso.netboot_files()?;
                let file = Arc::new(File::open(iso_path).with_context(|| {
                    format!("ISO {} cannot be read", iso_path.display())
                })?);
                (
                    BootFile::in_iso("kernel", iso_path, &file, &f.kernel),
                    vec![BootFile::in_iso("initrd0", iso_path, &file, &f.initrd)],
                    Some(BootFile::in_iso("rootfs.squashfs", iso_path, &file, &f.rootfs)),
                )
            }
            (Some(_), _) => bail!("--iso provides the kernel, initrd and rootfs; drop --kernel, --initrd and --rootfs"),
            (None, None) => bail!("nothing to boot: give --kernel (with --initrd and --rootfs) or --iso"),
            (None, Some(k)) => (
                BootFile::open("kernel", k, "kernel")?,
                input
                    .initrds
                    .iter()
                    .enumerate()
                    .map(|(i, p)| BootFile::open(&format!("initrd{i}"), p, "initrd"))
                    .collect::<anyhow::Result<Vec<_>>>()?,
                input.rootfs.as_deref().map(|p| BootFile::open("rootfs.squashfs", p, "rootfs")).transpose()?,
            ),
        };
        let cloud_config = input
            .cloud_config
            .as_ref()
            .map(BootFile::cloud_config)
            .transpose()?;

        let mut plan = Plan {
            kernel,
            initrds,
            rootfs,
            cloud_config,
            extras: Vec::new(),
            cmdline: Vec::new(),
            http: input.http,
            binaries,
            events: None,
        };
        let mut parts = Vec::new();
        match &input.cmdline {
            None => {
                parts.push(Part::Text(DEFAULT_CMDLINE_HEAD.into()));
                plan.push_rootfs(&mut parts);
                parts.push(Part::Text(format!(" {DEFAULT_CMDLINE_MID}")));
                plan.push_config(&mut parts);
                parts.push(Part::Text(format!(" {DEFAULT_CMDLINE_TAIL}")));
            }
            Some(custom) => {
                // Our root=live: and config_url= replace any the user wrote, so the machine always
                // boots the files this server registered.
                let mut text = String::new();
                for piece in parse_templates(custom)? {
                    match piece {
                        Ok(t) => text.push_str(&t),
                        Err(path) => {
                            let name = plan.register_extra(&path)?;
                            parts.push(Part::Text(std::mem::take(&mut text)));
                            parts.push(Part::Url(name));
                        }
                    }
                }
                parts.push(Part::Text(text));
                parts = plan.strip_managed(parts);
                plan.push_rootfs(&mut parts);
                plan.push_config(&mut parts);
            }
        }
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        plan.cmdline = parts;
        Ok(plan)
    }

    /// The plan, reporting to `hub`.
    pub fn observed(mut self, hub: Arc<crate::events::Hub>) -> Plan {
        self.events = Some(hub);
        self
    }

    fn push_rootfs(&self, parts: &mut Vec<Part>) {
        if let Some(r) = &self.rootfs {
            parts.push(Part::Text(" root=live:".into()));
            parts.push(Part::Url(r.name.clone()));
        }
    }

    fn push_config(&self, parts: &mut Vec<Part>) {
        if let Some(c) = &self.cloud_config {
            parts.push(Part::Text(" config_url=".into()));
            parts.push(Part::Url(c.name.clone()));
        }
    }

    /// Drops `root=live:…` and `config_url=…` words (whatever follows them, URL templates
    /// included) when Daybreak sets them itself.
    fn strip_managed(&self, parts: Vec<Part>) -> Vec<Part> {
        let mut managed = Vec::new();
        if self.rootfs.is_some() {
            managed.push("root=live:");
        }
        if self.cloud_config.is_some() {
            managed.push("config_url=");
        }
        let mut out = Vec::new();
        let mut skipping = false;
        for p in parts {
            match p {
                Part::Url(_) if skipping => {}
                Part::Url(n) => out.push(Part::Url(n)),
                Part::Text(t) => {
                    let mut kept = String::new();
                    // Split keeping separators so spacing survives.
                    for (i, word) in t.split(' ').enumerate() {
                        if i > 0 {
                            skipping = false;
                            kept.push(' ');
                        }
                        if skipping {
                            continue;
                        }
                        if managed.iter().any(|m| word.starts_with(m)) {
                            skipping = true;
                            kept.pop();
                            continue;
                        }
                        kept.push_str(word);
                    }
                    out.push(Part::Text(kept));
                }
            }
        }
        out
    }

    /// Registers a file named in a `{{ ID "path" }}` template, reusing the name of a file already
    /// registered under the same path.
    fn register_extra(&mut self, path: &Path) -> anyhow::Result<String> {
        if let Some(f) = self.files().find(|f| f.path.as_deref() == Some(path)) {
            return Ok(f.name.clone());
        }
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "file".into());
        let name = unique_name(&self.files().collect::<Vec<_>>(), &base);
        let f = BootFile::open(&name, path, "--cmdline template")?;
        self.extras.push(f);
        Ok(name)
    }

    /// Every registered file.
    pub fn files(&self) -> impl Iterator<Item = &BootFile> {
        std::iter::once(&self.kernel)
            .chain(&self.initrds)
            .chain(&self.rootfs)
            .chain(&self.cloud_config)
            .chain(&self.extras)
    }

    /// `http://HOST:PORT` for a client that reached us at `local`.
    pub fn base_url(&self, local: IpAddr) -> String {
        self.http.base(local)
    }

    pub fn file_url(&self, base: &str, name: &str) -> String {
        format!("{base}/{}", crate::http::percent_encode(name))
    }

    pub fn cmdline(&self, base: &str) -> String {
        self.render_cmdline(base, false)
    }

    /// The command line for logs: the cloud-config's secret name left out.
    pub fn cmdline_redacted(&self, base: &str) -> String {
        self.render_cmdline(base, true)
    }

    fn render_cmdline(&self, base: &str, redact: bool) -> String {
        let secret = |n: &str| self.files().any(|f| f.secret && f.name == n);
        let mut s = String::new();
        for p in &self.cmdline {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Url(n) if redact && secret(n) => {
                    s.push_str(&self.file_url(base, "cloud-config-SECRET.yaml"))
                }
                Part::Url(n) => s.push_str(&self.file_url(base, n)),
            }
        }
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The iPXE script for one machine.
    pub fn script(&self, base: &str, mac: Option<&str>) -> String {
        let mut s = String::from("#!ipxe\n");
        s.push_str(&format!(
            "kernel --name kernel {}\n",
            self.file_url(base, &self.kernel.name)
        ));
        let mut initrd_args = String::new();
        for f in &self.initrds {
            s.push_str(&format!(
                "initrd --name {} {}\n",
                f.name,
                self.file_url(base, &f.name)
            ));
            initrd_args.push_str(&format!("initrd={} ", f.name));
        }
        if let Some(mac) = mac.filter(|m| {
            m.bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'-')
        }) {
            s.push_str(&format!(
                "imgfetch --name ready {base}{}?mac={mac} ||\nimgfree ready ||\n",
                routes::BOOTING
            ));
        }
        s.push_str(&format!(
            "boot kernel {initrd_args}{}\n",
            self.cmdline(base)
        ));
        s
    }

    fn file_reply(f: &BootFile) -> Reply {
        let content_type = if f.name.ends_with(".yaml") {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        Reply::Resource {
            name: if f.secret {
                "cloud-config".into()
            } else {
                f.name.clone()
            },
            content_type,
            body: f.body.clone(),
        }
    }
}

/// What the artifact file server (`listen_addr`, :8080) hands out: the kernel, the initrds, the
/// squashfs and the ISO they came from, for people who want to fetch them. Never the
/// cloud-config, which holds passwords and tokens: it is only on the netboot port.
pub struct ArtifactFiles {
    files: Vec<BootFile>,
}

impl ArtifactFiles {
    pub fn new(plan: &Plan, iso: Option<&Path>) -> anyhow::Result<ArtifactFiles> {
        let mut files: Vec<BootFile> = std::iter::once(&plan.kernel)
            .chain(&plan.initrds)
            .chain(&plan.rootfs)
            .cloned()
            .collect();
        if let Some(iso) = iso {
            let name = iso
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image.iso".into());
            // Downloads are cached as `<12 hex digits of the URL's hash>-<name>`: serve <name>.
            let name = match name.split_once('-') {
                Some((tag, rest))
                    if tag.len() == 12 && tag.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    rest.to_string()
                }
                _ => name,
            };
            files.push(BootFile::open(&name, iso, "ISO")?);
        }
        Ok(ArtifactFiles { files })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.name.as_str())
    }
}

impl Router for ArtifactFiles {
    fn route(&self, req: &Request<'_>) -> Reply {
        if req.path == "/" {
            let list: String = self
                .files
                .iter()
                .map(|f| format!("{}\t{}\n", f.name, f.size))
                .collect();
            return Reply::Resource {
                name: "_index".into(),
                content_type: "text/plain; charset=utf-8",
                body: Body::Memory(list.into_bytes().into()),
            };
        }
        let name = req.path.strip_prefix('/').unwrap_or(req.path);
        self.files
            .iter()
            .find(|f| f.name == name)
            .map_or(Reply::NotFound, Plan::file_reply)
    }
}

impl Router for Plan {
    fn route(&self, req: &Request<'_>) -> Reply {
        let path = req.path;
        match path {
            routes::SCRIPT | routes::SCRIPT_ALIAS => {
                let mac = query_param(req.query, "mac");
                if let Some(hub) = &self.events {
                    if let Some(m) = &mac {
                        hub.learn(req.peer.ip(), m);
                    }
                    hub.emit(
                        Some(req.peer.ip()),
                        mac.as_deref(),
                        crate::events::Step::Script,
                    );
                }
                let base = self.base_url(req.local);
                tracing::info!(
                    client = %req.peer.ip(),
                    mac = %mac
                        .as_deref()
                        .map_or_else(|| "-".into(), |m| crate::events::normal_mac(m)
                            .unwrap_or_else(|| loggable(m).into_owned())),
                    arch = %loggable(query_param(req.query, "arch").as_deref().unwrap_or("-")),
                    "boot script"
                );
                Reply::Resource {
                    name: "_script".into(),
                    content_type: "text/plain; charset=utf-8",
                    body: Body::Memory(self.script(&base, mac.as_deref()).into_bytes().into()),
                }
            }
            routes::BOOTING => {
                if let Some(hub) = &self.events {
                    let mac = query_param(req.query, "mac");
                    hub.emit(
                        Some(req.peer.ip()),
                        mac.as_deref(),
                        crate::events::Step::Booting,
                    );
                }
                tracing::info!(
                    client = %req.peer.ip(),
                    mac = %loggable(query_param(req.query, "mac").as_deref().unwrap_or("-")),
                    "booting kernel"
                );
                Reply::Resource {
                    name: "_booting".into(),
                    content_type: "text/plain",
                    body: Body::Memory(Arc::from(&b""[..])),
                }
            }
            routes::FILE => match query_param(req.query, "name") {
                Some(n) => self
                    .files()
                    .find(|f| f.name == n)
                    .map_or(Reply::NotFound, Self::file_reply),
                None => Reply::NotFound,
            },
            _ => {
                if let Some(bin) = path.strip_prefix(routes::BINARIES) {
                    return match self.binaries.get(bin) {
                        Some(b) => Reply::Resource {
                            name: format!("ipxe/{bin}"),
                            content_type: "application/octet-stream",
                            body: Body::Memory(b.clone()),
                        },
                        None => Reply::NotFound,
                    };
                }
                let name = path.strip_prefix('/').unwrap_or(path);
                self.files()
                    .find(|f| f.name == name)
                    .map_or(Reply::NotFound, Self::file_reply)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::io::Write;

    fn tmpfile(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(name.as_bytes())
            .unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("daybreak-boot-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn input(d: &Path) -> PlanInput {
        PlanInput {
            kernel: Some(tmpfile(d, "vmlinuz")),
            iso: None,
            initrds: vec![tmpfile(d, "initrd.img")],
            rootfs: Some(tmpfile(d, "rootfs.squashfs")),
            cloud_config: Some(CloudConfig::File(tmpfile(d, "config.yaml"))),
            cmdline: None,
            http: pxe::HttpAddress::default(),
        }
    }

    const BASE: &str = "http://10.0.0.1:8090";

    #[test]
    fn default_cmdline_is_kairos_exactly() {
        let d = tmpdir("default");
        let plan = Plan::new(&input(&d), HashMap::new()).unwrap();
        let cc = &plan.cloud_config.as_ref().unwrap().name;
        assert_eq!(
            plan.cmdline(BASE),
            format!(
                "rd.live.overlay.overlayfs rd.neednet=1 ip=dhcp rd.cos.disable \
                 root=live:http://10.0.0.1:8090/rootfs.squashfs netboot nodepair.enable \
                 config_url=http://10.0.0.1:8090/{cc} console=tty1 console=ttyS0 console=tty0"
            )
        );
        assert!(!plan.cmdline_redacted(BASE).contains(cc.as_str()));
        let script = plan.script(BASE, Some("52:54:00:12:34:56"));
        assert!(script.starts_with("#!ipxe\nkernel --name kernel http://10.0.0.1:8090/kernel\n"));
        assert!(script.contains("initrd --name initrd0 http://10.0.0.1:8090/initrd0\n"));
        assert!(script.contains("\nboot kernel initrd=initrd0 rd.live.overlay.overlayfs "));
        assert!(script.contains("/_/booting?mac=52:54:00:12:34:56 ||"));
    }

    #[test]
    fn custom_cmdline_keeps_managed_urls_and_expands_templates() {
        let d = tmpdir("custom");
        let extra = tmpfile(&d, "extra.bin");
        let mut i = input(&d);
        i.cmdline = Some(format!(
            "quiet root=live:{{{{ ID \"/elsewhere.squashfs\" }}}} foo={{{{ ID \"{}\" }}}} config_url=http://x/y console=ttyS0",
            extra.display()
        ));
        // A template must name an existing file, even in a word Daybreak replaces.
        let err = Plan::new(&i, HashMap::new()).err();
        assert!(err.is_some(), "missing template file is an error naming it");
        i.cmdline = Some(format!(
            "quiet foo={{{{ ID \"{}\" }}}} config_url=http://x/y console=ttyS0",
            extra.display()
        ));
        let plan = Plan::new(&i, HashMap::new()).unwrap();
        let cc = &plan.cloud_config.as_ref().unwrap().name;
        assert_eq!(
            plan.cmdline(BASE),
            format!(
                "quiet foo=http://10.0.0.1:8090/extra.bin console=ttyS0 \
                 root=live:http://10.0.0.1:8090/rootfs.squashfs config_url=http://10.0.0.1:8090/{cc}"
            )
        );
        assert_eq!(plan.extras.len(), 1);
    }

    #[test]
    fn template_naming_a_registered_file_reuses_its_url() {
        let d = tmpdir("reuse");
        let mut i = input(&d);
        i.rootfs = None;
        let kernel = i.kernel.clone().unwrap();
        i.cmdline = Some(format!("k={{{{ ID \"{}\" }}}}", kernel.display()));
        let plan = Plan::new(&i, HashMap::new()).unwrap();
        assert!(plan.extras.is_empty());
        assert!(plan
            .cmdline(BASE)
            .starts_with("k=http://10.0.0.1:8090/kernel config_url="));
    }

    #[test]
    fn bad_templates_and_missing_files_are_clear_errors() {
        let d = tmpdir("bad");
        let mut i = input(&d);
        i.cmdline = Some("a {{ Foo \"x\" }}".into());
        let e = Plan::new(&i, HashMap::new()).err().unwrap().to_string();
        assert!(e.contains("ID \"/path/to/file\""), "{e}");
        i.cmdline = Some("a {{ ID \"x\"".into());
        assert!(Plan::new(&i, HashMap::new())
            .err()
            .unwrap()
            .to_string()
            .contains("unclosed"));
        let mut i = input(&d);
        i.kernel = Some(d.join("nope"));
        let e = format!("{:#}", Plan::new(&i, HashMap::new()).err().unwrap());
        assert!(e.contains("kernel file") && e.contains("nope"), "{e}");
    }

    #[test]
    fn routes_only_registered_names() {
        let d = tmpdir("routes");
        let mut bins = HashMap::new();
        bins.insert("ipxe.efi".to_string(), Arc::from(&b"EFI"[..]));
        let plan = Plan::new(&input(&d), bins).unwrap();
        let secret = format!("/{}", plan.cloud_config.as_ref().unwrap().name);
        let peer = "10.0.0.9:1234".parse().unwrap();
        let local = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let get = |path: &str, query: &str| {
            plan.route(&Request {
                path,
                query,
                local,
                peer,
            })
        };
        for (path, query) in [
            ("/kernel", ""),
            ("/initrd0", ""),
            ("/rootfs.squashfs", ""),
            (secret.as_str(), ""),
            ("/_/file", "name=kernel"),
            ("/_/ipxe", "arch=0&mac=52:54:00:00:00:01"),
            ("/boot.ipxe", ""),
            ("/_/booting", "mac=x"),
            ("/ipxe/ipxe.efi", ""),
        ] {
            assert!(
                matches!(get(path, query), Reply::Resource { .. }),
                "{path}?{query}"
            );
        }
        for (path, query) in [
            ("/", ""),
            ("/../kernel", ""),
            ("/etc/passwd", ""),
            ("/_/file", "name=../kernel"),
            ("/_/file", ""),
            // The cloud-config only under its secret per-run name.
            ("/cloud-config.yaml", ""),
            ("/_/file", "name=cloud-config.yaml"),
            ("/config.yaml", ""),
            ("/ipxe/../kernel", ""),
            ("/vmlinuz", ""),
        ] {
            assert!(
                matches!(get(path, query), Reply::NotFound),
                "{path}?{query}"
            );
        }
    }

    #[test]
    fn template_file_names_with_plus_and_spaces_round_trip() {
        let d = tmpdir("plus");
        let extra = tmpfile(&d, "a+b c.img");
        let mut i = input(&d);
        i.cmdline = Some(format!("x={{{{ ID \"{}\" }}}}", extra.display()));
        let plan = Plan::new(&i, HashMap::new()).unwrap();
        let line = plan.cmdline(BASE);
        assert!(
            line.starts_with("x=http://10.0.0.1:8090/a%2Bb_c.img "),
            "{line}"
        );
        // What a client sends for that URL is routed to the file: `+` in a path is a plus.
        let decoded = crate::http::percent_decode("/a%2Bb_c.img").unwrap();
        let raw_plus = crate::http::percent_decode("/a+b_c.img").unwrap();
        for path in [decoded.as_str(), raw_plus.as_str()] {
            let r = plan.route(&Request {
                path,
                query: "",
                local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                peer: "10.0.0.9:1".parse().unwrap(),
            });
            assert!(matches!(r, Reply::Resource { .. }), "{path}");
        }
    }

    #[test]
    fn advertise_and_port_80_shape_urls() {
        let d = tmpdir("adv");
        let mut i = input(&d);
        i.http = pxe::HttpAddress {
            port: 80,
            advertise: Some(Ipv4Addr::new(192, 0, 2, 7)),
        };
        let plan = Plan::new(&i, HashMap::new()).unwrap();
        assert_eq!(
            plan.base_url(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "http://192.0.2.7"
        );
    }
}
