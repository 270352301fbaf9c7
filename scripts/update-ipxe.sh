#!/usr/bin/env bash
# Refreshes the embedded iPXE binaries from Debian's `ipxe` package.
set -euo pipefail
dest="$(cd "$(dirname "$0")/.." && pwd)/crates/daybreak/ipxe"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download ipxe
dpkg -x ipxe_*.deb x
cp x/usr/lib/ipxe/undionly.kpxe x/usr/lib/ipxe/ipxe.pxe x/usr/lib/ipxe/snponly.efi x/boot/ipxe.efi "$dest/"
cp x/usr/share/doc/ipxe/copyright "$dest/COPYING"
(cd "$dest" && sha256sum *.kpxe *.pxe *.efi > SHA256SUMS)
echo "iPXE $(dpkg-deb -f ipxe_*.deb Version): update the version line in $dest/README.md"
