"""Supervision: an unexpected failure in a component ends the daemon with a non-zero status."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.capture.source import Captured
from appliance.daemon import Daemon
from tests.daemon_proc import default_config, free_port


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
