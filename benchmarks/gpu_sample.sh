#!/usr/bin/env bash
# 2B sampling on one GPU (issue 7): random weights, synthetic inputs, 3 views x 93 frames at 432x768,
# 35 UniPC steps with guidance (cond/uncond batched in one DiT call per step), then the VAE decode.
# bf16 params and activations, cuDNN attention. Run from the repo root on the GPU machine with PYTHONPATH
# holding the repo and the wheels of shared/device/wheels.sh.
set -euo pipefail
out=${OUT:-/tmp}
python3 benchmarks/sample.py --config configs/edge.py --config.model.allow_random_init=True \
  --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn --num_steps 35 --guidance 3 \
  --num_cond_frames 1 --repeats ${REPEATS:-1} 2>&1 | tail -n 1 | tee "$out/sample_432x768.json"
