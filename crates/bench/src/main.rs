//! Load generators for `bench/run.sh`. Each drives one server (Daybreak or the reference) the same
//! way and prints one line of `key=value` figures the script turns into a table.
//!
//!   daybreak-bench dhcp IFACE SECONDS CONCURRENCY [MACS]
//!   daybreak-bench burst IFACE MACHINES SECONDS PID
//!   daybreak-bench tftp HOST:PORT FILE SIZE CLIENTS ROUNDS BLKSIZE WINDOWSIZE
//!   daybreak-bench http HOST:PORT PATH CLIENTS [PID...]
//!   daybreak-bench storm IFACE SERVER N EFI,KERNEL,INITRD,ROOTFS PID [FIRST [fleet]]
//!   daybreak-bench flood SERVER SECONDS
//!   daybreak-bench attack IFACE SERVER SECONDS N
//!   daybreak-bench etcd-seed ETCD PREFIX N
//!   daybreak-bench etcd-lag ETCD PREFIX ADMIN N
//!   daybreak-bench cluster-storm IFACE N EFI,KERNEL,INITRD,ROOTFS PIDS REPLICAS FIRST RAMP KILLS
//!   daybreak-bench pages ADMIN N events|poll
//!
//! Loads are bounded in count and time and only target the address given (loopback or a test
//! namespace).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pxe::message::{Message, MessageType};

mod burst;
mod cluster;
mod etcd;
mod pages;
mod storm;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("dhcp") if args.len() == 4 || args.len() == 5 => dhcp(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args.get(4).map(|m| m.parse()).transpose()?,
        ),
        Some("burst") if args.len() == 5 => burst::burst(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args[4].parse()?,
        ),
        Some("tftp") if args.len() == 8 => tftp_load(
            args[1].parse()?,
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            args[5].parse()?,
            args[6].parse()?,
            args[7].parse()?,
        ),
        Some("http") if args.len() >= 4 => {
            let pids = args[4..]
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<u32>, _>>()?;
            http_load(args[1].parse()?, &args[2], args[3].parse()?, &pids)
        }
        Some("storm") if (6..=8).contains(&args.len()) => {
            let sizes: Vec<usize> = args[4]
                .split(',')
                .map(|s| s.parse())
                .collect::<Result<_, _>>()?;
            let sizes: [usize; 4] = sizes
                .try_into()
                .map_err(|_| anyhow::anyhow!("four sizes"))?;
            storm::storm(
                &args[1],
                args[2].parse()?,
                args[3].parse()?,
                sizes,
                args[5].parse()?,
                storm::Mode {
                    first: args.get(6).map_or(Ok(1), |f| f.parse())?,
                    fleet: args.get(7).is_some_and(|f| f == "fleet"),
                },
            )
        }
        Some("flood") if args.len() == 3 => storm::flood(args[1].parse()?, args[2].parse()?),
        Some("attack") if args.len() == 5 => storm::attack(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args[4].parse()?,
        ),
        Some("cluster-storm") if args.len() == 9 => {
            let list =
                |s: &str| -> Result<Vec<String>> { Ok(s.split(',').map(str::to_string).collect()) };
            let sizes: [usize; 4] = list(&args[3])?
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<usize>, _>>()?
                .try_into()
                .map_err(|_| anyhow::anyhow!("four sizes"))?;
            cluster::storm(
                &args[1],
                cluster::Storm {
                    n: args[2].parse()?,
                    sizes,
                    pids: list(&args[4])?
                        .iter()
                        .map(|p| p.parse())
                        .collect::<Result<_, _>>()?,
                    replicas: list(&args[5])?
                        .iter()
                        .map(|p| p.parse())
                        .collect::<Result<_, _>>()?,
                    first: args[6].parse()?,
                    ramp: args[7].parse()?,
                    kills: list(&args[8])?
                        .iter()
                        .map(|p| p.parse())
                        .collect::<Result<_, _>>()?,
                },
            )
        }
        Some("etcd-seed") if args.len() == 4 => {
            etcd::seed(args[1].parse()?, &args[2], args[3].parse()?)
        }
        Some("etcd-lag") if args.len() == 5 => etcd::lag(
            args[1].parse()?,
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
        ),
        Some("pages") if args.len() == 4 => {
            pages::pages(args[1].parse()?, args[2].parse()?, &args[3])
        }
        _ => bail!("usage: see the module docs of crates/bench/src/main.rs"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// ProxyDHCP: closed loop with CONCURRENCY DISCOVERs in flight, each with its own xid, broadcast
// from port 68 on IFACE as firmware does. Each from a MAC never seen before, or with MACS, from
// the first MACS machines in turn (the MACs of `burst`, so a machines file can name them). A
// request unanswered for 250 ms counts as lost and is replaced.

fn discover(xid: u32, macs: Option<u32>) -> Vec<u8> {
    let n = xid - FIRST_XID;
    let i = macs.map_or(n, |m| n % m.max(1));
    storm::request(
        MessageType::Discover,
        xid,
        burst::mac(i),
        Ipv4Addr::UNSPECIFIED,
    )
}

const FIRST_XID: u32 = 0x1000;

fn dhcp(iface: &str, seconds: u64, concurrency: usize, macs: Option<u32>) -> Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    s.set_recv_buffer_size(4 << 20)?;
    let sock: UdpSocket = s.into();
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

    // One thread sends and receives: each answer sends the next request at once, so the load
    // generator costs as little as it can and the server, not a hand-off between our threads,
    // sets the pace.
    let mut pending: HashMap<u32, Instant> = HashMap::with_capacity(concurrency * 2);
    let mut latencies: Vec<Duration> = Vec::with_capacity(1 << 20);
    let mut next_xid: u32 = FIRST_XID;
    let mut send = |pending: &mut HashMap<u32, Instant>| -> Result<()> {
        next_xid += 1;
        pending.insert(next_xid, Instant::now());
        sock.send_to(&discover(next_xid, macs), dest)?;
        Ok(())
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    for _ in 0..concurrency {
        send(&mut pending)?;
    }
    let (mut lost, mut sent) = (0u64, concurrency as u64);
    let mut buf = [0u8; 1500];
    let mut swept = Instant::now();
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            if let Ok(m) = Message::decode(&buf[..n]) {
                if let Some(at) = (m.op == 2).then(|| pending.remove(&m.xid)).flatten() {
                    latencies.push(at.elapsed());
                    send(&mut pending)?;
                    sent += 1;
                }
            }
        }
        // A request unanswered for 250 ms is lost, and replaced.
        if swept.elapsed() > Duration::from_millis(50) {
            swept = Instant::now();
            let expired: Vec<u32> = pending
                .iter()
                .filter(|(_, t)| t.elapsed() > Duration::from_millis(250))
                .map(|(x, _)| *x)
                .collect();
            for x in expired {
                pending.remove(&x);
                lost += 1;
                send(&mut pending)?;
                sent += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "answered={} sent={} lost={} rate={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        latencies.len(),
        sent,
        lost,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_micros(),
        percentile(&latencies, 0.90).as_micros(),
        percentile(&latencies, 0.99).as_micros(),
        percentile(&latencies, 0.999).as_micros(),
        latencies.last().copied().unwrap_or_default().as_micros(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TFTP: ROUNDS rounds of CLIENTS concurrent downloads, each checking it got SIZE bytes.

/// How a client waits for an answer: `timeout` per try, `tries` tries in all.
#[derive(Clone, Copy)]
struct Retry {
    timeout: Duration,
    tries: u32,
}

/// The throughput bench's client: quick to notice a loss (no loss is expected there).
const QUICK_RETRY: Retry = Retry {
    timeout: Duration::from_secs(1),
    tries: 6,
};

async fn tftp_one(
    server: SocketAddr,
    bind: Ipv4Addr,
    file: &str,
    (blksize, windowsize): (u16, u16),
    size: usize,
    retry: Retry,
) -> Result<usize> {
    use tftp::packet::{ack, rrq, Packet};
    let sock = tokio::net::UdpSocket::bind((bind, 0)).await?;
    let bs = blksize.to_string();
    let ws = windowsize.to_string();
    let mut opts = vec![("blksize", bs.as_str()), ("tsize", "0")];
    if windowsize > 1 {
        opts.push(("windowsize", ws.as_str()));
    }
    let request = rrq(file, "octet", &opts);
    sock.send_to(&request, server).await?;
    let mut buf = vec![0u8; 70_000];
    let mut got = 0usize;
    let mut expect: u16 = 1;
    let mut peer: Option<SocketAddr> = None;
    let mut window = 1u16;
    let mut block_size = 512usize;
    let mut in_window = 0u16;
    let mut retries = 0;
    loop {
        let (n, from) = match tokio::time::timeout(retry.timeout, sock.recv_from(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                retries += 1;
                if retries >= retry.tries {
                    bail!("timed out after {got} bytes");
                }
                match peer {
                    None => sock.send_to(&request, server).await?,
                    Some(p) => sock.send_to(&ack(expect.wrapping_sub(1)), p).await?,
                };
                in_window = 0;
                continue;
            }
        };
        retries = 0;
        if peer.is_some_and(|p| p != from) {
            continue;
        }
        peer = Some(from);
        match Packet::parse(&buf[..n]) {
            Ok(Packet::Oack { options }) => {
                for (k, v) in options {
                    match k.as_str() {
                        "blksize" => block_size = v.parse()?,
                        "windowsize" => window = v.parse()?,
                        _ => {}
                    }
                }
                sock.send_to(&ack(0), from).await?;
            }
            Ok(Packet::Data { block, data }) => {
                if block != expect {
                    // Out of order: ask again from the last good block.
                    sock.send_to(&ack(expect.wrapping_sub(1)), from).await?;
                    in_window = 0;
                    continue;
                }
                got += data.len();
                expect = expect.wrapping_add(1);
                in_window += 1;
                let last = data.len() < block_size;
                if last || in_window >= window {
                    sock.send_to(&ack(block), from).await?;
                    in_window = 0;
                }
                if last {
                    break;
                }
            }
            Ok(Packet::Error { code, message }) => bail!("server error {code}: {message}"),
            _ => {}
        }
    }
    if got != size {
        bail!("got {got} bytes, expected {size}");
    }
    Ok(got)
}

fn tftp_load(
    server: SocketAddr,
    file: &str,
    size: usize,
    clients: usize,
    rounds: usize,
    blksize: u16,
    windowsize: u16,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let failed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    rt.block_on(async {
        for round in 0..rounds {
            let mut set = tokio::task::JoinSet::new();
            for c in 0..clients {
                let (file, failed, bytes) = (file.to_string(), failed.clone(), bytes.clone());
                set.spawn(async move {
                    // Each transfer from an address of its own, as machines are (bench/run.sh
                    // adds them): per-address limits then apply as on a real network, where one
                    // machine does not fetch iPXE dozens of times a second.
                    match tftp_one(
                        server,
                        storm::address(1, (round * clients + c) % 1000),
                        &file,
                        (blksize, windowsize),
                        size,
                        QUICK_RETRY,
                    )
                    .await
                    {
                        Ok(n) => {
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("tftp transfer failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let transfers = clients * rounds;
    println!(
        "transfers={} failed={} seconds={:.3} transfers_per_s={:.1} mb_per_s={:.1}",
        transfers,
        failed.load(Ordering::Relaxed),
        secs,
        transfers as f64 / secs,
        bytes.load(Ordering::Relaxed) as f64 / secs / 1e6
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP: CLIENTS concurrent GETs of PATH, each read to the end; aggregate throughput, and the peak
// resident memory of the server processes PIDs while it ran.

/// A process's resident memory, KiB (0 when it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One download; on loopback, from an address of its own (127.1.0.1…), as separate machines.
async fn http_one(server: SocketAddr, path: &str, client: usize) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    if server.ip().is_loopback() {
        sock.bind(SocketAddr::from((
            Ipv4Addr::new(127, 1, (client / 250) as u8, (client % 250) as u8 + 1),
            0,
        )))?;
    }
    let mut s = sock.connect(server).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let (len, mut body) = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed in headers");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..p]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") {
                bail!("unexpected response: {}", text.lines().next().unwrap_or(""));
            }
            let len: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("no content-length")?
                .trim()
                .parse()?;
            break (len, (head.len() - p - 4) as u64);
        }
    };
    while body < len {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("short body: {body} of {len}");
        }
        body += n as u64;
    }
    Ok(body)
}

fn http_load(server: SocketAddr, path: &str, clients: usize, pids: &[u32]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pids) = (peak.clone(), stop.clone(), pids.to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let total: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
                peak.fetch_max(total, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let start = Instant::now();
    let (bytes, failed) = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for c in 0..clients {
            let path = path.to_string();
            set.spawn(async move { http_one(server, &path, c).await });
        }
        let (mut bytes, mut failed) = (0u64, 0u64);
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(n)) => bytes += n,
                Ok(Err(e)) => {
                    eprintln!("http download failed: {e}");
                    failed += 1;
                }
                Err(_) => failed += 1,
            }
        }
        (bytes, failed)
    });
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    println!(
        "clients={} failed={} seconds={:.3} gbit_per_s={:.2} mib_per_s={:.0} peak_rss_kib={}",
        clients,
        failed,
        secs,
        bytes as f64 * 8.0 / secs / 1e9,
        bytes as f64 / secs / (1 << 20) as f64,
        peak.load(Ordering::Relaxed)
    );
    Ok(())
}
