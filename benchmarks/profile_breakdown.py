"""Device-time breakdown of a `jax.profiler` trace (the perfetto JSON that `bench --profile DIR` writes).

  python3 benchmarks/profile_breakdown.py DIR [--steps N]

Sums the GPU kernel time of the traced steps by kind: attention forward / backward (cuDNN flash
kernels), matmuls (cuBLAS/cuBLASLt/CUTLASS GEMMs), host<->device copies (offloaded block inputs) and
everything else (XLA fusions: norms, modulation, RoPE, casts = the glue). Prints one JSON line with
seconds per step and the kernel counts, which show how often attention runs forward per step
(32 blocks x 3 attentions = 96 without recomputation).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

CATEGORIES = (
    ("attention_fwd", re.compile(r"(sdpa|flash|fmha|attention).*(fprop|fwd|forward)|(fprop|fwd).*(sdpa|flash|fmha)", re.I)),
    ("attention_bwd", re.compile(r"(sdpa|flash|fmha|attention).*(bprop|bwd|backward|dgrad)|(bprop|bwd).*(sdpa|flash|fmha)", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|matmul|cublas", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy", re.I)),
)


def categorise(name: str) -> str:
  for category, pattern in CATEGORIES:
    if pattern.search(name):
      return category
  return "other"


def load_trace(directory: str) -> dict:
  paths = sorted(glob.glob(os.path.join(directory, "**", "*trace.json.gz"), recursive=True))
  if not paths:
    raise SystemExit(f"no *.trace.json.gz under {directory} (run bench with --profile DIR)")
  with gzip.open(paths[-1], "rt") as f:
    return json.load(f)


def breakdown(trace: dict, steps: int, top: int = 15) -> dict:
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu_pids = {pid for pid, name in names.items() if "GPU" in name or "/device:" in name and "CPU" not in name}
  seconds, counts, by_name = collections.Counter(), collections.Counter(), collections.Counter()
  glue, glue_counts, glue_ops = collections.Counter(), collections.Counter(), {}
  for e in events:
    if e.get("ph") != "X" or e.get("pid") not in gpu_pids:
      continue
    category, dur = categorise(e["name"]), e.get("dur", 0) * 1e-6
    seconds[category] += dur
    counts[category] += 1
    by_name[e["name"][:80]] += dur
    if category == "other":  # the glue, by kernel, with the HLO op it runs (to find it in an HLO dump)
      glue[e["name"]] += dur
      glue_counts[e["name"]] += 1
      glue_ops.setdefault(e["name"], (e.get("args") or {}).get("hlo_op", ""))
  total = sum(seconds.values())
  return dict(
      steps=steps, device_processes=sorted(names[p] for p in gpu_pids),
      seconds_per_step={k: round(v / steps, 4) for k, v in sorted(seconds.items())},
      share={k: round(v / total, 4) for k, v in sorted(seconds.items())} if total else {},
      kernels_per_step={k: v / steps for k, v in sorted(counts.items())},
      total_s_per_step=round(total / steps, 4),
      top_kernels_s_per_step={k: round(v / steps, 4) for k, v in by_name.most_common(top)},
      top_glue=[dict(kernel=k, hlo_op=glue_ops[k], s_per_step=round(v / steps, 5), calls_per_step=glue_counts[k] / steps)
                for k, v in glue.most_common(top)],
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("directory")
  parser.add_argument("--steps", type=int, default=2, help="steps inside the trace (bench traces 2)")
  parser.add_argument("--top", type=int, default=15, help="how many kernels to list (all kinds, and the glue alone)")
  args = parser.parse_args()
  print(json.dumps(breakdown(load_trace(args.directory), args.steps, args.top)))


if __name__ == "__main__":
  main()
