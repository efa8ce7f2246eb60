"""What every source format hands the importer: episodes, their files, and why an episode is skipped.

A format module (raw.py, lerobot.py) lists `Episode`s cheaply; `Episode.media()` resolves the episode's files
(in a worker thread, so slow listings run in parallel) or raises `Unusable` naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from agibot_jax.data.agibot_world import captions


@dataclasses.dataclass(frozen=True)
class Blob:
  """The bytes of one file: a whole file, or a member of an uncompressed tar shard (`offset`, `size` in it)."""
  path: str
  member: str | None = None
  offset: int = 0
  size: int = -1

  @property
  def label(self) -> str:
    """The name messages and the manifest use: the path, or `shard.tar:member`."""
    return self.path if self.member is None else f"{self.path}:{self.member}"

  @property
  def url(self) -> str:
    """What FFmpeg and OpenCV open: the path, or FFmpeg's `subfile` view of the member (seekable, no copy)."""
    if self.member is None:
      return self.path
    return f"subfile,,start,{self.offset},end,{self.offset + self.size},,:{self.path}"

  def read(self) -> bytes:
    with open(self.path, "rb") as f:
      if self.member is None:
        return f.read()
      f.seek(self.offset)
      return f.read(self.size)


@dataclasses.dataclass(frozen=True)
class Media:
  """The files of one episode; per-view tuples follow the rig's cameras (`importer.Settings.rig`)."""
  videos: tuple[Blob, ...]
  first_frames: tuple[int, ...]  # the episode's first frame in each video (LeRobot v3 packs episodes), else 0
  num_frames: int | None  # declared by the source's metadata (LeRobot); None: the videos' own frame count
  fps: float | None  # declared by the source's metadata; None: the videos' own
  depth: tuple[Blob, ...] | None  # head depth PNGs, one per frame (raw release only)


class Episode(Protocol):
  task: str  # first part of the clip ids
  episode: str  # second part of the clip ids
  text: captions.EpisodeText

  def media(self, want_depth: bool) -> Media:
    """The episode's files. Raises Unusable when one is missing or unusable."""


def episode_key(episode: Episode) -> str:
  """`<task>_<episode>`, the prefix of the episode's clip ids `<task>_<episode>_c<k>`."""
  return f"{episode.task}_{episode.episode}"


class Unusable(Exception):
  """An episode (or a task's metadata) cannot be imported; `path` names the offending file or folder."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Skip:
  """An episode (or a whole shard / task) left out, with the file and the reason."""
  task: str
  episode: str  # "*" for every episode of a shard or task
  path: str
  reason: str

  @property
  def key(self) -> str:
    return f"{self.task}_{self.episode}"

  def __str__(self) -> str:
    return f"{self.key}: {self.path}: {self.reason}"
