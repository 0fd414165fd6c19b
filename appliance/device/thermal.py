"""SoC temperature and throttling, and a governor that steps the video load down and up.

Readings: the temperature from sysfs (thermal_zone0, millidegrees); the firmware's
throttle flags from `vcgencmd get_throttled` where it is installed (Raspberry Pi OS),
else from the firmware driver's sysfs file where the kernel has it. Bits: 0 under-
voltage, 1 ARM frequency capped, 2 throttled, 3 soft temperature limit, now; 16..19 the
same since boot.

The governor: while the SoC is hot (>= hot_c) or the firmware is capping or throttling
it, continuously for `sustain_s`, it steps the load down one level; after another
`sustain_s` of the same, one more. While it is cool (<= cool_c) and not throttled for
`cool_s`, it steps back up one level. Between cool_c and hot_c nothing changes and both
timers restart (the hysteresis band), so it does not oscillate around one threshold.

The levels (`decimation_for_level`): frame rate, not bitrate, is what costs an encoder,
and the rungs' encoders are where the heat comes from.
  1. the lower rungs at half rate. On a Pi 4 the top rung is on the hardware encoder and
     the lower ones on x264 (appliance.board), so this halves the software encoding,
     the big load, while the rung that uplinks push and most viewers watch stays smooth.
  2. every rung at half rate: the hardware block and the top rung too.
  3. every rung at a third of the rate: two-thirds of the encoding gone, 10 fps from 30,
     still a moving picture and still each part's and segment's frames on the grid.
Going further (stopping rungs) would change what players were told in the playlists,
so it is not a step of its own.

Hub section `thermal`: temp_c, throttled ({under_voltage, freq_capped, throttled,
soft_temp_limit, *_since_boot}, None without the firmware's flags), level, reason,
degraded (level > 0 or throttled or under-voltage now: derive_state shows "degraded").
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.config.schema import Thermal as ThermalConfig
from appliance.device.cpu import CpuLoad
from appliance.status import StatusHub

if TYPE_CHECKING:
    from appliance.capture.encoder import VideoEncoder

log = logging.getLogger(__name__)

MAX_LEVEL = 3
FLAG_BITS = {"under_voltage": 0, "freq_capped": 1, "throttled": 2, "soft_temp_limit": 3}
SINCE_BOOT = 16
# Flags that mean the firmware is holding the SoC back: the load must come down. Under-
# voltage alone is a power supply fault that less encoding does not cure; it shows as
# degraded, and it caps the frequency (bit 1) when it lasts.
THROTTLING = ("freq_capped", "throttled", "soft_temp_limit")
TEMP_FILE = "sys/class/thermal/thermal_zone0/temp"
# The firmware driver's copy of the same bits (raspberrypi-hwmon / rpi firmware).
THROTTLED_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"


def decimation_for_level(level: int, rungs: Sequence[str]) -> dict[str, int]:
    """Encode every Nth frame slot of each rung (ladder order, top rung first) at `level`."""
    if level <= 0:
        return dict.fromkeys(rungs, 1)
    if level == 1:
        return {name: 1 if i == 0 else 2 for i, name in enumerate(rungs)}
    return dict.fromkeys(rungs, 2 if level == 2 else 3)


def apply_level(level: int, encoders: Iterable[VideoEncoder], part_s: float) -> None:
    """Set each rung's decimation for `level`; `encoders` in ladder order (top first), as
    the capture pipeline makes them; `part_s` the packager's part duration."""
    encoders = list(encoders)
    plan = decimation_for_level(level, [e.name for e in encoders])
    for enc in encoders:
        enc.set_decimation(plan[enc.name], part_s)


def parse_throttled(text: str) -> dict[str, bool] | None:
    """The flags of "throttled=0x50005" (vcgencmd) or "50005" (sysfs)."""
    value = text.strip().rpartition("=")[2].strip()
    try:
        bits = int(value, 16)
    except ValueError:
        return None
    flags = {name: bool(bits >> bit & 1) for name, bit in FLAG_BITS.items()}
    flags.update({f"{name}_since_boot": bool(bits >> (bit + SINCE_BOOT) & 1)
                  for name, bit in FLAG_BITS.items()})
    return flags


@dataclass(frozen=True, slots=True)
class Reading:
    temp_c: float | None
    flags: dict[str, bool] | None


class Sensors:
    """Reads the SoC's temperature and throttle flags; `root` stands for / in tests."""

    def __init__(self, root: Path = Path("/"), vcgencmd: str | None = None):
        self.root = root
        self.vcgencmd = vcgencmd if vcgencmd is not None else shutil.which("vcgencmd")

    def read(self) -> Reading:
        return Reading(self._temp(), self._flags())

    def _temp(self) -> float | None:
        try:
            return int((self.root / TEMP_FILE).read_text().strip()) / 1000
        except (OSError, ValueError):
            return None

    def _flags(self) -> dict[str, bool] | None:
        if self.vcgencmd:
            try:
                done = subprocess.run([self.vcgencmd, "get_throttled"], capture_output=True,
                                      text=True, timeout=5, stdin=subprocess.DEVNULL,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.debug("thermal: vcgencmd: %s", exc)
            else:
                flags = parse_throttled(done.stdout) if done.returncode == 0 else None
                if flags is not None:
                    return flags
        try:
            return parse_throttled((self.root / THROTTLED_FILE).read_text())
        except OSError:
            return None


class ThermalGovernor:
    """Polls the sensors on a thread and steps the load level; `on_level` listeners hear
    each new level (on the governor's thread)."""

    def __init__(self, cfg: ThermalConfig, hub: StatusHub, sensors: Sensors | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.cfg, self.hub = cfg, hub
        self.sensors = sensors or Sensors()
        self.clock = clock
        self.on_fatal = on_fatal
        self.level = 0
        self._listeners: list[Callable[[int], None]] = []
        self._hot_since: float | None = None
        self._cool_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_level(self, listener: Callable[[int], None]) -> None:
        """Call `listener(level)` at each change of level (0: full load .. MAX_LEVEL)."""
        self._listeners.append(listener)

    def start(self) -> None:
        if not self.cfg.enabled:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="thermal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        cpu = CpuLoad()
        try:
            while True:
                self.poll()
                # The load that heats the SoC, beside its temperature on the dashboard.
                self.hub.update("device", cpu_percent=cpu.sample())
                if self._stop.wait(self.cfg.poll_s):
                    return
        except Exception as exc:  # a bug: sensors' faults are all handled
            log.exception("thermal governor failed")
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def poll(self) -> int:
        """Read the sensors once, step if it is time; the level after."""
        reading = self.sensors.read()
        now = self.clock()
        temp, flags = reading.temp_c, reading.flags or {}
        throttling = [f for f in THROTTLING if flags.get(f)]
        hot = temp is not None and temp >= self.cfg.hot_c
        cool = not throttling and (temp is None or temp <= self.cfg.cool_c)
        # Neither hot nor cool (the band between): both timers start over.
        self._hot_since = (self._hot_since if self._hot_since is not None else now) if (
            hot or throttling) else None
        self._cool_since = (self._cool_since if self._cool_since is not None else now) if (
            cool and self.level > 0) else None
        reason = self._reason(temp, throttling, flags)
        if self._hot_since is not None and now - self._hot_since >= self.cfg.sustain_s:
            if self.level < MAX_LEVEL:
                self._set_level(self.level + 1, reason)
            self._hot_since = now  # the next step needs as long again
        elif self._cool_since is not None and now - self._cool_since >= self.cfg.cool_s:
            self._set_level(self.level - 1, "cool again")
            self._cool_since = now if self.level > 0 else None
        if self.level > 0 and not (hot or throttling):
            reason = f"load stepped down (level {self.level}), waiting to cool"
        self.hub.update("thermal", temp_c=temp, throttled=reading.flags, level=self.level,
                        reason=reason,
                        degraded=bool(self.level or throttling or flags.get("under_voltage")))
        return self.level

    def _reason(self, temp: float | None, throttling: list[str],
                flags: dict[str, bool]) -> str | None:
        parts = []
        if temp is not None and temp >= self.cfg.hot_c:
            parts.append(f"SoC at {temp:.1f} °C (step down at {self.cfg.hot_c:g} °C)")
        if throttling:
            parts.append("firmware: " + ", ".join(f.replace("_", " ") for f in throttling))
        if flags.get("under_voltage"):
            parts.append("under-voltage: check the power supply")
        return "; ".join(parts) or None

    def _set_level(self, level: int, why: str | None) -> None:
        log.warning("thermal: load level %d -> %d (%s)", self.level, level, why)
        self.level = level
        for listener in self._listeners:
            listener(level)
