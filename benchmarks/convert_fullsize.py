"""Full-size checkpoint conversion: wall time and peak RSS of convert.dit, convert.vae and convert.text_encoder.

  PYTHONPATH=. python benchmarks/convert_fullsize.py [--workdir /tmp/convert_fullsize] [--models dit,vae,text_encoder]

Builds random checkpoints with every key and shape of the released models, in their formats:
- the 2B DiT as one bfloat16 `.pt` with `net.*` keys (shapes from ../shared/golden/dit_2b_keys.tsv),
  converted with `--noema --config configs/seg.py`;
- the Wan2.1 VAE as one float32 `.pth` (the 194 keys of the VAE key table, spec A.9);
- the Qwen2.5-VL-7B text model (hidden 3584, 28 layers, intermediate 18944, 28 heads, 4 kv heads,
  vocab 152064, LM head included as in the release) as bfloat16 safetensors shards of at most
  3.9 GB with a `model.safetensors.index.json`;
then runs each converter as a child process and records its wall time and peak RSS (GNU time's
%e and %M), next to the peak RSS of a child that only imports the converters (the floor). Each model's files
are deleted once it is measured (peak disk use ~30 GB, the text encoder's source and result).
The last line is JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("AGIBOT_SHARED", REPO.parent / "shared"))
SHARD_BYTES = 3_900_000_000  # the release's shards are 3.9 GB or less

QWEN_7B = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
           "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-6,
           "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
           "max_position_embeddings": 128000, "use_sliding_window": False, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16"}


def _random(shape, dtype):
  import torch

  if dtype.is_floating_point:
    return torch.empty(shape, dtype=dtype).normal_(0, 0.02)
  return torch.zeros(shape, dtype=dtype)


def build_dit(workdir: pathlib.Path) -> list[str]:
  import torch

  state = {}
  for line in (SHARED / "golden" / "dit_2b_keys.tsv").read_text().splitlines():
    if line.startswith(("#", "key\t")) or not line.strip():
      continue
    key, shape, dtype, *_ = line.split("\t")
    shape = tuple(int(s) for s in shape.split("x")) if shape not in ("", "scalar", "()") else ()
    state["net." + key] = _random(shape, torch.int64 if dtype == "int64" else torch.bfloat16)
  torch.save(state, workdir / "model_bf16.pt")
  return ["convert.dit", "--src", str(workdir / "model_bf16.pt"), "--noema", "--config", "configs/seg.py",
          "--dst", str(workdir / "dit")]


def build_vae(workdir: pathlib.Path) -> list[str]:
  import torch

  from agibot_jax.models import vae as vae_lib
  from convert import mapping
  from convert import vae as convert_vae

  cfg = vae_lib.VAEConfig()
  flat = mapping.flatten_tree(vae_lib.abstract_params(vae_lib.WanVAE(cfg)))
  state = {e.torch_key: _random(mapping.expected_torch_shape(e, flat), torch.float32)
           for e in convert_vae.key_table(cfg)}
  torch.save(state, workdir / "Wan2.1_VAE.pth")
  return ["convert.vae", "--src", str(workdir / "Wan2.1_VAE.pth"), "--dst", str(workdir / "vae")]


def _qwen_shapes(c: dict) -> dict[str, tuple[int, ...]]:
  """Every text-model tensor of the release, in its order (embedding, layers, norm, LM head)."""
  d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
  kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
  shapes = {"model.embed_tokens.weight": (v, d)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (d, d), p + "self_attn.q_proj.bias": (d,),
                   p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.k_proj.bias": (kv,),
                   p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.v_proj.bias": (kv,),
                   p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (f, d),
                   p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f)})
  shapes.update({"model.norm.weight": (d,), "lm_head.weight": (v, d)})
  return shapes


def build_text_encoder(workdir: pathlib.Path) -> list[str]:
  import numpy as np
  import torch
  from safetensors.torch import save_file

  src = workdir / "qwen2.5_vl_7b"
  src.mkdir()
  shards: list[list[str]] = [[]]
  size = 0
  shapes = _qwen_shapes(QWEN_7B)
  for key, shape in shapes.items():
    nbytes = 2 * int(np.prod(shape))
    if shards[-1] and size + nbytes > SHARD_BYTES:
      shards.append([])
      size = 0
    shards[-1].append(key)
    size += nbytes
  weight_map = {}
  for i, keys in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({k: _random(shapes[k], torch.bfloat16) for k in keys}, str(src / name), metadata={"format": "pt"})
    weight_map.update({k: name for k in keys})
  (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
  (src / "config.json").write_text(json.dumps(QWEN_7B, indent=1))
  return ["convert.text_encoder", "--src", str(src), "--dst", str(workdir / "text_encoder")]


def _measure(argv: list[str]) -> dict:
  """Wall time and peak RSS of `python argv...` run from the repository root, by GNU time.

  Not os.wait4 here: a child's peak RSS starts from its parent's at the fork, and this process
  has held the checkpoints it built."""
  with tempfile.NamedTemporaryFile("r") as out:
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", out.name, sys.executable, *argv], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    wall_s, max_rss_kb = out.read().split()[-2:]
  return {"wall_s": float(wall_s), "peak_rss_gb": round(int(max_rss_kb) * 1024 / 1e9, 2)}


def _size_gb(path: pathlib.Path) -> float:
  files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
  return sum(p.stat().st_size for p in files) / 1e9


BUILDERS = {"dit": build_dit, "vae": build_vae, "text_encoder": build_text_encoder}


def main(argv):
  del argv
  workdir = pathlib.Path(flags.FLAGS.workdir)
  floor = _measure(["-c", "import jax, torch, orbax.checkpoint; from convert import dit, text_encoder, torch_io, vae"])
  print(f"import floor: peak RSS {floor['peak_rss_gb']} GB", flush=True)
  results = {"import_floor_peak_rss_gb": floor["peak_rss_gb"]}
  for model in flags.FLAGS.models:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
      t0 = time.perf_counter()
      command = BUILDERS[model](workdir)
      src = pathlib.Path(command[command.index("--src") + 1])
      sources = [src] if src.is_file() else sorted(src.glob("*.safetensors"))
      print(f"{model}: built {_size_gb(src):.2f} GB in {time.perf_counter() - t0:.0f}s; "
            f"python -m {' '.join(command)}", flush=True)
      result = _measure(["-m", *command])
      result.update(source_gb=round(_size_gb(src), 2), largest_source_file_gb=round(max(map(_size_gb, sources)), 2),
                    output_gb=round(_size_gb(pathlib.Path(command[command.index("--dst") + 1])), 2))
      result["peak_rss_over_largest_file"] = round(result["peak_rss_gb"] / result["largest_source_file_gb"], 2)
      print(f"{model}: {result}", flush=True)
      results[model] = result
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
  print(json.dumps(results))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", "/tmp/convert_fullsize", "scratch folder for the checkpoints (deleted)")
  flags.DEFINE_list("models", list(BUILDERS), "which converters to measure")
  app.run(main)
