#!/usr/bin/env bash
# What each memory plan of the 2B train step keeps, without running it (issues 22 and 23): agibot_jax.bench
# --compile_only --largest_buffers on one GPU, for the plans that do not fit or are to be shrunk:
#   none432     remat_policy=none at 432x768 (asks for far more than the card has)
#   full432@24  remat_policy=full + offload_block_inputs at 432x768, JAX's pool capped at 24 GB
#   full720@48  the same at 720x1280, capped at 48 GB
# Prints XLA's memory analysis and the largest arrays of each compiled step, and XLA's own warnings about memory.
# Run from the repo root on the GPU machine with the wheels of shared/device/wheels.sh on PYTHONPATH.
set -uo pipefail
out=${1:-${OUT:-/tmp/memory_plans}}
mkdir -p "$out"
hw432="(432,768)"; hw720="(720,1280)"
summary='
import json, sys
try:
  r = json.loads(sys.stdin.read())
except ValueError:
  sys.exit(print("  (no JSON: see the log)"))
print("  memory analysis (GiB):", r.get("memory_analysis"), " compile", r.get("compile_s"), "s")
for b in r.get("largest_buffers", []):
  print("  %9.3f GiB  %-32s %-12s %s" % (b["gib"], b["array"], b["opcode"], b["op_name"][-150:]))'
run() {  # name mem_fraction resolution policy offload
  local name=$1 frac=$2 hw=$3 policy=$4 offload=$5
  XLA_PYTHON_CLIENT_MEM_FRACTION=$frac python3 -m agibot_jax.bench --config configs/edge.py --mode train \
    --compile_only --largest_buffers 8 --config.dataloader_train.dataset.resolution_hw="$hw" \
    --config.model.net.remat_policy="$policy" --config.model.net.offload_block_inputs="$offload" \
    > "$out/$name.log" 2>&1
  local rc=$?
  echo "== $name (pool fraction $frac, $hw, $policy, offload $offload): exit $rc"
  grep -iE "rematerializ|can't reduce|cannot reduce|out of memory|RESOURCE_EXHAUSTED" "$out/$name.log" | cut -c1-400 | head -n 4
  tail -n 1 "$out/$name.log" | python3 -c "$summary"
}
run none432 .9 "$hw432" none False
run full432_24 .17 "$hw432" full True
run full720_48 .34 "$hw720" full True
