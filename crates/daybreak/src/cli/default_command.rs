//! The default command, AuroraBoot's zero-touch netboot: settings → source → artifacts (from the
//! store when the digest is known) → the boot servers, plus the artifact file server.

use anyhow::{anyhow, bail};
use artifacts::Origin;

use super::config::{self, Settings};
use crate::fleet::{FleetOptions, MachinesSource, Profiles};
use crate::plan::{CloudConfig, PlanInput};
use crate::serve::ServeOptions;
use std::path::Path;

const NO_SOURCE: &str = "nothing to boot: give an OCI image,\n  \
daybreak --set container_image=quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2-k3sv1.35.0-k3s3\n\
or a Kairos release ISO,\n  \
daybreak --set repository=kairos-io/kairos --set release_version=v3.7.2 --set flavor=ubuntu \\\n      \
--set flavor_release=24.04 --set artifact_version=v3.7.2-k3sv1.35.0-k3s3\n\
(on the command line or in a config file)";

/// What the settings resolve to: the boot server options, or `None` when both servers are
/// disabled (the artifacts are built and the command is done).
pub fn prepare(
    config_file: Option<&str>,
    sets: &[String],
    set_files: &[String],
    cloud_config: Option<&str>,
    machines: Option<&str>,
    admin: super::serve::AdminArgs,
    store: super::serve::StoreArgs,
) -> anyhow::Result<Option<ServeOptions>> {
    let root = config::merge(config_file, sets, set_files)?;
    let s = Settings::from_map(&root)?;
    let (stall_after, report_initrd) = (admin.stall_after, admin.report_initrd);
    let admin = super::serve::AdminArgs {
        admin_listen: admin.admin_listen.or(s.admin_listen.clone()),
        admin_token_file: admin.admin_token_file.or(s.admin_token_file.clone()),
        admin_host: admin.admin_host,
        stall_after,
        no_syslog: admin.no_syslog,
        report_initrd,
    }
    .options()?;
    let template = config::cloud_config_source(cloud_config, s.cloud_config.as_deref())?;
    let rendered = match &template {
        Some(text) => Some(crate::template::render(text, &root)?),
        None => None,
    };
    let machines = match (machines, root.get("machines")) {
        (Some(file), _) => Some(MachinesSource::File(artifacts::absolute(Path::new(file)))),
        (None, Some(list)) => {
            // cloud_config_file paths are taken from the working directory.
            let p = Profiles::from_value(list, Path::new("."))
                .map_err(|e| anyhow!("machines: in the settings: {e:#}"))?;
            Some(MachinesSource::Inline(p))
        }
        (None, None) => None,
    };
    let used = rendered.as_ref().map(|r| r.1.clone()).unwrap_or_default();
    for w in config::unknown_keys(&root, &used) {
        tracing::warn!("{w}");
    }

    let mut plan = PlanInput {
        cmdline: s.cmdline.clone(),
        ..Default::default()
    };
    // The command's image, and later any other a machine needs (another architecture's
    // variant, a profile's), are pulled and built alike.
    // A store replicas share is opened first: the image's build is shared with them too.
    let store_config = store.config(&s.store);
    let opened = match &store_config.location {
        crate::store::Location::Etcd(_) => Some(crate::store::Opened(crate::store::open(
            &store_config,
            &s.state_dir,
        )?)),
        crate::store::Location::File => None,
    };
    let images = crate::sources::ImageOptions {
        arch: s.arch.clone(),
        insecure: s.insecure,
        compression: artifacts::Compression::Gzip,
        peers: opened
            .as_ref()
            .map(|o| crate::sources::Peers(crate::shared_builds::SharedBuilds::new(o.0.clone()))),
    };
    let report = super::progress::reporter();
    let set = match &s.container_image {
        Some(img) => crate::sources::open_source(img, &s.state_dir, &images, &*report)?,
        None if s.has_release() => {
            let url = s
                .release
                .iso_url(s.release_base_url.as_deref())
                .map_err(|e| anyhow!("{e}"))?;
            tracing::info!(url = %url, "Kairos release ISO");
            crate::sources::open_iso(&url, &s.state_dir, &*report)?
        }
        None => bail!("{NO_SOURCE}"),
    };
    match &set.origin {
        Origin::Iso { path, .. } => tracing::info!(
            iso = %path.display(),
            "serving kernel, initrd and squashfs straight from the ISO"
        ),
        Origin::Image { digest, built, dir } => tracing::info!(
            image = %s.container_image.as_deref().unwrap_or_default(),
            digest = %digest,
            kernel = %set.kernel.name,
            initrd = %set.initrds[0].name,
            artifacts = %dir.display(),
            "{}",
            if *built { "image built" } else { "image ready (built before)" }
        ),
    }
    plan.set = Some(set);
    if let Some((text, _)) = rendered {
        // Kept in memory for this run only: nothing with passwords or join tokens is left on
        // disk, and two servers sharing a state directory each serve their own.
        tracing::info!(
            bytes = text.len(),
            "cloud-config rendered (kept in memory; served only on the netboot port)"
        );
        plan.cloud_config = Some(CloudConfig::Text(text.into_bytes().into()));
    } else {
        tracing::warn!(
            "no cloud-config: machines boot the live system without one (give --cloud-config FILE)"
        );
    }
    if s.disable_netboot && s.disable_http_server {
        tracing::info!("disable_netboot and disable_http_server are set: artifacts are ready, nothing to serve");
        return Ok(None);
    }
    Ok(Some(ServeOptions {
        fleet: Some(FleetOptions {
            state_dir: s.state_dir.clone(),
            store: store_config,
            opened,
            machines,
            template,
            data: root,
            source: s.container_image.clone(),
            images,
            stall_after,
            report_initrd,
        }),
        netboot: !s.disable_netboot,
        proxy_dhcp: s.proxy_dhcp,
        admin,
        artifact_listen: (!s.disable_http_server).then_some(s.listen_addr),
        ..ServeOptions::new(
            plan,
            pxe::HttpAddress {
                port: s.netboot_http_port,
                advertise: None,
            },
            s.netboot_listen_addr,
        )
    }))
}
