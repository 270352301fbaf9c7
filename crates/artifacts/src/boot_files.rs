//! Which kernel and initrd of an image boot: the pair is chosen from `/boot` (or, for images
//! that keep the kernel beside its modules, `/usr/lib/modules/VERSION`), version-aware, so that
//! the kernel gets an initrd built for it. Symlinks resolve inside the image.

use crate::rootfs::{display, Kind, Tree};

/// Why an image has no bootable pair; each carries what `/boot` holds, for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootFilesError {
    #[error("no kernel (vmlinuz*, Image*, …) in /boot, nor a vmlinuz with an initramfs.img in /usr/lib/modules/VERSION; {listing}")]
    NoKernel { listing: String },
    #[error("no initrd (initrd*, initramfs*) in /boot; {listing}")]
    NoInitrd { listing: String },
    /// The pick is a directory or device, not a file (a symlink in `/boot` led there).
    #[error("{name} is not a file")]
    NotAFile { name: String },
}

/// Splits a name into runs of digits and non-digits and compares digit runs by value, so
/// `vmlinuz-6.1.0-10` sorts after `vmlinuz-6.1.0-9`.
pub(crate) fn version_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    fn runs(s: &[u8]) -> Vec<(bool, &[u8])> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=s.len() {
            if i == s.len() || s[i].is_ascii_digit() != s[start].is_ascii_digit() {
                out.push((s[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for ((da, xa), (db, xb)) in ra.iter().zip(rb.iter()) {
        let o = if *da && *db {
            let (ta, tb) = (trim_zeros(xa), trim_zeros(xb));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if o.is_ne() {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let i = d.iter().position(|&b| b != b'0').unwrap_or(d.len());
    &d[i..]
}

/// How a `/boot` name ranks before its version is compared: backups (`vmlinuz.old`,
/// `initrd.img.bak`, `…~`) last, then names without a version (`vmlinuz`, usually a link to one
/// that has it), then versioned names.
fn boot_rank(version: &[u8]) -> u8 {
    let backup = version.ends_with(b".old")
        || version.ends_with(b".bak")
        || version.ends_with(b"~")
        || version.ends_with(b".dpkg-old");
    if backup {
        0
    } else if version.iter().any(u8::is_ascii_digit) {
        2
    } else {
        1
    }
}

/// The kernel and initrd chosen from `/boot`.
#[derive(Debug, Clone)]
pub struct BootPick {
    pub kernel_name: String,
    pub kernel: usize,
    pub initrd_name: String,
    pub initrd: usize,
}

const KERNEL_PREFIXES: [&str; 5] = ["vmlinuz", "Image", "zImage", "uImage", "image"];
const INITRD_PREFIXES: [&str; 2] = ["initrd", "initramfs"];

/// The version part of a boot file name: what follows the prefix.
fn version_of<'a>(name: &'a [u8], prefixes: &[&str]) -> Option<&'a [u8]> {
    prefixes
        .iter()
        .find_map(|p| name.strip_prefix(p.as_bytes()))
}

impl Tree {
    /// Picks the kernel and initrd from `/boot`, as a pair that boots:
    /// 1. the newest kernel (version-aware) that has an initrd of its own version
    ///    (`initrd.img-V`, `initramfs-V.img`, `initrd-V`);
    /// 2. else, with an unversioned initrd (Kairos builds exactly one, `/boot/initrd`, for the
    ///    kernel `/boot/vmlinuz` points at), the kernel the unversioned kernel name resolves
    ///    to, or the newest;
    /// 3. else the newest kernel and the newest initrd.
    ///
    /// Backups (`.old`, `.bak`, `~`) never win. Symlinks resolve inside the image. The error
    /// lists what `/boot` holds.
    pub fn boot_files(&self) -> Result<BootPick, BootFilesError> {
        let listing = || -> String {
            let names: Vec<String> = self
                .resolve(b"/boot", true)
                .and_then(|b| self.children(b))
                .map(|c| c.keys().map(|k| display(k)).collect())
                .unwrap_or_default();
            if names.is_empty() {
                "/boot is missing or empty".into()
            } else {
                format!("/boot holds: {}", names.join(", "))
            }
        };
        let boot = self.resolve(b"/boot", true).and_then(|b| self.children(b));
        let candidates = |prefixes: &[&str]| -> Vec<(Vec<u8>, usize)> {
            let mut v: Vec<(Vec<u8>, usize)> = boot
                .into_iter()
                .flatten()
                .filter(|(n, _)| version_of(n, prefixes).is_some())
                .filter_map(|(n, _)| {
                    Some((n.clone(), self.file_at(&[b"/boot/", &n[..]].concat())?))
                })
                .collect();
            v.sort_by(|a, b| {
                let (va, vb) = (
                    version_of(&a.0, prefixes).unwrap_or_default(),
                    version_of(&b.0, prefixes).unwrap_or_default(),
                );
                boot_rank(va)
                    .cmp(&boot_rank(vb))
                    .then_with(|| version_cmp(va, vb))
            });
            v
        };
        let kernels = candidates(&KERNEL_PREFIXES);
        let initrds = candidates(&INITRD_PREFIXES);
        let Some(newest) = kernels.last().cloned() else {
            return self
                .modules_pair()
                .ok_or_else(|| BootFilesError::NoKernel { listing: listing() });
        };
        let Some(newest_initrd) = initrds.last().cloned() else {
            return Err(BootFilesError::NoInitrd { listing: listing() });
        };
        let version = |name: &[u8], prefixes: &[&str]| -> Vec<u8> {
            let v = version_of(name, prefixes).unwrap_or_default();
            let v = v.strip_prefix(b".img").unwrap_or(v);
            let v = v.strip_prefix(b"-").unwrap_or(v);
            v.strip_suffix(b".img").unwrap_or(v).to_vec()
        };
        let own_initrd = |k: &(Vec<u8>, usize)| {
            let kv = version(&k.0, &KERNEL_PREFIXES);
            if kv.is_empty() || boot_rank(&kv) == 0 {
                return None;
            }
            initrds
                .iter()
                .rev()
                .find(|i| version(&i.0, &INITRD_PREFIXES) == kv)
                .map(|i| (k.clone(), i.clone()))
        };
        let unversioned = |list: &[(Vec<u8>, usize)], prefixes: &[&str]| {
            list.iter()
                .find(|(n, _)| boot_rank(version_of(n, prefixes).unwrap_or_default()) == 1)
                .cloned()
        };
        let ((kname, kernel), (iname, initrd)) = kernels
            .iter()
            .rev()
            .find_map(own_initrd)
            .or_else(|| {
                let i = unversioned(&initrds, &INITRD_PREFIXES)?;
                // The kernel the image names without a version, reported by its own name.
                let k = unversioned(&kernels, &KERNEL_PREFIXES)
                    .and_then(|(_, id)| kernels.iter().rev().find(|k| k.1 == id).cloned())
                    .unwrap_or_else(|| newest.clone());
                Some((k, i))
            })
            .unwrap_or((newest, newest_initrd));
        Ok(BootPick {
            kernel_name: display(&kname),
            kernel,
            initrd_name: display(&iname),
            initrd,
        })
    }

    /// The regular file at `path`, symlinks followed inside the image.
    pub(crate) fn file_at(&self, path: &[u8]) -> Option<usize> {
        let id = self.resolve(path, true)?;
        matches!(self.inodes[id].kind, Kind::File(_)).then_some(id)
    }

    /// Images that keep the kernel beside its modules and nothing in `/boot` (bootc, Fedora
    /// CoreOS): `/usr/lib/modules/VERSION/vmlinuz` and `initramfs.img`, newest version first.
    fn modules_pair(&self) -> Option<BootPick> {
        let dir = self.resolve(b"/usr/lib/modules", true)?;
        let mut versions: Vec<&Vec<u8>> = self.children(dir)?.keys().collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        versions.into_iter().rev().find_map(|v| {
            let file = |name: &str| {
                let path = [b"/usr/lib/modules/", &v[..], b"/", name.as_bytes()].concat();
                Some((display(&path), self.file_at(&path)?))
            };
            let ((kernel_name, kernel), (initrd_name, initrd)) =
                (file("vmlinuz")?, file("initramfs.img")?);
            Some(BootPick {
                kernel_name,
                kernel,
                initrd_name,
                initrd,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::{FileData, Meta};
    use std::cmp::Ordering;
    use std::collections::BTreeMap;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            version_cmp(b"-6.1.0-10-amd64", b"-6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(version_cmp(b"-5.15.0", b"-6.1.0"), Ordering::Less);
        assert_eq!(version_cmp(b"", b"-6.1.0"), Ordering::Less);
        assert_eq!(version_cmp(b"-6.1.01", b"-6.1.1"), Ordering::Equal);
    }

    /// `/boot` as real images lay it out; each picks the pair that boots.
    #[test]
    fn boot_pairs_of_real_layouts() {
        let pick = |entries: &[(&str, Option<&str>)]| -> (String, String) {
            let mut t = Tree::new();
            for (name, target) in entries {
                let path = format!("boot/{name}");
                let kind = match target {
                    Some(to) => Kind::Symlink(to.as_bytes().to_vec()),
                    None => Kind::File(FileData::default()),
                };
                t.insert(path.as_bytes(), Meta::default(), kind).unwrap();
            }
            let p = t.boot_files().unwrap();
            (p.kernel_name, p.initrd_name)
        };
        let names = |k: &str, i: &str| (k.to_string(), i.to_string());
        // Kairos (kairos-init removes every initrd, then `dracut -f /boot/initrd KVER`).
        assert_eq!(
            pick(&[
                ("vmlinuz", Some("vmlinuz-6.8.0-49-generic")),
                ("vmlinuz-6.8.0-49-generic", None),
                ("config-6.8.0-49-generic", None),
                ("System.map-6.8.0-49-generic", None),
                ("initrd", None),
            ]),
            names("vmlinuz-6.8.0-49-generic", "initrd")
        );
        // Kairos with a second, newer kernel installed: /boot/initrd was built for the kernel
        // /boot/vmlinuz points at, so that is the pair (the newer kernel has no initrd).
        assert_eq!(
            pick(&[
                ("vmlinuz", Some("vmlinuz-6.8.0-49-generic")),
                ("vmlinuz-6.8.0-49-generic", None),
                ("vmlinuz-6.11.0-9-generic", None),
                ("initrd", None),
            ]),
            names("vmlinuz-6.8.0-49-generic", "initrd")
        );
        // A newer kernel whose initrd was never generated loses to an older complete pair.
        assert_eq!(
            pick(&[
                ("vmlinuz-6.1.0-9-amd64", None),
                ("vmlinuz-6.1.0-10-amd64", None),
                ("initrd.img-6.1.0-9-amd64", None),
            ]),
            names("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64")
        );
        // Arch: the fallback initramfs is not the kernel's own.
        assert_eq!(
            pick(&[
                ("vmlinuz-linux", None),
                ("initramfs-linux-fallback.img", None),
                ("initramfs-linux.img", None),
            ]),
            names("vmlinuz-linux", "initramfs-linux.img")
        );
        // Debian with two kernels and initramfs-tools' symlinks.
        assert_eq!(
            pick(&[
                ("vmlinuz", Some("vmlinuz-6.1.0-10-amd64")),
                ("vmlinuz.old", Some("vmlinuz-6.1.0-9-amd64")),
                ("initrd.img", Some("initrd.img-6.1.0-10-amd64")),
                ("initrd.img.old", Some("initrd.img-6.1.0-9-amd64")),
                ("vmlinuz-6.1.0-9-amd64", None),
                ("vmlinuz-6.1.0-10-amd64", None),
                ("initrd.img-6.1.0-9-amd64", None),
                ("initrd.img-6.1.0-10-amd64", None),
            ]),
            names("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64")
        );
        // Fedora, with the rescue pair that must not win.
        assert_eq!(
            pick(&[
                ("vmlinuz-0-rescue-4f1c", None),
                ("initramfs-0-rescue-4f1c.img", None),
                ("vmlinuz-6.5.6-300.fc39.x86_64", None),
                ("initramfs-6.5.6-300.fc39.x86_64.img", None),
            ]),
            names(
                "vmlinuz-6.5.6-300.fc39.x86_64",
                "initramfs-6.5.6-300.fc39.x86_64.img"
            )
        );
        // bootc / Fedora CoreOS: nothing in /boot, the kernel beside its modules.
        let mut t = Tree::new();
        for (path, kind) in [
            ("usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz", true),
            ("usr/lib/modules/6.5.6-300.fc39.x86_64/initramfs.img", true),
            ("usr/lib/modules/6.10.1-200.fc40.x86_64/vmlinuz", true),
            ("usr/lib/modules/6.10.1-200.fc40.x86_64/initramfs.img", true),
            ("usr/lib/modules/6.11.0-1.fc41.x86_64/vmlinuz", true),
            ("boot", false),
        ] {
            let k = if kind {
                Kind::File(FileData::default())
            } else {
                Kind::Dir(BTreeMap::new())
            };
            t.insert(path.as_bytes(), Meta::default(), k).unwrap();
        }
        let p = t.boot_files().unwrap();
        assert_eq!(
            (p.kernel_name.as_str(), p.initrd_name.as_str()),
            (
                "/usr/lib/modules/6.10.1-200.fc40.x86_64/vmlinuz",
                "/usr/lib/modules/6.10.1-200.fc40.x86_64/initramfs.img"
            ),
            "the newest version that has both files"
        );
        // Alpine: `vmlinuz-lts` and `initramfs-lts`, no version numbers at all.
        assert_eq!(
            pick(&[("vmlinuz-lts", None), ("initramfs-lts", None)]),
            names("vmlinuz-lts", "initramfs-lts")
        );
    }

    #[test]
    fn backups_and_unversioned_names_lose() {
        let mut names: Vec<&[u8]> =
            vec![b".old", b"-6.8.0-45", b"", b"-6.8.0-52", b"-6.8.0-52.bak"];
        names.sort_by(|a, b| {
            boot_rank(a)
                .cmp(&boot_rank(b))
                .then_with(|| version_cmp(a, b))
        });
        assert_eq!(names.last().unwrap(), b"-6.8.0-52");
        assert!(
            names[..2].iter().all(|n| boot_rank(n) == 0),
            "backups rank lowest"
        );
        assert_eq!(names[2], b"", "then the unversioned name");
    }

    #[test]
    fn a_missing_half_is_named_with_what_boot_holds() {
        let mut t = Tree::new();
        assert_eq!(
            t.boot_files().err(),
            Some(BootFilesError::NoKernel {
                listing: "/boot is missing or empty".into()
            })
        );
        let file = || Kind::File(FileData::default());
        t.insert(b"boot/vmlinuz-6.1.0-9", Meta::default(), file())
            .unwrap();
        t.insert(b"boot/config-6.1.0-9", Meta::default(), file())
            .unwrap();
        let e = t.boot_files().err().unwrap();
        assert!(matches!(e, BootFilesError::NoInitrd { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("/boot holds: config-6.1.0-9, vmlinuz-6.1.0-9"),
            "{e}"
        );
    }
}
