//! The tokio driver: requests arrive on the listening socket; each accepted transfer gets its own
//! socket connected to the client (its transfer ID), and a task that feeds the state machine.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::transfer::{Limits, Status, Transfer};

/// Files by name, held in memory: iPXE binaries are small and asked for by every booting machine.
pub type Files = HashMap<String, Arc<[u8]>>;

/// Counters for a status page or metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    /// Ended by the client, usually UEFI's size probe.
    pub aborted: AtomicU64,
    pub timed_out: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// Exact name first, then a case-insensitive match (some firmware upper-cases names).
fn lookup(files: &Files, name: &str) -> Option<Arc<[u8]>> {
    files.get(name).cloned().or_else(|| {
        files
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    })
}

/// Serves requests arriving on `socket` forever. Cancel by dropping the future; transfers already
/// running finish on their own tasks.
pub async fn run(socket: UdpSocket, files: Arc<Files>, limits: Limits, stats: Arc<Stats>) {
    let local_ip = match socket.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let active: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "tftp receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        // A client that repeats its request while the first is being answered gets one transfer.
        if !active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer)
        {
            continue;
        }
        let request = buf[..n].to_vec();
        let files = files.clone();
        let limits = limits.clone();
        let stats = stats.clone();
        let active = active.clone();
        tokio::spawn(async move {
            serve_one(request, peer, local_ip, &files, &limits, &stats).await;
            active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&peer);
        });
    }
}

async fn serve_one(
    request: Vec<u8>,
    peer: SocketAddr,
    local_ip: Ipv4Addr,
    files: &Files,
    limits: &Limits,
    stats: &Stats,
) {
    let sock = match UdpSocket::bind((IpAddr::V4(local_ip), 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %peer, error = %e, "tftp: cannot open a transfer socket");
            return;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::warn!(client = %peer, error = %e, "tftp: cannot reach client");
        return;
    }
    let started = Instant::now();
    let mut out = Vec::new();
    let mut t = match Transfer::start(&request, |n| lookup(files, n), limits, started, &mut out) {
        Ok(t) => t,
        Err(refused) => {
            if crate::packet::Packet::parse(&request).is_err() {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(client = %peer, reason = %refused.reason, "tftp request refused");
            let _ = sock.send(&refused.packet).await;
            return;
        }
    };
    let mut buf = vec![0u8; 1500];
    let mut sent_bytes = 0u64;
    loop {
        for p in out.drain(..) {
            sent_bytes += p.len().saturating_sub(4) as u64;
            if let Err(e) = sock.send(&p).await {
                tracing::debug!(client = %peer, error = %e, "tftp send failed");
            }
        }
        if t.status() != &Status::Running {
            break;
        }
        let deadline = tokio::time::Instant::from_std(t.deadline());
        match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                t.on_packet(&buf[..n], Instant::now(), &mut out);
            }
            // ICMP port unreachable surfaces here on a connected socket: the client is gone.
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "tftp receive failed");
                t.on_timeout(Instant::now().max(t.deadline()), &mut out);
            }
            Err(_elapsed) => {
                t.on_timeout(Instant::now(), &mut out);
            }
        }
    }
    stats.bytes_sent.fetch_add(sent_bytes, Ordering::Relaxed);
    let n = &t.negotiated;
    let ms = started.elapsed().as_millis() as u64;
    match t.status() {
        Status::Complete => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                client = %peer, file = %n.filename, bytes = t.file_len(), ms,
                blksize = n.blksize, windowsize = n.windowsize, retransmits = t.retransmits,
                "tftp sent"
            );
        }
        Status::ClientAborted {
            after_oack: true, ..
        } => {
            stats.aborted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, file = %n.filename, "tftp size probe answered");
        }
        Status::ClientAborted { code, message, .. } => {
            stats.aborted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, file = %n.filename, code, message = %message, "tftp transfer aborted by client");
        }
        Status::TimedOut => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, file = %n.filename, ms, "tftp transfer timed out");
        }
        Status::Running => {}
    }
}
