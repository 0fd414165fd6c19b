"""Supervision: an unexpected failure in a component ends the daemon with a non-zero status."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from appliance.capture.source import Captured
from appliance.daemon import Daemon
from tests.daemon_proc import DaemonProc, default_config, free_port, running_daemon


class BrokenCamera:
    """Stands in for a camera driver that returns garbage: a bug, not an expected fault."""

    width, height, fps = 640, 360, 30

    def read(self) -> Captured:
        raise RuntimeError("driver returned a corrupt buffer")

    def close(self) -> None:
        pass


async def test_unexpected_component_error_ends_the_daemon_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import appliance.capture.open as open_mod

    monkeypatch.setattr(open_mod, "open_video", lambda cfg, clock: BrokenCamera())
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(default_config(free_port(), "[audio]\nenabled = false\n"))
    status = await Daemon(cfg, tmp_path / "state").run()
    assert status == 1


def test_sighup_applies_uplink_changes_and_keeps_running(tmp_path: Path) -> None:
    """SIGHUP re-reads the file: a new destination starts, a bad edit is refused with
    the key named and the running config kept, and the daemon serves on throughout."""
    dead = free_port()  # nothing listens: the new destination keeps retrying
    with running_daemon(tmp_path) as d:
        cfg = tmp_path / "appliance.toml"
        base = cfg.read_text()
        cfg.write_text(base + f'[[uplink]]\nname = "added"\nurl = "rtmp://127.0.0.1:{dead}/live"\n'
                              'key = "k-0123456789"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "uplink added: cannot connect")
        cfg.write_text(base + '[[uplink]]\nname = "bad"\nurl = "ftp://host/x"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "reload: config")
        assert "uplink[0].url" in d.log() and "kept the running config" in d.log()
        assert "k-0123456789" not in d.log()
        assert json.loads(d.get("/healthz"))["ok"] is True
        assert d.proc.poll() is None


def wait_for_log(d: DaemonProc, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in d.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{d.log()}"
        time.sleep(0.1)
