"""Sharding rules, stated in one place.

Parameters and activations carry logical axis names (`nn.with_logical_partitioning`,
`nn.with_logical_constraint`); this table maps them onto the device mesh
("data", "fsdp", "context"). Following MaxText, parameter axes and activation axes have
separate names so FSDP-sharding a weight never forces its activations onto the same axis.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters: FSDP over the model width; everything else replicated.
    ("embed", "fsdp"),
    ("text_in", "fsdp"),
    ("mlp", None),
    ("patch", None),
    ("lora", None),
    ("heads", None),
    ("kv", None),
    ("layers", None),
    ("vocab", None),
    ("norm", None),
    # Activations: batch over data x fsdp, the token axis of each view over context. Attention moves the context
    # axis to the heads (dit.heads_sharded), as the cuDNN kernel cannot split a sequence; with
    # model.net.context_local_attention the cross-view and text attentions run per device instead (context_local).
    ("activation_batch", ("data", "fsdp")),
    ("activation_view", None),
    ("activation_length", "context"),
    ("activation_embed", None),
    ("activation_heads", "context"),
    # Independent clips (views × video/control) through the VAE: spread over every device where they divide.
    ("activation_clips", ("data", "fsdp", "context")),
)


def _mesh_axes_for(name: str | None) -> tuple[str, ...]:
  target = dict(LOGICAL_AXIS_RULES).get(name) if name else None
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(logical_axes, shape, mesh_shape) -> PartitionSpec:
  """Mesh PartitionSpec for an array with these logical axes and shape.

  Mesh axes of size 1, already used, or not dividing the dimension are dropped (longest dividing
  prefix kept), so e.g. a batch of 1 stays replicated on a data-parallel mesh instead of failing.
  """
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    axes = tuple(a for a in _mesh_axes_for(name) if a not in used and mesh_shape.get(a, 1) > 1)
    while axes and dim % math.prod(mesh_shape[a] for a in axes):
      axes = axes[:-1]
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """`with_sharding_constraint` by logical axes under the current mesh (`jax.set_mesh`); no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, dict(mesh.shape)))


def context_local(fn, in_axes: tuple, out_axes: tuple[str | None, ...], *args: jax.Array) -> jax.Array:
  """`fn(*args)` run per device of the context axis on its token shards (`jax.shard_map`, manual over "context").

  For computations that need no communication once the tokens are split (attention whose queries keep the
  block's token split and whose keys are local or replicated). Each array is split over the context axis by its
  logical axes; the other mesh axes stay automatic. An array replicated over the context axis (e.g. text keys)
  gets its gradient summed over it. Without a context axis, or when nothing gets split, `fn` runs unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or dict(mesh.shape).get("context", 1) == 1:
    return fn(*args)
  shape = dict(mesh.shape)
  in_specs = tuple(logical_to_spec(axes, a.shape, shape) for axes, a in zip(in_axes, args))
  out_spec = logical_to_spec(out_axes, jax.eval_shape(fn, *args).shape, shape)
  if "context" not in out_spec:
    return fn(*args)
  return jax.shard_map(fn, in_specs=in_specs, out_specs=out_spec, check_vma=False)(*args)


def make_mesh(data: int = 1, fsdp: int = -1, context: int = 1, devices=None) -> Mesh:
  """The (data, fsdp, context) device mesh; one of the sizes may be -1 (all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, context]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} context={context}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into mesh {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} context={sizes[2]} needs {math.prod(sizes)} devices, "
                     f"{len(devices)} available")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def param_shardings(boxed_params, mesh: Mesh):
  """NamedShardings for a parameter tree whose leaves carry logical axis names (`nn.Partitioned`).

  Leaves without names (buffers) are replicated.
  """
  def one(leaf):
    names = leaf.names if isinstance(leaf, nn.Partitioned) else ()
    value = leaf.unbox() if isinstance(leaf, nn.Partitioned) else leaf
    names = tuple(names) + (None,) * (len(value.shape) - len(names))
    return NamedSharding(mesh, logical_to_spec(names, value.shape, dict(mesh.shape)))

  return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh, shape) -> NamedSharding:
  """Leading (batch) axis over data×fsdp where it divides; everything else replicated."""
  return NamedSharding(mesh, logical_to_spec(("activation_batch",) + (None,) * (len(shape) - 1), shape, dict(mesh.shape)))


def spread_shardings(abstract_tree, mesh: Mesh):
  """Shardings for a frozen, inference-only model (the text encoder): every array is split along its largest
  axis that divides evenly over all devices of the mesh (FSDP-style; XLA gathers each layer's weights when
  used), else replicated."""
  n = mesh.devices.size

  def one(leaf):
    spec = [None] * len(leaf.shape)
    divisible = [i for i, d in enumerate(leaf.shape) if n > 1 and d % n == 0]
    if divisible:
      spec[max(divisible, key=lambda i: leaf.shape[i])] = MESH_AXES
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(one, abstract_tree)
