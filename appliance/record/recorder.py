"""Local recording: the top rung and audio in fragmented MP4 files, rotated within a cap.

Fragmented MP4 (an empty moov, then a moof+mdat per GOP) stays playable up to its last
complete fragment after a power cut, and each fragment is fsynced as it is written,
so at most one GOP is lost. Files start at a keyframe; a new file begins at the first
keyframe after `file_s` (or once the file holds a quarter of the cap), and the oldest
files go when the total passes `max_mb`.
Recording reads the media bus like any consumer: it goes on while uplinks are down.
"""

from __future__ import annotations

import calendar
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import av
from av.container import OutputContainer
from av.stream import Stream

from appliance.media.avmux import add_track_stream, mux_packet
from appliance.media.bus import MediaBus, Subscription
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.status import StatusHub

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "rec-", ".mp4"
QUEUE_PACKETS = 600  # ~8 s: rides out a slow SD card write without touching capture
MIN_FILES = 4  # a file is cut by size once it holds this fraction of the cap


@dataclass(frozen=True, slots=True)
class Recording:
    name: str
    size: int
    started: float  # Unix time of the first sample
    active: bool  # being written now


def list_recordings(directory: Path, active: str | None = None) -> list[Recording]:
    """Recordings in `directory`, oldest first."""
    out = []
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")):
        try:
            st = path.stat()
        except FileNotFoundError:  # rotated away meanwhile
            continue
        try:
            started = calendar.timegm(time.strptime(path.stem[len(PREFIX):][:16],
                                                    "%Y%m%dT%H%M%SZ"))
        except ValueError:  # not one of ours
            continue
        out.append(Recording(path.name, st.st_size, started, path.name == active))
    return out


class _File:
    """One fMP4 file being written."""

    def __init__(self, path: Path, tracks: list[TrackInfo]):
        self.path = path
        self._fh: IO[bytes] = open(path, "xb")  # noqa: SIM115 - closed in close()
        self.container: OutputContainer = av.open(
            self._fh, "w", format="mp4",
            options={"movflags": "empty_moov+default_base_moof+frag_keyframe+frag_discont"},
        )
        self.streams: dict[str, Stream] = {t.name: add_track_stream(self.container, t)
                                           for t in tracks}

    def write(self, pkt: EncodedPacket) -> None:
        mux_packet(self.container, self.streams[pkt.track], pkt)

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def size(self) -> int:
        """Bytes written so far (as of the last sync: at the keyframe before)."""
        return os.fstat(self._fh.fileno()).st_size

    def close(self) -> None:
        try:
            self.container.close()
        finally:
            self.sync()
            self._fh.close()


class Recorder:
    def __init__(self, directory: Path, rung: str, audio: str | None, bus: MediaBus,
                 hub: StatusHub, file_s: float, max_bytes: int,
                 on_fatal: Callable[[BaseException], None]):
        self.directory = directory
        self.rung, self.audio = rung, audio
        self.bus, self.hub = bus, hub
        self.file_s, self.max_bytes = file_s, max_bytes
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: _File | None = None
        self._file_start = 0.0
        self._keyframes_waited = 0
        self.bytes_written = 0
        self.dropped = 0

    @property
    def active(self) -> str | None:
        return self._file.path.name if self._file else None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tracks = {self.rung} | ({self.audio} if self.audio else set())
        sub = self.bus.subscribe(tracks, maxlen=QUEUE_PACKETS)
        self._thread = threading.Thread(target=self._run, args=(sub,), name="recorder",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, sub: Subscription) -> None:
        try:
            while not self._stop.is_set():
                pkt = sub.get(timeout=0.5)
                if pkt is not None:
                    self._write(pkt)
                self.dropped += sub.dropped
                sub.dropped = 0
        except OSError as exc:  # disk full or gone: say so, keep the daemon running
            log.error("recording stopped: %s", exc)
            self.hub.update("recording", state="error", error=str(exc))
        except Exception as exc:  # a bug: end the daemon loudly
            log.exception("recording failed")
            self._on_fatal(exc)
        finally:
            sub.close()
            if self._file is not None:
                self._file.close()
                self._file = None
        self.hub.update("recording", state="stopped", file=None)

    def _write(self, pkt: EncodedPacket) -> None:
        media_s = float(pkt.pts * pkt.time_base)
        keyframe = pkt.track == self.rung and pkt.keyframe
        if keyframe and self._file is None and not self._tracks_known():
            self._keyframes_waited += 1
            if self._keyframes_waited < 2:
                return  # at start-up audio may follow video by a moment: wait one GOP
        if keyframe and (self._file is None or media_s - self._file_start >= self.file_s
                         or self._file.size() >= self.max_bytes // MIN_FILES):
            # By time, or by size: files as long as the cap holds (a 64 MB cap, 300 s
            # files at 3 Mbit/s: 110 MB) would leave it nothing older to delete, and
            # the total would grow past it.
            self._rotate(pkt, media_s)
        if self._file is None or pkt.track not in self._file.streams:
            return  # nothing before the first keyframe would decode
        if keyframe:
            self._file.sync()  # the fragment before this keyframe is complete: keep it
            self._enforce_cap()
            self._publish()
        self._file.write(pkt)

    def _tracks_known(self) -> bool:
        return all(t in self.bus.tracks for t in (self.rung, self.audio) if t is not None)

    def _rotate(self, pkt: EncodedPacket, media_s: float) -> None:
        if self._file is not None:
            self._file.close()
        tracks = [self.bus.tracks[t] for t in (self.rung, self.audio)
                  if t is not None and t in self.bus.tracks]
        name = time.strftime(f"{PREFIX}%Y%m%dT%H%M%SZ{SUFFIX}",
                             time.gmtime(pkt.capture_ns / 1e9))
        path = self.directory / name
        if path.exists():  # a restart within the same second
            path = path.with_name(path.stem + f"-{pkt.pts}{SUFFIX}")
        self._file = _File(path, tracks)
        self._file_start = media_s

    def _enforce_cap(self) -> None:
        recordings = list_recordings(self.directory, self.active)
        total = sum(r.size for r in recordings)
        for rec in recordings:
            if total <= self.max_bytes or rec.active:
                break
            (self.directory / rec.name).unlink(missing_ok=True)
            total -= rec.size
            log.info("recording %s removed to stay within the size cap", rec.name)

    def _publish(self) -> None:
        assert self._file is not None
        self.hub.update("recording", state="recording", file=self._file.path.name,
                        bytes=self._file.path.stat().st_size, dropped_packets=self.dropped)
