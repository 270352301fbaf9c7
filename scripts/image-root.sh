#!/usr/bin/env bash
# Assembles the root filesystem of Daybreak's container image in DIR: the daybreak binary, the
# shared libraries it links (as ldd resolves them here), and the CA certificates for pulling
# from HTTPS registries. Nothing else: no shell, no package manager.
#
#   scripts/image-root.sh BINARY DIR
set -euo pipefail
bin=${1:?daybreak binary}; root=${2:?output directory}
rm -rf "$root"; mkdir -p "$root/usr/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib"
chmod 1777 "$root/tmp"
# Without the debug info the release profile keeps for profiling.
install -m 0755 -s "$bin" "$root/usr/bin/daybreak"
# Every library ldd names by absolute path, the loader included, at the same path.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
