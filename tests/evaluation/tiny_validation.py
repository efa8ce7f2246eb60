"""A tiny validation setup shared by the validation tests, and a program computing its metrics on some mesh:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.evaluation.tiny_validation DATASET_DIR \
      --mesh 2,2,2          # prints {metric: value} as one JSON line

The model batch comes from a cheap stand-in for the VAE and the text encoder (`prepare`), so no VAE is compiled.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax import sharding
from agibot_jax.evaluation import validation
from agibot_jax.models import dit, dit_config
from configs import edge

HW = (32, 48)  # pixels; latent 4x6, 2x3 patches: 18 tokens per view, which a context axis of 2 divides
NUM_VIEWS = 3


def config(dataset_dir: str = ""):
  c = edge.get_config("tiny")
  c.model.net.num_blocks = 2
  c.model.net.vace_block_every_n = 2
  c.model.net.text_tokens_per_view = 8
  c.model.text_encoder.num_tokens = 8
  c.dataloader_train.dataset.resolution_hw = HW
  c.dataloader_train.dataset.dataset_dir = dataset_dir
  c.dataloader_val.dataset_dir = dataset_dir
  return c


def params(cfg: dit_config.DiTConfig, mesh, seed: int = 0):
  """Random DiT weights on `mesh` with non-zero control output projections (zero ones would hide the control)."""
  shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  key = jax.random.key(seed)
  # XLA -O0: the optimised compile of the initializers alone takes ~15 s on CPU (the draws are the same).
  init = jax.jit(functools.partial(dit.init_params, cfg, latent_hw=(HW[0] // 8, HW[1] // 8)), out_shardings=shardings)
  init = init.lower(key).compile(compiler_options={"xla_backend_optimization_level": 0})
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.02 if "after_proj" in jax.tree_util.keystr(p) else x, init(key))


def _latent(pixels_BCTHW: np.ndarray, cfg: dit_config.DiTConfig) -> np.ndarray:
  """Stand-in VAE: pixel frames 0, 4, 8 of each view, 8x8 average pooled, channels tiled to in_channels."""
  x = pixels_BCTHW.astype(np.float32) / 127.5 - 1.0
  b, c, vt, h, w = x.shape
  t = vt // NUM_VIEWS
  x = x.reshape(b, c, NUM_VIEWS, t, h // 8, 8, w // 8, 8).mean(axis=(5, 7))[:, :, :, ::4][:, :, :, :cfg.state_t]
  x = x.transpose(0, 2, 3, 4, 5, 1).reshape(b, NUM_VIEWS * cfg.state_t, h // 8, w // 8, c)
  return np.tile(x, (1, 1, 1, 1, -(-cfg.in_channels // c)))[..., :cfg.in_channels]


def prepare(loader_batch: dict, *, cfg: dit_config.DiTConfig, mesh) -> dict:
  """Loader batch -> model batch on `mesh`, deterministic (text: one fixed random embedding)."""
  b = len(loader_batch["ai_caption"])
  emb = np.random.RandomState(0).standard_normal(
      (b, NUM_VIEWS * cfg.text_tokens_per_view, cfg.crossattn_proj_in_channels)).astype(np.float32)
  out = {
      "x0_BTHWC": _latent(loader_batch["video"], cfg),
      "control_BTHWC": _latent(loader_batch["control_input_edge"], cfg),
      "crossattn_emb_BMC": emb,
      "view_indices_BT": np.repeat(np.arange(NUM_VIEWS, dtype=np.int32), cfg.state_t)[None].repeat(b, 0),
      "padding_mask_BHW": np.asarray(loader_batch["padding_mask"], np.float32)[:, 0],
  }
  return {k: jax.device_put(jnp.asarray(v), sharding.batch_sharding(mesh, v.shape)) for k, v in out.items()}


def validator(dataset_dir: str, mesh, samples):
  c = config(dataset_dir)
  cfg = dit_config.DiTConfig.from_config(c.model.net)
  return validation.Validator(dit.MultiViewControlDiT(cfg), c, samples,
                              functools.partial(prepare, cfg=cfg, mesh=mesh)), cfg


def metrics_on_mesh(dataset_dir: str, mesh_shape: tuple[int, int, int]) -> dict[str, float]:
  c = config(dataset_dir)
  _, samples = validation.split_samples(c, [], required=True)
  mesh = sharding.make_mesh(*mesh_shape)
  jax.set_mesh(mesh)
  v, cfg = validator(dataset_dir, mesh, samples)
  return v(params(cfg, mesh))


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("dataset_dir")
  parser.add_argument("--mesh", default="1,1,1", help="data,fsdp,context")
  args = parser.parse_args()
  mesh_shape = tuple(int(x) for x in args.mesh.split(","))
  print(json.dumps({"devices": jax.device_count(), "metrics": metrics_on_mesh(args.dataset_dir, mesh_shape)}))
