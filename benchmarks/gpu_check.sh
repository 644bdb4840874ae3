#!/usr/bin/env bash
# The GPU checks, as one script for a machine with one CUDA GPU (the 2-core CI machine has none):
#   bash benchmarks/gpu_check.sh OUTDIR
# 1. tests/core_attn/test_cuda.py: every variant and backend on CUDA against the CPU (outputs, gradients).
# 2. python -m core_attn.bench --device cuda: local / bigbird / dense (SDPA) / FlexAttention / HF peers.
# 3. Vision training on the GPU: CUDA peak memory and step rate with and without activation offloading
#    (experiment=vision_2048, 4,096 tokens); with FULL=1 the default job too (`python -m vision.train trainer=gpu`).
# About 9 minutes in all (each step has a time limit), within one 10-minute device call.
# Each step has its own time limit; one failing step does not stop the next. OUTDIR gets the test log, the
# bench's CSV and Markdown and each training run's metrics.json (as <run>.json); the runs are in $RUNS.
# Python packages the machine lacks can be put as wheels in .devwheels/ (installed with --no-deps first).
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/gpu_check_runs}
step() { echo "=== $(date +%T) $1"; }
train() {  # train NAME OVERRIDES...: one run in $RUNS/NAME, its metrics copied to OUTDIR/NAME.json
  local name=$1; shift
  timeout "$LIMIT" $PY -m vision.train "$@" hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc"
  if [ -f "$RUNS/$name/metrics.json" ]; then cp "$RUNS/$name/metrics.json" "$OUT/$name.json"; cat "$OUT/$name.json"; echo
  else tail -15 "$RUNS/$name.log"; fi
}
mkdir -p "$RUNS"

step "environment"
if compgen -G ".devwheels/*.whl" >/dev/null; then $PY -m pip install -q --no-deps --no-index .devwheels/*.whl; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, lightning, hydra, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'hydra', hydra.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

step "tests/core_attn/test_cuda.py"
timeout 150 $PY -m pytest -q -p no:cacheprovider -n 8 tests/core_attn/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -25

step "flex backend over a new length every batch (benchmarks/flex_lengths.py)"
timeout 90 $PY benchmarks/flex_lengths.py --device cuda 2>&1 | grep -v Warning | tail -15

step "core_attn.bench --device cuda"
timeout 170 $PY -m core_attn.bench --device cuda --variants local,bigbird,dense,flex_local,hf_longformer \
  --lengths 16k,128k --dtype bf16 --mode fwdbwd --warmup 2 --repeats 5 --timeout 60 --no-plots \
  --outdir "$OUT" --tag bench_cuda 2>&1 | tail -40

step "vision_2048 on the GPU: activation offloading off / on"
LIMIT=60
for off in false true; do
  train "v2048_offload_$off" experiment=vision_2048 trainer=gpu gradient_checkpointing=false \
    activation_offloading=$off test=false data.train_samples=320 data.val_samples=32 data.num_workers=8 \
    trainer.max_epochs=1 trainer.num_sanity_val_steps=0
done

if [ "${FULL:-0}" = 1 ]; then  # FULL=1: the default job too (about 4 minutes more)
  step "default vision job on the GPU"
  LIMIT=240 train vision_default trainer=gpu data.num_workers=8
fi
step "done"
