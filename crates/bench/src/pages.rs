//! Open status pages beside a boot storm: N pages on the admin listener, each following the
//! machines as the page does in a browser (`events`: one stream of server-sent events) or as a
//! page without event streams does (`poll`: `GET /api/machines` every second), until SIGTERM.
//! Prints what they were sent: events or lists, bytes, and errors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the pages got.
#[derive(Default)]
struct Got {
    updates: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// At most this long, SIGTERM or not.
const LONGEST: Duration = Duration::from_secs(900);

pub fn pages(admin: SocketAddr, n: usize, mode: &str) -> Result<()> {
    let follow = match mode {
        "events" => true,
        "poll" => false,
        other => bail!("{other}: the mode is events or poll"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let got = Arc::new(Got::default());
    let started = Instant::now();
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        for _ in 0..n {
            let got = got.clone();
            tokio::spawn(async move {
                loop {
                    let r = match follow {
                        true => stream(admin, &got).await,
                        false => list(admin, &got).await,
                    };
                    if r.is_err() {
                        got.errors.fetch_add(1, Relaxed);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::time::sleep(LONGEST) => {}
        }
        anyhow::Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "pages={n} mode={mode} seconds={secs:.1} updates={} bytes={} errors={}",
        got.updates.load(Relaxed),
        got.bytes.load(Relaxed),
        got.errors.load(Relaxed)
    );
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn request(admin: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Follows `/api/machines/events` until it ends: each event counted.
async fn stream(admin: SocketAddr, got: &Got) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(&request(admin, "/api/machines/events")).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail = [0u8; 2];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("the stream ended");
        }
        got.bytes.fetch_add(n as u64, Relaxed);
        // Events end with a blank line ("\n\n"), perhaps across reads.
        let mut prev = tail;
        for &b in &buf[..n] {
            if prev[1] == b'\n' && b == b'\n' {
                got.updates.fetch_add(1, Relaxed);
            }
            prev = [prev[1], b];
        }
        tail = prev;
    }
}

/// One `GET /api/machines`, read to its end.
async fn list(admin: SocketAddr, got: &Got) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(&request(admin, "/api/machines")).await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    if !all.starts_with(b"HTTP/1.1 200") {
        bail!("not answered");
    }
    got.bytes.fetch_add(all.len() as u64, Relaxed);
    got.updates.fetch_add(1, Relaxed);
    Ok(())
}
