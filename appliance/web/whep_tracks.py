"""Media of the WebRTC preview: the encoder's own packets as aiortc tracks, no re-encoding.

`PreviewFeed` is one thread for all viewers. It subscribes to the media bus for the
preview rung and the audio track, passes the H.264 access units on untouched, decodes
the AAC once and encodes it once to Opus (browsers' WebRTC plays no AAC), and publishes
both on a private bus of its own: every viewer's tracks subscribe there with a bounded
queue, so a viewer that falls behind loses media (video to the next keyframe) and never
holds up the feed or another viewer. After each packet it wakes the viewers' tracks on
the event loop.

`PacketTrack.recv()` returns `av.Packet`s: aiortc's RTCRtpSender then only packetizes
them (H.264: split at start codes, STAP-A / FU-A per RFC 6184; Opus: one packet per RTP
packet) with the RTP timestamp converted from the packet's pts and time base, i.e. the
media clock both tracks come from (90 kHz video, 48 kHz Opus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import av
import av.error
from aiortc import MediaStreamTrack, RTCRtpCodecCapability, RTCRtpCodecParameters, rtp
from aiortc.codecs import CODECS, get_capabilities
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtcpFeedback
from aiortc.sdp import H264Profile, parse_h264_profile_level_id

from appliance.media.bus import MediaBus, Subscription
from appliance.media.packet import EncodedPacket

log = logging.getLogger(__name__)

OPUS_TRACK = "opus"  # the feed's own track name for the Opus it encodes
OPUS_RATE = 48_000  # RTP clock and sample rate of Opus in WebRTC (RFC 7587)
OPUS_FRAME = 960  # 20 ms
OPUS_TIME_BASE = Fraction(1, OPUS_RATE)
OPUS_BITRATE = 64_000
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
                    11025, 8000, 7350)


# aiortc answers with the offer's payload type only when it is in 96-127 and with its own
# number otherwise; Chromium numbers the codecs past the 32 of that range from 35 to 63
# (its H.264 High 4:4:4 is one), and then expects them back under those numbers (RFC 3264
# 6.1: the answer uses the offer's numbers). Take the lower dynamic range as dynamic too.
setattr(rtp, "DYNAMIC_PAYLOAD_TYPES", frozenset(range(35, 64)) | frozenset(range(96, 128)))  # noqa: B010


class PreviewError(Exception):
    """The stream cannot be offered over WebRTC (a profile aiortc cannot negotiate)."""


# For a stream of each profile, the profiles (profile_idc + constraint flags) whose decoders
# decode it too (H.264 Annex A: a decoder of a profile decodes the profiles it contains),
# best match first. Browsers offer different sets: Chromium without a hardware decoder
# offers no High, only High 4:4:4 Predictive (f4), whose decoders decode High; Safari
# offers Constrained High (640c), High without B-frames, which is what our encoders make
# (x264 zerolatency, the Pi's encoder: no B-frames).
_DECODED_BY = {
    H264Profile.PROFILE_CONSTRAINED_BASELINE: ["42e0", "4200", "4d00", "640c", "6400", "f400"],
    H264Profile.PROFILE_BASELINE: ["4200"],
    H264Profile.PROFILE_MAIN: ["4d00", "6400", "f400"],
    H264Profile.PROFILE_CONSTRAINED_HIGH: ["640c", "6400", "f400"],
    H264Profile.PROFILE_HIGH: ["6400", "640c", "f400"],
    H264Profile.PROFILE_PREDICTIVE_HIGH_444: ["f400"],
}


def h264_preferences(codecs: str) -> list[RTCRtpCodecCapability]:
    """The H.264 codec capabilities to negotiate for a stream whose RFC 6381 string is
    `codecs` ("avc1.64001e"), best first, with RTX; for `setCodecPreferences`.

    aiortc's codec table lists only constrained baseline (42001f, 42e01f), the profile its
    own encoder makes; x264 makes High and the Pi's encoder High. So the stream's own
    profile-level-id is added to the table, and after it the profiles whose decoders
    decode it (see _DECODED_BY) at the same level, for browsers that do not offer ours:
    the answer names the one the offer has. The table is module state in aiortc, shared
    by the process. packetization-mode=1 (FU-A for NAL units over one packet);
    level-asymmetry-allowed=1: the offer's level does not matter.
    """
    plid = codecs.partition(".")[2].lower()
    try:
        profile, _level = parse_h264_profile_level_id(plid)
    except ValueError as exc:
        raise PreviewError(f"cannot offer H.264 {codecs!r} over WebRTC: {exc}") from None
    wanted = [plid] + [p + plid[4:] for p in _DECODED_BY[profile] if p != plid[:4]]
    for p in reversed(wanted):
        _put_first({"level-asymmetry-allowed": "1", "packetization-mode": "1",
                    "profile-level-id": p})
    caps = get_capabilities("video").codecs
    h264 = {c.parameters.get("profile-level-id"): c for c in caps
            if c.mimeType.lower() == "video/h264"
            and c.parameters.get("level-asymmetry-allowed") == "1"}
    return [h264[p] for p in wanted] + [c for c in caps if c.mimeType.lower() == "video/rtx"][:1]


def _put_first(params: dict[str, str]) -> None:
    """Put H.264 with `params` (and its RTX) first in aiortc's video codec table.

    First, because aiortc matches each offered codec with the first entry of the same
    profile: another level of the same profile (a client in this process registered one)
    must not shadow ours.
    """
    video = CODECS["video"]
    mine = [c for c in video if c.mimeType.lower() == "video/h264" and c.parameters == params]
    if mine:
        codec = mine[0]
        rtx = [c for c in video if c.mimeType.lower() == "video/rtx"
               and c.parameters.get("apt") == codec.payloadType]
    else:
        pt = max((c.payloadType or 0 for c in video), default=96) + 1
        feedback = [RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb")]
        codec = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=pt,
                                      rtcpFeedback=feedback, parameters=dict(params))
        rtx = [RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=pt + 1,
                                     parameters={"apt": pt})]
    rest = [c for c in video if c is not codec and all(c is not r for r in rtx)]
    video[:] = [codec, *rtx, *rest]


def opus_preferences() -> list[RTCRtpCodecCapability]:
    return [c for c in get_capabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


def audio_specific_config(sample_rate: int, channels: int) -> bytes:
    """The 2-byte AAC-LC AudioSpecificConfig (ISO 14496-3) the decoder needs for raw frames."""
    index = AAC_SAMPLE_RATES.index(sample_rate)
    value = (2 << 11) | (index << 7) | (channels << 3)  # object type 2: AAC LC
    return value.to_bytes(2, "big")


class AacToOpus:
    """Raw AAC-LC frames in, 20 ms Opus packets out, timestamps kept on the media clock."""

    def __init__(self, sample_rate: int, channels: int, bitrate: int = OPUS_BITRATE):
        dec = av.CodecContext.create("aac", "r")
        assert isinstance(dec, av.AudioCodecContext)
        dec.sample_rate = sample_rate
        dec.layout = "stereo" if channels == 2 else "mono"
        dec.extradata = audio_specific_config(sample_rate, channels)
        self.dec = dec
        enc = av.CodecContext.create("libopus", "w")
        assert isinstance(enc, av.AudioCodecContext)
        enc.sample_rate, enc.layout, enc.format = OPUS_RATE, "stereo", "s16"
        enc.bit_rate = bitrate
        enc.time_base = OPUS_TIME_BASE
        # lowdelay: CELT only, 2.5 ms look-ahead (voip/audio add 6.5 ms); fine for a preview.
        enc.options = {"application": "lowdelay", "frame_duration": "20"}
        enc.open()
        self.enc = enc
        self.resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE,
                                           frame_size=OPUS_FRAME)
        self.time_base = Fraction(1, sample_rate)
        self._wall_at_zero: int | None = None  # wall-clock ns at media time 0
        self.errors = 0

    def transcode(self, pkt: EncodedPacket) -> list[EncodedPacket]:
        # The Opus packets' pts count 48 kHz samples from the same media-time zero as the
        # AAC's (the resampler rescales the pts), so the capture time maps over as is.
        self._wall_at_zero = pkt.capture_ns - pkt.pts * 1_000_000_000 * pkt.time_base.numerator \
            // pkt.time_base.denominator
        src = av.Packet(pkt.data)
        src.pts, src.dts, src.time_base = pkt.pts, pkt.pts, pkt.time_base
        out: list[EncodedPacket] = []
        try:
            frames = self.dec.decode(src)
        except av.error.InvalidDataError as exc:
            self.errors += 1
            log.warning("preview: AAC frame at pts %d does not decode: %s", pkt.pts, exc)
            return out
        for frame in frames:
            for chunk in self.resampler.resample(frame):
                for p in self.enc.encode(chunk):
                    out.append(self._packet(p))
        return out

    def _packet(self, p: av.Packet) -> EncodedPacket:
        pts = p.pts if p.pts is not None else 0
        assert self._wall_at_zero is not None
        return EncodedPacket(
            track=OPUS_TRACK, data=bytes(p), pts=pts, dts=pts,
            duration=p.duration or OPUS_FRAME, time_base=OPUS_TIME_BASE, keyframe=True,
            capture_ns=self._wall_at_zero + pts * 1_000_000_000 // OPUS_RATE,
        )


class PacketTrack(MediaStreamTrack):
    """One viewer's track: packets from the feed, handed to aiortc's sender as av.Packet.

    It subscribes on the sender's first recv(), that is once the viewer is connected, so
    nothing queues for a viewer still connecting and the first packets sent are fresh. A
    video track starts at a keyframe (the next regular IDR: SPS and PPS come with it).
    """

    def __init__(self, kind: str, feed: PreviewFeed, track: str, maxlen: int):
        super().__init__()
        self.kind = kind
        self.feed = feed
        self.track_name = track
        self.maxlen = maxlen
        self.sub: Subscription | None = None
        self._event = asyncio.Event()
        self._need_key = kind == "video"
        self.sent = 0  # packets handed to the sender
        self.skipped = 0  # packets passed over waiting for the first keyframe
        self.last_capture_ns = 0
        self.lag_ms: float | None = None  # capture to hand-over, for the last packet

    @property
    def dropped(self) -> int:
        """Packets this viewer lost to a full queue (it was too slow)."""
        return self.sub.dropped if self.sub is not None else 0

    @property
    def waiting_keyframe(self) -> bool:
        return self._need_key

    def wake(self) -> None:
        self._event.set()

    async def recv(self) -> av.Packet:
        if self.sub is None and self.readyState == "live":
            self.sub = self.feed.attach(self)
        while True:
            if self.readyState != "live" or self.sub is None:
                raise MediaStreamError
            # Cleared before looking: a packet published after the look wakes the event
            # (the feed's wake-up runs on this loop after its publish).
            self._event.clear()
            pkt = self.sub.get(0)
            if pkt is None:
                await self._event.wait()
                continue
            if self._need_key:
                if not pkt.keyframe:
                    self.skipped += 1
                    continue
                self._need_key = False
            self.sent += 1
            self.last_capture_ns = pkt.capture_ns
            self.lag_ms = round((time.time_ns() - pkt.capture_ns) / 1e6, 1)
            out = av.Packet(pkt.data)
            out.pts, out.dts, out.time_base = pkt.pts, pkt.dts, pkt.time_base
            out.is_keyframe = pkt.keyframe
            return out

    def stop(self) -> None:
        super().stop()
        if self.sub is not None:
            self.feed.detach(self)
        self._event.set()


class PreviewFeed:
    """The one reader of the media bus for every preview viewer (see the module doc)."""

    def __init__(self, bus: MediaBus, rung: str, audio: tuple[int, int] | None,
                 loop: asyncio.AbstractEventLoop, queue_len: int = 300,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.bus, self.rung, self.audio, self.loop = bus, rung, audio, loop
        self.on_fatal = on_fatal  # called on the loop after an unexpected error
        self.error: str | None = None
        self.queue_len = queue_len
        self.private = MediaBus()
        self._tracks: set[PacketTrack] = set()  # touched on the loop only
        self._sub: Subscription | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.video_packets = 0
        self.opus_packets = 0
        self.transcoder: AacToOpus | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        tracks = {self.rung} | ({"audio"} if self.audio else set())
        self._stop.clear()
        self._sub = self.bus.subscribe(tracks, maxlen=self.queue_len)
        self.transcoder = AacToOpus(*self.audio) if self.audio else None
        self._thread = threading.Thread(target=self._guard, args=(self._sub, self.transcoder),
                                        name="preview-feed", daemon=True)
        self._thread.start()

    def stop(self) -> threading.Thread | None:
        """Stop reading; returns the thread to join (it ends within one packet)."""
        self._stop.set()
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        thread, self._thread = self._thread, None
        return thread

    def attach(self, track: PacketTrack) -> Subscription:
        name = self.rung if track.kind == "video" else OPUS_TRACK
        sub = self.private.subscribe({name}, maxlen=track.maxlen)
        self._tracks.add(track)
        return sub

    def detach(self, track: PacketTrack) -> None:
        self._tracks.discard(track)
        if track.sub is not None:
            track.sub.close()

    def _wake(self) -> None:
        for t in list(self._tracks):
            t.wake()

    def _guard(self, sub: Subscription, transcoder: AacToOpus | None) -> None:
        try:
            self._run(sub, transcoder)
        except Exception as exc:  # a bug, not a fault of the media: fail loudly
            log.exception("preview feed failed")
            self.error = repr(exc)
            if self.on_fatal is not None:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    self.loop.call_soon_threadsafe(self.on_fatal, exc)

    def _run(self, sub: Subscription, transcoder: AacToOpus | None) -> None:
        while not self._stop.is_set():
            pkt = sub.get(0.5)
            if pkt is None:
                continue
            if pkt.track == self.rung:
                out = [pkt]
                self.video_packets += 1
            elif transcoder is not None:
                out = transcoder.transcode(pkt)
                self.opus_packets += len(out)
            else:
                continue
            for o in out:
                self.private.publish(o)
            if out:
                try:
                    self.loop.call_soon_threadsafe(self._wake)
                except RuntimeError:  # the loop is closed: the app is gone
                    return
