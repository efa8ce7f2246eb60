"""A scan whose backward reads each iteration's input from pinned host memory (`model.net.offload_block_inputs`).

The main blocks' scan carries the residual stream; under the offloading remat policy the carry is the residual,
which the scan's own differentiation stacks. Here the forward copies each iteration's input to the host as a
per-iteration output, and the backward scan runs in reverse: it fetches an input, recomputes the iteration under
`jax.vjp` (checkpoints inside it, such as sub-layer or per-block ones, apply there) and pulls the cotangent
through. Each iteration runs forward twice, as under full remat. Measured on an H100 (BENCHMARKS.md, "Card table"):
the step's temporaries at 432x768 with sub-layer checkpoints fall by 1.8 GiB against the policy, and XLA's buffer
assignment puts the stacked inputs in host memory (bf16[27,1,3,31104,2048] in memory space S(5), 9.6 GiB of host
temporaries at 432x768), written one iteration at a time.

Gradients: the carry's and each differentiated constant's (summed over iterations); the scanned inputs are
indices (not differentiated), and constants that are not differentiated (frozen weights) get no gradient at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

# step(x, the iteration's slice of xs, consts) -> x
Step = Callable[[jax.Array, Any, Any], jax.Array]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan_offloading_inputs(step: Step, x, xs, consts):
  """x after `step` over the leading axis of `xs` (integer arrays): x <- step(x, xs[i], consts)."""
  x, _ = jax.lax.scan(lambda x, xs_i: (step(x, xs_i, consts), None), x, xs)
  return x


def _is_primal(p) -> bool:
  return isinstance(p, CustomVJPPrimal)


def _fwd(step, x, xs, consts):
  value = lambda tree: jax.tree.map(lambda p: p.value, tree, is_leaf=_is_primal)
  x, xs, perturbed = value(x), value(xs), jax.tree.leaves(consts, is_leaf=_is_primal)
  consts = value(consts)

  def body(x, xs_i):
    return step(x, xs_i, consts), jax.device_put(x, jax.memory.Space.Host)

  y, inputs_host = jax.lax.scan(body, x, xs)
  # Which constants are differentiated, as pytree structure (() yes, None no): residuals hold arrays only.
  return y, (inputs_host, xs, consts, tuple(() if p.perturbed else None for p in perturbed))


def _bwd(step, residuals, g_y):
  inputs_host, xs, consts, marks = residuals
  leaves, treedef = jax.tree.flatten(consts)
  diff = [m is not None for m in marks]
  if isinstance(g_y, SymbolicZero):
    g_y = jnp.zeros(g_y.shape, g_y.dtype)

  def merged(chosen):
    chosen = iter(chosen)
    return treedef.unflatten([next(chosen) if d else a for a, d in zip(leaves, diff)])

  def body(carry, inp):
    g_x, g_consts = carry
    xs_i, x_host = inp
    x = jax.device_put(x_host, jax.memory.Space.Device)
    _, pullback = jax.vjp(lambda x, chosen: step(x, xs_i, merged(chosen)), x,
                          [a for a, d in zip(leaves, diff) if d])
    g_x, g_c = pullback(g_x)
    return (g_x, [a + b for a, b in zip(g_consts, g_c)]), None

  zeros = [jnp.zeros_like(a) for a, d in zip(leaves, diff) if d]
  (g_x, g_consts), _ = jax.lax.scan(body, (g_y, zeros), (xs, inputs_host), reverse=True)
  g_consts = iter(g_consts)
  return g_x, None, treedef.unflatten([next(g_consts) if d else None for d in diff])


scan_offloading_inputs.defvjp(_fwd, _bwd, symbolic_zeros=True)
