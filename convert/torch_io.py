"""Reading PyTorch checkpoints one tensor at a time, and writing them (needs the `convert` extra).

Sources understood by `open_state_dict`:
- a `.pt`/`.pth` file written by torch.save, memory-mapped with `torch.load(mmap=True,
  weights_only=True)`: a released file such as `model_ema_bf16.pt` (keys `net.*`), a training
  checkpoint holding `net.*` and `net_ema.*`, or a plain state dict (e.g. `Wan2.1_VAE.pth`);
- a `.safetensors` file, or a folder of them (with a `model.safetensors.index.json` if there is one);
- a torch distributed checkpoint (DCP) directory (`.metadata` + `*.distcp`);
- `hf://ORG/REPO/PATH[@REVISION]`, resolved with huggingface_hub (cache, token and
  HF_HUB_OFFLINE honoured).

Nothing read from a checkpoint can execute code: `.pt` files and DCP tensors go through torch's
weights-only unpickler, DCP's `.metadata` (a plain pickle) through one that allows only DCP's own
metadata types, and DCP's non-tensor entries (which torch would unpickle freely) are never read.
Tensors come back as numpy arrays (bfloat16 through ml_dtypes), `._extra_state` keys dropped. An
unreadable input raises `CheckpointError`: one line naming the file and what is wrong with it.

Bytes changed after the file was written are refused too: every entry of a `.pt` archive is checked against its
zip CRC-32 in one sequential pass (the memory-mapped `torch.load` checks none), a `.safetensors` file's size
against what its header describes, and a file fetched through `hf://` against the sha256 the Hub gave for it.
"""

from __future__ import annotations

import abc
import json
import os
import pathlib
import pickle
import warnings
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from agibot_jax import params_io, utils

INDEX_FILE = "model.safetensors.index.json"
DCP_METADATA = ".metadata"
_READ_CHUNK = 64 << 20


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read; the message is one line naming the file."""


# torch comes with the `convert` extra; PyPI's Linux wheel would pull CUDA, hence the CPU build first.
TORCH_MISSING = ("reading or writing PyTorch checkpoints needs torch (the `convert` extra): pip install torch==2.13.0 "
                 "--index-url https://download.pytorch.org/whl/cpu && pip install -e '.[convert]'")


def require_torch():
  """The torch module, or a CheckpointError saying how to install it."""
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(TORCH_MISSING) from e
  return torch


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


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
    path = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)
  except LocalEntryNotFoundError as e:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
        "the Hugging Face Hub is unreachable and it is not in the local cache"
    raise FileNotFoundError(f"cannot fetch {filename} from {repo_id}" +
                            (f"@{revision}" if revision else "") + f": {why}") from e
  check_hub_sha256(src, path)
  return path


def check_hub_sha256(src: str, path: str) -> None:
  """Refuses (CheckpointError) a file fetched from the Hub whose sha256 is not the one the Hub gave for it.

  huggingface_hub keeps a large (LFS) file in its cache as `blobs/<etag>`, the etag being the file's sha256
  (`file_download.REGEX_SHA256`); `path` is a link to that blob. Small files, stored in git, have a git hash as
  their etag and are not checked (no weights are among them).
  """
  from huggingface_hub.file_download import REGEX_SHA256
  from huggingface_hub.utils.sha import sha_fileobj

  blob = os.path.realpath(path)
  expected = os.path.basename(blob)
  if REGEX_SHA256.fullmatch(expected) is None:
    return
  with open(blob, "rb") as f:
    actual = sha_fileobj(f, chunk_size=_READ_CHUNK).hex()
  if actual != expected:
    raise CheckpointError(f"{src}: the cached file {blob} has sha256 {actual}, but the Hub gave {expected} for it "
                          "(changed or damaged after download): delete it and fetch it again")


def tensor_to_numpy(t) -> np.ndarray:
  """A torch tensor as numpy, sharing its memory where it can (bfloat16 through ml_dtypes)."""
  torch = require_torch()
  t = t.detach().cpu().contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def numpy_to_tensor(a: np.ndarray):
  torch = require_torch()
  a = np.array(a, order="C", copy=True)
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


# ----------------------------------------------------------------------------------------------
# Sources: the tensors of one checkpoint, each read when asked for


class _Source(abc.ABC):
  """Raw checkpoint keys -> shapes (known without reading any tensor), `read(key)` -> numpy."""

  def __init__(self, path: str):
    self.path = path
    self.shapes: dict[str, tuple[int, ...]] = {}

  @abc.abstractmethod
  def read(self, key: str) -> np.ndarray:
    ...


def _flatten_nested(obj: Mapping) -> dict:
  """Nested dicts of tensors -> flat dotted keys."""
  return {".".join(path): v for path, v in params_io.flatten_tree(obj).items()}


def check_zip_crcs(path: str) -> None:
  """Reads every entry of a zip archive (a torch.save file) once, sequentially, checking its CRC-32; raises
  CheckpointError naming the first entry whose bytes changed after the archive was written."""
  with zipfile.ZipFile(path) as archive:
    for entry in archive.infolist():
      try:
        with archive.open(entry) as f:
          while f.read(_READ_CHUNK):
            pass
      except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: entry {entry.filename} is damaged ({_first_line(e)}: its bytes changed "
                              "after the file was written); fetch the file again") from e


class _TorchFile(_Source):
  """A torch.save zip archive, its CRCs checked, then memory-mapped: a tensor's bytes are read when it is converted."""

  def __init__(self, path: str):
    super().__init__(path)
    torch = require_torch()
    if not zipfile.is_zipfile(path):
      raise CheckpointError(f"{path}: not a PyTorch checkpoint (no torch.save zip archive: truncated, or another "
                            "format)")
    check_zip_crcs(path)
    try:
      obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch reports corrupt archives and refused types with many exception types
      raise CheckpointError(f"{path}: torch.load(weights_only=True) failed: {_first_line(e)}") from e
    for nest in ("model", "state_dict"):
      if isinstance(obj, Mapping) and set(obj) == {nest}:
        obj = obj[nest]
    if not isinstance(obj, Mapping):
      raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    self._tensors = {k: v for k, v in _flatten_nested(obj).items() if isinstance(v, torch.Tensor)}
    self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

  def read(self, key: str) -> np.ndarray:
    return tensor_to_numpy(self._tensors[key])


class _SafetensorsFiles(_Source):
  """One or more .safetensors files; each read opens its file, so only one tensor is mapped at a time."""

  def __init__(self, path: str, files: list[str]):
    super().__init__(path)
    from safetensors import SafetensorError, safe_open

    self._file_of: dict[str, str] = {}
    for file in files:
      check_safetensors_size(file)
      try:
        with safe_open(file, framework="pt") as f:
          for key in f.keys():
            if key in self._file_of:
              raise CheckpointError(f"{file}: tensor {key} is also in {self._file_of[key]}")
            self._file_of[key] = file
            self.shapes[key] = tuple(f.get_slice(key).get_shape())
      except SafetensorError as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({_first_line(e)})") from e

  def read(self, key: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(self._file_of[key], framework="pt") as f:
      return tensor_to_numpy(f.get_tensor(key))


def check_safetensors_size(file: str) -> None:
  """Refuses (CheckpointError) a .safetensors file whose size is not what its header describes (8 bytes of header
  length, the JSON header, then the tensors' bytes up to the largest end offset)."""
  size = os.path.getsize(file)
  try:
    with open(file, "rb") as f:
      header_len = int.from_bytes(f.read(8), "little")
      if not 0 < header_len <= size - 8:
        raise ValueError(f"header length {header_len}")
      header = json.loads(f.read(header_len))
    data_end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
  except (ValueError, KeyError, TypeError, IndexError) as e:
    raise CheckpointError(f"{file}: not a readable safetensors file (no valid header: {_first_line(e)})") from e
  if size != 8 + header_len + data_end:
    raise CheckpointError(f"{file}: not a readable safetensors file ({size} bytes, but its header describes "
                          f"{8 + header_len + data_end}: truncated or extended after it was written)")


def _safetensors_from_index(path: str) -> _SafetensorsFiles:
  """The shards a `model.safetensors.index.json` lists, checked against what they hold."""
  index = os.path.join(path, INDEX_FILE)
  try:
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({_first_line(e)})") from e
  files = sorted(set(weight_map.values()))
  for name in files:
    if not os.path.isfile(os.path.join(path, name)):
      raise CheckpointError(f"{index}: names shard {name}, which does not exist in {path}")
  source = _SafetensorsFiles(path, [os.path.join(path, name) for name in files])
  for key, name in weight_map.items():
    if key not in source.shapes:
      raise CheckpointError(f"{index}: lists {key} in {name}, which does not hold it")
  return source


# Globals that DCP's `.metadata` pickle names: its own metadata dataclasses, torch.Size, dtypes and
# layouts, and the path it was saved to (found by round-tripping `torch.distributed.checkpoint.save`).
_DCP_METADATA_CLASSES = ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                         "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")


class _DcpMetadataUnpickler(pickle.Unpickler):
  """Unpickles only the globals above; anything else (os.system, ...) is refused before it is called."""

  def __init__(self, file, path: str):
    super().__init__(file)
    torch = require_torch()
    from torch.distributed.checkpoint import filesystem, metadata

    self._path = path
    self._allowed = {("torch.distributed.checkpoint.metadata", n): getattr(metadata, n) for n in _DCP_METADATA_CLASSES}
    self._allowed.update({
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): filesystem._StorageInfo,
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("pathlib", "PosixPath"): pathlib.PosixPath,
        ("pathlib._local", "PosixPath"): pathlib.PosixPath,  # how Python 3.13 pickles it
    })
    # vars(), not getattr(): an unknown name must not reach torch's lazy module loader.
    self._allowed.update({("torch", n): v for n, v in vars(torch).items() if isinstance(v, torch.dtype)})

  def find_class(self, module: str, name: str):
    if (module, name) not in self._allowed:
      raise CheckpointError(f"{self._path}: refused to unpickle {module}.{name}, which is not a torch distributed "
                            "checkpoint metadata type")
    return self._allowed[(module, name)]


def read_dcp_metadata(path: str):
  """DCP's `.metadata` file, unpickled with only DCP's metadata types allowed (a crafted file cannot run code)."""
  from torch.distributed.checkpoint.filesystem import _StorageInfo
  from torch.distributed.checkpoint.metadata import Metadata

  try:
    with open(path, "rb") as f:
      metadata = _DcpMetadataUnpickler(f, path).load()
  except CheckpointError:
    raise
  except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, TypeError, ...)
    raise CheckpointError(f"{path}: not a readable torch distributed checkpoint metadata file "
                          f"({_first_line(e)})") from e
  if not (isinstance(metadata, Metadata) and isinstance(metadata.state_dict_metadata, dict) and
          isinstance(metadata.storage_data, dict) and
          all(isinstance(v, _StorageInfo) for v in metadata.storage_data.values())):
    raise CheckpointError(f"{path}: not a torch distributed checkpoint metadata file")
  return metadata


class _DcpDir(_Source):
  """A torch distributed checkpoint; each tensor is read by itself through DCP's own loader."""

  def __init__(self, path: str):
    super().__init__(path)
    torch = require_torch()
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_dcp_metadata(os.path.join(path, DCP_METADATA))
    for info in metadata.storage_data.values():
      name = str(info.relative_path)
      if os.path.basename(name) != name or name in ("", ".", ".."):
        raise CheckpointError(f"{path}/{DCP_METADATA}: storage file {name!r} is outside the checkpoint")
      file = os.path.join(path, name)
      if not os.path.isfile(file):
        raise CheckpointError(f"{file}: missing (named by {path}/{DCP_METADATA})")
      if os.path.getsize(file) < info.offset + info.length:
        raise CheckpointError(f"{file}: truncated ({os.path.getsize(file)} bytes, "
                              f"{path}/{DCP_METADATA} needs {info.offset + info.length})")
    self._tensors = {k: md for k, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    for key, md in self._tensors.items():
      if not (isinstance(md.size, torch.Size) and isinstance(getattr(md.properties, "dtype", None), torch.dtype)):
        raise CheckpointError(f"{path}/{DCP_METADATA}: tensor {key} has no valid size and dtype")
    self.shapes = {k: tuple(md.size) for k, md in self._tensors.items()}

    class Reader(FileSystemReader):

      def read_metadata(self, *args, **kwargs):
        return metadata

    self._reader = Reader(path)

  def read(self, key: str) -> np.ndarray:
    torch = require_torch()
    from torch.distributed.checkpoint import load

    md = self._tensors[key]
    state = {key: torch.empty(md.size, dtype=md.properties.dtype)}
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        load(state, storage_reader=self._reader, no_dist=True)
    except Exception as e:  # a damaged .distcp fails in many ways
      raise CheckpointError(f"{self.path}: cannot read tensor {key} ({_first_line(e)})") from e
    return tensor_to_numpy(state[key])


def _open_source(path: str) -> _Source:
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, DCP_METADATA)):
      return _DcpDir(path)
    names = sorted(os.listdir(path))
    if any(n.endswith(".distcp") for n in names):
      raise CheckpointError(f"{path}: .distcp files but no {DCP_METADATA} (an incomplete torch distributed checkpoint)")
    if INDEX_FILE in names:
      return _safetensors_from_index(path)
    files = [os.path.join(path, n) for n in names if n.endswith(".safetensors")]
    if not files:
      raise CheckpointError(f"{path}: no checkpoint in this folder (no {DCP_METADATA}, no .safetensors files)")
    return _SafetensorsFiles(path, files)
  if path.endswith(".safetensors"):
    return _SafetensorsFiles(path, [path])
  return _TorchFile(path)


class StateDict:
  """A checkpoint's state dict, read one tensor at a time.

  shapes: {key: shape} of every tensor (known before any is read); `read(key)` -> numpy array.
  """

  def __init__(self, src: str, *, prefix_choice: str | None = None):
    """src: any source in the module docstring.

    prefix_choice: for checkpoints whose keys start with `net.` / `net_ema.`, which copy to
    return ("net_ema" or "net"); the prefix is stripped. If the requested copy is absent, a
    file with only `net.*` keys (a released EMA export) is accepted for "net_ema".
    """
    self.src = src
    source = _open_source(resolve_source(src))
    raw = [k for k in source.shapes if not k.endswith("._extra_state")]
    has_net = any(k.startswith("net.") for k in raw)
    has_ema = any(k.startswith("net_ema.") for k in raw)
    prefix = ""
    if prefix_choice is not None and (has_net or has_ema):
      want = prefix_choice
      if want == "net_ema" and not has_ema:
        want = "net"  # released files hold the EMA weights under `net.`
      if want == "net" and not has_net:
        raise CheckpointError(f"{src}: no `net.*` keys (only `net_ema.*`); convert the EMA copy (leave out --noema)")
      prefix = want + "."
    self._raw_key = {k[len(prefix):]: k for k in raw if k.startswith(prefix)}
    self.shapes = {k: source.shapes[raw_key] for k, raw_key in self._raw_key.items()}
    self._source = source

  def read(self, key: str) -> np.ndarray:
    return self._source.read(self._raw_key[key])


def save_state_dict(state: Mapping[str, np.ndarray], dst: str, *, prefix: str = "") -> None:
  """Write a `.pt` (torch.save) or `.safetensors` file atomically."""
  torch = require_torch()
  tensors = {prefix + k: numpy_to_tensor(v) for k, v in state.items()}
  with utils.atomic_path(dst) as tmp:
    if dst.endswith(".safetensors"):
      from safetensors.torch import save_file

      save_file(tensors, tmp)
    else:
      torch.save(tensors, tmp)
