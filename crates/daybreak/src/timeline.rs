//! Each machine's boot as the servers saw it, since this server started: what DHCP told of it
//! (UUID, architecture, firmware and boot path), its address, its phase (offered, loader,
//! script, kernel, initrd, rootfs with progress, config, booting, installed, local disk) and a
//! bounded timeline of its steps, fed by the boot events ([`crate::events`]). The status page
//! and `/api/machines` are written from here, with what the store and the profiles say.
//!
//! Bounded: [`MAX_LIVE`] machines, [`TIMELINE`] steps each; past that, the machines seen
//! longest ago go, in bulk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use pxe::{Mac, Machine};

use crate::events::{BootEvent, Step};
use crate::fleet::profiles::{Action, Profiles};
use crate::store::{Record, Steps, Versioned};

/// Machines' steps the other replicas shared, by MAC ([`crate::store::MachineStore::with_steps`]).
pub type Shared = crate::store::SharedSteps;

/// The phases a machine can be in, for those another replica shares (read as hostile: any
/// other word is "seen").
const PHASES: [&str; 11] = [
    "seen",
    "offered",
    "loader",
    "script",
    "kernel",
    "initrd",
    "rootfs",
    "booting",
    "config",
    "installed",
    "local disk",
];

fn phase_of(word: &str) -> &'static str {
    PHASES
        .iter()
        .find(|p| **p == word)
        .copied()
        .unwrap_or("seen")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Machines with a timeline in memory; past this the ones seen longest ago are dropped.
pub const MAX_LIVE: usize = 4096;
/// Events kept per machine.
pub const TIMELINE: usize = 32;
/// Machines whose steps are shared with the other replicas in one go (a second): the rest wait
/// for the next. Whatever floods the link, the store gets at most this many writes a second.
pub const SHARED_PER_ROUND: usize = 256;

/// What profiles select a machine by, from what is known of it.
fn machine_of(mac: Mac, seen: Option<&Seen>) -> Machine {
    Machine {
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
    /// Its firmware's offer: what runs on it, and the loader it was sent.
    offer: Option<(pxe::Client, pxe::Loader)>,
    ip: Option<IpAddr>,
    phase: &'static str,
    /// Bytes of the squashfs sent in this boot, and of the response under way, of its size.
    rootfs_bytes: u64,
    rootfs_total: u64,
    rootfs_sending: u64,
    last: SystemTime,
    timeline: VecDeque<(SystemTime, What)>,
    /// Requests from other hosts that named it and got nothing of its own.
    doubts: u64,
    /// The last step of this boot that went well.
    last_good: Option<&'static str>,
    /// What failed in this boot (a new offer starts a boot afresh).
    failure: Option<Failure>,
}

/// What failed in a machine's boot, and where.
#[derive(Debug, Clone, serde::Serialize)]
struct Failure {
    kind: &'static str,
    stage: &'static str,
    text: String,
    at: u64,
}

/// The steps a machine can be stuck after, in boot order, each with why, in one sentence.
const STALLS: [(&str, &str); 7] = [
    ("offered", "the firmware never fetched its loader: TFTP (UDP 69) blocked between it and this server, or another server's offer won"),
    ("loader", "iPXE never asked for its boot script: its DHCP, or HTTP to this server, failed"),
    ("script", "iPXE never fetched the kernel: HTTP to this server failed or the script stopped"),
    ("kernel", "the download of the kernel or initrd did not finish: the network, or the machine ran out of memory"),
    ("initrd", "the download of the kernel or initrd did not finish: the network, or the machine ran out of memory"),
    ("booting", "the initrd never asked for the root: its network, NIC driver or the kernel command line"),
    ("rootfs", "the root was fetched but the booted system never asked for its cloud-config: the root's mount, or config_url on the command line"),
];

/// Why a machine whose next step has not come is stuck, by the step it is stuck after; `None`
/// for a step nothing more is expected after.
fn stall_cause(phase: &str) -> Option<&'static str> {
    STALLS
        .iter()
        .find(|(p, _)| *p == phase)
        .map(|(_, why)| *why)
}

/// Of the steps other replicas shared of a machine, the one with the latest step, when it is
/// later than this replica's own (`local`, Unix ms).
fn latest_other(others: &[std::sync::Arc<Steps>], local: Option<u64>) -> Option<&Steps> {
    others
        .iter()
        .filter(|o| phase_of(&o.phase) != "seen")
        .max_by_key(|o| o.last)
        .map(|o| &**o)
        .filter(|o| local.is_none_or(|l| o.last > l))
}

/// Adds a step to a machine's timeline, the oldest going past [`TIMELINE`].
fn push(s: &mut Seen, at: SystemTime, what: What) {
    if s.timeline.len() >= TIMELINE {
        s.timeline.pop_front();
    }
    s.timeline.push_back((at, what));
}

/// A step as the timeline keeps it: an offer as it came (its words are written when a page asks;
/// a storm of offers costs no formatting), anything else as its line.
#[derive(Debug, Clone)]
enum What {
    Offer(pxe::Client, pxe::Loader),
    Line(String),
}

impl What {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            What::Offer(c, l) => format!(
                "DHCP offer to {}: {}",
                pxe::driver::firmware_label(c),
                pxe::driver::boot_path(c, *l)
            )
            .into(),
            What::Line(t) => t.as_str().into(),
        }
    }
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            uuid: None,
            arch: None,
            offer: None,
            ip: None,
            phase: "seen",
            rootfs_bytes: 0,
            rootfs_total: 0,
            rootfs_sending: 0,
            last: SystemTime::now(),
            timeline: VecDeque::new(),
            doubts: 0,
            last_good: None,
            failure: None,
        }
    }
}

#[derive(Default)]
struct Live {
    machines: HashMap<Mac, Seen>,
    /// Machines with steps not yet shared with the other replicas (when shared).
    unshared: HashSet<Mac>,
}

impl Live {
    fn entry(&mut self, mac: Mac) -> &mut Seen {
        crate::bounded::make_room(&mut self.machines, &mac, MAX_LIVE, |s| s.last);
        self.machines.entry(mac).or_default()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A machine as `/api/machines` shows it (never its URLs).
#[derive(serde::Serialize)]
struct View<'a> {
    mac: Mac,
    hostname: Option<&'a str>,
    arch: Option<&'a str>,
    firmware: Option<String>,
    path: Option<&'a str>,
    ip: Option<String>,
    profile: Option<&'a str>,
    action: &'static str,
    phase: &'static str,
    /// The step it is at (failed at, stalled after).
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_good: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<FailureView<'a>>,
    /// Why it is stalled, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled: Option<&'static str>,
    progress: Option<Progress>,
    last_seen: u64,
    installed_at: Option<u64>,
    boots: u64,
    /// Requests from other hosts that named it and got nothing of its own.
    doubts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<Moment<'a>>>,
}

/// What failed, as a page shows it: this replica's own or another's.
#[derive(serde::Serialize)]
struct FailureView<'a> {
    kind: &'a str,
    stage: &'a str,
    text: &'a str,
    at: u64,
}

impl<'a> From<&'a Failure> for FailureView<'a> {
    fn from(f: &'a Failure) -> Self {
        FailureView {
            kind: f.kind,
            stage: f.stage,
            text: &f.text,
            at: f.at,
        }
    }
}

impl<'a> From<&'a crate::store::StepFailure> for FailureView<'a> {
    fn from(f: &'a crate::store::StepFailure) -> Self {
        FailureView {
            kind: &f.kind,
            stage: &f.stage,
            text: &f.text,
            at: f.at,
        }
    }
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
    what: std::borrow::Cow<'a, str>,
    /// The replica that saw it, when another one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a str>,
    #[serde(skip)]
    ms: u64,
}

/// The machines seen since this server started.
pub struct Timelines {
    live: Mutex<Live>,
    /// Size of the command's squashfs, for the progress bar of machines that boot it.
    rootfs_size: u64,
    /// How long a step may wait for the next before its machine is shown stalled.
    stall_after: std::time::Duration,
    /// Whether a booted machine is to ask for a cloud-config (there is one to give): else the
    /// root is the last step expected.
    pub config_expected: bool,
    /// This replica's id, when its machines' steps are shared with other replicas.
    shared_as: std::sync::OnceLock<String>,
}

/// What fits a real boot: the slowest step (a squashfs of a few GB over a busy network, an
/// install) takes minutes, not many.
pub const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

impl Timelines {
    pub fn new(rootfs_size: u64) -> Timelines {
        Timelines::with_stall(rootfs_size, STALL_AFTER)
    }

    /// A step that waits `stall_after` for the next shows its machine stalled.
    pub fn with_stall(rootfs_size: u64, stall_after: std::time::Duration) -> Timelines {
        Timelines {
            live: Mutex::default(),
            rootfs_size,
            stall_after,
            config_expected: true,
            shared_as: std::sync::OnceLock::new(),
        }
    }

    /// Keeps the machines' steps for [`Timelines::unshared`], as replica `member` saw them.
    pub fn share_as(&self, member: String) {
        let _ = self.shared_as.set(member);
    }

    /// The steps of each machine that took a step since the last call, to share with the
    /// other replicas (nothing unless [`Timelines::share_as`]); at most [`SHARED_PER_ROUND`],
    /// the others next time. A machine that only had offers is not shared: a DHCP offer is one
    /// forged packet away, and a flood of made-up MACs must not become writes to the store.
    pub fn unshared(&self) -> Vec<(Mac, Steps)> {
        let Some(member) = self.shared_as.get() else {
            return Vec::new();
        };
        let mut live = self.live();
        let macs: Vec<Mac> = live
            .unshared
            .iter()
            .take(SHARED_PER_ROUND)
            .copied()
            .collect();
        for mac in &macs {
            live.unshared.remove(mac);
        }
        macs.into_iter()
            .filter_map(|mac| {
                let s = live.machines.get(&mac)?;
                if matches!(s.phase, "seen" | "offered") {
                    return None;
                }
                let text = |t: &str| -> String {
                    let mut end = t.len().min(crate::store::MAX_STEP_TEXT);
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    t[..end].chars().filter(|c| !c.is_control()).collect()
                };
                let steps = Steps {
                    member: member.clone(),
                    phase: s.phase.into(),
                    last_good: s.last_good.map(Into::into),
                    failure: s.failure.as_ref().map(|f| crate::store::StepFailure {
                        kind: f.kind.into(),
                        stage: f.stage.into(),
                        text: text(&f.text),
                        at: f.at,
                    }),
                    ip: s.ip.map(|i| i.to_string()),
                    last: unix_ms(s.last),
                    steps: s
                        .timeline
                        .iter()
                        .rev()
                        .take(crate::store::MAX_STEPS)
                        .rev()
                        .map(|(t, w)| (unix_ms(*t), text(&w.text())))
                        .collect(),
                };
                Some((mac, steps))
            })
            .collect()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps what a request tells of a machine (its UUID and architecture) for its later ones.
    pub fn note(&self, m: &Machine) {
        let mut live = self.live();
        let s = live.entry(m.mac);
        s.uuid = m.uuid.or(s.uuid);
        s.arch = m.arch.or(s.arch);
    }

    /// What is known of a machine, and the boot path of its offer (`BIOS iPXE: iPXE: the boot
    /// script`), read at once.
    pub fn machine(&self, mac: Mac) -> (Machine, Option<String>) {
        let live = self.live();
        let seen = live.machines.get(&mac);
        let firmware = seen.and_then(|s| s.offer).map(|(c, l)| {
            format!(
                "{}: {}",
                pxe::driver::firmware_label(&c),
                pxe::driver::boot_path(&c, l)
            )
        });
        (machine_of(mac, seen), firmware)
    }

    /// The size of the squashfs a machine boots, for its progress bar.
    pub fn rootfs_total(&self, mac: Mac, total: u64) {
        self.live().entry(mac).rootfs_total = total;
    }

    /// Takes in one boot event: the machine's phase and timeline.
    pub fn observe(&self, e: &BootEvent) {
        let Some(mac) = e.mac else {
            return;
        };
        let mut live = self.live();
        if let Step::Doubted { why } = &e.step {
            // Shown on a machine already shown; a made-up MAC adds nothing to the table.
            if let Some(s) = live.machines.get_mut(&mac) {
                let from = e.peer.map_or_else(|| "-".into(), |p| p.ip().to_string());
                s.doubts += 1;
                push(
                    s,
                    e.at,
                    What::Line(format!(
                        "a request from {from} named this machine and got nothing of its own: {why}"
                    )),
                );
            }
            return;
        }
        let s = live.entry(mac);
        s.last = e.at;
        if let Some(p) = e.peer {
            s.ip = Some(p.ip());
        }
        let what = match &e.step {
            Step::Offer { client, loader, .. } => {
                s.uuid = client.uuid.or(s.uuid);
                s.arch = pxe::CpuArch::of(client.arch).or(s.arch);
                // The firmware's own offer names the boot; the one iPXE asks for after it
                // loaded does not replace it.
                if s.phase != "loader" {
                    s.offer = Some((*client, *loader));
                }
                // A boot afresh (not the DHCP of the iPXE it just loaded): what failed in the
                // last one is history.
                let ipxe_of_this_boot =
                    s.phase == "loader" && matches!(client.firmware, pxe::Firmware::Ipxe { .. });
                if !ipxe_of_this_boot {
                    s.failure = None;
                    s.last_good = None;
                }
                s.phase = "offered";
                s.rootfs_bytes = 0;
                s.rootfs_sending = 0;
                What::Offer(*client, *loader)
            }
            Step::Lease => {
                let ip = e.peer.map(|p| p.ip().to_string()).unwrap_or_default();
                What::Line(format!("address {ip} from the DHCP server"))
            }
            Step::Loader { file, bytes, ok } => {
                s.phase = "loader";
                What::Line(format!(
                    "{file} over TFTP, {bytes} bytes{}",
                    if *ok { "" } else { " (incomplete)" }
                ))
            }
            Step::Script => {
                s.phase = "script";
                s.rootfs_bytes = 0;
                What::Line("boot script".into())
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
                What::Line(format!("{name}: {bytes} bytes in {ms} ms ({rate} MB/s)"))
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
                What::Line("kernel started".into())
            }
            Step::Config => {
                s.phase = "config";
                What::Line("its cloud-config".into())
            }
            Step::Installed => {
                s.phase = "installed";
                What::Line("install finished".into())
            }
            Step::Reported {
                stage,
                failed: None,
            } => What::Line(format!("the booted system reported: {stage}")),
            Step::Reported {
                stage,
                failed: Some(why),
            } => {
                s.failure = Some(Failure {
                    kind: "reported failure",
                    stage: "booted system",
                    text: format!("{stage}: {why}"),
                    at: unix(e.at),
                });
                What::Line(format!(
                    "FAILED: the booted system reported {stage} failed: {why}"
                ))
            }
            Step::LocalBoot => {
                s.phase = "local disk";
                What::Line("told to boot from its local disk".into())
            }
            Step::Doubted { .. } => return,
            Step::Said { line } => What::Line(format!("iPXE: {line}")),
            Step::NotOffered { client, why } => {
                s.uuid = client.uuid.or(s.uuid);
                s.arch = pxe::CpuArch::of(client.arch).or(s.arch);
                s.failure = Some(Failure {
                    kind: "no offer",
                    stage: "offer",
                    text: why.clone(),
                    at: unix(e.at),
                });
                What::Line(format!("FAILED at offer (no offer): {why}"))
            }
            Step::Failed { stage, kind, why } => {
                s.failure = Some(Failure {
                    kind,
                    stage,
                    text: why.clone(),
                    at: unix(e.at),
                });
                What::Line(format!("FAILED at {stage} ({kind}): {why}"))
            }
        };
        let good = !matches!(
            e.step,
            Step::Failed { .. }
                | Step::NotOffered { .. }
                | Step::Lease
                | Step::Loader { ok: false, .. }
                | Step::Reported {
                    failed: Some(_),
                    ..
                }
        );
        if good && s.phase != "seen" {
            s.last_good = Some(s.phase);
        }
        // Offers alone are not shared (one forged packet each): from its first step of its own.
        let share = !matches!(s.phase, "seen" | "offered");
        push(s, e.at, what);
        if share && self.shared_as.get().is_some() {
            live.unshared.insert(mac);
        }
    }

    /// Machines `offset..offset + limit` of the remembered and the seen, by MAC, as the JSON of
    /// `/api/machines` with how many there are: only that page is written, from the tables as
    /// they are (a fleet of thousands is asked every second by each status page open).
    pub fn list_json(
        &self,
        profiles: &Profiles,
        records: &HashMap<Mac, Versioned>,
        shared: &Shared,
        replicas: &[crate::store::Member],
        offset: usize,
        limit: usize,
    ) -> Vec<u8> {
        let live = self.live();
        let mut macs: Vec<&Mac> = records
            .keys()
            .chain(live.machines.keys().filter(|m| !records.contains_key(*m)))
            .chain(
                shared
                    .keys()
                    .filter(|m| !records.contains_key(*m) && !live.machines.contains_key(*m)),
            )
            .collect();
        let total = macs.len();
        let end = offset.saturating_add(limit).min(total);
        let page = match offset < end {
            true => {
                // Only the page is sorted in full.
                if offset > 0 {
                    macs.select_nth_unstable(offset);
                }
                let rest = &mut macs[offset..];
                if end - offset < rest.len() {
                    rest.select_nth_unstable(end - offset);
                }
                let page = &mut rest[..end - offset];
                page.sort_unstable();
                &page[..]
            }
            false => &[][..],
        };
        let machines: Vec<View> = page
            .iter()
            .map(|m| {
                let record = records.get(m).map(|v| &v.record);
                let others = shared.get(m).map_or(&[][..], |o| &o[..]);
                self.view(m, live.machines.get(m), others, record, profiles)
            })
            .collect();
        #[derive(serde::Serialize)]
        struct Machines<'a> {
            total: usize,
            offset: usize,
            machines: Vec<View<'a>>,
            /// The replicas sharing the store (none for one host's own).
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            replicas: &'a [crate::store::Member],
        }
        serde_json::to_vec(&Machines {
            total,
            offset,
            machines,
            replicas,
        })
        .unwrap_or_default()
    }

    fn view<'a>(
        &self,
        m: &Mac,
        seen: Option<&'a Seen>,
        others: &'a [std::sync::Arc<Steps>],
        record: Option<&'a Record>,
        profiles: &'a Profiles,
    ) -> View<'a> {
        let machine = machine_of(*m, seen);
        let profile = profiles.find(&machine);
        // A machine only seen is shown as the store has it, unless something of it failed.
        let local = seen.filter(|s| s.phase != "seen" || s.failure.is_some());
        // Whichever replica saw its latest step tells where its boot is.
        let other = latest_other(others, local.map(|s| unix_ms(s.last)));
        let (phase, failure, last_good, stalled) = match (local, other) {
            (_, Some(o)) => {
                let phase = phase_of(&o.phase);
                (
                    phase,
                    o.failure.as_ref().map(FailureView::from),
                    o.last_good.as_deref(),
                    self.stall(phase, o.failure.is_some(), o.last),
                )
            }
            (Some(s), None) => (
                s.phase,
                s.failure.as_ref().map(FailureView::from),
                s.last_good,
                self.stall_of(s),
            ),
            (None, None) if record.is_some_and(|r| r.installed_at.is_some()) => {
                ("installed", None, None, None)
            }
            (None, None) => ("seen", None, None, None),
        };
        let (shown, stage) = match (&failure, stalled) {
            (Some(f), _) => ("failed", Some(f.stage)),
            (None, Some(_)) => ("stalled", Some(phase)),
            (None, None) => (phase, None),
        };
        let progress = seen
            .filter(|s| s.phase == "rootfs" && other.is_none())
            .and_then(|s| {
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
        let last_seen = seen
            .map(|s| unix(s.last))
            .into_iter()
            .chain(others.iter().map(|o| o.last / 1000))
            .max()
            .or(record.map(|r| r.last_seen))
            .unwrap_or(0);
        View {
            mac: *m,
            hostname: profile.and_then(|p| p.hostname.as_deref()),
            arch: machine
                .arch
                .or(record.and_then(|r| r.arch))
                .map(|a| a.as_str()),
            firmware: seen
                .and_then(|s| s.offer)
                .map(|(c, _)| pxe::driver::firmware_label(&c)),
            path: seen
                .and_then(|s| s.offer)
                .map(|(c, l)| pxe::driver::boot_path(&c, l))
                .or(record.and_then(|r| r.firmware.as_deref())),
            ip: match other {
                Some(o) => o.ip.clone(),
                None => seen.and_then(|s| s.ip).map(|i| i.to_string()),
            },
            profile: profile.map(|p| p.name.as_str()),
            action: profile.map_or(Action::Install, |p| p.action).as_str(),
            phase: shown,
            stage,
            last_good,
            failure,
            stalled,
            progress,
            last_seen,
            installed_at: record.and_then(|r| r.installed_at),
            boots: record.map_or(0, |r| r.boots),
            doubts: seen.map_or(0, |s| s.doubts),
            timeline: None,
        }
    }

    /// One machine with its timeline (the steps other replicas saw among this one's); `None`
    /// when neither seen nor remembered.
    pub fn show_json(
        &self,
        m: &Mac,
        profiles: &Profiles,
        record: Option<&Record>,
        others: &[std::sync::Arc<Steps>],
    ) -> Option<Vec<u8>> {
        let live = self.live();
        let seen = live.machines.get(m);
        if seen.is_none() && record.is_none() && others.is_empty() {
            return None;
        }
        let mut v = self.view(m, seen, others, record, profiles);
        let mut steps: Vec<Moment> = seen
            .into_iter()
            .flat_map(|s| s.timeline.iter())
            .map(|(t, what)| Moment {
                at: unix(*t),
                what: what.text(),
                replica: None,
                ms: unix_ms(*t),
            })
            .chain(others.iter().flat_map(|o| {
                o.steps.iter().map(|(ms, what)| Moment {
                    at: ms / 1000,
                    what: what.as_str().into(),
                    replica: Some(o.member.as_str()),
                    ms: *ms,
                })
            }))
            .collect();
        steps.sort_by_key(|m| m.ms);
        v.timeline = Some(steps);
        serde_json::to_vec(&v).ok()
    }

    /// Why `s` (in `phase`) is stalled, when it is: no failure, and its next step has not come
    /// within the stall time.
    fn stall_of(&self, s: &Seen) -> Option<&'static str> {
        self.stall(s.phase, s.failure.is_some(), unix_ms(s.last))
    }

    /// Why a machine in `phase` whose last step was at `last` (Unix ms) is stalled, if it is.
    fn stall(&self, phase: &str, failed: bool, last: u64) -> Option<&'static str> {
        if failed || (phase == "rootfs" && !self.config_expected) {
            return None;
        }
        let waited = unix_ms(SystemTime::now()).saturating_sub(last);
        (waited >= self.stall_after.as_millis() as u64)
            .then(|| stall_cause(phase))
            .flatten()
    }

    /// Machines stalled now, by the step they are stalled after, in the order of the steps: of
    /// those whose latest step this replica saw (another replica counts the others).
    pub fn stalled(&self, shared: &Shared) -> Vec<(&'static str, u64)> {
        let live = self.live();
        let mut n = [0u64; STALLS.len()];
        for (mac, s) in &live.machines {
            let others = shared.get(mac).map_or(&[][..], |o| &o[..]);
            if self.stall_of(s).is_some() && latest_other(others, Some(unix_ms(s.last))).is_none() {
                if let Some(i) = STALLS.iter().position(|(p, _)| *p == s.phase) {
                    n[i] += 1;
                }
            }
        }
        STALLS.iter().map(|(p, _)| *p).zip(n).collect()
    }

    /// Machines with a timeline in memory.
    pub fn len(&self) -> usize {
        self.live().machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Mac = Mac([0x52, 0x54, 0, 0, 0, 0x31]);

    fn step(t: &Timelines, step: Step) {
        t.observe(&BootEvent {
            at: SystemTime::now(),
            mac: Some(M),
            peer: Some("10.0.0.31:1000".parse().unwrap()),
            step,
        });
    }

    fn offer(t: &Timelines) {
        step(
            t,
            Step::Offer {
                client: crate::events::tests::client(pxe::Arch::EfiX64, pxe::Firmware::Pxe),
                loader: pxe::Loader::Ipxe,
                target: "ipxe.efi".into(),
                port: pxe::Port::Dhcp,
            },
        );
    }

    fn shown(t: &Timelines) -> serde_json::Value {
        let json = t.show_json(&M, &Profiles::default(), None, &[]).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    fn file(name: &str) -> Step {
        Step::File {
            name: name.into(),
            bytes: 10,
            ms: 1,
        }
    }

    #[test]
    fn each_failure_names_its_stage_and_the_last_good_step() {
        // The steps before, the stage that fails, how, and the last good step then.
        let faults = [
            (vec![], "loader", "loader transfer", "offered"),
            (vec![Step::Script], "kernel", "not found", "script"),
            (
                vec![Step::Script, file("kernel"), file("initrd0"), Step::Booting],
                "rootfs",
                "cut off",
                "booting",
            ),
            (
                vec![
                    Step::Script,
                    file("kernel"),
                    Step::Booting,
                    file("rootfs.squashfs"),
                ],
                "config",
                "not found",
                "rootfs",
            ),
            (
                vec![
                    Step::Script,
                    file("kernel"),
                    Step::Booting,
                    file("rootfs.squashfs"),
                    Step::Config,
                ],
                "install",
                "install failed",
                "config",
            ),
        ];
        for (before, stage, kind, good) in faults {
            let t = Timelines::new(0);
            offer(&t);
            step(
                &t,
                Step::Loader {
                    file: "ipxe.efi".into(),
                    bytes: 9,
                    ok: stage != "loader",
                },
            );
            for s in before {
                step(&t, s);
            }
            step(
                &t,
                Step::Failed {
                    stage,
                    kind,
                    why: "why".into(),
                },
            );
            let v = shown(&t);
            assert_eq!(v["phase"], "failed", "{v}");
            assert_eq!(v["stage"], stage, "{v}");
            assert_eq!(v["failure"]["kind"], kind, "{v}");
            assert_eq!(v["failure"]["stage"], stage, "{v}");
            assert!(
                v["installed_at"].is_null(),
                "never installed by mistake: {v}"
            );
            assert_eq!(v["last_good"], good, "{v}");
            let tl = v["timeline"].as_array().unwrap();
            assert!(tl.last().unwrap()["what"]
                .as_str()
                .unwrap()
                .starts_with("FAILED at"));
            // The next boot starts afresh.
            offer(&t);
            let v = shown(&t);
            assert_eq!(v["phase"], "offered", "{v}");
            assert!(v["failure"].is_null(), "{v}");
        }
    }

    #[test]
    fn a_step_whose_next_does_not_come_is_a_stall_with_its_likely_cause() {
        let t = Timelines::with_stall(0, std::time::Duration::from_millis(50));
        offer(&t);
        step(&t, Step::Script);
        step(&t, file("kernel"));
        step(&t, file("initrd0"));
        step(&t, Step::Booting);
        assert_eq!(shown(&t)["phase"], "booting");
        std::thread::sleep(std::time::Duration::from_millis(80));
        let v = shown(&t);
        assert_eq!(v["phase"], "stalled", "{v}");
        assert_eq!(v["stage"], "booting", "{v}");
        assert!(
            t.stalled(&Shared::new()).contains(&("booting", 1)),
            "{:?}",
            t.stalled(&Shared::new())
        );
        assert!(
            v["stalled"]
                .as_str()
                .unwrap()
                .starts_with("the initrd never asked for the root"),
            "{v}"
        );
        // Where no cloud-config is given, the root is the last step expected.
        let mut t2 = Timelines::with_stall(0, std::time::Duration::from_millis(50));
        t2.config_expected = false;
        offer(&t2);
        step(&t2, file("rootfs.squashfs"));
        std::thread::sleep(std::time::Duration::from_millis(80));
        assert_eq!(shown(&t2)["phase"], "rootfs");
        // Done is done: a machine sent to its disk, or installed, is never stalled.
        step(&t, Step::LocalBoot);
        std::thread::sleep(std::time::Duration::from_millis(80));
        assert_eq!(shown(&t)["phase"], "local disk");
    }

    /// Item: the status page and `/api/machines` of every replica show every machine's steps:
    /// the steps another replica saw come in order among this one's, and the replica with the
    /// latest step tells the phase (a machine that took its DHCP here and its files there is
    /// not stalled here).
    #[test]
    fn steps_another_replica_saw_are_shown_in_order_and_its_latest_tells_the_phase() {
        let t = Timelines::with_stall(0, std::time::Duration::from_millis(50));
        t.share_as("here-000001".into());
        offer(&t);
        assert!(t.unshared().is_empty(), "offers alone are not shared");
        step(&t, Step::Script);
        let shared = t.unshared();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].1.phase, "script");
        assert_eq!(shared[0].1.member, "here-000001");
        assert!(t.unshared().is_empty(), "shared once");
        std::thread::sleep(std::time::Duration::from_millis(80));
        assert!(t.stalled(&Shared::new()).contains(&("script", 1)));
        let now = unix_ms(SystemTime::now());
        let there = std::sync::Arc::new(Steps {
            member: "there-000002".into(),
            phase: "rootfs".into(),
            last_good: Some("rootfs".into()),
            ip: Some("10.0.0.31".into()),
            last: now,
            steps: vec![
                (now - 2, "boot script".into()),
                (now, "rootfs.squashfs: 10 bytes".into()),
            ],
            ..Default::default()
        });
        let mut shared = Shared::new();
        shared.insert(M, vec![there.clone()]);
        let json = t
            .show_json(&M, &Profiles::default(), None, &shared[&M])
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["phase"], "rootfs", "{v}");
        assert_eq!(v["last_good"], "rootfs", "{v}");
        let tl = v["timeline"].as_array().unwrap();
        assert_eq!(tl.len(), 4, "{v}");
        assert!(tl[0]["what"].as_str().unwrap().starts_with("DHCP offer"));
        assert!(tl[0]["replica"].is_null());
        assert_eq!(tl[1]["what"], "boot script");
        assert_eq!(tl[3]["replica"], "there-000002");
        assert!(t.stalled(&shared).iter().all(|(_, n)| *n == 0));
        // A machine only another replica saw is listed.
        let other = Mac([0x52, 0x54, 0, 0, 0, 0x32]);
        shared.insert(other, vec![there]);
        let list: serde_json::Value = serde_json::from_slice(&t.list_json(
            &Profiles::default(),
            &HashMap::new(),
            &shared,
            &[],
            0,
            10,
        ))
        .unwrap();
        assert_eq!(list["total"], 2, "{list}");
        assert_eq!(list["machines"][1]["phase"], "rootfs", "{list}");
        // Hostile words from another replica are not phases.
        let odd = std::sync::Arc::new(Steps {
            member: "odd".into(),
            phase: "<script>".into(),
            last: now + 10,
            ..Default::default()
        });
        let v: serde_json::Value = serde_json::from_slice(
            &t.show_json(&other, &Profiles::default(), None, &[odd])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["phase"], "seen", "{v}");
    }

    /// Item: the shared timelines cannot be bought with forged packets: machines that only had
    /// offers (a flood of made-up MACs) are not written to the store, and machines taking steps
    /// are written a bounded number a second.
    #[test]
    fn a_flood_of_offers_shares_nothing_and_steps_are_shared_a_bounded_number_at_a_time() {
        let t = Timelines::new(0);
        t.share_as("here-000001".into());
        let at = |i: u32, step: Step| BootEvent {
            at: SystemTime::now(),
            mac: Some(Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])),
            peer: None,
            step,
        };
        for i in 0..1000 {
            t.observe(&at(
                i,
                Step::Offer {
                    client: crate::events::tests::client(pxe::Arch::EfiX64, pxe::Firmware::Pxe),
                    loader: pxe::Loader::Ipxe,
                    target: "ipxe.efi".into(),
                    port: pxe::Port::Dhcp,
                },
            ));
        }
        assert!(t.unshared().is_empty());
        for i in 0..600 {
            t.observe(&at(i, Step::Script));
        }
        let rounds: Vec<usize> = std::iter::from_fn(|| {
            let r = t.unshared().len();
            (r > 0).then_some(r)
        })
        .collect();
        assert_eq!(
            rounds,
            [
                SHARED_PER_ROUND,
                SHARED_PER_ROUND,
                600 - 2 * SHARED_PER_ROUND
            ]
        );
    }

    #[test]
    fn timelines_are_bounded() {
        let t = Timelines::new(0);
        let step = |mac, step| BootEvent {
            at: SystemTime::now(),
            mac: Some(mac),
            peer: None,
            step,
        };
        for i in 0..(MAX_LIVE + 100) as u32 {
            let b = i.to_be_bytes();
            t.observe(&step(Mac([2, 0, b[0], b[1], b[2], b[3]]), Step::Script));
        }
        assert!(t.len() <= MAX_LIVE);
        let a = Mac([0x52, 0x54, 0, 0, 0, 0x0a]);
        for _ in 0..(TIMELINE * 3) {
            t.observe(&step(a, Step::Booting));
        }
        let one: serde_json::Value =
            serde_json::from_slice(&t.show_json(&a, &Profiles::default(), None, &[]).unwrap())
                .unwrap();
        assert_eq!(one["timeline"].as_array().unwrap().len(), TIMELINE);
        assert_eq!(one["phase"], "booting");
    }
}
