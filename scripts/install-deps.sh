#!/usr/bin/env bash
# Installs the system packages Daybreak's tests need. Idempotent: packages already present are skipped,
# and apt is only touched when something is missing.
#
#   scripts/install-deps.sh          # what the tests need
#   scripts/install-deps.sh --bench  # also what the benchmarks compare against (nginx, dnsmasq)
set -euo pipefail

need=(dnsmasq-base ovmf busybox-static atftp curl cpio iproute2 xz-utils ipxe-qemu xorriso squashfs-tools g++
      docker-registry skopeo apache2-utils openssl xfsprogs podman runc systemd util-linux prometheus
      chromium fonts-dejavu-core qemu-efi-aarch64 isc-dhcp-relay kea-dhcp4-server tcpdump
      etcd-server etcd-client protobuf-compiler libprotobuf-dev iptables
      dracut-core dracut-network dracut-live)
[ "${1:-}" = "--bench" ] && need+=(nginx-light umoci)

missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
qemu_ok=1
command -v qemu-system-x86_64 >/dev/null 2>&1 || qemu_ok=0
command -v qemu-system-aarch64 >/dev/null 2>&1 || qemu_ok=0

if [ ${#missing[@]} -eq 0 ] && [ $qemu_ok -eq 1 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]} ${qemu_ok/1/}${qemu_ok/0/qemu-system-x86 qemu-system-arm}); run this script as root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Debian 12's own qemu-system-x86 (7.2) conflicts with the qemu-utils from bookworm-backports that
# these machines carry, so QEMU comes from backports as well.
if [ -r /etc/os-release ] && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # The mirror and keyring this machine already uses for bookworm itself (deb822 stanzas are
    # separated by blank lines; a one-line sources.list entry has no keyring field).
    read -r uri key < <(awk 'BEGIN { RS = "" } /Suites:[^\n]*bookworm([ \n]|$)/ && !/security/ {
        u = ""; k = ""; n = split($0, l, "\n")
        for (i = 1; i <= n; i++) { if (l[i] ~ /^URIs:/) { split(l[i], f, " "); u = f[2] }
                                   if (l[i] ~ /^Signed-By:/) { split(l[i], f, " "); k = f[2] } }
        if (u != "") { print u, k; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null) || true
    [ -n "${uri:-}" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "${uri:-}" ] || { echo "install-deps: no bookworm apt source to take the mirror from" >&2; exit 1; }
    {
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n' "$uri"
      if [ -n "${key:-}" ]; then printf 'Signed-By: %s\n' "$key"; fi
    } >/etc/apt/sources.list.d/daybreak-backports.sources
  fi
  backports=(-t bookworm-backports)
else
  backports=()
fi

apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $qemu_ok -eq 0 ]; then
  apt-get install -y -qq --no-install-recommends "${backports[@]}" qemu-system-x86 qemu-system-arm >/dev/null
fi
