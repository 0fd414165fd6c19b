"""`appliance doctor`: can this machine run the appliance? One line per check.

Each check says OK, WARN (works, but not as on the device: e.g. no camera, so the
synthetic source only), FAIL (the appliance cannot work as configured) or INFO. The
command exits 1 when any check fails. Checks read the same config the daemon would
and use the daemon's own probes (board.py, capture/v4l2.py, capture/encoder.py,
uplink/srt.py), so "OK" here means the daemon will find the same thing.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import select
import shutil
import ssl
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import urlsplit

from appliance.board import BoardError, BoardProfile, LadderError, detect_board, plan_encoders
from appliance.config.load import DEVICE_CONFIG, ConfigError, load
from appliance.config.schema import Config

Status = Literal["ok", "warn", "fail", "info"]

MARKS: Final[dict[Status, tuple[str, str]]] = {
    "ok": ("✓", "OK"), "warn": ("!", "WARN"), "fail": ("✗", "FAIL"), "info": ("i", "INFO"),
}
# Free space the state directory needs (recordings, credentials, the config's last-good).
MIN_FREE_BYTES: Final = 200 * 1000 * 1000
MIN_FREE_FRACTION: Final = 0.05
MODEM_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    detail: str


def format_result(r: Result, symbols: bool = True) -> str:
    mark, word = MARKS[r.status]
    return f"{mark + ' ' if symbols else ''}{word:<4} {r.name:<8} {r.detail}"


@dataclass
class Context:
    """What the checks look at: the config the daemon would run with, and where."""

    config_path: Path | None
    state_dir: Path
    modem: str | None = None
    board: BoardProfile | None = None
    cfg: Config = field(default_factory=Config)
    config_result: Result | None = None


# -- config and board --------------------------------------------------------------------

def load_context(config_path: Path | None, state_dir: Path, modem: str | None = None) -> Context:
    ctx = Context(config_path, state_dir, modem)
    try:
        ctx.board = detect_board()
    except BoardError as exc:
        ctx.config_result = Result("config", "fail", str(exc))
        return ctx
    path = config_path or DEVICE_CONFIG
    if config_path is None and not path.exists():
        ctx.config_result = Result("config", "ok", f"no {path}: the built-in defaults")
        return ctx
    try:
        ctx.cfg = load(path, ctx.board)
    except ConfigError as exc:
        errors = "; ".join(exc.errors[:3]) + ("; ..." if len(exc.errors) > 3 else "")
        ctx.config_result = Result(
            "config", "fail",
            f"{path}: {len(exc.errors)} error(s), the daemon would start in safe mode: {errors}")
        return ctx
    ctx.config_result = Result("config", "ok", f"{path}: valid for a {ctx.board.name}")
    return ctx


def check_config(ctx: Context) -> Result:
    assert ctx.config_result is not None
    return ctx.config_result


def check_board(ctx: Context) -> Result | None:
    board = ctx.board
    if board is None:
        return None
    preset = ctx.cfg.video.x264_preset
    hw = (f"hardware H.264 {board.hw_mbps:,} macroblocks/s" if board.hw_mbps
          else "no hardware H.264")
    sw_budget = board.sw_mbps(preset)
    sw = (f"x264 about {sw_budget:,} macroblocks/s at {preset}" if sw_budget
          else "x264 without a set limit")
    how = " (APPLIANCE_BOARD)" if os.environ.get("APPLIANCE_BOARD") else ""
    return Result("board", "ok", f"{board.name}{how}: {hw}, {sw}")


# -- camera and encoders -----------------------------------------------------------------

def pi_cameras() -> list[str] | None:
    """The cameras libcamera lists through picamera2; None when picamera2 is not installed.
    A broken libcamera install raises."""
    if importlib.util.find_spec("picamera2") is None:
        return None
    from picamera2 import Picamera2

    return [str(i.get("Model", "camera")) for i in Picamera2.global_camera_info()]


def check_camera(ctx: Context) -> Result:
    from appliance.capture.source import SourceError
    from appliance.capture.v4l2 import query_caps

    video = ctx.cfg.video
    if video.source == "synthetic":
        return Result("camera", "ok", "synthetic source configured: test pictures, no camera")
    if video.source in ("picamera2", "auto"):
        try:
            cams = pi_cameras()
            why = ("picamera2 is not installed (apt install python3-picamera2)" if cams is None
                   else "libcamera lists no camera: check the ribbon cable and "
                        "camera_auto_detect in config.txt")
        except Exception as exc:  # a broken libcamera: no usable camera
            cams, why = [], f"picamera2 cannot list cameras: {type(exc).__name__}: {exc}"
        if cams:
            return Result("camera", "ok", f"Pi camera: {', '.join(cams)} (picamera2)")
        if video.source == "picamera2":
            return Result("camera", "fail", why)
    try:
        caps = query_caps(video.device)
        if caps.capture:
            return Result("camera", "ok", f"{video.device}: {caps.card} ({caps.driver}), V4L2")
        reason = f"{video.device} ({caps.card}, {caps.driver}) is not a capture device"
    except SourceError as exc:
        reason = str(exc)
    if video.source == "v4l2":
        return Result("camera", "fail", reason)
    return Result("camera", "warn", f"no camera, the synthetic source only: {reason}")


def codec_available(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
    except Exception:  # av.codec.codec.UnknownCodecError, or a codec that cannot encode
        return False
    return True


def check_encoder(ctx: Context) -> Result | None:
    from appliance.capture.encoder import (
        PI_H264_ENCODER,
        PI_H264_ENCODER_CARD,
        hardware_h264_available,
    )

    if ctx.board is None:
        return None
    try:
        plan = plan_encoders(ctx.cfg.video, ctx.board)
    except LadderError as exc:
        return Result("encoder", "fail", f"the ladder does not fit this board: {exc}")
    hw_rungs = [p.name for p in plan if p.encoder == "hardware"]
    sw_rungs = [p.name for p in plan if p.encoder == "x264"]
    hw = hardware_h264_available()
    parts = []
    if hw_rungs:
        if not hw:
            return Result("encoder", "fail",
                          f"{'/'.join(hw_rungs)} need(s) the hardware H.264 encoder, and "
                          f"{PI_H264_ENCODER} ({PI_H264_ENCODER_CARD}) is missing")
        parts.append(f"hardware H.264 ({PI_H264_ENCODER}) for {'/'.join(hw_rungs)}")
    if sw_rungs:
        if not codec_available("libx264"):
            return Result("encoder", "fail",
                          f"{'/'.join(sw_rungs)} need(s) x264, and PyAV has no libx264")
        parts.append(f"x264 for {'/'.join(sw_rungs)}")
    if ctx.cfg.audio.enabled:
        if not codec_available("aac"):
            return Result("encoder", "fail", "audio is on, and PyAV has no AAC encoder")
        parts.append("AAC")
    if hw and not hw_rungs:
        parts.append(f"{PI_H264_ENCODER} present, not used by this ladder")
    return Result("encoder", "ok", "; ".join(parts))


# -- GPIO and modem ------------------------------------------------------------------------

def check_gpio(ctx: Context, chips: Sequence[str] | None = None) -> Result:
    chips = sorted(glob.glob("/dev/gpiochip*")) if chips is None else list(chips)
    gpiozero = importlib.util.find_spec("gpiozero") is not None
    on_pi = ctx.board is not None and ctx.board.device
    problems = []
    if not chips:
        problems.append("no /dev/gpiochip*")
    else:
        denied = [c for c in chips if not os.access(c, os.R_OK | os.W_OK)]
        if denied:
            problems.append(f"no permission on {', '.join(denied)} (is this user in group gpio?)")
    if not gpiozero:
        problems.append("gpiozero is not installed")
    if not problems:
        return Result("gpio", "ok", f"{', '.join(chips)}; gpiozero")
    if on_pi:
        return Result("gpio", "fail", "; ".join(problems) + ": the LEDs and button cannot work")
    return Result("gpio", "warn", "; ".join(problems)
                  + ": not a Pi, the LEDs show on the web page only")


def _configured_modem(cfg: Config) -> tuple[str, int] | None:
    """The [modem] table's port and baud rate when the monitor is enabled."""
    modem: Any = getattr(cfg, "modem", None)
    if modem is None or not getattr(modem, "enabled", False) or not modem.port:
        return None
    return str(modem.port), int(getattr(modem, "baud", 115200))


def _raw_serial(fd: int, baud: int) -> None:
    """8N1 at `baud`, no echo, no line editing, no translation: bytes as they come."""
    attrs = termios.tcgetattr(fd)
    attrs[0] = 0  # iflag
    attrs[1] = 0  # oflag
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL  # cflag
    attrs[3] = 0  # lflag
    attrs[4] = attrs[5] = getattr(termios, f"B{baud}", termios.B115200)
    attrs[6][termios.VMIN] = 0
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIOFLUSH)


_FINAL = re.compile(rb"^(OK|ERROR|\+CM[ES] ERROR:.*)$")


def probe_at(port: str, baud: int = 115200, timeout: float = MODEM_TIMEOUT_S) -> str | None:
    """Send AT to a modem's port; its final result ("OK", "ERROR", "+CME ERROR: ...") or
    None when nothing sensible came back in time. OSError when the port cannot be opened."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if os.isatty(fd):
            _raw_serial(fd, baud)
        os.write(fd, b"AT\r")
        deadline = time.monotonic() + timeout
        buf = b""
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 256)
            except BlockingIOError:
                continue
            if not chunk:  # hung up: unplugged
                return None
            buf += chunk
            for line in buf.replace(b"\r", b"\n").split(b"\n"):
                if _FINAL.match(line.strip()):
                    return line.strip().decode("ascii", "replace")
        return None
    finally:
        os.close(fd)


def check_modem(ctx: Context) -> Result | None:
    configured = _configured_modem(ctx.cfg)
    port, baud = (ctx.modem, 115200) if ctx.modem else configured or (None, 115200)
    if port is None:
        return None  # no modem configured: no line
    if not os.path.exists(port):
        return Result("modem", "fail", f"{port} does not exist (modem unplugged?)")
    try:
        answer = probe_at(port, baud)
    except PermissionError:
        return Result("modem", "fail", f"no permission to open {port} (group dialout?)")
    except OSError as exc:
        return Result("modem", "fail", f"cannot open {port}: {exc.strerror}")
    if answer == "OK":
        return Result("modem", "ok", f"{port} answers AT")
    if answer is None:
        return Result("modem", "fail", f"{port}: no answer to AT within {MODEM_TIMEOUT_S:g} s")
    return Result("modem", "warn", f"{port} answers AT with {answer}")


# -- network libraries and tools -----------------------------------------------------------

def _schemes(cfg: Config) -> set[str]:
    schemes = {urlsplit(u.url).scheme for u in cfg.uplink if u.enabled}
    if cfg.fleet is not None:
        schemes.add(urlsplit(cfg.fleet.broker).scheme)
    return schemes


def check_srt(ctx: Context) -> Result:
    from appliance.uplink.srt import SrtError, library

    try:
        lib = library()
    except SrtError as exc:
        status: Status = "fail" if "srt" in _schemes(ctx.cfg) else "warn"
        return Result("srt", status, f"{exc}: SRT uplinks cannot work")
    v = int(lib.srt_getversion())
    return Result("srt", "ok", f"libsrt {v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF} "
                               f"({Path(str(lib._name)).name}) for SRT uplinks")


def check_tls(ctx: Context) -> Result:
    paths = ssl.get_default_verify_paths()
    context = ssl.create_default_context()
    cas = context.cert_store_stats()["x509_ca"]
    if not cas and paths.capath and os.path.isdir(paths.capath):
        # A hashed directory is read on demand, so the store counts none yet.
        cas = len(glob.glob(os.path.join(paths.capath, "*.[0-9]")))
    where = paths.cafile or paths.capath or "no default path"
    if cas:
        return Result("tls", "ok", f"{cas} trusted CAs ({where}) for RTMPS and MQTTS")
    needed = _schemes(ctx.cfg) & {"rtmps", "mqtts"}
    status: Status = "fail" if needed else "warn"
    return Result("tls", status, f"no trusted CA certificates ({where}): RTMPS and MQTTS "
                                 "cannot verify origins (apt install ca-certificates)")


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version:?\s*(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "present"


def check_tools(ctx: Context) -> Result:
    """ffmpeg, ffprobe and srt-live-transmit: the daemon needs none of them (it encodes with
    PyAV, sends SRT through libsrt and RTMP with its own client); tests and bench do."""
    found: list[str] = []
    missing: list[str] = []
    for tool, argv in (("ffmpeg", ["-version"]), ("ffprobe", ["-version"]),
                       ("srt-live-transmit", ["-version"])):
        path = shutil.which(tool)
        version = _version([path, *argv]) if path else None
        (found if version else missing).append(f"{tool} {version}" if version else tool)
    detail = ", ".join(found) if found else "none"
    if shutil.which("ffmpeg"):
        try:
            out = subprocess.run(["ffmpeg", "-hide_banner", "-protocols"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout
            protocols = sorted(set(out.split()) & {"srt", "rtmp", "rtmps"})
            detail += f" (ffmpeg protocols: {' '.join(protocols) or 'none of srt/rtmp(s)'})"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    return Result("tools", "info", detail + "; for tests and tools only, the daemon uses none")


# -- disk and clock ------------------------------------------------------------------------

class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(ctx: Context,
               usage: Callable[[Path], DiskUsage | Any] = shutil.disk_usage) -> Result:
    where = _existing(ctx.state_dir)
    du = usage(where)
    need = max(MIN_FREE_BYTES, int(du.total * MIN_FREE_FRACTION))
    free_pct = 100 * du.free / du.total if du.total else 0.0
    detail = (f"{ctx.state_dir}: {du.free / 1e9:.2f} GB free of {du.total / 1e9:.2f} GB "
              f"({free_pct:.0f}%)")
    if du.free < need:
        return Result("disk", "fail", f"{detail}, under the {need / 1e6:.0f} MB needed "
                                      "(recordings, credentials, config)")
    if where == ctx.state_dir and not os.access(where, os.W_OK):
        return Result("disk", "fail", f"{detail}, not writable by this user")
    return Result("disk", "ok", detail)


class _Timex(ctypes.Structure):
    # struct timex up to `status`; the kernel writes the rest into the padding.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("_rest", ctypes.c_byte * 256)]


TIME_ERROR: Final = 5
STA_UNSYNC: Final = 0x0040


def clock_synchronized() -> bool | None:
    """The kernel's NTP state, as timedatectl's NTPSynchronized reads it (adjtimex with no
    change); None when it cannot be read."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR and not timex.status & STA_UNSYNC


def check_clock(ctx: Context, synced: Callable[[], bool | None] = clock_synchronized) -> Result:
    state = synced()
    if state is None:
        return Result("clock", "warn", "cannot tell whether the clock is synchronized")
    if state:
        return Result("clock", "ok", "synchronized (NTP)")
    return Result("clock", "warn", "not synchronized: program date-times in playlists and the "
                                   "latency stamp may be off (no network, or NTP not running)")


# -- all of it -----------------------------------------------------------------------------

CHECKS: Final[tuple[Callable[[Context], Result | None], ...]] = (
    check_config, check_board, check_camera, check_encoder, check_gpio, check_modem,
    check_srt, check_tls, check_tools, check_disk, check_clock,
)


def run_checks(ctx: Context) -> list[Result]:
    results = []
    for check in CHECKS:
        try:
            result = check(ctx)
        except Exception as exc:  # a probe that breaks is a finding, not a crash
            name = check.__name__.removeprefix("check_")
            result = Result(name, "fail", f"check failed: {type(exc).__name__}: {exc}")
        if result is not None:
            results.append(result)
    return results


def main(config_path: Path | None, state_dir: Path, modem: str | None = None) -> int:
    """Print one line per check; 1 when any failed, else 0."""
    results = run_checks(load_context(config_path, state_dir, modem))
    encoding = sys.stdout.encoding or "ascii"
    try:
        "✓✗".encode(encoding)
        symbols = True
    except (UnicodeEncodeError, LookupError):
        symbols = False
    for r in results:
        print(format_result(r, symbols), flush=True)
    failed = [r.name for r in results if r.status == "fail"]
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
