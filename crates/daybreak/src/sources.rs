//! Any source to the boot files it holds (an OCI image in any form, a Kairos ISO, an ISO URL),
//! through [`artifacts::open`], telling what happens (pulling, building, downloading) to a
//! [`Report`]: the command line draws progress bars, a running server writes log lines.

use std::path::Path;

use artifacts::{BootSet, Fetch};

/// How to turn an OCI image into artifacts.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub arch: String,
    pub insecure: bool,
    pub compression: artifacts::Compression,
    /// The replicas builds are shared with ([`crate::shared_builds`]), if any.
    pub peers: Option<Peers>,
}

/// The replicas an image's build is shared with.
#[derive(Clone)]
pub struct Peers(pub std::sync::Arc<dyn artifacts::Peers>);

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peers")
    }
}

/// Who is told how opening a source goes.
pub trait Report: artifacts::Report {
    /// A download's progress (an ISO).
    fn fetch(&self, source: &str, f: Fetch);
}

/// The boot files of any source.
pub fn open_source(
    source: &str,
    state_dir: &Path,
    opts: &ImageOptions,
    report: &dyn Report,
) -> anyhow::Result<BootSet> {
    let req = artifacts::Request {
        source: source.to_string(),
        arch: opts.arch.clone(),
        insecure: opts.insecure,
        compression: opts.compression,
        state_dir: artifacts::absolute(state_dir),
        peers: opts.peers.as_ref().map(|p| p.0.clone()),
    };
    Ok(artifacts::open(&req, report, &mut |f| {
        report.fetch(source, f)
    })?)
}

/// The boot files of an ISO (a local file or an http(s) URL).
pub fn open_iso(source: &str, state_dir: &Path, report: &dyn Report) -> anyhow::Result<BootSet> {
    Ok(artifacts::open_iso(
        source,
        &artifacts::absolute(state_dir),
        &mut |f| report.fetch(source, f),
    )?)
}

/// A running server's report: a log line for each step worth one (no bars: a server's output
/// is its log, JSON when asked).
pub struct Logged;

impl artifacts::Report for Logged {
    fn event(&self, e: artifacts::Event) {
        use artifacts::Event;
        match e {
            Event::Resolved { image, digest } => {
                tracing::info!(image = %image, digest = %digest, "image resolved")
            }
            Event::Offline { image, digest, why } => {
                tracing::warn!(image = %image, digest = %digest, "{why}; using what it resolved to last time")
            }
            Event::Cached { dir } => {
                tracing::info!(artifacts = %dir.display(), "artifacts already built")
            }
            Event::Pulling { layers } => tracing::info!(
                layers = layers.len(),
                to_download = layers.iter().filter(|l| !l.2).count(),
                bytes = layers.iter().filter(|l| !l.2).map(|l| l.1).sum::<u64>(),
                "pulling layers"
            ),
            Event::PullDone { layer } => tracing::debug!(layer, "layer pulled"),
            Event::Building { total } => {
                tracing::info!(bytes = total, "building kernel, initrd and squashfs")
            }
            Event::Built { dir } => tracing::info!(artifacts = %dir.display(), "built"),
            Event::Warning(w) => tracing::warn!("{w}"),
            Event::Waiting(w) => tracing::info!("{w}"),
            Event::PullProgress { .. } | Event::BuildProgress { .. } => {}
        }
    }
}

impl Report for Logged {
    fn fetch(&self, source: &str, f: Fetch) {
        match f {
            Fetch::Waiting { url } => {
                tracing::info!(url = %url, "another Daybreak process is downloading it; waiting")
            }
            Fetch::Progress { .. } => {}
            Fetch::Cached { path } => {
                tracing::info!(path = %path.display(), "using the cached download")
            }
            Fetch::Done { verified: false } => {
                tracing::warn!(source = %source, "no published .sha256: the download is not verified")
            }
            Fetch::Done { verified: true } => {
                tracing::info!(source = %source, "downloaded and verified")
            }
        }
    }
}
