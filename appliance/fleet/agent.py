"""The fleet agent: one outbound MQTT 5 connection (aiomqtt) to the fleet broker.

Topics, all JSON, under `fleet/v1/<device_id>/`:
- `status` (retained, QoS 1): `{"online": true, "session": N, "state": ..., "since": ts}`
  on connect and on each device state change; the Last Will is `{"online": false,
  "session": N}`, and a clean shutdown publishes `{"online": false, "session": N,
  "clean": true}`. N grows by one per connection (kept in `<state_dir>/fleet/session`), so
  a consumer ignores a Will whose session is older than the status it holds.
- `telemetry` (QoS 0): telemetry.telemetry(), every `telemetry_s` (5 s: 0.2 Hz), every
  `watch_telemetry_s` (1 s) while watched: the `watch` command, `{"duration_s": 60}` (at
  most 600), asks for the fast rate and for one document at once.
- `event` (QoS 1): `{"seq", "ts", "type", ...}` (source_lost, source_restored, uplink_down,
  uplink_up, throttled, cooled, state, config_applied, config_rolled_back); kept in a
  bounded ring while offline, sent in order on reconnect.
- `cmd/req` (subscribed): `{"id": "...", "command": "...", "args": {...}, "expires": unix
  time}`; commands: restart_stream, apply_config (`args.config`: a whole config as the
  API's PUT /api/v1/config takes it, masked secrets kept), watch, reboot (only with
  `fleet.allow_reboot`), update (`args.url`: an https:// RAUC bundle, `args.sha256`: its hex
  digest; downloaded with the certificate verified, installed, then the device reboots into
  it; the reply comes when RAUC is done). A repeated id is not run again (nor answered
  again); an expired command is dropped unanswered. The reply `{"id", "command", "ok",
  "result" | "error"}` goes to the request's MQTT 5 response topic (default `cmd/res`) with
  its correlation data.
- `config/desired` (subscribed, retained by the fleet side): `{"version": int, "config":
  {...}, "hash"?: sha256 hex of the config's canonical JSON}`; a version above the last
  one handled is applied like apply_config. `config/reported` (retained): `{"version",
  "hash", "status": applied | rejected | rolled_back, "error", "config_hash", "ts"}`
  (kept in `<state_dir>/fleet/reported.json`); desired and reported have converged when
  version and hash match.
No secret leaves the device: every payload is scrubbed of the configured secrets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.backoff import Backoff
from appliance.config.load import ConfigError, dump, save_atomic, validate
from appliance.config.schema import Config, Fleet
from appliance.fleet import telemetry as tm
from appliance.status import StatusHub
from appliance.update.installer import UpdateError, Updater
from appliance.web.masking import mask, secret_values, unmask

log = logging.getLogger(__name__)

COMMANDS = frozenset({"restart_stream", "apply_config", "watch", "reboot", "update"})
EVENT_RING = 500
REMEMBERED_IDS = 1000
WATCH_MAX_S = 600.0
BACKOFF_CAP_S = 60.0
POLL_S = 0.5
HEALTHY_HOLD_S = 2.0  # healthy this long, after at least SETTLE_S, counts as healthy
SETTLE_S = 3.0
# Sections whose change the daemon applies only at its own restart.
DAEMON_SECTIONS = frozenset({"web", "fleet", "leds", "button", "modem", "thermal", "metrics"})


class Backend(Protocol):
    """What the agent needs of the daemon."""

    cfg: Config

    def config_file(self) -> Path: ...

    async def apply_config(self, cfg: Config) -> list[str]: ...

    async def restart_media(self) -> bool: ...


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config document (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class CommandError(Exception):
    """A refused or failed command: its message is the reply's error."""


class FleetAgent:
    def __init__(self, cfg: Fleet, hub: StatusHub, backend: Backend, state_dir: Path,
                 reboot: Callable[[], Awaitable[None]] | None = None,
                 updater: Updater | None = None) -> None:
        """`updater`: runs the `update` command (None: the command is refused)."""
        self.cfg = cfg
        self.updater = updater
        self.hub = hub
        self.backend = backend
        self.dir = state_dir / "fleet"
        self.prefix = f"fleet/v1/{cfg.device_id}"
        self.session = 0
        self._reboot = reboot or _systemctl_reboot
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_RING)
        self._event_seq = 0
        self._events_ready = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._telemetry_now = asyncio.Event()
        self._watch_until = 0.0
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._apply_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._telemetry_seq = 0
        self.connected = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tasks = [asyncio.create_task(self._run(), name="fleet-agent"),
                       asyncio.create_task(self._watch_hub(), name="fleet-events")]

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish offline (if connected) and disconnect cleanly: no Will."""
        self._stop.set()
        for task in self._command_tasks:
            task.cancel()
        if not self._tasks:
            return
        run, *others = self._tasks
        for task in others:
            task.cancel()
        try:
            await asyncio.wait_for(run, timeout)
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - stopping: only worth a line
            log.warning("fleet: stopping: %r", exc)

    # -- the connection --------------------------------------------------------------------

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _secrets(self) -> list[str]:
        return secret_values(self.backend.cfg)

    def _json(self, payload: dict[str, Any]) -> bytes:
        return json.dumps(tm.scrub(payload, self._secrets()), separators=(",", ":")).encode()

    def _next_session(self) -> int:
        try:
            return int((self.dir / "session").read_text().strip() or 0) + 1
        except (OSError, ValueError):
            return 1

    def _client_for(self, session: int) -> aiomqtt.Client:
        parts = urlsplit(self.cfg.broker)
        tls = parts.scheme == "mqtts"
        tls_context = None
        if tls:
            tls_context = ssl.create_default_context(cafile=self.cfg.ca_file)
            if self.cfg.cert_file and self.cfg.key_file:
                tls_context.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        will = aiomqtt.Will(self.topic("status"),
                            json.dumps({"online": False, "session": session}), qos=1,
                            retain=True)
        return aiomqtt.Client(
            parts.hostname or "localhost", parts.port or (8883 if tls else 1883),
            identifier=self.cfg.device_id, username=self.cfg.username,
            password=self.cfg.password, protocol=aiomqtt.ProtocolVersion.V5, will=will,
            keepalive=self.cfg.keepalive_s, tls_context=tls_context, clean_start=True,
            timeout=10)

    async def _run(self) -> None:
        backoff = Backoff(first=1.0, cap=BACKOFF_CAP_S, jitter=0.3)
        while not self._stop.is_set():
            session = self._next_session()
            try:
                client = self._client_for(session)
                async with client:
                    save_atomic(self.dir / "session", f"{session}\n", mode=0o644)
                    self.session = session
                    self._client = client
                    self.connected = True
                    backoff.reset()
                    log.info("fleet: connected to %s as %s (session %d)", self.cfg.broker,
                             self.cfg.device_id, session)
                    await self._connected(client)
                    if self._stop.is_set():
                        await client.publish(self.topic("status"), self._json(
                            {"online": False, "session": session, "clean": True}),
                            qos=1, retain=True, timeout=3)
                        log.info("fleet: offline published (session %d)", session)
                        return
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                log.warning("fleet: broker %s: %s", self.cfg.broker, exc)
            finally:
                self._client = None
                self.connected = False
            if self._stop.is_set():
                return
            delay = backoff.next_delay()
            log.info("fleet: reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _connected(self, client: aiomqtt.Client) -> None:
        await self._publish_status(client)
        await client.subscribe(self.topic("cmd/req"), qos=1)
        await client.subscribe(self.topic("config/desired"), qos=1)
        await self._publish_reported(client, self._reported())
        tasks = [asyncio.create_task(coro) for coro in (
            self._receive(client), self._send_telemetry(client), self._send_events(client),
            self._send_status(client))]
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [stop, *tasks]:
                task.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topic("status"), self._json(
            {"online": True, "session": self.session, "state": self.hub.state(),
             "since": round(self.hub.started, 3), "ts": round(time.time(), 3)}),
            qos=1, retain=True)

    async def _send_status(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_changed.wait()
            self._status_changed.clear()
            await self._publish_status(client)

    async def _send_telemetry(self, client: aiomqtt.Client) -> None:
        while True:
            self._telemetry_seq += 1
            doc = tm.telemetry(self.hub.snapshot(), self.session, self._telemetry_seq)
            doc["watched"] = time.monotonic() < self._watch_until
            await client.publish(self.topic("telemetry"), self._json(doc), qos=0)
            period = (self.cfg.watch_telemetry_s if time.monotonic() < self._watch_until
                      else self.cfg.telemetry_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._telemetry_now.wait(), period)
            self._telemetry_now.clear()

    # -- events ----------------------------------------------------------------------------

    def add_event(self, type_: str, **fields: Any) -> None:
        self._event_seq += 1
        self._events.append({"seq": self._event_seq, "ts": round(time.time(), 3),
                             "type": type_, **fields})
        self._events_ready.set()

    async def _watch_hub(self) -> None:
        before: dict[str, Any] | None = None
        while True:
            after = self.hub.snapshot()
            for ev in tm.events(before, after):
                self.add_event(ev.pop("type"), **ev)
                if ev.get("to") is not None:
                    self._status_changed.set()
            before = after
            await asyncio.sleep(POLL_S)

    async def _send_events(self, client: aiomqtt.Client) -> None:
        while True:
            while self._events:
                ev = self._events[0]
                await client.publish(self.topic("event"), self._json(
                    {**ev, "session": self.session}), qos=1, timeout=10)
                if self._events and self._events[0] is ev:
                    self._events.popleft()
            self._events_ready.clear()
            await self._events_ready.wait()

    # -- commands and desired config --------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                body = json.loads(bytes(message.payload or b"") or b"null")
            except (ValueError, TypeError):
                log.warning("fleet: %s: not JSON, ignored", message.topic)
                continue
            if message.topic.matches(self.topic("cmd/req")):
                self._spawn(self._command(client, body, message.properties))
            elif message.topic.matches(self.topic("config/desired")):
                self._spawn(self._desired(client, body))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)

    def _remember(self, command_id: str) -> bool:
        """False if the id was seen before."""
        if command_id in self._seen:
            return False
        self._seen[command_id] = time.time()
        while len(self._seen) > REMEMBERED_IDS:
            self._seen.popitem(last=False)
        return True

    async def _command(self, client: aiomqtt.Client, body: Any,
                       props: Properties | None) -> None:
        response_topic = getattr(props, "ResponseTopic", None) or self.topic("cmd/res")
        correlation = getattr(props, "CorrelationData", None)
        if not isinstance(body, dict):
            return await self._reply(client, response_topic, correlation,
                                     {"ok": False, "error": "a command is a JSON object"})
        command_id, command = body.get("id"), body.get("command")
        head = {"id": command_id, "command": command}
        if not isinstance(command_id, str) or not command_id:
            return await self._reply(client, response_topic, correlation,
                                     {**head, "ok": False, "error": "missing id"})
        expires = body.get("expires")
        if isinstance(expires, int | float) and expires <= time.time():
            log.warning("fleet: command %s (%s) expired: dropped", command_id, command)
            return
        if not self._remember(command_id):
            log.info("fleet: command %s (%s) seen before: not run again", command_id, command)
            return
        args = body.get("args") or {}
        try:
            if command not in COMMANDS or not isinstance(args, dict):
                raise CommandError(f"command not allowed: {command!r}" if command not in
                                   COMMANDS else "args must be an object")
            log.info("fleet: running command %s (%s)", command_id, command)
            result = await self._run_command(str(command), args)
            reply = {**head, "ok": True, "result": result}
        except CommandError as exc:
            reply = {**head, "ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a failed command is a reply, not a crash
            log.exception("fleet: command %s failed", command_id)
            reply = {**head, "ok": False, "error": f"failed: {exc!r}"}
        await self._reply(client, response_topic, correlation, reply)
        if command == "reboot" and reply["ok"]:
            await self._reboot()

    async def _reply(self, client: aiomqtt.Client, topic: str, correlation: bytes | None,
                     reply: dict[str, Any]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        target = self._client or client
        try:
            await target.publish(topic, self._json({**reply, "ts": round(time.time(), 3)}),
                                 qos=1, properties=props)
        except aiomqtt.MqttError as exc:  # the connection went: the requester retries
            log.warning("fleet: cannot reply to command %s: %s", reply.get("id"), exc)

    async def _run_command(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "restart_stream":
            if not await self.backend.restart_media():
                raise CommandError("media is off (safe mode): nothing to restart")
            return {"restarted": True}
        if command == "watch":
            duration = args.get("duration_s", 60)
            if not isinstance(duration, int | float) or not 0 <= duration <= WATCH_MAX_S:
                raise CommandError(f"duration_s must be 0..{WATCH_MAX_S:g}")
            self._watch_until = time.monotonic() + float(duration)
            self._telemetry_now.set()
            return {"period_s": self.cfg.watch_telemetry_s, "duration_s": duration}
        if command == "apply_config":
            data = args.get("config")
            restart = await self._apply(data, source="command")
            return {"restart_needed": restart}
        if command == "update":
            url, sha256 = args.get("url"), args.get("sha256")
            if not isinstance(url, str) or not isinstance(sha256, str):
                raise CommandError("update needs args.url and args.sha256 (strings)")
            if self.updater is None:
                raise CommandError("updates are not available on this device")
            try:
                return await self.updater.download_and_install(url, sha256.lower())
            except UpdateError as exc:
                raise CommandError(str(exc)) from None
        if command == "reboot":
            if not self.backend.cfg.fleet or not self.backend.cfg.fleet.allow_reboot:
                raise CommandError("reboot not allowed (fleet.allow_reboot is off)")
            return {"rebooting": True}
        raise CommandError(f"command not allowed: {command!r}")

    async def _apply(self, data: Any, source: str) -> list[str]:
        """Validate, apply, and roll back unless the stream is healthy in time."""
        if not isinstance(data, dict):
            raise CommandError("config must be an object")
        async with self._apply_lock:
            old = self.backend.cfg
            try:
                cfg = validate(unmask(Config, data, old))
            except ConfigError as exc:
                raise CommandError("invalid config: " + "; ".join(exc.errors)) from None
            pending = await self.backend.apply_config(cfg)
            media = [s for s in pending if s not in DAEMON_SECTIONS]
            if media:
                await self.backend.restart_media()
            timeout = self.cfg.apply_timeout_s
            healthy, state = await self._wait_healthy(timeout)
            if not healthy:
                log.warning("fleet: config from %s: stream %s after %.0f s: rolling back",
                            source, state, timeout)
                await self.backend.apply_config(old)
                if media:
                    await self.backend.restart_media()
                self.add_event("config_rolled_back", source=source, state=state)
                raise CommandError(f"rolled back: the stream was not healthy within "
                                   f"{timeout:g} s (state {state})")
            path = self.backend.config_file()
            try:
                await asyncio.to_thread(save_atomic, path, dump(cfg))
            except OSError as exc:
                log.error("fleet: cannot save the config to %s: %s", path, exc.strerror)
            log.info("fleet: config from %s applied", source)
            self.add_event("config_applied", source=source, restart_needed=pending)
            return pending

    async def _wait_healthy(self, timeout: float) -> tuple[bool, str]:
        start = time.monotonic()
        healthy_since: float | None = None
        while True:
            now = time.monotonic()
            state = self.hub.state()
            if state in tm.HEALTHY:
                healthy_since = now if healthy_since is None else healthy_since
                if now - healthy_since >= HEALTHY_HOLD_S and now - start >= SETTLE_S:
                    return True, state
            else:
                healthy_since = None
            if now - start >= timeout:
                return False, state
            await asyncio.sleep(0.25)

    def _reported(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / "reported.json").read_text())
            if isinstance(doc, dict):
                return doc
        except (OSError, ValueError):
            pass
        return {"version": 0, "hash": None, "status": None}

    async def _publish_reported(self, client: aiomqtt.Client, doc: dict[str, Any]) -> None:
        running = mask(Config, self.backend.cfg.model_dump(mode="json"))
        await client.publish(self.topic("config/reported"), self._json(
            {**doc, "config_hash": config_hash(running), "ts": round(time.time(), 3)}),
            qos=1, retain=True)

    async def _desired(self, client: aiomqtt.Client, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("version"), int):
            log.warning("fleet: config/desired without an integer version: ignored")
            return
        version = body["version"]
        reported = self._reported()
        if version <= int(reported.get("version") or 0):
            return  # handled before (the retained document after a reconnect)
        data = body.get("config")
        digest = config_hash(data)
        doc: dict[str, Any] = {"version": version, "hash": digest, "error": None}
        if body.get("hash") not in (None, digest):
            doc.update(status="rejected", error="hash does not match the config")
        else:
            try:
                doc["restart_needed"] = await self._apply(data, source="desired")
                doc["status"] = "applied"
            except CommandError as exc:
                doc.update(status="rolled_back" if str(exc).startswith("rolled back")
                           else "rejected", error=str(exc))
        save_atomic(self.dir / "reported.json", json.dumps(doc), mode=0o644)
        try:
            await self._publish_reported(self._client or client, doc)
        except aiomqtt.MqttError as exc:  # published again on the next connection
            log.warning("fleet: cannot publish the reported config: %s", exc)


async def _systemctl_reboot() -> None:
    log.warning("fleet: rebooting on a remote command")
    proc = await asyncio.create_subprocess_exec("systemctl", "reboot", env=dict(os.environ))
    await proc.wait()
