//! The `daybreak` command line: every clap type (low args), what each command makes of them
//! (settings into the library's options: high args), and the command bodies that are not a
//! server (`netboot`, `cache`, `machines`, `ipxe-iso`). Progress bars, signal handling for long
//! copies and the log writer live here too: they are the terminal's. Each subcommand's
//! `--help` is its manual.

mod cache;
mod config;
mod default_command;
mod interrupt;
mod ipxe_iso;
mod logwriter;
mod machines;
mod netboot;
mod pixiecore;
mod progress;
mod serve;

use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Parser, Subcommand, ValueEnum};

/// The log format chosen: with JSON logs, what a command reports while it works (pulling,
/// building) goes to the log as JSON too, not to progress bars.
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Whether logs are JSON (then nothing else may be written to stderr).
fn json_logs() -> bool {
    LOG_FORMAT.get() == Some(&LogFormat::Json)
}

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
(created 0700); /tmp/auroraboot works when asked for, under the same rule\n  \
store                 file (STATE_DIR/machines, the default) or etcd://HOST:PORT[,...][/PREFIX]:\n                        \
replicas share machines, profiles and URLs; store_ca, store_cert,\n                        \
store_key, store_auth_file: TLS and credentials, from files\n\n\
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
    #[command(flatten)]
    admin: serve::AdminArgs,
    #[command(flatten)]
    store: serve::StoreArgs,
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
    Serve(Box<serve::ServeArgs>),
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
    StartPixie(serve::StartPixieArgs),
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
    Api(pixiecore::ApiArgs),
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
    IpxeIso(ipxe_iso::IpxeIsoArgs),
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
    Netboot(netboot::NetbootArgs),
    /// List or prune what the state directory holds (built artifacts, layer blobs, ISO downloads).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
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
    Machines(machines::MachinesArgs),
}

/// Runs the command line's command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.debug, cli.log_format);
    let default_args = cli.config.is_some()
        || !cli.set.is_empty()
        || !cli.set_file.is_empty()
        || cli.cloud_config.is_some()
        || cli.machines.is_some()
        || cli.store.store.is_some();
    if cli.command.is_some() && (default_args || cli.admin.given()) {
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
            cli.admin,
            cli.store,
        ) {
            Ok(Some(o)) => o,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::FAILURE;
            }
        },
        Some(Command::Netboot(a)) => return netboot::command(a),
        Some(Command::Cache(c)) => return cache::command(c),
        Some(Command::Machines(m)) => return machines::command(m),
        Some(Command::IpxeIso(a)) => return ipxe_iso::command(a),
        Some(Command::Serve(a)) => match (*a).into_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::FAILURE;
            }
        },
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
        Some(Command::StartPixie(a)) => match a.into_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::FAILURE;
            }
        },
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
    match runtime.block_on(crate::serve::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(debug: bool, format: LogFormat) -> logwriter::Guard {
    let _ = LOG_FORMAT.set(format);
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
