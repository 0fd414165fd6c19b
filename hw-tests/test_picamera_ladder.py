"""The board's default ladder from the Pi camera: every rung, keyframes aligned, real time.

This is where the encode plan's budgets meet the hardware: with the default ladder of
this board, each rung must come out on its planned encoder, keep up (few repeated
frames, bounded lateness) and switch at the same instants as the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import av
import pytest

from appliance.board import detect_board, plan_encoders
from appliance.capture.pipeline import CapturePipeline
from appliance.config.load import parse
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.status import StatusHub

pytestmark = pytest.mark.picamera

SECONDS = 20
CONFIG = '[video]\nsource = "picamera2"\n[audio]\nenabled = false\n'


class Ladder:
    def __init__(self) -> None:
        self.cfg = parse(CONFIG, detect_board())  # the board's default ladder
        self.hub, self.bus = StatusHub(), MediaBus()
        self.sub = self.bus.subscribe(None, maxlen=20_000)
        self.tracks: dict[str, TrackInfo] = {}
        self.packets: dict[str, list[EncodedPacket]] = {}
        self.failed: list[BaseException] = []
        self.pipeline = CapturePipeline(self.cfg, MediaClock(), self.bus, self.hub, self._track,
                                        self.failed.append)

    def _track(self, info: TrackInfo) -> None:
        self.tracks[info.name] = info

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pkt = self.sub.get(timeout=0.2)
            if pkt is not None:
                self.packets.setdefault(pkt.track, []).append(pkt)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.hub.snapshot()["sections"].get(name, {}))


@pytest.fixture(scope="module")
def ladder() -> Iterator[Ladder]:
    run = Ladder()
    run.pipeline.start()
    try:
        run.collect(SECONDS)
        yield run
    finally:
        run.pipeline.stop()


def test_every_rung_comes_out_on_its_planned_encoder(ladder: Ladder) -> None:
    assert not ladder.failed
    plan = plan_encoders(ladder.cfg.video, detect_board())
    assert set(ladder.tracks) == {p.name for p in plan}
    for p in plan:
        status = ladder.section(f"encode.{p.name}")
        assert status["encoder"] == p.encoder, p
        info = ladder.tracks[p.name]
        assert (info.width, info.height) == (p.width, p.height)
    lores = [n for n in ladder.tracks if ladder.section(f"encode.{n}")["input"] == "lores"]
    assert len(lores) == 1, "one rung straight from the ISP's lores stream"


def test_keyframes_align_across_rungs(ladder: Ladder) -> None:
    segment = round(ladder.cfg.packager.segment_s * 90_000)
    keys = {n: [p.pts for p in ps if p.keyframe] for n, ps in ladder.packets.items()}
    common = min(len(k) for k in keys.values())
    assert common >= SECONDS / ladder.cfg.packager.segment_s - 2
    first = {n: k[:common] for n, k in keys.items()}
    assert len({tuple(k) for k in first.values()}) == 1, first
    assert all(pts % segment == 0 for pts in next(iter(first.values()))[1:])


def test_every_rung_decodes_at_its_size(ladder: Ladder) -> None:
    for name, packets in ladder.packets.items():
        ctx = av.CodecContext.create("h264", "r")
        frames = [f for p in packets for f in ctx.decode(av.Packet(p.data))
                  if isinstance(f, av.VideoFrame)]
        info = ladder.tracks[name]
        assert len(frames) >= len(packets) - 5, name
        assert {(f.width, f.height) for f in frames} == {(info.width, info.height)}


def test_the_board_keeps_up_with_its_default_ladder(ladder: Ladder) -> None:
    """The budgets' real test: an estimate too high shows here as repeats and lateness."""
    video = ladder.section("media.video")
    assert video["state"] == "live" and video["fps"] >= 29, video
    for name in ladder.tracks:
        s = ladder.section(f"encode.{name}")
        assert s["repeated_frames"] <= 0.02 * s["frames"], (name, s)
        assert s["lateness_ms_avg"] is not None and s["lateness_ms_avg"] < 150, (name, s)
        assert s["lateness_ms_max"] < 500, (name, s)
