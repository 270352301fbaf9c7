//! pixiecore's command line and log lines, so that the Kairos docs' `pixiecore boot …` command
//! works as `daybreak boot …` unchanged, and whatever reads pixiecore's output (AuroraBoot's web
//! UI runs start-pixie and shows its lines as they come; scripts wait for "Offering to boot")
//! keeps working.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::events::{BootEvent, Step};
use crate::plan::PlanInput;
use crate::serve::ServeOptions;

/// The server flags `pixiecore boot` and `pixiecore api` share.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address TFTP and HTTP listen on; a specific address also limits ProxyDHCP to the
    /// interface holding it.
    #[arg(short = 'l', long, value_name = "ADDR", default_value = "0.0.0.0")]
    listen_addr: Ipv4Addr,
    /// HTTP port (pixiecore's default, 80).
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = 80)]
    port: u16,
    /// pixiecore's status page port. Daybreak has no status page yet: ignored, with a warning.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    status_port: u16,
    /// Accepted: Daybreak answers DHCP beside a local DHCP server on its own (through a raw
    /// socket when port 67 is taken), so there is nothing to choose.
    #[arg(long)]
    dhcp_no_bind: bool,
    /// iPXE binary for BIOS PXE ROMs instead of the built-in undionly.kpxe.
    #[arg(long, value_name = "FILE")]
    ipxe_bios: Option<PathBuf>,
    /// iPXE binary for UEFI x64 instead of the built-in ipxe.efi.
    #[arg(long, value_name = "FILE")]
    ipxe_efi64: Option<PathBuf>,
    /// Ignored, with a warning: Daybreak does not answer 32-bit UEFI machines.
    #[arg(long, value_name = "FILE")]
    ipxe_efi32: Option<PathBuf>,
    /// Ignored, with a warning: iPXE clients get their boot script straight from Daybreak.
    #[arg(long, value_name = "FILE")]
    ipxe_ipxe: Option<PathBuf>,
    /// Accepted: Daybreak's log lines always carry timestamps.
    #[arg(short = 't', long)]
    log_timestamps: bool,
}

impl ServerArgs {
    /// The server for `plan`, logging as pixiecore does. What pixiecore does and Daybreak does
    /// not is said with a warning: the boot works without it.
    pub fn options(self, plan: PlanInput) -> ServeOptions {
        if self.status_port != 0 {
            tracing::warn!("--status-port: Daybreak has no status page yet; ignored");
        }
        if self.ipxe_efi32.is_some() {
            tracing::warn!("--ipxe-efi32: Daybreak does not answer 32-bit UEFI machines; ignored");
        }
        if self.ipxe_ipxe.is_some() {
            tracing::warn!(
                "--ipxe-ipxe: iPXE clients get their boot script from Daybreak directly; ignored"
            );
        }
        if self.dhcp_no_bind {
            tracing::info!(
                "--dhcp-no-bind: Daybreak shares port 67 with a local DHCP server by itself"
            );
        }
        let http = pxe::HttpAddress {
            port: self.port,
            advertise: None,
        };
        let mut o = ServeOptions::new(plan, http, self.listen_addr);
        o.ipxe_bios = self.ipxe_bios;
        o.ipxe_efi64 = self.ipxe_efi64;
        o.pixiecore_log = true;
        o
    }
}

/// `daybreak boot`: pixiecore's static mode, with its arguments and flags.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// The kernel to boot (a local file).
    #[arg(value_name = "KERNEL")]
    kernel: PathBuf,
    /// Initrds, loaded in order (local files).
    #[arg(value_name = "INITRD")]
    initrds: Vec<PathBuf>,
    /// The kernel command line, as it is. `{{ ID "/path/to/file" }}` serves that file and puts
    /// its URL there (the docs' root=live: and config_url= are written this way).
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    /// Accepted, and not shown (pixiecore does not show it either).
    #[arg(long, value_name = "MSG")]
    bootmsg: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

impl BootArgs {
    /// What to serve; a URL where Daybreak needs a local file is an error that says so.
    pub fn into_options(self) -> anyhow::Result<ServeOptions> {
        for f in std::iter::once(&self.kernel).chain(&self.initrds) {
            let s = f.to_string_lossy();
            if artifacts::is_url(&s) {
                bail!("{s}: Daybreak boots local files; download it first (curl -fLO {s}) and give its path");
            }
        }
        Ok(self.server.options(PlanInput {
            kernel: Some(self.kernel),
            initrds: self.initrds,
            // pixiecore's command line is taken as it is: with neither --rootfs nor
            // --cloud-config, Daybreak adds nothing to it.
            cmdline: Some(self.cmdline.unwrap_or_default()),
            ..Default::default()
        }))
    }
}

/// The line pixiecore logs for this step of a boot, if it logs one:
/// `[DHCP] Offering to boot MAC`, `[HTTP] Sending ipxe boot script to IP:PORT` and
/// `[HTTP] Sent file "NAME" to IP:PORT`, with its file names (`kernel`, `initrd-0`, …).
pub fn line(e: &BootEvent) -> Option<String> {
    match &e.step {
        Step::Offer {
            port: pxe::Port::Dhcp,
            ..
        } => Some(format!("[DHCP] Offering to boot {}", e.mac?)),
        Step::Script => Some(format!("[HTTP] Sending ipxe boot script to {}", e.peer?)),
        Step::File { name, .. } => {
            let name = match name.strip_prefix("initrd") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("initrd-{n}")
                }
                _ => name.clone(),
            };
            Some(format!("[HTTP] Sent file \"{name}\" to {}", e.peer?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Hub;

    #[test]
    fn boot_steps_read_as_pixiecore_logs_them() {
        let hub = Hub::default();
        let peer = Some("192.168.1.49:4371".parse().unwrap());
        let offer = Step::Offer {
            firmware: "UEFI x64 PXE".into(),
            path: "UEFI PXE, then iPXE",
            target: "ipxe.efi".into(),
            port: pxe::Port::Dhcp,
        };
        let file = |name: &str| Step::File {
            name: name.into(),
            bytes: 1,
            ms: 1,
        };
        let cases = [
            (
                hub.emit(None, "08:00:27:E5:22:8C".parse().ok(), offer),
                Some("[DHCP] Offering to boot 08:00:27:e5:22:8c"),
            ),
            (
                hub.emit(peer, None, Step::Script),
                Some("[HTTP] Sending ipxe boot script to 192.168.1.49:4371"),
            ),
            (
                hub.emit(peer, None, file("kernel")),
                Some("[HTTP] Sent file \"kernel\" to 192.168.1.49:4371"),
            ),
            (
                hub.emit(peer, None, file("initrd0")),
                Some("[HTTP] Sent file \"initrd-0\" to 192.168.1.49:4371"),
            ),
            (
                hub.emit(peer, None, file("kairos.squashfs")),
                Some("[HTTP] Sent file \"kairos.squashfs\" to 192.168.1.49:4371"),
            ),
            (hub.emit(peer, None, Step::Booting), None),
        ];
        for (e, want) in cases {
            assert_eq!(line(&e).as_deref(), want, "{e:?}");
        }
    }
}
