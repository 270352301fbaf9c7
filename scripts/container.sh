#!/usr/bin/env bash
# Builds Daybreak's container image (Containerfile) with podman, or docker when podman is absent:
# the release binary is built on this host (or taken from --binary), its root assembled in
# image-root/ by scripts/image-root.sh, and the image tagged TAG (default localhost/daybreak:VERSION).
#
#   scripts/container.sh [--binary PATH] [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
if [ "${1:-}" = --binary ]; then bin=${2:?path}; shift 2; fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-localhost/daybreak:$version}
if [ -z "$bin" ]; then
  cargo build --release --locked -q -p daybreak
  bin=target/release/daybreak
fi
engine=$(command -v podman || command -v docker || true)
[ -n "$engine" ] || { echo "container.sh: install podman (or docker) to build the image" >&2; exit 1; }
ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
bash scripts/image-root.sh "$bin" "$ctx/image-root"
cp Containerfile "$ctx/"
"$engine" build -q -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
echo "$tag"
