"""One rung plus audio muxed for an origin: FLV for RTMP, MPEG-TS for SRT.

No re-encoding: the encoder's packets go through libavformat's muxer, which writes
the AVC sequence header and the AudioSpecificConfig itself. A new muxer starts at the
first video keyframe, timestamps moved to start at zero, so an origin sees each
connection as a fresh stream that decodes from its first byte.
"""

from __future__ import annotations

from typing import Literal

import av
from av.stream import Stream

from appliance.media.avmux import add_track_stream, mux_packet
from appliance.media.packet import EncodedPacket, TrackInfo

Format = Literal["flv", "mpegts"]

_OPTIONS: dict[Format, dict[str, str]] = {
    # No trailer seek to patch duration and size: the output is a socket.
    "flv": {"flvflags": "no_duration_filesize"},
    # PCR 0.2 s ahead of the decoding times instead of libavformat's 0.7 s: a receiver
    # that paces by PCR would otherwise hold half a second more than it needs.
    "mpegts": {"max_delay": "200000"},
}


class _Sink:
    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)


class StreamMuxer:
    """Feed packets of the chosen video track and the audio track; get muxed bytes."""

    def __init__(self, fmt: Format, video: TrackInfo, audio: TrackInfo | None):
        self.fmt = fmt
        self.video, self.audio = video, audio
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        self._streams: dict[str, Stream] = {}
        self._start_s: float | None = None  # media time of the first keyframe

    def feed(self, pkt: EncodedPacket) -> bytes:
        """Mux one packet; returns the bytes the muxer wrote (possibly none)."""
        if self._container is None:
            if pkt.track != self.video.name or not pkt.keyframe:
                return b""  # wait for a keyframe: nothing before it decodes
            self._open(pkt)
        assert self._start_s is not None and self._container is not None
        offset = round(self._start_s / float(pkt.time_base))
        stream = self._streams.get(pkt.track)
        if pkt.dts < offset or stream is None:
            return b""  # audio from before the first picture, or a track started late
        mux_packet(self._container, stream, pkt, offset)
        return self._take()

    def close(self) -> bytes:
        if self._container is not None:
            self._container.close()
            self._container = None
        return self._take()

    def _open(self, first: EncodedPacket) -> None:
        self._container = av.open(self._sink, "w", format=self.fmt, options=_OPTIONS[self.fmt])
        for info in (self.video, self.audio):
            if info is not None:
                self._streams[info.name] = add_track_stream(self._container, info)
        self._start_s = float(first.dts * first.time_base)

    def _take(self) -> bytes:
        data = bytes(self._sink.buf)
        self._sink.buf.clear()
        return data
