"""VideoEncoder.set_decimation: fewer frames encoded, timestamps on the grid, parts in
PART-TARGET, IDRs at segment starts (what the thermal governor's steps rely on)."""

from __future__ import annotations

import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from appliance.capture.encoder import VideoEncoder
from appliance.capture.source import Captured
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket
from appliance.package.cmaf import CmafMuxer, MuxedPart
from tests.test_cmaf import check_track  # PART-TARGET 0.2 s, contiguous tfdt, prft

PART_S, SEGMENT_S = 0.2, 1.0


def frame(n: int) -> av.VideoFrame:
    y = np.full((180 * 3 // 2, 320), 128, np.uint8)
    y[:180, (n * 8) % 280 : (n * 8) % 280 + 40] = 235
    return av.VideoFrame.from_ndarray(y, format="yuv420p")


def run(enc: VideoEncoder, slots: range, before: dict[int, int] | None = None,
        skip: frozenset[int] = frozenset()) -> list[EncodedPacket]:
    """Feed a frame for each slot (but `skip`); `before[slot]` = n: set_decimation(n)
    just before that slot's frame."""
    out: list[EncodedPacket] = []
    for n in slots:
        if before and n in before:
            enc.set_decimation(before[n], PART_S)
        if n not in skip:
            out += enc.encode(Captured(frame(n), n * 1_000_000_000 // enc.fps))
    return out


def slots_of(pkts: list[EncodedPacket], fps: int) -> list[int]:
    assert all(p.pts * fps % 90_000 == 0 for p in pkts), "pts off the frame grid"
    return [p.pts * fps // 90_000 for p in pkts]


def mux(pkts: list[EncodedPacket], enc: VideoEncoder) -> tuple[bytes, list[MuxedPart]]:
    assert enc.info is not None
    muxer = CmafMuxer(enc.info, PART_S, SEGMENT_S)
    parts = [part for p in pkts for part in muxer.feed(p)]
    assert muxer.init is not None
    return muxer.init, parts


def test_steps_down_and_back_on_the_grid() -> None:
    clock = MediaClock()
    enc = VideoEncoder("360p", 320, 180, 30, 400, SEGMENT_S, clock, "ultrafast")
    # Requested mid-segment (slot 40, 75), each takes effect at the next segment start.
    pkts = run(enc, range(0, 150), before={40: 2, 75: 3, 100: 1})
    slots = slots_of(pkts, 30)
    assert slots == (list(range(0, 60)) + list(range(60, 90, 2)) + list(range(90, 120, 3))
                     + list(range(120, 150)))
    assert enc.frames == len(slots) == 60 + 15 + 10 + 30  # x264 saw only these
    assert enc.repeated == enc.dropped == 0  # left empty, not filled
    # IDRs at every segment start (slots 0, 30, ...) and nowhere else.
    assert [s for s, p in zip(slots, pkts, strict=True) if p.keyframe] == [0, 30, 60, 90, 120]
    # Each packet lasts until the next one.
    for a, b in zip(pkts, pkts[1:], strict=False):
        assert a.pts + a.duration == b.pts
    assert [p.duration for p in pkts[60:62]] == [6000, 6000]
    assert enc.stats()["decimation"] == 1
    init, parts = mux(pkts, enc)
    check_track(init, parts, clock)  # contiguous, every part within PART-TARGET
    # Parts stay full-length: 0.2 s, whatever the decimation.
    assert {round(p.duration, 6) for p in parts[:-1]} == {0.2}
    assert [p.start for p in parts if p.new_segment] == pytest.approx([0, 1, 2, 3, 4])


@pytest.mark.parametrize("fps", [25, 30, 50])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_parts_within_part_target_for_any_rate(fps: int, n: int) -> None:
    """Where n does not divide a part's frames (25 fps: 5 a part), the pattern restarts
    at each part, so no frame straddles a part boundary."""
    clock = MediaClock()
    enc = VideoEncoder("360p", 320, 180, fps, 400, SEGMENT_S, clock, "ultrafast")
    pkts = run(enc, range(0, 3 * fps), before={0: n})
    per_part = int(PART_S * fps + 1e-9)
    slots = slots_of(pkts, fps)[fps:]  # from the second segment on, decimated
    assert all(s % fps % per_part % n == 0 for s in slots)
    assert len(slots) < 2 * fps * 0.7  # far fewer frames encoded
    init, parts = mux(pkts, enc)
    check_track(init, parts, clock)


def test_without_part_s_a_frame_would_straddle_parts() -> None:
    """Why set_decimation takes part_s: the plain every-other-slot pattern at 25 fps puts
    a frame across the 5-slot part boundary and stretches parts past PART-TARGET."""
    clock = MediaClock()
    enc = VideoEncoder("360p", 320, 180, 25, 400, SEGMENT_S, clock, "ultrafast")
    enc.set_decimation(2)
    pkts = [p for n in range(0, 75) for p in enc.encode(Captured(frame(n), n * 40_000_000))]
    _, parts = mux(pkts, enc)
    assert max(p.duration for p in parts) > PART_S + 1e-9


def test_skipped_source_frames_repeat_only_on_kept_slots() -> None:
    clock = MediaClock()
    enc = VideoEncoder("360p", 320, 180, 30, 400, SEGMENT_S, clock, "ultrafast")
    pkts = run(enc, range(0, 60), before={0: 2}, skip=frozenset({34, 35, 36, 41}))
    slots = slots_of(pkts, 30)
    assert slots[30:] == list(range(30, 60, 2))  # 34, 36 repeated; 35, 41 were skipped anyway
    assert enc.repeated == 2
    for a, b in zip(pkts, pkts[1:], strict=False):
        assert a.pts + a.duration == b.pts


def test_set_from_another_thread_while_encoding() -> None:
    clock = MediaClock()
    enc = VideoEncoder("360p", 320, 180, 30, 400, SEGMENT_S, clock, "ultrafast")
    stop = threading.Event()

    def governor() -> None:
        n = 1
        while not stop.is_set():
            n = n % 3 + 1
            enc.set_decimation(n, PART_S)
            stop.wait(0.002)

    t = threading.Thread(target=governor)
    t.start()
    try:
        pkts = run(enc, range(0, 240))
    finally:
        stop.set()
        t.join()
    slots = slots_of(pkts, 30)
    # Within a segment one pattern; every segment starts with its IDR.
    for seg in range(8):
        mine = [s for s in slots if seg * 30 <= s < seg * 30 + 30]
        gaps = {b - a for a, b in zip(mine, mine[1:], strict=False)}
        assert mine[0] == seg * 30 and len(gaps) == 1, (seg, mine)
    assert [s for s, p in zip(slots, pkts, strict=True) if p.keyframe] == list(range(0, 240, 30))
    for a, b in zip(pkts, pkts[1:], strict=False):
        assert a.pts + a.duration == b.pts
    init, parts = mux(pkts, enc)
    check_track(init, parts, clock)


def test_bad_value() -> None:
    enc = VideoEncoder("360p", 320, 180, 30, 400, SEGMENT_S, MediaClock(), "ultrafast")
    with pytest.raises(ValueError, match="at least 1"):
        enc.set_decimation(0)
    assert enc.info is None or enc.info.fps == Fraction(30)
