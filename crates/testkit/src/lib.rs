//! Test data shared by Daybreak's test suites: deterministic bytes, and tar layers built entry by
//! entry, hostile entries included (tar's own builder refuses those, as it should).

use std::path::{Path, PathBuf};

pub use tar::EntryType;

mod etcd;
pub use etcd::{free_port, Etcd};

/// Writes `root` into the ISO 9660 image `out` with xorriso (volume id `KAIROS`), with
/// `flags` choosing the naming schemes (`-R` Rock Ridge, `-J` Joliet, none for plain names).
pub fn mkisofs(root: &Path, out: &Path, flags: &[&str]) {
    let o = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "KAIROS"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(root)
        .output()
        .expect("xorriso runs");
    assert!(
        o.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The one way a test says it cannot do its work here, `why` naming what is missing. Under
/// `CI=true` that is a failure: CI never passes by skipping. Elsewhere the test returns early
/// (the caller returns when this gives false) after a `SKIP` line on the real stderr (seen under
/// a plain `cargo test`, whose capture it passes by), and the skip is
/// appended to the file `DAYBREAK_SKIP_LOG` names, which `scripts/test.sh` counts and lists at the
/// end of the run.
pub fn skip(why: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run here ({why}) and CI must not skip: scripts/install-deps.sh installs what the tests need, and CI runs as root");
    }
    // To the real stderr, past the test harness's capture: a plain `cargo test` shows it too.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    }
    if let Some(log) = std::env::var_os("DAYBREAK_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

/// Whether a test needing root (when `root`) and `tools` can run; see [`skip`] for when not.
pub fn require(root: bool, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !have(t))
        .map(|t| t.to_string())
        .collect();
    if root && !is_root() {
        missing.push("root".into());
    }
    missing.is_empty() || skip(&format!("needs {}", missing.join(", ")))
}

/// The directory every temporary directory of this test process lives in:
/// `daybreak-tests-PID` in the system temp dir, removed with everything in it when the process
/// exits (set `DAYBREAK_KEEP_TMP` to keep it for a look after a failure).
pub fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove_root() {
        if let Some(r) = ROOT.get() {
            if std::env::var_os("DAYBREAK_KEEP_TMP").is_none() {
                let _ = std::fs::remove_dir_all(r);
            }
        }
    }
    ROOT.get_or_init(|| {
        let r = std::env::temp_dir().join(format!("daybreak-tests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).unwrap();
        // SAFETY: registers a plain function to run at exit; it only removes a directory.
        unsafe { libc::atexit(remove_root) };
        r
    })
}

/// A fresh, empty directory for one test: `TAG` under [`root`] (gone when the process exits).
pub fn tempdir(tag: &str) -> PathBuf {
    let d = root().join(tag);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic, incompressible-looking bytes (xorshift), the same for the same seed.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A tar layer built entry by entry.
pub struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    pub fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(ty: EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }
    pub fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut h = Self::header(EntryType::Directory, mode, 0, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn file(mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> Layer {
        let mut h = Self::header(EntryType::Regular, mode, uid, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn link(mut self, ty: EntryType, path: &str, target: &str) -> Layer {
        let mut h = Self::header(ty, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn special(mut self, ty: EntryType, path: &str, major: u32, minor: u32) -> Layer {
        let mut h = Self::header(ty, 0o640, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    /// An entry whose names go into the header as given, unchecked (tar's builder refuses
    /// the hostile ones, as it should).
    pub fn raw(mut self, ty: EntryType, path: &str, target: &str, data: &[u8]) -> Layer {
        let mut h = Self::header(ty, 0o644, 0, data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    /// A file preceded by a PAX header carrying extended attributes.
    pub fn file_xattrs(mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Layer {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.0
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(path, 0o755, 0, data)
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

impl Default for Layer {
    fn default() -> Layer {
        Layer::new()
    }
}

#[cfg(test)]
mod tests {
    /// The test harness captures what tests print; a skip must get past that, or a plain
    /// `cargo test` passes quietly without doing the work.
    #[test]
    fn a_skip_is_seen_under_a_plain_cargo_test() {
        if std::env::var_os("TESTKIT_SKIP_PROBE").is_some() {
            assert!(!super::skip("a probe of the skip line"));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["tests::a_skip_is_seen_under_a_plain_cargo_test", "--exact"])
            .env("TESTKIT_SKIP_PROBE", "1")
            .env_remove("CI")
            .env_remove("DAYBREAK_SKIP_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("SKIP") && err.contains("a probe of the skip line"),
            "{err}"
        );
    }

    #[test]
    fn temporary_directories_live_under_one_root() {
        let d = super::tempdir("probe");
        assert!(d.starts_with(super::root()) && d.is_dir());
        assert!(super::root()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&std::process::id().to_string()));
    }
}
