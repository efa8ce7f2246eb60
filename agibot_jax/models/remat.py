"""Activation-checkpoint (remat) policies of the DiT blocks, by name (`model.net.remat_policy`).

Each block is one `jax.checkpoint` inside the layer scan. What its backward finds instead of
recomputing:

  none                               no checkpointing: every activation is kept (fits only small inputs)
  full                               only the block input; all else recomputed
  save_self_attention                the block input and what the self-attention kernel keeps for its backward
  save_self_and_cross_view_attention the same and what the cross-view attention kernel keeps
  save_attention                     the block input and what all three attention kernels keep

The scan stacks the block inputs (one (B, V, L, D) tensor per layer) on the device, unless
`model.net.offload_block_inputs` (with `full` only) keeps them in pinned host memory between the forward and the
backward: the main blocks' through `offload_scan`, the 4 control blocks' through the policy.
`model.net.remat_segment_blocks` keeps fewer of the main blocks' inputs instead (one per segment of k blocks).

A block's backward first recomputes what its policy did not keep, all of it at once: at 93k tokens every
activation of one block together is several GiB. `model.net.remat_sublayers` gives each of the block's four
sub-layers (self-, cross-view, text attention, MLP) a checkpoint of its own inside the block's, so that the
backward holds one sub-layer's activations at a time (`sublayer_policy`): their linears and norms run once more.

Why the kernel's residuals and not a named output: the cuDNN flash-attention backward needs the
forward's output and its softmax statistics. Saving only the output leaves the statistics to be
recomputed, which re-runs the whole attention forward, so nothing is gained. So each DiT attention
call site names its kernel (`dot_product_attention(name=...)`), and `named_residuals` gives that
name to the kernel's output and to every value it keeps for its backward except its inputs q, k
and v: on the cuDNN path the output and the float32 statistics, checked at trace time, so that a
jax change fails loudly instead of leaving the policies saving nothing. q, k and v are recomputed
from the block input (linears and norms, a small part of the block's cost). The XLA attention path
(CPU) is named the same way, which lets the tests check on CPU what each policy saves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# The block input, tagged so that a policy can offload it rather than have the scan stack it on device.
BLOCK_INPUT = "block_input"

# The DiT's attention call sites.
SELF_ATTENTION = "self_attention"
CROSS_VIEW_ATTENTION = "cross_view_attention"
TEXT_ATTENTION = "text_attention"
ATTENTION = (SELF_ATTENTION, CROSS_VIEW_ATTENTION, TEXT_ATTENTION)

# Which attention kernels' residuals each policy keeps.
SAVED_ATTENTION = {
    "none": (),
    "full": (),
    "save_self_attention": (SELF_ATTENTION,),
    "save_self_and_cross_view_attention": (SELF_ATTENTION, CROSS_VIEW_ATTENTION),
    "save_attention": ATTENTION,
}
POLICIES = tuple(SAVED_ATTENTION)


def block_input(x):
  """Tags the block input (an identity) for the offloading policies."""
  return checkpoint_name(x, BLOCK_INPUT)


def policy(name: str, offload_block_inputs: bool = False):
  """The `jax.checkpoint` policy of `name`; None for "none" (no remat)."""
  if name not in POLICIES:
    raise ValueError(f"remat_policy must be one of {POLICIES}, got {name!r}")
  if offload_block_inputs and name != "full":
    raise ValueError(f"offload_block_inputs keeps only the block inputs, in host memory: it needs remat_policy 'full', "
                     f"got {name!r}")
  if name == "none":
    return None
  saved = SAVED_ATTENTION[name]
  if offload_block_inputs:  # the control blocks' scan; the main blocks' is offload_scan's
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=(BLOCK_INPUT,),
        offload_src="device", offload_dst="pinned_host")
  return jax.checkpoint_policies.save_only_these_names(*saved)  # the scan keeps the block inputs on device


def sublayer_policy():
  """The policy of each sub-layer's own checkpoint inside a block's (`model.net.remat_sublayers`): the attention
  kernels' output and statistics are kept, so the block's backward recomputes a sub-layer's linears and norms but
  never an attention kernel a third time."""
  return jax.checkpoint_policies.save_only_these_names(*ATTENTION)


def named_residuals(kernel: Callable, name: str, expected: Sequence[jax.ShapeDtypeStruct] | None = None) -> Callable:
  """`kernel` with its output and every value it keeps for its backward, other than its own inputs, named `name`.

  The forward runs `jax.vjp` of `kernel` and hands its pullback (a pytree of residuals) to the backward, with
  `checkpoint_name(·, name)` on each non-empty floating residual that is not one of the arguments, and on the
  output: the block after the kernel reads the same saved value, since an output recomputed for it would re-run
  the kernel (cuDNN keeps its output for its backward, so both are one tensor). A policy that saves `name` keeps
  exactly these. `expected`: their shapes and dtypes (any order), checked at trace time, so that a kernel whose
  residuals changed fails here instead of being recomputed unseen.
  """
  if name not in ATTENTION:
    raise ValueError(f"attention name must be one of {ATTENTION}, got {name!r}")

  @jax.custom_vjp
  def run(*args):
    return kernel(*args)

  def forward(*args):
    out, pullback = jax.vjp(kernel, *args)
    inputs = jax.tree.leaves(args)
    named = {}  # id -> the named value: one name (one saved tensor) per value

    def tag(x):
      if id(x) not in named:
        named[id(x)] = checkpoint_name(x, name)
      return named[id(x)]

    out = jax.tree.map(tag, out)
    leaves, treedef = jax.tree.flatten(pullback)
    leaves = [tag(leaf) if (jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size > 0
                            and not any(leaf is a for a in inputs)) else leaf for leaf in leaves]
    if expected is not None:
      _check(name, list(named.values()), expected)
    return out, jax.tree.unflatten(treedef, leaves)

  run.defvjp(forward, lambda pullback, g: pullback(g))
  return run


def _check(name: str, residuals, expected: Sequence[jax.ShapeDtypeStruct]) -> None:
  describe = lambda arrays: sorted(f"{jnp.dtype(a.dtype).name}{list(a.shape)}" for a in arrays)
  got, want = describe(residuals), describe(expected)
  if got != want:
    policies = [p for p, names in SAVED_ATTENTION.items() if name in names]
    raise RuntimeError(
        f"{name}: the attention kernel's output and residuals are {got}, expected {want}; remat policies "
        f"{policies} would not save what its backward needs (did jax change its cuDNN attention?)")
