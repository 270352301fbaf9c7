//! From "this image" to its three netboot files in the store: resolve the source to a digest,
//! reuse the store entry when there is one, else pull the layers (in parallel, resumable,
//! verified) and build. What happens is told through [`Report`], so the binary can draw
//! progress bars and tests can stay quiet.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::build::{self, BuildError};
use crate::digest::Digest;
use crate::oci::{self, Document, LayerBlob, OciError, Reference, Source};
use crate::registry::{Client, RegistryError};
use crate::store::{self, Artifacts, Key, Meta, Store};
use squashfs::Compression;

/// Layers downloaded at once.
const PARALLEL_PULLS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{0} is an ISO: use `daybreak netboot ISO OUTDIR` or `daybreak serve --iso`")]
    Iso(PathBuf),
    #[error(transparent)]
    State(#[from] store::StateError),
}

impl From<std::io::Error> for ImageError {
    fn from(e: std::io::Error) -> Self {
        ImageError::Build(BuildError::Io {
            path: PathBuf::from("state directory"),
            source: e,
        })
    }
}

/// Steps worth telling the user about.
#[derive(Debug, Clone)]
pub enum Event {
    /// The source resolved to this digest.
    Resolved {
        image: String,
        digest: String,
    },
    /// The registry could not be reached; the last known digest is used.
    Offline {
        image: String,
        digest: String,
        why: String,
    },
    /// The store already has the artifacts.
    Cached {
        dir: PathBuf,
    },
    /// Layers to fetch: (digest, size, already cached).
    Pulling {
        layers: Vec<(String, u64, bool)>,
    },
    PullProgress {
        layer: usize,
        done: u64,
    },
    PullDone {
        layer: usize,
    },
    /// Building starts; `total` is the raw size of all layers.
    Building {
        total: u64,
    },
    BuildProgress {
        done: u64,
    },
    Built {
        dir: PathBuf,
    },
    Warning(String),
    /// Another process sharing the state directory is doing this step; this one waits for it.
    Waiting(String),
}

pub trait Report: Sync {
    fn event(&self, e: Event);
}

/// Other servers an image's build is shared with (replicas of one cluster): one of them
/// builds each image and the others fetch what it built, instead of building it again.
pub trait Peers: Send + Sync {
    /// Asked when `key` is not in `store` and would be built here: [`Turn::Have`] once the
    /// entry is in `store` (fetched from the peer that built it), or [`Turn::Build`]: build it
    /// here, holding the turn until done (the others wait on it).
    fn turn(&self, key: &Key, store: &Store, report: &dyn Report) -> Turn;
    /// This process has `artifacts` under `key` (found in its store, built, or fetched): the
    /// others may fetch them from it.
    fn have(&self, key: &Key, artifacts: &Artifacts);
}

/// What [`Peers::turn`] decided.
pub enum Turn {
    Have(Artifacts),
    /// Build here; the others wait until this is dropped.
    Build(Box<dyn Send>),
}

pub struct Request {
    /// The source as the user wrote it (any `container_image` form).
    pub source: String,
    pub arch: String,
    pub insecure: bool,
    pub compression: Compression,
    pub state_dir: PathBuf,
    /// Servers the builds of images (by digest) are shared with, if any.
    pub peers: Option<std::sync::Arc<dyn Peers>>,
}

#[derive(Debug)]
pub(crate) struct Obtained {
    pub artifacts: Artifacts,
    pub digest: String,
    /// True when this call built the artifacts (false: reused from the store).
    pub built: bool,
}

pub(crate) fn obtain(req: &Request, report: &dyn Report) -> Result<Obtained, ImageError> {
    let store = Store::open(&req.state_dir)?;
    let mut way = match Source::parse(&req.source)? {
        Source::Iso(p) => return Err(ImageError::Iso(p)),
        Source::Dir(root) => return from_dir(req, &store, &root, report),
        Source::Registry(r) => Way::Registry(Box::new(Walk::new(r))),
        Source::Layout(dir, tag) => {
            Way::Local(Some(oci::open_layout(&dir, tag.as_deref(), &req.arch)?))
        }
        Source::Archive(path) => Way::Local(Some(oci::open_archive(&path, &req.arch)?)),
    };
    // The one place the store is asked for an image's artifacts: each digest on the way from
    // the source to its layers may be built already, and the first that is ends the way.
    loop {
        let Found {
            digest,
            announce,
            layers,
        } = way.next(req, &store)?;
        let announce = match layers {
            Some(_) => {
                report.event(announce);
                None
            }
            None => Some(announce),
        };
        let key = Key::image(&digest, req.compression);
        if let Some(o) = cached(&store, req, &digest, report, announce) {
            way.remember(req, &store, &digest);
            if let Some(p) = &req.peers {
                p.have(&key, &o.artifacts);
            }
            return Ok(o);
        }
        if layers.is_none() {
            continue;
        }
        // One build per image among the peers: another's, fetched, or this one's turn.
        let turn = match req.peers.as_ref().map(|p| p.turn(&key, &store, report)) {
            Some(Turn::Have(artifacts)) => {
                way.remember(req, &store, &digest);
                report.event(Event::Cached {
                    dir: artifacts.dir.clone(),
                });
                return Ok(Obtained {
                    artifacts,
                    digest: digest.to_string(),
                    built: false,
                });
            }
            Some(Turn::Build(turn)) => Some(turn),
            None => None,
        };
        let built = match layers {
            None => continue,
            Some(Layers::Local(img)) => {
                let sizes: Vec<u64> = img.layers.iter().map(|l| l.size).collect();
                let mut layer = |i: usize| Ok(img.layers[i].clone());
                build_layers(req, &store, &digest, &sizes, &mut layer, report)?
            }
            Some(Layers::Registry(descs)) => {
                let Way::Registry(walk) = &way else {
                    unreachable!("registry layers come from a registry walk")
                };
                pull_and_build(req, &store, walk.client(req), &digest, &descs, report)?
            }
        };
        way.remember(req, &store, &digest);
        if let Some(p) = &req.peers {
            p.have(&key, &built.artifacts);
        }
        drop(turn);
        return Ok(built);
    }
}

/// A directory is its own key: built (again) whenever asked, under one store entry.
fn from_dir(
    req: &Request,
    store: &Store,
    root: &Path,
    report: &dyn Report,
) -> Result<Obtained, ImageError> {
    let canon = root.canonicalize().map_err(|e| OciError::Source {
        path: root.to_path_buf(),
        why: e.to_string(),
    })?;
    let key = Key::dir(&canon, req.compression);
    let digest = key.as_str().to_string();
    report.event(Event::Building { total: 0 });
    let artifacts = store.put(
        &key,
        || waiting(report, "building", key.as_str()),
        |tmp| {
            let b = build::from_dir(&canon, tmp, req.compression)?;
            Ok::<_, ImageError>(meta(req, &digest, &b))
        },
    )?;
    report.event(Event::Built {
        dir: artifacts.dir.clone(),
    });
    Ok(Obtained {
        artifacts,
        digest,
        built: true,
    })
}

fn waiting(report: &dyn Report, doing: &str, what: &str) {
    report.event(Event::Waiting(format!(
        "another Daybreak process sharing the state directory is {doing} {what}; waiting for it"
    )));
}

fn meta(req: &Request, digest: &str, b: &build::Built) -> Meta {
    Meta {
        source: req.source.clone(),
        digest: digest.to_string(),
        arch: req.arch.clone(),
        compression: req.compression.name().to_string(),
        kernel: b.kernel_name.clone(),
        initrd: b.initrd_name.clone(),
        created: store::now(),
        sizes: None,
    }
}

/// The store's entry for `digest`, if it has one; then `announce` (when given) and `Cached`
/// are reported. Called from one place, [`obtain`].
fn cached(
    store: &Store,
    req: &Request,
    digest: &Digest,
    report: &dyn Report,
    announce: Option<Event>,
) -> Option<Obtained> {
    let a = store.get(&Key::image(digest, req.compression))?;
    if let Some(e) = announce {
        report.event(e);
    }
    report.event(Event::Cached { dir: a.dir.clone() });
    Some(Obtained {
        artifacts: a,
        digest: digest.to_string(),
        built: false,
    })
}

/// Builds the store entry from layers of the given sizes; `layer(i)` hands layer `i` over
/// (possibly waiting for its download).
fn build_layers(
    req: &Request,
    store: &Store,
    digest: &Digest,
    sizes: &[u64],
    layer: &mut dyn FnMut(usize) -> Result<LayerBlob, BuildError>,
    report: &dyn Report,
) -> Result<Obtained, ImageError> {
    let total: u64 = sizes.iter().sum();
    report.event(Event::Building { total });
    let before: Vec<u64> = sizes
        .iter()
        .scan(0u64, |acc, l| {
            let b = *acc;
            *acc += l;
            Some(b)
        })
        .collect();
    let key = Key::image(digest, req.compression);
    let artifacts = store.put(&key, || waiting(report, "building", key.as_str()), |tmp| {
        let b = build::from_layers(sizes.len(), layer, tmp, req.compression, &mut |i, done| {
            report.event(Event::BuildProgress {
                done: before[i] + done,
            })
        })?;
        if !b.xattr_paths.is_empty() {
            let n = b.xattr_paths.len();
            let some: Vec<&str> = b.xattr_paths.iter().take(5).map(|s| s.as_str()).collect();
            report.event(Event::Warning(format!(
                "{n} entries carry extended attributes outside the user., trusted. and security. namespaces, which squashfs cannot hold and were dropped: {}{}",
                some.join(", "),
                if n > 5 { ", …" } else { "" }
            )));
        }
        Ok::<_, ImageError>(meta(req, digest.as_str(), &b))
    })?;
    report.event(Event::Built {
        dir: artifacts.dir.clone(),
    });
    Ok(Obtained {
        artifacts,
        digest: digest.to_string(),
        built: true,
    })
}

/// One step on the way from a source to its layers: a digest the artifacts may be stored
/// under, reported as `announce` when they are; with the layers once the image manifest is read.
struct Found {
    digest: Digest,
    announce: Event,
    layers: Option<Layers>,
}

enum Layers {
    Local(oci::LocalImage),
    Registry(Vec<oci::Descriptor>),
}

/// The way from a source to its layers.
enum Way {
    /// A layout or an archive: its digest and layers are known at once.
    Local(Option<oci::LocalImage>),
    Registry(Box<Walk>),
}

impl Way {
    fn next(&mut self, req: &Request, store: &Store) -> Result<Found, ImageError> {
        match self {
            Way::Local(img) => {
                let img = img.take().expect("a local image is one step");
                Ok(Found {
                    digest: img.digest.clone(),
                    announce: Event::Resolved {
                        image: req.source.clone(),
                        digest: img.digest.to_string(),
                    },
                    layers: Some(Layers::Local(img)),
                })
            }
            Way::Registry(w) => w.next(req, store),
        }
    }

    /// What a registry reference resolved to, for the next run without the registry.
    fn remember(&self, req: &Request, store: &Store, digest: &Digest) {
        if let Way::Registry(w) = self {
            store.remember(&w.name, &req.arch, digest);
        }
    }
}

/// A registry reference followed to its image manifest for the target platform: a digest it
/// is pinned to (or resolved to last time) first, then the manifest, through indexes, each
/// digest on the way a step; without the registry, the digest it resolved to last time.
struct Walk {
    reference: Reference,
    /// The reference as written, once.
    name: String,
    client: std::sync::OnceLock<Client>,
    at: WalkAt,
}

enum WalkAt {
    Start,
    /// The manifest of the reference itself.
    Manifest,
    /// A manifest by digest, `depth` indexes down.
    ByDigest(Digest, usize),
    /// The registry could not be reached and the last known digest is not built either.
    Failed(Option<RegistryError>),
}

/// Indexes followed at most (an index of indexes is legal, and rare).
const MAX_DEPTH: usize = 4;

impl Walk {
    fn new(reference: Reference) -> Walk {
        Walk {
            name: reference.to_string(),
            reference,
            client: std::sync::OnceLock::new(),
            at: WalkAt::Start,
        }
    }

    /// The registry client, made when the registry is first asked (it reads credentials).
    fn client(&self, req: &Request) -> &Client {
        self.client
            .get_or_init(|| Client::new(&self.reference, req.insecure))
    }

    fn resolved(&self, digest: &Digest) -> Event {
        Event::Resolved {
            image: self.name.clone(),
            digest: digest.to_string(),
        }
    }

    fn next(&mut self, req: &Request, store: &Store) -> Result<Found, ImageError> {
        loop {
            match std::mem::replace(&mut self.at, WalkAt::Manifest) {
                WalkAt::Start => {
                    // Pinned by digest: the store may have it without a word to the registry.
                    if let Some(pinned) = &self.reference.digest {
                        let digest = store
                            .recall(&self.name, &req.arch)
                            .unwrap_or_else(|| pinned.clone());
                        let announce = self.resolved(&digest);
                        return Ok(Found {
                            digest,
                            announce,
                            layers: None,
                        });
                    }
                }
                WalkAt::Manifest => match self.client(req).manifest() {
                    Ok((bytes, digest)) => {
                        let doc = Document::parse(&bytes, &format!("{} manifest", self.name))?;
                        return self.read(doc, digest, 0, req);
                    }
                    Err(e @ RegistryError::Unreachable { .. }) => {
                        let Some(digest) = store.recall(&self.name, &req.arch) else {
                            return Err(e.into());
                        };
                        let announce = Event::Offline {
                            image: self.name.clone(),
                            digest: digest.to_string(),
                            why: e.to_string(),
                        };
                        self.at = WalkAt::Failed(Some(e));
                        return Ok(Found {
                            digest,
                            announce,
                            layers: None,
                        });
                    }
                    Err(e) => return Err(e.into()),
                },
                WalkAt::ByDigest(digest, depth) => {
                    let bytes = self.client(req).manifest_by_digest(&digest)?;
                    let doc = Document::parse(&bytes, digest.as_str())?;
                    return self.read(doc, digest, depth, req);
                }
                WalkAt::Failed(e) => {
                    return Err(match e {
                        Some(e) => e.into(),
                        None => OciError::BadDocument {
                            what: self.name.clone(),
                            why: "no manifest".into(),
                        }
                        .into(),
                    })
                }
            }
        }
    }

    /// A manifest read: an index names the next digest, an image manifest its layers.
    fn read(
        &mut self,
        doc: Document,
        digest: Digest,
        depth: usize,
        req: &Request,
    ) -> Result<Found, ImageError> {
        if let Some(list) = &doc.manifests {
            if depth >= MAX_DEPTH {
                return Err(OciError::BadDocument {
                    what: self.name.clone(),
                    why: "indexes nested too deep".into(),
                }
                .into());
            }
            let next = oci::select_platform(list, &req.arch, &self.name)?
                .digest
                .clone();
            self.at = WalkAt::ByDigest(next.clone(), depth + 1);
            let announce = self.resolved(&next);
            return Ok(Found {
                digest: next,
                announce,
                layers: None,
            });
        }
        let layers = doc.layers.unwrap_or_default();
        if layers.is_empty() {
            return Err(OciError::BadDocument {
                what: self.name.clone(),
                why: "the image has no layers".into(),
            }
            .into());
        }
        self.at = WalkAt::Failed(None);
        Ok(Found {
            announce: self.resolved(&digest),
            digest,
            layers: Some(Layers::Registry(layers)),
        })
    }
}

/// Downloads the layers in parallel while the build merges them in order: layer i is merged as
/// soon as it is complete, whatever the others are doing. A failed download stops the build,
/// and its error is the one returned.
fn pull_and_build(
    req: &Request,
    store: &Store,
    client: &Client,
    digest: &Digest,
    descs: &[oci::Descriptor],
    report: &dyn Report,
) -> Result<Obtained, ImageError> {
    report.event(Event::Pulling {
        layers: descs
            .iter()
            .map(|l| {
                (
                    l.digest.to_string(),
                    l.size,
                    store.blob_path(&l.digest).is_file(),
                )
            })
            .collect(),
    });
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Result<(), RegistryError>)>();
    let sizes: Vec<u64> = descs.iter().map(|l| l.size).collect();
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_PULLS.min(descs.len()) {
            let done_tx = done_tx.clone();
            let (next, failed) = (&next, &failed);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= descs.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let r = fetch_layer(store, client, &descs[i], i, report);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                } else {
                    report.event(Event::PullDone { layer: i });
                }
                let _ = done_tx.send((i, r));
            });
        }
        drop(done_tx);
        // The registry's error, when a layer could not be had: kept here, returned as it is.
        let mut fetch_error: Option<RegistryError> = None;
        let built = {
            let mut arrived: Vec<Option<Result<(), RegistryError>>> =
                (0..descs.len()).map(|_| None).collect();
            let mut layer = |i: usize| -> Result<LayerBlob, BuildError> {
                while arrived[i].is_none() {
                    match done_rx.recv() {
                        Ok((j, r)) => arrived[j] = Some(r),
                        // Downloads stopped early: the failure that stopped them is the reason.
                        Err(_) => break,
                    }
                }
                match arrived[i].take() {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        fetch_error = Some(e);
                        return Err(BuildError::LayerUnavailable { layer: i });
                    }
                    None => {
                        fetch_error = arrived.iter_mut().find_map(|a| match a.take() {
                            Some(Err(e)) => Some(e),
                            _ => None,
                        });
                        return Err(BuildError::LayerUnavailable { layer: i });
                    }
                }
                let l = &descs[i];
                let path = store.blob_path(&l.digest);
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(l.size);
                Ok(LayerBlob {
                    path,
                    offset: 0,
                    size,
                    // Verified on the way into the blob cache.
                    digest: None,
                    name: l.digest.to_string(),
                })
            };
            build_layers(req, store, digest, &sizes, &mut layer, report)
        };
        // A failed build stops the remaining downloads.
        failed.store(true, Ordering::Relaxed);
        match (built, fetch_error) {
            (Err(ImageError::Build(BuildError::LayerUnavailable { .. })), Some(e)) => Err(e.into()),
            (built, _) => built,
        }
    })
}

/// One layer into the blob cache, unless it is there; one download per blob across processes.
fn fetch_layer(
    store: &Store,
    client: &Client,
    l: &oci::Descriptor,
    i: usize,
    report: &dyn Report,
) -> Result<(), RegistryError> {
    let dest = store.blob_path(&l.digest);
    let _held = store
        .lock_blob(&l.digest, || {
            waiting(report, "downloading", l.digest.as_str())
        })
        .map_err(|source| RegistryError::Io {
            path: store.root().join("locks"),
            source,
        })?;
    if dest.is_file() {
        return Ok(());
    }
    client
        .blob(&l.digest, l.size, &dest, &|done| {
            report.event(Event::PullProgress { layer: i, done })
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);
    impl Report for Events {
        fn event(&self, e: Event) {
            let name = match e {
                Event::Resolved { .. } => "resolved",
                Event::Cached { .. } => "cached",
                Event::Building { .. } => "building",
                Event::Built { .. } => "built",
                _ => return,
            };
            self.0.lock().unwrap().push(name.into());
        }
    }

    fn dir(tag: &str) -> PathBuf {
        testkit::tempdir(&format!("image-{tag}"))
    }

    /// An OCI layout holding one image of one layer: /boot/vmlinuz-1 and /boot/initrd.img-1.
    fn layout(at: &Path) {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("boot/vmlinuz-1", &b"kernel"[..]),
            ("boot/initrd.img-1", b"initrd"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, data).unwrap();
        }
        let layer = tar.into_inner().unwrap();
        let blobs = at.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let d = Digest::of(data);
            std::fs::write(blobs.join(d.hex()), data).unwrap();
            (d, data.len())
        };
        let (ld, ll) = put(&layer);
        let (cd, cl) = put(br#"{"architecture":"amd64","os":"linux"}"#);
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{cd}","size":{cl}}},"layers":[{{"digest":"{ld}","size":{ll}}}]}}"#
        );
        let (md, ml) = put(manifest.as_bytes());
        std::fs::write(
            at.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"digest":"{md}","size":{ml},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
            ),
        )
        .unwrap();
        std::fs::write(at.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn request(source: String, state: &Path) -> Request {
        Request {
            source,
            arch: "amd64".into(),
            insecure: false,
            compression: Compression::Gzip,
            state_dir: state.to_path_buf(),
            peers: None,
        }
    }

    #[test]
    fn an_image_is_built_once_then_taken_from_the_store() {
        let d = dir("layout");
        layout(&d.join("img"));
        let req = request(d.join("img").display().to_string(), &d.join("state"));
        let first = Events::default();
        let a = obtain(&req, &first).unwrap();
        assert!(a.built);
        assert_eq!(a.artifacts.meta.kernel, "vmlinuz-1");
        assert_eq!(std::fs::read(a.artifacts.kernel()).unwrap(), b"kernel");
        assert_eq!(*first.0.lock().unwrap(), ["resolved", "building", "built"]);
        let again = Events::default();
        let b = obtain(&req, &again).unwrap();
        assert!(!b.built);
        assert_eq!((b.digest, b.artifacts.dir), (a.digest, a.artifacts.dir));
        assert_eq!(*again.0.lock().unwrap(), ["resolved", "cached"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_source_is_built_every_time_under_one_key() {
        let d = dir("rootfs");
        let root = d.join("root/boot");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("vmlinuz-2"), b"k2").unwrap();
        std::fs::write(root.join("initrd.img-2"), b"i2").unwrap();
        let req = request(
            format!("dir://{}", d.join("root").display()),
            &d.join("state"),
        );
        let a = obtain(&req, &Events::default()).unwrap();
        std::fs::write(root.join("vmlinuz-2"), b"k2 changed").unwrap();
        let b = obtain(&req, &Events::default()).unwrap();
        assert!(
            a.built && b.built,
            "a directory has no digest: it may have changed"
        );
        assert_eq!(a.artifacts.dir, b.artifacts.dir);
        assert_eq!(std::fs::read(b.artifacts.kernel()).unwrap(), b"k2 changed");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_iso_is_sent_to_the_iso_reader() {
        let d = dir("iso");
        let iso = d.join("x.iso");
        let mut data = vec![0u8; 0x9000];
        data[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&iso, data).unwrap();
        let e = obtain(
            &request(iso.display().to_string(), &d.join("state")),
            &Events::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ImageError::Iso(_)), "{e}");
        assert!(e.to_string().contains("daybreak serve --iso"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
