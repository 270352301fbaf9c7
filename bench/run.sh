#!/usr/bin/env bash
# Daybreak against the reference servers, same machine, same load generator, same run:
#
#   ProxyDHCP  Daybreak vs dnsmasq in proxy mode: DISCOVERs answered per second, p50/p99 latency,
#              at 1 and 32 in flight, two rounds, Daybreak also with a machines file of 10,000
#              profiles; then a burst: 20,000 machines powering on within 15 s (DISCOVER and
#              retries), unanswered, kernel drops, p99 to the first answer, peak RSS
#   TFTP       Daybreak vs dnsmasq's TFTP: ipxe.efi to 1 and 100 concurrent clients, blksize 1468,
#              then asking for windowsize 4 as UEFI does
#   HTTP       Daybreak vs nginx (sendfile on): a 1 GiB file to 1, 8 and 64 concurrent clients,
#              aggregate throughput and the servers' peak memory
#   ISO        `daybreak netboot` vs `xorriso -osirrox on -extract` for the three files of a ~3 GB
#              Kairos-layout ISO (warm and cold page cache); `daybreak serve --iso` start to ready
#
#   OCI        `daybreak netboot IMAGE` from a local docker-registry, cold and warm, vs the
#              AuroraBoot-style pipeline of standard tools (skopeo copy, umoci unpack, mksquashfs,
#              xorriso ISO, extracting the three files back out), for a ~1.1 GB 3-layer image
#              made of this machine's /usr; and the squashfs step alone vs mksquashfs (time, peak RSS)
#
#   STORM      a boot storm against Daybreak alone: 200, then 1,000 simulated UEFI machines at once,
#              each from its own address: DISCOVER, port 4011, ipxe.efi over TFTP (windowsize 4),
#              the script, kernel, initrd and squashfs over HTTP; failures, p50/p99 per phase,
#              server peak RSS and descriptors, kernel drops on the DHCP sockets; then 1,000 again
#              beside a flood (1,200 forged TFTP requests a second, 1,050 idle TCP connections)
#
#   FLEET      the same 1,000-machine storm against Daybreak with a fleet: a machines file of
#              11,000 profiles, 10,000 machines already in the machine store, so 11,000 machines
#              known and 1,000 timelines held; peak RSS against the same storm without a fleet,
#              records written, and the time of GET /api/machines for all of them. Each of these
#              machines has a link address of its own, and checks it got what its profile and
#              state say: every fourth is installed (its disk), the others their own cloud-config
#
#   ATTACK     that fleet storm with an attacker on the link beside it: forged DHCPREQUESTs for
#              every booting MAC (2,000 a second), their scripts and GRUB configurations asked
#              for by MAC, and a flood from the 64 addresses the forged requests made "known"
#              (384 TFTP requests a second never acknowledged, 2,048 idle connections); failed
#              boots, answers with anything of a machine's own given to the attacker, machines
#              whose answer changed; then the same machines boot again with the attacker gone
#
#   PAGES      that fleet storm with 100 status pages open on the admin listener, following the
#              machines as a browser does (server-sent events), and again with 100 pages that
#              poll /api/machines every second (a page without event streams): whole-boot
#              p50/p99 against the same storm with no page open, in the same run, and what the
#              pages were sent
#
#   CLUSTER    replicas on etcd (Debian's etcd-server): a replica's start (its snapshot loaded)
#              and RSS with 100,000 machine records in etcd against the same records in the file
#              store, and how long an install written to etcd takes to show on a replica's
#              /api/machines (the watch's lag), p50/p99 of 200
#
#   sudo bench/run.sh [dhcp|tftp|http|iso|oci|storm|fleet|attack|pages|cluster]...   (default: all ten)
#   sudo DAYBREAK_BIN=/path/to/daybreak bench/run.sh dhcp          (another build of the server)
#
# Runs in two private network namespaces joined by a veth pair; nothing leaves them. Needs root.
# Prints a table; the last column is Daybreak's figure divided by the reference's.
set -euo pipefail
cd "$(dirname "$0")/.."
what=("$@"); [ ${#what[@]} -gt 0 ] || what=(dhcp tftp http iso oci storm fleet attack pages cluster)

bash scripts/install-deps.sh --bench
cargo build --release -q -p daybreak -p daybreak-bench
# DAYBREAK_BIN=path measures another build of the server (an earlier commit, for a before/after).
db=${DAYBREAK_BIN:-$PWD/target/release/daybreak}
lg=$PWD/target/release/daybreak-bench

id=$$; sns=dbkb${id}s; cns=dbkb${id}c
tmp=$(mktemp -d /tmp/daybreak-bench.XXXXXX)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
cleanup() {
  local rc=$?
  stop_all
  if declare -F cluster_cleanup >/dev/null; then cluster_cleanup; fi
  if [ "$rc" != 0 ]; then
    for f in "$tmp"/*.err; do [ -s "$f" ] && { echo "--- $f (last lines)" >&2; tail -5 "$f" >&2; }; done
  fi
  for ns in "$sns" "$cns"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  ip netns del "$sns" 2>/dev/null || true; ip netns del "$cns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
# For foreground commands only: a function run with & would give $! of a subshell, not the server.
S() { ip netns exec "$sns" "$@"; }
C() { ip netns exec "$cns" "$@"; }

ip netns add "$sns"; ip netns add "$cns"
S ip link set lo up; C ip link set lo up
S ip link add s0 type veth peer name c0 netns "$cns"
S ip addr add 10.79.0.2/16 dev s0; C ip addr add 10.79.0.10/16 dev c0
S ip link set s0 up; C ip link set c0 up
# Simulated machines each have an address of their own (10.79.1.1…), as real ones do: per-address
# limits apply to each, not to the load generator. 1,000 hosts on one link overflow the server's ARP
# table (gc_thresh3 is 1,024 and cannot be set per namespace), so the server learns them as a large
# L2 network's admin would: statically.
add_hosts() { # first-octet count: 10.79.FIRST.1 … on c0, and static neighbours on s0
  local mac; mac=$(ip -n "$cns" -o link show c0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
  for i in $(seq 0 $(($2 - 1))); do echo "10.79.$(($1 + i / 250)).$((i % 250 + 1))"; done > "$tmp/hosts"
  sed 's|.*|addr add &/16 dev c0|' "$tmp/hosts" | ip -n "$cns" -batch -
  sed "s|.*|neigh replace & lladdr $mac nud permanent dev s0|" "$tmp/hosts" | ip -n "$sns" -batch -
}
add_hosts 1 1000
# A fleet's machines need more: the server's neighbour entry for each must be the MAC that machine
# names (that is how it tells a machine from a host naming its MAC). So each has a device of its
# own, a macvlan on c0 with its MAC (52:54:00:99:HH:LL, as the machines file has them), and its
# address 10.79.100.1…; the server knows them statically, as above.
add_machines() { # count
  for i in $(seq 0 $(($1 - 1))); do
    printf 'link add m%d link c0 address 52:54:00:99:%02x:%02x type macvlan mode private\nlink set m%d up\n' \
      "$i" $((i / 256)) $((i % 256)) "$i"
    printf 'addr add 10.79.%d.%d/16 dev m%d\n' $((100 + i / 250)) $((i % 250 + 1)) "$i"
  done | ip -n "$cns" -batch -
  for i in $(seq 0 $(($1 - 1))); do
    printf 'neigh replace 10.79.%d.%d lladdr 52:54:00:99:%02x:%02x nud permanent dev s0\n' \
      $((100 + i / 250)) $((i % 250 + 1)) $((i / 256)) $((i % 256))
  done | ip -n "$sns" -batch -
}
if [[ " ${what[*]} " == *" fleet "* || " ${what[*]} " == *" attack "* || " ${what[*]} " == *" pages "* ]]; then add_machines 1000; fi

wait_port() { # ns proto port
  for _ in $(seq 1 100); do ip netns exec "$1" ss -ln"$2" | grep -q ":$3 " && return 0; sleep 0.05; done
  echo "server did not bind $2 port $3" >&2; exit 1
}
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
rows=()
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' "/proc/$1/stat"; }
row() { rows+=("$(printf '%-58s %12s %12s %8s' "$1" "$2" "$3" "$4")"); }

head -c 4096 /dev/urandom > "$tmp/kernel"
mkdir -p "$tmp/tftp" "$tmp/www"
cp crates/daybreak/ipxe/ipxe.efi "$tmp/tftp/ipxe.efi"
efi_size=$(stat -c %s "$tmp/tftp/ipxe.efi")

daybreak() { # extra args...
  ip netns exec "$sns" env DAYBREAK_LOG=${DAYBREAK_LOG:-info} "$db" serve --kernel "$tmp/kernel" "$@" >/dev/null 2>"$tmp/daybreak.err" &
  pids+=($!)
}

if [[ " ${what[*]} " == *" dhcp "* ]]; then
  # A fleet's server: 10,000 profiles, for the machines the load generator names (52:54:00:00:…).
  awk 'BEGIN { for (i = 0; i < 10000; i++)
    printf "- mac: 52:54:00:00:%02x:%02x\n  hostname: node-%d\n  role: worker\n", int(i / 256), i % 256, i }' \
    > "$tmp/profiles.yaml"
  dnsmasq_dhcp() {
    ip netns exec "$sns" dnsmasq --keep-in-foreground --conf-file=/dev/null --user=root --port=0 --interface=s0 \
      --dhcp-range=10.79.0.0,proxy --pxe-service=X86-64_EFI,"Daybreak bench",ipxe.efi \
      --log-facility=/dev/null &
    pids+=($!); spid=$!; wait_port "$sns" u 67
  }
  # Each run on a state directory of its own, so nothing from an earlier run is in the tables.
  daybreak_dhcp() { # name [extra args…]
    rm -rf "$tmp/state-$1"; daybreak --state-dir "$tmp/state-$1" "${@:2}"; spid=${pids[-1]}; wait_port "$sns" u 67
  }
  profiles=(--machines "$tmp/profiles.yaml")
  dhcp_rows() { # label daybreak dnsmasq
    row "ProxyDHCP offers/s, $1" "$(field rate "$2")" "$(field rate "$3")" "$(ratio "$(field rate "$2")" "$(field rate "$3")")"
    row "  p50 / p99 latency us" "$(field p50_us "$2") / $(field p99_us "$2")" "$(field p50_us "$3") / $(field p99_us "$3")" \
      "$(ratio "$(field p99_us "$2")" "$(field p99_us "$3")")"
    row "  lost" "$(field lost "$2")" "$(field lost "$3")" ""
  }
  # Two rounds, the servers in turn, so a slow moment of the machine shows as a difference
  # between rounds rather than between servers.
  for conc in 1 32; do
    for round in 1 2; do
      daybreak_dhcp plain; d=$(C "$lg" dhcp c0 5 "$conc"); stop_all
      dnsmasq_dhcp; r=$(C "$lg" dhcp c0 5 "$conc"); stop_all
      daybreak_dhcp fleet "${profiles[@]}"; f=$(C "$lg" dhcp c0 5 "$conc" 10000); stop_all
      echo "dhcp c=$conc round $round daybreak: $d"; echo "dhcp c=$conc round $round dnsmasq:  $r"
      echo "dhcp c=$conc round $round daybreak, 10,000 profiles: $f"
      dhcp_rows "$conc in flight, round $round" "$d" "$r"
      dhcp_rows "$conc in flight, 10,000 profiles, round $round" "$f" "$r"
    done
  done
  # The burst: 20,000 machines powering on within 15 s, open loop.
  burst_rows() { # label result reference
    row "ProxyDHCP burst, $1: unanswered" "$(field unanswered "$2")/$(field machines "$2")" \
      "$(field unanswered "$3")/$(field machines "$3")" ""
    row "  retries sent, busiest second's DISCOVERs" "$(field retries "$2"), $(field peak_discovers_per_s "$2")" \
      "$(field retries "$3"), $(field peak_discovers_per_s "$3")" ""
    row "  p50 / p99 / max to the first answer us" "$(field p50_us "$2") / $(field p99_us "$2") / $(field max_us "$2")" \
      "$(field p50_us "$3") / $(field p99_us "$3") / $(field max_us "$3")" "$(ratio "$(field p99_us "$2")" "$(field p99_us "$3")")"
    row "  kernel drops: server port 67 / client port 68" "$(field dhcp_drops "$2") / $(field client_drops "$2")" \
      "$(field dhcp_drops "$3") / $(field client_drops "$3")" ""
    row "  server peak RSS MiB" "$(( $(field peak_rss_kib "$2") / 1024 ))" "$(( $(field peak_rss_kib "$3") / 1024 ))" ""
  }
  dnsmasq_dhcp; r=$(C "$lg" burst c0 20000 15 "$spid"); stop_all; echo "burst dnsmasq: $r"
  daybreak_dhcp plain; d=$(C "$lg" burst c0 20000 15 "$spid"); stop_all; echo "burst daybreak: $d"
  daybreak_dhcp fleet "${profiles[@]}"; f=$(C "$lg" burst c0 20000 15 "$spid"); stop_all
  echo "burst daybreak, 10,000 profiles: $f"
  burst_rows "20,000 machines within 15 s" "$d" "$r"
  burst_rows "20,000 machines within 15 s, 10,000 profiles" "$f" "$r"
fi

if [[ " ${what[*]} " == *" tftp "* ]]; then
  # On two cores the load generator saturates one of them at 100 clients, so throughput there
  # says more about the client than the servers; server CPU per transfer is the comparison.
  specs=("1 60 1" "100 6 1" "1 60 4" "100 6 4")
  declare -A dres dcpu
  daybreak --no-proxy-dhcp; wait_port "$sns" u 69; spid=${pids[-1]}
  for spec in "${specs[@]}"; do
    read -r clients rounds ws <<<"$spec"
    c0=$(cpu_ms "$spid")
    dres[$spec]=$(C "$lg" tftp 10.79.0.2:69 ipxe.efi "$efi_size" "$clients" "$rounds" 1468 "$ws")
    dcpu[$spec]=$(( $(cpu_ms "$spid") - c0 ))
  done
  stop_all
  ip netns exec "$sns" dnsmasq --keep-in-foreground --conf-file=/dev/null --user=root --port=0 --enable-tftp \
    --tftp-root="$tmp/tftp" --tftp-max=1000 --log-facility=/dev/null &
  pids+=($!); spid=$!; wait_port "$sns" u 69
  for spec in "${specs[@]}"; do
    read -r clients rounds ws <<<"$spec"
    c0=$(cpu_ms "$spid")
    r=$(C "$lg" tftp 10.79.0.2:69 ipxe.efi "$efi_size" "$clients" "$rounds" 1468 "$ws")
    rcpu=$(( $(cpu_ms "$spid") - c0 ))
    d=${dres[$spec]}
    echo "tftp clients=$clients ws=$ws daybreak: $d server_cpu_ms=${dcpu[$spec]}"
    echo "tftp clients=$clients ws=$ws dnsmasq:  $r server_cpu_ms=$rcpu"
    label="TFTP ipxe.efi MB/s, $clients client(s), blksize 1468"
    [ "$ws" = 1 ] || label="$label, windowsize 4 asked"
    row "$label" "$(field mb_per_s "$d")" "$(field mb_per_s "$r")" "$(ratio "$(field mb_per_s "$d")" "$(field mb_per_s "$r")")"
    dper=$(awk -v c="${dcpu[$spec]}" -v n="$(field transfers "$d")" 'BEGIN { printf "%.2f", c / n }')
    rper=$(awk -v c="$rcpu" -v n="$(field transfers "$r")" 'BEGIN { printf "%.2f", c / n }')
    row "  server CPU ms per transfer" "$dper" "$rper" "$(ratio "$dper" "$rper")"
    row "  failed transfers" "$(field failed "$d")/$(field transfers "$d")" "$(field failed "$r")/$(field transfers "$r")" ""
  done
  stop_all
fi

if [[ " ${what[*]} " == *" http "* ]]; then
  head -c 1073741824 /dev/urandom > "$tmp/www/big.img"
  cat > "$tmp/nginx.conf" <<EOF
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 1024; }
http {
  sendfile on; tcp_nopush on; access_log off;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  server { listen 127.0.0.1:18091; root $tmp/www; }
}
EOF
  cat "$tmp/www/big.img" > /dev/null   # both start from a warm page cache
  ip netns exec "$sns" "$db" serve --kernel "$tmp/kernel" --rootfs "$tmp/www/big.img" --no-proxy-dhcp --listen 127.0.0.1 --state-dir "$tmp/state-http" \
    --http-port 18090 --tftp-port 16969 >/dev/null 2>&1 &
  pids+=($!); dpid=$!; wait_port "$sns" t 18090
  ip netns exec "$sns" nginx -c "$tmp/nginx.conf" -g 'daemon off;' &
  pids+=($!); wait_port "$sns" t 18091
  npids=$(pgrep -f "nginx: worker process" | tr '\n' ' ')
  nmaster=$(cat "$tmp/nginx.pid")
  # Loopback throughput swings from run to run: interleaved runs (HTTP_REPS, default 5), the median
  # reported.
  by_rate() { # the run with the median throughput
    for l in "$@"; do echo "$(field mib_per_s "$l") $l"; done | sort -n | sed -n "$(( ($# + 1) / 2 ))p" | cut -d' ' -f2-
  }
  for clients in ${HTTP_CLIENTS:-1 8 64}; do
    ds=(); ns=()
    for _ in $(seq 1 "${HTTP_REPS:-5}"); do
      ds+=("$(S "$lg" http 127.0.0.1:18090 /rootfs.squashfs "$clients" "$dpid")")
      # shellcheck disable=SC2086
      ns+=("$(S "$lg" http 127.0.0.1:18091 /big.img "$clients" $nmaster $npids)")
    done
    for l in "${ds[@]}"; do echo "http clients=$clients daybreak: $l"; done
    for l in "${ns[@]}"; do echo "http clients=$clients nginx:    $l"; done
    d=$(by_rate "${ds[@]}"); r=$(by_rate "${ns[@]}")
    row "HTTP 1 GiB MiB/s, $clients client(s), median of ${HTTP_REPS:-5}" "$(field mib_per_s "$d")" "$(field mib_per_s "$r")" "$(ratio "$(field mib_per_s "$d")" "$(field mib_per_s "$r")")"
    row "  peak RSS KiB / failed" "$(field peak_rss_kib "$d")/$(field failed "$d")" "$(field peak_rss_kib "$r")/$(field failed "$r")" ""
  done
  stop_all
fi

if [[ " ${what[*]} " == *" iso "* ]]; then
  # Built on disk next to the repository's target dir, not in a tmpfs: extraction reads and writes a
  # real filesystem, as users' do.
  work=$PWD/target/bench-iso
  rm -rf "$work"; mkdir -p "$work/tree/boot"
  head -c 12582912 /dev/urandom > "$work/tree/boot/vmlinuz-6.6.0"
  ln -s vmlinuz-6.6.0 "$work/tree/boot/kernel"
  head -c 104857600 /dev/urandom > "$work/tree/boot/initrd"
  head -c 3221225472 /dev/urandom > "$work/tree/rootfs.squashfs"
  xorriso -as mkisofs -quiet -R -J -iso-level 3 -V KAIROS -o "$work/kairos.iso" "$work/tree"
  rm -rf "$work/tree"
  iso_size=$(stat -c %s "$work/kairos.iso")
  # Daybreak fsyncs what it writes before renaming it into place; xorriso leaves it in the page
  # cache. The reference is therefore xorriso followed by a sync of its output, and every run
  # starts with the disk's writeback settled, or it pays for the previous run's.
  secs() { local s e; sync; sleep 4; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN { printf "%.2f", b - a }'; }
  cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
  # Outputs are cleared before timing starts (deleting 3 GB is not part of extracting).
  extract_db() { "$db" netboot "$work/kairos.iso" "$work/out-db" kairos; }
  extract_x() {
    mkdir -p "$work/out-x"
    xorriso -osirrox on -indev "$work/kairos.iso" -extract /boot/kernel "$work/out-x/kairos-kernel" \
      -extract /boot/initrd "$work/out-x/kairos-initrd" -extract /rootfs.squashfs "$work/out-x/kairos.squashfs"
  }
  extract_x_sync() { extract_x; sync -f "$work/out-x/kairos.squashfs"; }
  for cache in warm cold; do
    dts=(); xts=(); rts=()
    for _ in 1 2 3 4 5; do
      prep() { rm -rf "$work/out-db" "$work/out-x"; sync; if [ $cache = cold ]; then cold; else cat "$work/kairos.iso" > /dev/null; fi; }
      prep; dts+=("$(secs extract_db)")
      prep; xts+=("$(secs extract_x_sync)")
      prep; rts+=("$(secs extract_x)")
    done
    med() { printf '%s\n' "$@" | sort -n | sed -n 3p; }
    d=$(med "${dts[@]}"); x=$(med "${xts[@]}"); r=$(med "${rts[@]}")
    echo "iso extract $cache: daybreak ${dts[*]} s; xorriso+sync ${xts[*]} s; xorriso alone ${rts[*]} s"
    row "ISO $((iso_size >> 20)) MiB: extract 3 files + sync, $cache, s, median of 5" "$d" "$x" "$(ratio "$x" "$d")"
    row "  xorriso without syncing its output, s" "" "$r" ""
  done
  extract_db >/dev/null 2>&1; extract_x >/dev/null 2>&1
  cmp "$work/out-db/kairos.squashfs" "$work/out-x/kairos.squashfs" || { echo "extracted files differ" >&2; exit 1; }
  # serve --iso: from exec to ready, cold cache.
  cold
  s=$(date +%s.%N)
  ip netns exec "$sns" "$db" serve --iso "$work/kairos.iso" --no-proxy-dhcp >"$tmp/iso-serve.log" 2>&1 &
  pids+=($!)
  until grep -q " ready" "$tmp/iso-serve.log"; do sleep 0.005; done
  e=$(date +%s.%N)
  stop_all
  row "ISO: daybreak serve --iso, start to ready, s (cold cache)" "$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.3f", b - a }')" "-" ""
  rm -rf "$work"
fi

if [[ " ${what[*]} " == *" oci "* ]]; then
  work=$PWD/target/bench-oci
  layout=$work/layout
  # The image: this machine's /usr/lib/x86_64-linux-gnu, /usr/bin + /usr/libexec, and a /boot
  # with an incompressible kernel and initrd, as three gzip layers. Kept between runs.
  if [ ! -f "$layout/index.json" ]; then
    mkdir -p "$work/boot/boot"
    head -c 12582912 /dev/urandom > "$work/boot/boot/vmlinuz-6.6.0-1-amd64"
    head -c 62914560 /dev/urandom > "$work/boot/boot/initrd.img-6.6.0-1-amd64"
    bash scripts/oci-layout.sh "$layout" v1 "/:usr/lib/x86_64-linux-gnu" "/:usr/bin usr/libexec" "$work/boot:boot" >/dev/null
    rm -rf "$work/boot"
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n  secret: bench\n' "$work/registry" "$port" > "$work/registry.yml"
  rm -rf "$work/registry"
  docker-registry serve "$work/registry.yml" >"$tmp/registry.log" 2>&1 &
  pids+=($!)
  until curl -fs "http://127.0.0.1:$port/v2/" >/dev/null; do sleep 0.1; done
  image=127.0.0.1:$port/bench/kairos:v1
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:v1" "docker://$image"
  raw=$(du -sb /usr/lib/x86_64-linux-gnu /usr/bin /usr/libexec | awk '{ s += $1 } END { printf "%d", s / 1048576 }')
  timed() { # cmd... -> prints "seconds peak_kib"; a failed command stops the bench
    local s e
    sync; s=$(date +%s.%N)
    /usr/bin/time -o "$tmp/time" -f "%M %x" "$@" >/dev/null 2>"$tmp/timed.err" ||
      { echo "bench command failed: $*" >&2; cat "$tmp/timed.err" >&2; kill $$; }
    e=$(date +%s.%N)
    awk -v a="$s" -v b="$e" -v m="$(tail -1 "$tmp/time" | cut -d' ' -f1)" 'BEGIN { printf "%.3f %s\n", b - a, m }'
  }
  pipeline() {
    rm -rf "$work/p"; mkdir -p "$work/p/iso/boot"
    skopeo copy --quiet --src-tls-verify=false "docker://$image" "oci:$work/p/oci:v1" &&
    umoci unpack --rootless --image "$work/p/oci:v1" "$work/p/bundle" >/dev/null &&
    mksquashfs "$work/p/bundle/rootfs" "$work/p/iso/rootfs.squashfs" -b 1024k -comp gzip -noappend -quiet -no-progress &&
    cp "$work/p/bundle/rootfs/boot/vmlinuz-6.6.0-1-amd64" "$work/p/iso/boot/kernel" &&
    cp "$work/p/bundle/rootfs/boot/initrd.img-6.6.0-1-amd64" "$work/p/iso/boot/initrd" &&
    xorriso -as mkisofs -quiet -R -J -iso-level 3 -o "$work/p/kairos.iso" "$work/p/iso" &&
    mkdir -p "$work/p/out" &&
    xorriso -osirrox on -indev "$work/p/kairos.iso" -extract /boot/kernel "$work/p/out/kairos-kernel" \
      -extract /boot/initrd "$work/p/out/kairos-initrd" -extract /rootfs.squashfs "$work/p/out/kairos.squashfs" &&
    sync
  }
  export -f pipeline; export work image
  rm -rf "$work/state" "$work/out"
  read -r dcold dmem < <(timed "$db" netboot "$image" "$work/out" --state-dir "$work/state")
  read -r dwarm _ < <(timed "$db" netboot "$image" "$work/out2" --state-dir "$work/state")
  read -r pcold _ < <(timed bash -c pipeline)
  echo "oci: daybreak cold ${dcold}s (peak ${dmem} KiB), warm ${dwarm}s; pipeline ${pcold}s"
  row "OCI ${raw} MiB image, 3 layers: registry to 3 files, cold, s" "$dcold" "$pcold" "$(ratio "$pcold" "$dcold")"
  row "  same digest again (warm), s" "$dwarm" "" ""
  # The squashfs step alone, on the unpacked tree the pipeline made.
  tree=$work/p/bundle/rootfs
  rm -rf "$work/state-dir" "$work/out-dir" "$work/m.squashfs"
  read -r ds dm < <(timed "$db" netboot "dir://$tree" "$work/out-dir" --state-dir "$work/state-dir")
  read -r ms mm < <(timed mksquashfs "$tree" "$work/m.squashfs" -b 1024k -comp gzip -noappend -quiet -no-progress)
  echo "squashfs: daybreak ${ds}s ${dm} KiB $(stat -c %s "$work/out-dir/kairos.squashfs") B; mksquashfs ${ms}s ${mm} KiB $(stat -c %s "$work/m.squashfs") B"
  row "  squashfs of the unpacked tree (gzip, 1 MiB blocks), s" "$ds" "$ms" "$(ratio "$ms" "$ds")"
  row "  squashfs peak RSS, MiB" "$((dm / 1024))" "$((mm / 1024))" "$(ratio "$dm" "$mm")"
  row "  squashfs size, MiB" "$(( $(stat -c %s "$work/out-dir/kairos.squashfs") >> 20 ))" "$(( $(stat -c %s "$work/m.squashfs") >> 20 ))" ""
  stop_all
  rm -rf "$work/p" "$work/state" "$work/state-dir" "$work/out" "$work/out2" "$work/out-dir" "$work/m.squashfs" "$work/registry"
fi

ks=$((4 << 20)); is=$((1 << 20)); rs=$((8 << 20))
head -c "$ks" /dev/urandom > "$tmp/storm-kernel"; head -c "$is" /dev/urandom > "$tmp/storm-initrd"
head -c "$rs" /dev/urandom > "$tmp/storm-rootfs"
sizes="$efi_size,$ks,$is,$rs"
storm_args=()
storm_server() { # [prlimit args…]: starts the server (with "${storm_args[@]}"), sets spid
  ip netns exec "$sns" "$@" "$db" serve --kernel "$tmp/storm-kernel" --initrd "$tmp/storm-initrd" \
    --rootfs "$tmp/storm-rootfs" --interface s0 "${storm_args[@]}" >/dev/null 2>"$tmp/storm.err" &
  pids+=($!); spid=$!; wait_port "$sns" u 67; wait_port "$sns" t 8090
}

storm_rows() { # label result
  row "$1: failed machines" "$(field failed "$2")/$(field machines "$2")" "" ""
  row "  whole boot p50 / p99 ms" "$(field boot_p50_ms "$2") / $(field boot_p99_ms "$2")" "" ""
  for ph in dhcp pxe4011 tftp script kernel initrd rootfs; do
    row "  $ph p50 / p99 ms" "$(field "${ph}_p50_ms" "$2") / $(field "${ph}_p99_ms" "$2")" "" ""
  done
  row "  server peak RSS MiB, peak descriptors" "$(( $(field peak_rss_kib "$2") / 1024 )), $(field peak_fds "$2")" "" ""
  row "  kernel drops on the DHCP / TFTP sockets" "$(field dhcp_drops "$2") / $(field tftp_drops "$2")" "" ""
}

if [[ " ${what[*]} " == *" storm "* ]]; then
  # The flood's addresses: 10.79.20.1… (forged TFTP requests), 10.79.40.1… (idle connections).
  add_hosts 20 1200; add_hosts 40 42
  storm_beside_flood() { # label
    ip netns exec "$cns" "$lg" flood 10.79.0.2 120 > "$tmp/flood.out" & fpid=$!
    sleep 3
    r=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid"); echo "$1: $r"
    kill "$fpid" 2>/dev/null || true; wait "$fpid" 2>/dev/null || true
    storm_rows "$1" "$r"
    stop_all
    # The server's own counts, from the line it logs when it stops.
    st=$(grep 'stopped' "$tmp/storm.err" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
    echo "server at stop: $st"
    row "  TFTP: transfers evicted / requests unanswered (busy, over rate)" \
      "$(field tftp_evicted "$st") / $(field tftp_busy "$st"), $(field tftp_rate_limited "$st")" "" ""
  }
  storm_server
  for n in 200 1000; do
    r=$(C "$lg" storm c0 10.79.0.2 "$n" "$sizes" "$spid"); echo "storm n=$n: $r"
    storm_rows "Boot storm, $n machines at once" "$r"
  done
  storm_beside_flood "Boot storm, 1000 machines, beside the flood"
  # The same under the common 1,024-descriptor limit (hard, so the server cannot raise it):
  # 224 TFTP slots and 672 HTTP connections for 1,000 machines and the flood.
  storm_server prlimit --nofile=1024:1024
  storm_beside_flood "Boot storm, 1000 machines, beside the flood, 1024 descriptors"
fi

# The fleet's files: the storm's machines are 52:54:00:99:HH:LL (i = 0…999), every fourth installed
# (a record that says so; action install, the default) and the others `action: live`, each with its
# own cloud-config template (its hostname); 10,000 more are known from before: records in the store and
# profiles in the machines file, as a fleet's server has them.
fleet_files() {
  rm -rf "$tmp/fleet"; mkdir -m 700 -p "$tmp/fleet/state/machines"
  awk -v dir="$tmp/fleet/state/machines" -v list="$tmp/fleet/machines.yaml" 'BEGIN {
    for (i = 0; i < 10000; i++) {
      mac = sprintf("52:54:aa:00:%02x:%02x", int(i / 256), i % 256)
      f = sprintf("%s/5254aa00%04x.json", dir, i)
      printf "{\"mac\":\"%s\",\"first_seen\":1796000000,\"last_seen\":1796000000,\"boots\":3,\"installed_at\":1796000100}\n", mac > f
      close(f)
      printf "- mac: %s\n  hostname: known-%d\n  role: worker\n", mac, i > list
    }
    for (i = 0; i < 1000; i++) {
      mac = sprintf("52:54:00:99:%02x:%02x", int(i / 256), i % 256)
      if (i % 4 == 0) {
        f = sprintf("%s/52540099%04x.json", dir, i)
        printf "{\"mac\":\"%s\",\"first_seen\":1796000000,\"last_seen\":1796000000,\"boots\":1,\"installed_at\":1796000100}\n", mac > f
        close(f)
        printf "- mac: %s\n  hostname: storm-%d\n  role: worker\n", mac, i > list
      } else
        printf "- mac: %s\n  hostname: storm-%d\n  action: live\n  role: worker\n  cloud_config: |\n    #cloud-config\n    hostname: [[[ .hostname ]]]\n", mac, i > list
    }
  }'
  printf '#cloud-config\nhostname: [[[ .hostname ]]]\n' > "$tmp/fleet/config.yaml"
  storm_args=(--machines "$tmp/fleet/machines.yaml" --state-dir "$tmp/fleet/state" --cloud-config "$tmp/fleet/config.yaml")
}
fleet_rows() { # label result
  storm_rows "$1" "$2"
  row "  config p50 / p99 ms" "$(field config_p50_ms "$2") / $(field config_p99_ms "$2")" "" ""
  row "  machines given another answer than their own / sent to disk" "$(field wrong "$2") / $(field local "$2")" "" ""
}

if [[ " ${what[*]} " == *" fleet "* ]]; then
  storm_args=(); storm_server
  plain=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid"); echo "storm without a fleet: $plain"
  stop_all
  fleet_files
  storm_server
  r=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid" 100 fleet); echo "storm with a fleet: $r"
  sleep 2
  t0=$(date +%s%N)
  # Every page of it, from the admin listener on the server's loopback.
  : > "$tmp/fleet/machines.json"; off=0
  while :; do
    S curl -fs -o "$tmp/fleet/page.json" "http://127.0.0.1:8091/api/machines?offset=$off&limit=1000" || break
    cat "$tmp/fleet/page.json" >> "$tmp/fleet/machines.json"
    n=$(grep -o '"mac"' "$tmp/fleet/page.json" | wc -l || true)
    [ "$n" -gt 0 ] || break
    off=$((off + n))
  done
  api_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  known=$(grep -o '"mac"' "$tmp/fleet/machines.json" | wc -l)
  live=$(grep -o '"phase":"[a-z ]*"' "$tmp/fleet/machines.json" | grep -vc '"seen"\|"installed"' || true)
  rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$spid/status")
  records=$(find "$tmp/fleet/state/machines" -name '*.json' | wc -l)
  stop_all
  busy=$(grep -c "machine store busy" "$tmp/storm.err" || true)
  echo "fleet: known=$known with_timeline=$live rss_after_mib=$rss records=$records api_ms=$api_ms store_busy=$busy"
  fleet_rows "Fleet: 1000-machine storm, 11,000 known, 1,000 timelines" "$r"
  row "  peak RSS MiB, with a fleet vs without" "$(( $(field peak_rss_kib "$r") / 1024 ))" "$(( $(field peak_rss_kib "$plain") / 1024 ))" \
    "$(ratio "$(field peak_rss_kib "$r")" "$(field peak_rss_kib "$plain")")"
  row "  whole boot p50 ms, with a fleet vs without" "$(field boot_p50_ms "$r")" "$(field boot_p50_ms "$plain")" \
    "$(ratio "$(field boot_p50_ms "$r")" "$(field boot_p50_ms "$plain")")"
  row "  machines known / with a timeline / records on disk" "$known / $live / $records" "" ""
  row "  GET /api/machines ms (all its pages), RSS after MiB" "$api_ms, $rss" "" ""
fi

if [[ " ${what[*]} " == *" pages "* ]]; then
  # The same fleet storm three times, each on a fresh server with the same files: no page open,
  # 100 pages following the events, 100 pages polling.
  declare -A seen got
  for mode in none events poll; do
    fleet_files
    storm_server
    if [ "$mode" != none ]; then
      ip netns exec "$sns" "$lg" pages 127.0.0.1:8091 100 "$mode" > "$tmp/pages.out" & ppid=$!
      sleep 2
    fi
    seen[$mode]=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid" 100 fleet); echo "storm, pages $mode: ${seen[$mode]}"
    if [ "$mode" != none ]; then
      kill -TERM "$ppid"; wait "$ppid" 2>/dev/null || true
      got[$mode]=$(cat "$tmp/pages.out"); echo "pages: ${got[$mode]}"
    fi
    stop_all
  done
  for mode in events poll; do
    r=${seen[$mode]}; n=${seen[none]}; p=${got[$mode]}
    row "Pages: fleet storm with 100 pages open ($mode): failed machines" "$(field failed "$r")/$(field machines "$r")" "" ""
    row "  whole boot p50 ms, with the pages vs none" "$(field boot_p50_ms "$r")" "$(field boot_p50_ms "$n")" \
      "$(ratio "$(field boot_p50_ms "$r")" "$(field boot_p50_ms "$n")")"
    row "  whole boot p99 ms, with the pages vs none" "$(field boot_p99_ms "$r")" "$(field boot_p99_ms "$n")" \
      "$(ratio "$(field boot_p99_ms "$r")" "$(field boot_p99_ms "$n")")"
    row "  peak RSS MiB, with the pages vs none" "$(( $(field peak_rss_kib "$r") / 1024 ))" "$(( $(field peak_rss_kib "$n") / 1024 ))" \
      "$(ratio "$(field peak_rss_kib "$r")" "$(field peak_rss_kib "$n")")"
    row "  the pages: updates / MiB received / errors, in $(field seconds "$p") s" \
      "$(field updates "$p") / $(( $(field bytes "$p") / 1048576 )) / $(field errors "$p")" "" ""
  done
fi

if [[ " ${what[*]} " == *" attack "* ]]; then
  # The attacker's own addresses: 10.79.60.1…64, on c0 (its MAC is none of the machines').
  add_hosts 60 64
  fleet_files
  storm_server
  ip netns exec "$cns" "$lg" attack c0 10.79.0.2 300 1000 > "$tmp/attack.out" 2>"$tmp/attack.err" & apid=$!
  sleep 3
  r=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid" 100 fleet); echo "storm beside the attacker: $r"
  kill -TERM "$apid" 2>/dev/null || true; wait "$apid" 2>/dev/null || true
  a=$(cat "$tmp/attack.out"); echo "attacker: $a"
  head -5 "$tmp/attack.err" >&2 || true
  sleep 1
  again=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid" 100 fleet); echo "the same machines again: $again"
  S curl -fs "http://127.0.0.1:8091/metrics" > "$tmp/attack.metrics" || true
  doubts=$(awk '/^daybreak_identity_doubts_total\{/ { n += $2 } END { print n + 0 }' "$tmp/attack.metrics")
  stop_all
  fleet_rows "Attack: 1000-machine fleet storm beside an attacker" "$r"
  row "  attacker: forged DHCPREQUESTs / TFTP requests / idle connections" \
    "$(field forged_dhcp "$a") / $(field rrq "$a") / $(field idle_opened "$a")" "" ""
  row "  attacker: asked by MAC / answered / with a machine's own" \
    "$(field scripts_asked "$a") / $(field answered "$a") / $(field personal "$a")" "" ""
  row "  requests doubted (daybreak_identity_doubts_total)" "$doubts" "" ""
  fleet_rows "Attack: the same machines again, attacker gone" "$again"
fi

if [[ " ${what[*]} " == *" cluster "* ]]; then
  # etcd (Debian's etcd-server) in the server's namespace, on its loopback, holding machine records
  # as Daybreak writes them (every fourth installed): 60,000 under /bench60, as many as in a file
  # store beside it (which holds 65,536 at most), and 100,000 under /bench.
  ip netns exec "$sns" etcd --name bench --data-dir "$tmp/etcd" --log-level error \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bench=http://127.0.0.1:2380 >"$tmp/etcd.err" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do S etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  seeded=$(S "$lg" etcd-seed 127.0.0.1:2379 /bench 100000); echo "etcd /bench: $seeded"
  seeded60=$(S "$lg" etcd-seed 127.0.0.1:2379 /bench60 60000); echo "etcd /bench60: $seeded60"
  mkdir -m 700 -p "$tmp/cluster/file/machines" "$tmp/cluster/etcd" "$tmp/cluster/etcd60"
  awk -v dir="$tmp/cluster/file/machines" 'BEGIN {
    for (i = 0; i < 60000; i++) {
      mac = sprintf("52:54:bb:%02x:%02x:%02x", int(i / 65536), int(i / 256) % 256, i % 256)
      f = sprintf("%s/5254bb%02x%02x%02x.json", dir, int(i / 65536), int(i / 256) % 256, i % 256)
      printf "{\"mac\":\"%s\",\"first_seen\":1796000000,\"last_seen\":1796000000,\"boots\":3,\"arch\":\"amd64\",\"firmware\":\"UEFI PXE, then iPXE\"%s}\n", \
        mac, (i % 4 == 0 ? ",\"installed_at\":1796000100" : "") > f
      close(f)
    }
  }'
  replica() { # label args...: starts a replica and waits until it is ready; sets rpid and started
    local label=$1; shift
    local t0; t0=$(date +%s%N)
    ip netns exec "$sns" "$db" serve --kernel "$tmp/kernel" --no-proxy-dhcp "$@" >/dev/null 2>"$tmp/cluster-$label.err" &
    pids+=($!); rpid=$!
    for _ in $(seq 1 1200); do grep -q " ready" "$tmp/cluster-$label.err" && break; sleep 0.05; done
    grep -q " ready" "$tmp/cluster-$label.err" || { echo "the $label replica did not start" >&2; tail -5 "$tmp/cluster-$label.err" >&2; exit 1; }
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    sleep 1
    started="start_ms=$ms rss_mib=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$rpid/status") \
known=$(grep -o '[0-9]* machines remembered' "$tmp/cluster-$label.err" | head -1 | cut -d' ' -f1)"
    echo "$label: $started"
  }
  stop_replica() { kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true; }
  replica file60 --state-dir "$tmp/cluster/file"; f=$started; stop_replica
  replica etcd60 --state-dir "$tmp/cluster/etcd60" --store etcd://127.0.0.1:2379/bench60; e60=$started; stop_replica
  replica etcd100 --state-dir "$tmp/cluster/etcd" --store etcd://127.0.0.1:2379/bench; e=$started
  lag=$(S "$lg" etcd-lag 127.0.0.1:2379 /bench 127.0.0.1:8091 200); echo "etcd: $lag"
  stop_replica
  # The 1,000-machine storm against a replica on etcd, then on the file store, the same server
  # otherwise: the data plane answers from memory either way. (The storm's machines share one
  # link address, so none is vouched for and nothing of theirs is written: the store is
  # attached, not loaded; writes under a storm are the fleet storm's, not yet run on etcd.)
  storm_args=(--state-dir "$tmp/cluster/storm-etcd" --store etcd://127.0.0.1:2379/storm); storm_server
  se=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid"); echo "storm on etcd: $se"
  kill "$spid"; wait "$spid" 2>/dev/null || true
  storm_args=(--state-dir "$tmp/cluster/storm-file"); storm_server
  sf=$(C "$lg" storm c0 10.79.0.2 1000 "$sizes" "$spid"); echo "storm on the file store: $sf"
  stop_all
  row "Replica start, 60,000 machine records: etcd vs file store ms" "$(field start_ms "$e60")" "$(field start_ms "$f")" \
    "$(ratio "$(field start_ms "$e60")" "$(field start_ms "$f")")"
  row "  RSS after start MiB, etcd vs file store" "$(field rss_mib "$e60")" "$(field rss_mib "$f")" \
    "$(ratio "$(field rss_mib "$e60")" "$(field rss_mib "$f")")"
  row "  records known at start, etcd / file store" "$(field known "$e60") / $(field known "$f")" "" ""
  row "Replica start, 100,000 records in etcd ms / RSS MiB / known" \
    "$(field start_ms "$e") / $(field rss_mib "$e") / $(field known "$e")" "" ""
  row "  an install written to etcd, seen on /api/machines p50 / p99 ms" \
    "$(field lag_p50_ms "$lag") / $(field lag_p99_ms "$lag")" "" ""
  row "Boot storm, 1000 machines, store idle: failed, etcd / file" "$(field failed "$se")" "$(field failed "$sf")" ""
  for ph in dhcp script boot; do
    row "  $ph p99 ms, etcd store vs file store" "$(field "${ph}_p99_ms" "$se")" "$(field "${ph}_p99_ms" "$sf")" \
      "$(ratio "$(field "${ph}_p99_ms" "$se")" "$(field "${ph}_p99_ms" "$sf")")"
  done
  row "  server peak RSS MiB, etcd store vs file store" "$(( $(field peak_rss_kib "$se") / 1024 ))" \
    "$(( $(field peak_rss_kib "$sf") / 1024 ))" "$(ratio "$(field peak_rss_kib "$se")" "$(field peak_rss_kib "$sf")")"

  # The storm across three replicas on a three-member etcd, each in a namespace of its own on one
  # bridge with the machines' namespace: 1,000 machines (each its own MAC on a macvlan, known to
  # every replica's neighbour table) powered on over 15 s, each installing through its own
  # cloud-config's install URL; replica 1 is killed (-9) at 5 s, the etcd leader at 10 s.
  k=dbkc$id; kns=("${k}br" "${k}c" "${k}r0" "${k}r1" "${k}r2" "${k}e0" "${k}e1" "${k}e2")
  cluster_cleanup() {
    for ns in "${kns[@]}"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; done
  }
  for ns in "${kns[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip -n "${k}br" link add br0 type bridge; ip -n "${k}br" link set br0 up
  plug() { # ns address
    ip -n "${k}br" link add "p${1#$k}" type veth peer name e0 netns "$1"
    ip -n "${k}br" link set "p${1#$k}" master br0 up
    ip -n "$1" addr add "$2/16" dev e0; ip -n "$1" link set e0 up
  }
  plug "${k}c" 10.79.0.10
  for i in 0 1 2; do plug "${k}r$i" "10.79.0.$((2 + i))"; plug "${k}e$i" "10.79.0.$((21 + i))"; done
  for i in $(seq 0 999); do
    printf 'link add m%d link e0 address 52:54:00:99:%02x:%02x type macvlan mode private\nlink set m%d up\n' \
      "$i" $((i / 256)) $((i % 256)) "$i"
    printf 'addr add 10.79.%d.%d/16 dev m%d\n' $((100 + i / 250)) $((i % 250 + 1)) "$i"
  done | ip -n "${k}c" -batch -
  for i in 0 1 2; do
    for m in $(seq 0 999); do
      printf 'neigh replace 10.79.%d.%d lladdr 52:54:00:99:%02x:%02x nud permanent dev e0\n' \
        $((100 + m / 250)) $((m % 250 + 1)) $((m / 256)) $((m % 256))
    done | ip -n "${k}r$i" -batch -
  done
  members=""; for i in 0 1 2; do members+="${members:+,}e$i=http://10.79.0.$((21 + i)):2380"; done
  epids=()
  for i in 0 1 2; do
    a=10.79.0.$((21 + i))
    ip netns exec "${k}e$i" etcd --name "e$i" --data-dir "$tmp/ketcd$i" --log-level error \
      --listen-client-urls "http://$a:2379" --advertise-client-urls "http://$a:2379" \
      --listen-peer-urls "http://$a:2380" --initial-advertise-peer-urls "http://$a:2380" \
      --initial-cluster "$members" --initial-cluster-state new >"$tmp/ketcd$i.err" 2>&1 &
    pids+=($!); epids+=($!)
  done
  kstore=etcd://10.79.0.21:2379,10.79.0.22:2379,10.79.0.23:2379/storm
  for _ in $(seq 1 100); do ip netns exec "${k}e0" etcdctl --endpoints=http://10.79.0.21:2379 endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  awk -v list="$tmp/kmachines.yaml" 'BEGIN {
    for (i = 0; i < 1000; i++)
      printf "- mac: 52:54:00:99:%02x:%02x\n  hostname: storm-%d\n  cloud_config: |\n    #cloud-config\n    hostname: [[[ .hostname ]]]\n    install: [[[ .daybreak.installed_url ]]]\n", int(i / 256), i % 256, i > list
  }'
  rpids=()
  for i in 0 1 2; do
    extra=(); [ "$i" = 0 ] && extra=(--machines "$tmp/kmachines.yaml")
    ip netns exec "${k}r$i" "$db" serve --kernel "$tmp/storm-kernel" --initrd "$tmp/storm-initrd" \
      --rootfs "$tmp/storm-rootfs" --interface e0 --state-dir "$tmp/kr$i" --store "$kstore" "${extra[@]}" \
      >/dev/null 2>"$tmp/kr$i.err" &
    pids+=($!); rpids+=($!)
    for _ in $(seq 1 400); do grep -q " ready" "$tmp/kr$i.err" && break; sleep 0.05; done
    grep -q " ready" "$tmp/kr$i.err" || { echo "replica $i did not start" >&2; tail -5 "$tmp/kr$i.err" >&2; exit 1; }
  done
  sleep 2
  leader_pid() { # the pid of the etcd member that leads now
    for i in 0 1 2; do
      local j; j=$(ip netns exec "${k}e$i" etcdctl --endpoints="http://10.79.0.$((21 + i)):2379" endpoint status -w json 2>/dev/null)
      [ -n "$j" ] && [ "$(grep -o '"member_id":[0-9]*' <<<"$j" | cut -d: -f2)" = "$(grep -o '"leader":[0-9]*' <<<"$j" | cut -d: -f2)" ] &&
        { echo "${epids[$i]}"; return; }
    done
  }
  (
    sleep 5; kill -9 "${rpids[1]}"
    sleep 5; l=$(leader_pid); [ -n "$l" ] && kill -9 "$l"
    echo "killed replica 1 at 5 s and the etcd leader ($l) at 10 s" >&2
  ) &
  killer=$!
  cs=$(ip netns exec "${k}c" "$lg" cluster-storm e0 1000 "$sizes" "$(IFS=,; echo "${rpids[*]}")" \
    10.79.0.2,10.79.0.3,10.79.0.4 100 15 5,10); echo "storm across replicas: $cs"
  wait "$killer" || true
  installed=$(ip netns exec "${k}e1" etcdctl --endpoints=http://10.79.0.22:2379,http://10.79.0.23:2379 \
    get --prefix /storm/machines/ --print-value-only 2>/dev/null | grep -c '"installed_at"' || true)
  stop_all; cluster_cleanup
  row "Storm across 3 replicas, 1000 machines over 15 s: failed" "$(field failed "$cs")/$(field machines "$cs")" "" ""
  row "  replica 1 killed at 5 s, etcd leader at 10 s: boots restarted" "$(field restarts "$cs")" "" ""
  row "  installs committed but never answered (then sent to disk)" "$(field unanswered "$cs")" "" ""
  row "  records installed in etcd / second boots told local" "$installed / $(field local "$cs")" "" ""
  row "  install seen on another replica p50 / p99 / max ms" \
    "$(field lag_p50_ms "$cs") / $(field lag_p99_ms "$cs") / $(field lag_max_ms "$cs")" "" ""
  row "    of which the script request that saw it p50 / p99 ms" "$(field ask_p50_ms "$cs") / $(field ask_p99_ms "$cs")" "" ""
  row "  DHCP p50 / p99 ms; p99 in the 3 s after each kill" \
    "$(field dhcp_p50_ms "$cs") / $(field dhcp_p99_ms "$cs"); $(field kill_dhcp_p99_ms "$cs")" "" ""
  row "  whole boot p50 / p99 ms" "$(field boot_p50_ms "$cs") / $(field boot_p99_ms "$cs")" "" ""
  row "  peak RSS per replica MiB" "$(field rss_mib "$cs")" "" ""
fi

echo
printf '%-58s %12s %12s %8s\n' "benchmark ($(nproc) cores, $(date -u +%F))" "daybreak" "reference" "ratio"
printf '%s\n' "${rows[@]}"
