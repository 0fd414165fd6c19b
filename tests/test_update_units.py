"""The update's units (health before boot-complete.target, mark-good after it, the reboot
request) checked by systemd-analyze, and `appliance health` against the real daemon."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import build_parser
from tests.daemon_proc import free_port, running_daemon
from tests.test_systemd_units import INSTALL_PREFIX, run, tool, unit_settings, verify_root

ROOT = Path(__file__).resolve().parents[1]
UNITS = ["appliance-health.service", "appliance-mark-good.service",
         "appliance-update-reboot.path", "appliance-update-reboot.service"]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    root = verify_root(tmp_path, (ROOT / "systemd/appliance.service").read_text())
    for name in UNITS:
        (root / "etc/systemd/system" / name).write_text((ROOT / "systemd" / name).read_text())
    for stub in (f"{INSTALL_PREFIX}/.venv/bin/appliance-boot-backend", "/usr/bin/rauc",
                 "/usr/bin/rm"):
        path = root / stub.lstrip("/")
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    out = run(analyze, "verify", f"--root={root}", *UNITS)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_units_order_health_before_mark_good() -> None:
    health = unit_settings(ROOT / "systemd/appliance-health.service")
    good = unit_settings(ROOT / "systemd/appliance-mark-good.service")
    assert "boot-complete.target" in health["Before"][0].split()
    assert health["RequiredBy"] == ["boot-complete.target"]
    assert good["Requires"] == ["boot-complete.target"]
    assert "boot-complete.target" in good["After"][0].split()
    assert good["ExecStart"] == ["/usr/bin/rauc status mark-good booted"]
    # The health command line is one the CLI takes.
    argv = shlex.split(health["ExecStart"][0])
    assert argv[0] == f"{INSTALL_PREFIX}/.venv/bin/appliance"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "health" and args.reboot_trial and args.timeout == 240
    timeout_start = int(health["TimeoutStartSec"][0])
    assert timeout_start > args.timeout  # systemd must not kill it before it decides
    enabled = (ROOT / "image/enable-units").read_text().split()
    assert {"appliance-health.service", "appliance-mark-good.service",
            "appliance-update-reboot.path"} <= set(enabled)
    path = unit_settings(ROOT / "systemd/appliance-update-reboot.path")
    service = unit_settings(ROOT / "systemd/appliance-update-reboot.service")
    assert path["PathExists"] == ["/var/lib/appliance/update/reboot-requested"]
    assert service["ExecStart"][0] == "/usr/bin/rm -f " + path["PathExists"][0]


def health(url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "health", "--url", url,
                           "--timeout", str(timeout)], capture_output=True, text=True,
                          timeout=timeout + 60, check=False)


def test_health_passes_on_a_live_daemon_and_fails_without_one(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        r = health(d.url, 60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "OK   page" in r.stdout and "OK   source" in r.stdout
        assert "OK   encoder: 720p/index.m3u8 grows" in r.stdout
    r = health(f"http://127.0.0.1:{free_port()}", 1)
    assert r.returncode == 1
    assert "FAIL page" in r.stdout and "FAIL encoder" in r.stdout


def test_health_fails_in_safe_mode(tmp_path: Path) -> None:
    """The page answers, but with a bad config media is off: not a boot to keep."""
    config = '[web]\nlisten = "127.0.0.1:{port}"\n[video]\nfps = 1000\n'  # port: filled in
    with running_daemon(tmp_path, config=config) as d:
        r = health(d.url, 3)
        assert r.returncode == 1
        assert "OK   page" in r.stdout and "FAIL source: device state safe_mode" in r.stdout


@pytest.mark.parametrize(("listen", "tls", "url"), [
    ("127.0.0.1:8080", False, "http://127.0.0.1:8080"),
    ("0.0.0.0:80", True, "https://127.0.0.1:80"),
    ("[::1]:8443", True, "https://[::1]:8443"),
])
def test_health_finds_the_daemon_from_web_listen(listen: str, tls: bool, url: str) -> None:
    from appliance.update.health import local_url

    assert local_url(listen, tls) == url
