"""Convert a Hugging Face Qwen2.5-VL / Cosmos-Reason1 checkpoint to our text encoder (Orbax).

  python -m convert.text_encoder --src DIR --dst DIR [--dtype bfloat16|float32] [--force]

DIR holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json` (e.g. a local snapshot of `nvidia/Cosmos-Reason1-7B`). Only the
language model's weights are kept; the vision tower (`visual.*`) and the LM head (`lm_head.*`)
are skipped on purpose. Both key layouts are understood: `model.layers.*` (transformers 4.x,
and what 5.x writes) and `model.language_model.layers.*` (5.x in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from convert.mapping import ConversionError, Entry, cast_floating, torch_to_flax

MODEL_KIND = "qwen2.5_vl_text"
_LM_PREFIXES = ("model.language_model.", "model.")


def is_ignored(key: str) -> bool:
  """Checkpoint keys the text path does not use: the vision tower and the LM head."""
  return key.startswith(("visual.", "model.visual.", "lm_head."))


def read_hf_config(src: str) -> dict:
  path = os.path.join(src, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{src}: no config.json (expected a Hugging Face Qwen2.5-VL checkpoint folder)")
  with open(path) as f:
    return json.load(f)


def lm_prefix(keys) -> str:
  """`model.language_model.` or `model.`, whichever prefixes the checkpoint's embedding table."""
  for prefix in _LM_PREFIXES:
    if prefix + "embed_tokens.weight" in keys:
      return prefix
  raise ConversionError(missing=["model.embed_tokens.weight (or model.language_model.embed_tokens.weight)"])


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


def _shard_files(src: str) -> list[str]:
  index = os.path.join(src, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return [os.path.join(src, name) for name in sorted(set(weight_map.values()))]
  single = os.path.join(src, "model.safetensors")
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(f"{src}: neither model.safetensors nor model.safetensors.index.json")


def load_lm_state(src: str) -> dict[str, np.ndarray]:
  """Every non-ignored tensor of the checkpoint as numpy (bf16 via ml_dtypes); ignored ones are never read."""
  from safetensors import safe_open

  from convert.torch_io import tensor_to_numpy

  state = {}
  for path in _shard_files(src):
    with safe_open(path, framework="pt") as f:
      for key in f.keys():
        if not is_ignored(key):
          state[key] = tensor_to_numpy(f.get_tensor(key))
  return state


def convert(src: str, dtype: str = "bfloat16"):
  """(QwenTextConfig, params tree of numpy arrays in `dtype`) from a Hugging Face checkpoint folder."""
  import jax

  from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel

  hf = read_hf_config(src)
  config = QwenTextConfig.from_hf(hf, dtype=dtype, param_dtype=dtype)
  state = load_lm_state(src)
  model = QwenTextModel(config)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32)))["params"]
  table = key_table(config.num_layers, lm_prefix(state))
  return config, cast_floating(torch_to_flax(state, table, abstract, ignore=is_ignored, source=src), dtype)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--src", required=True, help="Hugging Face checkpoint folder (config.json + safetensors)")
  parser.add_argument("--dst", required=True, help="output Orbax checkpoint folder")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--force", action="store_true", help="overwrite --dst")
  args = parser.parse_args(argv)
  import jax

  from agibot_jax.params_io import save_params

  try:
    config, params = convert(args.src, args.dtype)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  meta = {"model": MODEL_KIND, "config": config.to_hf_fields(), "source": os.path.abspath(args.src),
          "dtype": args.dtype}
  try:
    save_params(args.dst, params, meta, force=args.force)
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  print(f"wrote {args.dst}: {n:,} parameters, {config.num_layers} layers, {args.dtype}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
