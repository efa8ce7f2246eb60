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

The hyperparameters are `dit_config.DiTConfig`; the stateless building blocks are in `dit_ops.py`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from agibot_jax import sharding
from agibot_jax.models import offload_scan, remat
from agibot_jax.models.attention import dot_product_attention
from agibot_jax.models.dit_config import DiTConfig
from agibot_jax.models.dit_ops import (AffineLayerNorm, RMSNorm, chunked_mlp, cross_view_neighbors, dense, gelu,
                                       interleaved_slices, joined_slices, layer_norm, modulate, neighbour_frames,
                                       patchify, resize_nearest, rope_angles, timestep_sinusoid, unpatchify)

Array = jax.Array
F32 = jnp.float32


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
    """Each token sees its neighbour views' tokens at the same frame (no RoPE, no modulation).

    Frames are independent here, so `model.net.cross_view_chunks` = c > 1 runs the sub-layer over c interleaved
    frame slices (frame f in slice f mod c), one at a time, each recomputed in the backward: its projections, the
    gathered neighbour keys/values and their gradients then exist for T/c frames at a time. Same computation per
    frame; the price is the sub-layer's forward once more.
    """
    cfg, (b, v, l, d) = self.cfg, x_BVLD.shape
    t, s, c = self.frames_per_view, self.tokens_per_frame, cfg.cross_view_chunks
    x_BVTSD = x_BVLD.reshape(b, v, t, s, d)
    if c == 1 or self.is_initializing():
      return x_BVLD + self.cross_view_frames(x_BVTSD, ctx).reshape(b, v, l, d)
    if t % c:
      raise ValueError(f"model.net.cross_view_chunks={c} does not divide the {t} latent frames per view")
    one_slice = lambda block, carry, x, ctx: (carry, block.cross_view_frames(x, ctx))
    over_slices = nn.scan(nn.remat(one_slice, prevent_cse=False), variable_broadcast="params",
                          split_rngs={"params": False}, in_axes=(0, nn.broadcast), length=c)
    _, out_NBVTSD = over_slices(self, None, interleaved_slices(x_BVTSD, 2, c), ctx)
    return x_BVLD + joined_slices(out_NBVTSD, 2).reshape(b, v, l, d)

  def cross_view_frames(self, x_BVTSD: Array, ctx: BlockContext) -> Array:
    """The cross-view sub-layer's update of T frames (B, V, T, S, D): k/v are projected once per token, then gathered
    into the per-frame layout (B·V, T, K·S, H, hd)."""
    cfg, (b, v, t, s, d) = self.cfg, x_BVTSD.shape
    y = AffineLayerNorm(cfg.param_dtype, name="layer_norm_cross_view_attn")(x_BVTSD.reshape(b, v, t * s, d))
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
    return cv.out(o).reshape(b, v, t, s, d)

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
