"""Both ends of the WHEP preview for the tests and bench/whep_latency.py.

- `preview_server`: the real capture pipeline (synthetic stamped source, x264 and AAC
  encoders) feeding a real MediaBus, and an aiohttp app with only `setup_whep` on a free
  loopback port, in the caller's event loop.
- `python -m tests.whep_peers --port N`: the same as a process of its own, for the
  Chromium test and the bench (Playwright's sync API holds the test's thread, and the
  bench measures the server's CPU apart from its clients').
- `WhepViewer`: an aiortc peer that does WHEP against it and decodes what it gets.
- `preview_process`, `webrtc_chromium`, `open_whep_page`: the server as a child process
  and Debian's Chromium on tests/browser/whep_page.html, served on the server's origin.

Everything is real; only the camera and microphone are synthetic. ICE runs on this
machine's own addresses (aioice leaves out 127.0.0.1) and no STUN server is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from playwright.sync_api import Browser, Page, Route, sync_playwright

from appliance.capture.pipeline import CapturePipeline
from appliance.config.schema import Config
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.stamp import luma, read_stamp
from appliance.status import StatusHub
from appliance.web.whep import WHEP_PATH, WhepService, setup_whep, whep_routes
from appliance.web.whep_tracks import h264_preferences
from tests.browser.chromium import CHROMIUM_ARGS, MissingTool, find_chromium
from tests.daemon_proc import ROOT, free_port

PAGE = Path(__file__).resolve().parent / "browser" / "whep_page.html"
STAMP_JS = ROOT / "appliance" / "web" / "static" / "stamp.js"
# Chromium hides its host addresses behind mDNS names (*.local) by default; resolving those
# would send multicast queries onto the network. Real addresses keep ICE on this machine.
WEBRTC_ARGS = [*CHROMIUM_ARGS, "--disable-features=WebRtcHideLocalIpsWithMdns"]

# One small rung captured at its own size: the synthetic source then draws 360p, and the
# preview sends what x264 makes of it.
WIDTH, HEIGHT, FPS = 640, 360, 30


def preview_config(max_viewers: int = 4, *, width: int = WIDTH, height: int = HEIGHT,
                   audio: bool = True, segment_s: float = 2.0) -> Config:
    return Config.model_validate({
        "video": {"source": "synthetic", "width": width, "height": height, "fps": FPS,
                  "ladder": [{"name": f"{height}p", "width": width, "height": height,
                              "bitrate_kbps": 800}]},
        "audio": {"enabled": audio, "source": "synthetic"},
        "packager": {"segment_s": segment_s, "part_s": 0.2, "window_s": 6 * segment_s},
        "preview": {"max_viewers": max_viewers},
    })


@dataclass
class PreviewServer:
    url: str
    bus: MediaBus
    hub: StatusHub
    service: WhepService
    cfg: Config

    def preview(self) -> dict[str, object]:
        section: dict[str, object] = self.hub.snapshot()["sections"].get("preview", {})
        return section


@contextlib.asynccontextmanager
async def preview_server(cfg: Config, port: int | None = None,
                         wait_media: float = 15.0) -> AsyncIterator[PreviewServer]:
    """Capture, encoders, bus and the WHEP app on 127.0.0.1; yields once the preview rung
    has started (its TrackInfo is on the bus)."""
    loop = asyncio.get_running_loop()
    bus, hub = MediaBus(), StatusHub()
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        loop.call_soon_threadsafe(fatal.append, exc)

    pipeline = CapturePipeline(cfg, MediaClock(), bus, hub, on_track=lambda _info: None,
                               on_fatal=on_fatal)
    app = web.Application()
    service = setup_whep(app, bus, hub, cfg)
    for route in whep_routes():  # the daemon's app registers them from the API table
        app.router.add_route(route.method, route.aiohttp_path, route.handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    pipeline.start()
    try:
        rung = service.options.rung
        deadline = time.monotonic() + wait_media
        while rung not in bus.tracks or (cfg.audio.enabled and "audio" not in bus.tracks):
            if fatal:
                raise RuntimeError(f"capture failed: {fatal[0]!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {rung} packets within {wait_media} s")
            await asyncio.sleep(0.05)
        yield PreviewServer(f"http://127.0.0.1:{port}", bus, hub, service, cfg)
    finally:
        await runner.cleanup()  # on_shutdown ends the sessions
        await asyncio.to_thread(pipeline.stop)


@dataclass
class Received:
    frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)  # wall clock - stamp, decoded
    audio_frames: int = 0
    audio_rates: set[int] = field(default_factory=set)
    audio_peak: float = 0.0
    lumas: dict[int, list[bytes]] = field(default_factory=dict)  # by stamp, if kept


class WhepViewer:
    """A WHEP client on aiortc: POSTs its offer, sets the answer, decodes what arrives."""

    def __init__(self, base_url: str, *, audio: bool = True, read_stamps: bool = True,
                 keep_lumas: bool = False):
        self.base_url = base_url
        self.audio = audio
        self.read_stamps = read_stamps
        self.keep_lumas = keep_lumas  # the decoded pictures' luma, by stamp (up to 300)
        # aiortc offers only constrained baseline H.264 by itself; ask for High too, as
        # browsers offer it (any level: level-asymmetry-allowed).
        h264_preferences("avc1.64001f")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None
        self.got = Received()
        self._tasks: list[asyncio.Task[None]] = []

    async def offer(self) -> str:
        self.pc.addTransceiver("video", direction="recvonly")
        if self.audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def post(self, sdp: str) -> tuple[int, dict[str, str], str]:
        async with aiohttp.ClientSession() as http, http.post(
                self.base_url + WHEP_PATH, data=sdp.encode(),
                headers={"Content-Type": "application/sdp"}) as r:
            return r.status, dict(r.headers), await r.text()

    async def start(self) -> None:
        """Offer, answer and start reading; AssertionError unless the server said 201."""
        status, headers, body = await self.post(await self.offer())
        assert status == 201, f"WHEP POST answered {status}: {body}"
        assert headers["Content-Type"].startswith("application/sdp"), headers
        self.location = headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        for t in self.pc.getTransceivers():
            track = t.receiver.track
            self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.VideoFrame):
                self.got.frames += 1
                self.got.sizes.add((frame.width, frame.height))
                if self.read_stamps:
                    y = luma(frame)
                    stamp = read_stamp(y)
                    if stamp is not None:
                        self.got.latencies_ms.append(time.time() * 1000 - stamp)
                        if self.keep_lumas and len(self.got.lumas) < 300:
                            self.got.lumas.setdefault(stamp, []).append(y.tobytes())
            elif isinstance(frame, av.AudioFrame):
                self.got.audio_frames += 1
                self.got.audio_rates.add(frame.sample_rate)
                peak = float(np.abs(frame.to_ndarray()).max()) / 32768
                self.got.audio_peak = max(self.got.audio_peak, peak)

    async def wait_frames(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.got.frames < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.got.frames} of {n} frames in {timeout} s "
                                   f"(connection {self.pc.connectionState})")
            await asyncio.sleep(0.05)

    async def delete(self) -> int:
        assert self.location is not None
        async with aiohttp.ClientSession() as http, http.delete(
                self.base_url + self.location) as r:
            return r.status

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


@dataclass
class PreviewProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def preview_process(log_dir: Path, max_viewers: int = 4,
                    size: tuple[int, int] = (WIDTH, HEIGHT),
                    timeout: float = 20) -> Iterator[PreviewProcess]:
    """`python -m tests.whep_peers` on a free port, until the preview has media."""
    port = free_port()
    log_path = log_dir / "whep_server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.whep_peers", "--port", str(port),
             "--max-viewers", str(max_viewers), "--size", f"{size[0]}x{size[1]}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    p = PreviewProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + timeout
        while "serving" not in p.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the WHEP server did not start:\n{p.log()}")
            time.sleep(0.1)
        yield p
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def webrtc_chromium() -> Iterator[Browser]:
    """Headless Debian Chromium as tests/browser/chromium.py launches it, with real host
    addresses in its ICE candidates (see WEBRTC_ARGS)."""
    executable = find_chromium()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, args=WEBRTC_ARGS)
        except Exception as exc:
            raise MissingTool(f"{executable} did not start ({exc})") from exc
        try:
            yield browser
        finally:
            browser.close()


def open_whep_page(browser: Browser, base_url: str) -> Page:
    """whep_page.html at <base_url>/whep.html, stamp.js at /static/stamp.js, answered by
    Playwright on the server's origin, so the page's fetch to /api/v1/whep is same-origin."""
    page = browser.new_page(viewport={"width": 800, "height": 500})

    def serve(route: Route) -> None:
        if route.request.url.endswith("/static/stamp.js"):
            route.fulfill(path=str(STAMP_JS), content_type="text/javascript")
        else:
            route.fulfill(path=str(PAGE), content_type="text/html")

    page.route(base_url + "/whep.html", serve)
    page.route(base_url + "/static/stamp.js", serve)
    page.goto(base_url + "/whep.html")
    return page


def http_status(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def main() -> None:
    """Serve the preview until SIGTERM/SIGINT: --port, --max-viewers, --size WxH."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-viewers", type=int, default=4)
    ap.add_argument("--size", default=f"{WIDTH}x{HEIGHT}")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        cfg = preview_config(args.max_viewers, width=width, height=height)
        async with preview_server(cfg, args.port) as server:
            print(f"serving {server.url}", flush=True)
            await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
