"""Convert the Wan2.1 VAE checkpoint (PyTorch) to our Flax parameters, and back.

  python -m convert.vae --src hf://nvidia/Cosmos-Predict2.5-2B/tokenizer.pth --dst ckpt/wan21_vae
  python -m convert.vae --src Wan2.1_VAE.pth --dst ckpt/wan21_vae --dtype bfloat16 --force
  python -m convert.vae --export ckpt/wan21_vae --dst Wan2.1_VAE.pth

The checkpoint is a plain state dict of 194 tensors (spec A.9). Every key, shape and parameter is
checked against the abstract model before anything is written; on a mismatch the command exits 2
naming each missing, unexpected and mis-shaped key. `--dim` / `--z_dim` select a reduced model
(the golden `vae_tiny` has dim 16). Tensors are read and written one at a time.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from agibot_jax import params_io
from agibot_jax.models import vae as vae_lib
from agibot_jax import cli
from convert import mapping
from convert.golden import OutputCheck
from convert.mapping import Entry


def _conv3d(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Entry]:
  return [Entry(f"{torch_prefix}.weight", flax_path + ("conv", "kernel"), "conv3d"),
          Entry(f"{torch_prefix}.bias", flax_path + ("conv", "bias"))]


def _plain(torch_prefix: str, flax_path: tuple[str, ...], transform: str) -> list[Entry]:
  return [Entry(f"{torch_prefix}.weight", flax_path + ("kernel",), transform),
          Entry(f"{torch_prefix}.bias", flax_path + ("bias",))]


def _norm(torch_key: str, flax_path: tuple[str, ...], rank: int) -> list[Entry]:
  return [Entry(torch_key, flax_path + ("scale",), "flatten", torch_rank=rank)]


def _residual(p: str, f: tuple[str, ...], c_in: int, c_out: int) -> list[Entry]:
  table = (_norm(f"{p}.residual.0.gamma", f + ("norm1",), 4) + _conv3d(f"{p}.residual.2", f + ("conv1",)) +
           _norm(f"{p}.residual.3.gamma", f + ("norm2",), 4) + _conv3d(f"{p}.residual.6", f + ("conv2",)))
  if c_in != c_out:
    table += _conv3d(f"{p}.shortcut", f + ("shortcut",))
  return table


def _stage(kind: str, p: str, f: tuple[str, ...], c_in: int, c_out: int) -> list[Entry]:
  if kind == "res":
    return _residual(p, f, c_in, c_out)
  table = _plain(f"{p}.resample.1", f + ("resample",), "conv2d")
  if kind in ("down3d", "up3d"):
    table += _plain(f"{p}.time_conv", f + ("time_conv",), "conv3d")
  return table


def _middle(p: str, f: tuple[str, ...], c: int) -> list[Entry]:
  attn = f + ("attn_1",)
  return (_residual(f"{p}.0", f + ("res_0",), c, c) + _norm(f"{p}.1.norm.gamma", attn + ("norm",), 3) +
          _plain(f"{p}.1.to_qkv", attn + ("to_qkv",), "conv2d") + _plain(f"{p}.1.proj", attn + ("proj",), "conv2d") +
          _residual(f"{p}.2", f + ("res_2",), c, c))


def _head(p: str, f: tuple[str, ...]) -> list[Entry]:
  return _norm(f"{p}.0.gamma", f + ("norm",), 4) + _conv3d(f"{p}.2", f + ("conv",))


def key_table(cfg: vae_lib.VAEConfig) -> list[Entry]:
  """One Entry per key of `WanVAE_.state_dict()`, in the reference's order of modules."""
  c_mid = vae_lib.middle_channels(cfg)
  table = _conv3d("encoder.conv1", ("encoder", "conv1"))
  for i, (kind, c_in, c_out) in enumerate(vae_lib.encoder_layout(cfg)):
    table += _stage(kind, f"encoder.downsamples.{i}", ("encoder", f"down_{i}"), c_in, c_out)
  table += _middle("encoder.middle", ("encoder", "middle"), c_mid) + _head("encoder.head", ("encoder", "head"))
  table += _conv3d("conv1", ("conv1",)) + _conv3d("conv2", ("conv2",))
  table += _conv3d("decoder.conv1", ("decoder", "conv1")) + _middle("decoder.middle", ("decoder", "middle"), c_mid)
  for i, (kind, c_in, c_out) in enumerate(vae_lib.decoder_layout(cfg)):
    table += _stage(kind, f"decoder.upsamples.{i}", ("decoder", f"up_{i}"), c_in, c_out)
  return table + _head("decoder.head", ("decoder", "head"))


def convert_state_dict(state: dict[str, np.ndarray], cfg: vae_lib.VAEConfig, *, source: str = "",
                       dtype: str | None = None) -> dict:
  """In-memory PyTorch state dict (numpy) -> Flax parameter tree (numpy), optionally cast to `dtype`."""
  abstract = vae_lib.abstract_params(vae_lib.WanVAE(cfg))
  return mapping.torch_to_flax(state, key_table(cfg), abstract, source=source, dtype=dtype)


def golden_parity(golden_path: str, meta: dict) -> list[OutputCheck]:
  """Encode and decode the golden clips with the golden's parameters; compare in float32."""
  from safetensors.numpy import load_file

  import jax

  kw = meta["constructor_kwargs"]
  if kw.get("attn_scales"):
    raise ValueError(f"attn_scales {kw['attn_scales']} are not supported (the Wan2.1 VAE has none)")
  cfg = vae_lib.VAEConfig(dim=kw["dim"], z_dim=kw["z_dim"], dim_mult=tuple(kw["dim_mult"]),
                          num_res_blocks=kw["num_res_blocks"],
                          temporal_downsample=tuple(kw["temperal_downsample"]),
                          temporal_window=kw["temporal_window"], attention="xla")
  tensors = load_file(golden_path)
  for name, ours in (("latent_mean", vae_lib.LATENT_MEAN), ("latent_std", vae_lib.LATENT_STD)):
    if not np.array_equal(tensors[f"constants/{name}"], np.float32(ours)):
      raise ValueError(f"{golden_path}: constants/{name} differs from the spec's values")
  state = {k[len("params/"):]: v for k, v in tensors.items() if k.startswith("params/")}
  model = vae_lib.WanVAE(cfg)
  params = convert_state_dict(state, cfg, source=golden_path)
  encode = jax.jit(lambda p, x, norm: vae_lib.encode(model, p, x, normalize=norm), static_argnums=2)
  decode = jax.jit(lambda p, z: vae_lib.decode(model, p, z))

  def to_cl(a):  # [B, C, T, H, W] -> [B, T, H, W, C]
    return np.moveaxis(a, 1, -1)

  checks = []
  for suffix in ("", "_9f"):
    video = to_cl(tensors[f"inputs/video{suffix}"])
    mu = encode(params, video, False)
    z = encode(params, video, True)
    decoded = decode(params, to_cl(tensors[f"outputs/latent{suffix}"]))
    for name, ours, tol in (("latent_mu", mu, 1e-5), ("latent", z, 1e-5), ("decoded", decoded, 1e-4)):
      ref = to_cl(tensors[f"outputs/{name}{suffix}"])
      err = float(np.max(np.abs(np.asarray(ours) - ref))) if np.shape(ours) == ref.shape else float("inf")
      checks.append(OutputCheck(f"{name}{suffix}", err, tol))
  return checks


def convert(src: str, dst: str, cfg: vae_lib.VAEConfig, *, dtype: str = "float32", force: bool = False) -> str:
  """Wan2.1 VAE checkpoint `src` -> converted directory `dst`; returns a one-line summary."""
  from convert import torch_io

  params_io.check_destination(dst, force)
  state = torch_io.StateDict(src)
  table, abstract = key_table(cfg), vae_lib.abstract_params(vae_lib.WanVAE(cfg))
  mapping.check_state(state.shapes, table, abstract, source=src)
  n_params = int(sum(np.prod(shape) for shape in state.shapes.values()))
  config = {"dim": cfg.dim, "z_dim": cfg.z_dim, "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks,
            "temporal_downsample": list(cfg.temporal_downsample)}
  meta = {"model": params_io.MODEL_VAE, "source": src, "dtype": dtype, "num_params": n_params,
          "num_tensors": len(state.shapes), "config": config}
  params_io.write_params(dst, mapping.flax_leaves(state.read, table, abstract, dtype=dtype), meta, force=force)
  return f"wrote {dst}: {len(state.shapes)} tensors, {n_params:,} parameters ({dtype})"


def export(src: str, dst: str, *, force: bool = False) -> str:
  """Converted VAE directory `src` -> PyTorch file `dst`; returns a one-line summary."""
  from convert.torch_io import save_state_dict

  meta = params_io.read_meta(src)
  if meta.get("model") != params_io.MODEL_VAE:
    raise ValueError(f"{src} holds {meta.get('model')!r}, not {params_io.MODEL_VAE!r}")
  if os.path.exists(dst) and not force:
    raise FileExistsError(f"{dst} exists; pass --force to overwrite")
  c = meta["config"]
  cfg = vae_lib.VAEConfig(dim=c["dim"], z_dim=c["z_dim"], dim_mult=tuple(c["dim_mult"]),
                          num_res_blocks=c["num_res_blocks"], temporal_downsample=tuple(c["temporal_downsample"]))
  state = mapping.flax_to_torch(params_io.restore_params(src), key_table(cfg))
  save_state_dict(state, dst)
  return f"wrote {dst}: {len(state)} tensors"


def main() -> int:
  f = flags.FLAGS
  if bool(f.src) == bool(f.export):
    raise app.UsageError("give exactly one of --src (convert) and --export")
  if f.src:
    print(convert(f.src, f.dst, vae_lib.VAEConfig(dim=f.dim, z_dim=f.z_dim), dtype=f.dtype, force=f.force))
  else:
    print(export(f.export, f.dst, force=f.force))
  cli.print_result({"dst": os.path.abspath(f.dst)})
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "Wan2.1_VAE.pth / tokenizer.pth (path or hf://ORG/REPO/FILE[@REV])")
  flags.DEFINE_string("export", None, "converted checkpoint directory to write back as a PyTorch file")
  flags.DEFINE_string("dst", None, "output directory (--src) or .pth/.safetensors file (--export)")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the converted parameters")
  flags.DEFINE_integer("dim", 96, "base channel width (96 for the real VAE)")
  flags.DEFINE_integer("z_dim", 16, "latent channels")
  flags.DEFINE_bool("force", False, "overwrite --dst")
  flags.mark_flag_as_required("dst")
  cli.run(main, bad_input=cli.BAD_CHECKPOINT)
