#!/usr/bin/env bash
# One command: realfill's scene model against the same network in PyTorch, on this CPU.
# Makes a virtual environment with CPU PyTorch from PyPI (once, ≈ 3 GB with the CUDA wheels
# PyPI's torch depends on; they are not used), builds realfill in release, checks that both
# compute the same function, then times both and prints the ratio. Arguments go to
# bench/torch_reference.py (e.g. --threads 2 --repeats 5 --rounds 2).
#
# --avx2 (first argument) runs both sides as on a CPU without AVX-512, on this one: realfill's
# kernels through REALFILL_SIMD=avx2, PyTorch's through ATEN_CPU_CAPABILITY, oneDNN's and MKL's
# ISA caps. (gemm, under burn's own layers, still picks by the CPU; the scene network's hot
# path is realfill's kernels.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--avx2" ]; then
  shift
  export REALFILL_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
fi
VENV="${REALFILL_TORCH_VENV:-/var/tmp/realfill-torch-venv}"
if ! "$VENV/bin/python" -c 'import torch, safetensors, numpy' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'torch==2.9.1' 'safetensors>=0.4' numpy
fi
cargo build --release --quiet --bin realfill
BIN="${CARGO_TARGET_DIR:-target}/release/realfill"
exec "$VENV/bin/python" bench/torch_reference.py --realfill "$BIN" "$@"
