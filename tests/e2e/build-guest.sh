#!/usr/bin/env bash
# Builds the boot-test guest: Debian's kernel (linux-image-amd64, unpacked with dpkg -x) and a
# busybox initramfs whose /init brings the NIC up with DHCP, downloads the root=live: and
# config_url= URLs from its kernel command line, and prints their sha256 on the serial port.
#
#   tests/e2e/build-guest.sh OUTDIR      -> OUTDIR/vmlinuz, OUTDIR/initramfs.gz
#
# Idempotent: reuses OUTDIR when it was built from the same kernel package and this script.
set -euo pipefail
out=${1:?usage: build-guest.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Tests may run in parallel processes: one builds, the others wait and reuse.
exec 9>"$out/.lock"
flock 9
here=$(cd "$(dirname "$0")" && pwd)

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq >/dev/null
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "build-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
stamp="$pkg $(cat "$0" "$here/guest-init.sh" "$here/guest-udhcpc.sh" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.gz" ]; then
  exit 0
fi

busybox=/bin/busybox
case "$(ldd "$busybox" 2>&1)" in
  *"not a dynamic"*) ;;
  *) echo "build-guest: $busybox is not statically linked; install busybox-static" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "build-guest: apt-get download $pkg failed" >&2; exit 1; }
dpkg -x "$work"/"$pkg"_*.deb "$work/k"
kver=${pkg#linux-image-}
mods="$work/k/lib/modules/$kver/kernel"

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
cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/initramfs.gz.tmp" "$out/initramfs.gz"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$stamp" > "$out/stamp"
