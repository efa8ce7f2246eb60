"""PyTorch <-> Flax conversion of the multiview control DiT.

  python -m convert.dit --src model_ema_bf16.pt --dst ckpt/dit [--noema] [--config configs/edge.py]
  python -m convert.dit --src hf://nvidia/Cosmos-Experimental/<uuid>/model_ema_bf16.pt --dst ckpt/dit
  python -m convert.dit --export ckpt/dit --dst model.pt [--dtype bfloat16]

The key table (`key_table`) is this model's only contribution; matching, shape checks, error
reports and the inverse map come from `convert.mapping`. The checkpoint is read one tensor at a
time and written leaf by leaf (`params_io.write_params`): besides the memory-mapped source, memory
holds one Orbax part (256 MiB, or one larger leaf).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np
from absl import app, flags

from agibot_jax import params_io
from agibot_jax import cli
from convert import mapping
from convert.golden import OutputCheck
from convert.mapping import Entry

log = logging.getLogger(__name__)
DEFAULT_CONFIG = "configs/edge.py"

_ATTN = ("self_attn", "cross_view_attn", "cross_attn")
_MODS = ("self_attn", "cross_attn", "mlp")
# Reference buffers with no effect on the forward (RoPE position index, training counters).
_IGNORED = re.compile(r"^(pos_embedder_options\.n_cameras_\d+\.seq|accum_[a-z_]+)$")
_COUNTERS = {"accum_video_sample_counter": np.int64, "accum_image_sample_counter": np.int64,
             "accum_iteration": np.int64, "accum_train_in_hours": np.float32}


def _block_entries(prefix: str, group: str, index: int) -> list[Entry]:
  e = []
  for attn in _ATTN:
    for proj in ("q_proj", "k_proj", "v_proj", "output_proj"):
      e.append(Entry(f"{prefix}{attn}.{proj}.weight", (group, attn, proj, "kernel"), "linear", index))
    for norm in ("q_norm", "k_norm"):
      e.append(Entry(f"{prefix}{attn}.{norm}.weight", (group, attn, norm, "scale"), "identity", index))
  e.append(Entry(f"{prefix}layer_norm_cross_view_attn.weight", (group, "layer_norm_cross_view_attn", "scale"), "identity", index))
  e.append(Entry(f"{prefix}layer_norm_cross_view_attn.bias", (group, "layer_norm_cross_view_attn", "bias"), "identity", index))
  e.append(Entry(f"{prefix}mlp.layer1.weight", (group, "mlp_layer1", "kernel"), "linear", index))
  e.append(Entry(f"{prefix}mlp.layer2.weight", (group, "mlp_layer2", "kernel"), "linear", index))
  for mod in _MODS:
    e.append(Entry(f"{prefix}adaln_modulation_{mod}.1.weight", (group, f"adaln_modulation_{mod}", "lora_down", "kernel"), "linear", index))
    e.append(Entry(f"{prefix}adaln_modulation_{mod}.2.weight", (group, f"adaln_modulation_{mod}", "lora_up", "kernel"), "linear", index))
  return e


def key_table(cfg) -> list[Entry]:
  """Every reference state-dict key of the DiT (buffers that matter included) -> Flax path."""
  e = [
      Entry("x_embedder.proj.1.weight", ("x_embedder", "kernel"), "linear"),
      Entry("control_embedder.proj.1.weight", ("control_embedder", "kernel"), "linear"),
      Entry("t_embedder.1.linear_1.weight", ("t_embedder", "linear_1", "kernel"), "linear"),
      Entry("t_embedder.1.linear_2.weight", ("t_embedder", "linear_2", "kernel"), "linear"),
      Entry("t_embedding_norm.weight", ("t_embedding_norm", "scale")),
      Entry("crossattn_proj.0.weight", ("crossattn_proj", "kernel"), "linear"),
      Entry("crossattn_proj.0.bias", ("crossattn_proj", "bias")),
      Entry("adaln_view_embedder.weight", ("adaln_view_embedder", "embedding")),
      Entry("adaln_view_proj.weight", ("adaln_view_proj", "kernel"), "linear"),
      Entry("adaln_view_proj.bias", ("adaln_view_proj", "bias")),
      Entry("final_layer.linear.weight", ("final_layer", "linear", "kernel"), "linear"),
      Entry("final_layer.adaln_modulation.1.weight", ("final_layer", "adaln_modulation", "lora_down", "kernel"), "linear"),
      Entry("final_layer.adaln_modulation.2.weight", ("final_layer", "adaln_modulation", "lora_up", "kernel"), "linear"),
      Entry("control_blocks.0.before_proj.weight", ("control_before_proj", "kernel"), "linear"),
      Entry("control_blocks.0.before_proj.bias", ("control_before_proj", "bias")),
  ]
  for k in range(1, cfg.n_cameras_emb + 1):
    for rng in ("dim_spatial_range", "dim_temporal_range"):
      e.append(Entry(f"pos_embedder_options.n_cameras_{k}.{rng}", ("rope_buffers", f"n_cameras_{k}_{rng}")))
  for i in range(cfg.num_blocks):
    e += _block_entries(f"blocks.{i}.", "blocks", i)
  for j in range(cfg.num_control_blocks):
    e += _block_entries(f"control_blocks.{j}.", "control_blocks", j)
    e.append(Entry(f"control_blocks.{j}.after_proj.weight", ("control_blocks", "after_proj", "kernel"), "linear", j))
    e.append(Entry(f"control_blocks.{j}.after_proj.bias", ("control_blocks", "after_proj", "bias"), "identity", j))
  return e


def is_ignored_key(key: str) -> bool:
  return bool(_IGNORED.match(key))


def reference_buffers(cfg) -> dict[str, np.ndarray]:
  """The reference's forward-inert buffers, regenerated for export (RoPE `seq`, counters)."""
  seq_len = max(cfg.max_img_h // cfg.patch_spatial, cfg.max_img_w // cfg.patch_spatial, cfg.max_frames // cfg.patch_temporal)
  out = {f"pos_embedder_options.n_cameras_{k}.seq": np.arange(seq_len, dtype=np.float32)
         for k in range(1, cfg.n_cameras_emb + 1)}
  out.update({k: np.zeros((), dt) for k, dt in _COUNTERS.items()})
  return out


def torch_state_to_params(state, cfg, *, source: str = ""):
  """In-memory reference state dict (numpy, no `net.` prefix) -> Flax params (numpy), checked against the model."""
  from agibot_jax.models import dit

  return mapping.torch_to_flax(state, key_table(cfg), dit.abstract_params(cfg), ignore=is_ignored_key, source=source)


def params_to_torch_state(params, cfg, dtype: str | None = None) -> dict[str, np.ndarray]:
  """Flax params -> reference state dict (keys without `net.`), optionally cast to `dtype`."""
  state = mapping.flax_to_torch(params, key_table(cfg))
  state.update(reference_buffers(cfg))
  return mapping.cast_floating(state, dtype)


# ----------------------------------------------------------------------------------------------
# Golden parity


def _golden_tensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  return load_file(path)


def params_from_golden(path: str, cfg) -> dict:
  """Flax params (numpy) from the `params/` entries of a golden DiT file."""
  t = _golden_tensors(path)
  state = {k[len("params/"):]: v for k, v in t.items() if k.startswith("params/")}
  return torch_state_to_params(state, cfg, source=path)


def _parse_call_args(spec: str) -> dict:
  """'control_context_scale=0.5, a=1' -> {'control_context_scale': 0.5, 'a': 1.0}."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    k, _, v = part.partition("=")
    out[k.strip()] = float(v)
  return out


def golden_inputs(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Golden `inputs/` (reference layout, channels-first) -> our call's keyword inputs (channels-last)."""
  to_last = lambda a: np.moveaxis(a, 1, -1)
  pm = t.get("inputs/padding_mask")
  return dict(
      x_BTHWC=to_last(t["inputs/x_B_C_T_H_W"]),
      timesteps_B=t["inputs/timesteps_B_T"].reshape(t["inputs/timesteps_B_T"].shape[0], -1)[:, 0],
      crossattn_emb_BMC=t["inputs/crossattn_emb"],
      latent_control_BTHWC=to_last(t["inputs/latent_control_input"]),
      condition_mask_BTHW1=to_last(t["inputs/condition_video_input_mask_B_C_T_H_W"]),
      view_indices_BT=t["inputs/view_indices_B_T"].astype(np.int32),
      padding_mask_BHW=None if pm is None else pm[:, 0],
  )


def golden_parity(path: str, meta: dict):
  import jax

  from agibot_jax.models import dit, dit_config

  cfg = dit_config.DiTConfig.from_reference_kwargs(meta["constructor_kwargs"], param_dtype="float32", dtype="float32",
                                                   attention="xla", remat_policy="none")
  t = _golden_tensors(path)
  params = params_from_golden(path, cfg)
  inputs = golden_inputs(t)
  model = dit.MultiViewControlDiT(cfg)
  apply = jax.jit(lambda p, scale, **kw: model.apply({"params": p}, **kw, control_context_scale=scale))
  outputs = meta.get("non_tensor_args", {}).get("outputs") or {"outputs/x": ""}
  checks = []
  for name, call in sorted(outputs.items()):
    kwargs = _parse_call_args(call)
    scale = kwargs.pop("control_context_scale", meta.get("non_tensor_args", {}).get("control_context_scale", 1.0))
    if kwargs:
      raise ValueError(f"{path}: unsupported call arguments for {name}: {sorted(kwargs)}")
    got = np.moveaxis(np.asarray(apply(params, scale, **inputs)), -1, 1)
    want = t[name]
    if got.shape != want.shape:
      raise ValueError(f"{path}: {name} has shape {want.shape}, the port produced {got.shape}")
    checks.append(OutputCheck(name, float(np.max(np.abs(got - want))), 1e-4))
  return checks


# ----------------------------------------------------------------------------------------------
# CLI


def convert(src: str, dst: str, cfg, *, ema: bool = True, dtype: str | None = None, force: bool = False) -> None:
  """Reference checkpoint `src` (any source of `convert.torch_io`) -> converted DiT directory `dst`.

  cfg: the DiTConfig the checkpoint must match. ema: take `net_ema.*` (else `net.*`).
  dtype: cast floating tensors ("float32" | "bfloat16"; None keeps the checkpoint's).
  """
  from agibot_jax.models import dit
  from convert import torch_io

  params_io.check_destination(dst, force)
  copy = "net_ema" if ema else "net"
  state = torch_io.StateDict(src, prefix_choice=copy)
  table, abstract = key_table(cfg), dit.abstract_params(cfg)
  mapping.check_state(state.shapes, table, abstract, ignore=is_ignored_key, source=src)
  log.info("converting %d tensors of %s (%s)", len(table), src, copy)
  meta = {"model": params_io.MODEL_DIT, "config": dataclasses.asdict(cfg), "source": src, "copy": copy}
  params_io.write_params(dst, mapping.flax_leaves(state.read, table, abstract, dtype=dtype), meta, force=force)


def _training_checkpoint_params(src_dir: str, ema: bool):
  """(DiTConfig, full params) of the newest checkpoint of a training run (its workdir or checkpoints/ dir) whose
  weights restore (`checkpointing.restore_weights`: a newer one that does not is named and left in place)."""
  import jax

  from agibot_jax import preflight, sharding
  from agibot_jax.models import dit, dit_config
  from agibot_jax.training import checkpointing

  workdir = preflight.training_workdir(src_dir)
  if workdir is None:
    raise FileNotFoundError(f"{src_dir}: no converted DiT (agibot_meta.json) and no training checkpoint")
  _, saved = checkpointing.checkpoint_to_read(workdir)
  cfg = dit_config.DiTConfig.from_config(saved["model"]["net"])
  shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), sharding.make_mesh(devices=jax.devices()[:1]))
  step, params = checkpointing.restore_weights(workdir, shardings, use_ema=ema)
  log.info("exporting step %d of %s (%s weights)", step, checkpointing.checkpoint_dir(workdir),
           "EMA" if ema else "regular")
  return cfg, jax_free(params)


def jax_free(tree):
  return mapping.unflatten_tree({k: np.asarray(v) for k, v in mapping.flatten_tree(tree).items()})


def export(src_dir: str, dst: str, *, dtype: str | None = None, ema: bool = True) -> None:
  """Converted DiT directory, or a training workdir (EMA or regular weights), -> reference `.pt`."""
  from agibot_jax.models import dit_config
  from convert import torch_io

  if os.path.exists(os.path.join(src_dir, params_io.META_FILE)):
    meta = params_io.read_meta(src_dir)
    if meta.get("model") != params_io.MODEL_DIT:
      raise ValueError(f"{src_dir} holds a {meta.get('model')!r} checkpoint, not a DiT")
    log.info("exporting the converted DiT %s (%s)", src_dir, meta.get("copy", "weights as converted"))
    cfg = dit_config.DiTConfig.from_config(meta["config"])
    params = params_io.to_numpy_tree(params_io.restore_params(src_dir))
  else:
    cfg, params = _training_checkpoint_params(src_dir, ema)
  torch_io.save_state_dict(params_to_torch_state(params, cfg, dtype), dst, prefix="net.")


def main() -> int:
  from agibot_jax.models import dit_config
  from convert import torch_io

  f = flags.FLAGS
  if bool(f.src) == bool(f.export):
    raise app.UsageError("give exactly one of --src (convert) or --export (back to PyTorch)")
  ema = f.ema and not f.no_ema
  if f.export:
    torch_io.require_torch()  # before reading the checkpoint, not after
    export(f.export, f.dst, dtype=f.dtype, ema=ema)
  else:
    config = f.config if f.config is not None else cli.load_config(DEFAULT_CONFIG)
    convert(f.src, f.dst, dit_config.DiTConfig.from_config(config.model.net), ema=ema, dtype=f.dtype, force=f.force)
  log.info("wrote %s", f.dst)
  cli.print_result({"dst": os.path.abspath(f.dst)})
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "PyTorch checkpoint: .pt/.pth, .safetensors, DCP or safetensors directory, "
                      "or hf://ORG/REPO/PATH[@REV]")
  flags.DEFINE_string("export", None, "converted DiT directory or training workdir to export back to PyTorch")
  flags.DEFINE_string("dst", None, "output: converted DiT directory (--src) or .pt/.safetensors file (--export)")
  flags.DEFINE_bool("ema", True, "take the EMA weights, net_ema.* (default); --noema or --no_ema: net.*")
  flags.DEFINE_bool("no_ema", False, "take the regular weights, net.* (absl's --noema)")
  cli.define_config_flag()  # the architecture; default configs/edge.py (all four share it)
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "cast floating tensors (default: keep)")
  flags.DEFINE_bool("force", False, "overwrite an existing --dst directory")
  flags.mark_flag_as_required("dst")
  cli.run(main, bad_input=cli.BAD_CHECKPOINT)
