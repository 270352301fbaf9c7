//! The iPXE and GRUB writers with hostile values (a kernel command line from a machines file,
//! an API answer, a reason): a script has exactly the boot's commands, or it is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

use daybreak::decision::{BootSpec, Decision};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = BootSpec {
        kernel: "http://10.0.0.1:8090/kernel".into(),
        initrds: vec![("initrd0".into(), "http://10.0.0.1:8090/initrd0".into())],
        cmdline: text.into(),
        ready: None,
    };
    let script =
        daybreak::render::ipxe(&Decision::Boot(spec.clone()), "http://10.0.0.1/again", None)
            .expect("a boot is answered");
    let lines: Vec<&str> = script.lines().collect();
    if daybreak::render::check_ipxe(text).is_ok() {
        // The header, kernel, initrd and boot: nothing more, and the boot line is one command.
        assert_eq!(lines.len(), 4, "{script:?}");
        assert!(lines[3].starts_with("boot kernel initrd=initrd0"));
        for w in lines[3].split_whitespace() {
            assert!(
                !matches!(w, "||" | "&&" | ";") && !w.starts_with('#'),
                "{script:?}"
            );
        }
        assert!(!lines[3].contains("${"));
    } else {
        assert!(!script.contains("kernel --name"), "{script:?}");
    }
    // A known machine's script (its failed steps reported) with iPXE's syslog asked: the same
    // boot line, then only the report's fixed lines.
    let known = BootSpec {
        ready: Some("http://10.0.0.1:8090/_/booting?mac=52:54:00:00:00:01".into()),
        ..spec.clone()
    };
    let syslog = Some(std::net::Ipv4Addr::new(10, 0, 0, 1));
    let s = daybreak::render::ipxe(&Decision::Boot(known), "http://10.0.0.1/again", syslog)
        .expect("a boot is answered");
    if daybreak::render::check_ipxe(text).is_ok() {
        assert_eq!(s.lines().count(), 14, "{s:?}");
        let boot: Vec<&str> = s.lines().filter(|l| l.starts_with("boot ")).collect();
        assert_eq!(boot.len(), 1, "{s:?}");
        let line = boot[0]
            .strip_suffix(" || goto daybreak_failed")
            .expect("a failed boot is reported");
        for w in line.split_whitespace() {
            assert!(
                !matches!(w, "||" | "&&" | ";") && !w.starts_with('#'),
                "{s:?}"
            );
        }
        assert!(!line.contains("${"));
    }
    // A reason shown to a machine is one echo line.
    for d in [
        Decision::Refuse(text.into()),
        Decision::Wait {
            why: text.into(),
            retry: std::time::Duration::from_secs(5),
        },
    ] {
        let s = daybreak::render::ipxe(&d, "http://10.0.0.1/again", None).unwrap();
        let echo = s.lines().nth(1).unwrap();
        assert!(echo.starts_with("echo Daybreak: "));
        for w in echo.split_whitespace() {
            assert!(
                !matches!(w, "||" | "&&" | ";") && !w.starts_with('#'),
                "{s:?}"
            );
        }
        assert!(!echo.contains("${"));
    }
    // GRUB: one linux line (or none, refused), every argument quoted.
    let http = pxe::HttpAddress::default();
    let mut g = spec;
    g.kernel = "http://${net_default_server}:8090/kernel".into();
    g.initrds[0].1 = "http://${net_default_server}:8090/initrd0".into();
    let cfg = daybreak::render::grub(&Decision::Boot(g), http);
    let linux: Vec<&str> = cfg
        .lines()
        .filter(|l| l.trim_start().starts_with("linux"))
        .collect();
    assert!(linux.len() <= 1, "{cfg:?}");
    if let Some(l) = linux.first() {
        let args = l.trim_start().splitn(3, ' ').nth(2).unwrap_or("");
        for a in args.split(' ').filter(|a| !a.is_empty()) {
            assert!(
                a.starts_with('"') && a.ends_with('"') && a.len() >= 2,
                "{cfg:?}"
            );
        }
    }
});
