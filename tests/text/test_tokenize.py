"""agibot_jax/text/tokenize.py with a tiny locally built tokenizer carrying the Qwen2.5-VL chat template."""

import json
import os

import numpy as np
import pytest

from agibot_jax.text.demo import QWEN25_VL_CHAT_TEMPLATE
from agibot_jax.text.tokenize import NUM_TOKENS, SYSTEM_PROMPT, load_tokenizer, render_prompt, tokenize_captions

EXPECTED = ("<|im_start|>system\nYou are a helpful assistant who will provide prompts to an image generator."
            "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n")


def test_template_structure(tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  caption = "The robot picks up the red cup"
  assert render_prompt(tok, caption) == EXPECTED.format(caption)
  ids = tokenize_captions(tok, [caption])[0]
  im_start, im_end, pad = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
  system = tok(SYSTEM_PROMPT, add_special_tokens=False)["input_ids"]
  user = tok(caption, add_special_tokens=False)["input_ids"]
  role = lambda r: tok(r, add_special_tokens=False)["input_ids"]
  # The whitespace pre-tokenizer drops the "\n"s; everything else is the template, with no generation prompt.
  body = [im_start, *role("system"), *system, im_end, im_start, *role("user"), *user, im_end]
  assert ids.dtype == np.int32 and ids.shape == (NUM_TOKENS,)
  assert list(ids[:len(body)]) == body
  assert (ids[len(body):] == pad).all() and pad == tok.pad_token_id


def test_padding_and_truncation_to_512(tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  long = " ".join(["red cup"] * 400)
  ids = tokenize_captions(tok, ["", "a cup", long])
  assert ids.shape == (3, NUM_TOKENS)
  full = tok(render_prompt(tok, long), add_special_tokens=False)["input_ids"]
  assert len(full) > NUM_TOKENS
  np.testing.assert_array_equal(ids[2], full[:NUM_TOKENS])  # hard truncation: the closing <|im_end|> is cut
  assert tok.convert_tokens_to_ids("<|im_end|>") != ids[2, -1]
  assert (ids[0] == tok.pad_token_id).sum() > (ids[1] == tok.pad_token_id).sum() > 400
  assert tokenize_captions(tok, [], 16).shape == (0, 16)
  with pytest.raises(TypeError):
    tokenize_captions(tok, "one string")


def test_template_from_processor_file(tokenizer_dir, tmp_path):
  """A processor-style folder: the template lives in chat_template.json, not in tokenizer_config.json."""
  for name in os.listdir(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, name), "rb") as f, open(tmp_path / name, "wb") as g:
      g.write(f.read())
  cfg_path = tmp_path / "tokenizer_config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg.pop("chat_template", None)
  cfg_path.write_text(json.dumps(cfg))
  if (tmp_path / "chat_template.jinja").exists():  # where transformers 5 saves the template
    os.remove(tmp_path / "chat_template.jinja")
  with pytest.raises(ValueError, match="no chat template"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN25_VL_CHAT_TEMPLATE}))
  assert render_prompt(load_tokenizer(str(tmp_path)), "x") == EXPECTED.format("x")
  with pytest.raises(FileNotFoundError):
    load_tokenizer(str(tmp_path / "missing"))
