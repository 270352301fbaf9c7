//! The sockets the boot servers listen on, bound with errors that name the port, the program
//! holding it and the fix; the interfaces `--interface` names; and the TFTP port as a
//! [`tftp::Listener`] over [`udp::Socket`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{anyhow, bail, Context as _};

/// Which program holds a port, from /proc: `Some("dnsmasq (pid 812)")`.
pub fn port_owner(proto: &str, port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = cols.get(1) else { continue };
            let Some((_, p)) = local.rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port) {
                if let Some(inode) = cols.get(9).filter(|i| **i != "0") {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    let comm =
                        std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                    return Some(format!("{} (pid {pid})", comm.trim()));
                }
            }
        }
    }
    None
}

/// Turns a bind error into one line that names the port, the likely holder, and the fix.
pub fn bind_error(e: io::Error, proto: &str, port: u16, role: &str, usual: &str) -> anyhow::Error {
    let what = format!("{} port {port} ({role})", proto.to_uppercase());
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            let holder = port_owner(proto, port)
                .map(|o| format!("held by {o}"))
                .unwrap_or_else(|| format!("likely held by {usual}"));
            anyhow!("{what} is already in use, {holder}; stop that service or choose another port")
        }
        io::ErrorKind::PermissionDenied => anyhow!(
            "no permission to bind {what}: run as root, or grant the binary CAP_NET_BIND_SERVICE and \
             CAP_NET_RAW (sudo setcap cap_net_bind_service,cap_net_raw+ep \"$(command -v daybreak)\")"
        ),
        io::ErrorKind::AddrNotAvailable => {
            anyhow!("cannot bind {what}: the listen address is not assigned to any interface here")
        }
        _ => anyhow!("cannot bind {what}: {e}"),
    }
}

/// An interface boot requests are answered on.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub ipv4: Ipv4Addr,
}

/// Resolves `--interface` names to indexes, checking each has an IPv4 address.
pub fn resolve_interfaces(names: &[String]) -> anyhow::Result<Vec<Iface>> {
    let all = udp::interfaces();
    let list = || {
        all.iter()
            .map(|i| match i.ipv4 {
                Some(a) => format!("{} ({a})", i.name),
                None => format!("{} (no IPv4)", i.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    names
        .iter()
        .map(|n| {
            let i = all
                .iter()
                .find(|i| &i.name == n)
                .with_context(|| format!("no interface named {n:?}; interfaces here: {}", list()))?;
            let a = i.ipv4.with_context(|| {
                format!("interface {n} has no IPv4 address; give it one (ip addr add …) or choose another: {}", list())
            })?;
            Ok(Iface {
                name: n.clone(),
                index: i.index,
                ipv4: a,
            })
        })
        .collect()
}

/// The TFTP port, with `IP_PKTINFO`: each request's local address comes with it, so its
/// transfer answers from the address the client asked (on a link with several).
pub struct TftpListener(udp::Socket, Ipv4Addr);

impl tftp::Listener for TftpListener {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
        let r = self.0.recv(buf).await?;
        if r.len > buf.len() {
            // Larger than any TFTP request: say so as an empty datagram, which is refused.
            return Ok((0, r.source.into(), Some(r.local)));
        }
        Ok((r.len, r.source.into(), Some(r.local)))
    }
    async fn send_to(&self, data: &[u8], to: SocketAddr, from: Option<Ipv4Addr>) -> io::Result<()> {
        let SocketAddr::V4(to) = to else {
            return Ok(());
        };
        let from = from.filter(|a| !a.is_unspecified()).unwrap_or(self.1);
        self.0.send(data, to, 0, from).await
    }
    fn local_ip(&self) -> Ipv4Addr {
        self.1
    }
}

/// The boot HTTP server's listener.
pub async fn bind_http(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        bind_error(
            e,
            "tcp",
            addr.port(),
            "HTTP",
            "another netboot or web server (AuroraBoot, pixiecore, nginx)",
        )
    })
}

/// The TFTP port, bound alone: two servers on one port would split the requests.
pub fn bind_tftp(listen: Ipv4Addr, port: u16) -> anyhow::Result<TftpListener> {
    udp::Socket::bind_exclusive(SocketAddrV4::new(listen, port))
        .map(|s| TftpListener(s, listen))
        .map_err(|e| {
            bind_error(
                e,
                "udp",
                port,
                "TFTP",
                "a TFTP server (tftpd-hpa, atftpd, dnsmasq with enable-tftp)",
            )
        })
}

/// iPXE's syslog lines (UDP 514 on `listen`); `None`, with a warning naming what holds the
/// port, when it cannot be had: boots go on without iPXE's own lines.
pub fn bind_syslog(listen: Ipv4Addr) -> Option<tokio::net::UdpSocket> {
    let port = crate::ipxe_says::PORT;
    let bound = std::net::UdpSocket::bind(SocketAddrV4::new(listen, port)).and_then(|s| {
        s.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(s)
    });
    match bound {
        Ok(s) => Some(s),
        Err(e) => {
            let holder = match e.kind() {
                io::ErrorKind::AddrInUse => port_owner("udp", port)
                    .map_or_else(|| " (in use)".into(), |h| format!(" (held by {h})")),
                _ => String::new(),
            };
            tracing::warn!(
                "UDP port {port} cannot be bound for iPXE's syslog lines: {e}{holder}; boots go on \
                 without iPXE's own lines (a failed script step is still reported over HTTP). \
                 --no-syslog leaves the port alone"
            );
            None
        }
    }
}

/// ProxyDHCP (67, beside a DHCP server on this host through a raw socket when it holds the
/// port) and the PXE boot server (4011).
pub fn bind_dhcp() -> anyhow::Result<Vec<(udp::Socket, pxe::Port)>> {
    let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let s67 = match udp::Socket::bind(any(67)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let holder = port_owner("udp", 67).unwrap_or_else(|| "a DHCP server".into());
            match udp::Socket::raw(67) {
                Ok(s) => {
                    tracing::info!("UDP port 67 is held by {holder}; receiving ProxyDHCP requests beside it through a raw socket");
                    s
                }
                Err(re) if re.kind() == io::ErrorKind::PermissionDenied => bail!(
                    "UDP port 67 (ProxyDHCP) is held by {holder}, and receiving beside it needs CAP_NET_RAW: \
                     run as root or grant it (sudo setcap cap_net_bind_service,cap_net_raw+ep \"$(command -v daybreak)\")"
                ),
                Err(re) => bail!("UDP port 67 is held by {holder} and the raw-socket fallback failed: {re}"),
            }
        }
        Err(e) => return Err(bind_error(e, "udp", 67, "ProxyDHCP", "a DHCP server")),
    };
    let s4011 = udp::Socket::bind(any(4011)).map_err(|e| {
        bind_error(
            e,
            "udp",
            4011,
            "PXE boot server",
            "another PXE server (dnsmasq in proxy mode, pixiecore, AuroraBoot)",
        )
    })?;
    Ok(vec![(s67, pxe::Port::Dhcp), (s4011, pxe::Port::ProxyBoot)])
}
