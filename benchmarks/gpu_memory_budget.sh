#!/usr/bin/env bash
# Issue 23: the 2B train step (3 views x 93 frames, batch 1) on smaller cards, emulated on one H200 by capping JAX's
# memory pool (XLA_PYTHON_CLIENT_MEM_FRACTION of the card's 139.8 GiB), next to the uncapped default step in the
# same call. Run from the repo root on the GPU with the wheels of shared/device/wheels.sh on PYTHONPATH:
#   RES=432 bash benchmarks/gpu_memory_budget.sh OUT_DIR    # the ladder, then default and capped runs
# Settings (environment): RES 432 | 720; BUDGET the capped run's model.memory_budget_gib (22 at 432, 44 at 720);
# FRAC its pool fraction (BUDGET/139.8 + 1 GiB of slack); CAPPED other arguments for it instead of the budget (a plan
# named directly); LADDER=0 skips the compile-only run under a budget nothing meets (the chooser of
# agibot_jax/memory_plans.py logs what each plan it compiles needs: the first, then those its bisection visits),
# LADDER_ONLY=1 does only that (no step runs). benchmarks/gpu_card_table.sh runs the README's card rows.
set -uo pipefail
out=${1:-${OUT:-/tmp/memory_budget}}
mkdir -p "$out"
res=${RES:-432}
if [ "$res" = 720 ]; then hw="(720,1280)"; budget=${BUDGET:-44}; else hw="(432,768)"; budget=${BUDGET:-22}; fi
frac=${FRAC:-$(python3 -c "print(round(($budget + 1) / 139.8, 3))")}
capped=${CAPPED:---config.model.memory_budget_gib=$budget}
bench() {  # name, then arguments
  local name=$1; shift
  python3 -m agibot_jax.bench --config configs/edge.py --mode train --largest_buffers 4 \
    --config.dataloader_train.dataset.resolution_hw="$hw" "$@" > "$out/$name.log" 2>&1
  echo "== $name: exit $?"
  grep -E "memory plan|RESOURCE_EXHAUSTED|out of memory" "$out/$name.log" | cut -c1-330 | head -n 8
  tail -n 1 "$out/$name.log" | python3 -c '
import json, sys
try:
  r = json.loads(sys.stdin.read())
except ValueError:
  sys.exit()
keys = ("step_s_median", "step_s_min", "step_s_max", "peak_memory_gib", "losses", "remat", "offload_block_inputs",
        "offload_optimizer_state", "mlp_chunks", "compile_s", "memory_analysis")
print(json.dumps({k: r.get(k) for k in keys}))'
}
# The compiled needs along the ladder: a budget nothing meets makes the chooser compile its path down, then stop.
[ "${LADDER:-1}" = 1 ] && bench "ladder$res" --compile_only --config.model.memory_budget_gib=0.001
[ "${LADDER_ONLY:-0}" = 1 ] && exit 0
bench "default$res" --warmup 1 --steps 3
# shellcheck disable=SC2086
XLA_PYTHON_CLIENT_MEM_FRACTION=$frac bench "capped$res" --warmup 1 --steps 3 $capped
