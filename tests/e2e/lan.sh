# Sourced by the boot tests (netboot.sh, fleet.sh): a private LAN made of network namespaces,
#
#   netns LAN: bridge br0 (10.77.0.1/24, fd00:77::1/64) with a plain dnsmasq (addresses and
#              router advertisements only, no PXE options), and one tap per QEMU machine
#   netns SRV: Daybreak on a veth into br0 (10.77.0.2/24)
#
# with cleanup on exit and helpers. Expects $label; sets id, lan, srv, tmp and pids. Nothing
# leaves the namespaces it creates.
id=$$
lan=dbk${id}l; srv=dbk${id}s
tmp=$(mktemp -d /tmp/daybreak-e2e.XXXXXX)
pids=()
extra_ns=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Anything else still running inside the namespaces goes too.
  for ns in "$lan" "$srv" "${extra_ns[@]}"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for ns in "$lan" "$srv" "${extra_ns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  [ -n "${KEEP_E2E_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "E2E-FAIL ($label): $*"
  local f
  for f in "$tmp"/daybreak*.log "$tmp"/registry.log "$tmp"/dnsmasq.log "$tmp"/kea.log "$tmp"/dhcrelay.log \
           "$tmp"/serial*.log "$tmp"/qemu*.log; do
    [ -f "$f" ] && { echo "----- ${f##*/} (last 60 lines)"; tail -n 60 "$f"; }
  done
  exit 1
}

L() { ip netns exec "$lan" "$@"; }
S() { ip netns exec "$srv" "$@"; }

# lan_up TAP...: the namespaces, the bridge, a tap per name, and the network's DHCP server.
lan_up() {
  ip netns add "$lan"
  ip netns add "$srv"
  L ip link set lo up
  S ip link set lo up
  L ip link add br0 type bridge
  L ip link set br0 up
  L ip addr add 10.77.0.1/24 dev br0
  L ip -6 addr add fd00:77::1/64 dev br0 nodad
  L ip link add v0 type veth peer name v1 netns "$srv"
  L ip link set v0 master br0 up
  S ip addr add 10.77.0.2/24 dev v1
  S ip link set v1 up
  for tap in "$@"; do
    L ip tuntap add dev "$tap" mode tap
    L ip link set "$tap" master br0 up
  done
  # The network's own DHCP server, like a home router: addresses and RAs, nothing about booting.
  ip netns exec "$lan" dnsmasq --keep-in-foreground --conf-file=/dev/null --user=root --port=0 \
    --interface=br0 \
    --dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h \
    --enable-ra --dhcp-range=fd00:77::,ra-only,64 \
    --dhcp-leasefile="$tmp/leases" --log-dhcp --log-facility="$tmp/dnsmasq.log" &
  pids+=($!)
  # dnsmasq's default is an exclusive wildcard bind of port 67: wait for it, so the same-host
  # mode really meets a taken port.
  for _ in $(seq 1 50); do
    L ss -lun 2>/dev/null | grep -q "0.0.0.0:67 " && break
    sleep 0.1
  done
  L ss -lun | grep -q "0.0.0.0:67 " || fail "dnsmasq did not bind port 67"
}

# page NS URL ARGS...: URL in headless Chromium inside namespace NS (its profile in $tmp, 4 s of
# the page's virtual clock), given ARGS (--dump-dom, --screenshot=FILE); its messages go to
# $tmp/chrome.log.
page() {
  local ns=$1 url=$2; shift 2
  HOME=$tmp ip netns exec "$ns" chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --user-data-dir="$tmp/chrome" --virtual-time-budget=4000 "$@" "$url" 2>>"$tmp/chrome.log"
}

# push_image LAYOUT: a docker-registry on SRV's loopback (127.0.0.1:5000), and the layout's image
# `e2e` pushed to it as 127.0.0.1:5000/e2e/kairos:v1, every platform of an index included.
push_image() {
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:5000\n  secret: e2e\n' \
    "$tmp/registry" > "$tmp/registry.yml"
  ip netns exec "$srv" docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do S curl -fs http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break; sleep 0.1; done
  S skopeo copy --quiet --all --dest-tls-verify=false "oci:$1:e2e" docker://127.0.0.1:5000/e2e/kairos:v1 ||
    fail "skopeo could not push the image"
}

# wait_ready LOG PID: until Daybreak says it is ready (at most 30 s).
wait_ready() {
  for _ in $(seq 1 300); do
    grep -q " ready" "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || fail "daybreak exited at startup"
    sleep 0.1
  done
  fail "daybreak not ready after 30 s"
}

# wait_serial LOG NEEDLE SECONDS [PID]: until the guest prints NEEDLE on its serial port.
wait_serial() {
  local start; start=$(date +%s)
  while :; do
    grep -aq "$2" "$1" 2>/dev/null && return 0
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then
      sleep 0.5; grep -aq "$2" "$1" 2>/dev/null && return 0
      fail "QEMU exited before the guest printed $2"
    fi
    [ $(( $(date +%s) - start )) -lt "$3" ] || fail "no $2 from the guest within ${3}s"
    sleep 0.5
  done
}

# boot_disk FILE: a 1 MiB disk whose boot sector writes E2E-DISK-BOOTED to COM1 and halts
# (16-bit code by hand: cli; cld; ds=0; si=message; out each byte to 0x3f8; hlt).
boot_disk() {
  {
    printf '\xfa\xfc\x31\xc0\x8e\xd8\xbe\x17\x7c\xba\xf8\x03\xac\x84\xc0\x74\x03\xee\xeb\xf8\xf4\xeb\xfd'
    printf 'E2E-DISK-BOOTED\r\n\0'
  } > "$tmp/mbr"
  head -c 1048576 /dev/zero > "$1"
  dd if="$tmp/mbr" of="$1" conv=notrunc status=none
  printf '\x55\xaa' | dd of="$1" bs=1 seek=510 conv=notrunc status=none
}
