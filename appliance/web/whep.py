"""WebRTC preview over WHEP (WebRTC-HTTP Egress Protocol), with aiortc.

    POST   /api/v1/whep          SDP offer in (application/sdp); 201, the SDP answer and
                                 Location: /api/v1/whep/<id>, the session's resource
    DELETE /api/v1/whep/<id>     ends the session
    PATCH  /api/v1/whep/<id>     405: no trickle ICE nor ICE restart; the answer already
                                 carries every candidate (aiortc gathers before answering)
    OPTIONS on both              204 with Allow (and Accept-Post: application/sdp)

The viewer gets the preview rung's H.264 exactly as the encoder made it and the audio in
Opus (see appliance.web.whep_tracks). A new viewer starts at the next regular IDR, at most
one segment (packager.segment_s) after it connects. On picture loss (PLI/FIR) the viewer
also waits for the next regular IDR: forcing an extra IDR on the preview rung would cut
its CMAF segments off the IDR grid the other rungs share, and any viewer could then make
the LL-HLS stream bigger at will; the loss is counted in the status.

At most `preview.max_viewers` sessions (503 beyond). A session ends on DELETE, on ICE or
DTLS failure, when the peer closes, or when it has not connected within
CONNECT_TIMEOUT_S. Status: hub section `preview` (rung, max_viewers, viewers, and per
session its state, age, packets sent, dropped, picture-loss requests).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import OperationError
from aiortc.sdp import SessionDescription

from appliance.config.schema import Config
from appliance.media.bus import MediaBus
from appliance.status import StatusHub
from appliance.web.routes import ApiRoute, error_response
from appliance.web.whep_tracks import (
    PacketTrack,
    PreviewError,
    PreviewFeed,
    h264_preferences,
    opus_preferences,
)

log = logging.getLogger(__name__)

WHEP_PATH = "/api/v1/whep"
SDP_TYPE = "application/sdp"
SDP_MAX_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 20.0
STATUS_PERIOD_S = 1.0
RETRY_AFTER_S = 2
SECTION = "preview"
# The same stream id on both tracks makes them one MediaStream in the browser, which then
# plays them in sync (by the RTCP sender reports); separate ids let each play as soon as it
# can. Measured in Chromium on loopback: no difference in the video's latency either way.
LIP_SYNC = True


class WhepError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class PreviewOptions:
    rung: str
    max_viewers: int
    audio: tuple[int, int] | None  # (sample rate, channels) of the AAC track, None: no audio
    fps: int
    segment_s: float

    @classmethod
    def from_config(cls, cfg: Config) -> PreviewOptions:
        a = cfg.audio
        lowest = min(cfg.video.ladder, key=lambda r: r.width * r.height)
        return cls(rung=cfg.preview.rung or lowest.name,
                   max_viewers=cfg.preview.max_viewers,
                   audio=(a.sample_rate, a.channels) if a.enabled else None,
                   fps=cfg.video.fps, segment_s=cfg.packager.segment_s)

    @property
    def video_queue(self) -> int:
        # Half a second behind: rather drop to the next keyframe than play ever later.
        return max(4, self.fps // 2)

    @property
    def audio_queue(self) -> int:
        return 25  # 0.5 s of 20 ms Opus packets


@dataclass(eq=False)
class Viewer:
    id: str
    pc: RTCPeerConnection
    video: PacketTrack
    audio: PacketTrack | None
    remote: str | None
    created: float = field(default_factory=time.monotonic)
    state: str = "connecting"
    plis: int = 0
    ended: bool = False
    connected_at: float | None = None

    def status(self) -> dict[str, Any]:
        a = self.audio
        return {
            "state": self.state, "remote": self.remote,
            "age_s": round(time.monotonic() - self.created, 1),
            "video_frames": self.video.sent, "audio_packets": a.sent if a else 0,
            "dropped": self.video.dropped + (a.dropped if a else 0),
            "waiting_keyframe": self.video.waiting_keyframe and self.state == "connected",
            "picture_loss": self.plis,
            # capture to hand-over to aiortc, for the last frame sent
            "video_lag_ms": self.video.lag_ms,
        }


class WhepService:
    """The preview's sessions, their shared feed and their status."""

    def __init__(self, bus: MediaBus, hub: StatusHub, options: PreviewOptions,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.bus, self.hub, self.options = bus, hub, options
        self.on_fatal = on_fatal
        self.viewers: dict[str, Viewer] = {}
        self.connect_timeout_s = CONNECT_TIMEOUT_S
        self._pending = 0
        self._feed: PreviewFeed | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.publish_status()

    async def offer(self, sdp: str, remote: str | None = None) -> tuple[Viewer, str]:
        """A new session for an SDP offer: (viewer, SDP answer); WhepError if refused."""
        opts = self.options
        kinds = check_offer(sdp)  # a malformed offer is a 400 whatever the load
        if len(self.viewers) + self._pending >= opts.max_viewers:
            raise WhepError(503, f"the preview has its {opts.max_viewers} viewers already "
                            "(preview.max_viewers); try again when one leaves",
                            {"Retry-After": str(RETRY_AFTER_S)})
        info = self.bus.tracks.get(opts.rung)
        if info is None:
            raise WhepError(503, f"no video yet: the preview rung {opts.rung!r} has not "
                            "started encoding", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            video_codecs = h264_preferences(info.codecs)
        except PreviewError as exc:
            raise WhepError(503, str(exc)) from None
        self._pending += 1
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            feed = self._ensure_feed()
            video = PacketTrack("video", feed, opts.rung, opts.video_queue)
            tx = pc.addTransceiver(video, direction="sendonly")
            tx.setCodecPreferences(video_codecs)
            audio = None
            if opts.audio is not None and "audio" in kinds:
                audio = PacketTrack("audio", feed, "opus", opts.audio_queue)
                atx = pc.addTransceiver(audio, direction="sendonly")
                atx.setCodecPreferences(opus_preferences())
            if LIP_SYNC:
                stream = str(uuid.uuid4())
                for t in pc.getTransceivers():
                    t.sender._stream_id = stream
            await self._negotiate(pc, sdp, info.codecs)
            viewer = Viewer(secrets.token_urlsafe(16), pc, video, audio, remote)
        except BaseException:
            self._pending -= 1
            try:
                await pc.close()
            except Exception:  # half set up by a bad offer: what closes is closed
                log.debug("preview: closing a refused peer connection", exc_info=True)
            await self._stop_feed_if_idle()
            raise
        self._pending -= 1
        self.viewers[viewer.id] = viewer
        self._watch(viewer)
        log.info("preview: viewer %s from %s (%d of %d)", viewer.id[:8], remote,
                 len(self.viewers), opts.max_viewers)
        self.publish_status()
        return viewer, pc.localDescription.sdp

    async def _negotiate(self, pc: RTCPeerConnection, sdp: str, codecs: str) -> None:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except OperationError as exc:
            if "video" in str(exc):
                raise WhepError(400, "the offer's video has no H.264 with packetization-mode=1 "
                                f"in the stream's profile ({codecs}: profile-level-id "
                                f"{codecs.partition('.')[2]})") from None
            raise WhepError(400, "the offer's audio has no Opus (48000/2)") from None
        except Exception as exc:
            # aiortc parses and checks the offer here: what it refuses is the offer's fault.
            log.info("preview: offer refused", exc_info=True)
            raise WhepError(400, f"malformed SDP offer: {exc or type(exc).__name__}") from None
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # aiortc gathers every candidate first
        except Exception as exc:
            # What aiortc accepted but cannot answer (an m-line without a direction, a
            # BUNDLE group that names no m-line, ...): still the offer's fault.
            log.info("preview: no answer to the offer", exc_info=True)
            raise WhepError(400, f"cannot answer this SDP offer: {exc}") from None

    def _watch(self, viewer: Viewer) -> None:
        pc = viewer.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if viewer.ended:
                return
            if state == "connected" and viewer.connected_at is None:
                viewer.connected_at = time.monotonic()
                log.info("preview: viewer %s connected in %.2f s", viewer.id[:8],
                         viewer.connected_at - viewer.created)
            viewer.state = state
            if state in ("failed", "closed"):
                self._spawn(self.end(viewer.id, f"connection {state}"))
            self.publish_status()

        # aiortc answers a picture-loss request (PLI/FIR) by asking its own encoder for a
        # keyframe; with packets it has none to ask. We wait for the next regular IDR (see
        # the module doc) and count the requests.
        def on_picture_loss() -> None:
            viewer.plis += 1

        setattr(viewer.pc.getTransceivers()[0].sender, "_send_keyframe", on_picture_loss)  # noqa: B010
        self._spawn(self._connect_timeout(viewer))
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.create_task(self._status_loop())

    async def _connect_timeout(self, viewer: Viewer) -> None:
        await asyncio.sleep(self.connect_timeout_s)
        if not viewer.ended and viewer.connected_at is None:
            await self.end(viewer.id, f"not connected within {self.connect_timeout_s:g} s")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def end(self, viewer_id: str, reason: str) -> bool:
        """End a session and free what it held; False if there is no such session."""
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None or viewer.ended:
            return False
        viewer.ended = True
        log.info("preview: viewer %s ended (%s) after %.1f s, %d frames sent, %d dropped",
                 viewer.id[:8], reason, time.monotonic() - viewer.created, viewer.video.sent,
                 viewer.video.dropped)
        try:
            await viewer.pc.close()
        except Exception:  # the session is over either way
            log.warning("preview: closing viewer %s failed", viewer.id[:8], exc_info=True)
        finally:
            viewer.video.stop()
            if viewer.audio is not None:
                viewer.audio.stop()
            await self._stop_feed_if_idle()
            self.publish_status()
        return True

    async def _stop_feed_if_idle(self) -> None:
        if not self.viewers and not self._pending and self._feed is not None:
            thread = self._feed.stop()
            self._feed = None
            if thread is not None:
                await asyncio.to_thread(thread.join, 2)

    async def close(self) -> None:
        for vid in list(self.viewers):
            await self.end(vid, "shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._status_task is not None:
            self._status_task.cancel()
        await self._stop_feed_if_idle()

    def _ensure_feed(self) -> PreviewFeed:
        if self._feed is None:
            self._feed = PreviewFeed(self.bus, self.options.rung, self.options.audio,
                                     asyncio.get_running_loop(), on_fatal=self.on_fatal)
            self._feed.start()
        return self._feed

    async def _status_loop(self) -> None:
        while self.viewers:
            await asyncio.sleep(STATUS_PERIOD_S)
            self.publish_status()

    def publish_status(self) -> None:
        feed = self._feed
        self.hub.update(
            SECTION, rung=self.options.rung, max_viewers=self.options.max_viewers,
            keyframe_interval_s=self.options.segment_s, viewers=len(self.viewers),
            feed={"running": feed is not None and feed.running,
                  "error": feed.error if feed else None,
                  "video_packets": feed.video_packets if feed else 0,
                  "opus_packets": feed.opus_packets if feed else 0},
            sessions={vid: v.status() for vid, v in self.viewers.items()},
        )


def check_offer(sdp: str) -> set[str]:
    """The media kinds a WHEP offer asks for; WhepError (400) with the reason if it is not
    one we can answer."""
    if not sdp.lstrip().startswith("v=0"):
        raise WhepError(400, "malformed SDP offer: it must start with v=0")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser fails in many ways on broken text
        raise WhepError(400, f"malformed SDP offer: {exc or type(exc).__name__}") from None
    video = [m for m in desc.media if m.kind == "video"]
    if not video:
        raise WhepError(400, "the offer has no video section (m=video)")
    if video[0].direction not in ("recvonly", "sendrecv"):
        raise WhepError(400, f"the offer's video is {video[0].direction}: a WHEP viewer "
                        "receives (recvonly)")
    for m in desc.media:
        if m.kind in ("audio", "video") and (m.ice is None or m.ice.usernameFragment is None
                                             or m.dtls is None or not m.dtls.fingerprints):
            raise WhepError(400, f"malformed SDP offer: the {m.kind} section lacks "
                            "ICE credentials or a DTLS fingerprint")
    return {m.kind for m in desc.media}


WHEP_KEY = web.AppKey("whep", WhepService)


def _error(exc: WhepError) -> web.Response:
    return error_response(exc.status, exc.message, headers=exc.headers)


async def post_offer(request: web.Request) -> web.Response:
    service = request.app[WHEP_KEY]
    if request.content_type != SDP_TYPE:
        return _error(WhepError(415, f"the offer must be sent as Content-Type: {SDP_TYPE}"))
    if (request.content_length or 0) > SDP_MAX_BYTES:
        return _error(WhepError(413, f"the offer is larger than {SDP_MAX_BYTES} bytes"))
    body = await request.content.read(SDP_MAX_BYTES + 1)
    if len(body) > SDP_MAX_BYTES:
        return _error(WhepError(413, f"the offer is larger than {SDP_MAX_BYTES} bytes"))
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(WhepError(400, "malformed SDP offer: not UTF-8 text"))
    try:
        viewer, answer = await service.offer(sdp, request.remote)
    except WhepError as exc:
        return _error(exc)
    return web.Response(status=201, body=answer.encode(), content_type=SDP_TYPE,
                        headers={"Location": f"{WHEP_PATH}/{viewer.id}"})


async def delete_session(request: web.Request) -> web.Response:
    service = request.app[WHEP_KEY]
    if not await service.end(request.match_info["session"], "ended by the viewer (DELETE)"):
        return _error(WhepError(404, "no such preview session"))
    return web.Response(status=200)


async def patch_session(request: web.Request) -> web.Response:
    service = request.app[WHEP_KEY]
    if request.match_info["session"] not in service.viewers:
        return _error(WhepError(404, "no such preview session"))
    return _error(WhepError(405, "trickle ICE and ICE restarts are not supported: the answer "
                            "carries every candidate; start a new session instead",
                            {"Allow": "DELETE"}))


def whep_routes() -> list[ApiRoute]:
    """The WHEP resource and its sessions, as entries of the API's route table (so they
    are authenticated and documented like every other API route)."""
    session = {"session": "[A-Za-z0-9_-]+"}
    return [
        ApiRoute("POST", "/whep", post_offer, "whep_offer", raw_body=SDP_TYPE,
                 media_type=SDP_TYPE, status=201, errors=(400, 413, 415, 503),
                 summary="WebRTC preview (WHEP): an SDP offer in, the SDP answer out; "
                         "Location names the session"),
        ApiRoute("DELETE", "/whep/{session}", delete_session, "whep_end", params=session,
                 media_type="text/plain", errors=(404,), summary="End a preview session"),
        ApiRoute("PATCH", "/whep/{session}", patch_session, "whep_patch", params=session,
                 media_type="text/plain", errors=(404, 405),
                 summary="Trickle ICE: not supported (405); the answer has every candidate"),
    ]


def setup_whep(app: web.Application, bus: MediaBus, hub: StatusHub, cfg: Config,
               on_fatal: Callable[[BaseException], None] | None = None) -> WhepService:
    """The preview service for `app`'s WHEP routes; its sessions end when the app shuts down.

    `on_fatal` (called on the event loop) hears of an unexpected error in the preview's
    feed thread, e.g. the daemon's `fatal`; without it the error is logged and shown in
    the status, and the preview has no media until the next viewer restarts the feed.
    """
    service = WhepService(bus, hub, PreviewOptions.from_config(cfg), on_fatal)
    app[WHEP_KEY] = service

    async def on_shutdown(_app: web.Application) -> None:
        await service.close()

    app.on_shutdown.append(on_shutdown)
    return service

