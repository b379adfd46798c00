#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 60) from its committed corpus,
# two at a time; fails on any finding. Installs cargo-fuzz from crates.io if it is missing.
# Usage: bash fuzz/smoke.sh [SECONDS] [TARGET...]     (the long runs: see fuzz/README.md)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf tokenizer chat_template receipt request hf_convert)
export BITNET_SHARED="${BITNET_SHARED:-$(cd ../.. && pwd)/shared}"
rustup toolchain list | grep -q '^nightly' || { echo "fuzz: a nightly toolchain is required (rustup toolchain install nightly)"; exit 1; }
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$(pwd)/target}"
# Debug assertions and overflow checks on (cargo fuzz's default), AddressSanitizer.
cargo +nightly fuzz build
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
  local t=$1
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  cp -r "corpus/$t/." "$work/corpus/$t/"
  # chat_template: a namespace stored in itself is a reference cycle that minijinja leaks
  # by design; the server renders in worker processes that are replaced (sandbox.rs).
  local extra=() asan="${ASAN_OPTIONS:-}"
  [ "$t" = chat_template ] && { extra=(-detect_leaks=0); asan="detect_leaks=0"; }
  if ASAN_OPTIONS="$asan" "$bin/$t" "$work/corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" "${extra[@]}" > "$work/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -o 'number_of_executed_units: [0-9]*' "$work/$t.log" | grep -o '[0-9]*') executions in ${secs} s"
  else
    echo "fuzz $t: FAILED"; tail -40 "$work/$t.log"
    for a in "$work/artifacts/$t"/*; do
      [ -e "$a" ] && { mkdir -p artifacts/$t; cp "$a" artifacts/$t/; echo "  input kept in fuzz/artifacts/$t/$(basename "$a")"; }
    done
    return 1
  fi
}
status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do run "$t" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
done
exit $status
