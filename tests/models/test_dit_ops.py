"""The DiT's stateless ops against plain math or PyTorch: norms with RoPE, GELU, cross-view gathers, (un)patchify."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.models import dit_config, dit_ops


def test_cross_view_neighbors_missing_views():
  cfg = dit_config.DiTConfig(model_channels=64, num_heads=2, num_blocks=2, vace_block_every_n=1, state_t=1)
  # All three views: each sees the other two, positions sorted descending.
  pos, count = dit_ops.cross_view_neighbors(cfg, jnp.array([[0, 1, 2]]))
  np.testing.assert_array_equal(pos, [[[2, 1], [2, 0], [1, 0]]])
  np.testing.assert_array_equal(count, [[2, 2, 2]])
  # Views 2 and 0 only (in that order): hand_left (id 1) is missing and masked (last, count 1).
  pos, count = dit_ops.cross_view_neighbors(cfg, jnp.array([[2, 0]]))
  np.testing.assert_array_equal(pos, [[[1, 0], [0, 0]]])
  np.testing.assert_array_equal(count, [[1, 1]])


def test_neighbour_frames_and_its_gradient_equal_plain_indexing():
  # Views 0, 1 of sample 0 see two neighbours; sample 1 has a view with one present neighbour and one with none.
  rng = np.random.default_rng(0)
  a_BVTSX = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 2, 3)), jnp.float32)
  pos_BVN = jnp.array([[[2, 1], [2, 0], [1, 0]], [[1, 0], [0, 0], [2, 0]]], jnp.int32)
  count_BV = jnp.array([[2, 2, 2], [1, 0, 2]], jnp.int32)

  def plain(a):  # slot n of view v holds view pos[v, n] where present, zeros where not
    frames = [[jnp.where(n < count_BV[bi, vi], a[bi, pos_BVN[bi, vi, n]], 0.0) for n in range(2)]
              for bi in range(2) for vi in range(3)]
    return jnp.stack([jnp.concatenate(f, axis=1) for f in frames])  # (B·V, T, N·S, …)

  got, got_vjp = jax.vjp(lambda a: dit_ops.neighbour_frames(a, pos_BVN, count_BV), a_BVTSX)
  want, want_vjp = jax.vjp(plain, a_BVTSX)
  assert got.shape == (6, 4, 10, 2, 3)
  np.testing.assert_array_equal(got, want)  # a copy: exact
  cot = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
  np.testing.assert_allclose(got_vjp(cot)[0], want_vjp(cot)[0], rtol=0, atol=1e-6)  # sums of ≤ 2 terms


@pytest.mark.parametrize("with_rope", [True, False])
def test_rms_norm_and_fused_rope_equal_plain_math(with_rope):
  rng = np.random.default_rng(1)
  x_NLHK = jnp.asarray(rng.normal(size=(2, 6, 3, 8)) * 3, jnp.float32)
  scale_K = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
  angles_LK = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  cos, sin = jnp.cos(angles_LK), jnp.sin(angles_LK)
  rope = (cos, sin) if with_rope else None

  def plain(x, scale):  # spec §5.2-5.3: RMSNorm over head_dim, then (self-attention) rotate-half RoPE
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale
    if not with_rope:
      return y
    rotated = jnp.concatenate([-y[..., 4:], y[..., :4]], axis=-1)
    return y * cos[None, :, None] + rotated * sin[None, :, None]

  got, got_vjp = jax.vjp(lambda x, s: dit_ops.rms_norm(x, s, rope, 1e-6), x_NLHK, scale_K)
  want, want_vjp = jax.vjp(plain, x_NLHK, scale_K)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  cot = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
  for g, w in zip(got_vjp(cot), want_vjp(cot)):  # dx and dscale
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Through the module, with bf16 inputs: one rounding of the float32 result.
  bf16 = dit_ops.RMSNorm().apply({"params": {"scale": scale_K}}, x_NLHK.astype(jnp.bfloat16), rope)
  assert bf16.dtype == jnp.bfloat16
  want_bf16 = plain(x_NLHK.astype(jnp.bfloat16).astype(jnp.float32), scale_K)
  np.testing.assert_allclose(bf16.astype(jnp.float32), want_bf16, rtol=2**-8, atol=0)  # ≤ one bf16 rounding


def test_resize_nearest_matches_torch():
  torch = pytest.importorskip("torch", reason="the convert extra (torch) provides the reference resize")
  mask = np.random.default_rng(0).random((2, 50, 70)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(mask)[:, None], size=(8, 9), mode="nearest")[:, 0].numpy()
  np.testing.assert_array_equal(np.asarray(dit_ops.resize_nearest(jnp.asarray(mask), 8, 9)), want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gelu_matches_torch_exact_gelu(dtype):
  """The MLP's GELU is PyTorch's nn.GELU(): float32 erf math, rounded once to the input dtype."""
  torch = pytest.importorskip("torch", reason="the convert extra (torch) provides the reference GELU")
  x = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32) * 4
  x_t = torch.from_numpy(x).to(getattr(torch, dtype))
  ours = np.asarray(dit_ops.gelu(jnp.asarray(x_t.float().numpy(), dtype)).astype(jnp.float32))
  ref = torch.nn.functional.gelu(x_t).float().numpy()
  # Where 1 + erf(x/√2) cancels (x < -3) the two erf implementations differ by ~1e-7 absolute.
  if dtype == "float32":
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=2e-6)
  else:  # one float32 value rounded once: equal bf16 outside that tail but for rare rounding ties
    outside_tail = np.abs(ref) > 1e-3
    assert np.mean(ours[outside_tail] != ref[outside_tail]) < 5e-3  # jax.nn.gelu's bf16 erfc form: 30%
    np.testing.assert_allclose(ours, ref, rtol=2 ** -7, atol=2e-5)


def test_patchify_unpatchify_index_conventions():
  x = jnp.arange(1 * 1 * 4 * 4 * 3, dtype=jnp.float32).reshape(1, 1, 4, 4, 3)
  tok = np.asarray(dit_ops.patchify(x, 2))
  # f = c·4 + m·2 + n for pixel (2i+m, 2j+n), channel c.
  i, j, c, m, n = 1, 0, 2, 1, 1
  assert tok[0, 0, i, j, c * 4 + m * 2 + n] == x[0, 0, 2 * i + m, 2 * j + n, c]
  y = jnp.arange(1 * 1 * 2 * 2 * 12, dtype=jnp.float32).reshape(1, 1, 2, 2, 12)
  img = np.asarray(dit_ops.unpatchify(y, 2, 3))
  p1, p2 = 1, 0  # o = p1·p·C + p2·C + c
  assert img[0, 0, 2 * i + p1, 2 * j + p2, c] == y[0, 0, i, j, p1 * 6 + p2 * 3 + c]


def test_condition_mask_marks_the_first_n_frames_of_every_view():
  m = np.asarray(dit_ops.condition_mask(jnp.array([0, 1, 2]), num_views=3, frames_per_view=3, height=2, width=5))
  assert m.shape == (3, 9, 2, 5, 1) and m.dtype == np.float32
  per_frame = m[..., 0].max(axis=(2, 3))
  assert (m.min(axis=(2, 3, 4)) == per_frame).all()  # constant over H, W
  np.testing.assert_array_equal(per_frame[0], [0] * 9)
  np.testing.assert_array_equal(per_frame[1], [1, 0, 0] * 3)
  np.testing.assert_array_equal(per_frame[2], [1, 1, 0] * 3)
