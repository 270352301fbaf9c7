#!/usr/bin/env bash
# Builds the boot-test guest: Debian's kernel (linux-image-amd64, unpacked with dpkg -x) and a
# busybox initramfs whose /init brings the NIC up with DHCP, downloads the root=live: and
# config_url= URLs from its kernel command line, and prints their sha256 on the serial port.
#
#   tests/e2e/build-guest.sh OUTDIR [ARCH]  -> OUTDIR/vmlinuz, OUTDIR/initramfs.gz
#
# ARCH is amd64 (the default) or arm64. An arm64 guest's packages (the kernel, busybox-static) come
# through a private apt configuration for that architecture made from this machine's own sources
# (its lists are kept in OUTDIR/apt; the host's apt is not changed), and its kernel is the
# uncompressed Image (an EFI application, as UEFI firmware and iPXE load it).
#
# Idempotent: reuses OUTDIR when it was built from the same kernel package and this script.
set -euo pipefail
out=${1:?usage: build-guest.sh OUTDIR [ARCH]}
arch=${2:-amd64}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Tests may run in parallel processes: one builds, the others wait and reuse.
exec 9>"$out/.lock"
flock 9
here=$(cd "$(dirname "$0")" && pwd)

apt=(apt-get); cache=(apt-cache)
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  mkdir -p "$out/apt/sources" "$out/apt/lists/partial" "$out/apt/cache/archives/partial"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && ! grep -q backports "$f" && cp "$f" "$out/apt/sources/"
  done
  [ -f /etc/apt/sources.list ] && grep -v backports /etc/apt/sources.list > "$out/apt/sources/host.list" || true
  opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$out/apt/sources"
        -o "Dir::State::Lists=$out/apt/lists" -o "Dir::Cache=$out/apt/cache"
        -o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o APT::Sandbox::User=root)
  apt=(apt-get "${opts[@]}"); cache=(apt-cache "${opts[@]}")
fi
pkg=$("${cache[@]}" depends "linux-image-$arch" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
if [ -z "$pkg" ]; then
  "${apt[@]}" update -qq >/dev/null
  pkg=$("${cache[@]}" depends "linux-image-$arch" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "build-guest: cannot resolve linux-image-$arch" >&2; exit 1; }
stamp="$pkg $(cat "$0" "$here/guest-init.sh" "$here/guest-udhcpc.sh" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.gz" ]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && "${apt[@]}" download "$pkg" >/dev/null 2>&1) || { echo "build-guest: apt-get download $pkg failed" >&2; exit 1; }
dpkg -x "$work"/"$pkg"_*.deb "$work/k"
kver=${pkg#linux-image-}
mods="$work/k/lib/modules/$kver/kernel"

busybox=/bin/busybox
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  (cd "$work" && "${apt[@]}" download busybox-static >/dev/null 2>&1) ||
    { echo "build-guest: apt-get download busybox-static ($arch) failed" >&2; exit 1; }
  dpkg -x "$work"/busybox-static_*.deb "$work/bb"
  busybox=$work/bb/bin/busybox
else
  case "$(ldd "$busybox" 2>&1)" in
    *"not a dynamic"*) ;;
    *) echo "build-guest: $busybox is not statically linked; install busybox-static" >&2; exit 1 ;;
  esac
fi

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules,etc}
cp "$busybox" "$root/bin/busybox"
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci.ko net/core/failover.ko drivers/net/net_failover.ko \
         drivers/net/virtio_net.ko drivers/net/ethernet/intel/e1000/e1000.ko fs/efivarfs/efivarfs.ko; do
  [ -f "$mods/$m" ] && cp "$mods/$m" "$root/lib/modules/"
done
cat > "$root/lib/modules/order" <<'ORDER'
virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net e1000 efivarfs
ORDER
cp "$here/guest-init.sh" "$root/init"
cp "$here/guest-udhcpc.sh" "$root/etc/udhcpc.sh"
chmod +x "$root/init" "$root/etc/udhcpc.sh"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.gz.tmp"
if [ "$arch" = arm64 ] && gzip -t "$work/k/boot/vmlinuz-$kver" 2>/dev/null; then
  gzip -dc "$work/k/boot/vmlinuz-$kver" > "$out/vmlinuz.tmp"
else
  cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
fi
mv "$out/initramfs.gz.tmp" "$out/initramfs.gz"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$stamp" > "$out/stamp"
