"""The multiview control DiT's hyperparameters (`DiTConfig`) and which of its parameter groups train.

Names follow the reference's net config (shared/spec/network.md): `DiTConfig.from_config` reads `config.model.net`,
`DiTConfig.from_reference_kwargs` the reference constructor's kwargs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from agibot_jax import rig
from agibot_jax.models import remat

# Top-level parameter groups that post-training updates (the VACE control branch).
TRAINABLE_GROUPS = ("control_blocks", "control_embedder", "control_before_proj")
# Groups holding reference buffers (RoPE exponents): never trained, even with `model.train_base`.
BUFFER_GROUPS = ("rope_buffers",)


def is_trainable(path: Sequence[Any]) -> bool:
  """Whether the parameter at `path` (tuple of keys/DictKeys) belongs to the control branch."""
  first = path[0]
  first = getattr(first, "key", first)
  return str(first) in TRAINABLE_GROUPS


# Reference constructor options with the one value the Agibot network uses (spec §1).
REFERENCE_FIXED_OPTIONS = {
    "pos_emb_cls": "rope3d",
    "use_adaln_lora": True,
    "adaln_view_embedding": True,
    "concat_view_embedding": False,
    "enable_cross_view_attn": True,
    "use_crossattn_projection": True,
    "rope_enable_fps_modulation": False,
    "extra_per_block_abs_pos_emb": False,
    "use_input_hint_block": False,
    "vace_has_mask": False,
    "condition_strategy": "spaced",
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Hyperparameters of `dit.MultiViewControlDiT` (names follow the reference's net config)."""

  model_channels: int = 2048
  num_blocks: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  in_channels: int = 16
  out_channels: int = 16
  patch_spatial: int = 2
  patch_temporal: int = 1
  concat_padding_mask: bool = True
  adaln_lora_dim: int = 256
  crossattn_proj_in_channels: int = 100352
  crossattn_emb_channels: int = 1024
  text_tokens_per_view: int = 512
  n_cameras_emb: int = rig.VIEW_ROWS
  cross_view_attn_map: tuple[tuple[int, ...], ...] = rig.AGIBOT.cross_view_attn_map()
  state_t: int = 24
  max_img_h: int = 240
  max_img_w: int = 240
  max_frames: int = 128
  rope_h_extrapolation_ratio: float = 3.0
  rope_w_extrapolation_ratio: float = 3.0
  rope_t_extrapolation_ratio: float = 1.0
  timestep_scale: float = 0.001
  vace_block_every_n: int = 7
  num_max_modalities: int = 1
  param_dtype: str = "float32"
  dtype: str = "bfloat16"
  attention: str = "auto"
  remat_policy: str = "none"
  offload_block_inputs: bool = False
  remat_sublayers: bool = False
  mlp_chunks: int = 1
  cross_view_chunks: int = 1
  remat_segment_blocks: int = 1
  context_local_attention: bool = True

  def __post_init__(self):
    if self.patch_temporal != 1:
      raise ValueError("only patch_temporal=1 is supported (the reference's setting)")
    if self.model_channels % self.num_heads:
      raise ValueError(f"model_channels {self.model_channels} not divisible by num_heads {self.num_heads}")
    remat.policy(self.remat_policy, self.offload_block_inputs)  # rejects unknown names and bad combinations
    if self.remat_sublayers and self.remat_policy == "none":
      raise ValueError("remat_sublayers needs a remat_policy other than 'none'")
    if self.mlp_chunks < 1:
      raise ValueError(f"mlp_chunks must be >= 1, got {self.mlp_chunks}")
    if self.cross_view_chunks < 1:
      raise ValueError(f"cross_view_chunks must be >= 1, got {self.cross_view_chunks}")
    if self.remat_segment_blocks < 1:
      raise ValueError(f"remat_segment_blocks must be >= 1, got {self.remat_segment_blocks}")
    if self.remat_segment_blocks > 1 and self.remat_policy == "none":
      raise ValueError("remat_segment_blocks needs a remat_policy other than 'none'")

  @property
  def head_dim(self) -> int:
    return self.model_channels // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    return int(self.model_channels * self.mlp_ratio)

  @property
  def control_layers(self) -> tuple[int, ...]:
    """Main blocks after which a control hint is added ("spaced" strategy)."""
    return tuple(range(0, self.num_blocks, self.vace_block_every_n))

  @property
  def num_control_blocks(self) -> int:
    return len(self.control_layers)

  @property
  def patch_features(self) -> int:
    """Input features per patch: latent + condition mask (+ padding mask) channels × p²."""
    channels = self.in_channels + 1 + int(self.concat_padding_mask)
    return channels * self.patch_spatial**2

  @property
  def rope_dims(self) -> tuple[int, int]:
    """(dim_h (= dim_w), dim_t) of the head dimension split of 3D RoPE."""
    dim_h = self.head_dim // 6 * 2
    return dim_h, self.head_dim - 2 * dim_h

  @classmethod
  def from_config(cls, net: Mapping[str, Any]) -> "DiTConfig":
    """From `config.model.net` (configs/base.py); unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(net)
    unknown = set(values) - fields
    if unknown:
      raise KeyError(f"unknown model.net keys: {sorted(unknown)}")
    values["cross_view_attn_map"] = tuple(tuple(v) for v in values.get("cross_view_attn_map", cls.cross_view_attn_map))
    return cls(**values)

  @classmethod
  def from_reference_kwargs(cls, kwargs: Mapping[str, Any], **overrides) -> "DiTConfig":
    """From the reference constructor kwargs (e.g. a golden file's JSON `constructor_kwargs`).

    Options this port implements only in the Agibot setting must have that value; anything else is
    an error naming the option rather than a silently different network.
    """
    unsupported = {k: kwargs[k] for k, v in REFERENCE_FIXED_OPTIONS.items() if k in kwargs and kwargs[k] != v}
    if unsupported:
      raise ValueError(f"unsupported reference options {unsupported}; this port implements "
                       f"{ {k: REFERENCE_FIXED_OPTIONS[k] for k in unsupported} }")
    ids = kwargs.get("camera_to_view_id", dict(zip(rig.AGIBOT.names, rig.AGIBOT.view_ids)))
    n_cam = int(kwargs.get("n_cameras_emb", rig.VIEW_ROWS))
    nbr_map = [()] * n_cam
    for cam, nbrs in kwargs.get("cross_view_attn_map_str", {}).items():
      nbr_map[ids[cam]] = tuple(ids[n] for n in nbrs)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in kwargs.items() if k in fields}
    values["cross_view_attn_map"] = tuple(nbr_map)
    values.update(overrides)
    return cls(**values)
