"""LL-HLS playlists rendered from the segment store, and the rules for blocking requests.

Pure functions over the store: no I/O, no aiohttp. The HTTP layer (appliance.web.live)
parses the request with `hls_request.parse_directives`, refuses or waits with the
predicates here, then renders. Section numbers in comments are those of draft-pantos-hls-rfc8216bis
("HLS 2nd edition"); "Apple" is Apple's HLS authoring specification / LL-HLS profile.

URL layout, relative to /live/:
    index.m3u8                       multivariant playlist
    <track>/index.m3u8               media playlist (video rung name, or "audio")
    <track>/init.mp4                 CMAF header
    <track>/seg<msn>.m4s             complete segment
    <track>/part<msn>.<index>.m4s    part (a prft+moof+mdat)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

from appliance.package.hls_request import HlsRequestError
from appliance.package.store import Segment, SegmentStore, TrackStore

MEDIA_PLAYLIST = "index.m3u8"
INIT_URI = "init.mp4"
AUDIO_GROUP = "audio"

# Full and delta playlists of one URI carry the same version: 9 is what EXT-X-SKIP needs
# (§8), and a version that flips between reloads of one playlist helps nobody. (§6.2.1
# says SHOULD NOT exceed what the tags need; a full playlist alone would need 6 for
# EXT-X-MAP.) No EXT-X-DATERANGE is ever skipped, so 10 is never needed.
MEDIA_VERSION = 9

# CMAF boxes add a few percent to the encoders' bit rates. Before any measurement the
# peak comes from the rate control's bound (TrackInfo.peak_bitrate: a segment after a
# scene change can carry its rate buffer on top), the average from the configuration.
BOX_OVERHEAD = 1.05

_EPS = 1e-6


def segment_uri(msn: int) -> str:
    return f"seg{msn}.m4s"


def part_uri(msn: int, index: int) -> str:
    return f"part{msn}.{index}.m4s"


# -- timing shared by every playlist --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """The durations every media playlist of the presentation must agree on."""

    target_duration: int  # EXT-X-TARGETDURATION, whole seconds
    part_target: float  # EXT-X-PART-INF PART-TARGET, seconds (rounded up to 10 µs)

    @property
    def part_hold_back(self) -> float:
        # §4.4.3.8 MUST be >= 2x and SHOULD be >= 3x PART-TARGET; Apple wants 3x.
        return _ceil5(3 * self.part_target)

    @property
    def skip_until(self) -> float:
        # §4.4.3.8: the Skip Boundary MUST be at least six Target Durations.
        return float(6 * self.target_duration)

    @property
    def block_limit(self) -> float:
        # §6.2.5.2: after blocking more than three Target Durations, answer 503.
        return float(3 * self.target_duration)

    @property
    def advance_part_limit(self) -> float:
        # §6.2.5.2: three divided by the Part Target Duration if it is under 1 s, else 3.
        return 3 / self.part_target if self.part_target < 1 else 3.0

    @property
    def part_window(self) -> float:
        # §6.2.2: EXT-X-PART tags SHOULD go once more than 3 Target Durations from the end.
        return float(3 * self.target_duration)

    def merged(self, other: Timing) -> Timing:
        """The larger of both: §6.2.1 forbids the Target Duration to change, so it only grows."""
        return Timing(max(self.target_duration, other.target_duration),
                      max(self.part_target, other.part_target))


def store_timing(store: SegmentStore) -> Timing | None:
    """Timing from the configuration and every segment and part held, None without tracks.

    §6.2.4: all media playlists of a presentation MUST share the Target Duration and
    EXT-X-SERVER-CONTROL values, so both come from all tracks together.
    """
    tracks = list(store.tracks.values())
    if not tracks:
        return None
    target = max(round_half_up(t.segment_target) for t in tracks)
    part_target = max(t.part_target for t in tracks)
    for track in tracks:
        for seg in track.segments:
            # §4.4.3.1: each EXTINF rounded to the nearest integer MUST be <= the target;
            # the open segment counts too, as its EXTINF is coming.
            target = max(target, round_half_up(seg.duration))
            for part in seg.parts:
                # §4.4.4.9: every part MUST be <= PART-TARGET, so an overlong part raises it.
                part_target = max(part_target, part.duration)
    return Timing(max(1, target), _ceil5(part_target))


def round_half_up(x: float) -> int:
    # Python's round() rounds 2.5 to 2; the spec's "nearest integer" means 3.
    return math.floor(x + 0.5)


def _ceil5(x: float) -> float:
    """x rounded up to 10 µs, ignoring float noise (0.6000000000000001 stays 0.6)."""
    return math.ceil(round(x * 100_000, 3)) / 100_000


def fmt_duration(x: float) -> str:
    """A decimal-floating-point with at most 5 decimals: "2.0", "0.192", "0.2002"."""
    text = f"{round(x, 5):.5f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def fmt_pdt(wall_ns: int) -> str:
    """ISO 8601 UTC with milliseconds, as EXT-X-PROGRAM-DATE-TIME wants."""
    secs, rem = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rem // 1_000_000:03d}Z"


# -- positions in a track -------------------------------------------------------------


def edge_time(track: TrackStore) -> float | None:
    """Media time at the end of the newest part."""
    if not track.segments:
        return None
    last = track.segments[-1]
    return last.start + last.duration


def last_complete_msn(track: TrackStore) -> int | None:
    if not track.segments:
        return None
    last = track.segments[-1]
    return last.msn if last.complete else last.msn - 1


def playlist_ready(track: TrackStore, msn: int, part: int | None) -> bool:
    """Whether a blocking reload for (_HLS_msn, _HLS_part) can be answered now (§6.2.5.2)."""
    if part is None:
        # "until the Playlist contains a Media Segment with a Media Sequence Number of M
        # or later": a segment is in the playlist (with its EXTINF) once complete.
        done = last_complete_msn(track)
        return done is not None and done >= msn
    while True:
        seg = track.segment(msn)
        if seg is None:
            # Gone from the window: "deliver the entire Playlist, even if [...] it is no
            # longer in the Playlist". Not there yet: wait.
            return bool(track.segments) and msn < track.segments[0].msn
        if part < len(seg.parts):
            return True
        if not seg.complete:
            return False
        # "a Part Index greater than that of the final Partial Segment of the Parent
        # Segment" MUST be treated as Part Index 0 of the following Parent Segment.
        msn, part = msn + 1, 0


def parts_ahead(track: TrackStore, msn: int, index: int) -> float:
    """About how many parts (msn, index) lies beyond the newest part; <= 0 when not ahead."""
    pos = track.last_position()
    if pos is None:
        return msn * _parts_per_segment(track) + index + 1
    last_msn, last_index = pos
    if msn < last_msn:
        return 0
    if msn == last_msn:
        return index - last_index
    per_segment = _parts_per_segment(track)
    left_in_open = max(0.0, per_segment - (last_index + 1))
    return left_in_open + (msn - last_msn - 1) * per_segment + index + 1


def _parts_per_segment(track: TrackStore) -> float:
    part = track.segments[-1].parts[-1].duration if track.segments else track.part_target
    return max(1.0, track.segment_target / max(part, _EPS))


def check_blocking_request(track: TrackStore, timing: Timing, msn: int, part: int | None) -> None:
    """HlsRequestError for a blocking reload too far ahead to wait for (§6.2.5.2)."""
    done = last_complete_msn(track)
    newest = -1 if done is None else done
    # "If the _HLS_msn is greater than the Media Sequence Number of the last Media
    # Segment in the current Playlist plus two [...] SHOULD immediately return 400."
    if msn > newest + 2:
        raise HlsRequestError(f"_HLS_msn {msn} is more than two segments ahead")
    # "[...] or if the _HLS_part exceeds the last Partial Segment in the current
    # Playlist by the Advance Part Limit".
    if part is not None and parts_ahead(track, msn, part) > timing.advance_part_limit:
        raise HlsRequestError(f"_HLS_part {part} is beyond the Advance Part Limit")


PartState = Literal["ready", "pending", "gone"]


def part_state(track: TrackStore, timing: Timing, msn: int, index: int) -> PartState:
    """Whether a part exists, may still come soon enough to wait for it, or never will.

    A hinted part (EXT-X-PRELOAD-HINT) or any not yet written within the Advance Part
    Limit is "pending": §6.2.6 has the server hold such a request. Anything else that is
    missing is "gone" and gets 404, as §6.2.6 asks for resources not found nor hinted.
    """
    if track.part(msn, index) is not None:
        return "ready"
    seg = track.segment(msn)
    if seg is not None:
        return "gone" if seg.complete else _pending_if_near(track, timing, msn, index)
    # Not in the store: either expired (gone) or still to come (wait if near enough).
    done = last_complete_msn(track)
    future = not track.segments or msn > track.segments[-1].msn
    if future and (done is None or msn <= done + 2):
        return _pending_if_near(track, timing, msn, index)
    return "gone"


def _pending_if_near(track: TrackStore, timing: Timing, msn: int, index: int) -> PartState:
    return "pending" if parts_ahead(track, msn, index) <= timing.advance_part_limit else "gone"


def next_part(track: TrackStore) -> tuple[int, int] | None:
    """(msn, index) of the part to hint: the one after the newest, in its predicted segment.

    A wrong guess costs one part of latency: the hinted request then waits for the part
    or gets 404 (§6.2.6 lets a server not publish a hinted resource).
    """
    if not track.segments:
        return None
    seg = track.segments[-1]
    if seg.complete:
        return seg.msn + 1, 0
    step = seg.parts[-1].duration
    target = max(track.segment_target, _EPS)
    if track.info.kind == "video":
        # Video segments start at the IDRs the encoder puts every segment_target.
        new_segment = seg.duration + step / 2 >= target
    else:
        # The packager starts an audio segment at the part nearest each multiple of
        # segment_target on the media clock.
        next_start = seg.start + seg.duration
        new_segment = (math.floor((next_start + step / 2) / target)
                       != math.floor((seg.start + step / 2) / target))
    return (seg.msn + 1, 0) if new_segment else (seg.msn, len(seg.parts))


# -- media playlist ---------------------------------------------------------------------


def listed_segments(track: TrackStore, timing: Timing) -> list[Segment]:
    """The segments a media playlist lists: the store's window less two target durations.

    §6.2.2: a segment removed from the playlist MUST stay downloadable for its duration
    plus the playlist's, so the playlist covers less than the store keeps. It never drops
    below three target durations (§6.2.2: no removal that would leave less than that).
    """
    edge = edge_time(track)
    if edge is None:
        return []
    span = max(track.window_s - 2 * timing.target_duration, 3.0 * timing.target_duration)
    listed = [s for s in track.segments if edge - s.start <= span + _EPS]
    return listed or [track.segments[-1]]


def render_media_playlist(store: SegmentStore, track: TrackStore, timing: Timing,
                          skip: Literal["YES", "v2"] | None = None,
                          uri_query: str = "") -> str | None:
    """The LL-HLS media playlist of `track`, or None before its first part.

    `skip` asks for a Playlist Delta Update (§6.2.5.1) as `_HLS_skip` did; `uri_query`
    (e.g. "?token=...") goes on the end of every URI listed.
    """
    q = uri_query
    segments = listed_segments(track, timing)
    edge = edge_time(track)
    if not segments or edge is None:
        return None
    skipped = _skipped_count(segments, edge, timing) if skip else 0
    lines = _media_header(segments[0].msn, timing, q)
    if skip:
        attrs = f"SKIPPED-SEGMENTS={skipped}"
        if skip == "v2":
            # §4.4.5.2: REQUIRED when the client asked to skip date ranges; we have none.
            attrs += ',RECENTLY-REMOVED-DATERANGES=""'
        lines.append(f"#EXT-X-SKIP:{attrs}")
    for seg in segments[skipped:]:
        lines += _segment_lines(seg, edge - seg.start <= timing.part_window + _EPS, q)
    hint = next_part(track)
    if hint is not None:
        # §6.2.6 / hls.js: always hint the next part of a live playlist.
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(*hint)}{q}"')
    lines += _rendition_reports(store, track, q)
    return "\n".join(lines) + "\n"


def _media_header(media_sequence: int, timing: Timing, q: str) -> list[str]:
    control = (
        "CAN-BLOCK-RELOAD=YES"
        f",CAN-SKIP-UNTIL={fmt_duration(timing.skip_until)}"
        f",PART-HOLD-BACK={fmt_duration(timing.part_hold_back)}"
    )
    return [
        "#EXTM3U",
        f"#EXT-X-VERSION:{MEDIA_VERSION}",
        f"#EXT-X-TARGETDURATION:{timing.target_duration}",
        f"#EXT-X-SERVER-CONTROL:{control}",
        f"#EXT-X-PART-INF:PART-TARGET={fmt_duration(timing.part_target)}",
        f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}",
        f'#EXT-X-MAP:URI="{INIT_URI}{q}"',
    ]


def _skipped_count(segments: list[Segment], edge: float, timing: Timing) -> int:
    """Leading complete segments that lie wholly beyond the Skip Boundary from the end.

    §6.2.5.1 replaces segments "further from the end of the last (Parent) Media Segment
    than the Skip Boundary"; counting from a segment's end keeps every segment that
    overlaps the last CAN-SKIP-UNTIL seconds, the conservative reading.
    """
    count = 0
    for seg in segments:
        if not seg.complete or edge - (seg.start + seg.duration) < timing.skip_until - _EPS:
            break
        count += 1
    return count


def _segment_lines(seg: Segment, with_parts: bool, q: str) -> list[str]:
    # §4.4.4.9: EXT-X-PROGRAM-DATE-TIME applied to a parent segment MUST precede its
    # first EXT-X-PART. Every segment gets one (Apple: PDT in live playlists).
    lines = [f"#EXT-X-PROGRAM-DATE-TIME:{fmt_pdt(seg.wall_ns)}"]
    if with_parts:
        for part in seg.parts:
            uri = part_uri(seg.msn, part.index) + q
            attrs = f'DURATION={fmt_duration(part.duration)},URI="{uri}"'
            if part.independent:
                attrs += ",INDEPENDENT=YES"
            lines.append(f"#EXT-X-PART:{attrs}")
    if seg.complete:
        lines += [f"#EXTINF:{fmt_duration(seg.duration)},", segment_uri(seg.msn) + q]
    return lines


def _rendition_reports(store: SegmentStore, track: TrackStore, q: str) -> list[str]:
    """One report per other media playlist of the multivariant (Appendix B.1 / Apple)."""
    lines = []
    for other in _multivariant_tracks(store):
        pos = other.last_position()
        if other is track or pos is None:
            continue
        # URI relative to this playlist (§4.4.5.4); LAST-MSN/LAST-PART name the last part.
        uri = f"../{other.info.name}/{MEDIA_PLAYLIST}{q}"
        lines.append(f'#EXT-X-RENDITION-REPORT:URI="{uri}",LAST-MSN={pos[0]},LAST-PART={pos[1]}')
    return lines


# -- multivariant playlist ----------------------------------------------------------------


def _multivariant_tracks(store: SegmentStore) -> list[TrackStore]:
    videos = store.video_tracks()
    return videos + store.audio_tracks()[:1] if videos else []


def render_multivariant(store: SegmentStore, uri_query: str = "") -> str | None:
    """The multivariant playlist, or None while there is no video track yet; `uri_query`
    goes on the end of every URI listed."""
    videos = store.video_tracks()
    if not videos:
        return None
    audios = store.audio_tracks()
    audio = audios[0] if audios else None
    lines = ["#EXTM3U", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(_audio_media_tag(audio, uri_query))
    for video in videos:
        lines += _stream_inf(video, audio, uri_query)
    return "\n".join(lines) + "\n"


def _audio_media_tag(audio: TrackStore, q: str) -> str:
    # NAME is REQUIRED (§4.4.6.1); DEFAULT=YES needs AUTOSELECT=YES.
    attrs = [
        "TYPE=AUDIO",
        f'GROUP-ID="{AUDIO_GROUP}"',
        f'NAME="{audio.info.name}"',
        "DEFAULT=YES",
        "AUTOSELECT=YES",
    ]
    if audio.info.channels:
        attrs.append(f'CHANNELS="{audio.info.channels}"')
    attrs.append(f'URI="{audio.info.name}/{MEDIA_PLAYLIST}{q}"')
    return "#EXT-X-MEDIA:" + ",".join(attrs)


def _stream_inf(video: TrackStore, audio: TrackStore | None, q: str) -> list[str]:
    tracks = [video] if audio is None else [video, audio]
    configured = sum(t.info.bitrate for t in tracks)
    peak = sum(declared_peak(t) for t in tracks)
    measured = [average_bitrate(t) for t in tracks]
    average = sum(measured) if all(measured) else int(configured * BOX_OVERHEAD)
    # §4.4.6.2: CODECS MUST list every format of every rendition the variant plays.
    codecs = ",".join(t.info.codecs for t in tracks)
    attrs = [f"BANDWIDTH={max(peak, average)}", f"AVERAGE-BANDWIDTH={average}",
             f'CODECS="{codecs}"']
    info = video.info
    if info.width and info.height:
        attrs.append(f"RESOLUTION={info.width}x{info.height}")
    if info.fps:
        attrs.append(f"FRAME-RATE={float(info.fps):.3f}")
    if audio is not None:
        attrs.append(f'AUDIO="{AUDIO_GROUP}"')
    return ["#EXT-X-STREAM-INF:" + ",".join(attrs), f"{info.name}/{MEDIA_PLAYLIST}{q}"]


def declared_peak(track: TrackStore) -> int:
    """The peak bit rate to declare (HLS BANDWIDTH, DASH @bandwidth): the rate control's
    bound with box overhead, or the largest complete segment's rate when higher."""
    bound = track.info.peak_bitrate or track.info.bitrate
    return max(int(bound * BOX_OVERHEAD), peak_bitrate(track))


def peak_bitrate(track: TrackStore) -> int:
    """Largest bit rate of one complete segment held, 0 before the first one."""
    rates = [seg.size * 8 / seg.duration for seg in track.complete_segments if seg.duration > 0]
    return math.ceil(max(rates)) if rates else 0


def average_bitrate(track: TrackStore) -> int:
    """Bit rate over the complete segments held, 0 before the first one."""
    segments = track.complete_segments
    seconds = sum(seg.duration for seg in segments)
    return math.ceil(sum(seg.size for seg in segments) * 8 / seconds) if seconds > 0 else 0
