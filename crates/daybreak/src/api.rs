//! pixiecore's API mode (`daybreak api URL`): for each machine, `GET URL/v1/boot/MAC` says
//! whether and what to boot, so an existing pixiecore API server drives Daybreak as it drove
//! pixiecore.
//!
//! - A 200 answer is JSON: `kernel` (a URL), `initrd` (a list of URLs), `cmdline` (a string with
//!   `{{ URL "…" }}` (or `{{ ID "…" }}`) templates, or the deprecated object form), `message`
//!   (not shown), or `ipxe-script` (a raw script, and then nothing else counts). Anything else,
//!   or a malformed answer, means the machine is not answered at all.
//! - URLs may be absolute (`http`, `https`, `file`), a path from the API server's root (`/foo`),
//!   or relative to the API URL. Machines never see them: the script points at this server,
//!   which proxies http(s) and serves `file://` from its own disk, and only what the API named
//!   for that machine (no open proxy). Those URLs carry a token keyed by a secret of this run
//!   (as pixiecore's are sealed with an ephemeral key): a host that knows a MAC cannot fetch
//!   that machine's files (its cloud-config, say) without the script it was sent.
//! - The DHCP path never waits for the API: it answers from the last answer for that MAC and asks
//!   again in the background when the answer is older than [`FRESH`]. A machine the API has not
//!   answered for yet gets its offer on its next DISCOVER (firmware sends several). The boot
//!   script waits for a fresh answer up to the request timeout, else uses the last one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use http::{Body, Reply};
use pxe::{Mac, Machine};

use crate::decision::{Ask, BootSpec, Booter, Decision, Personal, PersonalKind};
use crate::tokens::Tokens;

/// How long an answer is used before the API is asked again (in the background).
pub const FRESH: Duration = Duration::from_secs(10);
/// Machines whose answers are remembered; past this the oldest are forgotten.
const MAX_MACHINES: usize = 4096;
/// Largest API answer read.
const MAX_ANSWER: u64 = 1 << 20;
/// Most URLs one answer may name (kernel, initrds, command line).
const MAX_URLS: usize = 64;
/// Questions to the API at once from the DHCP path: a flood of made-up MACs must not become a
/// flood of threads, or of requests to the API server.
const MAX_ASKING: usize = 16;
/// Kernel URLs whose signature is remembered.
const MAX_KERNELS: usize = 256;

/// A piece of the kernel command line: text, or the n-th URL of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Url(usize),
}

/// What the API said to boot one machine with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Absolute URLs: the kernel first, then the initrds, then those of the command line.
    urls: Vec<String>,
    initrds: usize,
    cmdline: Vec<Part>,
    script: Option<String>,
}

impl Spec {
    /// The file name a machine fetches URL `i` by (pixiecore's names for kernel and initrds).
    fn name(&self, i: usize) -> String {
        match i {
            0 => "kernel".into(),
            i if i <= self.initrds => format!("initrd-{}", i - 1),
            i => format!("file-{}", i - self.initrds - 1),
        }
    }
}

/// Every question that may be out at once is: the machine asks again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Busy;

/// How long a machine that found the API's questions all out waits before it asks again.
const BUSY_RETRY: Duration = Duration::from_secs(3);

/// Why an answer is not used (the machine is then not booted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no kernel (and no ipxe-script)")]
    NoKernel,
    #[error("{0} is not a string")]
    NotString(&'static str),
    #[error("URL {0:?} is not http, https or file")]
    Scheme(String),
    #[error("more than {MAX_URLS} URLs")]
    TooMany,
    #[error("cmdline: {0}")]
    Cmdline(String),
}

/// An API server and what it said about each machine.
pub struct Api {
    /// The URL prefix, ending in `/`.
    base: String,
    timeout: Duration,
    agent: ureq::Agent,
    /// For proxied files: deadlines to connect and to start answering, none for the body
    /// (images are large; the HTTP side gives up on an upstream silent for a minute).
    files: ureq::Agent,
    answers: Mutex<HashMap<Mac, Cached>>,
    asking: std::sync::atomic::AtomicUsize,
    /// Key the file URLs' tokens: new every run, or the one replicas share (`--store`).
    tokens: Tokens,
    /// The store replicas share, when there is one: this replica is one of its members.
    store: Option<Arc<dyn crate::store::MachineStore>>,
    /// Itself, for the questions asked in the background.
    me: std::sync::Weak<Api>,
    /// Whether each kernel URL the API named carries a Secure Boot signature (its head read
    /// once); at most [`MAX_KERNELS`] remembered.
    kernels: Mutex<HashMap<String, bool>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

struct Cached {
    /// When the API last answered; `None` before it has.
    at: Option<Instant>,
    /// `None`: the API said not to boot it (non-200, or malformed).
    spec: Option<Arc<Spec>>,
    asking: bool,
    /// Its kernel carries a Secure Boot signature.
    signed: bool,
}

impl Api {
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Arc<Api>> {
        Api::with_store(url, timeout, None)
    }

    /// As [`Api::new`], its file URLs keyed by `store`'s shared key when it has one.
    pub fn with_store(
        url: &str,
        timeout: Duration,
        store: Option<Arc<dyn crate::store::MachineStore>>,
    ) -> anyhow::Result<Arc<Api>> {
        if !artifacts::is_url(url) {
            bail!("{url}: the API URL must be http:// or https://");
        }
        let base = if url.ends_with('/') {
            url.to_string()
        } else {
            format!("{url}/")
        };
        // Neither follows a redirect: the API's answer and the files it names are fetched
        // from where it said, nowhere else (a redirect to file:// or to another host is a
        // failure). Connections are pooled per host.
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(MAX_ASKING)
            .build()
            .new_agent();
        let files = ureq::Agent::config_builder()
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        let tokens = match &store {
            Some(s) if s.is_shared() => Tokens::for_store(&**s, &artifacts::default_state_dir())?,
            _ => Tokens::ephemeral()?,
        };
        Ok(Arc::new_cyclic(|me| Api {
            store,
            base,
            timeout,
            agent,
            files,
            answers: Mutex::default(),
            asking: Default::default(),
            tokens,
            me: me.clone(),
            kernels: Mutex::default(),
        }))
    }

    /// Says this replica is one of those sharing the store, when there is one.
    pub fn join(&self, addresses: Vec<String>, port: u16) {
        if let Some(s) = &self.store {
            s.join(crate::store::Member::me(addresses, port));
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<Mac, Cached>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the API about `mac` now (blocking, bounded by the request timeout).
    fn ask(&self, mac: Mac) -> Option<Arc<Spec>> {
        let url = format!("{}v1/boot/{mac}", self.base);
        let spec = match self.agent.get(&url).call() {
            Ok(mut r) if r.status() == 200 => {
                match r
                    .body_mut()
                    .with_config()
                    .limit(MAX_ANSWER)
                    .read_to_vec()
                    .map_err(|e| AnswerError::Json(e.to_string()))
                    .and_then(|b| parse_answer(&self.base, &b))
                {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::warn!(mac = %mac, error = %e, "api: a malformed answer; the machine is not booted");
                        None
                    }
                }
            }
            Ok(r) => {
                tracing::info!(
                    mac = %mac,
                    status = r.status().as_u16(),
                    "api: not booting this machine"
                );
                None
            }
            Err(e) => {
                tracing::warn!(mac = %mac, error = %e, "api: the API server did not answer");
                // Keep the last answer, if any: a slow or failing API must not stop machines
                // it has decided on. Asked again on the next request.
                let mut a = self.answers();
                let c = a.get_mut(&mac)?;
                c.asking = false;
                return c.spec.clone();
            }
        };
        let signed = spec
            .as_ref()
            .filter(|s| s.script.is_none())
            .is_some_and(|s| self.signed_kernel(mac, &s.urls[0]));
        let mut a = self.answers();
        make_room(&mut a, mac);
        a.insert(
            mac,
            Cached {
                at: Some(Instant::now()),
                spec: spec.clone(),
                asking: false,
                signed,
            },
        );
        spec
    }

    /// Whether the kernel at `url` carries a Secure Boot signature: its head and certificate
    /// table header read (64 KiB and a few bytes, by range requests or from the file), once per
    /// URL. Anything unreadable is unsigned (iPXE, as before).
    fn signed_kernel(&self, mac: Mac, url: &str) -> bool {
        if let Some(s) = self
            .kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
        {
            return *s;
        }
        let facts = match url.strip_prefix("file://") {
            Some(path) => open_named(std::path::Path::new(path)).ok().and_then(|f| {
                use std::os::unix::fs::FileExt;
                let len = f.metadata().ok()?.len();
                Some(crate::kernel::KernelFacts::read(len, &|o, b| {
                    f.read_exact_at(b, o)
                }))
            }),
            None => self.remote_facts(url),
        };
        let signed = facts.is_some_and(|f| f.signed && f.arch != Some(pxe::CpuArch::Arm64));
        if signed {
            tracing::info!(mac = %mac, kernel = %redact_url(url), "api: the kernel carries a Secure Boot signature: UEFI x64 PXE machines get shim, then GRUB, then the kernel over HTTP (Secure Boot on or off)");
        }
        let mut k = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if k.len() >= MAX_KERNELS {
            k.clear();
        }
        k.insert(url.to_string(), signed);
        signed
    }

    /// The facts of a kernel behind an http(s) URL, by range requests (no redirects, each
    /// read capped); `None` when the server cannot say its length or answers otherwise.
    fn remote_facts(&self, url: &str) -> Option<crate::kernel::KernelFacts> {
        let range = |offset: u64, buf: &mut [u8]| -> std::io::Result<u64> {
            let end = offset + buf.len() as u64 - 1;
            let mut r = self
                .files
                .get(url)
                .header("Range", &format!("bytes={offset}-{end}"))
                .call()
                .map_err(std::io::Error::other)?;
            if r.status() != 206 {
                return Err(std::io::Error::other("no range answer"));
            }
            // `bytes START-END/TOTAL`; some servers send past END (busybox httpd sends the
            // rest of the file): only what was asked is read, the connection then dropped.
            let (start, total) = r
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
                    let start = range.split('-').next()?.parse::<u64>().ok()?;
                    Some((start, total.parse::<u64>().ok()?))
                })
                .ok_or_else(|| std::io::Error::other("no length"))?;
            if start != offset {
                return Err(std::io::Error::other("another range"));
            }
            use std::io::Read;
            r.body_mut()
                .as_reader()
                .take(buf.len() as u64)
                .read_exact(buf)?;
            Ok(total)
        };
        let len = range(0, &mut [0u8; 1]).ok()?;
        Some(crate::kernel::KernelFacts::read(len, &|o, b| {
            range(o, b).map(|_| ())
        }))
    }

    /// Whether to answer `mac`'s DHCP request: from the last answer, without waiting; asks
    /// again in the background when it is missing or old (at most `MAX_ASKING` at once:
    /// past that the machine's next request asks).
    pub fn allow(&self, mac: Mac) -> bool {
        self.answer(mac) != pxe::driver::Allowed::No
    }

    /// [`Api::allow`], and whether its kernel is signed (the Secure Boot chain for it).
    pub fn answer(&self, mac: Mac) -> pxe::driver::Allowed {
        use pxe::driver::Allowed;
        use std::sync::atomic::Ordering;
        let (known, ask) = {
            let mut a = self.answers();
            if !a.contains_key(&mac) {
                make_room(&mut a, mac);
                a.insert(
                    mac,
                    Cached {
                        at: None,
                        spec: None,
                        asking: false,
                        signed: false,
                    },
                );
            }
            let c = a.get_mut(&mac).expect("just inserted");
            let stale = !c.asking && c.at.is_none_or(|t| t.elapsed() > FRESH);
            let ask = stale && self.take_question();
            c.asking |= ask;
            let known = match (&c.spec, c.signed) {
                (None, _) => Allowed::No,
                (Some(_), false) => Allowed::Yes,
                (Some(_), true) => Allowed::Chain,
            };
            (known, ask)
        };
        if let (true, Some(api)) = (ask, self.me.upgrade()) {
            std::thread::spawn(move || {
                api.ask(mac);
                api.asking.fetch_sub(1, Ordering::AcqRel);
            });
        }
        known
    }

    /// Takes one of the [`MAX_ASKING`] questions that may be out at once (the DHCP path's
    /// and the scripts' together); false when all are.
    fn take_question(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.asking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_ASKING).then_some(n + 1)
            })
            .is_ok()
    }

    /// What to boot `mac` with: a fresh answer, asked for now if need be; `Err` when the
    /// questions at once are all out and there is no answer yet.
    fn spec(&self, mac: Mac) -> Result<Option<Arc<Spec>>, Busy> {
        let cached = self
            .answers()
            .get(&mac)
            .filter(|c| c.at.is_some_and(|t| t.elapsed() <= FRESH))
            .map(|c| c.spec.clone());
        if let Some(s) = cached {
            return Ok(s);
        }
        if !self.take_question() {
            // A flood of script requests is not a flood of questions (or of threads): the
            // last answer, else the machine asks again shortly.
            let last = self
                .answers()
                .get(&mac)
                .filter(|c| c.at.is_some())
                .map(|c| c.spec.clone());
            return last.ok_or(Busy);
        }
        let spec = tokio::task::block_in_place(|| self.ask(mac));
        self.asking
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        Ok(spec)
    }

    /// The last answer for `mac`, without asking.
    fn last(&self, mac: Mac) -> Option<Arc<Spec>> {
        self.answers().get(&mac).and_then(|c| c.spec.clone())
    }

    pub fn describe(&self) -> String {
        format!(
            "{}v1/boot/MAC (timeout {} ms)",
            redact_url(&self.base),
            self.timeout.as_millis()
        )
    }
}

/// Makes room in a full table for `mac`, in bulk so the DHCP path stays O(1) amortised: the
/// machines the API has not said yes to go first (a flood of made-up MACs fills the table with
/// those), then yes answers older than a minute, then all but those being asked about.
fn make_room(a: &mut HashMap<Mac, Cached>, mac: Mac) {
    if a.len() < MAX_MACHINES || a.contains_key(&mac) {
        return;
    }
    a.retain(|_, c| c.asking || c.spec.is_some());
    if a.len() >= MAX_MACHINES / 2 {
        a.retain(|_, c| c.asking || c.at.is_some_and(|t| t.elapsed() < FRESH * 6));
    }
    if a.len() >= MAX_MACHINES / 2 {
        a.retain(|_, c| c.asking);
    }
}

/// An absolute URL for `u` as the API wrote it: absolute as is, `/path` from the API server's
/// root, anything else relative to the API URL.
fn resolve(base: &str, u: &str) -> Result<String, AnswerError> {
    if u.starts_with("http://") || u.starts_with("https://") || u.starts_with("file:///") {
        return Ok(u.to_string());
    }
    if u.contains("://") || u.starts_with("file:") {
        return Err(AnswerError::Scheme(http::loggable(u).into_owned()));
    }
    if let Some(path) = u.strip_prefix('/') {
        let after = base.split_once("://").map_or("", |x| x.1);
        let host_end = after.find('/').unwrap_or(after.len());
        let origin = &base[..base.len() - after.len() + host_end];
        return Ok(format!("{origin}/{path}"));
    }
    Ok(format!("{base}{u}"))
}

/// Go's `%q` of a string, as pixiecore writes `key="value"` in the object form.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads one API answer (a 200 body).
pub fn parse_answer(base: &str, body: &[u8]) -> Result<Spec, AnswerError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AnswerError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| AnswerError::Json("not an object".into()))?;
    if let Some(script) = obj.get("ipxe-script") {
        let script = script
            .as_str()
            .ok_or(AnswerError::NotString("ipxe-script"))?;
        return Ok(Spec {
            urls: Vec::new(),
            initrds: 0,
            cmdline: Vec::new(),
            script: Some(script.to_string()),
        });
    }
    let kernel = obj
        .get("kernel")
        .ok_or(AnswerError::NoKernel)?
        .as_str()
        .ok_or(AnswerError::NotString("kernel"))?;
    let mut urls = vec![resolve(base, kernel)?];
    let initrds = match obj.get("initrd") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|i| i.as_str().ok_or(AnswerError::NotString("initrd")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(AnswerError::NotString("initrd")),
    };
    for i in &initrds {
        urls.push(resolve(base, i)?);
    }
    let n_initrds = initrds.len();
    let mut cmdline = Vec::new();
    let url = |u: &str, urls: &mut Vec<String>| -> Result<Part, AnswerError> {
        urls.push(resolve(base, u)?);
        Ok(Part::Url(urls.len() - 1))
    };
    match obj.get("cmdline") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => {
            use crate::plan::{templates, Piece, TemplateError};
            let pieces = templates(s, &["URL", "ID"]).map_err(|e| match e {
                TemplateError::Unclosed(_) => AnswerError::Cmdline("an unclosed {{".into()),
                TemplateError::Unsupported(inner) => AnswerError::Cmdline(format!(
                    "{{{{ {} }}}} is not {{{{ URL \"…\" }}}}",
                    http::loggable(inner)
                )),
            })?;
            for p in pieces {
                cmdline.push(match p {
                    Piece::Text(t) => Part::Text(t.to_string()),
                    Piece::Arg(arg) => url(arg, &mut urls)?,
                });
            }
        }
        Some(serde_json::Value::Object(m)) => {
            // Keys in order, as pixiecore sorts them.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    cmdline.push(Part::Text(" ".into()));
                }
                match &m[k] {
                    serde_json::Value::Bool(true) => cmdline.push(Part::Text(k.clone())),
                    serde_json::Value::String(s) => {
                        cmdline.push(Part::Text(format!("{k}={}", go_quote(s))))
                    }
                    serde_json::Value::Object(o) => {
                        let u = o.get("url").and_then(|u| u.as_str()).ok_or_else(|| {
                            AnswerError::Cmdline(format!("{k}: an object without a url"))
                        })?;
                        cmdline.push(Part::Text(format!("{k}=")));
                        cmdline.push(url(u, &mut urls)?);
                    }
                    _ => {
                        return Err(AnswerError::Cmdline(format!(
                            "{k}: neither true, a string nor {{\"url\": …}}"
                        )))
                    }
                }
            }
        }
        Some(_) => return Err(AnswerError::NotString("cmdline")),
    }
    if urls.len() > MAX_URLS {
        return Err(AnswerError::TooMany);
    }
    cmdline.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
    for p in &cmdline {
        if let Part::Text(t) = p {
            crate::render::check_ipxe(t).map_err(|e| AnswerError::Cmdline(e.to_string()))?;
        }
    }
    Ok(Spec {
        urls,
        initrds: n_initrds,
        cmdline,
        script: None,
    })
}

impl Api {
    /// The boot of `spec`, its files at this server's URLs for `mac` under `base`: only a
    /// machine sent the script can fetch them, and only what the API named for it.
    fn boot(&self, spec: &Spec, base: &str, mac: Mac) -> Decision {
        if let Some(s) = &spec.script {
            return Decision::Script(s.clone());
        }
        let url = |i: usize| {
            self.tokens
                .url(base, PersonalKind::File(i), mac, &spec.urls[i])
        };
        let mut cmdline = String::new();
        for p in &spec.cmdline {
            match p {
                Part::Text(t) => cmdline.push_str(t),
                Part::Url(i) => cmdline.push_str(&url(*i)),
            }
        }
        Decision::Boot(BootSpec {
            kernel: url(0),
            initrds: (1..=spec.initrds).map(|i| (spec.name(i), url(i))).collect(),
            cmdline,
            ready: None,
        })
    }
}

/// pixiecore's API mode decides per machine: what the API last said, asked again when old.
impl Booter for Api {
    fn allow(&self, m: &Machine) -> bool {
        Api::allow(self, m.mac)
    }

    fn answer(&self, m: &Machine) -> pxe::driver::Allowed {
        Api::answer(self, m.mac)
    }

    fn decide(&self, ask: &Ask<'_>) -> Decision {
        // No MAC, or one this request may not speak for: nothing to ask the API about (its
        // answer is that machine's own).
        let Some(m) = ask.machine.filter(|_| ask.vouched) else {
            return Decision::Ignore;
        };
        match self.spec(m.mac) {
            Ok(Some(spec)) => {
                tracing::info!(client = %ask.peer.ip(), mac = %m.mac, "boot script from the API's answer");
                self.boot(&spec, ask.base, m.mac)
            }
            Ok(None) => Decision::Ignore,
            Err(Busy) => Decision::Wait {
                why: format!("{MAX_ASKING} questions to the API are out already"),
                retry: BUSY_RETRY,
            },
        }
    }

    /// Nothing by name: a machine fetches only what the API named for it.
    fn file(&self, _: &str) -> Option<Reply> {
        None
    }

    fn personal(&self, p: &Personal<'_>, _: std::net::SocketAddr, _: &str) -> Option<Reply> {
        let PersonalKind::File(i) = p.kind else {
            return None;
        };
        let spec = match self.last(p.mac) {
            Some(spec) => spec,
            // A URL another replica made (they share the key): the API is asked here, once a
            // second at most, on a thread of its own.
            None if self.store.as_ref().is_some_and(|s| s.is_shared()) => {
                let recently = self
                    .answers()
                    .get(&p.mac)
                    .and_then(|c| c.at)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                if recently {
                    return None;
                }
                let me = self.me.upgrade()?;
                let (mac, tag, query) = (p.mac, p.tag.to_string(), p.query.to_string());
                return Some(Reply::Later(Arc::new(move || {
                    let Some(spec) = me.ask(mac) else {
                        return Reply::NotFound;
                    };
                    let p = Personal {
                        kind: PersonalKind::File(i),
                        mac,
                        tag: &tag,
                        query: &query,
                    };
                    me.file_of(&spec, &p, i).unwrap_or(Reply::NotFound)
                })));
            }
            None => return None,
        };
        self.file_of(&spec, p, i)
    }

    fn describe(&self) -> String {
        format!(
            "booting each machine as the API says: {}",
            Api::describe(self)
        )
    }
}

impl Api {
    /// File `i` of `spec` for the machine `p` names, if its URL's tag is that file's.
    fn file_of(&self, spec: &Spec, p: &Personal<'_>, i: usize) -> Option<Reply> {
        let url = spec.urls.get(i)?;
        if !self.tokens.check(p, url) {
            return None;
        }
        let name = spec.name(i);
        Some(match url.strip_prefix("file://") {
            Some(path) => match open_named(std::path::Path::new(path)) {
                Ok(f) => Reply::Resource {
                    name,
                    content_type: "application/octet-stream",
                    body: Body::File(Arc::new(f)),
                },
                Err(e) => {
                    tracing::warn!(mac = %p.mac, file = %http::loggable(path), error = %e, "api: a file the API named is not served");
                    Reply::NotFound
                }
            },
            None => Reply::Proxy {
                name,
                upstream: Arc::new(Fetch {
                    url: url.clone(),
                    agent: self.files.clone(),
                }),
            },
        })
    }
}

/// A URL for a log line: its credentials (`user:password@`) and its query (presigned URLs
/// carry their signature there) left out.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => authority.to_string(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?…"),
        None => path.to_string(),
    };
    match scheme {
        "" => format!("{host}{path}"),
        s => format!("{s}://{host}{path}"),
    }
}

/// A `file://` path the API named, opened safely: absolute, through no symlink anywhere on
/// the way (`openat2` with `RESOLVE_NO_SYMLINKS`), a regular file, and readable by everyone on
/// this host, so an answer naming `/etc/shadow`, a symlink planted in a served directory or a
/// device gets nothing (the API server, or anyone between it and us on plain HTTP, is not
/// trusted with this host's secrets).
pub fn open_named(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::MetadataExt as _;
    let refuse = |why: &str| Err(std::io::Error::other(why.to_string()));
    if !path.is_absolute() {
        return refuse("not an absolute path");
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the path"))?;
    // SAFETY: open_how is plain integers; all zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid NUL-terminated path and a valid open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ELOOP) => refuse("a symlink on the way"),
            _ => Err(e),
        };
    }
    // SAFETY: a descriptor openat2 just returned, owned by nothing else.
    let f = unsafe { std::fs::File::from_raw_fd(fd as i32) };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return refuse("not a regular file");
    }
    if meta.mode() & 0o004 == 0 {
        return refuse("not readable by everyone on this host (chmod o+r it to serve it)");
    }
    Ok(f)
}

/// A file the API named, fetched for the machine as it downloads it.
struct Fetch {
    url: String,
    agent: ureq::Agent,
}

impl http::Upstream for Fetch {
    fn open(&self) -> Result<(u64, Box<dyn std::io::Read + Send>), String> {
        let resp = self
            .agent
            .get(&self.url)
            .call()
            .map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            // A redirect is not followed: the file is where the API said, or nowhere.
            return Err(format!("the answer is HTTP {}", resp.status().as_u16()));
        }
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("the answer has no Content-Length")?;
        Ok((len, Box::new(resp.into_body().into_reader())))
    }

    fn describe(&self) -> String {
        http::loggable(&redact_url(&self.url)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Mac {
        s.parse().unwrap()
    }

    /// The iPXE script `api` gives for `spec`.
    fn ipxe_of(api: &Api, spec: &Spec, base: &str, mac: Mac) -> String {
        crate::render::ipxe(&api.boot(spec, base, mac), "", None).unwrap()
    }

    const BASE: &str = "http://api.example:8000/pixie/";

    #[test]
    fn urls_resolve_as_pixiecore_resolves_them() {
        assert_eq!(
            resolve(BASE, "/kernel").unwrap(),
            "http://api.example:8000/kernel"
        );
        assert_eq!(
            resolve(BASE, "k/v").unwrap(),
            "http://api.example:8000/pixie/k/v"
        );
        assert_eq!(resolve(BASE, "https://x/y").unwrap(), "https://x/y");
        assert_eq!(resolve(BASE, "file:///srv/k").unwrap(), "file:///srv/k");
        assert!(matches!(
            resolve(BASE, "ftp://x/y"),
            Err(AnswerError::Scheme(_))
        ));
        assert!(matches!(
            resolve(BASE, "file:relative"),
            Err(AnswerError::Scheme(_))
        ));
    }

    #[test]
    fn answers_in_every_form() {
        let s = parse_answer(
            BASE,
            br#"{"kernel":"/k","initrd":["/i0","file:///srv/i1"],
                 "cmdline":"a root=live:{{ URL \"/r.squashfs\" }} c={{ID \"x\"}} z","message":"hi"}"#,
        )
        .unwrap();
        assert_eq!(
            s.urls,
            [
                "http://api.example:8000/k",
                "http://api.example:8000/i0",
                "file:///srv/i1",
                "http://api.example:8000/r.squashfs",
                "http://api.example:8000/pixie/x",
            ]
        );
        assert_eq!(
            (s.initrds, s.name(2), s.name(3)),
            (2, "initrd-1".into(), "file-0".into())
        );
        let api = Api::new(BASE, Duration::from_secs(1)).unwrap();
        let script = ipxe_of(&api, &s, "http://10.0.0.1:8090", m("52:54:00:00:00:01"));
        let f = |n: usize| {
            let t = api
                .tokens
                .tag(PersonalKind::File(n), m("52:54:00:00:00:01"), &s.urls[n]);
            assert_eq!(t.len(), 32);
            format!("http://10.0.0.1:8090/_/api?mac=52:54:00:00:00:01&n={n}&t={t}")
        };
        assert_eq!(
            script,
            format!(
                "#!ipxe\nkernel --name kernel {}\ninitrd --name initrd-0 {}\ninitrd --name initrd-1 {}\nboot kernel initrd=initrd-0 initrd=initrd-1 a root=live:{} c={} z\n",
                f(0), f(1), f(2), f(3), f(4)
            )
        );
        // The deprecated object form: keys sorted, true alone, strings quoted, URLs proxied.
        let s = parse_answer(
            BASE,
            br#"{"kernel":"/k","cmdline":{"z":true,"a":"x \"y\"","cfg":{"url":"/c"}}}"#,
        )
        .unwrap();
        let script = ipxe_of(&api, &s, "http://h", m("02:00:00:00:00:01"));
        let t = api
            .tokens
            .tag(PersonalKind::File(1), m("02:00:00:00:00:01"), &s.urls[1]);
        assert!(
            script.ends_with(&format!(
                "boot kernel a=\"x \\\"y\\\"\" cfg=http://h/_/api?mac=02:00:00:00:00:01&n=1&t={t} z\n"
            )),
            "{script}"
        );
        // A raw script, as it is.
        let s = parse_answer(BASE, br##"{"ipxe-script":"#!ipxe\nshell\n","kernel":5}"##).unwrap();
        assert_eq!(
            ipxe_of(&api, &s, "http://h", m("02:00:00:00:00:01")),
            "#!ipxe\nshell\n"
        );
    }

    #[test]
    fn malformed_answers_are_refused() {
        for (body, want) in [
            (&b"{"[..], "not JSON"),
            (b"[1]", "not JSON"),
            (b"{}", "no kernel"),
            (br#"{"kernel":1}"#, "kernel is not a string"),
            (
                br#"{"kernel":"/k","initrd":"/i"}"#,
                "initrd is not a string",
            ),
            (br#"{"kernel":"gopher://k"}"#, "is not http"),
            (
                br#"{"kernel":"/k","cmdline":"a {{ Foo }}"}"#,
                "is not {{ URL",
            ),
            (br#"{"kernel":"/k","cmdline":"a {{ URL \"x\""}"#, "unclosed"),
            (br#"{"kernel":"/k","cmdline":{"a":false}}"#, "neither true"),
        ] {
            let e = parse_answer(BASE, body).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
        }
        let many = format!(
            r#"{{"kernel":"/k","initrd":[{}]}}"#,
            vec!["\"/i\""; MAX_URLS].join(",")
        );
        assert_eq!(
            parse_answer(BASE, many.as_bytes()),
            Err(AnswerError::TooMany)
        );
    }

    /// An API server on loopback: `/v1/boot/MAC` answers from `answers` (status, body, delay),
    /// `/files/NAME` serves `files`. Returns its base URL.
    fn api_server(
        answers: Vec<(&'static str, u16, &'static str, u64)>,
        files: Vec<(&'static str, Vec<u8>)>,
    ) -> String {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", l.local_addr().unwrap());
        let (answers, files) = (Arc::new(answers), Arc::new(files));
        std::thread::spawn(move || {
            for s in l.incoming().take(200).flatten() {
                let (answers, files) = (answers.clone(), files.clone());
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = r.read_line(&mut line);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                    }
                    let (status, body): (u16, Vec<u8>) =
                        if let Some(mac) = path.strip_prefix("/v1/boot/") {
                            match answers.iter().find(|a| a.0 == mac) {
                                Some(&(_, status, body, delay)) => {
                                    std::thread::sleep(Duration::from_millis(delay));
                                    (status, body.as_bytes().to_vec())
                                }
                                None => (404, Vec::new()),
                            }
                        } else {
                            match files.iter().find(|f| path == format!("/files/{}", f.0)) {
                                Some((_, b)) => (200, b.clone()),
                                None => (404, Vec::new()),
                            }
                        };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(&body);
                });
            }
        });
        base
    }

    const YES: &str = "52:54:00:00:00:01";
    const NO: &str = "52:54:00:00:00:02";
    const BAD: &str = "52:54:00:00:00:03";
    const SLOW: &str = "52:54:00:00:00:04";

    fn answers() -> Vec<(&'static str, u16, &'static str, u64)> {
        vec![
            (
                YES,
                200,
                r#"{"kernel":"/files/k","initrd":["files/i"],"cmdline":"x={{ URL \"/files/c\" }} y"}"#,
                0,
            ),
            (NO, 404, "", 0),
            (BAD, 200, "{garbage", 0),
            (SLOW, 200, r#"{"kernel":"/files/k"}"#, 3000),
        ]
    }

    #[test]
    fn dhcp_answers_only_what_the_api_said_yes_to_and_never_waits() {
        let base = api_server(answers(), vec![]);
        let api = Api::new(&base, Duration::from_millis(500)).unwrap();
        // Nothing known yet: no answer now, the API is asked in the background.
        for mac in [YES, NO, BAD, SLOW] {
            let t = Instant::now();
            assert!(!api.allow(m(mac)));
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "the DHCP path waited"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !api.allow(m(YES)) {
            assert!(Instant::now() < deadline, "the API's yes never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !api.allow(m(NO)) && !api.allow(m(BAD)),
            "a no and a malformed answer"
        );
        // The slow API timed out: still no answer for that machine, none waited for, and the
        // next request asks again.
        assert!(!api.answers()[&m(SLOW)].asking, "the failed ask is over");
        assert!(!api.allow(m(SLOW)));
        assert!(
            api.answers()[&m(SLOW)].asking,
            "and the next request asks again"
        );
        assert!(api.last(m(YES)).is_some() && api.last(m(SLOW)).is_none());
    }

    #[test]
    fn a_signed_kernel_the_api_names_gets_the_secure_boot_chain() {
        use pxe::driver::Allowed;
        let dir = std::env::temp_dir().join(format!("daybreak-api-sb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (signed, plain) = (dir.join("signed"), dir.join("plain"));
        std::fs::write(&signed, crate::kernel::tests::pe(Some((0x0200, 0x0002)))).unwrap();
        std::fs::write(&plain, crate::kernel::tests::pe(None)).unwrap();
        let body = |p: &std::path::Path| -> &'static str {
            Box::leak(format!(r#"{{"kernel":"file://{}"}}"#, p.display()).into_boxed_str())
        };
        let base = api_server(
            vec![
                (YES, 200, body(&plain), 0),
                (SLOW, 200, body(&signed), 0),
                (BAD, 200, r##"{"ipxe-script":"#!ipxe\nexit"}"##, 0),
            ],
            vec![],
        );
        let api = Api::new(&base, Duration::from_millis(500)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while [YES, SLOW, BAD]
            .iter()
            .any(|mac| api.answer(m(mac)) == Allowed::No)
        {
            assert!(Instant::now() < deadline, "the API's answers never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(api.answer(m(SLOW)), Allowed::Chain, "a signed kernel");
        assert_eq!(api.answer(m(YES)), Allowed::Yes, "an unsigned one: iPXE");
        assert_eq!(api.answer(m(BAD)), Allowed::Yes, "a script: iPXE runs it");
        // Each kernel's head was read once, and is remembered by URL.
        assert_eq!(api.kernels.lock().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flood_of_made_up_macs_neither_grows_the_table_nor_hammers_the_api() {
        // An API that never answers in time: every question is held for the whole timeout.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", l.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().take(1000).flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        let api = Api::new(&base, Duration::from_millis(800)).unwrap();
        // The one real machine, answered before the flood.
        api.answers().insert(
            m(YES),
            Cached {
                at: Some(Instant::now()),
                spec: Some(Arc::new(
                    parse_answer(&base, br#"{"kernel":"/k"}"#).unwrap(),
                )),
                asking: false,
                signed: false,
            },
        );
        let t = Instant::now();
        for i in 0..20_000u32 {
            let mac = format!(
                "02:00:{:02x}:{:02x}:{:02x}:01",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            );
            assert!(!api.allow(m(&mac)));
        }
        // Had any of them waited for the API (0.8 s each, 16 at a time), 20,000 would take
        // over 1,000 s; a loaded machine takes a few seconds at most.
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
        assert!(api.answers().len() <= MAX_MACHINES);
        std::thread::sleep(Duration::from_millis(300));
        let asked = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(asked <= MAX_ASKING, "{asked} questions at once");
        // The machine the API said yes to is still answered.
        assert!(api.allow(m(YES)));
    }

    #[test]
    fn scripts_and_files_come_through_this_server_only_for_what_the_api_named() {
        let base = api_server(
            answers(),
            vec![
                ("k", b"KERNEL".to_vec()),
                ("i", vec![7u8; 200_000]),
                ("c", b"#cloud-config\n".to_vec()),
            ],
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let api = Api::new(&base, Duration::from_millis(500)).unwrap();
            // The machine's DHCP bound its MAC to the address it asks from.
            let hub = Arc::new(crate::events::Hub::with_link(|_| None));
            hub.identities.bind(
                YES.parse().unwrap(),
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::time::Instant::now(),
            );
            let router = crate::routes::BootRoutes {
                booter: api,
                http: pxe::HttpAddress {
                    port: 0,
                    advertise: None,
                },
                binaries: Arc::default(),
                hub,
                syslog: false,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn(http::serve(
                listener,
                Arc::new(router),
                http::Limits::default(),
                Arc::new(http::Unobserved),
                cancel.clone(),
                Duration::from_secs(1),
            ));
            let get = move |path: String| {
                tokio::task::spawn_blocking(move || {
                    let url = format!("http://127.0.0.1:{port}{path}");
                    match ureq::get(&url).call() {
                        Ok(mut r) => (200, r.body_mut().read_to_vec().unwrap()),
                        Err(ureq::Error::StatusCode(c)) => (c, Vec::new()),
                        Err(e) => panic!("{url}: {e}"),
                    }
                })
            };
            let (code, script) = get(format!("/_/ipxe?arch=0&mac={YES}")).await.unwrap();
            let script = String::from_utf8(script).unwrap();
            assert_eq!(code, 200, "{script}");
            assert!(
                script.contains("initrd --name initrd-0 ") && script.contains(" y\n"),
                "{script}"
            );
            // Each URL the script names is the API's file, byte for byte, through this server.
            let urls: Vec<String> = script
                .split_whitespace()
                .filter_map(|w| w.split_once("http://").map(|(_, u)| u.to_string()))
                .collect();
            assert_eq!(urls.len(), 3, "{script}");
            let mut got = Vec::new();
            for u in urls {
                let path = &u[u.find('/').unwrap()..];
                got.push(get(path.to_string()).await.unwrap());
            }
            assert_eq!(got[0], (200, b"KERNEL".to_vec()));
            assert_eq!(got[1], (200, vec![7u8; 200_000]));
            assert_eq!(got[2], (200, b"#cloud-config\n".to_vec()));
            // Nothing the API did not name for that machine, nothing for the others, and
            // nothing without the token the script carries.
            for path in [
                format!("/_/api?mac={YES}&n=3"),
                format!("/_/api?mac={YES}&n=0"),
                format!("/_/api?mac={YES}&n=0&t=00000000000000000000000000000000"),
                format!("/_/api?mac={NO}&n=0"),
                format!("/_/ipxe?mac={NO}"),
                format!("/_/ipxe?mac={BAD}"),
                "/_/ipxe?mac=nonsense".to_string(),
            ] {
                assert_eq!(get(path.clone()).await.unwrap().0, 404, "{path}");
            }
            // A slow API: the script request gives up at the timeout.
            let t = Instant::now();
            assert_eq!(get(format!("/_/ipxe?mac={SLOW}")).await.unwrap().0, 404);
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            cancel.cancel();
        });
    }

    /// Item: script requests used to ask the API without bound (384 questions and 388 threads
    /// at once). Now at most [`MAX_ASKING`] questions are out, the DHCP path's and the
    /// scripts' together; a machine beyond them is told to ask again shortly.
    #[test]
    fn script_requests_ask_the_api_at_most_16_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", l.local_addr().unwrap());
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n2, m2) = (now.clone(), most.clone());
        std::thread::spawn(move || {
            for s in l.incoming().take(400).flatten() {
                let (now, most) = (n2.clone(), m2.clone());
                std::thread::spawn(move || {
                    use std::io::{Read as _, Write as _};
                    let mut s = s;
                    let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(at_once, Ordering::SeqCst);
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    std::thread::sleep(Duration::from_millis(300));
                    now.fetch_sub(1, Ordering::SeqCst);
                    let _ = s.write_all(
                        b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        let api = Api::new(&base, Duration::from_secs(2)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let waits = rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..100u32 {
                let api = api.clone();
                tasks.push(tokio::spawn(async move {
                    let mac: Mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 255)
                        .parse()
                        .unwrap();
                    let d = api.decide(&Ask {
                        machine: Some(Machine::new(mac)),
                        vouched: true,
                        peer: "10.0.0.9:1".parse().unwrap(),
                        base: "http://10.0.0.1:8090",
                    });
                    matches!(d, Decision::Wait { .. })
                }));
            }
            let mut waits = 0;
            for t in tasks {
                waits += usize::from(t.await.unwrap());
            }
            waits
        });
        let most = most.load(Ordering::SeqCst);
        assert!(most <= MAX_ASKING, "{most} questions at once");
        assert!(waits > 0, "a hundred at once: some are told to ask again");
    }

    /// Item: the API's answer and the files it names are fetched from where it said: a redirect
    /// (to another host, to `file://`) is not followed.
    #[test]
    fn no_redirect_is_followed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming().take(10).flatten() {
                use std::io::{Read as _, Write as _};
                let mut s = s;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 5\r\nConnection: close\r\n\r\nmoved");
            }
        });
        let api = Api::new(&base, Duration::from_secs(2)).unwrap();
        assert!(api.ask(m(YES)).is_none(), "a redirecting API boots nothing");
        let fetch = Fetch {
            url: format!("{base}files/k"),
            agent: api.files.clone(),
        };
        let e = http::Upstream::open(&fetch).err().unwrap();
        assert!(e.contains("302"), "{e}");
    }

    /// Item: a `file://` URL the API names is served only through no symlink, when it is a
    /// regular file everyone on this host may read.
    #[test]
    fn a_file_the_api_names_is_opened_safely() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = crate::plan::tests::tmpdir("api-file-named");
        let _ = std::fs::remove_dir_all(d.join("real"));
        std::fs::create_dir_all(d.join("real")).unwrap();
        let public = d.join("real/kernel");
        std::fs::write(&public, "kernel").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let secret = d.join("real/secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (link, to) in [("link", public.clone()), ("dir", d.join("real"))] {
            let _ = std::fs::remove_file(d.join(link));
            std::os::unix::fs::symlink(&to, d.join(link)).unwrap();
        }
        assert!(open_named(&public).is_ok());
        for refused in [
            secret.clone(),
            d.join("link"),
            d.join("dir/kernel"),
            "/dev/zero".into(),
            "/etc/shadow".into(),
            "relative/kernel".into(),
            d.join("real"),
        ] {
            assert!(open_named(&refused).is_err(), "{}", refused.display());
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Item: an API URL's `user:password@` and a proxied URL's query (tokens, signatures)
    /// went into log lines.
    #[test]
    fn urls_are_logged_without_credentials_or_query() {
        assert_eq!(
            redact_url("https://ops:s3cret@api.example:8000/pixie/"),
            "https://…@api.example:8000/pixie/"
        );
        assert_eq!(
            redact_url("https://bucket.example/k?X-Amz-Signature=abc"),
            "https://bucket.example/k?…"
        );
        assert_eq!(redact_url("http://h/p"), "http://h/p");
        let api = Api::new("http://ops:s3cret@127.0.0.1:1/x", Duration::from_secs(1)).unwrap();
        assert!(!api.describe().contains("s3cret"), "{}", api.describe());
    }

    proptest::proptest! {
        /// An answer is outside input: whatever bytes come, parsing ends in a spec or an error,
        /// and a spec never names more URLs than the bound.
        #[test]
        fn any_answer_parses_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(s) = parse_answer(BASE, &body) {
                proptest::prop_assert!(s.urls.len() <= MAX_URLS);
            }
        }

        #[test]
        fn any_cmdline_parses_or_is_refused(cmdline in "[ -~]{0,120}") {
            let body = serde_json::json!({"kernel": "/k", "cmdline": cmdline}).to_string();
            if let Ok(s) = parse_answer(BASE, body.as_bytes()) {
                proptest::prop_assert!(s.urls.len() <= MAX_URLS);
            }
        }
    }
}
