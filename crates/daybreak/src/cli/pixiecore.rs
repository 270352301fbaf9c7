//! pixiecore's commands as the Kairos docs run them: `daybreak boot` (static mode) and
//! `daybreak api` (API mode), with pixiecore's arguments and flags, so `pixiecore` can be
//! replaced by `daybreak` in a command line unchanged.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::api::Api;
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
    /// pixiecore's status page port: Daybreak's admin listener (/metrics) on 127.0.0.1:PORT,
    /// unless --admin-listen says where.
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
    #[command(flatten)]
    admin: super::serve::AdminArgs,
    /// With --store: machines are remembered (and shown on the status page) in that store;
    /// an etcd store is shared by replicas (one fleet, any replica the same answer).
    #[command(flatten)]
    store: super::serve::StoreArgs,
    /// Where a file store keeps machines (with --store file), and the URL key.
    #[arg(long, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
}

impl ServerArgs {
    /// The store `--store` names, if it was given.
    fn store(&self) -> Option<crate::store::StoreConfig> {
        let s = self.store.clone();
        s.store
            .is_some()
            .then(|| s.config(&crate::store::StoreConfig::default()))
    }

    /// The server for `plan`, logging as pixiecore does. What pixiecore does and Daybreak does
    /// not is said with a warning: the boot works without it.
    pub fn options(mut self, plan: PlanInput) -> anyhow::Result<ServeOptions> {
        if self.status_port != 0 && self.admin.admin_listen.is_none() {
            self.admin.admin_listen = Some(self.status_port.to_string());
        }
        let admin = self.admin.options()?;
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
        o.admin = admin;
        Ok(o)
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
        // With a store, machines are remembered (and replicas share them).
        let fleet = self.server.store().map(|store| crate::fleet::FleetOptions {
            state_dir: self.server.state_dir.clone(),
            store,
            opened: None,
            machines: None,
            template: None,
            data: Default::default(),
            images: crate::sources::ImageOptions {
                arch: artifacts::oci::host_arch().to_string(),
                insecure: false,
                compression: artifacts::Compression::Gzip,
                peers: None,
            },
            source: None,
            stall_after: None,
            report_initrd: Default::default(),
        });
        let mut o = self.server.options(PlanInput {
            kernel: Some(self.kernel),
            initrds: self.initrds,
            // pixiecore's command line is taken as it is: with neither --rootfs nor
            // --cloud-config, Daybreak adds nothing to it.
            cmdline: Some(self.cmdline.unwrap_or_default()),
            ..Default::default()
        })?;
        o.fleet = fleet;
        Ok(o)
    }
}

/// `daybreak api`: pixiecore's API mode, with its arguments and flags.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// The API server's URL prefix: machines are looked up at URL/v1/boot/MAC.
    #[arg(value_name = "URL")]
    url: String,
    /// How long to wait for the API server (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    api_request_timeout: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    super::serve::duration_within(s, 600.0)
}

impl ApiArgs {
    pub fn into_options(self) -> anyhow::Result<ServeOptions> {
        // With a store, the URLs the API's files are served at are keyed by the key replicas
        // share, and this replica is a member of them.
        let store = match self.server.store() {
            Some(c) => Some(crate::store::open(&c, &self.server.state_dir)?),
            None => None,
        };
        let api = Api::with_store(&self.url, self.api_request_timeout, store)?;
        let mut o = self.server.options(PlanInput::default())?;
        o.api = Some(api);
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_pixiecore_writes_them() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5h").is_err() && parse_duration("0s").is_err());
    }
}
