"""The mapping engine shared by every converter.

A model's converter provides a *key table*: one `Entry` per PyTorch state-dict key, saying
where the tensor lives in the Flax parameter tree (a path, and an index along a leading
stacked-layers axis for scanned layers) and how its layout changes (`transform`). The engine

- checks a PyTorch state dict's keys and shapes (known before any tensor is read) against the
  abstract model (`jax.eval_shape`, nothing allocated), reporting *all* missing, unexpected and
  mis-shaped keys at once (`ConversionError`);
- converts it into Flax leaves one at a time (`flax_leaves`), each read when it is needed, so a
  converter can write a model larger than the free memory leaf by leaf;
- converts a Flax tree back to a PyTorch state dict with the reference's key names, bit-exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from agibot_jax.params_io import Path, flatten_tree, unflatten_tree

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


def check_state(
    shapes: Mapping[str, tuple[int, ...]],
    table: Iterable[Entry],
    abstract_tree: Mapping[str, Any],
    *,
    ignore: Callable[[str], bool] = lambda k: False,
    source: str = "",
) -> None:
  """Raises ConversionError listing every missing, unexpected and mis-shaped key of a state dict
  (given as {key: shape}) and every model parameter no key fills."""
  table = list(table)
  flat_abstract = flatten_tree(abstract_tree)
  by_key = {e.torch_key: e for e in table}
  missing = [e.torch_key for e in table if e.torch_key not in shapes]
  unexpected = [k for k in shapes if k not in by_key and not ignore(k)]
  mismatched = []
  for e in table:
    if e.torch_key in shapes:
      want = expected_torch_shape(e, flat_abstract)
      got = tuple(shapes[e.torch_key])
      if got != want:
        mismatched.append((e.torch_key, got, want))
  unmapped = check_table(table, abstract_tree)
  if missing or unexpected or mismatched or unmapped:
    raise ConversionError(missing, unexpected, mismatched, unmapped, source)


def cast_dtype(dtype: np.dtype, to: str | None) -> np.dtype:
  """The dtype an array of `dtype` gets when cast to `to` ("float32" | "bfloat16"; None keeps it).

  Only floating arrays (bfloat16 included) are cast."""
  if to is None or not (np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16):
    return np.dtype(dtype)
  return np.dtype(ml_dtypes.bfloat16) if to == "bfloat16" else np.dtype(to)


def _copy(dst: np.ndarray, src: np.ndarray, tile: int = 256) -> None:
  """dst[...] = src, tile by tile for 2-D arrays: a transposed view copied in one go misses the
  cache on nearly every element (10x slower for a 2048x8192 kernel)."""
  if src.ndim != 2:
    dst[...] = src
    return
  for i in range(0, src.shape[0], tile):
    for j in range(0, src.shape[1], tile):
      dst[i:i + tile, j:j + tile] = src[i:i + tile, j:j + tile]


def flax_leaves(
    read: Callable[[str], np.ndarray],
    table: Iterable[Entry],
    abstract_tree: Mapping[str, Any],
    *,
    dtype: str | None = None,
) -> Iterator[tuple[Path, np.ndarray]]:
  """(Flax path, numpy leaf) for every leaf of `abstract_tree`, each built when it is asked for.

  read: torch key -> numpy array in PyTorch layout (called once per key, in leaf order).
  dtype: cast floating leaves to "float32" | "bfloat16" (None keeps the checkpoint's).
  Check the state with `check_state` first: a missing key here is a KeyError.
  """
  flat_abstract = flatten_tree(abstract_tree)
  entries: dict[Path, list[Entry]] = {path: [] for path in flat_abstract}
  for e in table:
    entries[e.flax_path].append(e)
  for path, leaf_entries in entries.items():
    # Built in a call, so that this frame holds no reference to a leaf once it is handed on.
    yield path, _build_leaf(read, leaf_entries, _leaf_shape(flat_abstract[path]), dtype)


def _build_leaf(read, entries: list[Entry], shape: tuple[int, ...], dtype: str | None) -> np.ndarray:
  if entries[0].index is None:  # one tensor
    value = _TRANSFORMS[entries[0].transform][0](read(entries[0].torch_key))
    target = cast_dtype(value.dtype, dtype)
    if value.flags.c_contiguous and value.dtype == target:
      return value  # already in place: no copy
    out = np.empty(value.shape, target)
    _copy(out, value)
    return out
  out = None  # one tensor per slot of the stacked-layers axis
  for e in entries:
    value = _TRANSFORMS[e.transform][0](read(e.torch_key))
    if out is None:
      out = np.empty(shape, cast_dtype(value.dtype, dtype))
    _copy(out[e.index], value)
  return out


def torch_to_flax(
    state: Mapping[str, np.ndarray],
    table: Iterable[Entry],
    abstract_tree: Mapping[str, Any],
    *,
    ignore: Callable[[str], bool] = lambda k: False,
    source: str = "",
    dtype: str | None = None,
) -> dict[str, Any]:
  """In-memory PyTorch state dict (numpy arrays) -> Flax tree of numpy arrays shaped like `abstract_tree`.

  Raises ConversionError listing every problem (see `check_state`) before converting anything.
  """
  table = list(table)
  check_state({k: np.shape(v) for k, v in state.items()}, table, abstract_tree, ignore=ignore, source=source)
  return unflatten_tree(dict(flax_leaves(lambda k: np.asarray(state[k]), table, abstract_tree, dtype=dtype)))


def cast_floating(tree: Mapping[str, Any], dtype: str | None) -> dict[str, Any]:
  """Nested dict with its floating arrays (bfloat16 included) cast to `dtype` ("float32" | "bfloat16"); None keeps them."""
  return unflatten_tree({k: np.asarray(v).astype(cast_dtype(np.asarray(v).dtype, dtype), copy=False)
                         for k, v in flatten_tree(tree).items()})


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
