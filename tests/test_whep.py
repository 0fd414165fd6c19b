"""The WHEP preview against real peers: aiortc clients on this machine's addresses, the
real capture pipeline (synthetic stamped source, x264, AAC) on a real MediaBus, and the
aiohttp app with setup_whep. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
import av
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection, RTCRtpSender

from appliance.media.stamp import luma, read_stamp
from appliance.web.whep import WHEP_PATH
from appliance.web.whep_tracks import PacketTrack, PreviewFeed, h264_preferences
from tests.whep_peers import (
    FPS,
    HEIGHT,
    WIDTH,
    PreviewServer,
    WhepViewer,
    preview_config,
    preview_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_VIEWERS = 2
T = TypeVar("T")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[PreviewServer]:
    async with preview_server(preview_config(MAX_VIEWERS)) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def clean(server: PreviewServer) -> AsyncIterator[PreviewServer]:
    """The server, with no session left over by the test when it ends."""
    yield server
    await server.service.close()
    assert server.service.viewers == {}


async def until(cond: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        await asyncio.sleep(0.05)
    return value


async def post(url: str, body: bytes, content_type: str = "application/sdp",
               ) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.post(
            url + WHEP_PATH, data=body, headers={"Content-Type": content_type}) as r:
        return r.status, dict(r.headers), await r.text()


async def request(method: str, url: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as r:
        return r.status, dict(r.headers)


def sessions(server: PreviewServer) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = server.preview().get("sessions", {})  # type: ignore[assignment]
    return out


async def test_viewer_gets_the_rungs_h264_as_encoded_and_opus_audio(clean: PreviewServer,
                                                                   ) -> None:
    server = clean
    rung = server.service.options.rung
    # A consumer of the bus beside the preview: what the encoder made, decoded here.
    sub = server.bus.subscribe({rung}, maxlen=600)
    viewer = WhepViewer(server.url, keep_lumas=True)
    try:
        await viewer.start()
        assert re.fullmatch(WHEP_PATH + r"/[A-Za-z0-9_-]{16,}", viewer.location or "")
        answer = viewer.pc.remoteDescription.sdp
        # The client offered High: the answer names the stream's own profile and level.
        assert "profile-level-id=64001e" in answer and "packetization-mode=1" in answer
        assert re.search(r"a=rtpmap:\d+ opus/48000/2", answer)
        await viewer.wait_frames(3 * FPS, timeout=15)
        await until(lambda: viewer.got.audio_frames >= 50, 5, "50 audio frames")
    finally:
        sub.close()
        await viewer.close()

    got = viewer.got
    assert got.sizes == {(WIDTH, HEIGHT)}
    assert got.audio_rates == {48000}
    assert got.audio_peak > 0.05  # the synthetic tone, not silence
    lag = statistics.median(got.latencies_ms)
    assert 0 < lag < 500, f"stamp to decoded picture: {lag:.0f} ms"

    # Without re-encoding: the pictures the viewer decoded are bit for bit those decoded
    # from the encoder's own packets (a second encode, lossy, could not match them all).
    decoder = av.CodecContext.create("h264", "r")
    ours: dict[int, list[bytes]] = {}
    started = False
    while (pkt := sub.get(0)) is not None:
        started = started or pkt.keyframe
        if not started:
            continue
        for frame in decoder.decode(av.Packet(pkt.data)):
            assert isinstance(frame, av.VideoFrame)
            y = luma(frame)
            stamp = read_stamp(y)
            if stamp is not None:
                ours.setdefault(stamp, []).append(y.tobytes())
    common = [s for s in got.lumas if s in ours
              and len(got.lumas[s]) == 1 and len(ours[s]) == 1]
    assert len(common) >= FPS, f"only {len(common)} pictures seen by both"
    same = sum(got.lumas[s] == ours[s] for s in common)
    assert same == len(common), f"{len(common) - same} of {len(common)} pictures differ"


async def test_status_delete_and_whep_methods(clean: PreviewServer) -> None:
    server = clean
    viewer = WhepViewer(server.url)
    try:
        await viewer.start()
        await viewer.wait_frames(10)
        assert viewer.location is not None
        vid = viewer.location.rsplit("/", 1)[1]
        sent = await until(lambda: int(sessions(server).get(vid, {}).get("video_frames", 0)), 3,
                           "the session's frames in the status")
        assert sent > 0
        st = server.preview()
        assert st["viewers"] == 1 and st["rung"] == f"{HEIGHT}p" and st["max_viewers"] == 2
        assert sessions(server)[vid]["state"] == "connected"
        assert st["feed"]["running"]  # type: ignore[index]

        # A picture-loss request (RTCP PLI) is counted; the video goes on meanwhile (the
        # decoder recovers at the next regular IDR).
        m = re.search(r"m=video[\s\S]*?a=ssrc:(\d+)", viewer.pc.remoteDescription.sdp)
        assert m
        await viewer.pc.getTransceivers()[0].receiver._send_rtcp_pli(int(m.group(1)))
        await until(lambda: sessions(server)[vid]["picture_loss"] == 1, 3, "the PLI counted")
        frames = viewer.got.frames
        await viewer.wait_frames(frames + 10, timeout=3)

        # No trickle ICE: 405 on PATCH, as WHEP asks of a server without it.
        status, headers = await request("PATCH", server.url + viewer.location)
        assert status == 405 and "PATCH" not in headers["Allow"]

        assert await viewer.delete() == 200
        st = server.preview()
        assert st["viewers"] == 0 and st["sessions"] == {}
        assert not st["feed"]["running"]  # type: ignore[index]  # nobody watches: no transcoding
        # The server closed the peer connection: the client sees it end, frames stop.
        await until(lambda: viewer.pc.connectionState == "closed", 5, "client connection closed")
        frames = viewer.got.frames
        await asyncio.sleep(0.5)
        assert viewer.got.frames == frames
        assert await viewer.delete() == 404
    finally:
        await viewer.close()


async def test_refuses_viewers_beyond_max_viewers(clean: PreviewServer) -> None:
    server = clean
    viewers = [WhepViewer(server.url) for _ in range(MAX_VIEWERS + 1)]
    try:
        for v in viewers[:MAX_VIEWERS]:
            await v.start()
        extra = viewers[MAX_VIEWERS]
        status, headers, body = await extra.post(await extra.offer())
        assert status == 503, body
        assert "max_viewers" in body and f"{MAX_VIEWERS} viewers" in body
        assert int(headers["Retry-After"]) > 0
        assert len(server.service.viewers) == MAX_VIEWERS
        for v in viewers[:MAX_VIEWERS]:
            await v.wait_frames(10)
        # One leaves: the next one gets in.
        assert await viewers[0].delete() == 200
        again = WhepViewer(server.url)
        viewers.append(again)
        await again.start()
        await again.wait_frames(10)
    finally:
        for v in viewers:
            await v.close()


async def offer_of(make: Callable[[RTCPeerConnection], object]) -> str:
    pc = RTCPeerConnection()
    try:
        make(pc)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_malformed_or_unusable_offers_get_400_with_the_reason(clean: PreviewServer,
                                                                  ) -> None:
    server = clean
    good = await offer_of(lambda pc: pc.addTransceiver("video", direction="recvonly"))

    def vp8_only(pc: RTCPeerConnection) -> None:
        t = pc.addTransceiver("video", direction="recvonly")
        t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                               if c.mimeType == "video/VP8"])

    cases: list[tuple[bytes, str, int, str]] = [
        (b"hello", "application/sdp", 400, "must start with v=0"),
        (b"", "application/sdp", 400, "must start with v=0"),
        (good.encode(), "text/plain", 415, "Content-Type: application/sdp"),
        (b"\xff\xfe v=0", "application/sdp", 400, "not UTF-8"),
        (good.split("m=video")[0].encode(), "application/sdp", 400, "no video section"),
        (re.sub(r"a=ice-ufrag:.*\r?\n", "", good).encode(), "application/sdp", 400,
         "ICE credentials"),
        (good.replace("a=recvonly", "a=sendonly").encode(), "application/sdp", 400,
         "receives (recvonly)"),
        ((await offer_of(vp8_only)).encode(), "application/sdp", 400, "no H.264"),
        (re.sub(r"m=video \d+", "m=video x", good).encode(), "application/sdp", 400,
         "malformed SDP offer"),
        (b"v=0\r\n" + b"a=x\r\n" * 20000, "application/sdp", 413, "larger than"),
    ]
    for body, ctype, want, words in cases:
        assert body != good.encode() or ctype != "application/sdp"  # each case is broken
        status, _, text = await post(server.url, body, ctype)
        assert (status, words in text) == (want, True), (body[:60], status, text)
    assert server.service.viewers == {}
    # Still serving after all that.
    v = WhepViewer(server.url)
    try:
        await v.start()
        await v.wait_frames(5)
    finally:
        await v.close()


async def test_mutated_offers_get_201_or_400_never_a_server_error(clean: PreviewServer,
                                                                  ) -> None:
    """A seeded fuzz of a real offer: lines dropped, cut short or with a stray character.
    Each answer is 201 (the mutation was harmless; the session is deleted) or 400 with a
    message, and nothing leaks."""
    server = clean
    h264_preferences("avc1.64001f")

    def both(pc: RTCPeerConnection) -> None:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

    lines = (await offer_of(both)).split("\r\n")
    rnd = random.Random(20251)
    seen: dict[int, int] = {}
    for _ in range(150):
        ls = list(lines)
        for _ in range(rnd.randint(1, 3)):
            j = rnd.randrange(len(ls))
            op = rnd.random()
            if op < 0.4:
                del ls[j]
            elif op < 0.7:
                ls[j] = ls[j][: rnd.randrange(len(ls[j]) + 1)]
            else:
                k = rnd.randrange(len(ls[j]) + 1)
                ls[j] = ls[j][:k] + rnd.choice("x: 0-=") + ls[j][k:]
        status, headers, body = await post(server.url, "\r\n".join(ls).encode())
        seen[status] = seen.get(status, 0) + 1
        if status == 201:
            assert (await request("DELETE", server.url + headers["Location"]))[0] == 200
        else:
            assert status == 400, body
            assert json.loads(body)["error"]
    assert seen.get(400, 0) >= 30, seen  # the fuzz did break offers
    assert server.service.viewers == {}
    assert not server.preview()["feed"]["running"]  # type: ignore[index]


async def test_answer_keeps_the_offers_payload_type_below_96(clean: PreviewServer) -> None:
    """Chromium numbers some codecs 35-63 (its High 4:4:4 H.264): the answer must use the
    offer's number, or the browser takes the video for another codec and decodes nothing."""
    server = clean
    h264_preferences("avc1.64001f")  # an aiortc client offers High only when asked to
    offer = await offer_of(lambda pc: pc.addTransceiver("video", direction="recvonly"))
    m = re.search(r"a=fmtp:(\d+) [^\r\n]*profile-level-id=64001f", offer)
    assert m, offer
    pt = m.group(1)
    lines = []
    for line in offer.splitlines():
        if line.startswith(("m=video", "a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            line = re.sub(rf"(?<=[ :]){pt}(?=[ /]|$)", "45", line).replace(f"apt={pt}", "apt=45")
        lines.append(line)
    munged = "\r\n".join(lines) + "\r\n"
    assert "a=rtpmap:45 H264/90000" in munged
    status, headers, answer = await post(server.url, munged.encode())
    assert status == 201, answer
    assert re.search(r"m=video \d+ UDP/TLS/RTP/SAVPF 45\b", answer), answer
    assert "a=rtpmap:45 H264/90000" in answer
    assert (await request("DELETE", server.url + headers["Location"]))[0] == 200


class ThreadViewer:
    """A WhepViewer on an event loop in a thread of its own, which the test can freeze:
    a viewer whose process stops reading its socket."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.viewer = self._run(self._make(url))

    @staticmethod
    async def _make(url: str) -> WhepViewer:
        return WhepViewer(url, read_stamps=False)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def start(self) -> None:
        await asyncio.to_thread(self._run, self.viewer.start())

    def freeze(self, seconds: float) -> None:
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    async def close(self) -> None:
        await asyncio.to_thread(self._run, self.viewer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 5)
        self.loop.close()


async def test_a_viewer_that_stops_reading_does_not_slow_another(clean: PreviewServer) -> None:
    server = clean
    stuck = ThreadViewer(server.url)
    other = WhepViewer(server.url, read_stamps=False)
    try:
        await stuck.start()
        await other.start()
        await other.wait_frames(10)
        await until(lambda: stuck.viewer.got.frames >= 10, 10, "frames to the stuck viewer")
        stuck.freeze(3.0)
        await asyncio.sleep(0.2)
        before, t0 = other.got.frames, time.monotonic()
        stuck_before = stuck.viewer.got.frames
        await asyncio.sleep(2.5)
        rate = (other.got.frames - before) / (time.monotonic() - t0)
        assert stuck.viewer.got.frames == stuck_before  # it really read nothing
        assert rate >= 0.8 * FPS, f"the other viewer got {rate:.1f} fps"
        # Both get frames again once it reads again.
        await until(lambda: stuck.viewer.got.frames > stuck_before + 10, 10,
                    "frames to the viewer that read again")
        assert other.pc.connectionState == "connected"
    finally:
        await stuck.close()
        await other.close()


async def test_a_tracks_queue_is_bounded_and_resumes_at_a_fresh_keyframe(
        clean: PreviewServer) -> None:
    """The feed and two viewers' tracks, without the network: one read at once, one not
    read for 2 s. The unread one drops (it never holds more than its queue) and resumes
    at a keyframe from the last half second; the read one gets every frame."""
    server = clean
    opts = server.service.options
    feed = PreviewFeed(server.bus, opts.rung, opts.audio, asyncio.get_running_loop())
    reader = PacketTrack("video", feed, opts.rung, opts.video_queue)
    idle = PacketTrack("video", feed, opts.rung, opts.video_queue)
    feed.start()
    pts: list[int] = []

    async def read(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            p = await asyncio.wait_for(reader.recv(), 3)
            assert p.pts is not None
            pts.append(p.pts)

    try:
        reading = asyncio.create_task(read(6.0))
        first = await asyncio.wait_for(idle.recv(), 5)  # subscribes, waits for a keyframe
        assert first.is_keyframe
        await asyncio.sleep(2.5)  # not read meanwhile
        assert idle.sub is not None and idle.dropped > 0
        resumed = await asyncio.wait_for(idle.recv(), 3)
        assert resumed.is_keyframe
        age_s = (time.time_ns() - idle.last_capture_ns) / 1e9
        assert age_s < 1.0, f"resumed {age_s:.2f} s behind"
        await reading
        assert len(pts) >= 4 * FPS
        steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
        assert steps == {90_000 // FPS}, steps  # every frame, none lost or repeated
    finally:
        reader.stop()
        idle.stop()
        thread = feed.stop()
        if thread is not None:
            thread.join(2)


async def test_sessions_end_when_the_peer_closes_or_never_connects(clean: PreviewServer,
                                                                 ) -> None:
    server = clean
    viewer = WhepViewer(server.url)
    await viewer.start()
    await viewer.wait_frames(5)
    await viewer.close()  # DTLS close_notify, no DELETE
    await until(lambda: not server.service.viewers, 5, "the session ended by the peer")

    server.service.connect_timeout_s = 1.0
    try:
        silent = WhepViewer(server.url)
        status, headers, _ = await silent.post(await silent.offer())  # never sets the answer
        assert status == 201
        assert len(server.service.viewers) == 1
        await until(lambda: not server.service.viewers, 5, "the unconnected session ended")
        assert not server.preview()["feed"]["running"]  # type: ignore[index]
        await silent.close()
    finally:
        server.service.connect_timeout_s = 20.0

