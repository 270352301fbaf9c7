#!/usr/bin/env bash
# A fleet from one server and one command: three QEMU machines (SeaBIOS with its iPXE ROM) on
# the private LAN of lan.sh, and Daybreak's default command with a machines file.
#
#   A  52:54:00:77:01:0a  action: live, hostname cp-1, its own cloud-config template with a
#                         profile value and a --set value
#   B  52:54:00:77:01:0b  action: install (the default), its own command line and cloud-config,
#                         which calls [[[ .daybreak.installed_url ]]] as Kairos's after-install
#                         stage would; it has a disk whose boot sector prints E2E-DISK-BOOTED,
#                         reboots, and its next network boot must end on that disk
#   C  52:54:00:77:01:0c  action: ignore: no answer at all; then the machines file is edited
#                         while Daybreak runs (C becomes live, with a command line and an image
#                         of its own, which Daybreak builds beside the first), and C's next
#                         boot follows the edit
#
# A and B boot side by side; while they do, headless Chromium loads the status page and must
# show both with their phases (its DOM and a screenshot are kept in OUT_DIR). Afterwards
# /api/machines, `daybreak machines` and /metrics (promtool) tell the same story.
#
#   fleet.sh DAYBREAK_BIN GUEST_DIR OUT_DIR
#
# Prints E2E-PASS or E2E-FAIL with the logs.
set -euo pipefail
label=fleet
bin=${1:?daybreak binary}; guest=${2:?guest dir}; out=${3:?output dir}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-300}
accel=${DAYBREAK_E2E_ACCEL:-tcg}
mkdir -p "$out"

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0 tap1 tap2

A=52:54:00:77:01:0a; B=52:54:00:77:01:0b; C=52:54:00:77:01:0c
server=http://10.77.0.2:8090
admin=http://127.0.0.1:8091  # the status page, /api/machines, /metrics: the server's loopback

# The image: the guest's kernel and initramfs in /boot of a directory tree, and some data.
mkdir -p "$tmp/img/boot" "$tmp/img/srv"
cp "$guest/vmlinuz" "$tmp/img/boot/vmlinuz-6.1.0-10-e2e"
cp "$guest/initramfs.gz" "$tmp/img/boot/initrd.img-6.1.0-10-e2e"
head -c 2097152 /dev/urandom > "$tmp/img/srv/data"
# C's own image, after the edit: the same boot files, other data.
mkdir -p "$tmp/img2/srv"
cp -r "$tmp/img/boot" "$tmp/img2/"
head -c 3145728 /dev/urandom > "$tmp/img2/srv/data"

printf '#cloud-config\nhostname: everyone-else\n' > "$tmp/default.yaml"
write_machines() { # C's entry
  cat > "$tmp/machines.yaml" <<YAML
# Three machines, each its own way.
- mac: $A
  hostname: cp-1
  action: live
  role: master
  cloud_config: |
    #cloud-config
    hostname: [[[ .hostname ]]]
    role: [[[ .role ]]]
    token: [[[ .k3s_token ]]]
- mac: $B
  hostname: worker-1
  netboot:
    cmdline: rd.neednet=1 ip=dhcp console=ttyS0 e2e.reboot
  cloud_config: |
    #cloud-config
    hostname: [[[ .hostname ]]]
    e2e-callback: [[[ .daybreak.installed_url ]]]
$1
YAML
}
write_machines "- mac: $C
  action: ignore"

# A disk whose boot sector prints E2E-DISK-BOOTED (lan.sh).
boot_disk "$tmp/disk.img"

ip netns exec "$srv" "$bin" -d --set "container_image=dir://$tmp/img" --set "state_dir=$tmp/state" \
  --set "k3s_token=K10-$id" --set disable_http_server=true \
  --cloud-config "$tmp/default.yaml" --machines "$tmp/machines.yaml" >"$tmp/daybreak.log" 2>&1 &
pids+=($!)
dpid=$!
wait_ready "$tmp/daybreak.log" "$dpid"
grep -q "3 machine profiles" "$tmp/daybreak.log" || fail "the start line does not count the profiles"

qemu() { # name mac tap extra...
  local name=$1 mac=$2 tap=$3; shift 3
  ip netns exec "$lan" qemu-system-x86_64 -accel "$accel" -display none -monitor none \
    -serial "file:$tmp/serial-$name.log" -machine pc -m 512 \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "e1000,netdev=n0,mac=$mac" \
    "$@" >"$tmp/qemu-$name.log" 2>&1 &
  pids+=($!)
}
start=$(date +%s)
qemu a "$A" tap0 -no-reboot -boot n
apid=${pids[-1]}
qemu b "$B" tap1 -drive "file=$tmp/disk.img,format=raw,if=ide" -boot order=nc
bpid=${pids[-1]}

# While both boot: the status page in a real browser shows them, each with its phase.
phase() { S curl -fs "$admin/api/machines/$1" | sed -n 's/.*"phase":"\([^"]*\)".*/\1/p'; }
for _ in $(seq 1 240); do
  pa=$(phase $A || true); pb=$(phase $B || true)
  [ -n "$pa" ] && [ "$pa" != seen ] && [ -n "$pb" ] && [ "$pb" != seen ] && break
  sleep 0.5
done
[ -n "$pa" ] && [ -n "$pb" ] || fail "the two machines never showed up in /api/machines"
page "$srv" "$admin/" --dump-dom >"$tmp/status.html" ||
  fail "chromium could not load the status page: $(tail -3 "$tmp/chrome.log")"
page "$srv" "$admin/" --window-size=1400,360 --screenshot="$out/fleet-status.png" >/dev/null ||
  fail "chromium could not take a screenshot"
cp "$tmp/status.html" "$out/fleet-status.html"
for m in $A $B; do
  row=$(tr -d '\n' < "$tmp/status.html" | grep -o "<tr data-mac=\"$m\"[^>]*>.*" | sed 's#</tr>.*##' || true)
  [ -n "$row" ] || fail "the status page in Chromium has no row for $m"
  p=$(echo "$row" | sed -n 's/.*<span class="phase[^"]*">\([^<]*\)<.*/\1/p')
  case "$p" in ""|seen) fail "the status page shows no boot phase for $m (row: $row)" ;; esac
  echo "status page in Chromium: $m phase=$p"
done
grep -q "cp-1" "$tmp/status.html" && grep -q "worker-1" "$tmp/status.html" ||
  fail "the status page lacks the profiles' hostnames"
! grep -q "installed/\|/_/config/\|K10-" "$tmp/status.html" || fail "the status page shows a secret URL or value"
echo "screenshot: $out/fleet-status.png"

# A: live, its own rendered cloud-config.
wait_serial "$tmp/serial-a.log" E2E-DONE "$timeout_s" "$apid"
rootfs=$(ls "$tmp"/state/artifacts/*/rootfs.squashfs) || fail "no squashfs in the store"
want_root=$(sha256sum "$rootfs" | cut -d' ' -f1)
want_a=$(printf '#cloud-config\nhostname: cp-1\nrole: master\ntoken: K10-%s\n' "$id" | sha256sum | cut -d' ' -f1)
res_a=$(tr -d '\r' < "$tmp/serial-a.log" | grep -a E2E-RESULT | tail -1)
[ "$res_a" = "E2E-RESULT rootfs=$want_root config=$want_a" ] || fail "A got other bytes: $res_a"
echo "A: $(($(date +%s) - start)) s, squashfs and its own cloud-config byte for byte"

# B: its command line, its cloud-config, the callback, then its disk.
wait_serial "$tmp/serial-b.log" E2E-CALLBACK "$timeout_s" "$bpid"
grep -aq "E2E-CALLBACK ok" "$tmp/serial-b.log" || fail "B's install callback failed"
cmd_b=$(tr -d '\r' < "$tmp/serial-b.log" | grep -a E2E-CMDLINE | head -1)
case "$cmd_b" in *"rd.neednet=1 ip=dhcp console=ttyS0 e2e.reboot root=live:$server/rootfs.squashfs config_url=$server/_/config/525400770"*) ;;
  *) fail "B's command line is not its profile's: $cmd_b" ;; esac
cfg_b=$(echo "$cmd_b" | sed -n 's/.*config_url=\([^ ]*\).*/\1/p')
# B's config URL answers B alone: from this host, with the URL in hand, it is a 404.
code=$(S curl -s -o /dev/null -w '%{http_code}' "$cfg_b")
[ "$code" = 404 ] || fail "B's config URL answered another host ($code)"
tr -d '\r' < "$tmp/serial-b.log" | awk '/^E2E-RESULT/ { exit } sub(/^E2E-CONFIG /, "")' > "$tmp/b.yaml"
grep -q "^hostname: worker-1$" "$tmp/b.yaml" && grep -q "^e2e-callback: $server/_/installed/" "$tmp/b.yaml" ||
  fail "B's cloud-config is not its profile's: $(cat "$tmp/b.yaml")"
res_b=$(tr -d '\r' < "$tmp/serial-b.log" | grep -a E2E-RESULT | head -1)
[ "$res_b" = "E2E-RESULT rootfs=$want_root config=$(sha256sum < "$tmp/b.yaml" | cut -d' ' -f1)" ] ||
  fail "B got other bytes: $res_b"
[ "$(sha256sum < "$tmp/b.yaml")" != "$(printf '#cloud-config\nhostname: cp-1\nrole: master\ntoken: K10-%s\n' "$id" | sha256sum)" ] ||
  fail "A and B got the same cloud-config"
wait_serial "$tmp/serial-b.log" E2E-DISK-BOOTED "$timeout_s" "$bpid"
grep -q "booting from the local disk: its install finished.*mac=$B" "$tmp/daybreak.log" ||
  fail "no log line saying B boots from its disk"
echo "B: $(($(date +%s) - start)) s, installed, rebooted, and its next network boot ended on its disk"
kill "$apid" "$bpid" 2>/dev/null || true

S curl -fs "$admin/api/machines/$B" > "$tmp/b.json" || fail "no /api/machines/$B"
grep -q '"phase":"local disk"' "$tmp/b.json" && grep -q '"installed_at":[0-9]' "$tmp/b.json" ||
  fail "/api/machines does not show B installed and on its disk: $(cat "$tmp/b.json")"
grep -q 'install finished' "$tmp/b.json" || fail "B's timeline lacks its install"
"$bin" machines --state-dir "$tmp/state" > "$tmp/machines.txt"
grep -q "^$B  installed" "$tmp/machines.txt" && grep -q "^$A  not installed" "$tmp/machines.txt" ||
  fail "daybreak machines disagrees: $(cat "$tmp/machines.txt")"
cat "$tmp/machines.txt"

# C: ignored, so not a single answer...
qemu c "$C" tap2 -no-reboot -boot n
cpid=${pids[-1]}
for _ in $(seq 1 120); do
  grep -q "not answered: this machine is not to be booted.*mac=$C" "$tmp/daybreak.log" && break
  sleep 0.5
done
grep -q "not answered: this machine is not to be booted.*mac=$C" "$tmp/daybreak.log" ||
  fail "C's DHCP request was never seen and refused"
sleep 3
! grep -q "offer mac=$C\|INFO offer.*$C" "$tmp/daybreak.log" || fail "C, ignored, got an offer"
kill "$cpid" 2>/dev/null || true
echo "C: ignored, no offer"
# ...until the machines file says otherwise, with Daybreak running.
write_machines "- mac: $C
  action: live
  container_image: dir://$tmp/img2
  netboot.cmdline: rd.neednet=1 ip=dhcp console=ttyS0 e2e.edited"
for _ in $(seq 1 50); do grep -q "machines file changed" "$tmp/daybreak.log" && break; sleep 0.2; done
grep -q "machines file changed" "$tmp/daybreak.log" || fail "the edited machines file was not picked up"
: > "$tmp/serial-c.log"
c0=$(date +%s)
qemu c "$C" tap2 -no-reboot -boot n
wait_serial "$tmp/serial-c.log" E2E-DONE "$timeout_s" "${pids[-1]}"
tr -d '\r' < "$tmp/serial-c.log" | grep -a E2E-CMDLINE | grep -q " e2e.edited " ||
  fail "C's boot does not follow the edited file: $(grep -a E2E-CMDLINE "$tmp/serial-c.log")"
grep -q 'image ready image=container_image dir://.*/img2' "$tmp/daybreak.log" || fail "C's image was not built"
root_c=$(ls "$tmp"/state/artifacts/*/rootfs.squashfs | grep -v "^$rootfs$") || fail "C's image is not in the store"
want_c=$(sha256sum "$root_c" | cut -d' ' -f1)
res_c=$(tr -d '\r' < "$tmp/serial-c.log" | grep -a E2E-RESULT | tail -1)
case "$res_c" in "E2E-RESULT rootfs=$want_c config="?*) ;; *) fail "C did not get its own image: $res_c" ;; esac
echo "C: after the edit, booted its own image in $(($(date +%s) - c0)) s with its new command line"

S curl -fs -o "$tmp/metrics.txt" "$admin/metrics" || fail "no /metrics"
promtool check metrics < "$tmp/metrics.txt" || fail "promtool rejects /metrics"
grep -q 'daybreak_dhcp_unanswered_total{reason="not_allowed"} [1-9]' "$tmp/metrics.txt" ||
  fail "/metrics does not count the ignored machine's requests"
grep -q 'daybreak_boot_steps_total{step="installed"} 1' "$tmp/metrics.txt" ||
  fail "/metrics does not count the install: $(grep steps_total "$tmp/metrics.txt")"
echo "E2E-PASS ($label) in $(($(date +%s) - start)) s"
