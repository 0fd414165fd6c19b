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


def lores_size(cfg: Video) -> tuple[int, int] | None:
    """The lores stream's size: the largest rung that is not the main size (None: every
    rung is the main size). That rung comes from the ISP without scaling, and any rung
    smaller still scales from it instead of from main."""
    main = (cfg.width, cfg.height)
    sizes = sorted({(r.width, r.height) for r in cfg.ladder} - {main}, key=lambda s: s[0] * s[1])
    return sizes[-1] if sizes else None


def open_video(cfg: Video, clock: MediaClock) -> VideoSource:
    """The configured camera (the Pi camera with a lores stream for a lower rung)."""
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
        return PicameraSource(cfg.width, cfg.height, cfg.fps, clock, lores=lores_size(cfg))
    if source == "v4l2":
        return V4l2Video(cfg.device, cfg.width, cfg.height, cfg.fps, clock)
    return SyntheticVideo(cfg.width, cfg.height, cfg.fps, clock, cfg.synthetic_pattern)


def open_audio(cfg: Audio, clock: MediaClock) -> AudioSource | None:
    """The configured microphone, or None when audio is disabled."""
    if not cfg.enabled:
        return None
    if cfg.source == "alsa":
        return AlsaAudio(cfg.device, cfg.sample_rate, cfg.channels, clock)
    return SyntheticAudio(cfg.sample_rate, cfg.channels, clock)
