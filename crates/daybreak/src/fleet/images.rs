//! Images other than the command's: a profile's own, or the command's OCI image for another
//! architecture than its kernel's (a multi-arch index). Each is built once (the artifact store
//! keeps it), on a thread of its own, in the order asked; a machine that needs one being built
//! is told to ask again.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, RwLock};

use pxe::CpuArch;

use super::profiles::{Image, Profiles};
use super::FleetOptions;
use crate::plan::Plan;

/// An image other than the command's. OCI images are keyed by the architecture pulled; ISOs
/// and files are what they are.
pub type Key = (Image, Option<CpuArch>);

/// How far an image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nobody asked for it yet.
    Missing,
    Building,
    /// Built; its kernel's architecture, when known.
    Ready(Option<CpuArch>),
    Failed,
}

enum Built {
    Building,
    Ready(Arc<Plan>, Option<CpuArch>),
    Failed,
}

type Table = Arc<RwLock<HashMap<Key, Built>>>;

/// The other images, and where to ask for one to be built.
pub struct Images {
    table: Table,
    build: Mutex<mpsc::Sender<Key>>,
    /// The architecture of the command's kernel, and its OCI image (for other architectures).
    main_arch: Option<CpuArch>,
    source: Option<String>,
}

fn describe(key: &Key) -> String {
    match key.1 {
        Some(a) => format!("{} ({})", key.0, a.as_str()),
        None => key.0.to_string(),
    }
}

/// The files of an image under names of its own: `i` and 8 hex digits of its description.
fn prefix(key: &Key) -> String {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(describe(key).as_bytes());
    format!("i{}-", artifacts::hex(&h[..4]))
}

/// Opens (pulling and building when needed, once per image: the artifact store keeps it) an
/// image, and makes its plan.
fn build_image(key: &Key, opts: &FleetOptions) -> anyhow::Result<Plan> {
    let mut input = crate::plan::PlanInput {
        prefix: prefix(key),
        ..Default::default()
    };
    match &key.0 {
        Image::Container(src) => {
            let mut images = opts.images.clone();
            if let Some(a) = key.1 {
                images.arch = a.as_str().into();
            }
            input.set = Some(crate::sources::open_source(
                src,
                &opts.state_dir,
                &images,
                &crate::sources::Logged,
            )?)
        }
        Image::Iso(src) => {
            input.set = Some(crate::sources::open_iso(
                src,
                &opts.state_dir,
                &crate::sources::Logged,
            )?)
        }
        Image::Files {
            kernel,
            initrds,
            rootfs,
        } => {
            input.kernel = Some(kernel.clone());
            input.initrds = initrds.clone();
            input.rootfs = rootfs.clone();
        }
    }
    Plan::new(&input)
}

/// Builds the images it is sent, one at a time, in the order asked.
fn spawn_builder(table: Table, opts: FleetOptions) -> std::io::Result<mpsc::Sender<Key>> {
    let (tx, rx) = mpsc::channel::<Key>();
    std::thread::Builder::new()
        .name("more-images".into())
        .spawn(move || {
            for key in rx {
                let image = describe(&key);
                tracing::info!(image = %image, "building an image for machines that need it");
                // In the table before it is said: whoever reads "image ready" finds it there.
                match build_image(&key, &opts) {
                    Ok(plan) => {
                        let arch = plan.kernel_facts().arch;
                        table
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, Built::Ready(Arc::new(plan), arch));
                        tracing::info!(image = %image, kernel = arch.map_or("unknown", |a| a.as_str()), "image ready");
                    }
                    Err(e) => {
                        table
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, Built::Failed);
                        tracing::error!(image = %image, "image cannot be served: {e:#}; its machines are told so, until the machines file names another");
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Which image a machine boots: the command's own, another (by key), or none there is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Main,
    Other(Key),
    /// The command's kernel is for another architecture, and it has no image for this one.
    NoKernel,
}

impl Images {
    pub fn new(opts: &FleetOptions, main_arch: Option<CpuArch>) -> std::io::Result<Images> {
        let table = Table::default();
        let build = spawn_builder(table.clone(), opts.clone())?;
        Ok(Images {
            table,
            build: Mutex::new(build),
            main_arch,
            source: opts.source.clone(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Built>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of a profile's image for machines of `arch` (an OCI image's variant).
    fn key(&self, image: &Image, arch: Option<CpuArch>) -> Key {
        match image {
            Image::Container(_) => (image.clone(), arch.or(self.main_arch)),
            _ => (image.clone(), None),
        }
    }

    /// The image a machine of `arch` boots, its profile naming `image` (or none).
    pub fn which(&self, image: Option<&Image>, arch: Option<CpuArch>) -> Which {
        match (image, arch) {
            (Some(img), _) => Which::Other(self.key(img, arch)),
            // The command's image, for another architecture than its kernel's.
            (None, Some(a)) if self.main_arch.is_some_and(|m| m != a) => match &self.source {
                Some(src) => Which::Other((Image::Container(src.clone()), Some(a))),
                None => Which::NoKernel,
            },
            (None, _) => Which::Main,
        }
    }

    pub fn state(&self, key: &Key) -> State {
        match self.read().get(key) {
            None => State::Missing,
            Some(Built::Building) => State::Building,
            Some(Built::Ready(_, arch)) => State::Ready(*arch),
            Some(Built::Failed) => State::Failed,
        }
    }

    /// The plan of a built image.
    pub fn plan(&self, key: &Key) -> Option<Arc<Plan>> {
        match self.read().get(key) {
            Some(Built::Ready(p, _)) => Some(p.clone()),
            _ => None,
        }
    }

    /// Asks for every image the profiles name that is not built or being built (a failed one
    /// again: the file changed, it may be fixed now).
    pub fn build_all(&self, profiles: &Profiles) {
        for p in &profiles.entries {
            if let Some(img) = &p.image {
                self.ensure(&self.key(img, p.select.arch), true);
            }
        }
    }

    /// Asks for `key` to be built unless it is built or being built (or failed, unless `retry`).
    pub fn ensure(&self, key: &Key, retry: bool) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let again = retry && matches!(table.get(key), Some(Built::Failed));
        if again || !table.contains_key(key) {
            table.insert(key.clone(), Built::Building);
            let _ = self
                .build
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(key.clone());
        }
    }

    /// The first machine of another architecture than the command's kernel starts the build of
    /// the image's variant for it, so it is ready by the time its loader asks. Once per
    /// architecture and run (a failed build is not tried again from here), and said with the
    /// machine that asked: a forged DISCOVER can cost one build, never more.
    pub fn seen(&self, m: &pxe::Machine) {
        if let (Some(a), Some(src)) = (m.arch, &self.source) {
            if self.main_arch.is_some_and(|main| main != a) {
                let key = (Image::Container(src.clone()), Some(a));
                // A read first: every DISCOVER of that architecture asks.
                if self.state(&key) == State::Missing {
                    tracing::info!(mac = %m.mac, arch = a.as_str(), image = %src, "a machine of another architecture asked: building the image's variant for it (once; its profile's own image or action: ignore avoids it)");
                    self.ensure(&key, false);
                }
            }
        }
    }

    /// Whether machines of `arch` may have something to boot: the command's kernel is theirs,
    /// its image may have their variant, or a profile names an image.
    pub fn may_serve(&self, arch: CpuArch, profiles: &Profiles) -> bool {
        self.main_arch == Some(arch)
            || self.source.is_some()
            || profiles
                .entries
                .iter()
                .any(|p| p.image.is_some() && p.select.arch.is_none_or(|a| a == arch))
    }

    /// A file of a built image.
    pub fn file(&self, name: &str) -> Option<http::Reply> {
        self.read().values().find_map(|b| match b {
            Built::Ready(p, _) => p.file(name).map(crate::plan::BootFile::reply),
            _ => None,
        })
    }
}
