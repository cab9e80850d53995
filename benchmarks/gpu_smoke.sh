#!/usr/bin/env bash
# GPU smoke test, at most 20 minutes on one CUDA GPU. First benchmarks/train_throughput.py on CUDA (the
# compiled step and length buckets, issue 13). Then the paper-size Prose model trains on synthetic
# octapeptide frames at batch 512 (fp32, TF32 off, grad checkpointing) for up to 300 steps / 270 s,
# then samples; prints iterations per GPU-hour (paper: 260 per H100-hour), peak GPU memory and the
# float32 inverse error. Extra arguments go to benchmarks/gpu_smoke.py (e.g. --max-steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 1. the issue-13 ratios on the GPU (compiled vs eager step, padding to 178 / to the longest / length buckets +
#    compiled, peak memory, sampler): the small 4 x 2 model at batch 64, then the paper preset at batch 512
timeout --signal=INT --kill-after=20 300 "$PY" benchmarks/train_throughput.py --device cuda --rounds 5 --steps 5
timeout --signal=INT --kill-after=20 400 "$PY" benchmarks/train_throughput.py --device cuda --preset paper \
    --blocks 8 --layers 8 --batch-size 512 --rounds 3 --steps 3 --samples 64 || true
# 2. iterations per GPU-hour of the paper preset at batch 512, compiled step (paper: 260 per H100-hour)
exec timeout --signal=INT --kill-after=20 470 "$PY" benchmarks/gpu_smoke.py --compile true "$@"
