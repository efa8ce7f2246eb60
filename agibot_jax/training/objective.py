"""Rectified-flow training objective of the multiview control model (spec/training.md §4, §12).

Two halves, so a golden test can feed fixed values into the second:
- `sample_draws(key, ...)` draws every random quantity of one step into a `Draws` struct;
- `rectified_flow_loss(apply_fn, x0, crossattn_emb, draws, ...)` is deterministic given them.

Layout is channels-last with views stacked view-major along time: latents are
(B, V·T, H, W, C) and frames [v·T, (v+1)·T) belong to view v. The text context is
(B, V·N, D) with N tokens per view, also view-major.

Per step (shift s = 5):
  u ~ sigmoid(N(0, 1)) per sample;  timestep = 1000 · s·u / (1 + (s−1)·u);  σ = timestep / 1000
  x_t = σ·ε + (1 − σ)·x0;  target = ε − x0
  n ~ conditional_frames_probs per sample (same n for every view); M = 1 on frames [0, n) of each view
  x_in = gt·M + x_t·(1 − M),  gt = x0 · use_video_condition
  v_out = target·M + v_pred·(1 − M);  loss = mean (v_out − target)²   (masked frames add exact zeros)
Text: each (sample, view) block of the raw embedding is zeroed with probability text_dropout (by the network,
which also handles projected embeddings).
`use_video_condition` is off with probability use_video_condition_dropout, one draw per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.models.dit_ops import condition_mask

# apply_fn(x_in_BTHWC, timesteps_B, crossattn_emb_BMD, condition_mask_BTHW1, text_keep_BV) -> v_pred_BTHWC.
# The network drops the text of views where text_keep_BV is False (MultiViewControlDiT's `text_keep_BV`). The control
# latent, view indices and parameters are bound by the caller.
ApplyFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

NUM_TRAIN_TIMESTEPS = 1000.0


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """The objective's settings (the `config.model` keys of configs/base.py)."""

  shift: float = 5.0
  # P(n conditional latent frames per view), indexed by n.
  conditional_frames_probs: tuple[float, ...] = (0.5, 0.5, 0.0)
  text_dropout: float = 0.2
  use_video_condition_dropout: float = 0.2

  def __post_init__(self):
    probs = np.asarray(self.conditional_frames_probs, np.float64)
    if probs.ndim != 1 or probs.size == 0 or (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-6:
      raise ValueError(
          f"model.conditional_frames_probs must be non-negative and sum to 1, got {self.conditional_frames_probs}"
      )
    for name in ("text_dropout", "use_video_condition_dropout"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
    if self.shift <= 0:
      raise ValueError(f"model.shift must be positive, got {self.shift}")

  @classmethod
  def from_config(cls, config) -> ObjectiveConfig:
    m = config.model
    return cls(
        shift=float(m.shift),
        conditional_frames_probs=tuple(float(p) for p in m.conditional_frames_probs),
        text_dropout=float(m.text_dropout),
        use_video_condition_dropout=float(m.use_video_condition_dropout),
    )

  @property
  def max_conditional_frames(self) -> int:
    """Largest n drawn with non-zero probability."""
    return int(np.nonzero(np.asarray(self.conditional_frames_probs))[0].max())


@flax.struct.dataclass
class Draws:
  """Every random quantity of one training step.

  eps_BTHWC: float32 N(0, I) noise, the latent's shape.
  timesteps_B: float32 timestep on the 0..1000 scale (σ = timesteps / 1000).
  num_cond_frames_B: int32 conditional latent frames per view.
  text_keep_BV: bool, False where a view's text embedding is dropped.
  use_video_condition: bool scalar, shared by the batch.
  """

  eps_BTHWC: jax.Array
  timesteps_B: jax.Array
  num_cond_frames_B: jax.Array
  text_keep_BV: jax.Array
  use_video_condition: jax.Array


@flax.struct.dataclass
class LossParts:
  """Intermediate tensors of the loss (float32 unless noted), for tests and diagnostics."""

  x_t: jax.Array  # σ·ε + (1−σ)·x0, before the conditional-frame substitution
  x_in: jax.Array  # what the network received (compute dtype)
  condition_mask: jax.Array  # (B, V·T, H, W, 1), 1 on conditional frames
  net_out: jax.Array  # raw network output
  pred: jax.Array  # output after the conditional-frame substitution
  target: jax.Array  # ε − x0
  loss_map: jax.Array  # (pred − target)²


def shifted_timesteps(u_B: jax.Array, shift: float) -> jax.Array:
  """Map u ∈ [0, 1] to the shifted timestep on the 0..1000 scale: 1000 · s·u / (1 + (s−1)·u)."""
  return shift * u_B / (1.0 + (shift - 1.0) * u_B) * NUM_TRAIN_TIMESTEPS


def sample_draws(key: jax.Array, cfg: ObjectiveConfig, latent_shape: tuple[int, ...], num_views: int) -> Draws:
  """Draw ε, the timesteps, n, the text keep-mask and `use_video_condition` for one step.

  latent_shape: (B, V·T, H, W, C) of the clean latent.
  """
  b, frames = latent_shape[0], latent_shape[1]
  if frames % num_views:
    raise ValueError(f"latent has {frames} frames, not a multiple of {num_views} views")
  if cfg.max_conditional_frames > frames // num_views:
    raise ValueError(
        f"model.conditional_frames_probs allows {cfg.max_conditional_frames} conditional frames per view, "
        f"but each view has only {frames // num_views} latent frames"
    )
  k_eps, k_u, k_n, k_text, k_uvc = jax.random.split(key, 5)
  u_B = jax.nn.sigmoid(jax.random.normal(k_u, (b,), jnp.float32))
  # log(0) = -inf: a zero-probability count can never win the Gumbel-max draw.
  log_probs = jnp.log(jnp.asarray(cfg.conditional_frames_probs, jnp.float32))
  return Draws(
      eps_BTHWC=jax.random.normal(k_eps, latent_shape, jnp.float32),
      timesteps_B=shifted_timesteps(u_B, cfg.shift),
      num_cond_frames_B=jax.random.categorical(k_n, log_probs, shape=(b,)).astype(jnp.int32),
      text_keep_BV=jax.random.bernoulli(k_text, 1.0 - cfg.text_dropout, (b, num_views)),
      use_video_condition=jax.random.bernoulli(k_uvc, 1.0 - cfg.use_video_condition_dropout, ()),
  )


def rectified_flow_loss(
    apply_fn: ApplyFn,
    x0_BTHWC: jax.Array,
    crossattn_emb_BMD: jax.Array,
    draws: Draws,
    *,
    num_views: int,
    compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, LossParts]:
  """The scalar float32 loss of one step and its intermediates, deterministic given `draws`.

  Args:
    apply_fn: the network, see `ApplyFn`; its output is cast to float32.
    x0_BTHWC: clean video latent (B, V·T, H, W, C).
    crossattn_emb_BMD: text embedding (B, V·N, D) before dropout (raw, or projected; see ApplyFn).
    draws: from `sample_draws`, or fixed values.
    num_views: V.
    compute_dtype: the network's input dtype; x_t is formed in float32 and cast to it (§12.6).
  """
  b, frames, h, w, _ = x0_BTHWC.shape
  if frames % num_views:
    raise ValueError(f"latent has {frames} frames, not a multiple of {num_views} views")
  x0 = x0_BTHWC.astype(jnp.float32)
  eps = draws.eps_BTHWC.astype(jnp.float32)
  sigma = (draws.timesteps_B.astype(jnp.float32) / NUM_TRAIN_TIMESTEPS)[:, None, None, None, None]
  x_t = sigma * eps + (1.0 - sigma) * x0
  target = eps - x0

  mask = condition_mask(draws.num_cond_frames_B, num_views, frames // num_views, h, w)
  # The mask is exactly 0/1, so `where` equals the reference's blend gt·M + x·(1−M) bit for bit,
  # and a non-finite value on one side cannot leak into the other.
  on = mask > 0.5
  gt = x0.astype(compute_dtype) * draws.use_video_condition.astype(compute_dtype)
  x_in = jnp.where(on, gt, x_t.astype(compute_dtype))
  net_out = apply_fn(x_in, draws.timesteps_B.astype(jnp.float32), crossattn_emb_BMD, mask.astype(compute_dtype),
                     draws.text_keep_BV)
  net_out = net_out.astype(jnp.float32)
  pred = jnp.where(on, target, net_out)

  loss_map = jnp.square(pred - target)
  # Uniform time weight: per-sample means weighted equally (a non-uniform weight would scale
  # each sample's mean, §12.7). Conditional frames stay in the denominator.
  loss = jnp.mean(jnp.mean(loss_map.reshape(b, -1), axis=1))
  return loss, LossParts(x_t, x_in, mask, net_out, pred, target, loss_map)
