"""Stateless building blocks of the multiview control DiT (`dit.py` composes them into blocks and the network).

Initialisers and small layers (dense, RMSNorm, affine LayerNorm), the fused qk-RMSNorm + RoPE and the cross-view
neighbour gather (both with written backwards), GELU and the chunked MLP, timestep and RoPE tables, the condition
mask, (un)patchify and the padding-mask resize.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from agibot_jax.models.dit_config import DiTConfig

Array = jax.Array
F32 = jnp.float32


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


def interleaved_slices(a: Array, axis: int, c: int) -> Array:
  """`a` as c slices along a new leading axis: element i of `axis` goes to slice i mod c (the caller checks that c
  divides its length). Interleaved, each slice spans the axis as the whole does, so its sharding is kept."""
  n = a.shape[axis]
  return jnp.moveaxis(a.reshape(*a.shape[:axis], n // c, c, *a.shape[axis + 1:]), axis + 1, 0)


def joined_slices(slices: Array, axis: int) -> Array:
  """The inverse of `interleaved_slices`: (c, …, n/c, …) back to (…, n, …)."""
  a = jnp.moveaxis(slices, 0, axis + 1)
  return a.reshape(*a.shape[:axis], -1, *a.shape[axis + 2:])


def chunked_mlp(h_BVLD: Array, w1_DF: Array, w2_FD: Array, chunks: int) -> Array:
  """gelu(h·w1)·w2 over `chunks` interleaved token slices, one at a time, each recomputed in the backward.

  The (B, V, L, 4D) hidden activations, the largest temporaries of a block (1.4 GiB per copy at 432x768, 4 GiB at
  720p), then exist one slice at a time, forward and backward; the price is the slice's first matmul once more in
  the backward. Token l goes to slice l mod `chunks`, so a slice keeps the token axis's sharding. Each token's
  row is computed as by the unchunked layers (same dtypes, same contraction).
  """
  l = h_BVLD.shape[2]
  if l % chunks:
    raise ValueError(f"model.net.mlp_chunks={chunks} does not divide the {l} tokens per view")
  contract = (((4 - 1,), (0,)), ((), ()))

  @jax.checkpoint
  def one(x_BVSD):
    hidden = jax.lax.dot_general(x_BVSD, w1_DF.astype(x_BVSD.dtype), contract)
    return jax.lax.dot_general(gelu(hidden), w2_FD.astype(x_BVSD.dtype), contract)

  return joined_slices(jax.lax.map(one, interleaved_slices(h_BVLD, 2, chunks)), 2)


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
