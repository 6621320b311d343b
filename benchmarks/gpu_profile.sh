#!/usr/bin/env bash
# Follow-up to gpu_check.sh on one GPU: the vmapped sweep step with its op-level profile
# (where the time goes), against the models one after another and PyTorch, in f32 and bf16.
# Writes $OUT/gpu_profile.log and one JSON record per benchmark to $OUT/gpu_profile.jsonl.
# --smoke: the same lines, tiny, on the CPU (common.sh).
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_profile.sh    # about 7 minutes
source "$(dirname "$0")/common.sh" gpu_profile "$@"

versions
r20=(--model=resnet20 --batch=128 --models=16 --strategy=vmap --compare-sequential)
bench 150 gpu_profile.jsonl "${r20[@]}" --torch --steps=12 --rounds=3 --profile=1
bench 150 gpu_profile.jsonl "${r20[@]}" --dtype=bfloat16 --steps=12 --rounds=3
bench 90 gpu_profile.jsonl --model=resnet18 --batch=128 --models=8 --strategy=vmap \
    --dtype=bfloat16 --steps=8 --rounds=2
finish
