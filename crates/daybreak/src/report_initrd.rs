//! The report initrd: a small cpio archive appended to a dracut initrd (as Kairos's is) that adds
//! dracut hooks telling this server how far the initrd got: "initrd network up" (the
//! `initqueue/online` hook), "root fetched" (`pre-mount`: livenet has downloaded the squashfs),
//! "root mounted" (`pre-pivot`) and "switching root" (`cleanup`). Each hook reads the machine's
//! own report URL from the kernel command line (`daybreak.report=`, [`ARG`]) and sends one request
//! in the background, with curl's short timeouts and no retries: a server that is gone never
//! fails or delays the boot. One archive for every machine (what is personal is on the command
//! line), made once.
//!
//! The archive holds only the four files, no directories: dracut makes every hook directory in
//! its image, and a directory entry for a path that is a symlink there (`lib` in a merged-/usr
//! image) would make the kernel replace the link with an empty directory.

use std::sync::OnceLock;

/// The kernel argument naming the machine's report URL.
pub const ARG: &str = "daybreak.report";
/// The name the loaders give the archive (`initrd=NAME`).
pub const NAME: &str = "daybreak-report";
/// Where it is served.
pub const PATH: &str = "/_/report-initrd.cpio";

/// Each hook: where dracut sources it from, and the stage it reports.
const HOOKS: [(&str, &str); 4] = [
    (
        "lib/dracut/hooks/initqueue/online/99-daybreak-report.sh",
        "initrd network up",
    ),
    (
        "lib/dracut/hooks/pre-mount/99-daybreak-report.sh",
        "root fetched",
    ),
    (
        "lib/dracut/hooks/pre-pivot/99-daybreak-report.sh",
        "root mounted",
    ),
    (
        "lib/dracut/hooks/cleanup/99-daybreak-report.sh",
        "switching root",
    ),
];

/// The hook that reports `stage`: sourced by dracut's shell, so it never exits and leaves no
/// variable behind.
fn hook(stage: &str) -> String {
    let query = stage.replace(' ', "%20");
    format!(
        "# Daybreak: tells the server this boot reached \"{stage}\" (in the background, never failing\n\
         # or delaying the boot: one try, 2 s to connect, 3 s in all).\n\
         _daybreak_report=$(getarg {ARG}=)\n\
         if [ -n \"$_daybreak_report\" ] && command -v curl >/dev/null 2>&1; then\n\
         \x20   (curl -fsS --connect-timeout 2 -m 3 -o /dev/null \"$_daybreak_report?stage={query}\" >/dev/null 2>&1 &)\n\
         fi\n\
         unset _daybreak_report\n"
    )
}

/// One newc (`070701`) entry: header, name, data, each padded to 4 bytes.
fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive, made once.
pub fn cpio() -> &'static [u8] {
    static CPIO: OnceLock<Vec<u8>> = OnceLock::new();
    CPIO.get_or_init(|| {
        let mut out = Vec::new();
        for (ino, (path, stage)) in (1..).zip(HOOKS) {
            entry(&mut out, ino, 0o100644, path, hook(stage).as_bytes());
        }
        entry(&mut out, 0, 0, "TRAILER!!!", &[]);
        out
    })
}

/// Whether a kernel command line is one dracut reads (a live root, or dracut's `rd.` options):
/// then the report initrd has hooks to run.
pub fn is_dracut(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w.starts_with("root=live:") || w.starts_with("rd."))
}

/// When the report initrd goes with a boot.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum When {
    /// When the kernel command line is dracut's (`root=live:`, `rd.` options).
    #[default]
    Auto,
    /// With every boot that has a report URL.
    On,
    Off,
}

impl When {
    /// Whether it goes with a boot whose command line is `cmdline`.
    pub fn with(self, cmdline: &str) -> bool {
        match self {
            When::Auto => is_dracut(cmdline),
            When::On => true,
            When::Off => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_the_four_hooks_and_no_directory() {
        let a = cpio();
        assert!(a.starts_with(b"070701") && a.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(a);
        for (path, stage) in HOOKS {
            assert!(text.contains(path), "{path}");
            assert!(text.contains(&format!("stage={}\"", stage.replace(' ', "%20"))));
        }
        assert!(text.contains("TRAILER!!!"));
        // Every entry a regular file (mode 0100644) but the trailer.
        assert_eq!(text.matches("000081A4").count(), HOOKS.len());
        assert!(!text.contains("000041ED"), "no directory entries");
        assert!(hook("root fetched").contains("getarg daybreak.report="));
        assert!(hook("x").contains("&)\n"), "in the background");
    }

    #[test]
    fn dracut_command_lines_are_told_apart() {
        assert!(is_dracut(
            "rd.neednet=1 ip=dhcp root=live:http://a/rootfs.squashfs"
        ));
        assert!(is_dracut("quiet rd.live.overlay.overlayfs"));
        assert!(!is_dracut("console=ttyS0 root=/dev/sda1 ip=dhcp"));
        assert!(When::On.with("console=ttyS0") && !When::Off.with("rd.x"));
    }
}
