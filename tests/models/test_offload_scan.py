"""agibot_jax/models/offload_scan.py: the same values and gradients as `jax.lax.scan` under jax.grad, for the carry
and for each differentiated constant, whichever constants are differentiated; inputs stacked in host memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from agibot_jax.models import offload_scan


def step(x, i, consts):
  w_LDD, bias_D, scale = consts  # stacked weights (read by index, as the DiT's blocks are), a shared bias, a scalar
  return x + scale * jnp.tanh(x @ w_LDD[i] + bias_D)


def scanned(x, consts, ids):
  return jax.lax.scan(lambda x, i: (step(x, i, consts), None), x, ids)[0]


def offloaded(x, consts, ids):
  return offload_scan.scan_offloading_inputs(step, x, ids, consts)


@pytest.fixture(scope="module")
def args():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
  consts = (jnp.asarray(0.3 * rng.standard_normal((6, 8, 8)), jnp.float32),
            jnp.asarray(rng.standard_normal(8), jnp.float32), jnp.float32(0.7))
  return x, consts, jnp.arange(2, 6)  # layers 2..5 of 6, as the main blocks' scan starts after block 0


@pytest.mark.parametrize("argnums", [(0,), (0, 1), (1,)])
def test_values_and_gradients_equal_the_scan(args, argnums):
  x, consts, ids = args
  loss = lambda f: lambda x, consts: jnp.sum(jnp.sin(f(x, consts, ids)))
  want = jax.jit(jax.value_and_grad(loss(scanned), argnums=argnums))(x, consts)
  got = jax.jit(jax.value_and_grad(loss(offloaded), argnums=argnums))(x, consts)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _weight_gradient_matmuls(jaxpr) -> int:
  """dot_generals anywhere in `jaxpr` (scans and custom rules included) that give an (8, 8) weight gradient."""
  return sum(sum(_weight_gradient_matmuls(j) for j in jax_core.jaxprs_in_params(e.params))
             + (e.primitive.name == "dot_general" and e.outvars[0].aval.shape == (8, 8))
             for e in jaxpr.eqns)


def test_constants_not_differentiated_get_no_gradient(args):
  # Frozen weights: with the bias alone differentiated the backward computes no weight gradient at all.
  x, (w, bias, scale), ids = args
  grad_of = lambda argnums: jax.make_jaxpr(jax.grad(
      lambda w, b: jnp.sum(offloaded(x, (w, b, scale), ids)), argnums=argnums))(w, bias).jaxpr
  assert _weight_gradient_matmuls(grad_of(1)) == 0
  assert _weight_gradient_matmuls(grad_of((0, 1))) > 0


def test_inputs_are_kept_in_host_memory(args):
  x, consts, ids = args
  _, residuals = jax.vjp(lambda x: offloaded(x, consts, ids), x)
  stacked = [a for a in jax.tree.leaves(residuals) if a.shape == (len(ids), *x.shape)]
  assert [a.sharding.memory_kind for a in stacked] == ["pinned_host"]
