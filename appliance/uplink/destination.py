"""One uplink destination: connect, push one rung + audio, reconnect by itself.

Runs in its own thread. Media comes from a bounded bus subscription taken at each
connect, so a destination that is down or slow only loses its own media (dropped to
the next keyframe, counted) and never holds up capture, local playback or another
destination. States, as the status hub shows them under `uplink.<name>`:
disabled, connecting, live, retrying, auth-failed, error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

from appliance.backoff import Backoff
from appliance.config.schema import Uplink
from appliance.media.bus import MediaBus, Subscription
from appliance.media.packet import TrackInfo
from appliance.status import StatusHub
from appliance.uplink.mux import Format, StreamMuxer
from appliance.uplink.rtmp import RtmpError, RtmpPublisher
from appliance.uplink.srt import SrtError, SrtSender

log = logging.getLogger(__name__)

State = Literal["disabled", "connecting", "live", "retrying", "auth-failed", "error"]
# Network faults: retries 0.5 s, 1 s, then every 1.5 s (jittered), each counted from the
# start of the attempt before, so a stream is back within 2 s of its origin however long
# the origin was away (with a 5 s cap, an outage of a few seconds cost up to 5 s more).
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.5, 1.5
# A refused key or passphrase, or a refused certificate, will not fix itself: retry
# slowly, never in a hot loop.
REFUSED_RETRY_S = 5.0
QUEUE_PACKETS = 240  # ~3 s of 30 fps video + AAC; beyond that the destination drops
STATS_EVERY_S = 1.0
ERROR_LINES = 5
AUDIO_WAIT_S = 2.0  # then go without audio: a broken microphone must not stop the video


class Transport(Protocol):
    fmt: Format

    def connect(self) -> None: ...
    def send(self, data: bytes) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class TransportError(Exception):
    """`auth`: key or passphrase refused; `config`: a fault only a settings change fixes
    (the origin's TLS certificate refused). Both are retried slowly (REFUSED_RETRY_S)."""

    def __init__(self, message: str, auth: bool = False, config: bool = False):
        super().__init__(message)
        self.auth = auth
        self.config = config


class SrtTransport:
    fmt: Format = "mpegts"

    def __init__(self, cfg: Uplink):
        parts = urlsplit(cfg.url)
        mode = parse_qs(parts.query).get("mode", [cfg.mode])[0]
        self._sender = SrtSender(parts.hostname or "", parts.port or 0,
                                 mode="listener" if mode == "listener" else "caller",
                                 latency_ms=cfg.latency_ms, passphrase=cfg.passphrase,
                                 streamid=cfg.streamid)
        self._pending = b""

    def connect(self) -> None:
        try:
            self._sender.connect()
        except SrtError as exc:
            raise TransportError(str(exc), auth=exc.auth) from None

    def send(self, data: bytes) -> None:
        try:
            self._sender.send(data)
        except SrtError as exc:
            raise TransportError(str(exc)) from None

    def stats(self) -> dict[str, Any]:
        s = self._sender.stats()
        if s is None:
            return {}
        return {"srt_rtt_ms": s.rtt_ms, "srt_lost_packets": s.packets_lost,
                "srt_retransmitted_packets": s.packets_retransmitted,
                "srt_dropped_packets": s.packets_dropped, "srt_send_mbps": s.send_mbps,
                "srt_bandwidth_mbps": s.bandwidth_mbps}

    def close(self) -> None:
        self._sender.close()


class RtmpTransport:
    fmt: Format = "flv"

    def __init__(self, cfg: Uplink):
        self._publisher = RtmpPublisher(cfg.url, cfg.key or "", ca_file=cfg.ca_file)

    def connect(self) -> None:
        try:
            self._publisher.connect()
        except RtmpError as exc:
            raise TransportError(str(exc), auth=exc.auth, config=exc.tls) from None
        except OSError as exc:  # refused, unreachable, name not found
            raise TransportError(f"cannot connect: {exc}") from None

    def send(self, data: bytes) -> None:
        try:
            self._publisher.send_flv(data)
        except RtmpError as exc:
            raise TransportError(str(exc)) from None

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self._publisher.close()


def make_transport(cfg: Uplink) -> Transport:
    scheme = urlsplit(cfg.url).scheme
    return SrtTransport(cfg) if scheme == "srt" else RtmpTransport(cfg)


class Destination:
    def __init__(self, cfg: Uplink, rung: str, bus: MediaBus, hub: StatusHub,
                 on_fatal: Callable[[BaseException], None], audio: str | None = "audio",
                 transport: Callable[[Uplink], Transport] = make_transport):
        self.cfg = cfg
        self.rung, self.audio = rung, audio
        self.bus, self.hub = bus, hub
        self.section = f"uplink.{cfg.name}"
        self._make_transport = transport
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._transport: Transport | None = None
        self._thread: threading.Thread | None = None
        self._errors: deque[str] = deque(maxlen=ERROR_LINES)
        self.reconnects = 0
        self.bytes_sent = 0
        self.dropped = 0

    def start(self) -> None:
        if not self.cfg.enabled:
            self._publish_state("disabled")
            return
        self._thread = threading.Thread(target=self._guard, name=f"uplink-{self.cfg.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        transport = self._transport
        if transport is not None:
            transport.close()  # wakes a blocked connect, accept or send
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the uplink thread --------------------------------------------------------------

    def _guard(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug, not a network fault: end the daemon loudly
            log.exception("uplink %s failed", self.cfg.name)
            self._on_fatal(exc)

    def _run(self) -> None:
        backoff = Backoff(first=BACKOFF_FIRST_S, cap=BACKOFF_CAP_S)
        first = True
        while not self._stop.is_set():
            self._publish_state("connecting" if first else "retrying")
            first = False
            started = time.monotonic()
            try:
                self._session(backoff)
                delay = backoff.next_delay()
            except TransportError as exc:
                if self._stop.is_set():
                    break
                self._errors.append(str(exc))
                log.warning("uplink %s: %s", self.cfg.name, exc)
                state: State = ("auth-failed" if exc.auth else "error" if exc.config
                                else "retrying")
                self._publish_state(state, error=str(exc))
                if exc.auth or exc.config:
                    self.reconnects += 1
                    self._stop.wait(REFUSED_RETRY_S)
                    continue
                delay = backoff.next_delay()
            self.reconnects += 1
            # The delay runs from the start of the attempt: one that spent its time
            # waiting (an SRT or TCP connect timing out) is retried at once.
            self._stop.wait(max(0.0, delay - (time.monotonic() - started)))
        self._publish_state("disabled" if not self.cfg.enabled else "stopped")

    def _session(self, backoff: Backoff) -> None:
        """One connection: connect, then send until it fails or we are stopped."""
        transport = self._make_transport(self.cfg)
        self._transport = transport
        sub: Subscription | None = None
        try:
            transport.connect()
            if self._stop.is_set():
                return
            tracks = {self.rung} | ({self.audio} if self.audio else set())
            sub = self.bus.subscribe(tracks, maxlen=QUEUE_PACKETS)
            muxer: StreamMuxer | None = None
            connected_at = last_stats = time.monotonic()
            window_bytes = 0
            self._publish_state("live", error=None, connected_at=time.time())
            while not self._stop.is_set():
                pkt = sub.get(timeout=0.5)
                if pkt is not None:
                    if muxer is None:
                        muxer = self._muxer(transport.fmt, time.monotonic() - connected_at)
                    if muxer is not None:
                        data = muxer.feed(pkt)
                        if data:
                            transport.send(data)
                            window_bytes += len(data)
                            self.bytes_sent += len(data)
                now = time.monotonic()
                if now - last_stats >= STATS_EVERY_S:
                    backoff.reset()  # a connection that carried media for a while counts
                    self.dropped_now(sub)
                    self.hub.update(self.section, bytes_sent=self.bytes_sent,
                                    bitrate_kbps=round(window_bytes * 8 / (now - last_stats)
                                                       / 1000, 1),
                                    uptime_s=round(now - connected_at, 1),
                                    dropped_packets=self.dropped, **transport.stats())
                    last_stats, window_bytes = now, 0
        finally:
            if sub is not None:
                self.dropped_now(sub)
                sub.close()
            transport.close()
            self._transport = None

    def dropped_now(self, sub: Subscription) -> None:
        self.dropped += sub.dropped
        sub.dropped = 0

    def _muxer(self, fmt: Format, waited_s: float) -> StreamMuxer | None:
        """The muxer once the tracks are known; None to wait a little longer."""
        video: TrackInfo | None = self.bus.tracks.get(self.rung)
        audio = self.bus.tracks.get(self.audio) if self.audio else None
        if video is None:
            return None  # the rung has not started yet
        if audio is None and self.audio and waited_s < AUDIO_WAIT_S:
            return None  # at start-up audio may follow video by a moment
        return StreamMuxer(fmt, video, audio)

    def _publish_state(self, state: str, **fields: Any) -> None:
        parts = urlsplit(self.cfg.url)
        # A state change starts or ends a connection: the rate and uptime of the one
        # before must not show beside "retrying", nor for the first second of the next.
        fields.setdefault("bitrate_kbps", 0.0)
        fields.setdefault("uptime_s", 0.0)
        self.hub.update(self.section, enabled=self.cfg.enabled, state=state,
                        protocol=parts.scheme, target=f"{parts.hostname}:{parts.port or ''}",
                        rung=self.rung, reconnects=self.reconnects,
                        errors=list(self._errors), **fields)
