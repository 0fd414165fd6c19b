"""The media bus never blocks the producer and a lagging subscriber resumes on a keyframe."""

from __future__ import annotations

import threading
from fractions import Fraction

from appliance.media.bus import MediaBus
from appliance.media.packet import EncodedPacket


def pkt(track: str, n: int, key: bool) -> EncodedPacket:
    return EncodedPacket(track, b"x", n, n, 1, Fraction(1, 30), key, 0)


def test_slow_subscriber_drops_to_next_keyframe_and_others_get_everything() -> None:
    bus = MediaBus()
    slow = bus.subscribe(maxlen=10)
    fast = bus.subscribe(maxlen=1000)
    for n in range(25):
        bus.publish(pkt("v", n, key=n % 8 == 0))  # keyframes at 0, 8, 16, 24
    got_fast = []
    while (p := fast.get(timeout=0)) is not None:
        got_fast.append(p.pts)
    assert got_fast == list(range(25))
    got_slow = []
    while (p := slow.get(timeout=0)) is not None:
        got_slow.append(p.pts)
    # Overflow at packet 10 cleared 0..9; 10..15 were not keyframes; resumes at 16.
    assert got_slow[0] == 16 and got_slow == list(range(16, 25))
    assert slow.dropped == 16


def test_track_filter_and_close_wakes_reader() -> None:
    bus = MediaBus()
    sub = bus.subscribe({"audio"})
    bus.publish(pkt("v", 0, True))
    bus.publish(pkt("audio", 1, True))
    first = sub.get(timeout=1)
    assert first is not None and first.track == "audio"
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(sub.get()))
    reader.start()
    sub.close()
    reader.join(timeout=2)
    assert not reader.is_alive() and result == [None]
    bus.publish(pkt("audio", 2, True))  # a closed subscriber no longer receives
    assert sub.get(timeout=0) is None


def test_tap_sees_its_track_in_the_publishing_thread_until_removed() -> None:
    bus = MediaBus()
    seen: list[tuple[str, int, str]] = []
    remove = bus.tap("v", lambda p: seen.append((p.track, p.pts, threading.current_thread().name)))
    sub = bus.subscribe({"v"})

    def capture() -> None:
        for n, track in enumerate(["v", "audio", "v"]):
            bus.publish(pkt(track, n, True))

    publisher = threading.Thread(target=capture, name="capture-test")
    publisher.start()
    publisher.join()
    assert seen == [("v", 0, "capture-test"), ("v", 2, "capture-test")]
    remove()
    bus.publish(pkt("v", 3, True))
    assert len(seen) == 2
    # Queued subscribers are unaffected by taps.
    assert [p.pts for p in iter(lambda: sub.get(timeout=0), None)] == [0, 2, 3]
