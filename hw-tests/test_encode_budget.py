"""Check the board profile's encode budgets (appliance/board.py) against this board.

The software budgets there are estimates; each test prints what it measured, so a
failure says what number to put in the profile.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import pytest

from appliance.board import detect_board, macroblocks_per_s, plan_encoders
from appliance.capture.encoder import VideoEncoder, hardware_h264_available
from appliance.capture.picamera import PicameraSource
from appliance.capture.source import Captured
from appliance.capture.synthetic import SyntheticVideo
from appliance.config.load import parse
from appliance.media.clock import MediaClock

NS = 1_000_000_000
FPS = 30


def _camera_frames(width: int, height: int, count: int) -> list[av.VideoFrame]:
    """Real pictures (sensor noise and all: x264's cost depends on it)."""
    src = PicameraSource(width, height, FPS, MediaClock())
    try:
        frames = [src.read().frame for _ in range(count)]
    finally:
        src.close()
    return [f for f in frames if isinstance(f, av.VideoFrame)]


@pytest.mark.picamera
def test_x264_sustains_the_estimated_software_budget() -> None:
    board = detect_board()
    preset = board.x264_preset
    estimate = board.sw_mbps(preset)
    assert estimate is not None
    frames = _camera_frames(1280, 720, 60)
    # Three threads: the estimate leaves a core for capture, packaging and the web.
    ctx = av.CodecContext.create("libx264", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = 1280, 720, "yuv420p"
    ctx.time_base, ctx.framerate, ctx.bit_rate = Fraction(1, 90_000), Fraction(FPS), 3_000_000
    ctx.thread_count = 3
    ctx.options = {"preset": preset, "tune": "zerolatency"}
    ctx.open()
    start, encoded = time.monotonic(), 0
    while time.monotonic() - start < 10:
        frame = frames[encoded % len(frames)]
        frame.pts, frame.time_base = encoded * 3000, ctx.time_base
        ctx.encode(frame)
        encoded += 1
    measured = round(encoded * macroblocks_per_s(1280, 720, 1) / (time.monotonic() - start))
    print(f"{board.name}: x264 {preset} {measured:,} macroblocks/s (profile: {estimate:,})")
    assert measured >= estimate, f"set sw_mbps_veryfast so that {preset} gives <= {measured:,}"


@pytest.mark.pi
def test_hardware_sessions_of_the_default_plan_keep_real_time() -> None:
    """The default plan's hardware rungs, concurrently, each fed at the frame rate (test
    pictures: the hardware's speed does not depend on them as x264's does)."""
    board = detect_board()
    if not board.hw_mbps:
        pytest.skip(f"{board.name}: no hardware H.264 encoder")
    assert hardware_h264_available()
    cfg = parse("", board)
    rungs = [p for p in plan_encoders(cfg.video, board) if p.encoder == "hardware"]
    clock = MediaClock()
    synthetic = SyntheticVideo(cfg.video.width, cfg.video.height, FPS, clock)
    frames = [synthetic.render(n, n * NS // FPS) for n in range(FPS)]
    late: dict[str, float] = {}

    def run(plan_name: str, width: int, height: int, kbps: int) -> None:
        enc = VideoEncoder(plan_name, width, height, FPS, kbps, 2.0, clock, hardware=True)
        t0 = time.monotonic()
        for n in range(10 * FPS):
            clock.sleep_until(n * NS // FPS)
            enc.encode(Captured(frames[n % len(frames)], n * NS // FPS))
        late[plan_name] = time.monotonic() - t0 - 10

    threads = [threading.Thread(target=run, args=(p.name, p.width, p.height, p.bitrate_kbps))
               for p in rungs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(p.mbps for p in rungs)
    print(f"{board.name}: {len(rungs)} hardware sessions, {total:,} macroblocks/s, "
          f"behind by {late}")
    assert all(v < 0.5 for v in late.values()), late
