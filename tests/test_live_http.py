"""The /live routes over HTTP: blocking reload, parts, caching, CORS, gzip, bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.package.store import SegmentStore, TrackStore
from appliance.web.live import setup_live
from tests.hls_feeder import Feeder, parse_attributes
from tests.hls_rules import check_media_playlist, check_multivariant
from tests.test_hls_request import BAD_QUERIES

# Target duration 1 s (1 s segments of 0.2 s parts): blocking gives up after 3 s.
BLOCK_LIMIT = 3.0
PROMPT = 0.05  # a blocked request answers within this of the publication


@dataclass
class Live:
    client: TestClient[web.Request, web.Application]
    feeder: Feeder
    store: SegmentStore

    @property
    def video(self) -> TrackStore:
        return self.store.tracks["720p"]

    def start(self, speed: float = 1.0) -> asyncio.Task[None]:
        task = asyncio.create_task(self.feeder.run(speed))
        self._tasks.append(task)
        return task

    def __post_init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def serve(store: SegmentStore, feeder: Feeder, **client_kw: Any) -> AsyncIterator[Live]:
    app = web.Application()
    setup_live(app, store)
    async with TestClient(TestServer(app), **client_kw) as client:
        live = Live(client, feeder, store)
        try:
            yield live
        finally:
            await live.stop()


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    store = SegmentStore()
    feeder = Feeder(store)
    feeder.advance_to(6.1)
    async with serve(store, feeder) as running:
        yield running


NO_GZIP = {"Accept-Encoding": "identity"}


# -- playlists -------------------------------------------------------------------------


async def test_multivariant(live: Live) -> None:
    resp = await live.client.get("/live/index.m3u8", headers=NO_GZIP)
    assert resp.status == 200
    assert resp.content_type == "application/vnd.apple.mpegurl"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    text = await resp.text()
    assert check_multivariant(text) == []
    assert "720p/index.m3u8" in text and 'URI="audio/index.m3u8"' in text


@pytest.mark.parametrize("name", ["720p", "audio"])
async def test_media_playlist(live: Live, name: str) -> None:
    resp = await live.client.get(f"/live/{name}/index.m3u8", headers=NO_GZIP)
    assert resp.status == 200
    assert resp.content_type == "application/vnd.apple.mpegurl"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert check_media_playlist(await resp.text()) == []


async def test_playlists_stay_valid_while_live(live: Live) -> None:
    live.start(speed=4.0)
    for _ in range(20):
        await asyncio.sleep(0.1)
        for name in ("720p", "audio"):
            text = await (await live.client.get(f"/live/{name}/index.m3u8")).text()
            assert check_media_playlist(text) == [], name


async def test_head_has_no_body(live: Live) -> None:
    resp = await live.client.head("/live/720p/index.m3u8", headers=NO_GZIP)
    assert resp.status == 200
    assert await resp.read() == b""


# -- blocking playlist reload -------------------------------------------------------------


def hint_of(text: str) -> tuple[int, int]:
    line = next(x for x in text.splitlines() if x.startswith("#EXT-X-PRELOAD-HINT:"))
    uri = parse_attributes(line.split(":", 1)[1])["URI"]
    msn, index = uri.removeprefix("part").removesuffix(".m4s").split(".")
    return int(msn), int(index)


def published_at(feeder: Feeder, name: str, msn: int, index: int) -> float:
    return next(p.at for p in feeder.published
                if (p.track, p.msn, p.index) == (name, msn, index))


async def test_blocking_reload_returns_when_the_part_is_published(live: Live) -> None:
    live.start()
    loop = asyncio.get_running_loop()
    for _ in range(6):  # across a segment boundary too
        text = await (await live.client.get("/live/720p/index.m3u8")).text()
        msn, index = hint_of(text)
        resp = await live.client.get(f"/live/720p/index.m3u8?_HLS_msn={msn}&_HLS_part={index}")
        answered = loop.time()
        assert resp.status == 200
        body = await resp.text()
        published = published_at(live.feeder, "720p", msn, index)
        assert published <= answered < published + PROMPT
        assert f'URI="part{msn}.{index}.m4s"' in body
        assert check_media_playlist(body) == []
        assert resp.headers["Cache-Control"].startswith("max-age=")


async def test_blocking_reload_for_a_whole_segment(live: Live) -> None:
    live.start()
    loop = asyncio.get_running_loop()
    pos = live.video.last_position()
    assert pos is not None
    resp = await live.client.get(f"/live/720p/index.m3u8?_HLS_msn={pos[0]}")
    answered = loop.time()
    assert resp.status == 200
    # segment msn is complete once part 0 of the next one is out
    published = published_at(live.feeder, "720p", pos[0] + 1, 0)
    assert published <= answered < published + PROMPT
    assert f"seg{pos[0]}.m4s" in await resp.text()


async def test_many_blocked_clients_are_released_together(live: Live) -> None:
    live.start()
    msn, index = hint_of(await (await live.client.get("/live/720p/index.m3u8")).text())
    url = f"/live/720p/index.m3u8?_HLS_msn={msn}&_HLS_part={index}"
    loop = asyncio.get_running_loop()

    async def fetch() -> float:
        resp = await live.client.get(url)
        assert resp.status == 200
        await resp.read()
        return loop.time()

    times = await asyncio.gather(*(fetch() for _ in range(40)))
    published = published_at(live.feeder, "720p", msn, index)
    assert min(times) >= published and max(times) < published + 4 * PROMPT


async def test_request_three_segments_ahead_is_refused_at_once(live: Live) -> None:
    pos = live.video.last_position()
    assert pos is not None  # segment pos[0] open, pos[0] - 1 the last complete one
    for query in (f"_HLS_msn={pos[0] + 2}", f"_HLS_msn={pos[0] + 2}&_HLS_part=0",
                  f"_HLS_msn={pos[0]}&_HLS_part={pos[1] + 16}"):
        started = time.monotonic()
        resp = await live.client.get(f"/live/720p/index.m3u8?{query}")
        assert resp.status == 400, query
        assert time.monotonic() - started < 0.2
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_request_in_the_past_is_answered_at_once(live: Live) -> None:
    started = time.monotonic()
    resp = await live.client.get("/live/720p/index.m3u8?_HLS_msn=1&_HLS_part=2")
    assert resp.status == 200
    assert time.monotonic() - started < 0.2


async def test_request_that_never_completes_gets_503_after_the_limit(live: Live) -> None:
    # nothing is being published: the next part never comes
    msn, index = hint_of(await (await live.client.get("/live/720p/index.m3u8")).text())
    started = time.monotonic()
    resp = await live.client.get(f"/live/720p/index.m3u8?_HLS_msn={msn}&_HLS_part={index}")
    waited = time.monotonic() - started
    assert resp.status == 503
    assert BLOCK_LIMIT <= waited < BLOCK_LIMIT + 0.5
    assert "Traceback" not in await resp.text()


async def test_delta_update_over_http(live: Live) -> None:
    live.feeder.advance(10.0)
    full = await (await live.client.get("/live/720p/index.m3u8")).text()
    resp = await live.client.get("/live/720p/index.m3u8?_HLS_skip=YES")
    assert resp.status == 200
    delta = await resp.text()
    skip = next(x for x in delta.splitlines() if x.startswith("#EXT-X-SKIP:"))
    skipped = int(parse_attributes(skip.split(":", 1)[1])["SKIPPED-SEGMENTS"])
    assert skipped > 0
    assert check_media_playlist(delta) == []
    assert len(delta) < len(full)


@pytest.mark.parametrize("query", BAD_QUERIES)
async def test_garbage_parameters_get_400(live: Live, query: list[tuple[str, str]]) -> None:
    qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in query)
    started = time.monotonic()
    resp = await live.client.get(f"/live/720p/index.m3u8?{qs}")
    assert resp.status == 400, qs
    assert time.monotonic() - started < 0.2
    assert "Traceback" not in await resp.text()


async def test_other_query_parameters_are_ignored(live: Live) -> None:
    resp = await live.client.get("/live/720p/index.m3u8?token=abc&x=%00%ff")
    assert resp.status == 200


# -- media ------------------------------------------------------------------------------


async def test_init_segment_and_part(live: Live) -> None:
    resp = await live.client.get("/live/720p/init.mp4")
    assert (resp.status, resp.content_type) == (200, "video/mp4")
    assert await resp.read() == b"init-720p"
    resp = await live.client.get("/live/audio/init.mp4")
    assert resp.content_type == "audio/mp4"

    seg = live.video.segment(2)
    assert seg is not None and seg.complete
    resp = await live.client.get("/live/720p/seg2.m4s")
    assert (resp.status, resp.content_type) == (200, "video/mp4")
    assert await resp.read() == seg.data
    assert resp.headers["Cache-Control"].startswith("public, max-age=")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"

    resp = await live.client.get("/live/720p/part2.3.m4s")
    assert resp.status == 200
    assert await resp.read() == seg.parts[3].data


async def test_missing_segments_are_404(live: Live) -> None:
    # (The open segment streams by chunked transfer for LL-DASH: tests/test_dash_http.py.)
    pos = live.video.last_position()
    assert pos is not None
    for path in (f"/live/720p/seg{pos[0] + 5}.m4s",
                 "/live/720p/part1.9.m4s", f"/live/720p/part{pos[0] + 9}.0.m4s",
                 "/live/720p/part1.99999.m4s", "/live/nope/seg1.m4s", "/live/nope/init.mp4"):
        started = time.monotonic()
        resp = await live.client.get(path)
        assert resp.status == 404, path
        assert time.monotonic() - started < 0.2, path


async def test_expired_part_is_404() -> None:
    store = SegmentStore()
    feeder = Feeder(store, window_s=6.0)
    feeder.advance_to(30.1)
    async with serve(store, feeder) as live:
        assert live.video.segment(0) is None
        assert (await live.client.get("/live/720p/part0.0.m4s")).status == 404
        assert (await live.client.get("/live/720p/seg0.m4s")).status == 404


async def test_hinted_part_blocks_until_published(live: Live) -> None:
    live.start()
    loop = asyncio.get_running_loop()
    for name in ("720p", "audio"):
        text = await (await live.client.get(f"/live/{name}/index.m3u8")).text()
        msn, index = hint_of(text)
        resp = await live.client.get(f"/live/{name}/part{msn}.{index}.m4s")
        answered = loop.time()
        assert resp.status == 200
        data = await resp.read()
        part = live.store.tracks[name].part(msn, index)
        assert part is not None and data == part.data
        published = published_at(live.feeder, name, msn, index)
        assert published <= answered < published + PROMPT


async def test_part_that_will_never_exist_is_404_when_its_segment_closes(live: Live) -> None:
    live.start()
    loop = asyncio.get_running_loop()
    pos = live.video.last_position()
    assert pos is not None
    # Video segments have 5 parts: index 5 of the open segment never comes.
    resp = await live.client.get(f"/live/720p/part{pos[0]}.5.m4s")
    answered = loop.time()
    assert resp.status == 404
    closed = published_at(live.feeder, "720p", pos[0] + 1, 0)
    assert closed <= answered < closed + PROMPT


# -- not started ------------------------------------------------------------------------------


async def test_before_any_track_exists() -> None:
    store = SegmentStore()
    app = web.Application()
    setup_live(app, store)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/live/index.m3u8")
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        for path in ("/live/720p/index.m3u8", "/live/720p/init.mp4", "/live/720p/part0.0.m4s"):
            assert (await client.get(path)).status == 404, path


# -- transport: gzip, CORS, paths ---------------------------------------------------------------


async def test_playlists_are_gzipped_when_the_client_accepts_it() -> None:
    store = SegmentStore()
    feeder = Feeder(store)
    feeder.advance_to(6.1)
    async with serve(store, feeder, auto_decompress=False) as live:
        for accept in ("gzip", "gzip, deflate", "deflate, gzip;q=0.5", "br, GZIP"):
            resp = await live.client.get("/live/720p/index.m3u8",
                                         headers={"Accept-Encoding": accept})
            assert resp.headers.get("Content-Encoding") == "gzip", accept
            assert "Accept-Encoding" in resp.headers.get("Vary", "")
            text = gzip.decompress(await resp.read()).decode()
            assert check_media_playlist(text) == []
        for accept in ("identity", "gzip;q=0", "deflate"):
            resp = await live.client.get("/live/720p/index.m3u8",
                                         headers={"Accept-Encoding": accept})
            assert resp.headers.get("Content-Encoding") != "gzip", accept
        # media is not compressed
        resp = await live.client.get("/live/720p/seg1.m4s", headers={"Accept-Encoding": "gzip"})
        assert "Content-Encoding" not in resp.headers


async def test_cors_preflight(live: Live) -> None:
    for path in ("/live/index.m3u8", "/live/720p/index.m3u8", "/live/720p/part1.0.m4s"):
        resp = await live.client.options(path, headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        })
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "range"


async def test_unknown_paths_and_traversal_are_404(live: Live) -> None:
    port = live.client.port
    assert port is not None
    targets = [
        "/live/nope/index.m3u8",
        "/live/720p/other.txt",
        "/live/720p/seg1.mp4",
        "/live/720p/segx.m4s",
        "/live/720p/seg-1.m4s",
        "/live/720p/part1.m4s",
        "/live/720p/../../etc/passwd",
        "/live/../../etc/passwd",
        "/live/%2e%2e/%2e%2e/etc/passwd",
        "/live/720p%2F..%2Faudio/index.m3u8",
        "/live/720p%2findex.m3u8",
        "/live/..%2f..%2fetc%2fpasswd",
        "/live/720p/..%5c..%5cinit.mp4",
        "/live/.%2e/720p/index.m3u8",
        "/live/720p/seg%31.m4s/../../../etc/passwd",
        "/live/720p/seg1.m4s%00",
        "/live/" + "a" * 40 + "/index.m3u8",
    ]
    for target in targets:
        status, head = await raw_get(port, target)
        assert status == 404, (target, status)
        assert "Traceback" not in head


async def raw_get(port: int, target: str) -> tuple[int, str]:
    """GET with the request target sent byte for byte (clients normalise dot segments)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    reply = (await reader.read()).decode(errors="replace")
    writer.close()
    return int(reply.split(" ", 2)[1]), reply


async def test_routes_stay_under_live_and_leave_room_for_others() -> None:
    app = web.Application()
    setup_live(app, SegmentStore())

    async def later(request: web.Request) -> web.Response:
        return web.Response(text="later")

    # a route added after setup_live is not shadowed
    app.router.add_get("/live/later.txt", later)
    async with TestClient(TestServer(app)) as client:
        assert await (await client.get("/live/later.txt")).text() == "later"
    app = web.Application()
    setup_live(app, SegmentStore())
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter", "")
        assert str(path).startswith("/live/"), path
        assert resource.name is not None and resource.name.startswith("live-")


# -- memory -------------------------------------------------------------------------------------


async def test_store_window_stays_bounded_while_serving(live: Live) -> None:
    for _ in range(30):
        live.feeder.advance(20.0)
        resp = await live.client.get("/live/720p/index.m3u8")
        assert resp.status == 200
        text = await resp.text()
        assert len(text) < 8000
    held = sum(len(s.parts) for t in live.store.tracks.values() for s in t.segments)
    assert held <= 2 * (12 / 0.19 + 15)  # the window of two tracks, not 600 s of media


async def test_multivariant_waits_briefly_for_tracks_still_starting() -> None:
    from tests.hls_feeder import AUDIO

    store = SegmentStore()
    feeder = Feeder(store, audio=False)
    feeder.advance_to(1.0)
    store.expected = {"720p", "audio"}
    async with serve(store, feeder) as running:
        async def audio_arrives() -> None:
            await asyncio.sleep(0.3)
            track = TrackStore(AUDIO, 0.2, 1.0, 12.0)
            track.set_init(b"init-audio")
            store.add_track(track)

        arrival = asyncio.create_task(audio_arrives())
        resp = await running.client.get("/live/index.m3u8")
        assert resp.status == 200
        assert "TYPE=AUDIO" in await resp.text()  # not served before the audio track was
        await arrival

        # A track that never comes (its source is missing) delays the playlist, not forever.
        store.expected.add("1080p")
        t0 = time.monotonic()
        resp = await running.client.get("/live/index.m3u8")
        assert resp.status == 200 and 1.5 < time.monotonic() - t0 < 3.0
