#!/usr/bin/env bash
# Writes an OCI image layout from directories, one gzip layer per directory, in order:
#
#   scripts/oci-layout.sh OUT TAG DIR[:PATHS] ...
#
# DIR:PATHS takes only those paths (space-separated, relative to DIR) into the layer. Owners are
# kept numerically. OCI_ARCH sets the image's architecture (default: this machine's). Used by the end-to-end tests and the benchmarks to build images without Docker.
set -euo pipefail
out=${1:?output layout directory}; tag=${2:?tag}; shift 2
[ $# -gt 0 ] || { echo "oci-layout.sh: give at least one layer directory" >&2; exit 2; }
rm -rf "$out"; mkdir -p "$out/blobs/sha256"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/oci-layout.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
blob() { # file -> digest hex (moves the file into the layout)
  local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$out/blobs/sha256/$d"; echo "$d"
}
layers=""; diffs=""
for spec in "$@"; do
  dir=${spec%%:*}; paths=.
  [ "$spec" != "$dir" ] && paths=${spec#*:}
  # shellcheck disable=SC2086
  tar --numeric-owner -C "$dir" -cf "$tmp/layer.tar" $paths
  diffs+="\"sha256:$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)\","
  gzip -6 -f "$tmp/layer.tar"
  size=$(stat -c %s "$tmp/layer.tar.gz"); d=$(blob "$tmp/layer.tar.gz")
  layers+="{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$size},"
done
arch=${OCI_ARCH:-$(dpkg --print-architecture 2>/dev/null || echo amd64)}
printf '{"architecture":"%s","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]},"config":{}}' "$arch" "${diffs%,}" > "$tmp/config.json"
csize=$(stat -c %s "$tmp/config.json"); cd_=$(blob "$tmp/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cd_" "$csize" "${layers%,}" > "$tmp/manifest.json"
msize=$(stat -c %s "$tmp/manifest.json"); md=$(blob "$tmp/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' "$md" "$msize" "$tag" > "$out/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
echo "sha256:$md"
