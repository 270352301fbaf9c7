#!/usr/bin/env bash
# Runs every Daybreak test: the fuzz targets for a short run each (scripts/fuzz.sh), then unit,
# real-client (curl, atftp, busybox tftp) and the QEMU boot tests (SeaBIOS + iPXE ROM, OVMF's own
# UEFI PXE, and beside a DHCP server on the same host).
# Installs what the tests need first (as root; elsewhere it says what is missing). The boot tests
# need root for network namespaces; without it they are skipped, except under CI=true, where
# anything missing is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! bash scripts/install-deps.sh; then
  [ -n "${CI:-}" ] && exit 1
  echo "test.sh: continuing without the missing packages; the tests that need them will be skipped" >&2
fi
status=0
bash scripts/fuzz.sh || status=$?
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
exit "$status"
