//! Release downloads against a local HTTP server that misbehaves on purpose: drops the connection
//! mid-file (the download resumes with a Range request and still verifies), publishes a wrong
//! checksum (refused, nothing cached), or none (accepted unverified).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use artifacts::download::{download, DownloadError, Outcome};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy)]
enum Sum {
    Right,
    Wrong,
    None,
}

struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
    ranged: Arc<AtomicUsize>,
}

/// Serves `data` at /x.iso. The first `drops` full-body responses stop halfway and close.
fn serve(data: Vec<u8>, sum: Sum, drops: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranged = Arc::new(AtomicUsize::new(0));
    let (r, g) = (requests.clone(), ranged.clone());
    let hex: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::thread::spawn(move || {
        let mut dropped = 0;
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut range: Option<u64> = None;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse().ok();
                }
            }
            if path.ends_with(".sha256") {
                let body = match sum {
                    Sum::Right => format!("{hex}  x.iso\n"),
                    Sum::Wrong => format!("{}  x.iso\n", "0".repeat(64)),
                    Sum::None => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            if path != "/x.iso" {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            r.fetch_add(1, Ordering::SeqCst);
            let start = range.unwrap_or(0) as usize;
            if range.is_some() {
                g.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    data.len() - start,
                    data.len() - 1,
                    data.len()
                );
                let _ = s.write_all(&data[start..]);
            } else {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                if dropped < drops {
                    dropped += 1;
                    let _ = s.write_all(&data[..data.len() / 2]);
                    let _ = s.flush();
                    continue; // closes mid-body
                }
                let _ = s.write_all(&data);
            }
        }
    });
    Server {
        base,
        requests,
        ranged,
    }
}

fn data() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn dest(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daybreak-dl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.join("cache/x.iso")
}

#[test]
fn dropped_connection_resumes_and_verifies() {
    let data = data();
    let srv = serve(data.clone(), Sum::Right, 1);
    let dest = dest("resume");
    let mut seen = 0;
    let out = download(&format!("{}/x.iso", srv.base), &dest, &mut |n, _| seen = n).unwrap();
    assert_eq!(
        out,
        Outcome::Downloaded {
            bytes: data.len() as u64,
            resumed: 1,
            verified: true
        }
    );
    assert!(std::fs::read(&dest).unwrap() == data);
    assert_eq!(seen, data.len() as u64);
    assert_eq!(
        srv.ranged.load(Ordering::SeqCst),
        1,
        "the second request resumed with a Range"
    );
    // Complete in the cache: reused without asking the server.
    let before = srv.requests.load(Ordering::SeqCst);
    assert_eq!(
        download(&format!("{}/x.iso", srv.base), &dest, &mut |_, _| {}).unwrap(),
        Outcome::Cached
    );
    assert_eq!(srv.requests.load(Ordering::SeqCst), before);
}

#[test]
fn wrong_checksum_is_refused_and_nothing_is_cached() {
    let srv = serve(data(), Sum::Wrong, 0);
    let dest = dest("wrong");
    let e = download(&format!("{}/x.iso", srv.base), &dest, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DownloadError::Checksum { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("does not match its published checksum"),
        "{e}"
    );
    assert!(!dest.exists());
    let leftovers = std::fs::read_dir(dest.parent().unwrap()).unwrap().count();
    assert_eq!(leftovers, 0, "the partial file was deleted");
}

#[test]
fn no_published_checksum_is_accepted_unverified() {
    let data = data();
    let srv = serve(data.clone(), Sum::None, 0);
    let dest = dest("nosum");
    let out = download(&format!("{}/x.iso", srv.base), &dest, &mut |_, _| {}).unwrap();
    assert_eq!(
        out,
        Outcome::Downloaded {
            bytes: data.len() as u64,
            resumed: 0,
            verified: false
        }
    );
    assert!(std::fs::read(&dest).unwrap() == data);
}

#[test]
fn missing_release_is_a_clear_error() {
    let srv = serve(data(), Sum::None, 0);
    let dest = dest("missing");
    let e = download(&format!("{}/nope.iso", srv.base), &dest, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(e, DownloadError::Status { status: 404, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("check the release keys"), "{e}");
}
