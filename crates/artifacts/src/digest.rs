//! Content digests, as registries and OCI documents write them, and the only form in which a
//! digest travels inside Daybreak.
//!
//! A digest names a blob on disk (`blobs/sha256/<hex>`) and an entry in the store, so a string
//! that merely claims to be one (`../../etc/cron.d`, `/root`, 10 KB of escape codes) must never
//! get that far. [`Digest`] can only hold `sha256:` and 64 lowercase hex digits: documents that
//! carry anything else fail to parse, and every use downstream gets a value that is safe as one
//! path component and in a log line. Text that failed to parse is shown through [`printable`].

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `sha256:` followed by 64 lowercase hex digits; nothing else can be built.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// A string that is not a digest Daybreak accepts; its text is kept only in printable form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a digest Daybreak accepts ({why})")]
pub struct BadDigest {
    shown: String,
    why: &'static str,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, BadDigest> {
        let bad = |why| BadDigest {
            shown: printable(s, 80),
            why,
        };
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("no algorithm: prefix"))?;
        match algo {
            "sha256" => {}
            "sha512" => return Err(bad("sha512 is not supported; images use sha256")),
            _ => return Err(bad("the algorithm must be sha256")),
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("sha256: must be followed by 64 lowercase hex digits"));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hash(&Sha256::digest(data))
    }

    /// The digest with the given sha256 value.
    pub fn from_hash(hash: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex(hash)))
    }

    /// The 64 hex digits: safe as a file name.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = BadDigest;
    fn try_from(s: String) -> Result<Digest, BadDigest> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl std::str::FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Digest, BadDigest> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

pub fn hex(b: &[u8]) -> String {
    use fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Untrusted text made fit for a message or a log line: quoted, control characters and
/// quotes escaped, cut to `max` characters (with `…` when cut), so a hostile name can neither
/// forge log lines nor flood them.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_hex_is_a_digest() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "ab".repeat(32));
        for bad in [
            "../../../x".to_string(),
            "/etc/cron.d".to_string(),
            "sha256:../../etc".to_string(),
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/", "a".repeat(64)),
            format!("sha512:{}", "a".repeat(128)),
            format!("md5:{}", "a".repeat(32)),
            String::new(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bogus_digest_is_never_shown_raw() {
        let evil = format!("x\n\x1b[31mINFO forged line{}", "A".repeat(500));
        let msg = Digest::parse(&evil).unwrap_err().to_string();
        assert!(!msg.contains('\n') && !msg.contains('\x1b'), "{msg}");
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn documents_with_bad_digests_do_not_deserialize() {
        let d: Result<Digest, _> = serde_json::from_str("\"/etc/passwd\"");
        assert!(d.is_err());
        let good = Digest::of(b"x");
        let back: Digest = serde_json::from_str(&serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(back, good);
    }
}
