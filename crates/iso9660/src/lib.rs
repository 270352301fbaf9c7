//! Reading ISO 9660 images without mounting them: no root, no loop device, no kernel driver.
//!
//! A Kairos ISO holds the three netboot files at `/boot/kernel`, `/boot/initrd` and
//! `/rootfs.squashfs`. Each is one contiguous run of sectors (an extent), or several for files of
//! 4 GiB and more, so they can be copied or served as byte ranges of the ISO file itself.
//!
//! Names come from Rock Ridge when the image has it (real names, symlinks), else from Joliet, else
//! from the plain ISO 9660 records (`KERNEL.;1`, matched case-insensitively without the version).
//! Everything read from the image is untrusted: every extent is checked against the file's size,
//! recursion and symlink chains are bounded, and names are never used as host paths.
//!
//! ```no_run
//! let iso = iso9660::Iso::open("kairos.iso".as_ref())?;
//! let kernel = iso.lookup("/boot/kernel")?;
//! println!("{} bytes in {} extent(s)", kernel.size(), kernel.extents.len());
//! # Ok::<(), iso9660::IsoError>(())
//! ```

#![warn(unreachable_pub)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SECTOR: u64 = 2048;
/// Deeper than any real image; bounds work on hostile ones.
const MAX_SYMLINKS: usize = 32;
/// Path components one lookup may walk, symlink targets and `..` restarts included.
const MAX_STEPS: usize = 4096;
const MAX_DIR_BYTES: u64 = 64 << 20;
const MAX_CONTINUATIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not an ISO 9660 image (no CD001 volume descriptor at sector 16)")]
    NotIso { path: PathBuf },
    #[error("{path} is truncated: it is {size} bytes but its {what} needs {needed}; download or copy it again")]
    Truncated {
        path: PathBuf,
        size: u64,
        needed: u64,
        what: String,
    },
    #[error("{path} is damaged: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("{iso} has no {wanted}; {listing}")]
    NotFound {
        iso: PathBuf,
        wanted: String,
        listing: String,
    },
}

/// `len` bytes of the image file from `offset`: where a file's data lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// A directory entry, with the name the best available naming scheme gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    /// Rock Ridge symlink target, as stored.
    pub symlink: Option<String>,
    pub extents: Vec<Extent>,
}

impl Entry {
    pub fn size(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    RockRidge { skip: usize },
    Joliet,
    Plain,
}

pub struct Iso {
    path: PathBuf,
    file: File,
    size: u64,
    root: Extent,
    naming: Naming,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl Iso {
    pub fn open(path: &Path) -> Result<Iso, IsoError> {
        let io_err = |source| IsoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let mut iso = Iso {
            path: path.to_path_buf(),
            file,
            size,
            root: Extent { offset: 0, len: 0 },
            naming: Naming::Plain,
        };
        let mut pvd_root = None;
        let mut joliet_root = None;
        for sector in 16..16 + 64 {
            if (sector + 1) * SECTOR > size {
                break;
            }
            let d = iso.read(sector * SECTOR, SECTOR, "volume descriptors")?;
            if &d[1..6] != b"CD001" {
                break;
            }
            let root = iso.root_record(&d[156..190])?;
            match d[0] {
                1 => pvd_root = pvd_root.or(Some(root)),
                2 if d[88] == b'%' && d[89] == b'/' && matches!(d[90], b'@' | b'C' | b'E') => {
                    joliet_root = joliet_root.or(Some(root));
                }
                255 => break,
                _ => {}
            }
        }
        let Some(pvd) = pvd_root else {
            return Err(IsoError::NotIso {
                path: iso.path.clone(),
            });
        };
        iso.root = pvd;
        if let Some(skip) = iso.rock_ridge_skip()? {
            iso.naming = Naming::RockRidge { skip };
        } else if let Some(j) = joliet_root {
            iso.root = j;
            iso.naming = Naming::Joliet;
        }
        Ok(iso)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `len` bytes at `offset`, refusing reads past the end as truncation.
    fn read(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, IsoError> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| self.malformed(format!("{what} lies beyond 2^64")))?;
        if end > self.size {
            return Err(IsoError::Truncated {
                path: self.path.clone(),
                size: self.size,
                needed: end,
                what: what.into(),
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| IsoError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    fn malformed(&self, detail: String) -> IsoError {
        IsoError::Malformed {
            path: self.path.clone(),
            detail,
        }
    }

    fn root_record(&self, rec: &[u8]) -> Result<Extent, IsoError> {
        Ok(Extent {
            offset: u64::from(le32(&rec[2..6])) * SECTOR,
            len: u64::from(le32(&rec[10..14])),
        })
    }

    /// Rock Ridge is announced by an `SP` entry in the root's "." record; its skip count applies to
    /// every system use area.
    fn rock_ridge_skip(&self) -> Result<Option<usize>, IsoError> {
        if self.root.len == 0 {
            return Ok(None);
        }
        let first = self.read(
            self.root.offset,
            SECTOR.min(self.root.len),
            "root directory",
        )?;
        let len = first[0] as usize;
        if len < 34 || len > first.len() {
            return Ok(None);
        }
        let name_len = first[32] as usize;
        let su_start = 33 + name_len + (1 - name_len % 2);
        if su_start + 7 <= len
            && &first[su_start..su_start + 2] == b"SP"
            && first[su_start + 4..su_start + 6] == [0xbe, 0xef]
        {
            return Ok(Some(first[su_start + 6] as usize));
        }
        Ok(None)
    }

    /// Lists a directory extent.
    pub fn read_dir(&self, dir: Extent) -> Result<Vec<Entry>, IsoError> {
        if dir.len > MAX_DIR_BYTES {
            return Err(self.malformed(format!("a directory claims {} bytes", dir.len)));
        }
        let data = self.read(dir.offset, dir.len, "directory")?;
        let mut out: Vec<Entry> = Vec::new();
        let mut pending_multi: Option<Entry> = None;
        let mut pos = 0usize;
        while pos < data.len() {
            let len = data[pos] as usize;
            if len == 0 {
                // Records never cross a sector: the rest of this sector is padding.
                pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            if len < 34 || pos + len > data.len() {
                return Err(self.malformed(format!(
                    "directory record of {len} bytes at {}",
                    dir.offset + pos as u64
                )));
            }
            let rec = &data[pos..pos + len];
            pos += len;
            let name_len = rec[32] as usize;
            if 33 + name_len > rec.len() {
                return Err(self.malformed("directory record name runs past the record".into()));
            }
            let raw_name = &rec[33..33 + name_len];
            if name_len == 1 && (raw_name[0] == 0 || raw_name[0] == 1) {
                continue; // "." and ".."
            }
            let flags = rec[25];
            let extent = Extent {
                offset: u64::from(le32(&rec[2..6])) * SECTOR,
                len: u64::from(le32(&rec[10..14])),
            };
            let su_start = 33 + name_len + (1 - name_len % 2);
            let (rr_name, symlink, relocated) = match self.naming {
                Naming::RockRidge { skip } if su_start + skip <= rec.len() => {
                    self.rock_ridge(&rec[su_start + skip..])?
                }
                _ => (None, None, false),
            };
            if relocated {
                continue; // a placeholder for a directory moved elsewhere (RE)
            }
            let name = match (rr_name, self.naming) {
                (Some(n), _) => n,
                (None, Naming::Joliet) => {
                    let units: Vec<u16> = raw_name
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    strip_version(&String::from_utf16_lossy(&units))
                }
                (None, _) => strip_version(&String::from_utf8_lossy(raw_name)),
            };
            let mut entry = match pending_multi.take() {
                Some(mut prev) if prev.name == name => {
                    prev.extents.push(extent);
                    prev
                }
                Some(prev) => {
                    out.push(prev);
                    Entry {
                        name,
                        is_dir: flags & 0x02 != 0,
                        symlink,
                        extents: vec![extent],
                    }
                }
                None => Entry {
                    name,
                    is_dir: flags & 0x02 != 0,
                    symlink,
                    extents: vec![extent],
                },
            };
            if flags & 0x80 != 0 {
                pending_multi = Some(entry);
                continue;
            }
            entry.extents.retain(|e| e.len > 0 || entry.is_dir);
            out.push(entry);
        }
        if let Some(e) = pending_multi {
            out.push(e);
        }
        for e in &out {
            for x in &e.extents {
                if x.offset.saturating_add(x.len) > self.size {
                    return Err(IsoError::Truncated {
                        path: self.path.clone(),
                        size: self.size,
                        needed: x.offset.saturating_add(x.len),
                        what: format!("file {}", e.name),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Parses SUSP entries: (NM name, SL target, RE flag). Follows CE continuation areas.
    fn rock_ridge(&self, su: &[u8]) -> Result<(Option<String>, Option<String>, bool), IsoError> {
        let mut name: Option<Vec<u8>> = None;
        let mut link: Option<String> = None;
        let mut link_continues = false;
        let mut relocated = false;
        let mut area = su.to_vec();
        for _ in 0..MAX_CONTINUATIONS {
            let mut next: Option<(u64, u64, u64)> = None;
            let mut p = 0usize;
            while p + 4 <= area.len() {
                let sig = [area[p], area[p + 1]];
                let len = area[p + 2] as usize;
                if len < 4 || p + len > area.len() {
                    break;
                }
                let body = &area[p + 4..p + len];
                match &sig {
                    b"NM" if !body.is_empty() => {
                        let flags = body[0];
                        if flags & 0x06 == 0 {
                            name.get_or_insert_with(Vec::new)
                                .extend_from_slice(&body[1..]);
                        }
                    }
                    b"SL" if !body.is_empty() => {
                        let target = link.get_or_insert_with(String::new);
                        let mut c = &body[1..];
                        while c.len() >= 2 {
                            let (cflags, clen) = (c[0], c[1] as usize);
                            if 2 + clen > c.len() {
                                break;
                            }
                            let comp = &c[2..2 + clen];
                            if !target.is_empty() && !target.ends_with('/') && !link_continues {
                                target.push('/');
                            }
                            match cflags & 0x0e {
                                0x02 => target.push('.'),
                                0x04 => target.push_str(".."),
                                0x08 => target.push('/'),
                                _ => target.push_str(&String::from_utf8_lossy(comp)),
                            }
                            link_continues = cflags & 0x01 != 0;
                            c = &c[2 + clen..];
                        }
                    }
                    b"RE" => relocated = true,
                    b"CE" if body.len() >= 24 => {
                        next = Some((
                            u64::from(le32(&body[0..4])),
                            u64::from(le32(&body[8..12])),
                            u64::from(le32(&body[16..20])),
                        ));
                    }
                    b"ST" => break,
                    _ => {}
                }
                p += len;
            }
            match next {
                Some((block, off, len)) if len <= SECTOR * 4 => {
                    area = self.read(block * SECTOR + off, len, "Rock Ridge continuation area")?;
                }
                _ => break,
            }
        }
        Ok((
            name.map(|n| String::from_utf8_lossy(&n).into_owned()),
            link,
            relocated,
        ))
    }

    /// Lists a directory by path.
    pub fn list(&self, path: &str) -> Result<Vec<Entry>, IsoError> {
        let e = self.lookup(path)?;
        if !e.is_dir {
            return Err(self.malformed(format!("{path} is not a directory")));
        }
        self.read_dir(
            e.extents
                .first()
                .copied()
                .unwrap_or(Extent { offset: 0, len: 0 }),
        )
    }

    /// Finds a file or directory by absolute path, following symlinks within the image. Each
    /// directory is read once per lookup however often the walk passes through it, and the walk
    /// is bounded in steps: a hostile image (long symlink targets, `..` loops over huge
    /// directories) costs at most 4,096 steps over directories read once.
    pub fn lookup(&self, path: &str) -> Result<Entry, IsoError> {
        let mut cache: std::collections::HashMap<u64, std::rc::Rc<Vec<Entry>>> = Default::default();
        let mut read_dir = |dir: Extent| -> Result<std::rc::Rc<Vec<Entry>>, IsoError> {
            if let Some(e) = cache.get(&dir.offset) {
                return Ok(e.clone());
            }
            let e = std::rc::Rc::new(self.read_dir(dir)?);
            cache.insert(dir.offset, e.clone());
            Ok(e)
        };
        let mut steps = 0;
        let mut pending: Vec<String> = components(path);
        pending.reverse();
        let mut resolved: Vec<String> = Vec::new();
        let mut dir = self.root;
        let mut hops = 0;
        let root_entry = Entry {
            name: String::new(),
            is_dir: true,
            symlink: None,
            extents: vec![self.root],
        };
        let mut current = root_entry.clone();
        while let Some(comp) = pending.pop() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(self.malformed(format!(
                    "resolving {path} takes more than {MAX_STEPS} steps"
                )));
            }
            if comp == ".." {
                resolved.pop();
                // Walk again from the root to the parent.
                let mut rest: Vec<String> = std::mem::take(&mut resolved);
                rest.reverse();
                pending.extend(rest);
                dir = self.root;
                current = root_entry.clone();
                continue;
            }
            if !current.is_dir {
                return Err(self.not_found(path));
            }
            let entries = read_dir(dir)?;
            let found = entries
                .iter()
                .find(|e| e.name == comp)
                .or_else(|| entries.iter().find(|e| e.name.eq_ignore_ascii_case(&comp)))
                .cloned()
                .ok_or_else(|| self.not_found(path))?;
            if let Some(target) = &found.symlink {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(self.malformed(format!("too many symlinks resolving {path}")));
                }
                if target.starts_with('/') {
                    resolved.clear();
                    dir = self.root;
                    current = root_entry.clone();
                }
                let mut t = components(target);
                t.reverse();
                pending.extend(t);
                continue;
            }
            resolved.push(found.name.clone());
            if found.is_dir {
                dir = found
                    .extents
                    .first()
                    .copied()
                    .unwrap_or(Extent { offset: 0, len: 0 });
            }
            current = found;
        }
        Ok(current)
    }

    fn not_found(&self, wanted: &str) -> IsoError {
        let show = |p: &str| match self.lookup_dir_names(p) {
            Some(names) if names.is_empty() => format!("{p} is empty"),
            Some(names) => format!("{p} holds: {}", names.join(", ")),
            None => format!("there is no {p}"),
        };
        IsoError::NotFound {
            iso: self.path.clone(),
            wanted: wanted.to_string(),
            listing: format!("{}; {}", show("/boot"), show("/")),
        }
    }

    /// Names in a directory, without following anything (for error messages).
    fn lookup_dir_names(&self, path: &str) -> Option<Vec<String>> {
        let mut dir = self.root;
        for comp in components(path) {
            let e = self
                .read_dir(dir)
                .ok()?
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(&comp) && e.is_dir)?;
            dir = *e.extents.first()?;
        }
        let mut names: Vec<String> = self
            .read_dir(dir)
            .ok()?
            .into_iter()
            .map(|e| {
                if e.is_dir {
                    format!("{}/", e.name)
                } else {
                    e.name
                }
            })
            .collect();
        names.sort();
        Some(names)
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// `KERNEL.;1` → `KERNEL`, `INITRD.IMG;1` → `INITRD.IMG`.
fn strip_version(name: &str) -> String {
    let base = name.split(';').next().unwrap_or(name);
    base.strip_suffix('.').unwrap_or(base).to_string()
}

impl Iso {
    /// The regular file at `path` (symlinks followed); a directory there is an error naming
    /// what the image holds, like a missing file.
    pub fn file(&self, path: &str) -> Result<Entry, IsoError> {
        let e = self.lookup(path)?;
        if e.is_dir {
            return Err(self.not_found(path));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_suffixes_are_stripped() {
        assert_eq!(strip_version("KERNEL.;1"), "KERNEL");
        assert_eq!(strip_version("ROOTFS.SQUASHFS;1"), "ROOTFS.SQUASHFS");
        assert_eq!(strip_version("plain"), "plain");
    }

    #[test]
    fn not_an_iso_and_truncated() {
        let dir = testkit::tempdir("iso-unit");
        let p = dir.join("zeros.iso");
        std::fs::write(&p, vec![0u8; 40 * 2048]).unwrap();
        assert!(matches!(Iso::open(&p), Err(IsoError::NotIso { .. })));
        let p = dir.join("short.iso");
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        assert!(matches!(Iso::open(&p), Err(IsoError::NotIso { .. })));
        let e = Iso::open(&dir.join("missing.iso"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.iso"), "{e}");
    }

    #[test]
    fn hostile_directory_records_are_errors() {
        // A PVD whose root directory points past the end of the file.
        let dir = testkit::tempdir("iso-hostile");
        let mut img = vec![0u8; 20 * 2048];
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[156] = 34;
        pvd[158..162].copy_from_slice(&1000u32.to_le_bytes());
        pvd[166..170].copy_from_slice(&2048u32.to_le_bytes());
        img[17 * 2048] = 255;
        img[17 * 2048 + 1..17 * 2048 + 6].copy_from_slice(b"CD001");
        let p = dir.join("hostile.iso");
        std::fs::write(&p, &img).unwrap();
        assert!(matches!(Iso::open(&p), Err(IsoError::Truncated { .. })));
        // Root inside the file but full of garbage record lengths.
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[158..162].copy_from_slice(&18u32.to_le_bytes());
        img[18 * 2048] = 20; // shorter than any record
        std::fs::write(&p, &img).unwrap();
        let iso = Iso::open(&p).unwrap();
        assert!(matches!(
            iso.lookup("/boot/kernel"),
            Err(IsoError::Malformed { .. })
        ));
    }
}
