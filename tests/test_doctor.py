"""`appliance doctor`: the real command on this machine, and each way a check can fail.

This machine has no camera, GPIO chip or hardware encoder, so the command is also run
as a Pi 4 would see it (APPLIANCE_BOARD=pi4: the ladder then needs /dev/video11), with
a V4L2 camera that is missing, with an invalid config, against a modem simulator on a
pty (answering, silent, erroring) and with the state directory on a 1 MB tmpfs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance import doctor
from appliance.board import GENERIC, PI4
from appliance.config.schema import Config
from appliance.doctor import (
    Context,
    DiskUsage,
    Result,
    check_clock,
    check_disk,
    check_gpio,
    format_result,
    run_checks,
)

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?:[✓!✗i] )?(OK|WARN|FAIL|INFO) +([a-z]+) +(\S.*)$")
SYNTHETIC = '[video]\nsource = "synthetic"\n'


def doctor_cmd(tmp_path: Path, config: str | None = SYNTHETIC, *args: str,
               env: dict[str, str] | None = None,
               prefix: tuple[str, ...] = ()) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run `appliance doctor`; (exit code, {check: (status, detail)}, stdout)."""
    argv = [*prefix, sys.executable, "-m", "appliance", "doctor", "--state-dir",
            str(tmp_path / "state"), *args]
    if config is not None:
        (tmp_path / "appliance.toml").write_text(config)
        argv += ["--config", str(tmp_path / "appliance.toml")]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})})
    checks = {}
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        assert m, f"not a check line: {line!r}\n{out.stdout}{out.stderr}"
        assert m.group(2) not in checks, f"{m.group(2)} twice"
        checks[m.group(2)] = (m.group(1), m.group(3))
    return out.returncode, checks, out.stdout + out.stderr


def test_doctor_on_this_machine(tmp_path: Path) -> None:
    code, checks, text = doctor_cmd(tmp_path)
    assert code == 0, text
    assert list(checks) == ["config", "board", "camera", "encoder", "gpio", "srt", "tls",
                            "tools", "disk", "clock"]  # no modem configured: no line
    assert checks["config"] == ("OK", f"{tmp_path / 'appliance.toml'}: valid for a "
                                      "development machine")
    assert checks["camera"][0] == "OK" and "synthetic" in checks["camera"][1]
    assert checks["encoder"] == ("OK", "x264 for 720p/480p/360p; AAC")
    assert checks["board"][0] == "OK" and checks["board"][1].startswith("development machine")
    assert checks["tools"][0] == "INFO" and "the daemon uses none" in checks["tools"][1]
    assert checks["disk"][0] == "OK" and str(tmp_path / "state") in checks["disk"][1]
    assert not any(status == "FAIL" for status, _ in checks.values())
    if shutil.which("ffmpeg"):
        assert "ffmpeg " in checks["tools"][1]
    assert "✓ OK   config" in text


def test_an_invalid_config_fails(tmp_path: Path) -> None:
    code, checks, _ = doctor_cmd(tmp_path, SYNTHETIC + "fps = 1000\n")
    assert code == 1
    status, detail = checks["config"]
    assert status == "FAIL" and "video.fps" in detail and "safe mode" in detail


def test_a_missing_v4l2_camera_fails_and_auto_only_warns(tmp_path: Path) -> None:
    missing = next(f"/dev/video{i}" for i in range(64, 128) if not os.path.exists(f"/dev/video{i}"))
    code, checks, _ = doctor_cmd(tmp_path, f'[video]\nsource = "v4l2"\ndevice = "{missing}"\n')
    assert code == 1
    assert checks["camera"] == ("FAIL", f"V4L2 device {missing} does not exist (no camera "
                                        "connected?)")
    code, checks, text = doctor_cmd(tmp_path, f'[video]\nsource = "auto"\ndevice = "{missing}"\n')
    assert code == 0, text
    assert checks["camera"][0] == "WARN" and "synthetic source only" in checks["camera"][1]


def test_a_pi4_without_its_hardware_encoder_and_gpio_fails(tmp_path: Path) -> None:
    if os.path.exists("/dev/video11") or any(Path("/dev").glob("gpiochip*")):
        pytest.skip("this machine has /dev/video11 or a GPIO chip")
    code, checks, _ = doctor_cmd(tmp_path, env={"APPLIANCE_BOARD": "pi4"})
    assert code == 1
    assert checks["board"] == ("OK", "Raspberry Pi 4 (APPLIANCE_BOARD): hardware H.264 "
                                     "245,760 macroblocks/s, x264 about 176,000 "
                                     "macroblocks/s at superfast")
    status, detail = checks["encoder"]
    assert status == "FAIL"
    assert detail == ("1080p need(s) the hardware H.264 encoder, and /dev/video11 "
                      "(bcm2835-codec-encode) is missing")
    assert checks["gpio"][0] == "FAIL" and "no /dev/gpiochip*" in checks["gpio"][1]


# -- the modem: a simulator on a pty answers as a modem would, or does not ---------------


@contextmanager
def modem(answer: bytes | None) -> Iterator[str]:
    """A pty whose far end echoes what it is sent and answers each command with `answer`
    (None: silence). Yields the port's path."""
    master, slave = os.openpty()
    stop = threading.Event()

    def serve() -> None:
        buf = b""
        while not stop.is_set():
            try:
                data = os.read(master, 256)
            except OSError:
                return
            buf += data
            while b"\r" in buf:
                command, buf = buf.split(b"\r", 1)
                if answer is not None:
                    os.write(master, command + b"\r\r\n" + answer + b"\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield os.ttyname(slave)
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
        t.join(timeout=2)


@pytest.mark.parametrize(("answer", "status", "detail", "code"), [
    (b"OK", "OK", "answers AT", 0),
    (b"+CME ERROR: 10", "WARN", "answers AT with +CME ERROR: 10", 0),
    (None, "FAIL", "no answer to AT within 2 s", 1),
])
def test_modem(tmp_path: Path, answer: bytes | None, status: str, detail: str, code: int) -> None:
    with modem(answer) as port:
        rc, checks, text = doctor_cmd(tmp_path, SYNTHETIC, "--modem", port)
    assert checks["modem"] == (status, f"{port}: {detail}" if status == "FAIL"
                               else f"{port} {detail}"), text
    assert rc == code


def test_the_configured_modem_is_asked_and_a_disabled_one_is_not(tmp_path: Path) -> None:
    if "modem" not in Config.model_fields:
        pytest.skip("no [modem] table in the config schema")
    with modem(b"OK") as port:
        table = f'[modem]\nport = "{port}"\nbaud = 9600\n'
        rc, checks, text = doctor_cmd(tmp_path, SYNTHETIC + table + "enabled = true\n")
        assert (rc, checks["modem"]) == (0, ("OK", f"{port} answers AT")), text
        rc, checks, text = doctor_cmd(tmp_path, SYNTHETIC + table + "enabled = false\n")
        assert rc == 0 and "modem" not in checks, text


def test_a_modem_port_that_is_gone_fails(tmp_path: Path) -> None:
    rc, checks, _ = doctor_cmd(tmp_path, SYNTHETIC, "--modem", "/dev/ttyUSB97")
    assert rc == 1
    assert checks["modem"] == ("FAIL", "/dev/ttyUSB97 does not exist (modem unplugged?)")


# -- disk --------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="mounting a tmpfs (in a private mount namespace) needs root")
def test_a_full_state_disk_fails(tmp_path: Path) -> None:
    """The state directory on a real 1 MB tmpfs, mounted in a mount namespace of the
    command's own, so nothing outside it sees the mount."""
    state = tmp_path / "state"
    state.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode().strip()}")
    script = f'mount -t tmpfs -o size=1m appliance-test "{state}" && exec "$@"'
    code, checks, text = doctor_cmd(tmp_path, SYNTHETIC,
                                    prefix=("unshare", "-m", "sh", "-c", script, "sh"))
    assert code == 1, text
    status, detail = checks["disk"]
    assert status == "FAIL"
    assert detail.startswith(f"{state}: 0.00 GB free of 0.00 GB")
    assert "under the 200 MB needed" in detail


@pytest.mark.parametrize(("total", "free", "status"), [
    (100_000_000_000, 4_000_000_000, "fail"),  # 4 % of a big disk
    (100_000_000_000, 6_000_000_000, "ok"),
    (1_000_000_000, 150_000_000, "fail"),  # 15 %, but under 200 MB
    (1_000_000_000, 300_000_000, "ok"),
])
def test_disk_thresholds(tmp_path: Path, total: int, free: int, status: str) -> None:
    ctx = Context(None, tmp_path)
    result = check_disk(ctx, usage=lambda _: DiskUsage(total, total - free, free))
    assert result.status == status, result


def test_an_unwritable_state_dir_fails(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    state = tmp_path / "ro"
    state.mkdir(mode=0o500)
    assert check_disk(Context(None, state)).status == "fail"


# -- the rest ----------------------------------------------------------------------------


def test_clock_states() -> None:
    ctx = Context(None, Path("/"))
    assert check_clock(ctx, lambda: True) == Result("clock", "ok", "synchronized (NTP)")
    assert check_clock(ctx, lambda: False).status == "warn"
    assert check_clock(ctx, lambda: None).status == "warn"
    assert doctor.clock_synchronized() in (True, False, None)


def test_gpio_warns_off_a_pi_and_fails_on_one(tmp_path: Path) -> None:
    chip = tmp_path / "gpiochip0"
    chip.write_text("")
    off_pi, pi = Context(None, tmp_path, board=GENERIC), Context(None, tmp_path, board=PI4)
    assert check_gpio(off_pi, chips=[]).status == "warn"
    assert check_gpio(pi, chips=[]).status == "fail"
    if importlib_has("gpiozero"):
        assert check_gpio(pi, chips=[str(chip)]) == Result("gpio", "ok", f"{chip}; gpiozero")


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_a_check_that_breaks_is_a_failure_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def check_boom(ctx: Context) -> Result:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(doctor, "CHECKS", (check_boom,))
    assert run_checks(Context(None, Path("/"))) == [
        Result("boom", "fail", "check failed: RuntimeError: probe exploded")]


def test_lines_without_symbols_for_terminals_that_cannot_show_them() -> None:
    r = Result("disk", "fail", "full")
    assert format_result(r) == "✗ FAIL disk     full"
    assert format_result(r, symbols=False) == "FAIL disk     full"
