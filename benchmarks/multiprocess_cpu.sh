#!/usr/bin/env bash
# Issue 20: the training job in 2 processes (jax.distributed, a localhost coordinator) against 1 process, by hand.
#   bash benchmarks/multiprocess_cpu.sh [--config.<key>=<value> ...]
# Writes a 4-sample synthetic dataset, then trains the reduced tiny config 4 steps twice on the same mesh (MESH,
# data,fsdp,context; default 2,1,2 with batch 2): in 2 processes holding DEVICES/2 devices each, and in 1 process
# holding all DEVICES. Prints one JSON line per step with both losses and grad norms, then whether they agree to
# float32 rounding (exit 1 if not).
#   PLATFORM=cpu (default): DEVICES (default 4) CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count),
#     JAX's CPU collectives (gloo).
#   PLATFORM=gpu: DEVICES GPUs (default 2, MESH default 1,1,2: both processes hold the same batch row), process i
#     seeing GPUs i*DEVICES/2.. (CUDA_VISIBLE_DEVICES), NCCL. On the 2-GPU machine: PLATFORM=gpu bash <this script>.
# WORK (default /tmp/multiprocess_<platform>) holds the dataset, both workdirs and every process's log. Run from the
# repo root; PYTHON picks the interpreter (default python3). tests/test_multiprocess.py checks the same and more.
set -euo pipefail
python=${PYTHON:-python3}
platform=${PLATFORM:-cpu}
if [ "$platform" = gpu ]; then devices=${DEVICES:-2}; mesh=${MESH:-1,1,2}; else devices=${DEVICES:-4}; mesh=${MESH:-2,1,2}; fi
IFS=, read -r data fsdp context <<< "$mesh"
work=${WORK:-/tmp/multiprocess_$platform}
rm -rf "$work"; mkdir -p "$work"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "
from agibot_jax.data import synthetic
synthetic.write_example('$work/data', num_samples=4, frames=12, height=48, width=80, seed=0)"
# The reduced tiny config of tests/training/test_train.py (SMALL); batch: one sample per data x fsdp group.
flags=(--config configs/edge.py:tiny --config.dataloader_train.dataset.dataset_dir="$work/data"
  --config.model.net.num_blocks=2 --config.model.net.vace_block_every_n=2 --config.model.net.text_tokens_per_view=32
  --config.model.text_encoder.num_tokens=32 --config.dataloader_train.dataset.resolution_hw=32,48
  --config.trainer.callbacks.every_n_sample.every_n=0 --config.trainer.logging_iter=1 --config.trainer.max_iter=4
  --config.dataloader_train.batch_size=$((data * fsdp)) --config.mesh.data="$data" --config.mesh.fsdp="$fsdp"
  --config.mesh.context="$context" "$@")

train() {  # train PROCESSES: one run of the job in that many processes, DEVICES / PROCESSES devices each
  local n=$1 per=$((devices / $1)) port pids=() i
  port=$("$python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  for ((i = 0; i < n; i++)); do
    local placement=(JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$per)
    if [ "$platform" = gpu ]; then
      placement=(JAX_PLATFORMS=cuda CUDA_VISIBLE_DEVICES=$(seq -s, $((i * per)) $((i * per + per - 1))))
    fi
    # One process: no coordinator address, so no jax.distributed.
    env "${placement[@]}" JAX_COORDINATOR_ADDRESS=$([ "$n" -gt 1 ] && echo "127.0.0.1:$port") JAX_NUM_PROCESSES=$n \
      JAX_PROCESS_ID=$i "$python" -m agibot_jax.train "${flags[@]}" --workdir "$work/run$n" > "$work/run$n.p$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || {
      echo "process $i of $n failed: $work/run$n.p$i.log" >&2; tail -n 20 "$work/run$n.p$i.log" >&2; exit 1
    }
  done
}
train 2
train 1
"$python" - "$work" <<'PY'
import json, sys
from agibot_jax.training import loop

two, one = (loop.read_metrics(f"{sys.argv[1]}/run{n}") for n in (2, 1))
ok = sorted(two) == sorted(one)
for step in sorted(two):
  pair = {k: (two[step][k], one[step][k]) for k in ("loss", "grad_norm")}
  ok &= all(abs(a - b) <= 1e-5 * abs(b) for a, b in pair.values())
  print(json.dumps({"step": step, **{f"{k}_{n}proc": v[i] for k, v in pair.items() for i, n in enumerate((2, 1))}}))
print(json.dumps({"equal_to_float32_rounding": ok}))
sys.exit(0 if ok else 1)
PY
