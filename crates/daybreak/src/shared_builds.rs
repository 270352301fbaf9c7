//! One build per image across the replicas sharing a store ([`artifacts::Peers`]): a replica
//! that needs an image's artifacts takes the cluster's turn to build it (a lease-bound key in
//! etcd, [`MachineStore::lock_build`]); the others wait, then fetch the finished kernel, initrd
//! and squashfs from a replica holding them, over HTTP (`/_/artifacts/KEY/NAME` on its boot
//! port), resuming a cut download, each file checked against the sha256 the builder published.
//! If the builder dies, its turn expires with its lease and another builds.
//!
//! What the store says is read as hostile: the key is one [`artifacts::Key`] could be, the
//! names are the entry's own, sizes are capped, and a file lands in the artifact store only
//! through [`artifacts::Store::put`] (whole, or not at all) once its sha256 matches.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifacts::{Artifacts, Event, Key, Report, Store, Turn};

use crate::store::{MachineStore, Published, PublishedFile, PUBLISHED_NAMES};

/// How often a waiting replica looks again.
const POLL: Duration = Duration::from_secs(1);
/// How often it says it still waits.
const SAY_EVERY: Duration = Duration::from_secs(60);
/// How long a build published by a replica that does not list it yet (it is starting: it
/// lists what it holds once it serves) is waited for before building here.
const GRACE: Duration = Duration::from_secs(30);
/// Tries of one file from one replica, each resuming where the last stopped.
const TRIES: u32 = 3;

pub struct SharedBuilds {
    store: Arc<dyn MachineStore>,
    agent: ureq::Agent,
}

impl SharedBuilds {
    pub fn new(store: Arc<dyn MachineStore>) -> Arc<SharedBuilds> {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_recv_body(Some(Duration::from_secs(3600)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        Arc::new(SharedBuilds { store, agent })
    }

    /// Base URLs of the replicas that list `key` among what they hold.
    fn holders(&self, key: &Key) -> Vec<String> {
        self.store
            .members()
            .into_iter()
            .filter(|m| m.id != crate::store::Member::my_id())
            .filter(|m| m.artifacts.iter().any(|k| k == key.as_str()))
            .flat_map(|m| m.bases())
            .collect()
    }
}

impl artifacts::Peers for SharedBuilds {
    fn turn(&self, key: &Key, store: &Store, report: &dyn Report) -> Turn {
        let here = || Turn::Build(Box::new(()));
        if !key.content_addressed() {
            return here();
        }
        let mut failed: HashSet<String> = HashSet::new();
        let mut said: Option<Instant> = None;
        let mut unlisted: Option<Instant> = None;
        loop {
            let published = match self.store.published(key.as_str()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(artifacts = %key, "{e}: building here");
                    return here();
                }
            };
            if let Some(p) = &published {
                for base in self.holders(key) {
                    if failed.contains(&base) {
                        continue;
                    }
                    report.event(Event::Waiting(format!(
                        "fetching {key} from the replica at {base} that built it"
                    )));
                    match fetch(&self.agent, &base, p, key, store) {
                        Ok(a) => {
                            tracing::info!(artifacts = %key, from = %base, built_by = %p.by, "artifacts fetched from another replica (sha256 checked): not built again");
                            self.store.hold(key.as_str());
                            return Turn::Have(a);
                        }
                        Err(e) => {
                            tracing::warn!(artifacts = %key, from = %base, "cannot fetch the artifacts: {e:#}");
                            failed.insert(base);
                        }
                    }
                }
            }
            let waiting_for_a_holder = published.is_some()
                && unlisted.get_or_insert_with(Instant::now).elapsed() < GRACE
                && failed.is_empty();
            if !waiting_for_a_holder {
                match self.store.lock_build(key.as_str()) {
                    Ok(Some(t)) => return Turn::Build(t),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(artifacts = %key, "{e}: building here");
                        return here();
                    }
                }
            }
            if said.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
                report.event(Event::Waiting(format!(
                    "another replica is building {key}; waiting to fetch what it built"
                )));
                said = Some(Instant::now());
            }
            std::thread::sleep(POLL);
        }
    }

    fn have(&self, key: &Key, a: &Artifacts) {
        if !key.content_addressed() {
            return;
        }
        match self.store.published(key.as_str()) {
            Ok(Some(_)) => {}
            Ok(None) => match describe(key, a) {
                Ok(p) => {
                    if let Err(e) = self.store.publish_built(&p) {
                        tracing::warn!(artifacts = %key, "cannot publish the build for the other replicas: {e}");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(artifacts = %key, "cannot read the artifacts to publish them: {e}");
                    return;
                }
            },
            Err(_) => return,
        }
        self.store.hold(key.as_str());
    }
}

/// What this replica publishes of its entry `a`: each file's size and sha256.
fn describe(key: &Key, a: &Artifacts) -> std::io::Result<Published> {
    let mut files = Vec::new();
    for name in PUBLISHED_NAMES {
        let path = a.dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        files.push(PublishedFile {
            name: name.into(),
            size: meta.len(),
            sha256: artifacts::hex(&artifacts::sha256_file(&path)?),
        });
    }
    let mut meta = a.meta.clone();
    meta.sizes = None;
    Ok(Published {
        key: key.as_str().into(),
        by: crate::store::Member::my_id().into(),
        files,
        meta,
    })
}

/// Fetches every file `p` names from the replica at `base` into the entry `key` of `store`.
fn fetch(
    agent: &ureq::Agent,
    base: &str,
    p: &Published,
    key: &Key,
    store: &Store,
) -> anyhow::Result<Artifacts> {
    let parts = store.downloads_dir();
    std::fs::create_dir_all(&parts)?;
    let a = store.put(
        key,
        || {},
        |tmp| -> Result<artifacts::Meta, std::io::Error> {
            for f in &p.files {
                // The name is one of the entry's own (checked), the key a store key.
                let part = parts.join(format!("{key}.{}.part", f.name));
                let url = format!("{base}/_/artifacts/{key}/{}", f.name);
                download(agent, &url, &part, f)?;
                std::fs::rename(&part, tmp.join(&f.name))?;
            }
            let mut meta = p.meta.clone();
            meta.sizes = None;
            meta.created = artifacts::now();
            Ok(meta)
        },
    )?;
    Ok(a)
}

/// Downloads `url` into `part` until it holds `f.size` bytes whose sha256 is `f.sha256`,
/// resuming what an earlier try left there.
fn download(agent: &ureq::Agent, url: &str, part: &Path, f: &PublishedFile) -> std::io::Result<()> {
    artifacts::fetch_verified(agent, url, part, f.size, &f.sha256, TRIES)
}

/// The boot port's `/_/artifacts/KEY/NAME`: a file of an entry this replica holds, for the
/// other replicas; anything else is not found. Nothing of the path is a path: the key is one a
/// store key can be, the name one of the entry's own.
pub fn serve(store: &Store, path: &str) -> Option<http::Reply> {
    let rest = path.strip_prefix("_/artifacts/")?;
    let (key, name) = rest.split_once('/')?;
    let key = Key::parse(key).filter(Key::content_addressed)?;
    let name = *PUBLISHED_NAMES.iter().find(|n| **n == name)?;
    let a = store.get(&key)?;
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(a.dir.join(name))
            .ok()?
    };
    file.metadata().ok().filter(|m| m.is_file())?;
    Some(http::Reply::Resource {
        name: format!("artifacts/{key}/{name}"),
        content_type: "application/octet-stream",
        body: http::Body::File(Arc::new(file)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A server of `data` that cuts its first answer after `cut` bytes and answers ranges
    /// after; gives its base URL and, at the end, the Range headers it was sent.
    fn server(data: Vec<u8>, cut: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let mut ranges = Vec::new();
            for (n, conn) in l.incoming().take(2).enumerate() {
                let mut s = conn.unwrap();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut from = 0usize;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        ranges.push(v.trim().to_string());
                        from = v.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let body = &data[from..];
                let head = match from {
                    0 => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()),
                    _ => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\n\r\n",
                        body.len(),
                        data.len() - 1,
                        data.len()
                    ),
                };
                s.write_all(head.as_bytes()).unwrap();
                let send = if n == 0 { &body[..cut] } else { body };
                let _ = s.write_all(send);
            }
            ranges
        });
        (base, t)
    }

    fn file_of(data: &[u8]) -> PublishedFile {
        use sha2::{Digest, Sha256};
        PublishedFile {
            name: "kernel".into(),
            size: data.len() as u64,
            sha256: artifacts::hex(&Sha256::digest(data)),
        }
    }

    /// Item: fetched artifacts are resumable and sha256-checked: a download cut off resumes
    /// where it stopped (a range request), and bytes whose sha256 is not the published one
    /// never land.
    #[test]
    fn a_cut_download_resumes_and_a_wrong_sha256_is_refused() {
        let dir = testkit::tempdir("shared-builds");
        let agent = SharedBuilds::new(Arc::new(crate::store::FileStore::open(&dir).unwrap()))
            .agent
            .clone();
        let data = testkit::pattern(200_000, 5);
        let (base, t) = server(data.clone(), 70_000);
        let part = dir.join("kernel.part");
        download(&agent, &format!("{base}/k"), &part, &file_of(&data)).unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), data);
        assert_eq!(t.join().unwrap(), ["70000-"]);

        let (base, t) = server(data.clone(), data.len());
        let part = dir.join("other.part");
        let mut wrong = file_of(&data);
        wrong.sha256 = "0".repeat(64);
        let e = download(&agent, &format!("{base}/k"), &part, &wrong).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
        drop(t);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_route_hands_out_an_entrys_own_files_only() {
        let dir = testkit::tempdir("shared-builds-route");
        let store = Store::open(&dir).unwrap();
        for bad in [
            "_/artifacts/../../etc/passwd",
            "_/artifacts/sha256-00/kernel/..",
            "_/artifacts/dir-0123456789abcdef/kernel",
            "_/artifacts/sha256-0000/meta.json",
            "_/artifacts/sha256-0000/kernel",
            "_/artifacts/",
        ] {
            assert!(serve(&store, bad).is_none(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
