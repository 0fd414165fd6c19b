"""The fleet agent against a real mosquitto (TLS, client certificates) and the real daemon.

An observer (paho, as a fleet-side client would be) subscribes to `fleet/#` and sends
commands; every payload it ever receives is checked for the config's secrets.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.fleet.desired_config import config_hash
from tests.daemon_proc import free_port, running_daemon
from tests.mqtt_broker import Broker, start_broker
from tests.uplink_peer_nginx import NginxRtmp, nginx_rtmp

DEVICE = "cam-01"
PREFIX = f"fleet/v1/{DEVICE}"
SECRET = "fleet-test-secret-key-4242"


@dataclass
class Received:
    topic: str
    payload: Any
    retain: bool
    correlation: bytes | None
    at: float


class Observer:
    """A fleet-side MQTT 5 client on its own thread, keeping every message on fleet/#."""

    def __init__(self, broker: Broker, name: str = "test-client",
                 login: tuple[str, str] | None = None) -> None:
        self.messages: list[Received] = []
        self.leaks: list[str] = []  # payloads that held a secret
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                  protocol=mqtt.MQTTv5)
        if broker.ca_file is not None:
            self.client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file,
                                keyfile=broker.key_file)
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("fleet/#", qos=1)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        raw = msg.payload.decode()
        if SECRET in raw:
            self.leaks.append(f"{msg.topic}: {raw}")
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self.lock:
            self.messages.append(Received(msg.topic, json.loads(raw) if raw else None,
                                          bool(msg.retain), correlation, time.monotonic()))

    def on(self, topic: str, after: float = 0.0) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic and m.at >= after]

    def wait(self, topic: str, pred: Callable[[Any], bool] = lambda p: True,
             timeout: float = 20, after: float = 0.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.on(topic, after):
                if pred(m.payload):
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing on {topic} in {timeout} s; got "
                                     f"{[m.payload for m in self.on(topic, after)][-5:]}")
            time.sleep(0.05)

    def command(self, command: str, args: dict[str, Any] | None = None, *,
                command_id: str | None = None, expires: float | None = None,
                correlation: bytes | None = None) -> str:
        command_id = command_id or uuid.uuid4().hex
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{PREFIX}/cmd/res"
        props.CorrelationData = correlation or command_id.encode()
        body: dict[str, Any] = {"id": command_id, "command": command, "args": args or {}}
        if expires is not None:
            body["expires"] = expires
        self.client.publish(f"{PREFIX}/cmd/req", json.dumps(body), qos=1,
                            properties=props).wait_for_publish(5)
        return command_id

    def replies(self, command_id: str) -> list[Received]:
        return [m for m in self.on(f"{PREFIX}/cmd/res") if m.payload.get("id") == command_id]

    def wait_reply(self, command_id: str, timeout: float = 30) -> Received:
        return self.wait(f"{PREFIX}/cmd/res", lambda p: p.get("id") == command_id, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        assert not self.leaks, self.leaks


def test_observer_sees_leaks(broker: Broker) -> None:
    # The leak check of every other test must be able to fail.
    o = Observer(broker, "leak-check")
    o.client.publish("fleet/v1/other/event", json.dumps({"key": SECRET}),
                     qos=1).wait_for_publish(5)
    o.wait("fleet/v1/other/event", timeout=5)
    assert o.leaks
    o.leaks.clear()
    o.close()


def fleet_toml(broker: Broker, extra: str = "") -> str:
    cert, key = broker.client_cert(DEVICE)
    return (f'[fleet]\nbroker = "{broker.url}"\ndevice_id = "{DEVICE}"\n'
            f'ca_file = "{broker.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            f"telemetry_s = 3\nwatch_telemetry_s = 0.5\napply_timeout_s = 8\n{extra}")


def uplink_toml(url: str) -> str:
    return f'[[uplink]]\nname = "origin"\nurl = "{url}"\nkey = "{SECRET}"\n'


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mqtt"))
    yield b
    b.stop()


@pytest.fixture
def observer(broker: Broker) -> Iterator[Observer]:
    o = Observer(broker)
    yield o
    o.close()


def status_after(obs: Observer, after: float, pred: Callable[[Any], bool],
                 timeout: float = 20) -> Received:
    return obs.wait(f"{PREFIX}/status", pred, timeout, after)


def test_presence_sessions_will_and_clean_offline(broker: Broker, observer: Observer,
                                                  tmp_path: Path) -> None:
    toml = fleet_toml(broker)
    t0 = time.monotonic()
    with running_daemon(tmp_path, extra=toml) as d:
        online = status_after(observer, t0, lambda p: p["online"])
        n = online.payload["session"]
        assert isinstance(n, int) and n >= 1
        # A late subscriber gets it retained.
        late = Observer(broker, "late")
        try:
            got = late.wait(f"{PREFIX}/status", lambda p: p["online"])
            assert got.retain and got.payload["session"] == n
        finally:
            late.close()
        t1 = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0
        offline = status_after(observer, t1, lambda p: not p["online"], timeout=5)
        assert offline.payload == {**offline.payload, "online": False, "session": n,
                                   "clean": True}
    # The same state dir: the session grows by one per connection.
    t2 = time.monotonic()
    with running_daemon(tmp_path, extra=toml) as d:
        again = status_after(observer, t2, lambda p: p["online"])
        assert again.payload["session"] == n + 1
        t3 = time.monotonic()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        will = status_after(observer, t3, lambda p: not p["online"], timeout=5)
        assert will.payload == {"online": False, "session": n + 1}
        assert will.at - t3 < 2.0  # the broker sees the socket close at once


def test_telemetry_rates_keyed_maps_and_watch(broker: Broker, observer: Observer,
                                              tmp_path: Path) -> None:
    with running_daemon(tmp_path, extra=fleet_toml(broker) + uplink_toml(
            f"rtmp://127.0.0.1:{free_port()}/live")):
        topic = f"{PREFIX}/telemetry"
        first = observer.wait(topic, lambda p: bool(p["rungs"]))
        time.sleep(6.5)
        slow = observer.on(topic, first.at)
        assert 2 <= len(slow) <= 4, [m.at - first.at for m in slow]  # every 3 s
        doc = slow[-1].payload
        assert isinstance(doc["rungs"], dict) and "720p" in doc["rungs"]
        assert doc["rungs"]["720p"]["bitrate_kbps"] == 3000
        assert isinstance(doc["uplinks"], dict) and set(doc["uplinks"]) == {"origin"}
        assert doc["uplinks"]["origin"]["state"] in ("connecting", "retrying")
        assert doc["video"]["fps"] > 0 and doc["state"] == "connecting"
        assert doc["device"]["disk_free_bytes"] > 0
        cid = observer.command("watch", {"duration_s": 30})
        assert observer.wait_reply(cid).payload["ok"] is True
        t = time.monotonic()
        time.sleep(3)
        fast = observer.on(topic, t)
        assert len(fast) >= 4, len(fast)  # every 0.5 s while watched (3 s: 6)
        assert fast[-1].payload["watched"] is True


def test_commands_events_and_rollback(broker: Broker, observer: Observer,
                                      tmp_path: Path) -> None:
    try:
        with nginx_rtmp(tmp_path / "nginx") as nginx:
            check_commands(broker, observer, tmp_path, nginx)
    finally:  # no desired config left retained for the other tests' devices
        observer.client.publish(f"{PREFIX}/config/desired", b"", qos=1,
                                retain=True).wait_for_publish(5)


def check_commands(broker: Broker, observer: Observer, tmp_path: Path,
                   nginx: NginxRtmp) -> None:
    with running_daemon(tmp_path / "d", extra=fleet_toml(broker) + uplink_toml(nginx.url),
                        ) as d:
        observer.wait(f"{PREFIX}/telemetry", lambda p: p["state"] == "live", timeout=30)
        reported = observer.wait(f"{PREFIX}/config/reported")
        assert "config_hash" in reported.payload  # (retained: late subscribers get it)

        # restart_stream, sent twice with the same id: run and answered once.
        cid = observer.command("restart_stream", correlation=b"corr-42")
        observer.command("restart_stream", command_id=cid)
        reply = observer.wait_reply(cid)
        assert reply.payload["ok"] is True and reply.correlation == b"corr-42"
        time.sleep(2)
        assert len(observer.replies(cid)) == 1
        assert d.log().count("running command " + cid) == 1

        # Expired: dropped, never run nor answered.
        old = observer.command("restart_stream", expires=time.time() - 5)
        unknown = observer.command("format_disk")
        refused = observer.wait_reply(unknown).payload
        assert refused["ok"] is False and "not allowed" in refused["error"]
        reboot = observer.wait_reply(observer.command("reboot")).payload
        assert reboot["ok"] is False and "allow_reboot" in reboot["error"]
        assert observer.replies(old) == [] and "running command " + old not in d.log()

        # A bad config: refused with the error naming the key.
        cfg = tomllib.loads((tmp_path / "d" / "appliance.toml").read_text())
        cfg["uplink"][0]["key"] = "**********"  # masked, as a fleet side would hold it
        bad = json.loads(json.dumps(cfg))
        bad["video"]["fps"] = 1000
        r = observer.wait_reply(observer.command("apply_config", {"config": bad})).payload
        assert r["ok"] is False and "video.fps" in r["error"], r

        # A config that breaks the stream (the origin moved to a dead port): rolled back.
        broken = json.loads(json.dumps(cfg))
        broken["uplink"][0]["url"] = f"rtmp://127.0.0.1:{free_port()}/live"
        t = time.monotonic()
        cid = observer.command("apply_config", {"config": broken})
        r = observer.wait_reply(cid, timeout=40).payload
        assert r["ok"] is False and r["error"].startswith("rolled back"), r
        observer.wait(f"{PREFIX}/event", lambda p: p["type"] == "config_rolled_back",
                      after=t)
        observer.wait(f"{PREFIX}/telemetry", lambda p: p["state"] == "live", timeout=30,
                      after=time.monotonic())
        assert nginx.url in (tmp_path / "d" / "appliance.toml").read_text()

        # A good change is applied and kept.
        good = json.loads(json.dumps(cfg))
        good["recording"] = {"enabled": False, "file_s": 30}
        r = observer.wait_reply(observer.command("apply_config", {"config": good}),
                                timeout=40).payload
        assert r["ok"] is True, r
        observer.wait(f"{PREFIX}/event", lambda p: p["type"] == "config_applied")

        # Desired config: applied, reported with the same version and hash.
        desired = {"version": 3, "config": good}
        observer.client.publish(f"{PREFIX}/config/desired", json.dumps(desired), qos=1,
                                retain=True).wait_for_publish(5)
        rep = observer.wait(f"{PREFIX}/config/reported", lambda p: p["version"] == 3,
                            timeout=40).payload
        assert rep["status"] == "applied" and rep["error"] is None
        assert rep["hash"] == config_hash(good)

        assert d.stop(signal.SIGTERM) == 0

    # A new desired version while the device is offline: applied after it reconnects.
    later = json.loads(json.dumps(good))
    later["recording"]["file_s"] = 60
    observer.client.publish(f"{PREFIX}/config/desired", json.dumps(
        {"version": 4, "config": later, "hash": config_hash(later)}), qos=1,
        retain=True).wait_for_publish(5)
    with running_daemon(tmp_path / "d", extra=fleet_toml(broker) + uplink_toml(nginx.url),
                        ) as d:
        rep = observer.wait(f"{PREFIX}/config/reported",
                            lambda p: p["version"] == 4 and p["status"] is not None,
                            timeout=40).payload
        assert rep["status"] == "applied" and rep["hash"] == config_hash(later)
        assert "file_s = 60" in (tmp_path / "d" / "appliance.toml").read_text()

        # The origin goes away: an uplink_down event.
        t = time.monotonic()
        nginx.stop()
        ev = observer.wait(f"{PREFIX}/event", lambda p: p["type"] == "uplink_down",
                           after=t).payload
        assert ev["uplink"] == "origin" and ev["session"] >= 1


def test_events_kept_while_offline_and_sent_on_reconnect(tmp_path: Path) -> None:
    # The device starts while its broker is down: its events (starting -> connecting, the
    # uplink to nowhere) wait in the ring and arrive, in order, once the broker is back.
    first = start_broker(tmp_path / "b1")
    port, ca = first.port, first.ca
    toml = fleet_toml(first)
    first.stop()
    with running_daemon(tmp_path / "d", extra=toml + uplink_toml(
            f"rtmp://127.0.0.1:{free_port()}/live")) as d:
        deadline = time.monotonic() + 20
        while "fleet: broker" not in d.log():
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.2)
        time.sleep(3)  # the media starts meanwhile
        t_back = time.time()
        again = start_broker(tmp_path / "b2", port=port, ca=ca)
        obs = Observer(again)
        try:
            # Jittered backoff: the first retries are quick (1 s, 2 s, 4 s ...).
            ev = obs.wait(f"{PREFIX}/event", lambda p: p["type"] == "state", timeout=30)
            assert ev.payload["ts"] < t_back  # it happened while offline
            seqs = [m.payload["seq"] for m in obs.on(f"{PREFIX}/event")]
            assert seqs == sorted(seqs)
            status = obs.wait(f"{PREFIX}/status", lambda p: p["online"])
            assert status.payload["session"] == 1
            # The broker restarts: the agent comes back with the next session.
            again.stop()
            t = time.monotonic()
            again = start_broker(tmp_path / "b3", port=port, ca=ca)
            obs.close()
            obs = Observer(again)
            status = obs.wait(f"{PREFIX}/status", lambda p: p["online"], timeout=30)
            assert status.payload["session"] == 2
            assert time.monotonic() - t < 20  # backoff starts again at ~1 s
        finally:
            obs.close()
            again.stop()


def test_username_and_password_without_tls(tmp_path: Path) -> None:
    password = SECRET + "-mqtt"
    plain = start_broker(tmp_path / "b", tls=False,
                         passwords={DEVICE: password, "viewer": "viewer-pass"})
    obs = Observer(plain, "viewer", login=("viewer", "viewer-pass"))
    try:
        toml = (f'[fleet]\nbroker = "{plain.url}"\ndevice_id = "{DEVICE}"\n'
                f'username = "{DEVICE}"\npassword = "{password}"\n')
        with running_daemon(tmp_path / "d", extra=toml) as d:
            online = obs.wait(f"{PREFIX}/status", lambda p: p["online"])
            assert online.payload["session"] == 1
            obs.wait(f"{PREFIX}/telemetry")
            assert password not in d.log()
        # A wrong password is refused by the broker: no status from that device.
        bad = toml.replace(password, "wrong").replace(DEVICE + '"\nusername', 'cam-02"\nusername')
        with running_daemon(tmp_path / "d2", extra=bad) as d:
            deadline = time.monotonic() + 20
            while "fleet: broker" not in d.log():
                assert time.monotonic() < deadline, d.log()
                time.sleep(0.2)
            assert not obs.on("fleet/v1/cam-02/status")
    finally:
        obs.close()  # also: the password never reached a subscriber
        plain.stop()


def test_events_derived_from_hub_changes() -> None:
    from appliance.fleet import telemetry as tm
    from appliance.status import StatusHub

    hub = StatusHub()
    hub.update("media.video", state="live", fps=30)
    hub.update("uplink.a", enabled=True, state="live")
    hub.update("thermal", degraded=False, temp_c=50)
    before = hub.snapshot()
    assert tm.events(None, before) == []
    hub.update("uplink.a", state="retrying")
    hub.update("thermal", degraded=True, temp_c=85, level=1)
    hub.update("media.video", state="no_source")
    types = [e["type"] for e in tm.events(before, hub.snapshot())]
    assert types == ["source_lost", "uplink_down", "throttled", "state"]
    doc = tm.telemetry(hub.snapshot(), session=3, seq=1)
    assert doc["uplinks"] == {"a": {"enabled": True, "state": "retrying"}}
    assert doc["session"] == 3 and doc["device"]["temp_c"] == 85
    assert tm.scrub({"e": f"rtmp://h/live/{SECRET}", SECRET: [SECRET]}, [SECRET, ""]) == {
        "e": "rtmp://h/live/**********", "**********": ["**********"]}
