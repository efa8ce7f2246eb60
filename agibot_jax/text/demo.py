"""A tiny, randomly initialised text encoder with a locally built tokenizer.

Used by the embedded default of the training job (no weights can be downloaded) and by tests. The
tokenizer is a whitespace WordLevel vocabulary wrapped in a Hugging Face fast tokenizer with the
Qwen2.5-VL chat template, so tokenisation runs through exactly the same code as the real one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agibot_jax.text.embed import OnlineTextEmbedder
from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel

# The chat template published with Qwen2.5-VL-7B-Instruct (and, per spec B.3, Cosmos-Reason1-7B).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]")
WORDS = ("system user assistant You are a helpful who will provide prompts to an image generator . The video is "
         "captured from camera mounted on the head of subject , facing forward left hand right robot picks up "
         "red cup table").split()


def build_demo_tokenizer():
  """WordLevel tokenizer (whitespace/punctuation split): ids 0..3 special, then WORDS; pad = <|endoftext|>."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  for w in WORDS:
    vocab.setdefault(w, len(vocab))
  core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  core.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="<|endoftext|>",
                                eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
  tok.chat_template = QWEN25_VL_CHAT_TEMPLATE
  return tok


def demo_layers(embedding_channels: int, min_layers: int = 3, max_hidden: int = 512) -> int:
  """The fewest layers (≥ min_layers) whose hidden width, embedding_channels / layers, is ≤ max_hidden and splits
  into 4 even-width heads: 3 for the tiny configs, 196 × 512 for the real 100352 (= 28 × 3584) channels."""
  for layers in range(min_layers, embedding_channels + 1):
    hidden, rest = divmod(embedding_channels, layers)
    if not rest and hidden <= max_hidden and hidden % 8 == 0:
      return layers
  raise ValueError(f"embedding_channels {embedding_channels} has no split into ≥ {min_layers} layers of a width "
                   f"≤ {max_hidden} divisible by 8")


def demo_text_config(embedding_channels: int) -> QwenTextConfig:
  """A small Qwen text path whose FULL_CONCAT width is `embedding_channels` (= layers × hidden)."""
  num_layers = demo_layers(embedding_channels)
  hidden = embedding_channels // num_layers
  return QwenTextConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=num_layers,
                        num_heads=4, num_kv_heads=2, dtype="float32", param_dtype="float32", attention="xla")


def demo_text_embedder(embedding_channels: int, *, seed: int = 0) -> OnlineTextEmbedder:
  """`demo_text_config`'s text path with random weights (from `seed`) and the demo tokenizer."""
  cfg = demo_text_config(embedding_channels)
  # One jitted init instead of Flax's op-by-op eager init (seconds saved at every demo start).
  init = jax.jit(lambda key: QwenTextModel(cfg).init(key, jnp.zeros((1, 1), jnp.int32))["params"])
  params = init(jax.random.key(seed))
  return OnlineTextEmbedder(cfg, params, build_demo_tokenizer())
