//! A machine's own cloud-config: its profile's template (or the command's) rendered with the
//! command's values, its profile's, and Daybreak's own for it (`.daybreak.installed_url`,
//! `.daybreak.mac`, `.daybreak.hostname`, `.daybreak.profile`).

use http::Reply;
use pxe::Mac;
use serde_json::{json, Map, Value};

use super::profiles::Profile;
use super::Fleet;
use crate::decision::PersonalKind;
use crate::events::Step;

impl Fleet {
    /// The template values for one machine.
    fn data_for(
        &self,
        mac: Mac,
        profile: Option<&Profile>,
        base: &str,
        nonce: &str,
    ) -> Map<String, Value> {
        let mut data = self.data.clone();
        if let Some(p) = profile {
            for (k, v) in &p.vars {
                data.insert(k.clone(), v.clone());
            }
            if let Some(h) = &p.hostname {
                data.entry("hostname")
                    .or_insert_with(|| Value::String(h.clone()));
            }
        }
        data.insert(
            "daybreak".into(),
            json!({
                "installed_url": self.tokens.url(base, PersonalKind::Installed, mac, nonce),
                "report_url": self.tokens.url(base, PersonalKind::Report, mac, nonce),
                "mac": mac.to_string(),
                "hostname": profile.and_then(|p| p.hostname.clone()).unwrap_or_default(),
                "profile": profile.map(|p| p.name.clone()).unwrap_or_default(),
            }),
        );
        data
    }

    /// The cloud-config machine `mac` fetches at its own URL: from `profile`, the one its
    /// boot's decision chose; its install callback keyed by that boot's `nonce`.
    pub(super) fn config(
        &self,
        mac: Mac,
        base: &str,
        profile: Option<&Profile>,
        nonce: &str,
    ) -> Reply {
        let template = profile
            .and_then(|p| p.cloud_config.as_deref())
            .or(self.template.as_deref());
        self.emit(None, mac, Step::Config);
        match template {
            Some(t) => {
                match crate::template::render(t, &self.data_for(mac, profile, base, nonce)) {
                    Ok((text, _)) => Reply::memory(
                        "cloud-config",
                        "text/plain; charset=utf-8",
                        text.into_bytes(),
                    ),
                    Err(e) => {
                        tracing::error!(mac = %mac, "cloud-config template: {e:#}");
                        Reply::NotFound
                    }
                }
            }
            None => self
                .main
                .cloud_config_file()
                .map_or(Reply::NotFound, crate::plan::BootFile::reply),
        }
    }
}
