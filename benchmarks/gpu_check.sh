#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run (under 10 minutes on one H100):
#   1. M=16 CIFAR ResNet-20, batch 128: auto's measured choice, the sweep against the 16
#      models one after another, and against PyTorch training them one after another;
#   2. the CIFAR ResNet-18 sweep (M=8, bf16 compute) in model-epochs per hour;
#   3. the runlocal weight-decay study end to end (train.loop = scan on the GPU).
# Writes its log to $OUT/gpu_check.log, one JSON record per benchmark to
# $OUT/gpu_benchmarks.jsonl, auto's measurements to $OUT/strategies.json and the study's
# results, analysis and report to $OUT/runlocal/. Needs jax with CUDA, flax, optax and
# ml-collections; torch is optional. --smoke: the same lines, tiny, on the CPU (common.sh).
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_check.sh
source "$(dirname "$0")/common.sh" gpu_check "$@"

versions
bench 320 gpu_benchmarks.jsonl --model=resnet20 --batch=128 --models=16 --strategy=auto \
    --compare-sequential --torch --steps=24 --rounds=3
bench 150 gpu_benchmarks.jsonl --model=resnet18 --batch=128 --models=8 --strategy=auto \
    --dtype=bfloat16 --steps=8 --rounds=2
study 100 runlocal configs/wd.py:runlocal
finish
