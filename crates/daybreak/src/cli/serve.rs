//! `daybreak serve` and `daybreak start-pixie`: given files (or an ISO) into the server's
//! options.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;

use crate::ipxe;
use crate::plan::{CloudConfig, PlanInput};
use crate::serve::ServeOptions;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The kernel to boot (vmlinuz, bzImage).
    #[arg(long, value_name = "FILE", required_unless_present = "iso")]
    kernel: Option<PathBuf>,
    /// A Kairos ISO, as a path or an http(s) URL (downloaded into --state-dir first): its
    /// /boot/kernel, /boot/initrd and /rootfs.squashfs are served straight from the ISO file, with
    /// no extraction.
    #[arg(long, value_name = "FILE|URL", conflicts_with_all = ["kernel", "initrd", "rootfs"])]
    iso: Option<PathBuf>,
    /// Where downloaded ISOs are cached (absolute, or relative to the working directory).
    #[arg(long, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
    /// An initrd; repeat for several, loaded in order.
    #[arg(long, value_name = "FILE")]
    initrd: Vec<PathBuf>,
    /// The root squashfs, passed to the kernel as root=live:<URL>.
    #[arg(long, value_name = "FILE")]
    rootfs: Option<PathBuf>,
    /// The cloud-config, passed to the kernel as config_url=<URL>. Served only on the boot HTTP port.
    #[arg(long, value_name = "FILE")]
    cloud_config: Option<PathBuf>,
    /// Kernel arguments replacing the Kairos defaults (root=live: and config_url= are still added).
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    /// Machine profiles (YAML): per machine (by mac, uuid or arch) a hostname, an action
    /// (install, live, local, ignore), netboot.cmdline, cloud_config or cloud_config_file, and
    /// template values. Read again when it changes. Machines are remembered in --state-dir.
    #[arg(long, value_name = "FILE")]
    machines: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args, Debug)]
pub struct NetArgs {
    /// Address TFTP and HTTP listen on. A specific address also limits ProxyDHCP to the interface
    /// that holds it and is the address announced to clients.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    listen: Ipv4Addr,
    /// HTTP port for the boot script and files.
    #[arg(long, value_name = "PORT", default_value_t = 8090)]
    http_port: u16,
    /// Only answer boot requests arriving on this interface; repeat for several. Default: all.
    #[arg(long, value_name = "IFACE")]
    interface: Vec<String>,
    /// Address to announce to clients (in DHCP replies and URLs) instead of the address of the
    /// interface each request came in on. For NAT or port forwarding.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<Ipv4Addr>,
    /// Do not answer DHCP at all (when your DHCP server already sends next-server/filename).
    #[arg(long)]
    no_proxy_dhcp: bool,
    /// TFTP port. Firmware always asks port 69; change it only for testing.
    #[arg(long, value_name = "PORT", default_value_t = 69)]
    tftp_port: u16,
    /// iPXE binary for BIOS PXE ROMs instead of the built-in undionly.kpxe.
    #[arg(long, value_name = "FILE")]
    ipxe_bios: Option<PathBuf>,
    /// iPXE binary for UEFI x64 instead of the built-in one (see --efi-ipxe).
    #[arg(long, value_name = "FILE")]
    ipxe_efi64: Option<PathBuf>,
    /// The built-in iPXE UEFI x64 machines get: ipxe (ipxe.efi, iPXE's own NIC drivers) or
    /// snponly (snponly.efi, only the firmware's network driver, the one that just PXE-booted:
    /// choose it when a NIC hangs or finds no link under ipxe.efi).
    /// Default: ipxe, or, when the kernel carries a Secure Boot signature, the signed chain
    /// (shim, then GRUB), which also boots machines that enforce Secure Boot.
    #[arg(long, value_enum, value_name = "BUILD", conflicts_with = "ipxe_efi64")]
    efi_ipxe: Option<ipxe::EfiBuild>,
    /// iPXE binary for UEFI arm64 instead of the built-in ipxe-arm64.efi (arm64 machines are
    /// answered when there is an arm64 kernel for them).
    #[arg(long, value_name = "FILE")]
    ipxe_arm64: Option<PathBuf>,
}

/// Where machine records are kept, and what reaches a store on etcd. Secrets only in files.
#[derive(Args, Debug, Default, Clone)]
pub struct StoreArgs {
    /// Where machines are remembered: file (STATE_DIR/machines, the default: this host only)
    /// or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (default prefix /daybreak), which replicas
    /// of Daybreak share: one fleet, any replica the same answer.
    #[arg(long, value_name = "URL")]
    pub store: Option<crate::store::Location>,
    /// The CA certificate (PEM) of the etcd servers: TLS to etcd (https endpoints).
    #[arg(long, value_name = "FILE")]
    pub store_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's client-certificate authentication; with --store-key.
    #[arg(long, value_name = "FILE")]
    pub store_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub store_key: Option<PathBuf>,
    /// A file whose first line is USER:PASSWORD of an etcd user (etcd's own authentication).
    #[arg(long, value_name = "FILE")]
    pub store_auth_file: Option<PathBuf>,
}

impl StoreArgs {
    /// What the flags say, each over what `settings` (the config file's `store:` keys) say.
    pub fn config(self, settings: &crate::store::StoreConfig) -> crate::store::StoreConfig {
        let s = settings.clone();
        crate::store::StoreConfig {
            location: self.store.unwrap_or(s.location),
            ca: self.store_ca.or(s.ca),
            cert: self.store_cert.or(s.cert),
            key: self.store_key.or(s.key),
            auth_file: self.store_auth_file.or(s.auth_file),
        }
    }
}

/// Where the admin surface (the status page, `/api/machines`, `/metrics`) listens, and who may
/// read it.
#[derive(Args, Debug, Default)]
pub struct AdminArgs {
    /// Where the status page, /api/machines and /metrics listen (never on the boot port):
    /// ADDR:PORT, a port on 127.0.0.1, or off. Default: 127.0.0.1:8091. An address other hosts
    /// reach needs --admin-token-file.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub admin_listen: Option<String>,
    /// A file whose first line is the admin token (16 characters or more, e.g.
    /// `head -c 24 /dev/urandom | base64`): every admin request must carry it, as
    /// `Authorization: Bearer TOKEN` or as the password of HTTP Basic (a browser asks for it).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A host name the admin listener answers to besides its addresses and localhost (the name
    /// in the browser's address bar); repeat for several. Other names are refused, so a web
    /// page cannot read the API through a DNS name it points at this host.
    #[arg(long, value_name = "NAME")]
    pub admin_host: Vec<String>,
    /// How long a machine's boot step may wait for the next before the status page and
    /// /api/machines show it stalled, with the likely cause (default 5m: a large squashfs over
    /// a busy network, an install, take minutes).
    #[arg(long, value_name = "DURATION", value_parser = parse_stall)]
    pub stall_after: Option<std::time::Duration>,
    /// Do not receive iPXE's own lines. By default boot scripts set iPXE's `syslog` to this
    /// server and UDP 514 takes what an iPXE built with syslog sends (only from machines
    /// booting here, a few lines a second each): its errors become the machine's failure. A
    /// script's failed step is reported over HTTP either way.
    #[arg(long)]
    pub no_syslog: bool,
    /// Whether machines with URLs of their own (profiles, a cloud-config template) get a small
    /// extra initrd whose dracut hooks report "initrd network up", "root fetched", "root
    /// mounted" and "switching root" to their timeline, in the background with short timeouts
    /// (a server gone never fails or delays the boot). auto: when the kernel command line is
    /// dracut's (root=live:, rd. options), as Kairos's is.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::report_initrd::When::Auto)]
    pub report_initrd: crate::report_initrd::When,
}

fn parse_stall(s: &str) -> Result<std::time::Duration, String> {
    duration_within(s, 86_400.0)
}

/// `5s`, `500ms`, `2m`, `1h` (a bare number is seconds), between 1 ms and `max` seconds.
pub fn duration_within(s: &str, max: f64) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let bad = || format!("{s:?} is not a duration: write 5s, 500ms or 1m");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" if max > 3600.0 => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(0.001..=max).contains(&secs) {
        return Err(format!("{s}: give a duration between 1ms and {}s", max));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

impl AdminArgs {
    /// Whether any of them is on the command line.
    pub fn given(&self) -> bool {
        self.admin_listen.is_some()
            || self.admin_token_file.is_some()
            || !self.admin_host.is_empty()
    }

    pub fn options(self) -> anyhow::Result<crate::admin::AdminOptions> {
        let o = crate::admin::AdminOptions::new(
            self.admin_listen.as_deref(),
            self.admin_token_file.as_deref(),
            self.admin_host,
        )?;
        Ok(crate::admin::AdminOptions {
            syslog: !self.no_syslog,
            ..o
        })
    }
}

#[derive(Args, Debug)]
pub struct StartPixieArgs {
    /// The cloud-config file (served as config_url=).
    cloud_config: PathBuf,
    /// The root squashfs (served as root=live:). A Kairos ISO here serves its own kernel,
    /// initrd and squashfs straight from the ISO (INITRD and KERNEL are then not used).
    squashfs: PathBuf,
    /// Address to listen on (0.0.0.0 for all).
    address: Ipv4Addr,
    /// HTTP port.
    port: u16,
    /// The initrd.
    initrd: PathBuf,
    /// The kernel.
    kernel: PathBuf,
    #[command(flatten)]
    admin: AdminArgs,
}

impl NetArgs {
    pub fn into_options(self, plan: PlanInput) -> ServeOptions {
        ServeOptions {
            plan,
            http: pxe::HttpAddress {
                port: self.http_port,
                advertise: self.advertise,
            },
            listen: self.listen,
            interfaces: self.interface,
            proxy_dhcp: !self.no_proxy_dhcp,
            tftp_port: self.tftp_port,
            ipxe_bios: self.ipxe_bios,
            ipxe_efi64: self.ipxe_efi64,
            ipxe_arm64: self.ipxe_arm64,
            efi_build: self.efi_ipxe,
            netboot: true,
            artifact_listen: None,
            pixiecore_log: false,
            api: None,
            fleet: None,
            admin: Default::default(),
        }
    }
}

impl ServeArgs {
    /// The server's options; an `--iso` URL is downloaded first.
    pub fn into_options(self) -> anyhow::Result<ServeOptions> {
        // Machines are remembered and shown on the status page with or without profiles.
        let images = crate::sources::ImageOptions {
            arch: artifacts::oci::host_arch().to_string(),
            insecure: false,
            compression: artifacts::Compression::Gzip,
            peers: None,
        };
        let fleet = crate::fleet::FleetOptions {
            state_dir: self.state_dir.clone(),
            store: self.store.config(&Default::default()),
            opened: None,
            machines: self
                .machines
                .map(|m| crate::fleet::MachinesSource::File(artifacts::absolute(&m))),
            template: None,
            source: None,
            data: Default::default(),
            images,
            stall_after: self.admin.stall_after,
            report_initrd: self.admin.report_initrd,
        };
        let admin = self.admin.options()?;
        let report = super::progress::reporter();
        let set = self
            .iso
            .as_deref()
            .map(|i| crate::sources::open_iso(&i.to_string_lossy(), &self.state_dir, &*report))
            .transpose()?;
        let mut o = self.net.into_options(PlanInput {
            kernel: self.kernel,
            set,
            initrds: self.initrd,
            rootfs: self.rootfs,
            cloud_config: self.cloud_config.map(CloudConfig::File),
            cmdline: self.cmdline,
            ..Default::default()
        });
        o.fleet = Some(fleet);
        o.admin = admin;
        Ok(o)
    }
}

impl StartPixieArgs {
    /// The server's options. The ISO is opened once: what it holds is the plan; a file that is
    /// no ISO is the squashfs itself (and a missing one is reported as such when it is opened).
    pub fn into_options(self) -> anyhow::Result<ServeOptions> {
        use artifacts::{IsoError, SourceError};
        let admin = self.admin.options()?;
        let plan = match artifacts::from_iso_file(self.squashfs.clone()) {
            Ok(set) => {
                tracing::info!(
                    "{} is an ISO: serving its /boot/kernel, /boot/initrd and /rootfs.squashfs in place (INITRD and KERNEL are not used)",
                    self.squashfs.display()
                );
                PlanInput {
                    set: Some(set),
                    ..Default::default()
                }
            }
            Err(SourceError::Iso(IsoError::NotIso { .. } | IsoError::Io { .. })) => PlanInput {
                kernel: Some(self.kernel),
                initrds: vec![self.initrd],
                rootfs: Some(self.squashfs),
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        let plan = PlanInput {
            cloud_config: Some(CloudConfig::File(self.cloud_config)),
            ..plan
        };
        let http = pxe::HttpAddress {
            port: self.port,
            advertise: None,
        };
        Ok(ServeOptions {
            pixiecore_log: true,
            admin,
            ..ServeOptions::new(plan, http, self.address)
        })
    }
}
