//! The machine store on etcd: what N replicas share. Under the store's prefix (`/daybreak` unless
//! the URL names another):
//!
//! - `PREFIX/machines/MAC` (12 hex digits): a machine's record as JSON; its version is the key's
//!   `mod_revision`, and every change is a transaction comparing it ([`MachineStore::put`]), so
//!   two replicas never undo each other.
//! - `PREFIX/secret`: the key every replica tags per-machine URLs with, made once by whichever
//!   replica comes first (a transaction that only creates).
//! - `PREFIX/builds/KEY`: the replica building an image's artifacts, on a lease it renews
//!   while it builds; `PREFIX/artifacts/KEY`: what it built (each file's size and sha256).
//! - `PREFIX/timeline/MAC/MEMBER`: a machine's recent steps as one replica saw them, on a
//!   lease of that replica's ([`super::STEPS_KEPT`]), so every replica's page shows every step.
//!
//! Readers never wait on etcd: every record is held in memory, loaded at start and kept current
//! by a watch from the revision it was loaded at. When the watch is lost (etcd unreachable, no
//! quorum, a compaction) the snapshot keeps answering, the log says so once, and the watch is
//! made again from a fresh load. What etcd holds is read as hostile: a value that is not a record
//! of the MAC its key names is skipped with a log line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use pxe::Mac;

use super::{Location, MachineStore, Record, Steps, StoreConfig, StoreError, Version, Versioned};

/// A record value larger than this is not one of ours.
const MAX_VALUE: usize = 16 << 10;
/// Machines' steps held, of every replica: past it, steps new to the snapshot are not taken in.
const MAX_SHARED_STEPS: usize = 16_384;
/// Steps written in one transaction (etcd takes 128 operations in one by default).
const STEPS_PER_TXN: usize = 64;
/// Keys asked for at once while loading the snapshot.
const PAGE: i64 = 1000;
/// How long one request may take before the store is said to be unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the watch is asked to confirm it is current (the snapshot's age).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Waits before the watch is made again after it was lost.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where a store on etcd is: its endpoints and the prefix of every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

/// Endpoints one URL may name.
const MAX_ENDPOINTS: usize = 16;

impl Target {
    /// `HOST:PORT[,HOST:PORT...][/PREFIX]`, what follows `etcd://`.
    pub fn parse(rest: &str) -> Result<Target, String> {
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/daybreak"),
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let Some((host, port)) = h.rsplit_once(':') else {
                return Err(format!(
                    "endpoint {h:?} has no port (HOST:PORT, e.g. 10.0.0.5:2379)"
                ));
            };
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            if !host_ok {
                return Err(format!("endpoint {h:?} does not name a host"));
            }
            if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                return Err(format!("endpoint {h:?}: {port:?} is not a port number"));
            }
            endpoints.push(h.to_string());
        }
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(format!("at most {MAX_ENDPOINTS} endpoints"));
        }
        let prefix_ok = prefix.len() > 1
            && prefix.len() <= 128
            && !prefix.ends_with('/')
            && !prefix.contains("//")
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
        if !prefix_ok {
            return Err(format!(
                "prefix {prefix:?} must be a path like /daybreak (letters, digits, '.', '_', '-', no '/' at the end)"
            ));
        }
        Ok(Target {
            endpoints,
            prefix: prefix.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// The fix to name when etcd cannot be reached or refuses.
const FIX: &str = "check that etcd runs there and the --store URL, and for TLS --store-ca, --store-cert and --store-key";

/// What the snapshot holds and how current it is, shared with the watch.
struct Snapshot {
    records: RwLock<HashMap<Mac, Versioned>>,
    /// Machines forgotten by this process, with the revision of the delete: an older event of
    /// the watch must not bring them back.
    gone: Mutex<HashMap<Mac, i64>>,
    /// Bumped with every change taken in; [`MachineStore::refresh`] compares.
    changes: AtomicU64,
    seen: AtomicU64,
    /// When the watch last showed it is current; `None` while it is lost.
    current_at: Mutex<Option<Instant>>,
    /// Whether "the watch is lost" was said, so it is said once per loss.
    lost_said: AtomicBool,
    /// Lines about hostile values: a few a second.
    lines: Mutex<crate::bounded::LineBudget>,
    /// The profiles every replica decides from, and the revision they were put at.
    profiles: RwLock<Option<(Arc<[u8]>, i64)>>,
    /// The replicas, by key.
    members: RwLock<HashMap<Vec<u8>, super::Member>>,
    /// Machines' steps as each replica shared them, by MAC, and how many there are.
    steps: RwLock<(super::SharedSteps, usize)>,
    /// This replica's id, once it joined: its own steps are in its own timelines already.
    me: std::sync::OnceLock<String>,
    /// Records held at most: past it, a machine new to the snapshot is not taken in (whatever
    /// is written to etcd, memory stays bounded).
    cap: usize,
}

impl Snapshot {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Mac, Versioned>> {
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a record at `version` unless the snapshot already has a newer one.
    fn put(&self, mac: Mac, v: Versioned) {
        if self
            .gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .is_some_and(|at| *at as u64 >= v.version)
        {
            return;
        }
        let mut map = self.write();
        if !map.contains_key(&mac) && map.len() >= self.cap {
            drop(map);
            self.hostile(
                b"machines/",
                "would hold more records than this store keeps",
            );
            return;
        }
        if map.get(&mac).is_none_or(|old| old.version < v.version) {
            map.insert(mac, v);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, mac: Mac, at: i64) {
        let mut map = self.write();
        if map.get(&mac).is_some_and(|old| old.version <= at as u64) {
            map.remove(&mac);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes in every record as loaded at `revision`, keeping what this process wrote or
    /// forgot after it (a write that committed while the load read is not undone).
    fn replace(&self, mut loaded: HashMap<Mac, Versioned>, revision: i64) {
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut map = self.write();
        for (mac, v) in map.drain() {
            if v.version > revision as u64 {
                loaded.insert(mac, v);
            }
        }
        for (mac, at) in gone {
            if loaded.get(&mac).is_some_and(|v| v.version <= at as u64) {
                loaded.remove(&mac);
            }
        }
        *map = loaded;
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes in a member's key as written (`None`: gone); a value not as Daybreak writes it is
    /// skipped.
    fn set_member(&self, key: &[u8], value: Option<&[u8]>) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        let Some(v) = value else {
            m.remove(key);
            return;
        };
        match serde_json::from_slice::<super::Member>(v) {
            Ok(member)
                if v.len() <= 4096
                    && member.is_valid()
                    && (m.contains_key(key) || m.len() < 1024) =>
            {
                m.insert(key.to_vec(), member);
            }
            _ => {
                m.remove(key);
                self.hostile(key, "is not a member as Daybreak writes one");
            }
        }
    }

    /// Takes in a machine's steps as a replica shared them (`None`: gone); a key or value not
    /// as Daybreak writes them is skipped.
    fn set_steps(&self, dir: &[u8], key: &[u8], value: Option<&[u8]>) {
        let Some((mac, member)) = steps_of_key(dir, key) else {
            self.hostile(
                key,
                "is under the timelines' prefix but names no MAC and replica",
            );
            return;
        };
        if self.me.get().is_some_and(|me| me == member) {
            return;
        }
        let parsed = match value {
            None => None,
            Some(v) => match serde_json::from_slice::<Steps>(v) {
                Ok(s) if v.len() <= MAX_VALUE && s.is_valid() && s.member == member => {
                    Some(Arc::new(s))
                }
                _ => {
                    self.hostile(key, "is not a machine's steps as Daybreak writes them");
                    None
                }
            },
        };
        let mut guard = self.steps.write().unwrap_or_else(|e| e.into_inner());
        let (map, count) = &mut *guard;
        let list = map.entry(mac).or_default();
        let at = list.iter().position(|s| s.member == member);
        match (at, parsed) {
            (Some(i), Some(s)) => list[i] = s,
            (None, Some(s)) if *count < MAX_SHARED_STEPS => {
                list.push(s);
                *count += 1;
            }
            (None, Some(_)) => {
                drop(guard);
                self.hostile(key, "would hold more machines' steps than this store keeps");
                return;
            }
            (Some(i), None) => {
                list.swap_remove(i);
                *count -= 1;
            }
            (None, None) => {}
        }
        if list.is_empty() {
            map.remove(&mac);
        }
    }

    fn set_profiles(&self, p: Option<(Arc<[u8]>, i64)>) {
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = p;
    }

    fn hostile(&self, key: &[u8], why: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.admit(Instant::now()) {
            tracing::warn!(
                key = %String::from_utf8_lossy(&key[..key.len().min(200)]),
                "etcd value {why}; skipped (a record is replaced at its machine's next write, profiles at the next daybreak machines apply)"
            );
        }
    }
}

pub struct EtcdStore {
    target: Target,
    keys: Arc<Keys>,
    client: Client,
    handle: tokio::runtime::Handle,
    snapshot: Arc<Snapshot>,
    cap: usize,
    /// The lease this replica's shared steps are put on, and when it was granted.
    steps_lease: Mutex<Option<(i64, Instant)>>,
    /// This replica as a member (once it joined) and the artifacts it holds.
    me: Mutex<(Option<super::Member>, Vec<String>)>,
    /// Its member key's value, for the task that keeps it.
    member_value: tokio::sync::watch::Sender<Vec<u8>>,
    /// Dropped with the store: its runtime's thread then ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Reads a file the operator named (a CA, a certificate, a key, credentials): small, and said
/// clearly when it cannot be read.
fn operator_file(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(256 << 10)
        .read_to_end(&mut buf)
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    Ok(buf)
}

/// `USER:PASSWORD` on the first line of the credentials file.
fn credentials(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text = operator_file("--store-auth-file", path)?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().next().unwrap_or("").trim();
    match line.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => anyhow::bail!(
            "--store-auth-file {}: the first line must be USER:PASSWORD of an etcd user",
            path.display()
        ),
    }
}

fn options(config: &StoreConfig) -> anyhow::Result<(ConnectOptions, bool)> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // Without a leader a request fails at once instead of waiting for one.
        .with_require_leader(true);
    let tls = config.ca.is_some() || config.cert.is_some();
    if tls {
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.ca {
            t = t.ca_certificate(etcd_client::Certificate::from_pem(operator_file(
                "--store-ca",
                ca,
            )?));
        }
        match (&config.cert, &config.key) {
            (Some(c), Some(k)) => {
                t = t.identity(etcd_client::Identity::from_pem(
                    operator_file("--store-cert", c)?,
                    operator_file("--store-key", k)?,
                ))
            }
            (None, None) => {}
            _ => anyhow::bail!("--store-cert and --store-key go together: give both, or neither"),
        }
        o = o.with_tls(t);
    } else if config.key.is_some() {
        anyhow::bail!("--store-key without --store-cert: give both, or neither");
    }
    if let Some(f) = &config.auth_file {
        let (u, p) = credentials(f)?;
        o = o.with_user(u, p);
    }
    Ok((o, tls))
}

/// The MAC a record key names; `None` for any other key.
fn mac_of_key(dir: &[u8], key: &[u8]) -> Option<Mac> {
    let hex = std::str::from_utf8(key.strip_prefix(dir)?).ok()?;
    let mac: Mac = hex.parse().ok()?;
    (mac.hex() == hex).then_some(mac)
}

/// A record value as a record of `mac` at `revision`, or why not.
fn parse_value(value: &[u8], mac: &Mac, revision: i64) -> Result<Versioned, String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "is {} bytes, more than a record's {MAX_VALUE}",
            value.len()
        ));
    }
    let mut v = super::file::parse_record(value, mac)?;
    v.version = revision as u64;
    Ok(v)
}

fn unavailable(target: &Target, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: target.url(),
        why: e.to_string(),
    }
}

impl EtcdStore {
    /// Connects to the store `config` names, loads every record, and starts the watch.
    pub fn connect(config: &StoreConfig) -> anyhow::Result<EtcdStore> {
        let Location::Etcd(target) = &config.location else {
            anyhow::bail!("not an etcd store");
        };
        let target = target.clone();
        let (opts, tls) = options(config)?;
        let scheme = if tls { "https" } else { "http" };
        let endpoints: Vec<String> = target
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        // A runtime of its own, on a thread of its own: callers may be async tasks or plain
        // threads, and neither waits on the other.
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("etcd-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the etcd store's thread ended"))??;
        let endpoints_used = endpoints.clone();
        let client = run(&handle, async move {
            Client::connect(endpoints, Some(opts)).await
        })
        .map_err(|e| {
            let fix = fix_for(&e, &target.prefix);
            anyhow::anyhow!("cannot connect to etcd at {}: {e}; {fix}", target.url())
        })?;
        let snapshot = Arc::new(Snapshot {
            records: RwLock::default(),
            gone: Mutex::default(),
            changes: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            current_at: Mutex::new(None),
            lost_said: AtomicBool::new(false),
            lines: Mutex::new(crate::bounded::LineBudget::new(
                Instant::now(),
                5,
                "etcd values skipped",
            )),
            profiles: RwLock::default(),
            members: RwLock::default(),
            steps: RwLock::default(),
            me: std::sync::OnceLock::new(),
            cap: super::MAX_SHARED_RECORDS,
        });
        let s = EtcdStore {
            keys: Arc::new(Keys::new(&target.prefix)),
            target,
            client,
            handle,
            snapshot,
            cap: super::MAX_SHARED_RECORDS,
            steps_lease: Mutex::new(None),
            me: Mutex::default(),
            member_value: tokio::sync::watch::Sender::new(Vec::new()),
            _stop: stop,
        };
        // Members that are down are left out before the first request: a command run once
        // (`daybreak machines`) must not spend its tries on them.
        let (client, endpoints) = (s.client.clone(), endpoints_used.clone());
        let _ = run(&s.handle, async move {
            check_endpoints(&client, &endpoints, &mut Default::default()).await;
            Ok::<(), etcd_client::Error>(())
        });
        let (keys, snapshot, cap) = (s.keys.clone(), s.snapshot.clone(), s.cap);
        let revision = run(
            &s.handle,
            retrying(s.client.clone(), move |client| {
                load(client, keys.clone(), snapshot.clone(), cap)
            }),
        )
        .map_err(|why| {
            anyhow::anyhow!(
                "cannot read the machine store at {}: {why}; {}",
                s.target.url(),
                fix_for(&why, &s.target.prefix)
            )
        })?;
        *s.snapshot
            .current_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        s.handle.spawn(health(s.client.clone(), endpoints_used));
        s.handle.spawn(watch(
            s.client.clone(),
            s.target.clone(),
            s.keys.clone(),
            s.snapshot.clone(),
            revision,
            s.cap,
        ));
        Ok(s)
    }

    /// Runs `op` on the store's runtime and waits for it, at most [`CALL_TIMEOUT`] and a bit.
    /// A request that did not reach a member (one of the cluster is down: the connection to
    /// it failed) is tried again, on another.
    fn call<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(etcd_client::KvClient) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        run(&self.handle, retrying(self.client.kv_client(), op))
            .map_err(|e| unavailable(&self.target, e))
    }

    fn kv_get(
        &self,
        key: Vec<u8>,
        o: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.call(move |mut kv| {
            let (key, o) = (key.clone(), o.clone());
            async move { kv.get(key, o).await }
        })
    }

    fn kv_txn(&self, t: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(move |mut kv| {
            let t = t.clone();
            async move { kv.txn(t).await }
        })
    }

    fn kv_put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.call(move |mut kv| {
            let (key, value) = (key.clone(), value.clone());
            async move { kv.put(key, value, None).await.map(|_| ()) }
        })
    }

    fn kv_delete(
        &self,
        key: Vec<u8>,
        o: Option<etcd_client::DeleteOptions>,
    ) -> Result<etcd_client::DeleteResponse, StoreError> {
        self.call(move |mut kv| {
            let (key, o) = (key.clone(), o.clone());
            async move { kv.delete(key, o).await }
        })
    }

    /// The lease this replica's steps go on: granted anew every half of [`super::STEPS_KEPT`].
    fn steps_lease(&self) -> Result<i64, StoreError> {
        let mut held = self.steps_lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, at)) = *held {
            if at.elapsed() < super::STEPS_KEPT / 2 {
                return Ok(id);
            }
        }
        let ttl = super::STEPS_KEPT.as_secs() as i64;
        let client = self.client.clone();
        let id = run(&self.handle, async move {
            client.lease_client().grant(ttl, None).await.map(|l| l.id())
        })
        .map_err(|e| unavailable(&self.target, e))?;
        *held = Some((id, Instant::now()));
        Ok(id)
    }

    /// Room for a new machine in a full store: the never-installed machines not seen the
    /// longest go, each only if unchanged since read.
    fn make_room(&self) -> Result<(), StoreError> {
        let mut gone = Vec::new();
        self.with(&mut |all| {
            gone = super::evictable(all, (self.cap / 64).max(1))
                .into_iter()
                .filter_map(|m| all.get(&m).map(|v| (m, v.version)))
                .collect()
        });
        if gone.is_empty() {
            return Err(StoreError::Full);
        }
        for (mac, version) in &gone {
            let key = self.keys.record(mac);
            let resp = self.kv_txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        *version as i64,
                    )])
                    .and_then([TxnOp::delete(key, None)]),
            )?;
            if resp.succeeded() {
                let at = resp.header().map_or(0, |h| h.revision());
                self.snapshot.remove(*mac, at);
            }
        }
        tracing::warn!(
            forgotten = gone.len(),
            store = %self.target.url(),
            "machine store full ({} machines): the never-installed machines not seen the longest are forgotten to make room",
            self.cap
        );
        Ok(())
    }
}

/// The MAC and the replica a timeline key names; `None` for any other key.
fn steps_of_key<'a>(dir: &[u8], key: &'a [u8]) -> Option<(Mac, &'a str)> {
    let rest = std::str::from_utf8(key.strip_prefix(dir)?).ok()?;
    let (hex, member) = rest.split_once('/')?;
    let mac: Mac = hex.parse().ok()?;
    (mac.hex() == hex && !member.is_empty()).then_some((mac, member))
}

/// Runs `fut` on `handle`'s runtime from any thread (async or not) and waits for its result.
fn run<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let r = tokio::time::timeout(CALL_TIMEOUT, fut).await;
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(1)) {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(explain(&e)),
        Ok(Err(_)) | Err(_) => Err(format!(
            "no answer within {} s (unreachable, or no quorum)",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// `op` on `with` (a client), sent again (a few times, on another member) while it did not
/// reach one.
async fn retrying<C, T, F, Fut>(with: C, op: F) -> Result<T, etcd_client::Error>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut tries = 0u64;
    loop {
        match op(with.clone()).await {
            Err(e) if tries < 4 && unreached(&e) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            r => return r,
        }
    }
}

/// Whether a request never reached a member (its connection failed): safe to send again.
fn unreached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            // gRPC's UNAVAILABLE (14) from the channel, not an answer of etcd's.
            s.code() as i32 == 14 && !s.message().starts_with("etcdserver:")
        }
        _ => false,
    }
}

/// The fix for what etcd said (`why`, as [`explain`] wrote it) about the store under `prefix`.
fn fix_for(why: &str, prefix: &str) -> String {
    if why.contains("authentication failed") {
        "check the USER:PASSWORD line of --store-auth-file (one of etcd's users)".into()
    } else if why.contains("user name is empty") || why.contains("invalid auth token") {
        "etcd asks for a user: give --store-auth-file FILE, FILE's first line USER:PASSWORD".into()
    } else if why.contains("permission denied") {
        format!(
            "give the user of --store-auth-file read and write on {prefix}/ (etcdctl role grant-permission ROLE --prefix=true readwrite {prefix}/)"
        )
    } else {
        FIX.into()
    }
}

/// An etcd client error in a line: gRPC statuses by their message.
fn explain(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{} ({:?})", s.message(), s.code()),
        e => e.to_string(),
    }
}

/// The keys under a store's prefix.
struct Keys {
    /// `PREFIX/`: what the watch follows.
    all: Vec<u8>,
    /// `PREFIX/machines/`: a record per MAC.
    machines: Vec<u8>,
    /// `PREFIX/profiles/current`: which generation of the profiles is in force.
    profiles: Vec<u8>,
    /// `PREFIX/profiles/`: the chunks of each generation, under `GEN/NNNN`.
    chunks: String,
    /// `PREFIX/members/`: a key per replica, bound to its lease.
    members: Vec<u8>,
    /// `PREFIX/timeline/`: a machine's steps per replica, under `MAC/MEMBER`.
    timeline: Vec<u8>,
    /// `PREFIX/builds/`: who builds an image, by store key.
    builds: String,
    /// `PREFIX/artifacts/`: what was built of an image, by store key.
    artifacts: String,
}

impl Keys {
    /// The key of `mac`'s record.
    fn record(&self, mac: &Mac) -> Vec<u8> {
        [self.machines.as_slice(), mac.hex().as_bytes()].concat()
    }

    /// The key of `mac`'s steps as `member` saw them.
    fn steps(&self, mac: &Mac, member: &str) -> Vec<u8> {
        [
            self.timeline.as_slice(),
            mac.hex().as_bytes(),
            b"/",
            member.as_bytes(),
        ]
        .concat()
    }

    fn new(prefix: &str) -> Keys {
        Keys {
            all: format!("{prefix}/").into_bytes(),
            machines: format!("{prefix}/machines/").into_bytes(),
            profiles: format!("{prefix}/profiles/current").into_bytes(),
            chunks: format!("{prefix}/profiles/"),
            members: format!("{prefix}/members/").into_bytes(),
            timeline: format!("{prefix}/timeline/").into_bytes(),
            builds: format!("{prefix}/builds/"),
            artifacts: format!("{prefix}/artifacts/"),
        }
    }
}

/// The end of the range of keys that start with `dir`.
fn range_end(dir: &[u8]) -> Vec<u8> {
    let mut end = dir.to_vec();
    *end.last_mut().expect("a directory ends with '/'") += 1;
    end
}

/// Profiles are written in chunks this large (etcd takes requests of 1.5 MiB by default).
const CHUNK: usize = 1 << 20;
/// Chunks one generation may have (the machines file's cap, 16 MiB).
const MAX_CHUNKS: usize = crate::fleet::profiles::MAX_FILE / CHUNK;

/// `PREFIX/profiles/current`: the generation in force, its size and its digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct ProfilesHead {
    generation: String,
    chunks: usize,
    bytes: usize,
    sha256: String,
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The profiles `head` (the value of `PREFIX/profiles/current`) names, read at `revision`,
/// whole and matching its digest; or why not.
async fn fetch_profiles(
    client: &Client,
    keys: &Keys,
    head: &[u8],
    revision: i64,
) -> Result<Result<Arc<[u8]>, String>, etcd_client::Error> {
    let h = match profiles_head(head) {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    let dir = format!("{}{}/", keys.chunks, h.generation).into_bytes();
    let o = GetOptions::new()
        .with_range(range_end(&dir))
        .with_limit(h.chunks as i64 + 1)
        .with_revision(revision);
    let from = dir.clone();
    let resp = retrying(client.kv_client(), move |mut kv| {
        let (from, o) = (from.clone(), o.clone());
        async move { kv.get(from, Some(o)).await }
    })
    .await?;
    Ok(chunks_whole(&h, &dir, resp.kvs()))
}

/// A profiles head as Daybreak writes it, or why not.
fn profiles_head(head: &[u8]) -> Result<ProfilesHead, String> {
    if head.len() > 1024 {
        return Err("is larger than a profiles head".into());
    }
    let h: ProfilesHead =
        serde_json::from_slice(head).map_err(|e| format!("is not a profiles head: {e}"))?;
    let hex16 = h.generation.len() == 16 && h.generation.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex16 || h.chunks > MAX_CHUNKS || h.bytes > crate::fleet::profiles::MAX_FILE {
        return Err("names a generation, chunks or a size Daybreak does not write".into());
    }
    Ok(h)
}

/// The chunks of `h`'s generation (keys under `dir`) as one text, whole and matching its
/// digest, or why not.
fn chunks_whole(
    h: &ProfilesHead,
    dir: &[u8],
    kvs: &[etcd_client::KeyValue],
) -> Result<Arc<[u8]>, String> {
    if kvs.len() != h.chunks {
        return Err(format!(
            "names {} chunks; {} are there",
            h.chunks,
            kvs.len()
        ));
    }
    let mut bytes = Vec::with_capacity(h.bytes);
    for (i, item) in kvs.iter().enumerate() {
        let want = [dir, format!("{i:04}").as_bytes()].concat();
        if item.key() != want || bytes.len() + item.value().len() > h.bytes {
            return Err("has chunks out of order or too large".into());
        }
        bytes.extend_from_slice(item.value());
    }
    if bytes.len() != h.bytes || sha256_hex(&bytes) != h.sha256 {
        return Err("does not match its chunks' size and sha256".into());
    }
    Ok(bytes.into())
}

/// Loads every record and the profiles into the snapshot (replacing what it held), page by
/// page at one revision; returns that revision.
async fn load(
    client: Client,
    keys: Arc<Keys>,
    snapshot: Arc<Snapshot>,
    cap: usize,
) -> Result<i64, etcd_client::Error> {
    let mut kv = client.kv_client();
    let end = range_end(&keys.machines);
    let mut from = keys.machines.clone();
    let mut revision = 0;
    let mut map = HashMap::new();
    loop {
        let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            o = o.with_revision(revision);
        }
        let resp = kv.get(from.clone(), Some(o)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for item in resp.kvs() {
            let Some(mac) = mac_of_key(&keys.machines, item.key()) else {
                snapshot.hostile(item.key(), "is under the machines' prefix but names no MAC");
                continue;
            };
            match parse_value(item.value(), &mac, item.mod_revision()) {
                Ok(v) if map.len() < cap => {
                    map.insert(mac, v);
                }
                Ok(_) => {}
                Err(why) => snapshot.hostile(item.key(), &why),
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let members = kv
        .get(
            keys.members.clone(),
            Some(
                GetOptions::new()
                    .with_range(range_end(&keys.members))
                    .with_limit(1024)
                    .with_revision(revision),
            ),
        )
        .await?;
    snapshot
        .members
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    for item in members.kvs() {
        snapshot.set_member(item.key(), Some(item.value()));
    }
    *snapshot.steps.write().unwrap_or_else(|e| e.into_inner()) = Default::default();
    let end = range_end(&keys.timeline);
    let mut from = keys.timeline.clone();
    loop {
        let o = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(revision);
        let resp = kv.get(from.clone(), Some(o)).await?;
        for item in resp.kvs() {
            snapshot.set_steps(&keys.timeline, item.key(), Some(item.value()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() && snapshot_has_room(&snapshot) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let head = kv
        .get(
            keys.profiles.clone(),
            Some(GetOptions::new().with_revision(revision)),
        )
        .await?;
    match head.kvs().first() {
        None => snapshot.set_profiles(None),
        Some(item) => match fetch_profiles(&client, &keys, item.value(), revision).await? {
            Ok(b) => snapshot.set_profiles(Some((b, item.mod_revision()))),
            Err(why) => snapshot.hostile(item.key(), &why),
        },
    }
    snapshot.replace(map, revision);
    Ok(revision)
}

fn snapshot_has_room(snapshot: &Snapshot) -> bool {
    snapshot.steps.read().unwrap_or_else(|e| e.into_inner()).1 < MAX_SHARED_STEPS
}

/// A member's lease: gone this long after its replica stops renewing it.
const MEMBER_TTL: i64 = 10;

/// Keeps this replica's member key in etcd for as long as the store's runtime runs: a lease of
/// [`MEMBER_TTL`] seconds renewed every third of it; when the lease is lost (etcd unreachable
/// longer than that), a new one and the key again.
async fn membership(
    client: Client,
    target: Target,
    key: Vec<u8>,
    mut value: tokio::sync::watch::Receiver<Vec<u8>>,
) {
    let mut said = false;
    loop {
        let why = async {
            let mut leases = client.lease_client();
            let lease = leases.grant(MEMBER_TTL, None).await?.id();
            let put = |v: Vec<u8>| {
                let (mut kv, key) = (client.kv_client(), key.clone());
                async move {
                    kv.put(key, v, Some(etcd_client::PutOptions::new().with_lease(lease)))
                        .await
                }
            };
            let first = value.borrow_and_update().clone();
            put(first).await?;
            let (mut keeper, mut answers) = leases.keep_alive(lease).await?;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(MEMBER_TTL as u64 / 3)) => {
                        keeper.keep_alive().await?;
                        match answers.message().await? {
                            Some(a) if a.ttl() > 0 => {}
                            _ => return Ok::<String, etcd_client::Error>("the lease expired".into()),
                        }
                    }
                    changed = value.changed() => {
                        if changed.is_err() {
                            return Ok("the store closed".into());
                        }
                        let next = value.borrow_and_update().clone();
                        put(next).await?;
                    }
                }
            }
        }
        .await
        .unwrap_or_else(|e| explain(&e));
        if !said {
            tracing::warn!(store = %target.url(), "this replica's membership lapsed ({why}); joining again");
            said = true;
        }
        tokio::time::sleep(RETRY_MIN).await;
    }
}

/// How often members are checked for a listening client port.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the client's requests off members that are down: every [`HEALTH_EVERY`] each
/// endpoint's port is tried; one that does not take a connection leaves the client's set (the
/// balancer would otherwise still send it every few requests) and comes back when it does.
/// The last one never leaves: with every member down, requests fail and say so.
async fn health(client: Client, endpoints: Vec<String>) {
    let mut down: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        check_endpoints(&client, &endpoints, &mut down).await;
    }
}

/// One look at each endpoint's port: one that does not take a connection leaves the client's
/// set (`down`), one back in `down` that does comes back; the last never leaves.
async fn check_endpoints(
    client: &Client,
    endpoints: &[String],
    down: &mut std::collections::HashSet<String>,
) {
    let mut tries = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let at = e
            .split_once("://")
            .map_or(e.as_str(), |(_, a)| a)
            .to_string();
        tries.spawn(async move {
            let up = matches!(
                tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(at)
                )
                .await,
                Ok(Ok(_))
            );
            (i, up)
        });
    }
    let mut up = vec![false; endpoints.len()];
    while let Some(Ok((i, ok))) = tries.join_next().await {
        up[i] = ok;
    }
    for (e, up) in endpoints.iter().zip(up) {
        if up && down.remove(e) {
            let _ = client.add_endpoint(e).await;
        } else if !up
            && !down.contains(e)
            && down.len() + 1 < endpoints.len()
            && client.remove_endpoint(e).await.is_ok()
        {
            down.insert(e.clone());
        }
    }
}

/// Keeps the snapshot current: a watch from `revision + 1`, asked every [`PROGRESS_EVERY`]
/// whether it is current; when lost, a fresh load and a new watch, for as long as the store's
/// runtime runs.
async fn watch(
    client: Client,
    target: Target,
    keys: Arc<Keys>,
    snapshot: Arc<Snapshot>,
    mut revision: i64,
    cap: usize,
) {
    let mut wait = RETRY_MIN;
    loop {
        let why = follow(&client, &keys, &snapshot, &mut revision).await;
        *snapshot
            .current_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        if !snapshot.lost_said.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = %target.url(), "etcd watch lost ({why}): answering from the last snapshot until etcd is back");
        }
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            match load(client.clone(), keys.clone(), snapshot.clone(), cap).await {
                Ok(r) => {
                    revision = r;
                    break;
                }
                // A member that is down: the next try goes to another, soon.
                Err(e) if unreached(&e) => wait = RETRY_MIN,
                Err(_) => continue,
            }
        }
        wait = RETRY_MIN;
        *snapshot
            .current_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if snapshot.lost_said.swap(false, Ordering::Relaxed) {
            tracing::info!(store = %target.url(), "etcd is back: the snapshot is current again");
        }
    }
}

/// Takes in one event of the watch.
async fn take_in(
    client: &Client,
    keys: &Keys,
    snapshot: &Snapshot,
    ev: &etcd_client::Event,
) -> Result<(), etcd_client::Error> {
    let Some(item) = ev.kv() else { return Ok(()) };
    if item.key() == keys.profiles.as_slice() {
        match ev.event_type() {
            EventType::Delete => snapshot.set_profiles(None),
            EventType::Put => {
                match fetch_profiles(client, keys, item.value(), item.mod_revision()).await? {
                    Ok(b) => snapshot.set_profiles(Some((b, item.mod_revision()))),
                    Err(why) => snapshot.hostile(item.key(), &why),
                }
            }
        }
        return Ok(());
    }
    if item.key().starts_with(&keys.members) {
        match ev.event_type() {
            EventType::Put => snapshot.set_member(item.key(), Some(item.value())),
            EventType::Delete => snapshot.set_member(item.key(), None),
        }
        return Ok(());
    }
    if item.key().starts_with(&keys.timeline) {
        let value = (ev.event_type() == EventType::Put).then(|| item.value());
        snapshot.set_steps(&keys.timeline, item.key(), value);
        return Ok(());
    }
    if !item.key().starts_with(&keys.machines) {
        return Ok(());
    }
    let Some(mac) = mac_of_key(&keys.machines, item.key()) else {
        snapshot.hostile(item.key(), "is under the machines' prefix but names no MAC");
        return Ok(());
    };
    match ev.event_type() {
        EventType::Put => match parse_value(item.value(), &mac, item.mod_revision()) {
            Ok(v) => snapshot.put(mac, v),
            Err(why) => {
                snapshot.hostile(item.key(), &why);
                snapshot.remove(mac, item.mod_revision());
            }
        },
        EventType::Delete => snapshot.remove(mac, item.mod_revision()),
    }
    Ok(())
}

/// Follows one watch until it is lost; says why.
async fn follow(client: &Client, keys: &Keys, snapshot: &Snapshot, revision: &mut i64) -> String {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1)
        .with_progress_notify();
    let mut wc = client.watch_client();
    let stream = match wc.watch(keys.all.clone(), Some(opts)).await {
        Ok(s) => s,
        Err(e) => return explain(&e),
    };
    let (mut ask, mut answers) = stream.split();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut asked: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if asked.is_some_and(|t| t.elapsed() > PROGRESS_EVERY * 3) {
                    return "no progress answer".into();
                }
                if ask.request_progress().await.is_err() {
                    return "the watch stream closed".into();
                }
                asked.get_or_insert_with(Instant::now);
            }
            msg = answers.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return "the watch stream ended".into(),
                    Err(e) => return explain(&e),
                };
                if resp.canceled() {
                    return format!("the watch was cancelled: {}", resp.cancel_reason());
                }
                for ev in resp.events() {
                    if let Some(item) = ev.kv() {
                        *revision = (*revision).max(item.mod_revision());
                    }
                    if let Err(e) = take_in(client, keys, snapshot, ev).await {
                        return explain(&e);
                    }
                }
                if let Some(h) = resp.header() {
                    *revision = (*revision).max(h.revision());
                    snapshot.gone.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, at| *at > *revision);
                }
                asked = None;
                *snapshot.current_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
        }
    }
}

impl MachineStore for EtcdStore {
    fn describe(&self) -> String {
        self.target.url()
    }

    fn cached(&self, mac: Mac) -> Option<Versioned> {
        self.snapshot
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .cloned()
    }

    fn with(&self, f: &mut dyn FnMut(&HashMap<Mac, Versioned>)) {
        f(&self
            .snapshot
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner()))
    }

    fn len(&self) -> usize {
        self.snapshot
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A linearizable read: what a quorum holds now. A value that is not a record reads as a
    /// blank record at its revision, so the machine's next write replaces it.
    fn get(&self, mac: Mac) -> Result<Option<Versioned>, StoreError> {
        let key = self.keys.record(&mac);
        let resp = self.kv_get(key, None)?;
        let Some(item) = resp.kvs().first() else {
            return Ok(None);
        };
        Ok(Some(
            match parse_value(item.value(), &mac, item.mod_revision()) {
                Ok(v) => v,
                Err(why) => {
                    self.snapshot.hostile(item.key(), &why);
                    Versioned {
                        record: Record {
                            mac,
                            ..Default::default()
                        },
                        version: item.mod_revision() as u64,
                    }
                }
            },
        ))
    }

    /// One transaction: the record is written only if its key's `mod_revision` is still
    /// `expect` (for a new machine: the key does not exist).
    fn put(&self, record: &Record, expect: Option<Version>) -> Result<Version, StoreError> {
        let mac = record.mac;
        if expect.is_none() && self.cached(mac).is_none() && self.len() >= self.cap {
            self.make_room()?;
        }
        let key = self.keys.record(&mac);
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Io {
            what: format!("cannot write the record of {mac}"),
            source: std::io::Error::other(e),
        })?;
        let compare = match expect {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::mod_revision(key.clone(), CompareOp::Equal, v as i64),
        };
        let resp = self.kv_txn(
            Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value, None)]),
        )?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict);
        }
        let version = resp.header().map_or(0, |h| h.revision()) as u64;
        self.snapshot.put(
            mac,
            Versioned {
                record: record.clone(),
                version,
            },
        );
        Ok(version)
    }

    fn forget(&self, mac: Mac) -> Result<bool, StoreError> {
        let key = self.keys.record(&mac);
        let resp = self.kv_delete(key, None)?;
        let at = resp.header().map_or(0, |h| h.revision());
        self.snapshot
            .gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mac, at);
        self.snapshot.remove(mac, at);
        Ok(resp.deleted() > 0)
    }

    /// The watch keeps the snapshot current: this only says whether it changed since the last
    /// call.
    fn refresh(&self) -> bool {
        let now = self.snapshot.changes.load(Ordering::Relaxed);
        self.snapshot.seen.swap(now, Ordering::Relaxed) != now
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn join(&self, mut me: super::Member) {
        let _ = self.snapshot.me.set(me.id.clone());
        let key = [self.keys.members.as_slice(), me.id.as_bytes()].concat();
        {
            let mut held = self.me.lock().unwrap_or_else(|e| e.into_inner());
            me.artifacts = held.1.clone();
            self.member_value
                .send_replace(serde_json::to_vec(&me).unwrap_or_default());
            held.0 = Some(me);
        }
        self.handle.spawn(membership(
            self.client.clone(),
            self.target.clone(),
            key,
            self.member_value.subscribe(),
        ));
    }

    fn hold(&self, key: &str) {
        let mut held = self.me.lock().unwrap_or_else(|e| e.into_inner());
        if held.1.iter().any(|k| k == key) {
            return;
        }
        if held.1.len() >= super::MAX_HELD {
            held.1.remove(0);
        }
        held.1.push(key.to_string());
        let list = held.1.clone();
        if let Some(me) = held.0.as_mut() {
            me.artifacts = list;
            self.member_value
                .send_replace(serde_json::to_vec(&*me).unwrap_or_default());
        }
    }

    /// A key under `PREFIX/builds/` created only if absent, on a lease of [`MEMBER_TTL`]
    /// renewed while the turn is held: dropped, or this process gone, and it is gone.
    fn lock_build(&self, key: &str) -> Result<Option<Box<dyn Send>>, StoreError> {
        let at = format!("{}{key}", self.keys.builds);
        let client = self.client.clone();
        let me = super::Member::my_id().to_string();
        let taken = run(&self.handle, async move {
            let mut leases = client.lease_client();
            let lease = leases.grant(MEMBER_TTL, None).await?.id();
            let resp = client
                .kv_client()
                .txn(
                    Txn::new()
                        .when([Compare::create_revision(at.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            at,
                            me,
                            Some(etcd_client::PutOptions::new().with_lease(lease)),
                        )]),
                )
                .await?;
            if !resp.succeeded() {
                let _ = leases.revoke(lease).await;
                return Ok(None);
            }
            Ok(Some(lease))
        })
        .map_err(|e| unavailable(&self.target, e))?;
        let Some(lease) = taken else {
            return Ok(None);
        };
        let (done, mut released) = tokio::sync::oneshot::channel::<()>();
        let client = self.client.clone();
        self.handle.spawn(async move {
            let mut leases = client.lease_client();
            if let Ok((mut keeper, _answers)) = leases.keep_alive(lease).await {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(MEMBER_TTL as u64 / 3)) => {
                            if keeper.keep_alive().await.is_err() {
                                break;
                            }
                        }
                        _ = &mut released => break,
                    }
                }
            }
            let _ = leases.revoke(lease).await;
        });
        Ok(Some(Box::new(done)))
    }

    fn published(&self, key: &str) -> Result<Option<super::Published>, StoreError> {
        let at = format!("{}{key}", self.keys.artifacts);
        let resp = self.kv_get(at.clone().into_bytes(), None)?;
        let Some(item) = resp.kvs().first() else {
            return Ok(None);
        };
        match serde_json::from_slice::<super::Published>(item.value()) {
            Ok(p) if item.value().len() <= MAX_VALUE && p.is_valid(key) => Ok(Some(p)),
            _ => {
                self.snapshot
                    .hostile(at.as_bytes(), "is not what Daybreak publishes of a build");
                Ok(None)
            }
        }
    }

    fn publish_built(&self, p: &super::Published) -> Result<(), StoreError> {
        let at = format!("{}{}", self.keys.artifacts, p.key);
        let value = serde_json::to_vec(p).map_err(|e| StoreError::Io {
            what: format!("what was built of {}", p.key),
            source: std::io::Error::other(e),
        })?;
        self.kv_txn(
            Txn::new()
                .when([Compare::create_revision(at.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(at, value, None)]),
        )?;
        Ok(())
    }

    fn members(&self) -> Vec<super::Member> {
        let mut all: Vec<super::Member> = self
            .snapshot
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// In transactions of [`STEPS_PER_TXN`], each key on this replica's steps lease: a lease of
    /// [`super::STEPS_KEPT`], a new one every half of it, so a machine's steps stay between half
    /// of that and all of it after their last write, and go by themselves.
    fn share_steps(&self, steps: &[(Mac, Steps)]) -> Result<(), StoreError> {
        if steps.is_empty() {
            return Ok(());
        }
        let lease = self.steps_lease()?;
        for batch in steps.chunks(STEPS_PER_TXN) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .filter_map(|(mac, s)| {
                    let v = serde_json::to_vec(s).ok()?;
                    (v.len() <= MAX_VALUE && s.is_valid()).then(|| {
                        TxnOp::put(
                            self.keys.steps(mac, &s.member),
                            v,
                            Some(etcd_client::PutOptions::new().with_lease(lease)),
                        )
                    })
                })
                .collect();
            match self.kv_txn(Txn::new().and_then(ops)) {
                Ok(_) => {}
                // The lease expired (etcd was away longer than it): a new one next time.
                Err(e) => {
                    *self.steps_lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn with_steps(&self, f: &mut dyn FnMut(&super::SharedSteps)) {
        f(&self
            .snapshot
            .steps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0)
    }

    fn shared_profiles(&self) -> Option<(Arc<[u8]>, Version)> {
        self.snapshot
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(b, at)| (b.clone(), *at as u64))
    }

    /// A new generation's chunks first, then `PREFIX/profiles/current` pointing at it, then the
    /// old generation's chunks go: a replica reading at any revision sees one whole generation.
    fn put_profiles(&self, bytes: &[u8]) -> Result<bool, StoreError> {
        if bytes.len() > crate::fleet::profiles::MAX_FILE {
            return Err(StoreError::Io {
                what: "the machine profiles".into(),
                source: std::io::Error::other("larger than the machines file's cap"),
            });
        }
        let generation = artifacts::random_hex(8).map_err(|e| StoreError::Io {
            what: "a profiles generation".into(),
            source: e,
        })?;
        let keys = self.keys.clone();
        let old = self
            .kv_get(keys.profiles.clone(), None)?
            .kvs()
            .first()
            .and_then(|kv| profiles_head(kv.value()).ok())
            .map(|h| h.generation);
        let chunks: Vec<Vec<u8>> = bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let key = format!("{}{generation}/{i:04}", keys.chunks);
            self.kv_put(key.into_bytes(), chunk.clone())?;
        }
        let head = ProfilesHead {
            generation,
            chunks: chunks.len(),
            bytes: bytes.len(),
            sha256: sha256_hex(bytes),
        };
        let value = serde_json::to_vec(&head).map_err(|e| StoreError::Io {
            what: "the profiles head".into(),
            source: std::io::Error::other(e),
        })?;
        self.kv_put(keys.profiles.clone(), value)?;
        if let Some(g) = old {
            let dir = format!("{}{g}/", keys.chunks).into_bytes();
            let o = etcd_client::DeleteOptions::new().with_range(range_end(&dir));
            self.kv_delete(dir.clone(), Some(o))?;
        }
        Ok(true)
    }

    /// The URL-tag key shared by every replica: the one under `PREFIX/secret`, or `fresh` put
    /// there by a transaction that only creates (the first replica's wins).
    fn shared_secret(&self, fresh: String) -> Result<Option<String>, StoreError> {
        let key = format!("{}/secret", self.target.prefix);
        let resp = self.kv_txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), fresh.clone(), None)])
                .or_else([TxnOp::get(key, None)]),
        )?;
        if resp.succeeded() {
            return Ok(Some(fresh));
        }
        let value = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        String::from_utf8(value)
            .map(Some)
            .map_err(|_| StoreError::Unavailable {
                store: self.target.url(),
                why: format!("{}/secret is not text", self.target.prefix),
            })
    }

    /// How long ago the snapshot was last known current; inner `None` while the watch is lost.
    fn snapshot_age(&self) -> Option<Option<Duration>> {
        Some(
            self.snapshot
                .current_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| t.elapsed()),
        )
    }
}

#[cfg(test)]
mod tests;
