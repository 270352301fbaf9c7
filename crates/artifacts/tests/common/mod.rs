//! A local HTTP server that misbehaves on purpose, for download tests: it serves fixed bodies by
//! path, honours `Range: bytes=N-`, and cuts the first few full responses of one path halfway.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Server {
    pub base: String,
    /// Requests to the token endpoint (bearer-auth servers).
    pub tokens: Arc<AtomicUsize>,
    /// Requests for the flaky path, and how many of them asked for a range.
    pub requests: Arc<AtomicUsize>,
    pub ranged: Arc<AtomicUsize>,
    /// Every request, any path.
    pub all: Arc<AtomicUsize>,
}

/// Serves `routes`; the first `drops` full-body responses for `flaky` stop halfway and close.
/// Other paths get 404.
pub fn serve(routes: Vec<(String, Vec<u8>)>, flaky: &str, drops: usize) -> Server {
    serve_auth(routes, flaky, drops, None)
}

/// As [`serve`]; with `token`, paths under /v2/ want `Authorization: Bearer TOKEN` and answer
/// 401 with a registry's bearer challenge otherwise, and /token hands the token out.
pub fn serve_auth(
    routes: Vec<(String, Vec<u8>)>,
    flaky: &str,
    drops: usize,
    token: Option<&'static str>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranged = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(AtomicUsize::new(0));
    let (r, g, t, a) = (
        requests.clone(),
        ranged.clone(),
        tokens.clone(),
        all.clone(),
    );
    let realm = format!("{base}/token");
    let flaky = flaky.to_string();
    std::thread::spawn(move || {
        let mut dropped = 0;
        for stream in listener.incoming().take(100) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            a.fetch_add(1, Ordering::SeqCst);
            let mut range: Option<usize> = None;
            let mut authorized = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse().ok();
                }
                if let Some(tok) = token {
                    authorized |= h.trim() == format!("Authorization: Bearer {tok}")
                        || lower.trim()
                            == format!("authorization: bearer {}", tok.to_ascii_lowercase());
                }
            }
            if let Some(tok) = token {
                if path.starts_with("/token?") && path.contains("scope=repository%3A") {
                    t.fetch_add(1, Ordering::SeqCst);
                    let body = format!(r#"{{"token":"{tok}"}}"#);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    continue;
                }
                if path.starts_with("/v2/") && !authorized {
                    let _ = write!(
                        s,
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"test-registry\",scope=\"repository:test/img:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    continue;
                }
            }
            let Some((_, data)) = routes.iter().find(|(p, _)| *p == path) else {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            if path == flaky {
                r.fetch_add(1, Ordering::SeqCst);
                if range.is_some() {
                    g.fetch_add(1, Ordering::SeqCst);
                }
            }
            if let Some(start) = range.filter(|&n| n <= data.len()) {
                let _ = write!(
                    s,
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    data.len() - start,
                    data.len().saturating_sub(1),
                    data.len()
                );
                let _ = s.write_all(&data[start..]);
                continue;
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            if path == flaky && dropped < drops {
                dropped += 1;
                let _ = s.write_all(&data[..data.len() / 2]);
                let _ = s.flush();
                continue; // closes mid-body
            }
            let _ = s.write_all(data);
        }
    });
    Server {
        base,
        tokens,
        requests,
        ranged,
        all,
    }
}

/// Boot files of `source` (any `container_image` form, amd64), through the one entry, as
/// `daybreak` does it, with no progress reports.
pub fn open_quietly(
    source: &str,
    state: &std::path::Path,
) -> Result<artifacts::BootSet, artifacts::SourceError> {
    struct Quiet;
    impl artifacts::Report for Quiet {
        fn event(&self, _: artifacts::Event) {}
    }
    artifacts::open(
        &artifacts::Request {
            source: source.to_string(),
            arch: "amd64".into(),
            insecure: false,
            compression: artifacts::Compression::Gzip,
            state_dir: state.to_path_buf(),
            peers: None,
        },
        &Quiet,
        &mut |_| {},
    )
}
