"""LoRA adapters (agibot_jax/models/lora.py): the config, which kernels get adapters, their init, the merge and the
adapters' axes. NumPy-sized checks on the tiny DiT's abstract parameters (no compilation of the network)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from agibot_jax.models import dit, dit_config, lora
from configs import edge
from tests.training.lora_setup import abstract_params


@pytest.fixture(scope="module")
def tiny_abstract():
  return abstract_params(dit_config.DiTConfig.from_config(edge.get_config("tiny").model.net))


def model_config(**lora_values) -> ml_collections.ConfigDict:
  model = edge.get_config("tiny").model
  for key, value in lora_values.items():
    model.lora[key] = value
  return model


def test_defaults_are_off_and_train_the_whole_branch():
  cfg = lora.LoraConfig.from_config(edge.get_config("").model)
  assert cfg.rank == 0 and cfg.scale == 0.0
  # A checkpoint's config from before LoRA (no `lora`) reads as rank 0.
  assert lora.LoraConfig.from_config({"train_base": False}).rank == 0
  assert lora.LoraConfig.from_config(model_config(rank=8, alpha=4.0)).scale == 0.5


@pytest.mark.parametrize("key, value, why", [
    ("rank", -1, "must be an integer >= 0"),
    ("alpha", 0.0, "must be a finite number > 0"),
    ("alpha", float("inf"), "must be a finite number > 0"),
    ("targets", (), "non-empty tuple"),
    ("train_in_full", ("x_embedder",), "may name only"),
])
def test_bad_values_are_refused_naming_the_key(key, value, why):
  with pytest.raises(ValueError, match=rf"^model\.lora\.{key}=.*{why}"):
    lora.LoraConfig.from_config(model_config(**{"rank": 4, key: value}))


def test_lora_with_train_base_is_refused():
  model = model_config(rank=4)
  model.train_base = True
  with pytest.raises(ValueError, match=r"^model\.lora\.rank=4: needs model\.train_base=False"):
    lora.LoraConfig.from_config(model)


def test_targets_select_control_block_kernels(tiny_abstract):
  every = lora.adapted_kernels(tiny_abstract, lora.LoraConfig(rank=2))
  control_kernels = [p for p in traverse_util.flatten_dict(tiny_abstract) if p[0] == "control_blocks"
                     and p[-1] == "kernel"]
  assert sorted(every) == sorted(control_kernels) and len(every) == 21  # every kernel of a block, nothing else
  some = lora.adapted_kernels(tiny_abstract, lora.LoraConfig(rank=2, targets=("self_attn/*", "mlp_layer1")))
  assert some == [("control_blocks", "mlp_layer1", "kernel")] + [
      ("control_blocks", "self_attn", p, "kernel") for p in ("k_proj", "output_proj", "q_proj", "v_proj")]
  with pytest.raises(ValueError, match=r"^model\.lora\.targets: 'mlp' matches no kernel of control_blocks \(.*mlp_layer1"):
    lora.adapted_kernels(tiny_abstract, lora.LoraConfig(rank=2, targets=("mlp",)))


def test_adapters_are_stacked_float32_with_zero_b_and_seeded_a(tiny_abstract):
  cfg = lora.LoraConfig(rank=3, targets=("mlp_layer1", "cross_attn/k_proj"))
  adapters = traverse_util.flatten_dict(lora.init_adapters(tiny_abstract, cfg, seed=0))
  blocks = dit_config.DiTConfig.from_config(edge.get_config("tiny").model.net).num_control_blocks
  mlp = ("control_blocks", "mlp_layer1")
  assert adapters[mlp + ("lora_a",)].shape == (blocks, 128, 3)  # (blocks, in, r)
  assert adapters[mlp + ("lora_b",)].shape == (blocks, 3, 512)  # (blocks, r, out)
  assert adapters[("control_blocks", "cross_attn", "k_proj", "lora_a")].shape == (blocks, 64, 3)
  assert len(adapters) == 4 and all(a.dtype == np.float32 for a in adapters.values())
  a = np.asarray(adapters[mlp + ("lora_a",)])
  assert not np.asarray(adapters[mlp + ("lora_b",)]).any()
  assert 0.5 / np.sqrt(128) < np.abs(a).max() <= 1 / np.sqrt(128)  # uniform within ±1/sqrt(in)
  again = traverse_util.flatten_dict(lora.init_adapters(tiny_abstract, cfg, seed=0))
  other = traverse_util.flatten_dict(lora.init_adapters(tiny_abstract, cfg, seed=1))
  np.testing.assert_array_equal(np.asarray(again[mlp + ("lora_a",)]), a)
  assert not np.array_equal(np.asarray(other[mlp + ("lora_a",)]), a)
  assert not np.array_equal(a[0], a[1]), "each stacked block draws its own A"


def test_merge_is_w_plus_scaled_a_b_and_drops_the_adapters():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((2, 6, 5)).astype(np.float32)
  a, b = rng.standard_normal((2, 6, 3)).astype(np.float32), rng.standard_normal((2, 3, 5)).astype(np.float32)
  other = rng.standard_normal((4,)).astype(np.float32)
  params = {"control_blocks": {"q": {"kernel": w, "lora_a": a, "lora_b": b}, "norm": {"scale": other}}}
  out = lora.merged(params, 0.25)
  assert set(traverse_util.flatten_dict(out)) == {("control_blocks", "q", "kernel"), ("control_blocks", "norm", "scale")}
  want = w.astype(np.float64) + 0.25 * np.einsum("kir,kro->kio", a.astype(np.float64), b.astype(np.float64))
  np.testing.assert_allclose(np.asarray(out["control_blocks"]["q"]["kernel"]), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["control_blocks"]["norm"]["scale"]), other)
  # B = 0: the merged kernel is W bit for bit, also from a bfloat16 W (merged in float32).
  zero_b = {"control_blocks": {"q": {"kernel": w.astype(jax.numpy.bfloat16), "lora_a": a, "lora_b": 0 * b}}}
  merged = np.asarray(lora.merged(zero_b, 2.0)["control_blocks"]["q"]["kernel"])
  assert merged.dtype == np.float32
  np.testing.assert_array_equal(merged, w.astype(jax.numpy.bfloat16).astype(np.float32))
  assert lora.merged({"x": {"kernel": w}}, 1.0)["x"]["kernel"] is w  # no adapters: untouched


def test_the_step_merges_each_kernel_in_the_dtype_its_layer_computes_in():
  # The train step rounds merged kernels to their layer's compute dtype (what the layer's own cast does): bf16 for
  # the attention/MLP kernels of a bf16 network, float32 for the adaLN modulation MLPs, which compute in float32.
  cfg = dit_config.DiTConfig.from_config({**edge.get_config("tiny").model.net, "dtype": "bfloat16"})
  rng = np.random.default_rng(1)
  w, a, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 6, 5), (2, 6, 3), (2, 3, 5)))
  params = {"control_blocks": {name: {"kernel": w, "lora_a": a, "lora_b": b}
                               for name in ("mlp_layer1", "adaln_modulation_mlp")}}
  out = lora.merged(params, 0.5, lambda path: dit.kernel_compute_dtype(cfg, path))["control_blocks"]
  in_float32 = np.asarray(lora.merged(params, 0.5)["control_blocks"]["mlp_layer1"]["kernel"])
  assert out["mlp_layer1"]["kernel"].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(np.asarray(out["mlp_layer1"]["kernel"]), in_float32.astype(jax.numpy.bfloat16))
  assert out["adaln_modulation_mlp"]["kernel"].dtype == np.float32


def test_adapter_axes_follow_the_kernel_with_the_rank_replicated():
  assert lora.adapter_axes(("layers", "embed", "mlp"), lora.A) == ("layers", "embed", None)
  assert lora.adapter_axes(("layers", "embed", "mlp"), lora.B) == ("layers", None, "mlp")
  assert lora.adapter_axes((None, "fsdp", None), lora.A) == (None, "fsdp", None)
