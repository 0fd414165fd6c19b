"""The live path end to end: the real daemon, its playlists and media, checked by real tools."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests import cmaf_boxes, hls_rules
from tests.daemon_proc import DaemonProc, running_daemon


def wait_playlist(d: DaemonProc, path: str, want: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = d.get(path).decode()
            if re.search(want, text):
                return text
        except urllib.error.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never matched {want!r}:\n{d.log()}")
        time.sleep(0.2)


def media_uris(playlist: str) -> tuple[str, list[tuple[str, str]]]:
    """The EXT-X-MAP URI and the (PDT, URI) of each full segment."""
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    assert init
    segs = []
    pdt = ""
    for line in playlist.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = line.split(":", 1)[1]
        elif line and not line.startswith("#"):
            segs.append((pdt, line))
    return init.group(1), segs


def ffprobe_count(path: Path) -> dict[str, int]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return {s["codec_type"]: int(s["nb_read_frames"]) for s in json.loads(out.stdout)["streams"]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("live")) as d:
        # Four complete segments of every track: the first one is short (capture
        # starts mid-GOP-period), the last three are whole.
        wait_playlist(d, "/live/index.m3u8", r"#EXT-X-STREAM-INF")
        wait_playlist(d, "/live/720p/index.m3u8", r"(?s)(#EXTINF.*){4}")
        wait_playlist(d, "/live/audio/index.m3u8", r"(?s)(#EXTINF.*){4}")
        yield d


def test_playlists_follow_ll_hls_rules(live: DaemonProc) -> None:
    multivariant = live.get("/live/index.m3u8").decode()
    assert hls_rules.check_multivariant(multivariant) == []
    assert "RESOLUTION=1280x720" in multivariant and "avc1.64" in multivariant
    assert "mp4a.40.2" in multivariant
    for track in ("720p", "audio"):
        text = live.get(f"/live/{track}/index.m3u8").decode()
        assert hls_rules.check_media_playlist(text) == [], text


def test_segments_decode_and_follow_cmaf_rules(live: DaemonProc, tmp_path: Path) -> None:
    for track, kind in (("720p", "video"), ("audio", "audio")):
        playlist = live.get(f"/live/{track}/index.m3u8").decode()
        init_uri, segments = media_uris(playlist)
        init = live.get(f"/live/{track}/{init_uri}")
        ts = cmaf_boxes.timescale(init)
        expected_dt: int | None = None
        first_dt = 0
        blob = init
        for _, uri in segments[-3:]:
            data = live.get(f"/live/{track}/{uri}")
            blob += data
            for i, (prft, moof, _) in enumerate(cmaf_boxes.parts_of(data)):
                frag = cmaf_boxes.fragment_info(moof, prft, 0)
                assert frag.default_base_is_moof and prft is not None
                if i == 0:
                    assert frag.first_sample_is_sync, f"{uri} must start with a sync sample"
                if expected_dt is None:
                    first_dt = frag.base_media_decode_time
                else:
                    assert frag.base_media_decode_time == expected_dt, "tfdt continuous"
                expected_dt = frag.base_media_decode_time + sum(frag.sample_durations)
        path = tmp_path / f"{track}.mp4"
        path.write_bytes(blob)
        # Every sample the boxes promise decodes: 3 x 2 s at 30 fps, or AAC frames of 1024.
        assert expected_dt is not None
        seconds = (expected_dt - first_dt) / ts
        per_second = 30 if kind == "video" else 48000 / 1024
        assert ffprobe_count(path)[kind] == round(seconds * per_second)
        if kind == "video":
            assert seconds == pytest.approx(6.0)


def test_stamp_in_picture_matches_program_date_time(live: DaemonProc, tmp_path: Path) -> None:
    from datetime import datetime

    from appliance.media.stamp import read_stamp

    playlist = live.get("/live/720p/index.m3u8").decode()
    init_uri, segments = media_uris(playlist)
    pdt, uri = segments[-1]
    path = tmp_path / "seg.mp4"
    path.write_bytes(live.get(f"/live/720p/{init_uri}") + live.get(f"/live/720p/{uri}"))
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    stamp_ms = read_stamp(frame.to_ndarray(format="gray"))
    assert stamp_ms is not None
    pdt_ms = datetime.fromisoformat(pdt.replace("Z", "+00:00")).timestamp() * 1000
    # The segment's PROGRAM-DATE-TIME is the capture time of its first frame.
    assert abs(stamp_ms - pdt_ms) <= 1


def test_blocking_reload_returns_when_the_next_part_is_published(live: DaemonProc) -> None:
    text = live.get("/live/720p/index.m3u8").decode()
    msn = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))  # type: ignore[union-attr]
    # The open segment's number is MEDIA-SEQUENCE + full segments; its parts follow
    # the last segment URI.
    lines = text.splitlines()
    full = sum(1 for ln in lines if ln.startswith("#EXTINF"))
    last_uri = max(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    tail = [ln for ln in lines[last_uri:] if ln.startswith("#EXT-X-PART:")]
    want_msn, want_part = msn + full, len(tail)
    t0 = time.monotonic()
    body = live.get(f"/live/720p/index.m3u8?_HLS_msn={want_msn}&_HLS_part={want_part}").decode()
    waited = time.monotonic() - t0
    assert f"part{want_msn}.{want_part}.m4s" in body
    assert waited < 0.2 + 0.15, "held no longer than one part (+ margin)"

    with pytest.raises(urllib.error.HTTPError) as err:
        live.get(f"/live/720p/index.m3u8?_HLS_msn={want_msn + 5}")
    assert err.value.code == 400


@pytest.mark.parametrize(
    "query",
    [
        "_HLS_msn=abc",
        "_HLS_msn=-1",
        "_HLS_part=1",
        "_HLS_msn=1&_HLS_part=x",
        "_HLS_skip=maybe",
        "_HLS_msn=99999999999999999999999",
    ],
)
def test_garbage_query_gives_400(live: DaemonProc, query: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        live.get(f"/live/720p/index.m3u8?{query}")
    assert err.value.code == 400


def msns(playlist: str) -> list[int]:
    """The segment numbers named by the segment and part URIs of a media playlist."""
    return [int(n) for n in re.findall(r"(?:seg|part)(\d+)[.]", playlist)]


def test_sigterm_stops_cleanly_and_a_restart_never_reuses_segment_numbers(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path / "first") as d:
        before = wait_playlist(d, "/live/720p/index.m3u8", r"#EXTINF(?s:.*)#EXT-X-PART:")
        assert d.stop() == 0
        assert "stopping" in d.log()
    with running_daemon(tmp_path / "second") as d:
        after = wait_playlist(d, "/live/720p/index.m3u8", r"#EXT-X-PART:")
    assert min(msns(after)) > max(msns(before))


def test_missing_v4l2_device_gives_no_source_and_keeps_serving(tmp_path: Path) -> None:
    extra = '[video]\nsource = "v4l2"\ndevice = "/dev/video-absent"\n[audio]\nenabled = false\n'
    with running_daemon(tmp_path, extra=extra) as d:
        deadline = time.monotonic() + 10
        while json.loads(d.get("/healthz"))["state"] != "no_source":
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.1)
        time.sleep(2)  # it retries; the daemon must stay up and keep saying so
        assert json.loads(d.get("/healthz"))["state"] == "no_source"
        with pytest.raises(urllib.error.HTTPError) as err:
            d.get("/live/index.m3u8")
        assert err.value.code in (404, 503)
        assert d.proc.poll() is None
        assert "/dev/video-absent" in d.log()


def test_invalid_config_starts_safe_mode(tmp_path: Path) -> None:
    config = '[web]\nlisten = "127.0.0.1:{port}"\n[video]\nfps = 30\nframerate = 12\n'
    with running_daemon(tmp_path, config=config) as d:
        assert json.loads(d.get("/healthz"))["state"] == "safe_mode"
        assert "video.framerate: unknown key" in d.log()
        time.sleep(1)
        with pytest.raises(urllib.error.HTTPError):
            d.get("/live/index.m3u8")  # media stays off
        assert d.stop() == 0


def test_no_traceback_or_500_on_odd_paths(live: DaemonProc) -> None:
    for path in [
        "/live/../../etc/passwd",
        "/live/720p/part99999999.0.m4s",
        "/live/nope/index.m3u8",
        "/static/../daemon.py",
        "/live/720p/seg-1.m4s",
    ]:
        req = urllib.request.Request(live.url + path)
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError(f"{path} answered 200")
        except urllib.error.HTTPError as err:
            assert err.code in (400, 404), (path, err.code)
            assert b"Traceback" not in err.read()


def test_valid_config_is_kept_as_last_known_good_for_safe_mode(tmp_path: Path) -> None:
    from appliance.config.load import load

    with running_daemon(tmp_path, extra="[video]\nfps = 25\n") as d:
        assert d.stop() == 0
    last_good = tmp_path / "appliance.toml.last-good"
    assert load(last_good).video.fps == 25
    # Break the config: safe mode, and the last-known-good copy is left as it was.
    text = (tmp_path / "appliance.toml").read_text()
    broken = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:{port}", text)
    before = last_good.read_text()
    with running_daemon(tmp_path, config=broken + "bogus = 1\n") as d:
        assert json.loads(d.get("/healthz"))["state"] == "safe_mode"
    assert last_good.read_text() == before
