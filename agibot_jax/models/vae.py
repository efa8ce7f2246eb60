"""Wan2.1 video VAE ("tokenizer"), channels-last: video [B, T, H, W, 3] <-> latents [B, t, h, w, 16].

Facts: shared/spec/tokenizer_and_text.md part A. Causal in time: latent frame 0 comes from pixel frame 0
alone, each later latent frame from 4 pixel frames; 8x spatial compression.

Streaming formulation. Every layer that looks back in time keeps its history in the Flax variable
collection "cache": a k=3 causal conv keeps the last 2 frames of its input (zeros before the first
call, which *is* the causal zero padding), the encoder's stride-2 time conv keeps the last frame it saw,
the decoder's time upsampler keeps the last 2 frames of its input. A call without an existing cache is
a "first" call: it sees the sequence from frame 0 on, so the same modules give

- a full causal pass when called once on the whole clip (no cache collection, or a fresh one), and
- the reference's chunked pass when called on frame 0 and then on later chunks with the cache carried
  (`encode` / `decode`): one compiled program for frame 0, one `lax.scan` over equal chunks, and at
  most one more for a shorter last chunk.

Both give the same numbers up to float rounding (tested).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agibot_jax import sharding
from agibot_jax.models import attention as attention_lib

CACHE = "cache"

# Per-channel latent normalisation (spec A.7): z = (mu - mean) * inv_std.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# What the production pipeline really applies: the constants as bf16 tensors, 1/std computed in bf16.
LATENT_MEAN_BF16 = (-0.7578125, -0.70703125, -0.91015625, 0.107421875, -0.1748046875, 0.96484375,
                    -0.1513671875, 1.5546875, 0.4140625, -0.0712890625, 0.55078125, -0.36328125,
                    -0.1923828125, -0.94921875, 0.25, -0.29296875)
LATENT_INV_STD_BF16 = (0.35546875, 0.6875, 0.4296875, 0.376953125, 0.8203125, 0.5625, 0.3828125,
                       0.48046875, 0.306640625, 0.462890625, 0.349609375, 0.64453125, 0.609375,
                       0.890625, 0.353515625, 0.5234375)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture and numerics. Defaults are the real Wan2.1 VAE (126,892,531 parameters)."""

  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  temporal_window: int = 16  # encoder chunk length in pixel frames (a multiple of 4); 0 = one full pass
  dtype: str = "float32"  # compute dtype ("bfloat16" on GPU)
  param_dtype: str = "float32"
  attention: str = "auto"  # xla | cudnn | auto (see AttentionBlock)
  attention_frames: int = 4  # frames per mid-block attention call: bounds the [HW, HW] logits memory
  latent_constants: str = "float32"  # float32 | bfloat16 (the rounded ones production applies)

  def __post_init__(self):
    if self.temporal_window % 4:
      raise ValueError(f"temporal_window must be a multiple of 4 (or 0 for a full pass), got {self.temporal_window}")
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError("temporal_downsample needs one flag per down-sampling stage (len(dim_mult) - 1)")
    if self.latent_constants not in ("float32", "bfloat16"):
      raise ValueError(f"latent_constants must be 'float32' or 'bfloat16', got {self.latent_constants!r}")

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temporal_downsample)

  @classmethod
  def from_tokenizer_config(cls, tok) -> "VAEConfig":
    """From the `config.model.tokenizer` node (dim, z_dim, temporal_window, dtype)."""
    return cls(dim=tok.dim, z_dim=tok.z_dim, temporal_window=tok.temporal_window,
               dtype=tok.dtype, param_dtype=tok.get("param_dtype", "float32"))


# --- layer layout (shared with convert/vae.py's key table) -------------------------------------------


def encoder_layout(cfg: VAEConfig) -> list[tuple[str, int, int]]:
  """(kind, in_channels, out_channels) of `encoder.downsamples.<i>`; kind in res/down2d/down3d."""
  dims = [cfg.dim * m for m in (1,) + tuple(cfg.dim_mult)]
  layers = []
  for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(cfg.num_res_blocks):
      layers.append(("res", c_in, c_out))
      c_in = c_out
    if i < len(cfg.dim_mult) - 1:
      layers.append(("down3d" if cfg.temporal_downsample[i] else "down2d", c_out, c_out))
  return layers


def decoder_layout(cfg: VAEConfig) -> list[tuple[str, int, int]]:
  """(kind, in_channels, out_channels) of `decoder.upsamples.<i>`; kind in res/up2d/up3d.

  Every up-sampler halves the channels, so the stage after it starts from half its width.
  """
  mult = tuple(cfg.dim_mult)
  dims = [cfg.dim * m for m in (mult[-1],) + mult[::-1]]
  temporal_upsample = tuple(cfg.temporal_downsample)[::-1]
  layers = []
  for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
    if i > 0:
      c_in //= 2
    for _ in range(cfg.num_res_blocks + 1):
      layers.append(("res", c_in, c_out))
      c_in = c_out
    if i < len(mult) - 1:
      layers.append(("up3d" if temporal_upsample[i] else "up2d", c_out, c_out // 2))
  return layers


def middle_channels(cfg: VAEConfig) -> int:
  return cfg.dim * cfg.dim_mult[-1]


# --- primitives ----------------------------------------------------------------------------------------


def _dtype(name: str):
  return jnp.dtype(name)


def _conv(x_NSC: jax.Array, kernel: jax.Array, bias: jax.Array, strides: Sequence[int]) -> jax.Array:
  """VALID convolution, channels-last, any number of spatial dims (2 or 3)."""
  spatial = "DHW"[-kernel.ndim + 2:]
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  y = jax.lax.conv_general_dilated(x_NSC, kernel, tuple(strides), "VALID", dimension_numbers=dn)
  return y + bias


def _per_frame(fn, x_BTHWC: jax.Array) -> jax.Array:
  """Apply a [N, H, W, C] -> [N, H', W', C'] op to every frame."""
  b, t = x_BTHWC.shape[:2]
  y = fn(x_BTHWC.reshape((b * t,) + x_BTHWC.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


def _history(module: nn.Module, x_BTHWC: jax.Array, n: int, name: str = "history") -> jax.Array:
  """[last n frames seen before ; x]; zeros before the first call. Remembers the new last n frames.

  Without a (mutable or existing) cache collection this is plain causal zero padding.
  """
  b, _, h, w, c = x_BTHWC.shape
  zeros = functools.partial(jnp.zeros, (b, n, h, w, c), x_BTHWC.dtype)
  if not (module.is_mutable_collection(CACHE) or module.has_variable(CACHE, name)):
    return jnp.concatenate([zeros(), x_BTHWC], axis=1)
  hist = module.variable(CACHE, name, zeros)
  seq = jnp.concatenate([hist.value, x_BTHWC], axis=1)
  if module.is_mutable_collection(CACHE):
    hist.value = seq[:, -n:]
  return seq


class ConvND(nn.Module):
  """Plain VALID convolution holding `kernel` (*kernel_size, I, O) and `bias` (O,)."""

  features: int
  kernel_size: tuple[int, ...]
  cfg: VAEConfig
  strides: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), _dtype(self.cfg.param_dtype))
    bias = self.param("bias", nn.initializers.zeros, (self.features,), _dtype(self.cfg.param_dtype))
    dt = _dtype(self.cfg.dtype)
    strides = self.strides or (1,) * len(self.kernel_size)
    return _conv(x.astype(dt), kernel.astype(dt), bias.astype(dt), strides)


class CausalConv3d(nn.Module):
  """Conv3d with zero 'same' padding in H/W and causal padding in time (kt-1 frames of history).

  x [B, T, H, W, I] -> [B, T, H, W, O].
  """

  features: int
  kernel_size: tuple[int, int, int]
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    kt, kh, kw = self.kernel_size
    x = x_BTHWC.astype(_dtype(self.cfg.dtype))
    if kt > 1:
      x = _history(self, x, kt - 1)
    x = jnp.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return ConvND(self.features, self.kernel_size, self.cfg, name="conv")(x)


class RMSNorm(nn.Module):
  """x / max(||x||_2, 1e-12) * sqrt(C) * scale over channels (exact L2 form, in float32)."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), _dtype(self.cfg.param_dtype))
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    y = x32 / jnp.maximum(norm, 1e-12) * math.sqrt(c) * scale.astype(jnp.float32)
    return y.astype(_dtype(self.cfg.dtype))


class ResidualBlock(nn.Module):
  """norm -> SiLU -> conv3 -> norm -> SiLU -> conv3, plus a 1x1x1 shortcut when channels change."""

  features: int
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    h = nn.silu(RMSNorm(self.cfg, name="norm1")(x_BTHWC))
    h = CausalConv3d(self.features, (3, 3, 3), self.cfg, name="conv1")(h)
    h = nn.silu(RMSNorm(self.cfg, name="norm2")(h))
    h = CausalConv3d(self.features, (3, 3, 3), self.cfg, name="conv2")(h)
    if x_BTHWC.shape[-1] != self.features:
      x_BTHWC = CausalConv3d(self.features, (1, 1, 1), self.cfg, name="shortcut")(x_BTHWC)
    return h + x_BTHWC.astype(h.dtype)


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H*W positions of each frame, with a residual.

  Head width is the channel count (384 in the real VAE). cuDNN's fused kernel takes head widths up
  to 256 only, so wider heads run on the exact "xla" path whatever `cfg.attention` asks for.
  """

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    b, t, hh, ww, c = x_BTHWC.shape
    h = RMSNorm(self.cfg, name="norm")(x_BTHWC).reshape(b * t, hh, ww, c)
    qkv = ConvND(3 * c, (1, 1), self.cfg, name="to_qkv")(h).reshape(b * t, hh * ww, 1, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    o = self._attend(q, k, v)
    o = ConvND(c, (1, 1), self.cfg, name="proj")(o.reshape(b * t, hh, ww, c))
    return o.reshape(b, t, hh, ww, c) + x_BTHWC.astype(o.dtype)

  def _attend(self, q_NLHK, k_NLHK, v_NLHK):
    """Attention over frames in groups of `cfg.attention_frames` (bounds the [HW, HW] logits memory)."""
    impl = attention_lib.resolve_implementation(self.cfg.attention)
    if impl == "cudnn" and q_NLHK.shape[-1] > 256:
      impl = "xla"
    attend = functools.partial(attention_lib.dot_product_attention, implementation=impl)
    n, g = q_NLHK.shape[0], self.cfg.attention_frames
    if n <= g:
      return attend(q_NLHK, k_NLHK, v_NLHK)
    pad = -n % g
    grouped = [jnp.pad(a, ((0, pad),) + ((0, 0),) * 3).reshape((-1, g) + a.shape[1:])
               for a in (q_NLHK, k_NLHK, v_NLHK)]
    o = jax.lax.map(lambda qkv: attend(*qkv), grouped)
    return o.reshape((-1,) + o.shape[2:])[:n]


class Downsample(nn.Module):
  """Per frame: zero pad right/bottom, 3x3 stride-2 conv. With `temporal`: then halve time causally.

  Time: frame 0 passes untouched; output frame j>=1 is the (3,1,1) stride-2 conv over frames
  (2j-2, 2j-1, 2j). A later chunk must hold an even number of frames; it continues from the
  last frame of the previous one.
  """

  channels: int
  temporal: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    conv = ConvND(self.channels, (3, 3), self.cfg, strides=(2, 2), name="resample")
    y = _per_frame(lambda f: conv(jnp.pad(f, ((0, 0), (0, 1), (0, 1), (0, 0)))), x_BTHWC)
    if not self.temporal:
      return y
    first = not self.has_variable(CACHE, "last")
    if not first and y.shape[1] % 2:
      raise ValueError(f"a chunk after the first must have an even frame count here, got {y.shape[1]}")
    seq = y
    if self.is_mutable_collection(CACHE) or not first:
      last = self.variable(CACHE, "last", lambda: y[:, -1:])
      seq = y if first else jnp.concatenate([last.value, y], axis=1)
      if self.is_mutable_collection(CACHE):
        last.value = y[:, -1:]
    out = [y[:, :1]] if first else []
    if seq.shape[1] >= 3:
      out.append(ConvND(self.channels, (3, 1, 1), self.cfg, strides=(2, 1, 1), name="time_conv")(seq))
    return jnp.concatenate(out, axis=1)


class Upsample(nn.Module):
  """With `temporal`: double time causally (frame 0 passes, later frames each give 2). Then per frame:
  nearest 2x2 repeat and a 3x3 conv to `channels // 2`.

  Time: a causal (3,1,1) conv over frames 1..T-1 gives 2C channels; half 0 becomes the earlier and
  half 1 the later output frame.
  """

  channels: int
  temporal: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    x = x_BTHWC
    if self.temporal:
      first = not self.has_variable(CACHE, "history")
      head, rest = (x[:, :1], x[:, 1:]) if first else (x[:, :0], x)
      seq = _history(self, rest, 2)
      if rest.shape[1]:
        b, t, h, w, _ = rest.shape
        pairs = ConvND(2 * self.channels, (3, 1, 1), self.cfg, name="time_conv")(seq)
        pairs = pairs.reshape(b, t, h, w, 2, self.channels)
        rest = jnp.moveaxis(pairs, 4, 2).reshape(b, 2 * t, h, w, self.channels)
      x = jnp.concatenate([head, rest], axis=1)
    conv = ConvND(self.channels // 2, (3, 3), self.cfg, name="resample")

    def spatial(f_NHWC):
      f = jnp.repeat(jnp.repeat(f_NHWC, 2, axis=1), 2, axis=2)
      return conv(jnp.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0))))

    return _per_frame(spatial, x)


class Middle(nn.Module):
  """ResidualBlock, AttentionBlock, ResidualBlock at the bottleneck width."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = ResidualBlock(c, self.cfg, name="res_0")(x)
    x = AttentionBlock(self.cfg, name="attn_1")(x)
    return ResidualBlock(c, self.cfg, name="res_2")(x)


class Head(nn.Module):
  """RMSNorm, SiLU, k=3 causal conv."""

  features: int
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return CausalConv3d(self.features, (3, 3, 3), self.cfg, name="conv")(nn.silu(RMSNorm(self.cfg, name="norm")(x)))


def _stage(kind: str, c_in: int, c_out: int, cfg: VAEConfig, name: str) -> nn.Module:
  if kind == "res":
    return ResidualBlock(c_out, cfg, name=name)
  if kind in ("down2d", "down3d"):
    return Downsample(c_in, kind == "down3d", cfg, name=name)
  return Upsample(c_in, kind == "up3d", cfg, name=name)


class Encoder(nn.Module):
  """video [B, T, H, W, 3] -> [B, 1+(T-1)/4, H/8, W/8, 2*z_dim] (mean and log-variance halves)."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    cfg = self.cfg
    x = CausalConv3d(cfg.dim, (3, 3, 3), cfg, name="conv1")(x_BTHWC)
    for i, (kind, c_in, c_out) in enumerate(encoder_layout(cfg)):
      x = _stage(kind, c_in, c_out, cfg, f"down_{i}")(x)
    x = Middle(cfg, name="middle")(x)
    return Head(2 * cfg.z_dim, cfg, name="head")(x)


class Decoder(nn.Module):
  """[B, t, h, w, z_dim] -> video [B, 1+4(t-1), 8h, 8w, 3] (not clamped)."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, z_BthwZ: jax.Array) -> jax.Array:
    cfg = self.cfg
    x = CausalConv3d(middle_channels(cfg), (3, 3, 3), cfg, name="conv1")(z_BthwZ)
    x = Middle(cfg, name="middle")(x)
    for i, (kind, c_in, c_out) in enumerate(decoder_layout(cfg)):
      x = _stage(kind, c_in, c_out, cfg, f"up_{i}")(x)
    return Head(3, cfg, name="head")(x)


class WanVAE(nn.Module):
  """Encoder + decoder with the 1x1x1 convs between them and the latent space (`conv1`, `conv2`).

  `encode_mu` / `decode_raw` work on un-normalised latents; `encode` / `decode` (module functions
  below) add the chunking, the normalisation and layout handling.
  """

  cfg: VAEConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)
    self.conv1 = CausalConv3d(2 * self.cfg.z_dim, (1, 1, 1), self.cfg)
    self.conv2 = CausalConv3d(self.cfg.z_dim, (1, 1, 1), self.cfg)

  def encode_mu(self, x_BTHWC: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] in [-1, 1] -> mean latent [B, t, h, w, z_dim] (before normalisation)."""
    return self.conv1(self.encoder(x_BTHWC))[..., : self.cfg.z_dim]

  def decode_raw(self, mu_BthwZ: jax.Array) -> jax.Array:
    """Un-normalised latent [B, t, h, w, z_dim] -> video [B, T, H, W, 3]."""
    return self.decoder(self.conv2(mu_BthwZ))

  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    return self.decode_raw(self.encode_mu(x_BTHWC))


# --- chunked encode / decode -------------------------------------------------------------------------


def latent_constants(cfg: VAEConfig) -> tuple[jax.Array, jax.Array]:
  """(mean, inv_std) float32 [z_dim] for z = (mu - mean) * inv_std."""
  if cfg.latent_constants == "bfloat16":
    return jnp.asarray(LATENT_MEAN_BF16, jnp.float32), jnp.asarray(LATENT_INV_STD_BF16, jnp.float32)
  return jnp.asarray(LATENT_MEAN, jnp.float32), 1.0 / jnp.asarray(LATENT_STD, jnp.float32)


def _check_frames(n: int, factor: int, what: str) -> None:
  if (n - 1) % factor:
    raise ValueError(f"{what} must have 1 + {factor}k frames, got {n}")


def _streamed(step, x_BTHWC: jax.Array, chunk: int):
  """Run `step(cache, x) -> (y, cache)` on frame 0, then a scan over `chunk`-frame pieces, then the rest.

  Compiles at most three shapes of the network, whatever the clip length.
  """
  b = x_BTHWC.shape[0]
  y0, cache = step(None, x_BTHWC[:, :1])
  rest = x_BTHWC[:, 1:]
  n, r = divmod(rest.shape[1], chunk)
  ys = [y0]
  if n:
    chunks = jnp.moveaxis(rest[:, : n * chunk].reshape((b, n, chunk) + rest.shape[2:]), 1, 0)

    def body(c, x):
      y, c = step(c, x)
      return c, y

    cache, y_n = jax.lax.scan(body, cache, chunks)
    ys.append(jnp.moveaxis(y_n, 0, 1).reshape((b, -1) + y_n.shape[3:]))
  if r:
    ys.append(step(cache, rest[:, n * chunk:])[0])
  return jnp.concatenate(ys, axis=1)


def _cached_apply(model: WanVAE, params, method):
  def step(cache, x):
    variables = {"params": params} if cache is None else {"params": params, CACHE: cache}
    y, new = model.apply(variables, x, method=method, mutable=[CACHE])
    return y, new[CACHE]

  return step


def encode(model: WanVAE, params, video_BTHWC: jax.Array, *, normalize: bool = True) -> jax.Array:
  """Video [B, T, H, W, 3] in [-1, 1] (T = 1+4k) -> latents [B, 1+k, H/8, W/8, z_dim] float32.

  Chunked as the reference (frame 0, then `cfg.temporal_window`-frame chunks; 0 = one full pass).
  normalize: apply (mu - mean) * inv_std (spec A.7); False returns the raw mean mu.
  """
  cfg = model.cfg
  _check_frames(video_BTHWC.shape[1], cfg.temporal_factor, "video")
  x = video_BTHWC.astype(_dtype(cfg.dtype))
  if cfg.temporal_window:
    mu = _streamed(_cached_apply(model, params, WanVAE.encode_mu), x, cfg.temporal_window)
  else:
    mu = model.apply({"params": params}, x, method=WanVAE.encode_mu)
  mu = mu.astype(jnp.float32)
  if not normalize:
    return mu
  mean, inv_std = latent_constants(cfg)
  return (mu - mean) * inv_std


def decode(model: WanVAE, params, latents_BthwZ: jax.Array, *, normalized: bool = True,
           frame_by_frame: bool = True) -> jax.Array:
  """Latents [B, t, h, w, z_dim] -> video [B, 1+4(t-1), 8h, 8w, 3] float32, roughly in [-1, 1].

  Frame by frame as the reference (latent frame 0, then a scan over the others); False = one pass.
  """
  cfg = model.cfg
  z = latents_BthwZ.astype(jnp.float32)
  if normalized:
    mean, inv_std = latent_constants(cfg)
    z = z / inv_std + mean
  z = z.astype(_dtype(cfg.dtype))
  if frame_by_frame:
    video = _streamed(_cached_apply(model, params, WanVAE.decode_raw), z, 1)
  else:
    video = model.apply({"params": params}, z, method=WanVAE.decode_raw)
  return video.astype(jnp.float32)


def init_params(model: WanVAE, rng: jax.Array):
  """Random parameters (the tree every converter and checkpoint uses)."""
  s = model.cfg.spatial_factor
  x = jnp.zeros((1, 1 + model.cfg.temporal_factor, 2 * s, 2 * s, 3), _dtype(model.cfg.dtype))
  return model.init(rng, x)["params"]


def abstract_params(model: WanVAE):
  """The parameter tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
  return jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))


# --- multiview batch API (training / sampling) -----------------------------------------------------


def loader_to_channels_last(video_BCTHW: jax.Array) -> jax.Array:
  """(B, 3, T, H, W) as the data loader gives it -> (B, T, H, W, 3)."""
  if video_BCTHW.ndim != 5 or video_BCTHW.shape[1] != 3:
    raise ValueError(f"expected a (B, 3, T, H, W) video, got shape {video_BCTHW.shape}")
  return jnp.moveaxis(video_BCTHW, 1, -1)


def to_model_range(video: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 x/127.5 - 1; floating input is taken to be in [-1, 1] already."""
  if video.dtype == jnp.uint8:
    return video.astype(jnp.float32) / 127.5 - 1.0
  if not jnp.issubdtype(video.dtype, jnp.floating):
    raise ValueError(f"video must be uint8 or floating in [-1, 1], got {video.dtype}")
  return video


def _fold_views(x_BNHWC: jax.Array, num_views: int, mesh: jax.sharding.Mesh | None) -> jax.Array:
  b, n = x_BNHWC.shape[:2]
  if n % num_views:
    raise ValueError(f"{n} frames do not split into {num_views} views")
  x = x_BNHWC.reshape((b * num_views, n // num_views) + x_BNHWC.shape[2:])
  if mesh is not None:
    if jax.sharding.AxisType.Explicit in mesh.axis_types:
      raise ValueError("the VAE shards its batch with with_sharding_constraint: build the mesh with "
                       "axis_types=(jax.sharding.AxisType.Auto,) * 3")
    spec = sharding.logical_to_spec(("activation_clips",) + (None,) * (x.ndim - 1), x.shape, dict(mesh.shape))
    x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
  return x


def _unfold_views(x_BVTHWC: jax.Array, batch: int) -> jax.Array:
  bv, t = x_BVTHWC.shape[:2]
  return x_BVTHWC.reshape((batch, (bv // batch) * t) + x_BVTHWC.shape[2:])


def encode_multiview(model: WanVAE, params, video_BNHWC: jax.Array, *, num_views: int,
                     mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """Multiview clip (B, V*T, H, W, 3), views concatenated in time (view-major), uint8 or [-1, 1]
  -> normalised latents (B, V*t, H/8, W/8, z_dim) float32, view-major.

  Each view is encoded on its own (views folded into the batch, spread over the devices of `mesh` when
  given and they divide the clip count). To encode a video and its control map in one call, stack them along B.
  jit with `model` and `num_views` static, e.g. `jax.jit(encode_multiview, static_argnums=0,
  static_argnames=("num_views", "mesh"))`.
  """
  x = _fold_views(to_model_range(video_BNHWC), num_views, mesh)
  return _unfold_views(encode(model, params, x), video_BNHWC.shape[0])


def decode_multiview(model: WanVAE, params, latents_BNhwZ: jax.Array, *, num_views: int,
                     mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """Normalised latents (B, V*t, h, w, z_dim), view-major -> video (B, V*T, 8h, 8w, 3) float32 ~[-1, 1]."""
  z = _fold_views(latents_BNhwZ, num_views, mesh)
  return _unfold_views(decode(model, params, z), latents_BNhwZ.shape[0])

