#!/usr/bin/env bash
# Boots that go wrong, with real firmware, on the private LAN of lan.sh: each must be named on the
# machine's timeline, with the stage and the failure (or the stall and its likely cause), never be
# told installed, and show on the page in headless Chromium with its reason (a screenshot of the
# machine's open row in OUT_DIR/fault-MODE.png).
#
#   faults.sh MODE DAYBREAK_BIN BOOT_DIR OUT_DIR
#     ipxe-timeout  OVMF's own PXE gets ipxe.efi and the machine's script; the request for the
#                   kernel never reaches the server (dropped in SRV by iptables' string match), so
#                   iPXE's download times out; the script's last part tells the server the step
#                   and iPXE's error number: failed at kernel, "Connection timed out"
#     rootfs-cut    SeaBIOS's iPXE boots a dracut live root (BOOT_DIR from build-dracut.sh); once
#                   the kernel runs, every connection of the server's that has sent 256 KiB is
#                   reset, so livenet's download of the squashfs is cut off: failed at rootfs
#     root-never    the same machine with an initrd that is not one (random bytes): the kernel
#                   starts and never asks for its root; with --stall-after 15s it is stalled
#                   after "booting", with the likely cause
#
# BOOT_DIR holds vmlinuz and initramfs.gz (the test guest) or initrd.img and rootfs.squashfs
# (the dracut live boot). Prints E2E-PASS or E2E-FAIL with the logs. Nothing leaves the
# namespaces it creates.
set -euo pipefail
mode=${1:?mode}; label=faults-$mode; bin=${2:?daybreak binary}; boot=${3:?boot dir}; out=${4:?out dir}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-240}
accel=${DAYBREAK_E2E_ACCEL:-tcg}
mkdir -p "$out"

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0

mac=52:54:00:78:00:$(printf %02x $((id % 200 + 16)))
printf '#cloud-config\nhostname: fault\n' > "$tmp/cloud-config.yaml"
printf -- '- mac: %s\n  hostname: fault-machine\n' "$mac" > "$tmp/machines.yaml"
admin=http://127.0.0.1:8091
initrd=$boot/initramfs.gz; [ -f "$initrd" ] || initrd=$boot/initrd.img
rootfs=$boot/rootfs.squashfs
[ -f "$rootfs" ] || { head -c 1048576 /dev/urandom > "$tmp/rootfs.squashfs"; rootfs=$tmp/rootfs.squashfs; }
# UEFI machines get iPXE by name (left to Daybreak, a signed kernel takes the Secure Boot chain).
firmware=uefi; extra=(--efi-ipxe ipxe); after_kernel=
case "$mode" in
  ipxe-timeout)
    S iptables -A INPUT -p tcp --dport 8090 -m string --algo bm --string "GET /kernel " -j DROP ||
      fail "iptables could not add the rule"
    wants=('"phase":"failed"' '"stage":"kernel"' '"last_good":"script"'
           'iPXE could not download the kernel: Connection timed out (https://ipxe.org/4c')
    row="failed at kernel*Connection timed out" ;;
  rootfs-cut)
    firmware=bios
    S sysctl -qw net.netfilter.nf_conntrack_acct=1 || fail "no conntrack accounting"
    after_kernel='S iptables -A OUTPUT -p tcp --sport 8090 -m connbytes --connbytes 262144: --connbytes-dir reply --connbytes-mode bytes -j REJECT --reject-with tcp-reset'
    wants=('"phase":"failed"' '"stage":"rootfs"' '"kind":"cut off"' 'rootfs.squashfs')
    row="failed at rootfs*cut off" ;;
  root-never)
    firmware=bios
    head -c 4194304 /dev/urandom > "$tmp/broken-initrd"; initrd=$tmp/broken-initrd
    extra=(--stall-after 15s)
    wants=('"phase":"stalled"' '"stage":"booting"' 'the initrd never asked for the root')
    row="stalled*the initrd never asked for the root" ;;
  *) fail "unknown mode $mode" ;;
esac

ip netns exec "$srv" "$bin" serve --kernel "$boot/vmlinuz" --initrd "$initrd" \
  --rootfs "$rootfs" --cloud-config "$tmp/cloud-config.yaml" \
  --machines "$tmp/machines.yaml" --state-dir "$tmp/state" "${extra[@]}" >"$tmp/daybreak.log" 2>&1 &
pids+=($!)
wait_ready "$tmp/daybreak.log" "${pids[-1]}"

common=(-accel "$accel" -display none -monitor none -no-reboot -serial "file:$tmp/serial.log"
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
if [ "$firmware" = uefi ]; then
  code=/usr/share/OVMF/OVMF_CODE_4M.fd
  [ -f "$code" ] || fail "OVMF not installed"
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$tmp/vars.fd"
  qemu=(-machine q35 -m 1024 -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
        -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd"
        -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
else
  qemu=(-machine pc -m 1024 -device "e1000,netdev=n0,mac=$mac" -boot n)
fi
ip netns exec "$lan" qemu-system-x86_64 "${common[@]}" "${qemu[@]}" >"$tmp/qemu.log" 2>&1 &
pids+=($!)

start=$(date +%s)
ruled=
while :; do
  if [ -n "$after_kernel" ] && [ -z "$ruled" ] && grep -q "booting kernel" "$tmp/daybreak.log"; then
    eval "$after_kernel" || fail "iptables could not add the rule"
    ruled=1
  fi
  S curl -fs -o "$tmp/machine.json" "$admin/api/machines/$mac" 2>/dev/null || true
  grep -q "${wants[1]}" "$tmp/machine.json" 2>/dev/null && grep -q "${wants[0]}" "$tmp/machine.json" && break
  [ $(( $(date +%s) - start )) -lt "$timeout_s" ] || fail "not named within ${timeout_s}s: $(cat "$tmp/machine.json" 2>/dev/null)"
  sleep 1
done
elapsed=$(( $(date +%s) - start ))
shown=$(cat "$tmp/machine.json")
for want in "${wants[@]}"; do
  case "$shown" in *"$want"*) ;; *) fail "/api/machines/$mac lacks $want: $shown" ;; esac
done
case "$shown" in *installed_at\":[0-9]*|*'"phase":"installed"'*) fail "told installed: $shown" ;; esac
if [ "$mode" = ipxe-timeout ]; then
  grep -q "the boot script failed" "$tmp/daybreak.log" || fail "no log line for the failed step"
  ! grep -q "http sent.*file=kernel" "$tmp/daybreak.log" || fail "the kernel reached the machine"
fi

# The page an operator keeps open, in a real browser: the machine among the failing ones.
page "$srv" "$admin/" --dump-dom >"$tmp/status.html" ||
  fail "chromium could not load the status page: $(tail -3 "$tmp/chrome.log")"
page "$srv" "$admin/#open=$mac" --window-size=1400,520 --screenshot="$out/fault-$mode.png" >/dev/null ||
  fail "chromium could not take a screenshot"
tr -d '\n' < "$tmp/status.html" | grep -o "<tr data-mac=\"$mac\"[^>]*>.*" | sed 's#</tr>.*##' > "$tmp/row" || true
[ -s "$tmp/row" ] || fail "the status page in Chromium has no row for $mac"
# shellcheck disable=SC2053
[[ $(cat "$tmp/row") == *$row* ]] || fail "the row does not show the failure ($row): $(cat "$tmp/row")"
phase=${wants[0]#*:}; phase=${phase//\"/}
grep -q "$phase: 1" "$tmp/status.html" || fail "the counts at the top do not count it $phase"
echo "--- /api/machines/$mac"
echo "$shown" | head -c 1500; echo
echo "E2E-PASS ($label): named ${elapsed}s after power-on"
