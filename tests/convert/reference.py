"""Test helpers: the conversion the converters must reproduce, written out plainly from a key table.

Each tensor is laid out by its Entry's transform (spelt out here, not taken from convert.mapping),
stacked layers with np.stack, then floating leaves cast with astype: what the converters wrote
before they streamed.
"""

import os
import subprocess
import sys

import ml_dtypes
import numpy as np

from agibot_jax import params_io

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_LAYOUT = {
    "identity": lambda a: a,
    "linear": lambda a: a.T,
    "conv3d": lambda a: a.transpose(2, 3, 4, 1, 0),
    "conv2d": lambda a: a.transpose(2, 3, 1, 0),
    "flatten": lambda a: a.reshape(-1),
}


def reference_params(state, table, dtype=None) -> dict:
  """{flax path: numpy leaf} from an in-memory state dict (numpy arrays)."""
  slots = {}
  for e in table:
    slots.setdefault(e.flax_path, {})[e.index] = _LAYOUT[e.transform](np.asarray(state[e.torch_key]))
  out = {}
  for path, by_index in slots.items():
    leaf = by_index[None] if None in by_index else np.stack([by_index[i] for i in range(len(by_index))])
    floating = np.issubdtype(leaf.dtype, np.floating) or leaf.dtype == ml_dtypes.bfloat16
    if dtype is not None and floating:
      leaf = leaf.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype))
    out[path] = leaf
  return out


def assert_bit_identical(converted_dir, want: dict) -> None:
  """The restored tree of `converted_dir` has exactly `want`'s leaves, bytes, shapes and dtypes."""
  got = params_io.flatten_tree(params_io.restore_params(str(converted_dir)))
  assert set(got) == set(want)
  for path, leaf in want.items():
    g = np.asarray(got[path])
    assert g.dtype == leaf.dtype and g.shape == leaf.shape, path
    assert g.tobytes() == np.ascontiguousarray(leaf).tobytes(), path


def run_cli(module: str, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles) -> None:
  """Exit status 2, no traceback, and stderr ending in one `error:` line holding every needle."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr and lines and lines[-1].startswith("error:"), proc.stderr
  assert sum(l.startswith("error:") for l in lines) == 1, proc.stderr
  for needle in needles:
    assert str(needle) in lines[-1], proc.stderr
