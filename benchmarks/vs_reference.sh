#!/usr/bin/env bash
# The PyTorch reference's own network (../shared/bench_ref) and agibot_jax.bench on the same GPU in ONE device call,
# then a table of both and the ratios (issue 22). Prepare once on the development machine (bench_ref/README.md):
#   printf '/.bench_ref/\n' >> .git/info/exclude && rm -rf .bench_ref && cp -r ../shared/bench_ref .bench_ref
#   bash .bench_ref/extract.sh
# then run on the GPU with `.bench_ref` and `.whl` carried:
#   bash benchmarks/vs_reference.sh [OUT_DIR]      (RES="432 720" by default; RES=432 for a ~5 minute call)
# Reference phases: B<res> (checkpointed, self-attention outputs kept: its best that fits) and fwd432; ours: the
# default config's train step at each resolution and the forward at 432x768. Every line of both is kept in OUT_DIR.
set -uo pipefail
out=${1:-${OUT:-/tmp/vs_reference}}
mkdir -p "$out"
res=${RES:-432 720}
phases=$(printf 'B%s,' $res)fwd432
(cd .bench_ref && PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 bench_torch.py --phases "$phases" \
   --warmup 1 --iters 3 --out "$out" --budget-s 420) > "$out/reference.log" 2>&1
for r in $res; do
  hw=$([ "$r" = 720 ] && echo "(720,1280)" || echo "(432,768)")
  python3 -m agibot_jax.bench --config configs/edge.py --mode train --steps 3 \
    --config.dataloader_train.dataset.resolution_hw="$hw" 2>&1 | tail -n 1 > "$out/ours_train$r.json"
done
python3 -m agibot_jax.bench --config configs/edge.py --mode forward --steps 5 2>&1 | tail -n 1 > "$out/ours_fwd432.json"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
ref = {}
for line in open(os.path.join(out, "results.jsonl")):
  rec = json.loads(line)
  ref[rec.get("phase")] = rec
def ours(name):
  try:
    return json.load(open(os.path.join(out, name)))
  except (OSError, ValueError):
    return None
rows = [(f"{r} train", ref.get(f"B{r}"), ours(f"ours_train{r}.json")) for r in os.environ.get("RES", "432 720").split()]
rows.append(("432 forward", ref.get("fwd432"), ours("ours_fwd432.json")))
print("| case | reference s (GiB) | agibot-jax s (GiB) | ratio |")
print("|---|---|---|---|")
for name, r, o in rows:
  rs = r and (r.get("step_median_s") or r.get("median_s"))
  os_ = o and o.get("step_s_median")
  ratio = f"{rs / os_:.3f}x" if rs and os_ else "n/a"
  print(f"| {name} | {rs} ({r and r.get('peak_alloc_gib')}) | {os_} ({o and o.get('peak_memory_gib')}) | {ratio} |")
PY
