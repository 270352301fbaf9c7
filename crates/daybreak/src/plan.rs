//! The boot plan: which files a booting machine gets, under which names, with which kernel
//! command line. A value: files opened once and a command-line template, nothing else. URLs
//! depend on the address a client reached us by, so the command line is kept as a template and
//! made into a [`BootSpec`] per request. As a [`Booter`], a plan boots every machine alike.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use artifacts::safe_name;

use http::{Body, Reply};
use pxe::{routes, Mac, Machine};

use crate::decision::{Ask, BootSpec, Booter, Decision};
use crate::kernel::KernelFacts;

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
    Text(bytes::Bytes),
}

impl BootFile {
    /// The file as a response: served under its name, or as "cloud-config" in logs when its
    /// name is the secret.
    pub fn reply(&self) -> Reply {
        let content_type = if self.name.ends_with(".yaml") {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        Reply::Resource {
            name: if self.secret {
                "cloud-config".into()
            } else {
                self.name.clone()
            },
            content_type,
            body: self.body.clone(),
        }
    }

    pub(crate) fn open(name: &str, path: &Path, what: &str) -> anyhow::Result<BootFile> {
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

    /// A file of a source's boot set: served whole when it is a file of its own, else as its
    /// extents of the (shared, already open) file it is in.
    fn from_set(name: &str, f: &artifacts::BootFile, file: &Arc<File>) -> BootFile {
        let body = if f.is_whole_file() {
            Body::File(file.clone())
        } else {
            Body::Ranges(
                file.clone(),
                f.extents.iter().map(|e| (e.offset, e.len)).collect(),
            )
        };
        BootFile {
            name: name.to_string(),
            path: Some(f.path.clone()),
            size: f.size(),
            body,
            secret: false,
        }
    }

    /// The cloud-config, under a name made of 128 random bits that changes with every run:
    /// only machines given the kernel command line learn it.
    fn cloud_config(source: &CloudConfig) -> anyhow::Result<BootFile> {
        let token = artifacts::random_hex(16).context("reading random bytes")?;
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
    /// Required unless `set` is given.
    pub kernel: Option<PathBuf>,
    /// The boot files of a source (an image's artifacts, or a Kairos ISO's files served in
    /// place), instead of `kernel`, `initrds` and `rootfs`.
    pub set: Option<artifacts::BootSet>,
    pub initrds: Vec<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub cloud_config: Option<CloudConfig>,
    /// Replaces the default arguments; `root=live:` and `config_url=` are still set by Daybreak.
    pub cmdline: Option<String>,
    /// Put before the names of the kernel, initrds and squashfs: one server serves several
    /// images (machine profiles) side by side.
    pub prefix: String,
}

/// How one machine's boot differs from everyone's: its profile's command line, its own
/// cloud-config URL.
#[derive(Debug, Default)]
pub struct Own<'a> {
    /// Kernel arguments replacing the plan's (`root=live:` and `config_url=` are still set).
    pub cmdline: Option<&'a str>,
    /// The machine's own cloud-config URL, in place of the plan's.
    pub config_url: Option<String>,
    /// The machine's own report URL, and when its boot gets the report initrd to use it.
    pub report: Option<(String, crate::report_initrd::When)>,
}

pub struct Plan {
    pub kernel: BootFile,
    pub initrds: Vec<BootFile>,
    pub rootfs: Option<BootFile>,
    pub cloud_config: Option<BootFile>,
    pub extras: Vec<BootFile>,
    cmdline: Vec<Part>,
}

/// A piece of a command line written with pixiecore's templates: text, or the quoted argument
/// of a `{{ FUNC "arg" }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Arg(&'a str),
}

/// Why a template cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError<'a> {
    /// A `{{` with no `}}` after it: the text from the `{{` on.
    Unclosed(&'a str),
    /// Not `FUNC "arg"` with one of the allowed functions: what was between the braces.
    Unsupported(&'a str),
}

/// Splits `{{ FUNC "arg" }}` templates (FUNC one of `funcs`) out of `line`, in order: pixiecore's
/// `{{ ID "…" }}` in a --cmdline, `{{ URL "…" }}` in an API answer.
pub fn templates<'a>(line: &'a str, funcs: &[&str]) -> Result<Vec<Piece<'a>>, TemplateError<'a>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find("{{") {
        out.push(Piece::Text(&rest[..open]));
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(&rest[open..]))?;
        let inner = after[..close].trim();
        let arg = funcs
            .iter()
            .find_map(|f| inner.strip_prefix(f))
            .map(str::trim)
            .and_then(|a| a.strip_prefix('"'))
            .and_then(|a| a.strip_suffix('"'))
            .ok_or(TemplateError::Unsupported(inner))?;
        out.push(Piece::Arg(arg));
        rest = &after[close + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Splits `{{ ID "path" }}` templates out of a command line, the form pixiecore and AuroraBoot
/// users write. Returns text and paths in order.
fn parse_templates(cmdline: &str) -> anyhow::Result<Vec<Result<String, PathBuf>>> {
    let pieces = templates(cmdline, &["ID"]).map_err(|e| match e {
        TemplateError::Unclosed(at) => anyhow::anyhow!("unclosed '{{{{' in --cmdline at: {at}"),
        TemplateError::Unsupported(inner) => anyhow::anyhow!(
            "unsupported template {{{{ {inner} }}}} in --cmdline; the only form is {{{{ ID \"/path/to/file\" }}}}"
        ),
    })?;
    pieces
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => Ok(Ok(t.to_string())),
            Piece::Arg(arg) if artifacts::is_url(arg) => bail!(
                "{{{{ ID \"{arg}\" }}}} in --cmdline: Daybreak serves local files; download it first (curl -fLO {arg}) and name its path"
            ),
            Piece::Arg(arg) => Ok(Err(PathBuf::from(arg))),
        })
        .collect()
}

/// A name for a file registered from a path: its `safe_name`, unique among `taken`.
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
    pub fn new(input: &PlanInput) -> anyhow::Result<Plan> {
        let name = |n: &str| format!("{}{n}", input.prefix);
        let (kernel, initrds, rootfs) = match (&input.set, &input.kernel) {
            (Some(set), None) if input.initrds.is_empty() && input.rootfs.is_none() => {
                // Each file opened once, the ISO once for all three.
                let mut open: HashMap<PathBuf, Arc<File>> = HashMap::new();
                let mut file = |f: &artifacts::BootFile| -> anyhow::Result<Arc<File>> {
                    if let Some(o) = open.get(&f.path) {
                        return Ok(o.clone());
                    }
                    let o = Arc::new(File::open(&f.path).with_context(|| {
                        format!("{} cannot be read", f.path.display())
                    })?);
                    open.insert(f.path.clone(), o.clone());
                    Ok(o)
                };
                let kernel = BootFile::from_set(&name("kernel"), &set.kernel, &file(&set.kernel)?);
                let initrds = set
                    .initrds
                    .iter()
                    .enumerate()
                    .map(|(i, f)| Ok(BootFile::from_set(&name(&format!("initrd{i}")), f, &file(f)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let rootfs = BootFile::from_set(&name("rootfs.squashfs"), &set.rootfs, &file(&set.rootfs)?);
                (kernel, initrds, Some(rootfs))
            }
            (Some(_), _) => bail!("--iso provides the kernel, initrd and rootfs; drop --kernel, --initrd and --rootfs"),
            (None, None) => bail!("nothing to boot: give --kernel (with --initrd and --rootfs) or --iso"),
            (None, Some(k)) => (
                BootFile::open(&name("kernel"), k, "kernel")?,
                input
                    .initrds
                    .iter()
                    .enumerate()
                    .map(|(i, p)| BootFile::open(&name(&format!("initrd{i}")), p, "initrd"))
                    .collect::<anyhow::Result<Vec<_>>>()?,
                input.rootfs.as_deref().map(|p| BootFile::open(&name("rootfs.squashfs"), p, "rootfs")).transpose()?,
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
                parts = plan.strip_managed(parts, plan.cloud_config.is_some());
                plan.push_rootfs(&mut parts);
                plan.push_config(&mut parts);
            }
        }
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        plan.cmdline = parts;
        // A command line the loaders' scripts cannot carry as it is fails now, not at a boot.
        crate::render::check_ipxe(&plan.cmdline_redacted("http://server"))
            .map_err(|e| anyhow::anyhow!("--cmdline: {e}; write it without that word"))?;
        Ok(plan)
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
    fn strip_managed(&self, parts: Vec<Part>, config: bool) -> Vec<Part> {
        let mut managed = Vec::new();
        if self.rootfs.is_some() {
            managed.push("root=live:");
        }
        if config {
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

    /// What the kernel is ([`KernelFacts`]): its first pages and its signature's header are
    /// read, never the whole of it (an image's "kernel" may be anything, of any size).
    pub fn kernel_facts(&self) -> KernelFacts {
        use std::os::unix::fs::FileExt;
        let f = &self.kernel;
        let read_at = |off: u64, buf: &mut [u8]| -> std::io::Result<()> {
            match &f.body {
                Body::Memory(b) => {
                    let part = usize::try_from(off)
                        .ok()
                        .and_then(|o| b.get(o..o.checked_add(buf.len())?))
                        .ok_or_else(|| std::io::Error::other("past the end"))?;
                    buf.copy_from_slice(part);
                    Ok(())
                }
                Body::File(h) => h.read_exact_at(buf, off),
                Body::Ranges(h, ranges) => {
                    let pieces = http::wire::pieces(ranges, off, buf.len() as u64);
                    let got: u64 = pieces.iter().map(|(_, a, b)| b - a).sum();
                    if got != buf.len() as u64 {
                        return Err(std::io::Error::other("past the end"));
                    }
                    for (at, a, b) in pieces {
                        let from = (a - off) as usize;
                        h.read_exact_at(&mut buf[from..from + (b - a) as usize], at)?;
                    }
                    Ok(())
                }
            }
        };
        KernelFacts::read(f.size, &read_at)
    }

    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&BootFile> {
        self.files().find(|f| f.name == name)
    }

    pub fn file_url(&self, base: &str, name: &str) -> String {
        format!("{base}/{}", http::percent_encode(name))
    }

    #[cfg(test)]
    pub fn cmdline(&self, base: &str) -> String {
        self.render_cmdline(base, false, &Own::default())
    }

    /// The command line for logs: the cloud-config's secret name left out.
    pub fn cmdline_redacted(&self, base: &str) -> String {
        self.render_cmdline(base, true, &Own::default())
    }

    fn render_cmdline(&self, base: &str, redact: bool, p: &Own) -> String {
        let secret = |n: &str| self.files().any(|f| f.secret && f.name == n);
        let own;
        let parts = match p.cmdline {
            None => &self.cmdline,
            Some(c) => {
                let mut parts = self.strip_managed(
                    vec![Part::Text(format!("{c} "))],
                    p.config_url.is_some() || self.cloud_config.is_some(),
                );
                self.push_rootfs(&mut parts);
                self.push_config(&mut parts);
                own = parts;
                &own
            }
        };
        let mut s = String::new();
        let mut config_given = false;
        for part in parts {
            match part {
                Part::Text(t) => s.push_str(t),
                Part::Url(n) if secret(n) && p.config_url.is_some() => {
                    config_given = true;
                    s.push_str(p.config_url.as_deref().unwrap_or_default());
                }
                Part::Url(n) if redact && secret(n) => {
                    s.push_str(&self.file_url(base, "cloud-config-SECRET.yaml"))
                }
                Part::Url(n) => s.push_str(&self.file_url(base, n)),
            }
        }
        if let (Some(url), false) = (&p.config_url, config_given) {
            s.push_str(" config_url=");
            s.push_str(url);
        }
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// What machine `mac` boots from this plan, its URLs under `base`, with `own`'s
    /// differences.
    pub fn spec(&self, base: &str, mac: Option<Mac>, own: &Own) -> BootSpec {
        let mut initrds: Vec<(String, String)> = self
            .initrds
            .iter()
            .map(|f| (f.name.clone(), self.file_url(base, &f.name)))
            .collect();
        let mut cmdline = self.render_cmdline(base, false, own);
        if let Some((url, when)) = &own.report {
            if when.with(&cmdline) {
                use crate::report_initrd::{ARG, NAME, PATH};
                initrds.push((NAME.into(), format!("{base}{PATH}")));
                cmdline.push_str(&format!(" {ARG}={url}"));
            }
        }
        BootSpec {
            kernel: self.file_url(base, &self.kernel.name),
            initrds,
            cmdline,
            ready: mac.map(|m| format!("{base}{}?mac={m}", routes::BOOTING)),
        }
    }

    /// The plan's cloud-config (as served to machines without one of their own).
    pub fn cloud_config_file(&self) -> Option<&BootFile> {
        self.cloud_config.as_ref()
    }
}

/// A plan alone boots every machine that asks, alike.
impl Booter for Plan {
    fn allow(&self, _: &Machine) -> bool {
        true
    }

    fn decide(&self, ask: &Ask<'_>) -> Decision {
        let mac = ask.machine.map(|m| m.mac);
        Decision::Boot(self.spec(ask.base, mac, &Own::default()))
    }

    fn file(&self, name: &str) -> Option<Reply> {
        Plan::file(self, name).map(BootFile::reply)
    }

    fn describe(&self) -> String {
        "every machine boots the same files".into()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn tmpfile(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(name.as_bytes())
            .unwrap();
        p
    }

    pub(crate) fn tmpdir(tag: &str) -> PathBuf {
        testkit::tempdir(&format!("boot-{tag}"))
    }

    pub(crate) fn input(d: &Path) -> PlanInput {
        PlanInput {
            kernel: Some(tmpfile(d, "vmlinuz")),
            set: None,
            initrds: vec![tmpfile(d, "initrd.img")],
            rootfs: Some(tmpfile(d, "rootfs.squashfs")),
            cloud_config: Some(CloudConfig::File(tmpfile(d, "config.yaml"))),
            cmdline: None,
            prefix: String::new(),
        }
    }

    pub(crate) const BASE: &str = "http://10.0.0.1:8090";

    #[test]
    fn default_cmdline_is_kairos_exactly() {
        let d = tmpdir("default");
        let plan = Plan::new(&input(&d)).unwrap();
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
        let spec = plan.spec(BASE, "52:54:00:12:34:56".parse().ok(), &Own::default());
        assert_eq!(spec.kernel, "http://10.0.0.1:8090/kernel");
        assert_eq!(
            spec.initrds,
            [(
                "initrd0".to_string(),
                "http://10.0.0.1:8090/initrd0".to_string()
            )]
        );
        assert!(spec.cmdline.starts_with("rd.live.overlay.overlayfs "));
        assert_eq!(
            spec.ready.as_deref(),
            Some("http://10.0.0.1:8090/_/booting?mac=52:54:00:12:34:56")
        );
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
        let err = Plan::new(&i).err();
        assert!(err.is_some(), "missing template file is an error naming it");
        i.cmdline = Some(format!(
            "quiet foo={{{{ ID \"{}\" }}}} config_url=http://x/y console=ttyS0",
            extra.display()
        ));
        let plan = Plan::new(&i).unwrap();
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
        let plan = Plan::new(&i).unwrap();
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
        let e = Plan::new(&i).err().unwrap().to_string();
        assert!(e.contains("ID \"/path/to/file\""), "{e}");
        i.cmdline = Some("a {{ ID \"x\"".into());
        assert!(Plan::new(&i)
            .err()
            .unwrap()
            .to_string()
            .contains("unclosed"));
        i.cmdline = Some("root=live:{{ ID \"https://x/r.squashfs\" }}".into());
        let e = Plan::new(&i).err().unwrap().to_string();
        assert!(e.contains("curl -fLO https://x/r.squashfs"), "{e}");
        let mut i = input(&d);
        i.kernel = Some(d.join("nope"));
        let e = format!("{:#}", Plan::new(&i).err().unwrap());
        assert!(e.contains("kernel file") && e.contains("nope"), "{e}");
    }
}
