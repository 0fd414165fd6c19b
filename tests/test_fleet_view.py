"""`appliance fleet --once` against a real mosquitto with retained status and telemetry."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.fleet.view import FleetModel, FleetViewError, parse_broker_url, render
from tests.mqtt_broker import Broker, start_broker

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None
                                and not Path("/usr/sbin/mosquitto").exists(),
                                reason="mosquitto not installed (scripts/setup.sh --test)")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path, tls=False)
    yield b
    b.stop()


async def _publish(port: int, docs: list[tuple[str, dict[str, object]]]) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        for topic, doc in docs:
            await client.publish(topic, json.dumps(doc), qos=1, retain=True)


def test_fleet_once_shows_a_row_per_device(broker: Broker) -> None:
    now = time.time()
    asyncio.run(_publish(broker.port, [
        ("fleet/v1/cam-01/status", {"online": True, "session": 4, "state": "live"}),
        ("fleet/v1/cam-01/telemetry", {
            "ts": now - 3, "session": 4, "seq": 17, "state": "live",
            "device": {"temp_c": 51.5, "cpu_percent": 20.0, "throttled": {}},
            "rungs": {"720p": {"bitrate_kbps": 3000}, "480p": {"bitrate_kbps": 1000}},
            "uplinks": {"primary": {"state": "live"}, "backup": {"state": "retrying"}}}),
        ("fleet/v1/cam-02/status", {"online": False, "session": 9}),
        ("fleet/v1/cam-02/telemetry", {
            "ts": now - 600, "session": 9, "state": "no_source", "device": {"temp_c": 40.0},
            "rungs": {}, "uplinks": {}}),
        # not a device document: must not become a row
        ("fleet/v1/cam-03/event", {"kind": "source_lost"}),
    ]))
    env = dict(os.environ, APPLIANCE_LOG_LEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "fleet", "--broker", broker.url, "--once", "1.5"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "ONLINE", "STATE"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {"cam-01", "cam-02"}, proc.stdout
    one, two = rows["cam-01"].split(), rows["cam-02"].split()
    assert one[1:3] == ["online", "live"]
    assert "4.0 Mb/s" in rows["cam-01"]
    assert "backup:retrying primary:live" in rows["cam-01"]
    assert "51.5C" in rows["cam-01"]
    assert two[1:3] == ["offline", "no_source"]
    assert "40.0C" in rows["cam-02"] and "10m ago" in rows["cam-02"]
    assert lines[-1] == "2 device(s), 1 online"


def test_fleet_unreachable_broker_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "fleet", "--broker", "mqtt://127.0.0.1:1",
         "--once", "1"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2
    assert "appliance fleet: broker 127.0.0.1:1" in proc.stderr


def test_late_will_of_an_old_session_is_ignored() -> None:
    model = FleetModel()
    model.feed("fleet/v1/cam-01/status", b'{"online": true, "session": 5}', now=100.0)
    model.feed("fleet/v1/cam-01/status", b'{"online": false, "session": 4}', now=101.0)
    assert model.devices["cam-01"].online is True
    model.feed("fleet/v1/cam-01/status", b'{"online": false, "session": 5}', now=102.0)
    assert model.devices["cam-01"].online is False
    model.feed("fleet/v1/cam-01/status", b"", now=103.0)  # retained status cleared
    assert "cam-01" not in model.devices
    model.feed("fleet/v1/cam-02/status", b"not json", now=104.0)
    assert render(model, now=105.0).splitlines()[-1] == "0 device(s), 0 online"


def test_broker_urls() -> None:
    assert parse_broker_url("mqtts://fleet.example.com").port == 8883
    assert parse_broker_url("mqtt://h:1884").port == 1884
    with pytest.raises(FleetViewError):
        parse_broker_url("http://h")
    with pytest.raises(FleetViewError):
        parse_broker_url("mqtt://user:secret@h")


def test_rows_from_the_agents_own_telemetry_document() -> None:
    """The view reads what appliance/fleet/telemetry.py actually builds."""
    from appliance.fleet.telemetry import telemetry

    snapshot = {"state": "degraded", "uptime_s": 50, "sections": {
        "encode.720p": {"bitrate_kbps": 3000}, "encode.360p": {"bitrate_kbps": 800},
        "uplink.primary": {"state": "live"}, "uplink.backup": {"state": "down"},
        "thermal": {"temp_c": 77.25}}}
    model = FleetModel()
    model.feed("fleet/v1/cam-09/status", b'{"online": true, "session": 2, "state": "live"}')
    model.feed("fleet/v1/cam-09/telemetry", json.dumps(telemetry(snapshot, 2, 1)).encode())
    (row,) = model.rows()
    assert (row.online, row.state, row.bitrate_bps, row.temperature_c) == (
        True, "degraded", 3_800_000, 77.25)
    assert row.uplinks == {"backup": "down", "primary": "live"}
    line = render(model).splitlines()[1]
    assert line.split()[:4] == ["cam-09", "online", "degraded", "3.8"]
    assert "0s ago" in line


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_fleet_with_username_and_password_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("ops:s3cret-pw\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=30)
    b = start_broker(tmp_path, tls=False,
                     extra_conf=f"allow_anonymous false\npassword_file {passwd}\n")
    try:
        pw_file = tmp_path / "pw"
        base = [sys.executable, "-m", "appliance", "fleet", "--broker", b.url, "--once", "0.5",
                "--username", "ops", "--password-file", str(pw_file)]
        pw_file.write_text("s3cret-pw\n")
        ok = subprocess.run(base, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.splitlines()[-1] == "0 device(s), 0 online"
        pw_file.write_text("wrong\n")
        bad = subprocess.run(base, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert bad.returncode == 2 and "appliance fleet: broker" in bad.stderr
        assert "wrong" not in bad.stderr
    finally:
        b.stop()
