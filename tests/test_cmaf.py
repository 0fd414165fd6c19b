"""CMAF rules on what the real encoders + libavformat muxer produce, checked box by box."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from appliance.capture.encoder import AudioEncoder, VideoEncoder
from appliance.capture.source import Captured
from appliance.media.clock import MediaClock
from appliance.package.cmaf import CmafMuxer, MuxedPart
from tests import cmaf_boxes

SECONDS = 5
PART_S, SEGMENT_S = 0.2, 2.0
# Capture starts a little after the media clock, as in the daemon: the muxer must keep
# these timestamps (not restart the track at zero) or the tracks fall out of sync.
FIRST_VIDEO_FRAME, FIRST_AUDIO_FRAME = 7, 5


def video_parts(clock: MediaClock, fps: int = 30, skip: frozenset[int] = frozenset(),
                enc: VideoEncoder | None = None) -> tuple[bytes, list[MuxedPart]]:
    enc = enc or VideoEncoder("720p", 640, 360, fps, 1000, SEGMENT_S, clock, "ultrafast")
    mux: CmafMuxer | None = None
    parts: list[MuxedPart] = []
    for n in range(FIRST_VIDEO_FRAME, FIRST_VIDEO_FRAME + SECONDS * fps):
        if n in skip:  # the source fell behind and skipped this frame
            continue
        y = np.full((360 * 3 // 2, 640), 128, np.uint8)
        y[:360, (n * 8) % 600 : (n * 8) % 600 + 40] = 235
        frame = av.VideoFrame.from_ndarray(y, format="yuv420p")
        for pkt in enc.encode(Captured(frame, n * 1_000_000_000 // fps)):
            if mux is None:
                assert enc.info is not None
                mux = CmafMuxer(enc.info, PART_S, SEGMENT_S)
            parts += mux.feed(pkt)
    assert mux is not None and mux.init is not None
    return mux.init, parts


def audio_parts(clock: MediaClock, skip: frozenset[int] = frozenset(),
                enc: AudioEncoder | None = None, fmt: str = "fltp",
                ) -> tuple[bytes, list[MuxedPart]]:
    """fltp frames go straight to the encoder; s16 (as from a sound card) is resampled."""
    enc = enc or AudioEncoder(48000, 2, 128, clock)
    mux = CmafMuxer(enc.info, PART_S, SEGMENT_S)
    parts: list[MuxedPart] = []
    for k in range(FIRST_AUDIO_FRAME, FIRST_AUDIO_FRAME + SECONDS * 48000 // 1024):
        if k in skip:
            continue
        t = np.arange(k * 1024, (k + 1) * 1024) / 48000
        samples = np.tile((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), (2, 1))
        if fmt == "s16":
            packed = (samples.T * 32767).round().astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
        else:
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate = 48000
        for pkt in enc.encode(Captured(frame, k * 1024 * 1_000_000_000 // 48000)):
            parts += mux.feed(pkt)
    assert mux.init is not None
    return mux.init, parts


def check_track(init: bytes, parts: list[MuxedPart], clock: MediaClock) -> None:
    top = [b.kind for b in cmaf_boxes.parse(init)]
    assert top == [b"ftyp", b"moov"], top
    moov = cmaf_boxes.parse(init)[1]
    assert moov.find(b"mvex", b"trex") is not None, "fragmented init needs mvex/trex"
    ts = cmaf_boxes.timescale(init)
    expected_dt = None
    last_seq = None
    for part in parts:
        triples = cmaf_boxes.parts_of(part.data)
        assert len(triples) == 1, "one moof/mdat per part"
        prft, moof, _ = triples[0]
        assert prft is not None, "prft before every moof"
        frag = cmaf_boxes.fragment_info(moof, prft, 0)
        assert frag.default_base_is_moof
        if expected_dt is not None:
            assert frag.base_media_decode_time == expected_dt, "tfdt must be continuous"
        if last_seq is not None:
            assert frag.sequence == last_seq + 1
        last_seq = frag.sequence
        duration = sum(frag.sample_durations)
        expected_dt = frag.base_media_decode_time + duration
        assert duration / ts <= PART_S + 1e-9, "part longer than PART-TARGET"
        assert abs(duration / ts - part.duration) < 1e-6
        assert abs(frag.base_media_decode_time / ts - part.start) < 1e-6
        if part.new_segment:
            assert frag.first_sample_is_sync, "segments start with a sync sample"
        # prft carries the capture wall clock of the fragment's first sample.
        assert frag.prft_ntp_unix_s is not None
        want = clock.wall_ns(int(part.start * 1e9)) / 1e9
        assert abs(frag.prft_ntp_unix_s - want) < 0.002


def ffprobe_frames(path: Path, kind: str) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", kind[0], "-count_frames",
         "-show_entries", "stream=nb_read_frames,codec_name", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    return int(json.loads(out.stdout)["streams"][0]["nb_read_frames"])


def test_video_track_follows_cmaf_rules(tmp_path: Path) -> None:
    clock = MediaClock()
    init, parts = video_parts(clock)
    check_track(init, parts, clock)
    segment_starts = [p.start for p in parts if p.new_segment]
    assert segment_starts[:3] == pytest.approx([FIRST_VIDEO_FRAME / 30, 2.0, 4.0])
    # Parts are back to back; only the last fragment stays open (until the next packet).
    for a, b in zip(parts, parts[1:], strict=False):
        assert b.start == pytest.approx(a.start + a.duration)
    out = sum(p.duration for p in parts)
    assert SECONDS - PART_S <= out < SECONDS
    path = tmp_path / "v.mp4"
    path.write_bytes(init + b"".join(p.data for p in parts))
    assert ffprobe_frames(path, "video") == round(out * 30)


def test_video_parts_never_exceed_target_at_24fps() -> None:
    clock = MediaClock()
    init, parts = video_parts(clock, fps=24)  # 0.2 s is 4.8 frames: parts must be 4
    check_track(init, parts, clock)
    # Whole parts of 4 frames, except one cut short by the keyframe that ends a segment.
    for part, following in zip(parts, parts[1:], strict=False):
        frames = round(part.duration * 24)
        assert frames == 4 or (frames < 4 and following.new_segment)


@pytest.mark.parametrize("fmt", ["fltp", "s16"])
def test_audio_track_follows_cmaf_rules(tmp_path: Path, fmt: str) -> None:
    clock = MediaClock()
    init, parts = audio_parts(clock, fmt=fmt)
    check_track(init, parts, clock)
    assert {round(p.duration * 48000) for p in parts} == {9 * 1024}
    # Audio segments start at the part nearest each 2 s video boundary.
    starts = [p.start for p in parts if p.new_segment]
    for k, start in enumerate(starts[1:], start=1):
        assert abs(start - k * SEGMENT_S) <= 9 * 1024 / 48000 / 2
    path = tmp_path / "a.mp4"
    path.write_bytes(init + b"".join(p.data for p in parts))
    assert ffprobe_frames(path, "audio") == len(parts) * 9


def test_frames_the_source_skipped_are_repeated_not_left_as_holes(tmp_path: Path) -> None:
    clock = MediaClock()
    enc = VideoEncoder("720p", 640, 360, 30, 1000, SEGMENT_S, clock, "ultrafast")
    skip = frozenset({20, 21, 45, 59, 60})  # 60: the slot of a segment's keyframe
    init, parts = video_parts(clock, skip=skip, enc=enc)
    check_track(init, parts, clock)  # back-to-back tfdt, every part within PART-TARGET
    assert enc.repeated == len(skip)
    for a, b in zip(parts, parts[1:], strict=False):
        assert b.start == pytest.approx(a.start + a.duration)
    # The segment still starts on its boundary, with an IDR (the repeat carries it).
    assert [p.start for p in parts if p.new_segment][1:3] == pytest.approx([2.0, 4.0])
    path = tmp_path / "v.mp4"
    path.write_bytes(init + b"".join(p.data for p in parts))
    assert ffprobe_frames(path, "video") == round(sum(p.duration for p in parts) * 30)


@pytest.mark.parametrize("fmt", ["fltp", "s16"])
def test_samples_the_source_skipped_become_silence_in_place(fmt: str) -> None:
    clock = MediaClock()
    enc = AudioEncoder(48000, 2, 128, clock)
    init, parts = audio_parts(clock, skip=frozenset({30, 31, 77}), enc=enc, fmt=fmt)
    check_track(init, parts, clock)
    assert enc.silence_samples == 3 * 1024
    last = parts[-1]
    # No compression of the timeline: the audio still ends where the source's did.
    end = (FIRST_AUDIO_FRAME + SECONDS * 48000 // 1024) * 1024 / 48000
    assert end - 2 * 9 * 1024 / 48000 <= last.start + last.duration <= end
