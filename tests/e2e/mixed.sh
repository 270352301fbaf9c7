#!/usr/bin/env bash
# A mixed fleet from one command: an x86-64 machine (SeaBIOS with its iPXE ROM) and an arm64 one
# (AAVMF, EDK2's own arm64 PXE) boot side by side on the private LAN of lan.sh from
#
#   daybreak --set container_image=127.0.0.1:5000/e2e/kairos:v1 --cloud-config …
#
# where the image is a multi-arch index (amd64 and arm64, each with its own kernel and data; the
# arm64 kernel gzip-compressed, as Debian and Ubuntu ship it) in a docker-registry on SRV's
# loopback. Daybreak builds the host's architecture before it serves, and the arm64 variant when
# the first arm64 machine asks; each guest checks that the squashfs it downloads is its own
# architecture's, byte for byte.
#
#   mixed.sh DAYBREAK_BIN GUEST_DIR_AMD64 GUEST_DIR_ARM64
set -euo pipefail
label=mixed
bin=${1:?daybreak binary}; guest_amd64=${2:?amd64 guest dir}; guest_arm64=${3:?arm64 guest dir}
repo_root=$(cd "$(dirname "$0")/../.." && pwd)
timeout_s=${DAYBREAK_E2E_TIMEOUT:-600}
accel=${DAYBREAK_E2E_ACCEL:-tcg}

# shellcheck source=lan.sh
source "$repo_root/tests/e2e/lan.sh"
lan_up tap0 tap1

# One image per architecture: its guest's kernel and initramfs in /boot, data of its own.
for a in amd64 arm64; do
  g=guest_$a
  mkdir -p "$tmp/img-$a/boot" "$tmp/img-$a/srv"
  if [ "$a" = arm64 ]; then
    # As Debian and Ubuntu ship it: gzip-compressed, which Daybreak unpacks for UEFI and iPXE.
    gzip -c "${!g}/vmlinuz" > "$tmp/img-$a/boot/vmlinuz-6.1.0-10-$a"
  else
    cp "${!g}/vmlinuz" "$tmp/img-$a/boot/vmlinuz-6.1.0-10-$a"
  fi
  cp "${!g}/initramfs.gz" "$tmp/img-$a/boot/initrd.img-6.1.0-10-$a"
  head -c 1048576 /dev/urandom > "$tmp/img-$a/srv/data"
  OCI_ARCH=$a bash "$repo_root/scripts/oci-layout.sh" "$tmp/layout-$a" e2e "$tmp/img-$a" > "$tmp/digest-$a" ||
    fail "building the $a layout failed"
done
# The multi-arch layout: both images' blobs and an index naming each with its platform.
mkdir -p "$tmp/layout/blobs/sha256"
cp "$tmp"/layout-amd64/blobs/sha256/* "$tmp"/layout-arm64/blobs/sha256/* "$tmp/layout/blobs/sha256/"
entries=""
for a in amd64 arm64; do
  d=$(cut -d: -f2 < "$tmp/digest-$a")
  entries+="{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$d\",\"size\":$(stat -c %s "$tmp/layout/blobs/sha256/$d"),\"platform\":{\"architecture\":\"$a\",\"os\":\"linux\"}},"
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "${entries%,}" > "$tmp/index-blob"
ix=$(sha256sum "$tmp/index-blob" | cut -d' ' -f1); ixs=$(stat -c %s "$tmp/index-blob")
mv "$tmp/index-blob" "$tmp/layout/blobs/sha256/$ix"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"e2e"}}]}' \
  "$ix" "$ixs" > "$tmp/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$tmp/layout/oci-layout"

push_image "$tmp/layout"

printf '#cloud-config\nhostname: mixed-%s\n' "$id" > "$tmp/cloud-config.yaml"
ip netns exec "$srv" "$bin" --set container_image=127.0.0.1:5000/e2e/kairos:v1 --set "state_dir=$tmp/state" \
  --set arch=amd64 --set disable_http_server=true --cloud-config "$tmp/cloud-config.yaml" >"$tmp/daybreak.log" 2>&1 &
pids+=($!)
wait_ready "$tmp/daybreak.log" "${pids[-1]}"
grep -q "machines answered: x86-64 (BIOS and UEFI), arm64 (UEFI)" "$tmp/daybreak.log" ||
  fail "the start lines do not say both architectures are answered"
[ "$(ls -d "$tmp"/state/artifacts/*/ | wc -l)" = 1 ] || fail "more than the host's architecture was built before serving"

start=$(date +%s)
mac_x=52:54:00:77:02:0a; mac_a=52:54:00:77:02:0b
ip netns exec "$lan" qemu-system-x86_64 -accel "$accel" -display none -monitor none -no-reboot \
  -serial "file:$tmp/serial-amd64.log" -machine pc -m 512 \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "e1000,netdev=n0,mac=$mac_x" -boot n \
  >"$tmp/qemu-amd64.log" 2>&1 &
pids+=($!); xpid=$!
cp /usr/share/AAVMF/AAVMF_VARS.fd "$tmp/vars.fd"
ip netns exec "$lan" qemu-system-aarch64 -accel "$accel" -display none -monitor none -no-reboot \
  -serial "file:$tmp/serial-arm64.log" -machine virt -cpu cortex-a57 -m 1024 \
  -drive "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd" \
  -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd" \
  -netdev tap,id=n0,ifname=tap1,script=no,downscript=no -device "virtio-net-pci,netdev=n0,mac=$mac_a,romfile=" \
  >"$tmp/qemu-arm64.log" 2>&1 &
pids+=($!); apid=$!

wait_serial "$tmp/serial-amd64.log" E2E-DONE "$timeout_s" "$xpid"
echo "amd64: $(($(date +%s) - start)) s"
wait_serial "$tmp/serial-arm64.log" E2E-DONE "$timeout_s" "$apid"
echo "arm64: $(($(date +%s) - start)) s"

want_cfg=$(sha256sum "$tmp/cloud-config.yaml" | cut -d' ' -f1)
for a in amd64 arm64; do
  # Each architecture's squashfs: the artifacts whose kernel came from that image.
  root=""; g=guest_$a
  for dir in "$tmp"/state/artifacts/*/; do
    cmp -s "$dir/kernel" "${!g}/vmlinuz" && root=$dir/rootfs.squashfs
  done
  [ -n "$root" ] || fail "no $a artifacts in the store"
  res=$(tr -d '\r' < "$tmp/serial-$a.log" | grep -a E2E-RESULT | tail -1)
  [ "$res" = "E2E-RESULT rootfs=$(sha256sum "$root" | cut -d' ' -f1) config=$want_cfg" ] ||
    fail "the $a machine did not get its own architecture's squashfs: $res"
  echo "$a: its own squashfs and the cloud-config, byte for byte"
done
grep -q "image ready.*kernel=\"\?arm64" "$tmp/daybreak.log" || fail "no line saying the arm64 variant was built"
grep -q 'offer.*firmware=UEFI arm64 PXE.*boot="ipxe-arm64.efi"' "$tmp/daybreak.log" || fail "no arm64 offer logged"
grep -q 'offer.*firmware=BIOS iPXE' "$tmp/daybreak.log" || fail "no x86 offer logged"
echo "E2E-PASS ($label) in $(($(date +%s) - start)) s"
