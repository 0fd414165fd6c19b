"""The one media clock that video and audio timestamps both come from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaClock:
    """Maps the monotonic clock to media time (zero at start) and to wall-clock time.

    Both tracks derive their timestamps from here, so they cannot drift apart; the
    wall-clock anchor gives PROGRAM-DATE-TIME and the latency stamp.
    """

    start_mono_ns: int = field(default_factory=time.monotonic_ns)
    start_wall_ns: int = field(default_factory=time.time_ns)

    def media_ns(self, mono_ns: int | None = None) -> int:
        return (time.monotonic_ns() if mono_ns is None else mono_ns) - self.start_mono_ns

    def wall_ns(self, media_ns: int) -> int:
        return self.start_wall_ns + media_ns

    def sleep_until(self, media_ns: int) -> None:
        delay = (self.start_mono_ns + media_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
