"""The Pi camera through picamera2, on a Raspberry Pi with a camera connected."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.capture.picamera import PicameraSource, hardware_h264_available, picamera_present
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket

pytestmark = pytest.mark.picamera

FPS = 30
GOP = 2 * FPS
SECONDS = 10


def _nal_types(annexb: bytes) -> set[int]:
    types, i = set(), 0
    while (i := annexb.find(b"\x00\x00\x01", i)) >= 0 and i + 3 < len(annexb):
        types.add(annexb[i + 3] & 0x1F)
        i += 3
    return types


def _expects_hardware(compatible: str) -> bool:
    # BCM2712 (Pi 5, CM5, Pi 500) has no H.264 encoder; the earlier SoCs do.
    return "bcm2712" not in compatible


def test_camera_found() -> None:
    assert picamera_present(), "libcamera lists no camera: check the ribbon and dtoverlay"


def test_expected_encoder_for_this_model(pi_model: str, pi_compatible: str) -> None:
    assert hardware_h264_available() == _expects_hardware(pi_compatible), pi_model


def test_ten_seconds_of_packets(pi_compatible: str) -> None:
    clock = MediaClock()
    src = PicameraSource(1280, 720, FPS, clock, track="720p", bitrate=3_000_000,
                         gop_frames=GOP)
    packets: list[EncodedPacket] = []
    lock = threading.Lock()

    def on_packet(packet: EncodedPacket) -> None:
        with lock:
            packets.append(packet)

    info = src.start(on_packet)
    try:
        time.sleep(SECONDS)
    finally:
        src.stop()
    stopped_wall_ns = time.time_ns()

    assert src.encoder_kind == ("hardware" if _expects_hardware(pi_compatible) else "libav")
    assert (info.name, info.codec, info.width, info.height) == ("720p", "h264", 1280, 720)
    assert info.codecs.startswith("avc1.") and len(info.codecs) == 11

    assert SECONDS * FPS * 0.9 <= len(packets) <= SECONDS * FPS * 1.1
    pts = [p.pts for p in packets]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False)), "pts must increase"
    assert all(p.dts == p.pts and p.track == "720p" for p in packets)
    # pts count from the media clock's start, which was just before the camera started.
    assert 0 <= packets[0].pts * packets[0].time_base < 5

    keyframes = [i for i, p in enumerate(packets) if p.keyframe]
    assert keyframes[0] == 0, "delivery starts on a keyframe"
    assert all(b - a == GOP for a, b in zip(keyframes, keyframes[1:], strict=False)), keyframes
    assert len(keyframes) >= SECONDS * FPS // GOP - 1
    for i in keyframes:  # SPS and PPS repeated on every IDR
        assert {5, 7, 8} <= _nal_types(packets[i].data)

    # Capture times are wall-clock and recent: the last one within a second of stopping.
    assert 0 <= stopped_wall_ns - packets[-1].capture_ns < 1_000_000_000
