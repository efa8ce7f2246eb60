"""Activation-checkpoint (remat) policies of the DiT blocks, by name (`model.net.remat_policy`).

Each block is one `jax.checkpoint` inside the layer scan. What its backward finds instead of
recomputing:

  none                               no checkpointing: every activation is kept (fits only small inputs)
  full                               only the block input; all else recomputed
  save_self_attention                the block input and the self-attention kernel's outputs
  save_self_and_cross_view_attention the same and the cross-view attention kernel's outputs
  save_attention                     the block input and all three attention kernels' outputs

The scan stacks the block inputs (one (B, V, L, D) tensor per layer) on the device, unless
`model.net.offload_block_inputs` moves them to pinned host memory (needed for 720p on one GPU;
the copies overlap the step only in part, BENCHMARKS.md).

Why the kernel and not a named output: the cuDNN flash-attention backward needs the forward's
output and its softmax statistics. Saving only the (named) output leaves the statistics to be
recomputed, which re-runs the whole attention forward, so nothing is gained. The policies here
save both outputs of the cuDNN forward primitive; q, k and v are recomputed from the block input
(linears and norms, a small part of the block's cost). On the XLA attention path (CPU) no kernel
primitive exists and these policies recompute attention like `full`.
"""

from __future__ import annotations

import jax
from jax.ad_checkpoint import checkpoint_name

# The block input, tagged so that a policy can offload it rather than have the scan stack it on device.
BLOCK_INPUT = "block_input"

# Which attention kernels each policy keeps.
SAVED_ATTENTION = {
    "none": (),
    "full": (),
    "save_self_attention": ("self",),
    "save_self_and_cross_view_attention": ("self", "cross_view"),
    "save_attention": ("self", "cross_view", "text"),
}
POLICIES = tuple(SAVED_ATTENTION)


def _cudnn_attention_forward():
  """The cuDNN attention forward primitive of jax.nn.dot_product_attention (None where jax lacks it)."""
  try:
    from jax._src.cudnn import fused_attention_stablehlo as fa
  except ImportError:  # pragma: no cover - jax builds without the cuDNN module
    return None
  return getattr(fa, "_dot_product_attention_fwd_p_wrapper", None)


def attention_kernel_kind(prim, *avals, text_tokens: int = 512) -> str | None:
  """Which attention ("self", "cross_view" or "text") if `prim` is the cuDNN attention forward, else None.

  Told apart by shapes: self-attention runs over the same tokens (q and k both (B·V, L, H, K)), text
  attention over `text_tokens` keys, cross-view attention over the neighbours' frame tokens.
  """
  kernel = _cudnn_attention_forward()
  if kernel is None or prim is not kernel:
    return None
  query, key = avals[0], avals[1]
  if query.shape == key.shape:
    return "self"
  return "text" if key.shape[1] == text_tokens else "cross_view"


def block_input(x):
  """Tags the block input (an identity) for the offloading policies."""
  return checkpoint_name(x, BLOCK_INPUT)


def policy(name: str, offload_block_inputs: bool = False, text_tokens: int = 512):
  """The `jax.checkpoint` policy of `name`; None for "none" (no remat). `text_tokens`: keys per text attention."""
  if name not in POLICIES:
    raise ValueError(f"remat_policy must be one of {POLICIES}, got {name!r}")
  if name == "none":
    if offload_block_inputs:
      raise ValueError("offload_block_inputs needs a remat_policy other than 'none'")
    return None
  if offload_block_inputs:
    inputs = jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=(BLOCK_INPUT,),
        offload_src="device", offload_dst="pinned_host")
  else:
    inputs = jax.checkpoint_policies.nothing_saveable  # the scan keeps the block inputs on device
  saved = SAVED_ATTENTION[name]
  if not saved:
    return inputs

  def save_kernels(prim, *avals, **params):
    if attention_kernel_kind(prim, *avals, text_tokens=text_tokens) in saved:
      return True
    return inputs(prim, *avals, **params)

  return save_kernels
