#!/usr/bin/env bash
# One command: realfill's Stable Diffusion networks against diffusers/transformers on tiny
# random-weight models of several configs (issue 18). Makes a virtual environment with PyTorch,
# diffusers and transformers from PyPI (once, ≈ 3 GB: PyPI's torch brings CUDA wheels that are
# not used), builds realfill in release, writes the models and runs `realfill sd-check` on each.
# Arguments go to bench/diffusers_reference.py (e.g. --fixture tests/fixtures/sd-tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REALFILL_SD_VENV:-/var/tmp/realfill-sd-venv}"
if ! "$VENV/bin/python" -c 'import torch, diffusers, transformers, safetensors' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'torch==2.9.1' 'safetensors>=0.4' numpy 'diffusers==0.35.2' 'transformers==4.57.1' accelerate
fi
cargo build --release --quiet --bin realfill
BIN="${CARGO_TARGET_DIR:-target}/release/realfill"
exec "$VENV/bin/python" bench/diffusers_reference.py --realfill "$BIN" "$@"
