//! Release downloads against a local HTTP server that misbehaves on purpose: drops the connection
//! mid-file (the download resumes with a Range request and still verifies), publishes a wrong
//! checksum (refused, nothing cached), or none (accepted unverified).

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use artifacts::{download, DownloadError, Outcome};
use common::Server;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy)]
enum Sum {
    Right,
    Wrong,
    None,
}

/// Serves `data` at /x.iso with the given checksum file beside it; the first `drops` full-body
/// responses stop halfway.
fn serve(data: Vec<u8>, sum: Sum, drops: usize) -> Server {
    let hex: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut routes = vec![("/x.iso".to_string(), data)];
    match sum {
        Sum::Right => routes.push(("/x.iso.sha256".into(), format!("{hex}  x.iso\n").into())),
        Sum::Wrong => routes.push((
            "/x.iso.sha256".into(),
            format!("{}  x.iso\n", "0".repeat(64)).into(),
        )),
        Sum::None => {}
    }
    common::serve(routes, "/x.iso", drops)
}

fn data() -> Vec<u8> {
    testkit::pattern(3_000_000, 1)
}

fn dest(tag: &str) -> PathBuf {
    testkit::tempdir(&format!("dl-{tag}")).join("cache/x.iso")
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

/// A checksum that cannot be fetched (the connection is cut before any answer) is an error:
/// only a 404 means the publisher has none.
#[test]
fn a_checksum_that_cannot_be_fetched_is_an_error_not_a_skip() {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let data = data();
    let body = data.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(20) {
            let Ok(mut s) = s else { continue };
            let mut first = String::new();
            let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut first);
            if first.contains(".sha256") {
                continue; // dropped without a word
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    let dest = dest("sum-unreachable");
    let e = download(&format!("{base}/x.iso"), &dest, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(e, DownloadError::Failed { .. }) && e.to_string().contains("cannot be verified"),
        "{e}"
    );
    assert!(!dest.exists());
}
