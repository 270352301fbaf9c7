//! Real firmware boots a real kernel from Daybreak: QEMU in a private network namespace, next
//! to a plain dnsmasq DHCP server (addresses only). The guest's /init downloads the root=live:
//! and config_url= URLs and prints their sha256, which the harness compares with the served files.
//! See tests/e2e/netboot.sh for the topology.

mod common;

use std::process::Command;

use common::{require, run_e2e, workspace_root, BIN};

/// The test guest (tests/e2e/build-guest.sh), built once and shared, when the tools are here.
fn guest(extra: &[&str]) -> Option<String> {
    guest_for("amd64", extra)
}

/// The test guest for `arch` (amd64 or arm64).
fn guest_for(arch: &str, extra: &[&str]) -> Option<String> {
    let mut tools = vec![
        "qemu-system-x86_64",
        "dnsmasq",
        "ip",
        "cpio",
        "flock",
        "curl",
        "promtool",
    ];
    tools.extend(extra);
    if !require(true, &tools) {
        return None;
    }
    let root = workspace_root();
    let guest = match arch {
        "amd64" => root.join("target/e2e-guest"),
        other => root.join(format!("target/e2e-guest-{other}")),
    };
    let built = Command::new("bash")
        .arg(root.join("tests/e2e/build-guest.sh"))
        .arg(&guest)
        .arg(arch)
        .status()
        .expect("run build-guest.sh");
    assert!(built.success(), "building the test guest failed");
    Some(guest.to_string_lossy().into_owned())
}

fn boot(mode: &str) {
    let extra: &[&str] = if mode.ends_with("-oci") {
        &["docker-registry", "skopeo"]
    } else if mode.ends_with("-relay") {
        &["dhcrelay", "kea-dhcp4", "tcpdump"]
    } else {
        &[]
    };
    if let Some(guest) = guest(extra) {
        run_e2e("netboot.sh", &[mode, BIN, &guest], "E2E-PASS");
    }
}

/// SeaBIOS with QEMU's e1000 iPXE ROM: iPXE with HTTP gets its script URL in the first offer.
#[test]
fn bios_ipxe_rom_boots_kernel() {
    boot("bios");
}

/// OVMF with no option ROM: EDK2's own PXE client takes the offer (option 43), TFTPs ipxe.efi
/// (tsize probe, then blksize + windowsize), and the chainloaded iPXE gets the script.
#[test]
fn uefi_edk2_pxe_boots_kernel() {
    boot("uefi");
}

/// The same with `--efi-ipxe snponly`: snponly.efi drives the NIC through the firmware's own
/// network driver instead of iPXE's virtio driver.
#[test]
fn uefi_edk2_pxe_boots_kernel_with_snponly() {
    boot("uefi-snp");
}

/// arm64: AAVMF (EDK2 for QEMU's virt machine) with virtio-net and no option ROM, so EDK2's own
/// arm64 PXE client runs; option 93 = 11 gets the built-in ipxe-arm64.efi, which boots Debian's
/// arm64 kernel (Daybreak answers arm64 machines because the kernel is arm64, and only them).
#[test]
fn arm64_uefi_pxe_boots_kernel() {
    if let Some(guest) = guest_for("arm64", &["qemu-system-aarch64"]) {
        run_e2e("netboot.sh", &["arm64", BIN, &guest], "E2E-PASS");
    }
}

/// The same with PXE turned off: arm64 UEFI HTTP Boot (option 93 = 19) fetches
/// ipxe-arm64.efi by HTTP, and nothing goes over TFTP.
#[test]
fn arm64_uefi_http_boot_boots_kernel() {
    if let Some(guest) = guest_for("arm64", &["qemu-system-aarch64"]) {
        run_e2e("netboot.sh", &["arm64-http", BIN, &guest], "E2E-PASS");
    }
}

/// A mixed fleet from one command (tests/e2e/mixed.sh): a multi-arch image (amd64 and arm64)
/// in a local registry, `daybreak --set container_image=…`, and an x86-64 and an arm64 machine
/// booting side by side, each its own architecture's squashfs; the arm64 variant is built when
/// the first arm64 machine asks.
#[test]
fn mixed_fleet_boots_each_machine_its_own_architecture() {
    let extra = ["qemu-system-aarch64", "docker-registry", "skopeo"];
    let (Some(amd64), Some(arm64)) = (guest(&extra), guest_for("arm64", &extra)) else {
        return;
    };
    run_e2e("mixed.sh", &[BIN, &amd64, &arm64], "E2E-PASS");
}

/// OVMF with PXE turned off, so UEFI HTTP Boot is the only way in: the offer carries option 60
/// `HTTPClient` and an `http://` URL with an IP literal; ipxe.efi comes over HTTP as
/// `application/efi`, and nothing goes over TFTP.
#[test]
fn uefi_http_boot_boots_kernel() {
    boot("uefi-http");
}

/// A routed network: the machine's subnet has only a relay (ISC dhcrelay, adding option 82)
/// towards ISC Kea (addresses) and Daybreak on subnets of their own; Daybreak answers to the
/// relay with its option 82 back (seen on the wire), and the machine boots across the router.
#[test]
fn bios_boots_through_a_dhcp_relay_beside_kea() {
    boot("bios-relay");
}

/// Daybreak on the same host as the DHCP server: port 67 is taken, so ProxyDHCP listens through
/// the raw socket and still answers.
#[test]
fn bios_boots_with_daybreak_beside_dhcp_server() {
    boot("bios-samehost");
}

/// The kernel, initrd and squashfs served as byte ranges of a Kairos-layout ISO (`serve --iso`).
#[test]
fn bios_boots_from_files_inside_an_iso() {
    boot("bios-iso");
}

/// Zero touch, as the Kairos docs have it: `daybreak --set container_image=… --cloud-config …`
/// with the image in a local registry. The guest downloads the squashfs from the store and the
/// rendered cloud-config template; the artifact server refuses the cloud-config; a second start
/// of the same image is ready from the store within a second.
#[test]
fn bios_zero_touch_from_a_registry_image() {
    boot("bios-oci");
}

/// The same with OVMF and EDK2's own PXE client.
#[test]
fn uefi_zero_touch_from_a_registry_image() {
    boot("uefi-oci");
}

/// The Kairos docs' pixiecore command with `daybreak` in its place: `daybreak boot KERNEL INITRD
/// --cmdline='… root=live:{{ ID "…" }} … config_url={{ ID "…" }} …'`, HTTP on port 80, the
/// command line passed as written, and pixiecore's log lines for the boot.
#[test]
fn bios_pixiecore_boot_command() {
    boot("bios-pixie");
}

/// The same with OVMF and EDK2's own PXE client: Debian's kernel is signed, so it takes the
/// signed chain (shim, GRUB), as Daybreak's own commands do.
#[test]
fn uefi_pixiecore_boot_command() {
    boot("uefi-pixie");
}

/// pixiecore's API mode: `daybreak api URL` asks an API server (busybox httpd) what to boot this
/// machine with. The answer names the kernel by /path, the initrd relatively, the squashfs by
/// {{ URL }} and the cloud-config as file://; the guest gets each through Daybreak's proxy, and
/// its first DHCP request waits for nothing.
#[test]
fn bios_pixiecore_api_mode() {
    boot("bios-api");
}

/// The generic netboot ISO (`daybreak ipxe-iso`) as a CD, as the docs attach it (`-drive
/// if=ide,media=cdrom`): its iPXE waits for Daybreak's ProxyDHCP answer (user class pixiecore).
#[test]
fn bios_generic_iso_boots_from_cd() {
    boot("bios-isogen");
}

#[test]
fn uefi_generic_iso_boots_from_cd() {
    boot("uefi-isogen");
}

/// The fixed-URL ISO (`ipxe-iso --url`) against a plain HTTP server, no Daybreak running.
#[test]
fn bios_fixed_url_iso_boots_from_cd() {
    boot("bios-isourl");
}

#[test]
fn uefi_fixed_url_iso_boots_from_cd() {
    boot("uefi-isourl");
}

/// The same ISO written to a USB stick: it is hybrid (MBR for BIOS, an EFI partition for UEFI).
#[test]
fn bios_fixed_url_iso_boots_from_usb() {
    boot("bios-isousb");
}

#[test]
fn uefi_fixed_url_iso_boots_from_usb() {
    boot("uefi-isousb");
}

/// The ISO a running server hands out at /ipxe.iso chains that server's script: no ProxyDHCP.
#[test]
fn bios_server_iso_boots_without_proxydhcp() {
    boot("bios-isoserver");
}

#[test]
fn uefi_server_iso_boots_without_proxydhcp() {
    boot("uefi-isoserver");
}

/// OVMF enforcing Secure Boot with Microsoft's keys: Debian's signed kernel, so Daybreak serves
/// shim, then Debian's signed GRUB, which loads the kernel over HTTP; the guest reports Secure
/// Boot on.
#[test]
fn uefi_secure_boot_boots_the_signed_chain() {
    boot("uefi-sb");
}

/// The same machine served by AuroraBoot's `start-pixie`: pixiecore's commands get the signed
/// chain as Daybreak's do (its compatibility is its commands and log lines, not its limits).
#[test]
fn uefi_secure_boot_start_pixie_boots_the_signed_chain() {
    boot("uefi-sbpixie");
}

/// pixiecore's API mode, the API naming a signed kernel: Daybreak reads its head, and this
/// machine gets the chain (shim, GRUB, the API's boot from /_/grub/MAC.cfg).
#[test]
fn uefi_secure_boot_api_mode_boots_the_signed_chain() {
    boot("uefi-sbapi");
}

/// Enforcing firmware and an unsigned kernel: Daybreak says at start why such machines cannot
/// boot it, and the firmware indeed refuses the (unsigned) iPXE: not silence.
#[test]
fn uefi_secure_boot_refuses_an_unsigned_kernel_and_the_log_says_why() {
    boot("uefi-sbunsigned");
}

/// Replicas on etcd with a real machine (tests/e2e/cluster.sh): a SeaBIOS machine installs
/// through replica A (its cloud-config calls installed_url), A is killed with kill -9, the
/// machine reboots and replica B, which never saw it, sends it to its disk; headless Chromium
/// shows it installed on replica C's status page (screenshot in target/e2e-artifacts).
#[test]
fn a_machine_installed_through_one_replica_boots_from_its_disk_through_another() {
    if let Some(guest) = guest(&["chromium", "etcd", "etcdctl"]) {
        let out = workspace_root().join("target/e2e-artifacts");
        run_e2e(
            "cluster.sh",
            &[BIN, &guest, &out.to_string_lossy()],
            "E2E-PASS",
        );
    }
}

/// A fleet from one server (tests/e2e/fleet.sh): three SeaBIOS machines and a machines file.
/// A (live) and B (install) boot side by side with their own cloud-configs, compared byte for
/// byte in the guests, while headless Chromium shows both on the status page (screenshot in
/// target/e2e-artifacts); B calls back that its install finished, reboots, and its next network
/// boot ends on its disk; C (ignore) gets no offer until the machines file is edited, and then
/// boots as the edit says.
#[test]
fn fleet_profiles_install_once_and_status_page() {
    if let Some(guest) = guest(&["chromium"]) {
        let out = workspace_root().join("target/e2e-artifacts");
        run_e2e(
            "fleet.sh",
            &[BIN, &guest, &out.to_string_lossy()],
            "E2E-PASS",
        );
    }
}

/// A boot that goes wrong in mode `mode` of tests/e2e/faults.sh, booting the test guest or the
/// dracut live boot: /api/machines/MAC names the stage and the failure (or the stall), and
/// headless Chromium shows the machine with its reason (screenshot in target/e2e-artifacts).
fn fault(mode: &str, dracut: bool) {
    let boot = match dracut {
        true => dracut_dir(&["iptables", "chromium"]),
        false => guest(&["chromium", "iptables"]),
    };
    if let Some(boot) = boot {
        let out = workspace_root().join("target/e2e-artifacts");
        run_e2e(
            "faults.sh",
            &[mode, BIN, &boot, &out.to_string_lossy()],
            "E2E-PASS",
        );
    }
}

/// OVMF's PXE loads ipxe.efi, whose request for the kernel never reaches the server; iPXE's
/// download times out and its script reports the step and iPXE's error number: failed at the
/// kernel, "Connection timed out".
#[test]
fn uefi_ipxe_download_timing_out_is_the_machines_failure() {
    fault("ipxe-timeout", false);
}

/// A dracut live boot whose squashfs download is cut off (the server's connection reset after
/// 256 KiB): failed at the rootfs, cut off.
#[test]
fn a_squashfs_cut_off_mid_download_is_the_machines_failure() {
    fault("rootfs-cut", true);
}

/// A kernel whose initrd is not one never asks for its root: stalled after the kernel started,
/// with the likely cause.
#[test]
fn a_root_never_asked_for_is_a_stall_with_its_likely_cause() {
    fault("root-never", true);
}

/// The dracut live boot (tests/e2e/build-dracut.sh: Debian's kernel, a dracut initrd with its
/// network, livenet and dmsquash-live modules, a squashfs root, as Kairos's are made), built
/// once and shared, when the tools are here.
fn dracut_dir(extra: &[&str]) -> Option<String> {
    let mut tools = vec![
        "qemu-system-x86_64",
        "dnsmasq",
        "ip",
        "curl",
        "flock",
        "dracut",
        "mksquashfs",
        "depmod",
    ];
    tools.extend(extra);
    if !require(true, &tools) {
        return None;
    }
    let root = workspace_root();
    let dir = root.join("target/e2e-dracut");
    let built = Command::new("bash")
        .arg(root.join("tests/e2e/build-dracut.sh"))
        .arg(&dir)
        .status()
        .expect("run build-dracut.sh");
    assert!(built.success(), "building the dracut live boot failed");
    Some(dir.to_string_lossy().into_owned())
}

/// A live boot in mode `mode` of tests/e2e/dracut.sh.
fn dracut_boot(mode: &str) {
    if let Some(dir) = dracut_dir(&["iptables", "chromium"]) {
        let out = workspace_root().join("target/e2e-artifacts");
        run_e2e(
            "dracut.sh",
            &[mode, BIN, &dir, &out.to_string_lossy()],
            "E2E-PASS",
        );
    }
}

/// SeaBIOS's iPXE boots a dracut live root with the report initrd appended: the machine's
/// timeline shows every stage in order, from the DHCP offer through the kernel, the initrd's
/// network, the root fetched and mounted, to "switching root" (screenshot of its open row in
/// target/e2e-artifacts/dracut-timeline.png).
#[test]
fn a_dracut_live_boot_reports_every_stage_up_to_switching_root() {
    dracut_boot("reports");
}

/// The same boot with every report dropped on the way: the hooks never block, the machine
/// reaches its root all the same.
#[test]
fn a_dracut_live_boot_whose_reports_go_unheard_still_reaches_its_root() {
    dracut_boot("unheard");
}
