"""agibot_jax/params_io.py: trees written in parts restore whole; a failed or killed write leaves nothing."""

import os
import signal
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agibot_jax import params_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree():
  rng = np.random.default_rng(0)
  return {"blocks": {"kernel": rng.standard_normal((3, 16, 32)).astype(ml_dtypes.bfloat16),
                     "scale": rng.standard_normal((3, 16)).astype(np.float32)},
          "embed": {"embedding": rng.standard_normal((64, 16)).astype(np.float32)},
          "step": np.arange(4, dtype=np.int64)}


def _assert_same(got, want):
  flat_got, flat_want = params_io.flatten_tree(got), params_io.flatten_tree(want)
  assert set(flat_got) == set(flat_want)
  for path, leaf in flat_want.items():
    g = np.asarray(flat_got[path])
    assert g.dtype == leaf.dtype and g.tobytes() == leaf.tobytes(), path


def test_a_tree_written_in_parts_restores_whole(tmp_path):
  tree = _tree()
  params_io.write_params(str(tmp_path / "p"), params_io.flatten_tree(tree).items(), {"model": "x"}, part_bytes=2048)
  assert len([d for d in os.listdir(tmp_path / "p" / "params") if d.startswith("part-")]) == 3
  assert params_io.read_meta(str(tmp_path / "p")) == {"model": "x"}
  _assert_same(params_io.restore_params(str(tmp_path / "p")), tree)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, np.float32 if a.dtype != np.int64 else a.dtype), tree)
  restored = params_io.restore_params(str(tmp_path / "p"), abstract)  # dtypes cast to the abstract's
  assert restored["blocks"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(restored["blocks"]["kernel"], tree["blocks"]["kernel"].astype(np.float32))


def test_restoring_into_a_different_tree_names_the_difference(tmp_path):
  params_io.save_params(str(tmp_path / "p"), _tree())
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _tree())
  abstract["extra"] = jax.ShapeDtypeStruct((2,), np.float32)
  del abstract["step"]
  with pytest.raises(ValueError, match=r"missing \['extra'\], unexpected \['step'\]"):
    params_io.restore_params(str(tmp_path / "p"), abstract)


def test_a_checkpoint_written_as_one_orbax_tree_still_restores(tmp_path):
  # What save_params wrote before parts: one StandardCheckpointer save under params/.
  tree = _tree()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(tmp_path / "p" / "params"), tree)
  (tmp_path / "p" / params_io.META_FILE).write_text("{}")
  _assert_same(params_io.restore_params(str(tmp_path / "p")), tree)


def test_a_write_failing_midway_leaves_the_old_result_and_no_temporary(tmp_path):
  params_io.save_params(str(tmp_path / "p"), {"old": np.ones(3, np.float32)})

  def leaves():
    yield ("a",), np.zeros(1000, np.float32)
    yield ("b",), np.zeros(1000, np.float32)
    raise OSError("source vanished")

  with pytest.raises(OSError, match="vanished"):
    params_io.write_params(str(tmp_path / "p"), leaves(), force=True, part_bytes=1000)
  assert os.listdir(tmp_path) == ["p"]
  _assert_same(params_io.restore_params(str(tmp_path / "p")), {"old": np.ones(3, np.float32)})
  with pytest.raises(FileExistsError, match="--force"):
    params_io.save_params(str(tmp_path / "p"), {"new": np.ones(3, np.float32)})


_KILLED_WRITER = """
import sys, time, numpy as np
from agibot_jax import params_io
def leaves():
  for i in range(100):
    yield (f"leaf{i}",), np.zeros(1000, np.float32)
    if i == 3:
      time.sleep(600)  # killed here, with parts on disk
params_io.write_params(sys.argv[1], leaves(), part_bytes=4000)
"""


def test_a_killed_write_leaves_nothing_at_the_destination_and_the_next_one_cleans_up(tmp_path):
  dst = tmp_path / "p"
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(dst)], cwd=REPO)
  deadline = time.time() + 120
  while not list(tmp_path.glob("p.tmp-*/params/part-000")) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  assert list(tmp_path.glob("p.tmp-*/params/part-000")), "the writer never wrote its first part"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not dst.exists()
  params_io.save_params(str(dst), {"w": np.ones(2, np.float32)})
  assert os.listdir(tmp_path) == ["p"]
