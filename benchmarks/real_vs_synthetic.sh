#!/usr/bin/env bash
# Issue 8, goal 5: the training step fed by the real pipeline against the synthetic-input benchmark, one GPU.
#   DATA=<3-view dataset dir> bash benchmarks/real_vs_synthetic.sh [--config.<key>=<value> ...]
# 1. `agibot_jax.bench` (synthetic latents and text); 2. `agibot_jax.train` on DATA with online VAE encoding of video
# and control; 3. the same from a latent cache written by `agibot_jax.cache_latents` (edge: the epoch-0 control).
# Random real-size weights (model.allow_random_init; the random stand-in text encoder of agibot_jax/text/demo.py runs
# online, its output kept on the GPU). The train jobs log s_per_step over logging windows after the first (compile
# excluded); each line printed is JSON.
# CONFIG=configs/edge.py:tiny runs the same plan on CPU in seconds (a smoke test of this script); RUNS picks some of
# "synthetic online cached" (default: all three). Extra arguments are config overrides for every run.
set -euo pipefail
data=${DATA:?set DATA to a dataset directory}
config=${CONFIG:-configs/edge.py}
work=${WORK:-/tmp/real_vs_synthetic}
steps=${STEPS:-3}
rm -rf "$work"; mkdir -p "$work"
common=(--config "$config" --config.model.allow_random_init=True --config.dataloader_train.dataset.dataset_dir="$data" "$@")
gpu=()
if [ "$config" = configs/edge.py ]; then
  gpu=(--config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn)
fi
runs=" ${RUNS:-synthetic online cached} "
if [[ $runs == *" synthetic "* ]]; then
  python3 -m agibot_jax.bench --config "$config" --mode train --steps "$steps" "${gpu[@]}" "$@" 2>&1 | tail -n 1 \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(json.dumps({'run': 'synthetic', 's_per_step': r['step_s_median']}))"
fi
train() {  # train NAME [extra flags]: 3 logging windows of STEPS steps; the last two are timed
  local name=$1; shift
  python3 -m agibot_jax.train "${common[@]}" "${gpu[@]}" --workdir "$work/$name" --config.trainer.max_iter=$((3 * steps)) \
    --config.trainer.logging_iter="$steps" --config.checkpoint.save_iter=1000000 \
    --config.trainer.callbacks.every_n_sample.every_n=0 "$@" > "$work/$name.log" 2>&1
  python3 - "$work/$name/metrics.jsonl" "$name" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
timed = [r["s_per_step"] for r in rows if "s_per_step" in r]
print(json.dumps({"run": sys.argv[2], "s_per_step": min(timed), "windows": timed}))
PY
}
if [[ $runs == *" online "* ]]; then train online; fi
if [[ $runs == *" cached "* ]]; then
  python3 -m agibot_jax.cache_latents "${common[@]}" --workdir "$work/cache" > "$work/cache.log" 2>&1
  train cached --config.dataloader_train.dataset.latent_cache_dir="$work/cache/latent_cache"
fi
