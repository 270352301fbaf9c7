//! The fleet: every machine that network-boots, known by its MAC. Its profile (`--machines`)
//! says how it boots; the machine store remembers it across restarts, and whether its install
//! finished (then it boots from its disk); its timeline of boot events is held in memory for the
//! status page (`/`), `GET /api/machines` and `daybreak machines`.
//!
//! A machine's own cloud-config and its install callback live at URLs only it is given: the MAC
//! and a tag keyed by a secret kept in the state directory (so they survive restarts: a machine
//! that installed before a restart calls back after it). The status page never shows them.

pub mod profiles;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::boot::{Personal, Plan};
use crate::events::{BootEvent, Step};
use http::{Reply, Request};
pub use profiles::{Action, Image, Profiles};
pub use store::{Change, Record, Store};

pub use pxe::Mac;

/// Machines with a timeline in memory; past this the ones seen longest ago are dropped.
pub const MAX_LIVE: usize = 4096;
/// Events kept per machine.
const TIMELINE: usize = 32;
/// Changes waiting for the store's writer; past this they are dropped (and said).
const WRITES_QUEUED: usize = 1024;
/// Boot scripts of one machine closer together than this (seconds) are one boot in the store.
const BOOT_GAP: u64 = 60;
/// How often the machines file and the store are checked for changes.
const POLL: Duration = Duration::from_secs(2);

/// Where the profiles come from.
#[derive(Debug, Clone)]
pub enum MachinesSource {
    /// A file, read again whenever it changes.
    File(PathBuf),
    /// The config file's `machines:` list.
    Inline(Profiles),
}

/// What a fleet is made of.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub state_dir: PathBuf,
    pub machines: Option<MachinesSource>,
    /// The command's cloud-config template, rendered per machine (the default command's).
    pub template: Option<String>,
    /// Template values (`--set`, the config file).
    pub data: Map<String, Value>,
    /// How profiles' own images are pulled and built.
    pub images: crate::netboot::ImageOptions,
    /// The command's own OCI image, when it has one: machines of another architecture than
    /// its kernel's boot its variant for theirs (a multi-arch index), built when the first asks.
    pub source: Option<String>,
}

/// An image other than the command's: a profile's, or the command's for another architecture.
/// OCI images are keyed by the architecture pulled; ISOs and files are what they are.
type Key = (Image, Option<pxe::CpuArch>);

/// An image being built, or built: its plan and its kernel's architecture.
enum Built {
    Building,
    Ready(Arc<Plan>, Option<pxe::CpuArch>),
    Failed,
}

type Images = Arc<RwLock<HashMap<Key, Built>>>;

fn describe(key: &Key) -> String {
    match key.1 {
        Some(a) => format!("{} ({})", key.0, a.as_str()),
        None => key.0.to_string(),
    }
}

/// The files of an image under names of its own: `i` and 8 hex digits of its description.
fn prefix(key: &Key) -> String {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(describe(key).as_bytes());
    format!("i{}-", artifacts::hex(&h[..4]))
}

/// Opens (pulling and building when needed, once per image: the artifact store keeps it) an
/// image, and makes its plan.
fn build_image(key: &Key, opts: &FleetOptions, http: pxe::HttpAddress) -> anyhow::Result<Plan> {
    let mut input = crate::boot::PlanInput {
        http,
        prefix: prefix(key),
        ..Default::default()
    };
    match &key.0 {
        Image::Container(src) => {
            let mut images = opts.images.clone();
            if let Some(a) = key.1 {
                images.arch = a.as_str().into();
            }
            input.set = Some(crate::netboot::open_source(src, &opts.state_dir, &images)?)
        }
        Image::Iso(src) => input.set = Some(crate::netboot::open_iso(src, &opts.state_dir)?),
        Image::Files {
            kernel,
            initrds,
            rootfs,
        } => {
            input.kernel = Some(kernel.clone());
            input.initrds = initrds.clone();
            input.rootfs = rootfs.clone();
        }
    }
    Plan::new(&input, HashMap::new())
}

/// Builds the images it is sent, one at a time, in the order asked.
fn spawn_builder(
    images: Images,
    opts: FleetOptions,
    http: pxe::HttpAddress,
) -> std::io::Result<mpsc::Sender<Key>> {
    let (tx, rx) = mpsc::channel::<Key>();
    std::thread::Builder::new()
        .name("more-images".into())
        .spawn(move || {
            for key in rx {
                let image = describe(&key);
                tracing::info!(image = %image, "building an image for machines that need it");
                let built = match build_image(&key, &opts, http) {
                    Ok(plan) => {
                        let arch = plan.kernel_facts().arch;
                        tracing::info!(image = %image, kernel = arch.map_or("unknown", |a| a.as_str()), "image ready");
                        Built::Ready(Arc::new(plan), arch)
                    }
                    Err(e) => {
                        tracing::error!(image = %image, "image cannot be served: {e:#}; its machines are told so, until the machines file names another");
                        Built::Failed
                    }
                };
                images
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, built);
            }
        })?;
    Ok(tx)
}

/// What profiles select a machine by, from what is known of it.
fn machine_of(mac: Mac, seen: Option<&Seen>) -> pxe::Machine {
    pxe::Machine {
        mac,
        uuid: seen.and_then(|s| s.uuid),
        arch: seen.and_then(|s| s.arch),
    }
}

/// What is known of a machine since this server started.
#[derive(Debug, Clone)]
struct Seen {
    uuid: Option<pxe::Uuid>,
    arch: Option<pxe::CpuArch>,
    firmware: Option<String>,
    path: Option<&'static str>,
    ip: Option<IpAddr>,
    phase: &'static str,
    /// Bytes of the squashfs sent in this boot, and of the response under way, of its size.
    rootfs_bytes: u64,
    rootfs_total: u64,
    rootfs_sending: u64,
    last: SystemTime,
    timeline: VecDeque<(SystemTime, String)>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            uuid: None,
            arch: None,
            firmware: None,
            path: None,
            ip: None,
            phase: "seen",
            rootfs_bytes: 0,
            rootfs_total: 0,
            rootfs_sending: 0,
            last: SystemTime::now(),
            timeline: VecDeque::new(),
        }
    }
}

#[derive(Default)]
struct Live {
    machines: HashMap<Mac, Seen>,
}

impl Live {
    fn entry(&mut self, mac: Mac) -> &mut Seen {
        if self.machines.len() >= MAX_LIVE && !self.machines.contains_key(&mac) {
            // Drop the eighth seen longest ago: amortised, never a scan per event.
            let mut by_age: Vec<(SystemTime, Mac)> =
                self.machines.iter().map(|(m, s)| (s.last, *m)).collect();
            by_age.sort_unstable();
            for (_, m) in by_age.iter().take(MAX_LIVE / 8) {
                self.machines.remove(m);
            }
        }
        self.machines.entry(mac).or_default()
    }
}

struct FileStamp {
    path: PathBuf,
    seen: Option<(SystemTime, u64, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub struct Fleet {
    profiles: RwLock<Arc<Profiles>>,
    file: Mutex<Option<FileStamp>>,
    store: Arc<Store>,
    writes: mpsc::SyncSender<(Mac, Change)>,
    live: Mutex<Live>,
    key: String,
    template: Option<String>,
    data: Map<String, Value>,
    /// Machines get their own cloud-config URL (profiles, or a template that asks for
    /// `.daybreak.*`).
    personal: bool,
    /// Size of the squashfs, for the progress bar.
    rootfs_size: u64,
    /// Profiles' own images, and where to ask for one to be built.
    images: Images,
    build: Mutex<mpsc::Sender<Key>>,
    /// The architecture of the command's kernel, and its OCI image (for other architectures).
    main_arch: Option<pxe::CpuArch>,
    source: Option<String>,
    /// Told of installs and local boots.
    events: Option<Arc<crate::events::Hub>>,
}

/// Hands memory freed after reading a large machines file or store back to the system: the
/// parse trees of thousands of entries are garbage once read, and malloc keeps such memory.
fn release_freed() {
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a machine cannot boot an image now.
enum Refusal {
    Wait(&'static str),
    Never(&'static str),
}

/// What a machine boots now.
enum Decision {
    /// What any machine gets: no MAC named.
    Common,
    /// A MAC the request may not claim: what any machine gets, the MAC left out.
    Stranger,
    Ignore,
    Local,
    /// Its image is not ready: ask again.
    Wait(Mac, &'static str),
    /// Nothing it can boot here: say why, and go back to the firmware.
    Refuse(&'static str),
    Boot(Boot),
}

/// How a machine boots the image.
struct Boot {
    mac: Mac,
    /// Its profile's own image, else the command's.
    own: Option<Arc<Plan>>,
    cmdline: Option<String>,
    /// It gets its own cloud-config URL.
    config: bool,
}

impl Boot {
    fn plan<'a>(&'a self, main: &'a Plan) -> &'a Plan {
        self.own.as_deref().unwrap_or(main)
    }

    fn personal(&self, fleet: &Fleet, base: &str) -> Personal<'_> {
        Personal {
            cmdline: self.cmdline.as_deref(),
            config_url: self
                .config
                .then(|| fleet.url(base, routes::CONFIG, "config", &self.mac, ".yaml")),
        }
    }
}

/// A machine as `/api/machines` shows it (never its URLs).
#[derive(serde::Serialize)]
struct View<'a> {
    mac: Mac,
    hostname: Option<&'a str>,
    arch: Option<&'a str>,
    firmware: Option<&'a str>,
    path: Option<&'a str>,
    ip: Option<String>,
    profile: Option<&'a str>,
    action: &'static str,
    phase: &'static str,
    progress: Option<Progress>,
    last_seen: u64,
    installed_at: Option<u64>,
    boots: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<Moment<'a>>>,
}

/// How much of its squashfs a machine has.
#[derive(serde::Serialize)]
struct Progress {
    bytes: u64,
    total: u64,
}

/// A step of a machine's timeline.
#[derive(serde::Serialize)]
struct Moment<'a> {
    at: u64,
    what: &'a str,
}

/// Routes of the fleet on the boot HTTP port.
pub mod routes {
    /// A machine's GRUB configuration on the Secure Boot chain: `/_/grub/MAC.cfg`.
    pub const GRUB: &str = "/_/grub/";
    /// A machine's own cloud-config: `/_/config/MAC-TAG.yaml`.
    pub const CONFIG: &str = "/_/config/";
    /// A machine's install callback: `/_/installed/MAC-TAG`.
    pub const INSTALLED: &str = "/_/installed/";
    /// The machines as JSON; `/api/machines/MAC` one with its timeline.
    pub const MACHINES: &str = "/api/machines";
    /// The status page.
    pub const STATUS: &str = "/";
}

/// The status page: static, it reads `/api/machines` every second.
const PAGE: &str = include_str!("status.html");

impl Fleet {
    pub fn new(
        opts: &FleetOptions,
        plan: &Plan,
        main_arch: Option<pxe::CpuArch>,
        events: Option<Arc<crate::events::Hub>>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let state = artifacts::Store::open(&opts.state_dir)?;
        let store = Arc::new(Store::open(state.root()).map_err(|e| {
            anyhow::anyhow!(
                "the machine store in {} cannot be opened: {e}",
                state.root().display()
            )
        })?);
        let key = store.key()?;
        let (profiles, file) = match &opts.machines {
            None => (Profiles::default(), None),
            Some(MachinesSource::Inline(p)) => (p.clone(), None),
            Some(MachinesSource::File(path)) => (
                Profiles::load(path)?,
                Some(FileStamp {
                    path: path.clone(),
                    seen: stamp(path),
                }),
            ),
        };
        let personal = opts.machines.is_some()
            || opts
                .template
                .as_deref()
                .is_some_and(|t| t.contains(".daybreak."));
        let (tx, rx) = mpsc::sync_channel::<(Mac, Change)>(WRITES_QUEUED);
        let writer = store.clone();
        std::thread::Builder::new()
            .name("machine-store".into())
            .spawn(move || {
                for (mac, change) in rx {
                    if let Err(e) = writer.change(&mac, &change) {
                        tracing::warn!(mac = %mac, error = %e, store = %writer.dir().display(), "machine record not written");
                    }
                }
            })?;
        let images: Images = Arc::default();
        let build = spawn_builder(images.clone(), opts.clone(), plan.http())?;
        let fleet = Arc::new(Fleet {
            images,
            build: Mutex::new(build),
            main_arch,
            source: opts.source.clone(),
            profiles: RwLock::new(Arc::new(profiles)),
            file: Mutex::new(file),
            store,
            writes: tx,
            live: Mutex::default(),
            key,
            template: opts.template.clone(),
            data: opts.data.clone(),
            personal,
            rootfs_size: plan.rootfs.as_ref().map_or(0, |r| r.size),
            events,
        });
        fleet.build_images(&fleet.profiles());
        release_freed();
        let weak: Weak<Fleet> = Arc::downgrade(&fleet);
        std::thread::Builder::new()
            .name("machines-watch".into())
            .spawn(move || loop {
                std::thread::sleep(POLL);
                let Some(f) = weak.upgrade() else { break };
                f.refresh();
            })?;
        Ok(fleet)
    }

    /// How many profiles, and machines remembered.
    pub fn describe(&self) -> String {
        let p = self.profiles().len();
        format!(
            "{p} machine profile{}, {} machine{} remembered in {}",
            if p == 1 { "" } else { "s" },
            self.store.len(),
            if self.store.len() == 1 { "" } else { "s" },
            self.store.dir().display()
        )
    }

    fn profiles(&self) -> Arc<Profiles> {
        self.profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Picks up an edited machines file (a broken edit keeps the last good version, and says
    /// what is wrong) and records changed by `daybreak machines`.
    pub fn refresh(&self) {
        self.store.refresh();
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = file.as_mut() else { return };
        let now = stamp(&f.path);
        if now == f.seen {
            return;
        }
        f.seen = now;
        match Profiles::load(&f.path) {
            Ok(p) => {
                tracing::info!(
                    file = %f.path.display(),
                    entries = p.len(),
                    "machines file changed: the new profiles apply from each machine's next boot"
                );
                let p = Arc::new(p);
                self.build_images(&p);
                *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = p;
            }
            Err(e) => tracing::error!(
                "{e:#}; keeping the last good version ({} entries) until the file is fixed",
                self.profiles().len()
            ),
        }
    }

    /// The key of a profile's image for machines of `arch` (an OCI image's variant).
    fn key(&self, image: &Image, arch: Option<pxe::CpuArch>) -> Key {
        match image {
            Image::Container(_) => (image.clone(), arch.or(self.main_arch)),
            _ => (image.clone(), None),
        }
    }

    /// Asks for every image the profiles name that is not built or being built (a failed one
    /// again: the file changed, it may be fixed now).
    fn build_images(&self, profiles: &Profiles) {
        for p in &profiles.entries {
            if let Some(img) = &p.image {
                self.ensure(&self.key(img, p.select.arch), true);
            }
        }
    }

    /// Asks for `key` to be built unless it is built or being built (or failed, unless `retry`).
    fn ensure(&self, key: &Key, retry: bool) {
        let mut images = self.images.write().unwrap_or_else(|e| e.into_inner());
        let again = retry && matches!(images.get(key), Some(Built::Failed));
        if again || !images.contains_key(key) {
            images.insert(key.clone(), Built::Building);
            let _ = self
                .build
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(key.clone());
        }
    }

    /// Whether machines of `arch` may have something to boot: the command's kernel is theirs,
    /// its image may have their variant, or a profile names an image.
    pub fn may_serve(&self, arch: pxe::CpuArch) -> bool {
        self.main_arch == Some(arch)
            || self.source.is_some()
            || self
                .profiles()
                .entries
                .iter()
                .any(|p| p.image.is_some() && p.select.arch.is_none_or(|a| a == arch))
    }

    /// The plan machine `arch` boots with `image` (its profile's; `None`: the command's): the
    /// command's own plan (`Ok(None)`), another image's once built, or why not.
    fn plan_of(
        &self,
        image: Option<&Image>,
        arch: Option<pxe::CpuArch>,
    ) -> Result<Option<Arc<Plan>>, Refusal> {
        let key = match (image, arch) {
            (Some(img), _) => self.key(img, arch),
            // The command's image, for another architecture than its kernel's.
            (None, Some(a)) if self.main_arch.is_some_and(|m| m != a) => match &self.source {
                Some(src) => (Image::Container(src.clone()), Some(a)),
                None => {
                    return Err(Refusal::Never(
                        "this server has no kernel for its architecture",
                    ))
                }
            },
            (None, _) => return Ok(None),
        };
        self.ensure(&key, false);
        match self
            .images
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            Some(Built::Ready(_, Some(k))) if arch.is_some_and(|a| a != *k) => Err(Refusal::Never(
                "its image's kernel is for another architecture",
            )),
            Some(Built::Ready(p, _)) => Ok(Some(p.clone())),
            Some(Built::Failed) => Err(Refusal::Never(
                "its image cannot be served (the server's log says why)",
            )),
            Some(Built::Building) | None => Err(Refusal::Wait("its image is being prepared")),
        }
    }

    fn machine(&self, mac: Mac) -> pxe::Machine {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        machine_of(mac, live.machines.get(&mac))
    }

    /// What the script URL says of a machine's architecture (`arch=` is its option 93).
    pub fn note_arch(&self, mac: Option<Mac>, code: Option<&str>) {
        let (Some(mac), Some(arch)) = (
            mac,
            code.and_then(|c| c.parse::<u16>().ok())
                .and_then(pxe::Arch::from_code)
                .and_then(|(a, _)| pxe::CpuArch::of(a)),
        ) else {
            return;
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.entry(mac).arch = Some(arch);
    }

    /// The DHCP side's question: answer this machine? Never blocks on more than a lock.
    pub fn allow(&self, c: &pxe::Client) -> bool {
        let mac = c.mac;
        let arch = pxe::CpuArch::of(c.arch);
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let s = live.entry(mac);
            s.uuid = c.uuid.or(s.uuid);
            s.arch = arch.or(s.arch);
        }
        // The first machine of another architecture than the command's kernel starts the build
        // of the image's variant for it, so it is ready by the time its loader asks.
        if let (Some(a), Some(src)) = (arch, &self.source) {
            if self.main_arch.is_some_and(|m| m != a) {
                self.ensure(&(Image::Container(src.clone()), Some(a)), false);
            }
        }
        let m = pxe::Machine {
            mac,
            uuid: c.uuid,
            arch,
        };
        self.profiles()
            .find(&m)
            .is_none_or(|p| p.action != Action::Ignore)
    }

    fn tag(&self, kind: &str, mac: &Mac) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(self.key.as_bytes());
        h.update(kind.as_bytes());
        h.update(mac.octets());
        artifacts::hex(&h.finalize()[..16])
    }

    fn url(&self, base: &str, route: &str, kind: &str, mac: &Mac, suffix: &str) -> String {
        format!("{base}{route}{}-{}{suffix}", mac.hex(), self.tag(kind, mac))
    }

    /// The MAC a `MAC-TAG` path names, when its tag is right.
    fn check(&self, rest: &str, kind: &str) -> Option<Mac> {
        let (hex, tag) = rest.split_once('-')?;
        let mac: Mac = hex.parse().ok().filter(|m: &Mac| m.hex() == hex)?;
        crate::api::constant_time_eq(tag.as_bytes(), self.tag(kind, &mac).as_bytes()).then_some(mac)
    }

    fn record(&self, mac: Mac, c: Change) {
        if self.writes.try_send((mac, c)).is_err() {
            tracing::warn!(mac = %mac, "machine store busy: this change is not remembered");
        }
    }

    /// What machine `mac` (as its loader named it, from `peer`) boots now, by its profile and
    /// its state. Remembers the boot.
    fn decide(&self, plan: &Plan, mac: Option<Mac>, peer: IpAddr) -> Decision {
        let Some(m) = mac else {
            return Decision::Common;
        };
        // A request naming a MAC another address is known to hold is not that machine: it gets
        // what any machine gets, never another's cloud-config.
        if let Some(hub) = &self.events {
            if let Some(known) = hub.mac_of(peer) {
                if known != m {
                    tracing::warn!(client = %peer, claimed = %m, holder = %known, "boot request names another machine's MAC; given the common boot");
                    return Decision::Stranger;
                }
            }
        }
        // What DHCP told of it (UUID, architecture, its boot path), read at once.
        let (machine, firmware) = {
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let seen = live.machines.get(&m);
            let firmware = seen.and_then(|s| {
                s.path.map(|p| match &s.firmware {
                    Some(f) => format!("{f}: {p}"),
                    None => p.to_string(),
                })
            });
            (machine_of(m, seen), firmware)
        };
        let profiles = self.profiles();
        let profile = profiles.find(&machine);
        // One boot, one write: a machine asking again within a minute (a loader that retries,
        // one waiting for its image) is the same boot.
        let now = artifacts::now();
        let record = self.store.get(&m);
        if record.as_ref().is_none_or(|r| r.last_seen + BOOT_GAP < now) {
            self.record(
                m,
                Change::Booted {
                    at: now,
                    arch: machine.arch,
                    firmware,
                    uuid: machine.uuid,
                },
            );
        }
        let action = profile.map_or(Action::Install, |p| p.action);
        let installed = record.and_then(|r| r.installed_at);
        let local = |why: &'static str| {
            tracing::info!(mac = %m, client = %peer, "booting from the local disk: {why}");
            if let Some(hub) = &self.events {
                hub.emit(None, Some(m), Step::LocalBoot);
            }
            Decision::Local
        };
        match action {
            Action::Ignore => Decision::Ignore,
            Action::Local => local("its profile says action: local"),
            Action::Install if installed.is_some() => {
                local("its install finished (daybreak machines reinstall MAC to install again)")
            }
            Action::Install | Action::Live => {
                let own = match self.plan_of(profile.and_then(|p| p.image.as_ref()), machine.arch) {
                    Ok(own) => own,
                    Err(Refusal::Wait(why)) => {
                        tracing::info!(mac = %m, "asked to wait: {why}");
                        return Decision::Wait(m, why);
                    }
                    Err(Refusal::Never(why)) => {
                        tracing::warn!(mac = %m, arch = machine.arch.map_or("unknown", |a| a.as_str()), "not booted: {why}");
                        return Decision::Refuse(why);
                    }
                };
                let total = own
                    .as_deref()
                    .unwrap_or(plan)
                    .rootfs
                    .as_ref()
                    .map_or(0, |r| r.size);
                self.live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(m)
                    .rootfs_total = total;
                let has_config = profile.is_some_and(|p| p.cloud_config.is_some())
                    || self.template.is_some()
                    || plan.cloud_config_file().is_some();
                let own_image = own.is_some();
                Decision::Boot(Boot {
                    mac: m,
                    own,
                    cmdline: profile.and_then(|p| p.cmdline.clone()),
                    // Another image's plan has no cloud-config of its own: the machine's URL
                    // serves the command's.
                    config: (self.personal || own_image) && has_config,
                })
            }
        }
    }

    /// The iPXE script for `mac` (as the script URL names it).
    pub fn script(&self, plan: &Plan, base: &str, mac: Option<Mac>, peer: IpAddr) -> String {
        match self.decide(plan, mac, peer) {
            Decision::Common => plan.script(base, mac),
            Decision::Stranger => plan.script(base, None),
            Decision::Ignore => {
                "#!ipxe\necho Daybreak: this machine is not served here (action: ignore)\nexit\n".into()
            }
            // BIOS: the first disk by its BIOS number; UEFI: back to the firmware, which boots
            // the next entry of its boot order (the disk).
            Decision::Local => "#!ipxe\necho Daybreak: booting from the local disk\n\
                 iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\nexit\n"
                .into(),
            Decision::Refuse(why) => format!("#!ipxe\necho Daybreak: not booted: {why}\nexit\n"),
            Decision::Wait(m, why) => format!(
                "#!ipxe\necho Daybreak: {why}; asking again in 10 seconds\nsleep 10\nchain {base}{}?mac={} ||\n",
                pxe::routes::SCRIPT,
                m
            ),
            Decision::Boot(b) => b.plan(plan).script_for(base, mac, &b.personal(self, base)),
        }
    }

    /// The GRUB configuration for `mac` on the Secure Boot chain (GRUB reads it over HTTP, from
    /// the stub [`Fleet::grub_stub`] it got by TFTP).
    pub fn grub(&self, plan: &Plan, mac: Mac, peer: IpAddr) -> String {
        let base = plan.grub_base();
        let again = format!(
            "sleep 10\nconfigfile {}{}${{net_default_mac}}.cfg\n",
            plan.grub_device(),
            routes::GRUB
        );
        match self.decide(plan, Some(mac), peer) {
            Decision::Common | Decision::Stranger => plan.grub_cfg(),
            Decision::Ignore => "echo 'Daybreak: this machine is not served here'\nexit\n".into(),
            // Back to the firmware, which boots the next entry of its boot order (the disk).
            Decision::Local => "echo 'Daybreak: booting from the local disk'\nexit\n".into(),
            Decision::Refuse(why) => format!("echo 'Daybreak: not booted: {why}'\nexit\n"),
            Decision::Wait(_, why) => {
                format!("echo 'Daybreak: {why}; asking again in 10 seconds'\n{again}")
            }
            Decision::Boot(b) => b.plan(plan).grub_cfg_for(&b.personal(self, &base)),
        }
    }

    /// What GRUB reads by TFTP when the fleet decides per machine: its own configuration, by
    /// MAC, over HTTP.
    pub fn grub_stub(plan: &Plan) -> String {
        format!(
            "# Written by Daybreak: each machine's own configuration, from the server.\n\
             set timeout=0\n\
             configfile {}{}${{net_default_mac}}.cfg\n",
            plan.grub_device(),
            routes::GRUB
        )
    }

    /// The template values for one machine: the command's, its profile's, and Daybreak's own
    /// (`.daybreak.installed_url`, `.daybreak.mac`, `.daybreak.hostname`).
    fn data_for(
        &self,
        mac: &Mac,
        profile: Option<&profiles::Profile>,
        base: &str,
    ) -> Map<String, Value> {
        let mut data = self.data.clone();
        if let Some(p) = profile {
            for (k, v) in &p.vars {
                data.insert(k.clone(), v.clone());
            }
            if let Some(h) = &p.hostname {
                data.entry("hostname")
                    .or_insert_with(|| Value::String(h.clone()));
            }
        }
        data.insert(
            "daybreak".into(),
            json!({
                "installed_url": self.url(base, routes::INSTALLED, "installed", mac, ""),
                "mac": mac.to_string(),
                "hostname": profile.and_then(|p| p.hostname.clone()).unwrap_or_default(),
                "profile": profile.map(|p| p.name.clone()).unwrap_or_default(),
            }),
        );
        data
    }

    /// The fleet's own routes; `None` for everything else.
    pub fn route(&self, plan: &Plan, req: &Request<'_>) -> Option<Reply> {
        let path = req.path;
        if let Some(rest) = path.strip_prefix(routes::CONFIG) {
            let mac = rest
                .strip_suffix(".yaml")
                .and_then(|r| self.check(r, "config"));
            return Some(match mac {
                Some(m) => self.config(plan, m, &plan.base_url(req.local)),
                None => Reply::NotFound,
            });
        }
        if let Some(mac) = path
            .strip_prefix(routes::GRUB)
            .and_then(|r| r.strip_suffix(".cfg"))
            .and_then(|m| m.parse::<Mac>().ok())
        {
            if let Some(hub) = &self.events {
                let claimed = Some(mac).filter(|m| hub.claim(req.peer.ip(), *m));
                hub.emit(Some(req.peer), claimed, Step::Script);
            }
            tracing::info!(client = %req.peer.ip(), mac = %mac, "GRUB configuration");
            let cfg = self.grub(plan, mac, req.peer.ip());
            return Some(Reply::memory(
                "_grub",
                "text/plain; charset=utf-8",
                cfg.into_bytes(),
            ));
        }
        if let Some(rest) = path.strip_prefix(routes::INSTALLED) {
            let Some(mac) = self.check(rest, "installed") else {
                return Some(Reply::NotFound);
            };
            // On disk before the machine hears it is done: a crash right after cannot make it
            // install again.
            let at = artifacts::now();
            if let Err(e) = self.store.change(&mac, &Change::Installed { at }) {
                tracing::error!(mac = %mac, store = %self.store.dir().display(), error = %e, "install finished, but it cannot be remembered; the machine will install again");
                return Some(Reply::NotFound);
            }
            tracing::info!(mac = %mac, client = %req.peer.ip(), "install finished: this machine boots from its disk from its next network boot on (daybreak machines reinstall MAC to undo)");
            if let Some(hub) = &self.events {
                hub.emit(Some(req.peer), Some(mac), Step::Installed);
            }
            return Some(Reply::memory(
                "_installed",
                "text/plain; charset=utf-8",
                &b"installed\n"[..],
            ));
        }
        if path == routes::MACHINES {
            return Some(Reply::memory(
                "_machines",
                "application/json",
                self.machines_json(),
            ));
        }
        if let Some(mac) = path
            .strip_prefix(routes::MACHINES)
            .and_then(|r| r.strip_prefix('/'))
        {
            let Ok(m) = mac.parse::<Mac>() else {
                return Some(Reply::NotFound);
            };
            return Some(match self.show(&m) {
                Some(v) => Reply::memory(
                    "_machines",
                    "application/json",
                    serde_json::to_vec(&v).unwrap_or_default(),
                ),
                None => Reply::NotFound,
            });
        }
        if let Some(f) = self.image_file(path.strip_prefix('/').unwrap_or(path)) {
            return Some(f);
        }
        if path == routes::STATUS || path == "/status" {
            return Some(Reply::memory(
                "_status",
                "text/html; charset=utf-8",
                PAGE.as_bytes(),
            ));
        }
        None
    }

    /// A file of a profile's own image.
    fn image_file(&self, name: &str) -> Option<Reply> {
        let images = self.images.read().unwrap_or_else(|e| e.into_inner());
        images.values().find_map(|b| match b {
            Built::Ready(p, _) => p
                .files()
                .find(|f| f.name == name)
                .map(crate::routes::file_reply),
            _ => None,
        })
    }

    fn config(&self, plan: &Plan, mac: Mac, base: &str) -> Reply {
        let machine = self.machine(mac);
        let profiles = self.profiles();
        let profile = profiles.find(&machine);
        let template = profile
            .and_then(|p| p.cloud_config.as_deref())
            .or(self.template.as_deref());
        if let Some(hub) = &self.events {
            hub.emit(None, Some(mac), Step::Config);
        }
        match template {
            Some(t) => match crate::config::render(t, &self.data_for(&mac, profile, base)) {
                Ok((text, _)) => Reply::memory(
                    "cloud-config",
                    "text/plain; charset=utf-8",
                    text.into_bytes(),
                ),
                Err(e) => {
                    tracing::error!(mac = %mac, "cloud-config template: {e:#}");
                    Reply::NotFound
                }
            },
            None => plan
                .cloud_config_file()
                .map_or(Reply::NotFound, crate::routes::file_reply),
        }
    }

    /// Takes in one boot event: the machine's phase and timeline.
    pub fn observe(&self, e: &BootEvent) {
        let Some(mac) = e.mac else {
            return;
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let s = live.entry(mac);
        s.last = e.at;
        if let Some(p) = e.peer {
            s.ip = Some(p.ip());
        }
        let what = match &e.step {
            Step::Offer { firmware, path, .. } => {
                // The firmware's own offer names the boot; the one iPXE asks for after it
                // loaded does not replace it.
                if s.phase != "loader" {
                    s.firmware = Some(firmware.clone());
                    s.path = Some(path);
                }
                s.phase = "offered";
                s.rootfs_bytes = 0;
                s.rootfs_sending = 0;
                format!("DHCP offer to {firmware}: {path}")
            }
            Step::Lease => {
                let ip = e.peer.map(|p| p.ip().to_string()).unwrap_or_default();
                format!("address {ip} from the DHCP server")
            }
            Step::Loader { file, bytes, ok } => {
                s.phase = "loader";
                format!(
                    "{file} over TFTP, {bytes} bytes{}",
                    if *ok { "" } else { " (incomplete)" }
                )
            }
            Step::Script => {
                s.phase = "script";
                s.rootfs_bytes = 0;
                "boot script".into()
            }
            Step::File { name, bytes, ms } => {
                let rate = if *ms > 0 {
                    bytes / ms * 1000 / 1_000_000
                } else {
                    0
                };
                if name.ends_with("rootfs.squashfs") {
                    s.rootfs_bytes += bytes;
                    s.rootfs_sending = 0;
                    s.phase = "rootfs";
                } else if name.ends_with("kernel") {
                    s.phase = "kernel";
                } else if name.contains("initrd") {
                    s.phase = "initrd";
                } else if name == "cloud-config" {
                    s.phase = "config";
                }
                format!("{name}: {bytes} bytes in {ms} ms ({rate} MB/s)")
            }
            Step::Sending { name, bytes } => {
                if name.ends_with("rootfs.squashfs") {
                    s.rootfs_sending = *bytes;
                    s.phase = "rootfs";
                }
                // Progress moves the bar; the timeline keeps the whole file's line.
                return;
            }
            Step::Booting => {
                s.phase = "booting";
                "kernel started".into()
            }
            Step::Config => {
                s.phase = "config";
                "its cloud-config".into()
            }
            Step::Installed => {
                s.phase = "installed";
                "install finished".into()
            }
            Step::LocalBoot => {
                s.phase = "local disk";
                "told to boot from its local disk".into()
            }
        };
        if s.timeline.len() >= TIMELINE {
            s.timeline.pop_front();
        }
        s.timeline.push_back((e.at, what));
    }

    /// Every machine, the remembered and the seen, by MAC, as the JSON of `/api/machines`:
    /// written straight from the tables (a fleet of thousands is asked every second by each
    /// status page open).
    fn machines_json(&self) -> Vec<u8> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let profiles = self.profiles();
        self.store.with(|records| {
            let mut macs: Vec<&Mac> = records
                .keys()
                .chain(live.machines.keys().filter(|m| !records.contains_key(*m)))
                .collect();
            macs.sort_unstable();
            let machines: Vec<View> = macs
                .into_iter()
                .map(|m| self.view(m, live.machines.get(m), records.get(m), &profiles))
                .collect();
            #[derive(serde::Serialize)]
            struct Machines<'a> {
                machines: Vec<View<'a>>,
            }
            serde_json::to_vec(&Machines { machines }).unwrap_or_default()
        })
    }

    fn view<'a>(
        &self,
        m: &Mac,
        seen: Option<&'a Seen>,
        record: Option<&'a Record>,
        profiles: &'a Profiles,
    ) -> View<'a> {
        let machine = machine_of(*m, seen);
        let profile = profiles.find(&machine);
        let phase = match (seen, record) {
            (Some(s), _) if s.phase != "seen" => s.phase,
            (_, Some(r)) if r.installed_at.is_some() => "installed",
            _ => "seen",
        };
        let progress = seen.filter(|s| s.phase == "rootfs").and_then(|s| {
            let total = if s.rootfs_total > 0 {
                s.rootfs_total
            } else {
                self.rootfs_size
            };
            (total > 0).then(|| Progress {
                bytes: (s.rootfs_bytes + s.rootfs_sending).min(total),
                total,
            })
        });
        View {
            mac: *m,
            hostname: profile.and_then(|p| p.hostname.as_deref()),
            arch: machine
                .arch
                .or(record.and_then(|r| r.arch))
                .map(|a| a.as_str()),
            firmware: seen.and_then(|s| s.firmware.as_deref()),
            path: seen
                .and_then(|s| s.path)
                .or(record.and_then(|r| r.firmware.as_deref())),
            ip: seen.and_then(|s| s.ip).map(|i| i.to_string()),
            profile: profile.map(|p| p.name.as_str()),
            action: profile.map_or(Action::Install, |p| p.action).as_str(),
            phase,
            progress,
            last_seen: seen
                .map(|s| unix(s.last))
                .or(record.map(|r| r.last_seen))
                .unwrap_or(0),
            installed_at: record.and_then(|r| r.installed_at),
            boots: record.map_or(0, |r| r.boots),
            timeline: None,
        }
    }

    /// One machine with its timeline.
    fn show(&self, m: &Mac) -> Option<Value> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let seen = live.machines.get(m);
        let profiles = self.profiles();
        self.store.with(|records| {
            let record = records.get(m);
            if seen.is_none() && record.is_none() {
                return None;
            }
            let mut v = self.view(m, seen, record, &profiles);
            v.timeline = Some(
                seen.map(|s| {
                    s.timeline
                        .iter()
                        .map(|(t, what)| Moment { at: unix(*t), what })
                        .collect()
                })
                .unwrap_or_default(),
            );
            serde_json::to_value(&v).ok()
        })
    }

    /// Machines with a timeline in memory.
    #[cfg(test)]
    fn live_count(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .machines
            .len()
    }
}

#[cfg(test)]
mod tests;
