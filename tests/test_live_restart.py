"""The /live routes when tracks start: a stream's first playlist, and players blocked on
the old tracks when the stream restarts."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.package.store import SegmentStore, TrackStore
from appliance.web.live import setup_live
from tests.hls_feeder import PART_S, SEGMENT_S, VIDEO_720, WINDOW_S, Feeder
from tests.test_live_http import hint_of, serve


async def test_first_playlist_waits_for_the_first_whole_segment() -> None:
    # hls.js takes a playlist with parts but no whole segment for an empty one and retries
    # it only after a second or more: hold the first request until the first segment is
    # whole (a stream's start, or a restart's).
    store = SegmentStore()
    track = TrackStore(VIDEO_720, 0.2, 1.0, 12.0)
    track.set_init(b"init")
    store.add_track(track)
    app = web.Application()
    setup_live(app, store)
    wall = 1_700_000_000_000_000_000
    async with TestClient(TestServer(app)) as client:
        request = asyncio.create_task(client.get("/live/720p/index.m3u8"))
        await asyncio.sleep(0.2)
        assert not request.done()
        for i in range(5):
            track.add_part(b"x", i * 0.2, 0.2, i == 0, i == 0, wall)
            await asyncio.sleep(0.05)
            assert not request.done()  # parts of an open segment only
        track.add_part(b"y", 1.0, 0.2, True, True, wall)
        resp = await asyncio.wait_for(request, 1.0)
        assert resp.status == 200
        text = await resp.text()
        assert "\nseg0.m4s\n" in text and 'URI="part1.0.m4s"' in text, text


async def test_a_stream_restart_answers_blocked_requests_with_the_new_track() -> None:
    # A player blocked on the old track's next playlist update and next part when the
    # stream restarts: the part request hears at once that it will never come, and the
    # playlist request is answered with the new track's playlist once that holds a whole
    # segment, not after the block limit with an error the player must recover from.
    store = SegmentStore()
    feeder = Feeder(store)
    feeder.advance_to(6.1)
    async with serve(store, feeder) as live:
        live.store.expected = {"720p", "audio"}
        msn, index = hint_of(await (await live.client.get("/live/720p/index.m3u8")).text())
        playlist = asyncio.create_task(
            live.client.get(f"/live/720p/index.m3u8?_HLS_msn={msn}&_HLS_part={index}"))
        part = asyncio.create_task(live.client.get(f"/live/720p/part{msn}.{index}.m4s"))
        await asyncio.sleep(0.3)
        assert not playlist.done() and not part.done()  # blocked: nothing is published
        cleared = time.monotonic()
        live.store.clear()
        part_resp = await part
        assert part_resp.status == 404 and time.monotonic() - cleared < 0.2

        await asyncio.sleep(0.3)  # the new pipeline starts
        assert not playlist.done()
        new = TrackStore(VIDEO_720, PART_S, SEGMENT_S, WINDOW_S, first_msn=1000)
        new.set_init(b"init-new")
        live.store.add_track(new)
        wall = 1_700_000_000_000_000_000
        for i in range(6):  # a whole segment (5 parts) and the next one's first part
            new.add_part(b"x", 20.0 + i * PART_S, PART_S, i % 5 == 0, i % 5 == 0, wall)
        resp = await asyncio.wait_for(playlist, 1.0)
        assert resp.status == 200
        text = await resp.text()
        assert "\nseg1000.m4s\n" in text and f"seg{msn}" not in text, text
