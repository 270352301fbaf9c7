//! ProxyDHCP and PXE boot-server decisions for Daybreak.
//!
//! This crate decides what a network-booting machine is told, and nothing else. The core,
//! [`answer`], is a pure function from a decoded request and a [`Context`] to an optional reply
//! plus where to send it: no sockets, no clocks, no locks, so every firmware quirk is pinned by a
//! byte-fixture test and the DHCP path can never block (iPXE gives a ProxyDHCP offer about two
//! seconds to arrive). The [`driver`] module is the thin threaded layer that moves datagrams between
//! the network and [`answer`].
//!
//! Daybreak never hands out addresses. The network's own DHCP server does that; we only add the
//! boot information (the PXE "ProxyDHCP" arrangement), on UDP 67 beside it and on the PXE boot
//! server port 4011.
//!
//! The chain a machine walks is: firmware PXE → TFTP an iPXE binary → iPXE asks again, now showing
//! user class `iPXE` with HTTP support in option 175 → it gets the HTTP URL of its boot script. The
//! second answer differs from the first, which is what keeps clients out of a boot loop.

#![warn(unreachable_pub)]

pub mod driver;
pub mod endpoint;
pub mod machine;
pub mod message;

use std::net::Ipv4Addr;

pub use machine::{CpuArch, Mac, Machine, ParseError, Uuid};
use message::{
    encode_pxe_options, opt, pxe_opt, sub_options, PxeOption, DISCOVERY_USE_BOOT_FILE, OP_REPLY,
    OP_REQUEST,
};
pub use message::{DecodeError, Message, MessageType};

/// Which socket a request arrived on: the ProxyDHCP port (67) or the PXE boot server port (4011).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Dhcp,
    ProxyBoot,
}

/// The client system architecture of option 93 (RFC 4578, IANA registry), as far as booting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Bios,
    EfiIa32,
    EfiX64,
    EfiArm32,
    EfiArm64,
}

impl Arch {
    /// Maps option 93 to an architecture and whether the client is doing UEFI HTTP boot.
    pub fn from_code(code: u16) -> Option<(Arch, bool)> {
        Some(match code {
            0 => (Arch::Bios, false),
            6 => (Arch::EfiIa32, false),
            7 | 9 => (Arch::EfiX64, false),
            10 => (Arch::EfiArm32, false),
            11 => (Arch::EfiArm64, false),
            15 => (Arch::EfiIa32, true),
            16 => (Arch::EfiX64, true),
            18 => (Arch::EfiArm32, true),
            19 => (Arch::EfiArm64, true),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Bios => "BIOS",
            Arch::EfiIa32 => "UEFI ia32",
            Arch::EfiX64 => "UEFI x64",
            Arch::EfiArm32 => "UEFI arm32",
            Arch::EfiArm64 => "UEFI arm64",
        }
    }
}

/// What is running on the client right now, which decides what it needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// The machine's own PXE ROM (BIOS UNDI or UEFI PXE): it can only TFTP a binary.
    Pxe,
    /// iPXE; `http` says whether this build speaks HTTP (option 175, feature 0x13).
    Ipxe { http: bool },
    /// An iPXE build that identifies itself as pixiecore's client (the Kairos generic iPXE ISO).
    Pixiecore,
    /// UEFI HTTP boot (option 60 `HTTPClient`): wants a full `http://` URL.
    HttpBoot,
}

/// A classified boot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub arch: Arch,
    pub arch_code: u16,
    pub firmware: Firmware,
    pub mac: Mac,
    /// The machine's UUID (option 97), as sent.
    pub uuid: Option<Uuid>,
}

impl Client {
    /// What the request tells of the machine.
    pub fn machine(&self) -> Machine {
        Machine {
            mac: self.mac,
            uuid: self.uuid,
            arch: CpuArch::of(self.arch),
        }
    }
}

/// Boot file names per architecture, as registered with the TFTP and HTTP servers. `None` means
/// Daybreak has nothing for that architecture and stays silent, so another server may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// For BIOS PXE ROMs (chainloads through UNDI): `undionly.kpxe`.
    pub bios: Option<String>,
    /// For BIOS ROMs that already run iPXE but without HTTP: `ipxe.pxe`.
    pub bios_ipxe: Option<String>,
    pub efi_ia32: Option<String>,
    pub efi_x64: Option<String>,
    pub efi_arm64: Option<String>,
    /// UEFI x64 PXE firmware (not HTTP Boot, not iPXE) gets this instead of `efi_x64`: the
    /// Secure Boot chain's shim.
    pub efi_x64_signed: Option<String>,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: Some("undionly.kpxe".into()),
            bios_ipxe: Some("ipxe.pxe".into()),
            efi_ia32: None,
            efi_x64: Some("ipxe.efi".into()),
            efi_arm64: None,
            efi_x64_signed: None,
        }
    }
}

impl BootFiles {
    fn for_arch(&self, arch: Arch, already_ipxe: bool) -> Option<&str> {
        match arch {
            Arch::Bios if already_ipxe => self.bios_ipxe.as_deref(),
            Arch::Bios => self.bios.as_deref(),
            Arch::EfiIa32 => self.efi_ia32.as_deref(),
            Arch::EfiX64 => self.efi_x64.as_deref(),
            Arch::EfiArm64 => self.efi_arm64.as_deref(),
            Arch::EfiArm32 => None,
        }
    }
}

/// What the server knows when it answers: its own address as seen on the interface the request came
/// in on (or the advertised one), where HTTP listens, and which boot files exist.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub server: Ipv4Addr,
    pub http_port: u16,
    pub boot_files: &'a BootFiles,
}

/// The HTTP paths the DHCP answers point at, defined once: the HTTP server routes these same
/// constants (pixiecore's paths, which existing setups and the Kairos iPXE ISO use).
pub mod routes {
    /// The iPXE boot script, `?arch=&mac=`.
    pub const SCRIPT: &str = "/_/ipxe";
    /// The script under the name iPXE's own DHCP boot looks for.
    pub const SCRIPT_ALIAS: &str = "/boot.ipxe";
    /// The script's last request before the kernel runs, `?mac=`.
    pub const BOOTING: &str = "/_/booting";
    /// pixiecore's file route, `?name=`.
    pub const FILE: &str = "/_/file";
    /// iPXE binaries for UEFI HTTP Boot, `/ipxe/NAME`.
    pub const BINARIES: &str = "/ipxe/";
    /// A netboot ISO that chains this server's script (virtual media, USB sticks).
    pub const IPXE_ISO: &str = "/ipxe.iso";
}

/// `http://HOST` or `http://HOST:PORT`: the one place that shapes the base of every URL a client
/// is given, in DHCP replies and in boot scripts alike, so the two always agree.
pub fn http_base(host: impl std::fmt::Display, port: u16) -> String {
    if port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// Where clients reach the boot HTTP server: its port, and an address to announce instead of the
/// one each client reached us by (NAT, port forwards). Held once, by the DHCP side and the HTTP
/// side alike, so the URLs in answers and in scripts cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddress {
    pub port: u16,
    pub advertise: Option<Ipv4Addr>,
}

impl Default for HttpAddress {
    fn default() -> Self {
        HttpAddress {
            port: 8090,
            advertise: None,
        }
    }
}

impl HttpAddress {
    /// `http://HOST[:PORT]` for a client that reached us at `local`.
    pub fn base(&self, local: std::net::IpAddr) -> String {
        match (self.advertise, local) {
            (Some(a), _) => http_base(a, self.port),
            (None, std::net::IpAddr::V6(v6)) => http_base(format!("[{v6}]"), self.port),
            (None, v4) => http_base(v4, self.port),
        }
    }
}

impl Context<'_> {
    fn http_base(&self) -> String {
        http_base(self.server, self.http_port)
    }

    /// The URL of the iPXE boot script for a machine; the HTTP server serves this path.
    pub fn script_url(&self, client: &Client) -> String {
        format!(
            "{}{}?arch={}&mac={}",
            self.http_base(),
            routes::SCRIPT,
            client.arch_code,
            client.mac
        )
    }

    /// Where iPXE binaries are served over HTTP, for UEFI HTTP boot clients.
    pub fn binary_url(&self, name: &str) -> String {
        format!("{}{}{}", self.http_base(), routes::BINARIES, name)
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Broadcast to 255.255.255.255:68 out of the interface the request came in on.
    Broadcast,
    /// Unicast to the relay agent (giaddr) on port 67.
    Relay(Ipv4Addr),
    /// Back to the request's source address and port (the port 4011 exchange).
    Source,
}

/// What a machine is sent to load next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// An iPXE binary (over TFTP, or by URL for UEFI HTTP Boot and iPXE without HTTP).
    Ipxe,
    /// The Secure Boot chain's shim, which loads the signed network GRUB.
    SecureBootChain,
    /// Its boot script: it already runs an iPXE with HTTP.
    Script,
}

/// What the client was told to fetch, for logs and boot events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    /// A file name to fetch by TFTP from `siaddr`.
    Tftp(String),
    /// A full URL (`tftp://…` for iPXE without HTTP, `http://…` for scripts and HTTP boot).
    Url(String),
}

impl BootTarget {
    pub fn as_str(&self) -> &str {
        match self {
            BootTarget::Tftp(s) | BootTarget::Url(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Message,
    pub destination: Destination,
    pub client: Client,
    pub target: BootTarget,
    pub loader: Loader,
}

/// Why a well-formed message got no answer. Counted by the driver; most are normal traffic
/// (ordinary DHCP clients, other servers' replies) rather than errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A BOOTREPLY or unknown op: another server talking.
    NotRequest,
    /// A message type this port does not answer (e.g. a DHCPREQUEST to the DHCP server on 67).
    MessageType,
    /// No option 93: not a network-boot client.
    NotPxe,
    /// A hardware address that is not a 6-byte Ethernet MAC: nothing to know the machine by.
    NotEthernet,
    /// An option 93 value we do not know.
    UnknownArch(u16),
    /// We have no boot file for this architecture: the machine, as it asked.
    NoBootFile(Client),
    /// A relay address (giaddr) no relay agent can have: 0.0.0.0/8, loopback, multicast,
    /// broadcast or reserved. Answering would send our reply where the sender chose.
    BadRelay(Ipv4Addr),
    /// Sent from an address or port no PXE client uses (the 4011 reply goes back to it).
    BadSource,
}

/// Whether `a` can be a relay agent's address.
fn routable_unicast(a: Ipv4Addr) -> bool {
    !(a.octets()[0] == 0
        || a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.octets()[0] >= 240)
}

/// Whether a request from `source` on `port` may be answered at all. The port 4011 reply goes
/// back to the source, so the source must be a client's: port 68 (or 4011, as some ROMs use),
/// and not an address a reply would bounce off (loopback, multicast, broadcast). Without this a
/// forged request turns the server into a reflector aimed at any port.
pub fn acceptable_source(port: Port, source: std::net::SocketAddrV4) -> bool {
    match port {
        Port::Dhcp => true,
        Port::ProxyBoot => {
            matches!(source.port(), 68 | 4011)
                && (source.ip().is_unspecified() || routable_unicast(*source.ip()))
        }
    }
}

/// Reads option 77 (user class). iPXE sends the raw string; RFC 3004 clients send length-prefixed
/// entries. Both are accepted.
fn user_class_is(msg: &Message, want: &[u8]) -> bool {
    let Some(v) = msg.option(opt::USER_CLASS) else {
        return false;
    };
    if v == want {
        return true;
    }
    let mut rest = &v[..];
    while let Some((&len, tail)) = rest.split_first() {
        let len = len as usize;
        if len == 0 || tail.len() < len {
            return false;
        }
        if &tail[..len] == want {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// iPXE's feature list (option 175) has one sub-option per compiled-in feature; 0x13 is HTTP.
fn ipxe_has_http(msg: &Message) -> bool {
    const FEATURE_HTTP: u8 = 0x13;
    msg.option(opt::IPXE_ENCAP)
        .is_some_and(|v| sub_options(&v).any(|(code, _)| code == FEATURE_HTTP))
}

/// Classifies a request by architecture and what is running on the client. `None` when the
/// message carries no (known) option 93.
pub fn classify(msg: &Message) -> Result<Client, Ignored> {
    let mac = msg.mac().ok_or(Ignored::NotEthernet)?;
    let arch_code = match msg.option(opt::CLIENT_ARCH) {
        Some(v) if v.len() >= 2 => u16::from_be_bytes([v[0], v[1]]),
        _ => return Err(Ignored::NotPxe),
    };
    let (arch, http_boot) = Arch::from_code(arch_code).ok_or(Ignored::UnknownArch(arch_code))?;
    let vendor = msg.option(opt::VENDOR_CLASS).unwrap_or_default();
    let firmware = if user_class_is(msg, b"pixiecore") {
        Firmware::Pixiecore
    } else if user_class_is(msg, b"iPXE") {
        Firmware::Ipxe {
            http: ipxe_has_http(msg),
        }
    } else if http_boot || vendor.starts_with(b"HTTPClient") {
        Firmware::HttpBoot
    } else {
        Firmware::Pxe
    };
    Ok(Client {
        arch,
        arch_code,
        firmware,
        mac,
        uuid: uuid_of(msg),
    })
}

/// The UUID of a well-formed option 97.
fn uuid_of(msg: &Message) -> Option<Uuid> {
    client_uuid(msg).and_then(|v| v[1..].try_into().ok().map(Uuid))
}

/// Option 97 is echoed only when well formed: type 0 followed by a 16-byte UUID.
fn client_uuid(msg: &Message) -> Option<Vec<u8>> {
    msg.option(opt::CLIENT_UUID)
        .filter(|v| v.len() == 17 && v[0] == 0)
        .map(|v| v.into_owned())
}

/// What a client's own DHCP traffic tells about its address: a DHCPREQUEST to the network's
/// DHCP server (which ProxyDHCP sees, broadcast on port 67) names the address it takes, in
/// option 50 or `ciaddr`. So later TFTP and HTTP requests from that address can be told apart
/// by MAC. Pure, like [`answer`].
pub fn lease(msg: &Message) -> Option<(Mac, Ipv4Addr)> {
    if msg.op != OP_REQUEST || msg.message_type() != Some(MessageType::Request) {
        return None;
    }
    let requested = msg
        .option(opt::REQUESTED_ADDRESS)
        .filter(|v| v.len() == 4)
        .map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
    let ip = requested
        .or((!msg.ciaddr.is_unspecified()).then_some(msg.ciaddr))
        .filter(|a| routable_unicast(*a))?;
    Some((msg.mac()?, ip))
}

/// `a.b.c.d` as bytes, written without the formatting machinery: one per answer.
fn dotted(a: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(15);
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if o >= 100 {
            out.push(b'0' + o / 100);
        }
        if o >= 10 {
            out.push(b'0' + o / 10 % 10);
        }
        out.push(b'0' + o % 10);
    }
    out
}

/// Decides the answer to one request. Pure: the same input always gives the same output.
pub fn answer(msg: &Message, ctx: &Context, port: Port) -> Result<Reply, Ignored> {
    if msg.op != OP_REQUEST {
        return Err(Ignored::NotRequest);
    }
    if !msg.giaddr.is_unspecified() && !routable_unicast(msg.giaddr) {
        return Err(Ignored::BadRelay(msg.giaddr));
    }
    let mtype = msg.message_type();
    let reply_type = match (port, mtype) {
        (Port::Dhcp, Some(MessageType::Discover)) => MessageType::Offer,
        (Port::ProxyBoot, Some(MessageType::Request | MessageType::Inform)) => MessageType::Ack,
        _ => return Err(Ignored::MessageType),
    };
    let client = match classify(msg) {
        Ok(c) => c,
        // The boot server port is only ever asked by PXE clients; a request there without option 93
        // comes from a BIOS ROM that left it out.
        Err(Ignored::NotPxe) if port == Port::ProxyBoot => Client {
            arch: Arch::Bios,
            arch_code: 0,
            firmware: Firmware::Pxe,
            mac: msg.mac().ok_or(Ignored::NotEthernet)?,
            uuid: uuid_of(msg),
        },
        Err(e) => return Err(e),
    };

    let files = ctx.boot_files;
    let mut loader = Loader::Ipxe;
    let (target, vendor_class, pxe_options) = match client.firmware {
        Firmware::Pixiecore | Firmware::Ipxe { http: true } => {
            loader = Loader::Script;
            (BootTarget::Url(ctx.script_url(&client)), "PXEClient", false)
        }
        Firmware::Ipxe { http: false } => {
            let name = files
                .for_arch(client.arch, true)
                .ok_or(Ignored::NoBootFile(client))?;
            (
                BootTarget::Url(format!("tftp://{}/{}", ctx.server, name)),
                "PXEClient",
                false,
            )
        }
        Firmware::HttpBoot => {
            let name = files
                .for_arch(client.arch, false)
                .ok_or(Ignored::NoBootFile(client))?;
            (BootTarget::Url(ctx.binary_url(name)), "HTTPClient", false)
        }
        Firmware::Pxe => {
            let signed = files
                .efi_x64_signed
                .as_deref()
                .filter(|_| client.arch == Arch::EfiX64);
            if signed.is_some() {
                loader = Loader::SecureBootChain;
            }
            let name = signed
                .or_else(|| files.for_arch(client.arch, false))
                .ok_or(Ignored::NoBootFile(client))?;
            (BootTarget::Tftp(name.to_string()), "PXEClient", true)
        }
    };

    let mut options: Vec<(u8, Vec<u8>)> = vec![
        (opt::MESSAGE_TYPE, vec![reply_type.to_u8()]),
        (opt::SERVER_ID, ctx.server.octets().to_vec()),
        (opt::VENDOR_CLASS, vendor_class.as_bytes().to_vec()),
    ];
    if let Some(uuid) = client_uuid(msg) {
        options.push((opt::CLIENT_UUID, uuid));
    }
    if pxe_options {
        let mut vendor = vec![PxeOption::DiscoveryControl(DISCOVERY_USE_BOOT_FILE)];
        if port == Port::ProxyBoot {
            // Echo the requested PXE_BOOT_ITEM so the client can match our ACK to its request.
            if let Some(item) = msg.option(opt::VENDOR_SPECIFIC).and_then(|v| {
                sub_options(&v)
                    .find(|(c, _)| *c == pxe_opt::BOOT_ITEM)
                    .and_then(|(_, d)| <[u8; 4]>::try_from(d).ok())
            }) {
                vendor.push(PxeOption::BootItem(item));
            }
        }
        options.push((opt::VENDOR_SPECIFIC, encode_pxe_options(&vendor)));
    }
    let file = target.as_str().as_bytes().to_vec();
    if file.len() > 127 {
        options.push((opt::BOOTFILE_NAME, file.clone()));
    }
    // A relay's information goes back to it as it came, last (RFC 3046 2.2): relays that
    // enforce it drop a reply without it.
    if let Some(info) = msg.option(opt::RELAY_AGENT_INFO) {
        options.push((opt::RELAY_AGENT_INFO, info.into_owned()));
    }

    let destination = match port {
        Port::ProxyBoot => Destination::Source,
        Port::Dhcp if !msg.giaddr.is_unspecified() => Destination::Relay(msg.giaddr),
        Port::Dhcp => Destination::Broadcast,
    };
    let message = Message {
        op: OP_REPLY,
        htype: msg.htype,
        hlen: msg.hlen,
        hops: 0,
        xid: msg.xid,
        secs: 0,
        flags: 0x8000,
        ciaddr: if port == Port::ProxyBoot {
            msg.ciaddr
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: ctx.server,
        giaddr: msg.giaddr,
        chaddr: msg.chaddr,
        sname: dotted(ctx.server),
        file: if file.len() > 127 { Vec::new() } else { file },
        options,
    };
    Ok(Reply {
        message,
        destination,
        client,
        target,
        loader,
    })
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn ctx() -> Context<'static> {
        static FILES: std::sync::OnceLock<BootFiles> = std::sync::OnceLock::new();
        Context {
            server: Ipv4Addr::new(10, 77, 0, 2),
            http_port: 8090,
            boot_files: FILES.get_or_init(BootFiles::default),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dotted_tests {
    proptest::proptest! {
        #[test]
        fn dotted_is_what_display_writes(a: u32) {
            let a = std::net::Ipv4Addr::from(a);
            proptest::prop_assert_eq!(super::dotted(a), a.to_string().into_bytes());
        }
    }
}
