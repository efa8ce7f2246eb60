"""Parity check of our Flax port against a golden file produced by the PyTorch reference.

  python -m convert.parity --golden ../shared/golden/dit_tiny.safetensors

Reads FILE.safetensors (params/, inputs/, outputs/) and the FILE.json beside it (constructor
kwargs and non-tensor arguments), builds the matching model, converts the params with the
same key table as the real converter, runs the forward in float32 for every stored output,
prints one line per output and, last, `max_abs_err=<value>`. Exit status 0 only when every
output is within its tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


@dataclasses.dataclass
class OutputCheck:
  name: str
  max_abs_err: float
  tolerance: float

  @property
  def ok(self) -> bool:
    return self.max_abs_err <= self.tolerance


def golden_kind(meta: dict) -> str:
  cls = meta.get("class_path", "")
  if cls.endswith("MultiViewCrossControlDiT"):
    return "dit"
  if cls.endswith("WanVAE_"):
    return "vae"
  raise ValueError(f"unsupported golden class {cls!r}")


def run(golden: str) -> list[OutputCheck]:
  import jax

  jax.config.update("jax_default_matmul_precision", "highest")
  meta_path = os.path.splitext(golden)[0] + ".json"
  if not os.path.exists(golden):
    raise FileNotFoundError(f"golden file not found: {golden}")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"golden metadata not found beside it: {meta_path}")
  with open(meta_path) as f:
    meta = json.load(f)
  kind = golden_kind(meta)
  if kind == "dit":
    from convert import dit

    return dit.golden_parity(golden, meta)
  from convert import vae

  return vae.golden_parity(golden, meta)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--golden", required=True, help="golden .safetensors file (its .json beside it)")
  args = parser.parse_args(argv)
  try:
    checks = run(args.golden)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for c in checks:
    print(f"{c.name}: max_abs_err={c.max_abs_err:.3e} tol={c.tolerance:.0e} {'OK' if c.ok else 'FAIL'}")
  print(f"max_abs_err={max(c.max_abs_err for c in checks):.3e}")
  return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
  sys.exit(main())
