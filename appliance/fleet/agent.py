"""The fleet agent: one outbound MQTT 5 connection (aiomqtt) to the fleet broker.

Topics, all JSON, under `fleet/v1/<device_id>/`:
- `status` (retained, QoS 1): `{"online": true, "session": N, "state": ..., "since": ts}`
  on connect and on each device state change; the Last Will is `{"online": false,
  "session": N}`, and a clean shutdown publishes `{"online": false, "session": N,
  "clean": true}`. N grows by one per connection (kept in `<state_dir>/fleet/session`), so
  a consumer ignores a Will whose session is older than the status it holds.
- `telemetry` (QoS 0): telemetry.telemetry(), every `telemetry_s` (5 s: 0.2 Hz), every
  `watch_telemetry_s` (1 s) while watched (the `watch` command).
- `event` (QoS 1): `{"seq", "ts", "type", ...}` (source_lost, source_restored, uplink_down,
  uplink_up, throttled, cooled, state, config_applied, config_rolled_back); kept in a
  bounded ring while offline, sent in order on reconnect.
- `cmd/req` (subscribed): a command (commands.py); the reply goes to the request's MQTT 5
  response topic (default `cmd/res`) with its correlation data.
- `config/desired` (subscribed, retained by the fleet side) and `config/reported`
  (retained): the config the fleet wants, and how applying it went (desired_config.py).
No secret leaves the device: every payload is scrubbed of the configured secrets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.backoff import Backoff
from appliance.config.load import save_atomic
from appliance.config.schema import Fleet
from appliance.fleet import telemetry as tm
from appliance.fleet.commands import Commands
from appliance.fleet.desired_config import ConfigBackend, DesiredConfig
from appliance.status import StatusHub
from appliance.update.installer import Updater
from appliance.web.masking import secret_values

log = logging.getLogger(__name__)

EVENT_RING = 500
BACKOFF_CAP_S = 60.0
POLL_S = 0.5


class FleetAgent:
    def __init__(self, cfg: Fleet, hub: StatusHub, backend: ConfigBackend, state_dir: Path,
                 reboot: Callable[[], Awaitable[None]] | None = None,
                 updater: Updater | None = None) -> None:
        """`updater`: runs the `update` command (None: the command is refused)."""
        self.cfg = cfg
        self.hub = hub
        self.backend = backend
        self.dir = state_dir / "fleet"
        self.prefix = f"fleet/v1/{cfg.device_id}"
        self.session = 0
        self.desired = DesiredConfig(backend, hub.state, self.add_event,
                                     self.dir / "reported.json", cfg.apply_timeout_s)
        self.commands = Commands(backend, self.desired.apply, self._watch,
                                 cfg.watch_telemetry_s, reboot=reboot, updater=updater)
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_RING)
        self._event_seq = 0
        self._events_ready = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._telemetry_now = asyncio.Event()
        self._watch_until = 0.0
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
        await self._publish_reported(client, self.desired.reported())
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

    def _watch(self, duration_s: float) -> None:
        """Telemetry at the fast rate for `duration_s`, and one document at once."""
        self._watch_until = time.monotonic() + duration_s
        self._telemetry_now.set()

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

    async def _command(self, client: aiomqtt.Client, body: Any,
                       props: Properties | None) -> None:
        response_topic = getattr(props, "ResponseTopic", None) or self.topic("cmd/res")
        correlation = getattr(props, "CorrelationData", None)
        await self.commands.handle(
            body, functools.partial(self._reply, client, response_topic, correlation))

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

    async def _publish_reported(self, client: aiomqtt.Client, doc: dict[str, Any]) -> None:
        await client.publish(self.topic("config/reported"), self._json(self.desired.report(doc)),
                             qos=1, retain=True)

    async def _desired(self, client: aiomqtt.Client, body: Any) -> None:
        doc = await self.desired.handle(body)
        if doc is None:
            return
        try:
            await self._publish_reported(self._client or client, doc)
        except aiomqtt.MqttError as exc:  # published again on the next connection
            log.warning("fleet: cannot publish the reported config: %s", exc)

