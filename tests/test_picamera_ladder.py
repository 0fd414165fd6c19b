"""The Pi camera path, every rung of the ladder, on a stand-in for picamera2's camera.

Only the camera is a stand-in: `StandInPicamera2` answers the part of Picamera2's API
that PicameraSource uses the way the real one does (video configurations with a lores
stream that may not exceed main, strides padded to 64 bytes, a pool of buffers that a
request holds until released, completed requests queued one deep, sensor timestamps on
CLOCK_BOOTTIME). Sources, encoders (x264 here), the plan and the pipeline run for real.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import Future
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from appliance.board import GENERIC
from appliance.capture.open import lores_size, open_video
from appliance.capture.picamera import PicameraSource, yuv420_frame
from appliance.capture.pipeline import CapturePipeline
from appliance.capture.source import SourceError
from appliance.config.schema import Config
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket, TrackInfo
from appliance.status import StatusHub

NS = 1_000_000_000
PADDING = 0xEE  # what the stride padding right of the picture holds


def _stride(width: int) -> int:
    return -(-width // 64) * 64  # libcamera on the Pi: YUV420 rows aligned to 64 bytes


def _luma(n: int, width: int, height: int) -> np.ndarray:
    """The scene at frame n, as the ISP scales it to a stream: a left-to-right ramp with
    a bright bar that moves a step per frame (so frames differ)."""
    y = np.tile(np.linspace(16, 200, width, dtype=np.uint8), (height, 1))
    x = (n * 8) % width
    y[:, x : x + width // 20] = 235
    return y


class _Request:
    """A CompletedRequest: buffers of the configured streams and the frame's metadata."""

    def __init__(self, camera: StandInPicamera2, n: int, sensor_ns: int):
        self._camera, self.n, self.sensor_ns = camera, n, sensor_ns
        self._refs = 1
        self._buffers = {name: self._render(cfg) for name, cfg in camera.streams().items()}

    def _render(self, cfg: dict[str, Any]) -> np.ndarray:
        (w, h), stride = cfg["size"], cfg["stride"]
        buf = np.full((h * 3 // 2, stride), PADDING, np.uint8)
        flat = buf.reshape(-1)
        flat[: h * stride].reshape(h, stride)[:, :w] = _luma(self.n, w, h)
        for plane in range(2):  # neutral chroma, rows of half the stride
            at = h * stride + plane * (h // 2) * (stride // 2)
            flat[at : at + (h // 2) * (stride // 2)].reshape(h // 2, stride // 2)[:, : w // 2] = 128
        return buf

    def make_array(self, name: str) -> np.ndarray:
        if self._refs <= 0:
            raise RuntimeError("request used after release")
        if name not in self._buffers:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self._buffers[name].copy()  # picamera2 copies out of the dmabuf

    def get_metadata(self) -> dict[str, Any]:
        return {"SensorTimestamp": self.sensor_ns, "FrameDuration": 1_000_000 // self._camera.fps}

    def release(self) -> None:
        if self._refs <= 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        self._refs -= 1
        if self._refs == 0:
            self._camera.recycle(self)


class _Job:
    def __init__(self) -> None:
        self.future: Future[_Request] = Future()

    def get_result(self, timeout: float | None = None) -> _Request:
        return self.future.result(timeout=timeout)


class StandInPicamera2:
    """Picamera2 for one simulated sensor. `instances` keeps what the tests look at;
    `pause_s` makes the sensor stop delivering for a while (a stalled camera)."""

    instances: list[StandInPicamera2] = []
    slow_every = 0  # every n-th frame the sensor is late by a frame and a half
    pause_s = 0.0

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [{"Model": "imx708", "Num": 0, "Location": 2, "Id": "/base/soc/i2c0mux/imx708@1a"}]

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_config: dict[str, Any] | None = None
        self.fps = 30
        self.buffer_count = 6
        self.started = self.closed = False
        self.sensor_wall: dict[int, int] = {}  # frame -> wall time its sensor timestamp means
        self.held = 0  # requests handed out and not yet released
        self.skipped_for_buffers = 0
        self._lock = threading.Condition()
        self._completed: list[_Request] = []
        self._jobs: list[_Job] = []
        self._thread: threading.Thread | None = None
        StandInPicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any] | None = None,
                                   lores: dict[str, Any] | None = None,
                                   controls: dict[str, Any] | None = None,
                                   buffer_count: int = 6, queue: bool = True) -> dict[str, Any]:
        return {"use_case": "video", "buffer_count": buffer_count, "queue": queue,
                "main": {"format": "XBGR8888", "size": (1280, 720), **(main or {})},
                "lores": None if lores is None else {"format": "YUV420", "size": (640, 480),
                                                     **lores},
                "controls": {"FrameDurationLimits": (33333, 33333), **(controls or {})}}

    def configure(self, config: dict[str, Any]) -> None:
        main, lores = config["main"], config["lores"]
        for stream in filter(None, (main, lores)):
            if stream["format"] != "YUV420":  # all the stand-in draws; enough for our use
                raise NotImplementedError(f"stand-in draws YUV420 only, not {stream['format']}")
        if lores is not None and (lores["size"][0] > main["size"][0]
                                  or lores["size"][1] > main["size"][1]):
            raise RuntimeError("lores stream dimensions may not exceed main stream")
        self.fps = int(config["controls"].get("FrameRate", 30))
        self.buffer_count = config["buffer_count"]
        self.queue = config["queue"]
        self.camera_config = {name: None if s is None else self._with_layout(s)
                              for name, s in (("main", main), ("lores", lores))}

    @staticmethod
    def _with_layout(stream: dict[str, Any]) -> dict[str, Any]:
        width, height = stream["size"]
        stride = _stride(width)
        return {**stream, "stride": stride, "framesize": stride * height * 3 // 2}

    def streams(self) -> dict[str, dict[str, Any]]:
        assert self.camera_config is not None
        return {n: s for n, s in self.camera_config.items() if s is not None}

    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self._thread = threading.Thread(target=self._sensor, daemon=True)
        self._thread.start()

    def _sensor(self) -> None:
        period = NS // self.fps
        first = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        n = 0
        while self.started:
            n += 1
            if self.pause_s:
                time.sleep(self.pause_s)
                self.pause_s = 0.0
            if self.slow_every and n % self.slow_every == 0:
                time.sleep(1.5 * period / NS)
            # Exposure starts at the sensor timestamp; the request completes about a
            # frame later, once read out and through the ISP. A sensor keeps its cadence:
            # when this thread wakes late (a loaded machine), the frames it missed are
            # lost, and the timestamps stay on the frame grid.
            late = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - (first + n * period)
            if late > period:
                n += late // period
            sensor_ns = first + n * period
            delay = sensor_ns + period - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            time.sleep(max(0, delay) / NS)
            with self._lock:
                if self.held + len(self._completed) >= self.buffer_count:
                    self.skipped_for_buffers += 1  # every buffer held: the frame is lost
                    continue
                boot, wall = time.clock_gettime_ns(time.CLOCK_BOOTTIME), time.time_ns()
                self.sensor_wall[n] = wall - (boot - sensor_ns)
                self._completed.append(_Request(self, n, sensor_ns))
                self._serve()

    def _serve(self) -> None:
        """Hand queued requests to waiting jobs; keep at most one queued (queue=True)."""
        while self._jobs and self._completed:
            self.held += 1
            self._jobs.pop(0).future.set_result(self._completed.pop(0))
        while len(self._completed) > (1 if self.queue else 0):
            self._completed.pop(0)  # recycled unseen

    def capture_request(self, wait: bool | None = None) -> Any:
        job = _Job()
        with self._lock:
            if not self.started:
                raise RuntimeError("camera not started")
            self._jobs.append(job)
            self._serve()
        return job if wait is False else job.get_result()

    def recycle(self, request: _Request) -> None:
        with self._lock:
            self.held -= 1

    def stop(self) -> None:
        self.started = False
        if self._thread is not None:
            self._thread.join(timeout=2)

    def close(self) -> None:
        self.stop()
        self.closed = True


@pytest.fixture
def camera_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StandInPicamera2]]:
    """`import picamera2` gives the stand-in, as Raspberry Pi OS's package would the real one."""
    module = types.ModuleType("picamera2")
    module.__spec__ = importlib.machinery.ModuleSpec("picamera2", loader=None)
    module.Picamera2 = StandInPicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    monkeypatch.setattr(StandInPicamera2, "instances", [])
    monkeypatch.setattr(StandInPicamera2, "slow_every", 0)
    monkeypatch.setattr(StandInPicamera2, "pause_s", 0.0)
    yield StandInPicamera2
    for cam in StandInPicamera2.instances:
        cam.close()


LADDER = """
[video]
source = "picamera2"
width = 1280
height = 720
fps = 30
[[video.ladder]]
name = "720p"
width = 1280
height = 720
bitrate_kbps = 3000
[[video.ladder]]
name = "480p"
width = 854
height = 480
bitrate_kbps = 1200
[[video.ladder]]
name = "360p"
width = 640
height = 360
bitrate_kbps = 800
[audio]
enabled = false
[packager]
segment_s = 1.0
part_s = 0.2
window_s = 12.0
"""


def _config() -> Config:
    from appliance.config.load import parse

    return parse(LADDER, GENERIC)


def test_yuv420_frame_drops_the_stride_padding() -> None:
    w, h, stride = 854, 480, 896
    buf = np.full((h * 3 // 2, stride), PADDING, np.uint8)
    flat = buf.reshape(-1)
    flat[: h * stride].reshape(h, stride)[:, :w] = _luma(3, w, h)
    for plane, value in ((0, 90), (1, 160)):
        at = h * stride + plane * (h // 2) * (stride // 2)
        flat[at : at + (h // 2) * (stride // 2)].reshape(h // 2, stride // 2)[:, : w // 2] = value
    frame = yuv420_frame(buf, w, h)
    assert (frame.width, frame.height, frame.format.name) == (w, h, "yuv420p")
    planes = [frame.to_ndarray()[:h]]
    assert np.array_equal(planes[0], _luma(3, w, h))
    yuv = frame.reformat(format="yuv444p").to_ndarray()  # chroma, upsampled: no padding in it
    assert {int(yuv[1].min()), int(yuv[1].max())} == {90} and int(yuv[2].mean()) == 160


def test_lores_is_the_largest_rung_below_the_capture_size() -> None:
    cfg = _config()
    assert lores_size(cfg.video) == (854, 480)
    single = cfg.video.model_copy(update={"ladder": cfg.video.ladder[:1]})
    assert lores_size(single) is None  # the only rung is the main size: no lores


def test_source_reads_main_and_lores_with_sensor_times(
        camera_module: type[StandInPicamera2]) -> None:
    clock = MediaClock()
    src = open_video(_config().video, clock)
    assert isinstance(src, PicameraSource)
    try:
        caps = [src.read() for _ in range(10)]
    finally:
        src.close()
    (camera,) = camera_module.instances
    assert camera.closed and camera.held == 0, "every request went back to the camera"
    assert camera.camera_config is not None
    assert camera.camera_config["lores"]["size"] == (854, 480)
    for cap in caps:
        assert isinstance(cap.frame, av.VideoFrame) and cap.lores is not None
        assert (cap.frame.width, cap.frame.height, cap.lores.width, cap.lores.height) == (
            1280, 720, 854, 480)
        assert int(cap.lores.to_ndarray()[:480, -1].max()) < PADDING  # padding cropped
    steps = [b.media_ns - a.media_ns for a, b in zip(caps, caps[1:], strict=False)]
    # The sensor's cadence: whole frame periods (a loaded machine may miss a frame).
    period = NS // 30
    assert all(s >= period - 5_000_000 and abs(s - round(s / period) * period) < 5_000_000
               for s in steps), steps


def test_a_stalled_camera_is_a_source_error(camera_module: type[StandInPicamera2]) -> None:
    src = PicameraSource(640, 360, 30, MediaClock(), timeout_s=0.3)
    try:
        src.read()
        camera_module.pause_s = 1.0
        with pytest.raises(SourceError, match="no frame for"):
            for _ in range(40):
                src.read()
    finally:
        src.close()


class _Run:
    """The capture pipeline over the stand-in, collecting every rung's packets."""

    def __init__(self, cfg: Config):
        self.hub, self.bus = StatusHub(), MediaBus()
        self.sub = self.bus.subscribe(None, maxlen=5000)
        self.tracks: dict[str, TrackInfo] = {}
        self.packets: dict[str, list[EncodedPacket]] = {}
        self.failed: list[BaseException] = []
        self.pipeline = CapturePipeline(cfg, MediaClock(), self.bus, self.hub, self._track,
                                        self.failed.append, board=GENERIC)

    def _track(self, info: TrackInfo) -> None:
        self.tracks[info.name] = info

    def until(self, done: Any, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not done(self) and time.monotonic() < deadline and not self.failed:
            pkt = self.sub.get(timeout=0.2)
            if pkt is not None:
                self.packets.setdefault(pkt.track, []).append(pkt)
        assert not self.failed, self.failed

    def keyframes(self, track: str) -> list[int]:
        return [p.pts for p in self.packets.get(track, []) if p.keyframe]


@pytest.fixture
def run(camera_module: type[StandInPicamera2]) -> Iterator[_Run]:
    r = _Run(_config())
    r.pipeline.start()
    yield r
    r.pipeline.stop()


def _decode(packets: list[EncodedPacket]) -> list[av.VideoFrame]:
    ctx = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    for p in packets:
        frames += [f for f in ctx.decode(av.Packet(p.data)) if isinstance(f, av.VideoFrame)]
    return frames


def test_every_rung_is_encoded_with_aligned_keyframes(
        run: _Run, camera_module: type[StandInPicamera2]) -> None:
    names = ("720p", "480p", "360p")
    run.until(lambda r: all(len(r.keyframes(n)) >= 3 for n in names))
    assert set(run.tracks) == set(names)
    assert [(run.tracks[n].width, run.tracks[n].height) for n in names] == [
        (1280, 720), (854, 480), (640, 360)]
    assert all(run.tracks[n].fps == Fraction(30) for n in names)

    # Same IDR times on every rung, on the media-time segment boundaries (1 s).
    shortest = min(len(run.keyframes(n)) for n in names)
    first = [run.keyframes(n)[:shortest] for n in names]
    assert first[0] == first[1] == first[2], first
    assert all(pts % 90_000 == 0 for pts in first[0][1:]), first[0]
    # Each rung a contiguous run of 30 fps slots, and the same slots on every rung.
    for n in names:
        pts = [p.pts for p in run.packets[n]]
        assert all(b - a == 3000 for a, b in zip(pts, pts[1:], strict=False)), n
    common = min(len(run.packets[n]) for n in names)
    assert len({tuple(p.pts for p in run.packets[n][:common]) for n in names}) == 1

    # Capture times come from the sensor timestamps, to within the half-frame snap. On a
    # loaded machine the stand-in loses frames as a sensor does (it keeps its cadence), and
    # the encoder repeats the last picture in their slots at the slot's time: only such
    # repeats may lie farther from every sensor timestamp.
    (camera,) = camera_module.instances
    sensor_wall = sorted(camera.sensor_wall.values())
    off_ms = [min(abs(t - p.capture_ns) for t in sensor_wall) / 1e6
              for p in run.packets["480p"][:30]]
    repeated = run.hub.snapshot()["sections"]["encode.480p"]["repeated_frames"]
    assert sum(ms >= 20 for ms in off_ms) <= repeated, (off_ms, repeated)

    # Every rung decodes, at its size; the lores-fed one shows no stride padding.
    for n, (w, h) in zip(names, [(1280, 720), (854, 480), (640, 360)], strict=True):
        frames = _decode(run.packets[n])
        assert len(frames) >= len(run.packets[n]) - 2 and (frames[0].width, frames[0].height) == (
            w, h)
    right_edge = _decode(run.packets["480p"])[-1].to_ndarray()[:480, -4:]
    assert int(np.median(right_edge)) < 215, "the 64-byte stride padding leaked in"


def test_status_names_each_rungs_encoder_input_and_lateness(run: _Run) -> None:
    run.until(lambda r: "lateness_ms_max" in r.hub.snapshot()["sections"].get("encode.360p", {})
              and r.hub.snapshot()["sections"]["encode.360p"]["lateness_ms_max"] is not None)
    sections = run.hub.snapshot()["sections"]
    assert sections["media.video"]["state"] == "live"
    assert sections["media.video"]["source"] == "PicameraSource"
    inputs = {n: (sections[f"encode.{n}"]["encoder"], sections[f"encode.{n}"]["input"])
              for n in ("720p", "480p", "360p")}
    # 480p is the ISP's lores stream as it comes; 360p scales from it, not from main.
    assert inputs == {"720p": ("x264", "main"), "480p": ("x264", "lores"),
                      "360p": ("x264", "lores, scaled")}
    for n in ("720p", "480p", "360p"):
        s = sections[f"encode.{n}"]
        # A request completes a frame after its sensor timestamp (less the half-frame
        # snap to the grid), so no output can be less than ~16 ms behind.
        assert 10 <= s["lateness_ms_avg"] <= s["lateness_ms_max"] < 2000
        assert s["frames"] > 0 and s["dropped_frames"] == 0


def test_a_late_sensor_shows_as_repeated_frames_on_every_rung(
        run: _Run, camera_module: type[StandInPicamera2]) -> None:
    def encode(r: _Run, name: str) -> dict[str, Any]:
        return dict(r.hub.snapshot()["sections"].get(f"encode.{name}", {}))

    run.until(lambda r: encode(r, "360p").get("frames", 0) > 0)
    before = {n: encode(run, n)["repeated_frames"] for n in ("720p", "480p", "360p")}
    dropped = run.hub.snapshot()["sections"]["media.video"]["dropped"]
    camera_module.slow_every = 4  # from now on every 4th frame comes 1.5 periods late
    # 360p is published last of the three, so when it shows the repeats the others do.
    run.until(lambda r: encode(r, "360p")["repeated_frames"] >= before["360p"] + 5, timeout=10)
    more = {n: encode(run, n)["repeated_frames"] - before[n] for n in before}
    assert min(more.values()) >= 5, more  # the same slots, filled on each rung
    assert run.hub.snapshot()["sections"]["media.video"]["dropped"] >= dropped + 4
