"""What every capture source provides, whatever the hardware behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import av


class SourceError(Exception):
    """The source is missing or failed; the pipeline shows "no source" and retries."""


@dataclass(slots=True)
class Captured:
    """A raw frame and the media-clock time (ns since the clock's start) it was captured at.

    `lores`: the same picture at a smaller size, when the camera makes one (the Pi
    camera's lores stream), so that a rung of that size needs no scaling.
    """

    frame: av.VideoFrame | av.AudioFrame
    media_ns: int
    lores: av.VideoFrame | None = None


class VideoSource(Protocol):
    """Blocking, paced reads of yuv420p frames of `width` x `height` at `fps`."""

    width: int
    height: int
    fps: int

    def read(self) -> Captured:
        """The next frame; raises SourceError when the camera is gone."""
        ...

    def close(self) -> None: ...


class AudioSource(Protocol):
    """Blocking, paced reads of `frame_size`-sample frames (s16 or fltp)."""

    sample_rate: int
    channels: int

    def read(self) -> Captured:
        """The next frame; raises SourceError when the device is gone."""
        ...

    def close(self) -> None: ...
