#!/usr/bin/env bash
# Issue 19's learning run on one GPU (benchmarks/learning_run.py: a reduced control DiT trained from scratch on a
# control-determined synthetic dataset; validation-loss curve and edge F1 against the untrained model). Run from the
# repo root on the GPU machine with PYTHONPATH holding the repo and the wheels of shared/device/wheels.sh, fetched
# with tensorboardX added (`bash shared/device/wheels.sh tensorboardX`). Extra arguments go to the script.
# Writes learning_run.json, learning_curve.png, samples.jpg and learning_run.log to $OUT.
set -uo pipefail
out=${OUT:-/tmp/learning_run_out}
mkdir -p "$out"
python3 -c "import grain, ml_collections, tensorboardX" || { echo "missing wheels: see the header of $0"; exit 2; }
rm -rf /tmp/learning_run
if python3 benchmarks/learning_run.py --workdir /tmp/learning_run --out_dir "$out" "$@" > "$out/learning_run.log" 2>&1; then
  tail -n 1 "$out/learning_run.log"
else
  tail -n 60 "$out/learning_run.log"
  exit 1
fi
