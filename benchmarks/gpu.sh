#!/usr/bin/env bash
# One prepared benchmark run for a single H100/H200 machine without internet (about 7 minutes).
#
#   OUT=/path/to/results BUDGET_S=400 timeout -k 10 430 bash benchmarks/gpu.sh
#   bash benchmarks/gpu.sh --cpu-dry-run        # every step on the CPU with tiny step counts
#
# Needs in the repository root: .whl/ (jsonargparse, typeshed_client, docstring_parser wheels,
# see benchmarks/README.md) and .data/cifar10-jpeg/{train,test}.tar.gz (a copy of
# ../shared/data/cifar10-jpeg; the shared folder is not on the GPU machine).
#
# Steps, most valuable first (STEPS overrides the list and order):
#   env     nvidia-smi, versions, wheel install, imports without wandb
#   r50     model.py resnet50 batch 256 at 224, synthetic: fp32 eager vs bf16 / channels_last /
#           fused SGD, then compiled (train); inference for the eager settings
#   cifar   resnet20 on the real CIFAR-10 archive through `python -m resnet_lit fit` with the
#           recipe + configs/trainer/gpu.yaml, CIFAR_STEPS iterations: iterations/s, 64k projection
#   full    the paper's full schedule (64k iterations) if the projection fits the time left
#           (FULL=1 forces it, FULL=0 skips it), then `test` on its last checkpoint. Validation
#           eagerly or compiled: FULL_EVAL=eager|compiled|auto (auto: what cifar_ro found faster).
#           Across two calls on a machine kept warm: WORK=<fixed folder> FULL_RESUME=1 resumes
#           $WORK/full from its last.ckpt (max_time then adds this call's budget to the time used).
#           FULL_ARGS: more `fit` arguments for it (e.g. "--data.eval_batch_size 1000"); give the
#           same in both calls.
#   cifar_ro  the short fit again with --model.compile '{mode: reduce-overhead}' (CUDA graphs; the
#           short last validation batch padded, the default), then once more with --model.compile_eval
#           false (validation eagerly): key "eager_eval" in its JSON, and (RO_UNPADDED=1, the default)
#           with --data.pad_eval_batches false: key "unpadded_eval", the epoch end before padding; and
#           (RO_COMPILE_STEP=1, the default) with --model.compile_step true: key "compile_step".
#           Its projection stands in for the cifar step's when that did not run (for `full`).
#   r20     model.py resnet20 batch 128 / 512: eager, bf16+cl, compiled, compiled reduce-overhead
#   data    data.py on the GPU: CIFAR pipeline vs torchvision (0 and 4 workers), ImageNet decode per worker
#
# Issue 19's plan (the GPU step at the model's own speed), in two calls within 15 minutes of device
# time (about 12.5 minutes and the machine's start, so a failed first call can be run again):
#   1. OUT=... BUDGET_S=300 STEPS="env cifar_ro" timeout -k 10 330 bash benchmarks/gpu.sh
#      the `resnet-lit fit` step and the epoch-end cost under CUDA graphs with padded evaluation
#      batches, with eager validation, and unpadded (cifar_reduce_overhead.json): the ledger's before
#      and after. The model-only step (`r20`, 1.97 ms on an H200) is in docs/benchmarks.md already;
#      add r20 to STEPS (and 200 s to BUDGET_S) to measure it again on another card.
#   2. OUT=... WORK=/tmp/full19 BUDGET_S=480 STEPS="env full" FULL=1 timeout -k 10 510 bash benchmarks/gpu.sh
#      the paper's 64k ResNet-20 schedule through `resnet-lit fit` (wall time, test error); if it
#      stops at its budget, a later call with the same WORK and FULL_RESUME=1 finishes it.
#   The fast path (--model.compile_step true: the whole training step as one compiled function, one
#   CUDA graph) runs in step 1 as the cifar_ro variant "compile_step" (RO_COMPILE_STEP=0 skips it).
# Everything lands in $OUT as it is produced (8 files at most):
#   gpu.log model_resnet50.json cifar_short.json model_resnet20.json cifar_reduce_overhead.json
#   data.json cifar_full.json cifar_full_metrics.csv, and summary.md when fewer than 8 exist
#   (the summary is printed at the end of gpu.log either way).
# Each step runs under min(its cap, time left): SIGINT first, so the scripts keep what they measured.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=${CPU_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --cpu-dry-run) DRY=1 ;;
    *) echo "unknown argument $arg (only --cpu-dry-run)"; exit 2 ;;
  esac
done

OUT=${OUT:-$ROOT/bench-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/resnet-lit-bench.XXXXXX)}  # run directories: NOT in $OUT (8-file limit)
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
BUDGET_S=${BUDGET_S:-400}
CIFAR_STEPS=${CIFAR_STEPS:-1500}
FULL=${FULL:-auto}
FULL_EVAL=${FULL_EVAL:-auto}
FULL_ARGS=${FULL_ARGS:-}
STEPS=${STEPS:-"env r50 cifar full cifar_ro r20 data"}
DATA_ROOT=${DATA_ROOT:-$ROOT/.data/cifar10-jpeg}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
START=$(date +%s)

exec > >(tee -a "$OUT/gpu.log") 2>&1

# jsonargparse & co. travel as wheels (the GPU image lacks them); our package and the benchmark
# helpers (the RunClock callback) come from the checkout, which is not pip-installed there.
SITE=${SITE:-$WORK/site}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} || echo "wheel install from .whl/ failed"
fi
export PYTHONPATH=$ROOT/src:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
say() { echo; echo "=== [$(( $(date +%s) - START ))s, $(left)s left] $*"; }
# run_for CAP_S CMD...: run with a time limit of min(CAP_S, time left - 10 s); SIGINT first so
# Python writes what it has (the benchmark scripts write their JSON after every record).
run_for() {
  local cap=$1; shift
  local t=$(( $(left) - 10 ))
  (( t > cap )) && t=$cap
  if (( t < 30 )); then echo "skipped (only $(left)s left): $*"; return 124; fi
  timeout -s INT -k 15 "$t" "$@"
  local rc=$?
  (( rc == 124 )) && echo "stopped at its time limit (${t}s): $*"
  (( rc != 0 && rc != 124 )) && echo "exit code $rc: $*"
  return $rc
}

if [[ $DRY == 1 ]]; then
  # resnet50 compiled on a CPU takes minutes: the dry run compiles a resnet20 in its place.
  DEVICE=cpu; TRAINER=configs/trainer/cpu.yaml; R50="resnet50:2"; R50_COMPILED="resnet20:4"; R20_SMALL="resnet20:16"; R20_LARGE="resnet20:32"
  MSTEPS="--steps 2 --warmup 1"; CIFAR_STEPS=${CIFAR_DRY_STEPS:-12}; FULL_STEPS=26; BUDGET_S=${CPU_DRY_BUDGET_S:-1500}
  DATA_ARGS="--quick --images 16 --workers 0,1"; EXTRA_FIT=(--data.subset 512 --trainer.limit_val_batches 2)
  FULL=${CPU_DRY_FULL:-1}
  export OMP_NUM_THREADS=1
  # Inductor's C++ compile takes minutes on a small CPU: the dry run checks the plumbing with
  # compile a no-op (CPU_DRY_COMPILE=1 compiles for real).
  [[ ${CPU_DRY_COMPILE:-0} == 1 ]] || export TORCH_COMPILE_DISABLE=1
else
  DEVICE=cuda; TRAINER=configs/trainer/gpu.yaml; R50="resnet50:256"; R50_COMPILED=$R50; R20_SMALL="resnet20:128"; R20_LARGE="resnet20:512"
  MSTEPS="--steps 20 --warmup 5"; FULL_STEPS=64000
  DATA_ARGS="--workers 0,4 --seconds 2 --repeats 2 --images 240"; EXTRA_FIT=()
fi

# `python -m resnet_lit fit` for resnet20 with the recipe and the trainer overlay; $1 = run name,
# $2 = iterations, rest = extra arguments. Sets FIT_WALL. A RunClock callback times the run.
fit_cifar() {
  local name=$1 steps=$2; shift 2
  local dir=$WORK/$name
  [[ ${KEEP_RUN_DIR:-0} == 1 ]] || rm -rf "$dir"
  local t0=$(date +%s%N)
  run_for "$FIT_CAP" $PY -m resnet_lit fit \
    --config configs/cifar10/resnet20.yaml --config $TRAINER \
    --data.root "$DATA_ROOT" --run_dir "$dir" --trainer.max_steps "$steps" \
    --trainer.callbacks+="{\"class_path\": \"_steptimer.RunClock\", \"init_args\": {\"path\": \"$WORK/$name-clock.json\"}}" \
    "${EXTRA_FIT[@]}" "$@"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  FIT_WALL=$(printf "%d.%03d" $(( ms / 1000 )) $(( ms % 1000 )))
  return $rc
}

# merge_json FILE: FILE.part1, FILE.part2 (model.py outputs) -> FILE with all their results.
merge_json() {
  $PY - "$1" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); parts = [pathlib.Path(f"{out}.part{i}") for i in (1, 2)]
docs = [json.loads(p.read_text()) for p in parts if p.is_file()]
if docs:
    merged = docs[0]; merged["results"] = [r for d in docs for r in d.get("results", [])]
    merged["commands"] = [d["command"] for d in docs]
    out.write_text(json.dumps(merged, indent=2) + "\n")
for p in parts:
    p.unlink(missing_ok=True)
EOF
}

for step in $STEPS; do
  case $step in
  env)
    say "env: machine, versions"
    nvidia-smi || echo "(no nvidia-smi)"
    echo "PYTHONPATH=$PYTHONPATH"; nproc; free -g | head -2
    $PY - <<'EOF'
import importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
for n in ("torch", "torchvision", "lightning", "torchmetrics", "jsonargparse", "typeshed_client", "docstring_parser", "wandb", "rich", "pillow"):
    try:
        print(f"  {n} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n} -- not installed")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import resnet_lit.training.classifier, resnet_lit.runs.cli, resnet_lit.data  # must import without wandb
print("resnet_lit imports: ok; wandb loaded:", "wandb" in sys.modules)
EOF
    ls -la "$DATA_ROOT" || echo "NO CIFAR DATA at $DATA_ROOT: the cifar/full steps will fail"
    ;;
  r50)
    say "r50: model.py $R50 (eager settings, train + inference)"
    run_for 100 $PY benchmarks/model.py --device $DEVICE --models $R50 $MSTEPS \
      --settings eager,bf16,bf16+cl,bf16+cl+fused --tasks train,infer --out "$OUT/model_resnet50.json.part1"
    say "r50: $R50_COMPILED compiled (train)"
    run_for 150 $PY benchmarks/model.py --device $DEVICE --models $R50_COMPILED $MSTEPS \
      --settings bf16+cl+compile+fused --tasks train --out "$OUT/model_resnet50.json.part2"
    merge_json "$OUT/model_resnet50.json"
    ;;
  cifar)
    say "cifar: resnet20, real CIFAR-10, python -m resnet_lit fit, $CIFAR_STEPS iterations ($TRAINER)"
    FIT_CAP=200
    fit_cifar short "$CIFAR_STEPS" --model.compile true  # the default mode; cifar_ro measures CUDA graphs
    PROJ=$($PY benchmarks/_gpu_summary.py fit "$WORK/short" "$WORK/short-clock.json" "$FIT_WALL" 128 "$OUT/cifar_short.json" | tail -1)
    echo "projected wall time of the 64k schedule: ${PROJ}s"; cat "$OUT/cifar_short.json"
    ;;
  r20)
    say "r20: model.py $R20_SMALL: eager, bf16, compiled, CUDA graphs"
    run_for 130 $PY benchmarks/model.py --device $DEVICE --models $R20_SMALL $MSTEPS --tasks train \
      --settings bf16+cl+fused,bf16+cl+compile:reduce-overhead+fused,bf16+cl+compile+fused,eager \
      --out "$OUT/model_resnet20.json.part1"
    say "r20: model.py $R20_LARGE"
    run_for 80 $PY benchmarks/model.py --device $DEVICE --models $R20_LARGE $MSTEPS --tasks train \
      --settings bf16+cl+fused,bf16+cl+compile+fused --out "$OUT/model_resnet20.json.part2"
    merge_json "$OUT/model_resnet20.json"
    ;;
  cifar_ro)
    say "cifar_ro: the short fit with compile mode reduce-overhead (CUDA graphs)"
    FIT_CAP=150
    fit_cifar reduce_overhead $(( CIFAR_STEPS < 1000 ? CIFAR_STEPS : 1000 )) --model.compile '{"mode": "reduce-overhead"}'
    PROJ_RO=$($PY benchmarks/_gpu_summary.py fit "$WORK/reduce_overhead" "$WORK/reduce_overhead-clock.json" \
      "$FIT_WALL" 128 "$OUT/cifar_reduce_overhead.json" | tail -1)
    PROJ=${PROJ:-$PROJ_RO}
    ro_variant() {  # NAME KEY ARGS...: the reduce-overhead fit with ARGS, nested under KEY in its summary
      local name=$1 key=$2; shift 2
      fit_cifar "$name" $(( CIFAR_STEPS < 1000 ? CIFAR_STEPS : 1000 )) --model.compile '{"mode": "reduce-overhead"}' "$@"
      $PY benchmarks/_gpu_summary.py fit "$WORK/$name" "$WORK/$name-clock.json" "$FIT_WALL" 128 \
        "$WORK/$name.json" > /dev/null
      $PY benchmarks/_gpu_summary.py nest "$OUT/cifar_reduce_overhead.json" "$key" "$WORK/$name.json"
    }
    say "cifar_ro: the same with --model.compile_eval false (validation eagerly, no CUDA graphs for it)"
    ro_variant ro_eager_eval eager_eval --model.compile_eval false
    if [[ ${RO_COMPILE_STEP:-1} == 1 ]]; then
      say "cifar_ro: the same with --model.compile_step true (the whole training step as one compiled function)"
      ro_variant ro_compile_step compile_step --model.compile_step true
    fi
    if [[ ${RO_UNPADDED:-1} == 1 ]]; then
      say "cifar_ro: the same with --data.pad_eval_batches false (the short last validation batch kept)"
      ro_variant ro_unpadded unpadded_eval --data.pad_eval_batches false
    fi
    cat "$OUT/cifar_reduce_overhead.json"
    ;;
  data)
    say "data: data.py on $DEVICE"
    run_for 60 $PY benchmarks/data.py --device $DEVICE $DATA_ARGS --out "$OUT/data.json"
    ;;
  full)
    PROJ=${PROJ:-1000000000}
    if [[ $FULL == 0 ]]; then say "full: skipped (FULL=0)"; continue; fi
    RESUMING=0
    [[ ${FULL_RESUME:-0} == 1 && -f "$WORK/full/checkpoints/last.ckpt" ]] && RESUMING=1
    if [[ $FULL != 1 && $RESUMING == 0 ]] && (( PROJ + 40 > $(left) )); then
      say "full: skipped: projected ${PROJ}s + ~40s test > $(left)s left (FULL=1 forces it)"; continue
    fi
    # Validation through the compiled graph or eagerly: FULL_EVAL=compiled|eager, or auto = whichever
    # the cifar_ro step projected faster (compiled when it did not run).
    # A resumed run keeps the choice of the call that started it ($OUT is new in every call).
    FULL_EVAL_CHOICE=$FULL_EVAL
    if [[ $FULL_EVAL == auto && $RESUMING == 1 && -f "$WORK/full-eval.txt" ]]; then
      FULL_EVAL_CHOICE=$(cat "$WORK/full-eval.txt")
    elif [[ $FULL_EVAL == auto ]]; then
      FULL_EVAL_CHOICE=$($PY benchmarks/_gpu_summary.py faster_eval "$OUT/cifar_reduce_overhead.json")
    fi
    echo "$FULL_EVAL_CHOICE" > "$WORK/full-eval.txt"
    EVAL_ARGS=()
    [[ $FULL_EVAL_CHOICE == eager ]] && EVAL_ARGS=(--model.compile_eval false)
    say "full: resnet20, paper schedule, $FULL_STEPS iterations (projected ${PROJ}s), validation $FULL_EVAL_CHOICE, resuming: $RESUMING${FULL_ARGS:+, extra: $FULL_ARGS}"
    FIT_CAP=100000
    # Keep ~45 s for the test; max_time stops training cleanly (checkpoint written) if it runs long.
    MAXT=$(( $(left) - 45 )); (( MAXT < 30 )) && MAXT=30
    RESUME_ARGS=()
    if [[ $RESUMING == 1 ]]; then
      # Lightning's Timer keeps the elapsed training time in the checkpoint and max_time counts it:
      # this call's budget goes on top of what the earlier calls used.
      PREV=$($PY benchmarks/_gpu_summary.py elapsed "$WORK/full/checkpoints/last.ckpt")
      MAXT=$(( MAXT + PREV )); RESUME_ARGS=(--ckpt_path last)
    fi
    # checkpoint.monitor null: keep the newest checkpoint every epoch (and last.ckpt with it). With
    # the recipe's monitor, Lightning >= 2.5 rewrites last.ckpt only when val/error improves, so
    # last.ckpt could be epochs old; the test must see the final weights.
    KEEP_RUN_DIR=$RESUMING fit_cifar full "$FULL_STEPS" \
      --trainer.max_time "$(printf '00:%02d:%02d:%02d' $(( MAXT / 3600 )) $(( MAXT / 60 % 60 )) $(( MAXT % 60 )))" \
      --checkpoint.monitor null --checkpoint.filename "final-{step:07d}" "${EVAL_ARGS[@]}" "${RESUME_ARGS[@]}" \
      $FULL_ARGS  # word-split on purpose: several arguments
    cp "$WORK/full/metrics.csv" "$OUT/cifar_full_metrics.csv" 2>/dev/null
    $PY benchmarks/_gpu_summary.py fit "$WORK/full" "$WORK/full-clock.json" "$FIT_WALL" 128 "$OUT/cifar_full.json" > /dev/null
    say "full: test on the last checkpoint"
    FIT_CAP=120
    run_for 120 $PY -m resnet_lit test --config configs/cifar10/resnet20.yaml --config $TRAINER \
      --model.compile false --data.root "$DATA_ROOT" --run_dir "$WORK/full-test" \
      --ckpt_path "$WORK/full/checkpoints/last.ckpt" "${EXTRA_FIT[@]}"
    $PY benchmarks/_gpu_summary.py test "$WORK/full-test" "$OUT/cifar_full.json" full
    $PY - "$WORK/full/checkpoints/last.ckpt" "$OUT/cifar_full.json" <<'EOF' || true
import json, sys, torch
c = torch.load(sys.argv[1], map_location="cpu", weights_only=True, mmap=True)
d = json.load(open(sys.argv[2])); d["tested_checkpoint_global_step"] = c.get("global_step")
json.dump(d, open(sys.argv[2], "w"), indent=2)
print("tested last.ckpt: global_step", c.get("global_step"), "epoch", c.get("epoch"))
EOF
    cat "$OUT/cifar_full.json"
    ;;
  *) echo "unknown step $step" ;;
  esac
done

say "summary"
if (( $(ls "$OUT" | wc -l) < 8 )); then
  $PY benchmarks/_gpu_summary.py summary "$OUT"
else
  $PY benchmarks/_gpu_summary.py summary "$OUT" > /dev/null && cat "$OUT/summary.md" && rm -f "$OUT/summary.md"
  echo "(summary.md not kept: $OUT already holds 8 files)"
fi
say "done in $(( $(date +%s) - START ))s; files: $(ls "$OUT" | tr '\n' ' ')"
sleep 1  # let tee flush gpu.log
