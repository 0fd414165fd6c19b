"""Real media for the uplink tests: the real synthetic sources and encoders feeding a
real MediaBus at real time pace, for the in-process tests of Destination / UplinkManager /
Recorder; and `[[uplink]]` entries as the config loader makes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.capture.encoder import AudioEncoder, VideoEncoder
from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo
from appliance.config.schema import Uplink
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket


@dataclass
class MediaFeeder:
    """The synthetic camera and microphone through the real encoders into `bus`, in real
    time, on two threads, as the capture pipeline does (a smaller picture: these tests
    are about the uplinks, and the machine is shared)."""

    bus: MediaBus
    width: int = 640
    height: int = 360
    fps: int = 30
    bitrate_kbps: int = 800
    gop_s: float = 1.0
    audio: bool = True
    video_track: str = "main"
    clock: MediaClock = field(default_factory=MediaClock)
    publish_max_s: float = 0.0  # the longest a bus.publish call took
    packets: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> MediaFeeder:
        self._threads = [threading.Thread(target=self._guard, args=(self._video,),
                                          name="feed-video", daemon=True)]
        if self.audio:
            self._threads.append(threading.Thread(target=self._guard, args=(self._audio,),
                                                  name="feed-audio", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> MediaFeeder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def _publish(self, pkt: EncodedPacket) -> None:
        t0 = time.perf_counter()
        self.bus.publish(pkt)
        took = time.perf_counter() - t0
        with self._lock:
            self.publish_max_s = max(self.publish_max_s, took)
            self.packets += 1

    def _video(self) -> None:
        src = SyntheticVideo(self.width, self.height, self.fps, self.clock)
        enc = VideoEncoder(self.video_track, self.width, self.height, self.fps,
                           self.bitrate_kbps, self.gop_s, self.clock, "ultrafast")
        added = False
        while not self._stop.is_set():
            for pkt in enc.encode(src.read()):
                if not added and enc.info is not None:
                    self.bus.add_track(enc.info)
                    added = True
                if added:
                    self._publish(pkt)

    def _audio(self) -> None:
        src = SyntheticAudio(48000, 2, self.clock)
        enc = AudioEncoder(48000, 2, 96, self.clock)
        self.bus.add_track(enc.info)
        while not self._stop.is_set():
            for pkt in enc.encode(src.read()):
                self._publish(pkt)


def uplink(**fields: Any) -> Uplink:
    """An `[[uplink]]` entry, validated as the config loader does."""
    return Uplink.model_validate(fields)
