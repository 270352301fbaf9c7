//! The HTTP routes of the boot plan: the iPXE script, the files, pixiecore's `/_/ipxe`,
//! `/_/file` and `/_/booting` paths (the constants in [`pxe::routes`], the same the DHCP answers
//! point at), the iPXE binaries for UEFI HTTP Boot; and the artifact file server's routes, which
//! never include the cloud-config.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pxe::routes;

use crate::boot::{BootFile, Plan};
use http::{loggable, query_param, Body, Reply, Request, Router};

/// The netboot ISO for this server, as the client reached it: it chains this server's script.
pub fn iso_reply(base: &str) -> Reply {
    let iso = crate::ipxe_iso::build(&crate::ipxe_iso::Script::Chain(base.to_string()));
    Reply::memory("ipxe.iso", "application/octet-stream", iso)
}

/// An iPXE binary for UEFI HTTP Boot, which takes the image type from Content-Type first.
pub fn binary_reply(binaries: &HashMap<String, Arc<[u8]>>, bin: &str) -> Reply {
    match binaries.get(bin) {
        Some(b) => Reply::memory(
            &format!("ipxe/{bin}"),
            if bin.ends_with(".efi") {
                "application/efi"
            } else {
                "application/octet-stream"
            },
            b.clone(),
        ),
        None => Reply::NotFound,
    }
}

/// A registered file as a response: served under its name, or as "cloud-config" in logs when
/// its name is the secret.
pub(crate) fn file_reply(f: &BootFile) -> Reply {
    let content_type = if f.name.ends_with(".yaml") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Reply::Resource {
        name: if f.secret {
            "cloud-config".into()
        } else {
            f.name.clone()
        },
        content_type,
        body: f.body.clone(),
    }
}

/// What the artifact file server (`listen_addr`, :8080) hands out: the kernel, the initrds, the
/// squashfs and the ISO they came from, for people who want to fetch them. Never the
/// cloud-config, which holds passwords and tokens: it is only on the netboot port.
pub struct ArtifactFiles {
    files: Vec<BootFile>,
}

impl ArtifactFiles {
    /// The plan's boot files, and the ISO they are read from (its path and the name users know
    /// it by) when there is one.
    pub fn new(plan: &Plan, iso: Option<(&Path, &str)>) -> anyhow::Result<ArtifactFiles> {
        let mut files: Vec<BootFile> = std::iter::once(&plan.kernel)
            .chain(&plan.initrds)
            .chain(&plan.rootfs)
            .cloned()
            .collect();
        if let Some((iso, name)) = iso {
            // The plan's files are ranges of the ISO, so the plan holds it open already: the
            // whole ISO is served from that descriptor, not opened again by path.
            let held = files
                .iter()
                .filter(|f| f.path.as_deref() == Some(iso))
                .find_map(|f| match &f.body {
                    Body::File(h) | Body::Ranges(h, _) => Some(h.clone()),
                    Body::Memory(_) => None,
                });
            let name = artifacts::safe_name(name);
            files.push(match held {
                Some(h) => BootFile {
                    size: h.metadata()?.len(),
                    name,
                    path: Some(iso.to_path_buf()),
                    body: Body::File(h),
                    secret: false,
                },
                None => BootFile::open(&name, iso, "ISO")?,
            });
        }
        Ok(ArtifactFiles { files })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.name.as_str())
    }
}

impl Router for ArtifactFiles {
    fn route(&self, req: &Request<'_>) -> Reply {
        if req.path == "/" {
            let list: String = self
                .files
                .iter()
                .map(|f| format!("{}\t{}\n", f.name, f.size))
                .collect();
            return Reply::memory("_index", "text/plain; charset=utf-8", list.into_bytes());
        }
        let name = req.path.strip_prefix('/').unwrap_or(req.path);
        self.files
            .iter()
            .find(|f| f.name == name)
            .map_or(Reply::NotFound, file_reply)
    }
}

impl Router for Plan {
    fn route(&self, req: &Request<'_>) -> Reply {
        let path = req.path;
        match path {
            routes::SCRIPT | routes::SCRIPT_ALIAS => {
                let named = query_param(req.query, "mac");
                let mac = named.as_deref().and_then(|m| m.parse::<pxe::Mac>().ok());
                if let Some(hub) = &self.events {
                    // A MAC the address is known not to hold is not this machine's: the event
                    // goes to the machine that holds it.
                    let claimed = mac.filter(|m| hub.claim(req.peer.ip(), *m));
                    hub.emit(Some(req.peer), claimed, crate::events::Step::Script);
                }
                let base = self.base_url(req.local);
                tracing::info!(
                    client = %req.peer.ip(),
                    mac = %match (mac, named.as_deref()) {
                        (Some(m), _) => m.to_string(),
                        (None, Some(text)) => loggable(text).into_owned(),
                        (None, None) => "-".into(),
                    },
                    arch = %loggable(query_param(req.query, "arch").as_deref().unwrap_or("-")),
                    "boot script"
                );
                let script = match &self.fleet {
                    Some(f) => {
                        let arch = query_param(req.query, "arch");
                        f.note_arch(mac, arch.as_deref());
                        f.script(self, &base, mac, req.peer.ip())
                    }
                    None => self.script(&base, mac),
                };
                Reply::memory("_script", "text/plain; charset=utf-8", script.into_bytes())
            }
            routes::IPXE_ISO => iso_reply(&self.base_url(req.local)),
            routes::BOOTING => {
                if let Some(hub) = &self.events {
                    let mac = query_param(req.query, "mac").and_then(|m| m.parse().ok());
                    hub.emit(Some(req.peer), mac, crate::events::Step::Booting);
                }
                tracing::info!(
                    client = %req.peer.ip(),
                    mac = %loggable(query_param(req.query, "mac").as_deref().unwrap_or("-")),
                    "booting kernel"
                );
                Reply::memory("_booting", "text/plain", &b""[..])
            }
            routes::FILE => match query_param(req.query, "name") {
                Some(n) => self
                    .files()
                    .find(|f| f.name == n)
                    .map_or(Reply::NotFound, file_reply),
                None => Reply::NotFound,
            },
            _ => {
                if let Some(reply) = self.fleet.as_ref().and_then(|f| f.route(self, req)) {
                    return reply;
                }
                if let Some(bin) = path.strip_prefix(routes::BINARIES) {
                    return binary_reply(&self.binaries, bin);
                }
                let name = path.strip_prefix('/').unwrap_or(path);
                self.files()
                    .find(|f| f.name == name)
                    .map_or(Reply::NotFound, file_reply)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::{input, tmpdir, tmpfile, BASE};
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn routes_only_registered_names() {
        let d = tmpdir("routes");
        let mut bins = HashMap::new();
        bins.insert("ipxe.efi".to_string(), Arc::from(&b"EFI"[..]));
        let plan = Plan::new(&input(&d), bins).unwrap();
        let secret = format!("/{}", plan.cloud_config.as_ref().unwrap().name);
        let peer = "10.0.0.9:1234".parse().unwrap();
        let local = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let get = |path: &str, query: &str| {
            plan.route(&Request {
                path,
                query,
                local,
                peer,
            })
        };
        for (path, query) in [
            ("/kernel", ""),
            ("/initrd0", ""),
            ("/rootfs.squashfs", ""),
            (secret.as_str(), ""),
            ("/_/file", "name=kernel"),
            ("/_/ipxe", "arch=0&mac=52:54:00:00:00:01"),
            ("/boot.ipxe", ""),
            ("/_/booting", "mac=x"),
            ("/ipxe/ipxe.efi", ""),
        ] {
            assert!(
                matches!(get(path, query), Reply::Resource { .. }),
                "{path}?{query}"
            );
        }
        // UEFI HTTP Boot takes the image type from Content-Type.
        assert!(matches!(
            get("/ipxe/ipxe.efi", ""),
            Reply::Resource {
                content_type: "application/efi",
                ..
            }
        ));
        for (path, query) in [
            ("/", ""),
            ("/../kernel", ""),
            ("/etc/passwd", ""),
            ("/_/file", "name=../kernel"),
            ("/_/file", ""),
            // The cloud-config only under its secret per-run name.
            ("/cloud-config.yaml", ""),
            ("/_/file", "name=cloud-config.yaml"),
            ("/config.yaml", ""),
            ("/ipxe/../kernel", ""),
            ("/vmlinuz", ""),
        ] {
            assert!(
                matches!(get(path, query), Reply::NotFound),
                "{path}?{query}"
            );
        }
    }

    #[test]
    fn template_file_names_with_plus_and_spaces_round_trip() {
        let d = tmpdir("plus");
        let extra = tmpfile(&d, "a+b c.img");
        let mut i = input(&d);
        i.cmdline = Some(format!("x={{{{ ID \"{}\" }}}}", extra.display()));
        let plan = Plan::new(&i, HashMap::new()).unwrap();
        let line = plan.cmdline(BASE);
        assert!(
            line.starts_with("x=http://10.0.0.1:8090/a%2Bb_c.img "),
            "{line}"
        );
        // What a client sends for that URL is routed to the file: `+` in a path is a plus.
        let decoded = http::percent_decode("/a%2Bb_c.img").unwrap();
        let raw_plus = http::percent_decode("/a+b_c.img").unwrap();
        for path in [decoded.as_str(), raw_plus.as_str()] {
            let r = plan.route(&Request {
                path,
                query: "",
                local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                peer: "10.0.0.9:1".parse().unwrap(),
            });
            assert!(matches!(r, Reply::Resource { .. }), "{path}");
        }
    }
}
