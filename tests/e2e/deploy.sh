#!/usr/bin/env bash
# Daybreak as it is deployed, on a private network made of namespaces (CLI 10.76.0.10 ~ SRV
# 10.76.0.2, a veth pair; nothing leaves them):
#
#   deploy.sh container DAYBREAK_BIN   the image built by scripts/container.sh, run by podman in SRV
#                                      with every capability dropped but NET_BIND_SERVICE and NET_RAW:
#                                      `serve`, then the Kairos docs' shape (the default command with
#                                      --set container_image=… --cloud-config …, here a dir:// image)
#   deploy.sh service DAYBREAK_BIN     dist/daybreak.service: `systemd-analyze verify` clean, and its
#                                      ExecStart run as that unit runs it: a user of its own (not
#                                      root), ambient NET_BIND_SERVICE and NET_RAW only, no new privileges
#
# Each serves a kernel, initrd, squashfs and cloud-config; the client fetches the boot script, the
# kernel over HTTP and undionly.kpxe over TFTP, byte for byte. Prints DEPLOY-PASS or DEPLOY-FAIL.
set -euo pipefail
what=${1:?container|service}; bin=${2:?daybreak binary}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
id=$$; cli=dbd${id}c; srv=dbd${id}s; tag=localhost/daybreak:deploy-$id
tmp=$(mktemp -d /tmp/daybreak-deploy.XXXXXX); chmod 755 "$tmp"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$what" = container ]; then
    podman --runtime runc rm -f "daybreak-$id" >/dev/null 2>&1 || true
    podman rmi -f "$tag" >/dev/null 2>&1 || true
  fi
  ip netns del "$cli" 2>/dev/null || true; ip netns del "$srv" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "DEPLOY-FAIL ($what): $*"
  [ -f "$tmp/daybreak.log" ] && { echo "----- daybreak log"; tail -n 40 "$tmp/daybreak.log"; }
  exit 1
}
C() { ip netns exec "$cli" "$@"; }

ip netns add "$cli"; ip netns add "$srv"
ip -n "$cli" link add c0 type veth peer name s0 netns "$srv"
ip -n "$cli" addr add 10.76.0.10/24 dev c0; ip -n "$srv" addr add 10.76.0.2/24 dev s0
for n in "$cli" "$srv"; do ip -n "$n" link set lo up; done
ip -n "$cli" link set c0 up; ip -n "$srv" link set s0 up

mkdir -p "$tmp/files"
head -c 3000000 /dev/urandom > "$tmp/files/kernel"; head -c 1000000 /dev/urandom > "$tmp/files/initrd"
head -c 2000000 /dev/urandom > "$tmp/files/rootfs.squashfs"
printf '#cloud-config\nhostname: deploy\n' > "$tmp/files/config.yaml"
chmod -R a+rX "$tmp/files"
args=(serve --kernel /files/kernel --initrd /files/initrd --rootfs /files/rootfs.squashfs
      --cloud-config /files/config.yaml)

case "$what" in
  container)
    bash "$repo_root/scripts/container.sh" --binary "$bin" "$tag" >/dev/null || fail "building the image failed"
    size=$(podman image inspect "$tag" --format '{{.Size}}')
    entry=$(podman image inspect "$tag" --format '{{json .Config.Entrypoint}}')
    [ "$entry" = '["/usr/bin/daybreak"]' ] || fail "entrypoint is $entry"
    echo "image $tag: $((size / 1048576)) MiB, entrypoint $entry"
    # The image holds the binary, its libraries and the CA certificates, and no shell.
    podman --runtime runc run --rm --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
      --entrypoint /bin/sh "$tag" -c true >/dev/null 2>&1 && fail "the image has a shell"
    # crun cannot set up cgroups on hosts like this one: runc can. The limits are set to what the
    # host allows (podman would ask for more).
    podman --runtime runc run -d --name "daybreak-$id" --network "ns:/run/netns/$srv" \
      --cap-drop all --cap-add NET_BIND_SERVICE --cap-add NET_RAW \
      --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 -v "$tmp/files:/files:ro" \
      "$tag" "${args[@]}" >/dev/null || fail "podman could not start the image"
    logs() { podman logs "daybreak-$id" > "$tmp/daybreak.log" 2>&1 || true; }
    ;;
  service)
    unit=$repo_root/dist/daybreak.service
    sed "s|/usr/bin/daybreak|$bin|" "$unit" > "$tmp/daybreak.service"
    systemd-analyze verify "$tmp/daybreak.service" > "$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log"; fail "systemd-analyze verify failed"; }
    [ ! -s "$tmp/verify.log" ] || { cat "$tmp/verify.log"; fail "systemd-analyze verify warned"; }
    caps=$(sed -n 's/^AmbientCapabilities=//p' "$unit" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
    [ "$caps" = "+net_bind_service,+net_raw" ] || fail "the unit's capabilities changed: $caps"
    # The unit's user: uid and gid 61000 here, owner of the state directory (StateDirectory=).
    state=$tmp/state; mkdir -m 0700 "$state"; chown 61000:61000 "$state"
    ip netns exec "$srv" setpriv --reuid=61000 --regid=61000 --clear-groups --no-new-privs \
      --inh-caps=-all,$caps --ambient-caps=-all,$caps --bounding-set=-all,$caps \
      env -C "$tmp/files" -u HOME "$bin" "${args[@]/#\/files/$tmp/files}" --state-dir "$state" \
      > "$tmp/daybreak.log" 2>&1 &
    pids+=($!)
    logs() { :; }
    ;;
  *) fail "unknown: $what" ;;
esac

for _ in $(seq 1 100); do
  logs; grep -q " ready" "$tmp/daybreak.log" 2>/dev/null && break; sleep 0.2
done
grep -q " ready" "$tmp/daybreak.log" || fail "daybreak did not get ready"
for port in 67 69 4011; do
  ip netns exec "$srv" ss -lun | grep -q ":$port " || fail "nothing listens on UDP $port"
done
script=$(C curl -sf http://10.76.0.2:8090/boot.ipxe) || fail "no boot script"
case "$script" in '#!ipxe'*) ;; *) fail "the boot script is not iPXE: $script" ;; esac
C curl -sf -o "$tmp/kernel.out" http://10.76.0.2:8090/kernel || fail "no kernel over HTTP"
cmp -s "$tmp/kernel.out" "$tmp/files/kernel" || fail "the kernel differs"
C curl -sf -o "$tmp/undionly.out" tftp://10.76.0.2/undionly.kpxe || fail "no undionly.kpxe over TFTP"
cmp -s "$tmp/undionly.out" "$repo_root/crates/daybreak/ipxe/undionly.kpxe" || fail "undionly.kpxe differs"
logs
if [ "$what" = service ]; then
  # As that user, with the capabilities and nothing else.
  pid=${pids[-1]}; child=$(pgrep -P "$pid" -x daybreak || echo "$pid")
  st=/proc/$child/status
  [ "$(awk '/^Uid:/ {print $2}' "$st")" = 61000 ] || fail "not running as the unit's user"
  [ "$(awk '/^CapEff:/ {print $2}' "$st")" = 0000000000002400 ] || fail "effective capabilities: $(awk '/^CapEff:/ {print $2}' "$st")"
fi
if [ "$what" = container ]; then
  # The docs' `docker run --net host IMAGE --set container_image=… --cloud-config …`, with this
  # image: the default command builds the artifacts into its state volume and serves them.
  podman --runtime runc rm -f "daybreak-$id" >/dev/null
  mkdir -p "$tmp/files/tree/boot" "$tmp/files/tree/etc"
  cp "$tmp/files/kernel" "$tmp/files/tree/boot/vmlinuz-6.1.0-9-amd64"
  cp "$tmp/files/initrd" "$tmp/files/tree/boot/initrd.img-6.1.0-9-amd64"
  echo "deploy $id" > "$tmp/files/tree/etc/marker"
  chmod -R a+rX "$tmp/files"
  podman --runtime runc run -d --name "daybreak-$id" --network "ns:/run/netns/$srv" \
    --cap-drop all --cap-add NET_BIND_SERVICE --cap-add NET_RAW \
    --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 -v "$tmp/files:/files:ro" \
    "$tag" --set container_image=dir:///files/tree --cloud-config /files/config.yaml >/dev/null ||
    fail "podman could not start the image with the default command"
  rm -f "$tmp/daybreak.log"
  for _ in $(seq 1 150); do
    logs; grep -q " ready" "$tmp/daybreak.log" 2>/dev/null && break; sleep 0.2
  done
  grep -q " ready" "$tmp/daybreak.log" || fail "the default command did not get ready in the image"
  C curl -sf -o "$tmp/kernel2.out" http://10.76.0.2:8090/kernel || fail "no kernel from the default command"
  cmp -s "$tmp/kernel2.out" "$tmp/files/kernel" || fail "the image's kernel differs"
  C curl -sf -o "$tmp/rootfs.out" http://10.76.0.2:8090/rootfs.squashfs || fail "no squashfs from the default command"
  [ "$(head -c 4 "$tmp/rootfs.out")" = hsqs ] || fail "the served rootfs is not a squashfs"
fi
echo "DEPLOY-PASS ($what)"
