#!/usr/bin/env bash
# 2B DiT forward on one GPU (issue 2): bf16 params and activations, cuDNN attention, batch 1,
# 3 views x 24 latent frames at 432x768 (54x96 latent) and 720x1280 (90x160 latent).
# Run from the repo root on the GPU machine after installing the wheels (shared/device/wheels.sh).
set -euo pipefail
out=${OUT:-/tmp}
bench="python3 -m agibot_jax.bench --config configs/edge.py --mode forward --steps 5 --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn"
$bench 2>&1 | tail -n 1 | tee "$out/dit_forward_432x768.json"
$bench --config.dataloader_train.dataset.resolution_hw='(720,1280)' 2>&1 | tail -n 1 | tee "$out/dit_forward_720x1280.json"
