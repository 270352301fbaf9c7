//! UDP for the boot servers, the part DHCP and TFTP share: each datagram comes with the
//! interface it arrived on and the local address it was sent to (`IP_PKTINFO`), and each reply
//! leaves from that address out of that interface, so a host on several links answers each link
//! from its own address. A port another process holds (a DHCP server on the same host) can still
//! be received through a raw socket with a BPF filter for its port (a copy of each packet; the
//! other process still gets its own), and replies then carry a UDP header written here, so they
//! still come from that port. And the host's interfaces with their addresses.
//!
//! quinn-udp plays this part for quinn: the protocol crates stay free of sockets.

#![warn(unreachable_pub)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Receive buffer of every socket: a boot storm (a rack powered on at once) is hundreds of
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

/// A UDP socket that knows where each datagram landed and answers from there: an ordinary
/// bound socket, or the raw fallback for a port another process holds.
pub struct Socket {
    fd: AsyncFd<socket2::Socket>,
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
fn size_receive_buffer(s: &socket2::Socket) {
    let fd = s.as_raw_fd();
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER);
    }
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
}

fn register(s: socket2::Socket) -> io::Result<AsyncFd<socket2::Socket>> {
    // SAFETY: the Socket owns its fd, which stays open and unchanged until the AsyncFd drops it.
    unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)
}

impl Socket {
    /// Binds UDP `addr` with broadcast and `IP_PKTINFO` enabled.
    pub fn bind(addr: SocketAddrV4) -> io::Result<Self> {
        Self::bind_with(addr, true)
    }

    /// As [`Socket::bind`], without `SO_REUSEADDR`: binding fails while another socket holds
    /// the port (TFTP, where two servers on one port would split the requests between them).
    pub fn bind_exclusive(addr: SocketAddrV4) -> io::Result<Self> {
        Self::bind_with(addr, false)
    }

    fn bind_with(addr: SocketAddrV4, reuse: bool) -> io::Result<Self> {
        let s = socket2::Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(reuse)?;
        s.set_broadcast(true)?;
        s.set_nonblocking(true)?;
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        size_receive_buffer(&s);
        s.bind(&addr.into())?;
        Ok(Socket {
            fd: register(s)?,
            raw_port: None,
        })
    }

    /// Receives UDP datagrams to `port` through a raw socket, for when another process holds it.
    /// Needs CAP_NET_RAW.
    pub fn raw(port: u16) -> io::Result<Self> {
        let s = socket2::Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?;
        s.set_broadcast(true)?;
        s.set_nonblocking(true)?;
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        size_receive_buffer(&s);
        attach_port_filter(s.as_raw_fd(), port)?;
        Ok(Socket {
            fd: register(s)?,
            raw_port: Some(port),
        })
    }

    /// Receives one datagram; for the raw socket, strips the IP and UDP headers.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_pktinfo(fd.get_ref().as_raw_fd(), buf)) {
                Ok(Ok(r)) => match unwrap_raw(self.raw_port, buf, r) {
                    Some(r) => return Ok(r),
                    None => continue,
                },
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// The same socket for a thread of its own, out of the async runtime: each call waits in
    /// the kernel, and a datagram wakes the thread directly (the DHCP path, where the cost of
    /// waking a task for each request shows). `stop` ends its waits.
    pub fn into_blocking(self, stop: &Stop) -> Blocking {
        Blocking {
            sock: self.fd.into_inner(),
            raw_port: self.raw_port,
            stop: stop.clone(),
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

/// A raw socket's datagram as a UDP one: the payload moved to the front, its source port taken;
/// `None` when it is not a whole UDP datagram to the port.
fn unwrap_raw(raw_port: Option<u16>, buf: &mut [u8], mut r: Received) -> Option<Received> {
    if r.len > buf.len() {
        // Larger than the buffer (a reassembled datagram can be): the caller counts it as
        // oversized, without looking inside.
        return Some(r);
    }
    if let Some(port) = raw_port {
        let (offset, len, sport) = strip_ip_udp(&buf[..r.len], port)?;
        buf.copy_within(offset..offset + len, 0);
        r.len = len;
        r.source.set_port(sport);
    }
    Some(r)
}

/// A [`Socket`] used from a thread of its own ([`Socket::into_blocking`]).
pub struct Blocking {
    sock: socket2::Socket,
    raw_port: Option<u16>,
    stop: Stop,
}

/// Ends the waits of the [`Blocking`] sockets made with it: after [`Stop::stop`], their
/// `recv` returns `Ok(None)` (and `send` an error) instead of waiting. Clones share one switch.
#[derive(Clone)]
pub struct Stop(std::sync::Arc<std::os::fd::OwnedFd>);

impl Stop {
    pub fn new() -> io::Result<Stop> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Stop(std::sync::Arc::new(owned)))
    }

    /// Wakes every waiting socket made with this switch, and every later wait returns at once.
    pub fn stop(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an owned eventfd. A full counter (it
        // cannot be: one write per stop) would only mean it is already set.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stop")
    }
}

/// Waits until `fd` is ready for `events`; `false` when `stop` was set instead.
fn wait(fd: RawFd, events: libc::c_short, stop: &Stop) -> io::Result<bool> {
    let mut p = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds for the duration of the call.
    if unsafe { libc::poll(p.as_mut_ptr(), 2, -1) } == -1 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(true),
            _ => Err(e),
        };
    }
    Ok(p[1].revents == 0)
}

impl Blocking {
    /// Receives what has arrived, up to [`BATCH`] datagrams in one call, waiting for the first;
    /// for the raw socket, strips the IP and UDP headers (and leaves out what is not a whole UDP
    /// datagram to the port). `false` once the socket's [`Stop`] is set.
    ///
    /// Before it sleeps, it keeps asking for [`SPIN`]: the next request often comes within it
    /// (a machine's next DHCP step, the rest of a storm), and waking a sleeping thread costs
    /// more than that on a virtual machine. At most [`SPIN`] of CPU per wait, none when idle.
    pub fn recv_batch(&self, batch: &mut Batch) -> io::Result<bool> {
        let fd = self.sock.as_raw_fd();
        batch.got.clear();
        let mut spun: Option<std::time::Instant> = None;
        loop {
            match recv_batch(fd, batch) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let since = *spun.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < SPIN {
                        std::hint::spin_loop();
                        continue;
                    }
                    spun = None;
                    if !wait(fd, libc::POLLIN, &self.stop)? {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.raw_port.is_some() {
            let bufs = &mut batch.bufs;
            batch.got.retain_mut(
                |(i, r)| match unwrap_raw(self.raw_port, &mut bufs[*i], *r) {
                    Some(stripped) => {
                        *r = stripped;
                        true
                    }
                    None => false,
                },
            );
        }
        Ok(true)
    }

    /// Sends `data` to `dest` out of interface `ifindex`, from `source`.
    pub fn send(
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
        let fd = self.sock.as_raw_fd();
        loop {
            match send_pktinfo(fd, payload, dest, ifindex, source, self.raw_port.is_some()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait(fd, libc::POLLOUT, &self.stop)? {
                        return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
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
    // SAFETY: all pointers reference live, correctly sized buffers for the duration of the call.
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
        Ok(received(&msg, &src, n as usize, buf.len()))
    }
}

/// What `recvmsg` (or one message of `recvmmsg`) said: `n` bytes (the datagram's real size,
/// with `MSG_TRUNC`) into a buffer of `capacity`, from `src`, with `msg`'s control messages.
///
/// # Safety
/// `msg` is the header just filled in by the kernel, its control buffer still alive.
unsafe fn received(
    msg: &libc::msghdr,
    src: &libc::sockaddr_in,
    n: usize,
    capacity: usize,
) -> Received {
    let mut ifindex = 0;
    let mut local = Ipv4Addr::UNSPECIFIED;
    let mut drops = None;
    // SAFETY: control messages are walked with the libc CMSG helpers within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
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
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    let source = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(src.sin_addr.s_addr)),
        u16::from_be(src.sin_port),
    );
    // A datagram larger than the buffer is reported by its real size so the caller can count
    // it as malformed instead of parsing a truncated copy.
    Received {
        len: if n > capacity { usize::MAX } else { n },
        source,
        ifindex,
        local,
        drops,
    }
}

/// Datagrams taken in one system call ([`Blocking::recv_batch`]).
pub const BATCH: usize = 32;

/// How long [`Blocking::recv_batch`] keeps asking before it sleeps. 50 µs halves the median
/// answer time of one request at a time here (65 to 33 µs) and changes nothing at 32.
pub const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The buffers of [`Blocking::recv_batch`], and what it received into them.
pub struct Batch {
    bufs: Vec<Vec<u8>>,
    got: Vec<(usize, Received)>,
}

impl Batch {
    /// [`BATCH`] buffers of `size` bytes each.
    pub fn new(size: usize) -> Batch {
        Batch {
            bufs: (0..BATCH).map(|_| vec![0; size]).collect(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// The datagrams of the last receive, in order: each one's bytes and what came with it.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], &Received)> {
        self.got.iter().map(|(i, r)| {
            let len = if r.len == usize::MAX { 0 } else { r.len };
            (&self.bufs[*i][..len], r)
        })
    }
}

/// `recvmmsg` into `batch`'s buffers, without waiting: how many arrived.
fn recv_batch(fd: RawFd, batch: &mut Batch) -> io::Result<usize> {
    // SAFETY: every pointer in the headers references a buffer that lives (unmoved) until the
    // call returns; each header's control buffer is its own.
    unsafe {
        let mut srcs: [libc::sockaddr_in; BATCH] = zeroed();
        let mut controls = [[0u8; CMSG_SPACE_PKTINFO]; BATCH];
        let mut iovs: [libc::iovec; BATCH] = zeroed();
        let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr() as *mut _,
                iov_len: batch.bufs[i].len(),
            };
            let m = &mut hdrs[i].msg_hdr;
            m.msg_name = &mut srcs[i] as *mut _ as *mut _;
            m.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            m.msg_iov = &mut iovs[i];
            m.msg_iovlen = 1;
            m.msg_control = controls[i].as_mut_ptr() as *mut _;
            m.msg_controllen = CMSG_SPACE_PKTINFO;
        }
        let n = libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            BATCH as u32,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            std::ptr::null_mut(),
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            // The real size of a datagram too large for its buffer: MSG_TRUNC in msg_flags.
            let len = match hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC {
                0 => hdrs[i].msg_len as usize,
                _ => usize::MAX,
            };
            let r = received(&hdrs[i].msg_hdr, &srcs[i], len, batch.bufs[i].len());
            batch.got.push((i, r));
        }
        Ok(n)
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

/// The link-layer address this host's kernel holds for `peer`, when `peer` is on one of its
/// links (in the subnet of one of its IPv4 addresses) and the address is resolved: who answered
/// ARP for it, the same host every frame from that address came from. `None` for an address
/// behind a router, on no link of ours, or not resolved.
///
/// A host on the LAN can name any MAC in a packet; it cannot make the kernel's neighbour entry
/// for its own address say another host's MAC without spoofing that MAC on the wire too.
pub fn neighbor(peer: Ipv4Addr) -> Option<[u8; 6]> {
    on_links(peer)
        .into_iter()
        .find_map(|dev| arp_entry(&dev, peer))
}

/// The interfaces whose subnets hold `peer` (not the loopback's, not a /32).
fn on_links(peer: Ipv4Addr) -> Vec<String> {
    let mut out = Vec::new();
    let p = u32::from(peer);
    // SAFETY: getifaddrs allocates a list we walk read-only and free exactly once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || ifa.ifa_netmask.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
                || ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0
            {
                continue;
            }
            let addr = u32::from_be(
                (*(ifa.ifa_addr as *const libc::sockaddr_in))
                    .sin_addr
                    .s_addr,
            );
            let mask = u32::from_be(
                (*(ifa.ifa_netmask as *const libc::sockaddr_in))
                    .sin_addr
                    .s_addr,
            );
            if mask != u32::MAX && addr & mask == p & mask && p != addr {
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                if !out.iter().any(|n| *n == name) {
                    out.push(name.into_owned());
                }
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The complete ARP entry for `peer` on interface `dev` (`SIOCGARP`).
fn arp_entry(dev: &str, peer: Ipv4Addr) -> Option<[u8; 6]> {
    if dev.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a socket only for the ioctl, closed by OwnedFd; the request is a zeroed arpreq
    // with its protocol address and device name set within their sizes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut req: libc::arpreq = zeroed();
        let pa = &mut req.arp_pa as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*pa).sin_family = libc::AF_INET as libc::sa_family_t;
        (*pa).sin_addr.s_addr = u32::from(peer).to_be();
        for (d, s) in req.arp_dev.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGARP, &mut req) != 0
            || req.arp_flags & libc::ATF_COM == 0
        {
            return None;
        }
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(req.arp_ha.sa_data.iter()) {
            *m = *b as u8;
        }
        Some(mac)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn loopback_and_unknown_addresses_have_no_neighbor() {
        assert_eq!(neighbor(Ipv4Addr::LOCALHOST), None);
        // TEST-NET-2: on no link of this host.
        assert_eq!(neighbor(Ipv4Addr::new(198, 51, 100, 7)), None);
    }

    #[test]
    fn a_raw_datagram_too_large_for_its_buffer_is_oversized_not_a_panic() {
        let r = Received {
            len: usize::MAX,
            source: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 0),
            ifindex: 2,
            local: Ipv4Addr::UNSPECIFIED,
            drops: None,
        };
        let got = unwrap_raw(Some(67), &mut [0u8; 64], r).expect("kept, to be counted");
        assert_eq!(got.len, usize::MAX);
    }

    #[test]
    fn a_batch_receives_what_has_arrived_with_its_pktinfo() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        let port = a.local_addr().unwrap().port();
        setsockopt_int(a.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1).unwrap();
        let stop = Stop::new().unwrap();
        let b = Blocking {
            sock: socket2::Socket::from(a),
            raw_port: None,
            stop: stop.clone(),
        };
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for m in [&b"one"[..], b"two", &[7u8; 100]] {
            c.send_to(m, ("127.0.0.1", port)).unwrap();
        }
        let mut batch = Batch::new(64);
        assert!(b.recv_batch(&mut batch).unwrap());
        let got: Vec<(Vec<u8>, usize)> = batch
            .datagrams()
            .map(|(d, r)| (d.to_vec(), r.len))
            .collect();
        assert_eq!(got[0], (b"one".to_vec(), 3));
        assert_eq!(got[1], (b"two".to_vec(), 3));
        // Larger than its buffer: reported as such, with no bytes.
        assert_eq!(got[2], (Vec::new(), usize::MAX));
        let r = batch.datagrams().next().unwrap().1;
        assert_eq!(r.local, Ipv4Addr::LOCALHOST);
        assert_eq!(r.source.port(), c.local_addr().unwrap().port());
        // Stopped: no wait, no datagram.
        stop.stop();
        assert!(!b.recv_batch(&mut batch).unwrap());
    }

    #[tokio::test]
    async fn loopback_round_trip_reports_pktinfo() {
        let a = Socket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
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
