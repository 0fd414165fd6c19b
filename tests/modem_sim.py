"""A cellular modem's AT port, simulated on a pty pair, for the modem monitor's tests.

The monitor opens `link` (a symlink to the pty's slave, like /dev/serial/by-id/...)
with pyserial as it would a real modem; this side answers on the master as a Quectel
or SIMCom modem does: echo (ATE0/ATE1), verbose replies "\\r\\n+CSQ: 18,99\\r\\n\\r\\nOK\\r\\n",
ERROR for what it does not know. Faults are scripted: garbage bytes, silence, ERROR
replies, URCs in the middle of a reply, and unplug/replug (the pty closes and the link
goes, then a new pty appears behind the same link).
"""

from __future__ import annotations

import os
import select
import threading
import tty
from pathlib import Path
from typing import Literal

Fault = Literal["silence", "error", "cme_error", "garbage"]
GARBAGE = b"\xff\x00\x13~#\xfe\x80ZZ\x1b[0m"


class ModemSim:
    def __init__(self, link: Path):
        self.link = link
        self.echo = True
        self.echo_locked = False  # some modems come back from a reset with echo on
        self.csq = (18, 99)
        self.creg = 1  # <stat>: 1 home, 5 roaming, 2 searching, 0 not registered
        self.cereg = 1
        self.operator: str | None = "Example Tel"
        self.act = 7  # E-UTRAN
        self.fault: Fault | None = None  # applied to every command while set
        self.faults: dict[str, Fault] = {}  # per command, e.g. {"AT+CEREG?": "error"}
        self.urc_in_replies: str | None = None  # put in the middle of every reply
        self.commands: list[str] = []  # as received
        self._lock = threading.Lock()
        self._master = self._slave = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.plug()

    # -- plugging --------------------------------------------------------------------------

    def plug(self) -> None:
        """A (new) pty behind the link, answering."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no line discipline echo or CR/LF mapping: a serial line
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self._slave))
        tmp.replace(self.link)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(self._master, self._stop),
                                        name="modem-sim", daemon=True)
        self._thread.start()

    def unplug(self) -> None:
        """The modem goes: its port fails for whoever has it open, and the link goes."""
        self.link.unlink(missing_ok=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    close = unplug

    # -- the modem -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Bytes from the modem, unasked (a URC, noise)."""
        with self._lock:
            os.write(self._master, data)

    def _serve(self, master: int, stop: threading.Event) -> None:
        buf = b""
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(master, 1024)
            except OSError:  # the slave side closed: wait for it to come back
                stop.wait(0.02)
                continue
            while data:
                cr = data.find(b"\r")
                head, data = (data, b"") if cr < 0 else (data[:cr + 1], data[cr + 1:])
                if self.echo and self._fault_for(buf + head) != "silence":
                    self.send(head)  # a modem echoes as it receives
                buf += head
                if buf.endswith(b"\r"):
                    line = buf[:-1].strip(b"\n").decode("ascii", "replace").strip()
                    buf = b""
                    if line:
                        self._answer(line)

    def _fault_for(self, partial: bytes) -> Fault | None:
        cmd = partial.rstrip(b"\r").decode("ascii", "replace").strip()
        return self.faults.get(cmd, self.fault)

    def _answer(self, cmd: str) -> None:
        self.commands.append(cmd)
        fault = self.faults.get(cmd, self.fault)
        if fault == "silence":
            return
        if fault in ("error", "cme_error"):
            self.send(b"\r\nERROR\r\n" if fault == "error" else b"\r\n+CME ERROR: 10\r\n")
            return
        info, ok = self._reply(cmd)
        out = b""
        if fault == "garbage":
            out += GARBAGE + b"\r\n" + GARBAGE[:5]
        for line in info:
            out += f"\r\n{line}\r\n".encode()
        if self.urc_in_replies:
            out += f"\r\n{self.urc_in_replies}\r\n".encode()
        out += b"\r\nOK\r\n" if ok else b"\r\nERROR\r\n"
        self.send(out)

    def _reply(self, cmd: str) -> tuple[list[str], bool]:
        upper = cmd.upper()
        if upper in ("AT", "AT+CMEE=1", "AT+COPS=3,0"):
            return [], True
        if upper in ("ATE0", "ATE1"):
            if not self.echo_locked:
                self.echo = upper == "ATE1"
            return [], True
        if upper == "AT+CSQ":
            return [f"+CSQ: {self.csq[0]},{self.csq[1]}"], True
        if upper == "AT+CREG?":
            return [f"+CREG: 0,{self.creg}"], True
        if upper == "AT+CEREG?":
            return [f"+CEREG: 0,{self.cereg}"], True
        if upper == "AT+COPS?":
            if self.operator is None:
                return ["+COPS: 0"], True
            return [f'+COPS: 0,0,"{self.operator}",{self.act}'], True
        return [], False
