#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run (under 10 minutes on one H100):
#   1. M=16 CIFAR ResNet-20, batch 128: auto's measured choice, the sweep against the 16
#      models one after another, and against PyTorch training them one after another;
#   2. the CIFAR ResNet-18 sweep (M=8, bf16 compute) in model-epochs per hour;
#   3. the runlocal weight-decay study end to end (train.loop = scan on the GPU).
# Writes its log to $OUT/gpu_check.log, one JSON record per benchmark to
# $OUT/gpu_benchmarks.jsonl and auto's measurements to $OUT/strategies.json.
# Needs jax with CUDA, flax, optax and ml-collections; torch is optional.
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_check.sh
set -uo pipefail
out="${OUT:-.}"
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1 CLASSBIAS_CACHE_DIR="$out"
# Leave GPU memory for the PyTorch reference, which runs in a child process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
python=${PYTHON:-python}
say() { echo "== $(date +%T) $*" | tee -a "$log"; }

say versions
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee -a "$log"
"$python" -c '
import jax, flax, optax, ml_collections
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())
import classbias_jax.train.trainer
' 2>&1 | tee -a "$log" || exit 1

bench() {  # bench LIMIT_S ARGS...: one benchmark, its JSON record appended
  local limit=$1 tmp
  shift
  say "benchmark $*"
  tmp=$(mktemp)
  timeout "$limit" "$python" -m classbias_jax.benchmark "$@" 2>&1 | tee "$tmp" | tee -a "$log"
  grep '^{"model"' "$tmp" >> "$out/gpu_benchmarks.jsonl" || say "no record (timed out or failed)"
  rm -f "$tmp"
}
bench 320 --model=resnet20 --batch=128 --models=16 --strategy=auto --compare-sequential \
    --torch --steps=24 --rounds=3
bench 150 --model=resnet18 --batch=128 --models=8 --strategy=auto --dtype=bfloat16 \
    --steps=8 --rounds=2
say "runlocal weight-decay study"
start=$SECONDS
timeout 100 "$python" -m classbias_jax.main --config=configs/wd.py:runlocal \
    --workdir="$(mktemp -d)" 2>&1 | tail -4 | tee -a "$log"
say "runlocal: $((SECONDS - start)) s wall, compile included"
say done
