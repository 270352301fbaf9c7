#!/usr/bin/env bash
# Boots that go wrong, with real firmware, on the private LAN of lan.sh: each must be named on the
# machine's timeline, with the stage and the failure, and never be told installed.
#
#   faults.sh MODE DAYBREAK_BIN GUEST_DIR OUT_DIR
#     ipxe-timeout  OVMF's own PXE gets ipxe.efi and the machine's script; the request for the
#                   kernel never reaches the server (dropped in SRV by iptables' string match), so
#                   iPXE's download times out; the script's last part tells the server the step
#                   and iPXE's error number. /api/machines/MAC names stage kernel, kind ipxe,
#                   "Connection timed out" and the last good step; headless Chromium shows the
#                   machine among the failing ones with its reason (screenshot in OUT_DIR).
#
# Prints E2E-PASS or E2E-FAIL with the logs. Nothing leaves the namespaces it creates.
set -euo pipefail
mode=${1:?mode}; label=faults-$mode; bin=${2:?daybreak binary}; guest=${3:?guest dir}; out=${4:?out dir}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-240}
accel=${DAYBREAK_E2E_ACCEL:-tcg}
mkdir -p "$out"

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0

mac=52:54:00:78:00:$(printf %02x $((id % 200 + 16)))
head -c 1048576 /dev/urandom > "$tmp/rootfs.squashfs"
printf '#cloud-config\nhostname: fault\n' > "$tmp/cloud-config.yaml"
printf -- '- mac: %s\n  hostname: fault-machine\n' "$mac" > "$tmp/machines.yaml"
admin=http://127.0.0.1:8091

case "$mode" in
  ipxe-timeout)
    S iptables -A INPUT -p tcp --dport 8090 -m string --algo bm --string "GET /kernel " -j DROP ||
      fail "iptables could not add the rule" ;;
  *) fail "unknown mode $mode" ;;
esac

ip netns exec "$srv" "$bin" serve --kernel "$guest/vmlinuz" --initrd "$guest/initramfs.gz" \
  --rootfs "$tmp/rootfs.squashfs" --cloud-config "$tmp/cloud-config.yaml" \
  --machines "$tmp/machines.yaml" --state-dir "$tmp/state" --efi-ipxe ipxe >"$tmp/daybreak.log" 2>&1 &
pids+=($!)
wait_ready "$tmp/daybreak.log" "${pids[-1]}"

code=/usr/share/OVMF/OVMF_CODE_4M.fd
[ -f "$code" ] || fail "OVMF not installed"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$tmp/vars.fd"
ip netns exec "$lan" qemu-system-x86_64 -accel "$accel" -display none -monitor none -no-reboot \
  -serial "file:$tmp/serial.log" -machine q35 -m 1024 \
  -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code" \
  -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd" \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
  -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=" >"$tmp/qemu.log" 2>&1 &
pids+=($!)

start=$(date +%s)
while :; do
  S curl -fs -o "$tmp/machine.json" "$admin/api/machines/$mac" 2>/dev/null || true
  grep -q '"kind":"ipxe"' "$tmp/machine.json" 2>/dev/null && break
  [ $(( $(date +%s) - start )) -lt "$timeout_s" ] || fail "no failure reported within ${timeout_s}s: $(cat "$tmp/machine.json" 2>/dev/null)"
  sleep 1
done
elapsed=$(( $(date +%s) - start ))
shown=$(cat "$tmp/machine.json")
for want in '"phase":"failed"' '"stage":"kernel"' '"last_good":"script"' \
            'iPXE could not download the kernel: Connection timed out (https://ipxe.org/4c'; do
  case "$shown" in *"$want"*) ;; *) fail "/api/machines/$mac lacks $want: $shown" ;; esac
done
case "$shown" in *installed_at\":[0-9]*|*'"phase":"installed"'*) fail "told installed: $shown" ;; esac
grep -q "the boot script failed" "$tmp/daybreak.log" || fail "no log line for the failed step"
! grep -q "http sent.*file=kernel" "$tmp/daybreak.log" || fail "the kernel reached the machine"

# The page an operator keeps open, in a real browser: the machine among the failing ones.
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
        --user-data-dir="$tmp/chrome" --virtual-time-budget=4000)
HOME=$tmp S "${chrome[@]}" --dump-dom "$admin/" >"$tmp/status.html" 2>"$tmp/chrome.log" ||
  fail "chromium could not load the status page: $(tail -3 "$tmp/chrome.log")"
HOME=$tmp S "${chrome[@]}" --window-size=1400,520 --screenshot="$out/fault-$mode.png" "$admin/#open=$mac" \
  >/dev/null 2>>"$tmp/chrome.log" || fail "chromium could not take a screenshot"
row=$(tr -d '\n' < "$tmp/status.html" | grep -o "<tr data-mac=\"$mac\"[^>]*>.*" | sed 's#</tr>.*##' || true)
[ -n "$row" ] || fail "the status page in Chromium has no row for $mac"
case "$row" in *"failed at kernel"*"Connection timed out"*) ;; *) fail "the row does not show the failure: $row" ;; esac
grep -q "failed: 1" "$tmp/status.html" || fail "the counts at the top do not count it failed"
echo "--- /api/machines/$mac"
echo "$shown" | head -c 1500; echo
echo "E2E-PASS ($label): failure reported ${elapsed}s after power-on"
