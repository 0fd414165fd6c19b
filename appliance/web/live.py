"""HTTP routes under /live: LL-HLS playlists (with blocking reload), the LL-DASH MPD and
its time endpoint, and CMAF media (the segment being written streams as it grows).

Each route is a plain aiohttp handler, so a middleware (playback tokens) can wrap them.
Playlists and the MPD come from appliance.package.hls and .dash; this module only
parses, waits and replies.
Every reply of these routes, errors included, carries CORS headers: playback is open to
other pages. Route names all start with "live-", for a middleware to recognise them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from aiohttp.web_response import ContentCoding

from appliance.package import dash, hls, hls_request
from appliance.package.store import Segment, SegmentStore, TrackStore

log = logging.getLogger(__name__)

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MPD_TYPE = "application/dash+xml"
# A streamed segment that gets no new part for this long past its segment duration is
# abandoned (source lost): the connection is cut so that no cache keeps it truncated.
STREAM_IDLE_MARGIN_S = 1.0

# Track names are rung names or "audio": no dot or slash, so no traversal can match.
_TRACK = r"{track:[A-Za-z0-9][A-Za-z0-9_-]{0,31}}"
_MSN = r"{msn:[0-9]{1,15}}"
_PART = r"{part:[0-9]{1,6}}"

CORS = {"Access-Control-Allow-Origin": "*"}
EXPECTED_WAIT_STEPS = 20  # x 0.1 s
FIRST_PART_WAIT_S = 1.0
_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Max-Age": "600",
}
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~, -]{0,512}")
# A verified playback token (appliance.web.auth sets it when /live needs one): every URI
# of the playlists and the MPD carries it on, so the player's next requests pass too.
PLAYBACK_TOKEN = web.RequestKey("playback_token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Reply(Exception):
    """Raised inside a handler to answer at once with a short plain-text status."""

    def __init__(self, status: int, text: str, retry_after: int | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {**CORS, "Cache-Control": "no-store"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=self.status, text=self.text + "\n", headers=headers)


def _live(handler: Handler) -> Handler:
    """Turn _Reply into its response and put CORS on every reply."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except _Reply as reply:
            return reply.response()
        resp.headers.update(CORS)
        return resp

    return wrapped


class LiveRoutes:
    """The /live handlers over one segment store."""

    def __init__(self, store: SegmentStore):
        self.store = store
        self._timing: hls.Timing | None = None
        self._timing_for: tuple[int, ...] = ()

    # -- shared --------------------------------------------------------------------------

    def timing(self) -> hls.Timing:
        """Current timing, latched so the Target Duration never shrinks (§6.2.1).

        The latch restarts when the set of tracks changes (the pipeline was rebuilt).
        """
        current = hls.store_timing(self.store)
        if current is None:
            raise _Reply(503, "live stream not started", retry_after=1)
        key = tuple(id(t) for t in self.store.tracks.values())
        if self._timing is None or key != self._timing_for:
            self._timing, self._timing_for = current, key
        else:
            self._timing = self._timing.merged(current)
        return self._timing

    def track(self, request: web.Request) -> TrackStore:
        track = self.store.tracks.get(request.match_info["track"])
        if track is None:
            raise _Reply(404, "no such track")
        return track

    # -- playlists -------------------------------------------------------------------------

    async def _wait_for_expected_tracks(self) -> None:
        # Tracks appear within ~0.1 s of each other at start-up; a missing source's never do.
        for _ in range(EXPECTED_WAIT_STEPS):
            if self.store.all_expected_present:
                break
            await asyncio.sleep(0.1)

    async def multivariant(self, request: web.Request) -> web.StreamResponse:
        await self._wait_for_expected_tracks()
        text = hls.render_multivariant(self.store, _uri_query(request))
        if text is None:
            raise _Reply(503, "live stream not started", retry_after=1)
        return _playlist(request, text, "no-cache")

    async def media_playlist(self, request: web.Request) -> web.StreamResponse:
        try:
            directives = hls_request.parse_directives(request.query.items())
        except hls_request.HlsRequestError as exc:
            raise _Reply(400, str(exc)) from None
        name = request.match_info["track"]
        track = await self._started_track(name)
        if directives.msn is not None:
            await self._block(track, self.timing(), directives.msn, directives.part)
            if track.retired:
                # The stream restarted while this request waited: the new track's playlist
                # answers it (its numbers are all higher), so the player goes straight on.
                track = await self._started_track(name)
        timing = self.timing()
        text = hls.render_media_playlist(self.store, track, timing, directives.skip,
                                         _uri_query(request))
        if text is None:
            raise _Reply(503, "track not started", retry_after=1)
        # A blocking response names one playlist version: a cache may keep it a little.
        # A plain request wants the newest.
        cache = "no-cache" if directives.msn is None else f"max-age={timing.target_duration}"
        return _playlist(request, text, cache)

    async def _started_track(self, name: str) -> TrackStore:
        """The track `name` once it holds a whole segment (start-up, stream restart): within
        one segment, far sooner than a player's retries after an empty playlist. A restart
        drops every track and makes the new ones within a second or so: one the ladder
        still has is waited for, not refused."""
        for _ in range(EXPECTED_WAIT_STEPS):
            if name in self.store.tracks or name not in self.store.expected:
                break
            await asyncio.sleep(0.1)
        track = self.store.tracks.get(name)
        if track is None:
            raise _Reply(404, "no such track")
        if not await track.wait_until(lambda: track.playable, self.timing().block_limit):
            raise _Reply(503, "track not started", retry_after=1)
        return track

    async def _block(self, track: TrackStore, timing: hls.Timing, msn: int,
                     part: int | None) -> None:
        """Wait for the update a blocking reload asks for; returns early if the track is
        retired (the stream restarted)."""
        try:
            hls.check_blocking_request(track, timing, msn, part)
        except hls_request.HlsRequestError as exc:
            raise _Reply(400, str(exc)) from None
        ready = await track.wait_until(lambda: hls.playlist_ready(track, msn, part),
                                 timing.block_limit)
        if not ready and not track.retired:
            # §6.2.5.2: after three target durations, SHOULD answer Service Unavailable.
            raise _Reply(503, "requested playlist update did not arrive in time")

    # -- media -----------------------------------------------------------------------------

    async def init(self, request: web.Request) -> web.StreamResponse:
        track = self.track(request)
        if track.init is None:
            raise _Reply(503, "track not started", retry_after=1)
        # The header changes when the pipeline restarts with other settings: revalidate.
        return _media(track, track.init, "no-cache")

    async def segment(self, request: web.Request) -> web.StreamResponse:
        track = self.track(request)
        msn = int(request.match_info["msn"])
        seg = track.segment(msn)
        if seg is None and _is_next(track, msn):
            # LL-DASH players ask for a segment as soon as its first part is due; that can be
            # a moment before it starts (audio starts up to half a part late): wait for it.
            await track.wait_until(lambda: track.segment(msn) is not None,
                                   track.segment_target + STREAM_IDLE_MARGIN_S)
            seg = track.segment(msn)
        if seg is None:
            raise _Reply(404, "no such segment")
        if seg.complete:
            return _media(track, seg.data, _media_cache(track))
        return await _stream_segment(request, track, seg)

    # -- LL-DASH ----------------------------------------------------------------------------

    async def mpd(self, request: web.Request) -> web.StreamResponse:
        await self._wait_for_expected_tracks()
        # The MPD's clock anchor comes from a segment: a track's first part follows its
        # header within a part duration or so, so wait that long rather than answer 503.
        deadline = asyncio.get_running_loop().time() + FIRST_PART_WAIT_S
        for track in list(self.store.tracks.values()):
            left = deadline - asyncio.get_running_loop().time()
            await track.wait_until(_has_segment(track), max(0.0, left))
        # UTCTiming wants an absolute URL: this request's scheme and host name the appliance
        # as the player reaches it.
        query = _uri_query(request)
        time_url = str(request.url.join(request.app.router["live-time"].url_for())) + query
        text = dash.render_mpd(self.store, time_url, uri_query=query)
        if text is None:
            raise _Reply(503, "live stream not started", retry_after=1)
        return _playlist(request, text, "no-cache", MPD_TYPE)

    async def utc_time(self, request: web.Request) -> web.StreamResponse:
        # urn:mpeg:dash:utc:http-iso:2014: the body is the time, ISO 8601 in UTC.
        return web.Response(text=dash.fmt_iso_ms(time.time_ns()), content_type="text/plain",
                            headers={"Cache-Control": "no-store"})

    async def part(self, request: web.Request) -> web.StreamResponse:
        track = self.track(request)
        msn, index = int(request.match_info["msn"]), int(request.match_info["part"])
        timing = self.timing()
        state = hls.part_state(track, timing, msn, index)
        if state == "pending":
            # §6.2.6: hold a request for a hinted (or soon expected) part until it exists,
            # and answer 404 if it turns out it never will.
            await track.wait_until(lambda: hls.part_state(track, timing, msn, index) != "pending",
                             timing.block_limit)
        found = track.part(msn, index)
        if found is None:
            raise _Reply(404, "no such part")
        return _media(track, found.data, _media_cache(track))

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        headers = dict(_PREFLIGHT)
        wanted = request.headers.get("Access-Control-Request-Headers", "")
        if wanted and _HEADER_LIST.fullmatch(wanted):
            headers["Access-Control-Allow-Headers"] = wanted
        return web.Response(status=204, headers=headers)


def _uri_query(request: web.Request) -> str:
    token = request.get(PLAYBACK_TOKEN)
    return f"?token={quote(token, safe='')}" if token else ""


def _playlist(request: web.Request, text: str, cache: str,
              content_type: str = PLAYLIST_TYPE) -> web.Response:
    resp = web.Response(body=text.encode(), content_type=content_type,
                        headers={"Cache-Control": cache, "Vary": "Accept-Encoding"})
    if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        # §6.2.1: playlists SHOULD go gzip when the client takes it. aiohttp alone would
        # pick deflate first when both are offered.
        resp.enable_compression(ContentCoding.gzip)
    return resp


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = params.strip().lower()
        return not re.fullmatch(r"q\s*=\s*0(\.0{0,3})?", q)
    return False


def _media_type(track: TrackStore) -> str:
    return "video/mp4" if track.info.kind == "video" else "audio/mp4"


def _media(track: TrackStore, data: bytes, cache: str) -> web.Response:
    return web.Response(body=data, content_type=_media_type(track),
                        headers={"Cache-Control": cache})


def _is_next(track: TrackStore, msn: int) -> bool:
    """Whether `msn` is the segment that the newest one will be followed by."""
    return bool(track.segments) and msn == track.segments[-1].msn + 1


async def _stream_segment(request: web.Request, track: TrackStore,
                          seg: Segment) -> web.StreamResponse:
    """The open segment by chunked transfer: the parts written so far, then each new part
    as it arrives, until the segment completes (its bytes are then those of the complete
    segment). A source that stops mid-segment, or a client that leaves, ends it early."""
    resp = web.StreamResponse(headers={**CORS, "Cache-Control": _media_cache(track)})
    resp.content_type = _media_type(track)
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp  # headers only: no waiting for a body nobody reads
    sent = 0
    idle = track.segment_target + STREAM_IDLE_MARGIN_S
    try:
        while True:
            while sent < len(seg.parts):
                await resp.write(seg.parts[sent].data)
                sent += 1
            if seg.complete:
                break
            if not await track.wait_until(_grown_past(seg, sent), idle):
                # No terminating chunk: the client and any cache see an incomplete reply.
                log.info("segment %s/%d stopped growing; stream cut", track.info.name, seg.msn)
                _abort(request)
                return resp
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left: nothing to clean up, the store is only read
    return resp


def _has_segment(track: TrackStore) -> Callable[[], bool]:
    return lambda: bool(track.segments)


def _grown_past(seg: Segment, count: int) -> Callable[[], bool]:
    return lambda: seg.complete or len(seg.parts) > count


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        with contextlib.suppress(OSError):
            transport.abort()


def _media_cache(track: TrackStore) -> str:
    # Immutable while held, but the sequence numbers restart with the daemon: do not let
    # a cache keep a name longer than the store keeps the media.
    return f"public, max-age={max(1, int(track.window_s))}"


def setup_live(app: web.Application, store: SegmentStore) -> None:
    """Install the /live routes, serving what `store` holds (it may have no tracks yet)."""
    live = LiveRoutes(store)
    routes: list[tuple[str, str, Handler]] = [
        ("live-multivariant", f"/live/{hls.MEDIA_PLAYLIST}", live.multivariant),
        ("live-media-playlist", f"/live/{_TRACK}/{hls.MEDIA_PLAYLIST}", live.media_playlist),
        ("live-init", f"/live/{_TRACK}/{hls.INIT_URI}", live.init),
        ("live-segment", f"/live/{_TRACK}/seg{_MSN}.m4s", live.segment),
        ("live-part", f"/live/{_TRACK}/part{_MSN}.{_PART}.m4s", live.part),
        ("live-mpd", f"/live/{dash.MPD_NAME}", live.mpd),
        ("live-time", f"/live/{dash.TIME_NAME}", live.utc_time),
    ]
    # No catch-all under /live: it would shadow routes added later, so other paths get
    # aiohttp's plain 404.
    for name, path, handler in routes:
        resource = app.router.add_resource(path, name=name)
        resource.add_route("GET", _live(handler))
        resource.add_route("HEAD", _live(handler))
        resource.add_route("OPTIONS", _live(live.preflight))
