#!/usr/bin/env bash
# Follow-up to gpu_check.sh on one GPU: the vmapped sweep step with its op-level profile
# (where the time goes), against the models one after another and PyTorch, in f32 and bf16.
# Writes $OUT/gpu_profile.log and one JSON record per benchmark to $OUT/gpu_profile.jsonl.
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_profile.sh    # about 7 minutes
set -uo pipefail
out="${OUT:-.}"
mkdir -p "$out"
log="$out/gpu_profile.log"
export PYTHONUNBUFFERED=1 CLASSBIAS_CACHE_DIR="$out" XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
python=${PYTHON:-python}
say() { echo "== $(date +%T) $*" | tee -a "$log"; }
"$python" -c 'import jax, classbias_jax.train.trainer; print(jax.__version__, jax.devices())' 2>&1 \
    | tee -a "$log" || exit 1
bench() {  # bench LIMIT_S ARGS...
  local limit=$1 tmp
  shift
  say "benchmark $*"
  tmp=$(mktemp)
  timeout "$limit" "$python" -m classbias_jax.benchmark "$@" 2>&1 | grep -v cuda_timer \
      | tee "$tmp" | tee -a "$log"
  grep '^{"model"' "$tmp" >> "$out/gpu_profile.jsonl" || say "no record (timed out or failed)"
  rm -f "$tmp"
}
r20='--model=resnet20 --batch=128'
bench 150 $r20 --models=16 --strategy=vmap --compare-sequential --torch --steps=12 --rounds=3 \
    --profile=1
bench 150 $r20 --models=16 --strategy=vmap --dtype=bfloat16 --compare-sequential --steps=12 \
    --rounds=3
bench 90 --model=resnet18 --batch=128 --models=8 --strategy=vmap --dtype=bfloat16 --steps=8 \
    --rounds=2
say done
