//! The boot storm across replicas: N simulated UEFI machines powered on over RAMP seconds
//! beside three Daybreak replicas on one etcd. Each takes the first ProxyDHCP offer (any
//! replica's) and boots from the replica that made it: port 4011, the EFI loader over TFTP, the
//! script, its own cloud-config, kernel, initrd and squashfs, then calls its install URL
//! (`curl --retry`: a 503 while etcd cannot commit is asked again; a replica that does not answer
//! is passed over for another, as through a shared address). A step that fails (its replica was
//! killed) starts the boot again from DHCP, as firmware does. Once installed, the machine asks
//! another replica for its script until it is told to boot from its disk: the install's lag.
//!
//! bench/run.sh kills a replica and the etcd leader while it runs. Only the given replicas are
//! targeted (a test namespace); every loop is bounded in count and time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pxe::message::{Message, MessageType};
use tokio::sync::oneshot;

use crate::storm::{address, exchange_4011, http_get, mac_of, request};

/// Exchanges waiting for an answer, by xid: the first answer, and when it was heard.
type Waiting = Arc<Mutex<HashMap<u32, oneshot::Sender<(Message, Instant)>>>>;

/// Hears every answer on the shared port 68 on a thread of its own, stamping each as it
/// arrives: the DHCP time measured is the servers', not this generator's (its one thread is
/// busy with a thousand downloads).
fn dispatch(sock: std::net::UdpSocket, waiting: Waiting) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(sock) = tokio::net::UdpSocket::from_std(sock) else {
                return;
            };
            let mut buf = [0u8; 1500];
            while let Ok(n) = sock.recv(&mut buf).await {
                let at = Instant::now();
                let Ok(m) = Message::decode(&buf[..n]) else {
                    continue;
                };
                if m.op != 2 {
                    continue;
                }
                if let Some(tx) = waiting.lock().unwrap().remove(&m.xid) {
                    let _ = tx.send((m, at));
                }
            }
        })
    });
}

/// A DISCOVER broadcast and the first offer, with the time from the send to the answer heard;
/// retried as firmware does (1, 2, 4, 4 s).
async fn discover(
    sock: &tokio::net::UdpSocket,
    waiting: &Waiting,
    packet: &[u8],
    xid: u32,
) -> Result<(Message, Duration)> {
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let first = Instant::now();
    for wait in [1, 2, 4, 4] {
        let (tx, rx) = oneshot::channel();
        waiting.lock().unwrap().insert(xid, tx);
        let sent = Instant::now();
        sock.send_to(packet, to).await?;
        if let Ok(Ok((m, at))) = tokio::time::timeout(Duration::from_secs(wait), rx).await {
            // A retry's time counts from the first try.
            let took = if first == sent { at - sent } else { at - first };
            return Ok((m, took));
        }
    }
    waiting.lock().unwrap().remove(&xid);
    bail!("no offer")
}

/// Boots a machine tries before it counts as failed.
const TRIES: usize = 4;

/// What one machine did.
#[derive(Default)]
struct Done {
    /// Each DHCP exchange: when it was sent (since the storm began) and how long it took.
    dhcp: Vec<(Duration, Duration)>,
    /// Boots started again after a step failed.
    restarts: u32,
    /// From its install call's 200 to another replica telling it to boot from its disk, and
    /// how long that last script request took (the storm's HTTP load, not the store's lag).
    lag: Option<(Duration, Duration)>,
    /// The whole boot, power-on to installed.
    boot: Duration,
    /// Its install call committed but was never answered (its replica died): its next boot
    /// went to its disk.
    unanswered: bool,
}

/// A GET that tells a refused or cut connection from an answer: `Ok((status, body))`.
async fn get_status(src: Ipv4Addr, server: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    match http_get(src, server, path).await {
        Ok(b) => Ok((200, b)),
        Err(e) => {
            let text = format!("{e:#}");
            match text.split_once(": http/1.1 ") {
                Some((_, rest)) => Ok((rest.get(..3).unwrap_or("0").parse().unwrap_or(0), vec![])),
                None => Err(e),
            }
        }
    }
}

/// One boot, from DHCP to the install call answered; the replica it installed through.
#[allow(clippy::too_many_arguments)]
async fn boot_once(
    i: usize,
    sock: &tokio::net::UdpSocket,
    waiting: &Waiting,
    sizes: [usize; 4],
    first: u8,
    replicas: &[Ipv4Addr],
    began: Instant,
    done: &mut Done,
) -> Result<Ipv4Addr> {
    let mac = mac_of(i);
    let xid = 0x5800_0000 | ((i as u32) << 4) | done.restarts;
    let src = address(first, i);
    let sent = began.elapsed();
    let (offer, took) = discover(
        sock,
        waiting,
        &request(MessageType::Discover, xid, mac, Ipv4Addr::UNSPECIFIED),
        xid,
    )
    .await
    .context("DISCOVER")?;
    done.dhcp.push((sent, took));
    let server = offer.siaddr;
    if !replicas.contains(&server) {
        bail!("an offer from {server}, not a replica");
    }
    exchange_4011(
        src,
        SocketAddrV4::new(server, 4011),
        &request(MessageType::Request, xid, mac, src),
        xid,
    )
    .await
    .context("port 4011")?;
    crate::tftp_one(
        SocketAddr::from((server, 69)),
        src,
        "ipxe.efi",
        (1468, 4),
        sizes[0],
        crate::storm::EDK2_RETRY,
    )
    .await
    .context("TFTP")?;
    let http = SocketAddr::from((server, 8090));
    let script = http_get(src, http, &script_path(mac)).await?;
    let script = String::from_utf8_lossy(&script).into_owned();
    // Booted again after its install call reached a replica that died before it answered:
    // installed, and sent to its disk, as it should be.
    if done.restarts > 0 && script.contains("booting from the local disk") {
        done.unanswered = true;
        return Ok(server);
    }
    let path = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("config_url="))
        .and_then(path_of)
        .with_context(|| format!("no cloud-config of its own: {script:?}"))?;
    let config = http_get(src, http, &path).await.context("cloud-config")?;
    let config = String::from_utf8_lossy(&config).into_owned();
    if !config
        .lines()
        .any(|l| l.trim() == format!("hostname: storm-{i}"))
    {
        bail!("not its own cloud-config");
    }
    let install = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("install: "))
        .and_then(path_of)
        .context("no install URL")?;
    for (path, size) in [
        ("/kernel", sizes[1]),
        ("/initrd0", sizes[2]),
        ("/rootfs.squashfs", sizes[3]),
    ] {
        let body = http_get(src, http, path).await?;
        if body.len() != size {
            bail!("{path}: {} bytes, expected {size}", body.len());
        }
    }
    // curl --retry: a 503 is asked again; a replica that does not answer is passed over.
    let mut at = replicas.iter().position(|r| *r == server).unwrap_or(0);
    for _ in 0..120 {
        let to = SocketAddr::from((replicas[at], 8090));
        match get_status(src, to, &install).await {
            Ok((200, _)) => return Ok(replicas[at]),
            Ok((503, _)) => tokio::time::sleep(Duration::from_millis(500)).await,
            Ok((code, _)) => bail!("the install call answered {code}"),
            Err(_) => {
                at = (at + 1) % replicas.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    bail!("the install call was never answered")
}

fn script_path(mac: [u8; 6]) -> String {
    format!(
        "/_/ipxe?arch=7&mac=52:54:00:99:{:02x}:{:02x}",
        mac[4], mac[5]
    )
}

/// The path of an `http://HOST/PATH` URL.
fn path_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    rest.find('/').map(|p| rest[p..].to_string())
}

/// After its install: another replica asked for its script until it says "local disk".
async fn lag(
    i: usize,
    first: u8,
    installed_at: Ipv4Addr,
    replicas: &[Ipv4Addr],
) -> Option<(Duration, Duration)> {
    let src = address(first, i);
    let t = Instant::now();
    let mut others: Vec<Ipv4Addr> = replicas
        .iter()
        .copied()
        .filter(|r| *r != installed_at)
        .collect();
    let turn = i % others.len().max(1);
    others.rotate_left(turn);
    let mut k = 0;
    while t.elapsed() < Duration::from_secs(10) && !others.is_empty() {
        let to = SocketAddr::from((others[k % others.len()], 8090));
        let asked = Instant::now();
        match http_get(src, to, &script_path(mac_of(i))).await {
            Ok(s) if String::from_utf8_lossy(&s).contains("booting from the local disk") => {
                return Some((t.elapsed(), asked.elapsed()))
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            // That one is down: another.
            Err(_) => k += 1,
        }
    }
    None
}

/// What a storm across replicas is.
pub struct Storm {
    pub n: usize,
    pub sizes: [usize; 4],
    pub pids: Vec<u32>,
    pub replicas: Vec<Ipv4Addr>,
    pub first: u8,
    pub ramp: f64,
    pub kills: Vec<f64>,
}

/// `cluster-storm IFACE N SIZES PIDS REPLICAS FIRST RAMP KILLS`: N machines powered on over
/// RAMP seconds; SIZES `efi,kernel,initrd,rootfs`; PIDS and REPLICAS the replicas' (commas);
/// machine `i` at [`address`]`(FIRST, i)`; KILLS the seconds of the kills (commas), whose
/// windows' DHCP is reported apart.
pub fn storm(iface: &str, s: Storm) -> Result<()> {
    let Storm {
        n,
        sizes,
        pids,
        replicas,
        first,
        ramp,
        kills,
    } = s;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peaks, stop, pids) = (peaks.clone(), stop.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (k, p) in pids.iter().enumerate() {
                    peaks[k].fetch_max(crate::rss_kib(*p), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let began = Instant::now();
    let replicas = Arc::new(replicas);
    let results = rt.block_on(async {
        let s = crate::storm::client_port(iface)?;
        let hears: std::net::UdpSocket = s.try_clone()?.into();
        let sock = Arc::new(tokio::net::UdpSocket::from_std(s.into())?);
        let waiting: Waiting = Arc::default();
        dispatch(hears, waiting.clone());
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (sock, waiting, replicas) = (sock.clone(), waiting.clone(), replicas.clone());
            let at = Duration::from_secs_f64(ramp * i as f64 / n.max(1) as f64);
            set.spawn(async move {
                tokio::time::sleep(at).await;
                let t = Instant::now();
                let mut done = Done::default();
                let mut last = None;
                for _ in 0..TRIES {
                    let one = boot_once(
                        i, &sock, &waiting, sizes, first, &replicas, began, &mut done,
                    );
                    match tokio::time::timeout(Duration::from_secs(120), one).await {
                        Ok(Ok(via)) => {
                            done.boot = t.elapsed();
                            done.lag = lag(i, first, via, &replicas).await;
                            return (i, Ok(done));
                        }
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => last = Some(anyhow::anyhow!("a boot took over 120 s")),
                    }
                    done.restarts += 1;
                }
                (i, Err(last.unwrap_or_else(|| anyhow::anyhow!("no try"))))
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r?);
        }
        anyhow::Ok(out)
    })?;
    let secs = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (mut failed, mut restarts, mut local, mut unanswered) = (0, 0, 0, 0);
    let (mut dhcp, mut in_kills, mut lags, mut boots) = (vec![], vec![], vec![], vec![]);
    let mut asks = vec![];
    for (i, r) in &results {
        match r {
            Ok(d) => {
                restarts += d.restarts;
                unanswered += usize::from(d.unanswered);
                boots.push(d.boot);
                if let Some((l, ask)) = d.lag {
                    local += 1;
                    lags.push(l);
                    asks.push(ask);
                }
                for (sent, took) in &d.dhcp {
                    dhcp.push(*took);
                    let s = sent.as_secs_f64();
                    if kills.iter().any(|k| s >= *k && s < k + 3.0) {
                        in_kills.push(*took);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("machine {i}: {e:#}");
                }
            }
        }
    }
    for v in [&mut dhcp, &mut in_kills, &mut lags, &mut boots, &mut asks] {
        v.sort();
    }
    let ms =
        |v: &[Duration], p: f64| format!("{:.1}", crate::percentile(v, p).as_secs_f64() * 1000.0);
    let rss: Vec<String> = peaks
        .iter()
        .map(|p| (p.load(Ordering::Relaxed) / 1024).to_string())
        .collect();
    println!(
        "machines={n} failed={failed} installed={} restarts={restarts} unanswered={unanswered} local={local} seconds={secs:.2} \
         boot_p50_ms={} boot_p99_ms={} dhcp_p50_ms={} dhcp_p99_ms={} kill_dhcp_n={} kill_dhcp_p99_ms={} \
         lag_p50_ms={} lag_p99_ms={} lag_max_ms={} ask_p50_ms={} ask_p99_ms={} rss_mib={}",
        n - failed,
        ms(&boots, 0.5),
        ms(&boots, 0.99),
        ms(&dhcp, 0.5),
        ms(&dhcp, 0.99),
        in_kills.len(),
        ms(&in_kills, 0.99),
        ms(&lags, 0.5),
        ms(&lags, 0.99),
        ms(&lags, 1.0),
        ms(&asks, 0.5),
        ms(&asks, 0.99),
        rss.join(","),
    );
    Ok(())
}
