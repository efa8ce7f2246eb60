"""Wan2.1 VAE converter (convert/vae.py): key coverage, round trip, rejection, golden parity CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from agibot_jax.models import vae as vae_lib
from convert import vae as convert_vae
from convert.mapping import check_table, expected_torch_shape, flatten_tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_DIM = 8


def _torch_shapes(cfg):
  """Every table key with the PyTorch shape the abstract model expects (nothing allocated)."""
  abstract = vae_lib.abstract_params(vae_lib.WanVAE(cfg))
  flat = flatten_tree(abstract)
  table = convert_vae.key_table(cfg)
  return table, abstract, {e.torch_key: expected_torch_shape(e, flat) for e in table}


def test_real_vae_key_table_covers_every_parameter():
  table, abstract, shapes = _torch_shapes(vae_lib.VAEConfig())
  assert check_table(table, abstract) == []
  assert len(shapes) == len(table) == 194
  assert sum(int(np.prod(s)) for s in shapes.values()) == 126_892_531
  # Spot checks of spec A.9.
  assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
  assert shapes["encoder.downsamples.8.time_conv.weight"] == (384, 384, 3, 1, 1)
  assert shapes["encoder.middle.1.norm.gamma"] == (384, 1, 1)
  assert shapes["encoder.middle.1.to_qkv.weight"] == (1152, 384, 1, 1)
  assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3)
  assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
  assert shapes["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
  assert shapes["decoder.upsamples.11.resample.1.weight"] == (96, 192, 3, 3)
  assert shapes["decoder.head.0.gamma"] == (96, 1, 1, 1)
  assert shapes["conv1.weight"] == (32, 32, 1, 1, 1) and shapes["conv2.weight"] == (16, 16, 1, 1, 1)


def test_key_names_and_shapes_match_the_reference_state_dict(golden_dir):
  params = {k[len("params/"):]: v.shape for k, v in load_file(str(golden_dir / "vae_tiny.safetensors")).items()
            if k.startswith("params/")}
  _, _, shapes = _torch_shapes(vae_lib.VAEConfig(dim=16))
  assert shapes == params


@pytest.fixture(scope="module")
def small_state(tmp_path_factory):
  """A random state dict of a dim-8 VAE written with torch.save."""
  _, _, shapes = _torch_shapes(vae_lib.VAEConfig(dim=SMALL_DIM))
  rng = np.random.default_rng(0)
  state = {k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
  path = tmp_path_factory.mktemp("src") / "vae.pth"
  torch.save(state, path)
  return path, state


def test_round_trip_is_bit_exact(small_state, tmp_path):
  src, state = small_state
  dst, back = tmp_path / "flax", tmp_path / "back.pth"
  assert convert_vae.main(["--src", str(src), "--dst", str(dst), "--dim", str(SMALL_DIM)]) == 0
  with open(dst / "agibot_meta.json") as f:
    meta = json.load(f)
  assert meta["model"] == "wan2.1_vae" and meta["num_tensors"] == 194 and meta["config"]["dim"] == SMALL_DIM
  assert convert_vae.main(["--export", str(dst), "--dst", str(back)]) == 0
  restored = torch.load(back, weights_only=True)
  assert set(restored) == set(state)
  for k, v in state.items():
    assert restored[k].shape == v.shape and restored[k].dtype == v.dtype, k
    assert torch.equal(restored[k], v), k


def _rejects(state, tmp_path, capsys, *needles):
  src, dst = tmp_path / "bad.pth", tmp_path / "flax"
  torch.save(state, src)
  assert convert_vae.main(["--src", str(src), "--dst", str(dst), "--dim", str(SMALL_DIM)]) == 1
  err = capsys.readouterr().err
  for needle in needles:
    assert needle in err
  assert not dst.exists()


def test_rejects_missing_key(small_state, tmp_path, capsys):
  state = dict(small_state[1])
  del state["decoder.upsamples.7.time_conv.bias"]
  _rejects(state, tmp_path, capsys, "missing keys (1)", "decoder.upsamples.7.time_conv.bias")


def test_rejects_unexpected_key(small_state, tmp_path, capsys):
  state = dict(small_state[1], **{"encoder.middle.1.extra": torch.zeros(3)})
  _rejects(state, tmp_path, capsys, "unexpected keys (1)", "encoder.middle.1.extra")


def test_rejects_wrong_shape(small_state, tmp_path, capsys):
  state = dict(small_state[1])
  state["encoder.head.0.gamma"] = torch.zeros(5, 1, 1, 1)
  _rejects(state, tmp_path, capsys, "wrong shape for encoder.head.0.gamma", "(5, 1, 1, 1)")


def test_bfloat16_conversion(small_state, tmp_path):
  import jax.numpy as jnp

  from agibot_jax.params_io import restore_params

  dst = tmp_path / "flax_bf16"
  assert convert_vae.main(["--src", str(small_state[0]), "--dst", str(dst), "--dim", str(SMALL_DIM),
                           "--dtype", "bfloat16"]) == 0
  params = restore_params(str(dst))
  kernel = params["encoder"]["conv1"]["conv"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  ref = small_state[1]["encoder.conv1.weight"].numpy().transpose(2, 3, 4, 1, 0)
  np.testing.assert_array_equal(np.asarray(kernel, np.float32), ref.astype(jnp.bfloat16).astype(np.float32))


def test_parity_cli_on_golden(golden_dir):
  proc = subprocess.run([sys.executable, "-m", "convert.parity", "--golden", str(golden_dir / "vae_tiny.safetensors")],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert lines[-1].startswith("max_abs_err=")
  assert float(lines[-1].split("=")[1]) < 1e-4
  names = {line.split(":")[0] for line in lines[:-1]}
  assert names == {f"{n}{s}" for n in ("latent_mu", "latent", "decoded") for s in ("", "_9f")}
