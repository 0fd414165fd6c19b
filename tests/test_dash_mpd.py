"""The LL-DASH MPD rendered from a segment store fed like the packager feeds it: parsed as
XML and checked against the DASH rules a player relies on, above all that every segment
number a client may compute from the template names the segment with that start time."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from appliance.package import dash
from appliance.package.store import SegmentStore, TrackStore
from tests.hls_feeder import (
    AUDIO,
    AUDIO_PART_S,
    PART_S,
    SEGMENT_S,
    VIDEO_360,
    VIDEO_720,
    WALL0_NS,
    WINDOW_S,
    Feeder,
)

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
TIME_URL = "http://appliance.local:8080/live/time"
# Audio segments start at the AAC part nearest each boundary: within half a part of it.
AUDIO_TOLERANCE = AUDIO_PART_S / 2 + 1e-6
VIDEO_TOLERANCE = 1e-6


def render(store: SegmentStore, now_s: float) -> ET.Element:
    """The MPD at media time `now_s` (the feeder's wall clock is WALL0 + media time)."""
    text = dash.render_mpd(store, TIME_URL, now_ns=WALL0_NS + round(now_s * 1e9))
    assert text is not None
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(text)


def xs_duration(text: str) -> float:
    m = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", text)
    assert m, text
    return float(m.group(1))


def xs_datetime_ns(text: str) -> int:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000) * 1_000_000


@dataclass
class Template:
    rep_id: str
    period_start: float
    timescale: int
    duration: float  # seconds
    start_number: int
    pto: float  # seconds
    ato: float
    atc: str


def templates(mpd: ET.Element) -> list[Template]:
    """Each Representation's effective SegmentTemplate (its own, else its set's)."""
    periods = mpd.findall("d:Period", NS)
    assert len(periods) == 1
    period = periods[0]
    start = xs_duration(period.attrib["start"])
    out = []
    for aset in period.findall("d:AdaptationSet", NS):
        for rep in aset.findall("d:Representation", NS):
            tpl = rep.find("d:SegmentTemplate", NS)
            if tpl is None:
                tpl = aset.find("d:SegmentTemplate", NS)
            assert tpl is not None
            ts = int(tpl.attrib["timescale"])
            a = tpl.attrib
            out.append(Template(
                rep.attrib["id"], start, ts, int(a["duration"]) / ts, int(a["startNumber"]),
                int(a.get("presentationTimeOffset", 0)) / ts,
                float(a["availabilityTimeOffset"]), a["availabilityTimeComplete"],
            ))
    return out


def available_numbers(tpl: Template, now_s: float, tsbd: float) -> range:
    """The numbers whose availability window contains `now_s` (seconds after the
    availabilityStartTime): segment i (from 0) starts at Period@start + i x @duration,
    is available from its end less availabilityTimeOffset until its end plus
    timeShiftBufferDepth (ISO/IEC 23009-1, 5.3.9.5.3)."""
    rel = now_s - tpl.period_start
    last = math.floor((rel + tpl.ato) / tpl.duration + 1e-9) - 1
    first = max(0, math.ceil((rel - tsbd) / tpl.duration - 1e-9) - 1)
    return range(tpl.start_number + first, tpl.start_number + last + 1)


def mapping_problems(store: SegmentStore, mpd: ET.Element, now_s: float) -> list[str]:
    """Every number in the availability window names the segment that starts where
    $Number$ x @duration says (media time = presentation time - Period@start + PTO), and
    is there to serve (the open segment with at least its first part), or is the very next
    segment, which the server waits for (audio can start up to half a part late)."""
    problems = []
    tsbd = xs_duration(mpd.attrib["timeShiftBufferDepth"])
    for tpl in templates(mpd):
        track = store.tracks[tpl.rep_id]
        tolerance = AUDIO_TOLERANCE if track.info.kind == "audio" else VIDEO_TOLERANCE
        numbers = available_numbers(tpl, now_s, tsbd)
        if not numbers:
            problems.append(f"{tpl.rep_id}: no segment available at {now_s:.3f}")
        for number in numbers:
            media_start = tpl.pto + (number - tpl.start_number) * tpl.duration
            seg = track.segment(number)
            if seg is None:
                newest = track.segments[-1]
                if number == newest.msn + 1 and media_start - now_s < tolerance:
                    continue  # starts within half a part: the request waits for it
                problems.append(f"{tpl.rep_id}: number {number} at {media_start:.3f} "
                                f"not held (held {track.segments[0].msn}..{newest.msn})")
                continue
            if abs(seg.start - media_start) > tolerance:
                problems.append(f"{tpl.rep_id}: number {number} maps to {media_start:.3f} "
                                f"but segment {seg.msn} starts at {seg.start:.3f}")
            if not seg.parts:
                problems.append(f"{tpl.rep_id}: segment {number} has no part yet")
    return problems


# -- the MPD as a whole ------------------------------------------------------------------------


async def test_mpd_level_attributes(fed: Feeder) -> None:
    mpd = render(fed.store, fed.now)
    assert mpd.tag == "{urn:mpeg:dash:schema:mpd:2011}MPD"
    a = mpd.attrib
    assert a["type"] == "dynamic"
    assert set(a["profiles"].split(",")) == {"urn:mpeg:dash:profile:isoff-live:2011",
                                              "urn:mpeg:dash:profile:cmaf:2019"}
    # Media time 0 is at WALL0 in the feeder: AST is that instant, to the millisecond.
    assert xs_datetime_ns(a["availabilityStartTime"]) == round(WALL0_NS / 1e6) * 1_000_000
    assert xs_datetime_ns(a["publishTime"]) == round((WALL0_NS + fed.now * 1e9) / 1e6) * 1_000_000
    assert xs_duration(a["minimumUpdatePeriod"]) == SEGMENT_S
    tsbd = xs_duration(a["timeShiftBufferDepth"])
    assert 3 * SEGMENT_S <= tsbd <= WINDOW_S - 2 * SEGMENT_S
    longest = max(s.duration for t in fed.store.tracks.values() for s in t.complete_segments)
    assert longest <= xs_duration(a["maxSegmentDuration"]) <= longest + 0.001
    target = xs_duration(a["suggestedPresentationDelay"])
    assert 0 < xs_duration(a["minBufferTime"]) <= target


async def test_service_description_targets_low_latency(fed: Feeder) -> None:
    mpd = render(fed.store, fed.now)
    sd = mpd.find("d:ServiceDescription", NS)
    assert sd is not None
    latency = sd.find("d:Latency", NS)
    rate = sd.find("d:PlaybackRate", NS)
    assert latency is not None and rate is not None
    target, low, high = (int(latency.attrib[k]) for k in ("target", "min", "max"))
    # ~1 s: above three parts (one in flight, one buffered, one decoding), the LL-HLS
    # PART-HOLD-BACK, and what the LL-DASH target of 1.5 s at p50 leaves room for.
    assert round(3 * PART_S * 1000) <= low < target < high
    assert 1000 <= target <= 1500
    assert target == round(xs_duration(mpd.attrib["suggestedPresentationDelay"]) * 1000)
    assert 0.5 <= float(rate.attrib["min"]) < 1 < float(rate.attrib["max"]) <= 1.5
    # Element order of the MPD schema: ServiceDescription, Period, then UTCTiming.
    tags = [child.tag.split("}")[1] for child in mpd]
    assert tags == ["ServiceDescription", "Period", "UTCTiming"]


async def test_utc_timing_names_the_time_endpoint(fed: Feeder) -> None:
    timing = render(fed.store, fed.now).findall("d:UTCTiming", NS)
    assert [t.attrib for t in timing] == [
        {"schemeIdUri": "urn:mpeg:dash:utc:http-iso:2014", "value": TIME_URL}
    ]


async def test_representations_match_the_tracks(fed: Feeder) -> None:
    period = render(fed.store, fed.now).find("d:Period", NS)
    assert period is not None
    sets = period.findall("d:AdaptationSet", NS)
    assert [s.attrib["contentType"] for s in sets] == ["video", "audio"]
    video, audio = sets
    assert video.attrib["mimeType"] == "video/mp4"
    assert video.attrib["segmentAlignment"] == "true" and video.attrib["startWithSAP"] == "1"
    reps = video.findall("d:Representation", NS)
    assert [r.attrib["id"] for r in reps] == ["720p", "360p"]
    for rep, info in zip(reps, (VIDEO_720, VIDEO_360), strict=True):
        assert rep.attrib["codecs"] == info.codecs
        assert (int(rep.attrib["width"]), int(rep.attrib["height"])) == (info.width, info.height)
        assert rep.attrib["frameRate"] == "30" and rep.attrib["sar"] == "1:1"
        assert int(rep.attrib["bandwidth"]) >= info.bitrate

    # Audio alone in its own set, with its channel count and sampling rate.
    assert audio.attrib["mimeType"] == "audio/mp4"
    (arep,) = audio.findall("d:Representation", NS)
    assert arep.attrib["id"] == "audio" and arep.attrib["codecs"] == AUDIO.codecs
    assert int(arep.attrib["audioSamplingRate"]) == AUDIO.sample_rate
    assert int(arep.attrib["bandwidth"]) >= AUDIO.bitrate
    channels = audio.find("d:AudioChannelConfiguration", NS)
    assert channels is not None and channels.attrib["value"] == str(AUDIO.channels)


async def test_segment_templates(fed: Feeder) -> None:
    mpd = render(fed.store, fed.now)
    for tpl in templates(mpd):
        assert tpl.duration == pytest.approx(SEGMENT_S)
        # Requestable one part after it starts, then delivered as parts arrive.
        assert tpl.ato == pytest.approx(SEGMENT_S - PART_S)
        assert tpl.atc == "false"
        assert tpl.timescale == (90000 if tpl.rep_id != "audio" else 48000)
    for tpl_el in mpd.iter("{urn:mpeg:dash:schema:mpd:2011}SegmentTemplate"):
        assert tpl_el.attrib["initialization"] == "$RepresentationID$/init.mp4"
        assert tpl_el.attrib["media"] == "$RepresentationID$/seg$Number$.m4s"


async def test_no_mpd_before_the_first_video_segment() -> None:
    store = SegmentStore()
    assert dash.render_mpd(store, TIME_URL) is None
    store.add_track(TrackStore(VIDEO_720, PART_S, SEGMENT_S, WINDOW_S))
    assert dash.render_mpd(store, TIME_URL) is None


# -- numbers and times ------------------------------------------------------------------------


async def test_every_available_number_maps_to_its_segment_while_live() -> None:
    feeder = Feeder(SegmentStore(), videos=(VIDEO_720, VIDEO_360))
    for _ in range(150):  # 30 s, past the window, one part at a time
        feeder.advance_parts("720p")
        problems = mapping_problems(feeder.store, render(feeder.store, feeder.now), feeder.now)
        assert problems == [], (feeder.now, problems)


async def test_mapping_holds_with_numbers_that_do_not_start_at_zero() -> None:
    # The daemon starts numbering at its start time in tenths of a second.
    store = SegmentStore()
    feeder = Feeder(store)
    first = 17_000_000_000
    for track in store.tracks.values():
        track.first_msn = first
    feeder.advance_to(15.05)
    mpd = render(store, feeder.now)
    assert mapping_problems(store, mpd, feeder.now) == []
    assert {t.start_number for t in templates(mpd)} == {first}
    period = mpd.find("d:Period", NS)
    assert period is not None and period.attrib["start"] == "PT0S"


async def test_after_a_stream_restart_the_period_starts_with_the_new_tracks() -> None:
    # A stream restart: new tracks on the daemon's one clock, 14 s into it, numbered from
    # the restart's own first msn. No time before 14 s may name a number (the new run
    # has none there), even while the time-shift window still reaches back before it.
    store = SegmentStore()
    feeder = Feeder(store)
    first = 17_000_000_140
    for name, track in store.tracks.items():
        track.first_msn = first
        feeder.next_start[name] = 14.0
    feeder.now = 14.0
    period_ids = set()
    while feeder.now < 14.0 + 2 * WINDOW_S:  # until the first segments have expired
        feeder.advance_parts("720p")
        mpd = render(store, feeder.now)
        period = mpd.find("d:Period", NS)
        assert period is not None
        assert xs_duration(period.attrib["start"]) == pytest.approx(14.0)
        assert {t.start_number for t in templates(mpd)} == {first}
        problems = mapping_problems(store, mpd, feeder.now)
        assert problems == [], (feeder.now, problems)
        period_ids.add(period.attrib["id"])
    assert len(period_ids) == 1
    assert store.tracks["720p"].segment(first) is None  # expired: the start stayed put


def jump(feeder: Feeder, names: list[str], seconds: float) -> None:
    """The source of `names` is lost for `seconds` and comes back: their media time jumps,
    their segment numbers go on by one (the packager starts a new segment)."""
    for name in names:
        feeder.next_start[name] += seconds


@pytest.mark.parametrize("lost", [["720p", "audio"], ["audio"]], ids=["all", "audio-only"])
async def test_timeline_jump_starts_a_new_period_that_maps_right(lost: list[str]) -> None:
    store = SegmentStore()
    feeder = Feeder(store)
    feeder.advance_to(10.0)
    before = render(store, feeder.now)
    before_period = before.find("d:Period", NS)
    assert before_period is not None

    jump(feeder, lost, 7.0)
    checked_after_jump = 0
    period_ids = set()
    while feeder.now < 17.0 + 2 * WINDOW_S:  # until the run before the jump has expired
        feeder.advance_parts(lost[0])
        mpd = render(store, feeder.now)
        period = mpd.find("d:Period", NS)
        assert period is not None
        if feeder.now > 17.0 + PART_S:
            # Numbers and times agree on both sides of the jump, at every step.
            problems = mapping_problems(store, mpd, feeder.now)
            assert problems == [], (feeder.now, problems)
            period_ids.add(period.attrib["id"])
            checked_after_jump += 1
    assert checked_after_jump > 100
    # One new Period after the jump, and it keeps its id while it lasts.
    assert len(period_ids) == 1 and before_period.attrib["id"] not in period_ids


async def test_period_starts_at_the_jump_while_the_run_before_is_held() -> None:
    store = SegmentStore()
    feeder = Feeder(store)
    feeder.advance_to(10.0)
    jump(feeder, ["720p", "audio"], 7.0)
    feeder.advance_to(20.1)
    mpd = render(store, feeder.now)
    period = mpd.find("d:Period", NS)
    assert period is not None
    # Slot 17 is the first after the jump: no time before it is addressable, so no number
    # can name a segment of the run before (msn 10 is the first one after the jump).
    assert xs_duration(period.attrib["start"]) == pytest.approx(17.0)
    for tpl in templates(mpd):
        assert tpl.start_number == 10
        assert tpl.pto == pytest.approx(17.0)
    assert store.tracks["720p"].segment(9) is not None  # the run before is still held
