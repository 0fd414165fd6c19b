"""Capture threads: source -> encoder(s) -> media bus, with retry when the source is missing.

One thread per medium. PyAV releases the GIL while encoding, so the event loop
keeps serving while frames are encoded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from appliance.backoff import Backoff
from appliance.capture.encoder import AudioEncoder, VideoEncoder, hardware_h264_available
from appliance.capture.picamera import PicameraSource
from appliance.capture.source import AudioSource, SourceError, VideoSource
from appliance.config.schema import Config
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.status import StatusHub

log = logging.getLogger(__name__)

OpenSource = Callable[[], VideoSource | AudioSource | PicameraSource | None]
# A push source (the Pi camera) that delivers nothing for this long has stalled.
STALL_S = 3.0


class CapturePipeline:
    def __init__(self, cfg: Config, clock: MediaClock, bus: MediaBus, hub: StatusHub,
                 on_track: Callable[[TrackInfo], None],
                 on_fatal: Callable[[BaseException], None]):
        self.cfg, self.clock, self.bus, self.hub = cfg, clock, bus, hub
        self.on_track = on_track
        self.on_fatal = on_fatal
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._announced: set[str] = set()

    def start(self) -> None:
        from appliance.capture.open import open_audio, open_video

        video = self.cfg.video
        hardware = video.encoder == "hardware" or (
            video.encoder == "auto" and hardware_h264_available()
        )
        encoders = [
            VideoEncoder(r.name, r.width, r.height, video.fps, r.bitrate_kbps,
                         self.cfg.packager.segment_s, self.clock, video.x264_preset,
                         hardware=hardware and i == 0)  # the budget fits one HW session
            for i, r in enumerate(video.ladder)
        ]
        gop_s = self.cfg.packager.segment_s
        self._spawn("video", lambda: open_video(video, self.clock, gop_s=gop_s), encoders)
        if self.cfg.audio.enabled:
            audio = self.cfg.audio
            aenc = AudioEncoder(audio.sample_rate, audio.channels, audio.bitrate_kbps, self.clock)
            self._spawn("audio", lambda: open_audio(audio, self.clock), [aenc])

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _spawn(self, kind: Literal["video", "audio"], open_source: OpenSource,
               encoders: list[VideoEncoder] | list[AudioEncoder]) -> None:
        t = threading.Thread(target=self._guard, args=(kind, open_source, encoders),
                             name=f"capture-{kind}", daemon=True)
        self._threads.append(t)
        t.start()

    def _guard(self, kind: Literal["video", "audio"], open_source: OpenSource,
               encoders: list[VideoEncoder] | list[AudioEncoder]) -> None:
        try:
            self._run(kind, open_source, encoders)
        except Exception as exc:  # not an expected fault: end the daemon so systemd restarts it
            log.exception("capture %s failed", kind)
            self.on_fatal(exc)

    def _run(self, kind: Literal["video", "audio"], open_source: OpenSource,
             encoders: list[VideoEncoder] | list[AudioEncoder]) -> None:
        section = f"media.{kind}"
        backoff = Backoff(first=0.5, cap=5.0)
        frames = 0
        while not self._stop.is_set():
            try:
                src = open_source()
            except SourceError as exc:
                delay = backoff.next_delay()
                log.warning("%s source unavailable (%s); retrying in %.1f s", kind, exc, delay)
                self.hub.update(section, state="no_source", error=str(exc))
                self._stop.wait(delay)
                continue
            if src is None:
                return
            self.hub.update(section, state="starting", error=None, source=type(src).__name__)
            if isinstance(src, PicameraSource):
                self._run_pushed(section, src, backoff)
                continue
            window_start, window_frames = time.monotonic(), 0
            try:
                while not self._stop.is_set():
                    cap = src.read()
                    for enc in encoders:
                        for pkt in enc.encode(cap):
                            self._publish(enc.info, pkt)
                    frames += 1
                    window_frames += 1
                    now = time.monotonic()
                    if now - window_start >= 1.0:
                        # dropped: frames the source skipped; the encoder fills their
                        # slots (repeated frames / silence) so the timeline has no holes.
                        self.hub.update(section, state="live", frames=frames,
                                        fps=round(window_frames / (now - window_start), 2),
                                        dropped=getattr(src, "dropped", 0),
                                        **encoders[0].stats())
                        window_start, window_frames = now, 0
                        backoff.reset()
            except SourceError as exc:
                log.warning("%s source failed: %s", kind, exc)
                self.hub.update(section, state="no_source", error=str(exc))
                self._stop.wait(backoff.next_delay())
            finally:
                src.close()

    def _run_pushed(self, section: str, src: PicameraSource, backoff: Backoff) -> None:
        """The Pi camera encodes the top rung itself and pushes packets from its thread."""
        if len(self.cfg.video.ladder) > 1:
            log.warning("Pi camera: only the top rung is encoded; lower rungs are not built yet")
        try:
            src.start(lambda pkt: self._publish(src.info, pkt))
            self.hub.update(section, state="live", encoder=src.encoder_kind)
            last = src.packets
            while not self._stop.wait(STALL_S):
                if src.packets == last:
                    raise SourceError(f"the Pi camera delivered nothing for {STALL_S:.0f} s")
                last = src.packets
                self.hub.update(section, state="live", frames=last)
                backoff.reset()
        except SourceError as exc:
            log.warning("video source failed: %s", exc)
            self.hub.update(section, state="no_source", error=str(exc))
            self._stop.wait(backoff.next_delay())
        finally:
            src.stop()

    def _publish(self, info: TrackInfo | None, pkt: EncodedPacket) -> None:
        if info is None:  # no keyframe yet, so no codec string: nobody could decode it anyway
            return
        if info.name not in self._announced:
            # Synchronously, so the track's consumers subscribe before its first packet.
            self.bus.add_track(info)
            self.on_track(info)
            self._announced.add(info.name)
        self.bus.publish(pkt)
