#!/usr/bin/env bash
# Builds a live boot as Kairos's is made: Debian's kernel (linux-image-amd64), an initrd made by
# Debian's dracut with its network, livenet and dmsquash-live modules (so `root=live:URL` fetches
# a squashfs over HTTP and boots it with an overlay), and that squashfs: a root whose /sbin/init
# prints E2E-ROOT-REACHED and its command line on the serial port and powers off.
#
#   tests/e2e/build-dracut.sh OUTDIR  -> OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/rootfs.squashfs
#
# Idempotent: reuses OUTDIR when it was built from the same kernel package and this script.
set -euo pipefail
out=${1:?usage: build-dracut.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
if [ -z "$pkg" ]; then
  apt-get update -qq >/dev/null
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "build-dracut: cannot resolve linux-image-amd64" >&2; exit 1; }
stamp="$pkg $(dpkg-query -W -f='${Version}' dracut-core) $(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -s "$out/vmlinuz" ] &&
   [ -s "$out/initrd.img" ] && [ -s "$out/rootfs.squashfs" ]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "build-dracut: apt-get download $pkg failed" >&2; exit 1; }
dpkg -x "$work"/"$pkg"_*.deb "$work/k"
kver=${pkg#linux-image-}
depmod -b "$work/k" "$kver"

# The initrd: no host-only guessing, dracut's own init (no systemd), the shell, the network
# (dhclient), HTTP fetches (curl), the live root, and the drivers QEMU's NICs and the live root
# need.
dracut --no-hostonly --no-hostonly-cmdline --no-early-microcode --force --quiet \
  --kver "$kver" --kmoddir "$work/k/lib/modules/$kver" \
  --modules "bash base kernel-modules network-legacy url-lib livenet dmsquash-live" \
  --drivers "e1000 virtio_net virtio_pci squashfs loop overlay dm_mod" \
  --compress gzip "$work/initrd.img" ||
  { echo "build-dracut: dracut failed" >&2; exit 1; }

# The live root: busybox, and an init that says it got there.
root=$work/root
mkdir -p "$root/bin" "$root/sbin" "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/tmp" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for t in sh cat echo mount poweroff sleep; do ln -s busybox "$root/bin/$t"; done
cat > "$root/sbin/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
echo "E2E-ROOT-REACHED $(/bin/busybox cat /proc/cmdline)" > /dev/ttyS0
/bin/busybox sleep 1
/bin/busybox poweroff -f
EOF
chmod 755 "$root/sbin/init"
mksquashfs "$root" "$work/rootfs.squashfs" -noappend -quiet -no-progress -all-root >/dev/null

cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$work/initrd.img" "$work/rootfs.squashfs" "$out/"
echo "$stamp" > "$out/stamp"
