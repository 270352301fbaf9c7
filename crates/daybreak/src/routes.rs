//! Every HTTP route of Daybreak, matched in one place. The boot port serves the iPXE script
//! (`/_/ipxe`, `/boot.ipxe`: the [`pxe::routes`] the DHCP answers point at), GRUB's
//! per-machine configuration, pixiecore's `/_/file` and `/_/booting`, the iPXE binaries for UEFI
//! HTTP Boot, a netboot ISO, the files the [`Booter`] serves and the personal URLs it hands out
//! ([`crate::tokens`]); nothing else (the status page, `/api/machines` and `/metrics` are
//! on the admin listener, [`crate::admin`]). The artifact file server (`listen_addr`) is the other surface: the boot files for people to
//! fetch, never the cloud-config.
//!
//! For a script or a GRUB configuration the router names the machine (the MAC the request
//! gives, unless its address is known to hold another), records the step, asks the booter and
//! renders its [`crate::decision::Decision`].

use std::path::Path;
use std::sync::Arc;

use http::{loggable, query_param, Body, Reply, Request, Router};
use pxe::{routes, Mac, Machine};

use crate::decision::{Ask, Booter, Personal};
use crate::events::{Hub, Step};
use crate::identity::Vouch;
use crate::plan::{BootFile, Plan};

pub use crate::render::GRUB;

/// ISOs made, by the base they chain (one per address of this server that clients reach).
static ISOS: std::sync::Mutex<Vec<(String, bytes::Bytes)>> = std::sync::Mutex::new(Vec::new());
/// ISOs kept; past this, the oldest is made again when asked.
const MAX_ISOS: usize = 16;

/// The netboot ISO for this server, as the client reached it: it chains this server's script.
/// Made once per address, then served from memory (a flood of requests is not a flood of
/// ISO builds).
pub fn iso_reply(base: &str) -> Reply {
    let mut isos = ISOS.lock().unwrap_or_else(|e| e.into_inner());
    let iso = match isos.iter().find(|(b, _)| b == base) {
        Some((_, iso)) => iso.clone(),
        None => {
            let iso = bytes::Bytes::from(crate::ipxe_iso::build(&crate::ipxe_iso::Script::Chain(
                base.to_string(),
            )));
            if isos.len() >= MAX_ISOS {
                isos.remove(0);
            }
            isos.push((base.to_string(), iso.clone()));
            iso
        }
    };
    Reply::memory("ipxe.iso", "application/octet-stream", iso)
}

/// An iPXE binary for UEFI HTTP Boot, which takes the image type from Content-Type first.
pub fn binary_reply(binaries: &tftp::Files, bin: &str) -> Reply {
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

/// The boot port's router.
pub struct BootRoutes {
    pub booter: Arc<dyn Booter>,
    pub http: pxe::HttpAddress,
    /// iPXE binaries by name, for UEFI HTTP Boot (`/ipxe/NAME`).
    pub binaries: Arc<tftp::Files>,
    pub hub: Arc<Hub>,
    /// Whether iPXE's syslog lines are received ([`crate::ipxe_says`]): scripts then set
    /// `syslog` to this server.
    pub syslog: bool,
}

impl BootRoutes {
    /// The machine a request names by MAC, and whether the request may speak for it
    /// ([`crate::identity`]); the step goes to the machine only when it may.
    fn named(&self, req: &Request<'_>, mac: Option<Mac>, step: Step) -> Option<(Mac, bool)> {
        let named = mac.map(|m| (m, self.hub.vouch(req.peer, m) == Vouch::Vouched));
        let mac = named.and_then(|(m, vouched)| vouched.then_some(m));
        self.hub.emit(Some(req.peer), mac, step);
        named
    }

    fn script(&self, req: &Request<'_>) -> Reply {
        let named = query_param(req.query, "mac");
        let mac = named.as_deref().and_then(|m| m.parse::<Mac>().ok());
        let arch = query_param(req.query, "arch");
        tracing::info!(
            client = %req.peer.ip(),
            mac = %match (mac, named.as_deref()) {
                (Some(m), _) => m.to_string(),
                (None, Some(text)) => loggable(text).into_owned(),
                (None, None) => "-".into(),
            },
            arch = %loggable(arch.as_deref().unwrap_or("-")),
            "boot script"
        );
        let named = self.named(req, mac, Step::Script);
        let machine = named.map(|(mac, vouched)| Machine {
            mac,
            uuid: None,
            // The script URL's `arch=` is the machine's option 93: believed only from it.
            arch: arch
                .filter(|_| vouched)
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(pxe::Arch::from_code)
                .and_then(|(a, _)| pxe::CpuArch::of(a)),
        });
        let base = self.http.base(req.local);
        let decision = self.booter.decide(&Ask {
            machine,
            vouched: named.is_some_and(|(_, v)| v),
            peer: req.peer,
            base: &base,
        });
        let again = match machine {
            Some(m) => format!("{base}{}?mac={}", routes::SCRIPT, m.mac),
            None => format!("{base}{}", routes::SCRIPT),
        };
        // iPXE's syslog setting takes an IPv4 address: the one it reached us at.
        let syslog = match (self.syslog, self.http.advertise, req.local) {
            (false, _, _) => None,
            (true, Some(a), _) => Some(a),
            (true, None, std::net::IpAddr::V4(a)) => Some(a),
            (true, None, std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped(),
        };
        match crate::render::ipxe(&decision, &again, syslog) {
            Some(script) => {
                Reply::memory("_script", "text/plain; charset=utf-8", script.into_bytes())
            }
            None => Reply::NotFound,
        }
    }

    fn grub(&self, req: &Request<'_>, mac: Mac) -> Reply {
        tracing::info!(client = %req.peer.ip(), mac = %mac, "GRUB configuration");
        let named = self.named(req, Some(mac), Step::Script);
        let base = crate::render::grub_base(self.http);
        let decision = self.booter.decide(&Ask {
            machine: named.map(|(m, _)| Machine::new(m)),
            vouched: named.is_some_and(|(_, v)| v),
            peer: req.peer,
            base: &base,
        });
        let cfg = crate::render::grub(&decision, self.http);
        Reply::memory("_grub", "text/plain; charset=utf-8", cfg.into_bytes())
    }

    fn booting(&self, req: &Request<'_>) -> Reply {
        let mac = query_param(req.query, "mac");
        if let Some(step) = query_param(req.query, "failed") {
            return self.script_failed(req, mac.as_deref(), &step);
        }
        self.named(
            req,
            mac.as_deref().and_then(|m| m.parse().ok()),
            Step::Booting,
        );
        tracing::info!(
            client = %req.peer.ip(),
            mac = %loggable(mac.as_deref().unwrap_or("-")),
            "booting kernel"
        );
        Reply::memory("_booting", "text/plain", &b""[..])
    }

    /// A step of the boot script failed (`failed=STEP&errno=N`): the machine's failure, in
    /// iPXE's words, when the request may speak for it.
    fn script_failed(&self, req: &Request<'_>, mac: Option<&str>, step: &str) -> Reply {
        let (Some(stage), Some(mac)) = (
            crate::ipxe_says::script_stage(step),
            mac.and_then(|m| m.parse::<Mac>().ok()),
        ) else {
            return Reply::NotFound;
        };
        if self.hub.vouch(req.peer, mac) != Vouch::Vouched {
            return Reply::NotFound;
        }
        let errno = query_param(req.query, "errno");
        let what = errno
            .as_deref()
            .and_then(crate::ipxe_says::parse_errno)
            .map_or_else(|| "no error number".into(), crate::ipxe_says::error_text);
        let why = match stage {
            "booting" => format!("iPXE could not start the kernel: {what}"),
            file => format!("iPXE could not download the {file}: {what}"),
        };
        tracing::warn!(client = %req.peer.ip(), mac = %mac, stage, "the boot script failed: {why}");
        self.hub.emit(
            Some(req.peer),
            Some(mac),
            Step::Failed {
                stage,
                kind: "ipxe",
                why,
            },
        );
        Reply::memory("_booting", "text/plain", &b""[..])
    }
}

impl Router for BootRoutes {
    fn shown(&self, path: &str) -> String {
        crate::tokens::shown(path)
    }

    fn route(&self, req: &Request<'_>) -> Reply {
        let path = req.path;
        match path {
            routes::SCRIPT | routes::SCRIPT_ALIAS => return self.script(req),
            routes::BOOTING => return self.booting(req),
            routes::IPXE_ISO => return iso_reply(&self.http.base(req.local)),
            crate::report_initrd::PATH => {
                return Reply::memory(
                    crate::report_initrd::NAME,
                    "application/octet-stream",
                    crate::report_initrd::cpio(),
                )
            }
            routes::FILE => {
                return query_param(req.query, "name")
                    .and_then(|n| self.booter.file(&n))
                    .unwrap_or(Reply::NotFound)
            }
            _ => {}
        }
        if let Some(mac) = path
            .strip_prefix(GRUB)
            .and_then(|r| r.strip_suffix(".cfg"))
            .and_then(|m| m.parse::<Mac>().ok())
        {
            return self.grub(req, mac);
        }
        if let Some((kind, mac, tag)) = crate::tokens::parse(path, req.query) {
            // Only the machine itself, whatever the URL holds.
            if self.hub.vouch(req.peer, mac) != Vouch::Vouched {
                return Reply::NotFound;
            }
            let p = Personal {
                kind,
                mac,
                tag: &tag,
                query: req.query,
            };
            return self
                .booter
                .personal(&p, req.peer, &self.http.base(req.local))
                .unwrap_or(Reply::NotFound);
        }
        if let Some(bin) = path.strip_prefix(routes::BINARIES) {
            return binary_reply(&self.binaries, bin);
        }
        self.booter
            .file(path.strip_prefix('/').unwrap_or(path))
            .unwrap_or(Reply::NotFound)
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
            .map_or(Reply::NotFound, BootFile::reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{input, tmpdir, tmpfile, BASE};
    use std::net::{IpAddr, Ipv4Addr};

    /// The boot port's router over `plan` alone, with `binaries`.
    pub(crate) fn routes(plan: Plan, binaries: tftp::Files) -> BootRoutes {
        BootRoutes {
            booter: Arc::new(plan),
            http: pxe::HttpAddress::default(),
            binaries: Arc::new(binaries),
            hub: Arc::new(Hub::default()),
            syslog: false,
        }
    }

    #[test]
    fn routes_only_registered_names() {
        let d = tmpdir("routes");
        let mut bins = tftp::Files::new();
        bins.insert("ipxe.efi".to_string(), bytes::Bytes::from_static(b"EFI"));
        let plan = Plan::new(&input(&d)).unwrap();
        let secret = format!("/{}", plan.cloud_config.as_ref().unwrap().name);
        let r = routes(plan, bins);
        let peer = "10.0.0.9:1234".parse().unwrap();
        let local = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let get = |path: &str, query: &str| {
            r.route(&Request {
                path,
                query,
                local,
                peer,
                host: None,
                authorization: None,
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
        let plan = Plan::new(&i).unwrap();
        let line = plan.cmdline(BASE);
        let r = routes(plan, tftp::Files::new());
        assert!(
            line.starts_with("x=http://10.0.0.1:8090/a%2Bb_c.img "),
            "{line}"
        );
        // What a client sends for that URL is routed to the file: `+` in a path is a plus.
        let decoded = http::percent_decode("/a%2Bb_c.img").unwrap();
        let raw_plus = http::percent_decode("/a+b_c.img").unwrap();
        for path in [decoded.as_str(), raw_plus.as_str()] {
            let got = r.route(&Request {
                path,
                query: "",
                local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                peer: "10.0.0.9:1".parse().unwrap(),
                host: None,
                authorization: None,
            });
            assert!(matches!(got, Reply::Resource { .. }), "{path}");
        }
    }

    /// Item: `/ipxe.iso` was built for every request.
    #[test]
    fn the_netboot_iso_is_made_once_per_address() {
        let body = |r: Reply| match r {
            Reply::Resource {
                body: Body::Memory(b),
                ..
            } => b,
            other => panic!("{other:?}"),
        };
        let a = body(iso_reply("http://10.0.0.1:8090"));
        let b = body(iso_reply("http://10.0.0.1:8090"));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a second build");
        let other = body(iso_reply("http://10.0.0.2:8090"));
        assert_ne!(a, other);
    }
}
