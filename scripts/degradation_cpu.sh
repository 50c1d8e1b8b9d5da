#!/usr/bin/env bash
# The degradation study of He et al. 2015 (Figure 6) on a CPU: plain-20, plain-56, ResNet-20 and
# ResNet-56 trained on the real CIFAR-10 archive with the paper's batch, lr, momentum and weight
# decay for a short schedule (configs/experiments/degradation_cpu.yaml), then `resnet-lit report`
# draws the figure and the table. Results and the machine they came from: docs/reproduction.md.
#
#   scripts/degradation_cpu.sh                      # from the repository root, venv active
#   DATA=/path/to/cifar10 OUT=runs/deg2 scripts/degradation_cpu.sh \
#       --trainer.max_steps 3000 --model.schedule.milestones '[1500, 2250]'   # longer: move the lr drops too
#
# The four runs go at once, one thread each (the most work per core on a CPU); extra arguments
# are passed to every `resnet-lit fit`. Each run logs to $OUT/<net>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/cifar10-jpeg}   # train.tar.gz + test.tar.gz (see ../shared/data/README.md)
OUT=${OUT:-runs/degradation_cpu}             # one run directory per net
REPORT=${REPORT:-docs/degradation_cpu}       # figure6_cifar10.png and errors.md
THREADS=${THREADS:-1}                        # torch threads per run
NETS=(${NETS:-plain20 plain56 resnet20 resnet56})  # e.g. NETS="resnet20 resnet56"

if [ -e "$OUT" ]; then
    echo "degradation_cpu.sh: $OUT already exists: remove it, or set OUT=<new folder>" >&2
    exit 2
fi
mkdir -p "$OUT"

pids=()
for net in "${NETS[@]}"; do
    OMP_NUM_THREADS=$THREADS resnet-lit fit \
        --config "configs/cifar10/$net.yaml" \
        --config configs/trainer/cpu.yaml \
        --config configs/experiments/degradation_cpu.yaml \
        --data.root "$DATA" --run_dir "$OUT/$net" "$@" > "$OUT/$net.log" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "degradation_cpu.sh: ${NETS[$i]} failed, see $OUT/${NETS[$i]}.log" >&2
        failed=1
    fi
done

resnet-lit report "${NETS[@]/#/$OUT/}" --out "$REPORT" \
    --title "${TITLE:-CIFAR-10, 1,000 iterations on 2 CPU cores: training error (dashed), 1k holdout val error (solid)}"
exit $failed
