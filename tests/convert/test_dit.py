"""DiT conversion: 2B key coverage on the abstract model, streaming = plain conversion bit for bit, round trip,
rejections, sources, the CLI."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from agibot_jax import params_io
from agibot_jax.models import dit, dit_config
from convert import dit as convert_dit
from convert import mapping
from tests.convert.reference import assert_bit_identical, reference_params, run_cli



def _read_2b_keys(golden_dir):
  rows = []
  for line in (golden_dir / "dit_2b_keys.tsv").read_text().splitlines():
    if line.startswith(("#", "key\t")) or not line.strip():
      continue
    key, shape, dtype, kind, *_ = line.split("\t")
    shape = tuple(int(s) for s in shape.split("x")) if shape not in ("", "scalar", "()") else ()
    rows.append((key, shape, kind))
  return rows


def test_exported_buffers_match_the_reference_list(golden_dir):
  rows = {k: s for k, s, kind in _read_2b_keys(golden_dir) if convert_dit.is_ignored_key(k)}
  bufs = convert_dit.reference_buffers(dit_config.DiTConfig())
  assert {k: v.shape for k, v in bufs.items()} == rows


def test_2b_every_reference_key_maps_to_a_parameter_of_that_shape(golden_dir):
  cfg = dit_config.DiTConfig()  # the 2B Agibot preset
  abstract = dit.abstract_params(cfg)  # eval_shape: nothing allocated
  flat = mapping.flatten_tree(abstract)
  table = {e.torch_key: e for e in convert_dit.key_table(cfg)}
  rows = _read_2b_keys(golden_dir)
  assert len(rows) == 932
  for key, shape, kind in rows:
    if convert_dit.is_ignored_key(key):
      assert kind == "buffer", key
      continue
    assert key in table, f"{key} has no mapping"
    assert mapping.expected_torch_shape(table[key], flat) == shape, key
  assert set(table) <= {k for k, _, _ in rows}
  assert mapping.check_table(table.values(), abstract) == []  # no Flax parameter left unmapped

  count = lambda pred: sum(int(np.prod(v.shape)) for k, v in flat.items() if pred(k))
  assert count(lambda k: k[0] != "rope_buffers") == 2_931_913_728
  assert count(lambda k: dit_config.is_trainable(k)) == 365_081_600


def _tiny_cfg():
  return dit_config.DiTConfig(model_channels=64, num_heads=2, num_blocks=3, vace_block_every_n=2, adaln_lora_dim=8,
                              crossattn_proj_in_channels=24, crossattn_emb_channels=16, state_t=2)


def _random_state(cfg, dtype, seed=0):
  rng = np.random.default_rng(seed)
  flat = mapping.flatten_tree(dit.abstract_params(cfg))
  state = {e.torch_key: rng.standard_normal(mapping.expected_torch_shape(e, flat)).astype(dtype)
           for e in convert_dit.key_table(cfg)}
  state.update(convert_dit.reference_buffers(cfg))
  return state


def _write_cfg(tmp_path, cfg):
  path = tmp_path / "tiny_cfg.py"
  fields = ", ".join(f"{k}={v!r}" for k, v in cfg.__dict__.items())
  path.write_text(
      "import ml_collections\n"
      "def get_config(arg=''):\n"
      f"  c = ml_collections.ConfigDict(); c.model = ml_collections.ConfigDict(); c.model.net = ml_collections.ConfigDict(dict({fields}))\n"
      "  return c\n")
  return str(path)


@pytest.fixture
def torch_mod():
  return pytest.importorskip("torch", reason="needs the `convert` extra (torch)")


def _training_ckpt(tmp_path, cfg, dtype):
  """A .pt holding net.* (seed 1), net_ema.* (seed 0) and a TransformerEngine extra state."""
  import torch

  from convert import torch_io

  ema, reg = _random_state(cfg, dtype, 0), _random_state(cfg, dtype, 1)
  ckpt = {**{"net." + k: torch_io.numpy_to_tensor(v) for k, v in reg.items()},
          **{"net_ema." + k: torch_io.numpy_to_tensor(v) for k, v in ema.items()},
          "net.blocks.0.self_attn.attn_op._extra_state": torch.zeros(3)}
  torch.save(ckpt, tmp_path / "train.pt")
  return tmp_path / "train.pt", ema, reg


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip_torch_flax_torch_is_bit_exact(tmp_path, torch_mod, dtype):
  from convert import torch_io

  cfg = _tiny_cfg()
  src, ema, _ = _training_ckpt(tmp_path, cfg, dtype)
  convert_dit.convert(str(src), str(tmp_path / "flax"), cfg)
  assert_bit_identical(tmp_path / "flax", reference_params(ema, convert_dit.key_table(cfg)))
  convert_dit.export(str(tmp_path / "flax"), str(tmp_path / "back.pt"))
  back = torch_mod.load(tmp_path / "back.pt", weights_only=True)
  assert set(back) == {"net." + k for k in ema}
  for k, v in ema.items():
    got = torch_io.tensor_to_numpy(back["net." + k])
    assert got.dtype == v.dtype, k
    assert got.shape == v.shape and got.tobytes() == v.tobytes(), k


def test_cli_converts_the_regular_copy_cast(tmp_path, torch_mod):
  # absl flags: --noema takes net.*, --config gives the architecture, --dtype casts.
  cfg = _tiny_cfg()
  src, _, reg = _training_ckpt(tmp_path, cfg, ml_dtypes.bfloat16)
  proc = run_cli("convert.dit", "--src", src, "--dst", tmp_path / "reg", "--noema", "--dtype", "float32",
                 "--config", _write_cfg(tmp_path, cfg))
  assert proc.returncode == 0, proc.stderr
  assert_bit_identical(tmp_path / "reg", reference_params(reg, convert_dit.key_table(cfg), "float32"))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save, writing the test checkpoint
def test_safetensors_and_dcp_sources_convert_bit_identically(tmp_path, torch_mod):
  import torch.distributed.checkpoint as dcp

  from convert import torch_io

  cfg = _tiny_cfg()
  state = _random_state(cfg, np.float32)
  torch_io.save_state_dict(state, str(tmp_path / "m.safetensors"), prefix="net.")
  dcp.save({"net": {k: torch_io.numpy_to_tensor(v) for k, v in state.items()}}, checkpoint_id=str(tmp_path / "dcp"))
  for src, dtype in (("m.safetensors", "bfloat16"), ("dcp", None)):
    convert_dit.convert(str(tmp_path / src), str(tmp_path / f"out_{src}"), cfg, dtype=dtype)
    assert_bit_identical(tmp_path / f"out_{src}", reference_params(state, convert_dit.key_table(cfg), dtype))


def test_a_conversion_failing_midway_leaves_nothing(tmp_path, torch_mod, monkeypatch, caplog):
  from convert import torch_io

  cfg = _tiny_cfg()
  src, _, _ = _training_ckpt(tmp_path, cfg, np.float32)
  reads = []

  def read_then_fail(self, key):
    reads.append(key)
    if len(reads) == 40:
      raise OSError(f"{src}: read error")
    return self._source.read(self._raw_key[key])

  monkeypatch.setattr(torch_io.StateDict, "read", read_then_fail)
  monkeypatch.setattr(params_io, "PART_BYTES", 4096)  # several parts are written before the failure
  out = tmp_path / "out"
  with caplog.at_level("INFO"), pytest.raises(OSError, match="read error"):
    convert_dit.convert(str(src), str(out), cfg)
  assert "wrote part-001" in caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == ["train.pt"]


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_converter_rejects_bad_checkpoints_naming_the_key(tmp_path, torch_mod, problem):
  from convert import torch_io

  cfg = _tiny_cfg()
  state = _random_state(cfg, np.float32)
  key = "blocks.1.cross_attn.k_proj.weight"
  if problem == "missing":
    del state[key]
  elif problem == "extra":
    key = "blocks.1.cross_attn.surprise.weight"
    state[key] = np.zeros(3, np.float32)
  else:
    state[key] = np.zeros((5, 5), np.float32)
  torch_io.save_state_dict(state, str(tmp_path / "bad.pt"), prefix="net.")
  dst = tmp_path / "out"
  with pytest.raises(mapping.ConversionError) as e:
    convert_dit.convert(str(tmp_path / "bad.pt"), str(dst), cfg)
  assert key in str(e.value)
  assert {"missing": "missing keys", "extra": "unexpected keys", "shape": "wrong shape"}[problem] in str(e.value)
  assert not dst.exists()


def test_hf_reference_resolves_from_local_cache_offline(tmp_path, monkeypatch):
  from convert import torch_io

  cache = tmp_path / "hub"
  rev = "a" * 40
  repo = cache / "models--nvidia--Cosmos-Experimental"
  snap = repo / "snapshots" / rev / "uuid-1234"
  snap.mkdir(parents=True)
  (snap / "model_ema_bf16.pt").write_bytes(b"weights")
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(rev)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  import huggingface_hub.constants as c

  monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
  path = torch_io.resolve_source("hf://nvidia/Cosmos-Experimental/uuid-1234/model_ema_bf16.pt")
  assert open(path, "rb").read() == b"weights"
  with pytest.raises(FileNotFoundError, match="uuid-1234/other.pt"):
    torch_io.resolve_source("hf://nvidia/Cosmos-Experimental/uuid-1234/other.pt")


@pytest.mark.slow  # ~9 s; the golden DiT comparisons run in-process in tests/models/test_dit.py (default run)
def test_parity_cli_on_golden(golden_dir):
  out = run_cli("convert.parity", "--golden", golden_dir / "dit_tiny.safetensors")
  assert out.returncode == 0, out.stderr
  summary, result = out.stdout.strip().splitlines()[-2:]
  assert summary.startswith("max_abs_err=") and float(summary.split("=")[1]) < 1e-4
  assert json.loads(result)["ok"] is True


def test_export_from_a_training_workdir_takes_the_ema_or_regular_weights(tmp_path, torch_mod, caplog):
  import jax
  from configs import edge

  from agibot_jax.training import checkpointing, ema as ema_lib, optimizer as optim
  from agibot_jax.training.state import new_state
  from convert import torch_io

  from tests.training.lora_setup import random_params

  config = edge.get_config("tiny")
  config.checkpoint.async_save = False
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  params = random_params(cfg)  # the weights' values do not matter here, and an eager init takes ~40 s
  tx = optim.make_optimizer(config)
  state = new_state(params, config, tx, ema_lib.PowerEMA.from_config(config), 0)
  state = state.replace(ema=jax.tree.map(lambda e: e + 1.0, state.ema))  # make EMA and live weights differ
  with checkpointing.make_manager(str(tmp_path), config) as manager:
    checkpointing.save(manager, state, {}, config)
    checkpointing.save(manager, state.replace(step=state.step + 5), {}, config)
  # Issue 33 row 1: the newest checkpoint does not restore: the older one is exported, and nothing is moved.
  os.remove(tmp_path / "checkpoints" / "5" / "state" / "manifest.ocdbt")
  caplog.set_level("INFO")
  for use_ema, branch in ((True, state.ema), (False, state.trainable)):
    out = tmp_path / f"export_{use_ema}.pt"
    convert_dit.export(str(tmp_path), str(out), ema=use_ema)
    # Which step and which weights (issue 31, item 10).
    assert f"exporting step 0 of {tmp_path}/checkpoints ({'EMA' if use_ema else 'regular'} weights)" in caplog.text
    sd = torch_mod.load(out, weights_only=True)
    want = np.asarray(branch["control_blocks"]["after_proj"]["kernel"][1]).T
    np.testing.assert_array_equal(torch_io.tensor_to_numpy(sd["net.control_blocks.1.after_proj.weight"]), want)
    np.testing.assert_array_equal(torch_io.tensor_to_numpy(sd["net.blocks.2.mlp.layer1.weight"]),
                                  np.asarray(params["blocks"]["mlp_layer1"]["kernel"][2]).T)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "5"]


def test_export_and_sampling_of_a_lora_run_merge_the_adapters(tmp_path, torch_mod):
  """Issue 30: a LoRA checkpoint exports (and restores for sampling) plain kernels W + (alpha/r)·A@B under the
  reference's key names, from the EMA adapters or the regular ones. The slow run trains and round-trips one
  (tests/training/test_train.py)."""
  import jax
  from configs import edge

  from agibot_jax import sharding
  from agibot_jax.training import checkpointing
  from convert import torch_io
  from tests.training.lora_setup import abstract_params, lora_state

  config = edge.get_config("tiny")
  config.checkpoint.async_save = False
  config.model.lora.rank, config.model.lora.alpha = 4, 8.0
  state = lora_state(config)
  with checkpointing.make_manager(str(tmp_path), config) as manager:
    checkpointing.save(manager, state, {}, config)
  replicated = jax.sharding.NamedSharding(sharding.make_mesh(1, 1, 1), jax.sharding.PartitionSpec())
  shardings = jax.tree.map(lambda _: replicated, abstract_params(dit_config.DiTConfig.from_config(config.model.net)))
  w = np.asarray(state.frozen["control_blocks"]["mlp_layer2"]["kernel"][1])
  for use_ema, branch in ((True, state.ema), (False, state.trainable)):
    adapters = branch["control_blocks"]["mlp_layer2"]
    want = w + 2.0 * np.asarray(adapters["lora_a"][1]) @ np.asarray(adapters["lora_b"][1])
    out = tmp_path / f"export_{use_ema}.pt"
    convert_dit.export(str(tmp_path), str(out), ema=use_ema)
    sd = torch_mod.load(out, weights_only=True)
    exported = torch_io.tensor_to_numpy(sd["net.control_blocks.1.mlp.layer2.weight"]).T
    np.testing.assert_allclose(exported, want, rtol=1e-6, atol=1e-6)
    assert not any("lora_a" in k or "lora_b" in k for k in sd)
    _, sampled = checkpointing.restore_weights(str(tmp_path), shardings, use_ema=use_ema)
    np.testing.assert_array_equal(np.asarray(sampled["control_blocks"]["mlp_layer2"]["kernel"][1]), exported)
