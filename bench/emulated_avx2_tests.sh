#!/usr/bin/env bash
# Every test binary of `cargo test --release` on an emulated CPU without AVX-512 (QEMU user
# mode: `-cpu max` is AVX2 + FMA in QEMU 7.2, `-cpu Nehalem` SSE4.2 only), so that realfill's,
# gemm's and Mesa lavapipe's CPU detection all see that CPU. Tests that start the `realfill`
# binary as a child (cli, bad_input) run that child natively. Needs Debian's qemu-user.
# Usage: bench/emulated_avx2_tests.sh [CPU] [ROUNDS]   (defaults: max 2)
set -euo pipefail
cd "$(dirname "$0")/.."
CPU="${1:-max}"; ROUNDS="${2:-2}"
command -v qemu-x86_64 >/dev/null || { apt-get update -q && apt-get install -y -q qemu-user; }
mapfile -t EXES < <(cargo test --release --no-run 2>&1 | grep -o '(/[^)]*)' | tr -d '()')
for round in $(seq 1 "$ROUNDS"); do
  for exe in "${EXES[@]}"; do
    start=$(date +%s)
    log="/tmp/emulated-$CPU-r$round-$(basename "$exe").log"
    rc=0; timeout 1500 qemu-x86_64 -cpu "$CPU" "$exe" --test-threads 2 > "$log" 2>&1 || rc=$?
    echo "round $round $(basename "$exe") rc=$rc $(( $(date +%s) - start ))s $(grep 'test result' "$log" | tail -1)"
  done
done
