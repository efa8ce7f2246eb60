"""Caption -> 512 token ids, as the reference's Reason1 text encoder builds them (spec B.3).

Each caption becomes a two-turn conversation (fixed system prompt, caption as the user turn),
rendered with the tokenizer's own chat template without a generation prompt, tokenised, then
right-padded with the pad id or hard-truncated to exactly 512 ids. No attention mask is made:
pad tokens are ordinary tokens of the embedding. With the Qwen2.5-VL template the text is

  <|im_start|>system\\nYou are a helpful assistant who will provide prompts to an image generator.<|im_end|>\\n
  <|im_start|>user\\n{caption}<|im_end|>\\n

The tokenizer is loaded from a LOCAL folder (e.g. a snapshot of `nvidia/Cosmos-Reason1-7B`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

NUM_TOKENS = 512
SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."


def conversation(caption: str) -> list[dict]:
  """The reference's messages: each content is a list holding one text item."""
  return [
      {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
      {"role": "user", "content": [{"type": "text", "text": caption}]},
  ]


def load_tokenizer(path: str):
  """A transformers tokenizer from a local folder, with the chat template and a pad id checked.

  Processor-style folders keep the template in `chat_template.json` / `chat_template.jinja`
  rather than in `tokenizer_config.json`; it is picked up from there when the tokenizer lacks one.
  """
  from transformers import AutoTokenizer

  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer folder not found: {path}")
  tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
  if not tok.chat_template:
    jinja, js = os.path.join(path, "chat_template.jinja"), os.path.join(path, "chat_template.json")
    if os.path.exists(jinja):
      with open(jinja) as f:
        tok.chat_template = f.read()
    elif os.path.exists(js):
      with open(js) as f:
        tok.chat_template = json.load(f)["chat_template"]
    else:
      raise ValueError(f"{path}: the tokenizer has no chat template (tokenizer_config.json, "
                       "chat_template.jinja or chat_template.json)")
  if tok.pad_token_id is None:
    raise ValueError(f"{path}: the tokenizer has no pad token (Qwen2.5-VL uses <|endoftext|>)")
  return tok


def render_prompt(tokenizer, caption: str) -> str:
  return tokenizer.apply_chat_template(conversation(caption), tokenize=False, add_generation_prompt=False)


def pad_or_truncate(ids: Sequence[int], pad_id: int, num_tokens: int = NUM_TOKENS) -> np.ndarray:
  """Right-pad with `pad_id` or keep the first `num_tokens` ids -> int32 (num_tokens,)."""
  ids = list(ids)[:num_tokens]
  return np.asarray(ids + [pad_id] * (num_tokens - len(ids)), np.int32)


def tokenize_captions(tokenizer, captions: Sequence[str], num_tokens: int = NUM_TOKENS) -> np.ndarray:
  """Captions -> int32 (n, num_tokens) token ids.

  The rendered template already carries every special token, so none are added on top (the Qwen2
  tokenizer adds none either way: no BOS).
  """
  if isinstance(captions, str):
    raise TypeError("tokenize_captions takes a list of captions, got one string")
  rows = [pad_or_truncate(tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"],
                          tokenizer.pad_token_id, num_tokens) for c in captions]
  return np.stack(rows) if rows else np.zeros((0, num_tokens), np.int32)
