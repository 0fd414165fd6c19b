"""The HTTPS front's certificate: made at boot (appliance tls-cert), kept, repaired, renewed;
seen and replaced through the API behind the real nginx front, which then serves it."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.provision import tls
from tests.api_client import Client
from tests.daemon_proc import ROOT, DaemonProc, running_daemon
from tests.nginx_front import Front, daemon_config, nginx_front
from tests.uplink_peer_common import wait_for

NOW = dt.datetime.now(dt.UTC)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption or serialization.NoEncryption())


def user_cert(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str = "cam.example",
              days: int = 90) -> bytes:
    """A certificate the user brings: not one of ours (no OWN_ORG)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=30))
            .not_valid_after(NOW + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


# -- made at boot -------------------------------------------------------------------------


def test_self_signed_certificate_for_the_hostname(tmp_path: Path) -> None:
    info, made = tls.ensure(tmp_path / "tls", "cam-01", [ipaddress.ip_address("192.0.2.7")])
    assert made and info.own and info.self_signed
    assert info.names == ["cam-01", "cam-01.local", "192.0.2.7"]
    key_file, cert_file = tmp_path / "tls" / "key.pem", tmp_path / "tls" / "cert.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    # What Apple's players insist on: at most 825 days, serverAuth, not a CA.
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=826)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert tls.load_pair(cert_file.read_bytes(), key_file.read_bytes()).info == info
    # The next boot keeps it.
    again, made = tls.ensure(tmp_path / "tls", "cam-01")
    assert not made and again.sha256 == info.sha256


def test_a_pair_cut_in_half_by_a_power_cut_is_replaced(tmp_path: Path) -> None:
    first, _ = tls.ensure(tmp_path, "cam")
    # The page's replacement got as far as the key (written first) when the power went.
    (tmp_path / "key.pem").write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    second, made = tls.ensure(tmp_path, "cam")
    assert made and second.sha256 != first.sha256
    tls.load_pair((tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes())


def test_own_certificate_follows_the_hostname_and_is_renewed(tmp_path: Path) -> None:
    first, _ = tls.ensure(tmp_path, "cam")
    renamed, made = tls.ensure(tmp_path, "garage")
    assert made and "garage.local" in renamed.names
    # One made 800 days ago has less than RENEW_BEFORE left.
    old = tls.load_pair(*tls.make_self_signed("garage", now=NOW - dt.timedelta(days=800)))
    tls.install(tmp_path, old)
    renewed, made = tls.ensure(tmp_path, "garage")
    assert made and renewed.not_after > NOW + dt.timedelta(days=800)


def test_the_users_certificate_is_kept_whatever_the_hostname(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pair = tls.load_pair(user_cert(key, days=3), pem(key))
    tls.install(tmp_path, pair)
    kept, made = tls.ensure(tmp_path, "another-name")
    assert not made and kept.sha256 == pair.info.sha256


def test_default_directory_is_the_devices_where_there_is_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A factory reset writes a config without web.tls_dir: the page must still replace
    # what the device's nginx serves.
    monkeypatch.setattr(tls, "DEVICE_DIR", tmp_path / "data-tls")
    assert tls.default_dir(tmp_path / "state") == tmp_path / "state" / "tls"
    (tmp_path / "data-tls").mkdir()
    assert tls.default_dir(tmp_path / "state") == tmp_path / "data-tls"


def test_cli_makes_keeps_and_forces(tmp_path: Path) -> None:
    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "appliance", "tls-cert", "--dir",
                               str(tmp_path), "--hostname", "cam", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stderr

    made = run("--ip", "192.0.2.9")
    assert "made a self-signed certificate" in made and "cam.local, 192.0.2.9" in made
    assert "kept the certificate" in run()
    assert "made a self-signed" in run("--force")
    assert "PRIVATE" not in made + run()


# -- checks of an uploaded pair ------------------------------------------------------------

EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
SMALL_RSA = rsa.generate_private_key(65537, 1024)


@pytest.mark.parametrize(("cert", "key", "field", "message"), [
    (b"hello", pem(EC_KEY), "cert", "not a PEM certificate"),
    (user_cert(EC_KEY) + pem(EC_KEY), pem(EC_KEY), "cert", "holds a private key"),
    (user_cert(EC_KEY), b"-----BEGIN PRIVATE KEY-----\nxx\n", "key", "not a PEM private key"),
    (user_cert(EC_KEY), pem(OTHER_KEY), "key", "does not match the certificate"),
    (user_cert(EC_KEY), pem(EC_KEY, serialization.BestAvailableEncryption(b"pw")), "key",
     "encrypted with a passphrase"),
    (user_cert(SMALL_RSA), pem(SMALL_RSA), "key", "at least 2048"),
    (user_cert(EC_KEY, days=-2), pem(EC_KEY), "cert", "expired on"),
])
def test_unusable_pairs_are_refused_saying_why(cert: bytes, key: bytes, field: str,
                                               message: str) -> None:
    with pytest.raises(tls.TlsError) as err:
        tls.check_dates(tls.load_pair(cert, key).info)
    assert err.value.key == field and message in err.value.message


# -- the API, behind the real front ----------------------------------------------------------


@dataclass
class Device:
    daemon: DaemonProc
    front: Front
    tls_dir: Path
    admin: Client  # logged in over HTTPS through nginx


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    tmp = tmp_path_factory.mktemp("device")
    tls_dir = tmp / "tls"
    tls.ensure(tls_dir, "localhost", [ipaddress.ip_address("127.0.0.1")])
    with running_daemon(tmp / "daemon", config=daemon_config(tls_dir)) as d:
        port = int(d.url.rpartition(":")[2])
        with nginx_front(tmp / "nginx", port, tls_dir) as front:
            # The test trusts whatever the front shows: replacing it is the point.
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            admin = Client(front.https, context=context)
            assert admin.setup().status == 201
            yield Device(d, front, tls_dir, admin)


def served_fingerprint(front: Front) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", front.https_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def test_api_shows_the_certificate_never_the_key(device: Device) -> None:
    r = device.admin.get("/api/v1/tls")
    assert r.status == 200
    body = r.json()
    assert body["names"] == ["localhost", "localhost.local", "127.0.0.1"]
    assert body["self_signed"] is True
    assert body["sha256"] == served_fingerprint(device.front)
    assert b"PRIVATE" not in r.body and "key" not in body
    assert Client(device.front.https, context=device.admin.context).get(
        "/api/v1/tls").status == 401


def test_replacement_is_checked_saved_and_served_after_the_reload(device: Device) -> None:
    key = rsa.generate_private_key(65537, 2048)
    cert = user_cert(key, name="cam.example")
    before = (device.tls_dir / "cert.pem").read_bytes()
    bad = [({"cert": "garbage", "key": pem(key).decode()}, "cert", "not a PEM certificate"),
           ({"cert": cert.decode(), "key": pem(OTHER_KEY).decode()}, "key", "does not match"),
           ({"cert": cert.decode()}, "key", "Field required")]
    for body, field, message in bad:
        r = device.admin.call("PUT", "/api/v1/tls", body)
        assert r.status == 400, r.body
        errors = r.json()["errors"]
        assert errors[0]["key"] == field and message in errors[0]["message"], errors
        assert b"PRIVATE" not in r.body
    # The session's CSRF token is required, as for every change.
    good = {"cert": cert.decode(), "key": pem(key).decode()}
    assert device.admin.call("PUT", "/api/v1/tls", good, csrf=False).status == 403
    assert (device.tls_dir / "cert.pem").read_bytes() == before, "nothing written yet"

    r = device.admin.call("PUT", "/api/v1/tls", good)
    assert r.status == 200, r.body
    info = r.json()
    assert info["names"] == ["cam.example"] and info["self_signed"] is True
    assert b"PRIVATE" not in r.body
    assert stat.S_IMODE((device.tls_dir / "key.pem").stat().st_mode) == 0o600
    assert device.admin.get("/api/v1/tls").json() == info
    # What appliance-tls-reload.path does on the device: nginx reloads and serves it.
    device.front.reload()
    wait_for(lambda: served_fingerprint(device.front) == info["sha256"], 10,
             "nginx to serve the new certificate")
    log = device.daemon.log()
    assert "TLS certificate in" in log and "PRIVATE KEY" not in log
