//! What to do with each datagram that reaches the listening port, as a pure state machine: no
//! sockets, no clock of its own (time comes in as an argument, as in quinn-proto's `Endpoint`).
//!
//! A request starts a transfer (with its first packets to send from a new socket), is refused
//! with an ERROR sent from the listening socket (no socket is opened to say no), or is ignored:
//! a repeat of a request whose transfer already runs, a source over its request rate, or a
//! moment when every slot is held by clients that answer (the client's own retry is the queue). The budget
//! bounds what unauthenticated UDP can make the server do: transfers in all and per source
//! address, and new requests per source address per second (a token bucket), so a flood of
//! forged requests neither exhausts descriptors nor turns the server into an amplifier.
//!
//! At a cap, a transfer whose client has not answered yet may make room: a real client answers
//! our first packet within milliseconds, a forged request never does. But a real client's
//! transfer is as unanswered as a forged one between our first packet and its acknowledgement
//! (longer on a saturated server), and a client whose transfer is ended then is lost for good:
//! it has our first packet and keeps answering a port that is gone, it does not ask again. So
//! the driver also says whether the address is *known*: one that a machine just took in a PXE
//! exchange with us (its DHCPREQUEST, or its request to port 4011), and
//! - a known client's transfer (of its first [`Budget::known_share`]) is evicted only for a
//!   known client's request, once it has had [`Budget::known_grace`] to answer, and strangers'
//!   go first;
//! - an unknown one is evicted for a known client's request at once, and for an unknown
//!   client's request once it has had [`Budget::grace`] to answer;
//! - otherwise the request gets no answer (`Busy`) and the client asks again after its timeout.
//!
//! So forged requests cannot push a booting machine out, a storm of real machines larger than
//! the cap queues on its own retries instead of evicting itself, and a flood from addresses
//! nobody knows cannot hold the server for longer than the grace. Being known is one forged
//! DHCPREQUEST away, so it buys a share and a longer grace, never the server: a flood from
//! "known" addresses holds a few transfers each, for seconds. (Where TFTP clients never talk to
//! our ProxyDHCP, every client is unknown and the grace alone applies.)
//!
//! The request rate is kept per address, and forged requests can use up a machine's: over its
//! rate, an address is still answered when the answer is an OACK (about the request's size, so
//! nothing is amplified, and data flows only after the client acknowledges it), so a flood
//! forged from a machine's address does not silence the machine's own request.
//!
//! The same request again is the subtle case. Before the client has acknowledged anything it
//! is a client that missed our first packet, or UEFI asking again right after aborting its size
//! probe (ERROR 8 on the transfer socket, then the same RRQ here, in either order): both want a
//! fresh transfer, which replaces the old one. Once the client has acknowledged data it is a
//! stale duplicate, and the running transfer answers for itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::transfer::{Limits, Refused, Transfer};

/// Bounds on what the listening port accepts.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Transfers running at once, from everyone.
    pub max_transfers: usize,
    /// Transfers running at once from one address (a client runs one, UEFI two for a moment).
    pub max_per_address: usize,
    /// New requests one address may make per second, sustained…
    pub requests_per_second: f64,
    /// …and in a burst.
    pub burst: f64,
    /// How long an unknown client's transfer may go unanswered before an unknown client's new
    /// request may end it to make room.
    pub grace: Duration,
    /// Addresses whose request rate is remembered; past this, idle ones are forgotten first and
    /// requests from new addresses are dropped while none is idle.
    pub tracked_addresses: usize,
    /// Transfers of one known address that are a booting machine's (never pushed out before
    /// [`Budget::known_grace`]); its others are a stranger's. Being known is one forgeable
    /// packet away: it buys a share, not the server.
    pub known_share: usize,
    /// How long a known client's transfer may go unanswered before, at the server's cap, a new
    /// request may end it (a real client answers in milliseconds, seconds on a saturated server).
    pub known_grace: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_transfers: 512,
            max_per_address: 4,
            requests_per_second: 4.0,
            burst: 8.0,
            grace: Duration::from_secs(1),
            tracked_addresses: 16_384,
            known_share: 2,
            known_grace: Duration::from_secs(3),
        }
    }
}

/// Why a datagram was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The same request as a transfer that is under way.
    Duplicate,
    /// The address is over its request rate: dropped without an answer.
    RateLimited,
    /// Every transfer slot (of the server, or of this address) is held by a client that
    /// answers: no answer now, so the client asks again after its timeout, as firmware does,
    /// and gets a slot then (an ERROR would make it give up).
    Busy,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Open a socket for `peer`, send `send` from it and drive `transfer`; first stop the
    /// transfers in `stop` (the one this request replaces, or one evicted to make room).
    Start {
        id: u64,
        stop: Vec<u64>,
        /// How many of `stop` were evicted to make room (the rest were replaced).
        evicted: usize,
        transfer: Box<Transfer>,
        send: Vec<Vec<u8>>,
    },
    /// Answer from the listening socket and open nothing.
    Refuse(Refused),
    Ignore(Ignored),
}

struct Session {
    id: u64,
    request: Vec<u8>,
    confirmed: bool,
    /// The client answered, data or not (an abort): no strike against its address.
    answered: bool,
    known: bool,
    started: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Endpoint {
    limits: Limits,
    budget: Budget,
    sessions: HashMap<SocketAddr, Session>,
    per_address: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
    /// Transfers of each address that ended with no answer, since its last answered one
    /// ([`UNANSWERED_FORGETS_KNOWN`]).
    unanswered: HashMap<IpAddr, (u32, Instant)>,
    next_id: u64,
}

/// An address whose transfers went unanswered this many times in a row is not treated as
/// known, whatever it did with ProxyDHCP: a booting machine answers, a forger never does.
pub const UNANSWERED_FORGETS_KNOWN: u32 = 1;
/// How long an address's unanswered transfers are held against it.
const UNANSWERED_MEMORY: Duration = Duration::from_secs(120);

impl Endpoint {
    pub fn new(limits: Limits, budget: Budget) -> Endpoint {
        Endpoint {
            limits,
            budget,
            sessions: HashMap::new(),
            per_address: HashMap::new(),
            buckets: HashMap::new(),
            unanswered: HashMap::new(),
            next_id: 1,
        }
    }

    /// Transfers under way.
    pub fn transfers(&self) -> usize {
        self.sessions.len()
    }

    /// A datagram from `peer` on the listening port. `known`: the address belongs to a machine
    /// that booted with us (see the module docs). `lookup` finds a file by its normalised name.
    pub fn on_request(
        &mut self,
        peer: SocketAddr,
        request: &[u8],
        now: Instant,
        known: bool,
        lookup: impl FnOnce(&str) -> Option<bytes::Bytes>,
    ) -> Action {
        let replaces = match self.sessions.get(&peer) {
            Some(s) if s.request == request && s.confirmed => {
                return Action::Ignore(Ignored::Duplicate)
            }
            Some(s) => Some(s.id),
            None => None,
        };
        // Over its rate, an address is still answered where the answer is an OACK: about the
        // size of the request, it amplifies nothing, and data flows only after the client's
        // acknowledgement. So a flood forged from a machine's address cannot silence the
        // machine's own request (firmware asks with options).
        let limited = !self.take_token(peer.ip(), now);
        let known = known && !self.forger(peer.ip(), now) && !self.holds_stale(peer.ip(), now);
        let mut send = Vec::new();
        match Transfer::start(request, lookup, &self.limits, now, &mut send) {
            Ok(_) if limited && !send.first().is_some_and(|p| is_oack(p)) => {
                Action::Ignore(Ignored::RateLimited)
            }
            Err(_) if limited => Action::Ignore(Ignored::RateLimited),
            Ok(transfer) => {
                let mut stop = Vec::new();
                let mut evicted = 0;
                if let Some(old) = replaces {
                    // The same client asking again: no strike against its address.
                    self.on_answered(peer, old);
                    self.on_finished(peer, old);
                    stop.push(old);
                } else {
                    // At a cap, a transfer whose client never answered (a forged request, most
                    // likely) may make room (see the module docs). From one address, the oldest
                    // such transfer of that address goes: the same machine, or the same forger.
                    let ip = peer.ip();
                    let full_here = self.per_address.get(&ip).copied().unwrap_or(0)
                        >= self.budget.max_per_address;
                    if full_here {
                        match self.evict_unconfirmed(|p, _| p.ip() == ip) {
                            Some(id) => stop.push(id),
                            None => return Action::Ignore(Ignored::Busy),
                        }
                    }
                    if self.sessions.len() >= self.budget.max_transfers {
                        let (grace, known_grace) = (self.budget.grace, self.budget.known_grace);
                        let evictable = |_: &SocketAddr, s: &Session| {
                            let age = now.saturating_duration_since(s.started);
                            match s.known {
                                false => known || age >= grace,
                                // Only for a machine: strangers never push a machine out.
                                true => known && age >= known_grace,
                            }
                        };
                        match self.evict_unconfirmed(evictable) {
                            Some(id) => stop.push(id),
                            None => return Action::Ignore(Ignored::Busy),
                        }
                    }
                    evicted = stop.len();
                }
                let id = self.next_id;
                self.next_id += 1;
                // A known address's share; its transfers beyond it are a stranger's.
                let ip = peer.ip();
                let known = known
                    && self
                        .sessions
                        .iter()
                        .filter(|(p, s)| s.known && p.ip() == ip)
                        .count()
                        < self.budget.known_share;
                self.sessions.insert(
                    peer,
                    Session {
                        id,
                        request: request.to_vec(),
                        confirmed: false,
                        answered: false,
                        known,
                        started: now,
                    },
                );
                *self.per_address.entry(peer.ip()).or_insert(0) += 1;
                Action::Start {
                    id,
                    stop,
                    evicted,
                    transfer: Box::new(transfer),
                    send,
                }
            }
            Err(refused) => Action::Refuse(refused),
        }
    }

    /// Ends the oldest transfer whose client has not answered yet, among those `may_go`:
    /// a stranger's first.
    fn evict_unconfirmed(&mut self, may_go: impl Fn(&SocketAddr, &Session) -> bool) -> Option<u64> {
        let (peer, id) = self
            .sessions
            .iter()
            .filter(|(p, s)| !s.confirmed && may_go(p, s))
            .min_by_key(|(_, s)| (s.known, s.started, s.id))
            .map(|(p, s)| (*p, s.id))?;
        self.on_finished(peer, id);
        Some(id)
    }

    /// Transfer `id` got its first acknowledgement: a repeat of its request is stale from now
    /// on, and its address answers.
    pub fn on_confirmed(&mut self, peer: SocketAddr, id: u64) {
        if let Some(s) = self.sessions.get_mut(&peer).filter(|s| s.id == id) {
            s.confirmed = true;
            self.unanswered.remove(&peer.ip());
        }
    }

    /// Transfer `id`'s client answered without taking data (it aborted, or asked again).
    pub fn on_answered(&mut self, peer: SocketAddr, id: u64) {
        if let Some(s) = self.sessions.get_mut(&peer).filter(|s| s.id == id) {
            s.answered = true;
            self.unanswered.remove(&peer.ip());
        }
    }

    /// Whether `ip`'s last transfers all went unanswered ([`UNANSWERED_FORGETS_KNOWN`]).
    fn forger(&self, ip: IpAddr, now: Instant) -> bool {
        self.unanswered.get(&ip).is_some_and(|(n, at)| {
            *n >= UNANSWERED_FORGETS_KNOWN && now.saturating_duration_since(*at) < UNANSWERED_MEMORY
        })
    }

    /// Whether `ip` holds a transfer that has gone unanswered for [`Budget::known_grace`]: a
    /// machine asks for its next file once its last one is answered; a forger asks on anyway.
    fn holds_stale(&self, ip: IpAddr, now: Instant) -> bool {
        self.sessions.iter().any(|(p, s)| {
            p.ip() == ip
                && !s.confirmed
                && now.saturating_duration_since(s.started) >= self.budget.known_grace
        })
    }

    /// Transfer `id` ended (or was stopped).
    pub fn on_finished(&mut self, peer: SocketAddr, id: u64) {
        if let Some(s) = self.sessions.get(&peer).filter(|s| s.id == id) {
            if !s.confirmed && !s.answered {
                let at = s.started;
                if self.unanswered.len() >= self.budget.tracked_addresses
                    && !self.unanswered.contains_key(&peer.ip())
                {
                    self.unanswered
                        .retain(|_, (_, t)| at.saturating_duration_since(*t) < UNANSWERED_MEMORY);
                    if self.unanswered.len() >= self.budget.tracked_addresses {
                        self.unanswered.clear();
                    }
                }
                let e = self.unanswered.entry(peer.ip()).or_insert((0, at));
                *e = (e.0.saturating_add(1), at);
            }
            self.sessions.remove(&peer);
            if let Some(n) = self.per_address.get_mut(&peer.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&peer.ip());
                }
            }
        }
    }

    fn take_token(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.budget.requests_per_second, self.budget.burst);
        let refill = |b: &Bucket| {
            let secs = now.saturating_duration_since(b.at).as_secs_f64();
            (b.tokens + secs * rate).min(burst)
        };
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.budget.tracked_addresses {
            // Forget addresses whose bucket has filled up again: they are idle.
            self.buckets.retain(|_, b| refill(b) < burst);
            if self.buckets.len() >= self.budget.tracked_addresses {
                return false;
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = refill(b);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

fn is_oack(packet: &[u8]) -> bool {
    matches!(
        crate::packet::Packet::parse(packet),
        Ok(crate::packet::Packet::Oack { .. })
    )
}

/// How long a source must stay quiet to regain its whole burst.
pub fn refill_time(budget: &Budget) -> Duration {
    Duration::from_secs_f64(budget.burst / budget.requests_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{rrq, Packet};

    fn file() -> Option<bytes::Bytes> {
        Some(vec![7u8; 3000].into())
    }

    fn addr(i: u32, port: u16) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), port))
    }

    fn started(a: &Action) -> u64 {
        match a {
            Action::Start { id, .. } => *id,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn the_uefi_re_ask_replaces_the_probe_and_a_stale_duplicate_is_ignored() {
        let mut e = Endpoint::new(Limits::default(), Budget::default());
        let now = Instant::now();
        let peer = addr(1, 1000);
        let req = rrq("ipxe.efi", "octet", &[("tsize", "0"), ("blksize", "1468")]);
        let probe = started(&e.on_request(peer, &req, now, false, |_| file()));
        // UEFI aborts after the OACK and asks again: a fresh transfer replaces the probe,
        // whichever of the ERROR and the new RRQ is seen first.
        let a = e.on_request(peer, &req, now, false, |_| file());
        assert!(matches!(&a, Action::Start { stop, .. } if stop == &[probe]));
        let real = started(&a);
        assert_eq!(e.transfers(), 1);
        e.on_finished(peer, probe); // the probe's task ends late: no effect on the new one
        assert_eq!(e.transfers(), 1);
        // Once data flows, the same request again is a stale retransmission.
        e.on_confirmed(peer, real);
        assert!(matches!(
            e.on_request(peer, &req, now, false, |_| file()),
            Action::Ignore(Ignored::Duplicate)
        ));
        // Another request from the same port moves on to it.
        let other = rrq("undionly.kpxe", "octet", &[]);
        assert!(matches!(
            e.on_request(peer, &other, now, false, |_| file()),
            Action::Start { stop, .. } if stop == [real]
        ));
        e.on_finished(peer, real + 1);
        assert_eq!(e.transfers(), 0);
    }

    #[test]
    fn a_flood_from_one_address_is_capped_and_rate_limited() {
        let mut e = Endpoint::new(Limits::default(), Budget::default());
        let now = Instant::now();
        let req = rrq("ipxe.efi", "octet", &[]);
        let (mut starts, mut evicting, mut dropped) = (0, 0, 0);
        let mut ids = Vec::new();
        for port in 0..1200u16 {
            match e.on_request(addr(1, 2000 + port), &req, now, false, |_| file()) {
                Action::Start { stop, id, .. } => {
                    starts += 1;
                    evicting += stop.len();
                    ids.push((port, id));
                }
                Action::Ignore(Ignored::RateLimited) => dropped += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(starts, 8, "the burst");
        assert_eq!(
            evicting, 4,
            "past max_per_address, unanswered transfers make room"
        );
        assert_eq!(e.transfers(), 4);
        assert_eq!(dropped, 1192, "the remainder gets no answer at all");
        // Transfers whose clients answered are never evicted: a new request waits (no answer).
        for (port, id) in ids.iter().skip(4) {
            e.on_confirmed(addr(1, 2000 + port), *id);
        }
        let later = now + Duration::from_secs(1);
        let a = e.on_request(addr(1, 9999), &req, later, false, |_| file());
        assert!(matches!(&a, Action::Ignore(Ignored::Busy)), "{a:?}");
    }

    fn capped(max_transfers: usize) -> Endpoint {
        Endpoint::new(
            Limits::default(),
            Budget {
                max_transfers,
                ..Budget::default()
            },
        )
    }

    #[test]
    fn clients_that_answer_fill_the_server_and_the_rest_wait() {
        let mut e = capped(100);
        let now = Instant::now();
        let req = rrq("ipxe.efi", "octet", &[]);
        for i in 0..100 {
            let id = started(&e.on_request(addr(i, 1000), &req, now, false, |_| file()));
            e.on_confirmed(addr(i, 1000), id);
        }
        let later = now + Duration::from_secs(60);
        for i in 100..300 {
            let a = e.on_request(addr(i, 1000), &req, later, true, |_| file());
            assert!(matches!(a, Action::Ignore(Ignored::Busy)), "{a:?}");
        }
        assert_eq!(e.transfers(), 100);
    }

    #[test]
    fn forged_requests_make_room_for_each_other_only_after_the_grace() {
        let mut e = capped(100);
        let now = Instant::now();
        let req = rrq("ipxe.efi", "octet", &[]);
        let (mut starts, mut busy) = (Vec::new(), 0);
        for i in 0..1000 {
            match e.on_request(addr(i, 1000), &req, now, false, |_| file()) {
                Action::Start { id, stop, .. } => {
                    assert!(stop.is_empty());
                    starts.push(id);
                }
                Action::Ignore(Ignored::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((starts.len(), busy), (100, 900));
        let grace = Budget::default().grace;
        let a = e.on_request(addr(5000, 1), &req, now + grace, false, |_| file());
        assert!(
            matches!(&a, Action::Start { stop, evicted: 1, .. } if stop == &[starts[0]]),
            "{a:?}"
        );
    }

    #[test]
    fn a_flood_from_unknown_addresses_cannot_push_out_a_booting_machine() {
        let mut e = capped(10);
        let now = Instant::now();
        let req = rrq("ipxe.efi", "octet", &[]);
        // Three machines that just did their PXE exchange ask first; their acknowledgements
        // are still on the way while forged requests arrive for five seconds.
        let machines: Vec<u64> = (0..3)
            .map(|i| started(&e.on_request(addr(i, 1000), &req, now, true, |_| file())))
            .collect();
        let mut evicted = Vec::new();
        for i in 0..1000u32 {
            let at = now + Duration::from_millis(u64::from(i) * 5);
            if let Action::Start { stop, .. } =
                e.on_request(addr(100 + i, 1000), &req, at, false, |_| file())
            {
                evicted.extend(stop);
            }
        }
        assert!(!evicted.is_empty(), "the flood made room for itself");
        assert!(
            evicted.iter().all(|id| !machines.contains(id)),
            "{evicted:?}"
        );
        assert_eq!(e.transfers(), 10);
        // Another machine gets a slot at once: the oldest forged transfer makes room.
        let at = now + Duration::from_millis(5000);
        let a = e.on_request(addr(7, 1000), &req, at, true, |_| file());
        assert!(matches!(&a, Action::Start { evicted: 1, .. }), "{a:?}");
    }

    #[test]
    fn a_storm_larger_than_the_cap_waits_instead_of_evicting_itself() {
        let mut e = capped(10);
        let now = Instant::now();
        let req = rrq("ipxe.efi", "octet", &[]);
        let mut running = Vec::new();
        for i in 0..30 {
            match e.on_request(addr(i, 1000), &req, now, true, |_| file()) {
                Action::Start { id, stop, .. } => {
                    assert!(stop.is_empty());
                    running.push((i, id));
                }
                Action::Ignore(Ignored::Busy) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(running.len(), 10);
        // Within its grace, a machine's unanswered transfer is left alone…
        let later = now + Budget::default().known_grace - Duration::from_millis(1);
        let a = e.on_request(addr(10, 1000), &req, later, true, |_| file());
        assert!(matches!(a, Action::Ignore(Ignored::Busy)), "{a:?}");
        // …and when one ends, the next machine to ask again gets its slot.
        let (i, id) = running[0];
        e.on_finished(addr(i, 1000), id);
        let a = e.on_request(addr(10, 1000), &req, later, true, |_| file());
        assert!(matches!(a, Action::Start { evicted: 0, .. }), "{a:?}");
        // Past the grace, an unanswered one makes room (a client that has not answered in
        // seconds is gone, or was never there).
        let past = now + Budget::default().known_grace;
        let a = e.on_request(addr(11, 1000), &req, past, true, |_| file());
        assert!(matches!(a, Action::Start { evicted: 1, .. }), "{a:?}");
    }

    /// Item: being known is one forged DHCPREQUEST away. A flood of forged requests from
    /// "known" addresses holds a share of each address and, once its transfers go unanswered,
    /// nothing: machines that answer keep booting.
    #[test]
    fn a_flood_from_known_addresses_cannot_keep_machines_out() {
        let mut e = capped(20);
        let t0 = Instant::now();
        let req = rrq("ipxe.efi", "octet", &[("blksize", "1468"), ("tsize", "0")]);
        let (mut machines, mut waited, mut last_wait) = (0, 0, 0);
        let mut running: Vec<(SocketAddr, u64, Instant)> = Vec::new();
        // 64 forged "known" addresses, 57 requests a second between them, for 25 seconds; a
        // machine every half second for 20, which answers at once, asking again each second
        // while there is no answer.
        let mut pending: Vec<(SocketAddr, Instant)> = Vec::new();
        for ms in (0..25_000u64).step_by(17) {
            let now = t0 + Duration::from_millis(ms);
            // Forged transfers time out unanswered after 4 s.
            running.retain(|(p, id, at)| {
                let over = now.saturating_duration_since(*at) >= Duration::from_secs(4);
                if over {
                    e.on_finished(*p, *id);
                }
                !over
            });
            let forger = addr(1000 + (ms / 17 % 64) as u32, 3000 + (ms % 1000) as u16);
            if let Action::Start { id, .. } = e.on_request(forger, &req, now, true, |_| file()) {
                running.push((forger, id, now));
            }
            if ms < 20_000 && (ms / 500 != ms.saturating_sub(17) / 500 || ms == 0) {
                pending.push((addr(ms as u32 / 500, 1000), now));
            }
            pending.retain(|(m, next)| {
                if *next > now {
                    return true;
                }
                match e.on_request(*m, &req, now, true, |_| file()) {
                    Action::Start { id, .. } => {
                        e.on_confirmed(*m, id);
                        e.on_finished(*m, id);
                        machines += 1;
                        false
                    }
                    _ => {
                        waited += 1;
                        last_wait = ms;
                        true
                    }
                }
            });
            for p in pending.iter_mut().filter(|(_, next)| *next <= now) {
                p.1 = now + Duration::from_secs(1);
            }
        }
        assert!(pending.is_empty(), "machines left waiting: {pending:?}");
        assert_eq!(machines, 40);
        // While the forgers still count as known, machines ask again a few times; once their
        // transfers have gone unanswered, machines get a slot at their first request.
        assert!(waited < 80, "machines asked again {waited} times");
        assert!(last_wait < 12_000, "a machine waited at {last_wait} ms");
        // The forgers lost their standing: their requests are strangers' now.
        assert!(e.forger(addr(1000, 0).ip(), t0 + Duration::from_secs(25)));
    }

    /// Item: a flood forged from a machine's own address uses up that address's request rate;
    /// the machine's own request (with options, as firmware asks) is still answered, with an
    /// OACK, which amplifies nothing.
    #[test]
    fn a_flood_forged_from_a_machines_address_does_not_silence_it() {
        let mut e = Endpoint::new(Limits::default(), Budget::default());
        let now = Instant::now();
        let plain = rrq("ipxe.efi", "octet", &[]);
        for port in 0..200u16 {
            let _ = e.on_request(addr(1, 4000 + port), &plain, now, false, |_| file());
        }
        assert!(matches!(
            e.on_request(addr(1, 5000), &plain, now, false, |_| file()),
            Action::Ignore(Ignored::RateLimited)
        ));
        let firmware = rrq("ipxe.efi", "octet", &[("blksize", "1468"), ("tsize", "0")]);
        match e.on_request(addr(1, 6000), &firmware, now, false, |_| file()) {
            Action::Start { send, .. } => {
                assert_eq!(send.len(), 1);
                assert!(is_oack(&send[0]) && send[0].len() < 64, "{:?}", send[0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_come_back_without_a_transfer() {
        let mut e = Endpoint::new(Limits::default(), Budget::default());
        let now = Instant::now();
        let a = e.on_request(addr(1, 1), &rrq("nope", "octet", &[]), now, false, |_| None);
        match a {
            Action::Refuse(r) => assert!(matches!(
                Packet::parse(&r.packet),
                Ok(Packet::Error { code: 1, .. })
            )),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.transfers(), 0);
    }

    #[test]
    fn forged_sources_cannot_grow_memory_without_bound() {
        let budget = Budget {
            tracked_addresses: 1000,
            max_transfers: 10_000,
            ..Budget::default()
        };
        let mut e = Endpoint::new(Limits::default(), budget.clone());
        let now = Instant::now();
        let req = rrq("nope", "octet", &[]);
        for i in 0..5000 {
            let _ = e.on_request(addr(i, 1), &req, now, false, |_| None);
        }
        assert!(e.buckets.len() <= 1000);
        // Once they have been quiet long enough, new addresses are served again.
        let later = now + refill_time(&budget) + Duration::from_millis(1);
        assert!(matches!(
            e.on_request(addr(999_999, 1), &req, later, false, |_| None),
            Action::Refuse(_)
        ));
    }
}
