#!/usr/bin/env bash
# 2B training step at 432x768 on one GPU under each activation-checkpoint policy (issues 6 and 8).
set -uo pipefail
out=${OUT:-/tmp}
for policy in ${POLICIES:-full save_self_attention save_attention}; do
  python3 -m agibot_jax.bench --config configs/edge.py --mode train --steps 3 \
    --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn \
    --config.model.net.remat_policy=$policy "$@" 2>&1 | tail -n 1 | tee "$out/dit_train_432x768_$policy.json"
done
