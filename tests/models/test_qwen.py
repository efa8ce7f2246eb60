"""agibot_jax/models/qwen.py against transformers' own PyTorch Qwen2.5-VL (tiny random config, float32)."""

import jax
import numpy as np
import pytest

from agibot_jax.text.embed import full_concat
from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel, apply_rope, rope_cos_sin
from agibot_jax.text.tokenize import pad_or_truncate
from convert.text_encoder import convert

TOL = 1e-4  # float32 port vs float32 PyTorch; observed ~3e-6
PAD_ID = 3


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """A tiny random Qwen2.5-VL saved with `save_pretrained`; norms/biases perturbed so they matter."""
  torch = pytest.importorskip("torch")
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  config = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=64, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                       num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6, pad_token_id=PAD_ID,
                       bos_token_id=0, eos_token_id=1,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]}),
      vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=48),
      tie_word_embeddings=False)
  torch.manual_seed(1234)
  model = Qwen2_5_VLForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
      elif "embed_tokens" in name:
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
  path = tmp_path_factory.mktemp("qwen_hf")
  model.save_pretrained(path)
  return str(path)


def _reference(path, ids_BS):
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids_BS.astype(np.int64)), output_hidden_states=True, use_cache=False)
    hidden = [h.numpy() for h in out.hidden_states]
    normed = [(h - h.mean(-1, keepdims=True)) / (h.std(-1, keepdims=True, ddof=1) + 1e-8) for h in hidden[1:]]
  return hidden, np.concatenate(normed, axis=-1)


def test_matches_transformers_padded_and_truncated(hf_checkpoint):
  jax.config.update("jax_default_matmul_precision", "highest")
  rng = np.random.default_rng(0)
  ids_BS = np.stack([
      pad_or_truncate(rng.integers(4, 64, 29), PAD_ID),  # short caption, right-padded to 512
      pad_or_truncate(rng.integers(4, 64, 700), PAD_ID),  # long caption, truncated to 512
  ])
  ref_hidden, ref_concat = _reference(hf_checkpoint, ids_BS)

  config, params = convert(hf_checkpoint, "float32")
  config = config.replace(attention="xla")
  assert (config.num_layers, config.num_heads, config.num_kv_heads, config.rope_theta) == (3, 6, 2, 1e4)
  hidden = np.asarray(QwenTextModel(config).apply({"params": params}, ids_BS))
  assert len(ref_hidden) == hidden.shape[0] == 4
  for i, ref in enumerate(ref_hidden):
    err = np.abs(hidden[i] - ref).max()
    assert err < TOL, f"hidden state {i}: max abs err {err:.2e}"
  concat = np.asarray(full_concat(hidden))
  assert concat.shape == (2, 512, 3 * 48)
  np.testing.assert_allclose(concat, ref_concat, atol=TOL, rtol=0)


def test_rope_is_rotate_half_with_positions():
  """Position 0 is the identity; the pair (d, d + K/2) rotates by angle pos·θ^(−2d/K)."""
  cos, sin = rope_cos_sin(5, 8, 100.0)
  x = np.random.default_rng(1).normal(size=(1, 5, 2, 8)).astype(np.float32)
  y = np.asarray(apply_rope(x, cos, sin))
  np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-7)
  pos, d = 3, 1
  angle = pos * 100.0 ** (-2 * d / 8)
  c, s = np.cos(angle), np.sin(angle)
  np.testing.assert_allclose(y[0, pos, :, d], x[0, pos, :, d] * c - x[0, pos, :, d + 4] * s, atol=1e-6)
  np.testing.assert_allclose(y[0, pos, :, d + 4], x[0, pos, :, d + 4] * c + x[0, pos, :, d] * s, atol=1e-6)


def test_config_from_hf_layouts_and_errors():
  flat = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e6,
          "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}}
  nested = {"text_config": {**{k: v for k, v in flat.items() if k not in ("rope_theta", "rope_scaling")},
                            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}}
  assert QwenTextConfig.from_hf(flat) == QwenTextConfig.from_hf(nested)
  assert QwenTextConfig.from_hf(flat).embedding_channels == 128
  with pytest.raises(ValueError, match="rope_type"):
    QwenTextConfig.from_hf({**flat, "rope_scaling": {"rope_type": "yarn"}})
  with pytest.raises(ValueError, match="num_kv_heads"):
    QwenTextConfig(num_heads=6, num_kv_heads=4, hidden_size=48)
