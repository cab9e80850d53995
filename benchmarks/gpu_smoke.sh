#!/usr/bin/env bash
# GPU smoke test, at most 8 minutes on one CUDA GPU: the paper-size Prose model trains on synthetic
# octapeptide frames at batch 512 (fp32, TF32 off, grad checkpointing) for up to 300 steps / 270 s,
# then samples; prints iterations per GPU-hour (paper: 260 per H100-hour), peak GPU memory and the
# float32 inverse error. Extra arguments go to benchmarks/gpu_smoke.py (e.g. --max-steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout --signal=INT --kill-after=20 470 "$PY" benchmarks/gpu_smoke.py "$@"
