#!/usr/bin/env bash
# A live boot explained from power-on to the root, with real firmware and a real dracut initrd
# (tests/e2e/build-dracut.sh, made as Kairos's is) on the private LAN of lan.sh. SeaBIOS's iPXE
# boots the machine by its profile, with Kairos's command line (root=live:, rd.neednet=1,
# ip=dhcp): dracut brings the network up, livenet fetches the squashfs, dmsquash-live mounts it
# with an overlay, and the root's /sbin/init says so on the serial port.
#
#   dracut.sh MODE DAYBREAK_BIN DRACUT_DIR OUT_DIR
#     reports    the report initrd goes with the boot: /api/machines/MAC's timeline has every
#                stage in order, from the DHCP offer to "switching root", the initrd's own among
#                them; the page in headless Chromium shows the machine (screenshot in OUT_DIR)
#     unheard    the same boot, with every report request dropped on the way (iptables in SRV):
#                the hooks never block, the machine reaches its root all the same, in about the
#                time the first mode took, and no initrd stage is on its timeline
#
# Prints E2E-PASS or E2E-FAIL with the logs. Nothing leaves the namespaces it creates.
set -euo pipefail
mode=${1:?mode}; label=dracut-$mode; bin=${2:?daybreak binary}; dr=${3:?dracut dir}; out=${4:?out dir}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-300}
accel=${DAYBREAK_E2E_ACCEL:-tcg}
mkdir -p "$out"

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0

mac=52:54:00:79:00:$(printf %02x $((id % 200 + 16)))
printf '#cloud-config\nhostname: live\n' > "$tmp/cloud-config.yaml"
printf -- '- mac: %s\n  hostname: live-machine\n' "$mac" > "$tmp/machines.yaml"
admin=http://127.0.0.1:8091
case "$mode" in
  reports) ;;
  unheard)
    S iptables -A INPUT -p tcp --dport 8090 -m string --algo bm --string "GET /_/report/" -j DROP ||
      fail "iptables could not add the rule" ;;
  *) fail "unknown mode $mode" ;;
esac

ip netns exec "$srv" "$bin" serve --kernel "$dr/vmlinuz" --initrd "$dr/initrd.img" \
  --rootfs "$dr/rootfs.squashfs" --cloud-config "$tmp/cloud-config.yaml" \
  --machines "$tmp/machines.yaml" --state-dir "$tmp/state" >"$tmp/daybreak.log" 2>&1 &
pids+=($!)
wait_ready "$tmp/daybreak.log" "${pids[-1]}"

ip netns exec "$lan" qemu-system-x86_64 -accel "$accel" -display none -monitor none -no-reboot \
  -serial "file:$tmp/serial.log" -machine pc -m 1024 \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
  -device "e1000,netdev=n0,mac=$mac" -boot n >"$tmp/qemu.log" 2>&1 &
qpid=$!
pids+=($qpid)
start=$(date +%s)
wait_serial "$tmp/serial.log" "E2E-ROOT-REACHED" "$timeout_s" "$qpid"
elapsed=$(( $(date +%s) - start ))
tr -d '\r' < "$tmp/serial.log" | grep -a "E2E-ROOT-REACHED" | head -1
grep -aq "daybreak.report=http://10.77.0.2:8090/_/report/" "$tmp/serial.log" ||
  fail "the kernel command line has no report URL"
sleep 2
S curl -fs -o "$tmp/machine.json" "$admin/api/machines/$mac" || fail "no /api/machines/$mac"
shown=$(cat "$tmp/machine.json")
# The timeline's steps, in order, one per line.
steps=$(grep -o '"what":"[^"]*"' "$tmp/machine.json" | sed 's/^"what":"//; s/"$//')
echo "--- timeline"; echo "$steps"
stages=("DHCP offer" "boot script" "kernel:" "initrd0:" "daybreak-report:" "kernel started"
        "the booted system reported: initrd network up" "rootfs.squashfs:"
        "the booted system reported: root fetched" "the booted system reported: root mounted"
        "the booted system reported: switching root")
if [ "$mode" = reports ]; then
  # Each stage a step that starts with its words, after the one before.
  at=0
  for want in "${stages[@]}"; do
    n=$(echo "$steps" | awk -v w="$want" -v from="$at" 'NR > from && index($0, w) == 1 { print NR; exit }')
    [ -n "$n" ] || fail "the timeline has no \"$want\" after its step $at: $shown"
    at=$n
  done
  case "$shown" in *'"failure"'*|*'"phase":"failed"'*) fail "a clean boot shows a failure: $shown" ;; esac
  echo "${#stages[@]} stages in order"
  page "$srv" "$admin/#open=$mac" --window-size=1400,640 --screenshot="$out/dracut-timeline.png" >/dev/null ||
    fail "chromium could not take a screenshot"
else
  ! echo "$steps" | grep -q "the booted system reported" || fail "a report got through: $steps"
  grep -q "http sent.*file=rootfs.squashfs" "$tmp/daybreak.log" || fail "the root was not fetched"
fi
echo "$elapsed" > "$out/dracut-$mode.seconds"
echo "E2E-PASS ($label): root reached ${elapsed}s after power-on"
