#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) under libFuzzer, coverage-guided, on the stable
# toolchain: libfuzzer-sys builds libFuzzer with the system C++ compiler, and rustc's own
# sanitizer-coverage pass instruments the code (no nightly needed).
#
#   scripts/fuzz.sh                 # each target for FUZZ_RUNS executions (default 20000): CI
#   FUZZ_RUNS=0 FUZZ_SECONDS=600 scripts/fuzz.sh dhcp   # one target, ten minutes
#   FUZZ_RUNS=2000000 scripts/fuzz.sh                   # long, on demand
#
# Seeds come from fuzz/src/seeds.rs (the shapes the tests use) and xorriso (ISOs); what a run
# learns stays in fuzz/corpus/ for the next run. A crash, a hang (over 10 s for one input) or
# more than 2 GB of memory fails the run and leaves the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs=${FUZZ_RUNS:-20000}
seconds=${FUZZ_SECONDS:-0}
targets=("$@")

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
export CARGO_TARGET_DIR="$PWD/target"
# With an explicit --target, RUSTFLAGS reach the fuzzed code only, not build scripts.
host=$(rustc -vV | sed -n 's/^host: //p')
all=(dhcp tftp http_head oci layer iso machines store_record shared_store api_answer render)
cargo build --release --locked -q --target "$host" "${all[@]/#/--bin=}"
bin=target/$host/release
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

seeds=target/seeds
rm -rf "$seeds"
RUSTFLAGS= cargo run --release --locked -q --bin seeds --target-dir target/plain -- "$seeds"
if command -v xorriso >/dev/null 2>&1; then
  tree=$(mktemp -d)
  mkdir -p "$tree/boot"
  printf kernel > "$tree/boot/vmlinuz"; ln -s vmlinuz "$tree/boot/kernel"
  printf initrd > "$tree/boot/initrd"; printf squash > "$tree/rootfs.squashfs"
  mkdir -p "$seeds/iso"
  xorriso -as mkisofs -quiet -R -J -V KAIROS -o "$seeds/iso/rr-joliet.iso" "$tree" 2>/dev/null
  xorriso -as mkisofs -quiet -J -V KAIROS -o "$seeds/iso/joliet.iso" "$tree" 2>/dev/null
  rm -rf "$tree"
elif [ -n "${CI:-}" ]; then
  echo "fuzz: xorriso is missing (scripts/install-deps.sh installs it)" >&2; exit 1
fi

passed=0; failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "$seeds/$t"
  limits=(-rss_limit_mb=2048 -timeout=10 -max_len=$([ "$t" = iso ] && echo 1048576 || echo 65536)
          -artifact_prefix="artifacts/$t/" -print_final_stats=1)
  if [ "$seconds" -gt 0 ]; then limits+=(-max_total_time="$seconds"); else limits+=(-runs="$runs"); fi
  start=$(date +%s)
  if "$bin/$t" "${limits[@]}" "corpus/$t" "$seeds/$t" >"target/$t.log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/$t.log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "target/$t.log" | tail -1 | grep -o '[0-9]*' || echo "?")
    echo "fuzz $t: ok, $execs executions in $(( $(date +%s) - start )) s, coverage $cov edges, corpus $(ls "corpus/$t" | wc -l)"
    passed=$((passed + 1))
  else
    echo "fuzz $t: FAILED (input kept in fuzz/artifacts/$t/)"; tail -40 "target/$t.log"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
