"""The device's nginx front in front of a real daemon, both on loopback (tests/nginx_front.py).

HTTP/2 by ALPN, the stream and /healthz through it, blocking playlist requests, a
segment still being written and status events passed on as fast as the daemon sends
them, an update upload streamed rather than spooled, the plain-HTTP policy (stream yes,
page only on the access point), and X-Forwarded-For believed from nginx only: login rate
limiting per real client, and the Secure cookie over HTTPS.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.config.schema import Web
from appliance.web.forwarded import client_address
from tests.api_client import ADMIN_PASSWORD, Client
from tests.daemon_proc import ROOT, DaemonProc, running_daemon
from tests.nginx_front import HOTSPOT, Front, daemon_config, nginx_front
from tests.uplink_peer_common import wait_for

PLAYLIST = "/live/180p/index.m3u8"  # the one rung of api_client.LIGHT
CLIENT_A, CLIENT_B = "127.0.0.3", "127.0.0.4"  # two LAN clients, by source address
_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part(\d+)\.(\d+)\.m4s')


@dataclass
class Stack:
    daemon: DaemonProc
    front: Front
    context: ssl.SSLContext  # trusts the device's certificate
    cert: Path
    admin: Client  # logged in through nginx

    @property
    def direct_port(self) -> int:
        return int(self.daemon.url.rpartition(":")[2])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("front")
    tls_dir = tmp / "tls"
    # The certificate as the device makes it at boot (appliance-tls.service).
    subprocess.run([sys.executable, "-m", "appliance", "tls-cert", "--dir", str(tls_dir),
                    "--hostname", "localhost", "--ip", "127.0.0.1"],
                   check=True, cwd=ROOT, capture_output=True, timeout=60)
    cert = tls_dir / "cert.pem"
    with running_daemon(tmp / "daemon", config=daemon_config(tls_dir),
                        wait_for=PLAYLIST) as d:
        port = int(d.url.rpartition(":")[2])
        with nginx_front(tmp / "nginx", port, tls_dir) as front:
            context = ssl.create_default_context(cafile=str(cert))
            admin = Client(front.https, context=context)
            assert admin.setup().status == 201
            yield Stack(d, front, context, cert, admin)


def connect(stack: Stack, via: str, source: str = "127.0.0.1") -> http.client.HTTPConnection:
    """A connected HTTP/1.1 connection: "direct" to the daemon, "https" or "http" to nginx."""
    conn: http.client.HTTPConnection
    if via == "https":
        conn = http.client.HTTPSConnection("127.0.0.1", stack.front.https_port, timeout=20,
                                           context=stack.context, source_address=(source, 0))
    else:
        port = stack.direct_port if via == "direct" else stack.front.http_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20,
                                          source_address=(source, 0))
    conn.connect()
    return conn


def fetch(conn: http.client.HTTPConnection, path: str, method: str = "GET",
          body: bytes | None = None, headers: dict[str, str] | None = None,
          ) -> tuple[http.client.HTTPResponse, bytes]:
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


# -- HTTP/2 and the stream through it -------------------------------------------------------


def test_alpn_negotiates_http2(stack: Stack) -> None:
    context = ssl.create_default_context(cafile=str(stack.cert))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(_tcp(stack.front.https_port), server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "h2"
        assert s.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_old_tls_is_refused(stack: Stack) -> None:
    context = ssl.create_default_context(cafile=str(stack.cert))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer it at all
    with pytest.raises(ssl.SSLError):
        context.wrap_socket(_tcp(stack.front.https_port), server_hostname="localhost")


def _tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def curl_http2(stack: Stack, path: str, *args: str) -> tuple[str, str, bytes]:
    """(HTTP version, status, body) of a request by curl over HTTP/2 (a GET unless `args`
    say otherwise)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (scripts/setup.sh --test)")
    out = subprocess.run(
        [curl, "--http2", "-sS", "--cacert", str(stack.cert), "-o", "-",
         "-w", "\n%{http_version} %{http_code}", *args, stack.front.https + path],
        capture_output=True, timeout=30, check=True).stdout
    body, _, trailer = out.rpartition(b"\n")
    version, code = trailer.decode().split()
    return version, code, body


def test_healthz_and_playlists_over_http2(stack: Stack) -> None:
    version, code, body = curl_http2(stack, "/healthz")
    assert (version, code) == ("2", "200") and json.loads(body)["ok"] is True
    version, code, body = curl_http2(stack, "/live/index.m3u8")
    assert (version, code) == ("2", "200") and body.startswith(b"#EXTM3U")
    # A blocking request over HTTP/2: answered once the hinted part is there.
    msn, part = hint(stack)
    version, code, body = curl_http2(stack, f"{PLAYLIST}?_HLS_msn={msn}&_HLS_part={part}")
    assert (version, code) == ("2", "200")
    assert moved_past(body.decode(), msn, part)


def test_browser_login_over_http2(stack: Stack) -> None:
    # A browser's POST carries its origin: it must match the scheme and host the daemon
    # sees (HTTP/2 has no Host header, only :authority), or the login is refused (403).
    version, code, body = curl_http2(
        stack, "/api/v1/login", "-H", f"Origin: {stack.front.https}", "-H",
        "Content-Type: application/json", "--data", json.dumps({"password": ADMIN_PASSWORD}))
    assert (version, code) == ("2", "200"), body
    assert json.loads(body)["csrf_token"]


def hint(stack: Stack) -> tuple[int, int]:
    """The part the playlist hints at (not yet published)."""
    _, body = fetch(connect(stack, "direct"), PLAYLIST)
    m = _HINT.search(body.decode())
    assert m, body
    return int(m[1]), int(m[2])


def moved_past(playlist: str, msn: int, part: int) -> bool:
    """Whether `playlist` is newer than one hinting at `part` of segment `msn` (that
    part is published, or, past a segment's last part, the next segment began)."""
    m = _HINT.search(playlist)
    return m is not None and (int(m[1]), int(m[2])) > (msn, part)


def _timed_get(conn: http.client.HTTPConnection, path: str, start: threading.Barrier,
               ) -> tuple[float, int, str]:
    start.wait()
    resp, body = fetch(conn, path)
    return time.monotonic(), resp.status, body.decode()


def test_blocking_playlist_request_returns_as_fast_as_direct(stack: Stack) -> None:
    lags, waits = [], []
    with ThreadPoolExecutor(2) as pool:
        for _ in range(5):
            msn, part = hint(stack)
            path = f"{PLAYLIST}?_HLS_msn={msn}&_HLS_part={part}"
            conns = connect(stack, "direct"), connect(stack, "https")  # handshakes done
            start = threading.Barrier(2)
            t0 = time.monotonic()
            direct, front = (pool.submit(_timed_get, c, path, start) for c in conns)
            (t_direct, s_direct, _), (t_front, s_front, text) = direct.result(), front.result()
            assert s_direct == s_front == 200
            assert moved_past(text, msn, part)
            waits.append(t_direct - t0)
            lags.append(t_front - t_direct)
    # The requests did block (parts are 0.2 s apart), and nginx added next to nothing.
    assert max(waits) > 0.02, waits
    assert statistics.median(lags) < 0.05 and max(lags) < 0.1, lags


def _stream(conn: http.client.HTTPConnection, path: str, start: threading.Barrier,
            ) -> list[tuple[float, int]]:
    """(arrival time, bytes so far) of each read of a chunked reply."""
    start.wait()
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    samples, total = [], 0
    while chunk := resp.read1(1 << 16):
        total += len(chunk)
        samples.append((time.monotonic(), total))
    conn.close()
    return samples


def test_segment_being_written_is_passed_on_as_it_grows(stack: Stack) -> None:
    # The segment after the open one (or the one about to open): asked for before it
    # starts, it is streamed for its whole 2 s.
    msn, part = hint(stack)
    path = f"/live/180p/seg{msn + 1 if part else msn}.m4s"
    conns = connect(stack, "direct"), connect(stack, "https")
    start = threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        direct, front = (f.result() for f in [pool.submit(_stream, c, path, start)
                                              for c in conns])
    assert direct[-1][1] == front[-1][1], "the same segment both ways"
    assert direct[-1][0] - direct[0][0] > 1.0, "the segment was being written"
    # Each part reached the client through nginx about when it left the daemon.
    lags = [next(t for t, n in front if n >= size) - t_direct for t_direct, size in direct]
    assert max(lags) < 0.1, lags


def test_status_events_arrive_as_sent(stack: Stack) -> None:
    cookie = stack.admin.cookie("__Host-appliance_session")
    assert cookie is not None and cookie.value
    conn = connect(stack, "https")
    conn.request("GET", "/api/v1/events", headers={"Cookie": f"{cookie.name}={cookie.value}"})
    start = time.monotonic()
    resp = conn.getresponse()
    assert resp.status == 200
    arrivals: list[float] = []
    while len(arrivals) < 3:
        if resp.readline().startswith(b"event: status"):
            arrivals.append(time.monotonic())
    conn.close()
    # The daemon sends one at once, then one a second (a few kB each): held in nginx's
    # buffers, they would come in bunches.
    gaps = [b - a for a, b in zip([start, *arrivals], arrivals, strict=False)]
    assert gaps[0] < 0.5 and all(0.5 < g < 1.5 for g in gaps[1:]), gaps


def test_upload_is_streamed_to_the_daemon_not_spooled(stack: Stack) -> None:
    """An update bundle goes on to the daemon as it arrives: nginx keeps no copy (on the
    device its temporary files would be in /var, a small tmpfs)."""
    r = stack.admin.call("POST", "/api/v1/tokens", {"name": "upload"})
    assert r.status == 201
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    size, half = 8 << 20, 4 << 20
    conn = connect(stack, "https")
    conn.putrequest("POST", "/api/v1/update")
    for k, v in {"Content-Type": "application/octet-stream", "Content-Length": str(size),
                 **auth}.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(bytes(half))

    def received() -> bool:
        _, body = fetch(connect(stack, "https"), "/api/v1/update", headers=auth)
        status = json.loads(body)
        return status["state"] == "downloading" and status["percent"] >= 45

    wait_for(received, 15, "the daemon to have half of the upload")
    spooled = [p for p in stack.front.workdir.glob("tmp-client_body/**/*") if p.is_file()]
    assert not spooled, "nginx buffered the upload"
    conn.send(bytes(size - half))
    resp = conn.getresponse()
    assert resp.status == 202, resp.read()
    conn.close()


# -- plain HTTP -------------------------------------------------------------------------------


def test_plain_http_serves_the_stream_and_redirects_the_page(stack: Stack) -> None:
    resp, body = fetch(connect(stack, "http"), "/live/index.m3u8")
    assert resp.status == 200 and body.startswith(b"#EXTM3U")
    resp, _ = fetch(connect(stack, "http"), "/healthz")
    assert resp.status == 200
    for path in ("/", "/settings", "/api/v1/session", "/api/v1/events"):
        resp, _ = fetch(connect(stack, "http"), path, headers={"Host": "cam.local"})
        assert resp.status == 308, path
        assert resp.headers["Location"] == f"https://cam.local{path}"
    resp, _ = fetch(connect(stack, "http"), "/api/v1/login", "POST",
                    json.dumps({"password": ADMIN_PASSWORD}).encode(),
                    {"Content-Type": "application/json"})
    assert resp.status == 308, "a password is never taken over plain HTTP on the LAN"


def _login(conn: http.client.HTTPConnection, password: str,
           headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    resp, _ = fetch(conn, "/api/v1/login", "POST", json.dumps({"password": password}).encode(),
                    {"Content-Type": "application/json", **(headers or {})})
    return resp


def test_page_over_plain_http_on_the_access_point_only(stack: Stack) -> None:
    conn = http.client.HTTPConnection(HOTSPOT, stack.front.http_port, timeout=20)
    resp = _login(conn, ADMIN_PASSWORD)
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("appliance_session=") and "Secure" not in cookie


def test_session_cookie_is_secure_over_https(stack: Stack) -> None:
    resp = _login(connect(stack, "https"), ADMIN_PASSWORD)
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("__Host-appliance_session=") and "Secure" in cookie


def test_forwarded_for_is_believed_from_nginx_only(stack: Stack) -> None:
    # Client A, straight to the daemon, claims a new address at each try: ignored, so its
    # wrong passwords count against its real address and lock it out.
    statuses = [_login(connect(stack, "direct", CLIENT_A), "wrong password",
                       {"X-Forwarded-For": f"10.0.0.{i}", "X-Forwarded-Proto": "https"}).status
                for i in range(7)]
    assert statuses == [401] * 6 + [429], statuses
    # Through nginx, A is still A (nginx's X-Forwarded-For is believed; A's own claim is
    # replaced by nginx), even with the right password...
    resp = _login(connect(stack, "https", CLIENT_A), ADMIN_PASSWORD,
                  {"X-Forwarded-For": "10.9.9.9"})
    assert resp.status == 429
    # ...while client B is not locked out with A: not everyone behind nginx is one client.
    assert _login(connect(stack, "https", CLIENT_B), ADMIN_PASSWORD).status == 200


def test_untrusted_peer_cannot_claim_https(stack: Stack) -> None:
    resp = _login(connect(stack, "direct", CLIENT_B), ADMIN_PASSWORD,
                  {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.1.1"})
    assert resp.status == 200
    assert resp.headers["Set-Cookie"].startswith("appliance_session=")


# -- the daemon's side, without nginx -----------------------------------------------------------


def test_client_is_the_rightmost_address_no_trusted_proxy_wrote() -> None:
    proxies = Web.model_validate({"trusted_proxies": "127.0.0.1 ::1 10.1.0.0/16"}).proxies
    assert client_address(["203.0.113.9, 192.0.2.1"], proxies) == "192.0.2.1"
    assert client_address(["192.0.2.1, 10.1.2.3, ::1"], proxies) == "192.0.2.1"
    assert client_address(["junk, 192.0.2.1"], proxies) == "192.0.2.1"
    assert client_address(["10.0.0.1", "2001:db8::7"], proxies) == "2001:db8::7"
    assert client_address(["192.0.2.1, junk"], proxies) is None
    assert client_address([], proxies) is None


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(ValidationError, match="'nginx' is not an IP address or network"):
        Web.model_validate({"trusted_proxies": "127.0.0.1 nginx"})
    # Loopback only by default: other addresses are trusted only when configured.
    assert [str(n) for n in Web.model_validate({}).proxies] == ["127.0.0.1/32", "::1/128"]
