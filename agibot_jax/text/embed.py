"""Caption embeddings for the DiT: Qwen hidden states -> FULL_CONCAT, and the online embedder.

FULL_CONCAT (spec tokenizer_and_text.md B.5): drop hidden state 0 (token embeddings), standardise
each remaining state per token over its hidden axis, `(h − mean) / (std + 1e-8)` with the unbiased
std, and concatenate them in layer order: (batch, 512, num_layers·hidden) = (·, 512, 100352) for the
7B, layer l in channels [(l−1)·hidden, l·hidden). The statistics are computed in the activations'
dtype, as the reference does (bf16 in production, float32 for parity).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax import sharding
from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel
from agibot_jax.text.tokenize import NUM_TOKENS, load_tokenizer, tokenize_captions

STD_EPS = 1e-8


def standardize_per_token(h_BSD: jax.Array, eps: float = STD_EPS) -> jax.Array:
  """(h − mean) / (unbiased std + eps) over the last axis, in h's dtype."""
  mean = jnp.mean(h_BSD, axis=-1, keepdims=True)
  std = jnp.std(h_BSD, axis=-1, keepdims=True, ddof=1)
  return (h_BSD - mean) / (std + jnp.asarray(eps, h_BSD.dtype))


def full_concat(hidden_LBSD: jax.Array) -> jax.Array:
  """(L+1, B, S, D) hidden states -> (B, S, L·D): standardised states 1..L side by side."""
  normed_LBSD = standardize_per_token(hidden_LBSD[1:])
  L, B, S, D = normed_LBSD.shape
  return jnp.transpose(normed_LBSD, (1, 2, 0, 3)).reshape(B, S, L * D)


def embed_token_ids(params, token_ids_BS: jax.Array, config: QwenTextConfig) -> jax.Array:
  """(B, S) int token ids -> (B, S, num_layers·hidden) FULL_CONCAT embedding in `config.dtype`."""
  hidden_LBSD = QwenTextModel(config).apply({"params": params}, token_ids_BS)
  return full_concat(hidden_LBSD)


def load_text_encoder(path: str, *, dtype: str | None = None, attention: str = "auto"):
  """(QwenTextConfig, params) from a checkpoint written by `convert.text_encoder`.

  dtype: activation and parameter dtype ("bfloat16" | "float32"); default: the stored dtype.
  """
  from agibot_jax.params_io import MODEL_TEXT_ENCODER as MODEL_KIND, read_meta, restore_params

  meta = read_meta(path)
  if meta.get("model") != MODEL_KIND:
    raise ValueError(f"{path}: not a text encoder checkpoint (meta model={meta.get('model')!r}, "
                     f"expected {MODEL_KIND!r})")
  dtype = dtype or meta.get("dtype", "bfloat16")
  config = QwenTextConfig.from_hf(meta["config"], dtype=dtype, param_dtype=dtype, attention=attention)
  abstract = jax.eval_shape(
      lambda: QwenTextModel(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  mesh = jax.sharding.get_mesh()
  if mesh.devices.size > 1:
    # On the training mesh (jax.set_mesh), the weights are spread over every device instead of replicated.
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                            sharding.spread_shardings(abstract, mesh))
  params = restore_params(path, abstract)
  return config, params


class OnlineTextEmbedder:
  """Embeds caption strings in-process with the JAX model (no cache).

  `embed(captions) -> np.ndarray (n, 512, num_layers·hidden)` in the model's dtype (bf16 in
  production, half the host memory of float32): with `num_tokens`, `dim` and `projected` this is
  agibot_jax.text.provider.TextEmbeddingProvider; `embed_on_device` returns the same as a device
  array, which the train loop uses so as not to wait for the forward. Captions are tokenised on the
  host and run through one jitted forward per `batch_size` rows (the last batch is padded with
  pad-token rows so every call has the same shape and compiles once).
  """

  def __init__(self, config: QwenTextConfig, params, tokenizer, *, batch_size: int = 1,
               num_tokens: int = NUM_TOKENS):
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.batch_size, self.num_tokens = batch_size, num_tokens
    self._forward = jax.jit(functools.partial(embed_token_ids, config=config))

  @classmethod
  def from_paths(cls, text_encoder: str, tokenizer: str, *, dtype: str | None = None,
                 attention: str = "auto", batch_size: int = 1) -> "OnlineTextEmbedder":
    config, params = load_text_encoder(text_encoder, dtype=dtype, attention=attention)
    return cls(config, params, load_tokenizer(tokenizer), batch_size=batch_size)

  projected = False  # raw FULL_CONCAT embeddings: the DiT applies its crossattn_proj

  @property
  def dim(self) -> int:
    return self.config.embedding_channels

  def embed_ids_on_device(self, token_ids_NS: np.ndarray) -> jax.Array:
    """The embeddings as a device array: nothing waits for the forward (the train loop queues it)."""
    n = token_ids_NS.shape[0]
    if n == 0:
      return jnp.zeros((0, token_ids_NS.shape[1], self.dim), self.config.jnp_dtype)
    pad_rows = (-n) % self.batch_size
    ids = np.concatenate([token_ids_NS, np.full((pad_rows, token_ids_NS.shape[1]),
                                                self.tokenizer.pad_token_id, token_ids_NS.dtype)])
    out = [self._forward(self.params, jnp.asarray(ids[i:i + self.batch_size]))
           for i in range(0, ids.shape[0], self.batch_size)]
    return jnp.concatenate(out)[:n]

  def embed_on_device(self, captions: Sequence[str]) -> jax.Array:
    return self.embed_ids_on_device(tokenize_captions(self.tokenizer, captions, self.num_tokens))

  def embed(self, captions: Sequence[str]) -> np.ndarray:
    return np.asarray(self.embed_on_device(captions))
