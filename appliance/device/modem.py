"""Cellular modem monitor: AT commands on the modem's serial port, polled on a thread.

Every `poll_s`: AT+CSQ (signal), AT+CREG? and AT+CEREG? (circuit- and packet-switched
registration: an LTE-only modem may register on EPS alone), AT+COPS? (operator and
access technology; AT+COPS=3,0 once per open asks for the operator's long name).

A modem is a noisy peer, and none of this may stop the poll: lines are read up to the
final result code (OK, ERROR, +CME/+CMS ERROR) or a timeout; the command's echo, blank
lines, unsolicited result codes (RING, +CREG: 1 between the lines of a reply) and
garbage are passed over; a command that times out or answers ERROR leaves its fields
unknown. An unplugged modem (its port fails or is gone) is closed and reopened with
capped, jittered backoff; a modem that stops answering is reopened after a few silent
polls, which also re-sends the setup.

Hub section `modem`: state (absent: no port; no_response: the port is there, the modem
does not answer; ok), error, port, signal_dbm, signal_quality (excellent/good/fair/poor/
none), csq, registered, roaming, registration, operator, technology, polls, opens.
"""

from __future__ import annotations

import logging
import re
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.backoff import Backoff
from appliance.config.schema import Modem as ModemConfig
from appliance.status import StatusHub

log = logging.getLogger(__name__)

FINAL_OK = "OK"
_FINAL_ERROR = re.compile(r"^(ERROR|\+CME ERROR:.*|\+CMS ERROR:.*|NO CARRIER|COMMAND NOT SUPPORT)$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# 3GPP TS 27.007 <stat> of +CREG/+CEREG.
_REGISTERED = {1: "home", 5: "roaming", 6: "home", 7: "roaming", 9: "home", 10: "roaming"}
_NOT_REGISTERED = {0: "not_registered", 2: "searching", 3: "denied", 4: "unknown", 8: "emergency"}
# <AcT> of +COPS (27.007 7.3).
_TECHNOLOGY = {0: "GSM", 1: "GSM", 2: "UMTS", 3: "EDGE", 4: "HSDPA", 5: "HSUPA", 6: "HSPA",
               7: "LTE", 8: "EC-GSM-IoT", 9: "NB-IoT", 10: "LTE", 11: "5G NR", 12: "5G NR",
               13: "5G NSA"}
SILENT_POLLS_BEFORE_REOPEN = 3


def port_errors() -> tuple[type[BaseException], ...]:
    """What a serial port that failed (unplugged, hung up) raises."""
    import serial

    return serial.SerialException, OSError, termios.error


# -- parsing --------------------------------------------------------------------------------

def _fields(line: str, prefix: str) -> list[str] | None:
    """The comma-separated fields after "<prefix>: ", quotes kept; None for other lines."""
    if not line.startswith(prefix + ":"):
        return None
    return [f.strip() for f in re.findall(r'"[^"]*"|[^,]+', line[len(prefix) + 1:])]


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def csq_dbm(rssi: int | None) -> int | None:
    """+CSQ <rssi> (0..31, 99 unknown) as dBm: 0 is -113 dBm or less, 31 is -51 or more."""
    if rssi is None or not 0 <= rssi <= 31:
        return None
    return -113 + 2 * rssi


def signal_quality(rssi: int | None) -> str | None:
    if rssi is None or not 0 <= rssi <= 31:
        return None
    if rssi >= 20:
        return "excellent"
    if rssi >= 15:
        return "good"
    if rssi >= 10:
        return "fair"
    return "poor" if rssi >= 2 else "none"


def parse_csq(line: str) -> int | None:
    """<rssi> of "+CSQ: <rssi>,<ber>", None when unknown (99) or not such a line."""
    f = _fields(line, "+CSQ")
    rssi = _int(f[0]) if f else None
    return rssi if rssi is not None and 0 <= rssi <= 31 else None


def parse_registration(line: str, prefix: str) -> int | None:
    """<stat> of the reply to AT+CREG? / AT+CEREG? ("+CREG: <n>,<stat>[,...]"); None for
    anything else, the unsolicited form included ("+CREG: <stat>[,"<lac>",...]"), which
    a URC arriving in the middle of the reply has."""
    f = _fields(line, prefix)
    if not f or len(f) < 2 or f[1].startswith('"'):
        return None
    return _int(f[1])


def parse_cops(line: str) -> tuple[str | None, str | None] | None:
    """(operator, technology) of "+COPS: <mode>[,<format>,"<oper>"[,<AcT>]]"."""
    f = _fields(line, "+COPS")
    if not f:
        return None
    operator = (f[2].strip('"') or None) if len(f) >= 3 and f[2].startswith('"') else None
    act = _int(f[3]) if len(f) >= 4 else None
    return operator, _TECHNOLOGY.get(act) if act is not None else None


@dataclass
class Reply:
    """What came back for one command: ok True (OK), False (an error code), None (nothing
    final before the timeout); the information lines with the command's prefix."""

    ok: bool | None
    lines: list[str] = field(default_factory=list)
    final: str = ""


# -- the port -------------------------------------------------------------------------------

class AtPort:
    """Commands and replies over one open serial port (pyserial)."""

    def __init__(self, path: str, baud: int, stop: threading.Event):
        import serial

        self._stop = stop
        self._buf = bytearray()
        self.urcs = 0  # unsolicited or unexpected lines passed over
        self.serial = serial.Serial(path, baud, timeout=0.05, write_timeout=1, exclusive=True)

    def close(self) -> None:
        self.serial.close()

    def command(self, cmd: str, timeout: float) -> Reply:
        """Send `cmd`; one of port_errors() when the port fails (unplugged)."""
        self.serial.reset_input_buffer()  # stale URCs, garbage, a late reply to the last one
        self._buf.clear()
        self.serial.write(cmd.encode("ascii") + b"\r")
        prefix = cmd[2:].split("=")[0].rstrip("?") if cmd.startswith("AT+") else None
        reply = Reply(ok=None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            for line in self._lines():
                if line == FINAL_OK or _FINAL_ERROR.match(line):
                    reply.ok, reply.final = line == FINAL_OK, line
                    return reply
                if prefix is not None and line.startswith(prefix + ":"):
                    reply.lines.append(line)
                elif line != cmd:  # not our echo: a URC or noise
                    self.urcs += 1
        return reply

    def _lines(self) -> list[str]:
        chunk = self.serial.read(max(1, self.serial.in_waiting))
        if not chunk:
            return []
        self._buf += chunk
        *complete, rest = re.split(rb"[\r\n]", bytes(self._buf))
        self._buf = bytearray(rest[-4096:])
        out = []
        for raw in complete:
            line = _UNPRINTABLE.sub("", raw.decode("ascii", "replace")).strip()
            if line:
                out.append(line)
        return out


# -- the monitor ----------------------------------------------------------------------------

class ModemMonitor:
    def __init__(self, cfg: ModemConfig, hub: StatusHub, *, cmd_timeout_s: float = 2.0,
                 reopen_first_s: float = 0.5, reopen_cap_s: float = 30.0,
                 on_fatal: Callable[[BaseException], None] | None = None):
        """`on_fatal`: called (on the monitor's thread) with an unexpected exception, after
        which the monitor has stopped; the daemon ends so that systemd restarts it."""
        self.cfg, self.hub = cfg, hub
        self.on_fatal = on_fatal
        self.cmd_timeout_s = cmd_timeout_s
        self._backoff = Backoff(first=reopen_first_s, cap=reopen_cap_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: AtPort | None = None
        self.polls = self.opens = 0

    def start(self) -> None:
        if not self.cfg.enabled:
            return
        self._stop.clear()
        self.hub.update("modem", port=self.cfg.port, state="absent", error=None)
        self._thread = threading.Thread(target=self._guard, name="modem", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def _guard(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug, not a modem fault: those are all handled
            log.exception("modem monitor failed")
            self._publish(state="absent", error=f"monitor failed: {exc!r}")
            if self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            self._close()

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a port whose device is gone can fail too
                log.debug("modem: closing %s failed", self.cfg.port, exc_info=True)

    def _run(self) -> None:
        failed = port_errors()
        silent = 0
        while not self._stop.is_set():
            if self._port is None and not self._open():
                self._stop.wait(self._backoff.next_delay())
                continue
            try:
                values, answered, errors = self._poll()
            except failed as exc:
                self._lost(f"port failed: {exc}")
                self._stop.wait(self._backoff.next_delay())
                continue
            if self._stop.is_set():
                return
            self.polls += 1
            if not answered:
                silent += 1
                self._publish(state="no_response", error="the modem does not answer")
                if silent >= SILENT_POLLS_BEFORE_REOPEN:
                    log.warning("modem: no answer on %s for %d polls: reopening",
                                self.cfg.port, silent)
                    silent = 0
                    self._close()
                    self._stop.wait(self._backoff.next_delay())
                    continue
            else:
                silent = 0
                self._backoff.reset()
                self._publish(state="ok", error="; ".join(errors) or None, **values)
            self._stop.wait(self.cfg.poll_s)

    def _open(self) -> bool:
        failed = port_errors()
        if not Path(self.cfg.port).exists():
            self._publish(state="absent", error=f"{self.cfg.port} does not exist")
            return False
        try:
            port = AtPort(self.cfg.port, self.cfg.baud, self._stop)
        except failed as exc:
            self._publish(state="absent", error=f"cannot open {self.cfg.port}: {exc}")
            return False
        self._port = port
        self.opens += 1
        log.info("modem: opened %s", self.cfg.port)
        try:
            # Echo off, numeric error codes, operator names in long form. Failing ones
            # are fine (the replies are parsed either way); a dead port shows in the poll.
            for cmd in ("ATE0", "AT+CMEE=1", "AT+COPS=3,0"):
                port.command(cmd, self.cmd_timeout_s)
        except failed as exc:
            self._lost(f"port failed: {exc}")
            return False
        return True

    def _lost(self, error: str) -> None:
        self._close()
        state = "no_response" if Path(self.cfg.port).exists() else "absent"
        log.warning("modem: %s: %s", self.cfg.port, error)
        self._publish(state=state, error=error)

    def _poll(self) -> tuple[dict[str, Any], bool, list[str]]:
        """(the fields for the hub, whether the modem answered anything, what failed)."""
        port = self._port
        assert port is not None
        replies: dict[str, Reply] = {}
        for cmd in ("AT+CSQ", "AT+CREG?", "AT+CEREG?", "AT+COPS?"):
            if self._stop.is_set():
                break
            replies[cmd] = port.command(cmd, self.cmd_timeout_s)
        answered = any(r.ok is not None for r in replies.values())
        errors = [f"{cmd}: {r.final or 'no answer'}" for cmd, r in replies.items() if not r.ok]

        def first(cmd: str, parse: Any) -> Any:
            reply = replies.get(cmd)
            if reply is None or not reply.ok:
                return None
            return next((v for v in map(parse, reply.lines) if v is not None), None)

        rssi = first("AT+CSQ", parse_csq)
        stats = [s for s in (first("AT+CREG?", lambda ln: parse_registration(ln, "+CREG")),
                             first("AT+CEREG?", lambda ln: parse_registration(ln, "+CEREG")))
                 if s is not None]
        reg = next((s for s in stats if s in _REGISTERED), stats[0] if stats else None)
        cops = first("AT+COPS?", parse_cops) or (None, None)
        values = {
            "csq": rssi, "signal_dbm": csq_dbm(rssi), "signal_quality": signal_quality(rssi),
            "registered": None if reg is None else reg in _REGISTERED,
            "roaming": None if reg is None else _REGISTERED.get(reg) == "roaming",
            "registration": None if reg is None else (
                _REGISTERED.get(reg) or _NOT_REGISTERED.get(reg, "unknown")),
            "operator": cops[0], "technology": cops[1],
        }
        return values, answered, errors

    def _publish(self, **fields: Any) -> None:
        if fields.get("state") != "ok":
            # What was known is no longer current.
            fields = {"csq": None, "signal_dbm": None, "signal_quality": None,
                      "registered": None, "roaming": None, "registration": None,
                      "operator": None, "technology": None, **fields}
        self.hub.update("modem", port=self.cfg.port, polls=self.polls, opens=self.opens,
                        **fields)
