//! Kairos release ISOs on GitHub: which file a set of release keys names, and where it lives.
//!
//! The file name changed twice over Kairos's history, keyed on `release_version`:
//! before v2.4.0 `<variant>-<flavor>-<artifact_version>` (variant `standard` written `kairos`),
//! before v2.4.2 `kairos-<variant>-<flavor>-<platform>-generic-<artifact_version>`, since then
//! `kairos-<flavor>-<flavor_release>-<variant>-<platform>-generic-<artifact_version>`.

/// The release keys of the default command (`--set release_version=…` and friends).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseKeys {
    pub repository: String,
    pub release_version: String,
    pub artifact_version: String,
    pub flavor: String,
    pub flavor_release: String,
    /// Empty means `standard` when `artifact_version` mentions k3s, else `core`.
    pub variant: String,
    /// Empty means `amd64`.
    pub platform: String,
    /// Empty means `generic`.
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release key {0} is empty; set it (e.g. --set {0}=…) or use container_image instead")]
    Missing(&'static str),
}

/// `(major, minor, patch, is_release)`: a pre-release sorts before its release, as in semver.
fn version(v: &str) -> Option<(u64, u64, u64, bool)> {
    let v = v.trim().trim_start_matches('v');
    let (core, pre) = match v.split_once(['-', '+']) {
        Some((c, rest)) => (c, !v[c.len()..].starts_with('+') && !rest.is_empty()),
        None => (v, false),
    };
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some((major, minor, patch, !pre))
}

/// Whether `v` is below `major.minor.patch`. An unreadable version counts as old, as AuroraBoot
/// treats it.
fn below(v: &str, major: u64, minor: u64, patch: u64) -> bool {
    version(v).is_none_or(|x| x < (major, minor, patch, true))
}

impl ReleaseKeys {
    fn require(&self) -> Result<(), ReleaseError> {
        for (key, value) in [
            ("repository", &self.repository),
            ("release_version", &self.release_version),
            ("artifact_version", &self.artifact_version),
            ("flavor", &self.flavor),
        ] {
            if value.is_empty() {
                return Err(ReleaseError::Missing(key));
            }
        }
        if !below(&self.release_version, 2, 4, 2) && self.flavor_release.is_empty() {
            return Err(ReleaseError::Missing("flavor_release"));
        }
        Ok(())
    }

    /// The ISO's file name without `.iso`.
    pub fn file_stem(&self) -> Result<String, ReleaseError> {
        self.require()?;
        let variant = match self.variant.as_str() {
            "" if self.artifact_version.contains("k3s") => "standard",
            "" => "core",
            v => v,
        };
        let platform = if self.platform.is_empty() {
            "amd64"
        } else {
            &self.platform
        };
        let (flavor, av) = (&self.flavor, &self.artifact_version);
        let model = if self.model.is_empty() {
            "generic"
        } else {
            &self.model
        };
        Ok(if below(&self.release_version, 2, 4, 0) {
            let v = if variant == "standard" {
                "kairos"
            } else {
                variant
            };
            format!("{v}-{flavor}-{av}")
        } else if below(&self.release_version, 2, 4, 2) {
            format!("kairos-{variant}-{flavor}-{platform}-{model}-{av}")
        } else {
            format!(
                "kairos-{flavor}-{}-{variant}-{platform}-{model}-{av}",
                self.flavor_release
            )
        })
    }

    /// `BASE/<repository>/releases/download/<release_version>/<name>.iso`; BASE is
    /// `https://github.com` unless overridden (`release_base_url`).
    pub fn iso_url(&self, base: Option<&str>) -> Result<String, ReleaseError> {
        let base = base.unwrap_or("https://github.com").trim_end_matches('/');
        Ok(format!(
            "{base}/{}/releases/download/{}/{}.iso",
            self.repository.trim_matches('/'),
            self.release_version,
            self.file_stem()?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(release: &str, artifact: &str) -> ReleaseKeys {
        ReleaseKeys {
            repository: "kairos-io/kairos".into(),
            release_version: release.into(),
            artifact_version: artifact.into(),
            flavor: "ubuntu".into(),
            flavor_release: "24.04".into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_the_release_version() {
        assert_eq!(
            keys("v2.3.1", "v2.3.1").file_stem().unwrap(),
            "core-ubuntu-v2.3.1"
        );
        assert_eq!(
            keys("v2.3.1", "v2.3.1-k3sv1.26.4+k3s1")
                .file_stem()
                .unwrap(),
            "kairos-ubuntu-v2.3.1-k3sv1.26.4+k3s1"
        );
        assert_eq!(
            keys("v2.4.1", "v2.4.1-k3sv1.27.3+k3s1")
                .file_stem()
                .unwrap(),
            "kairos-standard-ubuntu-amd64-generic-v2.4.1-k3sv1.27.3+k3s1"
        );
        assert_eq!(
            keys("v3.6.0", "v3.6.0-k3sv1.33.5+k3s1")
                .file_stem()
                .unwrap(),
            "kairos-ubuntu-24.04-standard-amd64-generic-v3.6.0-k3sv1.33.5+k3s1"
        );
        let mut k = keys("v3.7.2", "v3.7.2");
        k.platform = "arm64".into();
        assert_eq!(
            k.file_stem().unwrap(),
            "kairos-ubuntu-24.04-core-arm64-generic-v3.7.2"
        );
        k.variant = "standard".into();
        assert_eq!(
            k.iso_url(None).unwrap(),
            "https://github.com/kairos-io/kairos/releases/download/v3.7.2/kairos-ubuntu-24.04-standard-arm64-generic-v3.7.2.iso"
        );
        assert_eq!(
            k.iso_url(Some("http://127.0.0.1:9000/")).unwrap(),
            "http://127.0.0.1:9000/kairos-io/kairos/releases/download/v3.7.2/kairos-ubuntu-24.04-standard-arm64-generic-v3.7.2.iso"
        );
    }

    #[test]
    fn version_edges() {
        // Pre-releases come before their release; an unprefixed version reads the same.
        assert_eq!(
            keys("v2.4.0-rc1", "x").file_stem().unwrap(),
            "core-ubuntu-x"
        );
        assert_eq!(
            keys("2.4.0", "x").file_stem().unwrap(),
            "kairos-core-ubuntu-amd64-generic-x"
        );
        assert_eq!(
            keys("v2.4.2", "x").file_stem().unwrap(),
            "kairos-ubuntu-24.04-core-amd64-generic-x"
        );
        assert_eq!(
            keys("v10.0", "x").file_stem().unwrap(),
            "kairos-ubuntu-24.04-core-amd64-generic-x"
        );
        assert_eq!(keys("latest", "x").file_stem().unwrap(), "core-ubuntu-x");
    }

    #[test]
    fn missing_keys_are_named() {
        let mut k = keys("v3.0.0", "v3.0.0");
        k.flavor_release.clear();
        assert_eq!(k.file_stem(), Err(ReleaseError::Missing("flavor_release")));
        assert!(k
            .file_stem()
            .unwrap_err()
            .to_string()
            .contains("--set flavor_release="));
        let mut k = keys("v3.0.0", "v3.0.0");
        k.repository.clear();
        assert_eq!(k.iso_url(None), Err(ReleaseError::Missing("repository")));
    }
}
