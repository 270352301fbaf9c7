//! The tokio driver: requests arrive on the listening socket and go to the [`Endpoint`], which
//! decides; each started transfer gets its own socket connected to the client (its transfer
//! ID) and a task that feeds the [`Transfer`] machine. Refusals are sent from the listening
//! socket, so saying no costs no descriptor.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::endpoint::{Action, Budget, Endpoint, Ignored};
use crate::transfer::{Limits, Status, Transfer};

/// Files by name, held in memory: iPXE binaries are small and asked for by every booting machine.
pub type Files = HashMap<String, bytes::Bytes>;

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
    /// Dropped unanswered: the source was over its request rate.
    pub rate_limited: AtomicU64,
    /// Left unanswered while every transfer slot was in use.
    pub busy: AtomicU64,
    /// Transfers whose client had not answered yet, ended to make room for a new request.
    pub evicted: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Packets sent again after a timeout.
    pub retransmits: AtomicU64,
}

/// Exact name first, then a case-insensitive match (some firmware upper-cases names).
fn lookup(files: &Files, name: &str) -> Option<bytes::Bytes> {
    files.get(name).cloned().or_else(|| {
        files
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    })
}

/// Client-chosen text (file names, error messages) as it may go into a log line: control
/// characters escaped, at most 200 characters, so a request cannot forge or flood log lines.
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= 200 && !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out: String = s.chars().take(200).flat_map(char::escape_default).collect();
    if s.chars().nth(200).is_some() {
        out.push('…');
    }
    out.into()
}

/// Where requests arrive. Besides the datagram and its sender, a listener may tell the local
/// address the request was sent to: on a link with several addresses, the transfer must answer
/// from that one (firmware ignores a reply from any other), and an unbound socket would leave
/// the choice to the routing table. Replies sent from the listener (refusals) go from it too.
pub trait Listener: Send + Sync + 'static {
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<(usize, SocketAddr, Option<Ipv4Addr>)>> + Send;
    fn send_to(
        &self,
        data: &[u8],
        to: SocketAddr,
        from: Option<Ipv4Addr>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// The address the listener is bound to (unspecified for all).
    fn local_ip(&self) -> Ipv4Addr;
}

impl Listener for UdpSocket {
    async fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
        let (n, peer) = UdpSocket::recv_from(self, buf).await?;
        Ok((n, peer, None))
    }
    async fn send_to(
        &self,
        data: &[u8],
        to: SocketAddr,
        _from: Option<Ipv4Addr>,
    ) -> std::io::Result<()> {
        UdpSocket::send_to(self, data, to).await.map(|_| ())
    }
    fn local_ip(&self) -> Ipv4Addr {
        match self.local_addr() {
            Ok(SocketAddr::V4(a)) => *a.ip(),
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }
}

/// How a transfer ended, as the server's caller hears of it (for its log lines and boot events).
#[derive(Debug, Clone)]
pub struct Report {
    pub peer: SocketAddr,
    pub file: String,
    pub bytes: usize,
    pub ms: u64,
    pub blksize: u16,
    pub windowsize: u16,
    pub retransmits: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// UEFI read the size from the OACK and ended the transfer, as it does before the real one.
    SizeProbe,
    Aborted {
        code: u16,
        message: String,
    },
    /// `confirmed`: the client had answered before it went silent (else: a forged request, or a
    /// client gone before its first ACK).
    TimedOut {
        confirmed: bool,
    },
}

/// Where [`Report`]s go.
pub type Reports = Arc<dyn Fn(Report) + Send + Sync>;

/// Whether an address belongs to a machine that just booted with us (a PXE exchange): such a
/// client's transfer is not evicted for a request from an address nobody knows.
pub type Known = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The log lines of a transfer's end; `mac` is the client's, when the caller knows it.
pub fn log_report(r: &Report, mac: Option<&dyn std::fmt::Display>) {
    let file = shown(&r.file);
    let mac = mac.unwrap_or(&"-");
    match &r.outcome {
        Outcome::Complete => tracing::info!(
            client = %r.peer, mac = %mac, file = %file, bytes = r.bytes, ms = r.ms, blksize = r.blksize,
            windowsize = r.windowsize, retransmits = r.retransmits, "tftp sent"
        ),
        Outcome::SizeProbe => {
            tracing::debug!(client = %r.peer, mac = %mac, file = %file, "tftp size probe answered")
        }
        Outcome::Aborted { code, message } => tracing::warn!(
            client = %r.peer, mac = %mac, file = %file, code, message = %shown(message),
            "tftp transfer aborted by client"
        ),
        Outcome::TimedOut { confirmed: true } => {
            tracing::warn!(client = %r.peer, mac = %mac, file = %file, ms = r.ms, "tftp transfer timed out")
        }
        Outcome::TimedOut { confirmed: false } => tracing::debug!(
            client = %r.peer, mac = %mac, file = %file,
            "tftp: no answer to our first packet (a forged request, or a client gone)"
        ),
    }
}

/// What a transfer task tells the endpoint.
enum Event {
    Confirmed(SocketAddr, u64),
    /// The client answered without taking data (it aborted).
    Answered(SocketAddr, u64),
    Finished(SocketAddr, u64),
}

/// Serves requests arriving on `socket` until the future is dropped; transfers already running
/// finish on their own tasks.
pub async fn run<L: Listener>(
    socket: L,
    files: Arc<Files>,
    limits: Limits,
    budget: Budget,
    stats: Arc<Stats>,
    reports: Reports,
    known: Known,
) {
    let bound_ip = socket.local_ip();
    let mut endpoint = Endpoint::new(limits, budget);
    let mut tasks: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer, to) = tokio::select! {
            Some(ev) = events.recv() => {
                match ev {
                    Event::Confirmed(peer, id) => endpoint.on_confirmed(peer, id),
                    Event::Answered(peer, id) => endpoint.on_answered(peer, id),
                    Event::Finished(peer, id) => {
                        endpoint.on_finished(peer, id);
                        tasks.remove(&id);
                    }
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "tftp receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = &buf[..n];
        let is_known = known(peer.ip());
        match endpoint.on_request(peer, request, Instant::now(), is_known, |name| {
            lookup(&files, name)
        }) {
            Action::Start {
                id,
                stop,
                evicted,
                transfer,
                send,
            } => {
                if evicted > 0 {
                    let before = stats.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
                    if before / 1000 != (before + evicted as u64) / 1000 || before == 0 {
                        tracing::warn!(
                            client = %peer,
                            evicted = before + evicted as u64,
                            "tftp: every transfer slot is in use; transfers whose client never \
                             answered make room (counted since start, logged once in a thousand)"
                        );
                    }
                }
                for h in stop.iter().filter_map(|old| tasks.remove(old)) {
                    h.abort();
                }
                let (stats, events, reports) = (stats.clone(), events_tx.clone(), reports.clone());
                // Answer from the address the client asked.
                let local_ip = to.filter(|a| !a.is_unspecified()).unwrap_or(bound_ip);
                let task = tokio::spawn(async move {
                    if let Some(r) =
                        serve_one(*transfer, send, peer, local_ip, id, &stats, &events).await
                    {
                        reports(r);
                    }
                    let _ = events.send(Event::Finished(peer, id));
                });
                tasks.insert(id, task.abort_handle());
            }
            Action::Refuse(refused) => {
                if crate::packet::Packet::parse(request).is_err() {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(client = %peer, reason = %shown(&refused.reason), "tftp request refused");
                let _ = socket.send_to(&refused.packet, peer, to).await;
            }
            Action::Ignore(why @ (Ignored::RateLimited | Ignored::Busy)) => {
                let (counter, what) = match why {
                    Ignored::RateLimited => (
                        &stats.rate_limited,
                        "requests over the rate limit are dropped",
                    ),
                    _ => (
                        &stats.busy,
                        "every transfer slot is in use; requests wait for the client to ask again",
                    ),
                };
                // Counted always, logged once in a thousand: a flood must not flood the log too.
                if counter.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::warn!(client = %peer, "tftp: {what}");
                }
            }
            Action::Ignore(Ignored::Duplicate) => {}
        }
    }
}

async fn serve_one(
    mut t: Transfer,
    mut out: Vec<Vec<u8>>,
    peer: SocketAddr,
    local_ip: Ipv4Addr,
    id: u64,
    stats: &Stats,
    events: &mpsc::UnboundedSender<Event>,
) -> Option<Report> {
    let sock = match UdpSocket::bind((IpAddr::V4(local_ip), 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %peer, error = %e, "tftp: cannot open a transfer socket");
            return None;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::warn!(client = %peer, error = %e, "tftp: cannot reach client");
        return None;
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 1500];
    let mut sent_bytes = 0u64;
    let mut confirmed = false;
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
        if !confirmed && t.confirmed() {
            confirmed = true;
            let _ = events.send(Event::Confirmed(peer, id));
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
    // A client that aborted answered too (UEFI's size probe): it is a machine, not a forger.
    if !confirmed && matches!(t.status(), Status::ClientAborted { .. }) {
        let _ = events.send(Event::Answered(peer, id));
    }
    stats.bytes_sent.fetch_add(sent_bytes, Ordering::Relaxed);
    stats
        .retransmits
        .fetch_add(t.retransmits, Ordering::Relaxed);
    let n = &t.negotiated;
    let outcome = match t.status() {
        Status::Complete => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            Outcome::Complete
        }
        Status::ClientAborted {
            after_oack: true, ..
        } => {
            stats.aborted.fetch_add(1, Ordering::Relaxed);
            Outcome::SizeProbe
        }
        Status::ClientAborted { code, message, .. } => {
            stats.aborted.fetch_add(1, Ordering::Relaxed);
            Outcome::Aborted {
                code: *code,
                message: message.clone(),
            }
        }
        Status::TimedOut => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            Outcome::TimedOut {
                confirmed: t.confirmed(),
            }
        }
        Status::Running => return None,
    };
    Some(Report {
        peer,
        file: n.filename.clone(),
        bytes: t.file_len(),
        ms: started.elapsed().as_millis() as u64,
        blksize: n.blksize,
        windowsize: n.windowsize,
        retransmits: t.retransmits,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn client_text_cannot_forge_log_lines() {
        assert_eq!(shown("ipxe.efi"), "ipxe.efi");
        let evil = format!("a\nINFO forged\x1b[2J{}", "x".repeat(500));
        let s = shown(&evil);
        assert!(
            !s.contains('\n') && !s.contains('\x1b') && s.len() < 260,
            "{s}"
        );
    }
}
