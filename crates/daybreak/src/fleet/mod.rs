//! The fleet: every machine that network-boots, known by its MAC. Its profile (`--machines`,
//! [`profiles`]) says how it boots; the machine store ([`crate::store`]) remembers it across
//! restarts, and whether its install finished (then it boots from its disk); its timeline
//! ([`crate::timeline`]) feeds the status page and `/api/machines`. How a machine boots is the
//! pure [`decide::decide`]; images other than the command's are [`images`]'s; a machine's own
//! cloud-config is rendered in `cloud_config`.
//!
//! A machine's own cloud-config and its install callback live at URLs of its boot ([`grants`]:
//! keyed by a nonce of that boot, opened a few times within minutes, the callback once, and
//! only for the machine itself). The status page never shows them.

mod cloud_config;
pub mod decide;
pub mod grants;
pub mod images;
pub mod profiles;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use http::Reply;
use pxe::{CpuArch, Mac, Machine};
use serde_json::{Map, Value};

use crate::decision::{Ask, Booter, Decision, Personal, PersonalKind};
use crate::events::{BootEvent, Hub, Step};
use crate::plan::{Own, Plan};
use crate::store::{Change, MachineStore, StoreError, Writes};
use crate::timeline::Timelines;
use crate::tokens::Tokens;
use decide::{Effect, Facts, Outcome};
use images::Images;
pub use profiles::{Action, Profiles};

/// How often the machines file and the store are checked for changes.
const POLL: Duration = Duration::from_secs(2);
/// How often the profiles a shared store holds are checked for a new version (a number
/// compared: the watch keeps them current).
const SHARED_POLL: Duration = Duration::from_millis(250);
/// How often machines' new steps are shared with the other replicas.
const SHARE_EVERY: Duration = Duration::from_secs(1);
/// How long a machine whose image is being prepared waits before it asks again.
const RETRY: Duration = Duration::from_secs(10);
/// New machines one source address may add to the store in [`NEW_WINDOW`]: a boot network
/// hands an address to a few machines a day, a flood of made-up MACs from one host stops here.
pub const NEW_PER_SOURCE: u32 = 16;
pub const NEW_WINDOW: Duration = Duration::from_secs(3600);

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
    /// Where machine records are kept (`--store`).
    pub store: crate::store::StoreConfig,
    /// That store, when it is opened already.
    pub opened: Option<crate::store::Opened>,
    pub machines: Option<MachinesSource>,
    /// The command's cloud-config template, rendered per machine (the default command's).
    pub template: Option<String>,
    /// Template values (`--set`, the config file).
    pub data: Map<String, Value>,
    /// How profiles' own images are pulled and built.
    pub images: crate::sources::ImageOptions,
    /// The command's own OCI image, when it has one: machines of another architecture than
    /// its kernel's boot its variant for theirs (a multi-arch index), built when the first asks.
    pub source: Option<String>,
    /// How long a step may wait for the next before its machine is shown stalled (default
    /// [`crate::timeline::STALL_AFTER`]).
    pub stall_after: Option<std::time::Duration>,
    /// When boots get the report initrd ([`crate::report_initrd`]).
    pub report_initrd: crate::report_initrd::When,
}

pub struct Fleet {
    /// The command's own plan: machines without an image of their own boot it.
    main: Arc<Plan>,
    profiles: RwLock<Arc<Profiles>>,
    /// The machines file, watched for edits.
    file: Mutex<Option<profiles::Watched>>,
    /// The version of the store's shared profiles in use.
    shared_at: Mutex<Option<crate::store::Version>>,
    store: Arc<dyn MachineStore>,
    writes: Writes,
    timelines: Timelines,
    /// This state directory's artifacts, which other replicas fetch (a shared store's).
    artifacts: Option<Arc<artifacts::Store>>,
    tokens: Tokens,
    template: Option<String>,
    data: Map<String, Value>,
    /// Machines get their own cloud-config URL (profiles, or a template that asks for
    /// `.daybreak.*`).
    personal: bool,
    images: Images,
    /// Each boot's own URLs, and the profile its decision chose.
    grants: Arc<grants::Grants>,
    /// New records per source address ([`NEW_PER_SOURCE`]).
    creations: Arc<crate::bounded::PerKey<std::net::IpAddr>>,
    /// Lines about machines not remembered, a few a second.
    not_added: Mutex<crate::bounded::LineBudget>,
    /// Told of installs, local boots and cloud-configs.
    events: Option<Arc<Hub>>,
    /// When boots get the report initrd.
    report_initrd: crate::report_initrd::When,
}

/// Puts the machines file `path` in the shared `store` for every replica, checked first.
pub fn apply(store: &dyn MachineStore, path: &std::path::Path) -> anyhow::Result<usize> {
    let (p, bytes) = profiles::shared_text(path)?;
    store.put_profiles(&bytes).map_err(|e| {
        anyhow::anyhow!("cannot put the machines file in {}: {e}", store.describe())
    })?;
    tracing::info!(
        file = %path.display(),
        store = %store.describe(),
        entries = p.len(),
        "machines file applied to the store: every replica decides from it"
    );
    Ok(p.len())
}

/// The profiles `store` shares, checked as hostile: `None` (and said) when it holds none or
/// holds something that is not profiles.
fn shared_profiles(store: &dyn MachineStore) -> Option<Profiles> {
    let (bytes, _) = store.shared_profiles()?;
    match profiles::from_shared(&bytes) {
        Ok(p) => {
            tracing::info!(store = %store.describe(), entries = p.len(), "machine profiles from the store: they apply from each machine's next boot");
            Some(p)
        }
        Err(e) => {
            tracing::error!(store = %store.describe(), "the machine profiles in the store are refused: {e:#}; keeping the last good ones");
            None
        }
    }
}

/// Hands memory freed after reading a large machines file or store back to the system: the
/// parse trees of thousands of entries are garbage once read, and malloc keeps such memory.
fn release_freed() {
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Fleet {
    /// The fleet of `opts`, its machines in the store of its state directory.
    pub fn open(
        opts: &FleetOptions,
        plan: Arc<Plan>,
        main_arch: Option<CpuArch>,
        events: Option<Arc<Hub>>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let store = match &opts.opened {
            Some(o) => o.0.clone(),
            None => crate::store::open(&opts.store, &opts.state_dir)?,
        };
        let state = artifacts::Store::open(&opts.state_dir)?;
        let tokens = Tokens::for_store(&*store, state.root())?;
        Fleet::new(opts, plan, main_arch, store, tokens, events)
    }

    pub fn new(
        opts: &FleetOptions,
        plan: Arc<Plan>,
        main_arch: Option<CpuArch>,
        store: Arc<dyn MachineStore>,
        tokens: Tokens,
        events: Option<Arc<Hub>>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let (mut profiles, file) = match &opts.machines {
            None => (Profiles::default(), None),
            Some(MachinesSource::Inline(p)) => (p.clone(), None),
            Some(MachinesSource::File(path)) => {
                let (p, w) = profiles::Watched::load(path)?;
                if store.is_shared() {
                    apply(&*store, path)?;
                }
                (p, Some(w))
            }
        };
        // Replicas decide from the profiles the store shares, when it has some and this one
        // brought none of its own.
        if store.is_shared() && opts.machines.is_none() {
            if let Some(p) = shared_profiles(&*store) {
                profiles = p;
            }
        }
        // A booted machine asks for a cloud-config only when there is one to give.
        let config_expected = opts.template.is_some()
            || plan.cloud_config_file().is_some()
            || profiles.entries.iter().any(|p| p.cloud_config.is_some());
        let mut timelines = Timelines::with_stall(
            plan.rootfs.as_ref().map_or(0, |r| r.size),
            opts.stall_after.unwrap_or(crate::timeline::STALL_AFTER),
        );
        timelines.config_expected = config_expected;
        // Profiles may come from the store at any time: every machine gets URLs of its own.
        let shared = store.is_shared();
        // Replicas build each image once among them.
        let mut opts = opts.clone();
        if shared && opts.images.peers.is_none() {
            opts.images.peers = Some(crate::sources::Peers(
                crate::shared_builds::SharedBuilds::new(store.clone()),
            ));
        }
        let opts = &opts;
        let artifacts = match shared {
            true => Some(Arc::new(artifacts::Store::open(&opts.state_dir)?)),
            false => None,
        };
        let fleet = Arc::new(Fleet {
            artifacts,
            timelines,
            main: plan,
            images: Images::new(opts, main_arch)?,
            grants: Arc::default(),
            creations: Arc::new(crate::bounded::PerKey::new(
                NEW_PER_SOURCE,
                NEW_WINDOW,
                4096,
            )),
            not_added: Mutex::new(crate::bounded::LineBudget::new(
                std::time::Instant::now(),
                10,
                "new machines not remembered",
            )),
            profiles: RwLock::new(Arc::new(profiles)),
            file: Mutex::new(file),
            shared_at: Mutex::default(),
            writes: Writes::spawn(store.clone())?,
            report_initrd: opts.report_initrd,
            store,
            tokens,
            template: opts.template.clone(),
            data: opts.data.clone(),
            personal: opts.machines.is_some()
                || shared
                || opts
                    .template
                    .as_deref()
                    .is_some_and(|t| t.contains(".daybreak.")),
            events,
        });
        fleet.images.build_all(&fleet.profiles());
        release_freed();
        let weak: Weak<Fleet> = Arc::downgrade(&fleet);
        std::thread::Builder::new()
            .name("machines-watch".into())
            .spawn(move || {
                // A store that is one host's has no shared profiles to follow in between.
                let tick = if shared { SHARED_POLL } else { POLL };
                let every = (POLL.as_millis() / tick.as_millis()).max(1);
                for round in 1u128.. {
                    std::thread::sleep(tick);
                    let Some(f) = weak.upgrade() else { break };
                    if round % every == 0 {
                        f.refresh();
                    } else {
                        f.follow_shared_profiles();
                    }
                }
            })?;
        if fleet.store.is_shared() {
            let weak: Weak<Fleet> = Arc::downgrade(&fleet);
            let mut lines = crate::bounded::LineBudget::new(
                std::time::Instant::now(),
                1,
                "lines about steps not shared",
            );
            std::thread::Builder::new()
                .name("steps-share".into())
                .spawn(move || loop {
                    std::thread::sleep(SHARE_EVERY);
                    let Some(f) = weak.upgrade() else { break };
                    f.share_steps(&mut lines);
                })?;
        }
        Ok(fleet)
    }

    /// Says this replica is one of those sharing the store (`addresses`: where machines reach
    /// it); nothing for a store that is one host's.
    pub fn join(&self, addresses: Vec<String>, port: u16) {
        let me = crate::store::Member::me(addresses, port);
        if self.store.is_shared() {
            self.timelines.share_as(me.id.clone());
        }
        self.store.join(me);
    }

    /// Shares the steps machines took since the last call with the other replicas. Best
    /// effort: steps not written (the store unreachable) go with the machine's next step.
    fn share_steps(&self, lines: &mut crate::bounded::LineBudget) {
        let steps = self.timelines.unshared();
        if let Err(e) = self.store.share_steps(&steps) {
            if lines.admit(std::time::Instant::now()) {
                tracing::warn!(store = %self.store.describe(), machines = steps.len(), "machines' steps not shared with the other replicas: {e}");
            }
        }
    }

    /// How many profiles, and machines remembered.
    pub fn describe(&self) -> String {
        let (p, n) = (self.profiles().len(), self.store.len());
        format!(
            "{p} machine profile{}, {n} machine{} remembered in {}",
            if p == 1 { "" } else { "s" },
            if n == 1 { "" } else { "s" },
            self.store.describe()
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
        // A boot's URLs taken back by `daybreak machines reinstall` or `forget`.
        self.grants.follow(|mac| {
            self.store
                .cached(mac)
                .and_then(|v| v.record.grant)
                .map(|g| g.nonce)
        });
        self.follow_shared_profiles();
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(edited) = file.as_mut().and_then(|f| f.edited()) else {
            return;
        };
        match edited {
            Ok(p) => {
                let path = file.as_ref().map(|f| f.path().to_path_buf());
                if let Some(path) = path.filter(|_| self.store.is_shared()) {
                    if let Err(e) = apply(&*self.store, &path) {
                        tracing::error!("{e:#}; the store keeps its profiles");
                    }
                }
                self.use_profiles(p);
            }
            Err(e) => tracing::error!(
                "{e:#}; keeping the last good version ({} entries) until the file is fixed",
                self.profiles().len()
            ),
        }
    }

    /// Decides from the profiles the shared store holds once they change (a new version).
    fn follow_shared_profiles(&self) {
        if !self.store.is_shared() {
            return;
        }
        let now = self.store.shared_profiles().map(|(_, v)| v);
        let mut at = self.shared_at.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != *at {
            *at = now;
            if let Some(p) = shared_profiles(&*self.store) {
                self.use_profiles(p);
            }
        }
    }

    /// Decides from `p` from each machine's next boot on; the images it names are built.
    fn use_profiles(&self, p: Profiles) {
        let p = Arc::new(p);
        self.images.build_all(&p);
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Whether machines of `arch` may have something to boot here.
    pub fn may_serve(&self, arch: CpuArch) -> bool {
        self.images.may_serve(arch, &self.profiles())
    }

    /// Takes in one boot event: the machine's phase and timeline.
    pub fn observe(&self, e: &BootEvent) {
        self.timelines.observe(e);
    }

    fn emit(&self, peer: Option<SocketAddr>, mac: Mac, step: Step) {
        if let Some(hub) = &self.events {
            hub.emit(peer, Some(mac), step);
        }
    }

    /// How machine `m` boots now, by its profile and its state; what else that takes (a boot
    /// remembered, an image built) is done here.
    fn decide_for(&self, m: Machine, peer: SocketAddr, base: &str) -> Decision {
        self.timelines.note(&m);
        let (machine, firmware) = self.timelines.machine(m.mac);
        let profiles = self.profiles();
        let profile = profiles.find(&machine);
        let record = self.store.cached(m.mac).map(|v| v.record);
        let which = self
            .images
            .which(profile.and_then(|p| p.image.as_ref()), machine.arch);
        let state = match &which {
            images::Which::Other(key) => self.images.state(key),
            _ => images::State::Missing,
        };
        let (outcome, effects) = decide::decide(&Facts {
            machine,
            firmware,
            profile,
            record: record.as_ref(),
            image: (which, state),
            now: artifacts::now(),
            personal: self.personal,
            common_config: self.template.is_some() || self.main.cloud_config_file().is_some(),
        });
        // A machine the store does not hold yet is added within its address's budget.
        let writes = effects.iter().any(|e| matches!(e, Effect::Record(_)))
            || matches!(&outcome, Outcome::Boot(b) if b.config);
        let remember = record.is_some() || !writes || self.may_add(m.mac, peer);
        for e in effects {
            match e {
                Effect::Record(_) if !remember => {}
                Effect::Record(change) => self.writes.send(m.mac, change),
                Effect::LocalBoot => self.emit(None, m.mac, Step::LocalBoot),
                Effect::Build(key) => self.images.ensure(&key, false),
            }
        }
        let mac = m.mac;
        match outcome {
            Outcome::Ignore => Decision::Ignore,
            Outcome::Local(why) => {
                tracing::info!(mac = %mac, client = %peer.ip(), "booting from the local disk: {why}");
                Decision::Local
            }
            Outcome::Wait(why) => {
                tracing::info!(mac = %mac, "asked to wait: {why}");
                Decision::Wait {
                    why: why.into(),
                    retry: RETRY,
                }
            }
            Outcome::Refuse(why) => {
                let arch = machine.arch.map_or("unknown", |a| a.as_str());
                tracing::warn!(mac = %mac, arch, "not booted: {why}");
                Decision::Refuse(why.into())
            }
            Outcome::Boot(b) => {
                let plan = match &b.image {
                    Some(key) => match self.images.plan(key) {
                        Some(p) => p,
                        None => return Decision::Refuse("its image went away".into()),
                    },
                    None => self.main.clone(),
                };
                let size = plan.rootfs.as_ref().map_or(0, |r| r.size);
                self.timelines.rootfs_total(mac, size);
                let mut report = None;
                let config_url = match b.config {
                    true => match self.grant(mac, profile.cloned(), remember) {
                        Some(nonce) => {
                            // Its initrd's stages go to its own report URL, open as long as
                            // its install callback is.
                            let url = self.tokens.url(base, PersonalKind::Report, mac, &nonce);
                            report = Some((url, self.report_initrd));
                            Some(self.tokens.url(base, PersonalKind::Config, mac, &nonce))
                        }
                        None => {
                            return Decision::Wait {
                                why: "this server cannot make its URLs now (its log says why)"
                                    .into(),
                                retry: RETRY,
                            }
                        }
                    },
                    false => None,
                };
                let own = Own {
                    cmdline: b.cmdline.as_deref(),
                    config_url,
                    report,
                };
                Decision::Boot(plan.spec(base, Some(mac), &own))
            }
        }
    }

    /// The safest answer for `mac` to a request that may not speak for it, changing nothing:
    /// its disk when it is installed; nothing when its profile says `ignore`; a wait when it is
    /// a machine of its own here (a profile, a record, a fleet whose machines get their own
    /// cloud-configs); what a request naming no machine gets otherwise (nothing in it is any machine's own). Never another profile's
    /// boot, never the common cloud-config in place of its own.
    fn doubted(&self, mac: Mac, base: &str) -> Decision {
        let record = self.store.cached(mac).map(|v| v.record);
        if record.as_ref().is_some_and(|r| r.installed_at.is_some()) {
            return Decision::Local;
        }
        let profiles = self.profiles();
        let profile = profiles.find(&Machine::new(mac));
        if profile.is_some_and(|p| p.action == Action::Ignore) {
            return Decision::Ignore;
        }
        match self.personal || record.is_some() || profile.is_some() {
            true => Decision::Wait {
                why: "this request may not speak for this machine (see the server's log)".into(),
                retry: RETRY,
            },
            false => Decision::Boot(self.main.spec(base, None, &Own::default())),
        }
    }

    /// Whether `peer` may add `mac` to the store ([`NEW_PER_SOURCE`] an hour); the machine is
    /// served either way.
    fn may_add(&self, mac: Mac, peer: SocketAddr) -> bool {
        let now = std::time::Instant::now();
        let ok = self.creations.take(peer.ip(), now);
        let mut lines = self.not_added.lock().unwrap_or_else(|e| e.into_inner());
        if !ok && lines.admit(now) {
            tracing::warn!(mac = %mac, client = %peer.ip(), "a new machine not remembered: its address added {NEW_PER_SOURCE} machines to the store within the hour (a flood of made-up MACs?); it is served, and remembered when its address is below that again");
        }
        ok
    }

    /// A new grant for `mac`'s boot ([`grants`]), deciding `profile`: its nonce; kept in its
    /// record when it is to be `remember`ed.
    fn grant(
        &self,
        mac: Mac,
        profile: Option<profiles::Profile>,
        remember: bool,
    ) -> Option<String> {
        // From the record the decision saw: every replica with the same record makes the same
        // URLs. A machine with no record yet: from the minute (replicas agree within it).
        let nonce = match (remember, self.store.cached(mac)) {
            (true, Some(v)) => self.tokens.boot_nonce(mac, v.version, v.record.first_seen),
            (true, None) => self.tokens.boot_nonce(mac, 0, artifacts::now() / 60),
            (false, _) => match artifacts::random_hex(16) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(mac = %mac, error = %e, "no randomness for a boot's URLs");
                    return None;
                }
            },
        };
        // The machine boots again before its last boot reached the store: a nonce of its own.
        let mut nonce = nonce;
        if self.grants.held(mac).as_deref() == Some(nonce.as_str()) {
            nonce = self.tokens.next_nonce(&nonce);
        }
        self.grants
            .issue(mac, profile, nonce.clone(), std::time::Instant::now());
        if !remember {
            return Some(nonce);
        }
        self.writes.send(
            mac,
            Change::Granted(crate::store::Grant {
                nonce: nonce.clone(),
                at: artifacts::now(),
            }),
        );
        Some(nonce)
    }

    /// The grant in `mac`'s record (for URLs given before a restart).
    fn stored_grant(&self, mac: Mac) -> Option<crate::store::Grant> {
        self.store.cached(mac).and_then(|v| v.record.grant)
    }

    /// The booted system of `mac` reported a stage (`stage=`, `status=failed`, `reason=` in
    /// `query`): a line of its timeline, a failure when it failed. What it says is shown
    /// escaped and cut short.
    fn reported(&self, mac: Mac, from: SocketAddr, query: &str) -> Reply {
        let word = |key: &str, max: usize| {
            let v = http::query_param(query, key).unwrap_or_default();
            let v: String = http::loggable(&v).chars().take(max).collect();
            v
        };
        let stage = match word("stage", 64) {
            s if s.is_empty() => "a stage it did not name".to_string(),
            s => s,
        };
        let failed = (word("status", 16) == "failed").then(|| match word("reason", 200) {
            r if r.is_empty() => "no reason given".to_string(),
            r => r,
        });
        match &failed {
            Some(why) => {
                tracing::warn!(mac = %mac, client = %from.ip(), stage = %stage, "the booted system reported a failure: {why}")
            }
            None => {
                tracing::info!(mac = %mac, client = %from.ip(), stage = %stage, "the booted system reported a stage")
            }
        }
        self.emit(Some(from), mac, Step::Reported { stage, failed });
        Reply::memory("_report", "text/plain; charset=utf-8", &b"noted\n"[..])
    }

    /// `mac` reported its install failed (`reason=` in `query`, shown escaped and cut short).
    fn install_failed(&self, mac: Mac, from: SocketAddr, query: &str) -> Reply {
        let reason = http::query_param(query, "reason").unwrap_or_default();
        let why = format!(
            "the machine reported its install failed: {}",
            match reason.is_empty() {
                true => "no reason given".into(),
                false => http::loggable(&reason),
            }
        );
        tracing::warn!(mac = %mac, client = %from.ip(), "{why}");
        self.emit(
            Some(from),
            mac,
            Step::Failed {
                stage: "install",
                kind: "install failed",
                why,
            },
        );
        Reply::memory(
            "_installed",
            "text/plain; charset=utf-8",
            b"noted: not installed\n".to_vec(),
        )
    }

    /// Remembers that `mac`'s install finished, on disk before the machine hears it: a crash
    /// right after cannot make it install again. When it cannot be remembered, the machine is
    /// not told it was, and its callback (`nonce`) stays open for its retry. The write waits on
    /// the disk (or a store's quorum), so it is made on a thread of its own, never on the
    /// threads that answer every other request.
    fn installed(&self, mac: Mac, from: SocketAddr, nonce: String) -> Reply {
        let (store, grants, events) =
            (self.store.clone(), self.grants.clone(), self.events.clone());
        if store.cached(mac).is_none() && !self.may_add(mac, from) {
            grants.restore(mac, nonce, std::time::Instant::now());
            return Reply::NotFound;
        }
        Reply::Later(Arc::new(move || {
            let done = Change::Installed {
                at: artifacts::now(),
            };
            if let Err(e) = crate::store::update(&*store, mac, &done) {
                tracing::error!(mac = %mac, store = %store.describe(), error = %e, "install finished, but it cannot be remembered: not answered, so the machine calls back again");
                grants.restore(mac, nonce.clone(), std::time::Instant::now());
                return match e {
                    StoreError::Full => Reply::NotFound,
                    // Unreachable, no quorum, lost races: 503, which `curl --retry` retries.
                    _ => Reply::Refused {
                        code: 503,
                        headers: "Retry-After: 5\r\n",
                    },
                };
            }
            tracing::info!(mac = %mac, client = %from.ip(), "install finished: this machine boots from its disk from its next network boot on (daybreak machines reinstall MAC to undo)");
            if let Some(hub) = &events {
                hub.emit(Some(from), Some(mac), Step::Installed);
            }
            Reply::memory(
                "_installed",
                "text/plain; charset=utf-8",
                &b"installed\n"[..],
            )
        }))
    }
}

impl Booter for Fleet {
    /// From memory, and writing nothing (what DHCP told of the machine is kept from the offer's
    /// event, after the reply left): its profile may say `ignore`.
    fn allow(&self, m: &Machine) -> bool {
        self.images.seen(m);
        self.profiles()
            .find(m)
            .is_none_or(|p| p.action != Action::Ignore)
    }

    fn decide(&self, ask: &Ask<'_>) -> Decision {
        match ask.machine {
            Some(m) if ask.vouched => self.decide_for(m, ask.peer, ask.base),
            Some(m) => self.doubted(m.mac, ask.base),
            None => Decision::Boot(self.main.spec(ask.base, None, &Own::default())),
        }
    }

    fn file(&self, name: &str) -> Option<Reply> {
        if let (Some(store), true) = (&self.artifacts, name.starts_with("_/artifacts/")) {
            // Opened from the disk: on a thread of its own.
            let (store, name) = (store.clone(), name.to_string());
            return Some(Reply::Later(Arc::new(move || {
                crate::shared_builds::serve(&store, &name).unwrap_or(Reply::NotFound)
            })));
        }
        match self.main.file(name) {
            Some(f) => Some(f.reply()),
            None => self.images.file(name),
        }
    }

    fn personal(&self, p: &Personal<'_>, from: SocketAddr, base: &str) -> Option<Reply> {
        let opens = |nonce: &str| self.tokens.check(p, nonce);
        let stored = self.stored_grant(p.mac);
        let now = std::time::Instant::now();
        let opened = match p.kind {
            PersonalKind::Config => {
                let chosen = || {
                    let (machine, _) = self.timelines.machine(p.mac);
                    self.profiles().find(&machine).cloned()
                };
                self.grants
                    .config(p.mac, &opens, stored.as_ref(), chosen, now)
                    .map(|o| self.config(p.mac, base, o.profile.as_ref(), &o.nonce))
            }
            // An install that failed says so: the machine is not installed, its callback stays
            // open (a retry may still succeed), and the failure is its timeline's.
            PersonalKind::Installed
                if http::query_param(p.query, "status").as_deref() == Some("failed") =>
            {
                self.grants
                    .check_install(p.mac, &opens, stored.as_ref(), now)
                    .map(|()| self.install_failed(p.mac, from, p.query))
            }
            // A stage of the booted system, taken while its install callback is open.
            PersonalKind::Report => self
                .grants
                .check_install(p.mac, &opens, stored.as_ref(), now)
                .map(|()| self.reported(p.mac, from, p.query)),
            PersonalKind::Installed => self
                .grants
                .install(p.mac, &opens, stored.as_ref(), now)
                .map(|nonce| self.installed(p.mac, from, nonce)),
            PersonalKind::File(_) => return None,
        };
        match opened {
            Ok(reply) => Some(reply),
            Err(why) => {
                tracing::info!(mac = %p.mac, client = %from.ip(), kind = ?p.kind, "a machine's URL that this boot does not open ({why:?}): not found");
                None
            }
        }
    }

    fn describe(&self) -> String {
        Fleet::describe(self)
    }
}

impl crate::admin::Machines for Fleet {
    fn list_json(&self, offset: usize, limit: usize) -> Vec<u8> {
        let profiles = self.profiles();
        let mut json = Vec::new();
        let replicas = self.store.members();
        self.store.with_steps(&mut |shared| {
            self.store.with(&mut |records| {
                json = self
                    .timelines
                    .list_json(&profiles, records, shared, &replicas, offset, limit)
            })
        });
        json
    }

    fn show_json(&self, mac: Mac) -> Option<Vec<u8>> {
        let record = self.store.cached(mac).map(|v| v.record);
        let mut others = Vec::new();
        self.store.with_steps(&mut |shared| {
            others = shared.get(&mac).cloned().unwrap_or_default();
        });
        self.timelines
            .show_json(&mac, &self.profiles(), record.as_ref(), &others)
    }

    fn stalled(&self) -> Vec<(&'static str, u64)> {
        let mut n = Vec::new();
        self.store
            .with_steps(&mut |shared| n = self.timelines.stalled(shared));
        n
    }

    fn store_metrics(&self, s: &mut String) {
        crate::metrics::render_store(s, self.writes.queued(), self.store.snapshot_age());
    }
}

#[cfg(test)]
mod tests;
