//! `daybreak ipxe-iso`: a netboot ISO (the writer is [`crate::ipxe_iso`]), written whole or not
//! at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::ipxe_iso;

#[derive(Args, Debug)]
pub struct IpxeIsoArgs {
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

pub fn command(a: IpxeIsoArgs) -> ExitCode {
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
    // Synced and renamed into place: never left half-written, whatever happens.
    let written = artifacts::write_atomic(&a.output, &image, 0o644);
    match written {
        Ok(()) => {
            println!("{} ({} MiB)", a.output.display(), image.len() >> 20);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", a.output.display());
            ExitCode::FAILURE
        }
    }
}
