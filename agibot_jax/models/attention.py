"""One attention entry point for every network in the package.

All attention calls (DiT self/cross-view/text attention, VAE mid-block attention, the
text encoder) go through `dot_product_attention`, so the kernel is chosen in one place:

- "xla":   plain softmax(q kᵀ·scale) v with float32 logits and HIGHEST matmul precision;
           the exact path used for parity against the PyTorch reference.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention on
           Hopper); needs bf16/fp16 inputs, so q, k, v are cast to `jnp.bfloat16`.
- "auto":  "cudnn" on GPU, else "xla".

A `name` (a DiT call site) names the kernel's output and what it keeps for its backward, for the
remat policies (agibot_jax/models/remat.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from agibot_jax.models import remat

IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def resolve_implementation(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if implementation == "auto":
    return "cudnn" if jax.default_backend() == "gpu" else "xla"
  return implementation


def dot_product_attention(
    q_BQHK: jax.Array,
    k_BKHK: jax.Array,
    v_BKHK: jax.Array,
    *,
    kv_lengths_B: jax.Array | None = None,
    is_causal: bool = False,
    implementation: str = "xla",
    name: str | None = None,
) -> jax.Array:
  """Multi-head attention, scale 1/sqrt(head_dim).

  Args:
    q_BQHK: queries (batch, q_len, heads, head_dim).
    k_BKHK, v_BKHK: keys/values (batch, kv_len, kv_heads, head_dim); kv_heads may divide
      heads (grouped-query attention).
    kv_lengths_B: optional int (batch,) number of valid keys; keys at positions >= length are
      masked (a key-padding mask whose valid keys form a prefix).
    is_causal: causal mask (query i sees keys <= i).
    implementation: see module docstring.
    name: optional call site (one of `remat.ATTENTION`): the kernel's output and what it keeps for
      its backward, other than q, k, v, are named so, for the remat policies that save them
      (`remat.named_residuals`).

  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  impl = resolve_implementation(implementation)
  out_dtype = q_BQHK.dtype
  if impl == "cudnn":
    kernel = functools.partial(_cudnn_attention, is_causal=is_causal)
    args = (*(t.astype(jnp.bfloat16) for t in (q_BQHK, k_BKHK, v_BKHK)),
            None if kv_lengths_B is None else kv_lengths_B.astype(jnp.int32))
    expected = _cudnn_residuals(args[0], args[2])
  else:
    kernel = functools.partial(_reference_attention, is_causal=is_causal)
    args, expected = (q_BQHK, k_BKHK, v_BKHK, kv_lengths_B), None
  if name is not None:
    kernel = remat.named_residuals(kernel, name, expected)
  return kernel(*args).astype(out_dtype)


def _cudnn_attention(q, k, v, kv_lengths, is_causal):
  """cuDNN flash attention on bf16 q, k, v (BTNH layout)."""
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths, is_causal=is_causal,
                                      implementation="cudnn")


def _cudnn_residuals(q_BQHK, v_BKHK) -> tuple[jax.ShapeDtypeStruct, ...]:
  """The cuDNN kernel's output and what it keeps for its backward besides q, k, v: the output itself (B, Q, H, K)
  and the float32 softmax statistics (B, H, Q) (jax/_src/cudnn/fused_attention_stablehlo.py)."""
  b, q_len, heads, _ = q_BQHK.shape
  return (jax.ShapeDtypeStruct((b, q_len, heads, v_BKHK.shape[-1]), q_BQHK.dtype),
          jax.ShapeDtypeStruct((b, heads, q_len), jnp.float32))


def _reference_attention(q, k, v, kv_lengths, is_causal):
  """float32 math attention (exact path)."""
  heads, kv_heads = q.shape[2], k.shape[2]
  if heads != kv_heads:
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
  scale = q.shape[-1] ** -0.5
  hi = jax.lax.Precision.HIGHEST
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32), precision=hi) * scale
  q_len, kv_len = logits.shape[-2], logits.shape[-1]
  mask = None
  if kv_lengths is not None:
    mask = (jnp.arange(kv_len)[None, :] < kv_lengths[:, None])[:, None, None, :]
  if is_causal:
    causal = (jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :])[None, None]
    mask = causal if mask is None else mask & causal
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32), precision=hi)
