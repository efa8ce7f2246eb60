"""Videos from a model batch: guided UniPC denoising of the DiT, then VAE decoding (training.md §9).

One `Generator` serves the in-training callback and the `agibot_jax.sample` CLI. Its denoiser is ONE jitted
function per input shape: the whole loop is the `lax.scan` of `unipc.sample`, the conditional and
unconditional branches go through ONE batched DiT call per step (`guidance.guided_velocity_fn`), and the
guidance value, the number of conditional frames and the control weight are traced scalars, so the samples of a
callback firing (n ∈ {0, 1} × control weights × g ∈ {0, 3, 5}) and the regular and EMA weights (same tree, same
dtypes) share one compile.

Inputs are the train step's model batch (`agibot_jax.assemble.model_batch`):
  x0_BTHWC           float32 (B, V·T, h, w, 16) clean video latent (the clean conditional frames; may be zeros
                     when num_cond_frames = 0)
  control_BTHWC      float32 (B, V·T, h, w, 16) control latent
  crossattn_emb_BMC  (B, V·512, C) text embedding, raw or projected (the unconditional branch drops every view's)
  view_indices_BT    int32 (B, V·T) latent view ids
  padding_mask_BHW   float32 (B, H, W) pixel-space padding mask
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.models import dit, dit_ops
from agibot_jax.models import vae as vae_lib
from agibot_jax.sampling import guidance as guidance_lib
from agibot_jax.sampling import unipc

BATCH_KEYS = ("x0_BTHWC", "control_BTHWC", "crossattn_emb_BMC", "view_indices_BT", "padding_mask_BHW")
NOISE_SEED = 1  # the reference callback's RandomState seed
SHIFT = 5.0  # the reference callback's `set_timesteps(…, shift=5.0)`


def check_batch(batch: dict[str, Any], num_views: int) -> None:
  """Raises a ValueError naming the key when the model batch lacks a key or has inconsistent shapes."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"model batch lacks {missing}; expected the keys {BATCH_KEYS}")
  shape = tuple(batch["x0_BTHWC"].shape)
  if len(shape) != 5 or shape[1] % num_views:
    raise ValueError(f"x0_BTHWC: expected (B, V·T, h, w, C) with V={num_views}, got {shape}")
  if tuple(batch["control_BTHWC"].shape)[:4] != shape[:4]:
    raise ValueError(f"control_BTHWC {tuple(batch['control_BTHWC'].shape)} does not match x0_BTHWC {shape}")
  if tuple(batch["view_indices_BT"].shape) != shape[:2]:
    raise ValueError(f"view_indices_BT {tuple(batch['view_indices_BT'].shape)} != {shape[:2]}")


def to_host(x: jax.Array) -> np.ndarray:
  """The whole array on this host (gathered across processes where it is sharded over several)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class _ProgressTicker:
  """Host end of the `jax.debug.callback` inside the compiled loop: advances the tqdm bar that is open."""

  def __init__(self):
    self.bar = None

  def __call__(self, _):
    if self.bar is not None and self.bar.n < self.bar.total:
      self.bar.update(1)


class Generator:
  """Guided sampling and decoding for one DiT / VAE pair.

  Args:
    dit_model: the `MultiViewControlDiT` (its parameters are passed per call, so one compile serves the
      regular and the EMA weights).
    vae_model: the `WanVAE` that decodes the sampled latents.
    num_views: V.
    num_steps, shift: UniPC schedule (35 and 5.0 in the reference callback).
    seed: RandomState seed of the starting noise (1 in the reference).
    progress: show a tqdm bar over the denoising steps (ticked from inside the compiled loop).
  """

  def __init__(self, dit_model: dit.MultiViewControlDiT, vae_model: vae_lib.WanVAE, *, num_views: int,
               num_steps: int = 35, shift: float = SHIFT, seed: int = NOISE_SEED, progress: bool = False):
    self.dit_model, self.vae_model = dit_model, vae_model
    self.num_views, self.num_steps, self.shift, self.seed = num_views, int(num_steps), float(shift), int(seed)
    unipc.make_schedule(self.num_steps, self.shift)  # validate the schedule now, not at the first firing
    self._ticker = _ProgressTicker() if progress else None
    self._denoise = jax.jit(self._denoise_fn)
    self._decode = jax.jit(functools.partial(vae_lib.decode_multiview, vae_model, num_views=num_views))

  def _denoise_fn(self, params, batch, noise_BTHWC, guidance, num_cond_frames, control_weight):
    b, vt, h, w, _ = noise_BTHWC.shape
    compute_dtype = jnp.dtype(self.dit_model.cfg.dtype)
    mask_BTHW1 = dit_ops.condition_mask(jnp.full((b,), num_cond_frames, jnp.int32), self.num_views,
                                        vt // self.num_views, h, w)
    cond = {
        "emb": batch["crossattn_emb_BMC"],
        "control": batch["control_BTHWC"],
        "mask": mask_BTHW1.astype(compute_dtype),
        "view_indices": batch["view_indices_BT"],
        "padding_mask": batch["padding_mask_BHW"],
        "text_keep": jnp.ones((b, self.num_views), bool),
    }
    # The unconditional branch: every view's text dropped; control, clean frames and mask unchanged (§9.2).
    uncond = {**cond, "text_keep": jnp.zeros_like(cond["text_keep"])}

    def model_fn(x, timesteps_int_B, inputs):
      return self.dit_model.apply(
          {"params": params}, x.astype(compute_dtype), timesteps_int_B.astype(jnp.float32), inputs["emb"],
          inputs["control"], inputs["mask"], inputs["view_indices"], inputs["padding_mask"], control_weight,
          inputs["text_keep"])

    velocity_fn = guidance_lib.guided_velocity_fn(model_fn, cond, uncond, guidance)
    if self._ticker is not None:
      inner = velocity_fn

      def velocity_fn(x, timesteps_int_B):
        jax.debug.callback(self._ticker, timesteps_int_B[0], ordered=False)
        return inner(x, timesteps_int_B)

    return unipc.sample(velocity_fn, noise_BTHWC, num_steps=self.num_steps, shift=self.shift,
                        cond_latent=batch["x0_BTHWC"], cond_mask=mask_BTHW1)

  def initial_noise(self, latent_shape_BTHWC: tuple[int, ...]) -> np.ndarray:
    """The reference's start latent, drawn in its (B, C, V·T, h, w) layout, returned channels-last."""
    b, vt, h, w, c = latent_shape_BTHWC
    return guidance_lib.initial_noise((b, c, vt, h, w), self.seed).transpose(0, 2, 3, 4, 1)

  def denoise(self, params, batch: dict[str, Any], *, guidance: float, num_cond_frames: int,
              control_weight: float = 1.0) -> jax.Array:
    """Sampled latent float32 (B, V·T, h, w, C), on device.

    Args:
      params: DiT parameters (`TrainState.params()` or `.ema_params()`, or converted weights).
      batch: the model batch (module docstring).
      guidance: g of v = v_cond + g·(v_cond − v_uncond).
      num_cond_frames: clean latent frames taken from `x0_BTHWC` at the start of every view.
      control_weight: scale of every control hint (0 ignores the control).
    """
    check_batch(batch, self.num_views)
    shape = tuple(batch["x0_BTHWC"].shape)
    if not 0 <= num_cond_frames <= shape[1] // self.num_views:
      raise ValueError(f"num_cond_frames={num_cond_frames} outside [0, {shape[1] // self.num_views}]")
    noise = self.initial_noise(shape)
    sharding = getattr(batch["x0_BTHWC"], "sharding", None)
    noise = jax.device_put(noise, sharding) if sharding is not None else jnp.asarray(noise)
    inputs = {k: batch[k] for k in BATCH_KEYS}
    args = (params, inputs, noise, jnp.float32(guidance), jnp.int32(num_cond_frames), jnp.float32(control_weight))
    if self._ticker is None:
      return self._denoise(*args)
    from tqdm import tqdm

    desc = f"denoise g={guidance:g} n={num_cond_frames} w={control_weight:g}"
    with tqdm(total=self.num_steps, desc=desc, unit="step", disable=jax.process_index() != 0) as bar:
      self._ticker.bar = bar
      try:
        return jax.block_until_ready(self._denoise(*args))
      finally:
        # Unordered callbacks may still be in flight when the result is ready; let them land.
        jax.effects_barrier()
        self._ticker.bar = None

  def decode(self, vae_params, latents_BTHWC: jax.Array) -> np.ndarray:
    """Latents (B, V·t, h, w, C) -> host float32 videos (B, V, T, H, W, 3), ~[-1, 1]."""
    video = to_host(self._decode(vae_params, latents_BTHWC))
    b, vt = video.shape[:2]
    return video.reshape((b, self.num_views, vt // self.num_views) + video.shape[2:])

  def generate(self, params, vae_params, batch: dict[str, Any], *, guidance: float, num_cond_frames: int,
               control_weight: float = 1.0) -> np.ndarray:
    """`denoise` then `decode`: host float32 videos (B, V, T, H, W, 3) in ~[-1, 1]."""
    return self.decode(vae_params, self.denoise(params, batch, guidance=guidance, num_cond_frames=num_cond_frames,
                                                control_weight=control_weight))


def pixels_to_rows(video_BCTHW: np.ndarray, num_views: int) -> np.ndarray:
  """Loader pixels (B, 3, V·T, H, W) uint8 -> (B, V, T, H, W, 3) float32 in [-1, 1] (a row for video_out)."""
  x = np.asarray(video_BCTHW)
  if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] % num_views:
    raise ValueError(f"expected (B, 3, V·T, H, W) pixels with V={num_views}, got {x.shape}")
  x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
  b, _, vt, h, w = x.shape
  return x.transpose(0, 2, 3, 4, 1).reshape(b, num_views, vt // num_views, h, w, 3)
