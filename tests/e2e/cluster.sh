#!/usr/bin/env bash
# Replicas on etcd with a real machine: a SeaBIOS machine (with its iPXE ROM) on the private LAN
# of lan.sh, a real etcd in a namespace of its own, and Daybreak replicas sharing it:
#
#   A  10.77.0.2  the default command with the machines file (applied to etcd) and ProxyDHCP
#   C  10.77.0.4  the same store, no ProxyDHCP, no machines file: its status page is the one
#                 looked at
#   B  10.77.0.3  started only after A is killed, ProxyDHCP on
#
# The machine installs through A (its cloud-config calls [[[ .daybreak.installed_url ]]] as
# Kairos's after-install stage would), A is killed with kill -9, the machine reboots, and B,
# which never saw it boot, sends it to its disk. Headless Chromium then loads C's status page:
# the machine is there, installed, and the replicas sharing the store are listed.
#
#   cluster.sh DAYBREAK_BIN GUEST_DIR OUT_DIR
#
# Prints E2E-PASS or E2E-FAIL with the logs.
set -euo pipefail
label=cluster
bin=${1:?daybreak binary}; guest=${2:?guest dir}; out=${3:?output dir}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-300}
accel=${DAYBREAK_E2E_ACCEL:-tcg}
mkdir -p "$out"

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0

M=52:54:00:77:02:0b
server=http://10.77.0.2:8090
et=dbk${id}e; rb=dbk${id}b; rc=dbk${id}c
extra_ns+=("$et" "$rb" "$rc")
plug() { # NS ADDR PORT: a namespace on the bridge
  ip netns add "$1"
  ip netns exec "$1" ip link set lo up
  L ip link add "$3" type veth peer name e0 netns "$1"
  L ip link set "$3" master br0 up
  ip netns exec "$1" ip addr add "$2/24" dev e0
  ip netns exec "$1" ip link set e0 up
}
plug "$et" 10.77.0.20 ve
plug "$rb" 10.77.0.3 vb
plug "$rc" 10.77.0.4 vc

ip netns exec "$et" etcd --name e2e --data-dir "$tmp/etcd" \
  --listen-client-urls http://10.77.0.20:2379 --advertise-client-urls http://10.77.0.20:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster e2e=http://127.0.0.1:2380 --log-level error >"$tmp/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  ip netns exec "$et" etcdctl --endpoints=http://10.77.0.20:2379 endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
ip netns exec "$et" etcdctl --endpoints=http://10.77.0.20:2379 endpoint health >/dev/null 2>&1 ||
  fail "etcd did not come up"
store=etcd://10.77.0.20:2379/e2e

# The image: the guest's kernel and initramfs in /boot of a directory tree.
mkdir -p "$tmp/img/boot" "$tmp/img/srv"
cp "$guest/vmlinuz" "$tmp/img/boot/vmlinuz-6.1.0-10-e2e"
cp "$guest/initramfs.gz" "$tmp/img/boot/initrd.img-6.1.0-10-e2e"
head -c 1048576 /dev/urandom > "$tmp/img/srv/data"
cat > "$tmp/machines.yaml" <<YAML
- mac: $M
  hostname: edge-1
  netboot:
    cmdline: rd.neednet=1 ip=dhcp console=ttyS0 e2e.reboot
  cloud_config: |
    #cloud-config
    hostname: [[[ .hostname ]]]
    e2e-callback: [[[ .daybreak.installed_url ]]]
YAML

# A disk whose boot sector prints E2E-DISK-BOOTED (lan.sh).
boot_disk "$tmp/disk.img"

replica() { # NS NAME ARGS...
  local ns=$1 name=$2; shift 2
  ip netns exec "$ns" "$bin" -d --set "container_image=dir://$tmp/img" --set "state_dir=$tmp/state-$name" \
    --set disable_http_server=true --store "$store" "$@" >"$tmp/daybreak-$name.log" 2>&1 &
  pids+=($!)
  wait_ready "$tmp/daybreak-$name.log" "$!"
}
replica "$srv" a --machines "$tmp/machines.yaml"
apid=${pids[-1]}
grep -q "machines file applied to the store" "$tmp/daybreak-a.log" || fail "A did not apply its machines file"
replica "$rc" c --set netboot.proxy_dhcp=false

qemu() { # name tap extra...
  local name=$1 tap=$2; shift 2
  ip netns exec "$lan" qemu-system-x86_64 -accel "$accel" -display none -monitor none \
    -serial "file:$tmp/serial-$name.log" -machine pc -m 512 \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "e1000,netdev=n0,mac=$M" \
    -drive "file=$tmp/disk.img,format=raw,if=ide" -boot order=nc -no-reboot \
    "$@" >"$tmp/qemu-$name.log" 2>&1 &
  pids+=($!)
}
start=$(date +%s)
qemu first tap0
wait_serial "$tmp/serial-first.log" E2E-CALLBACK "$timeout_s" "${pids[-1]}"
grep -aq "E2E-CALLBACK ok" "$tmp/serial-first.log" || fail "the install callback failed"
grep -q "install finished.*mac=$M" "$tmp/daybreak-a.log" || fail "the machine did not install through A"
! grep -q "boot script.*mac=$M" "$tmp/daybreak-c.log" || fail "C answered the machine's install boot"
cmd=$(tr -d '\r' < "$tmp/serial-first.log" | grep -a E2E-CMDLINE | head -1)
case "$cmd" in *"e2e.reboot root=live:$server/rootfs.squashfs config_url=$server/_/config/"*) ;;
  *) fail "the machine's command line is not its profile's through A: $cmd" ;; esac
echo "installed through A in $(($(date +%s) - start)) s"

# A dies; B starts (it never saw the machine), and the machine reboots.
kill -9 "$apid"
wait "$apid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "${pids[-1]}" 2>/dev/null || break; sleep 0.2; done
replica "$rb" b
r0=$(date +%s)
qemu again tap0
wait_serial "$tmp/serial-again.log" E2E-DISK-BOOTED "$timeout_s" "${pids[-1]}"
grep -q "booting from the local disk: its install finished.*mac=$M" "$tmp/daybreak-b.log" ||
  fail "B did not send the machine to its disk"
! grep -aq E2E-CMDLINE "$tmp/serial-again.log" || fail "the machine booted the image again"
echo "rebooted: B sent it to its disk in $(($(date +%s) - r0)) s"

# C's status page in a real browser: the machine installed, the replicas listed.
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
        --user-data-dir="$tmp/chrome" --virtual-time-budget=4000)
C() { ip netns exec "$rc" "$@"; }
HOME=$tmp C "${chrome[@]}" --dump-dom http://127.0.0.1:8091/ >"$tmp/status.html" 2>"$tmp/chrome.log" ||
  fail "chromium could not load C's status page: $(tail -3 "$tmp/chrome.log")"
HOME=$tmp C "${chrome[@]}" --window-size=1400,300 --screenshot="$out/cluster-status.png" http://127.0.0.1:8091/ \
  >/dev/null 2>>"$tmp/chrome.log" || fail "chromium could not take a screenshot"
cp "$tmp/status.html" "$out/cluster-status.html"
row=$(tr -d '\n' < "$tmp/status.html" | grep -o "<tr data-mac=\"$M\"[^>]*>.*" | sed 's#</tr>.*##' || true)
[ -n "$row" ] || fail "C's status page has no row for the machine"
# Installed through A, then sent to its disk by B: C shows B's latest step (each machine's steps
# are shared through etcd) and that it is installed.
echo "$row" | grep -q '<span class="phase[^"]*">installed<\|<span class="phase local-disk">local disk</span><span class="note">installed ' ||
  fail "C's status page does not show it installed: $row"
echo "$row" | grep -q 'local disk' || fail "C's status page does not show B's step (sent to its disk): $row"
echo "$row" | grep -q "edge-1" || fail "C's status page lacks the profile's hostname: $row"
grep -q "sharing the store: .*10.77.0.3.*\|sharing the store: .*10.77.0.4" "$tmp/status.html" ||
  fail "C's status page does not list the replicas: $(grep -o 'id="replicas">[^<]*' "$tmp/status.html")"
echo "C's status page in Chromium: installed; $(grep -o 'replica[s]* sharing the store[^<]*' "$tmp/status.html")"

C curl -fs -o "$tmp/metrics.txt" http://127.0.0.1:8091/metrics || fail "no /metrics on C"
promtool check metrics < "$tmp/metrics.txt" || fail "promtool rejects C's /metrics"
grep -q '^daybreak_store_snapshot_current 1' "$tmp/metrics.txt" || fail "C's snapshot is not current"
echo "E2E-PASS ($label) in $(($(date +%s) - start)) s"
