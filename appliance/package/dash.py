"""The LL-DASH MPD, rendered from the segment store: the same CMAF segments as LL-HLS.

Pure functions over the store: no I/O, no aiohttp. The HTTP layer (appliance.web.live)
serves the MPD, the time endpoint that UTCTiming names, and the segment being written
with chunked transfer. References: ISO/IEC 23009-1 (DASH, "§" below) and DASH-IF IOP
"Low-latency Modes for DASH" ("LL").

URL layout, relative to /live/ (shared with hls.py):
    manifest.mpd                     this MPD
    time                             wall clock for UTCTiming (ISO 8601, ms)
    <track>/init.mp4                 CMAF header
    <track>/seg<msn>.m4s             segment; the open one streams as its parts arrive

Timing. Media time 0 is the MediaClock's start, so availabilityStartTime is the wall
clock at media time 0, and presentation time equals media time (Period@start minus
presentationTimeOffset is always 0), which is what makes a player's live latency the age
of the picture. Segments start on a grid of segment_s (video exactly, audio at the part
nearest each boundary), so each has a slot, the grid step it starts in, and within a run
of segments without a timeline jump msn - slot is a constant, the track's offset:
$Number$ = offset + slot is exactly what SegmentTemplate@duration needs.

When the source is lost and comes back, msn goes on by one but the slot jumps, so the
offset changes. The MPD describes only the newest run: its Period's id is made from the
offsets (a new id exactly when some track's mapping changes, never otherwise), and while
the run before is still held the Period starts at the jump, so that no earlier time maps
to a number of the old run. Once the old run has expired, where the run began cannot be
told any more and the Period starts where the track's first number maps to: the same id
and the same number-to-time mapping, only an earlier Period@start, covering numbers that
expired long before the time-shift window reaches them.

A stream restart starts new tracks on the same clock, numbered from a new first msn: their
first run begins where that number maps to, so the Period starts there too, and no time
before the restart names a number that never existed.
"""

from __future__ import annotations

import hashlib
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from fractions import Fraction

from appliance.package import hls
from appliance.package.store import Segment, SegmentStore, TrackStore

MPD_NAME = "manifest.mpd"
TIME_NAME = "time"
INIT_TEMPLATE = "$RepresentationID$/init.mp4"
MEDIA_TEMPLATE = "$RepresentationID$/seg$Number$.m4s"

PROFILES = "urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019"
UTC_HTTP_ISO = "urn:mpeg:dash:utc:http-iso:2014"
CHANNELS_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"

# Latency the players should aim at, in parts: a segment is requestable once its first
# part is written (availabilityTimeOffset), then arrives part by part. dash.js 5.2 in
# Chromium holds it closely (bench/glass_to_glass.py --player dash, 20 s, dev machine:
# stamp p50 0.99 s at 5 parts, 0.79 s at 4, no stall either way); 5 parts (1.0 s at
# 0.2 s parts) leaves ~0.8 s of buffer for Wi-Fi and a busy Pi, within the 1.5 s target.
TARGET_PARTS = 5
MIN_PARTS = 3  # the least that has a part in flight and one buffered; as PART-HOLD-BACK
MAX_OVER_TARGET_S = 1.0  # dash.js seeks back to the target beyond max + 0.5 s
# Catch-up rates: above 1.2 the picture visibly hurries; slowing to 0.95 refills a thin
# buffer without a stall and is hardly noticeable.
PLAYBACK_RATE_MIN = 0.95
PLAYBACK_RATE_MAX = 1.2

_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Latency:
    target: float  # seconds
    min: float
    max: float


def latency_for(part_target: float) -> Latency:
    """The ServiceDescription latency for a part duration (seconds)."""
    target = round(TARGET_PARTS * part_target, 3)
    return Latency(target, round(MIN_PARTS * part_target, 3), round(target + MAX_OVER_TARGET_S, 3))


# -- the numbers and the timeline -------------------------------------------------------


def slot_of(seg: Segment, segment_s: float) -> int:
    """Grid slot of a segment: the packager's own rule for audio (the slot its first part's
    middle falls in), exact for video, and right for a short first segment too."""
    half_part = seg.parts[0].duration / 2 if seg.parts else 0.0
    return math.floor((seg.start + half_part) / segment_s + _EPS)


@dataclass(frozen=True, slots=True)
class Run:
    """A track's newest run of segments without a timeline jump."""

    offset: int  # msn - slot, the same for every segment of the run
    first: Segment  # its oldest segment held
    after_jump: bool  # an older run is still held, so `first` is where the run began


def newest_run(track: TrackStore) -> Run | None:
    segments = list(track.segments)
    if not segments:
        return None
    d = track.segment_target
    offset = segments[-1].msn - slot_of(segments[-1], d)
    i = len(segments) - 1
    while i > 0 and segments[i - 1].msn - slot_of(segments[i - 1], d) == offset:
        i -= 1
    return Run(offset, segments[i], after_jump=i > 0)


def _begin_slot(track: TrackStore, run: Run, segment_s: float) -> int:
    """First slot the run's numbers may be used for.

    Where the run began is known while the run before it is held. Otherwise the run is
    the track's first, which began at the track's first number, unless the run before
    has expired: then the first number's slot under this run's mapping is earlier than
    where the run began (slots advance at least as fast as numbers), and the numbers it
    adds below the run are long expired, so the wider start maps nothing wrongly."""
    if run.after_jump:
        return slot_of(run.first, segment_s)
    return max(0, track.first_msn - run.offset)


@dataclass(frozen=True, slots=True)
class Anchor:
    """One Period's mapping: slot `begin` is the Period start; a track's startNumber is
    its offset + begin."""

    period_id: str
    begin: int
    offsets: dict[str, int]


def anchor(tracks: list[TrackStore], segment_s: float) -> Anchor | None:
    runs = {t.info.name: (t, newest_run(t)) for t in tracks}
    held = {name: (t, r) for name, (t, r) in runs.items() if r is not None}
    if len(held) < len(runs):
        return None
    begin = max(_begin_slot(t, r, segment_s) for t, r in held.values())
    offsets = {name: r.offset for name, (_t, r) in held.items()}
    key = ",".join(f"{name}={offsets[name]}" for name in sorted(offsets))
    return Anchor("p" + hashlib.sha1(key.encode()).hexdigest()[:10], begin, offsets)


def availability_start_ns(track: TrackStore) -> int | None:
    """Wall clock at media time 0: every segment's wall_ns is that plus its start."""
    if not track.segments:
        return None
    seg = track.segments[-1]
    return seg.wall_ns - round(seg.start * 1e9)


def time_shift_depth(track: TrackStore) -> float:
    """How far back segments stay requestable: what the store keeps, less two segments.

    §5.3.9.5.3: a segment is available until its end plus timeShiftBufferDepth. The store
    keeps whole segments until the second one starts more than window_s behind the edge,
    so a depth of window_s - 2 x segment_s never names an expired segment."""
    d = track.segment_target
    return max(d, track.window_s - 2 * d)


def max_segment_duration(tracks: list[TrackStore]) -> float:
    longest = max(t.segment_target for t in tracks)
    for track in tracks:
        for seg in track.complete_segments:
            longest = max(longest, seg.duration)
    return longest


# -- formatting ----------------------------------------------------------------------------


def fmt_iso_ms(wall_ns: int) -> str:
    """xs:dateTime in UTC with milliseconds, rounded to the nearest ms."""
    return hls.fmt_pdt(round(wall_ns / 1e6) * 1_000_000)


def fmt_xs_duration(seconds: float) -> str:
    """xs:duration in seconds, ms precision: "PT2S", "PT1.2S", "PT0S"."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"


def fmt_frame_rate(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


def _attrs(**values: object) -> dict[str, str]:
    # Python names for DASH attributes: trailing "_" dropped; None means absent.
    return {k.rstrip("_"): str(v) for k, v in values.items() if v is not None}


# -- the MPD ---------------------------------------------------------------------------------


def render_mpd(store: SegmentStore, time_url: str, now_ns: int | None = None,
               uri_query: str = "") -> str | None:
    """The dynamic MPD, or None while there is no video segment yet.

    `time_url` is the absolute URL of the time endpoint (UTCTiming needs an absolute one);
    `now_ns` the wall clock for publishTime (default: now); `uri_query` (e.g.
    "?token=...", without "$") goes on the end of the segment templates.
    """
    videos = [t for t in store.video_tracks() if t.segments]
    audios = [t for t in store.audio_tracks() if t.segments][:1]
    if not videos:
        return None
    tracks = videos + audios
    segment_s = videos[0].segment_target
    where = anchor(tracks, segment_s)
    ast_ns = availability_start_ns(videos[0])
    if where is None or ast_ns is None:
        return None
    part_target = max(t.part_target for t in tracks)
    latency = latency_for(part_target)
    now_ns = time.time_ns() if now_ns is None else now_ns

    mpd = ET.Element("MPD", _attrs(
        xmlns="urn:mpeg:dash:schema:mpd:2011",
        id="appliance-live",
        type="dynamic",
        profiles=PROFILES,
        availabilityStartTime=fmt_iso_ms(ast_ns),
        publishTime=fmt_iso_ms(now_ns),
        # Templates need no update to name new segments; a refresh every segment notices
        # a timeline jump (new Period) within one segment.
        minimumUpdatePeriod=fmt_xs_duration(segment_s),
        timeShiftBufferDepth=fmt_xs_duration(min(time_shift_depth(t) for t in tracks)),
        maxSegmentDuration=fmt_xs_duration(max_segment_duration(tracks)),
        # What a player needs buffered to play on, at @bandwidth: it plays from chunks as
        # they arrive, so the target latency bounds it.
        minBufferTime=fmt_xs_duration(latency.target),
        suggestedPresentationDelay=fmt_xs_duration(latency.target),
    ))
    mpd.append(_service_description(latency))
    period = ET.SubElement(mpd, "Period", _attrs(
        id=where.period_id, start=fmt_xs_duration(where.begin * segment_s)))
    period.append(_video_set(videos, where, segment_s, part_target, uri_query))
    if audios:
        period.append(_audio_set(audios[0], where, segment_s, part_target, uri_query))
    ET.SubElement(mpd, "UTCTiming", _attrs(schemeIdUri=UTC_HTTP_ISO, value=time_url))
    ET.indent(mpd)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(mpd, "unicode") + "\n"


def _service_description(latency: Latency) -> ET.Element:
    # §K (ServiceDescription): what dash.js and other LL players take as their latency
    # target and catch-up limits, so the page need not hard-code them.
    sd = ET.Element("ServiceDescription", _attrs(id=0))
    ET.SubElement(sd, "Latency", _attrs(target=round(latency.target * 1000),
                                        min=round(latency.min * 1000),
                                        max=round(latency.max * 1000)))
    ET.SubElement(sd, "PlaybackRate", _attrs(min=PLAYBACK_RATE_MIN, max=PLAYBACK_RATE_MAX))
    return sd


def _template(track: TrackStore, where: Anchor, segment_s: float,
              part_target: float, q: str) -> ET.Element:
    timescale = track.info.time_base.denominator // max(1, track.info.time_base.numerator)
    return ET.Element("SegmentTemplate", _attrs(
        timescale=timescale,
        duration=round(segment_s * timescale),
        startNumber=where.offsets[track.info.name] + where.begin,
        presentationTimeOffset=round(where.begin * segment_s * timescale),
        initialization=INIT_TEMPLATE + q,
        media=MEDIA_TEMPLATE + q,
        # LL: a segment may be requested once its first part exists (one part after it
        # starts); it then arrives by chunked transfer as parts are written (ATC false).
        availabilityTimeOffset=f"{segment_s - part_target:.3f}".rstrip("0").rstrip("."),
        availabilityTimeComplete="false",
    ))


def _video_set(videos: list[TrackStore], where: Anchor, segment_s: float,
               part_target: float, q: str) -> ET.Element:
    top = videos[0].info
    aset = ET.Element("AdaptationSet", _attrs(
        id=0, contentType="video", mimeType="video/mp4", segmentAlignment="true",
        startWithSAP=1, maxWidth=max(t.info.width for t in videos),
        maxHeight=max(t.info.height for t in videos),
        maxFrameRate=fmt_frame_rate(top.fps) if top.fps else None,
    ))
    # Rungs share one encode loop, hence one offset; a template per rung otherwise.
    shared = len({where.offsets[t.info.name] for t in videos}) == 1
    if shared:
        aset.append(_template(videos[0], where, segment_s, part_target, q))
    for track in videos:
        info = track.info
        rep = ET.SubElement(aset, "Representation", _attrs(
            id=info.name, bandwidth=hls.declared_peak(track), codecs=info.codecs,
            width=info.width or None, height=info.height or None,
            frameRate=fmt_frame_rate(info.fps) if info.fps else None, sar="1:1",
        ))
        if not shared:
            rep.append(_template(track, where, segment_s, part_target, q))
    return aset


def _audio_set(audio: TrackStore, where: Anchor, segment_s: float,
               part_target: float, q: str) -> ET.Element:
    info = audio.info
    aset = ET.Element("AdaptationSet", _attrs(
        id=1, contentType="audio", mimeType="audio/mp4", segmentAlignment="true",
        startWithSAP=1,
    ))
    if info.channels:
        ET.SubElement(aset, "AudioChannelConfiguration",
                      _attrs(schemeIdUri=CHANNELS_SCHEME, value=info.channels))
    aset.append(_template(audio, where, segment_s, part_target, q))
    ET.SubElement(aset, "Representation", _attrs(
        id=info.name, bandwidth=hls.declared_peak(audio), codecs=info.codecs,
        audioSamplingRate=info.sample_rate or None,
    ))
    return aset
