"""TLS material for the uplink test peers: a CA made by the test and server
certificates it signs (openssl)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.uplink_peer_common import require


@dataclass(frozen=True)
class Tls:
    ca: Path  # the CA's certificate (PEM): what the appliance's ca_file names
    cert: Path  # the server's certificate chain
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require("openssl"), *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A fresh CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN=Appliance test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return cert, key


def make_tls(directory: Path, hostname: str = "localhost",
             ca: tuple[Path, Path] | None = None) -> Tls:
    """A server certificate for `hostname` signed by `ca` (a new CA by default)."""
    ca_cert, ca_key = ca or make_ca(directory)
    stem = f"server-{hostname}"
    key, csr, cert = (directory / f"{stem}.key", directory / f"{stem}.csr",
                      directory / f"{stem}.pem")
    ext = directory / f"{stem}.ext"
    alt = f"DNS:{hostname}" + (",IP:127.0.0.1" if hostname == "localhost" else "")
    ext.write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={hostname}", cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
             cwd=directory)
    return Tls(ca_cert, cert, key)
