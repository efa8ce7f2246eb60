"""Sharding rules, stated in one place.

Parameters and activations carry logical axis names (`nn.with_logical_partitioning`,
`nn.with_logical_constraint`); this table maps them onto the device mesh
("data", "fsdp", "context"). Following MaxText, parameter axes and activation axes have
separate names so FSDP-sharding a weight never forces its activations onto the same axis.
"""

from __future__ import annotations

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
    # Activations: batch over data x fsdp, the token axis of each view over context.
    ("activation_batch", ("data", "fsdp")),
    ("activation_view", None),
    ("activation_length", "context"),
    ("activation_embed", None),
    ("activation_heads", None),
    ("activation_kv", None),
    ("activation_text_length", None),
)
