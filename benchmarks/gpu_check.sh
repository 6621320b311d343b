#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run (about 10 minutes on one H100):
#   1. M=16 CIFAR ResNet-20, batch 128: auto's measured choice, the sweep against the 16
#      models one after another, and against PyTorch training them one after another;
#   2. the CIFAR ResNet-18 sweep (M=8, bf16 compute) in model-epochs per hour.
# Writes one JSON record per line to ${OUT:-.}/gpu_benchmarks.jsonl and auto's cache to
# ${OUT:-.}/cache. Needs jax[cuda], flax, optax and ml-collections; torch is optional.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
out="${OUT:-.}"
mkdir -p "$out"
export CLASSBIAS_CACHE_DIR="$out/cache" CLASSBIAS_AUTO=measure
python=${PYTHON:-python}
"$python" -c 'import jax; print(jax.devices())' || exit 1
run() {
  echo "== $*" >&2
  timeout 280 "$python" -m classbias_jax.benchmark "$@" | tee -a "$out/gpu_benchmarks.log" \
    | tail -1 >> "$out/gpu_benchmarks.jsonl"
}
run --model=resnet20 --batch=128 --models=16 --strategy=auto --compare-sequential --torch \
    --steps=20 --rounds=4
run --model=resnet18 --batch=128 --models=8 --strategy=auto --dtype=bfloat16 --steps=10
cat "$out/gpu_benchmarks.log"
