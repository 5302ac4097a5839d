#!/usr/bin/env bash
# The prepared run for a lent GPU (docs/gpu.md): two device calls, each one command.
#
#   bash bench/gpu_carry.sh                      # here, once: fills .gpu/ (MNIST, wheels)
#   bash bench/gpu_run.sh check "$OUT"           # call 1: environment, GPU tests, step
#                                                # benchmarks, pyautoencoder baseline, a 1e6
#                                                # sweep end to end (BUDGET_S, default 300 s)
#   bash bench/gpu_run.sh sweep "$OUT"           # call 2: the paper preset, 5 N_z x $SEEDS
#                                                # seeds to 1e8, as far as BUDGET_S (default
#                                                # 480 s) allows (GRAPHS=0: no --cuda-graphs;
#                                                # NZ, SEED_LIST, TF32=1, CHECKS=0: see docs/gpu.md)
#   bash bench/gpu_run.sh check|sweep OUT --dry-run    # the same on the CPU, tiny sizes (CI)
#
# Every step runs under its own timeout, cut to what is left of BUDGET_S (the device allows
# 600 s per call), keeping 45 s to pack the results; the script goes on after a failure and
# exits 1 if any step failed. What each step printed goes to OUT/log.txt (with each sweep's
# training time), a line per step (status, seconds) to OUT/summary.txt. OUT receives at most 6
# files: summary.txt, log.txt, env.txt, steps.json, and sweep-1e6.tar.gz and
# sweep-1e6-tf32.tar.gz (check) or paper-1e8.tar.gz (sweep): CSVs, JSONs, figures, report.
set -u
stage=${1:?usage: gpu_run.sh check|sweep OUT [--dry-run]}
out=${2:?usage: gpu_run.sh check|sweep OUT [--dry-run]}
dry=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/vaerepro-gpu.XXXXXX")
# the baseline's pure-Python wheel is imported from the zip itself: no pip on the device
wheels=$(ls "$here"/.gpu/wheels/*.whl 2>/dev/null | tr '\n' ':')
export PYTHONPATH="$here:$wheels${PYTHONPATH:-}"
export VAEREPRO_DATA=${VAEREPRO_DATA:-$here/.gpu/data}
python=${PYTHON:-python3}

scale=1  # the dry run's limits are 10x: a loaded CI machine must not time it out
if [ "$dry" = "--dry-run" ]; then
    device=cpu scale=10
    export VAEREPRO_GPU_TESTS_DEVICE=cpu
    tiny=(--hidden 32 --train-size 1000 --eval-every 1000 --adagrad-warmup 5 --threads 1)
    samples_1e6=2000 samples_1e8=3000 seeds=${SEEDS:-1} every_1e6=1000 every_1e8=2000
    steps_args=(--hidden 32 --seeds 1 --rounds 2 --steps 3)
    baseline_args=(--samples 1000 --train-size 1000 --eval-every 1000)
    graphs=()
else
    device=cuda
    tiny=()
    # both sweeps evaluate every 1e5 (the preset): 100 x the 1e6 sweep's wall_s predicts 1e8
    samples_1e6=1e6 samples_1e8=1e8 seeds=${SEEDS:-5} every_1e6=1e6 every_1e8=1e7
    steps_args=(--seeds 5 --tf32)
    baseline_args=(--samples 2e5 --eval-every 1e9)
    graphs=(--cuda-graphs)
    [ "${GRAPHS:-1}" = 0 ] && graphs=()  # call 2 without CUDA graphs, if call 1's graph tests failed
fi
precision=()
[ "${TF32:-0}" = 1 ] && precision=(--tf32)  # call 2 in TF32, if call 1 says float32 cannot fit

if [ "$stage" = sweep ]; then budget=${BUDGET_S:-480}; else budget=${BUDGET_S:-300}; fi
budget=$((budget * scale))
deadline=$((SECONDS + budget - 45))  # 45 s kept for packing
failed=0

step() {  # step NAME SECONDS COMMAND...: run it under a timeout, log it, summarize it
    local name=$1 limit=$(($2 * scale))
    shift 2
    [ $((deadline - SECONDS)) -lt "$limit" ] && limit=$((deadline - SECONDS))
    if [ "$limit" -lt 5 ]; then
        printf '%-12s skipped: no time left\n' "$name" | tee -a "$out/summary.txt"
        failed=1
        return 1
    fi
    echo "=== $name: $* (timeout ${limit} s)" >>"$out/log.txt"
    local start=$SECONDS
    timeout -s INT -k 15 "$limit" "$@" >>"$out/log.txt" 2>&1
    local rc=$?
    printf '%-12s rc %3d  %5d s\n' "$name" "$rc" $((SECONDS - start)) | tee -a "$out/summary.txt"
    [ $rc -eq 0 ] || failed=1
    return $rc
}

seed_list=${SEED_LIST:-$(seq -s ' ' 0 $((seeds - 1)))}  # SEED_LIST="1 2": those seeds
nz_list=${NZ:-3 5 10 20 200}  # NZ="3 5": those N_z only
sweep() {  # sweep NAME SAMPLES SECONDS CHECKPOINT_EVERY: the paper preset, 5 N_z x the
    # seeds, batched; ${a[@]+"${a[@]}"}: an empty array under set -u on any bash
    step "$1" "$3" "$python" -m vaerepro reproduce --preset paper --nz $nz_list \
        --seeds $seed_list --samples "$2" --device "$device" --stacked --checkpoint-every "$4" \
        ${graphs[@]+"${graphs[@]}"} --out "$work/$1" --no-progress --no-estimate \
        ${tiny[@]+"${tiny[@]}"} ${precision[@]+"${precision[@]}"} "${@:5}"
}

pack() {  # pack NAME RC: the run's results (no checkpoints or weights) as OUT/NAME.tar.gz;
    # a finished sweep (RC 0) drew its figures, a cut one gets them here
    [ -d "$work/$1" ] || return 0
    [ "$2" -eq 0 ] || timeout $((30 * scale)) "$python" -m vaerepro plot "$work/$1" >>"$out/log.txt" 2>&1
    timeout $((15 * scale)) tar -czf "$out/$1.tar.gz" -C "$work" --exclude='*.ckpt' --exclude='*.pt' \
        --exclude='.lock' "$1"
}

predict() {  # predict NAME [FACTOR]: the sweep's training wall time (the CSVs' wall_s), and
    # FACTOR x it (the 1e6 sweep: 100, the time a 1e8 sweep of the same models would take)
    "$python" - "$work/$1" "${2:-1}" <<'PY' 2>&1 | tee -a "$out/log.txt"
import csv, pathlib, sys
walls = [float(list(csv.DictReader(open(f)))[-1]["wall_s"]) for f in pathlib.Path(sys.argv[1]).rglob("*.csv")
         if "wall_s" in open(f).readline()]
name, factor, wall = pathlib.Path(sys.argv[1]).name, float(sys.argv[2]), max(walls, default=float("nan"))
more = f"; x{factor:g}: {factor * wall:.0f} s" if factor != 1 else ""
print(f"{name}: {len(walls)} CSVs, training wall clock {wall:.1f} s{more}")
PY
}

case $stage in
check)
    {
        date -u
        nvidia-smi 2>&1 || echo "nvidia-smi: not here"
        "$python" -c 'import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
import importlib.metadata as m
for name in ("pytest", "pandas", "numpy", "matplotlib", "scipy", "torchvision", "tqdm"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "MISSING")'
        git -C "$here" rev-parse HEAD 2>/dev/null || echo "commit: not a git checkout"
    } >"$out/env.txt" 2>&1
    pytest=("$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py)
    step tests 90 "${pytest[@]}" -k "not graph"
    # the graph tests decide whether the 1e6 sweep runs in CUDA graphs
    step graphs 60 "${pytest[@]}" -k "graph" || graphs=()
    # the baseline first: the step benchmark's JSON carries its speed (hwtable's speedup)
    step baseline 45 "$python" bench/pyautoencoder_baseline.py --device "$device" --nz 20 \
        --out "$work/baseline" --json "$work/baseline.json" "${baseline_args[@]}"
    baseline=()
    [ -f "$work/baseline.json" ] && baseline=(--baseline-json "$work/baseline.json")
    step steps 60 "$python" bench/batched_step.py --device "$device" --json "$out/steps.json" \
        "${steps_args[@]}" ${baseline[@]+"${baseline[@]}"}
    sweep sweep-1e6 "$samples_1e6" 600 "$every_1e6"
    pack sweep-1e6 $?
    predict sweep-1e6 100
    if [ "$dry" != "--dry-run" ]; then
        sweep sweep-1e6-tf32 "$samples_1e6" 600 "$every_1e6" --tf32
        pack sweep-1e6-tf32 $?
        predict sweep-1e6-tf32 100
    fi
    ;;
sweep)
    # CHECKS=0: the sweep alone, every second for training (the checks ran in an earlier call)
    checks=${CHECKS:-1}
    # the graph tests again (a new commit may have changed the step): they decide --cuda-graphs
    if [ "$checks" = 1 ]; then
        step graphs 60 "$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py -k graph ||
            graphs=()
    fi
    sweep paper-1e8 "$samples_1e8" 600 "$every_1e8"
    pack paper-1e8 $?
    predict paper-1e8
    [ "$checks" = 1 ] && step steps 60 "$python" bench/batched_step.py --device "$device" \
        --json "$out/steps.json" "${steps_args[@]}"
    ;;
*)
    echo "unknown stage $stage: check or sweep" >&2
    exit 2
    ;;
esac
rm -rf "$work"
exit $failed

