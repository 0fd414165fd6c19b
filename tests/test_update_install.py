"""Installing: the real RAUC service (root) on a private system D-Bus, with the image's D-Bus
policy, the image's system.conf and the tryboot backend on a vfat image, driven by the
installer (web upload, fleet command) through its real D-Bus client `rauc install`.

What a host cannot do: mount a verity bundle (no device mapper here) and write the slots.
So RAUC checks signature, board and manifest for real here and then fails at mounting;
the install itself, the reboot and the rollback run in the QEMU image tests. Only the one
test of the success path (the reboot request) uses a stand-in for `rauc`, and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appliance.config.schema import Fleet
from appliance.device.leds import leds_for
from appliance.fleet.agent import FleetAgent
from appliance.fleet.commands import CommandError
from appliance.status import StatusHub, derive_state
from appliance.update.installer import REBOOT_REQUEST, UpdateError, Updater
from appliance.update.tryboot import AUTOBOOT, Autoboot, Backend, MtoolsStore
from tests.api_client import admin
from tests.daemon_proc import running_daemon
from tests.test_update_bundle import ROOT, Bundles, make_bundles, run
from tests.test_update_tryboot import vfat_image

POLICY = ROOT / "image/rootfs/etc/dbus-1/system.d/appliance-rauc.conf"
DAEMON_USER = "nobody"  # stands for the appliance user, whom this machine does not have

for _tool in ("dbus-daemon", "runuser"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} not installed (scripts/setup.sh --test)", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("RAUC's service runs as root", allow_module_level=True)

# A system bus as Debian's system.conf makes it (method calls denied unless a policy
# allows them), then Debian rauc-service's policy (anyone may call RAUC), then ours.
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <policy context="default"><allow send_destination="de.pengutronix.rauc"/></policy>
  <policy user="root"><allow own="de.pengutronix.rauc"/></policy>
  <include>{policy}</include>
</busconfig>
"""


class Rauc:
    def __init__(self, d: Path, bundles: Bundles, bus: str):
        self.dir, self.bundles = d, bundles
        self.env = {"DBUS_SYSTEM_BUS_ADDRESS": bus}
        self.bootsel = str(vfat_image(d / "bootsel.vfat"))
        MtoolsStore(self.bootsel).write(AUTOBOOT, Autoboot("a", "a").render())
        backend = d / "boot-backend"  # RAUC passes no arguments of ours: a wrapper has them
        backend.write_text(f"#!/bin/sh\nexec {sys.executable} -m appliance.update.tryboot "
                           f"--image {self.bootsel} --booted a \"$@\"\n")
        backend.chmod(0o755)
        venv = str(ROOT / ".venv/bin")
        self.conf = bundles.system_conf(
            d / "system.conf", **{"/data/rauc/status": str(d / "status"),
                                  "/etc/rauc/keyring.pem": str(bundles.keyring),
                                  "/opt/appliance/.venv/bin/appliance-boot-backend":
                                      str(backend),
                                  "/opt/appliance/.venv/bin": venv})

    def autoboot(self) -> Autoboot:
        return Backend(MtoolsStore(self.bootsel), "a").load()

    def client(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", user, "--"] if user else []
        return subprocess.run([*prefix, "rauc", *argv], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, **self.env})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def rauc(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Iterator[Rauc]:
    d = tmp_path_factory.mktemp("rauc")
    # The bus socket where the unprivileged clients can reach it (pytest's tmp is 0700).
    sock_dir = Path(tempfile.mkdtemp(prefix="appliance-bus-"))
    sock_dir.chmod(0o755)
    policy = d / "policy.conf"
    policy.write_text(POLICY.read_text().replace('user="appliance"', f'user="{DAEMON_USER}"'))
    (d / "bus.conf").write_text(BUS_CONF.format(socket=sock_dir / "bus", policy=policy))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={d / 'bus.conf'}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = Rauc(d, bundles, f"unix:path={sock_dir / 'bus'}")
    with open(d / "service.log", "wb") as log:
        service = subprocess.Popen(
            ["rauc", f"--conf={r.conf}", f"--mount={d / 'mnt'}", "--override-boot-slot=a",
             "service"], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **r.env})
    try:
        deadline = time.monotonic() + 20
        while r.client("status").returncode != 0:
            assert service.poll() is None, (d / "service.log").read_text()
            assert time.monotonic() < deadline, "rauc service did not come up"
            time.sleep(0.2)
        yield r
    finally:
        for p in (service, bus):
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(sock_dir)


def test_rauc_drives_the_tryboot_backend(rauc: Rauc) -> None:
    r = rauc.client("status", "mark-active", "other")
    assert r.returncode == 0, r.stderr
    assert rauc.autoboot() == Autoboot("a", "b")  # armed: the next tryboot tries b
    status = json.loads(rauc.client("status", "--output-format=json").stdout)
    assert status["booted"] == "a" and status["boot_primary"] == "rootfs.1"
    r = rauc.client("status", "mark-good", "booted")  # what appliance-mark-good runs
    assert r.returncode == 0, r.stderr
    assert rauc.autoboot() == Autoboot("a", "a")


def test_dbus_policy_lets_only_the_daemon_user_install(rauc: Rauc) -> None:
    # The client checks that the file exists: somewhere the other users can reach.
    shared = Path(tempfile.mkdtemp(prefix="appliance-update-"))
    shared.chmod(0o755)
    bundle = shared / "b.raucb"
    shutil.copy(rauc.bundles.other_ca, bundle)
    bundle.chmod(0o644)
    r = rauc.client("install", str(bundle), user=DAEMON_USER)
    assert "Verifying signature" in r.stdout, r.stdout + r.stderr  # RAUC took the call
    r = rauc.client("status", "mark-good", "booted", user=DAEMON_USER)
    assert r.returncode != 0 and "Rejected send message" in r.stdout + r.stderr
    r = rauc.client("install", str(bundle), user="daemon")
    assert r.returncode != 0 and "Rejected send message" in r.stdout + r.stderr
    assert "Verifying signature" not in r.stdout
    shutil.rmtree(shared)


@pytest.fixture
def on_bus(rauc: Rauc, monkeypatch: pytest.MonkeyPatch) -> Rauc:
    """The installer's `rauc install` finds the private bus (it inherits the environment)."""
    for k, v in rauc.env.items():
        monkeypatch.setenv(k, v)
    return rauc


class RecordingHub(StatusHub):
    """Keeps every `update` section it is given: progress lines come faster than a poll."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[str, int, str]] = []

    def update(self, section: str, **fields: Any) -> None:
        super().update(section, **fields)
        if section == "update":
            self.updates.append((fields["state"], fields["percent"], fields["message"]))


async def test_installer_reports_what_rauc_refuses(on_bus: Rauc, tmp_path: Path) -> None:
    hub = RecordingHub()
    updater = Updater(hub, tmp_path / "update")
    seen = hub.updates

    async def install(src: Path) -> str:
        bundle = tmp_path / "incoming.raucb"
        shutil.copy(src, bundle)
        with pytest.raises(UpdateError) as exc:
            await updater.install(bundle)
        assert not bundle.exists()  # not kept after RAUC is done with it
        assert hub.snapshot()["sections"]["update"]["state"] == "failed"
        return str(exc.value)

    assert "signature verification failed" in await install(on_bus.bundles.other_ca)
    assert ("installing", 20, "Verifying signature") in seen
    seen.clear()
    # The signature passes; this machine cannot mount the verity bundle, which RAUC 1.8
    # does before it compares `compatible` and runs the pre-install handler (the QEMU tests
    # install for real). Nothing was written: the boot selection is as it was.
    message = await install(on_bus.bundles.good)
    assert "mount" in message.lower(), message
    assert ("installing", 60, "Checking manifest contents done.") in seen
    assert on_bus.autoboot() == Autoboot("a", "a")
    assert derive_state(hub.snapshot()["sections"]) != "maintenance"


async def test_success_asks_for_the_reboot(tmp_path: Path) -> None:
    """STAND-IN for `rauc`: a host cannot complete an install (see the module docstring).
    It prints what `rauc install` prints when it succeeds."""
    fake = tmp_path / "rauc"
    fake.write_text("#!/bin/sh\necho installing\necho '  0% Installing'\n"
                    "echo ' 80% Copying image to rootfs.1'\necho '100% Installing done.'\n"
                    "echo 'Installing `'\"$2\"'` succeeded'\n")
    fake.chmod(0o755)
    hub = StatusHub()
    updater = Updater(hub, tmp_path / "update", rauc=str(fake))
    (tmp_path / "update").mkdir()
    bundle = tmp_path / "update/incoming.raucb"
    bundle.write_bytes(b"bundle")
    assert await updater.install(bundle) == {"installed": True, "rebooting": True}
    assert (tmp_path / "update" / REBOOT_REQUEST).exists()
    section = hub.snapshot()["sections"]["update"]
    assert (section["state"], section["percent"]) == ("rebooting", 100)
    # Rebooting is part of the update: the LEDs alternate until the device goes down.
    assert derive_state(hub.snapshot()["sections"]) == "maintenance"
    assert leds_for("maintenance") == {"green": "alternate-2hz", "red": "alternate-2hz"}


def test_web_upload_with_auth_csrf_and_progress(on_bus: Rauc, tmp_path: Path) -> None:
    env = {"APPLIANCE_UPDATE_DIR": str(tmp_path / "update"), **on_bus.env}
    with running_daemon(tmp_path / "d", env=env) as d:
        body = on_bus.bundles.other_ca.read_bytes()
        octets = {"Content-Type": "application/octet-stream"}
        c = admin(d)
        assert c.get("/api/v1/update").json()["state"] == "idle"
        no_csrf = c.call("POST", "/api/v1/update", raw=body, headers=octets, csrf=False)
        assert no_csrf.status == 403
        anonymous = type(c)(d.url).call("POST", "/api/v1/update", raw=body, headers=octets)
        assert anonymous.status == 401
        assert c.call("POST", "/api/v1/update", raw=body).status == 415  # JSON: not a bundle
        r = c.call("POST", "/api/v1/update", raw=body, headers=octets)
        assert r.status == 202, r.body
        assert r.json()["state"] in ("downloading", "installing", "failed")
        deadline = time.monotonic() + 30
        while (u := c.get("/api/v1/update").json())["state"] != "failed":
            assert time.monotonic() < deadline, u
            time.sleep(0.2)
        assert "signature verification failed" in u["message"]
        assert c.get("/api/v1/status").json()["sections"]["update"]["state"] == "failed"
        assert not any((tmp_path / "update").iterdir())  # the refused bundle is gone
        spec = c.get("/api/v1/openapi.json").json()["paths"]["/api/v1/update"]
        assert "application/octet-stream" in spec["post"]["requestBody"]["content"]


# -- the fleet's update command --------------------------------------------------------


def _tls_server_cert(d: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for 127.0.0.1 issued by it."""
    def ossl(*a: str | Path) -> None:
        r = run("openssl", *a)
        assert r.returncode == 0, r.stderr

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=test CA", "-keyout", d / "ca.key",
         "-out", d / "ca.pem")
    ossl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=127.0.0.1", "-keyout", d / "srv.key", "-out", d / "srv.csr")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", d / "srv.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", d / "ext", "-out", d / "srv.pem")
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


@pytest.fixture
async def https_bundles(bundles: Bundles, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The bundles over HTTPS on loopback; (base URL, the CA that issued its certificate)."""
    ca, cert, key = _tls_server_cert(tmp_path)
    app = web.Application()
    app.router.add_static("/", bundles.dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", ca
    finally:
        await runner.cleanup()


async def test_fleet_update_command(on_bus: Rauc, https_bundles: tuple[str, Path],
                                    tmp_path: Path) -> None:
    base, ca = https_bundles
    hub = StatusHub()
    trusting = Updater(hub, tmp_path / "update", ssl_context=ssl.create_default_context(
        cafile=str(ca)))
    fleet = Fleet.model_validate({"broker": "mqtt://127.0.0.1:1", "device_id": "cam-01"})
    agent = FleetAgent(fleet, hub,
                       backend=None, state_dir=tmp_path, updater=trusting)  # type: ignore[arg-type]
    bundle = on_bus.bundles.other_ca
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    url = f"{base}/{bundle.name}"

    with pytest.raises(CommandError, match="sha256 mismatch"):
        await agent.commands.run("update", {"url": url, "sha256": "0" * 64})
    assert not any((tmp_path / "update").iterdir())  # nothing kept, nothing installed
    with pytest.raises(CommandError, match="https://"):
        await agent.commands.run("update", {"url": url.replace("https", "http"),
                                            "sha256": digest})
    with pytest.raises(CommandError, match="url and args.sha256"):
        await agent.commands.run("update", {"url": url})
    # Downloaded and hash-checked, then RAUC's own verdict is the reply.
    with pytest.raises(CommandError, match="signature verification failed"):
        await agent.commands.run("update", {"url": url, "sha256": digest.upper()})
    # A server whose certificate the device does not trust is not downloaded from.
    agent.commands.updater = Updater(hub, tmp_path / "update")
    with pytest.raises(CommandError, match="CERTIFICATE_VERIFY_FAILED"):
        await agent.commands.run("update", {"url": url, "sha256": digest})
