#!/usr/bin/env bash
# The Stable Diffusion figures a lent GPU machine can give (issues 18 and 19), in one run:
# builds realfill, writes a folder of stable-diffusion-2-inpainting's shape with random weights
# (no network there either: `realfill sd-random`), checks the tiny fixture on the GPU in f32 and
# f16, then times load, text encoder, VAE, a UNet step, the guided pair, a 50-step 512² fill and
# a LoRA learning step through wgpu; then the same through `realfill serve` on that GPU from a
# client on the same machine (the GPU server, issue 20). Prints everything; record it in
# docs/BENCHMARKS.md.
# Usage: bench/device_sd.sh [STEPS]   (STEPS: the fill's steps, default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-50}"
cargo build --release --quiet --bin realfill
BIN="${CARGO_TARGET_DIR:-target}/release/realfill"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$BIN" sd-check --backend wgpu --model tests/fixtures/sd-tiny --io tests/fixtures/sd-tiny/io.safetensors
"$BIN" sd-check --backend wgpu --f16 --tolerance 5e-2 --model tests/fixtures/sd-tiny --io tests/fixtures/sd-tiny/io.safetensors
DIR="${TMPDIR:-/tmp}/realfill-sd2-random"
[ -d "$DIR" ] || "$BIN" sd-random --out "$DIR"
"$BIN" bench --backend wgpu --sd-model "$DIR" --repeats 5 --sd-steps "$STEPS" &
PID=$!
# GPU memory while it runs (peak of the samples).
PEAK=0
while kill -0 "$PID" 2>/dev/null; do
  M=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 || echo 0)
  [ "${M:-0}" -gt "$PEAK" ] && PEAK=$M
  sleep 0.5
done
wait "$PID"
echo "peak GPU memory used during the bench: ${PEAK} MiB"
# The GPU server (issue 20): `realfill serve` on this GPU and a client on the same machine over
# loopback (a lent machine reaches no other), so learning and SD steps run at GPU speed through
# the remote path; the bench prints the CPU rows here beside the server's.
TOKEN="${TMPDIR:-/tmp}/realfill-token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN"
"$BIN" serve --listen 127.0.0.1:7979 --backend wgpu --token-file "$TOKEN" > "${TMPDIR:-/tmp}/realfill-serve.out" 2>&1 &
SERVER=$!
sleep 5
"$BIN" bench --backend remote=ws://127.0.0.1:7979 --token-file "$TOKEN" --sd-model "$DIR" --repeats 2 --sd-steps 10 || true
"$BIN" bench --backend remote=ws://127.0.0.1:7979 --token-file "$TOKEN" --sizes 384 --photo-mp 0 --repeats 3 || true
kill "$SERVER"
