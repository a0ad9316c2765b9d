#!/usr/bin/env bash
# raysoup's CUDA path on one GPU, as one call (under 8 minutes on an H200):
#   1. the sweep's fine-tuning loop (train/finetune.py, bf16 autocast), ViT-B-32 at 224 px:
#      images/s, peak GPU memory, finite loss, bf16-vs-fp32 logits on one batch;
#   2. B1: uniform soup of 8 ViT-B-32-size ingredients, the accumulation on the GPU, vs the
#      seed-style loop on the GPU and the raw-read floor;
#   3. B3: one Ray eval actor on the GPU (EvalPool, bf16 autocast) vs a bare loop on the GPU;
#   4. S-feed: the streamed input pipeline (JPEGs of ImageNet sizes, nproc-1 workers) vs
#      ViT-B-32's bf16 training step.
# Python: $PYTHON, else .venv/bin/python, else python3. Packages the machine lacks come as
# wheels in .whl/, installed to /tmp/site with --no-index (nothing is downloaded); make them with
# `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 -d .whl` of ray==2.60.0 open_clip_torch==3.3.0 ftfy wcwidth pydantic
# pydantic-core annotated-types typing-inspection typing_extensions jsonschema
# jsonschema-specifications referencing rpds-py, with ray/jars/ and the dashboard's
# client/build/ deleted from the ray wheel (and from its RECORD) to fit 64 MiB.
# Prints the figures and writes finetune.json, b1.json, b3.json, s_feed.json and gpu.log to $OUT
# (default /tmp/raysoup-gpu). Exit status 1 if any check failed; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu.sh: wheel install failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device")' \
  || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch, ray, open_clip; print("torch", torch.__version__, "ray", ray.__version__,
"open_clip", open_clip.__version__)'
out=${OUT:-/tmp/raysoup-gpu}
mkdir -p "$out"
rc=0
step() {  # name, seconds, command...: run one check; a failure is reported, the rest still run
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$out/gpu.log"
  local r=${PIPESTATUS[0]}
  echo "=== $name: rc $r in $((SECONDS - t0)) s"
  [ "$r" = 0 ] || rc=1
}
step finetune 150 "$PY" -m bench.finetune_step --device cuda --model ViT-B-32 \
  --images 4096 --batch-size 256 --json "$out/finetune.json"
step B1 170 "$PY" -m bench --device cuda --only B1 --json "$out/b1.json"
step B3 150 "$PY" -m bench --device cuda --only B3 --json "$out/b3.json"
# S on the GPU: the streamed input pipeline (JPEG decode + RandomResizedCrop, one DataLoader
# worker per core but one) next to ViT-B-32's bf16 training step on the same machine.
lanes=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
step S-feed 150 "$PY" -m bench.streaming feed \
  "{\"out\": \"$out/s\", \"model\": \"ViT-B-32\", \"lanes\": $lanes, \"images\": 4096, \"device\": \"cuda\"}"
tail -n 1 "$out/gpu.log" > "$out/s_feed.json"  # the feed's JSON line
exit $rc
