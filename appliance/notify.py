"""The daemon's side of systemd: sd_notify (READY, STATUS, WATCHDOG, STOPPING) and journald.

`Notifier.run` is a task on the event loop. Every tick it reads the status hub (never
a second copy of the state) and:

- sends READY=1 once, when the first part of video is packaged, when safe mode is up,
  or when the camera is reported missing ("no source": an expected fault the daemon
  shows on its LEDs and retries; without READY here systemd would kill a board booted
  without its camera at TimeoutStartSec, over and over, and its LEDs would never say why);
- sends STATUS= with a one-line state whenever that line changes;
- sends WATCHDOG=1 every WATCHDOG_USEC / 2, but only while the media path makes
  progress (`MediaProgress`): the hub's capture sections (`media.*`, published by the
  capture threads about once a second while frames flow, and on each retry while the
  source is missing) and packager sections (`package.*`, a part every 0.2 s) must have
  changed within a tolerance. A camera read or an encoder that blocks for ever stops
  those updates, so systemd gets no ping and restarts the daemon; a pipeline that is
  merely busy still updates them. The check runs on a timer in the loop and compares
  hub counters, so it does not depend on the loop being idle. In safe mode (and while
  media restarts on purpose) there is no media to watch: a live event loop is progress.

Without NOTIFY_SOCKET all of this is a no-op. Messages go through systemd-python's
`systemd.daemon.notify` (libsystemd's sd_notify), imported only when NOTIFY_SOCKET is set.

Logging: under systemd, stderr is the journal (JOURNAL_STREAM names its device and
inode); then `configure_logging` sends records to journald as structured entries
(`AppJournalHandler`: PRIORITY, COMPONENT, LOGGER, THREAD_NAME, CODE_*), else to stderr
as text lines. The daemon adds its log ring and secret-redacting filter to whichever
handler this installs (appliance.web.logs.install).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Final

from appliance.status import StatusHub

log = logging.getLogger(__name__)

# How long a hub section may stay unchanged before the media path counts as stalled.
# Capture threads publish `media.<kind>` every second while frames flow
# (appliance.capture.pipeline.STATUS_PERIOD_S), so 3 s is three missed reports.
LIVE_TOLERANCE_S: Final = 3.0
# No source: the capture thread retries with a backoff capped at 5 s and publishes each
# failed attempt; opening a device can take a second or two more.
RETRY_TOLERANCE_S: Final = 12.0
# From the start of media (and while a source says "starting") to its first report: the
# Pi camera and the H.264 encoder take a few seconds to open.
START_GRACE_S: Final = 20.0
# How often the hub is read: fast until READY (so READY follows the first part closely),
# then once a second (pings are scheduled on their own, see Notifier.run).
READY_TICK_S: Final = 0.1
TICK_S: Final = 1.0
STATUS_MAX: Final = 200


def watchdog_seconds(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """WATCHDOG_USEC in seconds when it is meant for this process (WATCHDOG_PID, when set,
    is our pid), else None."""
    usec, wpid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    try:
        if not usec or int(usec) <= 0:
            return None
        if wpid and int(wpid) != (os.getpid() if pid is None else pid):
            return None
        return int(usec) / 1_000_000
    except ValueError:
        return None


def _systemd(module: str) -> Any:
    """systemd-python's `systemd.<module>`, imported on first use. (By name: the repo's own
    systemd/ folder of unit files would otherwise shadow the package for type checkers.)"""
    return importlib.import_module(f"systemd.{module}")


def _sd_notify(message: str) -> None:
    _systemd("daemon").notify(message)


class MediaProgress:
    """Decides, from successive hub snapshots, whether the media path makes progress.

    A section's progress is any change of its `updated` stamp (the hub sets it on every
    update), noted with the monotonic time it was first seen: the wall clock may step.
    """

    def __init__(self, floor_s: float = 0.0):
        self.floor_s = floor_s  # no tolerance shorter than the ping interval
        self._media_since: float | None = None  # None: no media expected
        self._kinds: tuple[str, ...] = ()
        self._changed: dict[str, tuple[object, float]] = {}
        self._live_since: dict[str, float] = {}

    def media_started(self, now: float, kinds: Iterable[str]) -> None:
        """Media (re)started for these kinds ("video", "audio"): the grace period begins."""
        self._media_since = now
        self._kinds = tuple(kinds)
        self._changed.clear()
        self._live_since.clear()

    def media_stopped(self) -> None:
        """Media is off on purpose (stopping, restarting): nothing to watch."""
        self._media_since = None

    def observe(self, sections: Mapping[str, Mapping[str, Any]], now: float) -> None:
        for name, section in sections.items():
            if not name.startswith(("media.", "package.")):
                continue
            token = section.get("updated")
            seen = self._changed.get(name)
            if seen is None or seen[0] != token:
                self._changed[name] = (token, now)
            if name.startswith("media."):
                if section.get("state") == "live":
                    self._live_since.setdefault(name, now)
                else:
                    self._live_since.pop(name, None)

    def _tolerance(self, base: float) -> float:
        return max(base, self.floor_s)

    def stall(self, sections: Mapping[str, Mapping[str, Any]], now: float) -> str | None:
        """What made no progress for too long, or None when the media path is healthy."""
        if self._media_since is None or sections.get("daemon", {}).get("safe_mode"):
            return None
        for kind in self._kinds:
            name = f"media.{kind}"
            state = sections.get(name, {}).get("state")
            base = {"live": LIVE_TOLERANCE_S, "no_source": RETRY_TOLERANCE_S}.get(
                state or "", START_GRACE_S)
            since = self._changed.get(name, (None, self._media_since))[1]
            if now - since > self._tolerance(base):
                return (f"{kind} capture made no progress for {now - since:.0f} s "
                        f"(state {state or 'not reported'})")
        for name in sections:
            if not name.startswith("package."):
                continue
            medium = "media.audio" if name == "package.audio" else "media.video"
            live_since = self._live_since.get(medium)
            if live_since is None or now - live_since <= self._tolerance(LIVE_TOLERANCE_S):
                continue  # its source is not (yet) live: no parts expected
            since = max(self._changed.get(name, (None, live_since))[1], live_since)
            if now - since > self._tolerance(LIVE_TOLERANCE_S):
                return f"packager {name[8:]} made no part for {now - since:.0f} s"
        return None


def ready_reason(sections: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why the daemon counts as started (READY=1), or None while it is still starting."""
    if sections.get("daemon", {}).get("safe_mode"):
        return "safe mode is up"
    for name, section in sections.items():
        if name.startswith("package.") and name != "package.audio" and section.get("parts"):
            return "the first part of video is packaged"
    if sections.get("media.video", {}).get("state") == "no_source":
        return "no source: the camera is missing, retrying"
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def status_line(snapshot: Mapping[str, Any]) -> str:
    """The device state in one line, e.g. "live: 720p/480p/360p, 2 uplinks live"."""
    state: str = snapshot["state"]
    sections: Mapping[str, Mapping[str, Any]] = snapshot["sections"]
    if state == "maintenance":
        line = "maintenance: factory reset or update in progress"
    elif state == "safe_mode":
        errors = len(sections.get("daemon", {}).get("config_errors") or [])
        line = f"safe mode: config invalid ({_plural(errors, 'error')}), media off, web page up"
    elif state == "no_source":
        line = f"no source: {sections.get('media.video', {}).get('error') or 'no camera'}"
    elif state == "starting":
        line = "starting"
    else:
        rungs = "/".join(n[len("encode."):] for n in sections if n.startswith("encode.")) or "video"
        uplinks = [s for n, s in sections.items() if n.startswith("uplink.") and s.get("enabled")]
        up = sum(1 for s in uplinks if s.get("state") == "live")
        if state == "live_local":
            line = f"live: {rungs}, no uplink"
        elif state == "live":
            line = f"live: {rungs}, {_plural(up, 'uplink')} live"
        else:  # connecting, degraded
            line = f"{state}: {rungs}, {up} of {_plural(len(uplinks), 'uplink')} live"
    line = " ".join(line.split())  # one line, whatever an error message holds
    return line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 1] + "…"


class Notifier:
    """sd_notify for the daemon; every method is a no-op without NOTIFY_SOCKET.

    `env` is read once (default os.environ); WATCHDOG_USEC and WATCHDOG_PID are then
    removed from it so that child processes do not take the watchdog for theirs
    (NOTIFY_SOCKET stays: libsystemd reads it on each call, and NotifyAccess=main makes
    systemd ignore anything a child sends).
    """

    def __init__(self, hub: StatusHub, env: MutableMapping[str, str] | None = None,
                 send: Callable[[str], None] = _sd_notify,
                 clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self.hub = hub
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_s = watchdog_seconds(env) if self.enabled else None
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        self.progress = MediaProgress(floor_s=self.interval or 0.0)
        self.ready = False
        self._send = send
        self._clock = clock
        self._status: str | None = None
        self._stall: str | None = None
        self._send_failed = False
        self._next_ping: float | None = None

    @property
    def interval(self) -> float | None:
        """Seconds between pings: half of WATCHDOG_USEC; None without a watchdog."""
        return self.watchdog_s / 2 if self.watchdog_s else None

    def notify(self, *fields: str) -> None:
        if not self.enabled or not fields:
            return
        try:
            self._send("\n".join(fields))
        except OSError as exc:  # systemd gone or the socket refused: say so once
            if not self._send_failed:
                log.warning("systemd: cannot notify (%s)", exc)
                self._send_failed = True

    # -- called by the daemon ---------------------------------------------------------

    def media_started(self, kinds: Iterable[str]) -> None:
        self.progress.media_started(self._clock(), kinds)

    def media_stopped(self) -> None:
        self.progress.media_stopped()

    def reloading(self) -> None:
        """SIGHUP: systemd shows "reloading" until `reloaded` (only once started)."""
        if self.ready:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def reloaded(self) -> None:
        if self.ready:
            self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    # -- the task -----------------------------------------------------------------------

    def tick(self) -> None:
        """Read the hub once and send what is due (READY, STATUS, WATCHDOG)."""
        now = self._clock()
        snapshot = self.hub.snapshot()
        sections = snapshot["sections"]
        self.progress.observe(sections, now)
        fields: list[str] = []
        if not self.ready and (reason := ready_reason(sections)) is not None:
            self.ready = True
            fields.append("READY=1")
            log.info("systemd: ready (%s)", reason)
        stall = self.progress.stall(sections, now)
        if stall != self._stall:
            if stall:
                log.error("watchdog: %s; no longer telling systemd we are alive, so that it "
                          "restarts the daemon", stall)
            else:
                log.warning("watchdog: media makes progress again")
            self._stall = stall
        status = f"stalled: {stall}" if stall else status_line(snapshot)
        if status != self._status:
            fields.append(f"STATUS={status}")
            self._status = status
        if self._ping_due(now) and stall is None:
            fields.append("WATCHDOG=1")
        self.notify(*fields)

    def _ping_due(self, now: float) -> bool:
        if self.interval is None:
            return False
        if self._next_ping is None:
            self._next_ping = now
        if now < self._next_ping:
            return False
        while self._next_ping <= now:  # a late tick skips the missed slots
            self._next_ping += self.interval
        return True

    def _sleep_s(self) -> float:
        tick = TICK_S if self.ready else READY_TICK_S
        if self._next_ping is not None:
            tick = min(tick, max(0.0, self._next_ping - self._clock()))
        return tick

    async def run(self) -> None:
        """Until cancelled; returns at once without NOTIFY_SOCKET."""
        if not self.enabled:
            return
        log.info("systemd: notifying%s", f", watchdog ping every {self.interval:g} s"
                 if self.interval else " (no watchdog)")
        while True:
            self.tick()
            await asyncio.sleep(self._sleep_s())


# -- journald -----------------------------------------------------------------------------

JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER: Final = "appliance"


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether `fd` is the journal stream systemd connected us to (the check systemd
    documents: JOURNAL_STREAM holds the stream's "device:inode")."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def journal_available(socket_path: Path = JOURNAL_SOCKET) -> bool:
    try:
        return stat.S_ISSOCK(socket_path.stat().st_mode)
    except OSError:
        return False


def component(logger_name: str) -> str:
    """The part of the appliance a logger belongs to: "appliance.capture.pipeline" ->
    "capture", "appliance.daemon" -> "daemon"; another library's logger -> its package."""
    parts = logger_name.split(".")
    if parts[0] == "appliance" and len(parts) > 1:
        return parts[1]
    return parts[0]


def journal_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The journal fields of a record besides MESSAGE. Extra fields a caller passes with
    `extra=` are kept when their names are valid journal field names (e.g. UPLINK)."""
    fields: dict[str, Any] = {
        "PRIORITY": str(_systemd("journal").JournalHandler.map_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "COMPONENT": component(record.name),
        "LOGGER": record.name,
        "THREAD_NAME": record.threadName,
        "CODE_FILE": record.pathname,
        "CODE_LINE": record.lineno,
        "CODE_FUNC": record.funcName,
    }
    if record.exc_info and record.exc_info[0] is not None:
        fields["EXCEPTION_TYPE"] = record.exc_info[0].__name__
    for key, value in record.__dict__.items():
        if _valid_field(key) and key not in fields:
            fields[key] = value
    return fields


def _valid_field(name: str) -> bool:
    return (0 < len(name) <= 64 and not name.startswith("_") and not name[0].isdigit()
            and all(c.isupper() or c.isdigit() or c == "_" for c in name))


def journal_handler(sender: Callable[..., Any] | None = None) -> logging.Handler:
    """A JournalHandler (systemd-python) that sends the fields of `journal_fields`; not
    the record's every attribute as the stock one does (its CODE_ARGS would carry the
    raw arguments of a message past the secret-redacting filter's rewrite)."""
    journal = _systemd("journal")

    def emit(self: Any, record: logging.LogRecord) -> None:
        try:
            self.send(self.format(record), **journal_fields(record))
        except Exception:
            self.handleError(record)

    cls = type("AppJournalHandler", (journal.JournalHandler,), {"emit": emit})
    handler: logging.Handler = cls(sender_function=sender or journal.send)
    return handler


TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO", env: Mapping[str, str] | None = None) -> str:
    """Log to the journal when stderr is the journal and journald listens, else to
    stderr as text. Returns which ("journal" or "stderr")."""
    if stderr_is_journal(env) and journal_available():
        try:
            handler = journal_handler()
        except ImportError:  # systemd-python missing: text to stderr reaches the journal too
            handler = None
        if handler is not None:
            # The journal stamps time, priority and logger itself: the message alone.
            logging.basicConfig(level=level, handlers=[handler], format="%(message)s")
            return "journal"
    logging.basicConfig(level=level, format=TEXT_FORMAT, stream=sys.stderr)
    return "stderr"
