"""LL-DASH over HTTP: the MPD and time endpoint of the real daemon, chunked transfer of the
segment being written, and media fetched through the MPD's template checked by ffprobe
and by the latency stamp in the picture. One in-process test covers a client that leaves
mid-stream (the server's tasks are visible only from inside)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import logging
import math
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import av
import pytest
from aiohttp import web

from appliance.media.stamp import read_stamp
from appliance.package.store import SegmentStore
from appliance.web.live import setup_live
from tests import cmaf_boxes
from tests.daemon_proc import DaemonProc, free_port, running_daemon
from tests.hls_feeder import Feeder
from tests.test_dash_mpd import NS, Template, templates, xs_datetime_ns

SEGMENT_S = 2.0  # the daemon's default packager settings
PART_S = 0.2


@dataclass
class Mpd:
    root: ET.Element
    ast_ns: int
    templates: dict[str, Template]

    def now_s(self) -> float:
        """Seconds since availabilityStartTime (same machine, same clock)."""
        return (time.time_ns() - self.ast_ns) / 1e9

    def number_at(self, rep: str, t_s: float) -> int:
        tpl = self.templates[rep]
        return tpl.start_number + math.floor((t_s - tpl.period_start) / tpl.duration)

    def media_start(self, rep: str, number: int) -> float:
        tpl = self.templates[rep]
        return tpl.pto + (number - tpl.start_number) * tpl.duration


def fetch_mpd(d: DaemonProc) -> Mpd:
    root = ET.fromstring(d.get("/live/manifest.mpd"))
    return Mpd(root, xs_datetime_ns(root.attrib["availabilityStartTime"]),
               {t.rep_id: t for t in templates(root)})


def wait_mpd(d: DaemonProc, complete_segments: int, timeout: float = 30) -> Mpd:
    """The MPD once `complete_segments` whole segments lie behind the live edge."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            mpd = fetch_mpd(d)
            if mpd.now_s() >= (complete_segments + 1) * SEGMENT_S + 0.3:
                return mpd
        except urllib.error.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no MPD with {complete_segments} segments:\n{d.log()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("dash")) as d:
        wait_mpd(d, complete_segments=3)
        yield d


def seg_path(rep: str, number: int) -> str:
    return f"/live/{rep}/seg{number}.m4s"


def wait_for_slot_phase(mpd: Mpd, phase_s: float) -> float:
    """Sleep until `phase_s` into the next segment slot; the slot's start (s since AST)."""
    now = mpd.now_s()
    start = math.floor(now / SEGMENT_S) * SEGMENT_S
    if now - start > phase_s:
        start += SEGMENT_S
    time.sleep(max(0.0, start + phase_s - now))
    return start


@dataclass
class Streamed:
    status: int
    headers: dict[str, str]
    body: bytes
    first_byte_s: float  # after the request was sent
    end_s: float


def stream(d: DaemonProc, path: str, method: str = "GET", timeout: float = 15) -> Streamed:
    """A request that notes when its first body bytes and its end arrived."""
    url = urlsplit(d.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
    try:
        t0 = time.monotonic()
        conn.request(method, path)
        resp = conn.getresponse()
        body, first = b"", math.inf
        while chunk := resp.read1(65536):
            first = min(first, time.monotonic() - t0)
            body += chunk
        return Streamed(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, first,
                        time.monotonic() - t0)
    finally:
        conn.close()


# -- MPD and time ----------------------------------------------------------------------------


def test_mpd_is_served_with_the_right_headers(live: DaemonProc) -> None:
    req = urllib.request.Request(live.url + "/live/manifest.mpd",
                                 headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/dash+xml"
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers["Content-Encoding"] == "gzip"
        root = ET.fromstring(gzip.decompress(r.read()))
    timing = root.find("d:UTCTiming", NS)
    # Absolute, as the player reached the appliance.
    assert timing is not None and timing.attrib["value"] == live.url + "/live/time"
    assert {t.rep_id for t in templates(root)} == {"720p", "audio"}
    # The clock anchor is the wall clock at media time 0: a few seconds ago, not the epoch.
    age = (time.time_ns() - xs_datetime_ns(root.attrib["availabilityStartTime"])) / 1e9
    assert 3 * SEGMENT_S < age < 600


def test_mpd_answers_a_cors_preflight(live: DaemonProc) -> None:
    req = urllib.request.Request(live.url + "/live/manifest.mpd", method="OPTIONS",
                                 headers={"Origin": "http://elsewhere.example",
                                          "Access-Control-Request-Method": "GET"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_time_endpoint_gives_the_wall_clock(live: DaemonProc) -> None:
    before = time.time()
    with urllib.request.urlopen(live.url + "/live/time", timeout=10) as r:
        body = r.read().decode()
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    after = time.time()
    served = xs_datetime_ns(body) / 1e9
    assert before - 1 < served < after + 1, (body, before, after)


def test_mpd_is_503_before_the_stream_starts(tmp_path: Path) -> None:
    # A V4L2 device that does not exist: the web is up but no media ever starts.
    with running_daemon(tmp_path, extra='[video]\nsource = "v4l2"\ndevice = "/dev/nonexistent"\n'
                        '[audio]\nenabled = false\n') as d:
        with pytest.raises(urllib.error.HTTPError) as err:
            d.get("/live/manifest.mpd")
        assert err.value.code == 503
        assert err.value.headers["Retry-After"] == "1"
        assert err.value.headers["Access-Control-Allow-Origin"] == "*"


# -- the segment being written -------------------------------------------------------------------


def test_open_segment_streams_as_its_parts_arrive(live: DaemonProc) -> None:
    mpd = fetch_mpd(live)
    slot_start = wait_for_slot_phase(mpd, 0.4)
    number = mpd.number_at("720p", slot_start + 0.1)
    got = stream(live, seg_path("720p", number))
    assert got.status == 200, got
    assert got.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in got.headers
    assert got.headers["content-type"] == "video/mp4"
    assert got.headers["access-control-allow-origin"] == "*"
    # Its first parts come at once; the rest over the ~1.6 s the segment still runs.
    assert got.first_byte_s < 0.5, got.first_byte_s
    assert got.end_s - got.first_byte_s > 1.0, (got.first_byte_s, got.end_s)
    # What streamed is byte for byte the segment as served once complete.
    complete = stream(live, seg_path("720p", number))
    assert complete.headers["content-length"] == str(len(complete.body))
    assert "transfer-encoding" not in complete.headers
    assert got.body == complete.body
    assert len(cmaf_boxes.parts_of(got.body)) == round(SEGMENT_S / PART_S)


def test_next_segment_waits_for_its_start_then_streams(live: DaemonProc) -> None:
    mpd = fetch_mpd(live)
    for rep in ("720p", "audio"):
        slot_start = wait_for_slot_phase(mpd, 0.4)
        number = mpd.number_at(rep, slot_start + 0.1) + 1
        got = stream(live, seg_path(rep, number))
        assert got.status == 200, (rep, got.status, got.body[:100])
        assert got.headers.get("transfer-encoding") == "chunked"
        # Nothing before it starts (in 1.6 s, audio within 0.1 s of that), then its parts
        # as they come until it ends, about 2 s later.
        assert got.first_byte_s > 1.2, (rep, got.first_byte_s)
        assert got.end_s - got.first_byte_s > 1.0, (rep, got.first_byte_s, got.end_s)
        assert got.body == live.get(seg_path(rep, number))


def test_far_future_and_expired_numbers_are_404_at_once(live: DaemonProc) -> None:
    mpd = fetch_mpd(live)
    now = mpd.number_at("720p", mpd.now_s())
    for number in (now + 3, now + 1000, now - 1000, 0):
        got = stream(live, seg_path("720p", number))
        assert got.status == 404, number
        assert got.end_s < 0.5, (number, got.end_s)


def test_head_of_the_open_segment_does_not_hang(live: DaemonProc) -> None:
    mpd = fetch_mpd(live)
    slot_start = wait_for_slot_phase(mpd, 0.4)
    got = stream(live, seg_path("720p", mpd.number_at("720p", slot_start + 0.1)), method="HEAD")
    assert got.status == 200
    assert got.body == b"" and got.end_s < 0.5
    assert got.headers["content-type"] == "video/mp4"


def test_client_leaving_mid_stream_leaves_no_error(live: DaemonProc) -> None:
    mpd = fetch_mpd(live)
    slot_start = wait_for_slot_phase(mpd, 0.3)
    url = urlsplit(live.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    conn.request("GET", seg_path("720p", mpd.number_at("720p", slot_start + 0.1)))
    resp = conn.getresponse()
    assert resp.read1(1000)
    conn.close()
    time.sleep(1.0)  # several parts later: the handler has tried to write more
    assert live.proc.poll() is None
    log = live.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert live.get("/healthz")


# -- media through the template ---------------------------------------------------------------


def test_ffprobe_decodes_media_fetched_through_the_template(live: DaemonProc,
                                                            tmp_path: Path) -> None:
    mpd = fetch_mpd(live)
    for tpl_el in mpd.root.iter(f"{{{NS['d']}}}SegmentTemplate"):
        assert tpl_el.attrib["media"] == "$RepresentationID$/seg$Number$.m4s"
    current = mpd.number_at("720p", mpd.now_s())
    for rep, kind in (("720p", "video"), ("audio", "audio")):
        tpl = mpd.templates[rep]
        init = live.get(f"/live/{rep}/init.mp4")
        ts = cmaf_boxes.timescale(init)
        assert ts == tpl.timescale
        numbers = range(current - 3, current)  # whole segments, all in the window
        blob = init
        for number in numbers:
            data = live.get(seg_path(rep, number))
            prft, moof, _ = cmaf_boxes.parts_of(data)[0]
            tfdt = cmaf_boxes.fragment_info(moof, prft, 0).base_media_decode_time / ts
            # The segment starts where $Number$ x @duration says: exactly for video, within
            # half an AAC part for audio.
            tolerance = 1e-3 if kind == "video" else 0.1
            assert abs(tfdt - mpd.media_start(rep, number)) <= tolerance, (rep, number, tfdt)
            blob += data
        path = tmp_path / f"{rep}.mp4"
        path.write_bytes(blob)
        counts = ffprobe_frames(path)
        per_second = 30 if kind == "video" else 48000 / 1024
        assert abs(counts[kind] - len(numbers) * SEGMENT_S * per_second) <= 12, counts


def test_stamp_matches_the_availability_start_time(live: DaemonProc, tmp_path: Path) -> None:
    """AST + the time $Number$ maps to is the capture time of the segment's first frame."""
    mpd = fetch_mpd(live)
    number = mpd.number_at("720p", mpd.now_s()) - 1
    path = tmp_path / "seg.mp4"
    path.write_bytes(live.get("/live/720p/init.mp4") + live.get(seg_path("720p", number)))
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    stamp_ms = read_stamp(frame.to_ndarray(format="gray"))
    assert stamp_ms is not None
    expected_ms = mpd.ast_ns / 1e6 + mpd.media_start("720p", number) * 1000
    assert abs(stamp_ms - expected_ms) <= 2, (stamp_ms, expected_ms)
    ast = mpd.root.attrib["availabilityStartTime"]
    assert datetime.fromisoformat(ast.replace("Z", "+00:00")).microsecond % 1000 == 0


def ffprobe_frames(path: Path) -> dict[str, int]:
    out = subprocess.run(
        ["/usr/bin/ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,nb_read_frames", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    )
    counts = {}
    for line in out.stdout.split():
        kind, frames = line.split(",")
        counts[kind] = int(frames)
    return counts


# -- seen from inside: the server's tasks and the source's pauses -------------------------------


@contextlib.asynccontextmanager
async def serve_like_the_daemon(store: SegmentStore) -> AsyncIterator[int]:
    """/live over `store` on a free port, as the daemon serves it (aiohttp's TestServer
    would cancel handlers when a client leaves, which the daemon's runner does not)."""
    app = web.Application()
    setup_live(app, store)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_leaving_client_leaves_no_task_nor_error(caplog: pytest.LogCaptureFixture) -> None:
    store = SegmentStore()
    feeder = Feeder(store, segment_s=2.0, window_s=24.0)
    feeder.advance_to(4.25)  # a segment has its first part: 9 more come over 1.8 s
    async with serve_like_the_daemon(store) as port:
        feeding = asyncio.create_task(feeder.run())
        try:
            baseline = len(asyncio.all_tasks())
            msn = store.tracks["720p"].segments[-1].msn
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /live/720p/seg{msn}.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head
            assert await reader.read(100)
            assert len(asyncio.all_tasks()) > baseline  # the handler, waiting for parts
            with caplog.at_level(logging.DEBUG):
                writer.close()
                await writer.wait_closed()
                # The handler notices at its next write, one part later, and does not go
                # on until the segment ends.
                for _ in range(8):
                    await asyncio.sleep(0.1)
                    if len(asyncio.all_tasks()) <= baseline:
                        break
            assert len(asyncio.all_tasks()) <= baseline
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding


async def test_segment_that_stops_growing_is_cut_not_completed() -> None:
    """The source stops mid-segment: the stream is cut without its last chunk, so neither
    the player nor a cache takes the part received for the whole segment."""
    store = SegmentStore()
    feeder = Feeder(store)  # 1 s segments: cut 1 s + 1 s after the last part
    feeder.advance_to(4.45)
    msn = store.tracks["720p"].segments[-1].msn
    async with serve_like_the_daemon(store) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(f"GET /live/720p/seg{msn}.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
        waited = time.monotonic() - started
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"720p:20:" in body and b"720p:21:" in body  # the two parts written
    assert not body.endswith(b"0\r\n\r\n"), body[-20:]  # no terminating chunk
    assert 1.5 < waited < 4, waited
