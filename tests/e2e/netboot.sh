#!/usr/bin/env bash
# Boots a real firmware in QEMU from Daybreak, on the private network of lan.sh (namespaces: a
# bridge with a plain dnsmasq that hands out addresses only, QEMU on tap0, Daybreak on SRV).
#
#   netboot.sh MODE DAYBREAK_BIN GUEST_DIR
#     MODE: bios          SeaBIOS with QEMU's e1000 iPXE ROM; afterwards /metrics passes
#                         `promtool check metrics` and shows the boot's phases
#           uefi          OVMF with virtio-net and no option ROM (EDK2's own PXE client), which
#                         gets the built-in ipxe.efi (iPXE's own virtio driver)
#           uefi-snp      as uefi, with `--efi-ipxe snponly`: snponly.efi, driving the NIC
#                         through the firmware's own network driver
#           uefi-sb       OVMF enforcing Secure Boot with Microsoft's keys (q35, SMM, secure
#                         pflash): Debian's signed kernel, so Daybreak serves shim, then GRUB,
#                         then the kernel over HTTP; the guest reports SecureBoot = 1. A
#                         machines file gives this machine its own command line and
#                         cloud-config, which GRUB reads from /_/grub/MAC.cfg
#           uefi-sbpixie  the same machine, served by AuroraBoot's start-pixie (pixiecore's
#                         commands get the signed chain too)
#           uefi-sbapi    the same machine in pixiecore's API mode: the API names Debian's signed
#                         kernel by URL; Daybreak reads its head, sees the signature and gives this
#                         machine the chain, GRUB reading the API's boot from /_/grub/MAC.cfg
#           uefi-sbunsigned
#                         the same firmware and an unsigned kernel (the guest's, its signature
#                         table emptied): Daybreak says at start why such machines cannot boot,
#                         the firmware fetches iPXE and refuses it, and no boot script is asked for
#           arm64         AAVMF (arm64 UEFI, qemu-system-aarch64 -M virt) with virtio-net and no
#                         option ROM, so EDK2's own arm64 PXE client runs: option 93 = 11 gets
#                         the built-in ipxe-arm64.efi, which boots GUEST_DIR's arm64 kernel
#           uefi-http     OVMF with PXE turned off (IPv4 and IPv6), so UEFI HTTP Boot is the only
#                         way in: ipxe.efi by HTTP (application/efi), no TFTP at all
#           bios-samehost as bios, with Daybreak beside dnsmasq in LAN (port 67 taken)
#           bios-relay    as bios, on a routed network: the machine's subnet (10.77.0.0/24) has no
#                         DHCP server, only ISC dhcrelay (Debian isc-dhcp-relay) adding option 82
#                         and relaying to ISC Kea (kea-dhcp4-server, 10.89.0.2, the network's
#                         DHCP server, addresses only) and to Daybreak (10.88.0.2), each on a
#                         subnet of its own behind LAN, which routes; Daybreak's relayed replies
#                         must carry the relay's option 82 back (seen on the wire by tcpdump)
#           bios-iso      as bios, with kernel, initrd and squashfs served straight from an ISO
#                         made by xorriso (`daybreak serve --iso`)
#           bios-oci, uefi-oci
#                         the default command, zero touch: an OCI image (the guest's kernel and
#                         initramfs in /boot, three layers) in a docker-registry inside SRV,
#                         `daybreak --set container_image=… --cloud-config TEMPLATE --set kairos.password=…`
#           bios-api      pixiecore's API mode: `daybreak api URL` with an API server (busybox
#                         httpd on SRV's loopback) whose answer for this machine names the kernel
#                         by /path, the initrd relatively, the squashfs by {{ URL }} and the
#                         cloud-config as file://; everything reaches the guest through Daybreak
#           bios-isogen, uefi-isogen
#                         the generic netboot ISO (`daybreak ipxe-iso`) as a CD (the docs'
#                         `-drive if=ide,media=cdrom`), firmware PXE out of the way: it waits for
#                         Daybreak's ProxyDHCP answer (user class pixiecore) and boots
#           bios-isourl, uefi-isourl
#                         the fixed-URL ISO (`--url`) as a CD against a plain HTTP server (busybox
#                         httpd), no Daybreak running
#           bios-isousb, uefi-isousb
#                         the fixed-URL ISO written to a USB stick (the image is hybrid)
#           bios-isoserver, uefi-isoserver
#                         the ISO a running server hands out (/ipxe.iso), ProxyDHCP off
#           bios-pixie, uefi-pixie
#                         the Kairos docs' pixiecore command with `daybreak` in its place:
#                         `daybreak boot KERNEL INITRD --cmdline='… root=live:{{ ID "…" }} …'`, HTTP
#                         on port 80, and pixiecore's log lines
#
# Prints E2E-PASS or E2E-FAIL with the logs. Nothing leaves the namespaces it creates.
set -euo pipefail
mode=${1:?mode}; label=$1; bin=${2:?daybreak binary}; guest=${3:?guest dir}
from_iso=0; from_oci=0; pixie=0; efi=ipxe; http_boot=0; api=0; iso=; sb=0; startpixie=0; relay=0
case "$mode" in
  uefi-snp) efi=snponly; mode=uefi ;;
  uefi-http) http_boot=1; mode=uefi ;;
  arm64) timeout_default=900 ;;
  arm64-http) http_boot=1; mode=arm64; timeout_default=900 ;;
  uefi-sb) sb=1; mode=uefi ;;
  uefi-sbpixie) sb=1; startpixie=1; mode=uefi ;;
  uefi-sbapi) sb=1; api=1; mode=uefi ;;
  bios-relay) relay=1; mode=bios ;;
  uefi-sbunsigned) sb=2; mode=uefi ;;
  *-isogen|*-isourl|*-isousb|*-isoserver) iso=${mode#*-iso}; mode=${mode%%-*} ;;
  *-iso) from_iso=1; mode=${mode%-iso} ;;
  *-oci) from_oci=1; mode=${mode%-oci} ;;
  *-pixie) pixie=1; mode=${mode%-pixie} ;;
  *-api) api=1; pixie=1; mode=${mode%-api} ;;
esac
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-${timeout_default:-240}}
accel=${DAYBREAK_E2E_ACCEL:-tcg}

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0

# A routed network (bios-relay): LAN becomes the router between the machine's subnet and two
# server subnets, its dnsmasq gone; Kea hands out the addresses and dhcrelay relays to both.
relay_up() {
  kill "${pids[0]}" 2>/dev/null || true
  local kea=dbk${id}k
  ip netns add "$kea"; extra_ns+=("$kea")
  ip netns exec "$kea" ip link set lo up
  L ip link set v0 nomaster
  L ip addr add 10.88.0.1/24 dev v0
  S ip addr flush dev v1
  S ip addr add 10.88.0.2/24 dev v1
  S ip route add default via 10.88.0.1
  L ip link add k1 type veth peer name k0 netns "$kea"
  L ip addr add 10.89.0.1/24 dev k1
  L ip link set k1 up
  ip netns exec "$kea" ip addr add 10.89.0.2/24 dev k0
  ip netns exec "$kea" ip link set k0 up
  ip netns exec "$kea" ip route add default via 10.89.0.1
  L sysctl -qw net.ipv4.ip_forward=1
  printf '%s\n' '{"Dhcp4": {' \
    '  "interfaces-config": {"interfaces": ["k0"], "dhcp-socket-type": "udp"},' \
    '  "lease-database": {"type": "memfile", "persist": false},' \
    '  "valid-lifetime": 3600,' \
    '  "subnet4": [{"subnet": "10.77.0.0/24", "pools": [{"pool": "10.77.0.100 - 10.77.0.199"}],' \
    '               "option-data": [{"name": "routers", "data": "10.77.0.1"}]}],' \
    '  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]' \
    '}}' > "$tmp/kea.json"
  ip netns exec "$kea" env KEA_PIDFILE_DIR="$tmp" KEA_LOCKFILE_DIR="$tmp" kea-dhcp4 -c "$tmp/kea.json" >"$tmp/kea.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do ip netns exec "$kea" ss -lun | grep -q "10.89.0.2:67 " && break; sleep 0.1; done
  ip netns exec "$kea" ss -lun | grep -q "10.89.0.2:67 " || fail "Kea did not bind port 67"
  # What Daybreak sends the relay, as the relay sees it.
  ip netns exec "$lan" tcpdump -i v0 -n -vv -l 'udp and src host 10.88.0.2 and src port 67' >"$tmp/relay-wire.txt" 2>/dev/null &
  pids+=($!)
  ip netns exec "$lan" dhcrelay -4 -d -a -id br0 -iu v0 -iu k1 10.88.0.2 10.89.0.2 >"$tmp/dhcrelay.log" 2>&1 &
  pids+=($!)
  sleep 1
}
[ $relay = 0 ] || relay_up

head -c 8388608 /dev/urandom > "$tmp/rootfs.squashfs"
printf '#cloud-config\nhostname: e2e-%s\nusers:\n- name: kairos\n  passwd: kairos\n' "$mode" > "$tmp/cloud-config.yaml"

# Background servers are started with `ip netns exec` itself (it execs the program), so $! is the
# server's pid and cleanup can stop it.
where=$srv
[ "$mode" = bios-samehost ] && where=$lan
rootfs_file=$tmp/rootfs.squashfs
if [ $from_iso = 1 ]; then
  mkdir -p "$tmp/iso/boot"
  cp "$guest/vmlinuz" "$tmp/iso/boot/vmlinuz-test"
  ln -s vmlinuz-test "$tmp/iso/boot/kernel"
  cp "$guest/initramfs.gz" "$tmp/iso/boot/initrd"
  cp "$tmp/rootfs.squashfs" "$tmp/iso/rootfs.squashfs"
  xorriso -as mkisofs -quiet -R -J -V KAIROS -o "$tmp/kairos.iso" "$tmp/iso" || fail "xorriso failed"
  cmd=("$bin" serve --iso "$tmp/kairos.iso" --cloud-config "$tmp/cloud-config.yaml")
elif [ $from_oci = 1 ]; then
  # The image: the guest's kernel and initramfs in /boot (with an older kernel beside them that
  # must not win), a marker, and some data, as three layers in a registry on SRV's loopback.
  mkdir -p "$tmp/img/l1/boot" "$tmp/img/l2/etc" "$tmp/img/l3/srv"
  cp "$guest/vmlinuz" "$tmp/img/l1/boot/vmlinuz-6.1.0-10-e2e"
  cp "$guest/initramfs.gz" "$tmp/img/l1/boot/initrd.img-6.1.0-10-e2e"
  echo "not this one" > "$tmp/img/l1/boot/vmlinuz-6.1.0-9-e2e"
  ln -s vmlinuz-6.1.0-9-e2e "$tmp/img/l1/boot/vmlinuz"
  echo "daybreak e2e $id" > "$tmp/img/l2/etc/marker"
  head -c 4194304 /dev/urandom > "$tmp/img/l3/srv/data"
  layers=("$tmp/img/l1" "$tmp/img/l2" "$tmp/img/l3")
  if [ "$mode" = uefi ]; then
    # The image carries its distribution's own signed shim and network GRUB, as Ubuntu-based
    # Kairos images do: here bookworm's shim-signed (another build than Daybreak's) and Debian's
    # signed GRUB, where Ubuntu's packages put them. Daybreak must serve these.
    mkdir -p "$tmp/img/l4/usr/lib/shim" "$tmp/img/l4/usr/lib/grub/x86_64-efi-signed"
    (cd "$tmp" && apt-get download -qq shim-signed >/dev/null 2>&1) || fail "apt-get download shim-signed failed"
    dpkg -x "$tmp"/shim-signed_*.deb "$tmp/shim"
    cp "$tmp/shim/usr/lib/shim/shimx64.efi.signed" "$tmp/img/l4/usr/lib/shim/shimx64.efi.signed"
    cp "$repo_root/crates/daybreak/ipxe/grubnetx64.efi" "$tmp/img/l4/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"
    layers+=("$tmp/img/l4")
  fi
  bash "$repo_root/scripts/oci-layout.sh" "$tmp/layout" e2e "${layers[@]}" >/dev/null ||
    fail "building the OCI layout failed"
  push_image "$tmp/layout"
  printf '#cloud-config\nhostname: e2e-%s\nusers:\n- name: kairos\n  passwd: [[[ .kairos.password ]]]\n' "$mode" > "$tmp/cc-template.yaml"
  printf '#cloud-config\nhostname: e2e-%s\nusers:\n- name: kairos\n  passwd: pw-%s\n' "$mode" "$id" > "$tmp/cloud-config.yaml"
  cmd=("$bin" --set container_image=127.0.0.1:5000/e2e/kairos:v1 --set "state_dir=$tmp/state"
       --set "kairos.password=pw-$id" --cloud-config "$tmp/cc-template.yaml")
elif [ "$iso" = url ] || [ "$iso" = usb ]; then
  # No Daybreak: a plain HTTP server holds the files, and the ISO names them.
  mkdir -p "$tmp/www"
  cp "$guest/vmlinuz" "$guest/initramfs.gz" "$tmp/rootfs.squashfs" "$tmp/www/"
  cp "$tmp/cloud-config.yaml" "$tmp/www/config.yaml"
  "$bin" ipxe-iso "$tmp/boot.iso" --url http://10.77.0.2:8090 --kernel vmlinuz --initrd initramfs.gz \
    --rootfs rootfs.squashfs >/dev/null || fail "daybreak ipxe-iso --url failed"
  cmd=(busybox httpd -f -p 10.77.0.2:8090 -h "$tmp/www")
elif [ "$iso" = gen ] || [ "$iso" = server ]; then
  proxy=(); [ "$iso" = server ] && proxy=(--no-proxy-dhcp)
  cmd=("$bin" serve --kernel "$guest/vmlinuz" --initrd "$guest/initramfs.gz" --rootfs "$tmp/rootfs.squashfs"
       --cloud-config "$tmp/cloud-config.yaml" "${proxy[@]}")
  [ "$iso" = gen ] && { "$bin" ipxe-iso "$tmp/boot.iso" >/dev/null || fail "daybreak ipxe-iso failed"; }
elif [ $api = 1 ]; then
  mac=52:54:00:77:00:$(printf %02x $((id % 200 + 16)))
  mkdir -p "$tmp/api/v1/boot" "$tmp/api/files"
  cp "$guest/vmlinuz" "$guest/initramfs.gz" "$tmp/rootfs.squashfs" "$tmp/api/files/"
  printf '{"kernel":"/files/vmlinuz","initrd":["files/initramfs.gz"],"message":"e2e","cmdline":"rd.neednet=1 ip=dhcp rd.cos.disable root=live:{{ URL \\"/files/rootfs.squashfs\\" }} netboot install-mode config_url={{ URL \\"file://%s\\" }} console=tty1 console=ttyS0 console=tty0"}' \
    "$tmp/cloud-config.yaml" > "$tmp/api/v1/boot/$mac"
  ip netns exec "$srv" busybox httpd -f -p 127.0.0.1:8000 -h "$tmp/api" &
  pids+=($!)
  cmd=("$bin" api http://127.0.0.1:8000/ --api-request-timeout 2s)
elif [ $startpixie = 1 ]; then
  # AuroraBoot's command line: cloud-config, squashfs, address, port, initrd, kernel.
  cmd=("$bin" start-pixie "$tmp/cloud-config.yaml" "$tmp/rootfs.squashfs" 0.0.0.0 8090 "$guest/initramfs.gz" "$guest/vmlinuz")
elif [ $pixie = 1 ]; then
  # As the docs write it, with this test's files.
  cmd=("$bin" boot "$guest/vmlinuz" "$guest/initramfs.gz" --cmdline="rd.neednet=1 ip=dhcp rd.cos.disable root=live:{{ ID \"$tmp/rootfs.squashfs\" }} netboot install-mode config_url={{ ID \"$tmp/cloud-config.yaml\" }} console=tty1 console=ttyS0 console=tty0")
else
  kernel=$guest/vmlinuz
  if [ $sb = 2 ]; then
    # The guest's kernel with its certificate table's size zeroed: no longer signed.
    kernel=$tmp/vmlinuz-unsigned; cp "$guest/vmlinuz" "$kernel"
    pe=$(od -An -t u4 -j 60 -N 4 "$kernel" | tr -d ' ')
    printf '\0\0\0\0' | dd of="$kernel" bs=1 seek=$((pe + 24 + 112 + 36)) conv=notrunc status=none
  fi
  cmd=("$bin" serve --kernel "$kernel" --initrd "$guest/initramfs.gz" --rootfs "$tmp/rootfs.squashfs"
       --cloud-config "$tmp/cloud-config.yaml")
  if [ $sb = 1 ]; then
    # A machine profile: GRUB reads this machine's own configuration (command line, cloud-config).
    printf -- '- mac: %s\n  hostname: sb-machine\n  cloud_config_file: cloud-config.yaml\n  netboot.cmdline: rd.neednet=1 ip=dhcp console=ttyS0 e2e.grub\n' \
      "52:54:00:77:00:$(printf %02x $((id % 200 + 16)))" > "$tmp/machines.yaml"
    cmd+=(--machines "$tmp/machines.yaml" --state-dir "$tmp/state")
  fi
  # The iPXE path by name; left to Daybreak, a signed kernel takes the Secure Boot chain.
  [ $sb != 0 ] || cmd+=(--efi-ipxe "$efi")
fi
ip netns exec "$where" "${cmd[@]}" >"$tmp/daybreak.log" 2>&1 &
pids+=($!)
if [ "$iso" = url ] || [ "$iso" = usb ]; then
  for _ in $(seq 1 50); do S curl -fs -o /dev/null http://10.77.0.2:8090/config.yaml && break; sleep 0.1; done
else
  wait_ready "$tmp/daybreak.log" "${pids[-1]}"
fi
if [ "$iso" = server ]; then
  S curl -fs -o "$tmp/boot.iso" http://10.77.0.2:8090/ipxe.iso || fail "the server did not hand out /ipxe.iso"
fi
if [ $from_oci = 1 ]; then
  rootfs_file=$(ls "$tmp"/state/artifacts/sha256-*/rootfs.squashfs) || fail "no artifacts in the store"
  [ ! -e "$tmp/state/cloud-config.yaml" ] || fail "the rendered cloud-config was written to the state directory"
  [ "$(stat -c %a "$tmp/state")" = 700 ] || fail "the state directory was not created 0700"
  for p in 8080/cloud-config.yaml 8090/cloud-config.yaml "8090/_/file?name=cloud-config.yaml"; do
    code=$(S curl -s -o /dev/null -w '%{http_code}' "http://10.77.0.2:$p")
    [ "$code" = 404 ] || fail "http://10.77.0.2:$p answered $code: the cloud-config must only be at its secret path"
  done
  code=$(S curl -s -o /dev/null -w '%{http_code}' http://10.77.0.2:8080/rootfs.squashfs)
  [ "$code" = 200 ] || fail "the artifact server answered $code for the squashfs"
fi
if [ "$mode" = bios-samehost ]; then
  grep -q "raw socket" "$tmp/daybreak.log" || fail "expected the raw-socket fallback beside dnsmasq"
fi

mac=52:54:00:77:00:$(printf %02x $((id % 200 + 16)))
common=(-accel "$accel" -display none -monitor none -no-reboot -serial "file:$tmp/serial.log"
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
case "$mode" in
  bios|bios-samehost)
    qemu=(-machine pc -m 512 -device "e1000,netdev=n0,mac=$mac" -boot n)
    if [ "$iso" = usb ]; then
      qemu=(-machine pc -m 512 -device "e1000,netdev=n0,mac=$mac"
            -drive "if=none,id=stick,format=raw,readonly=on,file=$tmp/boot.iso"
            -device usb-ehci,id=ehci -device usb-storage,bus=ehci.0,drive=stick,bootindex=0)
    elif [ -n "$iso" ]; then
      qemu=(-machine pc -m 512 -device "e1000,netdev=n0,mac=$mac"
            -drive "if=ide,media=cdrom,file=$tmp/boot.iso" -boot d)
    fi ;;
  uefi)
    code=""
    for c in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_CODE.fd; do [ -f "$c" ] && { code=$c; break; }; done
    [ -n "$code" ] || fail "OVMF not installed"
    cp "${code/CODE/VARS}" "$tmp/vars.fd"
    machine=q35
    if [ $sb != 0 ]; then
      code=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
      cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$tmp/vars.fd"
      machine=q35,smm=on
    fi
    qemu=(-machine "$machine" -m 1024
          -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
          -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd"
          -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
    [ $sb != 0 ] && qemu+=(-global driver=cfi.pflash01,property=secure,value=on)
    if [ $http_boot = 1 ] || [ -n "$iso" ]; then
      qemu+=(-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=n
             -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=n)
    fi
    if [ "$iso" = usb ]; then
      qemu+=(-drive "if=none,id=stick,format=raw,readonly=on,file=$tmp/boot.iso"
             -device qemu-xhci,id=xhci -device usb-storage,bus=xhci.0,drive=stick,bootindex=0)
    elif [ -n "$iso" ]; then
      qemu+=(-drive "if=ide,media=cdrom,file=$tmp/boot.iso")
    fi ;;
  arm64)
    cp /usr/share/AAVMF/AAVMF_VARS.fd "$tmp/vars.fd"
    qemu=(-machine virt -cpu cortex-a57 -m 1024
          -drive "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"
          -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd"
          -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
    if [ $http_boot = 1 ]; then
      qemu+=(-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=n
             -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=n)
    fi ;;
  *) fail "unknown mode $mode" ;;
esac
system=qemu-system-x86_64; [ "$mode" = arm64 ] && system=qemu-system-aarch64
ip netns exec "$lan" "$system" "${common[@]}" "${qemu[@]}" >"$tmp/qemu.log" 2>&1 &
qpid=$!
pids+=($qpid)

if [ $sb = 2 ]; then
  grep -q "no Secure Boot signature.*refuse" "$tmp/daybreak.log" || fail "no line at start saying why Secure Boot machines cannot boot this kernel"
  for _ in $(seq 1 240); do grep -q "tftp sent.*ipxe.efi" "$tmp/daybreak.log" && break; sleep 0.5; done
  grep -q "tftp sent.*ipxe.efi" "$tmp/daybreak.log" || fail "the firmware did not fetch iPXE"
  sleep 15
  ! grep -q "boot script client=" "$tmp/daybreak.log" || fail "iPXE ran under enforcing Secure Boot"
  echo "E2E-PASS ($label): iPXE refused by the firmware, and the log said why"
  exit 0
fi
start=$(date +%s)
while :; do
  grep -q "E2E-DONE" "$tmp/serial.log" 2>/dev/null && break
  kill -0 "$qpid" 2>/dev/null || { sleep 0.5; grep -q "E2E-DONE" "$tmp/serial.log" 2>/dev/null && break; fail "QEMU exited before the guest finished"; }
  [ $(( $(date +%s) - start )) -lt "$timeout_s" ] || fail "no result from the guest within ${timeout_s}s"
  sleep 0.5
done
elapsed=$(( $(date +%s) - start ))

want_root=$(sha256sum "$rootfs_file" | cut -d' ' -f1)
want_cfg=$(sha256sum "$tmp/cloud-config.yaml" | cut -d' ' -f1)
result=$(tr -d '\r' < "$tmp/serial.log" | grep -a "E2E-RESULT" | tail -1)
cmdline=$(tr -d '\r' < "$tmp/serial.log" | grep -a "E2E-CMDLINE" | tail -1)
echo "$cmdline"
echo "$result"
server=10.77.0.2; [ "$mode" = bios-samehost ] && server=10.77.0.1; [ $relay = 0 ] || server=10.88.0.2
[ "$iso" = url ] || [ "$iso" = usb ] && rootfs_file=$tmp/www/rootfs.squashfs
wants=("root=live:http://$server:8090/rootfs.squashfs" "config_url=http://$server:8090/cloud-config-"
       "rd.live.overlay.overlayfs rd.neednet=1 ip=dhcp rd.cos.disable" "console=tty1 console=ttyS0 console=tty0")
if [ "$iso" = url ] || [ "$iso" = usb ]; then
  wants=("rd.neednet=1 ip=dhcp rd.cos.disable root=live:http://$server:8090/rootfs.squashfs netboot install-mode config_url=http://$server:8090/config.yaml console=tty1 console=ttyS0")
elif [ $api = 1 ]; then
  wants=("rd.neednet=1 ip=dhcp rd.cos.disable root=live:http://$server/_/api?mac=$mac&n=2&t="
         " netboot install-mode config_url=http://$server/_/api?mac=$mac&n=3&t="
         " console=tty1 console=ttyS0 console=tty0")
elif [ $startpixie = 1 ]; then
  wants=("root=live:http://$server:8090/" " config_url=http://$server:8090/")
elif [ $sb = 1 ]; then
  wants=("rd.neednet=1 ip=dhcp console=ttyS0 e2e.grub root=live:http://$server:8090/rootfs.squashfs config_url=http://$server:8090/_/config/")
elif [ $pixie = 1 ]; then
  wants=("rd.neednet=1 ip=dhcp rd.cos.disable root=live:http://$server/rootfs.squashfs netboot install-mode config_url=http://$server/cloud-config.yaml console=tty1 console=ttyS0 console=tty0")
fi
for want in "${wants[@]}"; do
  case "$cmdline" in *"$want"*) ;; *) fail "kernel command line lacks: $want" ;; esac
done
[ "$result" = "E2E-RESULT rootfs=$want_root config=$want_cfg" ] || fail "downloaded files differ from the served ones"
if [ "$iso" = url ] || [ "$iso" = usb ]; then
  echo "E2E-PASS ($label) in ${elapsed}s"; exit 0
fi
if [ "$iso" = gen ]; then
  grep -q 'offer.*firmware=.*iPXE (pixiecore)' "$tmp/daybreak.log" || fail "the ISO's iPXE did not ask as pixiecore"
  ! grep -q "tftp sent" "$tmp/daybreak.log" || fail "TFTP was used: the firmware PXE booted, not the ISO"
fi
if [ "$iso" = server ]; then
  ! grep -q "offer" "$tmp/daybreak.log" || fail "ProxyDHCP answered, but it was off"
  grep -q "http sent.*file=kernel" "$tmp/daybreak.log" || fail "the kernel did not come from the server"
  echo "E2E-PASS ($label) in ${elapsed}s"; exit 0
fi
grep -q "offer" "$tmp/daybreak.log" || fail "no offer logged"
if [ $sb = 1 ]; then
  grep -q 'offer.*path="UEFI PXE, then the Secure Boot chain"' "$tmp/daybreak.log" || fail "the offer line does not name the Secure Boot path"
  for f in shimx64.efi grubx64.efi grub.cfg; do
    grep -q "tftp sent.*$f" "$tmp/daybreak.log" || fail "the Secure Boot chain did not fetch $f"
  done
  tr -d '\r' < "$tmp/serial.log" | grep -q "E2E-SECUREBOOT 1" || fail "the guest does not report Secure Boot on"
  grep -q "GRUB configuration.*mac=$mac" "$tmp/daybreak.log" || fail "GRUB did not ask for its machine's configuration"
  grep -q "http sent.*file=kernel" "$tmp/daybreak.log" || fail "GRUB did not fetch the kernel over HTTP"
  grep -q "the kernel carries a Secure Boot signature: UEFI x64 PXE machines get shim" "$tmp/daybreak.log" ||
    fail "the start lines do not say the signed chain is served"
elif [ "$mode" = uefi ] && [ $pixie = 1 ]; then
  # pixiecore's commands serve a signed kernel as Daybreak's do: by the signed chain.
  grep -q "tftp sent.*shimx64.efi" "$tmp/daybreak.log" || fail "UEFI did not get the Secure Boot chain"
  grep -q 'offer.*path="UEFI PXE, then the Secure Boot chain"' "$tmp/daybreak.log" || fail "the offer line does not name the Secure Boot path"
  grep -q "GRUB configuration.*mac=$mac" "$tmp/daybreak.log" || fail "GRUB did not ask for its machine's configuration"
elif [ "$mode" = arm64 ] && [ $http_boot = 1 ]; then
  grep -q 'offer.*firmware=UEFI arm64 HTTP.*path="arm64 UEFI HTTP Boot, then iPXE"' "$tmp/daybreak.log" ||
    fail "no arm64 HTTP Boot offer logged with its path"
  grep -q "http sent.*file=ipxe/ipxe-arm64.efi" "$tmp/daybreak.log" || fail "arm64 HTTP Boot did not fetch ipxe-arm64.efi"
  ! grep -q "tftp" "$tmp/daybreak.log" || fail "TFTP was used, but HTTP Boot was the only way in"
elif [ "$mode" = arm64 ]; then
  grep -q 'offer.*firmware=UEFI arm64 PXE.*path="arm64 UEFI PXE, then iPXE" boot="ipxe-arm64.efi"' "$tmp/daybreak.log" ||
    fail "no arm64 offer of ipxe-arm64.efi logged with its path"
  grep -q "tftp sent.*ipxe-arm64.efi" "$tmp/daybreak.log" || fail "the arm64 firmware did not fetch ipxe-arm64.efi"
  grep -q "machines answered: arm64 (UEFI)" "$tmp/daybreak.log" || fail "the start lines do not say only arm64 machines are answered"
elif [ $http_boot = 1 ]; then
  grep -q 'offer.*firmware=UEFI x64 HTTP.*path="UEFI HTTP Boot, then iPXE"' "$tmp/daybreak.log" || fail "no HTTP Boot offer logged with its path"
  grep -q "http sent.*file=ipxe/ipxe.efi" "$tmp/daybreak.log" || fail "UEFI HTTP Boot did not fetch ipxe.efi"
  ! grep -q "tftp" "$tmp/daybreak.log" || fail "TFTP was used, but HTTP Boot was the only way in"
elif [ "$mode" = uefi ] && [ $from_oci = 1 ]; then
  # Zero touch leaves the choice to Daybreak: the image's kernel is signed, so the signed chain.
  grep -q "tftp sent.*shimx64.efi" "$tmp/daybreak.log" || fail "UEFI did not get the Secure Boot chain"
  grep -q "the Secure Boot chain is the image's own shim" "$tmp/daybreak.log" || fail "no line saying the image's own shim and GRUB are served"
  shim_size=$(stat -c %s "$tmp/img/l4/usr/lib/shim/shimx64.efi.signed")
  grep -q "tftp sent.*file=shimx64.efi.*bytes=$shim_size" "$tmp/daybreak.log" || fail "the shim sent is not the image's ($shim_size bytes)"
  grep -q 'offer.*path="UEFI PXE, then the Secure Boot chain"' "$tmp/daybreak.log" || fail "the offer line does not name the Secure Boot path"
elif [ "$mode" = uefi ] && [ -z "$iso" ]; then
  grep -q "tftp sent.*$efi.efi" "$tmp/daybreak.log" || fail "UEFI did not fetch $efi.efi over TFTP"
  grep -q 'offer.*path="UEFI PXE, then iPXE"' "$tmp/daybreak.log" || fail "the offer line does not name the UEFI PXE path"
fi
if [ $pixie = 1 ]; then
  # pixiecore's lines for the same boot, as scripts and AuroraBoot's UI read them.
  for want in "\[DHCP\] Offering to boot $mac" "\[HTTP\] Sending ipxe boot script to 10\.77\.0\." \
              "\[HTTP\] Sent file \"kernel\" to 10\.77\.0\." "\[HTTP\] Sent file \"initrd-0\" to 10\.77\.0\."; do
    grep -q "$want" "$tmp/daybreak.log" || fail "no pixiecore line matching: $want"
  done
  grep -E "\[(DHCP|HTTP)\]" "$tmp/daybreak.log" | sed 's/^[^[]*//' | head -8
fi
if [ $from_oci = 1 ]; then
  # The same image again: from the store, ready within a second.
  kill "$qpid" 2>/dev/null || true
  dpid=${pids[-2]}
  kill "$dpid"; for _ in $(seq 1 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
  s0=$(date +%s%N)
  ip netns exec "$where" "${cmd[@]}" >"$tmp/daybreak2.log" 2>&1 &
  pids+=($!)
  wait_ready "$tmp/daybreak2.log" "${pids[-1]}"
  ms=$(( ($(date +%s%N) - s0) / 1000000 ))
  grep -q "built before" "$tmp/daybreak2.log" || fail "the second start built the image again"
  echo "second start of the same image: ready in ${ms} ms"
  [ "$ms" -lt 1000 ] || fail "the second start took ${ms} ms"
fi
if [ "$label" = bios ]; then
  S curl -fs -o "$tmp/metrics.txt" http://127.0.0.1:8091/metrics || fail "no /metrics on the admin listener"
  code=$(S curl -s -o /dev/null -w '%{http_code}' http://10.77.0.2:8090/metrics)
  [ "$code" = 404 ] || fail "the boot port serves /metrics ($code)"
  promtool check metrics < "$tmp/metrics.txt" || fail "promtool rejects /metrics: $(cat "$tmp/metrics.txt")"
  for want in 'daybreak_boot_phase_seconds_count{phase="script"} 1' 'daybreak_boot_phase_seconds_count{phase="booting"} 1' \
              'daybreak_http_sent_bytes_total{file="kernel"}' 'daybreak_dhcp_packets_total{outcome="answered"}' \
              'daybreak_dhcp_unanswered_total{reason="not_pxe"}'; do
    grep -qF "$want" "$tmp/metrics.txt" || fail "/metrics lacks: $want"
  done
  grep '_count{phase=' "$tmp/metrics.txt"
fi
if [ $relay = 1 ]; then
  # Relayed: answered to the relay (giaddr), with the relay's option 82 back, and the machine's
  # address came from Kea.
  grep -q 'offer.*to=10.77.0.1:67' "$tmp/daybreak.log" || fail "no offer to the relay's giaddr logged"
  # tcpdump -vv: "Agent-Information (82), length 5:" then "Circuit-ID SubOption 1, length 3: br0",
  # the relay's own circuit id (its interface) as it inserted it.
  replies=$(grep -c "BOOTP/DHCP, Reply" "$tmp/relay-wire.txt" || true)
  with82=$(grep -c "Agent-Information (82)" "$tmp/relay-wire.txt" || true)
  [ "$replies" -gt 0 ] && [ "$with82" = "$replies" ] ||
    fail "$with82 of Daybreak's $replies relayed replies carry option 82: $(head -c 2000 "$tmp/relay-wire.txt")"
  grep -q "Circuit-ID SubOption 1, length 3: br0" "$tmp/relay-wire.txt" || fail "option 82 came back changed"
  grep -qi "DHCP4_LEASE_ALLOC" "$tmp/kea.log" || fail "Kea gave no lease"
  echo "relayed replies from Daybreak: $replies, with the relay's option 82 back: $with82"
fi
echo "--- daybreak log"
grep -E "offer|ack|tftp|script|http sent|booting" "$tmp/daybreak.log" | sed 's/^[^ ]* *//' | head -30
echo "E2E-PASS ($label) in ${elapsed}s"
