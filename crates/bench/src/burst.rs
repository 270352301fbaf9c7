//! `burst IFACE MACHINES SECONDS PID`: MACHINES machines power on within SECONDS, in racks of
//! [`RACK`] that come up together (each rack at a random moment of the window, its machines
//! within [`RACK_SPREAD`] of it). Each sends a DISCOVER as firmware does and, while unanswered,
//! its retries [`RETRIES`] apart; a machine with no answer after the last is unanswered.
//!
//! Open loop: a slow server does not slow the machines down, as it cannot on a real network.
//! Prints the answers, the unanswered, the retries sent, the time from a machine's first
//! DISCOVER to its first answer (p50/p99/max), the busiest second's DISCOVERs, the datagrams the
//! kernel dropped on the server's port 67 and on our port 68, and the server's peak RSS.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pxe::message::{Message, MessageType};

/// Machines that power on together.
const RACK: usize = 40;
/// How far apart a rack's machines send their first DISCOVER (their POST times differ).
const RACK_SPREAD: Duration = Duration::from_millis(500);
/// A machine's waits before each retry, then before it gives up (PXE's 4, 8, 16, 32 s).
const RETRIES: [Duration; 4] = [
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];
/// The first machine's xid; machine `i` uses `XID + i` on all its tries.
const XID: u32 = 0x5a00_0000;

/// The MAC of burst machine `i`: the same as the `dhcp` load's `i`th, so one machines file
/// names both.
pub fn mac(i: u32) -> [u8; 6] {
    [0x52, 0x54, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// A small deterministic generator (splitmix64): the same schedule every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..d`.
    fn within(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.next() % d.as_nanos().max(1) as u64)
    }
}

/// When each machine sends its first DISCOVER, from the start.
fn schedule(machines: usize, window: Duration) -> Vec<Duration> {
    let mut rng = Rng(0xdaeb_7eac);
    let rack_window = window.saturating_sub(RACK_SPREAD);
    let mut at = Vec::with_capacity(machines);
    for rack in 0..machines.div_ceil(RACK) {
        let up = rng.within(rack_window);
        for _ in 0..RACK.min(machines - rack * RACK) {
            at.push(up + rng.within(RACK_SPREAD));
        }
    }
    at
}

/// Datagrams the kernel dropped on `pid`'s UDP sockets bound to port `port` (as its network
/// namespace's /proc/PID/net/udp says, last column).
pub fn drops(pid: u32, port: u16) -> u64 {
    let suffix = format!(":{port:04X}");
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1).unwrap_or("").ends_with(&suffix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Nanoseconds since `start`, never 0 (0 means "not yet").
fn since(start: Instant) -> u64 {
    (start.elapsed().as_nanos() as u64).max(1)
}

pub fn burst(iface: &str, machines: usize, seconds: u64, pid: u32) -> Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    s.set_recv_buffer_size(8 << 20)?;
    let sock: UdpSocket = s.into();
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let rx = sock.try_clone()?;
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let me = std::process::id();
    let drops_before = (drops(pid, 67), drops(me, 68));

    let first_sent: Arc<Vec<AtomicU64>> =
        Arc::new((0..machines).map(|_| AtomicU64::new(0)).collect());
    let answered: Arc<Vec<AtomicU64>> =
        Arc::new((0..machines).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    let receiver = {
        let (answered, stop) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&mut buf) else { continue };
                let Ok(m) = Message::decode(&buf[..n]) else {
                    continue;
                };
                let i = m.xid.wrapping_sub(XID) as usize;
                if m.op == 2 && i < answered.len() {
                    let _ = answered[i].compare_exchange(
                        0,
                        since(start),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        })
    };
    let sampler = {
        let (peak_rss, stop) = (peak_rss.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak_rss.fetch_max(crate::rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // (when, machine, try): the first tries from the schedule, retries as they fall due.
    let mut due: BinaryHeap<Reverse<(Duration, u32, u8)>> =
        schedule(machines, Duration::from_secs(seconds))
            .into_iter()
            .enumerate()
            .map(|(i, at)| Reverse((at, i as u32, 0)))
            .collect();
    let mut per_second = vec![0u64; seconds as usize + 64];
    let (mut retries, mut unanswered) = (0u64, 0u64);
    while let Some(Reverse((at, i, try_))) = due.pop() {
        let wait = at.saturating_sub(start.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let m = i as usize;
        if answered[m].load(Ordering::Relaxed) != 0 {
            continue;
        }
        if usize::from(try_) == RETRIES.len() {
            unanswered += 1;
            continue;
        }
        let packet = crate::storm::request(
            MessageType::Discover,
            XID + i,
            mac(i),
            Ipv4Addr::UNSPECIFIED,
        );
        sock.send_to(&packet, dest)?;
        if try_ == 0 {
            first_sent[m].store(since(start), Ordering::Relaxed);
        } else {
            retries += 1;
        }
        if let Some(n) = per_second.get_mut(start.elapsed().as_secs() as usize) {
            *n += 1;
        }
        due.push(Reverse((at + RETRIES[usize::from(try_)], i, try_ + 1)));
    }
    // The last answers on their way.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let _ = sampler.join();

    let mut took: Vec<Duration> = (0..machines)
        .filter_map(|m| {
            let a = answered[m].load(Ordering::Relaxed);
            (a != 0).then(|| {
                Duration::from_nanos(a.saturating_sub(first_sent[m].load(Ordering::Relaxed)))
            })
        })
        .collect();
    took.sort();
    println!(
        "machines={machines} window_s={seconds} answered={} unanswered={unanswered} retries={retries} \
         peak_discovers_per_s={} p50_us={} p99_us={} max_us={} dhcp_drops={} client_drops={} \
         peak_rss_kib={}",
        took.len(),
        per_second.iter().max().unwrap_or(&0),
        crate::percentile(&took, 0.50).as_micros(),
        crate::percentile(&took, 0.99).as_micros(),
        took.last().copied().unwrap_or_default().as_micros(),
        drops(pid, 67).saturating_sub(drops_before.0),
        drops(me, 68).saturating_sub(drops_before.1),
        peak_rss.load(Ordering::Relaxed),
    );
    Ok(())
}
