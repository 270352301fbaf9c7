//! The one seam where Daybreak decides how a machine boots (pixiecore's `Booter`): a
//! [`Booter`] says whether the DHCP path answers a machine at all ([`Booter::allow`], from
//! memory, never waiting), what it boots now ([`Booter::decide`], a [`Decision`]) and which files
//! it serves. The static plan ([`crate::plan::Plan`]), the fleet ([`crate::fleet::Fleet`]) and
//! pixiecore's API mode ([`crate::api::Api`]) are the three; [`crate::render`] writes any
//! decision for iPXE and for GRUB, and [`crate::routes`] is the one router in front of them.
//!
//! A new way to decide (another store, another API) is one more implementation of the trait;
//! a new way to boot (another loader's language) is one more renderer.

use std::net::SocketAddr;
use std::time::Duration;

use pxe::{Mac, Machine};

/// How a machine boots now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boot a kernel with its initrds and command line.
    Boot(BootSpec),
    /// A script of the decider's own (an API's `ipxe-script`), as it is.
    Script(String),
    /// Boot from the local disk.
    Local,
    /// Not now: say why, and ask again after `retry`.
    Wait { why: String, retry: Duration },
    /// Nothing it can boot here: say why, and go back to the firmware.
    Refuse(String),
    /// Not served here at all: as if this server did not know the request.
    Ignore,
}

/// What to boot: every URL absolute, on this server (the renderer for GRUB turns them into its
/// device paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: String,
    /// Initrds in order: the name the loader gives each (`initrd=NAME` on the command line)
    /// and its URL.
    pub initrds: Vec<(String, String)>,
    pub cmdline: String,
    /// Fetched (and dropped) right before the kernel starts, so the server sees the handoff.
    pub ready: Option<String>,
}

/// What the decider is asked about one request.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The machine as the request names it; `None` when it names none.
    pub machine: Option<Machine>,
    /// Whether the request may speak for that machine ([`crate::identity`]). When it may not,
    /// it gets nothing of the machine's own: the safest answer for that MAC.
    pub vouched: bool,
    pub peer: SocketAddr,
    /// `http://HOST[:PORT]` as the machine's loader reaches this server: URLs in the decision
    /// start with it.
    pub base: &'a str,
}

/// A URL only one machine is given (its own cloud-config, its install callback, a file an API
/// named for it), as a request presents it: the MAC and the tag that proves it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Personal<'a> {
    pub kind: PersonalKind,
    pub mac: Mac,
    pub tag: &'a str,
    /// The request's query (`status=failed&reason=…` on an install callback).
    pub query: &'a str,
}

/// What a personal URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonalKind {
    /// `/_/config/MAC-TAG.yaml`: the machine's own cloud-config.
    Config,
    /// `/_/installed/MAC-TAG`: the machine's install finished.
    Installed,
    /// `/_/report/MAC-TAG?stage=STAGE[&status=failed&reason=WHY]`: a stage of the booted
    /// system (its cloud-config's, Kairos's yip stages) reached, or failed.
    Report,
    /// `/_/api?mac=MAC&n=N&t=TAG`: file `N` of what an API named for the machine.
    File(usize),
}

/// A way to decide how machines boot.
pub trait Booter: Send + Sync + 'static {
    /// The DHCP path's question: answer this machine at all? From memory only: it must never
    /// wait (iPXE gives an offer about two seconds).
    fn allow(&self, m: &Machine) -> bool;

    /// [`Booter::allow`] as the DHCP path asks it, and whether the machine's kernel is signed
    /// where the loaders cannot say so for every machine (an API names each machine's kernel):
    /// UEFI x64 PXE firmware then gets the Secure Boot chain. Same rules: memory only.
    fn answer(&self, m: &Machine) -> pxe::driver::Allowed {
        match self.allow(m) {
            true => pxe::driver::Allowed::Yes,
            false => pxe::driver::Allowed::No,
        }
    }

    /// How the machine a request names boots now. May wait a little (an API asked with a
    /// timeout), never on the DHCP path.
    fn decide(&self, ask: &Ask<'_>) -> Decision;

    /// A file it serves by name (`/NAME`, `/_/file?name=NAME`).
    fn file(&self, name: &str) -> Option<http::Reply>;

    /// A personal URL's answer; `None` when the URL is not right.
    fn personal(&self, _p: &Personal<'_>, _from: SocketAddr, _base: &str) -> Option<http::Reply> {
        None
    }

    /// One line for the startup log: what decides.
    fn describe(&self) -> String;
}
