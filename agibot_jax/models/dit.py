"""The Cosmos-Transfer2.5 multiview control DiT (Agibot 3-view), in Flax Linen.

Contract: shared/spec/network.md. Layout conventions (channels-last, views view-major in time):

  x_BTHWC        latent video, T = V·T_view frames, frames [v·T_view, (v+1)·T_view) are view v
  x_BVLD         token stream, L = T_view·H'·W' tokens per view (t-major, then h, then w)
  crossattn_emb  (B, V·512, C_in) text embeddings, 512 tokens per view, view-major

The 28 main blocks and the 4 control blocks each have stacked parameters (one `nn.scan` at init), so
the network compiles one block body per branch whatever its depth. Control hints enter the main
blocks as a broadcast stack and are added after the main blocks 0, n, 2n, ... (`vace_block_every_n`).
Main block 0 runs ahead of the main blocks' scan (`_main_blocks`), so training gives it no backward pass.

Precision follows the reference's `use_wan_fp32_strategy` (§6): timestep/view embeddings, the adaLN
modulation MLPs, RoPE and the final layer run in float32; everything else in `dtype`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from agibot_jax import rig, sharding
from agibot_jax.models import offload_scan, remat
from agibot_jax.models.attention import dot_product_attention

Array = jax.Array
F32 = jnp.float32

# Top-level parameter groups that post-training updates (the VACE control branch).
TRAINABLE_GROUPS = ("control_blocks", "control_embedder", "control_before_proj")
# Groups holding reference buffers (RoPE exponents): never trained, even with `model.train_base`.
BUFFER_GROUPS = ("rope_buffers",)


def is_trainable(path: Sequence[Any]) -> bool:
  """Whether the parameter at `path` (tuple of keys/DictKeys) belongs to the control branch."""
  first = path[0]
  first = getattr(first, "key", first)
  return str(first) in TRAINABLE_GROUPS


# Reference constructor options with the one value the Agibot network uses (spec §1).
REFERENCE_FIXED_OPTIONS = {
    "pos_emb_cls": "rope3d",
    "use_adaln_lora": True,
    "adaln_view_embedding": True,
    "concat_view_embedding": False,
    "enable_cross_view_attn": True,
    "use_crossattn_projection": True,
    "rope_enable_fps_modulation": False,
    "extra_per_block_abs_pos_emb": False,
    "use_input_hint_block": False,
    "vace_has_mask": False,
    "condition_strategy": "spaced",
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Hyperparameters of `MultiViewControlDiT` (names follow the reference's net config)."""

  model_channels: int = 2048
  num_blocks: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  in_channels: int = 16
  out_channels: int = 16
  patch_spatial: int = 2
  patch_temporal: int = 1
  concat_padding_mask: bool = True
  adaln_lora_dim: int = 256
  crossattn_proj_in_channels: int = 100352
  crossattn_emb_channels: int = 1024
  text_tokens_per_view: int = 512
  n_cameras_emb: int = rig.VIEW_ROWS
  cross_view_attn_map: tuple[tuple[int, ...], ...] = rig.AGIBOT.cross_view_attn_map()
  state_t: int = 24
  max_img_h: int = 240
  max_img_w: int = 240
  max_frames: int = 128
  rope_h_extrapolation_ratio: float = 3.0
  rope_w_extrapolation_ratio: float = 3.0
  rope_t_extrapolation_ratio: float = 1.0
  timestep_scale: float = 0.001
  vace_block_every_n: int = 7
  num_max_modalities: int = 1
  param_dtype: str = "float32"
  dtype: str = "bfloat16"
  attention: str = "auto"
  remat_policy: str = "none"
  offload_block_inputs: bool = False
  remat_sublayers: bool = False
  mlp_chunks: int = 1
  remat_segment_blocks: int = 1
  context_local_attention: bool = True

  def __post_init__(self):
    if self.patch_temporal != 1:
      raise ValueError("only patch_temporal=1 is supported (the reference's setting)")
    if self.model_channels % self.num_heads:
      raise ValueError(f"model_channels {self.model_channels} not divisible by num_heads {self.num_heads}")
    remat.policy(self.remat_policy, self.offload_block_inputs)  # rejects unknown names and bad combinations
    if self.remat_sublayers and self.remat_policy == "none":
      raise ValueError("remat_sublayers needs a remat_policy other than 'none'")
    if self.mlp_chunks < 1:
      raise ValueError(f"mlp_chunks must be >= 1, got {self.mlp_chunks}")
    if self.remat_segment_blocks < 1:
      raise ValueError(f"remat_segment_blocks must be >= 1, got {self.remat_segment_blocks}")
    if self.remat_segment_blocks > 1 and self.remat_policy == "none":
      raise ValueError("remat_segment_blocks needs a remat_policy other than 'none'")

  @property
  def head_dim(self) -> int:
    return self.model_channels // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    return int(self.model_channels * self.mlp_ratio)

  @property
  def control_layers(self) -> tuple[int, ...]:
    """Main blocks after which a control hint is added ("spaced" strategy)."""
    return tuple(range(0, self.num_blocks, self.vace_block_every_n))

  @property
  def num_control_blocks(self) -> int:
    return len(self.control_layers)

  @property
  def patch_features(self) -> int:
    """Input features per patch: latent + condition mask (+ padding mask) channels × p²."""
    channels = self.in_channels + 1 + int(self.concat_padding_mask)
    return channels * self.patch_spatial**2

  @property
  def rope_dims(self) -> tuple[int, int]:
    """(dim_h (= dim_w), dim_t) of the head dimension split of 3D RoPE."""
    dim_h = self.head_dim // 6 * 2
    return dim_h, self.head_dim - 2 * dim_h

  @classmethod
  def from_config(cls, net: Mapping[str, Any]) -> "DiTConfig":
    """From `config.model.net` (configs/base.py); unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(net)
    unknown = set(values) - fields
    if unknown:
      raise KeyError(f"unknown model.net keys: {sorted(unknown)}")
    values["cross_view_attn_map"] = tuple(tuple(v) for v in values.get("cross_view_attn_map", cls.cross_view_attn_map))
    return cls(**values)

  @classmethod
  def from_reference_kwargs(cls, kwargs: Mapping[str, Any], **overrides) -> "DiTConfig":
    """From the reference constructor kwargs (e.g. a golden file's JSON `constructor_kwargs`).

    Options this port implements only in the Agibot setting must have that value; anything else is
    an error naming the option rather than a silently different network.
    """
    unsupported = {k: kwargs[k] for k, v in REFERENCE_FIXED_OPTIONS.items() if k in kwargs and kwargs[k] != v}
    if unsupported:
      raise ValueError(f"unsupported reference options {unsupported}; this port implements "
                       f"{ {k: REFERENCE_FIXED_OPTIONS[k] for k in unsupported} }")
    ids = kwargs.get("camera_to_view_id", dict(zip(rig.AGIBOT.names, rig.AGIBOT.view_ids)))
    n_cam = int(kwargs.get("n_cameras_emb", rig.VIEW_ROWS))
    nbr_map = [()] * n_cam
    for cam, nbrs in kwargs.get("cross_view_attn_map_str", {}).items():
      nbr_map[ids[cam]] = tuple(ids[n] for n in nbrs)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in kwargs.items() if k in fields}
    values["cross_view_attn_map"] = tuple(nbr_map)
    values.update(overrides)
    return cls(**values)


# ----------------------------------------------------------------------------------------------
# Small building blocks


def _init(std: float, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.truncated_normal(std, lower=-3.0, upper=3.0), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def dense(features, name, *, in_dim, axes, cfg, dtype=None, use_bias=False, zero_init=False):
  """Bias-free (by default) linear with the reference's truncated-normal init (§8)."""
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=jnp.dtype(dtype or cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=_zeros(axes) if zero_init else _init(1.0 / math.sqrt(in_dim), axes),
      bias_init=_zeros((axes[-1],)),
      name=name,
  )


class RMSNorm(nn.Module):
  """x·rsqrt(mean(x²) + eps)·scale over the last axis, computed in float32 (`rms_norm`)."""

  param_dtype: str = "float32"
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x, rope: tuple[Array, Array] | None = None):
    """`rope` = (cos_LK, sin_LK) rotates the result (RoPE; x is (N, L, H, K)) in the same pass."""
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                       (x.shape[-1],), jnp.dtype(self.param_dtype))
    return rms_norm(x, scale, rope, self.eps)


def _rotate_half(a):
  half = a.shape[-1] // 2
  return jnp.concatenate([-a[..., half:], a[..., :half]], axis=-1)


def _rope_rotate(a_NLHK, rope, transpose: bool = False):
  """R·a (rotate-half RoPE with rope = (cos_LK, sin_LK)), or Rᵀ·a; identity when rope is None."""
  if rope is None:
    return a_NLHK
  cos, sin = (t[None, :, None, :] for t in rope)
  if transpose:
    return a_NLHK * cos - _rotate_half(a_NLHK * sin)
  return a_NLHK * cos + _rotate_half(a_NLHK) * sin


def _rms_norm_parts(x, scale, rope, eps):
  """float32 (x, r, R·(x·scale)): r = rsqrt(mean(x²) + eps) per row, R the rotate-half RoPE rotation or 1."""
  xf = x.astype(F32)
  r = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return xf, r, _rope_rotate(xf * scale.astype(F32), rope)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def rms_norm(x: Array, scale_K: Array, rope: tuple[Array, Array] | None, eps: float) -> Array:
  """RMSNorm over the last axis, then RoPE if `rope` = (cos_LK, sin_LK): r·R(x·scale) in float32, rounded once.

  qk-norm then RoPE (spec §5.2-5.3). The per-row factor r commutes with the rotation R, so the forward reads x
  twice (the row statistic, then one elementwise pass) and never stores the normalised float32 tensor that XLA
  kept between separate norm and RoPE fusions. The backward is written out for the same reason (it recomputes r
  and reads only x and the cotangent), and so that XLA lays the scale gradient's column sum out without
  transposing the activations. cos/sin are constants (no cotangent).
  """
  _, r, rotated = _rms_norm_parts(x, scale_K, rope, eps)
  return (rotated * r).astype(x.dtype)


def _rms_norm_fwd(x, scale, rope, eps):
  return rms_norm(x, scale, rope, eps), (x, scale, rope)


def _rms_norm_bwd(eps, res, g):
  x, scale, rope = res
  xf, r, _ = _rms_norm_parts(x, scale, rope, eps)
  h = _rope_rotate(g.astype(F32), rope, transpose=True)  # Rᵀg
  w = scale.astype(F32)
  # out = r·R(w·x) with r = (mean(x²) + eps)^(-1/2):  dx = r·w·Rᵀg − (r³/K)·Σ(Rᵀg·w·x)·x
  dr_term = jnp.sum(h * w * xf, axis=-1, keepdims=True) * (r**3 / x.shape[-1])
  dx = r * w * h - dr_term * xf
  dscale = jnp.sum(r * h * xf, axis=tuple(range(x.ndim - 1)))  # no reshape: that would merge a sharded axis
  return dx.astype(x.dtype), dscale.astype(scale.dtype), None


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def layer_norm(x, eps: float = 1e-6):
  """Non-affine LayerNorm (biased variance), float32 statistics, output in x's dtype."""
  xf = x.astype(F32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class AffineLayerNorm(nn.Module):
  param_dtype: str = "float32"
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    pd = jnp.dtype(self.param_dtype)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (d,), pd)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), (d,), pd)
    y = layer_norm(x.astype(F32), self.eps) * scale.astype(F32) + bias.astype(F32)
    return y.astype(x.dtype)


def gelu(x):
  """Exact GELU, x·(1 + erf(x/√2))/2 in float32, result in x's dtype: PyTorch's nn.GELU() formula and precision.

  Not jax.nn.gelu(approximate=False): its erfc form runs in x's dtype (bf16 here) and its float32 erfc costs
  ~2.7× the memory-bound time at the MLP's width (BENCHMARKS.md, issue 8).
  """
  xf = x.astype(F32)
  return (0.5 * xf * (1.0 + jax.lax.erf(xf * F32(1 / math.sqrt(2))))).astype(x.dtype)


def chunked_mlp(h_BVLD: Array, w1_DF: Array, w2_FD: Array, chunks: int) -> Array:
  """gelu(h·w1)·w2 over `chunks` interleaved token slices, one at a time, each recomputed in the backward.

  The (B, V, L, 4D) hidden activations, the largest temporaries of a block (1.4 GiB per copy at 432x768, 4 GiB at
  720p), then exist one slice at a time, forward and backward; the price is the slice's first matmul once more in
  the backward. Token l goes to slice l mod `chunks`, so a slice keeps the token axis's sharding. Each token's
  row is computed as by the unchunked layers (same dtypes, same contraction).
  """
  b, v, l, d = h_BVLD.shape
  if l % chunks:
    raise ValueError(f"model.net.mlp_chunks={chunks} does not divide the {l} tokens per view")
  slices_NBVSD = jnp.moveaxis(h_BVLD.reshape(b, v, l // chunks, chunks, d), 3, 0)
  contract = (((4 - 1,), (0,)), ((), ()))

  @jax.checkpoint
  def one(x_BVSD):
    hidden = jax.lax.dot_general(x_BVSD, w1_DF.astype(x_BVSD.dtype), contract)
    return jax.lax.dot_general(gelu(hidden), w2_FD.astype(x_BVSD.dtype), contract)

  return jnp.moveaxis(jax.lax.map(one, slices_NBVSD), 0, 3).reshape(b, v, l, w2_FD.shape[-1])


def modulate(x, shift, scale):
  return x * (1 + scale) + shift


def timestep_sinusoid(t_B: Array, dim: int) -> Array:
  """[cos | sin] embedding of τ (B,) -> (B, dim), float32 (spec §5.1)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=F32) / half)
  angles = t_B.astype(F32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def rope_angles(cfg: DiTConfig, spatial_range, temporal_range, t: int, h: int, w: int) -> Array:
  """Angles (t·h·w, head_dim) of 3D RoPE for one view (t-major), float32 (spec §5.2).

  `spatial_range`/`temporal_range` are the checkpoint's exponent buffers (bf16-rounded in released
  checkpoints), so the frequencies match whichever weights are loaded.
  """
  if h > cfg.max_img_h // cfg.patch_spatial or w > cfg.max_img_w // cfg.patch_spatial or t > cfg.max_frames:
    raise ValueError(f"token grid {t}x{h}x{w} exceeds the RoPE tables "
                     f"({cfg.max_frames}x{cfg.max_img_h // cfg.patch_spatial}x{cfg.max_img_w // cfg.patch_spatial})")
  dim_h, dim_t = cfg.rope_dims
  theta = lambda ratio, dim: F32(10000.0 * ratio ** (dim / (dim - 2)))
  freq_h = 1.0 / theta(cfg.rope_h_extrapolation_ratio, dim_h) ** spatial_range.astype(F32)
  freq_w = 1.0 / theta(cfg.rope_w_extrapolation_ratio, dim_h) ** spatial_range.astype(F32)
  freq_t = 1.0 / theta(cfg.rope_t_extrapolation_ratio, dim_t) ** temporal_range.astype(F32)
  ang_t = jnp.arange(t, dtype=F32)[:, None] * freq_t
  ang_h = jnp.arange(h, dtype=F32)[:, None] * freq_h
  ang_w = jnp.arange(w, dtype=F32)[:, None] * freq_w
  grid = jnp.concatenate([
      jnp.broadcast_to(ang_t[:, None, None, :], (t, h, w, ang_t.shape[-1])),
      jnp.broadcast_to(ang_h[None, :, None, :], (t, h, w, ang_h.shape[-1])),
      jnp.broadcast_to(ang_w[None, None, :, :], (t, h, w, ang_w.shape[-1])),
  ], axis=-1).reshape(t * h * w, -1)
  return jnp.concatenate([grid, grid], axis=-1)


def condition_mask(num_cond_frames_B: Array, num_views: int, frames_per_view: int, height: int,
                   width: int) -> Array:
  """The `condition_mask_BTHW1` input: float32 (B, V·T, H, W, 1), 1 on latent frames [0, n_b) of every view."""
  frame_in_view = jnp.arange(num_views * frames_per_view) % frames_per_view
  on_BF = frame_in_view[None, :] < jnp.asarray(num_cond_frames_B)[:, None]
  mask = on_BF.astype(F32)[:, :, None, None, None]
  return jnp.broadcast_to(mask, mask.shape[:2] + (height, width, 1))


def patchify(x_BTHWC: Array, p: int) -> Array:
  """(B, T, H, W, C) -> (B, T, H/p, W/p, C·p·p), feature index c·p² + m·p + n (channel-major)."""
  b, t, h, w, c = x_BTHWC.shape
  x = x_BTHWC.reshape(b, t, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 2, 4, 6, 3, 5).reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(y_BTHWF: Array, p: int, c: int) -> Array:
  """(B, T, H', W', p·p·C) with feature index p1·p·C + p2·C + c -> (B, T, H'p, W'p, C)."""
  b, t, h, w, _ = y_BTHWF.shape
  y = y_BTHWF.reshape(b, t, h, w, p, p, c)
  return y.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h * p, w * p, c)


def resize_nearest(mask_BHW: Array, h: int, w: int) -> Array:
  """torch `interpolate(mode="nearest")`: source index floor(dst · in/out)."""
  in_h, in_w = mask_BHW.shape[-2:]
  rows = jnp.minimum(jnp.floor(jnp.arange(h, dtype=F32) * F32(in_h / h)).astype(jnp.int32), in_h - 1)
  cols = jnp.minimum(jnp.floor(jnp.arange(w, dtype=F32) * F32(in_w / w)).astype(jnp.int32), in_w - 1)
  return mask_BHW[:, rows][:, :, cols]


def cross_view_neighbors(cfg: DiTConfig, view_ids_BV: Array) -> tuple[Array, Array]:
  """Positions of each view's neighbours in the sample, and how many are present.

  Neighbours come from `cross_view_attn_map` by view id; a neighbour missing from the sample gets
  position −1. Positions are sorted descending so that present neighbours form a prefix (the
  reference's order), which lets attention mask missing ones by a key length.
  Returns (gather positions (B, V, K) int32 with missing ones clamped to 0, present count (B, V)); K is at least 1,
  so a rig whose cameras have no neighbours (one camera) attends to one absent slot, which gives exactly 0.
  """
  k = max(1, *(len(n) for n in cfg.cross_view_attn_map))
  table = jnp.array([tuple(n) + (-1,) * (k - len(n)) for n in cfg.cross_view_attn_map], jnp.int32)
  nbr_ids_BVK = table[view_ids_BV]
  match_BVKV = (nbr_ids_BVK[..., None] == view_ids_BV[:, None, None, :]) & (nbr_ids_BVK[..., None] >= 0)
  pos_BVK = jnp.where(match_BVKV.any(-1), jnp.argmax(match_BVKV, axis=-1), -1).astype(jnp.int32)
  pos_BVK = -jnp.sort(-pos_BVK, axis=-1)
  return jnp.maximum(pos_BVK, 0), jnp.sum(pos_BVK >= 0, axis=-1).astype(jnp.int32)


def _neighbour_slots(pos_BVN: Array, count_BV: Array, num_views: int) -> Array:
  """Neighbour positions with absent neighbours set to `num_views` (out of range: a gather fills zeros)."""
  present_BVN = jnp.arange(pos_BVN.shape[-1]) < count_BV[..., None]
  return jnp.where(present_BVN, pos_BVN, num_views)


def _take(a, indices, axis):
  """Per-sample `take` along `axis` (of the sample) with out-of-range indices giving zeros."""
  return jax.vmap(lambda a1, i1: jnp.take(a1, i1, axis=axis, mode="fill", fill_value=0))(a, indices)


@jax.custom_vjp
def neighbour_frames(a_BVTSX: Array, pos_BVN: Array, count_BV: Array) -> Array:
  """Each view's neighbours' tokens per frame: (B, V, T, S, …) -> (B·V, T, N·S, …).

  Slot n of view v holds view pos[v, n] where n < count[v]; absent neighbours (n ≥ count) are zeros, which
  attention masks by key length. A gather reads each kept slot once; its transpose is another gather (each
  view collects the slots that read it), not a scatter-add, nor a one-hot sum that reads every view for every
  slot (BENCHMARKS.md, issue 8).
  """
  b, v, t, s = a_BVTSX.shape[:4]
  picked_BVNTSX = _take(a_BVTSX, _neighbour_slots(pos_BVN, count_BV, v), axis=0)
  return jnp.moveaxis(picked_BVNTSX, 2, 3).reshape(b * v, t, -1, *a_BVTSX.shape[4:])


def _neighbour_frames_fwd(a_BVTSX, pos_BVN, count_BV):
  return neighbour_frames(a_BVTSX, pos_BVN, count_BV), (pos_BVN, count_BV)


def _neighbour_frames_bwd(res, g_NTKX):
  pos_BVN, count_BV = res
  b, v, n = pos_BVN.shape
  g_BVTNSX = g_NTKX.reshape(b, v, g_NTKX.shape[1], n, -1, *g_NTKX.shape[3:])
  # slot_BUW: which slot of view u reads view w (n, i.e. out of range, if none); a view reads another at most once.
  reads_BUNW = _neighbour_slots(pos_BVN, count_BV, v)[..., None] == jnp.arange(v)
  slot_BUW = jnp.where(reads_BUNW.any(axis=2), jnp.argmax(reads_BUNW, axis=2), n)
  da_BWTSX = sum(jnp.moveaxis(_take(g_BVTNSX[:, u], slot_BUW[:, u], axis=1), 2, 1) for u in range(v))
  return da_BWTSX, None, None


neighbour_frames.defvjp(_neighbour_frames_fwd, _neighbour_frames_bwd)


def text_context(cfg: DiTConfig, proj: nn.Module, emb_BMC: Array, keep_BV: Array | None,
                 projected: bool | None, v: int) -> Array:
  """(B, V, 512, crossattn_emb_channels) text context: per-view dropout, then `proj` (crossattn_proj) unless projected.

  A projected input skips the (frozen) projection; a dropped view then gets the projection of a zero row, which is
  what the raw path computes for it, so both inputs give the network the same context.
  """
  b, m, c = emb_BMC.shape
  m_tok = cfg.text_tokens_per_view
  if projected is None:
    if cfg.crossattn_emb_channels == cfg.crossattn_proj_in_channels:
      raise ValueError("crossattn_proj maps C -> C: say whether the text embedding is projected (text_projected)")
    projected = c == cfg.crossattn_emb_channels
  want_c = cfg.crossattn_emb_channels if projected else cfg.crossattn_proj_in_channels
  if m != v * m_tok or c != want_c:
    raise ValueError(f"crossattn_emb is {emb_BMC.shape[1:]} per sample; expected ({v}×{m_tok}, {want_c}) for {v} "
                     f"views of {'projected' if projected else 'raw'} text embeddings")
  keep_BV11 = None if keep_BV is None else jnp.asarray(keep_BV)[:, :, None, None]
  if not projected:
    if keep_BV11 is not None:  # zero the raw embedding of dropped views (spec training.md §3.5)
      emb_BMC = (emb_BMC.reshape(b, v, m_tok, c) * keep_BV11.astype(emb_BMC.dtype)).reshape(b, m, c)
    ctx = nn.gelu(proj(emb_BMC.astype(jnp.dtype(cfg.dtype))), approximate=False)
    return ctx.reshape(b, v, m_tok, cfg.crossattn_emb_channels)
  ctx_BVNC = emb_BMC.reshape(b, v, m_tok, c)
  if keep_BV11 is None:
    return ctx_BVNC
  dropped_D = nn.gelu(proj(jnp.zeros((1, cfg.crossattn_proj_in_channels), jnp.dtype(cfg.dtype))), approximate=False)[0]
  return jnp.where(keep_BV11, ctx_BVNC, dropped_D.astype(ctx_BVNC.dtype))


@struct.dataclass
class BlockContext:
  """Inputs every block shares (computed once per forward)."""

  emb_BD: Array  # RMSNorm(sinusoid(τ)), float32: the adaLN conditioning vector e
  adaln_lora_B3D: Array  # timestep-MLP output a, float32
  view_mod_BV9D: Array  # adaLN view modulation u, float32
  text_ctx_BVMC: Array  # projected text context per view
  rope_cos_LK: Array
  rope_sin_LK: Array
  nbr_pos_BVK: Array  # cross-view neighbour positions
  nbr_count_BV: Array  # present neighbours per view


# ----------------------------------------------------------------------------------------------
# Block


class AdaLNModulation(nn.Module):
  """silu(e) -> D->r -> r->n·D (both bias-free) + a, in float32 (adaLN-LoRA)."""

  cfg: DiTConfig
  chunks: int = 3

  @nn.compact
  def __call__(self, emb_BD, adaln_lora_B3D):
    cfg, d = self.cfg, self.cfg.model_channels
    h = dense(cfg.adaln_lora_dim, "lora_down", in_dim=d, axes=("embed", "lora"), cfg=cfg, dtype=F32)(nn.silu(emb_BD))
    m = dense(self.chunks * d, "lora_up", in_dim=d, axes=("lora", "embed"), cfg=cfg, dtype=F32, zero_init=True)(h)
    return m + adaln_lora_B3D[:, : self.chunks * d]


def kernel_compute_dtype(cfg: DiTConfig, path: tuple[str, ...]):
  """The dtype a block kernel at `path` (in the params tree) is computed in: float32 inside the adaLN modulation MLPs
  (`AdaLNModulation`, named adaln_modulation_*), `cfg.dtype` elsewhere."""
  return F32 if any(name.startswith("adaln_modulation") for name in path) else jnp.dtype(cfg.dtype)


class AttentionProjections(nn.Module):
  """q/k/v/output projections with per-head qk-RMSNorm (spec §5.3); attention itself is outside."""

  cfg: DiTConfig
  context_dim: int
  zero_init_output: bool = False

  def setup(self):
    cfg, d = self.cfg, self.cfg.model_channels
    self.q_proj = dense(d, "q_proj", in_dim=d, axes=("embed", "heads"), cfg=cfg)
    self.k_proj = dense(d, "k_proj", in_dim=self.context_dim, axes=("kv" if self.context_dim != d else "embed", "heads"), cfg=cfg)
    self.v_proj = dense(d, "v_proj", in_dim=self.context_dim, axes=("kv" if self.context_dim != d else "embed", "heads"), cfg=cfg)
    self.output_proj = dense(d, "output_proj", in_dim=d, axes=("heads", "embed"), cfg=cfg, zero_init=self.zero_init_output)
    self.q_norm = RMSNorm(cfg.param_dtype, name="q_norm")
    self.k_norm = RMSNorm(cfg.param_dtype, name="k_norm")

  def _heads(self, x):
    return x.reshape(*x.shape[:-1], self.cfg.num_heads, self.cfg.head_dim)

  def queries(self, x, rope=None):
    """Normalised queries (…, H, hd); `rope` = (cos_LK, sin_LK) rotates them (self-attention only)."""
    return self.q_norm(self._heads(self.q_proj(x)), rope)

  def keys_values(self, ctx, rope=None):
    return self.k_norm(self._heads(self.k_proj(ctx)), rope), self._heads(self.v_proj(ctx))

  def out(self, o):
    return self.output_proj(o.reshape(*o.shape[:-2], self.cfg.model_channels))


def heads_sharded(*arrays):
  """Self-attention operands split over heads on the context axis (the cuDNN kernel accepts batch/head splits only).

  The block's tokens are split over the context axis; this reshards q, k, v (…, H, hd) by heads for the
  attention, Ulysses-style, so each device attends over all tokens for its heads. XLA realises it by gathering
  each projection's input and computing only the device's heads (BENCHMARKS.md, multi-GPU scaling).
  """
  spec = lambda a: ("activation_batch",) + (None,) * (a.ndim - 3) + ("activation_heads", None)
  return tuple(sharding.constrain(a, spec(a)) for a in arrays)


def per_frame_attention(q_NTSHK, k_NTMHK, v_NTMHK, kv_len_NT, *, implementation: str, name: str | None = None):
  """Attention within each frame: queries (N, T, S, H, hd) over keys (N, T, M, H, hd) whose first kv_len are valid.

  Every frame needs kv_len ≥ 1 (an empty softmax is undefined).
  """
  n, t = q_NTSHK.shape[:2]
  flat = lambda a: a.reshape(n * t, *a.shape[2:])
  kv_len = kv_len_NT.reshape(n * t)
  o = dot_product_attention(flat(q_NTSHK), flat(k_NTMHK), flat(v_NTMHK), kv_lengths_B=kv_len,
                            implementation=implementation, name=name)
  return o.reshape(q_NTSHK.shape)


def tokens_sharded(o, b: int, v: int):
  """The attention output (…, H, hd) back to the block's token split: (B, V, L, H, hd)."""
  o = o.reshape(b, v, -1, *o.shape[-2:])
  return sharding.constrain(o, ("activation_batch", "activation_view", "activation_length", None, None))


class Block(nn.Module):
  """One multiview cross block (spec §5.4): self-attn per view, cross-view attn, text attn, MLP."""

  cfg: DiTConfig
  frames_per_view: int
  tokens_per_frame: int

  def context_parallel_attention(self, attend, in_axes, out_axes, q, k, v, *rest):
    """Cross-view or text attention `attend(q, k, v, *rest)` with the block's tokens split over the context axis.

    `model.net.context_local_attention`: False reshards q, k, v by heads (as self-attention does); True runs
    `attend` per device on its tokens (`sharding.context_local`): cross-view attention is per frame and text keys
    are replicated, so nothing moves. Same result either way (tests/test_sharding.py).
    """
    if self.cfg.context_local_attention:
      return sharding.context_local(attend, in_axes, out_axes, q, k, v, *rest)
    return sharding.constrain(attend(*heads_sharded(q, k, v), *rest), out_axes)

  def block(self, x_BVLD: Array, ctx: BlockContext) -> Array:
    cfg = self.cfg
    x_BVLD = remat.block_input(x_BVLD.astype(jnp.dtype(cfg.dtype)))
    x_BVLD = sharding.constrain(x_BVLD, ("activation_batch", "activation_view", "activation_length", "activation_embed"))
    for sublayer in (Block.self_attention, Block.cross_view_attention, Block.text_attention, Block.mlp):
      if cfg.remat_sublayers and not self.is_initializing():
        # CSE prevented: XLA would otherwise merge this recompute into the block's and keep everything again.
        sublayer = nn.remat(sublayer, policy=remat.sublayer_policy())
      x_BVLD = sublayer(self, x_BVLD, ctx)
    return x_BVLD

  def modulation(self, name: str, ctx: BlockContext, first_view_chunk: int) -> list[Array]:
    """[shift, scale, gate] of one adaLN-modulated sub-layer, each (B, V, 1, D): the timestep's + the view's."""
    cfg, d = self.cfg, self.cfg.model_channels
    dtype = jnp.dtype(cfg.dtype)
    m = AdaLNModulation(cfg, name=name)(ctx.emb_BD, ctx.adaln_lora_B3D).astype(dtype)
    u = ctx.view_mod_BV9D.astype(dtype)
    return [m[:, None, None, i * d:(i + 1) * d]
            + u[:, :, None, (first_view_chunk + i) * d:(first_view_chunk + i + 1) * d] for i in range(3)]

  def self_attention(self, x_BVLD: Array, ctx: BlockContext) -> Array:
    """Self-attention, strictly within each view, with 3D RoPE."""
    cfg, (b, v, l, d) = self.cfg, x_BVLD.shape
    shift, scale, gate = self.modulation("adaln_modulation_self_attn", ctx, 0)
    h = modulate(layer_norm(x_BVLD), shift, scale).reshape(b * v, l, d)
    sa = AttentionProjections(cfg, d, name="self_attn")
    rope = (ctx.rope_cos_LK, ctx.rope_sin_LK)
    q = sa.queries(h, rope)
    k, val = sa.keys_values(h, rope)
    o = dot_product_attention(*heads_sharded(q, k, val), implementation=cfg.attention, name=remat.SELF_ATTENTION)
    return x_BVLD + gate * sa.out(tokens_sharded(o, b, v)).reshape(b, v, l, d)

  def cross_view_attention(self, x_BVLD: Array, ctx: BlockContext) -> Array:
    """Each token sees its neighbour views' tokens at the same frame. k/v are projected once per token, then gathered
    into the per-frame layout (B·V, T, K·S, H, hd)."""
    cfg, (b, v, l, d) = self.cfg, x_BVLD.shape
    t, s = self.frames_per_view, self.tokens_per_frame
    y = AffineLayerNorm(cfg.param_dtype, name="layer_norm_cross_view_attn")(x_BVLD)
    cv = AttentionProjections(cfg, d, zero_init_output=True, name="cross_view_attn")
    q_NTSHK = cv.queries(y).reshape(b * v, t, s, cfg.num_heads, cfg.head_dim)
    k, val = cv.keys_values(y)
    if not cfg.context_local_attention:  # select the neighbours after the head reshard, which then moves k/v once
      q_NTSHK, k, val = heads_sharded(q_NTSHK, k, val)
    frames_of = lambda a: neighbour_frames(a.reshape(b, v, t, s, *a.shape[-2:]), ctx.nbr_pos_BVK, ctx.nbr_count_BV)
    # A view without any neighbour present attends to one absent (zero) slot: its output is exactly 0, no mask pass.
    kv_len_NT = jnp.broadcast_to(jnp.maximum(ctx.nbr_count_BV * s, 1).reshape(b * v, 1), (b * v, t))
    frames = ("activation_batch", "activation_length", None, None, None)
    o = self.context_parallel_attention(functools.partial(per_frame_attention, implementation=cfg.attention,
                                                          name=remat.CROSS_VIEW_ATTENTION),
                                        (frames, frames, frames, frames[:2]), frames,
                                        q_NTSHK, frames_of(k), frames_of(val), kv_len_NT)
    return x_BVLD + cv.out(o).reshape(b, v, l, d)

  def text_attention(self, x_BVLD: Array, ctx: BlockContext) -> Array:
    """Text cross-attention, per view, over that view's 512 tokens (padding tokens attended)."""
    cfg, (b, v, l, d) = self.cfg, x_BVLD.shape
    shift, scale, gate = self.modulation("adaln_modulation_cross_attn", ctx, 3)
    h = modulate(layer_norm(x_BVLD), shift, scale).reshape(b * v, l, d)
    ca = AttentionProjections(cfg, cfg.crossattn_emb_channels, name="cross_attn")
    k, val = ca.keys_values(ctx.text_ctx_BVMC.reshape(b * v, -1, cfg.crossattn_emb_channels).astype(jnp.dtype(cfg.dtype)))
    tokens, text = ("activation_batch", "activation_length", None, None), ("activation_batch", None, None, None)
    o = self.context_parallel_attention(functools.partial(dot_product_attention, implementation=cfg.attention,
                                                          name=remat.TEXT_ATTENTION),
                                        (tokens, text, text), tokens, ca.queries(h), k, val)
    return x_BVLD + gate * ca.out(o).reshape(b, v, l, d)

  def mlp(self, x_BVLD: Array, ctx: BlockContext) -> Array:
    """GELU MLP."""
    cfg, d = self.cfg, self.cfg.model_channels
    shift, scale, gate = self.modulation("adaln_modulation_mlp", ctx, 6)
    h = modulate(layer_norm(x_BVLD), shift, scale)
    layer1 = dense(cfg.mlp_hidden, "mlp_layer1", in_dim=d, axes=("embed", "mlp"), cfg=cfg)
    layer2 = dense(d, "mlp_layer2", in_dim=cfg.mlp_hidden, axes=("mlp", "embed"), cfg=cfg)
    if cfg.mlp_chunks == 1 or self.is_initializing():
      h = layer2(gelu(layer1(h)))
    else:  # the same weights, read from this block's parameters
      weights = nn.meta.unbox(self.variables["params"])
      h = chunked_mlp(h, weights["mlp_layer1"]["kernel"], weights["mlp_layer2"]["kernel"], cfg.mlp_chunks)
    return x_BVLD + gate * h


class MainBlock(Block):
  """A main block; after it, hint `hint_index` is added when `has_hint` (scan carries x)."""

  @nn.compact
  def __call__(self, x_BVLD, layer_BI, ctx: BlockContext, hints_KBVLD, scale_B):
    hint_index, has_hint = layer_BI
    x_BVLD = self.block(x_BVLD, ctx)
    hint = jax.lax.dynamic_index_in_dim(hints_KBVLD, hint_index, axis=0, keepdims=False)
    weight = (scale_B * has_hint).astype(x_BVLD.dtype)[:, None, None, None]
    return x_BVLD + hint.astype(x_BVLD.dtype) * weight, None


class ControlBlock(Block):
  """A control (VACE encoder) block: full block math, then `after_proj` gives its hint."""

  @nn.compact
  def __call__(self, c_BVLD, _, ctx: BlockContext):
    c_BVLD = self.block(c_BVLD, ctx)
    d = self.cfg.model_channels
    hint = dense(d, "after_proj", in_dim=d, axes=("embed", "heads"), cfg=self.cfg, use_bias=True, zero_init=True)(c_BVLD)
    return c_BVLD, hint


def _block_policy(cfg: DiTConfig):
  return remat.policy(cfg.remat_policy, cfg.offload_block_inputs)


def _scanned(block_cls, cfg: DiTConfig, length: int, in_axes):
  if cfg.remat_policy != "none":
    block_cls = nn.remat(block_cls, policy=_block_policy(cfg), prevent_cse=False)
  return nn.scan(
      block_cls,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=in_axes,
      length=length,
      metadata_params={nn.PARTITION_NAME: "layers"},
  )


def _main_blocks(cfg: DiTConfig, t: int, s: int, stacked_params, x_BVLD, layers, ctx: BlockContext, hints_KBVLD,
                 scale_B) -> Array:
  """The main blocks over their stacked (num_blocks, …) parameters, as at init but in two parts.

  The blocks up to the first hint (`control_layers[0]`) read frozen weights and the frozen patch embedding only,
  so they run ahead of the layer scan: differentiating the control branch then gives them no backward pass.
  One scan over all blocks would not (its carry is differentiated in every iteration), which costs a whole
  block's backward and recomputation per step.

  What the scan keeps for the backward: each block's input (on the device, or in host memory with
  `offload_block_inputs`), or with `remat_segment_blocks=k` each k-th one: a segment of k blocks is recomputed
  from its input in the backward, keeping its k block inputs meanwhile, so each block runs forward once more.
  Segments save device memory only where the inputs stay on the device: with `offload_block_inputs` the stack is
  in host memory already, and segments raised the step's device need on an H100 (BENCHMARKS.md, "Card table").
  """
  block = MainBlock(cfg, t, s)
  shared = (stacked_params, layers, ctx, hints_KBVLD, scale_B)

  def apply_block(x, i, shared):
    stacked_params, layers, *rest = shared
    p = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), stacked_params)
    return block.apply({"params": p}, x, jax.tree.map(lambda a: a[i], layers), *rest)[0]

  def checkpointed(offload: bool):
    if cfg.remat_policy == "none":
      return apply_block
    return jax.checkpoint(apply_block, policy=remat.policy(cfg.remat_policy, offload), prevent_cse=False)

  def run_blocks(x, ids, shared):  # one segment: a scan over its blocks, each a checkpoint of its own
    return jax.lax.scan(lambda x, i: (checkpointed(False)(x, i, shared), None), x, ids)[0]

  first = cfg.control_layers[0] + 1
  for i in range(first):
    x_BVLD = checkpointed(cfg.offload_block_inputs)(x_BVLD, i, shared)
  k = cfg.remat_segment_blocks
  ids = jnp.arange(first, cfg.num_blocks)
  if k == 1 and not cfg.offload_block_inputs:
    return run_blocks(x_BVLD, ids, shared)
  if k == 1:  # each block's input to the host; the backward recomputes the block from it
    return offload_scan.scan_offloading_inputs(apply_block, x_BVLD, ids, shared)
  whole = len(ids) // k * k
  segments = ids[:whole].reshape(-1, k)
  if cfg.offload_block_inputs:
    x_BVLD = offload_scan.scan_offloading_inputs(run_blocks, x_BVLD, segments, shared)
  else:
    segment = jax.checkpoint(run_blocks, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    x_BVLD = jax.lax.scan(lambda x, seg: (segment(x, seg, shared), None), x_BVLD, segments)[0]
  return run_blocks(x_BVLD, ids[whole:], shared) if whole < len(ids) else x_BVLD


# ----------------------------------------------------------------------------------------------
# The network


class MultiViewControlDiT(nn.Module):
  """`MultiViewCrossControlDiT` of the reference (spec §4)."""

  cfg: DiTConfig

  @nn.compact
  def __call__(
      self,
      x_BTHWC: Array,
      timesteps_B: Array,
      crossattn_emb_BMC: Array,
      latent_control_BTHWC: Array,
      condition_mask_BTHW1: Array,
      view_indices_BT: Array,
      padding_mask_BHW: Array | None = None,
      control_context_scale: float | Array = 1.0,
      text_keep_BV: Array | None = None,
      text_projected: bool | None = None,
  ) -> Array:
    """Velocity prediction (B, V·T, H, W, out_channels), float32.

    Args:
      x_BTHWC: noisy latent, conditioned frames already substituted (V·T frames, view-major).
      timesteps_B: (B,) or (B, 1) time on the 0..1000 scale (multiplied by `timestep_scale`).
      crossattn_emb_BMC: (B, V·512, C) text embeddings, view-major: raw (C = crossattn_proj_in_channels), or
        already projected by this network's `crossattn_proj` (C = crossattn_emb_channels) when `text_projected`.
      latent_control_BTHWC: control latent (≤ in_channels·num_max_modalities channels; zero-padded).
      condition_mask_BTHW1: 1 on conditioned latent frames.
      view_indices_BT: int view id of every latent frame.
      padding_mask_BHW: pixel-space padding mask (default zeros).
      control_context_scale: python float or (B,) weight of every control hint (the control weight; 0 ignores
        the control).
      text_keep_BV: optional bool (B, V), False where a view's text is dropped: its raw embedding becomes zeros
        (spec training.md §3.5), so a projected view becomes the projection of zeros.
      text_projected: whether `crossattn_emb_BMC` is projected; None tells it from its channel count.
    """
    cfg, d, p = self.cfg, self.cfg.model_channels, self.cfg.patch_spatial
    dtype = jnp.dtype(cfg.dtype)
    b, vt, h, w, _ = x_BTHWC.shape
    t = cfg.state_t
    if vt % t:
      raise ValueError(f"{vt} latent frames is not a multiple of state_t={t}")
    v = vt // t
    if not 1 <= v <= cfg.n_cameras_emb:
      raise ValueError(f"{v} views; the network supports 1..{cfg.n_cameras_emb}")
    hp, wp = h // p, w // p
    l = t * hp * wp

    # 1-3. Inputs: control zero-padded to all modality channels; condition mask and padding mask
    # appended to both branches; patchified.
    ctrl_ch = cfg.in_channels * cfg.num_max_modalities
    if latent_control_BTHWC.shape[-1] > ctrl_ch:
      raise ValueError(f"control latent has {latent_control_BTHWC.shape[-1]} channels, at most {ctrl_ch} allowed")
    latent_control_BTHWC = jnp.pad(latent_control_BTHWC, [(0, 0)] * 4 + [(0, ctrl_ch - latent_control_BTHWC.shape[-1])])
    extra = [condition_mask_BTHW1.astype(x_BTHWC.dtype)]
    if cfg.concat_padding_mask:
      if padding_mask_BHW is None:
        padding_mask_BHW = jnp.zeros((b, h * 8, w * 8), x_BTHWC.dtype)
      pm = resize_nearest(padding_mask_BHW.astype(x_BTHWC.dtype), h, w)
      extra.append(jnp.broadcast_to(pm[:, None, :, :, None], (b, vt, h, w, 1)))
    x_in = jnp.concatenate([x_BTHWC] + extra, axis=-1)
    c_in = jnp.concatenate([latent_control_BTHWC.astype(x_BTHWC.dtype)] + extra, axis=-1)
    x_tok = dense(d, "x_embedder", in_dim=cfg.patch_features, axes=("patch", "embed"), cfg=cfg)(
        patchify(x_in.astype(dtype), p)).reshape(b, v, l, d)
    c_tok = dense(d, "control_embedder", in_dim=cfg.patch_features, axes=("patch", "embed"), cfg=cfg)(
        patchify(c_in.astype(dtype), p)).reshape(b, v, l, d)

    # RoPE table of one view (every view uses the same positions).
    dim_h, dim_t = cfg.rope_dims
    rope = RopeBuffers(cfg, name="rope_buffers")(v)
    angles = rope_angles(cfg, rope["dim_spatial_range"], rope["dim_temporal_range"], t, hp, wp)

    # 5. Text projection: 100352 -> 1024, exact GELU; 512 tokens per view.
    proj = dense(cfg.crossattn_emb_channels, "crossattn_proj", in_dim=cfg.crossattn_proj_in_channels,
                 axes=("text_in", "kv"), cfg=cfg, use_bias=True)
    text_ctx = text_context(cfg, proj, crossattn_emb_BMC, text_keep_BV, text_projected, v)

    # 6. Timestep: e = RMSNorm(sinusoid), a = MLP(sinusoid) (float32).
    tau_B = jnp.reshape(timesteps_B, (b, -1))[:, 0].astype(F32) * cfg.timestep_scale
    sinusoid = timestep_sinusoid(tau_B, d)
    adaln_lora = TimestepMLP(cfg, name="t_embedder")(sinusoid)
    emb = RMSNorm(cfg.param_dtype, name="t_embedding_norm")(sinusoid)

    # 7. View modulation u by view id of each view's first frame.
    view_ids_BV = view_indices_BT[:, ::t].astype(jnp.int32)
    view_emb = nn.Embed(cfg.n_cameras_emb, d, param_dtype=jnp.dtype(cfg.param_dtype), dtype=F32,
                        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.05), (None, "embed")),
                        name="adaln_view_embedder")(view_ids_BV)
    view_mod = dense(9 * d, "adaln_view_proj", in_dim=d, axes=("embed", None), cfg=cfg, dtype=F32, use_bias=True,
                     zero_init=True)(view_emb)

    nbr_pos, nbr_count = cross_view_neighbors(cfg, view_ids_BV)
    ctx = BlockContext(emb, adaln_lora, view_mod, text_ctx, jnp.cos(angles), jnp.sin(angles), nbr_pos, nbr_count)
    scale_B = jnp.broadcast_to(jnp.asarray(control_context_scale, F32).reshape(-1), (b,))

    # 8. Control branch: before_proj on the control tokens plus the main tokens, 4 blocks, hints.
    c = dense(d, "control_before_proj", in_dim=d, axes=("embed", "heads"), cfg=cfg, use_bias=True, zero_init=True)(c_tok)
    control = _scanned(ControlBlock, cfg, cfg.num_control_blocks, (0, nn.broadcast))(
        cfg, t, hp * wp, name="control_blocks")
    _, hints_KBVLD = control(c + x_tok, None, ctx)

    # 9. Main branch; hint k is added after main block k·n.
    hint_index = jnp.array([i // cfg.vace_block_every_n for i in range(cfg.num_blocks)], jnp.int32)
    has_hint = jnp.array([i in cfg.control_layers for i in range(cfg.num_blocks)], F32)
    if self.is_initializing():  # creates the stacked (num_blocks, …) parameters
      main = _scanned(MainBlock, cfg, cfg.num_blocks, (0, nn.broadcast, nn.broadcast, nn.broadcast))(
          cfg, t, hp * wp, name="blocks")
      x_tok, _ = main(x_tok, (hint_index, has_hint), ctx, hints_KBVLD, scale_B)
    else:
      x_tok = _main_blocks(cfg, t, hp * wp, nn.unbox(self.variables["params"]["blocks"]), x_tok,
                           (hint_index, has_hint), ctx, hints_KBVLD, scale_B)

    # 10. Final layer (float32) and unpatchify.
    y = FinalLayer(cfg, name="final_layer")(x_tok, emb, adaln_lora)
    return unpatchify(y.reshape(b, vt, hp, wp, -1), p, cfg.out_channels)



class RopeBuffers(nn.Module):
  """The RoPE exponent buffers of the reference, one set per camera count (not trained).

  They are read from the checkpoint rather than recomputed: released checkpoints hold them
  bf16-rounded, and the network uses exactly those frequencies.
  """

  cfg: DiTConfig

  @nn.compact
  def __call__(self, n_cameras: int):
    dim_h, dim_t = self.cfg.rope_dims
    init = lambda n, dim: (lambda key, shape, dtype=F32: jnp.arange(0, dim, 2)[:n].astype(F32) / dim)
    tables = {}
    for k in range(1, self.cfg.n_cameras_emb + 1):
      tables[k] = {
          "dim_spatial_range": self.param(f"n_cameras_{k}_dim_spatial_range", init(dim_h // 2, dim_h), (dim_h // 2,)),
          "dim_temporal_range": self.param(f"n_cameras_{k}_dim_temporal_range", init(dim_t // 2, dim_t), (dim_t // 2,)),
      }
    return jax.tree.map(jax.lax.stop_gradient, tables[n_cameras])


class TimestepMLP(nn.Module):
  """sinusoid -> D -> SiLU -> 3D, bias-free, float32: the adaLN-LoRA term a."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, sinusoid_BD):
    cfg, d = self.cfg, self.cfg.model_channels
    h = nn.silu(dense(d, "linear_1", in_dim=d, axes=("embed", "mlp"), cfg=cfg, dtype=F32)(sinusoid_BD))
    return dense(3 * d, "linear_2", in_dim=d, axes=("mlp", "embed"), cfg=cfg, dtype=F32)(h)


class FinalLayer(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x_BVLD, emb_BD, adaln_lora_B3D):
    cfg, d = self.cfg, self.cfg.model_channels
    m = AdaLNModulation(cfg, chunks=2, name="adaln_modulation")(emb_BD, adaln_lora_B3D)
    shift, scale = m[:, None, None, :d], m[:, None, None, d:]
    h = modulate(layer_norm(x_BVLD.astype(F32)), shift, scale)
    out = cfg.patch_spatial**2 * cfg.out_channels
    return dense(out, "linear", in_dim=d, axes=("embed", None), cfg=cfg, dtype=F32)(h)


def init_params(cfg: DiTConfig, key: jax.Array, *, boxed: bool = False, num_views: int = 3, latent_hw=(16, 16)):
  """Random parameters (the reference's init, §8). `boxed` keeps the logical-axis boxes (`nn.Partitioned`)."""
  inputs = example_inputs(cfg, min(num_views, cfg.n_cameras_emb), latent_hw)
  params = MultiViewControlDiT(cfg).init(key, *inputs)["params"]
  return params if boxed else nn.unbox(params)


def abstract_params(cfg: DiTConfig, *, boxed: bool = False):
  """Parameter tree of `jax.ShapeDtypeStruct`; nothing is allocated (`jax.eval_shape` traces `init`)."""
  return jax.eval_shape(lambda k: init_params(cfg, k, boxed=boxed), jax.random.key(0))


def example_inputs(cfg: DiTConfig, num_views: int = 3, latent_hw=(16, 16), batch: int = 1, abstract: bool = False):
  """Positional inputs of the right shapes (zeros, or ShapeDtypeStructs when `abstract`)."""
  h, w = latent_hw
  vt = num_views * cfg.state_t
  shapes = [
      ((batch, vt, h, w, cfg.in_channels), F32),
      ((batch,), F32),
      ((batch, num_views * cfg.text_tokens_per_view, cfg.crossattn_proj_in_channels), F32),
      ((batch, vt, h, w, cfg.in_channels), F32),
      ((batch, vt, h, w, 1), F32),
      ((batch, vt), jnp.int32),
  ]
  if abstract:
    out = [jax.ShapeDtypeStruct(s, dt) for s, dt in shapes]
  else:
    out = [jnp.zeros(s, dt) for s, dt in shapes]
    out[5] = jnp.repeat(jnp.arange(num_views, dtype=jnp.int32), cfg.state_t)[None].repeat(batch, 0)
  return out
