"""convert/text_encoder.py: golden text_tiny parity through the CLI, streaming = plain conversion bit for bit,
key layouts, sharding, errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from agibot_jax.params_io import read_meta
from agibot_jax.text.embed import full_concat, load_text_encoder
from agibot_jax.models.qwen import QwenTextModel
from convert.mapping import ConversionError
from convert.text_encoder import convert, convert_to, key_table
from tests.conftest import xla_flags_with_devices
from tests.convert.reference import REPO, assert_bit_identical, reference_params
TOL = 1e-4  # golden README §7; observed ~3.5e-6


@pytest.fixture(scope="module")
def golden(golden_dir):
  return golden_dir / "text_tiny"


def test_golden_text_tiny_parity_through_cli(golden, tmp_path):
  jax.config.update("jax_default_matmul_precision", "highest")
  dst = tmp_path / "text_tiny"
  cmd = [sys.executable, "-m", "convert.text_encoder", "--src", str(golden / "checkpoint"), "--dst", str(dst),
         "--dtype", "float32"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  meta = read_meta(str(dst))
  assert meta["model"] == "qwen2.5_vl_text" and meta["config"]["num_hidden_layers"] == 4

  config, params = load_text_encoder(str(dst), attention="xla")
  ref = load_file(str(golden / "text_tiny.safetensors"))
  hidden = np.asarray(QwenTextModel(config).apply({"params": params}, ref["inputs/input_ids"].astype(np.int32)))
  for i in range(5):
    err = np.abs(hidden[i] - ref[f"outputs/hidden_states_{i}"]).max()
    assert err < TOL, f"hidden_states_{i}: max abs err {err:.2e}"
  err = np.abs(np.asarray(full_concat(hidden)) - ref["outputs/full_concat"]).max()
  assert err < TOL, f"full_concat: max abs err {err:.2e}"

  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conversion_is_bit_identical_to_the_plain_one(golden, tmp_path, dtype):
  convert_to(str(golden / "checkpoint"), str(tmp_path / "out"), dtype=dtype)
  state = load_file(str(golden / "checkpoint" / "model.safetensors"))
  with open(golden / "checkpoint" / "config.json") as f:
    num_layers = json.load(f)["num_hidden_layers"]
  assert_bit_identical(tmp_path / "out", reference_params(state, key_table(num_layers), dtype))


def test_sharded_language_model_layout_converts_identically(golden, tmp_path):
  """transformers 5.x in-memory names (model.language_model.*) split over two shards with an index."""
  state = load_file(str(golden / "checkpoint" / "model.safetensors"))
  renamed = {("model.language_model." + k[len("model."):] if k.startswith("model.") else
              "model." + k if k.startswith("visual.") else k): v for k, v in state.items()}
  keys = sorted(renamed)
  shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
  for name, names in shards.items():
    save_file({k: renamed[k] for k in names}, str(tmp_path / name))
  with open(tmp_path / "model.safetensors.index.json", "w") as f:
    json.dump({"weight_map": {k: name for name, names in shards.items() for k in names}}, f)
  with open(golden / "checkpoint" / "config.json") as f:
    hf = json.load(f)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)

  _, want = convert(str(golden / "checkpoint"), "float32")
  _, got = convert(str(tmp_path), "float32")
  jax.tree.map(np.testing.assert_array_equal, got, want)
  _, bf16 = convert(str(tmp_path), "bfloat16")
  assert {a.dtype.name for a in jax.tree.leaves(bf16)} == {"bfloat16"}


def test_mismatched_checkpoint_lists_every_problem(golden, tmp_path):
  state = load_file(str(golden / "checkpoint" / "model.safetensors"))
  del state["model.layers.2.mlp.up_proj.weight"]
  state["model.layers.0.self_attn.q_proj.bias"] = np.zeros(31, np.float32)
  state["model.extra.weight"] = np.zeros(3, np.float32)
  save_file(state, str(tmp_path / "model.safetensors"))
  with open(golden / "checkpoint" / "config.json") as f, open(tmp_path / "config.json", "w") as g:
    g.write(f.read())
  with pytest.raises(ConversionError) as e:
    convert(str(tmp_path), "float32")
  msg = str(e.value)
  assert "model.layers.2.mlp.up_proj.weight" in msg and "model.extra.weight" in msg
  assert "model.layers.0.self_attn.q_proj.bias" in msg and "visual" not in msg


def test_key_table_covers_the_7b():
  table = key_table(28)
  assert len(table) == 2 + 28 * 12
  assert len({e.torch_key for e in table}) == len(table)


_SHARDED_WORKER = """
import sys, numpy as np, jax
from safetensors.numpy import load_file
from agibot_jax import sharding
from agibot_jax.text.embed import full_concat, load_text_encoder
from agibot_jax.models.qwen import QwenTextModel
jax.config.update("jax_default_matmul_precision", "highest")
jax.set_mesh(sharding.make_mesh(1, 4, 1))
config, params = load_text_encoder(sys.argv[1], attention="xla")
split = [l for l in jax.tree.leaves(params) if not l.sharding.is_fully_replicated]
ref = load_file(sys.argv[2])
hidden = QwenTextModel(config).apply({"params": params}, ref["inputs/input_ids"].astype(np.int32))
print(len(split), len(jax.tree.leaves(params)), float(np.abs(np.asarray(full_concat(hidden)) - ref["outputs/full_concat"]).max()))
"""


@pytest.mark.slow  # ~10 s (a 4-device child process)
def test_text_encoder_weights_spread_over_the_training_mesh(golden, tmp_path):
  # On a 4-device mesh the converted encoder is restored split over the devices, with unchanged output.
  dst = tmp_path / "text_tiny"
  cmd = [sys.executable, "-m", "convert.text_encoder", "--src", str(golden / "checkpoint"), "--dst", str(dst),
         "--dtype", "float32"]
  assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode == 0
  env = dict(os.environ, XLA_FLAGS=xla_flags_with_devices(4))
  done = subprocess.run([sys.executable, "-c", _SHARDED_WORKER, str(dst), str(golden / "text_tiny.safetensors")],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  split, total, err = done.stdout.split()
  assert int(split) > 0 and int(split) <= int(total)
  assert float(err) < TOL
