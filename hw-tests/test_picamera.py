"""The Pi camera through picamera2, on a Raspberry Pi with a camera connected."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from appliance.board import PI5, detect_board
from appliance.capture.picamera import PicameraSource, hardware_h264_available, picamera_present
from appliance.media.clock import MediaClock

pytestmark = pytest.mark.picamera

FPS = 30
SECONDS = 10
NS = 1_000_000_000


def _expects_hardware(compatible: str) -> bool:
    # BCM2712 (Pi 5, CM5, Pi 500) has no H.264 encoder; the earlier SoCs do.
    return "bcm2712" not in compatible


def test_camera_found() -> None:
    assert picamera_present(), "libcamera lists no camera: check the ribbon and dtoverlay"


def test_expected_encoder_for_this_model(pi_model: str, pi_compatible: str) -> None:
    assert hardware_h264_available() == _expects_hardware(pi_compatible), pi_model


def test_board_profile_matches_the_hardware(pi_model: str, pi_compatible: str) -> None:
    board = detect_board()
    assert board.device, pi_model
    assert (board.hw_mbps > 0) == _expects_hardware(pi_compatible), (pi_model, board.key)
    assert (board is PI5) == ("bcm2712" in pi_compatible)


def test_ten_seconds_of_main_and_lores_frames() -> None:
    clock = MediaClock()
    src = PicameraSource(1280, 720, FPS, clock, lores=(854, 480))
    caps = []
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            caps.append(src.read())
    finally:
        src.close()
    stopped_media_ns = clock.media_ns()

    assert src.main_size == (1280, 720) and src.lores_size is not None
    assert SECONDS * FPS * 0.9 <= len(caps) <= SECONDS * FPS * 1.1
    assert src.dropped <= len(caps) * 0.02, "the camera lost frames with nothing to encode"
    for cap in caps[:: FPS]:
        assert isinstance(cap.frame, av.VideoFrame)
        assert (cap.frame.width, cap.frame.height) == (1280, 720)
        assert cap.lores is not None and (cap.lores.width, cap.lores.height) == src.lores_size
        # The same picture in both streams: the lores luma is main's, scaled.
        main = cap.frame.reformat(*src.lores_size).to_ndarray()[: src.lores_size[1]]
        lores = cap.lores.to_ndarray()[: src.lores_size[1]]
        assert abs(float(np.mean(main)) - float(np.mean(lores))) < 8
    times = [c.media_ns for c in caps]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(s > 0 for s in steps)
    assert abs(float(np.median(steps)) - NS / FPS) < 2_000_000, "sensor cadence, not read times"
    # Capture times are sensor times: the last one a frame or two before we stopped.
    assert 0 <= stopped_media_ns - times[-1] < 200_000_000
