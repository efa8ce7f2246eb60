"""Analytic model FLOPs of the multiview control DiT (shared/spec/network.md §10).

One multiply-add = 2 FLOPs. These are *model* FLOPs (no recomputation), the numerator of MFU.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FlopCount:
  forward: float
  train_step: float


def dit_flops(cfg, *, num_views: int, latent_hw: tuple[int, int], batch: int = 1, train_base: bool = False) -> FlopCount:
  """Forward and training-step FLOPs for `batch` samples of `num_views` × `cfg.state_t` latent frames."""
  v, t = num_views, cfg.state_t
  s = (latent_hw[0] // cfg.patch_spatial) * (latent_hw[1] // cfg.patch_spatial)
  l, n = t * s, v * t * s
  d, f, m = cfg.model_channels, cfg.mlp_hidden, cfg.text_tokens_per_view
  c_t, c_in, r = cfg.crossattn_emb_channels, cfg.crossattn_proj_in_channels, cfg.adaln_lora_dim
  k = min(max(len(x) for x in cfg.cross_view_attn_map), v - 1)
  n_ctrl = cfg.num_control_blocks
  out_feat = cfg.patch_spatial**2 * cfg.out_channels

  # Per block: token-wise linears (self q,k,v,o; cross-view q,o and k,v over K·N gathered tokens;
  # text q,o; MLP), text k,v, adaLN, attention cores (self per view, cross-view, text).
  p_x = (8 + 4 + 4 * k + 4) * n * d * d + 4 * n * d * f
  text_kv = 4 * v * m * c_t * d
  adaln = 6 * (d * r + 3 * r * d)
  attn = 4 * n * l * d + 4 * k * n * s * d + 4 * n * m * d
  blocks = cfg.num_blocks + n_ctrl
  proj = (2 + 2 * n_ctrl) * n * d * d  # before_proj + after_proj
  fwd = (blocks * (p_x + text_kv + adaln + attn) + proj + 2 * 2 * n * cfg.patch_features * d + 2 * n * d * out_feat
         + 2 * v * m * c_in * c_t
         + 2 * (d * d + 3 * d * d) + 2 * v * d * 9 * d + 2 * (d * r + 2 * r * d))
  if train_base:
    step = 3 * fwd
  else:
    # Activation gradients through main blocks 1.. and the final layer; full backward (weights too)
    # through the control blocks, before/after_proj and the control embedder's weight.
    step = (fwd + (cfg.num_blocks - 1) * (p_x + 2 * attn) + 2 * n * d * out_feat
            + n_ctrl * (2 * p_x + text_kv + 2 * attn) + 2 * proj + 2 * n * cfg.patch_features * d)
  return FlopCount(float(batch * fwd), float(batch * step))


# Dense bf16 peak of the cards we run on (TFLOP/s), the denominator of MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}


def peak_tflops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)


def peak_memory_gib(device) -> float | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return None if not stats else stats.get("peak_bytes_in_use", 0) / 2**30
