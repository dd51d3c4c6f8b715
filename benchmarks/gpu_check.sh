#!/usr/bin/env bash
# The checks that only a GPU can run, in under 8 minutes on one GPU, with one summary at the end:
# every notebook at paper-dry on CUDA in bf16, DDP (two or more GPUs), 00 and 01 at demo on CUDA (timed),
# and one epoch of the paper profile's teacher and SSWA student at 227 px (estimated from timed steps).
# Fails loudly: a non-zero status and the failing step named in the summary. Run from a clone after
# `make install`:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "gpu_check: no .venv here: run make install first" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "gpu_check: nvidia-smi failed: no GPU" >&2; exit 2; }
exec timeout 480 "$PY" benchmarks/gpu_check.py
