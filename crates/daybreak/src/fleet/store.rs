//! The machine store: what Daybreak remembers of each machine across restarts (first and last
//! boot, architecture and firmware, whether its install finished), one small JSON file per
//! machine in `STATE_DIR/machines/`, named by its MAC.
//!
//! Crash-safe without a database: a record is written to a temporary file, synced and renamed
//! over the old one, so a `kill -9` or a power cut leaves the old record or the new one, never
//! half of one. The server and `daybreak machines` may change records at the same time: every
//! change takes an exclusive lock on `machines/.lock`, reads the record from disk, changes it
//! and writes it, so neither undoes the other. The server sees changes made by others by the
//! directory's modification time.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use pxe::{CpuArch, Mac, Uuid};

/// Records kept. Past this, new machines are served but not remembered (a flood of made-up
/// MACs cannot fill the disk).
pub const MAX_RECORDS: usize = 65_536;
/// A record larger than this is not one of ours.
const MAX_RECORD_BYTES: u64 = 16 << 10;

/// What is remembered of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub mac: Mac,
    /// Unix seconds of its first and latest boot script.
    #[serde(default)]
    pub first_seen: u64,
    #[serde(default)]
    pub last_seen: u64,
    /// Boot scripts served.
    #[serde(default)]
    pub boots: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<CpuArch>,
    /// The boot path of its latest offer (`UEFI PXE, then iPXE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// When it called back that its install finished: from then on it boots from its disk
    /// (until `daybreak machines reinstall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<u64>,
}

/// A change to one record.
#[derive(Debug, Clone)]
pub enum Change {
    /// It fetched a boot script.
    Booted {
        at: u64,
        arch: Option<CpuArch>,
        firmware: Option<String>,
        uuid: Option<Uuid>,
    },
    Installed {
        at: u64,
    },
    Reinstall,
}

impl Record {
    fn apply(&mut self, c: &Change) {
        match c {
            Change::Booted {
                at,
                arch,
                firmware,
                uuid,
            } => {
                if self.first_seen == 0 {
                    self.first_seen = *at;
                }
                self.last_seen = *at;
                self.boots += 1;
                self.arch = arch.or(self.arch);
                self.uuid = uuid.or(self.uuid);
                if firmware.is_some() {
                    self.firmware.clone_from(firmware);
                }
            }
            Change::Installed { at } => {
                self.installed_at = Some(*at);
                if self.first_seen == 0 {
                    self.first_seen = *at;
                }
                self.last_seen = self.last_seen.max(*at);
            }
            Change::Reinstall => self.installed_at = None,
        }
    }
}

pub struct Store {
    dir: PathBuf,
    records: Mutex<HashMap<Mac, Record>>,
    /// The generation read last: other processes bump it after a change.
    read_at: Mutex<u64>,
}

fn file_name(mac: &Mac) -> String {
    format!("{}.json", mac.hex())
}

/// The MAC of a record's file name (as [`file_name`] writes it); `None` for anything else.
fn mac_of_name(name: &str) -> Option<Mac> {
    let hex = name.strip_suffix(".json")?;
    hex.parse().ok().filter(|m| file_name(m) == name)
}

impl Store {
    /// The store in `state_dir` (already checked to be safe: [`artifacts::Store::open`]),
    /// created 0700 if missing, and every record in it read.
    pub fn open(state_dir: &Path) -> io::Result<Store> {
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
        let s = Store {
            dir,
            records: Mutex::default(),
            read_at: Mutex::default(),
        };
        s.reload();
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> io::Result<artifacts::Lock> {
        artifacts::Lock::exclusive(&self.dir.join(".lock"), || {})
    }

    /// A counter other processes bump after they change records ([`Store::announce`]): a
    /// directory's time is too coarse to tell two quick changes apart.
    fn generation(&self) -> u64 {
        read_small(&self.dir.join(".generation"), 32)
            .and_then(|t| String::from_utf8(t).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The secret behind machines' own URLs: 32 random bytes in hex, made once and kept in
    /// `.key` (mode 0600), so the URLs survive restarts.
    pub fn key(&self) -> io::Result<String> {
        let path = self.dir.join(".key");
        let read = || {
            read_small(&path, 128)
                .and_then(|k| String::from_utf8(k).ok())
                .map(|k| k.trim().to_string())
                .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if let Some(k) = read() {
            return Ok(k);
        }
        let _lock = self.lock()?;
        // Another server sharing the directory may have made it meanwhile.
        if let Some(k) = read() {
            return Ok(k);
        }
        let k = artifacts::random_hex(32)?;
        write_atomic(&self.dir, &path, k.as_bytes())?;
        Ok(k)
    }

    /// Tells a running server that records changed (called by `daybreak machines`).
    pub fn announce(&self) -> io::Result<()> {
        let _lock = self.lock()?;
        let next = self.generation().wrapping_add(1);
        write_atomic(
            &self.dir,
            &self.dir.join(".generation"),
            format!("{next}\n").as_bytes(),
        )
    }

    /// Reads every record again when another process announced a change since the last read.
    pub fn refresh(&self) {
        let now = self.generation();
        let last = *self.read_at.lock().unwrap_or_else(|e| e.into_inner());
        if now != last {
            self.reload();
        }
    }

    fn reload(&self) {
        let stamp = self.generation();
        let mut map = HashMap::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                // A writer killed between creating and renaming: nobody else writes here.
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|d| d.as_secs() > 60));
                if old {
                    let _ = fs::remove_file(e.path());
                }
                continue;
            }
            let Some(mac) = mac_of_name(&name) else {
                continue;
            };
            if map.len() >= MAX_RECORDS {
                break;
            }
            if let Some(r) = read_record(&e.path(), &mac) {
                map.insert(mac, r);
            }
        }
        *self.records.lock().unwrap_or_else(|e| e.into_inner()) = map;
        *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
    }

    pub fn get(&self, mac: &Mac) -> Option<Record> {
        let r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        r.get(mac).cloned()
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `f` over every record, the table locked meanwhile.
    pub fn with<R>(&self, f: impl FnOnce(&HashMap<Mac, Record>) -> R) -> R {
        f(&self.records.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every record, by MAC.
    pub fn list(&self) -> Vec<Record> {
        let r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Record> = r.values().cloned().collect();
        v.sort_by_key(|r| r.mac);
        v
    }

    /// Changes `mac`'s record on disk (creating it, unless the store is full) and here. Blocks
    /// on the disk: the server calls it from its writer thread.
    pub fn change(&self, mac: &Mac, c: &Change) -> io::Result<Option<Record>> {
        let _lock = self.lock()?;
        let path = self.dir.join(file_name(mac));
        let mut r = match read_record(&path, mac) {
            Some(r) => r,
            None if matches!(c, Change::Reinstall) => return Ok(None),
            None => {
                if self.len() >= MAX_RECORDS {
                    return Ok(None);
                }
                Record {
                    mac: *mac,
                    ..Default::default()
                }
            }
        };
        r.apply(c);
        let mut text = serde_json::to_vec_pretty(&r).map_err(io::Error::other)?;
        text.push(b'\n');
        write_atomic(&self.dir, &path, &text)?;
        let mut map = self.records.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(*mac, r.clone());
        Ok(Some(r))
    }

    /// Forgets `mac`. False when it was not known.
    pub fn forget(&self, mac: &Mac) -> io::Result<bool> {
        let _lock = self.lock()?;
        let path = self.dir.join(file_name(mac));
        let gone = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if gone {
            sync_dir(&self.dir);
        }
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(mac);
        Ok(gone)
    }
}

/// A small regular file's bytes (never through a symlink); `None` for anything else.
fn read_small(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        tracing::warn!(path = %path.display(), "not a small regular file; ignored");
        return None;
    }
    let mut text = Vec::new();
    f.take(max).read_to_end(&mut text).ok()?;
    Some(text)
}

/// A record file: a regular file (never a symlink), small, valid JSON, for this MAC.
fn read_record(path: &Path, mac: &Mac) -> Option<Record> {
    let text = read_small(path, MAX_RECORD_BYTES)?;
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) if r.mac == *mac => Some(r),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "machine record names another MAC; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "machine record unreadable; ignored (it is replaced at the machine's next boot)");
            None
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `data` to `dest` in `dir` through a temporary file that is synced, then renamed.
fn write_atomic(dir: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".tmp-{}", artifacts::random_hex(8)?));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        sync_dir(dir);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0x01]);

    #[test]
    fn records_survive_reopening_and_changes_by_another_process() {
        let d = testkit::tempdir("fleet-store");
        let s = Store::open(&d).unwrap();
        assert!(s.get(&A).is_none());
        let booted = Change::Booted {
            at: 100,
            arch: Some(CpuArch::Amd64),
            firmware: Some("BIOS PXE, then iPXE".into()),
            uuid: None,
        };
        s.change(&A, &booted).unwrap();
        s.change(&A, &Change::Installed { at: 150 }).unwrap();
        // Another process (`daybreak machines reinstall`) with its own view.
        let other = Store::open(&d).unwrap();
        assert_eq!(other.get(&A).unwrap().installed_at, Some(150));
        other.change(&A, &Change::Reinstall).unwrap();
        other.announce().unwrap();
        s.refresh();
        let r = s.get(&A).unwrap();
        assert_eq!(
            (r.first_seen, r.last_seen, r.boots, r.installed_at),
            (100, 150, 1, None)
        );
        // The server's next change starts from the disk, not from its older copy.
        s.change(
            &A,
            &Change::Booted {
                at: 200,
                arch: None,
                firmware: None,
                uuid: None,
            },
        )
        .unwrap();
        let again = Store::open(&d).unwrap().get(&A).unwrap();
        assert_eq!(
            (again.boots, again.installed_at, again.arch),
            (2, None, Some(CpuArch::Amd64))
        );
        assert!(s.forget(&A).unwrap());
        assert!(!Store::open(&d).unwrap().forget(&A).unwrap());
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn the_url_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = testkit::tempdir("fleet-store-key");
        let k = Store::open(&d).unwrap().key().unwrap();
        assert_eq!(k.len(), 64);
        assert_eq!(Store::open(&d).unwrap().key().unwrap(), k);
        let mode = fs::metadata(d.join("machines/.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage in its place is replaced, never used.
        fs::write(d.join("machines/.key"), "short").unwrap();
        let fresh = Store::open(&d).unwrap().key().unwrap();
        assert!(fresh != k && fresh.len() == 64);
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn hostile_files_in_the_directory_are_not_records() {
        let d = testkit::tempdir("fleet-store-hostile");
        let s = Store::open(&d).unwrap();
        let dir = s.dir().to_path_buf();
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
        fs::write(dir.join("../x.json"), "{}").unwrap();
        fs::write(dir.join(".tmp-abc"), "half").unwrap();
        let s = Store::open(&d).unwrap();
        assert_eq!(s.len(), 0);
        // The machine's next boot replaces the symlink with a record; /etc/passwd is untouched.
        let before = fs::read("/etc/passwd").unwrap();
        s.change(
            &A,
            &Change::Booted {
                at: 1,
                arch: None,
                firmware: None,
                uuid: None,
            },
        )
        .unwrap();
        assert_eq!(fs::read("/etc/passwd").unwrap(), before);
        assert!(fs::symlink_metadata(dir.join("525400aabb01.json"))
            .unwrap()
            .is_file());
        let _ = fs::remove_dir_all(d);
    }
}
