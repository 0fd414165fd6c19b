"""Start the real `appliance run` as a child process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 10) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return bytes(r.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


# One x264 rung, the track most tests read. The dev default ladder (720p/480p/360p)
# costs 1.7x the CPU of this rung alone on a 2-core test machine, and most daemon tests are
# about something else; a test of the ladder asks for it with `full_ladder=True`.
SINGLE_RUNG = """
[[video.ladder]]
name = "720p"
width = 1280
height = 720
bitrate_kbps = 3000
"""


def _video_table(toml: str) -> str:
    return toml.split("[video]", 1)[1].split("\n[", 1)[0] if "[video]" in toml else ""


def default_config(port: int, extra: str = "", *, full_ladder: bool = False) -> str:
    """Web on `port`, `extra` TOML, and the synthetic source unless `extra` names one
    (the default, auto, would take a webcam plugged into the developer's machine).

    The ladder is SINGLE_RUNG unless `extra` sets a ladder or the capture size (whose
    default ladder then follows it), or `full_ladder` asks for the board's default.
    """
    synthetic = 'source = "synthetic"\n'
    if "[video]" not in extra:
        extra = "[video]\n" + synthetic + extra
    elif "source" not in _video_table(extra):
        extra = extra.replace("[video]\n", "[video]\n" + synthetic, 1)
    video = _video_table(extra)
    own_ladder = "video.ladder" in extra or any(k in video for k in ("ladder", "width", "height"))
    if not (full_ladder or own_ladder):
        extra += SINGLE_RUNG
    return f'[web]\nlisten = "127.0.0.1:{port}"\n' + extra


@contextlib.contextmanager
def running_daemon(tmp_path: Path, config: str | None = None, extra: str = "",
                   wait_for: str | None = "/healthz", timeout: float = 20, *,
                   full_ladder: bool = False, env: dict[str, str] | None = None,
                   ) -> Iterator[DaemonProc]:
    """Run the daemon with `config` (default: `default_config` with `extra` and
    `full_ladder`); `env` adds to the environment (e.g. APPLIANCE_BOARD)."""
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(config.replace("{port}", str(port)) if config
                   else default_config(port, extra, full_ladder=full_ladder))
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(cfg),
             "--state-dir", str(tmp_path / "state")],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
        )
    d = DaemonProc(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        if wait_for is not None:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {proc.returncode}:\n{d.log()}")
                try:
                    d.get(wait_for, timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{wait_for} not served:\n{d.log()}") from None
                    time.sleep(0.1)
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
