//! Boot events: one type for what the servers see each machine do, from the ProxyDHCP offer to
//! the last byte of the squashfs, keyed by MAC. This is the seam that machine profiles, the
//! status page and metrics read (one reader: [`Hub::read`]); the log lines of TFTP and HTTP carry
//! the MAC from here too, so every line of one boot can be found by it.
//!
//! Recording a step costs its recorder a move into a bounded queue and nothing else: the DHCP
//! path queues its answers as they are ([`Hub::dhcp`]), and their log lines, the events they make
//! and the tables they change are the reader thread's. The reader drains the queue in bursts and
//! sleeps a few milliseconds between them, so while steps keep coming nobody has to wake it (a
//! wake per answer would cost the DHCP path more than the answer). A full queue drops the step
//! and counts it.
//!
//! TFTP and HTTP see only an address. The hub learns which MAC holds which address from what the
//! machine itself says: the DHCPREQUEST it sends the network's DHCP server (ProxyDHCP sees it
//! broadcast) and the `mac=` of the iPXE script URL. The table is bounded; the oldest entries go.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use crate::bounded::LineBudget;
use crate::identity::{Bindings, Vouch};

use std::sync::atomic::{AtomicU64, Ordering};

/// Addresses remembered; past this the oldest are forgotten (a LAN has far fewer machines).
const MAX_LEASES: usize = 65_536;
/// How long after its PXE exchange an address counts as a machine booting with us.
const BOOTING: std::time::Duration = std::time::Duration::from_secs(600);
/// Events waiting for their reader; past this they are dropped (and counted).
const BACKLOG: usize = 16_384;

/// A step of one machine's boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// ProxyDHCP answered: an offer (port 67) or an ack (port 4011).
    Offer {
        /// The request as classified: MAC, UUID, architecture, what runs on the machine.
        client: pxe::Client,
        loader: pxe::Loader,
        target: String,
        port: pxe::Port,
    },
    /// The machine took this address from the network's DHCP server.
    Lease,
    /// The iPXE binary over TFTP, whole (`ok`) or not.
    Loader { file: String, bytes: u64, ok: bool },
    /// iPXE fetched its boot script.
    Script,
    /// A file over HTTP (kernel, initrd, squashfs, cloud-config), or a part of one.
    File { name: String, bytes: u64, ms: u64 },
    /// A large file on its way: the bytes of this response sent so far (once a second).
    Sending { name: String, bytes: u64 },
    /// The script's last request before the kernel starts.
    Booting,
    /// The machine fetched its own cloud-config (its profile's, at its own URL).
    Config,
    /// The machine called back that its install finished.
    Installed,
    /// The booted system reported a stage (its report URL): reached, or failed with `why`.
    Reported {
        stage: String,
        failed: Option<String>,
    },
    /// The machine was told to boot from its local disk.
    LocalBoot,
    /// A line iPXE sent by syslog ([`crate::ipxe_says`]), not an error.
    Said { line: String },
    /// ProxyDHCP did not answer the machine: nothing here boots its architecture.
    NotOffered { client: pxe::Client, why: String },
    /// A request from another host named this machine; it was given nothing personal.
    Doubted { why: String },
    /// Something of this boot failed: a file not found or cut off, its loader's transfer, an
    /// install the machine reported failed. `stage` is the boot's step it failed at.
    Failed {
        stage: &'static str,
        kind: &'static str,
        why: String,
    },
}

/// The stage of a boot a file belongs to, by its name (as the router gave it) or path.
pub fn stage_of(name: &str) -> &'static str {
    let name = name.trim_start_matches('/');
    if name.contains("rootfs") || name.ends_with(".squashfs") {
        "rootfs"
    } else if name.contains("initrd") {
        "initrd"
    } else if name.contains("kernel") || name.contains("vmlinuz") {
        "kernel"
    } else if name.contains("cloud-config") || name.starts_with("_/config") {
        "config"
    } else if name.starts_with("_/installed") {
        "install"
    } else if name.starts_with("_/ipxe") || name == "boot.ipxe" || name.starts_with("_/grub") {
        "script"
    } else {
        "file"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvent {
    pub at: std::time::SystemTime,
    pub mac: Option<Mac>,
    /// The machine's address and port, when it spoke from one (DHCP offers go to a MAC).
    pub peer: Option<SocketAddr>,
    pub step: Step,
}

/// What waits for the reader: a step, or a DHCP event as the driver gave it.
enum Queued {
    Step(BootEvent),
    Dhcp(pxe::driver::Event),
    /// Shutting down: everything queued before is handled; tell the lines held back and say so.
    Settle(std::sync::mpsc::Sender<()>),
}

/// Lowers the calling thread's priority to `SCHED_IDLE` (else nice 19): what runs there
/// (bookkeeping, log lines) never preempts the threads that answer machines, and takes the CPU
/// they leave. Under a sustained full load its queue fills and drops what does not fit, counted
/// (`daybreak_events_dropped_total`, the log's dropped lines): the answers come first. Best effort.
pub fn background_priority() {
    // SAFETY: scheduling calls on this thread only (a Linux thread is its own scheduling
    // entity: pid 0 and its thread id both name it), with a valid sched_param.
    unsafe {
        let p = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

/// Gives thread `tid` of this process the ordinary priority back (at shutdown, when nothing
/// else is answered and what is queued must be told).
fn ordinary_priority(tid: i32) {
    // SAFETY: scheduling calls naming one thread of this process by its id, with a valid
    // sched_param; a thread that is gone makes them fail, harmlessly.
    unsafe {
        let p = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(tid, libc::SCHED_OTHER, &p);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 0);
    }
}

/// How long the reader sleeps between bursts while steps keep coming.
const BURST_GAP: std::time::Duration = std::time::Duration::from_millis(2);

/// Offer and ack lines logged in a second at most. A real storm stays well under it (20,000
/// machines powering on within 15 s peak near 2,000 a second); a flood of DISCOVERs from
/// made-up MACs does not fill the disk or spend the CPU on lines: the rest are counted, in one
/// line a second, and each machine's timeline and the metrics still have every answer.
pub const OFFER_LINES_PER_SECOND: u32 = 5_000;

/// The offer lines of the current second ([`OFFER_LINES_PER_SECOND`]).
fn offer_lines(now: Instant) -> LineBudget {
    LineBudget::new(
        now,
        OFFER_LINES_PER_SECOND,
        "offers and acks (the machines' timelines and the metrics have them)",
    )
}

/// Lines a second about requests that named a machine they could not speak for.
const DOUBT_LINES_PER_SECOND: u32 = 50;

pub struct Hub {
    /// Address → the MAC that holds it, when it was seen, and whether the machine went on to
    /// fetch something as itself (a flood of forged DHCPREQUESTs never does).
    leases: Mutex<HashMap<IpAddr, (Mac, Instant, bool)>>,
    /// Which address may speak for which MAC ([`crate::identity`]).
    pub identities: Bindings,
    /// The kernel's neighbour entry for an address ([`crate::identity::link_address`]).
    link: fn(IpAddr) -> Option<Mac>,
    doubt_lines: Mutex<LineBudget>,
    tx: crate::bounded::Sender<Queued>,
    /// The reader's thread id, once it runs (0 before).
    reader: std::sync::atomic::AtomicI32,
    rx: Mutex<Option<crate::bounded::Receiver<Queued>>>,
    dropped: AtomicU64,
    /// iPXE's syslog lines, counted by what became of them.
    pub syslog: crate::ipxe_says::Stats,
}

impl Default for Hub {
    fn default() -> Self {
        let (tx, rx) = crate::bounded::queue(BACKLOG);
        Hub {
            leases: Mutex::default(),
            identities: Bindings::default(),
            link: crate::identity::link_address,
            doubt_lines: Mutex::new(LineBudget::new(
                Instant::now(),
                DOUBT_LINES_PER_SECOND,
                "requests naming a machine they may not speak for",
            )),
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            reader: std::sync::atomic::AtomicI32::new(0),
            syslog: Default::default(),
        }
    }
}

pub use pxe::Mac;

impl Hub {
    /// A hub whose neighbour entries are `link`'s (tests).
    #[cfg(test)]
    pub fn with_link(link: fn(IpAddr) -> Option<Mac>) -> Hub {
        Hub {
            link,
            ..Hub::default()
        }
    }

    /// Remembers that `mac` holds `ip`; `progressed`: the machine fetched something as itself.
    /// Full (a flood of made-up requests, most likely), the table forgets an eighth of it at
    /// once: entries that never progressed first, oldest first, so no volume of forged packets
    /// flushes the machines booting now.
    pub fn learn(&self, ip: IpAddr, mac: Mac, progressed: bool) {
        let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        crate::bounded::make_room(&mut l, &ip, MAX_LEASES, |(_, t, p)| (*p, *t));
        let progressed = progressed || l.get(&ip).is_some_and(|(m, _, p)| *m == mac && *p);
        l.insert(ip, (mac, Instant::now(), progressed));
    }

    /// Whether a request from `peer` may speak for `mac` ([`crate::identity`]). When it may,
    /// the address is the machine's for the files it fetches next; when it may not, the doubt
    /// is logged (a few lines a second at most), counted, and noted on the machine's timeline
    /// when the machine is one already shown.
    pub fn vouch(&self, peer: SocketAddr, mac: Mac) -> Vouch {
        let ip = peer.ip();
        let v = self
            .identities
            .vouch(mac, ip, (self.link)(ip), Instant::now());
        match v {
            Vouch::Vouched => self.learn(ip, mac, true),
            Vouch::Doubted(why) => {
                let mut lines = self.doubt_lines.lock().unwrap_or_else(|e| e.into_inner());
                if lines.admit(Instant::now()) {
                    tracing::warn!(client = %ip, named = %mac, reason = why.reason(), "a request names a machine it may not speak for ({why}): nothing personal given");
                }
                drop(lines);
                self.send(BootEvent {
                    at: std::time::SystemTime::now(),
                    mac: Some(mac),
                    peer: Some(peer),
                    step: Step::Doubted {
                        why: why.to_string(),
                    },
                });
            }
        }
        v
    }

    /// The MAC known to hold `ip`.
    pub fn mac_of(&self, ip: IpAddr) -> Option<Mac> {
        let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.get(&ip).map(|(m, _, _)| *m)
    }

    /// The machine at `ip` when it can be told who it is: it fetched something as itself, or
    /// the kernel's neighbour entry (on our link) or its PXE exchange (behind a router) says so.
    /// A failure is only put on a machine's timeline this way: a forged DHCPREQUEST naming a
    /// machine for another address must not pin that address's failures on it.
    pub fn speaking_for(&self, ip: IpAddr) -> Option<Mac> {
        let (mac, progressed) = {
            let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            l.get(&ip).map(|(m, _, p)| (*m, *p))?
        };
        let is_it = progressed
            || self
                .identities
                .judge(mac, ip, (self.link)(ip), Instant::now())
                == Vouch::Vouched;
        is_it.then_some(mac)
    }

    /// Whether a machine took `ip` in a PXE exchange (or named it in a script request) within
    /// the last few minutes: TFTP keeps such a client's transfer when forged requests crowd in.
    pub fn booting(&self, ip: IpAddr) -> bool {
        let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.get(&ip).is_some_and(|(_, t, _)| t.elapsed() < BOOTING)
    }

    /// Records a step: the MAC is the one given, else the one known for `peer`'s address.
    pub fn emit(&self, peer: Option<SocketAddr>, mac: Option<Mac>, step: Step) {
        let mac = mac.or_else(|| peer.and_then(|p| self.mac_of(p.ip())));
        self.send(BootEvent {
            at: std::time::SystemTime::now(),
            mac,
            peer,
            step,
        });
    }

    /// Queues an event for the reader; a full queue drops it (and counts it).
    pub fn send(&self, e: BootEvent) {
        self.queue(Queued::Step(e));
    }

    /// Queues what ProxyDHCP reports, as it is: called on the DHCP path, right after a reply
    /// left, it only moves the event.
    pub fn dhcp(&self, e: pxe::driver::Event) {
        self.queue(Queued::Dhcp(e));
    }

    fn queue(&self, q: Queued) {
        if self.tx.try_send(q).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Steps dropped because their queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// At shutdown: waits (at most `limit`) until the reader has handled everything queued
    /// so far and told the lines it held back, its priority raised for it (it runs when
    /// nothing else wants the CPU, which on a loaded host may be never). False when it could
    /// not within `limit`.
    pub fn settle(&self, limit: std::time::Duration) -> bool {
        let tid = self.reader.load(Ordering::Acquire);
        if tid == 0 {
            return true;
        }
        ordinary_priority(tid);
        let deadline = Instant::now() + limit;
        let (done, wait) = std::sync::mpsc::channel();
        // A full queue is waited for, not dropped: this one must arrive.
        while self.tx.try_send(Queued::Settle(done.clone())).is_err() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Starts the one reader: a thread that hands every step to `observe`, in order. False
    /// when a reader runs already.
    pub fn read(
        self: &std::sync::Arc<Self>,
        mut observe: impl FnMut(&BootEvent) + Send + 'static,
    ) -> std::io::Result<bool> {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(false);
        };
        let hub = std::sync::Arc::downgrade(self);
        let me = self.clone();
        std::thread::Builder::new()
            .name("boot-events".into())
            .spawn(move || {
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
                me.reader.store(tid, Ordering::Release);
                drop(me);
                background_priority();
                let mut budget = offer_lines(Instant::now());
                let take =
                    |q: Queued, observe: &mut dyn FnMut(&BootEvent), budget: &mut LineBudget| {
                        if let Some(hub) = hub.upgrade() {
                            hub.take(q, observe, budget);
                        }
                    };
                loop {
                    // Waits at most a second, so the last count of lines held back is told.
                    let q = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                        Ok(q) => q,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            budget.roll(Instant::now());
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    take(q, &mut observe, &mut budget);
                    // A burst: drain, sleep a little, drain again, until it stays empty.
                    loop {
                        let mut took = false;
                        while let Ok(q) = rx.try_recv() {
                            take(q, &mut observe, &mut budget);
                            took = true;
                        }
                        if !took {
                            break;
                        }
                        std::thread::sleep(BURST_GAP);
                    }
                }
            })?;
        Ok(true)
    }

    /// Takes every step queued so far and hands it to `observe`, without a thread (tests).
    #[cfg(test)]
    pub fn drain(&self, mut observe: impl FnMut(&BootEvent)) {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rx) = rx.as_ref() else { return };
        let mut budget = offer_lines(Instant::now());
        while let Ok(q) = rx.try_recv() {
            self.take(q, &mut observe, &mut budget);
        }
    }

    /// Hands what was queued to `observe`, on the reader's thread (or [`Hub::drain`]'s).
    fn take(&self, q: Queued, observe: &mut dyn FnMut(&BootEvent), budget: &mut LineBudget) {
        match q {
            Queued::Step(e) => observe(&e),
            Queued::Dhcp(d) => observe(&self.dhcp_step(d, budget)),
            Queued::Settle(done) => {
                budget.flush();
                let _ = done.send(());
            }
        }
    }

    /// What a ProxyDHCP report means (on the reader's thread): an answer's log line (within
    /// `budget`) and its step, the address a client takes.
    fn dhcp_step(&self, e: pxe::driver::Event, budget: &mut LineBudget) -> BootEvent {
        let at = std::time::SystemTime::now();
        match e {
            pxe::driver::Event::Lease { mac, ip } => {
                self.learn(ip.into(), mac, false);
                self.identities.bind(mac, ip.into(), Instant::now());
                BootEvent {
                    at,
                    mac: Some(mac),
                    // Its DHCPREQUEST came from the client port.
                    peer: Some(SocketAddr::from((ip, 68))),
                    step: Step::Lease,
                }
            }
            pxe::driver::Event::NoLoader(client) => BootEvent {
                at,
                mac: Some(client.mac),
                peer: None,
                step: Step::NotOffered {
                    client,
                    why: format!(
                        "not answered: nothing here boots {} machines (no kernel for its architecture, so no loader; a kernel or image for it, or --ipxe-arm64, would be)",
                        pxe::driver::firmware_label(&client)
                    ),
                },
            },
            pxe::driver::Event::Answered(a) => {
                if budget.admit(Instant::now()) {
                    a.log();
                }
                // A port 4011 request comes from the machine's own address.
                if a.port == pxe::Port::ProxyBoot && !a.to.ip().is_broadcast() {
                    self.identities
                        .bind(a.client.mac, (*a.to.ip()).into(), Instant::now());
                }
                let target = match a.target {
                    pxe::BootTarget::Tftp(t) | pxe::BootTarget::Url(t) => t,
                };
                BootEvent {
                    at,
                    mac: Some(a.client.mac),
                    peer: None,
                    step: Step::Offer {
                        client: a.client,
                        loader: a.loader,
                        target,
                        port: a.port,
                    },
                }
            }
        }
    }

    /// What TFTP reports: its log line, with the MAC when known, and the event.
    pub fn on_tftp(&self, r: tftp::Report) {
        let ip = r.peer.ip();
        let mac = self.mac_of(ip);
        tftp::log_report(&r, mac.as_ref().map(|m| m as &dyn std::fmt::Display));
        let failed = match &r.outcome {
            tftp::Outcome::Aborted { code, message } => Some(format!(
                "the client ended it (error {code}: {})",
                http::loggable(message)
            )),
            tftp::Outcome::TimedOut { confirmed: true } => {
                Some(format!("the client went silent after {} bytes", r.bytes))
            }
            _ => None,
        };
        if let (Some(why), Some(mac)) = (failed, self.speaking_for(ip)) {
            self.emit(
                Some(r.peer),
                Some(mac),
                Step::Failed {
                    stage: "loader",
                    kind: "loader transfer",
                    why: format!("{} over TFTP: {why}", http::loggable(&r.file)),
                },
            );
        }
        let ok = r.outcome == tftp::Outcome::Complete;
        if ok
            || matches!(
                r.outcome,
                tftp::Outcome::Aborted { .. } | tftp::Outcome::TimedOut { confirmed: true }
            )
        {
            self.emit(
                Some(r.peer),
                None,
                Step::Loader {
                    file: r.file,
                    bytes: r.bytes as u64,
                    ok,
                },
            );
        }
    }
}

/// What the boot HTTP server reports: clients booting now, a large body's progress, each file
/// sent (its log line, with the MAC when known, and the event).
impl http::Observer for Hub {
    fn known(&self, ip: IpAddr) -> bool {
        self.booting(ip)
    }

    fn progress(&self, peer: SocketAddr, name: &str, bytes: u64) {
        self.emit(
            Some(peer),
            None,
            Step::Sending {
                name: name.to_string(),
                bytes,
            },
        );
    }

    fn sent(&self, r: &http::Report) {
        // Lines of one boot carry its MAC, once the machine has said it (DHCP, the script URL).
        let mac = self.mac_of(r.peer.ip());
        http::log_report(r, mac.as_ref().map(|m| m as &dyn std::fmt::Display));
        if r.error.is_none() && !r.is_internal() {
            self.emit(
                Some(r.peer),
                mac,
                Step::File {
                    name: r.name.clone(),
                    bytes: r.count,
                    ms: r.ms,
                },
            );
        }
        if let (Some(e), false) = (&r.error, r.is_internal()) {
            if let Some(mac) = self.speaking_for(r.peer.ip()) {
                self.emit(
                    Some(r.peer),
                    Some(mac),
                    Step::Failed {
                        stage: stage_of(&r.name),
                        kind: "cut off",
                        why: format!(
                            "{} cut off after {} of {} bytes ({})",
                            r.name,
                            r.sent,
                            r.count,
                            http::loggable(e)
                        ),
                    },
                );
            }
        }
    }

    fn not_found(&self, peer: SocketAddr, path: &str) {
        if let Some(mac) = self.speaking_for(peer.ip()) {
            self.emit(
                Some(peer),
                Some(mac),
                Step::Failed {
                    stage: stage_of(path),
                    kind: "not found",
                    why: format!("{path}: not found (404)"),
                },
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classified request from a machine of `arch` running `firmware`.
    pub(crate) fn client(arch: pxe::Arch, firmware: pxe::Firmware) -> pxe::Client {
        pxe::Client {
            arch,
            arch_code: 0,
            firmware,
            mac: Mac([0x52, 0x54, 0, 0, 0, 0x0a]),
            uuid: None,
        }
    }

    #[test]
    fn failures_go_only_to_the_machine_an_address_can_be_told_to_be() {
        let victim = Mac([0x52, 0x54, 0, 0, 9, 9]);
        // On our link the host at .66 is another MAC: a forged DHCPREQUEST naming the victim
        // for .66 does not make .66's 404s the victim's.
        let hub = Hub::with_link(|ip| match ip.to_string().as_str() {
            "10.0.0.66" => Some(Mac([0x52, 0x54, 0, 0, 6, 6])),
            "10.0.0.9" => Some(Mac([0x52, 0x54, 0, 0, 9, 9])),
            _ => None,
        });
        hub.learn("10.0.0.66".parse().unwrap(), victim, false);
        http::Observer::not_found(&hub, "10.0.0.66:5000".parse().unwrap(), "/kernel");
        hub.learn("10.0.0.9".parse().unwrap(), victim, false);
        http::Observer::not_found(&hub, "10.0.0.9:5000".parse().unwrap(), "/kernel");
        let mut failed = Vec::new();
        hub.drain(|e| {
            if let Step::Failed { stage, kind, .. } = &e.step {
                failed.push((e.peer.unwrap().ip().to_string(), e.mac, *stage, *kind));
            }
        });
        assert_eq!(
            failed,
            [("10.0.0.9".to_string(), Some(victim), "kernel", "not found")]
        );
        assert_eq!(stage_of("/rootfs.squashfs"), "rootfs");
        assert_eq!(stage_of("/_/config/<mac>-<tag>.yaml"), "config");
        assert_eq!(stage_of("initrd-0"), "initrd");
    }

    #[test]
    fn background_threads_never_preempt_the_answering_ones() {
        let policy = std::thread::spawn(|| {
            background_priority();
            // SAFETY: reads this thread's own policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above; the test's own thread is untouched.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn a_flood_of_offers_logs_at_most_5000_lines_a_second_and_counts_the_rest() {
        use std::time::Duration;
        let t0 = Instant::now();
        let mut b = offer_lines(t0);
        // 20,000 answers within a fifth of a second: 5,000 lines, the rest held back.
        let logged = (0..20_000u64)
            .filter(|i| b.admit(t0 + Duration::from_micros(i * 10)))
            .count();
        assert_eq!(logged, 5_000);
        assert_eq!(
            b.roll(t0 + Duration::from_millis(900)),
            None,
            "within the second"
        );
        assert_eq!(b.roll(t0 + Duration::from_secs(1)), Some(15_000));
        // The next second has its own 5,000, and a quiet one tells nothing.
        assert!(b.admit(t0 + Duration::from_millis(1100)));
        assert_eq!(b.roll(t0 + Duration::from_millis(2200)), None);
    }

    #[test]
    fn macs_learned_from_the_lease_name_later_steps() {
        let hub = Hub::default();
        let ip: IpAddr = "10.0.0.42".parse().unwrap();
        hub.dhcp(pxe::driver::Event::Lease {
            mac: "52:54:00:AA:bb:01".parse().unwrap(),
            ip: "10.0.0.42".parse().unwrap(),
        });
        let mut seen = Vec::new();
        hub.drain(|e| seen.push(e.clone()));
        hub.emit(Some(SocketAddr::new(ip, 4321)), None, Step::Script);
        hub.emit(Some("10.0.0.7:80".parse().unwrap()), None, Step::Booting);
        hub.drain(|e| seen.push(e.clone()));
        assert_eq!(seen[0].step, Step::Lease);
        assert_eq!(
            (&seen[1].step, seen[1].mac.map(|m| m.to_string()).as_deref()),
            (&Step::Script, Some("52:54:00:aa:bb:01"))
        );
        assert_eq!(seen[2].mac, None);
        // A full queue drops, and counts, instead of waiting.
        for _ in 0..BACKLOG + 5 {
            hub.emit(None, None, Step::Booting);
        }
        assert_eq!(hub.dropped(), 5);
    }

    #[test]
    fn a_request_names_a_machine_only_from_the_address_its_dhcp_bound() {
        let hub = Hub::with_link(|ip| {
            // 10.0.1.x are on our link, each the host 52:54:00:00:01:x.
            let IpAddr::V4(v4) = ip else { return None };
            let [a, b, c, d] = v4.octets();
            ((a, b, c) == (10, 0, 1)).then_some(Mac([0x52, 0x54, 0, 0, 1, d]))
        });
        let one: Mac = "52:54:00:00:00:01".parse().unwrap();
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 1234);
        // Routed: only after a DHCPREQUEST bound it, and only from that address.
        assert_ne!(hub.vouch(at("10.0.0.7"), one), Vouch::Vouched);
        hub.dhcp(pxe::driver::Event::Lease {
            mac: one,
            ip: "10.0.0.7".parse().unwrap(),
        });
        let mut doubted = 0;
        let mut count =
            |e: &BootEvent| doubted += usize::from(matches!(e.step, Step::Doubted { .. }));
        hub.drain(&mut count);
        assert_eq!(hub.vouch(at("10.0.0.7"), one), Vouch::Vouched);
        assert_ne!(hub.vouch(at("10.0.0.8"), one), Vouch::Vouched);
        // On our link, the host at the address decides, whatever DHCP said.
        let host9: Mac = "52:54:00:00:01:09".parse().unwrap();
        assert_eq!(hub.vouch(at("10.0.1.9"), host9), Vouch::Vouched);
        assert_ne!(hub.vouch(at("10.0.1.9"), one), Vouch::Vouched);
        // Each doubt is an event on the named machine.
        hub.drain(&mut count);
        assert_eq!(doubted, 3);
    }

    /// Item: 65,536 forged requests used to empty the table. Now it stays bounded, and a
    /// machine that went on to fetch something as itself outlives any volume of forged ones.
    #[test]
    fn the_table_is_bounded_and_a_flood_cannot_flush_booting_machines() {
        let hub = Hub::default();
        let machine = IpAddr::V4("10.9.0.1".parse().unwrap());
        hub.learn(machine, Mac([0x52, 0x54, 0, 0, 9, 1]), false);
        hub.learn(machine, Mac([0x52, 0x54, 0, 0, 9, 1]), true);
        for i in 0..(3 * MAX_LEASES as u32) {
            hub.learn(IpAddr::V4(i.into()), Mac([0x52, 0x54, 0, 0, 0, 1]), false);
        }
        assert!(hub.leases.lock().unwrap().len() <= MAX_LEASES);
        assert!(hub.booting(machine));
    }
}
