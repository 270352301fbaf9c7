//! What Daybreak remembers of each machine across restarts (first and last boot, architecture,
//! firmware, whether its install finished), behind one trait: [`MachineStore`]. A store keeps a
//! copy in memory that readers use without waiting ([`MachineStore::cached`],
//! [`MachineStore::with`]), and changes records by compare-and-swap on a version
//! ([`MachineStore::put`]), so two writers (a server and `daybreak machines`, two replicas)
//! never undo each other: [`update`] reads, applies a [`Change`] and retries a lost race.
//!
//! [`file::FileStore`] is the embedded one (a JSON file per machine in `STATE_DIR/machines/`);
//! [`etcd::EtcdStore`] is the one replicas share (`--store etcd://...`).

pub mod etcd;
pub mod file;

use pxe::{CpuArch, Mac, Uuid};
use serde::{Deserialize, Serialize};

pub use file::FileStore;

/// Records kept. Past this, a new machine's record pushes out never-installed machines not seen
/// the longest ([`evictable`]); a store full of installed machines takes no more, and new
/// machines are served but not remembered (a flood of made-up MACs cannot fill the disk, nor
/// push out a machine whose install finished).
pub const MAX_RECORDS: usize = 65_536;

/// Records a store replicas share keeps (a fleet across racks and sites): the same rule past it.
pub const MAX_SHARED_RECORDS: usize = 262_144;

/// Up to `n` machines a full store may forget: never installed, not seen the longest first.
pub fn evictable(records: &std::collections::HashMap<Mac, Versioned>, n: usize) -> Vec<Mac> {
    let mut never: Vec<(u64, Mac)> = records
        .values()
        .filter(|v| v.record.installed_at.is_none())
        .map(|v| (v.record.last_seen, v.record.mac))
        .collect();
    let n = n.min(never.len());
    if n == 0 {
        return Vec::new();
    }
    if n < never.len() {
        never.select_nth_unstable(n - 1);
    }
    never[..n].iter().map(|(_, m)| *m).collect()
}

/// What is remembered of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub mac: Mac,
    /// Unix seconds of its first and latest boot script.
    #[serde(default)]
    pub first_seen: u64,
    #[serde(default)]
    pub last_seen: u64,
    /// Boot scripts served.
    #[serde(default)]
    pub boots: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<CpuArch>,
    /// The boot path of its latest offer (`UEFI PXE, then iPXE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// When it called back that its install finished: from then on it boots from its disk
    /// (until `daybreak machines reinstall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<u64>,
    /// What its latest boot's own URLs are keyed by, so they outlive a restart of the server;
    /// gone once its install called back, or when it is told to reinstall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
}

/// A boot's own URLs (its cloud-config, its install callback) are keyed by a random nonce of
/// that boot ([`crate::fleet`]'s grants).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// 32 hex digits.
    pub nonce: String,
    /// Unix seconds it was made.
    pub at: u64,
}

impl Grant {
    /// Whether it is one Daybreak could have made (the store is read as hostile).
    pub fn is_valid(&self) -> bool {
        self.nonce.len() == 32 && self.nonce.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// One replica, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `HOSTNAME-XXXXXX`: the host and a random suffix of this run.
    pub id: String,
    /// Where machines reach it (its served interfaces' addresses, or `--advertise`).
    pub addresses: Vec<String>,
    /// Daybreak's version.
    pub version: String,
    /// Unix seconds it started.
    pub started: u64,
    /// The port its boot HTTP server listens on (others fetch artifacts there).
    #[serde(default)]
    pub port: u16,
    /// The artifacts it holds, by store key (`sha256-HEX`): others fetch them from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
}

/// Artifacts a member lists; past this, the oldest it took leave the list.
pub const MAX_HELD: usize = 64;

impl Member {
    /// This process (its id: [`Member::my_id`]), reached at `addresses` on `port`.
    pub fn me(addresses: Vec<String>, port: u16) -> Member {
        Member {
            id: Member::my_id().to_string(),
            addresses,
            version: env!("CARGO_PKG_VERSION").into(),
            started: artifacts::now(),
            port,
            artifacts: Vec::new(),
        }
    }

    /// This process's id: its host name and a random suffix, the same for the whole run (the
    /// build it locks before it serves is the one it lists after).
    pub fn my_id() -> &'static str {
        static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        ID.get_or_init(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| {
                    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_graphic())
                })
                .unwrap_or_else(|| "daybreak".into());
            let suffix = artifacts::random_hex(3).unwrap_or_default();
            format!("{host}-{suffix}")
        })
    }

    /// Base URLs it serves artifacts at (`http://ADDR:PORT`).
    pub fn bases(&self) -> Vec<String> {
        self.addresses
            .iter()
            .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
            .filter(|_| self.port != 0)
            .map(|ip| format!("http://{}", std::net::SocketAddr::new(ip, self.port)))
            .collect()
    }

    /// Whether it is one Daybreak could have written (a store is read as hostile).
    pub fn is_valid(&self) -> bool {
        let printable = |t: &str| t.len() <= 100 && t.bytes().all(|b| b.is_ascii_graphic());
        printable(&self.id)
            && printable(&self.version)
            && self.addresses.len() <= 16
            && self.addresses.iter().all(|a| printable(a))
            && self.artifacts.len() <= MAX_HELD
            && self
                .artifacts
                .iter()
                .all(|k| artifacts::Key::parse(k).is_some_and(|k| k.content_addressed()))
    }
}

/// What a replica published of an image's artifacts it built: each file's size and sha256,
/// so another fetches them from any replica holding them and checks what it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The store key (`sha256-HEX`).
    pub key: String,
    /// The replica that built them.
    pub by: String,
    pub files: Vec<PublishedFile>,
    pub meta: artifacts::Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Names an entry's files may have: the three, and the image's own signed shim and GRUB.
pub const PUBLISHED_NAMES: [&str; 5] = [
    artifacts::build::KERNEL,
    artifacts::build::INITRD,
    artifacts::build::ROOTFS,
    artifacts::build::SHIM,
    artifacts::build::GRUB,
];

/// A published file larger than this is not one Daybreak built.
pub const MAX_PUBLISHED_SIZE: u64 = 1 << 40;

impl Published {
    /// Whether it is one Daybreak could have written for `key` (a store is read as hostile):
    /// the three files first, then at most the shim and GRUB, each once, with sane sizes and
    /// sha256s, and a meta of short printable words.
    pub fn is_valid(&self, key: &str) -> bool {
        let word = |t: &str| t.len() <= 300 && t.bytes().all(|b| b.is_ascii_graphic());
        let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        let known = names.len() >= 3
            && names[..3] == PUBLISHED_NAMES[..3]
            && names[3..].iter().all(|n| PUBLISHED_NAMES[3..].contains(n))
            && (names.len() < 5 || names[3] != names[4]);
        self.key == key
            && artifacts::Key::parse(key).is_some_and(|k| k.content_addressed())
            && word(&self.by)
            && known
            && self.files.iter().all(|f| {
                f.size <= MAX_PUBLISHED_SIZE
                    && f.sha256.len() == 64
                    && f.sha256.bytes().all(|b| b.is_ascii_hexdigit())
            })
            && [
                &self.meta.source,
                &self.meta.digest,
                &self.meta.arch,
                &self.meta.compression,
                &self.meta.kernel,
                &self.meta.initrd,
            ]
            .iter()
            .all(|t| word(t))
    }
}

/// A machine's recent steps as one replica saw them, shared with the others so that every
/// replica's page shows every machine's whole boot (its DHCP on one replica, its files from
/// another). Bounded ([`Steps::is_valid`]); kept for [`STEPS_KEPT`] after its last write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steps {
    /// The replica that saw them ([`Member::id`]).
    pub member: String,
    /// Its phase as that replica saw it (`kernel`, `rootfs`...).
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<StepFailure>,
    /// Its address, as that replica saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Unix milliseconds of the latest step.
    pub last: u64,
    /// Unix milliseconds and words of each step, oldest first.
    pub steps: Vec<(u64, String)>,
}

/// Machines' steps other replicas shared, by MAC.
pub type SharedSteps = std::collections::HashMap<Mac, Vec<std::sync::Arc<Steps>>>;

/// What failed in a boot, as [`Steps`] carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailure {
    pub kind: String,
    pub stage: String,
    pub text: String,
    /// Unix seconds.
    pub at: u64,
}

/// How long a machine's shared steps are kept after they were last written.
pub const STEPS_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Steps one replica shares of one machine, and the length of each.
pub const MAX_STEPS: usize = 32;
pub const MAX_STEP_TEXT: usize = 400;

impl Steps {
    /// Whether it is one Daybreak could have written (a store is read as hostile).
    pub fn is_valid(&self) -> bool {
        let word = |t: &str| t.len() <= 100 && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        let text = |t: &str| t.len() <= MAX_STEP_TEXT && !t.chars().any(char::is_control);
        word(&self.member)
            && !self.member.is_empty()
            && word(&self.phase)
            && self.last_good.as_deref().is_none_or(word)
            && self.ip.as_deref().is_none_or(word)
            && self
                .failure
                .as_ref()
                .is_none_or(|f| word(&f.kind) && word(&f.stage) && text(&f.text))
            && self.steps.len() <= MAX_STEPS
            && self.steps.iter().all(|(_, t)| text(t))
    }
}

/// A change to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It fetched a boot script.
    Booted {
        at: u64,
        arch: Option<CpuArch>,
        firmware: Option<String>,
        uuid: Option<Uuid>,
    },
    Installed {
        at: u64,
    },
    Reinstall,
    /// Its boot's own URLs were made.
    Granted(Grant),
}

impl Change {
    /// The record after this change; `None` when there is nothing to change (a reinstall of a
    /// machine never seen).
    pub fn apply(&self, old: Option<&Record>, mac: Mac) -> Option<Record> {
        let mut r = match (old, self) {
            (Some(r), _) => r.clone(),
            (None, Change::Reinstall) => return None,
            (None, _) => Record {
                mac,
                ..Default::default()
            },
        };
        match self {
            Change::Booted {
                at,
                arch,
                firmware,
                uuid,
            } => {
                if r.first_seen == 0 {
                    r.first_seen = *at;
                }
                r.last_seen = *at;
                r.boots += 1;
                r.arch = arch.or(r.arch);
                r.uuid = uuid.or(r.uuid);
                if firmware.is_some() {
                    r.firmware.clone_from(firmware);
                }
            }
            Change::Installed { at } => {
                r.installed_at = Some(*at);
                r.grant = None;
                if r.first_seen == 0 {
                    r.first_seen = *at;
                }
                r.last_seen = r.last_seen.max(*at);
            }
            Change::Reinstall => {
                r.installed_at = None;
                r.grant = None;
            }
            // A grant written late (its write queued while the store was unreachable) never
            // reopens the URLs of a boot whose install already finished.
            Change::Granted(g) if r.installed_at.is_some_and(|t| t >= g.at) => {}
            Change::Granted(g) => r.grant = Some(g.clone()),
        }
        Some(r)
    }
}

/// A record's version in its store: it changes with every write (a counter in the file store).
pub type Version = u64;

/// A record with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub record: Record,
    pub version: Version,
}

/// Why a store did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else changed the record since it was read: read it again and retry.
    #[error("the record changed meanwhile")]
    Conflict,
    /// No room for another machine (see [`MAX_RECORDS`], [`MAX_SHARED_RECORDS`]).
    #[error("the machine store is full (every machine in it installed)")]
    Full,
    /// The store cannot be reached or cannot commit (no quorum): try again later.
    #[error("{store} cannot answer: {why}")]
    Unavailable { store: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where machine records are kept.
pub trait MachineStore: Send + Sync + 'static {
    /// Where it is, for log lines and errors (`/var/lib/daybreak/machines`).
    fn describe(&self) -> String;

    /// A record as this process last saw it: from memory, never waiting on the store.
    fn cached(&self, mac: Mac) -> Option<Versioned>;

    /// `f` over every record as this process last saw them.
    fn with(&self, f: &mut dyn FnMut(&std::collections::HashMap<Mac, Versioned>));

    /// How many machines are remembered.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A record as the store holds it now.
    fn get(&self, mac: Mac) -> Result<Option<Versioned>, StoreError>;

    /// Writes `record` if the store still holds it at `expect` (`None`: no record yet), and
    /// returns its new version; [`StoreError::Conflict`] otherwise, and nothing is written.
    fn put(&self, record: &Record, expect: Option<Version>) -> Result<Version, StoreError>;

    /// Forgets a machine; false when it was not remembered.
    fn forget(&self, mac: Mac) -> Result<bool, StoreError>;

    /// Takes in what others changed since the last look (cheap when nothing did); true when
    /// something did.
    fn refresh(&self) -> bool;

    /// Makes this process's changes known to the others now (a store they watch needs
    /// nothing; the file store's readers look for a changed generation).
    fn publish(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The key per-machine URLs are tagged with, when every process using this store must
    /// share it (replicas): kept in the store, `fresh` put there by whichever comes first.
    /// `None` for a store that is one host's (the key then lives in its state directory).
    fn shared_secret(&self, _fresh: String) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Whether every replica shares this store (etcd), rather than one host's directory.
    fn is_shared(&self) -> bool {
        false
    }

    /// The machine profiles this store shares with every replica (`daybreak machines apply`),
    /// as [`crate::fleet::profiles::shared_text`] wrote them, with a version that changes with
    /// them; `None` when it holds none.
    fn shared_profiles(&self) -> Option<(std::sync::Arc<[u8]>, Version)> {
        None
    }

    /// Puts the profiles every replica decides from; false for a store that is one host's
    /// (nothing is written).
    fn put_profiles(&self, _bytes: &[u8]) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Says this process is one of the replicas sharing the store, for as long as it runs (a
    /// store that is one host's has no members: nothing is written).
    fn join(&self, _me: Member) {}

    /// The replicas sharing this store now, by id; empty for a store that is one host's.
    fn members(&self) -> Vec<Member> {
        Vec::new()
    }

    /// Shares machines' recent steps as this replica saw them (`member`: its id) with the
    /// other replicas; a store that is one host's keeps nothing.
    fn share_steps(&self, _steps: &[(Mac, Steps)]) -> Result<(), StoreError> {
        Ok(())
    }

    /// `f` over the machines' steps the other replicas shared (not this one's own), by MAC.
    fn with_steps(&self, f: &mut dyn FnMut(&SharedSteps)) {
        f(&SharedSteps::new())
    }

    /// Takes the cluster's turn to build the image `key`: `None` while another replica holds it
    /// (it builds), else a turn held until dropped (gone by itself if this process dies). A
    /// store that is one host's has nobody to share with: always this one's turn.
    fn lock_build(&self, _key: &str) -> Result<Option<Box<dyn Send>>, StoreError> {
        Ok(Some(Box::new(())))
    }

    /// What the replica that built `key` published of it, checked as hostile.
    fn published(&self, _key: &str) -> Result<Option<Published>, StoreError> {
        Ok(None)
    }

    /// Publishes what this replica built (once per key: the first stays).
    fn publish_built(&self, _p: &Published) -> Result<(), StoreError> {
        Ok(())
    }

    /// Lists `key` among the artifacts this replica holds, for the others to fetch.
    fn hold(&self, _key: &str) {}

    /// How long ago this process's copy was last known current: `Some(None)` while it is not
    /// (the store is unreachable); `None` for a store nobody else writes without telling.
    fn snapshot_age(&self) -> Option<Option<std::time::Duration>> {
        None
    }
}

/// Lost races retried before a change gives up.
const RETRIES: usize = 16;

/// Applies `change` to `mac`'s record by compare-and-swap, reading it again after a lost race.
/// `None` when there was nothing to change.
pub fn update(
    store: &dyn MachineStore,
    mac: Mac,
    change: &Change,
) -> Result<Option<Record>, StoreError> {
    for _ in 0..RETRIES {
        let now = store.get(mac)?;
        let Some(next) = change.apply(now.as_ref().map(|v| &v.record), mac) else {
            return Ok(None);
        };
        match store.put(&next, now.map(|v| v.version)) {
            Ok(_) => return Ok(Some(next)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// Changes waiting for the writer; past this they are dropped (and said).
const WRITES_QUEUED: usize = 1024;

/// Changes written by a thread of their own, in order, so the one asking never waits on the
/// store. Bounded: past `WRITES_QUEUED` waiting, a change is dropped and said. A store that is
/// unavailable (etcd unreachable, no quorum) is retried, the change held, until it answers.
pub struct Writes {
    tx: std::sync::mpsc::SyncSender<(Mac, Change)>,
    /// Changes sent and not yet written.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Lines about dropped changes: a few a second, the rest counted.
    dropped: std::sync::Mutex<crate::bounded::LineBudget>,
}

/// Lines a second about changes dropped or not written.
const WRITE_LINES: u32 = 5;

/// Waits between tries of a change while the store is unavailable.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const RETRY_LAST: std::time::Duration = std::time::Duration::from_secs(5);

impl Writes {
    pub fn spawn(store: std::sync::Arc<dyn MachineStore>) -> std::io::Result<Writes> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Mac, Change)>(WRITES_QUEUED);
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = queued.clone();
        std::thread::Builder::new()
            .name("machine-store".into())
            .spawn(move || {
                let now = std::time::Instant::now;
                let mut lines =
                    crate::bounded::LineBudget::new(now(), WRITE_LINES, "machine records not written");
                for (mac, change) in rx {
                    let mut wait = RETRY_FIRST;
                    loop {
                        match update(&*store, mac, &change) {
                            Err(StoreError::Unavailable { .. }) => {
                                std::thread::sleep(wait);
                                wait = (wait * 2).min(RETRY_LAST);
                            }
                            Err(e) => {
                                if lines.admit(now()) {
                                    tracing::warn!(mac = %mac, error = %e, store = %store.describe(), "machine record not written");
                                }
                                break;
                            }
                            Ok(_) => break,
                        }
                    }
                    count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            })?;
        Ok(Writes {
            tx,
            queued,
            dropped: std::sync::Mutex::new(crate::bounded::LineBudget::new(
                std::time::Instant::now(),
                WRITE_LINES,
                "machine store busy: changes not remembered",
            )),
        })
    }

    pub fn send(&self, mac: Mac, change: Change) {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued.fetch_add(1, Relaxed);
        if self.tx.try_send((mac, change)).is_err() {
            self.queued.fetch_sub(1, Relaxed);
            let mut lines = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
            if lines.admit(std::time::Instant::now()) {
                tracing::warn!(mac = %mac, "machine store busy: this change is not remembered");
            }
        }
    }

    /// Changes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A store already opened (a replica opens its shared store before building its image, so
/// the build is shared too), handed to what would otherwise open it again.
#[derive(Clone)]
pub struct Opened(pub std::sync::Arc<dyn MachineStore>);

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened({})", self.0.describe())
    }
}

/// Where machine records are kept: `--store`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Location {
    /// `STATE_DIR/machines` (the default).
    #[default]
    File,
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    Etcd(etcd::Target),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Location, String> {
        let usage = "use file (the default: STATE_DIR/machines) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX], e.g. etcd://10.0.0.5:2379,10.0.0.6:2379/daybreak";
        match s {
            "file" | "" => Ok(Location::File),
            _ => match s.strip_prefix("etcd://") {
                Some(rest) => etcd::Target::parse(rest)
                    .map(Location::Etcd)
                    .map_err(|why| format!("store {s:?}: {why}; {usage}")),
                None => Err(format!("store {s:?} is not a store: {usage}")),
            },
        }
    }
}

/// `--store` and the files that reach it: a TLS CA, a client certificate and key, and a
/// credentials file (`USER:PASSWORD`), never secrets on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    pub location: Location,
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub auth_file: Option<std::path::PathBuf>,
}

/// Opens the store `config` names; the file store is in the state directory `state_dir`.
pub fn open(
    config: &StoreConfig,
    state_dir: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<dyn MachineStore>> {
    if let Location::Etcd(_) = &config.location {
        return Ok(std::sync::Arc::new(etcd::EtcdStore::connect(config)?));
    }
    if config.ca.is_some() || config.cert.is_some() || config.auth_file.is_some() {
        anyhow::bail!("--store-ca, --store-cert, --store-key and --store-auth-file are for an etcd store (--store etcd://...)");
    }
    let state = artifacts::Store::open(state_dir)?;
    let store = FileStore::open(state.root()).map_err(|e| {
        anyhow::anyhow!(
            "the machine store in {} cannot be opened: {e}",
            state.root().display()
        )
    })?;
    Ok(std::sync::Arc::new(store))
}

#[cfg(test)]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    /// Item: a boot's grant whose write was held back (the store unreachable) and lands after
    /// the install finished never reopens that boot's URLs.
    #[test]
    fn a_grant_written_late_never_reopens_an_installed_boot() {
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let grant = Grant {
            nonce: "0123456789abcdef0123456789abcdef".into(),
            at: 100,
        };
        let installed = Change::Installed { at: 160 }.apply(None, mac).unwrap();
        let late = Change::Granted(grant.clone())
            .apply(Some(&installed), mac)
            .unwrap();
        assert_eq!(late.grant, None);
        // After a reinstall, the next boot's grant is kept.
        let again = Change::Reinstall.apply(Some(&late), mac).unwrap();
        let next = Change::Granted(Grant { at: 200, ..grant })
            .apply(Some(&again), mac)
            .unwrap();
        assert!(next.grant.is_some());
    }
}
