"""`appliance firstboot`: the setup file on the boot partition, applied to a device tree.

The real command line runs on a temporary root (`--root`), so every file lands where it
would on the device, under tmp_path. The fleet certificates are real ones made here, so
OpenSSL's checks (the same the fleet agent's TLS makes) decide whether they are good.
"""

from __future__ import annotations

import configparser
import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config.load import load
from appliance.credentials import CredentialStore
from appliance.provision import firstboot
from appliance.provision.firstboot import wifi_keyfile
from appliance.provision.setup_file import SetupFile, WifiNetwork, parse
from appliance.web.masking import secret_values
from tests.api_client import LIGHT, admin
from tests.daemon_proc import running_daemon

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "image" / "appliance-setup.toml"
DAEMON_UID = 4242  # the appliance user's, owner of its state and config directories


def make_pki() -> dict[str, str]:
    """A CA, a client certificate it signed, its key, and a key of another pair (PEM)."""
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key, other = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = (x509.CertificateBuilder().subject_name(name("fleet CA")).issuer_name(name("fleet CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("camera-01")).issuer_name(name("fleet CA"))
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30)).sign(ca_key, hashes.SHA256()))

    def pem_key(k: ec.EllipticCurvePrivateKey) -> str:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()

    return {"ca": ca.public_bytes(serialization.Encoding.PEM).decode(),
            "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "key": pem_key(key), "other_key": pem_key(other)}


@pytest.fixture(scope="module")
def pki() -> dict[str, str]:
    return make_pki()


@pytest.fixture
def device(tmp_path: Path) -> dict[str, Path]:
    """A device tree: the boot partition, and the state and config directories owned by
    the daemon's user (as tmpfiles.d makes them) when the test runs as root."""
    root = tmp_path / "root"
    boot = root / "boot/select"
    state = root / "var/lib/appliance"
    config_dir = root / "etc/appliance"
    for d in (boot, state, config_dir):
        d.mkdir(parents=True)
    if os.geteuid() == 0:
        for d in (state, config_dir):
            os.chown(d, DAEMON_UID, DAEMON_UID)
    return {"root": root, "boot": boot, "state": state, "config": config_dir / "appliance.toml",
            "setup": boot / firstboot.SETUP_FILE}


def uncommented(template: str) -> str:
    """The template with its example settings switched on ("#key = ..." lines; the
    explanations have a space after the '#')."""
    return re.sub(r"(?m)^#(?=[^\s#])", "", template)


def run_cli(device: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "firstboot",
                           "--root", str(device["root"])],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def refused(device: dict[str, Path], setup: str) -> list[str]:
    """Write `setup` as the card's file and run first boot, which must refuse it: the errors
    it reported."""
    device["setup"].write_text(setup)
    assert firstboot.run(device["boot"], device["root"]) == 2
    errors: list[str] = json.loads(
        (device["state"] / firstboot.REPORT_FILE).read_text())["errors"]
    return errors


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def keyfile(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_the_template_applies_and_is_scrubbed(device: dict[str, Path],
                                              pki: dict[str, str]) -> None:
    text = uncommented(TEMPLATE.read_text())
    device["setup"].write_text(text)
    for name, pem in (("fleet-ca.pem", pki["ca"]), ("camera-01.crt", pki["cert"]),
                      ("camera-01.key", pki["key"])):
        (device["boot"] / name).write_text(pem)
    setup, _ = parse(text)
    secrets = secret_values(setup) + [pki["key"]]
    assert "choose a long password" in secrets and "wifi password" in secrets

    out = run_cli(device)
    assert out.returncode == 0, out.stderr
    root, state = device["root"], device["state"]
    # Hostname and admin password.
    assert (root / "data/etc/hostname").read_text() == "camera-01\n"
    assert CredentialStore(state).verify_password("choose a long password")
    # Wi-Fi: a keyfile per network, NetworkManager's format, root's alone.
    files = sorted((root / "etc/NetworkManager/system-connections").iterdir())
    assert len(files) == 2
    nets = {}
    for f in files:
        assert f.suffix == ".nmconnection" and stat.S_IMODE(f.stat().st_mode) == 0o600
        kf = keyfile(f)
        ssid = bytes(int(b) for b in kf["wifi"]["ssid"].rstrip(";").split(";")).decode()
        nets[ssid] = kf
    assert nets["Home"]["wifi-security"]["psk"] == "wifi\\spassword"
    assert nets["Home"]["connection"]["autoconnect-priority"] == "10"
    assert nets["Workshop"]["wifi"]["hidden"] == "true"
    assert nets["Home"]["connection"]["type"] == "wifi"
    assert (root / "data/etc/wifi-country").read_text() == "GB\n"
    # Uplinks and fleet, merged into the (absent) config and valid by the schema.
    cfg = load(device["config"])
    assert [(u.name, u.url) for u in cfg.uplink] == [
        ("primary", "srt://origin.example.com:9000"),
        ("youtube", "rtmps://a.rtmps.youtube.com/live2")]
    assert cfg.uplink[0].passphrase == "a long srt passphrase"
    assert cfg.fleet is not None and cfg.fleet.device_id == "camera-01"
    assert (cfg.fleet.ca_file, cfg.fleet.cert_file, cfg.fleet.key_file) == (
        "/var/lib/appliance/fleet/ca.pem", "/var/lib/appliance/fleet/cert.pem",
        "/var/lib/appliance/fleet/key.pem")
    key = state / "fleet/key.pem"
    assert key.read_text() == pki["key"] and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (state / "fleet/ca.pem").read_text() == pki["ca"]
    # SSH.
    assert "you@laptop" in (root / "data/ssh/authorized_keys").read_text()
    # The daemon (another user) owns what it must read and replace.
    if os.geteuid() == 0:
        for p in (device["config"], state / "secrets.json", state / ".secrets.json.lock",
                  state / "fleet", key, state / firstboot.REPORT_FILE):
            assert p.stat().st_uid == DAEMON_UID, p
    # The file: no secret left, what was applied said, the key file gone, the rest kept.
    after = device["setup"].read_text()
    assert not [s for s in secrets if s in after]
    assert "applied by `appliance firstboot`" in after and "admin password" in after
    assert all(line.startswith("#") for line in after.splitlines())
    assert '# admin_password = (removed)' in after.splitlines()
    assert "# name = \"primary\"" in after.splitlines()
    assert not (device["boot"] / "camera-01.key").exists()
    assert (device["boot"] / "camera-01.crt").exists()
    report = json.loads((state / firstboot.REPORT_FILE).read_text())
    assert report["ok"] is True and "uplink youtube" in report["applied"]
    # Nothing secret was logged.
    assert not [s for s in secrets if s in out.stdout + out.stderr]

    # The next boot: nothing applied again, the password stays what it was.
    before = snapshot(root)
    time.sleep(0.01)
    again = run_cli(device)
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before


def test_a_bad_file_applies_nothing_and_says_why(device: dict[str, Path]) -> None:
    text = """hostname = "-camera"
admin_password = "short"

[wifi]
country = "GBR"
[[wifi.network]]
ssid = "Home"
pks = "wifi password"

[[uplink]]
name = "yt"
url = "rtmp://a.rtmp.youtube.com/live2"

[ssh]
authorized_keys = ["ssh-ed25519 bm90IGEga2V5 me"]
"""
    device["setup"].write_text(text)
    before = snapshot(device["root"])
    out = run_cli(device)
    assert out.returncode == 2
    report = json.loads((device["state"] / firstboot.REPORT_FILE).read_text())
    assert report["ok"] is False and report["applied"] == []
    errors = report["errors"]
    expect = ["hostname: ", "admin_password: the password needs at least 10",
              "wifi.country: ", "wifi.network[0].pks: unknown key (line 8)",
              "uplink[0].key: RTMP needs the stream key",
              "ssh.authorized_keys[0]: the key's data is not a ssh-ed25519 key"]
    for e in expect:
        assert [x for x in errors if x.startswith(e)], (e, errors)
        assert e.split(":")[0] in out.stderr
    # Only the report was written; the file is as the user left it.
    after = snapshot(device["root"])
    assert {k: v for k, v in after.items() if not k.endswith(firstboot.REPORT_FILE)} == before
    assert "short" not in out.stderr and "wifi password" not in out.stderr


def test_fleet_certificate_problems_are_named(device: dict[str, Path],
                                              pki: dict[str, str]) -> None:
    (device["boot"] / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n"
                                           "-----END CERTIFICATE-----\n")
    errors = refused(device, f'''[fleet]
broker = "mqtts://fleet.example.com:8883"
device_id = "camera-01"
ca_file = "ca.pem"
cert = """{pki["cert"]}"""
key = """{pki["other_key"]}"""
''')
    assert [e for e in errors if e.startswith("fleet.ca: not a PEM CA certificate")], errors
    assert [e for e in errors if e.startswith("fleet.cert: certificate and key do not load "
                                              "together")], errors
    assert not [e for e in errors if pki["other_key"].splitlines()[1] in e]
    errors = refused(device, '''[fleet]
broker = "mqtts://fleet.example.com"
device_id = "camera-01"
cert_file = "missing.crt"
''')
    assert len(errors) == 1 and errors[0].startswith("fleet.key: a client certificate needs")
    errors = refused(device, '''[fleet]
broker = "mqtts://fleet.example.com"
device_id = "camera-01"
cert_file = "missing.crt"
key_file = "../etc/key.pem"
''')
    assert errors[0].startswith("fleet.key_file: the name of a file next to")
    errors = refused(device, '''[fleet]
broker = "mqtts://fleet.example.com"
device_id = "camera-01"
cert_file = "missing.crt"
key_file = "missing.key"
''')
    assert errors == ["fleet.cert_file: cannot read missing.crt: No such file or directory",
                      "fleet.key_file: cannot read missing.key: No such file or directory"]
    # The config schema's own rules for [fleet].
    errors = refused(device, '[fleet]\nbroker = "ftp://fleet.example.com"\n'
                               'device_id = "camera 01"\ntelemetry_s = 0.5\n')
    assert [e.split(":")[0] for e in errors] == ["fleet.broker", "fleet.device_id",
                                                 "fleet.telemetry_s"]
    assert errors[0].endswith("(line 2)")
    assert not device["config"].exists()


def test_uplinks_and_fleet_merge_into_the_existing_config(device: dict[str, Path],
                                                          pki: dict[str, str]) -> None:
    device["config"].write_text('''[web]
listen = "0.0.0.0:8080"

[fleet]
broker = "mqtts://old.example.com:8883"
device_id = "old"
username = "cam"
password = "old secret"
telemetry_s = 30

[[uplink]]
name = "primary"
url = "srt://old.example.com:9000"

[[uplink]]
name = "backup"
url = "srt://backup.example.com:9000"
''')
    device["config"].chmod(0o640)
    device["setup"].write_text(f'''[[uplink]]
name = "primary"
url = "srt://new.example.com:9000"
passphrase = "a long srt passphrase"

[fleet]
broker = "mqtts://fleet.example.com:8883"
device_id = "camera-01"
cert = """{pki["cert"]}"""
key = """{pki["key"]}"""
''')
    assert firstboot.run(device["boot"], device["root"]) == 0
    cfg = load(device["config"])
    assert cfg.web.listen == "0.0.0.0:8080"
    assert [(u.name, u.url) for u in cfg.uplink] == [("primary", "srt://new.example.com:9000"),
                                                     ("backup", "srt://backup.example.com:9000")]
    assert cfg.fleet is not None
    assert (cfg.fleet.broker, cfg.fleet.telemetry_s, cfg.fleet.username, cfg.fleet.password,
            cfg.fleet.ca_file) == ("mqtts://fleet.example.com:8883", 30, None, None, None)
    assert cfg.fleet.key_file == "/var/lib/appliance/fleet/key.pem"
    assert stat.S_IMODE(device["config"].stat().st_mode) == 0o640
    after = device["setup"].read_text()
    assert pki["key"].splitlines()[1] not in after and "a long srt passphrase" not in after
    assert "(saved as /var/lib/appliance/fleet/cert.pem)" in after


def test_an_uplink_the_merged_config_refuses(device: dict[str, Path]) -> None:
    errors = refused(device, '[[uplink]]\nname = "primary"\nurl = "srt://o.example.com:9000"\n'
                               'rung = "4k"\n')
    assert len(errors) == 1 and errors[0].startswith("uplink[0].rung: no rung named '4k'")


def test_windows_line_ends_and_bom(device: dict[str, Path]) -> None:
    device["setup"].write_bytes('\ufeffhostname = "Cam-02"\r\nadmin_password = '
                                '"correct horse battery"\r\n'.encode())
    assert firstboot.run(device["boot"], device["root"]) == 0
    assert (device["root"] / "data/etc/hostname").read_text() == "cam-02\n"
    after = device["setup"].read_bytes()
    assert b"correct horse" not in after and after.count(b"\r\n") == after.count(b"\n")
    assert CredentialStore(device["state"]).verify_password("correct horse battery")


def test_toml_syntax_error_names_the_line(device: dict[str, Path]) -> None:
    errors = refused(device, 'hostname = "cam"\nadmin_password = "unterminated\n')
    assert errors[0].startswith("TOML syntax:") and "line 2" in errors[0]


def test_no_file_is_nothing_to_do(device: dict[str, Path]) -> None:
    assert firstboot.run(device["boot"], device["root"]) == 0
    assert not (device["state"] / firstboot.REPORT_FILE).exists()


def net(data: dict[str, Any]) -> WifiNetwork:
    return WifiNetwork.model_validate(data)


def test_keyfile_values_survive_escaping() -> None:
    name, text = wifi_keyfile(net({"ssid": "Café ☕ 5G", "psk": " a\\b;c #d "}))
    assert name.endswith(".nmconnection") and "/" not in name
    kf = configparser.ConfigParser(interpolation=None)
    kf.read_string(text)
    raw = bytes(int(b) for b in kf["wifi"]["ssid"].rstrip(";").split(";"))
    assert raw.decode() == "Café ☕ 5G"
    # GKeyFile escapes: \\s a space, \\\\ a backslash; nothing else is special in a value.
    assert kf["wifi-security"]["psk"] == "\\sa\\\\b;c\\s#d\\s"
    assert "wifi-security" not in wifi_keyfile(net({"ssid": "Open"}))[1]
    assert wifi_keyfile(net({"ssid": "Home"}))[0] == wifi_keyfile(net({"ssid": "Home"}))[0]


def test_scrubbing_keeps_nothing_secret_for_any_secret_field() -> None:
    """Every field the schema marks secret is masked in the rewritten file."""
    setup = SetupFile.model_validate({
        "admin_password": "0123456789a", "wifi": {"network": [{"ssid": "x", "psk": "p" * 20}]},
        "uplink": [{"name": "a", "url": "rtmp://h/app", "key": "k" * 12},
                   {"name": "b", "url": "srt://h:1", "passphrase": "s" * 12}],
        "fleet": {"broker": "mqtts://h", "device_id": "d", "username": "u",
                  "password": "q" * 12}})
    raw: dict[str, Any] = setup.model_dump(exclude_none=True, exclude_defaults=True)
    plan = firstboot.Plan(applied=["test"])
    text = firstboot.scrubbed("", setup, raw, plan, datetime.datetime.now(datetime.UTC))
    assert len(secret_values(setup)) == 5
    assert not [s for s in secret_values(setup) if s in text]


def test_the_daemon_shows_the_outcome(tmp_path: Path, device: dict[str, Path]) -> None:
    device["setup"].write_text('admin_password = "short"\n')
    assert firstboot.run(device["boot"], device["root"]) == 2
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True)
    shutil.copy(device["state"] / firstboot.REPORT_FILE, state)
    config = ('[web]\nlisten = "127.0.0.1:{port}"\n[audio]\nenabled = false\n'
              + LIGHT.replace("[video]\n", '[video]\nsource = "synthetic"\n'))
    with running_daemon(tmp_path / "d", config) as d:
        section = admin(d).get("/api/v1/status").json()["sections"]["firstboot"]
    assert section["ok"] is False
    assert section["errors"][0].startswith("admin_password: the password needs at least")


def test_a_card_that_cannot_be_written_is_retried_next_boot(
        device: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A vfat partition the kernel remounted read-only (as it does after an error): as
    root, this test cannot make one, so writes to the boot partition fail as they would."""
    import errno

    real = firstboot.save_atomic

    def read_only_boot(path: Path, text: str, mode: int = 0o600) -> None:
        if path.is_relative_to(device["boot"]):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real(path, text, mode)

    device["setup"].write_text('admin_password = "correct horse battery"\n')
    monkeypatch.setattr(firstboot, "save_atomic", read_only_boot)
    assert firstboot.run(device["boot"], device["root"]) == 1
    report = json.loads((device["state"] / firstboot.REPORT_FILE).read_text())
    assert report["ok"] is False and report["applied"] == ["admin password"]
    assert report["errors"][0].startswith("applied, but the secrets could not be removed")
    assert "Read-only file system" in report["errors"][0]
    # The next boot, with the card writable again: the same again, then scrubbed.
    monkeypatch.setattr(firstboot, "save_atomic", real)
    assert firstboot.run(device["boot"], device["root"]) == 0
    assert "correct horse" not in device["setup"].read_text()
    assert CredentialStore(device["state"]).verify_password("correct horse battery")
