#!/usr/bin/env bash
# The accelerator issue's measurements in one run on one GPU (docs/benchmarks.md, "GPU:
# the device script"):
#   sweep  ResNet-20, batch 128, M = 16 and 64, f32 and bf16: the vmapped sweep's step and
#          compile time against the M models one after another (the one-model program
#          called M times) and against lax.map over the models in one program (strategy
#          'map'), interleaved in one process; at M = 16 f32 also PyTorch training the 16
#          models one after another (when torch is installed) and the op-level profile of
#          the vmapped step. Expected 3-6 minutes (line limits add up to 6);
#   study  the Fashion-MNIST weight-decay study at full size (configs/wd.py:fashion,full:
#          60,000 images, ResNet-20, 4 values x 4 seeds), then its report. Expected 4-5
#          minutes (limit 330 s).
# PARTS picks the parts (default "sweep study"), so a rerun can redo only the one that
# failed. FASHION_DIR: the folder of the four Fashion-MNIST .gz files (default
# device_data/fashion-mnist, an ignored folder of the working tree: a device machine has
# no network, so the files travel with the run; see docs/benchmarks.md).
# Writes $OUT/gpu_sweep.log, one JSON record per benchmark to $OUT/gpu_sweep.jsonl and the
# study's results.npz, analysis.json, report.md, config.json and metrics.jsonl to
# $OUT/fashion_wd/. --smoke: the same lines, tiny, on the CPU (common.sh).
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_sweep.sh
source "$(dirname "$0")/common.sh" gpu_sweep "$@"
parts=${PARTS:-sweep study}
fashion_dir=${FASHION_DIR:-device_data/fashion-mnist}

versions
if [[ $parts == *sweep* ]]; then
  r20=(--model=resnet20 --batch=128 --strategy=vmap --compare-sequential
       --compare-strategy=map)
  bench 120 gpu_sweep.jsonl "${r20[@]}" --models=16 --torch --profile=2 --steps=12 --rounds=3
  bench 75 gpu_sweep.jsonl "${r20[@]}" --models=16 --dtype=bfloat16 --steps=12 --rounds=3
  bench 90 gpu_sweep.jsonl "${r20[@]}" --models=64 --steps=6 --rounds=2
  bench 75 gpu_sweep.jsonl "${r20[@]}" --models=64 --dtype=bfloat16 --steps=6 --rounds=2
fi
if [[ $parts == *study* ]]; then
  if [[ -f $fashion_dir/train-images-idx3-ubyte.gz ]]; then
    study 330 fashion_wd configs/wd.py:fashion,full --config.data.data_dir="$fashion_dir"
  else
    say "no Fashion-MNIST files in $fashion_dir: the study is not run"
    failed=$((failed + 1))
  fi
fi
finish
