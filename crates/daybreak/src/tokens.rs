//! Capability tokens: the tags that make a URL one machine's own (its cloud-config, its install
//! callback, a file an API named for it). One scheme for every kind: HMAC-SHA-256 under a key,
//! over the kind, the MAC and what the URL is bound to (an API's file: its position and the URL
//! it proxies, so a changed answer closes the old URLs), cut to 128 bits, compared in constant
//! time. Whoever has the URL was given it; knowing a MAC is not enough.
//!
//! The key lives in the state directory (`url.key`, mode 0600, made once, under a lock shared by
//! every process using the directory), so a machine given a URL before a restart can use it
//! after; a run without a state directory keys its tokens with a key of its own.

use std::path::Path;

use pxe::Mac;
use sha2::{Digest as _, Sha256};

use crate::decision::{Personal, PersonalKind};

/// A machine's own cloud-config: `/_/config/MAC-TAG.yaml`.
pub const CONFIG: &str = "/_/config/";
/// A machine's install callback: `/_/installed/MAC-TAG`.
pub const INSTALLED: &str = "/_/installed/";
/// Where a booted machine reports its stages: `/_/report/MAC-TAG?stage=STAGE`.
pub const REPORT: &str = "/_/report/";
/// A file an API named for a machine: `/_/api?mac=MAC&n=N&t=TAG`.
pub const API_FILE: &str = "/_/api";

/// The key's file in the state directory.
const KEY_FILE: &str = "url.key";

/// Makes and checks tags.
#[derive(Clone)]
pub struct Tokens {
    key: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

/// HMAC-SHA-256 (RFC 2104) with a key of 32 bytes.
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equal bytes, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Tokens {
    /// Tokens under a key of this run's own: URLs die with the process.
    pub fn ephemeral() -> std::io::Result<Tokens> {
        let hex = artifacts::random_hex(32)?;
        Ok(Tokens::from_hex(&hex).expect("random_hex gives 64 hex digits"))
    }

    fn from_hex(hex: &str) -> Option<Tokens> {
        let mut key = [0u8; 32];
        if hex.len() != 64 {
            return None;
        }
        for (k, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *k = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Tokens { key })
    }

    /// The key of the state directory `dir` (already checked safe by
    /// [`artifacts::Store::open`]): read, or made once (garbage in its place is replaced).
    pub fn in_state_dir(dir: &Path) -> std::io::Result<Tokens> {
        let path = dir.join(KEY_FILE);
        let read = || {
            artifacts::read_small(&path, 128)
                .and_then(|k| String::from_utf8(k).ok())
                .and_then(|k| Tokens::from_hex(k.trim()))
        };
        if let Some(t) = read() {
            return Ok(t);
        }
        let _lock = artifacts::Lock::exclusive(&dir.join(".url.key.lock"), || {})?;
        // Another process sharing the directory may have made it meanwhile.
        if let Some(t) = read() {
            return Ok(t);
        }
        let hex = artifacts::random_hex(32)?;
        artifacts::write_atomic(&path, hex.as_bytes(), 0o600)?;
        Ok(Tokens::from_hex(&hex).expect("random_hex gives 64 hex digits"))
    }

    /// The key every process using `store` shares (replicas on etcd), or, for a store that is
    /// one host's, the key of the state directory `dir`. A key in the store that is not one
    /// Daybreak made is refused with the fix, never used.
    pub fn for_store(store: &dyn crate::store::MachineStore, dir: &Path) -> anyhow::Result<Tokens> {
        let fresh = artifacts::random_hex(32)?;
        match store.shared_secret(fresh)? {
            None => Ok(Tokens::in_state_dir(dir)?),
            Some(hex) => Tokens::from_hex(hex.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the URL key in {} is not 64 hex digits: it was not made by Daybreak; delete it (etcdctl del PREFIX/secret) and restart every replica (machines' open per-boot URLs change)",
                    store.describe()
                )
            }),
        }
    }

    /// The tag of `kind` for `mac`, bound to `bound`.
    pub fn tag(&self, kind: PersonalKind, mac: Mac, bound: &str) -> String {
        let (name, n) = match kind {
            PersonalKind::Config => ("config", 0),
            PersonalKind::Installed => ("installed", 0),
            PersonalKind::Report => ("report", 0),
            PersonalKind::File(n) => ("file", n),
        };
        self.mac_of(&[
            name.as_bytes(),
            &mac.octets(),
            &(n as u64).to_be_bytes(),
            bound.as_bytes(),
        ])
    }

    /// The nonce of a boot of `mac` decided from its record at `version` (first seen at
    /// `first_seen`): the same on every replica sharing the key for the same record (so every
    /// replica gives the same answer), unpredictable without the key, and new with every change
    /// to the record.
    pub fn boot_nonce(&self, mac: Mac, version: u64, first_seen: u64) -> String {
        self.mac_of(&[
            b"grant",
            &mac.octets(),
            &version.to_be_bytes(),
            &first_seen.to_be_bytes(),
        ])
    }

    /// The nonce after `nonce`: for a boot decided from the same record as the one before it
    /// (its writes not landed yet), so the next boot still closes the last one's URLs.
    pub fn next_nonce(&self, nonce: &str) -> String {
        self.mac_of(&[b"next", nonce.as_bytes()])
    }

    /// 32 hex digits of the HMAC of `parts`, each behind its length: no two different inputs
    /// make one message.
    fn mac_of(&self, parts: &[&[u8]]) -> String {
        let mut msg = Vec::with_capacity(128);
        for part in parts {
            msg.extend_from_slice(&(part.len() as u64).to_be_bytes());
            msg.extend_from_slice(part);
        }
        let h = hmac(&self.key, &msg);
        artifacts::hex(&h[..16])
    }

    /// Whether `p`'s tag is the one this key gives it.
    pub fn check(&self, p: &Personal<'_>, bound: &str) -> bool {
        constant_time_eq(p.tag.as_bytes(), self.tag(p.kind, p.mac, bound).as_bytes())
    }

    /// The URL of `kind` for `mac` under `base` (`http://HOST[:PORT]`).
    pub fn url(&self, base: &str, kind: PersonalKind, mac: Mac, bound: &str) -> String {
        let tag = self.tag(kind, mac, bound);
        match kind {
            PersonalKind::Config => format!("{base}{CONFIG}{}-{tag}.yaml", mac.hex()),
            PersonalKind::Installed => format!("{base}{INSTALLED}{}-{tag}", mac.hex()),
            PersonalKind::Report => format!("{base}{REPORT}{}-{tag}", mac.hex()),
            PersonalKind::File(n) => format!("{base}{API_FILE}?mac={mac}&n={n}&t={tag}"),
        }
    }
}

/// The personal URL a request presents, if its path is one (the tag not checked yet).
/// `path` for a log line: a machine's own URL without its tag (it opens the machine's
/// cloud-config or install), anything else as [`http::loggable`] shows it.
pub fn shown(path: &str) -> String {
    for prefix in [CONFIG, INSTALLED, REPORT] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let mac = rest.split('-').next().unwrap_or("");
            return format!("{prefix}{}-<tag>", http::loggable(mac));
        }
    }
    http::loggable(path).into_owned()
}

pub fn parse<'a>(path: &'a str, query: &'a str) -> Option<(PersonalKind, Mac, String)> {
    let mac_tag = |rest: &'a str| -> Option<(Mac, String)> {
        let (hex, tag) = rest.split_once('-')?;
        let mac: Mac = hex.parse().ok()?;
        (mac.hex() == hex).then(|| (mac, tag.to_string()))
    };
    if let Some(rest) = path.strip_prefix(CONFIG) {
        let (mac, tag) = mac_tag(rest.strip_suffix(".yaml")?)?;
        return Some((PersonalKind::Config, mac, tag));
    }
    if let Some(rest) = path.strip_prefix(INSTALLED) {
        let (mac, tag) = mac_tag(rest)?;
        return Some((PersonalKind::Installed, mac, tag));
    }
    if let Some(rest) = path.strip_prefix(REPORT) {
        let (mac, tag) = mac_tag(rest)?;
        return Some((PersonalKind::Report, mac, tag));
    }
    if path == API_FILE {
        let mac = http::query_param(query, "mac")?.parse().ok()?;
        let n = http::query_param(query, "n")?.parse().ok()?;
        let tag = http::query_param(query, "t").unwrap_or_default();
        return Some((PersonalKind::File(n), mac, tag));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 0x0a]);
    const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 0x0b]);

    #[test]
    fn a_tag_opens_one_kind_for_one_machine() {
        let t = Tokens::ephemeral().unwrap();
        let url = t.url("http://h", PersonalKind::Config, A, "");
        let path = url.strip_prefix("http://h").unwrap();
        let (kind, mac, tag) = parse(path, "").unwrap();
        assert_eq!((kind, mac), (PersonalKind::Config, A));
        let p = |kind, mac, tag: &str| Personal {
            kind,
            mac,
            tag: &tag.to_string().leak()[..],
            query: "",
        };
        assert!(t.check(&p(kind, mac, &tag), ""));
        assert!(!t.check(&p(PersonalKind::Installed, A, &tag), ""));
        assert!(!t.check(&p(kind, B, &tag), ""));
        assert!(!t.check(&p(kind, A, &tag[1..]), ""));
        assert!(!t.check(&p(kind, A, &tag), "bound to something else"));
        // Another key (another run without a state directory) opens nothing.
        assert!(!Tokens::ephemeral().unwrap().check(&p(kind, A, &tag), ""));
        let file = t.url("http://h", PersonalKind::File(3), A, "http://api/k");
        assert!(file.starts_with("http://h/_/api?mac=52:54:00:00:00:0a&n=3&t="));
        let (_, q) = file.split_once('?').unwrap();
        assert_eq!(parse(API_FILE, q).unwrap().0, PersonalKind::File(3));
        for bad in [
            "/_/config/5254000000aa.yaml",
            "/_/config/52:54:00:00:00:0a-x.yaml",
            "/_/installed/../x",
        ] {
            assert_eq!(parse(bad, ""), None, "{bad}");
        }
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = testkit::tempdir("tokens-key");
        let k = Tokens::in_state_dir(&d).unwrap();
        let again = Tokens::in_state_dir(&d).unwrap();
        assert_eq!(
            k.tag(PersonalKind::Config, A, ""),
            again.tag(PersonalKind::Config, A, "")
        );
        let mode = std::fs::metadata(d.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage in its place is replaced, never used; a symlink is not followed.
        std::fs::write(d.join(KEY_FILE), "short").unwrap();
        let fresh = Tokens::in_state_dir(&d).unwrap();
        assert_ne!(
            fresh.tag(PersonalKind::Config, A, ""),
            k.tag(PersonalKind::Config, A, "")
        );
        std::fs::remove_file(d.join(KEY_FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join(KEY_FILE)).unwrap();
        Tokens::in_state_dir(&d).unwrap();
        assert!(std::fs::symlink_metadata(d.join(KEY_FILE))
            .unwrap()
            .is_file());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 ("Jefe"): a short key is zero-padded, as ours are 32 bytes.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            artifacts::hex(&hmac(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Item: per-machine URLs were written whole into 404 lines.
    #[test]
    fn a_machines_url_is_logged_without_its_tag() {
        let t = Tokens::from_hex(&"ab".repeat(32)).unwrap();
        let url = t.url("", PersonalKind::Config, A, "n");
        let tag = t.tag(PersonalKind::Config, A, "n");
        assert!(url.contains(&tag));
        let logged = shown(&url);
        assert!(!logged.contains(&tag), "{logged}");
        assert_eq!(logged, "/_/config/52540000000a-<tag>");
        let done = t.url("", PersonalKind::Installed, A, "n");
        assert!(!shown(&done).contains(&t.tag(PersonalKind::Installed, A, "n")));
        assert_eq!(super::shown("/kernel"), "/kernel");
    }

    /// Item: a boot's nonce is the same for the same record on every replica sharing the key,
    /// new with every change to the record, and unguessable without the key.
    #[test]
    fn a_boots_nonce_follows_its_record_and_the_key() {
        let t = Tokens::from_hex(&"ab".repeat(32)).unwrap();
        let same = Tokens::from_hex(&"ab".repeat(32)).unwrap();
        let other = Tokens::from_hex(&"cd".repeat(32)).unwrap();
        let n = t.boot_nonce(A, 7, 100);
        assert_eq!(n.len(), 32);
        assert_eq!(n, same.boot_nonce(A, 7, 100));
        assert_ne!(n, t.boot_nonce(A, 8, 100));
        assert_ne!(n, t.boot_nonce(A, 7, 101));
        assert_ne!(n, t.boot_nonce(Mac([0x52, 0x54, 0, 0, 0, 0xb]), 7, 100));
        assert_ne!(n, other.boot_nonce(A, 7, 100));
        let next = t.next_nonce(&n);
        assert!(next != n && next == same.next_nonce(&n));
        // Never a tag of the same inputs.
        assert_ne!(n, t.tag(PersonalKind::Config, A, "7"));
    }
}
