"""Thermal readings from a fake sysfs tree and a stand-in vcgencmd; the governor's steps
with an injected clock, so "sustained for 30 s" takes no 30 s."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from appliance.config.schema import Thermal as ThermalConfig
from appliance.device.cpu import CpuLoad
from appliance.device.thermal import (
    TEMP_FILE,
    THROTTLED_FILE,
    Sensors,
    ThermalGovernor,
    decimation_for_level,
    parse_throttled,
)
from appliance.status import StatusHub

# Stand-in for the Raspberry Pi firmware tool: prints what the test put in its file.
# (A shell script: the governor runs it at every poll, thousands of polls per test.)
FAKE_VCGENCMD = """#!/bin/sh
[ "$*" = "get_throttled" ] || {{ echo "error=1 error_msg=\"bad arguments: $*\""; exit 1; }}
cat "$VCGENCMD_OUT"
"""


class Board:
    """A fake / with the SoC's temperature, and a vcgencmd on PATH whose answer can change."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = tmp / "root"
        (self.root / TEMP_FILE).parent.mkdir(parents=True)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        exe = bin_dir / "vcgencmd"
        exe.write_text(FAKE_VCGENCMD.format())
        exe.chmod(0o755)
        self.out = tmp / "throttled"
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("VCGENCMD_OUT", str(self.out))
        self.set(50.0, 0)

    def set(self, temp_c: float, throttled: int) -> None:
        (self.root / TEMP_FILE).write_text(f"{round(temp_c * 1000)}\n")
        self.out.write_text(f"throttled={throttled:#x}\n")


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Board:
    return Board(tmp_path, monkeypatch)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


CFG = ThermalConfig.model_validate({"hot_c": 75, "cool_c": 65, "sustain_s": 30, "cool_s": 120})


def governor(board: Board, hub: StatusHub, clock: Clock,
             cfg: ThermalConfig = CFG) -> tuple[ThermalGovernor, list[int]]:
    gov = ThermalGovernor(cfg, hub, Sensors(board.root), clock=clock)
    levels: list[int] = []
    gov.on_level(levels.append)
    return gov, levels


def run_for(gov: ThermalGovernor, clock: Clock, seconds: float, step: float = 1.0) -> int:
    """Poll every `step` seconds of fake time for `seconds`."""
    end = clock.t + seconds
    while clock.t < end - 1e-9:
        clock.t += step
        gov.poll()
    return gov.level


def test_parse_throttled() -> None:
    flags = parse_throttled("throttled=0x50005\n")
    assert flags is not None
    assert {k for k, v in flags.items() if v} == {
        "under_voltage", "throttled", "under_voltage_since_boot", "throttled_since_boot"}
    assert parse_throttled("e0008") == {
        "under_voltage": False, "freq_capped": False, "throttled": False,
        "soft_temp_limit": True, "under_voltage_since_boot": False,
        "freq_capped_since_boot": True, "throttled_since_boot": True,
        "soft_temp_limit_since_boot": True}
    assert parse_throttled("error=1 error_msg=\"Command not registered\"") is None


def test_sensors(board: Board, tmp_path: Path) -> None:
    board.set(48.312, 0x20002)
    reading = Sensors(board.root).read()
    assert reading.temp_c == pytest.approx(48.312)
    assert reading.flags is not None and reading.flags["freq_capped"]
    assert reading.flags["freq_capped_since_boot"] and not reading.flags["throttled"]
    # No vcgencmd: the firmware driver's sysfs file, where the kernel has it.
    (board.root / THROTTLED_FILE).parent.mkdir(parents=True)
    (board.root / THROTTLED_FILE).write_text("4\n")
    flags = Sensors(board.root, vcgencmd="").read().flags
    assert flags is not None and flags["throttled"] and not flags["freq_capped"]
    # Neither (not a Pi): a temperature if any, no flags.
    empty = Sensors(tmp_path / "nothing", vcgencmd="").read()
    assert empty.temp_c is None and empty.flags is None


def test_levels() -> None:
    rungs = ["720p", "480p", "360p"]
    assert decimation_for_level(0, rungs) == {"720p": 1, "480p": 1, "360p": 1}
    assert decimation_for_level(1, rungs) == {"720p": 1, "480p": 2, "360p": 2}
    assert decimation_for_level(2, rungs) == {"720p": 2, "480p": 2, "360p": 2}
    assert decimation_for_level(3, rungs) == {"720p": 3, "480p": 3, "360p": 3}


def test_steps_down_when_hot_for_long_and_back_when_cool(board: Board) -> None:
    hub, clock = StatusHub(), Clock()
    hub.update("media.video", state="live")
    gov, levels = governor(board, hub, clock)
    board.set(70, 0)
    assert run_for(gov, clock, 60) == 0  # warm, below hot_c
    assert hub.state() == "live_local"
    board.set(80, 0)
    # Hot from the first poll that sees it: 30 s later is "sustained for 30 s".
    assert run_for(gov, clock, 30) == 0
    assert run_for(gov, clock, 1) == 1
    thermal = hub.snapshot()["sections"]["thermal"]
    assert thermal["level"] == 1 and thermal["temp_c"] == 80 and thermal["degraded"]
    assert "80.0 °C" in thermal["reason"]
    assert hub.state() == "degraded"
    assert run_for(gov, clock, 29) == 1  # each further step needs as long again
    assert run_for(gov, clock, 1) == 2
    assert run_for(gov, clock, 120) == 3  # and no further than the last level
    assert levels == [1, 2, 3]
    # In the band between cool_c and hot_c: nothing moves, for however long.
    board.set(70, 0)
    assert run_for(gov, clock, 600, step=5) == 3
    assert hub.state() == "degraded"
    assert "waiting to cool" in hub.snapshot()["sections"]["thermal"]["reason"]
    board.set(60, 0)
    assert run_for(gov, clock, 120) == 3
    assert run_for(gov, clock, 1) == 2
    # A spell in the band restarts the cool timer (hysteresis).
    assert run_for(gov, clock, 100) == 2
    board.set(68, 0)
    run_for(gov, clock, 1)
    board.set(60, 0)
    assert run_for(gov, clock, 120) == 2
    assert run_for(gov, clock, 1) == 1
    assert run_for(gov, clock, 120) == 0
    assert levels == [1, 2, 3, 2, 1, 0]
    assert run_for(gov, clock, 600, step=5) == 0
    thermal = hub.snapshot()["sections"]["thermal"]
    assert thermal["degraded"] is False and thermal["reason"] is None
    assert hub.state() == "live_local"


def test_short_spikes_do_not_step(board: Board) -> None:
    hub, clock = StatusHub(), Clock()
    gov, levels = governor(board, hub, clock)
    for _ in range(10):
        board.set(82, 0)
        run_for(gov, clock, 25)
        board.set(72, 0)  # one poll below hot_c breaks "sustained"
        run_for(gov, clock, 1)
    assert levels == []


def test_firmware_throttling_steps_down_even_when_not_hot(board: Board) -> None:
    hub, clock = StatusHub(), Clock()
    gov, levels = governor(board, hub, clock)
    board.set(60, 0x2)  # the firmware caps the ARM clock (e.g. from under-voltage)
    assert run_for(gov, clock, 31) == 1
    assert "freq capped" in hub.snapshot()["sections"]["thermal"]["reason"]
    board.set(60, 0x20000)  # capped earlier, not now: that is cool
    assert run_for(gov, clock, 121) == 0
    assert levels == [1, 0]
    assert hub.snapshot()["sections"]["thermal"]["throttled"]["freq_capped_since_boot"]


def test_under_voltage_shows_but_does_not_step(board: Board) -> None:
    hub, clock = StatusHub(), Clock()
    hub.update("media.video", state="live")
    gov, levels = governor(board, hub, clock)
    board.set(55, 0x1)
    run_for(gov, clock, 300)
    assert levels == []
    thermal = hub.snapshot()["sections"]["thermal"]
    assert thermal["degraded"] and "power supply" in thermal["reason"]
    assert hub.state() == "degraded"
    # An uplink still connecting is told first.
    hub.update("uplink.a", enabled=True, state="connecting")
    assert hub.state() == "connecting"


def test_runs_on_its_thread_with_the_real_clock(board: Board) -> None:
    hub = StatusHub()
    cfg = ThermalConfig.model_validate({"poll_s": 0.05, "hot_c": 75, "cool_c": 65,
                                       "sustain_s": 0.05, "cool_s": 0.05})
    gov = ThermalGovernor(cfg, hub, Sensors(board.root))
    levels: list[int] = []
    done = threading.Event()

    def listener(level: int) -> None:
        levels.append(level)
        if level == 3:
            done.set()

    gov.on_level(listener)
    board.set(85, 0)
    gov.start()
    try:
        assert done.wait(10)
        board.set(50, 0)
        deadline = time.monotonic() + 10
        while gov.level and time.monotonic() < deadline:
            time.sleep(0.02)
        assert levels == [1, 2, 3, 2, 1, 0]
    finally:
        gov.stop()
    assert gov._thread is None


def test_disabled_never_polls(board: Board) -> None:
    hub = StatusHub()
    cfg = ThermalConfig.model_validate({"enabled": False})
    gov = ThermalGovernor(cfg, hub, Sensors(board.root))
    gov.start()
    gov.stop()
    assert "thermal" not in hub.snapshot()["sections"]


def test_apply_level_to_the_ladder() -> None:
    from appliance.capture.encoder import VideoEncoder
    from appliance.capture.source import Captured
    from appliance.device.thermal import apply_level
    from appliance.media.clock import MediaClock
    from tests.test_decimation import frame

    clock = MediaClock()
    top = VideoEncoder("360p", 320, 180, 30, 400, 1.0, clock, "ultrafast")
    low = VideoEncoder("180p", 320, 180, 30, 200, 1.0, clock, "ultrafast")
    apply_level(1, [top, low], 0.2)
    for n in range(31):  # into the next segment, where a new decimation starts
        for enc in (top, low):
            enc.encode(Captured(frame(n), n * 1_000_000_000 // 30))
    assert (top.decimation, low.decimation) == (1, 2)
    assert top.stats()["decimation"] == 1 and low.stats()["decimation"] == 2


def test_cpu_load_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    load = CpuLoad(stat)
    assert load.sample() is None  # no interval yet
    stat.write_text("cpu  160 0 140 900 0 0 0 0 0 0\n")  # 100 busy of 200 ticks
    assert load.sample() == 50.0
    assert CpuLoad(tmp_path / "missing").sample() is None
    real = CpuLoad()
    real.sample()
    time.sleep(0.05)
    value = real.sample()
    assert value is None or 0 <= value <= 100
