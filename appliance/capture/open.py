"""Choosing and opening the capture sources the configuration asks for.

`source = "auto"` takes the Pi camera when picamera2 sees one, else a V4L2 camera at
`video.device` when that is a capture device, else the synthetic source. An explicit
source that is missing raises SourceError: the pipeline shows "no source" and retries,
rather than quietly streaming test pictures in place of a camera.
"""

from __future__ import annotations

import logging

from appliance.capture.picamera import PicameraSource, picamera_present
from appliance.capture.source import AudioSource, SourceError, VideoSource
from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo
from appliance.capture.v4l2 import AlsaAudio, V4l2Video, is_capture_device
from appliance.config.schema import Audio, Video
from appliance.media.clock import MediaClock

log = logging.getLogger(__name__)


def _picamera(cfg: Video, clock: MediaClock, gop_s: float) -> PicameraSource:
    top = cfg.ladder[0]  # picamera2 encodes one stream: the top rung
    return PicameraSource(
        cfg.width, cfg.height, cfg.fps, clock, track=top.name,
        bitrate=top.bitrate_kbps * 1000, gop_frames=max(1, round(gop_s * cfg.fps)),
    )


def open_video(cfg: Video, clock: MediaClock, *,
               gop_s: float = 2.0) -> VideoSource | PicameraSource:
    """The configured camera; `gop_s` (the segment duration) sets picamera2's IDR period."""
    source = cfg.source
    if source == "auto":
        if picamera_present():
            source = "picamera2"
        elif is_capture_device(cfg.device):
            source = "v4l2"
        else:
            source = "synthetic"
        log.info("video source auto: %s", source)
    if source == "picamera2":
        if not picamera_present():
            raise SourceError("no Pi camera found (picamera2 missing or no camera connected)")
        return _picamera(cfg, clock, gop_s)
    if source == "v4l2":
        return V4l2Video(cfg.device, cfg.width, cfg.height, cfg.fps, clock)
    return SyntheticVideo(cfg.width, cfg.height, cfg.fps, clock)


def open_audio(cfg: Audio, clock: MediaClock) -> AudioSource | None:
    """The configured microphone, or None when audio is disabled."""
    if not cfg.enabled:
        return None
    if cfg.source == "alsa":
        return AlsaAudio(cfg.device, cfg.sample_rate, cfg.channels, clock)
    return SyntheticAudio(cfg.sample_rate, cfg.channels, clock)
