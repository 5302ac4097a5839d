#!/bin/bash
# Ablations of the paper preset, one choice at a time: N_z=3 and 20, 1e6 samples, seeds 0-1.
# Needs `vaerepro` on the PATH (pip install -e .). Writes into $1 (default results/runs/ablations-1e6;
# the committed folders beside this script came from `bash results/ablations-1e6/run.sh results/ablations-1e6`).
cd "$(dirname "$0")/../.."
out=${1:-results/runs/ablations-1e6}
export VAEREPRO_DATA=${VAEREPRO_DATA:-../shared/data}
declare -A V=(
  [paper]=""
  [no-weight-decay]="--no-weight-decay"
  [torch-adagrad]="--optimizer torch_adagrad"
  [train-size-60000]="--train-size 60000"
  [epoch-sampling]="--sampling epoch"
)
for seed in 0 1; do
  for name in paper no-weight-decay torch-adagrad train-size-60000 epoch-sampling; do
    vaerepro reproduce --preset paper --nz 3 20 --samples 1e6 --seed $seed ${V[$name]} \
      --out "$out/$name-seed$seed" --no-plot --no-progress --overwrite 2>&1 | grep "^N_z"
  done
done
