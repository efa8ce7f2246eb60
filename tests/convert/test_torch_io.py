"""convert/torch_io.py: nothing in a checkpoint runs code; every unreadable input is one line naming its file."""

import json
import pathlib
import pickle
import shutil

import ml_dtypes
import pytest

torch = pytest.importorskip("torch", reason="needs the `convert` extra (torch)")
import torch.distributed.checkpoint as dcp  # noqa: E402

from convert import torch_io  # noqa: E402
from tests.convert.reference import assert_one_line_error, run_cli  # noqa: E402

# dcp.save, writing the test checkpoints, says it assumes a single process: it does.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class _Payload:
  """Unpickling it creates `marker`: what a crafted checkpoint would do with os.system."""

  def __init__(self, marker):
    self.marker = pathlib.Path(marker)

  def __reduce__(self):
    return pathlib.Path.touch, (self.marker,)


class _Custom:
  """A class torch's weights-only unpickler does not know."""


def _dcp(path, state):
  dcp.save(state, checkpoint_id=str(path), no_dist=True)
  return path


def _plant_payload(dcp_dir, marker):
  """Rewrites the `.metadata` of a real DCP checkpoint with a payload among its genuine contents."""
  meta_file = dcp_dir / ".metadata"
  with open(meta_file, "rb") as f:
    metadata = pickle.load(f)  # our own file, written just now
  metadata.planner_data = {"net.x": _Payload(marker)}
  meta_file.write_bytes(pickle.dumps(metadata))
  return meta_file


@pytest.mark.parametrize("module", ["convert.dit", "convert.vae", "convert.text_encoder"])
def test_a_crafted_dcp_metadata_runs_no_code(tmp_path, golden_dir, module):
  src = _dcp(tmp_path / "ckpt", {"net": {"x": torch.zeros(2)}})
  marker = tmp_path / "pwned"
  meta_file = _plant_payload(src, marker)
  shutil.copy(golden_dir / "text_tiny" / "checkpoint" / "config.json", src)  # what the text encoder reads first
  extra = ["--dim", 8] if module == "convert.vae" else []
  proc = run_cli(module, "--src", src, "--dst", tmp_path / "out", *extra)
  assert not marker.exists()
  assert_one_line_error(proc, meta_file, "refused to unpickle pathlib.Path.touch")
  assert not (tmp_path / "out").exists()


def test_a_bare_payload_as_dcp_metadata_is_refused(tmp_path):
  src = tmp_path / "ckpt"
  src.mkdir()
  (src / ".metadata").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
  with pytest.raises(torch_io.CheckpointError, match="refused to unpickle"):
    torch_io.StateDict(str(src))
  assert not (tmp_path / "pwned").exists()


def test_dcp_round_trip_reads_every_tensor_and_never_a_non_tensor_entry(tmp_path):
  # The allow-list covers what torch.distributed.checkpoint.save writes: nested dicts, every
  # dtype, scalars, and non-tensor entries (which DCP itself would load with plain pickle).
  marker = tmp_path / "pwned"
  tensors = {
      "net.a.weight": torch.randn(3, 4),
      "net.b": torch.randn(5).to(torch.bfloat16),
      "net.c": torch.randn(2, 2).to(torch.float16),
      "net.step": torch.tensor(7, dtype=torch.int64),
      "net.mask": torch.tensor([True, False]),
      "net_ema.a.weight": torch.randn(3, 4),
  }
  nested = {"net": {k[4:]: v for k, v in tensors.items() if k.startswith("net.")},
            "net_ema": {"a.weight": tensors["net_ema.a.weight"]}, "trap": _Payload(marker), "iteration": 3}
  state = torch_io.StateDict(str(_dcp(tmp_path / "ckpt", nested)))
  assert state.shapes == {k: tuple(v.shape) for k, v in tensors.items()}
  for key, want in tensors.items():
    got = state.read(key)
    assert got.shape == tuple(want.shape) and got.tobytes() == torch_io.tensor_to_numpy(want).tobytes(), key
  assert state.read("net.b").dtype == ml_dtypes.bfloat16
  assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Unreadable inputs: one line naming the file


def _not_a_checkpoint(tmp_path):
  (tmp_path / "notes.pt").write_text("these are not weights\n")
  return tmp_path / "notes.pt", tmp_path / "notes.pt", "not a PyTorch checkpoint"


def _truncated_pt(tmp_path):
  torch.save({"w": torch.randn(256, 256)}, tmp_path / "m.pt")
  data = (tmp_path / "m.pt").read_bytes()
  (tmp_path / "m.pt").write_bytes(data[:len(data) // 2])
  return tmp_path / "m.pt", tmp_path / "m.pt", "truncated"


def _pt_not_a_state_dict(tmp_path):
  torch.save(torch.zeros(3), tmp_path / "t.pt")
  return tmp_path / "t.pt", tmp_path / "t.pt", "expected a state dict, got Tensor"


def _pt_with_unknown_type(tmp_path):
  torch.save({"w": torch.zeros(3), "x": _Custom()}, tmp_path / "c.pt")
  return tmp_path / "c.pt", tmp_path / "c.pt", "weights_only=True"


def _pt_with_damaged_tensor_bytes(tmp_path):
  """Issue 33 row 4: torch.load(mmap=True) checks no CRC, so convert.dit exited 0 with wrong weights."""
  import zipfile

  torch.save({"w": torch.randn(256, 256)}, tmp_path / "m.pt")
  with zipfile.ZipFile(tmp_path / "m.pt") as archive:
    entry = archive.getinfo("m/data/0")
  data = bytearray((tmp_path / "m.pt").read_bytes())
  data[entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + 1000] ^= 0xFF  # a byte of the tensor
  (tmp_path / "m.pt").write_bytes(bytes(data))
  torch.load(tmp_path / "m.pt", mmap=True, weights_only=True)  # what was used: reads it without a word
  return tmp_path / "m.pt", tmp_path / "m.pt", "entry m/data/0 is damaged (Bad CRC-32"


def _extended_safetensors(tmp_path):
  from safetensors.torch import save_file

  save_file({"w": torch.randn(64, 64)}, str(tmp_path / "m.safetensors"))
  size = (tmp_path / "m.safetensors").stat().st_size
  with open(tmp_path / "m.safetensors", "ab") as f:
    f.write(bytes(8))
  return tmp_path / "m.safetensors", tmp_path / "m.safetensors", f"{size + 8} bytes, but its header describes {size}"


def _missing_file(tmp_path):
  return tmp_path / "absent.pt", tmp_path / "absent.pt", "not found"


def _truncated_safetensors(tmp_path):
  from safetensors.torch import save_file

  save_file({"w": torch.randn(64, 64)}, str(tmp_path / "m.safetensors"))
  data = (tmp_path / "m.safetensors").read_bytes()
  (tmp_path / "m.safetensors").write_bytes(data[:len(data) - 100])
  return tmp_path / "m.safetensors", tmp_path / "m.safetensors", "not a readable safetensors file"


def _index_names_a_missing_shard(tmp_path):
  from safetensors.torch import save_file

  save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
  return tmp_path, tmp_path / "model.safetensors.index.json", "model-00002-of-00002.safetensors"


def _index_lists_a_tensor_its_shard_lacks(tmp_path):
  from safetensors.torch import save_file

  save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00001.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      "a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}}))
  return tmp_path, tmp_path / "model.safetensors.index.json", "lists b in model-00001-of-00001.safetensors"


def _empty_dir(tmp_path):
  (tmp_path / "empty").mkdir()
  return tmp_path / "empty", tmp_path / "empty", "no checkpoint in this folder"


def _dcp_without_metadata(tmp_path):
  src = _dcp(tmp_path / "ckpt", {"w": torch.zeros(3)})
  (src / ".metadata").unlink()
  return src, src, "no .metadata"


def _dcp_with_garbage_metadata(tmp_path):
  src = _dcp(tmp_path / "ckpt", {"w": torch.zeros(3)})
  (src / ".metadata").write_bytes(b"\x80\x04not a pickle")
  return src, src / ".metadata", "not a readable torch distributed checkpoint metadata file"


def _dcp_with_truncated_data(tmp_path):
  src = _dcp(tmp_path / "ckpt", {"w": torch.zeros(300)})
  (data,) = src.glob("*.distcp")
  data.write_bytes(data.read_bytes()[:100])
  return src, data, "truncated"


@pytest.mark.parametrize("case", [
    _not_a_checkpoint, _truncated_pt, _pt_with_damaged_tensor_bytes, _pt_not_a_state_dict, _pt_with_unknown_type,
    _missing_file, _truncated_safetensors, _extended_safetensors, _index_names_a_missing_shard, _index_lists_a_tensor_its_shard_lacks, _empty_dir,
    _dcp_without_metadata, _dcp_with_garbage_metadata, _dcp_with_truncated_data,
], ids=lambda f: f.__name__.strip("_"))
def test_an_unreadable_input_is_one_line_naming_the_file(tmp_path, case):
  src, named, why = case(tmp_path)
  with pytest.raises((torch_io.CheckpointError, FileNotFoundError)) as e:
    torch_io.StateDict(str(src))
  message = str(e.value)
  assert "\n" not in message and str(named) in message and why in message, message


def test_the_cli_reports_an_unreadable_input_in_one_line(tmp_path):
  src, named, why = _not_a_checkpoint(tmp_path)
  assert_one_line_error(run_cli("convert.dit", "--src", src, "--dst", tmp_path / "out"), named, why)


def test_missing_torch_is_one_line_with_the_cpu_install(monkeypatch):
  """Issue 31, item 2: without the extra, reading or writing a .pt says how to install a CPU torch (PyPI's Linux
  wheel pulls CUDA), as a CheckpointError (one line, exit 2) instead of an ImportError traceback."""
  monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(torch_io.CheckpointError) as err:
    torch_io.require_torch()
  assert str(err.value) == torch_io.TORCH_MISSING and "\n" not in str(err.value)
  assert "reading or writing" in str(err.value) and "--index-url https://download.pytorch.org/whl/cpu" in str(err.value)


def test_a_hub_file_is_checked_against_the_hubs_sha256(tmp_path, monkeypatch):
  """Issue 33 row 4: `hf://` files are compared with the sha256 the Hub gave (their cache blob's name), offline."""
  import hashlib

  import huggingface_hub.constants as constants

  content = b"weights" * 1000
  sha = hashlib.sha256(content).hexdigest()
  repo = tmp_path / "hub" / "models--nvidia--Cosmos-Experimental"
  (repo / "blobs").mkdir(parents=True)
  (repo / "blobs" / sha).write_bytes(content)
  snapshot = repo / "snapshots" / ("a" * 40) / "uuid-1234"
  snapshot.mkdir(parents=True)
  (snapshot / "model_ema_bf16.pt").symlink_to(repo / "blobs" / sha)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("a" * 40)
  for name, value in (("HF_HUB_CACHE", str(tmp_path / "hub")), ("HF_HUB_OFFLINE", True)):
    monkeypatch.setattr(constants, name, value)
  src = "hf://nvidia/Cosmos-Experimental/uuid-1234/model_ema_bf16.pt"
  assert pathlib.Path(torch_io.resolve_source(src)).read_bytes() == content
  (repo / "blobs" / sha).write_bytes(content[:-1] + b"x")  # damaged in the cache
  with pytest.raises(torch_io.CheckpointError) as e:
    torch_io.resolve_source(src)
  assert str(e.value).startswith(f"{src}: the cached file {repo / 'blobs' / sha} has sha256 ")
  assert f"but the Hub gave {sha} for it" in str(e.value) and "\n" not in str(e.value)
