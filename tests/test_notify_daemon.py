"""sd_notify and journald: the real daemon against a real NOTIFY_SOCKET, and the rules alone.

The daemon runs as a child with NOTIFY_SOCKET pointing at a datagram socket this test
binds, as systemd's would be, and WATCHDOG_USEC set. A stalled camera is made for real:
the capture thread is stopped inside its frame-pacing sleep with ptrace (PTRACE_SEIZE +
PTRACE_INTERRUPT on that one thread), as a driver's blocking read would hold it, while
the event loop and every other thread run on. Nothing in the daemon is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.notify import LIVE_TOLERANCE_S
from tests.daemon_proc import DaemonProc, running_daemon

WATCHDOG_USEC = 2_000_000  # pings every second
PING_S = WATCHDOG_USEC / 2e6

# -- a systemd stand-in: the notification socket ---------------------------------------


@dataclass
class Message:
    at: float  # time.monotonic() when received
    pid: int  # the sender, from SCM_CREDENTIALS (what NotifyAccess=main checks)
    fields: list[str]


class NotifySocket:
    """An AF_UNIX datagram socket like systemd's NOTIFY_SOCKET, read on a thread."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        creds = struct.Struct("iII")  # struct ucred: pid, uid, gid
        while not self._closed:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = creds.unpack(payload[: creds.size])[0]
            with self._lock:
                self.messages.append(Message(time.monotonic(), pid,
                                             data.decode().strip("\n").split("\n")))

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def times(self, field: str, since: float = 0.0) -> list[float]:
        return [m.at for m in self.snapshot() if field in m.fields and m.at >= since]

    def statuses(self) -> list[str]:
        return [f[len("STATUS="):] for m in self.snapshot() for f in m.fields
                if f.startswith("STATUS=")]

    def wait_for(self, predicate: Any, timeout: float, what: str, d: DaemonProc) -> Message:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            messages = self.snapshot()
            for m in messages[seen:]:
                if predicate(m):
                    return m
            seen = len(messages)
            assert d.proc.poll() is None, f"daemon exited:\n{d.log()}"
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s; got {self.snapshot()}\n{d.log()}")

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self.sock.close()


@contextlib.contextmanager
def notified_daemon(tmp_path: Path, **kwargs: Any) -> Iterator[tuple[DaemonProc, NotifySocket]]:
    ns = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    try:
        with running_daemon(tmp_path, env=env, **kwargs) as d:
            yield d, ns
    finally:
        ns.close()


def field_startswith(prefix: str) -> Any:
    return lambda m: any(f.startswith(prefix) for f in m.fields)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# -- stalling one thread of the daemon for real ------------------------------------------

PTRACE_CONT, PTRACE_DETACH = 7, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000  # __WALL: wait for a thread that is not the process leader
# nanosleep and clock_nanosleep (and its time64 twin on 32-bit ARM), which time.sleep uses.
SLEEP_SYSCALLS = {
    "x86_64": {35, 230}, "aarch64": {101, 115}, "armv7l": {162, 265, 407},
    "armv6l": {162, 265, 407},
}


class ThreadStall:
    """Stops one thread of a child process where it sleeps, as a driver's blocking read
    would hold a capture thread: only that thread, so the event loop runs on.

    The thread is caught inside nanosleep, where Python has released the GIL (a thread
    stopped while holding it would freeze the whole interpreter, loop included). The
    synthetic camera's thread is the only one of the daemon that sleeps in nanosleep: it
    paces frames with time.sleep; every other thread waits on futexes or epoll.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.tid: int | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_void_p]
        self._libc.ptrace.restype = ctypes.c_long
        self._sleeps = SLEEP_SYSCALLS.get(platform.machine())
        if self._sleeps is None:
            pytest.skip(f"no nanosleep syscall numbers for {platform.machine()}")

    def _ptrace(self, request: int, tid: int) -> None:
        if self._libc.ptrace(request, tid, None, None) == -1:
            err = ctypes.get_errno()
            if err == errno.EPERM and request == PTRACE_SEIZE:
                pytest.skip("ptrace is not permitted here (kernel.yama.ptrace_scope?)")
            raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")

    def _syscall(self, tid: int) -> int | None:
        """The syscall `tid` is in, None when it runs in user space."""
        try:
            first = Path(f"/proc/{self.pid}/task/{tid}/syscall").read_text().split()[0]
        except (OSError, IndexError):
            return None
        return int(first) if first.lstrip("-").isdigit() and int(first) >= 0 else None

    def _sleeper(self) -> int | None:
        assert self._sleeps is not None
        for tid in (int(t) for t in os.listdir(f"/proc/{self.pid}/task")):
            if tid != self.pid and self._syscall(tid) in self._sleeps:
                return tid
        return None

    def stop(self, timeout: float = 10) -> None:
        assert self._sleeps is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tid = self.tid or self._sleeper()
            if tid is None:
                time.sleep(0.002)
                continue
            if self.tid is None:
                self._ptrace(PTRACE_SEIZE, tid)
                self.tid = tid
            self._ptrace(PTRACE_INTERRUPT, tid)
            _, status = os.waitpid(tid, WALL)
            assert os.WIFSTOPPED(status), f"thread {tid}: wait status {status:#x}"
            if self._syscall(tid) in self._sleeps:
                return  # held inside its sleep, the GIL released
            self._ptrace(PTRACE_CONT, tid)  # caught elsewhere: let it go and try again
            time.sleep(0.003)
        raise AssertionError("could not catch the capture thread asleep")

    def resume(self) -> None:
        if self.tid is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                self._ptrace(PTRACE_DETACH, self.tid)
            self.tid = None


# -- the real daemon ------------------------------------------------------------------------


def test_ready_after_media_status_and_watchdog_on_a_busy_pipeline(tmp_path: Path) -> None:
    """The full ladder with audio keeps both cores busy: READY comes once the first part is
    packaged, STATUS tells the state, and WATCHDOG=1 arrives every WATCHDOG_USEC / 2."""
    with notified_daemon(tmp_path, full_ladder=True) as (d, ns):
        ready = ns.wait_for(lambda m: "READY=1" in m.fields, 20, "READY=1", d)
        # The part READY waited for is there to be fetched.
        assert "#EXT-X-PART:" in d.get("/live/720p/index.m3u8").decode()
        first = ns.snapshot()[0]
        assert "READY=1" not in first.fields and "STATUS=starting" in first.fields
        assert "systemd: ready (the first part of video is packaged)" in d.log()
        ns.wait_for(field_startswith("STATUS=live: 720p/480p/360p"), 10, "live STATUS", d)
        t0 = time.monotonic()
        time.sleep(8)
        assert d.stop() == 0
        ns.wait_for(lambda m: "STOPPING=1" in m.fields, 5, "STOPPING=1", d)
    messages = ns.snapshot()
    assert [m for m in messages if "READY=1" in m.fields] == [ready]
    assert {m.pid for m in messages} == {d.proc.pid}  # NotifyAccess=main would accept all
    assert "STATUS=live: 720p/480p/360p, no uplink" in [f for m in messages for f in m.fields]
    pings = ns.times("WATCHDOG=1", since=t0)
    assert len(pings) >= 7, pings
    intervals = gaps(pings)
    assert max(intervals) < PING_S + 0.6, intervals
    assert sum(intervals) / len(intervals) == pytest.approx(PING_S, abs=0.15)
    assert not any(s.startswith("stalled") for s in ns.statuses())
    assert "watchdog:" not in d.log()


STALL_CONFIG = """
[video]
source = "synthetic"
width = 640
height = 360
[audio]
enabled = false
"""


def test_a_stalled_camera_stops_the_watchdog(tmp_path: Path) -> None:
    """The capture thread held in place (a camera read that never returns): pings stop
    within the live tolerance while the event loop still serves; they resume with it."""
    with notified_daemon(tmp_path, extra=STALL_CONFIG) as (d, ns):
        ns.wait_for(field_startswith("STATUS=live: 360p"), 20, "live STATUS", d)
        ns.wait_for(lambda m: "WATCHDOG=1" in m.fields, 5, "a ping", d)
        stall = ThreadStall(d.proc.pid)
        try:
            stall.stop()
            t_stall = time.monotonic()
            stalled = ns.wait_for(field_startswith("STATUS=stalled: video capture"),
                                  LIVE_TOLERANCE_S + 4, "stalled STATUS", d)
            assert "WATCHDOG=1" not in stalled.fields
            time.sleep(3 * PING_S + 0.5)
            # The loop is alive and answers: the missing pings are the media check's doing.
            assert json.loads(d.get("/healthz", timeout=5))["ok"] is True
            assert ns.times("WATCHDOG=1", since=stalled.at) == []
            last_ping = max(ns.times("WATCHDOG=1"))
            # systemd, with WatchdogSec = 2 s, would have killed the daemon by now.
            assert time.monotonic() - last_ping > WATCHDOG_USEC / 1e6
            assert last_ping - t_stall < LIVE_TOLERANCE_S + 2 * PING_S
            assert "watchdog: video capture made no progress" in d.log()
        finally:
            stall.resume()
        t_resume = time.monotonic()
        ns.wait_for(lambda m: "WATCHDOG=1" in m.fields and m.at > t_resume, 6,
                    "pings after the camera came back", d)
        ns.wait_for(field_startswith("STATUS=live: 360p"), 5, "live STATUS again", d)
        assert d.stop() == 0


BROKEN = '[web]\nlisten = "127.0.0.1:{port}"\n[video]\nsource = "synthetic"\nfps = 1000\n'


def test_safe_mode_is_ready_pings_while_the_loop_runs_and_reload_reports(tmp_path: Path) -> None:
    with notified_daemon(tmp_path, config=BROKEN) as (d, ns):
        ready = ns.wait_for(lambda m: "READY=1" in m.fields, 10, "READY=1", d)
        assert "STATUS=safe mode: config invalid (1 error), media off, web page up" in (
            ready.fields + ns.statuses())
        time.sleep(3 * PING_S + 0.3)
        assert len(ns.times("WATCHDOG=1", since=ready.at)) >= 3
        # Fixed and reloaded: RELOADING=1 (with the monotonic time systemd wants), READY=1
        # again when done, then media starts and the state follows.
        cfg = tmp_path / "appliance.toml"
        cfg.write_text(cfg.read_text().replace("fps = 1000", "fps = 30\n[audio]\nenabled = false"
                                               '\n[[video.ladder]]\nname = "360p"\nwidth = 640'
                                               "\nheight = 360\nbitrate_kbps = 800"))
        before = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        reloading = ns.wait_for(lambda m: "RELOADING=1" in m.fields, 5, "RELOADING=1", d)
        usec = [f for f in reloading.fields if f.startswith("MONOTONIC_USEC=")]
        assert len(usec) == 1
        assert abs(int(usec[0].split("=")[1]) / 1e6 - before) < 5
        ns.wait_for(lambda m: "READY=1" in m.fields and m.at >= reloading.at, 5,
                    "READY=1 after the reload", d)
        ns.wait_for(field_startswith("STATUS=live: 360p"), 20, "live STATUS", d)
        assert d.stop() == 0


def test_a_missing_camera_is_ready_and_keeps_the_watchdog(tmp_path: Path) -> None:
    """No source is an expected fault the daemon shows and retries: READY (so systemd
    does not kill a board booted without its camera) and pings while it retries."""
    missing = next(f"/dev/video{i}" for i in range(64, 128) if not os.path.exists(f"/dev/video{i}"))
    extra = f'[video]\nsource = "v4l2"\ndevice = "{missing}"\n[audio]\nenabled = false\n'
    with notified_daemon(tmp_path, extra=extra) as (d, ns):
        ready = ns.wait_for(lambda m: "READY=1" in m.fields, 10, "READY=1", d)
        ns.wait_for(field_startswith(f"STATUS=no source: V4L2 device {missing} does not exist"),
                    5, "no-source STATUS", d)
        time.sleep(4 * PING_S + 0.3)
        assert len(ns.times("WATCHDOG=1", since=ready.at)) >= 4
        assert not any(s.startswith("stalled") for s in ns.statuses())
        assert d.stop() == 0
