"""Container probing and streaming decode of source videos, AV1 included.

AgiBot World's MP4s are AV1 (spec agibot_world_formats.md §1.3). Who decodes it:
  imageio-ffmpeg   its bundled FFmpeg binary carries libdav1d (used here, named explicitly with -c:v) and
                   libaom-av1; `av1_decoder()` checks the binary at run time.
  OpenCV           the pip wheels' FFmpeg has only the native `av1` decoder, which needs hardware
                   acceleration: it opens the file, reports its metadata, and decodes no frame (seen with
                   OpenCV 4.11 here and OpenCV 5.0 on the H200 machine). An AV1 source with the OpenCV backend
                   is refused (MissingCodecError) before any work.
Probing reads container metadata only (OpenCV, no decoding), so it works for every codec.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
from collections.abc import Iterator

import cv2
import numpy as np

from agibot_jax import video_io as video
from agibot_jax.data.agibot_world import source

AV1_DECODERS = ("libdav1d", "libaom-av1")  # in order of preference
AV1_FOURCC = "av01"


class MissingCodecError(RuntimeError):
  """No decoder of this backend can decode the source's codec; stops the whole import."""


@dataclasses.dataclass(frozen=True)
class StreamInfo:
  """Container metadata of one source video."""
  num_frames: int
  fps: float
  height: int
  width: int
  codec: str  # FourCC in lower case ("av01", "avc1"): OpenCV 4.11 reports AV1 as "av01", OpenCV 5.0 as "AV01"


def probe(blob: source.Blob) -> StreamInfo:
  """Frame count, fps, size and codec from the container (nothing is decoded).

  Raises:
    video.VideoError: the file cannot be opened or its metadata is missing (truncated or corrupt).
  """
  cap = cv2.VideoCapture(blob.url)
  try:
    if not cap.isOpened():
      raise video.VideoError(f"{blob.label}: cannot open video (missing moov atom: truncated or corrupt)")
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
    info = StreamInfo(num_frames=int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT))), fps=float(cap.get(cv2.CAP_PROP_FPS)),
                      height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                      codec="".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip("\0 ").lower())
  finally:
    cap.release()
  if info.num_frames <= 0 or not info.fps > 0 or info.height <= 0 or info.width <= 0:
    raise video.VideoError(f"{blob.label}: corrupt video metadata ({info.num_frames} frames, {info.fps} fps, "
                           f"{info.width}x{info.height})")
  return info


@functools.lru_cache(maxsize=None)
def av1_decoder() -> str | None:
  """The first of AV1_DECODERS that imageio-ffmpeg's FFmpeg binary has, or None."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

  listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-decoders"], capture_output=True,
                           text=True, check=False).stdout
  names = {line.split()[1] for line in listing.splitlines() if len(line.split()) > 1}
  return next((d for d in AV1_DECODERS if d in names), None)


def check_decodable(info: StreamInfo, backend: str, label: str) -> None:
  """Raises MissingCodecError when `backend` (resolved: imageio | opencv) cannot decode the stream."""
  if info.codec != AV1_FOURCC:
    return
  if backend == "opencv":
    raise MissingCodecError(
        f"{label} is AV1, which OpenCV's FFmpeg cannot decode in software (its av1 decoder needs hardware "
        f"acceleration); install imageio-ffmpeg (its FFmpeg decodes AV1 with libdav1d) and use "
        f"--video_backend=imageio or auto")
  if av1_decoder() is None:
    raise MissingCodecError(f"{label} is AV1 and imageio-ffmpeg's FFmpeg has none of the decoders "
                            f"{', '.join(AV1_DECODERS)}; install an imageio-ffmpeg build that has libdav1d")


def iter_frames(blob: source.Blob, info: StreamInfo, start: int, backend: str) -> Iterator[np.ndarray]:
  """RGB uint8 (H, W, 3) frames of `blob` from frame `start` to the end; close the generator to stop early.

  imageio seeks by time to half a frame before `start` (FFmpeg's accurate seek then drops the frames
  before it), so the first frame is `start` whatever the rounding of the timestamps. OpenCV skips frames
  one by one (exact for every container).
  """
  if backend == "opencv":
    yield from video.opencv_frames(blob.url, start=start, label=blob.label)
    return
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

  input_params = ["-c:v", av1_decoder()] if info.codec == AV1_FOURCC else []
  if start:
    input_params = ["-ss", f"{(start - 0.5) / info.fps:.6f}"] + input_params
  try:
    gen = imageio_ffmpeg.read_frames(blob.url, pix_fmt="rgb24", input_params=input_params,
                                     output_params=["-fps_mode", "passthrough"])
    width, height = next(gen)["size"]
    for buf in gen:
      yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
  except (OSError, RuntimeError, StopIteration) as e:
    raise video.VideoError(f"{blob.label}: cannot decode with imageio-ffmpeg ({str(e).splitlines()[0]})") from None
