"""Parity check of our Flax port against a golden file produced by the PyTorch reference.

  python -m convert.parity --golden ../shared/golden/dit_tiny.safetensors

Reads FILE.safetensors (params/, inputs/, outputs/) and the FILE.json beside it (constructor
kwargs and non-tensor arguments), builds the matching model, converts the params with the
same key table as the real converter, runs the forward in float32 for every stored output,
prints one line per output and, last, `max_abs_err=<value>`. Exit status 0 when every output is
within its tolerance, 1 when one is not, 2 on bad input (one line naming the file).
"""

from __future__ import annotations

import json
import os

from absl import flags

from agibot_jax import cli
from convert.golden import OutputCheck


def golden_kind(meta: dict, path: str = "") -> str:
  cls = meta.get("class_path", "")
  if cls.endswith("MultiViewCrossControlDiT"):
    return "dit"
  if cls.endswith("WanVAE_"):
    return "vae"
  raise ValueError(f"{path}: unsupported golden class {cls!r}")


def run(golden: str) -> list[OutputCheck]:
  import jax

  jax.config.update("jax_default_matmul_precision", "highest")
  meta_path = os.path.splitext(golden)[0] + ".json"
  if not os.path.exists(golden):
    raise FileNotFoundError(f"golden file not found: {golden}")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"golden metadata not found beside it: {meta_path}")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except ValueError as e:
    raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
  if golden_kind(meta, meta_path) == "dit":
    from convert import dit

    return dit.golden_parity(golden, meta)
  from convert import vae

  return vae.golden_parity(golden, meta)


def main() -> int:
  checks = run(flags.FLAGS.golden)
  for c in checks:
    print(f"{c.name}: max_abs_err={c.max_abs_err:.3e} tol={c.tolerance:.0e} {'OK' if c.ok else 'FAIL'}")
  print(f"max_abs_err={max(c.max_abs_err for c in checks):.3e}")
  cli.print_result({"max_abs_err": max(c.max_abs_err for c in checks), "ok": all(c.ok for c in checks)})
  return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
  flags.DEFINE_string("golden", None, "golden .safetensors file (its .json beside it)")
  flags.mark_flag_as_required("golden")
  cli.run(main, bad_input=cli.BAD_CHECKPOINT)
