"""The text path of the Qwen2.5-VL language model (Cosmos-Reason1 7B), returning every hidden state.

Only what the text embedding needs: token embedding, `num_layers` pre-norm decoder layers
(GQA self-attention with q/k/v bias and rotary positions, SwiGLU MLP, RMSNorm), final norm.
No vision tower, no LM head, no KV cache.

Positions are `arange(seq_len)`. Qwen2.5-VL's M-RoPE gives each of its three axes
(time, height, width) a slice of the rotary frequencies (`mrope_section`); for text all three
axes carry the same position, so every slice rotates by the same angle and M-RoPE is ordinary
1-D RoPE in the rotate-half layout (first half of head_dim paired with the second half).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agibot_jax.models.attention import dot_product_attention

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class QwenTextConfig:
  """Sizes of the language model plus numerics (dtype of activations / parameters, attention kernel)."""

  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_layers: int = 28
  num_heads: int = 28
  num_kv_heads: int = 4
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"
  attention: str = "auto"  # xla | cudnn | auto (agibot_jax.models.attention)

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name} must be one of {tuple(_DTYPES)}, got {getattr(self, name)!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def embedding_channels(self) -> int:
    """Channels of the FULL_CONCAT embedding: one block of hidden_size per layer."""
    return self.num_layers * self.hidden_size

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **kw) -> "QwenTextConfig":
    return dataclasses.replace(self, **kw)

  def to_hf_fields(self) -> dict[str, Any]:
    """The Hugging Face config fields this model reads (stored in converted checkpoints' meta)."""
    return {
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
    }

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **numerics) -> "QwenTextConfig":
    """From a Hugging Face Qwen2.5-VL `config.json` dict (4.x flat layout or 5.x `text_config`)."""
    fields = dict(hf)
    if isinstance(hf.get("text_config"), Mapping):
      fields.update(hf["text_config"])
    rope = fields.get("rope_parameters") or fields.get("rope_scaling") or {}
    rope_theta = fields.get("rope_theta", rope.get("rope_theta"))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    # "mrope" is the legacy name Qwen2-VL configs use for the same default frequencies.
    if rope_type not in ("default", "mrope"):
      raise ValueError(f"unsupported rope_type {rope_type!r} (only default M-RoPE is implemented)")
    if fields.get("use_sliding_window"):
      raise ValueError("use_sliding_window=True is not supported (the Qwen2.5-VL 7B uses full attention)")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads", "num_key_value_heads") if k not in fields]
    if missing or rope_theta is None:
      raise ValueError(f"Qwen2.5-VL config lacks {missing + ([] if rope_theta is not None else ['rope_theta'])}")
    if fields.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act must be silu, got {fields['hidden_act']!r}")
    return cls(
        vocab_size=int(fields["vocab_size"]),
        hidden_size=int(fields["hidden_size"]),
        intermediate_size=int(fields["intermediate_size"]),
        num_layers=int(fields["num_hidden_layers"]),
        num_heads=int(fields["num_attention_heads"]),
        num_kv_heads=int(fields["num_key_value_heads"]),
        rms_norm_eps=float(fields.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        **numerics,
    )


def rope_cos_sin(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """float32 (seq_len, head_dim) cos/sin tables for positions arange(seq_len), rotate-half layout."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_SF = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  angles_SK = jnp.concatenate([angles_SF, angles_SF], axis=-1)
  return jnp.cos(angles_SK), jnp.sin(angles_SK)


def apply_rope(x_BSHK: jax.Array, cos_SK: jax.Array, sin_SK: jax.Array) -> jax.Array:
  """x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁]; computed in float32, returned in x's dtype."""
  x = x_BSHK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_SK[None, :, None, :], sin_SK[None, :, None, :]
  return (x * cos + rotated * sin).astype(x_BSHK.dtype)


class RMSNorm(nn.Module):
  """Qwen2 RMSNorm: normalise in float32, cast back to the activation dtype, then scale."""

  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BSD: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x_BSD.shape[-1],), self.param_dtype)
    x = x_BSD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x.astype(self.dtype)


class Attention(nn.Module):
  """Causal GQA self-attention with q/k/v bias, no output bias, rotary positions."""

  config: QwenTextConfig

  @nn.compact
  def __call__(self, x_BSD: jax.Array, cos_SK: jax.Array, sin_SK: jax.Array) -> jax.Array:
    c = self.config
    dense = lambda features, bias, name: nn.Dense(
        features, use_bias=bias, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, name=name)
    B, S, _ = x_BSD.shape
    q_BSHK = dense(c.num_heads * c.head_dim, True, "q_proj")(x_BSD).reshape(B, S, c.num_heads, c.head_dim)
    k_BSGK = dense(c.num_kv_heads * c.head_dim, True, "k_proj")(x_BSD).reshape(B, S, c.num_kv_heads, c.head_dim)
    v_BSGK = dense(c.num_kv_heads * c.head_dim, True, "v_proj")(x_BSD).reshape(B, S, c.num_kv_heads, c.head_dim)
    q_BSHK = apply_rope(q_BSHK, cos_SK, sin_SK)
    k_BSGK = apply_rope(k_BSGK, cos_SK, sin_SK)
    out_BSHK = dot_product_attention(q_BSHK, k_BSGK, v_BSGK, is_causal=True, implementation=c.attention)
    return dense(c.hidden_size, False, "o_proj")(out_BSHK.reshape(B, S, c.num_heads * c.head_dim))


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) · up(x)), no biases."""

  config: QwenTextConfig

  @nn.compact
  def __call__(self, x_BSD: jax.Array) -> jax.Array:
    c = self.config
    dense = lambda features, name: nn.Dense(
        features, use_bias=False, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, name=name)
    h = nn.silu(dense(c.intermediate_size, "gate_proj")(x_BSD)) * dense(c.intermediate_size, "up_proj")(x_BSD)
    return dense(c.hidden_size, "down_proj")(h)


class DecoderLayer(nn.Module):
  """Pre-norm residual block; as an `nn.scan` body it emits its output as the per-layer hidden state."""

  config: QwenTextConfig

  @nn.compact
  def __call__(self, x_BSD: jax.Array, cos_SK: jax.Array, sin_SK: jax.Array):
    c = self.config
    norm = lambda name: RMSNorm(c.rms_norm_eps, c.jnp_dtype, c.jnp_param_dtype, name=name)
    x_BSD = x_BSD + Attention(c, name="self_attn")(norm("input_layernorm")(x_BSD), cos_SK, sin_SK)
    x_BSD = x_BSD + MLP(c, name="mlp")(norm("post_attention_layernorm")(x_BSD))
    return x_BSD, x_BSD


class QwenTextModel(nn.Module):
  """Token ids -> all hidden states.

  Call: `token_ids_BS` int (batch, seq_len) -> `hidden_LBSD` (num_layers + 1, batch, seq_len, hidden)
  in `config.dtype`: index 0 = token embeddings, 1..L−1 = residual stream after layers 1..L−1,
  L = final RMSNorm applied to layer L's output (the Hugging Face `output_hidden_states` convention).
  Parameters: `embed_tokens/embedding`, `layers/...` stacked along a leading num_layers axis, `norm/scale`.
  """

  config: QwenTextConfig

  @nn.compact
  def __call__(self, token_ids_BS: jax.Array) -> jax.Array:
    c = self.config
    embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype,
                     name="embed_tokens")
    x_BSD = embed(token_ids_BS)
    cos_SK, sin_SK = rope_cos_sin(token_ids_BS.shape[1], c.head_dim, c.rope_theta)
    layers = nn.scan(
        DecoderLayer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=c.num_layers,
    )(c, name="layers")
    _, per_layer_LBSD = layers(x_BSD, cos_SK, sin_SK)
    final_BSD = RMSNorm(c.rms_norm_eps, c.jnp_dtype, c.jnp_param_dtype, name="norm")(per_layer_LBSD[-1])
    return jnp.concatenate([x_BSD[None], per_layer_LBSD[:-1], final_BSD[None]], axis=0)
