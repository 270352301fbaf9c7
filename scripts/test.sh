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
# A test that cannot do its work says SKIP and lands here (under CI=true it fails instead).
export DAYBREAK_SKIP_LOG; DAYBREAK_SKIP_LOG=$(mktemp)
trap 'rm -f "$DAYBREAK_SKIP_LOG"' EXIT
bash scripts/fuzz.sh || status=$?
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
if [ -s "$DAYBREAK_SKIP_LOG" ]; then
  echo
  echo "SKIPPED: $(wc -l < "$DAYBREAK_SKIP_LOG") tests did not do their work here (run as root to run them):"
  sed 's/^/  /' "$DAYBREAK_SKIP_LOG"
fi
exit "$status"
