"""Capture threads: source -> encoder(s) -> media bus, with retry when the source is missing.

One thread per medium. PyAV releases the GIL while encoding, so the event loop
keeps serving while frames are encoded. Every rung of the ladder is encoded in the
video thread from the same captured frame, so all rungs share its timestamp and their
IDRs fall on the same segment boundaries; `plan_encoders` (the rule config validation
applied) says which rung runs on the hardware encoder and which on x264.

Status: `media.<kind>` for the source (state, frames, fps, dropped: frames the source
skipped), and `encode.<rung>` for each video rung (VideoEncoder.stats: encoder, input,
lateness, repeated and dropped frames).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

import av.error

from appliance.backoff import Backoff
from appliance.board import BoardProfile, RungPlan, detect_board, plan_encoders
from appliance.capture.encoder import AudioEncoder, VideoEncoder, hardware_h264_available
from appliance.capture.source import AudioSource, SourceError, VideoSource
from appliance.config.schema import Config
from appliance.device.thermal import apply_level
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.status import StatusHub

log = logging.getLogger(__name__)

OpenSource = Callable[[], VideoSource | AudioSource | None]
Encoder = VideoEncoder | AudioEncoder
# How often the status hub hears from a capture thread.
STATUS_PERIOD_S = 1.0


class CapturePipeline:
    def __init__(self, cfg: Config, clock: MediaClock, bus: MediaBus, hub: StatusHub,
                 on_track: Callable[[TrackInfo], None],
                 on_fatal: Callable[[BaseException], None], board: BoardProfile | None = None):
        self.cfg, self.clock, self.bus, self.hub = cfg, clock, bus, hub
        self.on_track = on_track
        self.on_fatal = on_fatal
        # The config was validated against this same board, so the plan fits.
        self.plan = plan_encoders(cfg.video, board or detect_board())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._announced: set[str] = set()
        self.load_level = 0  # the thermal governor's step; encoders made later follow it
        self._video: list[VideoEncoder] = []

    def start(self) -> None:
        from appliance.capture.open import open_audio, open_video

        video = self.cfg.video
        self._spawn("video", lambda: open_video(video, self.clock), self._video_encoders)
        if self.cfg.audio.enabled:
            audio = self.cfg.audio
            self._spawn("audio", lambda: open_audio(audio, self.clock),
                        lambda: [AudioEncoder(audio.sample_rate, audio.channels,
                                              audio.bitrate_kbps, self.clock)])

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _video_encoders(self) -> list[VideoEncoder]:
        """One encoder per rung, as planned. SourceError when the plan wants the hardware
        encoder and it is not there (yet: its driver may load after we start)."""
        if any(p.encoder == "hardware" for p in self.plan) and not hardware_h264_available():
            raise SourceError("the hardware H.264 encoder is missing (no bcm2835-codec at "
                              "/dev/video11)")
        try:
            encoders = [self._video_encoder(p) for p in self.plan]
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot open the H.264 encoder: {exc}") from exc
        self._video = encoders
        apply_level(self.load_level, encoders, self.cfg.packager.part_s)
        return encoders

    def set_load_level(self, level: int) -> None:
        """From any thread: the thermal governor's step (fewer frames on some rungs)."""
        self.load_level = level
        apply_level(level, self._video, self.cfg.packager.part_s)

    def _video_encoder(self, plan: RungPlan) -> VideoEncoder:
        video = self.cfg.video
        enc = VideoEncoder(plan.name, plan.width, plan.height, video.fps, plan.bitrate_kbps,
                           self.cfg.packager.segment_s, self.clock, video.x264_preset,
                           hardware=plan.encoder == "hardware")
        log.info("rung %s: %dx%d at %d kbit/s on %s (%d macroblocks/s)", plan.name, plan.width,
                 plan.height, plan.bitrate_kbps, enc.kind, plan.mbps)
        return enc

    def _spawn(self, kind: Literal["video", "audio"], open_source: OpenSource,
               make_encoders: Callable[[], Sequence[Encoder]]) -> None:
        t = threading.Thread(target=self._guard, args=(kind, open_source, make_encoders),
                             name=f"capture-{kind}", daemon=True)
        self._threads.append(t)
        t.start()

    def _guard(self, kind: Literal["video", "audio"], open_source: OpenSource,
               make_encoders: Callable[[], Sequence[Encoder]]) -> None:
        try:
            self._run(kind, open_source, make_encoders)
        except Exception as exc:  # not an expected fault: end the daemon so systemd restarts it
            log.exception("capture %s failed", kind)
            self.on_fatal(exc)

    def _run(self, kind: Literal["video", "audio"], open_source: OpenSource,
             make_encoders: Callable[[], Sequence[Encoder]]) -> None:
        section = f"media.{kind}"
        backoff = Backoff(first=0.5, cap=5.0)
        encoders: Sequence[Encoder] = []
        while not self._stop.is_set():
            try:
                if not encoders:  # they outlive a source that comes and goes
                    encoders = make_encoders()
                    self._publish_encoders(section, encoders)  # which rung runs where
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
            try:
                self._pump(section, src, encoders, backoff)
            except SourceError as exc:
                log.warning("%s source failed: %s", kind, exc)
                self.hub.update(section, state="no_source", error=str(exc))
                self._stop.wait(backoff.next_delay())
            finally:
                src.close()

    def _pump(self, section: str, src: VideoSource | AudioSource, encoders: Sequence[Encoder],
              backoff: Backoff) -> None:
        """Read, encode and publish until stopped; SourceError when the source fails."""
        window_start, window_frames, frames = time.monotonic(), 0, 0
        while not self._stop.is_set():
            cap = src.read()
            for enc in encoders:
                for pkt in enc.encode(cap):
                    self._publish(enc.info, pkt)
            frames += 1
            window_frames += 1
            now = time.monotonic()
            if now - window_start >= STATUS_PERIOD_S:
                # dropped: frames the source skipped; the encoders fill their slots
                # (repeated frames / silence) so the timeline has no holes.
                self.hub.update(section, state="live", frames=frames,
                                fps=round(window_frames / (now - window_start), 2),
                                dropped=getattr(src, "dropped", 0))
                self._publish_encoders(section, encoders)
                window_start, window_frames = now, 0
                backoff.reset()

    def _publish_encoders(self, section: str, encoders: Sequence[Encoder]) -> None:
        for enc in encoders:
            if isinstance(enc, VideoEncoder):
                self.hub.update(f"encode.{enc.name}", **enc.stats())
            else:  # audio: the silence filled in is about the source, shown with it
                self.hub.update(section, **enc.stats())

    def _publish(self, info: TrackInfo | None, pkt: EncodedPacket) -> None:
        if info is None:  # no keyframe yet, so no codec string: nobody could decode it anyway
            return
        if info.name not in self._announced:
            # Synchronously, so the track's consumers subscribe before its first packet.
            self.bus.add_track(info)
            self.on_track(info)
            self._announced.add(info.name)
        self.bus.publish(pkt)
