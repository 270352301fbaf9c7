//! The admin surface: the status page (`/`), `/api/machines` and `/metrics`, on a listener of
//! its own (`--admin-listen`, `127.0.0.1:8091` by default), never on the boot port, which
//! serves only what booting machines fetch. An address other hosts can reach needs a token
//! (`--admin-token-file`), compared in constant time; every request's `Host` must be an
//! address, `localhost` or a name given with `--admin-host`, so a web page an operator opens
//! cannot read the API through a name it points at this host (DNS rebinding).
//!
//! `/api/machines` is paged (`?offset=N&limit=M`, at most [`MAX_PAGE`] machines an answer):
//! an answer is built from a snapshot of one page, whatever the fleet's size, and the
//! listener holds few connections, so what the admin surface costs is bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use http::{query_param, Reply, Request, Router};
use pxe::Mac;
use sha2::{Digest as _, Sha256};

/// The machines as JSON; `/api/machines/MAC` one with its timeline.
pub const MACHINES: &str = "/api/machines";
/// Where the metrics are.
pub const METRICS: &str = "/metrics";
/// Machines in one answer of `/api/machines`, at most (and when no `limit` is asked).
pub const MAX_PAGE: usize = 1000;
/// The machines as server-sent events: `/api/machines`'s first page, sent when it changed.
pub const EVENTS: &str = "/api/machines/events";
/// The status page: static, it follows [`EVENTS`] (or reads `/api/machines` every second).
pub const PAGE: &str = include_str!("status.html");
/// The admin listener's port when none is given.
pub const DEFAULT_PORT: u16 = 8091;
/// A token shorter than this is refused: it could be guessed.
const MIN_TOKEN: usize = 16;

/// The machines a server knows, as the API shows them (never their URLs).
pub trait Machines: Send + Sync {
    /// Machines `offset..offset + limit` by MAC, as the JSON of `/api/machines`, with how many
    /// there are in all.
    fn list_json(&self, offset: usize, limit: usize) -> Vec<u8>;
    /// One machine with its timeline; `None` when it is not known.
    fn show_json(&self, mac: Mac) -> Option<Vec<u8>>;
    /// Machines stalled now, by the step they are stalled after.
    fn stalled(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The gauges of where machines are kept (`daybreak_store_*`).
    fn store_metrics(&self, _s: &mut String) {}
}

/// Where the admin surface listens and who may use it.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// `None`: no admin surface.
    pub listen: Option<SocketAddr>,
    /// The operator chose the address: failing to bind it is an error, not a warning.
    pub chosen: bool,
    pub token: Option<Token>,
    /// Names the `Host` header may carry besides addresses and `localhost`.
    pub hosts: Vec<String>,
    /// Receive iPXE's syslog lines (UDP 514) and file them under their machines.
    pub syslog: bool,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT))),
            chosen: false,
            token: None,
            hosts: Vec::new(),
            syslog: true,
        }
    }
}

impl AdminOptions {
    /// From the flags: `listen` is `ADDR:PORT`, `PORT` (on loopback) or `off`.
    pub fn new(
        listen: Option<&str>,
        token_file: Option<&Path>,
        hosts: Vec<String>,
    ) -> anyhow::Result<AdminOptions> {
        let listen_at = match listen {
            None => AdminOptions::default().listen,
            Some("off" | "none") => None,
            Some(text) => Some(parse_listen(text)?),
        };
        let token = token_file.map(Token::read).transpose()?;
        if let Some(a) = listen_at.filter(|a| !a.ip().is_loopback()) {
            if token.is_none() {
                bail!(
                    "--admin-listen {a}: the status page, /api/machines and /metrics would be open to \
                     every host that reaches {}; give --admin-token-file FILE (a secret of 16 or more \
                     characters), or listen on 127.0.0.1",
                    a.ip()
                );
            }
        }
        for h in &hosts {
            if h.is_empty()
                || h.len() > 253
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                bail!("--admin-host {h:?}: not a host name");
            }
        }
        Ok(AdminOptions {
            listen: listen_at,
            chosen: listen.is_some(),
            token,
            hosts,
            syslog: true,
        })
    }
}

fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        anyhow::anyhow!(
            "--admin-listen {text:?}: give ADDR:PORT (127.0.0.1:8091, [::1]:8091), a port, or off"
        )
    })
}

/// The admin token, kept as its SHA-256: compared in constant time, and of fixed length.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from `path` (its first line, trimmed).
    pub fn read(path: &Path) -> anyhow::Result<Token> {
        use std::io::Read as _;
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("--admin-token-file {}: cannot open it", path.display()))?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            bail!("--admin-token-file {}: not a regular file", path.display());
        }
        if meta.mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the admin token file can be read by other users: chmod 600 it"
            );
        }
        let mut text = String::new();
        f.take(4096)
            .read_to_string(&mut text)
            .with_context(|| format!("--admin-token-file {}: not text", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.len() < MIN_TOKEN {
            bail!(
                "--admin-token-file {}: the token has {} characters; it needs at least {MIN_TOKEN} \
                 (e.g. head -c 24 /dev/urandom | base64 > FILE)",
                path.display(),
                token.len()
            );
        }
        Ok(Token::of(token.as_bytes()))
    }

    fn of(secret: &[u8]) -> Token {
        Token(Sha256::digest(secret).into())
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let other: [u8; 32] = Sha256::digest(given).into();
        self.0
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// What the admin listener holds: an operator's open pages (one event stream each, and their
/// opened timelines) and a Prometheus; what each costs is a page of `/api/machines` at most.
pub fn limits() -> http::Limits {
    http::Limits {
        max_connections: 256,
        max_per_address: 192,
        ..Default::default()
    }
}

/// The admin listener's router.
pub struct AdminRoutes {
    pub token: Option<Token>,
    pub hosts: Vec<String>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The machines the status page and `/api/machines` show, when the command keeps them.
    pub machines: Option<Arc<dyn Machines>>,
    /// What the open pages are sent, made once for all of them.
    pub live: Live,
}

/// The machines as every open page's event stream sends them, made once a second for all of
/// them ([`Rounds`]) by one thread that runs while pages are open. A page is sent, after the whole
/// list at first, only the machines whose rows changed since the round it saw, and those gone: a
/// page of 5,000 idle machines costs nothing, a storm what its machines change. A page never
/// waits on the making: it takes the round made last.
#[derive(Clone, Default)]
pub struct Live(Arc<LiveInner>);

#[derive(Default)]
pub struct LiveInner {
    rounds: Mutex<Rounds>,
    /// Pages open now; the maker stops when none is.
    pages: std::sync::atomic::AtomicUsize,
    /// Whether the maker runs.
    making: std::sync::atomic::AtomicBool,
}

impl Live {
    /// A page's stream of `machines`, the maker started when it is the first.
    fn open(&self, machines: &Arc<dyn Machines>) -> Stream {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.pages.fetch_add(1, SeqCst);
        if !self.0.making.swap(true, SeqCst) {
            let (live, machines) = (self.clone(), machines.clone());
            let started = std::thread::Builder::new()
                .name("admin-pages".into())
                .spawn(move || live.make(&*machines));
            if started.is_err() {
                self.0.making.store(false, SeqCst);
            }
        }
        Stream { live: self.clone() }
    }

    /// Makes a round a second while pages are open.
    fn make(&self, machines: &dyn Machines) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let json = machines.list_json(0, MAX_PAGE);
            let made = Rounds::rows_of(&json);
            if let Some(made) = made {
                self.0
                    .rounds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .update(made);
            }
            std::thread::sleep(http::EVENT_TICK);
            if self.0.pages.load(SeqCst) == 0 {
                self.0.making.store(false, SeqCst);
                // A page that opened meanwhile saw the maker running: make for it.
                if self.0.pages.load(SeqCst) == 0 || self.0.making.swap(true, SeqCst) {
                    return;
                }
            }
        }
    }
}

/// A list made: the rest of it (as members of an object), and each machine's row by MAC.
type Made = (String, Vec<(String, Arc<str>)>);

/// Machines gone remembered for the pages that have not seen them go; a page further behind
/// gets the whole list again.
const GONE_KEPT: usize = 16_384;

/// The list of machines as rounds of change: each machine's row (JSON) with the round it last
/// changed in, the machines gone with the round they went in, and the rest of the list.
#[derive(Default)]
pub struct Rounds {
    /// The round last made (0: none yet).
    round: u64,
    rows: HashMap<String, (Arc<str>, u64)>,
    gone: VecDeque<(String, u64)>,
    /// Rounds up to this one may have lost machines gone (past [`GONE_KEPT`]).
    forgot: u64,
    /// `"total":N` and the replicas, as members of the event's object.
    rest: String,
    /// The event for a page that saw the round before, and for a page that saw none, once made.
    delta: Option<(u64, Arc<[u8]>)>,
    full: Option<(u64, Arc<[u8]>)>,
}

impl Rounds {
    /// `/api/machines`'s first page as rows by MAC (each serialized), and the rest of the
    /// list (`"total":N` and the replicas, as members of an object); `None` if it is not one.
    fn rows_of(json: &[u8]) -> Option<Made> {
        let serde_json::Value::Object(mut list) = serde_json::from_slice(json).ok()? else {
            return None;
        };
        let machines = match list.remove("machines") {
            Some(serde_json::Value::Array(m)) => m,
            _ => Vec::new(),
        };
        list.remove("offset");
        let rest = serde_json::to_string(&list).unwrap_or_default();
        let rest = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or("")
            .to_string();
        let rows = machines
            .iter()
            .filter_map(|m| {
                let mac = m.get("mac")?.as_str()?.to_string();
                Some((mac, serde_json::to_string(m).ok()?.into()))
            })
            .collect();
        Some((rest, rows))
    }

    /// Takes in the list made again ([`Rounds::rows_of`]): a new round when anything in it
    /// changed.
    fn update(&mut self, (rest, machines): Made) {
        let next = self.round + 1;
        let mut changed = rest != self.rest;
        self.rest = rest;
        let mut present = HashSet::with_capacity(machines.len());
        for (mac, row) in machines {
            present.insert(mac.clone());
            match self.rows.get_mut(&mac) {
                Some((old, _)) if *old == row => {}
                _ => {
                    self.rows.insert(mac, (row, next));
                    changed = true;
                }
            }
        }
        let before = self.rows.len();
        let gone: Vec<String> = self
            .rows
            .keys()
            .filter(|m| !present.contains(*m))
            .cloned()
            .collect();
        for mac in gone {
            self.rows.remove(&mac);
            self.gone.push_back((mac, next));
        }
        changed |= self.rows.len() != before;
        while self.gone.len() > GONE_KEPT {
            if let Some((_, r)) = self.gone.pop_front() {
                self.forgot = self.forgot.max(r);
            }
        }
        if changed || self.round == 0 {
            self.round = next;
        }
    }

    /// The event for a page that saw round `seen` (0: none): everything, or what changed since.
    fn event(&self, seen: u64) -> Arc<[u8]> {
        let full = seen == 0 || seen <= self.forgot;
        let mut e = format!("{{\"round\":{},\"full\":{full},", self.round);
        if !self.rest.is_empty() {
            e.push_str(&self.rest);
            e.push(',');
        }
        e.push_str("\"machines\":[");
        let mut first = true;
        for (row, _) in self.rows.values().filter(|(_, r)| full || *r > seen) {
            if !first {
                e.push(',');
            }
            first = false;
            e.push_str(row);
        }
        e.push_str("],\"gone\":[");
        if !full {
            let gone = self.gone.iter().filter(|(_, r)| *r > seen);
            for (i, (mac, _)) in gone.enumerate() {
                if i > 0 {
                    e.push(',');
                }
                e.push_str(&serde_json::to_string(mac).unwrap_or_default());
            }
        }
        e.push_str("]}");
        e.into_bytes().into()
    }
}

/// One page's stream of the machines.
struct Stream {
    live: Live,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.live
            .0
            .pages
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl http::Events for Stream {
    fn next(&self, seen: u64) -> Option<(u64, Arc<[u8]>)> {
        // Being remade: this page gets it next time.
        let mut r = self.live.0.rounds.try_lock().ok()?;
        if r.round == 0 || seen == r.round {
            return None;
        }
        let round = r.round;
        // Most pages saw the round before, or none: those events are made once for all.
        let shared = seen == 0 || (seen + 1 == round && seen > r.forgot);
        let cached = match seen {
            0 => r.full.as_ref(),
            _ => r.delta.as_ref(),
        };
        if let Some((_, e)) = cached.filter(|(at, _)| shared && *at == round) {
            return Some((round, e.clone()));
        }
        let e = r.event(seen);
        match (shared, seen) {
            (true, 0) => r.full = Some((round, e.clone())),
            (true, _) => r.delta = Some((round, e.clone())),
            _ => {}
        }
        Some((round, e))
    }
}

const ASK_TOKEN: &str = "WWW-Authenticate: Basic realm=\"Daybreak admin\", charset=\"UTF-8\"\r\n";

impl AdminRoutes {
    /// Whether a request's `Host` names this server as an address or an allowed name.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            // HTTP/1.0 clients; browsers always send one.
            return true;
        };
        let name = match host.strip_prefix('[') {
            Some(rest) => {
                let Some((v6, port)) = rest.split_once(']') else {
                    return false;
                };
                let port_ok = port.is_empty()
                    || port
                        .strip_prefix(':')
                        .is_some_and(|p| p.parse::<u16>().is_ok());
                return port_ok && v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.parse::<u16>().is_ok() => name,
                Some(_) => return false,
                None => host,
            },
        };
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether the request carries the token: `Authorization: Bearer TOKEN`, or Basic with the
    /// token as the password (any user), which a browser asks for.
    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some((scheme, value)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
            return false;
        };
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return token.matches(value.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return base64_decode(value)
                .as_deref()
                .and_then(|d| d.iter().position(|&b| b == b':').map(|i| &d[i + 1..]))
                .is_some_and(|password| token.matches(password));
        }
        false
    }

    fn machines(&self, req: &Request<'_>) -> Option<Reply> {
        let m = self.machines.as_ref()?;
        if req.path == EVENTS {
            return Some(Reply::Events(Arc::new(self.live.open(m))));
        }
        if req.path == MACHINES {
            let num = |k| query_param(req.query, k).and_then(|v| v.parse::<usize>().ok());
            let offset = num("offset").unwrap_or(0);
            let limit = num("limit").unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
            return Some(Reply::memory(
                "_machines",
                "application/json",
                m.list_json(offset, limit),
            ));
        }
        let mac = req.path.strip_prefix(MACHINES)?.strip_prefix('/')?;
        let shown = mac.parse().ok().and_then(|mac| m.show_json(mac));
        Some(shown.map_or(Reply::NotFound, |v| {
            Reply::memory("_machines", "application/json", v)
        }))
    }
}

impl Router for AdminRoutes {
    fn route(&self, req: &Request<'_>) -> Reply {
        if !self.host_allowed(req.host) {
            tracing::warn!(client = %req.peer, host = %http::loggable(req.host.unwrap_or("")), "admin: a request for another host name (give --admin-host NAME to allow it): refused");
            return Reply::Refused {
                code: 403,
                headers: "",
            };
        }
        if !self.authorized(req.authorization) {
            return Reply::Refused {
                code: 401,
                headers: ASK_TOKEN,
            };
        }
        match req.path {
            METRICS => match &self.metrics {
                Some(m) => {
                    m.scraped();
                    let mut text = m.render();
                    if let Some(machines) = &self.machines {
                        crate::metrics::render_stalled(&mut text, &machines.stalled());
                        machines.store_metrics(&mut text);
                    }
                    Reply::memory(
                        "_metrics",
                        "text/plain; version=0.0.4; charset=utf-8",
                        text.into_bytes(),
                    )
                }
                None => Reply::NotFound,
            },
            "/" | "/status" if self.machines.is_some() => {
                Reply::memory("_status", "text/html; charset=utf-8", PAGE.as_bytes())
            }
            _ => self.machines(req).unwrap_or(Reply::NotFound),
        }
    }
}

/// Standard base64 (with or without padding); `None` on anything else. Bounded by its input,
/// which the request head bounds.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list as `/api/machines` gives it, of machines `(mac, phase)`.
    fn list(machines: &[(&str, &str)]) -> Vec<u8> {
        let rows: Vec<String> = machines
            .iter()
            .map(|(m, p)| format!(r#"{{"mac":"{m}","phase":"{p}"}}"#))
            .collect();
        format!(
            r#"{{"total":{},"offset":0,"machines":[{}]}}"#,
            machines.len(),
            rows.join(",")
        )
        .into_bytes()
    }

    fn event(r: &Rounds, seen: u64) -> serde_json::Value {
        serde_json::from_slice(&r.event(seen)).unwrap()
    }

    #[test]
    fn pages_are_sent_what_changed_since_the_round_they_saw() {
        let mut r = Rounds::default();
        r.update(Rounds::rows_of(&list(&[("a", "seen"), ("b", "kernel")])).unwrap());
        assert_eq!(r.round, 1);
        let full = event(&r, 0);
        assert_eq!(full["full"], true);
        assert_eq!(full["machines"].as_array().unwrap().len(), 2);
        // The same list again: no new round.
        r.update(Rounds::rows_of(&list(&[("b", "kernel"), ("a", "seen")])).unwrap());
        assert_eq!(r.round, 1);
        // One machine moves on, one goes, one comes.
        r.update(Rounds::rows_of(&list(&[("b", "rootfs"), ("c", "offered")])).unwrap());
        assert_eq!(r.round, 2);
        let delta = event(&r, 1);
        assert_eq!(delta["full"], false);
        assert_eq!(delta["total"], 2);
        let macs: HashSet<&str> = delta["machines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mac"].as_str().unwrap())
            .collect();
        assert_eq!(macs, HashSet::from(["b", "c"]));
        assert_eq!(delta["gone"], serde_json::json!(["a"]));
        // A page that saw round 2 gets nothing new from round 3's change of b only.
        r.update(Rounds::rows_of(&list(&[("b", "config"), ("c", "offered")])).unwrap());
        assert_eq!(event(&r, 2)["machines"].as_array().unwrap().len(), 1);
        assert_eq!(event(&r, 2)["gone"], serde_json::json!([]));
        // Garbage is no list.
        assert!(Rounds::rows_of(b"not json").is_none());
        assert_eq!(r.round, 3);
        // Past what is remembered of the gone, a page behind gets everything.
        r.forgot = 2;
        assert_eq!(event(&r, 2)["full"], true);
    }

    fn routes(token: Option<&str>) -> AdminRoutes {
        AdminRoutes {
            token: token.map(|t| Token::of(t.as_bytes())),
            hosts: vec!["boot.example".into()],
            metrics: None,
            machines: None,
            live: Default::default(),
        }
    }

    fn code(r: &AdminRoutes, host: Option<&str>, auth: Option<&str>) -> u16 {
        let req = Request {
            path: "/metrics",
            query: "",
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)),
            host,
            authorization: auth,
        };
        match r.route(&req) {
            Reply::Refused { code, .. } => code,
            Reply::NotFound => 404,
            _ => 200,
        }
    }

    #[test]
    fn a_host_name_the_operator_did_not_give_is_refused() {
        let r = routes(None);
        for ok in [
            None,
            Some("127.0.0.1:8091"),
            Some("10.0.0.5"),
            Some("[::1]:8091"),
            Some("[fe80::1]"),
            Some("localhost:8091"),
            Some("LOCALHOST"),
            Some("boot.example:8091"),
        ] {
            assert_eq!(code(&r, ok, None), 404, "{ok:?}");
        }
        for bad in [
            Some("attacker.example"),
            Some("attacker.example:8091"),
            Some("127.0.0.1.nip.io"),
            Some("[::1"),
            Some("[::1]x"),
            Some("localhost:http"),
            Some(""),
        ] {
            assert_eq!(code(&r, bad, None), 403, "{bad:?}");
        }
    }

    #[test]
    fn the_admin_token_is_asked_for_and_checked() {
        let r = routes(Some("correct-horse-battery"));
        assert_eq!(code(&r, None, None), 401);
        assert_eq!(code(&r, None, Some("Bearer wrong-horse-battery")), 401);
        assert_eq!(code(&r, None, Some("Bearer correct-horse-battery")), 404);
        // Basic, any user: what a browser sends. "admin:correct-horse-battery".
        assert_eq!(
            code(&r, None, Some("Basic YWRtaW46Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5")),
            404
        );
        assert_eq!(code(&r, None, Some("Basic YWRtaW46d3Jvbmc=")), 401);
        assert_eq!(code(&r, None, Some("Basic !!!")), 401);
        assert_eq!(code(&r, None, Some("Digest x")), 401);
    }

    #[test]
    fn base64_decodes_what_browsers_send() {
        assert_eq!(base64_decode("YWRtaW46cHc=").unwrap(), b"admin:pw");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn an_address_others_reach_needs_a_token_and_a_short_token_is_refused() {
        let e = AdminOptions::new(Some("0.0.0.0:8091"), None, vec![]).unwrap_err();
        assert!(format!("{e}").contains("--admin-token-file"), "{e}");
        assert!(AdminOptions::new(Some("127.0.0.1:9"), None, vec![]).is_ok());
        assert!(AdminOptions::new(Some("off"), None, vec![])
            .unwrap()
            .listen
            .is_none());
        let dir = crate::plan::tests::tmpdir("admin-token");
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = AdminOptions::new(Some("0.0.0.0:8091"), Some(&short), vec![]).unwrap_err();
        assert!(format!("{e}").contains("at least 16"), "{e}");
        let good = dir.join("good");
        std::fs::write(&good, "correct-horse-battery\n").unwrap();
        let o = AdminOptions::new(Some("0.0.0.0:8091"), Some(&good), vec![]).unwrap();
        assert!(o.token.unwrap().matches(b"correct-horse-battery"));
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(Token::read(&link).is_err(), "a symlink is not followed");
    }
}
