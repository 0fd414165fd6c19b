"""fleet/mosquitto as shipped (a test copy on a free port) with certificates from
fleet/pki/mint.sh: identities, ACLs and what a client without a certificate gets."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from tests.daemon_proc import free_port
from tests.mqtt_broker import MOSQUITTO, run_mosquitto

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "fleet"


pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists() or shutil.which("openssl") is None,
                                reason="mosquitto/openssl not installed (scripts/setup.sh --test)")

DEVICES = ("cam-a", "cam-b")


def mint(out: Path, *names: str, operators: tuple[str, ...] = ("fleet-operator",)) -> None:
    args = ["bash", str(FLEET / "pki/mint.sh"), "-o", str(out)]
    for op in operators:
        args += ["--operator", op]
    if operators:
        args += ["--bridge", "fleet-bridge"]
    subprocess.run(args + list(names), check=True, capture_output=True, timeout=60)


@dataclass
class FleetBroker:
    port: int
    pki: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def broker_config(tmp: Path, pki: Path, port: int) -> str:
    """fleet/mosquitto/mosquitto.conf with the test's paths and port."""
    conf = (FLEET / "mosquitto/mosquitto.conf").read_text()
    assert "listener 8883\n" in conf and "/etc/mosquitto/fleet/" in conf
    conf = conf.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    conf = conf.replace("/etc/mosquitto/fleet/fleet.acl", str(tmp / "fleet.acl"))
    conf = conf.replace("/etc/mosquitto/fleet/", f"{pki}/")
    conf += "log_dest stderr\nlog_type all\n"
    if os.geteuid() == 0:  # else mosquitto drops to user "mosquitto", who can't read the keys
        conf += "user root\n"
    return conf


# Debian's /etc/mosquitto/mosquitto.conf, which includes conf.d/ where ours goes.
DEBIAN_MAIN = """pid_file /run/mosquitto/mosquitto.pid
persistence true
persistence_location /var/lib/mosquitto/
log_dest file /var/log/mosquitto/mosquitto.log
include_dir /etc/mosquitto/conf.d
"""


def main_config(tmp: Path) -> str:
    """The package's main config (the installed one if present) with the test's paths: our
    file must load as a drop-in beside it (no duplicate settings)."""
    installed = Path("/etc/mosquitto/mosquitto.conf")
    text = installed.read_text() if installed.exists() else DEBIAN_MAIN
    out = []
    for line in text.splitlines():
        key, _, _ = line.partition(" ")
        if key in ("pid_file", "log_dest"):
            continue
        if key == "persistence_location":
            line = f"persistence_location {tmp}/"
        elif key == "include_dir":
            line = f"include_dir {tmp / 'conf.d'}"
        out.append(line)
    return "\n".join(out) + "\n"


def start_fleet_broker(tmp: Path) -> FleetBroker:
    pki = tmp / "pki"
    mint(pki, *DEVICES)
    shutil.copy(FLEET / "mosquitto/fleet.acl", tmp / "fleet.acl")
    port = free_port()
    (tmp / "conf.d").mkdir()
    (tmp / "conf.d/fleet.conf").write_text(broker_config(tmp, pki, port))
    conf_path = tmp / "mosquitto.conf"
    conf_path.write_text(main_config(tmp))
    log = tmp / "mosquitto.log"
    proc = run_mosquitto(conf_path, port, log)
    return FleetBroker(port, pki, proc, log)


@pytest.fixture
def fleet_broker(tmp_path: Path) -> Iterator[FleetBroker]:
    b = start_fleet_broker(tmp_path)
    yield b
    b.stop()


def _client(b: FleetBroker, identity: str | None, client_id: str | None = None,
            pki: Path | None = None, timeout: float = 5) -> aiomqtt.Client:
    ctx = ssl.create_default_context(cafile=str(b.pki / "ca.crt"))
    if identity is not None:
        base = pki or b.pki
        ctx.load_cert_chain(str(base / f"{identity}.crt"), str(base / f"{identity}.key"))
    return aiomqtt.Client("127.0.0.1", b.port, identifier=client_id or identity,
                          tls_context=ctx, protocol=aiomqtt.ProtocolVersion.V5, timeout=timeout)


async def _until(client: aiomqtt.Client, last_topic: str,
                 timeout: float = 5) -> list[tuple[str, bytes]]:
    """Messages received up to and including one on `last_topic`."""
    got: list[tuple[str, bytes]] = []

    async def read() -> None:
        async for m in client.messages:
            got.append((str(m.topic), bytes(m.payload)))
            if str(m.topic) == last_topic:
                return

    await asyncio.wait_for(read(), timeout)
    return got


def test_mint_keys_are_private(tmp_path: Path) -> None:
    mint(tmp_path, "cam-x")
    for key in ("ca.key", "server.key", "cam-x.key", "fleet-operator.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600, key
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                              str(tmp_path / "cam-x.crt")], capture_output=True, text=True,
                             check=True).stdout
    assert "CN = cam-x" in subject or "CN=cam-x" in subject
    bad = subprocess.run(["bash", str(FLEET / "pki/mint.sh"), "-o", str(tmp_path), "cam/+"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a valid identity" in bad.stderr


async def test_device_writes_only_its_own_topics(fleet_broker: FleetBroker) -> None:
    async with _client(fleet_broker, "fleet-operator") as op:
        await op.subscribe("fleet/v1/+/#", qos=1)
        async with _client(fleet_broker, "cam-a") as a:
            await a.publish("fleet/v1/cam-a/status", b'{"online":true,"session":1}', qos=1,
                            retain=True)
            await a.publish("fleet/v1/cam-b/status", b'{"online":false,"session":99}', qos=1,
                            retain=True)
            await a.publish("fleet/v1/cam-a/cmd/req", b'{"id":"self"}', qos=1)
            await a.publish("fleet/v1/cam-a/config/desired", b'{"v":1}', qos=1)
            await a.publish("fleet/v1/cam-a/event", b'{"end":1}', qos=1)
            got = await _until(op, "fleet/v1/cam-a/event")
    topics = [t for t, _ in got]
    assert "fleet/v1/cam-a/status" in topics
    assert "fleet/v1/cam-b/status" not in topics
    assert "fleet/v1/cam-a/cmd/req" not in topics
    assert "fleet/v1/cam-a/config/desired" not in topics


async def test_device_reads_only_its_own_commands(fleet_broker: FleetBroker) -> None:
    async with _client(fleet_broker, "cam-a") as a:
        await a.subscribe("fleet/v1/cam-b/cmd/req", qos=1)
        await a.subscribe("fleet/v1/cam-b/status", qos=1)
        await a.subscribe("fleet/v1/+/config/desired", qos=1)
        await a.subscribe("fleet/v1/cam-a/cmd/req", qos=1)
        async with _client(fleet_broker, "cam-b") as b:
            await b.publish("fleet/v1/cam-b/status", b'{"online":true,"session":1}', qos=1)
        async with _client(fleet_broker, "fleet-operator") as op:
            await op.publish("fleet/v1/cam-b/cmd/req", b'{"id":"for-b"}', qos=1)
            await op.publish("fleet/v1/cam-b/config/desired", b'{"v":2}', qos=1)
            await op.publish("fleet/v1/cam-a/cmd/req", b'{"id":"for-a"}', qos=1)
        got = await _until(a, "fleet/v1/cam-a/cmd/req")
    assert got == [("fleet/v1/cam-a/cmd/req", b'{"id":"for-a"}')]


async def test_operator_reads_all_and_commands_a_device(fleet_broker: FleetBroker) -> None:
    async with _client(fleet_broker, "cam-b") as b:
        await b.publish("fleet/v1/cam-b/status", b'{"online":true,"session":3}', qos=1,
                        retain=True)
    async with _client(fleet_broker, "cam-a") as a:
        await a.subscribe("fleet/v1/cam-a/cmd/req", qos=1)
        async with _client(fleet_broker, "fleet-operator") as op:
            await op.subscribe("fleet/v1/+/status", qos=1)
            retained = await _until(op, "fleet/v1/cam-b/status")
            await op.publish("fleet/v1/cam-a/cmd/req", b'{"id":"c1","cmd":"restart_stream"}',
                             qos=1)
        got = await _until(a, "fleet/v1/cam-a/cmd/req")
    assert retained[-1] == ("fleet/v1/cam-b/status", b'{"online":true,"session":3}')
    assert got[-1][1] == b'{"id":"c1","cmd":"restart_stream"}'


async def test_client_without_a_fleet_certificate_is_refused(fleet_broker: FleetBroker,
                                                             tmp_path: Path) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with _client(fleet_broker, None, client_id="anon", timeout=2):
            pass
    # A certificate from another CA, with a device's name, is refused too.
    other = tmp_path / "other-pki"
    mint(other, "cam-a")
    with pytest.raises(aiomqtt.MqttError):
        async with _client(fleet_broker, "cam-a", pki=other, timeout=2):
            pass


async def test_a_device_using_another_client_id_still_writes_only_as_itself(
        fleet_broker: FleetBroker) -> None:
    """mosquitto can't bind the client id to the certificate (see fleet/README.md): cam-a may
    connect as client id "cam-b", but the ACL keys on the certificate, so it still cannot
    speak for cam-b."""
    async with _client(fleet_broker, "fleet-operator") as op:
        await op.subscribe("fleet/v1/+/#", qos=1)
        async with _client(fleet_broker, "cam-a", client_id="cam-b") as a:
            await a.publish("fleet/v1/cam-b/status", b'{"online":false,"session":999}', qos=1)
            await a.publish("fleet/v1/cam-a/event", b'{"end":1}', qos=1)
            got = await _until(op, "fleet/v1/cam-a/event")
    assert [t for t, _ in got] == ["fleet/v1/cam-a/event"]


async def test_bridge_reads_telemetry_but_no_commands_and_writes_nothing(
        fleet_broker: FleetBroker) -> None:
    async with _client(fleet_broker, "fleet-bridge") as bridge:
        await bridge.subscribe("fleet/v1/+/+", qos=1)
        await bridge.subscribe("fleet/v1/+/cmd/req", qos=1)
        async with _client(fleet_broker, "fleet-operator") as op:
            await op.subscribe("fleet/v1/#", qos=1)
            await bridge.publish("fleet/v1/cam-a/cmd/req", b'{"id":"from-bridge"}', qos=1)
            await op.publish("fleet/v1/cam-a/cmd/req", b'{"id":"op"}', qos=1)
            async with _client(fleet_broker, "cam-a") as a:
                await a.publish("fleet/v1/cam-a/telemetry", b'{"ts":1}', qos=1)
            seen_by_op = await _until(op, "fleet/v1/cam-a/telemetry")
        got = await _until(bridge, "fleet/v1/cam-a/telemetry")
    assert got == [("fleet/v1/cam-a/telemetry", b'{"ts":1}')]
    assert ("fleet/v1/cam-a/cmd/req", b'{"id":"from-bridge"}') not in seen_by_op
    assert ("fleet/v1/cam-a/cmd/req", b'{"id":"op"}') in seen_by_op


async def test_a_duplicate_client_id_cannot_take_over_another_device(
        fleet_broker: FleetBroker) -> None:
    """cam-a connecting with client id "cam-b" does not knock cam-b off: the shipped
    config makes the certificate identity the client id (use_username_as_clientid)."""
    async with (_client(fleet_broker, "cam-b") as b,
                _client(fleet_broker, "cam-a", client_id="cam-b")):
        for _ in range(30):
            await b.publish("fleet/v1/cam-b/event", b"{}", qos=1, timeout=1)
            await asyncio.sleep(0.05)


def test_fleet_view_over_tls_with_the_operator_certificate(fleet_broker: FleetBroker) -> None:
    import sys

    async def publish() -> None:
        async with _client(fleet_broker, "cam-a") as a:
            await a.publish("fleet/v1/cam-a/status",
                            b'{"online":true,"session":2,"state":"live"}', qos=1, retain=True)

    asyncio.run(publish())
    pki = fleet_broker.pki
    base = [sys.executable, "-m", "appliance", "fleet", "--broker",
            f"mqtts://127.0.0.1:{fleet_broker.port}", "--ca", str(pki / "ca.crt"), "--once", "1"]
    ok = subprocess.run(base + ["--cert", str(pki / "fleet-operator.crt"),
                                "--key", str(pki / "fleet-operator.key")],
                        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1].split()[:3] == ["cam-a", "online", "live"]
    # a device certificate sees nothing of the fleet (its ACL allows no status reads)
    dev = subprocess.run(base + ["--cert", str(pki / "cam-b.crt"), "--key", str(pki / "cam-b.key")],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert dev.returncode == 0, dev.stderr
    assert dev.stdout.splitlines()[-1] == "0 device(s), 0 online"
    nocert = subprocess.run(base, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert nocert.returncode == 2 and "appliance fleet: broker" in nocert.stderr
