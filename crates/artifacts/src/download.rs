//! Downloading a release ISO into the cache: resumable, verified, atomic.
//!
//! Data goes to `NAME.part` beside the destination. A dropped connection is resumed with a
//! `Range` request from where the file ends; a server that ignores the range starts it over. When
//! the publisher has a `URL.sha256` beside the file, the whole file is hashed and must match, or it
//! is deleted. Only then is it fsynced and renamed to its real name, so a complete name is always a
//! complete, verified file and is reused as is.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Attempts per download before giving up; each resumes where the last stopped.
const ATTEMPTS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("downloading {url} failed after {attempts} attempts: {last}")]
    Failed {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{url} answered HTTP {status}; check the release keys or the URL")]
    Status { url: String, status: u16 },
    #[error(
        "{url} does not match its published checksum (expected {expected}, got {actual}); the partial download was deleted, run again to fetch it anew"
    )]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}.sha256 is not a sha256 checksum file")]
    BadChecksumFile { url: String },
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What happened, for the caller's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file was already complete in the cache.
    Cached,
    Downloaded {
        bytes: u64,
        resumed: u32,
        verified: bool,
    },
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn part_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!("{name}.part"))
}

/// The published checksum, if the publisher has one (`URL.sha256`, "HEX  NAME" or just "HEX").
/// Only an answer saying there is none (404, 410) means none: a checksum that could not be
/// fetched is an error, never a reason to skip verifying (that is what someone in the middle
/// would arrange).
fn published_sha256(agent: &ureq::Agent, url: &str) -> Result<Option<String>, DownloadError> {
    let sum_url = format!("{url}.sha256");
    let mut last = String::new();
    let mut answer = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        match agent.get(&sum_url).call() {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let Some(mut resp) = answer else {
        return Err(DownloadError::Failed {
            url: sum_url,
            attempts: 3,
            last: format!("{last}; the published checksum could not be fetched, so the download cannot be verified"),
        });
    };
    match resp.status().as_u16() {
        200 => {}
        404 | 410 => return Ok(None),
        status => {
            return Err(DownloadError::Status {
                url: sum_url,
                status,
            })
        }
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|_| DownloadError::BadChecksumFile { url: url.into() })?;
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DownloadError::BadChecksumFile { url: url.into() });
    }
    Ok(Some(hex))
}

/// The sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    io::copy(&mut File::open(path)?, &mut h)?;
    Ok(h.finalize().into())
}

/// The bytes of a partial download already on disk (where a `Range` request starts).
pub(crate) fn part_len(part: &Path) -> u64 {
    std::fs::metadata(part).map(|m| m.len()).unwrap_or(0)
}

/// Why one attempt at a body failed: what the caller does next depends on which.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    /// An answer that is not the file (a 4xx is final, a 5xx worth another try).
    #[error("HTTP {0}")]
    Status(u16),
    /// The server sends more than the size it was asked for: refused, never resumed.
    #[error("the server sent more than the {limit} bytes expected")]
    TooLong { limit: u64 },
    /// The connection ended early, or never came up: resumable.
    #[error("{0}")]
    Network(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// One GET from `have` bytes on, appended to `part` (no further than `limit` bytes).
fn fetch_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    limit: Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), ReceiveError> {
    let have = part_len(part);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .map_err(|e| ReceiveError::Network(e.to_string()))?;
    receive(resp, part, have, limit, progress)
}

/// Puts the answer to a GET that asked for bytes `have..` (no range when `have` is 0) into
/// `part`: 206 appends, 200 starts over (the server ignored the range), 416 means nothing was
/// left. Fails when the body ends before its Content-Length, so the caller can resume.
///
/// With `limit`, a body that would make the file longer than `limit` bytes (a registry sending
/// more than the descriptor said) fails before it is written.
pub(crate) fn receive(
    resp: ureq::http::Response<ureq::Body>,
    part: &Path,
    have: u64,
    limit: Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), ReceiveError> {
    let write = |source| ReceiveError::Write {
        path: part.to_path_buf(),
        source,
    };
    let status = resp.status().as_u16();
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (mut out, start, total) = match status {
        206 => {
            let f = OpenOptions::new().append(true).open(part).map_err(write)?;
            (f, have, len.map(|l| l + have))
        }
        200 => {
            // Full body: the server ignored the range, or there was none.
            let f = File::create(part).map_err(write)?;
            (f, 0, len)
        }
        416 if have > 0 => return Ok(()), // nothing left to fetch
        s => return Err(ReceiveError::Status(s)),
    };
    let over = |n: u64| limit.is_some_and(|l| n > l);
    let too_long = || ReceiveError::TooLong {
        limit: limit.unwrap_or(0),
    };
    if total.is_some_and(over) {
        return Err(too_long());
    }
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = start;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ReceiveError::Network(e.to_string()))?;
        if n == 0 {
            break;
        }
        if over(done + n as u64) {
            return Err(too_long());
        }
        out.write_all(&buf[..n]).map_err(write)?;
        done += n as u64;
        progress(done, total);
    }
    if let Some(t) = total {
        if done < t {
            return Err(ReceiveError::Network(format!(
                "connection closed at {done} of {t} bytes"
            )));
        }
    }
    Ok(())
}

/// Fetches `url` into `part` until it holds `size` bytes whose sha256 is `sha256` (hex),
/// resuming what an earlier try left there, `tries` times at most; a body longer than `size`
/// is refused, and bytes whose sha256 is another leave `part` empty. `part` is never a link:
/// one is refused, not followed.
pub fn fetch_verified(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    size: u64,
    sha256: &str,
    tries: u32,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = String::new();
    for _ in 0..tries {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(part)?;
        if file.metadata()?.len() > size {
            file.set_len(0)?;
        }
        if part_len(part) < size {
            if let Err(e) = fetch_once(agent, url, part, Some(size), &mut |_, _| {}) {
                last = e.to_string();
                continue;
            }
        }
        if part_len(part) == size {
            if crate::digest::hex(&sha256_file(part)?).eq_ignore_ascii_case(sha256) {
                return Ok(());
            }
            file.set_len(0)?;
            return Err(io::Error::other(format!(
                "{url}: its sha256 is not the one published"
            )));
        }
    }
    Err(io::Error::other(format!(
        "{url}: not fetched in {tries} tries: {last}"
    )))
}

/// Downloads `url` to `dest` unless `dest` already exists. `progress` gets (bytes, total).
pub fn download(
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Outcome, DownloadError> {
    if dest.is_file() {
        return Ok(Outcome::Cached);
    }
    let io_err = |source| DownloadError::Io {
        path: dest.to_path_buf(),
        source,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let agent = agent();
    let expected = published_sha256(&agent, url)?;
    let part = part_name(dest);
    let mut last = String::new();
    let mut resumed = 0;
    let mut ok = false;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            resumed += 1;
            std::thread::sleep(Duration::from_millis(200 * (1 << attempt.min(5))));
        }
        match fetch_once(&agent, url, &part, None, progress) {
            Ok(()) => {
                ok = true;
                break;
            }
            Err(ReceiveError::Status(status)) if (400..500).contains(&status) => {
                return Err(DownloadError::Status {
                    url: url.into(),
                    status,
                });
            }
            Err(e) => last = e.to_string(),
        }
    }
    if !ok {
        return Err(DownloadError::Failed {
            url: url.into(),
            attempts: ATTEMPTS,
            last,
        });
    }
    if let Some(expected) = &expected {
        let actual = crate::digest::hex(&sha256_file(&part).map_err(io_err)?);
        if &actual != expected {
            let _ = std::fs::remove_file(&part);
            return Err(DownloadError::Checksum {
                url: url.into(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    let bytes = std::fs::metadata(&part).map_err(io_err)?.len();
    File::open(&part)
        .and_then(|f| f.sync_all())
        .map_err(io_err)?;
    std::fs::rename(&part, dest).map_err(io_err)?;
    Ok(Outcome::Downloaded {
        bytes,
        resumed,
        verified: expected.is_some(),
    })
}
