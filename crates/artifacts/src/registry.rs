//! Pulling from an OCI registry (the distribution API): manifests by tag or digest, blobs into
//! a content-addressed cache.
//!
//! Auth is what `docker pull` does: anonymous first, then the scheme the registry asks for in
//! `WWW-Authenticate` (a bearer token from its realm, or basic), with credentials from
//! `~/.docker/config.json` (inline `auths`, `credHelpers`, `credsStore`) or the containers
//! `auth.json` that podman and skopeo write. Plain HTTP is used for `localhost` and 127.0.0.0/8,
//! as Docker allows, and for any registry when insecure registries are allowed (after HTTPS,
//! without certificate checks, has failed).
//!
//! Every blob lands in `blobs/sha256/<hex>` only after its digest matched; a `.part` file is
//! resumed with a `Range` request after a dropped connection, and re-hashed from its start.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;

use crate::digest::{printable, Digest};
use crate::download;
use crate::oci::{self, Reference};

const ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {why}. Check the name and the network; for a plain-HTTP or self-signed registry set allow-insecure-registries")]
    Unreachable { registry: String, why: String },
    #[error("{image}: {what} not found in the registry (HTTP 404); check the repository and tag")]
    NotFound { image: String, what: String },
    #[error("{image}: the registry refused access (HTTP {status}). Log in with `docker login {registry}` (Daybreak reads ~/.docker/config.json) or check the repository name")]
    Denied {
        image: String,
        registry: String,
        status: u16,
    },
    #[error("{image}: the registry answered HTTP {status} for {what}")]
    Status {
        image: String,
        what: String,
        status: u16,
    },
    #[error("{image}: {digest} does not match its digest (the bytes sent have {actual}); the registry, or something between it and this host, altered them. Nothing of it was kept")]
    Digest {
        image: String,
        digest: Digest,
        actual: Digest,
    },
    #[error("{image}: {what}")]
    Protocol { image: String, what: String },
    #[error("{image}: {source}")]
    Token { image: String, source: TokenError },
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Oci(#[from] oci::OciError),
}

/// Why one try of a request got no answer to judge; the retry loop tries again, and reports
/// the last of these when every try failed.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    /// No HTTP answer at all: the connection, TLS, a timeout.
    #[error("{0}")]
    Transport(#[from] ureq::Error),
    /// An answer that says "later" (429, 5xx).
    #[error("HTTP {0}")]
    Busy(u16),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Why the bearer token the registry asked for could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the registry asked for a token without naming a realm")]
    NoRealm,
    #[error("the registry named a token realm that is not an http(s) URL: {0}")]
    BadRealm(String),
    #[error("token request to {realm}: {source}")]
    Request { realm: String, source: ureq::Error },
    #[error("token request to {realm} answered HTTP {status}{}", if *withheld { " (your credentials were not sent: the realm is plain HTTP on another host)" } else { "" })]
    Status {
        realm: String,
        status: u16,
        withheld: bool,
    },
    #[error("token response from {realm}: {why}")]
    Response { realm: String, why: String },
}

impl TokenError {
    /// Whether asking again may help: no answer, or an answer that says "later".
    fn transient(&self) -> bool {
        match self {
            TokenError::Request { .. } => true,
            TokenError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Username and password (or identity token) for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Keys under which Docker's and podman's auth files may name a registry.
fn auth_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if registry == "docker.io" {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("registry-1.docker.io".into());
    }
    keys
}

fn credential_helper(helper: &str, registry: &str) -> Option<Credentials> {
    use std::process::{Command, Stdio};
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Credentials {
        username: v.get("Username")?.as_str()?.to_string(),
        password: v.get("Secret")?.as_str()?.to_string(),
    })
}

/// Credentials for `registry` from the usual files, first match wins: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`.
pub fn find_credentials(registry: &str) -> Option<Credentials> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(f.into());
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => files.push(Path::new(&d).join("config.json")),
        None => {
            if let Some(h) = std::env::var_os("HOME") {
                files.push(Path::new(&h).join(".docker/config.json"));
            }
        }
    }
    let keys = auth_keys(registry);
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if let Some(helpers) = cfg.get("credHelpers").and_then(|h| h.as_object()) {
            for k in &keys {
                if let Some(h) = helpers.get(k).and_then(|h| h.as_str()) {
                    if let Some(c) = credential_helper(h, registry) {
                        return Some(c);
                    }
                }
            }
        }
        if let Some(auths) = cfg.get("auths").and_then(|a| a.as_object()) {
            for k in &keys {
                let Some(entry) = auths.get(k) else { continue };
                if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|d| String::from_utf8(d).ok());
                    if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                        return Some(Credentials {
                            username: u.to_string(),
                            password: p.to_string(),
                        });
                    }
                }
                if let Some(tok) = entry.get("identitytoken").and_then(|a| a.as_str()) {
                    return Some(Credentials {
                        username: "<token>".into(),
                        password: tok.to_string(),
                    });
                }
            }
        }
        if let Some(store) = cfg.get("credsStore").and_then(|s| s.as_str()) {
            if let Some(c) = credential_helper(store, registry) {
                return Some(c);
            }
        }
    }
    None
}

/// Whether Docker would talk plain HTTP to this registry without being told.
pub fn is_local(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Puts the two TLS failures users meet into words before the library's own: a registry that
/// speaks plain HTTP, and a certificate nobody vouches for.
fn explain_tls(why: &str) -> String {
    if why.contains("InvalidContentType") {
        format!("it answers in plain HTTP, not HTTPS ({why})")
    } else if why.contains("UnknownIssuer") || why.contains("invalid peer certificate") {
        format!("its TLS certificate is not trusted, self-signed or from a private CA ({why})")
    } else {
        why.to_string()
    }
}

/// A `WWW-Authenticate` challenge: scheme and its parameters.
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let Some((k, v)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, next) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        params.insert(k, val.to_string());
        s = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

/// A registry client for one image.
pub struct Client {
    agent: ureq::Agent,
    image: Reference,
    base: Mutex<Option<String>>,
    insecure: bool,
    auth: Mutex<Option<String>>,
    creds: Option<Credentials>,
}

impl Client {
    pub fn new(image: &Reference, insecure: bool) -> Client {
        let mut cfg = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .http_status_as_error(false)
            .user_agent(concat!("daybreak/", env!("CARGO_PKG_VERSION")));
        if insecure {
            cfg = cfg.tls_config(
                ureq::tls::TlsConfig::builder()
                    .disable_verification(true)
                    .build(),
            );
        }
        Client {
            agent: cfg.build().new_agent(),
            image: image.clone(),
            base: Mutex::new(None),
            insecure,
            auth: Mutex::new(None),
            creds: find_credentials(&image.registry),
        }
    }

    fn image_name(&self) -> String {
        self.image.to_string()
    }

    /// A token refused outright is a refusal of access, with the same advice; anything else
    /// about the token is said as it is.
    fn token_failed(&self, t: TokenError) -> RegistryError {
        match t {
            TokenError::Status {
                status: status @ (401 | 403),
                withheld: false,
                ..
            } => RegistryError::Denied {
                image: self.image_name(),
                registry: self.image.registry.clone(),
                status,
            },
            source => RegistryError::Token {
                image: self.image_name(),
                source,
            },
        }
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.image.registry.clone(),
            why: explain_tls(&why.to_string()),
        }
    }

    /// The scheme and host to use, settled by the first request that gets an answer.
    fn bases(&self) -> Vec<String> {
        if let Some(b) = self.base.lock().unwrap().clone() {
            return vec![b];
        }
        let host = self.image.api_host();
        // As Docker: HTTPS first; plain HTTP too for loopback and insecure registries. (A
        // plain-HTTP registry fails the TLS handshake at once, so the fallback is quick.)
        if is_local(&self.image.registry) || self.insecure {
            vec![format!("https://{host}"), format!("http://{host}")]
        } else {
            vec![format!("https://{host}")]
        }
    }

    /// GET `path` (under /v2/) with auth, retries and the scheme fallback.
    fn get(
        &self,
        path: &str,
        headers: &[(&str, String)],
        attempts: u32,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
            }
            let mut https_failed = false;
            for base in self.bases() {
                match self.get_once(&base, path, headers) {
                    // Plain HTTP to a TLS port: the registry is HTTPS, and the HTTPS error above
                    // (a certificate, most likely) is the one to report.
                    Ok(r) if https_failed && base.starts_with("http://") && r.status() == 400 => {}
                    Ok(r) => {
                        let s = r.status().as_u16();
                        if s == 429 || s >= 500 {
                            last = Some(Attempt::Busy(s));
                            continue;
                        }
                        *self.base.lock().unwrap() = Some(base);
                        return Ok(r);
                    }
                    Err(Attempt::Token(t)) if !t.transient() => return Err(self.token_failed(t)),
                    Err(e) => {
                        https_failed |= base.starts_with("https://");
                        last = Some(e);
                    }
                }
            }
        }
        Err(match last {
            Some(why) => self.unreachable(why),
            None => self.unreachable("no address to try"),
        })
    }

    fn get_once(
        &self,
        base: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<ureq::http::Response<ureq::Body>, Attempt> {
        let url = format!("{base}/v2/{path}");
        let send = |auth: Option<&str>| {
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
        };
        let auth = self.auth.lock().unwrap().clone();
        let resp = send(auth.as_deref())?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (scheme, params) = parse_challenge(&challenge);
        let new_auth = match scheme.as_str() {
            "bearer" => self.token(base, &params)?,
            "basic" => match &self.creds {
                Some(c) => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:{}", c.username, c.password))
                ),
                None => return Ok(resp),
            },
            _ => return Ok(resp),
        };
        *self.auth.lock().unwrap() = Some(new_auth.clone());
        Ok(send(Some(&new_auth))?)
    }

    /// A bearer token from the realm the registry named, with credentials when we have them.
    ///
    /// Credentials go to the realm only over HTTPS, or over plain HTTP to the registry's own
    /// origin (already trusted with them): a registry, or anyone in the middle of a plain-HTTP
    /// pull, must not be able to name a realm that collects passwords in the clear.
    fn token(&self, base: &str, params: &HashMap<String, String>) -> Result<String, TokenError> {
        let realm = params.get("realm").ok_or(TokenError::NoRealm)?;
        let plain = realm.starts_with("http://");
        if !plain && !realm.starts_with("https://") {
            return Err(TokenError::BadRealm(printable(realm, 100)));
        }
        let origin = |u: &str| -> String {
            let after = u.split_once("://").map_or(u, |x| x.1);
            let host = after.split(['/', '?']).next().unwrap_or("");
            format!("{}://{host}", u.split("://").next().unwrap_or(""))
        };
        let send_creds = !plain || origin(realm) == origin(base);
        let mut url = format!("{realm}?");
        if let Some(s) = params.get("service") {
            url.push_str(&format!("service={}&", urlencode(s)));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
        url.push_str(&format!("scope={}", urlencode(&scope)));
        let mut req = self.agent.get(&url);
        let withheld = self.creds.is_some() && !send_creds;
        if let Some(c) = self.creds.as_ref().filter(|_| send_creds) {
            req = req.header(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:{}", c.username, c.password))
                ),
            );
        }
        let shown = printable(realm, 200);
        let mut resp = req.call().map_err(|source| TokenError::Request {
            realm: shown.clone(),
            source,
        })?;
        if !resp.status().is_success() {
            return Err(TokenError::Status {
                realm: shown,
                status: resp.status().as_u16(),
                withheld,
            });
        }
        let response = |why: String| TokenError::Response {
            realm: shown.clone(),
            why,
        };
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| response(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| response(e.to_string()))?;
        let tok = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| response("no token in it".into()))?;
        Ok(format!("Bearer {tok}"))
    }

    fn check_status(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        what: &str,
    ) -> Result<(), RegistryError> {
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(RegistryError::NotFound {
                image: self.image_name(),
                what: what.to_string(),
            }),
            s @ (401 | 403) => Err(RegistryError::Denied {
                image: self.image_name(),
                registry: self.image.registry.clone(),
                status: s,
            }),
            s => Err(RegistryError::Status {
                image: self.image_name(),
                what: what.to_string(),
                status: s,
            }),
        }
    }

    /// A manifest or an index by tag: its bytes and their digest.
    pub fn manifest_by_tag(&self, tag: &str) -> Result<(Vec<u8>, Digest), RegistryError> {
        if tag.is_empty()
            || tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(RegistryError::Protocol {
                image: self.image_name(),
                what: format!("{} is not a tag", printable(tag, 130)),
            });
        }
        let body = self.fetch_manifest(tag)?;
        let digest = Digest::of(&body);
        Ok((body, digest))
    }

    /// A manifest or an index by digest, refused unless its bytes have that digest.
    pub fn manifest_by_digest(&self, digest: &Digest) -> Result<Vec<u8>, RegistryError> {
        let body = self.fetch_manifest(digest.as_str())?;
        let actual = Digest::of(&body);
        if &actual != digest {
            return Err(RegistryError::Digest {
                image: self.image_name(),
                digest: digest.clone(),
                actual,
            });
        }
        Ok(body)
    }

    /// The manifest the reference names: by digest when pinned, else by tag.
    pub fn manifest(&self) -> Result<(Vec<u8>, Digest), RegistryError> {
        match &self.image.digest {
            Some(d) => Ok((self.manifest_by_digest(d)?, d.clone())),
            None => self.manifest_by_tag(self.image.tag.as_deref().unwrap_or("latest")),
        }
    }

    fn fetch_manifest(&self, reference: &str) -> Result<Vec<u8>, RegistryError> {
        let accept = [
            oci::MEDIA_OCI_INDEX,
            oci::MEDIA_OCI_MANIFEST,
            oci::MEDIA_DOCKER_LIST,
            oci::MEDIA_DOCKER_MANIFEST,
        ]
        .join(", ");
        let mut resp = self.get(
            &format!("{}/manifests/{reference}", self.image.repository),
            &[("Accept", accept)],
            // Few: without a registry, a start from the store should not wait long.
            3,
        )?;
        self.check_status(&resp, &format!("manifest {reference}"))?;
        resp.body_mut()
            .with_config()
            .limit(oci::MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))
    }

    /// Downloads a blob of `size` bytes (as its descriptor says) into `dest` (resuming
    /// `dest.part`), verified against `digest`; a body longer than `size` is refused as it
    /// arrives. `progress` gets the bytes done so far.
    pub fn blob(
        &self,
        digest: &Digest,
        size: u64,
        dest: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<u64, RegistryError> {
        if size == 0 {
            return Err(RegistryError::Protocol {
                image: self.image_name(),
                what: format!("the manifest gives {digest} no size"),
            });
        }
        let part = dest.with_extension("part");
        let io_err = |source| RegistryError::Io {
            path: part.clone(),
            source,
        };
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(io_err)?;
        }
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
            }
            let have = download::part_len(&part);
            let mut headers = Vec::new();
            if have > 0 {
                headers.push(("Range", format!("bytes={have}-")));
            }
            // One request per attempt: this loop does the retrying (and resumes where it left).
            let resp = match self.get(
                &format!("{}/blobs/{digest}", self.image.repository),
                &headers,
                1,
            ) {
                Ok(r) => r,
                Err(RegistryError::Unreachable { why, .. }) => {
                    last = why;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = resp.status().as_u16();
            if !(status == 416 && have > 0) {
                self.check_status(&resp, &format!("blob {digest}"))?;
            }
            progress(have);
            match download::receive(resp, &part, have, Some(size), &mut |done, _| progress(done)) {
                Ok(()) => {}
                Err(e @ download::ReceiveError::TooLong { .. }) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(RegistryError::Protocol {
                        image: self.image_name(),
                        what: format!("{digest}: {e}; nothing of it was kept"),
                    });
                }
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            }
            // The whole file is hashed, resumed parts included: it counts only if all matches.
            let actual = Digest::from_hash(&download::sha256_file(&part).map_err(io_err)?);
            if &actual != digest {
                let _ = std::fs::remove_file(&part);
                if status == 416 {
                    continue;
                }
                return Err(RegistryError::Digest {
                    image: self.image_name(),
                    digest: digest.clone(),
                    actual,
                });
            }
            let len = download::part_len(&part);
            File::open(&part)
                .and_then(|f| f.sync_all())
                .map_err(io_err)?;
            std::fs::rename(&part, dest).map_err(io_err)?;
            return Ok(len);
        }
        Err(self.unreachable(format!("downloading blob {digest}: {last}")))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
    }

    #[test]
    fn local_registries() {
        assert!(is_local("localhost:5000"));
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("127.1.2.3"));
        assert!(is_local("[::1]:5000"));
        assert!(!is_local("quay.io"));
        assert!(!is_local("10.0.0.1:5000"));
    }
}
