#!/usr/bin/env bash
# Scaling of the 2B training step over the GPUs of one host (issues 8 and 9): 3 views x 93 frames, batch 1 and
# batch = data-parallel groups, several (data, fsdp, context) mesh splits. Run on the GPU machine from the repo root
# with the wheels of shared/device/wheels.sh on PYTHONPATH:
#   bash benchmarks/gpu_scaling.sh                       # every visible GPU, the default plan below
#   RESOLUTIONS="720x1280" MESHES="1,1,2,1" POLICY=full OFFLOAD=True bash benchmarks/gpu_scaling.sh
#   LOCAL=False bash benchmarks/gpu_scaling.sh  # cross-view/text attention resharded by heads instead of per device
#                                               # (model.net.context_local_attention, default True)
# MESHES lists data,fsdp,context,batch; each line of output is one JSON result (also written to
# $OUT/scaling_<n>gpu_<res>_d<data>f<fsdp>c<context>_b<batch>_<policy>.json).
set -uo pipefail
out=${OUT:-/tmp}
n=$(python3 -c "import jax; print(jax.device_count())")
# Default plan: context parallelism over all GPUs (the config's mesh, as the reference's CP = world size),
# then, from 4 GPUs, 2 data-parallel groups of n/2-way context parallelism with batch 2.
default_meshes="1,1,$n,1"
if [ "$n" -ge 4 ]; then default_meshes="$default_meshes 2,1,$((n / 2)),2"; fi
policy=${POLICY:-save_self_attention}
offload=${OFFLOAD:-False}
local=${LOCAL:-True}
for res in ${RESOLUTIONS:-432x768 720x1280}; do
  h=${res%x*}; w=${res#*x}
  for mesh in ${MESHES:-$default_meshes}; do
    IFS=, read -r data fsdp context batch <<< "$mesh"
    tag="${n}gpu_${res}_d${data}f${fsdp}c${context}_b${batch}_${policy}$([ "$offload" = True ] && echo _offload)$([ "$local" = False ] && echo _heads)"
    timeout "${TIMEOUT:-600}" python3 -m agibot_jax.bench --config configs/edge.py --mode train --steps "${STEPS:-3}" \
      --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn \
      --config.model.net.remat_policy="$policy" --config.model.net.offload_block_inputs="$offload" \
      --config.model.net.context_local_attention="$local" \
      --config.dataloader_train.dataset.resolution_hw="($h,$w)" --config.mesh.data="$data" --config.mesh.fsdp="$fsdp" \
      --config.mesh.context="$context" --config.dataloader_train.batch_size="$batch" 2>&1 | tail -n 1 \
      | tee "$out/scaling_$tag.json"
  done
done
