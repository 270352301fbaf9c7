use super::*;
use crate::admin::Machines as _;
use crate::plan::tests::{input, tmpdir, BASE};
use crate::plan::CloudConfig;
use http::{Body, Request, Router as _};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

const A: &str = "52:54:00:00:00:0a";
const B: &str = "52:54:00:00:00:0b";
const C: &str = "52:54:00:00:00:0c";

const MACHINES: &str = "\
- mac: 52:54:00:00:00:0a
  hostname: cp-1
  role: master
  action: live
  cloud_config: |
    #cloud-config
    hostname: [[[ .hostname ]]]
    role: [[[ .role ]]]
    token: [[[ .token ]]]
- mac: 52:54:00:00:00:0b
  hostname: worker-1
  netboot:
    cmdline: quiet console=ttyS0
- mac: 52:54:00:00:00:0c
  action: ignore
";

const TEMPLATE: &str = "#cloud-config\nhostname: [[[ .hostname ]]]\ninstalled: [[[ .daybreak.installed_url ]]]\nreport: [[[ .daybreak.report_url ]]]\n";

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn images() -> crate::sources::ImageOptions {
    crate::sources::ImageOptions {
        arch: "amd64".into(),
        insecure: false,
        compression: artifacts::Compression::Gzip,
        peers: None,
    }
}

struct Setup {
    routes: crate::routes::BootRoutes,
    fleet: Arc<Fleet>,
    dir: PathBuf,
}

fn setup(tag: &str, machines: &str) -> Setup {
    setup_with(tag, machines, None)
}

/// As [`setup`], the plan and the fleet reporting to `hub`.
fn setup_with(tag: &str, machines: &str, hub: Option<Arc<crate::events::Hub>>) -> Setup {
    setup_in(tag, machines, hub, Default::default())
}

/// As [`setup_with`], machines remembered in `store`.
fn setup_in(
    tag: &str,
    machines: &str,
    hub: Option<Arc<crate::events::Hub>>,
    store: crate::store::StoreConfig,
) -> Setup {
    let dir = tmpdir(&format!("fleet-{tag}"));
    let _ = std::fs::remove_dir_all(dir.join("state"));
    std::fs::write(dir.join("machines.yaml"), machines).unwrap();
    let mut i = input(&dir);
    i.cloud_config = Some(CloudConfig::Text(bytes::Bytes::from_static(b"global")));
    open_in(dir, Arc::new(Plan::new(&i).unwrap()), hub, store)
}

/// A server on `dir`'s state directory and machines file, with `plan`, reporting to `hub`.
fn open(dir: PathBuf, plan: Arc<Plan>, hub: Option<Arc<crate::events::Hub>>) -> Setup {
    open_in(dir, plan, hub, Default::default())
}

/// As [`open`], machines remembered in `store`.
fn open_in(
    dir: PathBuf,
    plan: Arc<Plan>,
    hub: Option<Arc<crate::events::Hub>>,
    store: crate::store::StoreConfig,
) -> Setup {
    let mut data = Map::new();
    data.insert("token".into(), Value::String("K10-secret".into()));
    let fleet = Fleet::open(
        &FleetOptions {
            state_dir: dir.join("state"),
            store,
            opened: None,
            machines: Some(MachinesSource::File(dir.join("machines.yaml"))),
            template: Some(TEMPLATE.into()),
            data,
            images: images(),
            source: None,
            stall_after: None,
            report_initrd: Default::default(),
        },
        plan,
        None,
        hub.clone(),
    )
    .unwrap();
    let routes = crate::routes::BootRoutes {
        booter: fleet.clone(),
        http: pxe::HttpAddress::default(),
        binaries: Arc::default(),
        hub: hub.unwrap_or_else(|| Arc::new(crate::events::Hub::with_link(|_| None))),
        syslog: false,
    };
    Setup { routes, fleet, dir }
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, n), 40000))
}

fn get(s: &Setup, path_query: &str, from: SocketAddr) -> Option<(u16, String)> {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let req = Request {
        path,
        query,
        local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        peer: from,
        host: None,
        authorization: None,
    };
    let mut reply = s.routes.route(&req);
    if let Reply::Later(make) = reply {
        reply = make();
    }
    match reply {
        Reply::Resource {
            body: Body::Memory(b),
            ..
        } => Some((200, String::from_utf8_lossy(&b).into_owned())),
        Reply::Resource {
            body: Body::File(f),
            ..
        } => {
            use std::os::unix::fs::FileExt;
            let mut b = vec![0u8; f.metadata().unwrap().len() as usize];
            f.read_exact_at(&mut b, 0).unwrap();
            Some((200, String::from_utf8_lossy(&b).into_owned()))
        }
        Reply::Resource { .. } => Some((200, "<ranges>".into())),
        Reply::Events(_) => Some((200, "<events>".into())),
        Reply::NotFound => Some((404, String::new())),
        Reply::Refused { code, .. } => Some((code, String::new())),
        Reply::Proxy { .. } | Reply::Later(_) => None,
    }
}

/// The machine's DHCP bound `mac` to `from`'s address (as ProxyDHCP sees it).
fn bind(s: &Setup, mac: &str, from: u8) {
    s.routes.hub.learn(peer(from).ip(), self::mac(mac), false);
    s.routes
        .hub
        .identities
        .bind(self::mac(mac), peer(from).ip(), std::time::Instant::now());
}

/// `path_query` from the admin listener of `s`'s fleet.
fn admin_get(s: &Setup, path_query: &str) -> (u16, String) {
    let admin = crate::admin::AdminRoutes {
        token: None,
        hosts: Vec::new(),
        metrics: None,
        machines: Some(s.fleet.clone()),
        live: Default::default(),
    };
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let req = Request {
        path,
        query,
        local: IpAddr::V4(Ipv4Addr::LOCALHOST),
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        host: Some("127.0.0.1:8091"),
        authorization: None,
    };
    match admin.route(&req) {
        Reply::Resource {
            body: Body::Memory(b),
            ..
        } => (200, String::from_utf8_lossy(&b).into_owned()),
        Reply::NotFound => (404, String::new()),
        other => panic!("{other:?}"),
    }
}

/// Machine `mac` asks for its script from its address.
fn script(s: &Setup, mac: &str, from: u8) -> String {
    bind(s, mac, from);
    get(s, &format!("/_/ipxe?arch=0&mac={mac}"), peer(from))
        .unwrap()
        .1
}

fn config_url(script: &str) -> String {
    let at = script
        .find("config_url=")
        .expect("config_url in the script");
    let url = script[at + 11..].split_whitespace().next().unwrap();
    url.strip_prefix(BASE).unwrap().to_string()
}

/// B calls back at `path` that its install finished; returns once the store has it.
fn install(s: &Setup, path: &str) -> Mac {
    assert_eq!(get(s, path, peer(11)).unwrap().0, 200);
    let mac = mac(B);
    wait("the install record", || {
        s.fleet
            .store
            .cached(mac)
            .is_some_and(|v| v.record.installed_at.is_some())
    });
    mac
}

/// Waits up to 10 s (a loaded machine runs the builder thread late) for `f`.
fn wait<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what} did not happen within 10 s");
}

#[test]
fn each_machine_gets_its_profile_and_its_own_cloud_config() {
    let s = setup("profiles", MACHINES);
    let a = script(&s, A, 10);
    let b = script(&s, B, 11);
    // A: the default command line, its own config URL, distinct from B's.
    assert!(a.contains("rd.live.overlay.overlayfs"), "{a}");
    assert!(
        b.contains(
            "boot kernel initrd=initrd0 initrd=daybreak-report quiet console=ttyS0 root=live:"
        ),
        "{b}"
    );
    // Its initrd's stages go to its own report URL, through the report initrd's hooks.
    assert!(
        b.contains("initrd --name daybreak-report http://10.0.0.1:8090/_/report-initrd.cpio || goto daybreak_failed\n"),
        "{b}"
    );
    let report = b
        .split_whitespace()
        .find_map(|w| w.strip_prefix("daybreak.report=http://10.0.0.1:8090"))
        .unwrap_or_else(|| panic!("no report URL: {b}"));
    assert!(report.starts_with("/_/report/52540000000b-"), "{report}");
    let (code, cpio) = get(&s, "/_/report-initrd.cpio", peer(11)).unwrap();
    assert!(code == 200 && cpio.starts_with("070701"), "{cpio}");
    let (code, _) = get(&s, &format!("{report}?stage=root%20fetched"), peer(11)).unwrap();
    assert_eq!(code, 200);
    let (ca, cb) = (config_url(&a), config_url(&b));
    assert!(
        ca.starts_with("/_/config/52540000000a-") && ca != cb,
        "{ca} {cb}"
    );
    // Each config rendered from its template with its values.
    let (code, text) = get(&s, &ca, peer(10)).unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        text,
        "#cloud-config\nhostname: cp-1\nrole: master\ntoken: K10-secret\n"
    );
    let text = get(&s, &cb, peer(11)).unwrap().1;
    assert!(text.starts_with("#cloud-config\nhostname: worker-1\ninstalled: http://10.0.0.1:8090/_/installed/52540000000b-"), "{text}");
    // A wrong tag, another MAC's tag, or no tag: nothing.
    let forged = cb.replace("52540000000b", "52540000000a");
    for bad in [
        forged.as_str(),
        "/_/config/52540000000a.yaml",
        "/_/config/52540000000a-00.yaml",
    ] {
        assert_eq!(get(&s, bad, peer(10)).unwrap().0, 404, "{bad}");
    }
    // An ignored machine gets no DHCP answer, and no script: back to the firmware.
    let client = |mac: &str| pxe::Client {
        arch: pxe::Arch::Bios,
        arch_code: 0,
        firmware: pxe::Firmware::Pxe,
        mac: self::mac(mac),
        uuid: None,
    };
    assert!(!s.fleet.allow(&client(C).machine()));
    assert!(
        s.fleet.allow(&client(A).machine())
            && s.fleet.allow(&client("52:54:00:99:99:99").machine())
    );
    bind(&s, C, 12);
    let ignored = get(&s, &format!("/_/ipxe?arch=0&mac={C}"), peer(12)).unwrap();
    assert_eq!(ignored.0, 404);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_machine_that_installed_boots_from_disk_until_told_to_reinstall() {
    let s = setup("install", MACHINES);
    let b = script(&s, B, 11);
    assert!(b.contains("boot kernel"));
    let text = get(&s, &config_url(&b), peer(11)).unwrap().1;
    let installed = text
        .lines()
        .find_map(|l| l.strip_prefix("installed: "))
        .unwrap();
    let path = installed.strip_prefix(BASE).unwrap();
    // A forged callback changes nothing.
    let forged = format!("{}00", &path[..path.len() - 2]);
    assert_eq!(get(&s, &forged, peer(11)).unwrap().0, 404);
    let mac = install(&s, path);
    let local = script(&s, B, 11);
    assert!(
        local.contains("sanboot --no-describe --drive 0x80") && !local.contains("kernel"),
        "{local}"
    );
    // A live machine's callback is remembered, but it keeps booting the image.
    let a = script(&s, A, 10);
    let text = get(&s, &config_url(&a), peer(10)).unwrap().1;
    assert!(!text.contains("installed"));
    // `daybreak machines reinstall` in another process, then the server's poll.
    let other = crate::store::open(&Default::default(), &s.dir.join("state")).unwrap();
    crate::store::update(&*other, mac, &Change::Reinstall).unwrap();
    other.publish().unwrap();
    s.fleet.refresh();
    assert!(script(&s, B, 11).contains("boot kernel"));
    // The record survives a restart of the server; scripts within a minute are one boot
    // (written by the store's writer thread, in its own time).
    let on_disk = || {
        crate::store::open(&Default::default(), &s.dir.join("state"))
            .unwrap()
            .get(mac)
            .unwrap()
            .unwrap()
            .record
    };
    wait("the boot written", || on_disk().boots > 0);
    let again = on_disk();
    assert_eq!((again.boots, again.installed_at), (1, None));
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A forged DHCPREQUEST for a machine (its MAC with another address) puts it in doubt: an
/// installed machine still boots its disk, one that is not gets a wait, never the common boot
/// and its cloud-config, and nothing is recorded.
#[test]
fn a_forged_dhcprequest_never_turns_an_installed_machine_into_a_stranger() {
    let s = setup("forged-lease", MACHINES);
    let b = script(&s, B, 11);
    let text = get(&s, &config_url(&b), peer(11)).unwrap().1;
    let installed = text
        .lines()
        .find_map(|l| l.strip_prefix("installed: "))
        .unwrap();
    install(&s, installed.strip_prefix(BASE).unwrap());
    let boots = |mac| s.fleet.store.cached(self::mac(mac)).map(|v| v.record.boots);
    wait("B's boot recorded", || boots(B) == Some(1));
    let before = (boots(A), boots(B));
    // The attacker at .66 binds B's and A's MACs to its own address in their boots.
    bind(&s, A, 10);
    for m in [A, B] {
        s.routes
            .hub
            .identities
            .bind(mac(m), peer(66).ip(), std::time::Instant::now());
    }
    for from in [11, 66] {
        let got = get(&s, &format!("/_/ipxe?arch=0&mac={B}"), peer(from))
            .unwrap()
            .1;
        assert!(
            got.contains("sanboot") && !got.contains("kernel") && !got.contains("config"),
            "installed B from .{from}: its disk: {got}"
        );
    }
    for from in [10, 66] {
        let got = get(&s, &format!("/_/ipxe?arch=0&mac={A}"), peer(from))
            .unwrap()
            .1;
        assert!(
            got.contains("sleep") && !got.contains("kernel") && !got.contains("config"),
            "A from .{from}: a wait: {got}"
        );
        let grub = get(&s, &format!("/_/grub/{A}.cfg"), peer(from)).unwrap().1;
        assert!(!grub.contains("linux"), "{grub}");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        (boots(A), boots(B)),
        before,
        "nothing recorded for doubted requests"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn an_edited_machines_file_applies_at_the_next_boot_and_a_broken_edit_keeps_the_last_good() {
    let s = setup("edit", MACHINES);
    assert!(script(&s, A, 10).contains("rd.live.overlay.overlayfs"));
    let file = s.dir.join("machines.yaml");
    std::fs::write(
        &file,
        "- mac: 52:54:00:00:00:0a\n  netboot.cmdline: edited=1\n",
    )
    .unwrap();
    s.fleet.refresh();
    assert!(script(&s, A, 10).contains("initrd=initrd0 initrd=daybreak-report edited=1 root=live:"));
    std::fs::write(&file, "- mac: 52:54:00:00:00:0a\n  action: explode\n").unwrap();
    s.fleet.refresh();
    assert!(
        script(&s, A, 10).contains("edited=1"),
        "the last good version stays"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_request_naming_a_mac_its_address_is_not_bound_to_gets_nothing_of_that_machines_own() {
    let hub = Arc::new(crate::events::Hub::with_link(|_| None));
    let s = setup_with("claim", MACHINES, Some(hub.clone()));
    // The network's DHCP server gave 10.0.0.10 to A; B's DHCP bound B to 10.0.0.11.
    bind(&s, A, 10);
    bind(&s, B, 11);
    let stolen = get(&s, &format!("/_/ipxe?arch=0&mac={B}"), peer(10))
        .unwrap()
        .1;
    assert!(
        !stolen.contains("/_/config/") && !stolen.contains("kernel") && stolen.contains("sleep"),
        "a wait, nothing of B's: {stolen}"
    );
    let grub = get(&s, &format!("/_/grub/{B}.cfg"), peer(10)).unwrap().1;
    assert!(
        !grub.contains("/_/config/") && !grub.contains("linux"),
        "{grub}"
    );
    // The claim changed nothing: A holds its address and gets its own; B too.
    assert_eq!(hub.mac_of(peer(10).ip()), Some(mac(A)));
    assert!(script(&s, A, 10).contains("/_/config/52540000000a-"));
    assert!(script(&s, B, 11).contains("/_/config/52540000000b-"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn the_status_lists_phases_and_progress_but_never_a_secret() {
    let s = setup("status", MACHINES);
    let ev = |mac: &str, step: Step| BootEvent {
        at: SystemTime::now(),
        mac: Some(self::mac(mac)),
        peer: Some(peer(10)),
        step,
    };
    s.fleet.observe(&ev(
        A,
        Step::Offer {
            client: crate::events::tests::client(
                pxe::Arch::Bios,
                pxe::Firmware::Ipxe { http: true },
            ),
            loader: pxe::Loader::Script,
            target: "x".into(),
            port: pxe::Port::Dhcp,
        },
    ));
    let b = script(&s, B, 11);
    let cfg = config_url(&b);
    s.fleet.observe(&ev(
        B,
        Step::File {
            name: "rootfs.squashfs".into(),
            bytes: 5,
            ms: 1,
        },
    ));
    // The boot port does not list machines; the admin listener does, a page at a time.
    assert_eq!(get(&s, "/api/machines", peer(99)).unwrap().0, 404);
    let (_, json) = admin_get(&s, "/api/machines");
    let v: Value = serde_json::from_str(&json).unwrap();
    let paged: Value =
        serde_json::from_str(&admin_get(&s, "/api/machines?offset=1&limit=1").1).unwrap();
    assert_eq!(paged["total"], v["total"]);
    assert_eq!(paged["machines"].as_array().unwrap().len(), 1);
    assert_eq!(paged["machines"][0]["mac"], v["machines"][1]["mac"]);
    let list = v["machines"].as_array().unwrap();
    let find = |m: &str| list.iter().find(|x| x["mac"] == m).unwrap().clone();
    assert_eq!(find(A)["phase"], "offered");
    assert_eq!(find(A)["firmware"], "BIOS iPXE");
    assert_eq!(find(A)["path"], "iPXE: the boot script");
    assert_eq!(find(A)["hostname"], "cp-1");
    assert_eq!(find(B)["phase"], "rootfs");
    let size = s.fleet.main.rootfs.as_ref().unwrap().size;
    assert_eq!(
        find(B)["progress"],
        json!({"bytes": 5.min(size), "total": size})
    );
    let tag = cfg.rsplit('-').next().unwrap().trim_end_matches(".yaml");
    let one = admin_get(&s, &format!("/api/machines/{A}")).1;
    for text in [&json, &one] {
        assert!(
            !text.contains(tag) && !text.contains("installed_url") && !text.contains("K10"),
            "{text}"
        );
    }
    assert!(
        one.contains("DHCP offer to BIOS iPXE: iPXE: the boot script"),
        "{one}"
    );
    // A squashfs on its way moves the bar before the whole file's event.
    s.fleet.observe(&ev(
        B,
        Step::Sending {
            name: "rootfs.squashfs".into(),
            bytes: 3,
        },
    ));
    let one: Value = serde_json::from_slice(&s.fleet.show_json(mac(B)).unwrap()).unwrap();
    assert_eq!(one["progress"]["bytes"], (5 + 3).min(size));
    assert_eq!(admin_get(&s, "/api/machines/zz").0, 404);
    let page = admin_get(&s, "/").1;
    assert!(page.contains("/api/machines") && page.starts_with("<!doctype html>"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_profile_with_its_own_image_boots_it_once_built() {
    let d = tmpdir("image-files");
    std::fs::create_dir_all(d.join("own")).unwrap();
    for (f, body) in [
        ("vmlinuz", "own kernel"),
        ("initrd", "own initrd"),
        ("root.sqfs", "own root"),
    ] {
        std::fs::write(d.join("own").join(f), body).unwrap();
    }
    let s = setup(
        "image",
        &format!(
            "- mac: {A}\n  kernel: {0}/own/vmlinuz\n  initrd: {0}/own/initrd\n  rootfs: {0}/own/root.sqfs\n\
             - mac: {B}\n  kernel: /nonexistent/vmlinuz\n",
            d.display()
        ),
    );
    wait("the profile's image", || {
        script(&s, A, 10).contains("kernel --name kernel")
    });
    let a = script(&s, A, 10);
    let url = |what: &str| {
        a.split_whitespace()
            .map(|w| w.trim_start_matches("root=live:"))
            .find(|w| w.starts_with(BASE) && w.ends_with(what))
            .unwrap_or_else(|| panic!("no {what} URL in {a}"))
            .strip_prefix(BASE)
            .unwrap()
            .to_string()
    };
    for (what, body) in [
        ("-kernel", "own kernel"),
        ("-initrd0", "own initrd"),
        ("-rootfs.squashfs", "own root"),
    ] {
        assert_eq!(get(&s, &url(what), peer(10)).unwrap().1, body, "{what}");
    }
    assert!(a.contains("root=live:") && a.contains("/_/config/"), "{a}");
    // The command's own files stay what everyone else boots.
    assert!(script(&s, C, 12).contains(&format!(
        "kernel --name kernel {BASE}/kernel || goto daybreak_failed\n"
    )));
    // An image that cannot be opened: its machine is told why, and goes back to its firmware.
    wait("the failed image", || {
        script(&s, B, 11).contains("cannot be served")
    });
    let b = script(&s, B, 11);
    assert!(b.ends_with("(the server's log says why)\nexit\n"), "{b}");
    let _ = std::fs::remove_dir_all(&s.dir);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn grub_on_the_secure_boot_chain_reads_its_machines_own_configuration() {
    let s = setup("grub", MACHINES);
    let stub = crate::render::grub_stub(pxe::HttpAddress::default());
    assert!(
        stub.contains("configfile (http,${net_default_server}:8090)/_/grub/${net_default_mac}.cfg"),
        "{stub}"
    );
    bind(&s, B, 11);
    let b = get(&s, &format!("/_/grub/{B}.cfg"), peer(11)).unwrap().1;
    assert!(b.contains("linux (http,${net_default_server}:8090)/kernel \"quiet\" \"console=ttyS0\" \"root=live:http://${net_default_server}:8090/rootfs.squashfs\" \"config_url=http://${net_default_server}:8090/_/config/52540000000b-"), "{b}");
    // The config URL GRUB writes is the one the machine's tag opens.
    let cfg = b
        .split_whitespace()
        .find_map(|w| w.strip_prefix("\"config_url=http://${net_default_server}:8090"))
        .map(|w| w.trim_end_matches('"'))
        .unwrap();
    assert!(get(&s, cfg, peer(11))
        .unwrap()
        .1
        .contains("hostname: worker-1"));
    // Installed: back to the firmware, which boots the disk.
    let installed = get(&s, cfg, peer(11)).unwrap().1;
    let cb = installed
        .lines()
        .find_map(|l| l.strip_prefix("installed: "))
        .unwrap();
    install(&s, cb.strip_prefix(BASE).unwrap());
    let local = get(&s, &format!("/_/grub/{B}.cfg"), peer(11)).unwrap().1;
    assert!(
        local.ends_with("exit\n") && !local.contains("linux"),
        "{local}"
    );
    assert_eq!(get(&s, "/_/grub/nonsense.cfg", peer(11)).unwrap().0, 404);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn machines_boot_a_kernel_of_their_own_architecture_or_are_told_why_not() {
    let d = tmpdir("arch-kernel");
    // An arm64 kernel (its PE header says so) in a profile for arm64 machines.
    let mut arm = vec![0u8; 0x200];
    arm[..2].copy_from_slice(b"MZ");
    arm[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    arm[0x80..0x84].copy_from_slice(b"PE\0\0");
    arm[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
    std::fs::write(d.join("Image"), &arm).unwrap();
    let s = setup(
        "arch",
        &format!("- arch: arm64\n  kernel: {}\n", d.join("Image").display()),
    );
    // The command's kernel is taken to be x86-64 here.
    let fleet = Fleet::open(
        &FleetOptions {
            state_dir: s.dir.join("state"),
            store: Default::default(),
            opened: None,
            machines: Some(MachinesSource::File(s.dir.join("machines.yaml"))),
            template: None,
            data: Map::new(),
            images: images(),
            source: None,
            stall_after: None,
            report_initrd: Default::default(),
        },
        s.fleet.main.clone(),
        Some(pxe::CpuArch::Amd64),
        None,
    )
    .unwrap();
    assert!(fleet.may_serve(pxe::CpuArch::Arm64) && fleet.may_serve(pxe::CpuArch::Amd64));
    let ask = |mac: &str, arch: u16| {
        let arch = pxe::Arch::from_code(arch).and_then(|(a, _)| pxe::CpuArch::of(a));
        let d = fleet.decide(&Ask {
            machine: Some(pxe::Machine {
                mac: self::mac(mac),
                uuid: None,
                arch,
            }),
            vouched: true,
            peer: peer(20),
            base: BASE,
        });
        crate::render::ipxe(&d, "", None).unwrap_or_default()
    };
    wait("the arm64 image", || {
        ask(A, 11).contains("kernel --name kernel")
    });
    assert!(
        ask(A, 11).contains("-kernel || goto daybreak_failed\n"),
        "the arm64 machine boots the profile's kernel"
    );
    assert!(ask(B, 7).contains(&format!(
        "kernel --name kernel {BASE}/kernel || goto daybreak_failed\n"
    )));
    // Without that profile, an arm64 machine is told there is nothing for it.
    std::fs::write(s.dir.join("machines.yaml"), "- mac: 52:54:00:00:00:ff\n").unwrap();
    fleet.refresh();
    let none = ask(C, 11);
    assert!(
        none.contains("not booted: this server has no kernel for its architecture\nexit"),
        "{none}"
    );
    assert!(!fleet.may_serve(pxe::CpuArch::Arm64));
    let _ = std::fs::remove_dir_all(&s.dir);
    let _ = std::fs::remove_dir_all(&d);
}

/// The path of the install callback a machine's cloud-config names.
fn callback(config: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix("installed: "))
        .expect("an installed_url in the cloud-config")
        .strip_prefix(BASE)
        .unwrap()
        .to_string()
}

#[test]
fn a_boots_cloud_config_opens_three_times_and_its_install_callback_once() {
    let s = setup("grant-once", MACHINES);
    let url = config_url(&script(&s, B, 11));
    let mut text = String::new();
    for _ in 0..grants::CONFIG_FETCHES {
        let (code, t) = get(&s, &url, peer(11)).unwrap();
        assert_eq!(code, 200);
        text = t;
    }
    assert_eq!(get(&s, &url, peer(11)).unwrap().0, 404, "fetched enough");
    let cb = callback(&text);
    install(&s, &cb);
    assert_eq!(get(&s, &cb, peer(11)).unwrap().0, 404, "once");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn an_install_reported_failed_is_a_failure_and_never_installed() {
    let hub = Arc::new(crate::events::Hub::default());
    let s = setup_with("install-failed", MACHINES, Some(hub.clone()));
    let url = config_url(&script(&s, B, 11));
    let cb = callback(&get(&s, &url, peer(11)).unwrap().1);
    // From another host: nothing.
    assert_eq!(
        get(&s, &format!("{cb}?status=failed&reason=x"), peer(12))
            .unwrap()
            .0,
        404
    );
    let (code, body) = get(
        &s,
        &format!("{cb}?status=failed&reason=disk%20%2Fdev%2Fsda%20not%20found%0Aforged"),
        peer(11),
    )
    .unwrap();
    assert_eq!((code, body.as_str()), (200, "noted: not installed\n"));
    hub.drain(|e| s.fleet.observe(e));
    let (_, shown) = admin_get(&s, &format!("/api/machines/{B}"));
    assert!(
        shown.contains(r#""phase":"failed""#)
            && shown.contains(r#""stage":"install""#)
            && shown.contains(r#""kind":"install failed""#)
            && shown.contains("disk /dev/sda not found"),
        "{shown}"
    );
    // The reason is shown escaped: no line of its own.
    assert!(!shown.contains("\nforged"), "{shown}");
    assert!(s
        .fleet
        .store
        .cached(mac(B))
        .is_none_or(|v| v.record.installed_at.is_none()));
    // Its callback stays open: the retry that succeeds is installed.
    install(&s, &cb);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Item: stages the booted machine reports to its own URL (`[[[ .daybreak.report_url ]]]`):
/// each a line of its timeline, a failure when it says so, only from the machine itself and
/// only with its boot's tag.
#[test]
fn the_booted_system_reports_its_stages_to_its_own_url() {
    let hub = Arc::new(crate::events::Hub::default());
    let s = setup_with("report", MACHINES, Some(hub.clone()));
    let url = config_url(&script(&s, B, 11));
    let config = get(&s, &url, peer(11)).unwrap().1;
    let report = config
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("a report_url in the cloud-config")
        .strip_prefix(BASE)
        .unwrap()
        .to_string();
    assert!(report.starts_with("/_/report/52540000000b-"), "{report}");
    let said = |q: &str, from: u8| get(&s, &format!("{report}?{q}"), peer(from)).map(|r| r.0);
    assert_eq!(said("stage=network", 11), Some(200));
    assert_eq!(said("stage=boot", 12), Some(404), "from another host");
    // The same tag but its last digit.
    let last = if report.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}?stage=x", &report[..report.len() - 1]);
    assert_eq!(
        get(&s, &forged, peer(11)).map(|r| r.0),
        Some(404),
        "another tag"
    );
    assert_eq!(
        said(
            "stage=after-install&status=failed&reason=no%20disk%0Aforged",
            11
        ),
        Some(200)
    );
    hub.drain(|e| s.fleet.observe(e));
    let (_, shown) = admin_get(&s, &format!("/api/machines/{B}"));
    assert!(
        shown.contains("the booted system reported: network")
            && shown.contains(r#""phase":"failed""#)
            && shown.contains(r#""kind":"reported failure""#)
            && shown.contains("after-install: ")
            && shown.contains("no disk"),
        "{shown}"
    );
    assert!(!shown.contains("\nforged"), "{shown}");
    // Reported failed, never installed; the install callback still opens.
    install(&s, &callback(&config));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn the_next_boot_closes_the_last_boots_urls() {
    let s = setup("grant-next", MACHINES);
    let first = config_url(&script(&s, B, 11));
    let cb = callback(&get(&s, &first, peer(11)).unwrap().1);
    let second = config_url(&script(&s, B, 11));
    assert_ne!(first, second);
    assert_eq!(get(&s, &first, peer(11)).unwrap().0, 404);
    assert_eq!(get(&s, &cb, peer(11)).unwrap().0, 404);
    assert_eq!(get(&s, &second, peer(11)).unwrap().0, 200);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn reinstall_and_forget_take_back_a_boots_urls_and_a_restart_keeps_them() {
    let s = setup("grant-rotate", MACHINES);
    let granted = |m: &str| {
        s.fleet
            .store
            .cached(mac(m))
            .is_some_and(|v| v.record.grant.is_some())
    };
    let other = || crate::store::open(&Default::default(), &s.dir.join("state")).unwrap();
    // Reinstall in another process: the running server follows.
    let url = config_url(&script(&s, B, 11));
    wait("B's grant stored", || granted(B));
    s.fleet.refresh();
    crate::store::update(&*other(), mac(B), &Change::Reinstall).unwrap();
    other().publish().unwrap();
    s.fleet.refresh();
    assert_eq!(get(&s, &url, peer(11)).unwrap().0, 404, "reinstalled");
    // Forget.
    let url = config_url(&script(&s, A, 10));
    wait("A's grant stored", || granted(A));
    s.fleet.refresh();
    assert!(other().forget(mac(A)).unwrap());
    other().publish().unwrap();
    s.fleet.refresh();
    assert_eq!(get(&s, &url, peer(10)).unwrap().0, 404, "forgotten");
    // A restarted server opens the URLs of a boot it gave before.
    let nonce = || {
        s.fleet
            .store
            .cached(mac(B))
            .and_then(|v| v.record.grant)
            .map(|g| g.nonce)
    };
    let before = nonce();
    let url = config_url(&script(&s, B, 11));
    let cb = callback(&get(&s, &url, peer(11)).unwrap().1);
    wait("B's new grant stored", || {
        nonce().is_some() && nonce() != before
    });
    let restarted = setup_again(&s);
    assert_eq!(get(&restarted, &cb, peer(11)).unwrap().0, 200);
    assert_eq!(get(&restarted, &cb, peer(11)).unwrap().0, 404);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// The server of `s` started again on its state directory (its machines file as it is).
fn setup_again(s: &Setup) -> Setup {
    let again = open(s.dir.clone(), s.fleet.main.clone(), None);
    bind(&again, B, 11);
    bind(&again, A, 10);
    again
}

/// Item: the cloud-config is rendered from the profile its boot's script chose, whatever
/// changes before it is fetched (an edit of the machines file included).
#[test]
fn a_boots_cloud_config_comes_from_the_profile_its_script_chose() {
    let s = setup("grant-profile", MACHINES);
    let url = config_url(&script(&s, A, 10));
    std::fs::write(
        s.dir.join("machines.yaml"),
        MACHINES.replace("hostname: cp-1", "hostname: changed-meanwhile"),
    )
    .unwrap();
    // The watcher's poll, as the server runs it.
    std::thread::sleep(Duration::from_millis(1100));
    s.fleet.refresh();
    let text = get(&s, &url, peer(10)).unwrap().1;
    assert!(text.contains("hostname: cp-1"), "{text}");
    // The next boot gets the edited profile.
    let next = config_url(&script(&s, A, 10));
    assert!(get(&s, &next, peer(10))
        .unwrap()
        .1
        .contains("hostname: changed-meanwhile"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Item: one address adds at most [`NEW_PER_SOURCE`] machines to the store an hour (a flood of
/// made-up MACs from one host); past that its machines are still served, not remembered, and
/// their install callbacks are not answered as done; another address adds its own.
#[test]
fn one_address_adds_a_bounded_number_of_machines_to_the_store() {
    let s = setup("new-per-source", MACHINES);
    let remembered = || s.fleet.store.len();
    let before = remembered();
    let macs: Vec<String> = (0..NEW_PER_SOURCE + 8)
        .map(|i| format!("52:54:00:77:00:{i:02x}"))
        .collect();
    let mut last = String::new();
    for mac in &macs {
        last = script(&s, mac, 30);
        assert!(last.contains("boot kernel"), "{last}");
    }
    let want = before + NEW_PER_SOURCE as usize;
    wait(&format!("the first machines' records ({want})"), || {
        remembered() == want
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(remembered(), want, "no more from that address");
    // The last one, not remembered, calls back: not told its install is done.
    let cfg = config_url(&last);
    let (_, text) = get(&s, &cfg, peer(30)).unwrap();
    let done = text
        .lines()
        .find_map(|l| l.split("/_/installed/").nth(1))
        .map(|rest| format!("/_/installed/{}", rest.trim()))
        .unwrap_or_else(|| panic!("no install URL in {text}"));
    assert_eq!(get(&s, &done, peer(30)).unwrap().0, 404);
    assert!(s.fleet.store.cached(mac(&macs[macs.len() - 1])).is_none());
    script(&s, "52:54:00:77:01:00", 31);
    wait("another address's machine", || remembered() == want + 1);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Item: the install callback is the one write a machine waits for: answered only once
/// committed, 503 while etcd cannot commit it (so the machine's `curl --retry` tries again, its
/// callback still open), and never lost.
#[test]
fn an_install_callback_waits_for_etcd_answering_503_until_it_commits() {
    let Some(mut etcd) = testkit::Etcd::start("fleet-etcd-install") else {
        return;
    };
    let store = crate::store::StoreConfig {
        location: format!("etcd://{}/fleet", etcd.endpoint).parse().unwrap(),
        ..Default::default()
    };
    let s = setup_in("etcd-install", MACHINES, None, store.clone());
    let url = config_url(&script(&s, B, 11));
    let cb = callback(&get(&s, &url, peer(11)).unwrap().1);
    etcd.kill();
    for _ in 0..2 {
        assert_eq!(get(&s, &cb, peer(11)).unwrap().0, 503, "not committed");
    }
    assert!(s
        .fleet
        .store
        .cached(mac(B))
        .is_none_or(|v| v.record.installed_at.is_none()));
    etcd.restart();
    assert_eq!(get(&s, &cb, peer(11)).unwrap(), (200, "installed\n".into()));
    // Committed: another replica on the same store sends it to its disk.
    let other = crate::store::open(&store, &s.dir.join("other-state")).unwrap();
    assert!(other.cached(mac(B)).unwrap().record.installed_at.is_some());
    assert_eq!(get(&s, &cb, peer(11)).unwrap().0, 404, "once");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Item: any replica, the same answer: replicas whose stores hold the same records (and that
/// share the URL key) answer the same request with byte-identical iPXE scripts and GRUB
/// configurations, per-machine URLs included; a machine with no record yet too.
#[test]
fn replicas_with_the_same_records_answer_byte_identically() {
    let a = setup("same-a", MACHINES);
    // B has a record (one boot through replica A); A-the-machine has none.
    script(&a, B, 11);
    wait("B's record and grant", || {
        a.fleet
            .store
            .cached(mac(B))
            .is_some_and(|v| v.record.grant.is_some())
    });
    let replica = |tag: &str| {
        let dir = tmpdir(&format!("fleet-same-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&a.dir)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        open(dir, a.fleet.main.clone(), None)
    };
    let (x, y) = (replica("x"), replica("y"));
    for m in [B, A] {
        let (sx, sy) = (script(&x, m, 11), script(&y, m, 11));
        assert!(sx.contains("config_url="), "{sx}");
        assert_eq!(sx, sy, "the scripts of {m}");
    }
    let (x, y) = (replica("gx"), replica("gy"));
    bind(&x, B, 11);
    bind(&y, B, 11);
    let path = format!("/_/grub/{B}.cfg");
    let (gx, gy) = (
        get(&x, &path, peer(11)).unwrap().1,
        get(&y, &path, peer(11)).unwrap().1,
    );
    assert!(gx.contains("linux"), "{gx}");
    assert_eq!(gx, gy);
    for s in [a, x, y] {
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}
