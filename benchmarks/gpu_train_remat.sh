#!/usr/bin/env bash
# 2B training step on one GPU under each activation-checkpoint policy (issues 6 and 8), 432x768 unless the
# extra arguments say otherwise (e.g. --config.dataloader_train.dataset.resolution_hw='(720,1280)').
#   POLICIES="full save_self_attention" STEPS=3 PROFILE=1 [TOP=40] bash benchmarks/gpu_train_remat.sh [bench flags...]
# With PROFILE=1 each run also traces 2 steps and prints their kernel-time breakdown (benchmarks/profile_breakdown.py).
set -uo pipefail
out=${OUT:-/tmp}
for policy in ${POLICIES:-full save_self_attention save_self_and_cross_view_attention save_attention}; do
  tag="$policy${TAG:-}"
  prof=()
  if [ -n "${PROFILE:-}" ]; then prof=(--profile "/tmp/profile_$tag"); fi
  timeout "${TIMEOUT:-300}" python3 -m agibot_jax.bench --config configs/edge.py --mode train --steps "${STEPS:-3}" \
    --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn \
    --config.model.net.remat_policy="$policy" "${prof[@]}" "$@" 2>&1 | tail -n 1 | tee "$out/dit_train_$tag.json"
  if [ -n "${PROFILE:-}" ] && [ -d "/tmp/profile_$tag" ]; then
    python3 benchmarks/profile_breakdown.py "/tmp/profile_$tag" --top "${TOP:-15}" | tee "$out/profile_$tag.json"
  fi
done
