//! A boot storm: N simulated machines powered on at once, each doing what UEFI firmware and
//! iPXE do, from an address of its own: DISCOVER (answered by ProxyDHCP), REQUEST to port 4011
//! (from its address, which it names in `ciaddr`, as firmware does once it has a lease),
//! the EFI loader over TFTP (blksize 1468, windowsize 4, tsize), then over HTTP the boot
//! script, kernel, initrd and squashfs, each checked whole. And a flood to run beside it:
//! forged TFTP requests never acknowledged and idle TCP connections, from many addresses.
//!
//! With a fleet (`fleet`), each machine checks that it got what its profile and state say: a
//! machine that is installed (every fourth) its disk, the others their own cloud-config (it
//! names them). And an attacker to run beside that storm: it forges DHCPREQUESTs for the
//! booting MACs, asks for their scripts by MAC, and floods from the addresses its forged
//! requests made "known".
//!
//! Only the server address given is targeted (a test namespace); every loop is bounded in count
//! and time. Source addresses must exist on the interface (bench/run.sh adds them).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pxe::message::{Message, MessageType};
use tokio::sync::oneshot;

/// How EDK2's PXE waits for a TFTP answer (`PXEBC_MTFTP_TIMEOUT`, `PXEBC_MTFTP_RETRIES`): 4 s
/// a try, 6 tries. A request the server leaves unanswered because it is full is asked again.
pub(crate) const EDK2_RETRY: crate::Retry = crate::Retry {
    timeout: Duration::from_secs(4),
    tries: 6,
};

/// The address of machine `i` in a block of addresses starting at 10.79.`first`.1.
pub fn address(first: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 79, first + (i / 250) as u8, (i % 250) as u8 + 1)
}

const PHASES: [&str; 8] = [
    "dhcp", "pxe4011", "tftp", "script", "config", "kernel", "initrd", "rootfs",
];

/// Where the storm's machines are and what they expect.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Machine `i` boots from [`address`]`(first, i)`.
    pub first: u8,
    /// A fleet's machines: every fourth is installed and must get its disk, the others their
    /// own cloud-config.
    pub fleet: bool,
}

/// Machine `i`'s MAC (the fleet's machines file names the same).
pub fn mac_of(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x99, (i >> 8) as u8, i as u8]
}

/// A machine's phases, each timed when it happened (an installed machine fetches no files).
type Times = [Option<Duration>; 8];

/// Why a machine failed: it got something other than what its profile and state say.
const WRONG: &str = "wrong answer";

/// What EDK2 sends: a DISCOVER, or the REQUEST to port 4011 with its boot item, from `ciaddr`.
pub fn request(mtype: MessageType, xid: u32, mac: [u8; 6], ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut options = vec![
        (60, b"PXEClient:Arch:00007:UNDI:003000".to_vec()),
        (93, vec![0, 7]),
        (94, vec![1, 3, 0]),
        (97, [&[0u8][..], &mac, &[0u8; 10]].concat()),
    ];
    if mtype == MessageType::Request {
        options.push((43, vec![71, 4, 0x80, 0, 0, 0, 255]));
    }
    let mut m = Message::client_request(mtype, xid, mac, options);
    m.ciaddr = ciaddr;
    m.encode()
}

pub(crate) type Waiting = Arc<Mutex<HashMap<u32, oneshot::Sender<Message>>>>;

/// One DHCP exchange, retried as firmware does (up to 4 tries, 1, 2, 4 s apart).
pub(crate) async fn exchange(
    sock: &tokio::net::UdpSocket,
    waiting: &Waiting,
    to: SocketAddrV4,
    packet: &[u8],
    xid: u32,
) -> Result<Message> {
    for wait in [1, 2, 4, 4] {
        let (tx, rx) = oneshot::channel();
        waiting.lock().unwrap().insert(xid, tx);
        sock.send_to(packet, to).await?;
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(wait), rx).await {
            return Ok(m);
        }
    }
    waiting.lock().unwrap().remove(&xid);
    bail!("no answer from {to}")
}

/// The port 4011 exchange, from the machine's own address (port 68, beside the shared socket
/// that hears broadcasts), with the same retries.
pub(crate) async fn exchange_4011(
    src: Ipv4Addr,
    to: SocketAddrV4,
    packet: &[u8],
    xid: u32,
) -> Result<Message> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddrV4::new(src, 68).into())?;
    let sock = tokio::net::UdpSocket::from_std(s.into())?;
    let mut buf = [0u8; 1500];
    for wait in [1, 2, 4, 4] {
        sock.send_to(packet, to).await?;
        let end = tokio::time::Instant::now() + Duration::from_secs(wait);
        while let Ok(Ok(n)) = tokio::time::timeout_at(end, sock.recv(&mut buf)).await {
            match Message::decode(&buf[..n]) {
                Ok(m) if m.op == 2 && m.xid == xid => return Ok(m),
                _ => {}
            }
        }
    }
    bail!("no answer from {to}")
}

pub(crate) async fn http_get(src: Ipv4Addr, server: SocketAddr, path: &str) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    let mut s = sock.connect(server).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    let p = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&all[..p]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("{path}: {}", head.lines().next().unwrap_or(""));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    let body = all.split_off(p + 4);
    if body.len() != len {
        bail!("{path}: {} of {len} bytes", body.len());
    }
    Ok(body)
}

/// One machine's boot: the time of each phase.
async fn machine(
    i: usize,
    sock: Arc<tokio::net::UdpSocket>,
    waiting: Waiting,
    server: Ipv4Addr,
    sizes: [usize; 4],
    mode: Mode,
) -> Result<Times> {
    let mac = mac_of(i);
    let xid = 0x5700_0000 | i as u32;
    let src = address(mode.first, i);
    let mut t: Times = [None; 8];
    let mut lap = Instant::now();
    let mut phase = |k: usize, t: &mut Times| {
        t[k] = Some(lap.elapsed());
        lap = Instant::now();
    };
    let offer = exchange(
        &sock,
        &waiting,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &request(MessageType::Discover, xid, mac, Ipv4Addr::UNSPECIFIED),
        xid,
    )
    .await
    .context("DISCOVER")?;
    if offer.file != b"ipxe.efi" {
        bail!("offer names {:?}", String::from_utf8_lossy(&offer.file));
    }
    phase(0, &mut t);
    let ack = exchange_4011(
        src,
        SocketAddrV4::new(server, 4011),
        &request(MessageType::Request, xid, mac, src),
        xid,
    )
    .await
    .context("port 4011")?;
    if ack.message_type() != Some(MessageType::Ack) {
        bail!("4011 answered {:?}", ack.message_type());
    }
    phase(1, &mut t);
    crate::tftp_one(
        SocketAddr::from((server, 69)),
        src,
        "ipxe.efi",
        (1468, 4),
        sizes[0],
        EDK2_RETRY,
    )
    .await
    .context("TFTP")?;
    phase(2, &mut t);
    let http = SocketAddr::from((server, 8090));
    let script = http_get(
        src,
        http,
        &format!(
            "/_/ipxe?arch=7&mac=52:54:00:99:{:02x}:{:02x}",
            mac[4], mac[5]
        ),
    )
    .await?;
    if !script.starts_with(b"#!ipxe") {
        bail!("the script is not an iPXE script");
    }
    phase(3, &mut t);
    if mode.fleet {
        let script = String::from_utf8_lossy(&script);
        let local = script.contains("booting from the local disk");
        if i.is_multiple_of(4) {
            if !local {
                bail!("{WRONG}: installed, but not sent to its disk: {script:?}");
            }
            return Ok(t);
        }
        let path = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("config_url="))
            .and_then(|u| u.strip_prefix("http://"))
            .and_then(|u| u.find('/').map(|p| u[p..].to_string()));
        let Some(path) = path else {
            bail!("{WRONG}: no cloud-config of its own: {script:?}");
        };
        let config = http_get(src, http, &path).await.context("cloud-config")?;
        let mine = format!("hostname: storm-{i}");
        if !String::from_utf8_lossy(&config)
            .lines()
            .any(|l| l.trim() == mine)
        {
            let text: String = String::from_utf8_lossy(&config).chars().take(200).collect();
            bail!("{WRONG}: not its own cloud-config: {text:?}");
        }
        phase(4, &mut t);
    }
    for (k, (path, size)) in [
        ("/kernel", sizes[1]),
        ("/initrd0", sizes[2]),
        ("/rootfs.squashfs", sizes[3]),
    ]
    .into_iter()
    .enumerate()
    {
        let body = http_get(src, http, path).await?;
        if body.len() != size {
            bail!("{path}: {} bytes, expected {size}", body.len());
        }
        phase(5 + k, &mut t);
    }
    Ok(t)
}

/// The machines' shared DHCP client port: port 68 on `iface`, broadcast, a large receive
/// buffer, non-blocking (for tokio).
pub(crate) fn client_port(iface: &str) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_recv_buffer_size(8 << 20)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    Ok(s)
}

/// Hands each answer heard on the shared port 68 to the exchange waiting for its xid (the
/// first answer wins: beside several servers, the first offer is the one taken).
pub(crate) fn dispatch(
    sock: Arc<tokio::net::UdpSocket>,
    waiting: Waiting,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok(n) = sock.recv(&mut buf).await {
            let Ok(m) = Message::decode(&buf[..n]) else {
                continue;
            };
            if m.op != 2 {
                continue;
            }
            if let Some(tx) = waiting.lock().unwrap().remove(&m.xid) {
                let _ = tx.send(m);
            }
        }
    })
}

fn peak_of(pid: u32, peak_rss: &AtomicU64, peak_fds: &AtomicU64) {
    let rss = crate::rss_kib(pid);
    peak_rss.fetch_max(rss, Ordering::Relaxed);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    peak_fds.fetch_max(fds, Ordering::Relaxed);
}

/// Datagrams the kernel dropped on the server's UDP sockets bound to `ports` (`:0043` is 67;
/// from its namespace's /proc/PID/net/udp, last column).
fn udp_drops(pid: u32, ports: &[&str]) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let local = l.split_whitespace().nth(1).unwrap_or("");
            ports.iter().any(|p| local.ends_with(p))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// `storm IFACE SERVER N SIZES PID [FIRST [fleet]]`: N machines at once; SIZES is
/// `efi,kernel,initrd,rootfs` in bytes; PID the server's, for its memory and descriptors.
pub fn storm(
    iface: &str,
    server: Ipv4Addr,
    n: usize,
    sizes: [usize; 4],
    pid: u32,
    mode: Mode,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (peak_rss, peak_fds) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (r, f, stop) = (peak_rss.clone(), peak_fds.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak_of(pid, &r, &f);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    const DHCP: &[&str] = &[":0043", ":0FAB"];
    const TFTP: &[&str] = &[":0045"];
    let drops_before = (udp_drops(pid, DHCP), udp_drops(pid, TFTP));
    let start = Instant::now();
    let results = rt.block_on(async {
        let sock = Arc::new(tokio::net::UdpSocket::from_std(client_port(iface)?.into())?);
        let waiting: Waiting = Arc::default();
        let dispatcher = dispatch(sock.clone(), waiting.clone());
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (sock, waiting) = (sock.clone(), waiting.clone());
            set.spawn(async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(300),
                    machine(i, sock, waiting, server, sizes, mode),
                )
                .await;
                (
                    i,
                    r.unwrap_or_else(|_| Err(anyhow::anyhow!("took over 300 s"))),
                )
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r?);
        }
        dispatcher.abort();
        anyhow::Ok(out)
    })?;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let mut per: Vec<Vec<Duration>> = vec![Vec::new(); PHASES.len()];
    let mut total = Vec::new();
    let (mut failed, mut wrong, mut local) = (0, 0, 0);
    for (i, r) in &results {
        match r {
            Ok(t) => {
                for (k, d) in t.iter().enumerate() {
                    per[k].extend(*d);
                }
                local += usize::from(t[7].is_none());
                total.push(t.iter().flatten().sum::<Duration>());
            }
            Err(e) => {
                failed += 1;
                wrong += usize::from(format!("{e:#}").starts_with(WRONG));
                if failed <= 5 {
                    eprintln!("machine {i}: {e:#}");
                }
            }
        }
    }
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let mut line = format!(
        "machines={n} failed={failed} wrong={wrong} local={local} seconds={secs:.2} \
         peak_rss_kib={} peak_fds={} dhcp_drops={} tftp_drops={}",
        peak_rss.load(Ordering::Relaxed),
        peak_fds.load(Ordering::Relaxed),
        udp_drops(pid, DHCP).saturating_sub(drops_before.0),
        udp_drops(pid, TFTP).saturating_sub(drops_before.1),
    );
    total.sort();
    line += &format!(
        " boot_p50_ms={} boot_p99_ms={}",
        ms(crate::percentile(&total, 0.5)),
        ms(crate::percentile(&total, 0.99))
    );
    for (k, name) in PHASES.iter().enumerate() {
        per[k].sort();
        line += &format!(
            " {name}_p50_ms={} {name}_p99_ms={}",
            ms(crate::percentile(&per[k], 0.5)),
            ms(crate::percentile(&per[k], 0.99))
        );
    }
    println!("{line}");
    Ok(())
}

/// `flood SERVER SECONDS`: for SECONDS, 1,050 idle TCP connections to HTTP (25 from each of 42
/// addresses, reopened when the server sheds them) and 1,200 forged TFTP requests a second
/// (one from each of 1,200 addresses), never acknowledged. Addresses from 10.79.20.1 on.
pub fn flood(server: Ipv4Addr, seconds: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let (sent, opened) = (AtomicU64::new(0), AtomicU64::new(0));
    rt.block_on(async {
        let http = SocketAddr::from((server, 8090));
        let mut conns: Vec<Option<tokio::net::TcpStream>> = (0..1050).map(|_| None).collect();
        let mut udp = Vec::new();
        for i in 0..1200 {
            let s = tokio::net::UdpSocket::bind((address(20, i), 0)).await?;
            udp.push(s);
        }
        let rrq = tftp::packet::rrq("ipxe.efi", "octet", &[("blksize", "1468")]);
        while Instant::now() < end {
            for (i, c) in conns.iter_mut().enumerate() {
                let closed = match c {
                    None => true,
                    Some(s) => {
                        let mut b = [0u8; 1];
                        matches!(s.try_read(&mut b), Ok(0))
                    }
                };
                if closed {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::from((address(40, i / 25), 0)))?;
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_millis(200), sock.connect(http)).await
                    {
                        *c = Some(s);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for s in &udp {
                let _ = s.send_to(&rrq, (server, 69)).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        anyhow::Ok(())
    })?;
    println!(
        "forged_rrq={} idle_connections_opened={}",
        sent.load(Ordering::Relaxed),
        opened.load(Ordering::Relaxed)
    );
    Ok(())
}

/// What an attacker on the link got.
#[derive(Default)]
struct Attacked {
    forged_dhcp: AtomicU64,
    rrq: AtomicU64,
    idle_opened: AtomicU64,
    asked: AtomicU64,
    answered: AtomicU64,
    personal: AtomicU64,
}

/// A script (or GRUB configuration) by a booting machine's MAC, from `src`; whether it held
/// anything of that machine's own (its cloud-config URL, its hostname, its boot).
async fn steal(src: Ipv4Addr, server: Ipv4Addr, i: usize, seen: &Attacked) {
    let m = mac_of(i);
    let mac = format!("52:54:00:99:{:02x}:{:02x}", m[4], m[5]);
    let http = SocketAddr::from((server, 8090));
    for path in [
        format!("/_/ipxe?arch=7&mac={mac}"),
        format!("/_/grub/{mac}.cfg"),
    ] {
        seen.asked.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout(Duration::from_secs(5), http_get(src, http, &path)).await;
        let Ok(Ok(body)) = got else { continue };
        seen.answered.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&body);
        if text.contains("config_url") || text.contains("storm-") || text.contains("kernel") {
            seen.personal.fetch_add(1, Ordering::Relaxed);
            eprintln!("attacker got {path}: {text:?}");
        }
    }
}

/// `attack IFACE SERVER SECONDS N`: until SIGTERM (or SECONDS), beside a storm of N fleet
/// machines, from 64 addresses of its own (10.79.60.1…): every half second a forged
/// DHCPREQUEST for each booting MAC naming one of its addresses (so those addresses are
/// "known"); every second 50 of the machines' scripts and GRUB configurations asked for by
/// MAC, 6 TFTP requests from each address never acknowledged, and 32 idle TCP connections per
/// address held (reopened when shed). Prints what it sent and what it got.
pub fn attack(iface: &str, server: Ipv4Addr, seconds: u64, n: usize) -> Result<()> {
    const ADDRESSES: usize = 64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let seen = Arc::new(Attacked::default());
    rt.block_on(async {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(iface.as_bytes()))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
        let dhcp = tokio::net::UdpSocket::from_std(s.into())?;
        let mut udp = Vec::new();
        for k in 0..ADDRESSES * 6 {
            udp.push(tokio::net::UdpSocket::bind((address(60, k / 6), 0)).await?);
        }
        let mut conns: Vec<Option<tokio::net::TcpStream>> =
            (0..ADDRESSES * 32).map(|_| None).collect();
        let rrq = tftp::packet::rrq("ipxe.efi", "octet", &[("blksize", "1468")]);
        let http = SocketAddr::from((server, 8090));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut round = 0usize;
        let mut thefts = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::time::sleep_until(end) => break,
                _ = tick.tick() => {}
            }
            round += 1;
            for i in 0..n {
                let m = Message::client_request(
                    MessageType::Request,
                    0x6600_0000 | i as u32,
                    mac_of(i),
                    vec![
                        (50, address(60, i % ADDRESSES).octets().to_vec()),
                        (60, b"PXEClient:Arch:00007:UNDI:003000".to_vec()),
                    ],
                );
                let _ = dhcp.send_to(&m.encode(), (Ipv4Addr::BROADCAST, 67)).await;
                seen.forged_dhcp.fetch_add(1, Ordering::Relaxed);
            }
            if !round.is_multiple_of(2) {
                continue;
            }
            for s in &udp {
                let _ = s.send_to(&rrq, (server, 69)).await;
                seen.rrq.fetch_add(1, Ordering::Relaxed);
            }
            for (k, c) in conns.iter_mut().enumerate() {
                let closed = match c {
                    None => true,
                    Some(s) => matches!(s.try_read(&mut [0u8; 1]), Ok(0)),
                };
                if closed {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::from((address(60, k / 32), 0)))?;
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_millis(200), sock.connect(http)).await
                    {
                        *c = Some(s);
                        seen.idle_opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while thefts.try_join_next().is_some() {}
            for j in 0..50 {
                let i = (round / 2 * 50 + j) % n.max(1);
                let seen = seen.clone();
                thefts.spawn(async move {
                    steal(address(60, j % ADDRESSES), server, i, &seen).await;
                });
            }
        }
        thefts.shutdown().await;
        anyhow::Ok(())
    })?;
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "forged_dhcp={} rrq={} idle_opened={} scripts_asked={} answered={} personal={}",
        v(&seen.forged_dhcp),
        v(&seen.rrq),
        v(&seen.idle_opened),
        v(&seen.asked),
        v(&seen.answered),
        v(&seen.personal),
    );
    Ok(())
}
