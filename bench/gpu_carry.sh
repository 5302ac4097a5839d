#!/usr/bin/env bash
# Fills .gpu/ (git-ignored) with what bench/gpu_run.sh needs on a GPU machine that reaches no
# registry: MNIST's four files (from $VAEREPRO_DATA/MNIST/raw) and the pyautoencoder wheel of
# the baseline. Pass `carry: [".gpu"]` to the device call. About 12 MB.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
data=${VAEREPRO_DATA:?set VAEREPRO_DATA to the folder that holds MNIST/raw}
mkdir -p "$here/.gpu/data/MNIST/raw" "$here/.gpu/wheels"
cp "$data"/MNIST/raw/*-ubyte.gz "$here/.gpu/data/MNIST/raw/"
python3 -m pip download -q --no-deps -d "$here/.gpu/wheels" "pyautoencoder==2.1.0"
du -sh "$here/.gpu"
