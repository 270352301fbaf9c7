#!/usr/bin/env bash
# Refreshes the embedded iPXE binaries from Debian's `ipxe` package in SUITE (default trixie, a
# 2025 build), and the ISOLINUX files the netboot ISO boots BIOS machines with (`isolinux`,
# `syslinux-common`), without touching this machine's apt configuration: a private sources directory
# with one entry for SUITE on the mirror and keyring this machine already uses, and private
# package lists and cache, all in a temporary directory.
#
#   scripts/update-ipxe.sh [SUITE]
set -euo pipefail
suite=${1:-trixie}
dest="$(cd "$(dirname "$0")/.." && pwd)/crates/daybreak/ipxe"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# The Debian mirror and keyring of the host's own (non-security) sources: deb822 stanzas first,
# then a one-line sources.list entry (which names no keyring: the default one is used).
read -r uri key < <(awk 'BEGIN { RS = "" } /URIs:/ && !/security/ {
    u = ""; k = ""; n = split($0, l, "\n")
    for (i = 1; i <= n; i++) { if (l[i] ~ /^URIs:/) { split(l[i], f, " "); u = f[2] }
                               if (l[i] ~ /^Signed-By:/) { split(l[i], f, " "); k = f[2] } }
    if (u ~ /debian\/?$/) { print u, k; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null) || true
[ -n "${uri:-}" ] || uri=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ && $3 !~ /security/ {print $2; exit}' \
  /etc/apt/sources.list 2>/dev/null || true)
[ -n "${uri:-}" ] || { echo "update-ipxe: no Debian apt source on this machine to take the mirror from" >&2; exit 1; }
key=${key:-/usr/share/keyrings/debian-archive-keyring.gpg}

mkdir -p "$tmp/sources" "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$uri" "$suite" "$key" \
  > "$tmp/sources/$suite.sources"
apt=(apt-get -o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$tmp/sources"
     -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root)
"${apt[@]}" update -qq
(cd "$tmp/deb" && "${apt[@]}" download -qq "ipxe/$suite" "isolinux/$suite" "syslinux-common/$suite" \
  "shim-signed/$suite" "grub-efi-amd64-signed/$suite")
for d in "$tmp"/deb/*.deb; do dpkg -x "$d" "$tmp/x"; done
deb=$(ls "$tmp"/deb/ipxe_*.deb)
lib=$tmp/x/usr/lib/ipxe
cp "$lib/undionly.kpxe" "$lib/ipxe.pxe" "$lib/snponly.efi" "$lib/ipxe.lkrn" "$dest/"
cp -L "$lib/ipxe-amd64.efi" "$dest/ipxe.efi"
cp "$lib/ipxe-arm64.efi" "$dest/ipxe-arm64.efi"
cp "$tmp/x/usr/lib/ISOLINUX/isolinux.bin" "$tmp/x/usr/lib/ISOLINUX/isohdpfx.bin" \
   "$tmp/x/usr/lib/syslinux/modules/bios/ldlinux.c32" "$dest/"
cp "$tmp/x/usr/share/doc/ipxe/copyright" "$dest/COPYING"
cp "$tmp/x/usr/share/doc/isolinux/copyright" "$dest/COPYING.syslinux"
# The Secure Boot chain: shim signed by Microsoft's UEFI CA, Debian's signed network GRUB.
cp "$tmp/x/usr/lib/shim/shimx64.efi.signed" "$dest/shimx64.efi"
cp "$tmp/x/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed" "$dest/grubnetx64.efi"
cp "$tmp/x/usr/share/doc/shim-signed/copyright" "$dest/COPYING.shim"
cp "$tmp/x/usr/share/doc/grub-efi-amd64-signed/copyright" "$dest/COPYING.grub"
(cd "$dest" && sha256sum undionly.kpxe ipxe.pxe ipxe.efi snponly.efi ipxe.lkrn isolinux.bin isohdpfx.bin \
   ldlinux.c32 shimx64.efi grubnetx64.efi ipxe-arm64.efi > SHA256SUMS)
version=$(dpkg-deb -f "$deb" Version)
syslinux=$(dpkg-deb -f "$(ls "$tmp"/deb/isolinux_*.deb)" Version)
echo "iPXE $version, ISOLINUX $syslinux ($suite): set them in $dest/README.md and VERSION in crates/daybreak/src/ipxe.rs"
