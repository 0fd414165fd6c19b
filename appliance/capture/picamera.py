"""The Raspberry Pi camera through picamera2: its main stream, and a lores stream for a rung.

picamera2 and libcamera come from Raspberry Pi OS packages and are imported only when a
camera is started or probed, so this module imports anywhere.

We take the frames and encode every rung ourselves (VideoEncoder: the Pi's H.264 block
through V4L2 M2M where the encode plan puts a rung there, else x264), rather than let
picamera2's encoder make the top rung: its encoders place IDRs by counting frames from
their start and cannot be told to make one, while the rungs' IDRs must fall on the same
media-time segment boundaries for players to switch between them. One path for every
source also means one timestamp mapping and one way to fill skipped frames.

The lores stream (YUV420, at most the main size, one only) is scaled by the ISP to the
size of a rung: that rung is encoded as it comes, and smaller ones scale from it rather
than from main.

Timestamps: each request's SensorTimestamp (CLOCK_BOOTTIME, ns) is mapped onto the
MediaClock by DeviceTimestamps, as V4L2 cameras' are.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import av
import numpy as np

from appliance.capture.encoder import hardware_h264_available
from appliance.capture.source import Captured, SourceError
from appliance.capture.v4l2 import DeviceTimestamps
from appliance.media.clock import MediaClock

log = logging.getLogger(__name__)

__all__ = ["PicameraSource", "hardware_h264_available", "picamera_present", "yuv420_frame"]


def picamera_present() -> bool:
    """picamera2 importable and libcamera lists at least one camera."""
    if importlib.util.find_spec("picamera2") is None:
        return False
    try:
        from picamera2 import Picamera2

        return len(Picamera2.global_camera_info()) > 0
    except Exception:  # a broken libcamera install means no usable camera, not a crash
        log.exception("picamera2 is installed but cannot list cameras")
        return False


def yuv420_frame(array: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """A yuv420p frame from picamera2's YUV420 array: height * 3/2 rows of the stride, the
    chroma planes at half the stride each; the padding right of `width` is dropped."""
    stride = array.shape[1]
    if stride == width:  # already packed as yuv420p: wrap it, no copy
        return av.VideoFrame.from_numpy_buffer(array, format="yuv420p")
    flat = array.reshape(-1)
    cw, ch, cstride = width // 2, height // 2, stride // 2
    u_at = height * stride
    v_at = u_at + ch * cstride
    packed = np.empty((height * 3 // 2, width), np.uint8)
    out = packed.reshape(-1)
    out[: width * height].reshape(height, width)[:] = (
        flat[:u_at].reshape(height, stride)[:, :width])
    chroma = cw * ch
    for plane, at in enumerate((u_at, v_at)):
        start = width * height + plane * chroma
        out[start : start + chroma].reshape(ch, cw)[:] = (
            flat[at : at + ch * cstride].reshape(ch, cstride)[:, :cw])
    return av.VideoFrame.from_numpy_buffer(packed, format="yuv420p")


def _size(size: Any) -> tuple[int, int]:
    return int(size[0]), int(size[1])


class PicameraSource:
    """The Pi camera as a VideoSource: blocking reads of (main, lores) yuv420p frames.

    `lores` asks the ISP for a second, smaller picture of each frame (None: main only).
    A read that gets no frame within `timeout_s` means the camera stalled: SourceError.
    """

    def __init__(self, width: int, height: int, fps: int, clock: MediaClock, *,
                 lores: tuple[int, int] | None = None, timeout_s: float = 3.0,
                 start_timeout_s: float = 10.0):
        self.width, self.height, self.fps = width, height, fps
        self.timeout_s = timeout_s
        self.dropped = 0  # frames the camera made that we did not take (we were late)
        self.main_size = (width, height)
        self.lores_size: tuple[int, int] | None = None  # as configured, once started
        self._timestamps = DeviceTimestamps(clock)
        self._last_sensor_ns: int | None = None
        self._first_timeout_s = start_timeout_s
        self._camera: Any = None
        self._start(lores)

    def _start(self, lores: tuple[int, int] | None) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(f"picamera2 is not installed: {exc}") from None
        try:
            self._camera = Picamera2()
            streams: dict[str, Any] = {"main": {"size": self.main_size, "format": "YUV420"}}
            if lores is not None:
                streams["lores"] = {"size": lores, "format": "YUV420"}
            config = self._camera.create_video_configuration(
                **streams, controls={"FrameRate": self.fps})
            self._camera.configure(config)
            # libcamera may adjust sizes to what the ISP can do: take the ones it chose.
            chosen = self._camera.camera_config
            self.main_size = _size(chosen["main"]["size"])
            if lores is not None:
                self.lores_size = _size(chosen["lores"]["size"])
            self._camera.start()
        except Exception as exc:  # libcamera raises assorted types for a missing/busy camera
            self.close()
            raise SourceError(f"cannot start the Pi camera: {exc}") from exc
        log.info("Pi camera: main %dx%d, lores %s, %d fps", *self.main_size,
                 "x".join(map(str, self.lores_size)) if self.lores_size else "off", self.fps)

    def read(self) -> Captured:
        if self._camera is None:
            raise SourceError("the Pi camera is closed")
        timeout = self._first_timeout_s if self._last_sensor_ns is None else self.timeout_s
        job = self._camera.capture_request(wait=False)
        try:
            request = job.get_result(timeout=timeout)
        except TimeoutError:
            raise SourceError(f"the Pi camera delivered no frame for {timeout:.0f} s") from None
        except Exception as exc:  # the camera went away under us
            raise SourceError(f"the Pi camera failed: {exc}") from exc
        try:
            sensor_ns = request.get_metadata().get("SensorTimestamp")
            main = yuv420_frame(request.make_array("main"), *self.main_size)
            lores = (yuv420_frame(request.make_array("lores"), *self.lores_size)
                     if self.lores_size else None)
        finally:
            request.release()  # straight back to the camera: the arrays are copies
        self._count_skipped(sensor_ns)
        return Captured(main, self._timestamps.media_ns(sensor_ns), lores)

    def _count_skipped(self, sensor_ns: int | None) -> None:
        if sensor_ns is None:
            return
        if self._last_sensor_ns is not None:
            periods = round((sensor_ns - self._last_sensor_ns) * self.fps / 1e9)
            self.dropped += max(0, periods - 1)
        self._last_sensor_ns = sensor_ns

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
        finally:
            camera.close()
