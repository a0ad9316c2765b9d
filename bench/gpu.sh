#!/usr/bin/env bash
# raysoup bench on one CUDA GPU: B1 (uniform soup of 8 ViT-B-32-size ingredients; the
# accumulation and the seed-style loop on the GPU) and B3 (one eval actor on the GPU vs a bare
# loop on the GPU, bf16 autocast, ViT-B-32 at 224 px). One call, under 5 minutes on an H200.
# Installs nothing from the internet: it uses the carried/pre-built venv (.venv, else $PYTHON,
# else python3) and at most `pip install -e .` without dependencies.
# Prints the figures; writes $OUT/bench-gpu.json when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || echo "gpu.sh: 'pip install -e .' failed; running from the source tree" >&2
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
args=(bench --device cuda --only B1,B3)
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  args+=(--json "$OUT/bench-gpu.json")
fi
exec timeout 290 "$PY" -m raysoup.cli "${args[@]}"
