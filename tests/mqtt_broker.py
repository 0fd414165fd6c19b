"""A real mosquitto on a free loopback port for tests, with TLS and client certificates.

    broker = start_broker(tmp_path)            # TLS, require_certificate
    broker.url, broker.ca_file, broker.cert_file, broker.key_file  # a client "test-client"
    cert, key = broker.client_cert("cam-01")   # another identity signed by the same CA
    broker.stop()

The CA and certificates are made here with the `cryptography` package; the client's
certificate CN is its identity (`use_identity_as_username`).
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.daemon_proc import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


@dataclass
class TestCA:
    """A throwaway CA that signs server and client certificates."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("appliance test CA"))
            .issuer_name(_name("appliance test CA")).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        """(certificate, key) files for `cn`; a server certificate names 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server:
            import ipaddress
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{cn}.crt", self.directory / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path


@dataclass
class Broker:
    url: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    ca: TestCA | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def client_cert(self, cn: str) -> tuple[str, str]:
        """A client certificate and key for identity `cn` (TLS brokers only)."""
        assert self.ca is not None, "a plain broker has no CA"
        cert, key = self.ca.issue(cn)
        return str(cert), str(key)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_broker(tmp_path: Path, tls: bool = True, *, extra_conf: str = "",
                 port: int | None = None, ca: TestCA | None = None,
                 passwords: dict[str, str] | None = None, timeout: float = 10) -> Broker:
    """Start mosquitto on 127.0.0.1 (a free port unless `port`); with `tls`, clients must
    present a certificate signed by the test CA (a new one unless `ca`: pass an earlier
    broker's `.ca` to restart "the same" broker). Without TLS, `passwords` (user: password)
makes a password file and refuses anonymous clients. `extra_conf` is appended."""
    directory = tmp_path / "mqtt-broker"
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = [f"listener {port} 127.0.0.1", "persistence false", "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice"]
    if os.geteuid() == 0:
        # Else mosquitto drops to its own user, who cannot read pytest's 0700 tmp dirs.
        conf.append("user root")
    cert_file = key_file = None
    if tls:
        ca = ca or TestCA(directory / "pki")
        server_cert, server_key = ca.issue("localhost", server=True)
        client_cert, client_key = ca.issue("test-client")
        cert_file, key_file = str(client_cert), str(client_key)
        conf += [f"cafile {ca.ca_file}", f"certfile {server_cert}", f"keyfile {server_key}",
                 "require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false"]
    elif passwords:
        ca = None
        pw_file = directory / "passwords"
        pw_file.unlink(missing_ok=True)
        for user, password in passwords.items():
            subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b",
                            *(["-c"] if not pw_file.exists() else []), str(pw_file), user,
                            password], check=True, capture_output=True, timeout=30)
        conf += [f"password_file {pw_file}", "allow_anonymous false"]
    else:
        ca = None
        conf += ["allow_anonymous true"]
    conf_path = directory / "mosquitto.conf"
    conf_path.write_text("\n".join(conf) + "\n" + extra_conf + "\n")
    log_path = directory / "mosquitto.log"
    proc = run_mosquitto(conf_path, port, log_path, timeout)
    scheme = "mqtts" if tls else "mqtt"
    return Broker(f"{scheme}://127.0.0.1:{port}", "127.0.0.1", port, proc, log_path, ca,
                  str(ca.ca_file) if ca else None, cert_file, key_file)


def run_mosquitto(conf_path: Path, port: int, log_path: Path,
                  timeout: float = 10) -> subprocess.Popen[bytes]:
    """mosquitto with `conf_path`, once it listens on `port`; its output goes to `log_path`."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf_path)], stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"mosquitto not listening:\n{log_path.read_text()}") from None
            time.sleep(0.05)
