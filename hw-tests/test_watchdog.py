"""The installed service on the board: systemd's watchdog restarts a stuck daemon.

Needs the units of systemd/ installed and enabled (README, "Install as a service"), and
root: `sudo .venv/bin/pytest hw-tests/test_watchdog.py`. The service is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

UNIT = "appliance.service"
# After the watchdog fires: SIGABRT (TimeoutAbortSec=10s at most), RestartSec=2s, then
# the start up to READY (the camera and encoders open in a few seconds).
RESTART_MARGIN_S = 45.0

pytestmark = pytest.mark.pi


def show(*props: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", UNIT, *(f"--property={p}" for p in props)],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def service_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: sudo .venv/bin/pytest hw-tests/test_watchdog.py"
    if not Path("/run/systemd/system").is_dir():
        return "systemd is not the init system here"
    if show("LoadState").get("LoadState") != "loaded":
        return f"{UNIT} is not installed (README.md, 'Install as a service')"
    return None


def wait_active(timeout: float, not_pid: int | None = None) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        state = show("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText",
                     "WatchdogUSec", "Result")
        if state["ActiveState"] == "active" and int(state["MainPID"]) not in (0, not_pid):
            return state
        assert time.monotonic() < deadline, f"{UNIT} not active again: {state}"
        time.sleep(0.5)


@pytest.fixture
def service() -> Iterator[dict[str, str]]:
    if (reason := service_skip_reason()) is not None:
        pytest.skip(reason)
    # Type=notify: start returns once the daemon sent READY=1.
    subprocess.run(["systemctl", "start", UNIT], check=True, timeout=120)
    yield wait_active(30)
    subprocess.run(["systemctl", "start", UNIT], check=False, timeout=120)


def test_ready_status_and_watchdog_are_set(service: dict[str, str]) -> None:
    assert service["SubState"] == "running"
    assert int(service["WatchdogUSec"]) == 10_000_000
    assert service["StatusText"].startswith(("live:", "starting", "no source:", "safe mode:",
                                             "connecting:", "degraded:")), service


def test_the_journal_has_structured_entries(service: dict[str, str]) -> None:
    out = subprocess.run(["journalctl", "--unit", UNIT, "--output=json", "--lines=200",
                          f"_PID={service['MainPID']}"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert entries, "no journal entries from the running daemon"
    components = {e.get("COMPONENT") for e in entries}
    assert "daemon" in components and None not in components, components


def test_a_stopped_daemon_is_restarted_by_the_watchdog(service: dict[str, str]) -> None:
    pid, restarts = int(service["MainPID"]), int(service["NRestarts"])
    watchdog_s = int(service["WatchdogUSec"]) / 1e6
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    os.kill(pid, signal.SIGSTOP)  # no ping can come any more
    t0 = time.monotonic()
    state = wait_active(watchdog_s + RESTART_MARGIN_S, not_pid=pid)
    took = time.monotonic() - t0
    assert int(state["NRestarts"]) == restarts + 1
    assert took > watchdog_s * 0.8, f"restarted after {took:.1f} s: not by the watchdog?"
    log = subprocess.run(["journalctl", "--unit", UNIT, f"--since={since}", "--no-pager"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert "Watchdog timeout" in log, log[-3000:]
