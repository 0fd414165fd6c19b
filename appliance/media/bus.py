"""Fan-out of encoded packets from the encoders to every consumer.

Live media never waits: `publish` never blocks, each subscriber has its own
bounded queue, and a subscriber that falls behind loses the oldest media — for
video up to the next keyframe, so what it does get still decodes.

A tap is the other kind of consumer: a function called in the publisher's thread, for
work that is cheap and never blocks (muxing into memory). It costs no thread wake-up per
packet, which a queue does.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from appliance.media.packet import EncodedPacket, TrackInfo


class Subscription:
    def __init__(self, bus: MediaBus, tracks: frozenset[str] | None, maxlen: int):
        self._bus = bus
        self.tracks = tracks
        self.maxlen = maxlen
        self._queue: deque[EncodedPacket] = deque()
        self._cond = threading.Condition()
        self._awaiting_key: set[str] = set()
        self.dropped = 0
        self.closed = False

    def wants(self, track: str) -> bool:
        return self.tracks is None or track in self.tracks

    def put(self, pkt: EncodedPacket) -> None:
        with self._cond:
            if len(self._queue) >= self.maxlen:
                self._overflow()
            if pkt.track in self._awaiting_key:
                if not pkt.keyframe:
                    self.dropped += 1
                    return
                self._awaiting_key.discard(pkt.track)
            self._queue.append(pkt)
            self._cond.notify()

    def _overflow(self) -> None:
        # Drop everything queued: a partial GOP would not decode anyway. Each track
        # then resumes at its next keyframe (audio packets are all keyframes).
        self.dropped += len(self._queue)
        self._awaiting_key.update(p.track for p in self._queue)
        self._queue.clear()

    def get(self, timeout: float | None = None) -> EncodedPacket | None:
        """The next packet, or None on timeout or once closed."""
        with self._cond:
            if not self._queue and not self.closed:
                self._cond.wait(timeout)
            if self._queue:
                return self._queue.popleft()
            return None

    def close(self) -> None:
        self._bus.unsubscribe(self)
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class MediaBus:
    """Encoders publish here; packagers, uplinks and previews subscribe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._taps: dict[str, list[Callable[[EncodedPacket], None]]] = {}
        self.tracks: dict[str, TrackInfo] = {}

    def add_track(self, info: TrackInfo) -> None:
        with self._lock:
            self.tracks[info.name] = info

    def clear_tracks(self) -> None:
        """Forget the tracks (the media restarts with a new set)."""
        with self._lock:
            self.tracks.clear()

    def subscribe(self, tracks: set[str] | None = None, maxlen: int = 300) -> Subscription:
        sub = Subscription(self, frozenset(tracks) if tracks is not None else None, maxlen)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def tap(self, track: str, fn: Callable[[EncodedPacket], None]) -> Callable[[], None]:
        """Call `fn(pkt)` for each packet of `track`, in the publishing thread, before the
        queued subscribers get it. `fn` must not block or raise. Returns the remover."""
        with self._lock:
            self._taps.setdefault(track, []).append(fn)

        def remove() -> None:
            with self._lock:
                self._taps[track].remove(fn)
        return remove

    def publish(self, pkt: EncodedPacket) -> None:
        with self._lock:
            taps = tuple(self._taps.get(pkt.track, ()))
            subs = list(self._subs)
        for fn in taps:
            fn(pkt)
        for sub in subs:
            if sub.wants(pkt.track):
                sub.put(pkt)
