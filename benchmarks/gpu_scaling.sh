#!/usr/bin/env bash
# Scaling of the 2B training step over the GPUs of one host (issues 8 and 9).
# 720p (and 432x768), 3 views x 93 frames, batch 1 and batch = data-parallel groups, several mesh splits.
# Usage on the GPU machine (repo root, wheels of shared/device/wheels.sh on PYTHONPATH):
#   bash benchmarks/gpu_scaling.sh            # uses every visible GPU
# Each line of output is one JSON result (also written to $OUT/scaling_<n>gpu_<res>_<mesh>_b<batch>.json).
set -uo pipefail
out=${OUT:-/tmp}
n=$(python3 -c "import jax; print(jax.device_count())")
run() {  # run RES_H RES_W DATA FSDP CONTEXT BATCH
  local tag="${n}gpu_${1}x${2}_d${3}f${4}c${5}_b${6}"
  timeout 900 python3 -m agibot_jax.bench --config configs/edge.py --mode train --steps 3 \
    --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn --config.model.net.remat_policy=full \
    --config.dataloader_train.dataset.resolution_hw="($1,$2)" --config.mesh.data=$3 --config.mesh.fsdp=$4 \
    --config.mesh.context=$5 --config.dataloader_train.batch_size=$6 2>&1 | tail -n 1 | tee "$out/scaling_$tag.json"
}
# The config's default split (FSDP over all GPUs), then context parallelism over all GPUs (the reference's CP=WORLD),
# then a data-parallel split with batch = data groups.
for res in "432 768" "720 1280"; do
  set -- $res
  run $1 $2 1 -1 1 1
  run $1 $2 1 1 $n 1
  if [ "$n" -ge 4 ]; then run $1 $2 2 1 $((n / 2)) 2; fi
done
