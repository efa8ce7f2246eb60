"""The mapping engine shared by every converter.

A model's converter provides a *key table*: one `Entry` per PyTorch state-dict key, saying
where the tensor lives in the Flax parameter tree (a path, and an index along a leading
stacked-layers axis for scanned layers) and how its layout changes (`transform`). The engine

- converts a PyTorch state dict into a Flax tree, checking every key and shape against the
  abstract model (`jax.eval_shape`, nothing allocated) and reporting *all* missing,
  unexpected and mis-shaped keys at once (`ConversionError`);
- converts a Flax tree back to a PyTorch state dict with the reference's key names, bit-exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

Path = tuple[str, ...]

# transform name -> (torch -> flax, flax -> torch given the torch shape)
_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, tuple], np.ndarray]]] = {
    "identity": (lambda a: a, lambda a, s: a),
    # nn.Linear weight (out, in) -> Dense kernel (in, out).
    "linear": (lambda a: a.T, lambda a, s: a.T),
    # Conv3d (O, I, kt, kh, kw) -> (kt, kh, kw, I, O).
    "conv3d": (lambda a: a.transpose(2, 3, 4, 1, 0), lambda a, s: a.transpose(4, 3, 0, 1, 2)),
    # Conv2d (O, I, kh, kw) -> (kh, kw, I, O).
    "conv2d": (lambda a: a.transpose(2, 3, 1, 0), lambda a, s: a.transpose(3, 2, 0, 1)),
    # Broadcast-shaped per-channel vectors, e.g. gamma (C, 1, 1, 1) -> (C,).
    "flatten": (lambda a: a.reshape(-1), lambda a, s: a.reshape(s)),
}


def torch_shape_of(transform: str, flax_shape: tuple[int, ...], torch_rank: int | None = None) -> tuple[int, ...]:
  """The PyTorch shape that `transform` maps onto `flax_shape`."""
  if transform == "identity":
    return tuple(flax_shape)
  if transform == "linear":
    return tuple(reversed(flax_shape))
  if transform == "conv3d":
    kt, kh, kw, i, o = flax_shape
    return (o, i, kt, kh, kw)
  if transform == "conv2d":
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if transform == "flatten":
    return tuple(flax_shape) + (1,) * ((torch_rank or 1) - 1)
  raise KeyError(transform)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch key and where it lives in the Flax tree."""

  torch_key: str
  flax_path: Path
  transform: str = "identity"
  index: int | None = None  # position along the leading stacked-layers axis
  torch_rank: int | None = None  # for "flatten": rank of the PyTorch tensor


class ConversionError(ValueError):
  """A checkpoint does not match the model. The message lists every problem."""

  def __init__(self, missing=(), unexpected=(), mismatched=(), unmapped=(), source: str = ""):
    self.missing, self.unexpected = list(missing), list(unexpected)
    self.mismatched, self.unmapped = list(mismatched), list(unmapped)
    lines = [f"checkpoint {source} does not match the model:" if source else "checkpoint does not match the model:"]
    if self.missing:
      lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
    if self.unexpected:
      lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
    for key, got, want in self.mismatched:
      lines.append(f"  wrong shape for {key}: checkpoint {tuple(got)}, model expects {tuple(want)}")
    if self.unmapped:
      lines.append(f"  model parameters with no checkpoint key ({len(self.unmapped)}): " + ", ".join(self.unmapped))
    super().__init__("\n".join(lines))


def flatten_tree(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  out: dict[Path, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten_tree(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def unflatten_tree(flat: Mapping[Path, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _leaf_shape(leaf) -> tuple[int, ...]:
  return tuple(getattr(leaf, "shape", ()))


def check_table(table: Iterable[Entry], abstract_tree: Mapping[str, Any]) -> list[str]:
  """Flax leaves (or stacked slots) that no table entry fills, as 'a/b/c[i]' strings."""
  flat = flatten_tree(abstract_tree)
  filled: dict[Path, set] = {}
  for e in table:
    filled.setdefault(e.flax_path, set()).add(e.index)
  unmapped = []
  for path, leaf in flat.items():
    got = filled.get(path, set())
    if not got:
      unmapped.append("/".join(path))
    elif None not in got:
      n = _leaf_shape(leaf)[0]
      unmapped += [f"{'/'.join(path)}[{i}]" for i in range(n) if i not in got]
  return unmapped


def expected_torch_shape(entry: Entry, abstract_tree_flat: Mapping[Path, Any]) -> tuple[int, ...]:
  shape = _leaf_shape(abstract_tree_flat[entry.flax_path])
  if entry.index is not None:
    shape = shape[1:]
  return torch_shape_of(entry.transform, shape, entry.torch_rank)


def torch_to_flax(
    state: Mapping[str, np.ndarray],
    table: Iterable[Entry],
    abstract_tree: Mapping[str, Any],
    *,
    ignore: Callable[[str], bool] = lambda k: False,
    source: str = "",
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict[str, Any]:
  """PyTorch state dict (numpy arrays) -> Flax tree of numpy arrays shaped like `abstract_tree`.

  Raises ConversionError listing every missing, unexpected and mis-shaped key (and any model
  parameter no key fills) before writing anything.
  """
  table = list(table)
  flat_abstract = flatten_tree(abstract_tree)
  by_key = {e.torch_key: e for e in table}
  missing = [e.torch_key for e in table if e.torch_key not in state]
  unexpected = [k for k in state if k not in by_key and not ignore(k)]
  mismatched = []
  for e in table:
    if e.torch_key in state:
      want = expected_torch_shape(e, flat_abstract)
      got = tuple(np.shape(state[e.torch_key]))
      if got != want:
        mismatched.append((e.torch_key, got, want))
  unmapped = check_table(table, abstract_tree)
  if missing or unexpected or mismatched or unmapped:
    raise ConversionError(missing, unexpected, mismatched, unmapped, source)

  flat_out: dict[Path, np.ndarray] = {}
  for e in progress(table):
    value = _TRANSFORMS[e.transform][0](np.asarray(state[e.torch_key]))
    if e.index is None:
      flat_out[e.flax_path] = value
    else:
      if e.flax_path not in flat_out:
        shape = _leaf_shape(flat_abstract[e.flax_path])
        flat_out[e.flax_path] = np.empty(shape, dtype=value.dtype)
      flat_out[e.flax_path][e.index] = value
  return unflatten_tree(flat_out)


def cast_floating(tree: Mapping[str, Any], dtype: str | None) -> dict[str, Any]:
  """Nested dict with its floating arrays (bfloat16 included) cast to `dtype` ("float32" | "bfloat16"); None keeps them."""
  if dtype is None:
    return dict(tree)
  target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)

  def one(a):
    a = np.asarray(a)
    return a.astype(target) if np.issubdtype(a.dtype, np.floating) or a.dtype == ml_dtypes.bfloat16 else a

  return unflatten_tree({k: one(v) for k, v in flatten_tree(tree).items()})


def flax_to_torch(tree: Mapping[str, Any], table: Iterable[Entry]) -> dict[str, np.ndarray]:
  """Flax tree -> PyTorch-layout numpy arrays keyed by the reference's names (bit-exact inverse)."""
  flat = flatten_tree(tree)
  out = {}
  for e in table:
    value = np.asarray(flat[e.flax_path])
    if e.index is not None:
      value = value[e.index]
    shape = torch_shape_of(e.transform, value.shape, e.torch_rank)
    out[e.torch_key] = np.array(_TRANSFORMS[e.transform][1](value, shape), order="C")
  return out
