"""HTTPS when [web] has a certificate and key: the cookie is Secure then."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.api_client import LIGHT, Client, bearer
from tests.daemon_proc import DaemonProc, running_daemon


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def config(cert: Path, key: Path) -> str:
    web = f'[web]\nlisten = "127.0.0.1:{{port}}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    return web + LIGHT.replace("[video]\n", '[video]\nsource = "synthetic"\n', 1)


def wait_https(d: DaemonProc, context: ssl.SSLContext, timeout: float = 20) -> str:
    url = d.url.replace("http://", "https://")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2, context=context):
                return url
        except (OSError, urllib.error.URLError):
            if d.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(d.log()) from None
            time.sleep(0.1)


def test_https_serves_with_a_secure_host_cookie(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    with running_daemon(tmp_path, config=config(cert, key), wait_for=None) as d:
        url = wait_https(d, context)
        c = Client(url, context=context)
        assert c.setup().status == 201
        cookie = c.cookie("__Host-appliance_session")
        assert cookie is not None and cookie.secure and cookie.path == "/"
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert c.get("/api/v1/status").status == 200
        assert "serving on https://127.0.0.1" in d.log()
        # The same port does not speak plain HTTP.
        with pytest.raises((OSError, urllib.error.URLError)):
            urllib.request.urlopen(d.url + "/healthz", timeout=5)


def test_unusable_certificate_serves_http_on_loopback_only(tmp_path: Path) -> None:
    cfg = config(tmp_path / "missing.pem", tmp_path / "missing.key")
    with running_daemon(tmp_path, config=cfg) as d:  # waits for plain-HTTP /healthz
        assert "cannot use the TLS certificate and key" in d.log()
        assert "serving on http://127.0.0.1" in d.log()
        status = bearer(d).get("/api/v1/status").json()
        assert "missing.pem" in status["sections"]["daemon"]["tls_error"]
