"""Reading and writing PyTorch checkpoints (needs the `convert` extra: torch, safetensors).

Sources understood by `load_state_dict`:
- a single `.pt`/`.pth` file (loaded with `weights_only=True`): a released file such as
  `model_ema_bf16.pt` (keys `net.*`), a training checkpoint holding `net.*` and `net_ema.*`,
  or a plain state dict (e.g. `Wan2.1_VAE.pth`);
- a `.safetensors` file, or a folder of them with a `model.safetensors.index.json`;
- a torch distributed checkpoint (DCP) directory (`.metadata` + `*.distcp`);
- `hf://ORG/REPO/PATH[@REVISION]`, resolved with huggingface_hub (cache, token and
  HF_HUB_OFFLINE honoured).
Tensors come back as numpy arrays (bfloat16 through ml_dtypes), `._extra_state` keys dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import ml_dtypes
import numpy as np


def _torch():
  try:
    import torch
  except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("reading PyTorch checkpoints needs the `convert` extra: pip install -e '.[convert]'") from e
  return torch


def resolve_source(src: str) -> str:
  """Local path for `src`; `hf://ORG/REPO/PATH[@REV]` is fetched through huggingface_hub."""
  if not src.startswith("hf://"):
    if not os.path.exists(src):
      raise FileNotFoundError(f"checkpoint not found: {src}")
    return src
  spec = src[len("hf://"):]
  revision = None
  if "@" in spec:
    spec, revision = spec.rsplit("@", 1)
  parts = spec.split("/")
  if len(parts) < 3:
    raise ValueError(f"expected hf://ORG/REPO/PATH[@REVISION], got {src!r}")
  repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
  from huggingface_hub import hf_hub_download
  from huggingface_hub.errors import LocalEntryNotFoundError

  try:
    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)
  except LocalEntryNotFoundError as e:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
        "the Hugging Face Hub is unreachable and it is not in the local cache"
    raise FileNotFoundError(f"cannot fetch {filename} from {repo_id}" +
                            (f"@{revision}" if revision else "") + f": {why}") from e


def tensor_to_numpy(t) -> np.ndarray:
  torch = _torch()
  t = t.detach().cpu().contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def numpy_to_tensor(a: np.ndarray):
  torch = _torch()
  a = np.array(a, order="C", copy=True)
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def _flatten_nested(obj, prefix=""):
  """Nested dicts of tensors (DCP model state) -> flat dotted keys."""
  out = {}
  for k, v in obj.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten_nested(v, key + "."))
    else:
      out[key] = v
  return out


def _read_raw(path: str) -> dict:
  torch = _torch()
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, ".metadata")):
      from torch.distributed.checkpoint import FileSystemReader
      from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

      del FileSystemReader  # imported only to fail early when DCP is unavailable
      return _flatten_nested(_load_state_dict_from_keys(checkpoint_id=path))
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(f"{path}: no .metadata (DCP) and no .safetensors files")
    out = {}
    for f in files:
      out.update(_read_raw(os.path.join(path, f)))
    return out
  if path.endswith(".safetensors"):
    from safetensors.torch import load_file

    return load_file(path)
  obj = torch.load(path, map_location="cpu", weights_only=True)
  for nest in ("model", "state_dict"):
    if isinstance(obj, Mapping) and set(obj) == {nest}:
      obj = obj[nest]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  return _flatten_nested(obj)


def load_state_dict(src: str, *, prefix_choice: str | None = None) -> dict[str, np.ndarray]:
  """Flat {key: numpy array} from any supported source.

  prefix_choice: for checkpoints whose keys start with `net.` / `net_ema.`, which copy to
  return ("net_ema" or "net"); the prefix is stripped. If the requested copy is absent, a
  file with only `net.*` keys (a released EMA export) is accepted for "net_ema".
  """
  path = resolve_source(src)
  raw = {k: v for k, v in _read_raw(path).items() if not k.endswith("._extra_state")}
  has_net = any(k.startswith("net.") for k in raw)
  has_ema = any(k.startswith("net_ema.") for k in raw)
  if prefix_choice is not None and (has_net or has_ema):
    want = prefix_choice
    if want == "net_ema" and not has_ema:
      want = "net"  # released files hold the EMA weights under `net.`
    if want == "net" and not has_net:
      raise KeyError(f"{src}: no `net.*` keys (has only `net_ema.*`); use --ema")
    p = want + "."
    raw = {k[len(p):]: v for k, v in raw.items() if k.startswith(p)}
  return {k: tensor_to_numpy(v) if not isinstance(v, np.ndarray) else v for k, v in raw.items()}


def save_state_dict(state: Mapping[str, np.ndarray], dst: str, *, prefix: str = "") -> None:
  """Write a `.pt` (torch.save) or `.safetensors` file atomically."""
  torch = _torch()
  tensors = {prefix + k: numpy_to_tensor(v) for k, v in state.items()}
  tmp = dst + ".tmp"
  if dst.endswith(".safetensors"):
    from safetensors.torch import save_file

    save_file(tensors, tmp)
  else:
    torch.save(tensors, tmp)
  os.replace(tmp, dst)


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)
