//! The tokio driver: requests arrive on the listening socket; each accepted transfer gets its own
//! socket connected to the client (its transfer ID), and a task that feeds the state machine.

use std::collections::HashMap;
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

/// A transfer in progress, by client address.
struct Active {
    id: u64,
    request: Vec<u8>,
    task: tokio::task::AbortHandle,
}

type ActiveMap = Arc<Mutex<HashMap<SocketAddr, Active>>>;

struct Shared {
    files: Arc<Files>,
    limits: Limits,
    stats: Arc<Stats>,
    active: ActiveMap,
    local_ip: Ipv4Addr,
    next_id: AtomicU64,
}

/// Starts a transfer task for `peer`, replacing any it had.
fn start(shared: &Arc<Shared>, peer: SocketAddr, request: Vec<u8>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let sh = shared.clone();
    let req = request.clone();
    let mut active = shared.active.lock().unwrap_or_else(|e| e.into_inner());
    let task = tokio::spawn(async move {
        serve_one(req, peer, sh.local_ip, &sh.files, &sh.limits, &sh.stats).await;
        let mut active = sh.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.get(&peer).is_some_and(|a| a.id == id) {
            active.remove(&peer);
        }
    });
    if let Some(old) = active.insert(
        peer,
        Active {
            id,
            request,
            task: task.abort_handle(),
        },
    ) {
        old.task.abort();
    }
}

/// Serves requests arriving on `socket` forever. Cancel by dropping the future; transfers already
/// running finish on their own tasks.
pub async fn run(socket: UdpSocket, files: Arc<Files>, limits: Limits, stats: Arc<Stats>) {
    let local_ip = match socket.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let shared = Arc::new(Shared {
        files,
        limits,
        stats,
        active: Arc::default(),
        local_ip,
        next_id: AtomicU64::new(0),
    });
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
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = buf[..n].to_vec();
        let same = shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .map(|a| a.request == request);
        match same {
            // A new client, or a client that moved on to another request: the old transfer is
            // abandoned (a client cannot run two transfers from one port).
            None | Some(false) => start(&shared, peer, request),
            // The same request again: either a retransmission while we answer it (the transfer
            // answers for itself), or a fresh request racing the end of the previous one (UEFI
            // asks again right after aborting its size probe). Look again once that has settled.
            Some(true) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let still = shared
                        .active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(&peer);
                    if !still {
                        start(&shared, peer, request);
                    }
                });
            }
        }
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
