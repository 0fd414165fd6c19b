"""LL-HLS playlists rendered from a segment store fed like the packager feeds it."""

from __future__ import annotations

import re

import pytest

from appliance.package import hls, hls_request
from appliance.package.store import SegmentStore, TrackStore
from tests.hls_feeder import (
    AUDIO,
    SEGMENT_S,
    VIDEO_360,
    VIDEO_720,
    WALL0_NS,
    WINDOW_S,
    Feeder,
    Listed,
    media,
    one,
    parse_attributes,
    segments_of,
    tag_values,
    timing_of,
)
from tests.hls_rules import check_media_playlist, check_multivariant

# -- the playlists as a whole ---------------------------------------------------------------


async def test_every_playlist_passes_the_rules(fed: Feeder) -> None:
    assert check_multivariant(hls.render_multivariant(fed.store) or "") == []
    for name in ("720p", "360p", "audio"):
        assert check_media_playlist(media(fed.store, name)) == [], name
        assert check_media_playlist(media(fed.store, name, "YES")) == [], name


async def test_rules_hold_at_every_step_of_a_live_stream() -> None:
    feeder = Feeder(SegmentStore())
    for _ in range(150):  # 30 s, past the window, one part at a time
        feeder.advance_parts("720p")
        for name in ("720p", "audio"):
            problems = check_media_playlist(media(feeder.store, name))
            assert problems == [], (feeder.now, name, problems)


async def test_header_values(fed: Feeder) -> None:
    text = media(fed.store, "720p")
    assert text.startswith("#EXTM3U\n")
    assert one(text, "#EXT-X-VERSION") == "9"
    assert one(text, "#EXT-X-TARGETDURATION") == "1"
    assert one(text, "#EXT-X-PART-INF") == "PART-TARGET=0.2"
    control = parse_attributes(one(text, "#EXT-X-SERVER-CONTROL"))
    assert control == {"CAN-BLOCK-RELOAD": "YES", "CAN-SKIP-UNTIL": "6.0",
                       "PART-HOLD-BACK": "0.6"}
    assert one(text, "#EXT-X-MAP") == 'URI="init.mp4"'


async def test_all_tracks_share_target_and_server_control(fed: Feeder) -> None:
    # §6.2.4: same Target Duration and EXT-X-SERVER-CONTROL in every media playlist.
    texts = [media(fed.store, name) for name in ("720p", "360p", "audio")]
    for tag in ("#EXT-X-TARGETDURATION", "#EXT-X-SERVER-CONTROL", "#EXT-X-PART-INF"):
        assert len({one(t, tag) for t in texts}) == 1, tag


async def test_parts_within_part_target_and_hold_back_3x(fed: Feeder) -> None:
    for name in ("720p", "audio"):
        text = media(fed.store, name)
        target = float(one(text, "#EXT-X-PART-INF").split("=")[1])
        hold_back = float(parse_attributes(one(text, "#EXT-X-SERVER-CONTROL"))["PART-HOLD-BACK"])
        durations = [float(parse_attributes(v)["DURATION"])
                     for v in tag_values(text, "#EXT-X-PART")]
        assert durations and max(durations) <= target
        assert hold_back >= 3 * target - 1e-9  # decimal text vs binary float


async def test_program_date_time_on_every_segment(fed: Feeder) -> None:
    text = media(fed.store, "720p")
    track = fed.track("720p")
    pdts = tag_values(text, "#EXT-X-PROGRAM-DATE-TIME")
    listed = segments_of(text)
    # every complete segment plus the open one
    assert len(pdts) == len(listed) + 1
    first = track.segment(int(one(text, "#EXT-X-MEDIA-SEQUENCE")))
    assert first is not None
    assert pdts[0] == hls.fmt_pdt(first.wall_ns)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", pdts[0])


def test_pdt_format() -> None:
    assert hls.fmt_pdt(1_700_000_000_123_999_999) == "2023-11-14T22:13:20.123Z"
    assert hls.fmt_pdt(0) == "1970-01-01T00:00:00.000Z"


async def test_media_sequence_advances_as_the_window_slides() -> None:
    feeder = Feeder(SegmentStore())
    feeder.advance_to(5.1)
    assert one(media(feeder.store, "720p"), "#EXT-X-MEDIA-SEQUENCE") == "0"
    sequences = []
    for _ in range(10):
        feeder.advance(3.0)
        text = media(feeder.store, "720p")
        sequences.append(int(one(text, "#EXT-X-MEDIA-SEQUENCE")))
        # MEDIA-SEQUENCE names the first listed segment
        assert segments_of(text)[0].uri == f"seg{sequences[-1]}.m4s"
    assert sequences == sorted(sequences) and sequences[-1] > sequences[0]
    assert sequences[-1] > 10
    # the listed span stays under the store window, by two target durations (§6.2.2)
    listed = segments_of(media(feeder.store, "720p"))
    assert sum(s.duration for s in listed) <= WINDOW_S - 2 * 1 + 1e-6
    assert fed_first_msn(feeder) < sequences[-1]


def fed_first_msn(feeder: Feeder) -> int:
    return feeder.track("720p").segments[0].msn


async def test_parts_only_for_the_last_three_target_durations(fed: Feeder) -> None:
    text = media(fed.store, "720p")
    listed = segments_of(text)
    with_parts = [s for s in listed if s.parts]
    # TD 1 s: the two complete segments before the open one (2 s + the open part of a
    # third) lie within 3 s of the end; every older one lists no part.
    assert 2 <= len(with_parts) <= 3
    assert listed[-len(with_parts):] == with_parts
    assert all(not s.parts for s in listed[:-len(with_parts)])
    # a segment listing parts lists all of them, in order, first one independent
    for seg in with_parts:
        msn = int(seg.uri[3:-4])
        assert seg.parts == [f"part{msn}.{i}.m4s" for i in range(5)]
    assert 'INDEPENDENT=YES' in tag_values(text, "#EXT-X-PART")[0]
    assert 'INDEPENDENT=YES' not in tag_values(text, "#EXT-X-PART")[1]


async def test_open_segment_parts_follow_the_last_extinf(fed: Feeder) -> None:
    fed.advance_parts("720p", 2)
    text = media(fed.store, "720p")
    track = fed.track("720p")
    pos = track.last_position()
    assert pos is not None
    tail = text.split(segments_of(text)[-1].uri + "\n", 1)[1]
    parts = [parse_attributes(v)["URI"] for v in tag_values(tail, "#EXT-X-PART")]
    assert parts == [f"part{pos[0]}.{i}.m4s" for i in range(pos[1] + 1)]
    assert "#EXT-X-PROGRAM-DATE-TIME" in tail.split("#EXT-X-PART")[0]


@pytest.mark.parametrize("name", ["720p", "audio"])
async def test_preload_hint_names_the_next_part(name: str) -> None:
    feeder = Feeder(SegmentStore())
    feeder.advance_to(0.5)
    misses = 0
    for _ in range(60):
        hint = parse_attributes(one(media(feeder.store, name), "#EXT-X-PRELOAD-HINT"))
        assert hint is not None and hint["TYPE"] == "PART"
        feeder.advance_parts(name)
        pos = feeder.track(name).last_position()
        assert pos is not None
        misses += hint["URI"] != hls.part_uri(*pos)
    assert misses == 0


async def test_video_hint_follows_the_gop_not_the_clock() -> None:
    # Video that starts off a multiple of the segment duration still gets hints right.
    store = SegmentStore()
    track = TrackStore(VIDEO_720, 0.2, 1.0, 12.0)
    store.add_track(track)
    start = 0.7
    for i in range(12):
        track.add_part(b"x", start + i * 0.2, 0.2, i % 5 == 0, i % 5 == 0, WALL0_NS + i)
        expected = (i // 5 + 1, 0) if i % 5 == 4 else (i // 5, i % 5 + 1)
        assert hls.next_part(track) == expected, i


async def test_rendition_reports_for_every_other_playlist(fed: Feeder) -> None:
    expected = {"720p": {"360p", "audio"}, "360p": {"720p", "audio"}, "audio": {"720p", "360p"}}
    for name, others in expected.items():
        reports = [parse_attributes(v) for v in
                   tag_values(media(fed.store, name), "#EXT-X-RENDITION-REPORT")]
        assert {r["URI"] for r in reports} == {f"../{o}/index.m3u8" for o in others}
        for report in reports:
            other = report["URI"].split("/")[1]
            pos = fed.track(other).last_position()
            assert pos == (int(report["LAST-MSN"]), int(report["LAST-PART"]))


# -- delta updates ---------------------------------------------------------------------------


async def test_delta_update_skips_segments_beyond_the_skip_boundary(fed: Feeder) -> None:
    track = fed.track("720p")
    timing = timing_of(fed.store)
    full, delta = media(fed.store, "720p"), media(fed.store, "720p", "YES")
    skipped = int(parse_attributes(one(delta, "#EXT-X-SKIP"))["SKIPPED-SEGMENTS"])
    edge = hls.edge_time(track)
    assert edge is not None
    listed = hls.listed_segments(track, timing)
    expected = sum(1 for s in listed if s.complete and edge - (s.start + s.duration)
                   >= timing.skip_until - 1e-6)
    assert skipped == expected > 0
    assert one(delta, "#EXT-X-MEDIA-SEQUENCE") == one(full, "#EXT-X-MEDIA-SEQUENCE")
    assert segments_of(delta) == segments_of(full)[skipped:]
    # what is left covers at least the skip boundary
    assert sum(s.duration for s in segments_of(delta)) >= timing.skip_until - 1.0
    assert "RECENTLY-REMOVED-DATERANGES" not in delta


async def test_delta_plus_previous_playlist_rebuilds_the_full_one(fed: Feeder) -> None:
    for step in range(12):
        previous = media(fed.store, "720p")
        fed.advance(0.7)
        current, delta = media(fed.store, "720p"), media(fed.store, "720p", "YES")
        rebuilt = merge_delta(previous, delta)
        assert rebuilt == segments_of(current), step


def merge_delta(previous: str, delta: str) -> list[Listed]:
    """What a client does (§6.3.7): skipped segments come from its previous playlist."""
    old_seq = int(one(previous, "#EXT-X-MEDIA-SEQUENCE"))
    old = {old_seq + i: s for i, s in enumerate(segments_of(previous))}
    seq = int(one(delta, "#EXT-X-MEDIA-SEQUENCE"))
    skipped = int(parse_attributes(one(delta, "#EXT-X-SKIP"))["SKIPPED-SEGMENTS"])
    missing = [m for m in range(seq, seq + skipped) if m not in old]
    assert not missing, f"delta skips segments the previous playlist lacks: {missing}"
    head = [Listed(old[m].uri, old[m].duration, old[m].pdt, []) for m in range(seq, seq + skipped)]
    return head + segments_of(delta)


async def test_v2_skip_lists_no_removed_dateranges(fed: Feeder) -> None:
    delta = media(fed.store, "720p", "v2")
    assert 'RECENTLY-REMOVED-DATERANGES=""' in one(delta, "#EXT-X-SKIP")
    assert one(delta, "#EXT-X-VERSION") == "9"
    assert check_media_playlist(delta) == []


# -- timing --------------------------------------------------------------------------------


async def test_target_duration_follows_the_longest_segment() -> None:
    store = SegmentStore()
    track = TrackStore(VIDEO_720, 0.2, 2.0, 30.0)
    store.add_track(track)
    for i in range(13):  # one 2.6 s segment: rounds to 3
        track.add_part(b"x", i * 0.2, 0.2, i == 0, i == 0, WALL0_NS + i * 200_000_000)
    track.add_part(b"x", 2.6, 0.2, True, True, WALL0_NS + 2_600_000_000)
    timing = timing_of(store)
    assert timing.target_duration == 3
    text = media(store, "720p")
    assert one(text, "#EXT-X-TARGETDURATION") == "3"
    assert check_media_playlist(text) == []


def test_round_half_up() -> None:
    assert [hls.round_half_up(x) for x in (0.4, 0.5, 1.49, 2.5, 2.112)] == [0, 1, 1, 3, 2]


async def test_part_target_covers_an_overlong_part() -> None:
    store = SegmentStore()
    track = TrackStore(VIDEO_720, 0.2, 2.0, 30.0)
    store.add_track(track)
    track.add_part(b"x", 0.0, 0.2, True, True, WALL0_NS)
    track.add_part(b"x", 0.2, 6 / 29.97, False, False, WALL0_NS)  # 0.2002002 s
    timing = timing_of(store)
    assert timing.part_target == 0.20021  # rounded up, never down
    assert check_media_playlist(media(store, "720p")) == []


def test_timing_never_shrinks_once_merged() -> None:
    a, b = hls.Timing(2, 0.2), hls.Timing(1, 0.25)
    assert a.merged(b) == hls.Timing(2, 0.25) == b.merged(a)
    assert a.advance_part_limit == pytest.approx(15)
    assert hls.Timing(4, 1.0).advance_part_limit == 3
    assert a.block_limit == 6 and a.skip_until == 12 and a.part_hold_back == 0.6


# -- multivariant ---------------------------------------------------------------------------


async def test_multivariant_lists_each_rung_with_the_audio_group(fed: Feeder) -> None:
    text = hls.render_multivariant(fed.store)
    assert text is not None
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in text.splitlines()
    media_tag = parse_attributes(one(text, "#EXT-X-MEDIA"))
    assert media_tag is not None
    assert media_tag["TYPE"] == "AUDIO" and media_tag["GROUP-ID"] == "audio"
    assert media_tag["DEFAULT"] == media_tag["AUTOSELECT"] == "YES"
    assert media_tag["URI"] == "audio/index.m3u8"
    lines = text.splitlines()
    infs = [(parse_attributes(line.split(":", 1)[1]), lines[i + 1])
            for i, line in enumerate(lines) if line.startswith("#EXT-X-STREAM-INF:")]
    assert [uri for _, uri in infs] == ["720p/index.m3u8", "360p/index.m3u8"]
    top = infs[0][0]
    assert top["CODECS"] == "avc1.64001f,mp4a.40.2"
    assert top["RESOLUTION"] == "1280x720" and top["FRAME-RATE"] == "30.000"
    assert top["AUDIO"] == "audio"
    configured = VIDEO_720.bitrate + AUDIO.bitrate
    assert int(top["BANDWIDTH"]) >= configured * hls.BOX_OVERHEAD
    assert int(top["BANDWIDTH"]) >= int(top["AVERAGE-BANDWIDTH"]) > 0


async def test_bandwidth_follows_a_measured_peak_above_the_configuration() -> None:
    store = SegmentStore()
    feeder = Feeder(store, bytes_scale=2.0)  # the encoder overshoots twice the config
    feeder.advance_to(6.1)
    top = parse_attributes(one(hls.render_multivariant(store) or "", "#EXT-X-STREAM-INF"))
    assert top is not None
    peak = sum(hls.peak_bitrate(t) for t in store.tracks.values())
    assert int(top["BANDWIDTH"]) == peak > (VIDEO_720.bitrate + AUDIO.bitrate) * 1.9
    assert int(top["AVERAGE-BANDWIDTH"]) > (VIDEO_720.bitrate + AUDIO.bitrate) * 1.9


async def test_multivariant_without_audio_or_video() -> None:
    store = SegmentStore()
    assert hls.render_multivariant(store) is None
    Feeder(store, audio=False).advance_to(1.1)
    text = hls.render_multivariant(store) or ""
    assert "#EXT-X-MEDIA:" not in text and "AUDIO=" not in text
    assert 'CODECS="avc1.64001f"' in text
    assert check_multivariant(text) == []


# -- blocking rules -----------------------------------------------------------------------------


async def test_blocking_request_limits() -> None:
    feeder = Feeder(SegmentStore(), audio=False)
    feeder.advance_to(4.3)  # segments 0-3 complete, segment 4 open with 1 part
    track, timing = feeder.track("720p"), timing_of(feeder.store)
    assert track.last_position() == (4, 0)
    check = hls.check_blocking_request
    check(track, timing, 5, None)  # last complete (3) + 2
    check(track, timing, 4, 1)
    check(track, timing, 2, 0)  # in the past: fine, answered at once
    with pytest.raises(hls_request.HlsRequestError):
        check(track, timing, 6, None)  # three segments ahead
    with pytest.raises(hls_request.HlsRequestError):
        check(track, timing, 6, 0)
    # Advance Part Limit: 3 / 0.2 = 15 parts beyond the last one
    check(track, timing, 4, 15)
    with pytest.raises(hls_request.HlsRequestError):
        check(track, timing, 4, 16)
    check(track, timing, 5, 4)  # 4 left in segment 4, then 5 more
    with pytest.raises(hls_request.HlsRequestError):
        check(track, timing, 5, 12)


async def test_playlist_ready_rolls_a_past_the_end_part_over() -> None:
    feeder = Feeder(SegmentStore(), audio=False)
    feeder.advance_to(0.9)  # segment 0 open with parts 0-3
    track = feeder.track("720p")
    assert not hls.playlist_ready(track, 0, 4)
    assert not hls.playlist_ready(track, 0, 7)  # may be part 0 of segment 1
    assert not hls.playlist_ready(track, 0, None)
    feeder.advance_parts("720p")  # part 4 closes nothing yet: the segment is open
    assert hls.playlist_ready(track, 0, 4)
    assert not hls.playlist_ready(track, 0, 7)
    feeder.advance_parts("720p")  # segment 1 part 0: segment 0 now complete
    assert hls.playlist_ready(track, 0, 7)  # treated as part 0 of segment 1 (§6.2.5.2)
    assert hls.playlist_ready(track, 0, None)
    assert not hls.playlist_ready(track, 1, None)


async def test_part_states() -> None:
    feeder = Feeder(SegmentStore(), audio=False, window_s=6.0)
    feeder.advance_to(20.3)  # segment 20 open with part 0
    track, timing = feeder.track("720p"), timing_of(feeder.store)
    first = track.segments[0].msn
    assert hls.part_state(track, timing, 20, 0) == "ready"
    assert hls.part_state(track, timing, 19, 4) == "ready"
    assert hls.part_state(track, timing, 20, 1) == "pending"  # the hinted part
    assert hls.part_state(track, timing, 21, 0) == "pending"
    assert hls.part_state(track, timing, 19, 5) == "gone"  # past a complete segment's end
    assert hls.part_state(track, timing, first - 1, 0) == "gone"  # expired
    assert hls.part_state(track, timing, 23, 0) == "gone"  # too far ahead
    assert hls.part_state(track, timing, 20, 16) == "gone"


# -- memory --------------------------------------------------------------------------------


async def test_window_stays_bounded_as_parts_keep_coming() -> None:
    feeder = Feeder(SegmentStore(), videos=(VIDEO_720, VIDEO_360))
    sizes = []
    for _ in range(40):  # 400 s of media
        feeder.advance(10.0)
        track = feeder.track("720p")
        held = sum(s.size for t in feeder.store.tracks.values() for s in t.segments)
        sizes.append((len(track.segments), held, len(media(feeder.store, "720p"))))
    max_segments = WINDOW_S / SEGMENT_S + 3
    assert all(n <= max_segments for n, _, _ in sizes)
    # bytes and playlist text reach a plateau instead of growing with time
    assert max(s[1] for s in sizes[20:]) <= max(s[1] for s in sizes[:10]) * 1.05
    assert max(s[2] for s in sizes[20:]) <= max(s[2] for s in sizes[:10]) * 1.05
