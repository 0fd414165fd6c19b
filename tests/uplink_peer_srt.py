"""srt-live-transmit as listener or caller, with a passphrase, writing what it receives
to a file and its statistics (JSON) to another."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.uplink_peer_common import require, wait_for


class SrtPeer:
    """srt-live-transmit receiving SRT into `out` (MPEG-TS as sent), stats as JSON lines.

    `mode="listener"`: it listens on `port` (the appliance calls it, SRT caller mode);
    `mode="caller"`: it calls the appliance listening on `port`. The passphrase is on its
    command line: that is the test peer's, never the appliance's.
    """

    def __init__(self, workdir: Path, passphrase: str | None = None,
                 mode: str = "listener", port: int | None = None, latency_ms: int = 120,
                 netns: str | None = None, host: str = "127.0.0.1"):
        require("srt-live-transmit")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.passphrase, self.mode = workdir, passphrase, mode
        self.port = port or free_udp_port()
        self.latency_ms, self.netns, self.host = latency_ms, netns, host
        self.out = workdir / "received.ts"
        self.stats_path = workdir / "stats.json"
        self.stderr_path = workdir / "srt-live-transmit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def uri(self) -> str:
        params = {"mode": self.mode, "latency": str(self.latency_ms)}
        if self.passphrase:
            params["passphrase"] = self.passphrase
        # srt-live-transmit takes the query as it is, without %-decoding: keep the test
        # passphrases to letters, digits and -_.
        assert all(v.replace("-", "").replace("_", "").replace(".", "").isalnum()
                   for v in params.values()), params
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"srt://{self.host}:{self.port}?{query}"

    def start(self) -> float:
        """Start (a listener: and wait until it is bound). Returns time.monotonic() of the
        start: a caller may well connect before this returns."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        started = time.monotonic()
        self.runs += 1
        argv = [require("srt-live-transmit"), "-a", "no", "-s", "100",
                "-statsout", str(self.stats_path), "-pf", "json", "-f",
                self.uri(), "file://con"]
        if self.netns:
            argv = [require("ip"), "netns", "exec", self.netns, *argv]
        with open(self.out, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        if self.mode == "listener":
            # UDP: nothing to connect to. Wait until the socket is bound.
            wait_for(lambda: self._bound(), 5, "srt-live-transmit to bind")
        return started

    def _bound(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"srt-live-transmit exited: {self.log()}")
        if self.netns:
            time.sleep(0.3)
            return True
        hexport = f":{self.port:04X} "
        with contextlib.suppress(OSError):
            for table in ("/proc/net/udp", "/proc/net/udp6"):
                if hexport in Path(table).read_text():
                    return True
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 5) -> float:
        """SIGINT: it closes its connection (the sender hears of it); SIGKILL: it vanishes
        without a word, as an origin on a pulled cable does. Returns when it is gone."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def received(self) -> int:
        return self.out.stat().st_size if self.out.exists() else 0

    def connections(self) -> int:
        """Connections it accepted as listener, over all its runs (from its stderr)."""
        return self.log(whole=True).count("Accepted SRT source connection")

    def log(self, whole: bool = False) -> str:
        if not self.stderr_path.exists():
            return ""
        text = self.stderr_path.read_text(errors="replace")
        return text if whole else text[-3000:]

    def stats(self) -> list[dict[str, Any]]:
        """Every report srt-live-transmit wrote (JSON objects, one after another)."""
        if not self.stats_path.exists():
            return []
        text = self.stats_path.read_text(errors="replace")
        out: list[dict[str, Any]] = []
        decoder = json.JSONDecoder()
        i = 0
        while True:
            start = text.find("{", i)
            if start < 0:
                return out
            try:
                obj, i = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                return out  # the last report is being written
            if isinstance(obj, dict):
                out.append(obj)

    def receiver_drops(self) -> int:
        """Packets the receiver dropped (too late to play), the highest total reported."""
        drops = [int(r.get("recv", {}).get("packetsDropped", 0)) for r in self.stats()]
        return max(drops, default=0)

    def close(self) -> None:
        self.stop()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
