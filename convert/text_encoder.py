"""Convert a Hugging Face Qwen2.5-VL / Cosmos-Reason1 checkpoint to our text encoder (Orbax).

  python -m convert.text_encoder --src DIR --dst DIR [--dtype bfloat16|float32] [--force]

DIR holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json` (e.g. a local snapshot of `nvidia/Cosmos-Reason1-7B`). Only the
language model's weights are kept; the vision tower (`visual.*`) and the LM head (`lm_head.*`)
are skipped on purpose and never read. Both key layouts are understood: `model.layers.*`
(transformers 4.x, and what 5.x writes) and `model.language_model.layers.*` (5.x in memory).
Tensors are read one at a time and written leaf by leaf: memory holds about one stacked leaf.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from agibot_jax import params_io
from agibot_jax import cli
from convert import mapping
from convert.mapping import ConversionError, Entry

_LM_PREFIXES = ("model.language_model.", "model.")


def is_ignored(key: str) -> bool:
  """Checkpoint keys the text path does not use: the vision tower and the LM head."""
  return key.startswith(("visual.", "model.visual.", "lm_head."))


def read_hf_config(src: str) -> dict:
  path = os.path.join(src, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{src}: no config.json (expected a Hugging Face Qwen2.5-VL checkpoint folder)")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def lm_prefix(keys, source: str = "") -> str:
  """`model.language_model.` or `model.`, whichever prefixes the checkpoint's embedding table."""
  for prefix in _LM_PREFIXES:
    if prefix + "embed_tokens.weight" in keys:
      return prefix
  raise ConversionError(missing=["model.embed_tokens.weight (or model.language_model.embed_tokens.weight)"],
                        source=source)


def key_table(num_layers: int, prefix: str = "model.") -> list[Entry]:
  """One Entry per language-model tensor; layer tensors fill slot `i` of the scanned `layers` axis."""
  table = [
      Entry(f"{prefix}embed_tokens.weight", ("embed_tokens", "embedding")),
      Entry(f"{prefix}norm.weight", ("norm", "scale")),
  ]
  per_layer = [
      ("input_layernorm.weight", ("input_layernorm", "scale"), "identity"),
      ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), "identity"),
      ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), "linear"),
      ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), "linear"),
      ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), "linear"),
      ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), "linear"),
  ]
  for proj in ("q_proj", "k_proj", "v_proj"):
    per_layer += [
        (f"self_attn.{proj}.weight", ("self_attn", proj, "kernel"), "linear"),
        (f"self_attn.{proj}.bias", ("self_attn", proj, "bias"), "identity"),
    ]
  for i in range(num_layers):
    table += [Entry(f"{prefix}layers.{i}.{key}", ("layers",) + path, transform, index=i)
              for key, path, transform in per_layer]
  return table


def _open(src: str, dtype: str):
  """(QwenTextConfig, lazy state dict, key table, abstract params), checked: nothing is read yet."""
  import jax

  from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel
  from convert.torch_io import StateDict

  hf = read_hf_config(src)
  try:
    config = QwenTextConfig.from_hf(hf, dtype=dtype, param_dtype=dtype)
  except ValueError as e:
    raise ValueError(f"{os.path.join(src, 'config.json')}: {e}") from e
  state = StateDict(src)
  model = QwenTextModel(config)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32)))["params"]
  table = key_table(config.num_layers, lm_prefix(state.shapes, src))
  mapping.check_state(state.shapes, table, abstract, ignore=is_ignored, source=src)
  return config, state, table, abstract


def convert(src: str, dtype: str = "bfloat16"):
  """(QwenTextConfig, params tree of numpy arrays in `dtype`) from a Hugging Face checkpoint folder, in memory."""
  config, state, table, abstract = _open(src, dtype)
  return config, mapping.unflatten_tree(dict(mapping.flax_leaves(state.read, table, abstract, dtype=dtype)))


def convert_to(src: str, dst: str, *, dtype: str = "bfloat16", force: bool = False) -> str:
  """Hugging Face checkpoint folder `src` -> converted text encoder directory `dst`; returns a one-line summary."""
  params_io.check_destination(dst, force)
  config, state, table, abstract = _open(src, dtype)
  meta = {"model": params_io.MODEL_TEXT_ENCODER, "config": config.to_hf_fields(), "source": os.path.abspath(src),
          "dtype": dtype}
  params_io.write_params(dst, mapping.flax_leaves(state.read, table, abstract, dtype=dtype), meta, force=force)
  n = sum(int(np.prod(a.shape)) for a in mapping.flatten_tree(abstract).values())
  return f"wrote {dst}: {n:,} parameters, {config.num_layers} layers, {dtype}"


def main() -> int:
  f = flags.FLAGS
  print(convert_to(f.src, f.dst, dtype=f.dtype, force=f.force))
  cli.print_result({"dst": os.path.abspath(f.dst)})
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "Hugging Face checkpoint folder (config.json + safetensors)")
  flags.DEFINE_string("dst", None, "output directory")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "dtype of the converted parameters")
  flags.DEFINE_bool("force", False, "overwrite --dst")
  flags.mark_flags_as_required(["src", "dst"])
  cli.run(main, bad_input=cli.BAD_CHECKPOINT)
