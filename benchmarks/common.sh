# Shared by the GPU scripts of benchmarks/ (sourced, not run): the output folder, the
# log, the smoke mode, and the two kinds of line they run.
#
#   source "$(dirname "$0")/common.sh" NAME "$@"
#
# OUT     folder for the log ($OUT/NAME.log) and the records (default: .)
# PYTHON  the interpreter (default: python)
# SMOKE=1 or a first argument --smoke: the same lines at tiny sizes on the CPU
#         (JAX_PLATFORMS=cpu; every benchmark on the test model, 8x8 images, batch 8,
#         2 models, 2 timed calls, a 256^2 matmul for the peak; every study on the
#         test model, 2 seeds, 1 epoch of 160 training images), so that
#         tests/test_gpu_scripts.py checks on any machine that a device run will start.
#
# Each line has its own time limit; a line that fails or runs out of time is logged
# ("no record") and the script goes on to the next; the script's exit status is the
# number of such lines (0: all ran).
set -uo pipefail
name=$1
shift
smoke=${SMOKE:-0}
if [[ ${1:-} == --smoke ]]; then
  smoke=1
  shift
fi
if [[ $# -gt 0 ]]; then
  echo "usage: [OUT=DIR] [PYTHON=python] [SMOKE=1] bash benchmarks/$name.sh [--smoke]" >&2
  exit 2
fi
out="${OUT:-.}"
mkdir -p "$out" || exit 2
log="$out/$name.log"
python=${PYTHON:-python}
failed=0
export PYTHONUNBUFFERED=1 CLASSBIAS_CACHE_DIR="$out"
# Leave GPU memory for the PyTorch reference, which runs in a child process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
# Appended to every benchmark's flags in smoke mode (the last value of a flag wins).
SMOKE_BENCH=(--model=tiny --batch=8 --image-size=8 --models=2 --steps=2 --rounds=1
             --matmul-size=256)
# Appended to every study's flags in smoke mode.
SMOKE_STUDY=(--config.model.name=tiny --config.model.dtype=float32 --config.train.epochs=1
             --config.train.batch_size=32 --config.train.eval_every=1
             --config.data.train_subset=160 --config.seeds=2)
if [[ $smoke == 1 ]]; then
  # The C library's allocator, as on a GPU machine (hostmem.py: no second exec).
  export JAX_PLATFORMS=cpu CLASSBIAS_MALLOC=system
fi

say() { echo "== $(date +%T) $*" | tee -a "$log"; }

versions() {  # the device, the driver and the Python packages; exits when JAX is missing
  say "versions (smoke mode: $smoke)"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv 2>&1 | tee -a "$log"
  else
    echo "no nvidia-smi on this machine" | tee -a "$log"
  fi
  "$python" -c '
import jax, flax, optax, ml_collections
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      jax.devices())
import classbias_jax.train.trainer, classbias_jax.benchmark
' 2>&1 | tee -a "$log" || exit 2
}

bench() {  # bench LIMIT_S JSONL ARGS...: python -m classbias_jax.benchmark ARGS, its JSON
  local limit=$1 jsonl=$2 tmp  # record appended to $out/JSONL
  shift 2
  local args=("$@")
  [[ $smoke == 1 ]] && args+=("${SMOKE_BENCH[@]}")
  say "benchmark ${args[*]}"
  tmp=$(mktemp)
  timeout "$limit" "$python" -m classbias_jax.benchmark "${args[@]}" 2>&1 \
      | grep --line-buffered -v cuda_timer | tee "$tmp" | tee -a "$log"
  if ! grep '^{"model"' "$tmp" >> "$out/$jsonl"; then
    say "no record (timed out after $limit s or failed)"
    failed=$((failed + 1))
  fi
  rm -f "$tmp"
}

study() {  # study LIMIT_S NAME CONFIG FLAGS...: train with main, then the report; keeps
  local limit=$1 study_name=$2 config=$3 workdir start  # results, analysis, report, config
  shift 3
  local flags=("$@")
  [[ $smoke == 1 ]] && flags+=("${SMOKE_STUDY[@]}")
  workdir=$(mktemp -d)
  say "study $study_name: $config ${flags[*]}"
  start=$SECONDS
  if timeout "$limit" "$python" -m classbias_jax.main --config="$config" "${flags[@]}" \
      --workdir="$workdir" 2>&1 | tail -8 | tee -a "$log" && [[ -f $workdir/results.npz ]] \
      && "$python" -m classbias_jax.report --workdir="$workdir" 2>&1 | tail -3 | tee -a "$log"
  then
    mkdir -p "$out/$study_name"
    cp "$workdir"/{results.npz,analysis.json,report.md,config.json,metrics.jsonl} \
        "$out/$study_name/" 2>&1 | tee -a "$log"
    say "study $study_name: $((SECONDS - start)) s wall, compilation included"
  else
    say "study $study_name: no results (timed out after $limit s or failed)"
    failed=$((failed + 1))
  fi
  rm -rf "$workdir"
}

finish() {
  say "done ($failed lines without a result)"
  exit "$failed"
}
