//! The embedded machine store: one small JSON file per machine in `STATE_DIR/machines/`, named
//! by its MAC, with its version inside.
//!
//! Crash-safe without a database: a record is written to a temporary file, synced and renamed
//! over the old one ([`artifacts::write_atomic`]), so a `kill -9` or a power cut leaves the old
//! record or the new one, never half of one. Every write takes an exclusive lock on
//! `machines/.lock` and compares the version on disk with the one the writer read: a server and
//! `daybreak machines` changing one record at once never undo each other. Other processes learn
//! of changes by the generation counter in `machines/.generation` ([`MachineStore::publish`]).
//! What is in the directory is not trusted: a symlink, a file too large, one naming another
//! MAC or not JSON is not a record (and is replaced at the machine's next write).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use pxe::Mac;
use serde::{Deserialize, Serialize};

use super::{MachineStore, Record, StoreError, Version, Versioned, MAX_RECORDS};

/// A record larger than this is not one of ours.
const MAX_RECORD_BYTES: u64 = 16 << 10;

/// A record as its file holds it: the record and its version.
#[derive(Serialize, Deserialize)]
struct OnDisk {
    #[serde(flatten)]
    record: Record,
    #[serde(default)]
    version: Version,
}

pub struct FileStore {
    dir: PathBuf,
    records: RwLock<HashMap<Mac, Versioned>>,
    /// The generation read last: other processes bump it after a change.
    read_at: Mutex<u64>,
    /// Records kept at most ([`MAX_RECORDS`]).
    cap: usize,
}

fn file_name(mac: &Mac) -> String {
    format!("{}.json", mac.hex())
}

/// The MAC of a record's file name (as [`file_name`] writes it); `None` for anything else.
fn mac_of_name(name: &str) -> Option<Mac> {
    let hex = name.strip_suffix(".json")?;
    hex.parse().ok().filter(|m| file_name(m) == name)
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

impl FileStore {
    /// The store in `state_dir` (already checked to be safe: [`artifacts::Store::open`]),
    /// created 0700 if missing, and every record in it read.
    pub fn open(state_dir: &Path) -> io::Result<FileStore> {
        let dir = state_dir.join("machines");
        if fs::symlink_metadata(&dir).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        if !fs::symlink_metadata(&dir)?.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let s = FileStore {
            dir,
            records: RwLock::default(),
            read_at: Mutex::default(),
            cap: MAX_RECORDS,
        };
        s.reload();
        Ok(s)
    }

    fn lock(&self) -> Result<artifacts::Lock, StoreError> {
        artifacts::Lock::exclusive(&self.dir.join(".lock"), || {})
            .map_err(io_error(format!("cannot lock {}", self.dir.display())))
    }

    /// A counter other processes bump after they change records ([`MachineStore::publish`]):
    /// a directory's time is too coarse to tell two quick changes apart.
    fn generation(&self) -> u64 {
        artifacts::read_small(&self.dir.join(".generation"), 32)
            .and_then(|t| String::from_utf8(t).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn reload(&self) {
        let stamp = self.generation();
        let mut map = HashMap::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let Some(mac) = mac_of_name(&e.file_name().to_string_lossy()) else {
                continue;
            };
            if map.len() >= self.cap {
                break;
            }
            if let Some(r) = read_record(&e.path(), &mac) {
                map.insert(mac, r);
            }
        }
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = map;
        *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
    }

    fn records(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Mac, Versioned>> {
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl MachineStore for FileStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn cached(&self, mac: Mac) -> Option<Versioned> {
        self.records().get(&mac).cloned()
    }

    fn with(&self, f: &mut dyn FnMut(&HashMap<Mac, Versioned>)) {
        f(&self.records())
    }

    fn len(&self) -> usize {
        self.records().len()
    }

    fn get(&self, mac: Mac) -> Result<Option<Versioned>, StoreError> {
        Ok(read_record(&self.dir.join(file_name(&mac)), &mac))
    }

    /// Blocks on the disk (temp file, fsync, rename): the server calls it from its writer
    /// thread, and for an install callback, which must be on disk before it is answered.
    fn put(&self, record: &Record, expect: Option<Version>) -> Result<Version, StoreError> {
        let _lock = self.lock()?;
        let mac = record.mac;
        let path = self.dir.join(file_name(&mac));
        let now = read_record(&path, &mac);
        if now.as_ref().map(|v| v.version) != expect {
            return Err(StoreError::Conflict);
        }
        if now.is_none() && !self.records().contains_key(&mac) && self.len() >= self.cap {
            self.make_room()?;
        }
        let version = expect.map_or(1, |v| v.wrapping_add(1));
        let on_disk = OnDisk {
            record: record.clone(),
            version,
        };
        let mut text = serde_json::to_vec_pretty(&on_disk).map_err(|e| StoreError::Io {
            what: format!("cannot write the record of {mac}"),
            source: io::Error::other(e),
        })?;
        text.push(b'\n');
        artifacts::write_atomic(&path, &text, 0o600)
            .map_err(io_error(format!("cannot write {}", path.display())))?;
        let mut map = self.records.write().unwrap_or_else(|e| e.into_inner());
        map.insert(
            mac,
            Versioned {
                record: record.clone(),
                version,
            },
        );
        Ok(version)
    }

    fn forget(&self, mac: Mac) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        self.remove(mac, true)
    }

    fn refresh(&self) -> bool {
        FileStore::refresh(self)
    }

    fn publish(&self) -> Result<(), StoreError> {
        FileStore::publish(self)
    }
}

impl FileStore {
    /// Room for a new machine in a full store: the never-installed machines not seen the
    /// longest go ([`super::evictable`]), a batch at once; installed machines never do.
    /// Called with the lock held.
    fn make_room(&self) -> Result<(), StoreError> {
        let gone = super::evictable(&self.records(), (self.cap / 64).max(1));
        if gone.is_empty() {
            return Err(StoreError::Full);
        }
        for mac in &gone {
            self.remove(*mac, false)?;
        }
        self.sync_dir();
        tracing::warn!(
            forgotten = gone.len(),
            store = %self.dir.display(),
            "machine store full ({} machines): the never-installed machines not seen the longest are forgotten to make room",
            self.cap
        );
        Ok(())
    }

    /// Removes `mac`'s record, on disk at once when `sync`; called with the lock held.
    fn remove(&self, mac: Mac, sync: bool) -> Result<bool, StoreError> {
        let path = self.dir.join(file_name(&mac));
        let gone = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_error(format!("cannot remove {}", path.display()))(e)),
        };
        if gone && sync {
            self.sync_dir();
        }
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mac);
        Ok(gone)
    }

    fn sync_dir(&self) {
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Reads every record again when another process published a change since the last read.
    fn refresh(&self) -> bool {
        let now = self.generation();
        let last = *self.read_at.lock().unwrap_or_else(|e| e.into_inner());
        if now != last {
            self.reload();
        }
        now != last
    }

    fn publish(&self) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let next = self.generation().wrapping_add(1);
        let path = self.dir.join(".generation");
        artifacts::write_atomic(&path, format!("{next}\n").as_bytes(), 0o600)
            .map_err(io_error(format!("cannot write {}", path.display())))
    }
}

/// A record file: a regular file (never a symlink), small, valid JSON, for this MAC.
fn read_record(path: &Path, mac: &Mac) -> Option<Versioned> {
    let text = artifacts::read_small(path, MAX_RECORD_BYTES)?;
    match parse_record(&text, mac) {
        Ok(v) => Some(v),
        Err(why) => {
            tracing::warn!(path = %path.display(), "machine record {why}; ignored (it is replaced at the machine's next boot)");
            None
        }
    }
}

/// A record's bytes as a record of `mac`: valid JSON, naming that MAC, with a grant Daybreak
/// could have made (or none). What a store holds is read as hostile: whatever the bytes, a
/// record or a reason.
pub fn parse_record(text: &[u8], mac: &Mac) -> Result<Versioned, String> {
    match serde_json::from_slice::<OnDisk>(text) {
        Ok(d) if d.record.mac != *mac => Err("names another MAC".into()),
        Ok(mut d) => {
            if d.record.grant.as_ref().is_some_and(|g| !g.is_valid()) {
                d.record.grant = None;
            }
            Ok(Versioned {
                record: d.record,
                version: d.version,
            })
        }
        Err(e) => Err(format!("unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_store_keeps_the_contract() {
        let d = testkit::tempdir("file-store-contract");
        super::super::contract::check(&|| Box::new(FileStore::open(&d).unwrap()));
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn hostile_files_in_the_directory_are_not_records() {
        let d = testkit::tempdir("file-store-hostile");
        let s = FileStore::open(&d).unwrap();
        let dir = s.dir.clone();
        // A symlink in a record's place, a record naming another MAC, garbage, a huge file,
        // a name that is not a MAC, and a temporary file left by a killed writer.
        std::os::unix::fs::symlink("/etc/passwd", dir.join("525400aabb01.json")).unwrap();
        fs::write(
            dir.join("525400aabb02.json"),
            r#"{"mac":"52:54:00:aa:bb:09"}"#,
        )
        .unwrap();
        fs::write(dir.join("525400aabb03.json"), "{not json").unwrap();
        fs::write(dir.join("525400aabb04.json"), vec![b' '; 1 << 20]).unwrap();
        fs::write(
            dir.join("525400aabb05.json"),
            r#"{"mac":"52:54:00:aa:bb:05","arch":"sparc"}"#,
        )
        .unwrap();
        fs::write(dir.join("../x.json"), "{}").unwrap();
        fs::write(dir.join(".525400aabb06.json.tmp-1-x"), "half").unwrap();
        let s = FileStore::open(&d).unwrap();
        assert_eq!(s.len(), 0);
        // The machine's next boot replaces the symlink with a record; /etc/passwd is untouched.
        let before = fs::read("/etc/passwd").unwrap();
        let mac: Mac = "52:54:00:aa:bb:01".parse().unwrap();
        let booted = super::super::Change::Booted {
            at: 1,
            arch: None,
            firmware: None,
            uuid: None,
        };
        super::super::update(&s, mac, &booted).unwrap();
        assert_eq!(fs::read("/etc/passwd").unwrap(), before);
        assert!(fs::symlink_metadata(dir.join("525400aabb01.json"))
            .unwrap()
            .is_file());
        let _ = fs::remove_dir_all(d);
    }

    /// Item: a full store makes room by forgetting the never-installed machines not seen the
    /// longest, never one whose install finished; full of installed machines, it takes no more.
    #[test]
    fn a_full_store_forgets_never_installed_machines_and_never_an_installed_one() {
        use super::super::{update, Change};
        let d = testkit::tempdir("file-store-full");
        let mut s = FileStore::open(&d).unwrap();
        s.cap = 4;
        let m = |i: u8| Mac([0x52, 0x54, 0, 0, 0x10, i]);
        let booted = |at| Change::Booted {
            at,
            arch: None,
            firmware: None,
            uuid: None,
        };
        update(&s, m(1), &Change::Installed { at: 1 }).unwrap();
        update(&s, m(2), &booted(50)).unwrap();
        update(&s, m(3), &booted(10)).unwrap();
        update(&s, m(4), &booted(30)).unwrap();
        // A fifth: the never-installed one seen longest ago (3) goes.
        update(&s, m(5), &booted(60)).unwrap();
        assert_eq!(s.len(), 4);
        assert!(s.get(m(3)).unwrap().is_none() && s.cached(m(3)).is_none());
        assert!(s.get(m(1)).unwrap().is_some(), "the installed one stays");
        // Full of installed machines: the next is refused, and nothing goes.
        for i in [2, 4, 5] {
            update(&s, m(i), &Change::Installed { at: 70 }).unwrap();
        }
        assert!(matches!(
            update(&s, m(6), &booted(80)),
            Err(StoreError::Full)
        ));
        assert_eq!(s.len(), 4);
        let _ = fs::remove_dir_all(d);
    }
}
