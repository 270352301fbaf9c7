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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

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
    pub live: crate::live::Live,
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
