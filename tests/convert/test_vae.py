"""Wan2.1 VAE converter (convert/vae.py): key coverage, streaming = plain conversion bit for bit, round trip,
rejection, golden parity CLI."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from agibot_jax.models import vae as vae_lib
from convert import vae as convert_vae
from convert.mapping import ConversionError, check_table, expected_torch_shape, flatten_tree
from tests.convert.reference import assert_bit_identical, reference_params, run_cli

SMALL_DIM = 8
SMALL = vae_lib.VAEConfig(dim=SMALL_DIM)


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conversion_is_bit_identical_to_the_plain_one(small_state, tmp_path, dtype):
  src, state = small_state
  convert_vae.convert(str(src), str(tmp_path / "flax"), SMALL, dtype=dtype)
  numpy_state = {k: v.numpy() for k, v in state.items()}
  assert_bit_identical(tmp_path / "flax", reference_params(numpy_state, convert_vae.key_table(SMALL), dtype))


def test_round_trip_is_bit_exact(small_state, tmp_path):
  src, state = small_state
  dst, back = tmp_path / "flax", tmp_path / "back.pth"
  convert_vae.convert(str(src), str(dst), SMALL)
  with open(dst / "agibot_meta.json") as f:
    meta = json.load(f)
  assert meta["model"] == "wan2.1_vae" and meta["num_tensors"] == 194 and meta["config"]["dim"] == SMALL_DIM
  convert_vae.export(str(dst), str(back))
  restored = torch.load(back, weights_only=True)
  assert set(restored) == set(state)
  for k, v in state.items():
    assert restored[k].shape == v.shape and restored[k].dtype == v.dtype, k
    assert torch.equal(restored[k], v), k


def _rejects(state, tmp_path, *needles):
  src, dst = tmp_path / "bad.pth", tmp_path / "flax"
  torch.save(state, src)
  with pytest.raises(ConversionError) as e:
    convert_vae.convert(str(src), str(dst), SMALL)
  for needle in needles:
    assert needle in str(e.value)
  assert not dst.exists()


def test_rejects_missing_key(small_state, tmp_path):
  state = dict(small_state[1])
  del state["decoder.upsamples.7.time_conv.bias"]
  _rejects(state, tmp_path, "missing keys (1)", "decoder.upsamples.7.time_conv.bias")


def test_rejects_unexpected_key(small_state, tmp_path):
  state = dict(small_state[1], **{"encoder.middle.1.extra": torch.zeros(3)})
  _rejects(state, tmp_path, "unexpected keys (1)", "encoder.middle.1.extra")


def test_rejects_wrong_shape(small_state, tmp_path):
  state = dict(small_state[1])
  state["encoder.head.0.gamma"] = torch.zeros(5, 1, 1, 1)
  _rejects(state, tmp_path, "wrong shape for encoder.head.0.gamma", "(5, 1, 1, 1)")


@pytest.mark.slow  # ~18 s; the same golden comparisons run in-process in tests/models/test_vae.py (default run)
def test_parity_cli_on_golden(golden_dir):
  proc = run_cli("convert.parity", "--golden", golden_dir / "vae_tiny.safetensors")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  *lines, summary, result = proc.stdout.strip().splitlines()
  assert summary.startswith("max_abs_err=") and float(summary.split("=")[1]) < 1e-4
  assert json.loads(result)["ok"] is True
  names = {line.split(":")[0] for line in lines}
  assert names == {f"{n}{s}" for n in ("latent_mu", "latent", "decoded") for s in ("", "_9f")}
