//! The `daybreak` command: parses the command line, sets up logging, and hands off to the
//! servers. Each subcommand's `--help` is its manual.

mod api;
mod config;
mod decision;
mod default_command;
mod events;
mod fleet;
mod interrupt;
mod ipxe;
mod ipxe_iso;
mod logwriter;
mod metrics;
mod netboot;
mod pixiecore;
mod plan;
mod progress;
mod render;
mod routes;
mod secureboot;
mod serve;
mod sockets;
mod status;
mod store;
mod timeline;
mod tokens;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::{CloudConfig, PlanInput};
use crate::serve::ServeOptions;

#[derive(Parser, Debug)]
#[command(
    name = "daybreak",
    version,
    about = "Network-boot server: boots machines over the network into Kairos or any live Linux",
    long_about = "Daybreak boots machines over the network. Given an image, it makes the kernel, initrd and \
root squashfs out of it, then answers PXE firmware beside the DHCP server your network already has \
(ProxyDHCP on UDP 67 and 4011), hands it iPXE over TFTP (UDP 69), and serves iPXE its boot script, the \
kernel, the initrd, the squashfs and the cloud-config over HTTP (port 8090). Without a subcommand it \
works like AuroraBoot: settings come from an optional config file (YAML, a path or an http(s) URL) and \
--set KEY=VALUE (dotted keys nest, true/false are booleans, --set wins over the file).\n\n\
Settings:\n  \
container_image       the image: quay.io/kairos/…:tag, oci://…, docker://…, file://image.tar,\n                        \
ocifile://archive.tar, an OCI layout directory, dir://rootfs, or an ISO\n  \
repository, release_version, artifact_version, flavor, flavor_release, variant, platform, model\n                        \
a Kairos GitHub release ISO instead (variant: standard when artifact_version\n                        \
mentions k3s, else core; platform amd64; model generic); release_base_url\n                        \
replaces https://github.com\n  \
arch                  platform to pull: amd64 or arm64 (default: this machine's)\n  \
allow-insecure-registries (alias insecure)  plain HTTP or self-signed registries\n  \
cloud_config          inline cloud-config (--cloud-config FILE|URL|- takes precedence)\n  \
netboot.cmdline       replaces the default kernel arguments (root=live: and config_url= stay)\n  \
netboot.proxy_dhcp    false: leave DHCP alone (your DHCP server sends next-server and filename)\n  \
machines              machine profiles, a list (or --machines FILE): per machine by mac, uuid or\n                        \
arch, hostname, action (install, live, local, ignore), netboot.cmdline,\n                        \
cloud_config, template values, its own image; see daybreak serve --help\n  \
netboot_http_port     8090        netboot_listen_addr   0.0.0.0\n  \
listen_addr           :8080, the artifact file server (artifacts only, never the cloud-config)\n  \
disable_netboot, disable_http_server   turn either server off (both: build and exit)\n  \
state_dir             artifacts, layers and downloads: /var/lib/daybreak as root, else\n                        \
~/.local/state/daybreak. It must be yours and writable by no one else\n                        \
(created 0700); /tmp/auroraboot works when asked for, under the same rule\n\n\
The cloud-config is a template: [[[ .key.path ]]] is replaced by that --set value (empty if unset), \
so secrets stay off the file: --set-file kairos.password=/run/secrets/pw with \
passwd: [[[ .kairos.password ]]] (--set works too, but any local user can read a command line). It is \
kept in memory, never written to disk, and served on the netboot port at a random path that changes \
every run and is given only in the kernel command line of booting machines. Daybreak's own values are \
per machine: [[[ .daybreak.installed_url ]]] (call it when the install is done: from then on the machine \
boots from its disk), [[[ .daybreak.mac ]]], [[[ .daybreak.hostname ]]]; with them or with machine \
profiles, each machine gets its own cloud-config at its own unguessable URL.\n\n\
Ports 67, 69 and 4011 need root, or CAP_NET_BIND_SERVICE and CAP_NET_RAW.",
    after_help = "Examples:\n  \
# The Kairos docs' command: netboot an image, with a cloud-config\n  \
sudo daybreak --cloud-config config.yaml --set \\\n    \
container_image=quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3\n\n  \
# A secret from a file into the cloud-config template (kept off the command line)\n  \
sudo daybreak --set container_image=quay.io/kairos/alpine:3.21-core-amd64-generic-v3.7.2 \\\n      \
--set-file kairos.password=/run/secrets/kairos-pw --cloud-config config.yaml\n\n  \
# Settings from a file (or a URL); --set still wins\n  \
sudo daybreak config.yaml --set netboot_http_port=9000\n\n  \
# A Kairos release ISO from GitHub, served without extracting it\n  \
sudo daybreak --set repository=kairos-io/kairos --set release_version=v3.7.2 --set flavor=ubuntu \\\n      \
--set flavor_release=24.04 --set artifact_version=v3.7.2-k3sv1.35.0-k3s3\n\n  \
# Given files, pixiecore/AuroraBoot style (initrd before kernel)\n  \
sudo daybreak start-pixie config.yaml kairos.squashfs 0.0.0.0 8090 kairos-initrd kairos-kernel\n\n  \
# Only make the files: see `daybreak netboot --help`\n  \
daybreak netboot quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3 out"
)]
struct Cli {
    /// Log every packet decision and request, not just one line per machine step.
    #[arg(short = 'd', long, global = true)]
    debug: bool,
    /// Log format: human-readable text, or one JSON object per line for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// AuroraBoot-style config file (YAML): a path or an http(s) URL.
    #[arg(value_name = "CONFIG_FILE_OR_URL")]
    config: Option<String>,
    /// A setting, KEY=VALUE (repeatable; dotted keys nest: netboot.cmdline=…).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A setting whose value is the content of a file (one trailing newline dropped): for
    /// passwords and tokens, which on the command line any local user can read in
    /// /proc/PID/cmdline. Applied after --set.
    #[arg(long = "set-file", value_name = "KEY=PATH")]
    set_file: Vec<String>,
    /// The cloud-config: a file, an http(s) URL, or - for stdin. A [[[ ]]] template over the
    /// --set values.
    #[arg(long, value_name = "FILE|URL|-")]
    cloud_config: Option<String>,
    /// Machine profiles (YAML list; or `machines:` in the config file): per machine (by mac,
    /// uuid or arch) a hostname, an action (install, live, local, ignore), netboot.cmdline,
    /// cloud_config or cloud_config_file, and template values. Read again when it changes.
    #[arg(long, value_name = "FILE")]
    machines: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a kernel, initrds, a root squashfs and a cloud-config to every machine that network-boots.
    #[command(
        long_about = "Serve a kernel, initrds, a root squashfs and a cloud-config to every machine on the \
LAN that network-boots, next to the DHCP server already there.\n\n\
The kernel command line is Kairos's default:\n  \
rd.live.overlay.overlayfs rd.neednet=1 ip=dhcp rd.cos.disable root=live:<rootfs URL> netboot\n  \
nodepair.enable config_url=<cloud-config URL> console=tty1 console=ttyS0 console=tty0\n\
--cmdline replaces it; root=live: and config_url= are still set to this server's URLs when \
--rootfs and --cloud-config are given. Other files can be put on the command line with \
pixiecore's template: --cmdline 'extra={{ ID \"/path/to/file\" }}' serves that file and puts its URL there.\n\n\
Boot chain: PXE firmware gets an iPXE binary over TFTP (undionly.kpxe for BIOS, ipxe.efi for UEFI \
x64; the binaries are built in), iPXE fetches http://<this host>:<port>/boot.ipxe, which loads the \
kernel and initrds and boots. When the kernel carries a Secure Boot signature (Debian's do), UEFI x64 \
PXE machines get the signed chain instead, which boots with Secure Boot enforced or not: shim, \
signed by Microsoft's UEFI CA, then Debian's signed network GRUB, which loads the kernel and initrds \
over HTTP with the same command line. UEFI HTTP Boot clients get ipxe.efi by an http:// URL.

Architectures: the kernel says which machines are answered. An x86-64 kernel boots BIOS and UEFI x64 machines; an arm64 kernel (an uncompressed Image or EFI zboot) boots arm64 UEFI machines (PXE and HTTP Boot), which get the built-in ipxe-arm64.efi. With --machines, a profile's own image (say, one for arch: arm64) answers its machines too; the default command's multi-arch image serves every machine its own architecture.

Machines (--machines FILE): per machine, selected by mac, uuid or arch, a hostname, an action (install: boot the image until its install calls [[[ .daybreak.installed_url ]]], then its disk; live; local; ignore), netboot.cmdline, its own cloud-config and template values, and its own image. The file is read again when it changes; machines are remembered in --state-dir (daybreak machines), and http://<this host>:<port>/ shows them live.",
        after_help = "Examples:\n  \
daybreak serve --kernel vmlinuz --initrd initrd.img --rootfs rootfs.squashfs \\\n      \
--cloud-config config.yaml\n  \
daybreak serve --kernel vmlinuz --initrd initrd.img --cmdline 'console=ttyS0 quiet' \\\n      \
--interface eth1\n  \
daybreak serve --kernel vmlinuz --initrd initrd.img --advertise 192.168.1.10 --http-port 8080\n  \
daybreak serve --kernel vmlinuz --initrd initrd.img --rootfs rootfs.squashfs \\\n      \
--machines machines.yaml"
    )]
    Serve(ServeArgs),
    /// Serve given files like `pixiecore boot` (AuroraBoot's start-pixie): CLOUD_CONFIG SQUASHFS ADDRESS PORT INITRD KERNEL.
    #[command(
        name = "start-pixie",
        long_about = "Serve the given files the way AuroraBoot's start-pixie does (which runs pixiecore): \
ProxyDHCP, TFTP and HTTP on ADDRESS, HTTP on PORT, with Kairos's default kernel command line pointing \
root=live: at SQUASHFS and config_url= at CLOUD_CONFIG. Note the order: the initrd comes before the kernel.",
        after_help = "Example (the Kairos docs' command):\n  \
daybreak start-pixie /work/cloud-config.yaml /work/out/kairos.squashfs 0.0.0.0 8090 \\\n      \
/work/out/kairos-initrd /work/out/kairos-kernel"
    )]
    StartPixie(StartPixieArgs),
    /// pixiecore's `boot`: KERNEL [INITRD...] with --cmdline and pixiecore's flags, as the
    /// Kairos docs run it.
    #[command(
        long_about = "Serve KERNEL and INITRDs the way `pixiecore boot` does, with its arguments and \
flags, so the Kairos docs' pixiecore command runs unchanged with `daybreak` in place of `pixiecore`. \
The command line is passed as it is: `{{ ID \"/path/to/file\" }}` serves that file and puts its URL \
there. HTTP listens on port 80 unless -p says otherwise. pixiecore's log lines (\"Offering to boot\", \
\"Sent file\") are printed as it prints them, beside Daybreak's own.",
        after_help = "Example (the Kairos docs' command):\n  \
daybreak boot kairos-kernel kairos-initrd --cmdline='rd.neednet=1 ip=dhcp rd.cos.disable \\\n      \
root=live:{{ ID \"/files/kairos.squashfs\" }} netboot install-mode \\\n      \
config_url={{ ID \"/files/config.yaml\" }} console=tty1 console=ttyS0 console=tty0'"
    )]
    Boot(pixiecore::BootArgs),
    /// pixiecore's `api`: each machine booted as `GET URL/v1/boot/MAC` says.
    #[command(
        long_about = "Boot each machine the way a pixiecore API server says, as `pixiecore api URL` \
does: on a machine's DHCP request and boot script request Daybreak asks GET URL/v1/boot/MAC. A 200 \
answer is JSON with `kernel` (a URL), `initrd` (a list of URLs), `cmdline` (with {{ URL \"…\" }} \
templates, or the older object form) or `ipxe-script`; any other answer, or a malformed one, means \
the machine is not answered at all. URLs are http(s), file:// (on this host), /path (from the API \
server's root) or relative to URL; machines fetch them through this server, which proxies only what \
the API named for that machine. DHCP never waits for the API: the last answer per MAC is used and \
refreshed in the background (a machine new to the API gets its offer on its next DHCP request).",
        after_help = "Example:\n  \
daybreak api http://10.0.0.5:8000/pixiecore --api-request-timeout 3s"
    )]
    Api(api::ApiArgs),
    /// Write a netboot ISO (iPXE with a script) for machines that cannot PXE boot.
    #[command(
        name = "ipxe-iso",
        long_about = "Write OUTPUT.iso: iPXE with a boot script, for machines that cannot PXE boot (a \
CD, a BMC's virtual media, a USB stick: the image is hybrid, and boots in BIOS and UEFI).\n\n\
Without --url it is the generic ISO: it waits for a ProxyDHCP answer (user class pixiecore), which \
any Daybreak (or pixiecore) on the LAN gives, and boots what that server says. With --url it boots \
from fixed URLs, the Kairos way: ${url}/${kernel} and ${url}/${initrd} with rd.neednet=1 ip=dhcp \
rd.cos.disable root=live:${url}/${rootfs} netboot install-mode config_url=${config} console=tty1 \
console=ttyS0 and --cmdline; no Daybreak needs to run, any HTTP server does. A running server also \
hands out its own at http://SERVER:PORT/ipxe.iso, which chains that server's boot script.",
        after_help = "Examples:\n  \
daybreak ipxe-iso netboot.iso\n  \
daybreak ipxe-iso kairos.iso --url http://10.0.0.5:8080 --config http://10.0.0.5/config.yaml"
    )]
    IpxeIso(IpxeIsoArgs),
    /// Write the kernel, initrd and squashfs of an OCI image or a Kairos ISO into OUTDIR.
    #[command(
        long_about = "Turn an image into the three files a netboot needs: PREFIX-kernel, PREFIX-initrd and \
PREFIX.squashfs in OUTDIR (created if missing). Files appear under their names only once complete.\n\n\
SOURCE is any of:\n  \
quay.io/kairos/ubuntu:24.04-…  a registry image, by tag or @sha256 digest; also oci://…\n                                 \
and docker://…; alpine means docker.io/library/alpine\n  \
file://PATH, ocifile://PATH    a docker-save or OCI-archive tarball\n  \
PATH                           an OCI layout directory (PATH:TAG picks a tag), a tarball,\n                                 \
or an ISO\n  \
dir://PATH                     a root filesystem directory, taken as it is\n  \
kairos.iso, https://…/x.iso    a Kairos ISO, read without mounting it (no root, no loop\n                                 \
device): /boot/kernel, /boot/initrd, /rootfs.squashfs\n\n\
An OCI image is pulled (layers in parallel, resumable, every blob checked against its digest), its \
layers are merged with the OCI whiteout rules and streamed straight into a squashfs (1 MiB blocks, \
compressed on every core). From its /boot comes the newest kernel that has an initrd of its own \
version, or else the pair /boot/vmlinuz and /boot/initrd name (as Kairos images have); with nothing \
in /boot, /usr/lib/modules/VERSION/vmlinuz and initramfs.img (bootc images). The result is \
kept in STATE_DIR/artifacts/<digest>/, so the same image is never built twice: the next run costs \
one manifest request (none for a digest, and without a network the last known digest is used). \
Registry credentials come from ~/.docker/config.json (docker login) or containers' auth.json.\n\n\
Images are untrusted input. One is refused, with the reason, when a layer unpacks to more than \
1000 times its compressed size (past its first 64 MiB), when the layers unpack to more than 64 GiB \
in all, when it has more than 4,000,000 entries, or directories nested more than 512 deep (symlinked \
parents included). Paths with .. or a leading / and hard links out of the image are refused; a \
symlink that climbs above / stops there, as at boot.",
        after_help = "Examples:\n  \
daybreak netboot quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3 out\n  \
daybreak netboot --arch arm64 --compression zstd \\\n      \
quay.io/kairos/alpine:3.21-core-arm64-generic-v3.7.2 out\n  \
daybreak netboot file://image.tar out myimage\n  \
daybreak netboot kairos.iso out kairos     # the Kairos docs' command\n  \
# each writes out/PREFIX-kernel, out/PREFIX-initrd, out/PREFIX.squashfs"
    )]
    Netboot(NetbootArgs),
    /// List or prune what the state directory holds (built artifacts, layer blobs, ISO downloads).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The machines that booted: list them, show one, have one install again, or forget one.
    #[command(
        long_about = "The machines that booted from this state directory's server, as the machine store remembers them (STATE_DIR/machines/, one record per MAC; it survives restarts and crashes). A machine is remembered when it fetches its boot script; its install is finished when it calls [[[ .daybreak.installed_url ]]] (put it in the cloud-config's after-install stage), and from then on it boots from its local disk, until `reinstall`. A running server picks up changes within seconds.",
        after_help = "Examples:\n  \
sudo daybreak machines\n  \
sudo daybreak machines show 52:54:00:12:34:56\n  \
sudo daybreak machines reinstall 52:54:00:12:34:56   # its next network boot installs again\n\n\
A cloud-config that reports the end of its install (Kairos's after-install stage):\n  \
stages:\n    \
after-install:\n      \
- commands:\n        \
- curl -fsS [[[ .daybreak.installed_url ]]]"
    )]
    Machines(MachinesArgs),
}

#[derive(Args, Debug)]
struct MachinesArgs {
    #[command(subcommand)]
    command: Option<MachinesCommand>,
    /// The state directory the server uses (absolute, or relative to the working directory).
    #[arg(long, global = true, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum MachinesCommand {
    /// Every machine remembered (the default): MAC, state, boots, last boot, firmware.
    List,
    /// One machine's record, as JSON.
    Show { mac: pxe::Mac },
    /// Install it again: its next network boot boots the image instead of its disk.
    Reinstall { mac: pxe::Mac },
    /// Forget it (remembered again at its next boot).
    Forget { mac: pxe::Mac },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// List built artifacts (newest first) and the size of the layer cache.
    List(StateDirArg),
    /// Remove cached layer blobs and leftovers of interrupted runs; --all removes built
    /// artifacts and downloaded ISOs too.
    Prune {
        #[command(flatten)]
        state: StateDirArg,
        /// Also remove every built artifact and downloaded ISO.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
struct StateDirArg {
    /// The state directory (absolute, or relative to the working directory).
    #[arg(long, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
}

#[derive(Args, Debug)]
struct NetbootArgs {
    /// The image: a registry reference, file://, ocifile://, dir://, an OCI layout, or an ISO.
    source: String,
    /// Where to write the files (created if missing).
    outdir: PathBuf,
    /// File name prefix; empty means "kairos".
    #[arg(default_value = "kairos")]
    prefix: String,
    /// Where artifacts, layers and downloads are kept (absolute, or relative to the working
    /// directory).
    #[arg(long, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
    /// Platform to pull from a multi-arch image (default: this machine's).
    #[arg(long, value_name = "ARCH", default_value = artifacts::oci::host_arch())]
    arch: String,
    /// Allow plain HTTP and self-signed certificates for registries (localhost and 127.0.0.0/8
    /// are always allowed plain HTTP, as Docker does).
    #[arg(long, alias = "insecure")]
    allow_insecure_registries: bool,
    /// squashfs compression: gzip (what Kairos uses), zstd (fast to boot), xz (smallest).
    #[arg(long, value_name = "ALGO", default_value = "gzip")]
    compression: artifacts::Compression,
}

#[derive(Args, Debug)]
struct ServeArgs {
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
    net: NetArgs,
}

#[derive(Args, Debug)]
struct NetArgs {
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

#[derive(Args, Debug)]
struct IpxeIsoArgs {
    /// Where to write the ISO (replaced whole, never left half-written).
    output: PathBuf,
    /// Boot from fixed URLs under this one instead of waiting for a ProxyDHCP answer.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The kernel's name under --url.
    #[arg(long, value_name = "NAME", default_value = "kernel", requires = "url")]
    kernel: String,
    /// The initrd's name under --url.
    #[arg(long, value_name = "NAME", default_value = "initrd", requires = "url")]
    initrd: String,
    /// The squashfs's name under --url (root=live:).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "rootfs.squashfs",
        requires = "url"
    )]
    rootfs: String,
    /// The cloud-config's URL (config_url=); default URL/config.yaml.
    #[arg(long, value_name = "URL", requires = "url")]
    config: Option<String>,
    /// More kernel arguments.
    #[arg(long, value_name = "ARGS", default_value = "", requires = "url")]
    cmdline: String,
}

fn ipxe_iso(a: IpxeIsoArgs) -> ExitCode {
    let script = match a.url {
        None => ipxe_iso::Script::Generic,
        Some(url) => {
            let url = url.trim_end_matches('/').to_string();
            ipxe_iso::Script::Fixed(ipxe_iso::Fixed {
                config: a.config.unwrap_or_else(|| format!("{url}/config.yaml")),
                url,
                kernel: a.kernel,
                initrd: a.initrd,
                rootfs: a.rootfs,
                cmdline: a.cmdline,
            })
        }
    };
    if let Err(e) = script.check() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let image = ipxe_iso::build(&script);
    let dir = a
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        a.output
            .file_name()
            .map_or("ipxe.iso".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let written = std::fs::write(&tmp, &image).and_then(|()| std::fs::rename(&tmp, &a.output));
    match written {
        Ok(()) => {
            println!("{} ({} MiB)", a.output.display(), image.len() >> 20);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("error: cannot write {}: {e}", a.output.display());
            ExitCode::FAILURE
        }
    }
}

#[derive(Args, Debug)]
struct StartPixieArgs {
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
}

impl NetArgs {
    fn into_options(self, plan: PlanInput) -> ServeOptions {
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
        }
    }
}

fn init_logging(debug: bool, format: LogFormat) -> logwriter::Guard {
    use tracing_subscriber::EnvFilter;
    let default = if debug { "debug" } else { "info" };
    let filter =
        EnvFilter::try_from_env("DAYBREAK_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, guard) = logwriter::stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_target(debug)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    guard
}

fn cache(c: CacheCommand) -> ExitCode {
    use artifacts::Store;
    let human = progress::human;
    let dir = match &c {
        CacheCommand::List(a) => &a.state_dir,
        CacheCommand::Prune { state, .. } => &state.state_dir,
    };
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match c {
        CacheCommand::List(_) => {
            let list = store.list();
            if list.is_empty() {
                println!("no built artifacts in {}", store.root().display());
            }
            for e in &list {
                let m = &e.meta;
                let age = artifacts::now().saturating_sub(m.created);
                println!(
                    "{}  {:>9}  {}  {} ({}, {}, kernel {}) {} ago",
                    m.digest,
                    human(e.size()),
                    e.dir.display(),
                    m.source,
                    m.arch,
                    m.compression,
                    m.kernel,
                    ago(age)
                );
            }
            let (n, bytes) = store.blobs();
            println!("layer cache: {n} blobs, {}", human(bytes));
            ExitCode::SUCCESS
        }
        CacheCommand::Prune { all, .. } => {
            let p = store.prune(all);
            println!("removed {} entries, {}", p.entries, human(p.bytes));
            ExitCode::SUCCESS
        }
    }
}

fn machines(a: MachinesArgs) -> ExitCode {
    use crate::store::{update, Change, StoreError};
    let store = match crate::store::open(&a.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let unknown = |m: &pxe::Mac| {
        eprintln!(
            "error: {m} is not remembered in {} (see daybreak machines list)",
            store.describe()
        );
        ExitCode::FAILURE
    };
    let done = |r: Result<(), StoreError>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot change {}: {e}", store.describe());
            ExitCode::FAILURE
        }
    };
    match a.command.unwrap_or(MachinesCommand::List) {
        MachinesCommand::List => {
            let mut list = Vec::new();
            store.with(&mut |all| list = all.values().map(|v| v.record.clone()).collect());
            list.sort_by_key(|r| r.mac);
            if list.is_empty() {
                println!(
                    "no machines remembered in {} (a machine is remembered when it fetches its boot script)",
                    store.describe()
                );
                return ExitCode::SUCCESS;
            }
            println!(
                "{:<17}  {:<14}  {:>5}  {:>9}  FIRMWARE",
                "MAC", "STATE", "BOOTS", "LAST BOOT"
            );
            let now = artifacts::now();
            for r in list {
                let state = match r.installed_at {
                    Some(t) => format!("installed {}", ago(now.saturating_sub(t))),
                    None => "not installed".into(),
                };
                println!(
                    "{:<17}  {:<14}  {:>5}  {:>9}  {}",
                    r.mac,
                    state,
                    r.boots,
                    format!("{} ago", ago(now.saturating_sub(r.last_seen))),
                    r.firmware.as_deref().unwrap_or("-")
                );
            }
            ExitCode::SUCCESS
        }
        MachinesCommand::Show { mac: m } => match store.get(m) {
            Ok(Some(v)) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v.record).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(None) => unknown(&m),
            Err(e) => done(Err(e)),
        },
        MachinesCommand::Reinstall { mac: m } => match update(&*store, m, &Change::Reinstall) {
            Ok(Some(_)) => {
                println!("{m}: its next network boot installs again");
                done(store.publish())
            }
            Ok(None) => unknown(&m),
            Err(e) => done(Err(e)),
        },
        MachinesCommand::Forget { mac: m } => match store.forget(m) {
            Ok(true) => {
                println!("{m}: forgotten");
                done(store.publish())
            }
            Ok(false) => unknown(&m),
            Err(e) => done(Err(e)),
        },
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.debug, cli.log_format);
    let default_args = cli.config.is_some()
        || !cli.set.is_empty()
        || !cli.set_file.is_empty()
        || cli.cloud_config.is_some()
        || cli.machines.is_some();
    if cli.command.is_some() && default_args {
        eprintln!(
            "error: CONFIG, --set and --cloud-config before a subcommand belong to the default command; \
             drop the subcommand, or give the subcommand's own options after it (see daybreak SUBCOMMAND --help)"
        );
        return ExitCode::from(2);
    }
    let options = match cli.command {
        None if !default_args => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
        None => match default_command::prepare(
            cli.config.as_deref(),
            &cli.set,
            &cli.set_file,
            cli.cloud_config.as_deref(),
            cli.machines.as_deref(),
        ) {
            Ok(Some(o)) => o,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::FAILURE;
            }
        },
        Some(Command::Netboot(a)) => {
            let opts = netboot::ImageOptions {
                arch: a.arch,
                insecure: a.allow_insecure_registries,
                compression: a.compression,
            };
            return match netboot::run(&a.source, &a.outdir, &a.prefix, &a.state_dir, &opts) {
                Ok(paths) => {
                    for p in paths {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", error_text(&e));
                    // Stopped by a signal: exit as shells expect (130 for Ctrl-C).
                    match interrupt::interrupted() {
                        Some(sig) => ExitCode::from(128 + sig as u8),
                        None => ExitCode::FAILURE,
                    }
                }
            };
        }
        Some(Command::Cache(c)) => return cache(c),
        Some(Command::Machines(m)) => return machines(m),
        Some(Command::IpxeIso(a)) => return ipxe_iso(a),
        Some(Command::Serve(a)) => {
            // Machines are remembered and shown on the status page with or without profiles.
            let fleet = Some(fleet::FleetOptions {
                state_dir: a.state_dir.clone(),
                machines: a
                    .machines
                    .map(|m| fleet::MachinesSource::File(artifacts::absolute(&m))),
                template: None,
                source: None,
                data: Default::default(),
                images: netboot::ImageOptions {
                    arch: artifacts::oci::host_arch().to_string(),
                    insecure: false,
                    compression: artifacts::Compression::Gzip,
                },
            });
            let mut o = a.net.into_options(PlanInput {
                kernel: a.kernel,
                set: match a
                    .iso
                    .as_deref()
                    .map(|i| netboot::open_iso(&i.to_string_lossy(), &a.state_dir))
                    .transpose()
                {
                    Ok(set) => set,
                    Err(e) => {
                        eprintln!("error: {}", error_text(&e));
                        return ExitCode::FAILURE;
                    }
                },
                initrds: a.initrd,
                rootfs: a.rootfs,
                cloud_config: a.cloud_config.map(CloudConfig::File),
                cmdline: a.cmdline,
                ..Default::default()
            });
            o.fleet = fleet;
            o
        }
        Some(Command::Api(a)) => match a.into_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::from(2);
            }
        },
        Some(Command::Boot(a)) => match a.into_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::from(2);
            }
        },
        Some(Command::StartPixie(a)) => {
            // The ISO is opened once: what it holds is the plan; a file that is no ISO is the
            // squashfs itself (and a missing one is reported as such when it is opened).
            use artifacts::{IsoError, SourceError};
            let plan = match artifacts::from_iso_file(a.squashfs.clone()) {
                Ok(set) => {
                    eprintln!(
                        "{} is an ISO: serving its /boot/kernel, /boot/initrd and /rootfs.squashfs in place (INITRD and KERNEL are not used)",
                        a.squashfs.display()
                    );
                    PlanInput {
                        set: Some(set),
                        ..Default::default()
                    }
                }
                Err(SourceError::Iso(IsoError::NotIso { .. } | IsoError::Io { .. })) => PlanInput {
                    kernel: Some(a.kernel),
                    initrds: vec![a.initrd],
                    rootfs: Some(a.squashfs),
                    ..Default::default()
                },
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let plan = PlanInput {
                cloud_config: Some(CloudConfig::File(a.cloud_config)),
                ..plan
            };
            let http = pxe::HttpAddress {
                port: a.port,
                advertise: None,
            };
            ServeOptions {
                pixiecore_log: true,
                ..ServeOptions::new(plan, http, a.address)
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each cause once: most of our errors already end with the text of
/// the error they wrap, which `{:#}` would print a second time.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if text.is_empty() {
            text = cause;
        } else if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_text_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(artifacts::IsoError::Io {
            path: "/x.iso".into(),
            source: io,
        });
        assert_eq!(super::error_text(&e), "cannot read /x.iso: No such file");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_text(&e), "outer: inner");
    }
}
