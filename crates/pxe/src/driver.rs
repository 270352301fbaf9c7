//! The tokio layer around [`crate::answer`]: receives datagrams, learns which interface and local
//! address each arrived on (`IP_PKTINFO`), and sends the reply out of that same interface.
//!
//! Port 67 is often taken by a DHCP server on the same host. Then [`DhcpSocket::raw`] receives
//! through a raw IPv4 socket with a BPF filter for UDP destination port 67 (a copy of each packet;
//! the DHCP server still gets its own) and sends replies with a UDP header it writes itself, so they
//! still come from port 67.
//!
//! Nothing between receiving a DISCOVER and sending its OFFER waits on disk, network or a lock.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::endpoint::{handle, Datagram, Dropped, Settings};
use crate::{Ignored, Port};

/// Counters a status page or metrics endpoint can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    pub ignored: AtomicU64,
    pub malformed: AtomicU64,
    pub send_errors: AtomicU64,
    /// Requests the kernel dropped because the receive buffer was full (`SO_RXQ_OVFL`).
    pub kernel_drops: AtomicU64,
    /// Datagrams not answered, by [`Dropped::reason`] (and `not_allowed`, for machines a
    /// [`Config::allow`] said no to), in the order of [`UNANSWERED`].
    pub unanswered: [AtomicU64; UNANSWERED.len()],
}

/// The reasons [`Stats::unanswered`] counts.
pub const UNANSWERED: [&str; 13] = [
    "not_request",
    "message_type",
    "not_pxe",
    "not_ethernet",
    "unknown_arch",
    "no_boot_file",
    "bad_relay",
    "bad_source",
    "other_interface",
    "oversized",
    "malformed",
    "no_address",
    "not_allowed",
];

impl Stats {
    /// Counts a datagram not answered for `reason` (one of [`UNANSWERED`]).
    pub fn unanswered(&self, reason: &str) {
        if let Some(i) = UNANSWERED.iter().position(|r| *r == reason) {
            self.unanswered[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The unanswered counts, by reason.
    pub fn unanswered_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        UNANSWERED
            .iter()
            .zip(&self.unanswered)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }
}

impl Stats {
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        [
            ("received", self.received.load(Ordering::Relaxed)),
            ("answered", self.answered.load(Ordering::Relaxed)),
            ("ignored", self.ignored.load(Ordering::Relaxed)),
            ("malformed", self.malformed.load(Ordering::Relaxed)),
            ("send_errors", self.send_errors.load(Ordering::Relaxed)),
            ("kernel_drops", self.kernel_drops.load(Ordering::Relaxed)),
        ]
    }
}

/// Receive buffer of the DHCP sockets: a boot storm (a rack powered on at once) is hundreds of
/// DISCOVERs within milliseconds, several times for each machine, and the default buffer
/// (about 200 KB, a few hundred datagrams with their overhead) would drop some.
const RECEIVE_BUFFER: i32 = 8 << 20;

/// Where a datagram came from and where it landed.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub source: SocketAddrV4,
    pub ifindex: u32,
    /// Our address on the receiving interface, as the kernel picked it for replies.
    pub local: Ipv4Addr,
    /// Datagrams the kernel has dropped on this socket so far, when it says (`SO_RXQ_OVFL`).
    pub drops: Option<u32>,
}

/// A UDP endpoint for ProxyDHCP or the PXE boot server: an ordinary bound socket, or the raw
/// fallback for port 67.
pub struct DhcpSocket {
    fd: AsyncFd<Socket>,
    raw_port: Option<u16>,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sizes the receive buffer for bursts (past `net.core.rmem_max` where allowed, as root) and asks
/// the kernel to report its drops with each datagram. Best effort: a smaller buffer still works.
fn size_receive_buffer(s: &Socket) {
    let fd = s.as_raw_fd();
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER);
    }
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
}

fn register(s: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the Socket owns its fd, which stays open and unchanged until the AsyncFd drops it.
    unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)
}

impl DhcpSocket {
    /// Binds UDP `addr` with broadcast and `IP_PKTINFO` enabled.
    pub fn bind(addr: SocketAddrV4) -> io::Result<Self> {
        Self::bind_with(addr, true)
    }

    /// As [`DhcpSocket::bind`], without `SO_REUSEADDR`: binding fails while another socket holds
    /// the port (TFTP, where two servers on one port would split the requests between them).
    pub fn bind_exclusive(addr: SocketAddrV4) -> io::Result<Self> {
        Self::bind_with(addr, false)
    }

    fn bind_with(addr: SocketAddrV4, reuse: bool) -> io::Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(reuse)?;
        s.set_broadcast(true)?;
        s.set_nonblocking(true)?;
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        size_receive_buffer(&s);
        s.bind(&addr.into())?;
        Ok(DhcpSocket {
            fd: register(s)?,
            raw_port: None,
        })
    }

    /// Receives UDP datagrams to `port` through a raw socket, for when another process holds it.
    /// Needs CAP_NET_RAW.
    pub fn raw(port: u16) -> io::Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?;
        s.set_broadcast(true)?;
        s.set_nonblocking(true)?;
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        size_receive_buffer(&s);
        attach_port_filter(s.as_raw_fd(), port)?;
        Ok(DhcpSocket {
            fd: register(s)?,
            raw_port: Some(port),
        })
    }

    pub fn is_raw(&self) -> bool {
        self.raw_port.is_some()
    }

    /// Receives one datagram; for the raw socket, strips the IP and UDP headers.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_pktinfo(fd.get_ref().as_raw_fd(), buf)) {
                Ok(Ok(mut r)) => {
                    if let Some(port) = self.raw_port {
                        match strip_ip_udp(&buf[..r.len], port) {
                            Some((offset, len, sport)) => {
                                buf.copy_within(offset..offset + len, 0);
                                r.len = len;
                                r.source.set_port(sport);
                            }
                            None => continue,
                        }
                    }
                    return Ok(r);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `data` to `dest` out of interface `ifindex`, from `source`.
    pub async fn send(
        &self,
        data: &[u8],
        dest: SocketAddrV4,
        ifindex: u32,
        source: Ipv4Addr,
    ) -> io::Result<()> {
        let packet;
        let payload = match self.raw_port {
            Some(port) => {
                packet = udp_packet(port, source, dest, data);
                &packet[..]
            }
            None => data,
        };
        let raw = self.raw_port.is_some();
        loop {
            let mut guard = self.fd.ready(Interest::WRITABLE).await?;
            match guard.try_io(|fd| {
                send_pktinfo(
                    fd.get_ref().as_raw_fd(),
                    payload,
                    dest,
                    ifindex,
                    source,
                    raw,
                )
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Classic BPF over an IPv4 raw socket (data starts at the IP header): accept unfragmented UDP
/// whose destination port is `port`.
fn attach_port_filter(fd: RawFd, port: u16) -> io::Result<()> {
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let prog = [
        ins(0x28, 0, 0, 6),               // ldh [6]            flags + fragment offset
        ins(0x45, 4, 0, 0x1fff),          // jset #0x1fff       a later fragment: drop
        ins(0xb1, 0, 0, 0),               // ldxb 4*([0]&0xf)   IP header length
        ins(0x48, 0, 0, 2),               // ldh [x+2]          UDP destination port
        ins(0x15, 0, 1, u32::from(port)), // jeq #port
        ins(0x06, 0, 0, 0xffff),          // ret accept
        ins(0x06, 0, 0, 0),               // ret drop
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const _ as *const libc::c_void,
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// For a raw datagram: (payload offset, payload length, UDP source port), if it is a whole UDP
/// datagram to `port`.
fn strip_ip_udp(pkt: &[u8], port: u16) -> Option<(usize, usize, u16)> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl + 8 || pkt[9] != 17 {
        return None;
    }
    let udp = &pkt[ihl..];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if dport != port || ulen < 8 || ulen > udp.len() {
        return None;
    }
    Some((ihl + 8, ulen - 8, sport))
}

fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// A UDP header plus payload, checksummed over the IPv4 pseudo-header.
fn udp_packet(sport: u16, source: Ipv4Addr, dest: SocketAddrV4, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut p = Vec::with_capacity(len as usize);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dest.port().to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    let mut sum = checksum_add(0, &source.octets());
    sum = checksum_add(sum, &dest.ip().octets());
    sum += 17 + u32::from(len);
    sum = checksum_add(sum, &p);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if c == 0 {
        c = 0xffff;
    }
    p[6..8].copy_from_slice(&c.to_be_bytes());
    p
}

const CMSG_SPACE_PKTINFO: usize = 64;

fn recv_pktinfo(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all pointers reference live, correctly sized buffers for the duration of the call;
    // control messages are walked with the libc CMSG helpers within msg_controllen.
    unsafe {
        let mut src: libc::sockaddr_in = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut _,
            iov_len: buf.len(),
        };
        let mut control = [0u8; CMSG_SPACE_PKTINFO];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut src as *mut _ as *mut _;
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut _;
        msg.msg_controllen = control.len();
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let len = n.min(buf.len());
        let mut ifindex = 0;
        let mut local = Ipv4Addr::UNSPECIFIED;
        let mut drops = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                ifindex = info.ipi_ifindex as u32;
                local = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
            }
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let source = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(src.sin_addr.s_addr)),
            u16::from_be(src.sin_port),
        );
        // A datagram larger than the buffer is reported by its real size so the caller can count
        // it as malformed instead of parsing a truncated copy.
        Ok(Received {
            len: if n > buf.len() { usize::MAX } else { len },
            source,
            ifindex,
            local,
            drops,
        })
    }
}

fn send_pktinfo(
    fd: RawFd,
    data: &[u8],
    dest: SocketAddrV4,
    ifindex: u32,
    source: Ipv4Addr,
    raw: bool,
) -> io::Result<()> {
    // SAFETY: as in recv_pktinfo; the control buffer is large enough for one in_pktinfo.
    unsafe {
        let mut to: libc::sockaddr_in = zeroed();
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(*dest.ip()).to_be();
        to.sin_port = if raw { 0 } else { dest.port().to_be() };
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut control = [0u8; CMSG_SPACE_PKTINFO];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut to as *mut _ as *mut _;
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if ifindex != 0 || !source.is_unspecified() {
            let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr() as *mut _;
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
            let info = libc::in_pktinfo {
                ipi_ifindex: ifindex as i32,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo, info);
        }
        let n = libc::sendmsg(fd, &msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The first IPv4 address of an interface, by index.
pub fn interface_ipv4(ifindex: u32) -> Option<Ipv4Addr> {
    interfaces()
        .into_iter()
        .find(|i| i.index == ifindex)
        .and_then(|i| i.ipv4)
}

/// A network interface as Daybreak sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub ipv4: Option<Ipv4Addr>,
}

/// All interfaces with their first IPv4 address.
pub fn interfaces() -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    // SAFETY: getifaddrs allocates a list we walk read-only and free exactly once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let index = libc::if_nametoindex(ifa.ifa_name);
            let v4 = if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            } else {
                None
            };
            match out.iter_mut().find(|i| i.name == name) {
                Some(i) => {
                    if i.ipv4.is_none() {
                        i.ipv4 = v4;
                    }
                }
                None => out.push(Interface {
                    name,
                    index,
                    ipv4: v4,
                }),
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// What the driver needs to answer.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    /// Told of each answer and of each address a client takes.
    pub events: Option<Sink>,
    /// Which machines to answer (by MAC, `aa:bb:cc:dd:ee:ff`, UUID or architecture); all when
    /// absent. Called on the DHCP path: it must not block (an API behind it answers from a
    /// cache, machine profiles from memory).
    pub allow: Option<Allow>,
}

/// See [`Config::allow`].
#[derive(Clone)]
pub struct Allow(pub Arc<dyn Fn(&crate::Client) -> bool + Send + Sync>);

impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allow")
    }
}

/// What the driver tells the rest of the server, besides its log lines.
#[derive(Debug, Clone)]
pub enum Event {
    /// An offer (port 67) or an ack (port 4011) went out.
    Answered {
        mac: crate::Mac,
        firmware: String,
        /// The boot path chosen (`UEFI PXE, then iPXE`), as the offer line names it.
        path: &'static str,
        target: String,
        port: Port,
    },
    /// A client told the network's DHCP server which address it takes ([`crate::lease`]).
    Lease { mac: crate::Mac, ip: Ipv4Addr },
}

/// Where [`Event`]s go. Called on the DHCP path: it must not block.
#[derive(Clone)]
pub struct Sink(pub Arc<dyn Fn(Event) + Send + Sync>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// Receives and answers forever. Cancel by dropping the future (UDP receive is cancel-safe).
pub async fn run(socket: DhcpSocket, port: Port, config: Arc<Config>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; crate::message::MAX_MESSAGE_LEN + 64];
    let port_name = match port {
        Port::Dhcp => "proxydhcp",
        Port::ProxyBoot => "pxe-4011",
    };
    let mut seen_drops = 0u64;
    loop {
        let rx = match socket.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(port = port_name, error = %e, "receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = rx.drops {
            // The kernel's count for this socket; the stats add up both sockets' growth.
            let before = seen_drops;
            seen_drops = u64::from(total);
            if seen_drops > before {
                stats
                    .kernel_drops
                    .fetch_add(seen_drops - before, Ordering::Relaxed);
                tracing::warn!(
                    port = port_name,
                    dropped = seen_drops - before,
                    "the kernel dropped requests: the receive buffer was full"
                );
            }
        }
        let truncated = rx.len == usize::MAX;
        let datagram = Datagram {
            bytes: if truncated { &[] } else { &buf[..rx.len] },
            source: rx.source,
            ifindex: rx.ifindex,
            local: rx.local,
            truncated,
        };
        let handled = handle(&datagram, port, &config.settings, interface_ipv4);
        if let (Some(sink), Some((mac, ip))) = (&config.events, handled.lease) {
            (sink.0)(Event::Lease { mac, ip });
        }
        let t = match handled.outcome {
            Ok(t) => t,
            Err(why) => {
                note_dropped(&why, port_name, &datagram, &stats);
                continue;
            }
        };
        if let Some(allow) = &config.allow {
            if !(allow.0)(&t.reply.client) {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
                stats.unanswered("not_allowed");
                tracing::debug!(
                    port = port_name,
                    mac = %t.reply.client.mac,
                    "not answered: this machine is not to be booted (yet)"
                );
                continue;
            }
        }
        match socket
            .send(&t.bytes, t.destination, t.ifindex, t.source)
            .await
        {
            Ok(()) => {
                stats.answered.fetch_add(1, Ordering::Relaxed);
                let kind = match port {
                    Port::Dhcp => "offer",
                    Port::ProxyBoot => "ack",
                };
                let client = &t.reply.client;
                let firmware = firmware_label(client);
                tracing::info!(
                    mac = %client.mac,
                    firmware = %firmware,
                    path = boot_path(client, t.reply.target.as_str()),
                    boot = t.reply.target.as_str(),
                    to = %t.destination,
                    "{kind}"
                );
                if let Some(sink) = &config.events {
                    (sink.0)(Event::Answered {
                        mac: client.mac,
                        firmware,
                        path: boot_path(client, t.reply.target.as_str()),
                        target: t.reply.target.as_str().to_string(),
                        port,
                    });
                }
            }
            Err(e) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(mac = %t.reply.client.mac, to = %t.destination, error = %e, "sending reply failed");
            }
        }
    }
}

/// Counts and logs a datagram that got no answer: most are ordinary traffic, so only what an
/// operator should act on is above debug.
fn note_dropped(why: &Dropped, port_name: &str, d: &Datagram<'_>, stats: &Stats) {
    stats.unanswered(why.reason());
    match why {
        Dropped::Oversized | Dropped::Malformed(_) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(port = port_name, from = %d.source, reason = ?why, "dropped malformed packet");
        }
        Dropped::NoAddress(ifindex) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                ifindex,
                "request on an interface with no IPv4 address; ignored"
            );
        }
        Dropped::Ignored(Ignored::NoBootFile(arch)) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                arch = arch.name(),
                from = %d.source,
                "no iPXE binary for this architecture; not answering (see --ipxe-arm64)"
            );
        }
        other => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(port = port_name, from = %d.source, reason = ?other, "not answered");
        }
    }
}

/// The boot path an answer (to `target`) puts a machine on, for the offer's log line.
pub fn boot_path(c: &crate::Client, target: &str) -> &'static str {
    use crate::{Arch, Firmware};
    match (c.firmware, c.arch) {
        (Firmware::Pxe, Arch::EfiX64) if target.ends_with("shimx64.efi") => {
            "UEFI PXE, then the Secure Boot chain"
        }
        (Firmware::Pxe, Arch::Bios) => "BIOS PXE, then iPXE",
        (Firmware::Pxe, Arch::EfiArm64) => "arm64 UEFI PXE, then iPXE",
        (Firmware::Pxe, _) => "UEFI PXE, then iPXE",
        (Firmware::HttpBoot, Arch::EfiArm64) => "arm64 UEFI HTTP Boot, then iPXE",
        (Firmware::HttpBoot, _) => "UEFI HTTP Boot, then iPXE",
        (Firmware::Ipxe { http: false }, _) => "iPXE without HTTP, then an iPXE with it",
        (Firmware::Ipxe { http: true } | Firmware::Pixiecore, _) => "iPXE: the boot script",
    }
}

/// A short human label: "UEFI x64 PXE", "BIOS iPXE (HTTP)".
pub fn firmware_label(c: &crate::Client) -> String {
    let what = match c.firmware {
        crate::Firmware::Pxe => "PXE",
        crate::Firmware::Ipxe { http: true } => "iPXE",
        crate::Firmware::Ipxe { http: false } => "iPXE (no HTTP)",
        crate::Firmware::Pixiecore => "iPXE (pixiecore)",
        crate::Firmware::HttpBoot => "HTTP boot",
    };
    format!("{} {}", c.arch.name(), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_a_datagram_is_not_answered_is_counted() {
        use crate::message::DecodeError;
        let stats = Stats::default();
        let source = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 68);
        let all = [
            Dropped::OtherInterface(1),
            Dropped::Oversized,
            Dropped::BadSource(source),
            Dropped::Malformed(DecodeError::BadMagic),
            Dropped::NoAddress(1),
            Dropped::Ignored(Ignored::NotRequest),
            Dropped::Ignored(Ignored::MessageType),
            Dropped::Ignored(Ignored::NotPxe),
            Dropped::Ignored(Ignored::NotEthernet),
            Dropped::Ignored(Ignored::UnknownArch(99)),
            Dropped::Ignored(Ignored::NoBootFile(crate::Arch::EfiArm64)),
            Dropped::Ignored(Ignored::BadRelay(Ipv4Addr::LOCALHOST)),
            Dropped::Ignored(Ignored::BadSource),
        ];
        for d in &all {
            assert!(UNANSWERED.contains(&d.reason()), "{d:?}");
            stats.unanswered(d.reason());
        }
        stats.unanswered("not_allowed");
        let total: u64 = stats.unanswered_counts().map(|(_, n)| n).sum();
        assert_eq!(total, all.len() as u64 + 1);
    }

    #[test]
    fn the_offer_line_names_each_boot_path() {
        use crate::message::{Message, MessageType};
        let client = |opts: Vec<(u8, Vec<u8>)>| {
            let m = Message::client_request(MessageType::Discover, 1, [2, 0, 0, 0, 0, 1], opts);
            crate::classify(&m).unwrap()
        };
        let http = (60, b"HTTPClient".to_vec());
        for (opts, want) in [
            (vec![(93, vec![0, 0])], "BIOS PXE, then iPXE"),
            (vec![(93, vec![0, 7])], "UEFI PXE, then iPXE"),
            (vec![(93, vec![0, 11])], "arm64 UEFI PXE, then iPXE"),
            (
                vec![(93, vec![0, 16]), http.clone()],
                "UEFI HTTP Boot, then iPXE",
            ),
            (
                vec![(93, vec![0, 19]), http],
                "arm64 UEFI HTTP Boot, then iPXE",
            ),
            (
                vec![
                    (93, vec![0, 0]),
                    (77, b"iPXE".to_vec()),
                    (175, vec![0x13, 1, 1]),
                ],
                "iPXE: the boot script",
            ),
            (
                vec![(93, vec![0, 0]), (77, b"iPXE".to_vec())],
                "iPXE without HTTP, then an iPXE with it",
            ),
        ] {
            assert_eq!(boot_path(&client(opts.clone()), "x.efi"), want, "{opts:?}");
        }
        let uefi = client(vec![(93, vec![0, 7])]);
        assert_eq!(
            boot_path(&uefi, "shimx64.efi"),
            "UEFI PXE, then the Secure Boot chain"
        );
    }

    #[test]
    fn udp_checksum_matches_known_value() {
        // Verified by summing the pseudo-header and segment: the result must fold to 0xffff.
        let p = udp_packet(
            67,
            Ipv4Addr::new(10, 0, 0, 1),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            b"abc",
        );
        let mut sum = checksum_add(0, &[10, 0, 0, 1]);
        sum = checksum_add(sum, &[255, 255, 255, 255]);
        sum += 17 + p.len() as u32;
        sum = checksum_add(sum, &p);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn strip_ip_udp_checks_bounds() {
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 255, 255, 255, 255,
        ];
        pkt.extend_from_slice(&udp_packet(
            68,
            Ipv4Addr::UNSPECIFIED,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
            b"hello",
        ));
        assert_eq!(strip_ip_udp(&pkt, 67), Some((28, 5, 68)));
        assert_eq!(strip_ip_udp(&pkt, 68), None);
        assert_eq!(strip_ip_udp(&pkt[..25], 67), None);
        assert_eq!(strip_ip_udp(&[0x4f], 67), None);
        assert_eq!(strip_ip_udp(&[], 67), None);
    }

    #[tokio::test]
    async fn loopback_round_trip_reports_pktinfo() {
        let a = DhcpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = match a.fd.get_ref().local_addr().unwrap().as_socket_ipv4() {
            Some(s) => s.port(),
            None => unreachable!(),
        };
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 64];
        let r = a.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..r.len], b"ping");
        assert_eq!(r.local, Ipv4Addr::LOCALHOST);
        assert!(r.ifindex > 0);
        let back = b.local_addr().unwrap();
        let back = SocketAddrV4::new(Ipv4Addr::LOCALHOST, back.port());
        a.send(b"pong", back, r.ifindex, r.local).await.unwrap();
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
    }
}
