"""`appliance fleet`: a live terminal view of the fleet, read from the MQTT broker.

Subscribes to `fleet/v1/+/status` (retained presence) and `fleet/v1/+/telemetry` and shows
one row per device: online/offline, state, total bitrate, uplinks (name:state),
temperature and when it was last heard of. Plain ANSI (home + clear) once a second on a
terminal; `--once SECONDS` prints a single snapshot after that long and exits.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

STATUS_TOPIC = "fleet/v1/+/status"
TELEMETRY_TOPIC = "fleet/v1/+/telemetry"


class FleetViewError(Exception):
    """A bad argument or an unreachable broker: the message is for the operator."""


@dataclass
class BrokerTarget:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerTarget:
    """mqtt://host[:port] (default 1883) or mqtts://host[:port] (default 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise FleetViewError(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username or parts.password:
        raise FleetViewError("--broker: no credentials in the URL (use --password-file)")
    try:
        port = parts.port
    except ValueError as exc:
        raise FleetViewError(f"--broker {url!r}: {exc}") from None
    tls = parts.scheme == "mqtts"
    return BrokerTarget(parts.hostname, port or (8883 if tls else 1883), tls)


@dataclass
class DeviceRow:
    device: str
    online: bool | None = None
    session: int | None = None
    state: str = ""
    bitrate_bps: float | None = None
    uplinks: dict[str, str] = field(default_factory=dict)
    temperature_c: float | None = None
    last_seen: float | None = None  # wall-clock seconds


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class FleetModel:
    """The fleet as the broker tells it: fed with (topic, payload), read as rows."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRow] = {}

    def feed(self, topic: str, payload: bytes, now: float | None = None) -> None:
        now = time.time() if now is None else now
        levels = topic.split("/")
        if len(levels) != 4 or levels[:2] != ["fleet", "v1"] or not levels[2]:
            return
        device, kind = levels[2], levels[3]
        if kind == "status" and not payload:  # retained status cleared: decommissioned
            self.devices.pop(device, None)
            return
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return
        if not isinstance(doc, dict):
            return
        row = self.devices.setdefault(device, DeviceRow(device))
        if kind == "status":
            self._status(row, doc, now)
        elif kind == "telemetry":
            self._telemetry(row, doc, now)

    @staticmethod
    def _session(doc: dict[str, Any]) -> int | None:
        s = doc.get("session")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    def _status(self, row: DeviceRow, doc: dict[str, Any], now: float) -> None:
        session = self._session(doc)
        # A Last Will of an older connection may arrive after the new one said hello.
        if session is not None and row.session is not None and session < row.session:
            return
        if session is not None:
            row.session = session
        if isinstance(doc.get("online"), bool):
            row.online = doc["online"]
        if isinstance(doc.get("state"), str):
            row.state = doc["state"]
        ts = _number(doc.get("ts"))
        if row.online:
            row.last_seen = max(row.last_seen or 0.0, ts if ts is not None else now)

    def _telemetry(self, row: DeviceRow, doc: dict[str, Any], now: float) -> None:
        session = self._session(doc)
        if session is not None and row.session is not None and session < row.session:
            return
        if isinstance(doc.get("state"), str):
            row.state = doc["state"]
        # appliance/fleet/telemetry.py: rungs.<name>.bitrate_kbps, device.temp_c
        rungs = doc.get("rungs")
        if isinstance(rungs, dict):
            rates = [_number(r.get("bitrate_kbps")) for r in rungs.values() if isinstance(r, dict)]
            known = [r * 1000 for r in rates if r is not None]
            row.bitrate_bps = sum(known) if known else None
        uplinks = doc.get("uplinks")
        if isinstance(uplinks, dict):
            row.uplinks = {}
            for name, info in sorted(uplinks.items()):
                if isinstance(info, dict) and isinstance(info.get("state"), str):
                    row.uplinks[str(name)] = info["state"]
                elif isinstance(info, str):
                    row.uplinks[str(name)] = info
        device = doc.get("device")
        if isinstance(device, dict):
            row.temperature_c = _number(device.get("temp_c"))
        ts = _number(doc.get("ts"))
        row.last_seen = max(row.last_seen or 0.0, ts if ts is not None else now)

    def rows(self) -> list[DeviceRow]:
        return [self.devices[d] for d in sorted(self.devices)]


HEADER = ("DEVICE", "ONLINE", "STATE", "BITRATE", "UPLINKS", "TEMP", "LAST SEEN")


def _bitrate(bps: float | None) -> str:
    if bps is None:
        return "-"
    if bps >= 1e6:
        return f"{bps / 1e6:.1f} Mb/s"
    return f"{bps / 1e3:.0f} kb/s"


def _ago(last: float | None, now: float) -> str:
    if last is None:
        return "-"
    age = max(0.0, now - last)
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.0f}h ago"


def render(model: FleetModel, now: float | None = None, color: bool = False) -> str:
    """The table as text, a row per device, columns aligned."""
    now = time.time() if now is None else now
    table: list[tuple[str, ...]] = [HEADER]
    online_flags: list[bool | None] = [None]
    for r in model.rows():
        online = {True: "online", False: "offline", None: "?"}[r.online]
        uplinks = " ".join(f"{n}:{s}" for n, s in r.uplinks.items()) or "-"
        temp = f"{r.temperature_c:.1f}C" if r.temperature_c is not None else "-"
        table.append((r.device, online, r.state or "-", _bitrate(r.bitrate_bps), uplinks, temp,
                      _ago(r.last_seen, now)))
        online_flags.append(r.online)
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = []
    for row, flag in zip(table, online_flags, strict=True):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        if color and flag is not None:
            line = ("\x1b[32m" if flag else "\x1b[31m") + line + "\x1b[0m"
        lines.append(line)
    total = len(table) - 1
    up = sum(1 for f in online_flags[1:] if f)
    lines.append(f"{total} device(s), {up} online")
    return "\n".join(lines) + "\n"


@dataclass
class Credentials:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None


def _tls_context(creds: Credentials) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(creds.ca_file) if creds.ca_file else None)
    if creds.cert_file:
        ctx.load_cert_chain(str(creds.cert_file), str(creds.key_file) if creds.key_file else None)
    return ctx


async def watch(target: BrokerTarget, creds: Credentials, once: float | None,
                out: TextIO = sys.stdout, client_id: str | None = None) -> int:
    import aiomqtt

    password = None
    if creds.password_file:
        try:
            password = creds.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise FleetViewError(f"--password-file: {exc}") from None
    if (creds.cert_file or creds.ca_file) and not target.tls:
        raise FleetViewError("--ca/--cert/--key need an mqtts:// broker URL")
    try:
        tls_context = _tls_context(creds) if target.tls else None
    except (OSError, ssl.SSLError) as exc:
        raise FleetViewError(f"TLS files: {exc}") from None
    model = FleetModel()
    color = once is None and out.isatty()
    try:
        async with aiomqtt.Client(
            target.host, target.port, identifier=client_id, username=creds.username,
            password=password, tls_context=tls_context,
            protocol=aiomqtt.ProtocolVersion.V5, keepalive=30, timeout=5,
        ) as client:
            await client.subscribe(STATUS_TOPIC, qos=1)
            await client.subscribe(TELEMETRY_TOPIC, qos=0)
            queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
            reader = asyncio.create_task(_pump(client, queue))
            try:
                await _show(model, queue, reader, once, out, color)
            finally:
                reader.cancel()
            return 0
    except aiomqtt.MqttError as exc:
        raise FleetViewError(f"broker {target.host}:{target.port}: {exc}") from None


async def _pump(client: Any, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
    """Puts (topic, payload bytes) from an aiomqtt client on `queue`."""
    async for message in client.messages:
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b""
        queue.put_nowait((str(message.topic), bytes(payload)))


async def _show(model: FleetModel, queue: asyncio.Queue[tuple[str, bytes]],
                reader: asyncio.Task[None], once: float | None, out: TextIO,
                color: bool) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + once if once is not None else None
    next_draw = loop.time()
    while True:
        now = loop.time()
        if deadline is not None and now >= deadline:
            out.write(render(model))
            out.flush()
            return
        if deadline is None and now >= next_draw:
            out.write("\x1b[H\x1b[2J" + render(model, color=color))
            out.flush()
            next_draw = now + 1.0
        if reader.done():  # the connection ended: report why
            reader.result()
            raise FleetViewError("the broker closed the connection")
        wake = deadline if deadline is not None else next_draw
        try:
            topic, payload = await asyncio.wait_for(queue.get(), max(0.0, min(wake - now, 1.0)))
        except TimeoutError:
            continue
        model.feed(topic, payload)


def main(broker: str, creds: Credentials, once: float | None) -> int:
    try:
        target = parse_broker_url(broker)
        return asyncio.run(watch(target, creds, once))
    except FleetViewError as exc:
        print(f"appliance fleet: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
