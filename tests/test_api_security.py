"""Nothing changes state without a login, and nothing secret comes out.

The routes are read from the app's own route table (tests.api_client.app_routes): a
route added later is refused here until it is guarded, and one opened to everybody fails
`test_open_routes_are_exactly_these` until someone decides it should be.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator

import pytest

from tests.api_client import (
    ADMIN_PASSWORD,
    LIGHT,
    Client,
    admin,
    app_routes,
    bearer,
    raw_get,
)
from tests.daemon_proc import DaemonProc, free_port, running_daemon

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
OPEN = {  # answered without a login (GET routes also answer HEAD)
    ("GET", "/healthz"), ("GET", "/login"), ("GET", "/setup"), ("GET", "/static"),
    ("GET", "/static/vendor/{pkg}/{file}"), ("GET", "/api/v1/session"),
    ("POST", "/api/v1/setup"), ("POST", "/api/v1/login"), ("GET", "/api/v1/openapi.json"),
}
KEY, PASSPHRASE, FLEET_PW = "sk-live-7c1d2e3f4a5b", "srt-pass-9e8d7c6b5a", "fleet-pw-1a2b3c4d"
SECRET_CONFIG = LIGHT + f"""
[fleet]
broker = "mqtts://127.0.0.1:{{fleet_port}}"
device_id = "cam-01"
username = "cam"
password = "{FLEET_PW}"

[[uplink]]
name = "rtmp-a"
url = "rtmp://127.0.0.1:{{rtmp_port}}/live"
key = "{KEY}"

[[uplink]]
name = "srt-b"
url = "srt://127.0.0.1:{{srt_port}}"
passphrase = "{PASSPHRASE}"
latency_ms = 200
"""


def concrete(path: str, uplink: str = "no-such-uplink") -> str:
    """A request path for a route path: parameters filled with plausible values."""
    fills = {"/api/v1/recordings/{name}": "/api/v1/recordings/rec-20000101T000000Z.mp4",
             "/api/v1/uplinks/{name}": f"/api/v1/uplinks/{uplink}",
             "/api/v1/tokens/{id}": "/api/v1/tokens/0123456789abcdef",
             "/api/v1/whep/{session}": "/api/v1/whep/no-such-session"}
    for prefix, value in fills.items():
        if path.startswith(prefix):
            return value + path[len(prefix):]
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    extra = SECRET_CONFIG.format(fleet_port=free_port(), rtmp_port=free_port(),
                                 srt_port=free_port())
    with running_daemon(tmp_path_factory.mktemp("sec"), extra=extra) as d:
        admin(d)  # first-run setup done
        yield d


def test_open_routes_are_exactly_these() -> None:
    routes = app_routes()
    opened = {(m, p) for m, p, access in routes if access == "public" and m != "HEAD"}
    assert opened == OPEN
    live = {p for _, p, access in routes if access == "live"}
    assert live and all(p.startswith("/live/") for p in live)
    # Every other route needs a login.
    assert all(access == "user" for m, p, access in routes
               if (m, p) not in OPEN and access != "live" and m != "HEAD")


STATE_CHANGING = sorted((m, p) for m, p, _ in app_routes()
                        if m in UNSAFE and (m, p) not in OPEN)


def test_state_changing_routes_are_many() -> None:
    # A guard against an enumeration that silently finds nothing.
    assert len(STATE_CHANGING) >= 11


@pytest.mark.parametrize(("method", "path"), STATE_CHANGING)
def test_state_change_refused_without_session_csrf_or_token(
        daemon: DaemonProc, method: str, path: str) -> None:
    # Bodies that are no config or uplink, and objects that do not exist: what gets past
    # the guard is refused further on, so this test changes nothing it should not.
    url = concrete(path)
    anonymous = Client(daemon.url).call(method, url, {})
    assert anonymous.status == 401, anonymous.body
    assert anonymous.json()["error"]

    bad_token = Client(daemon.url, bearer="apl_" + "x" * 43).call(method, url, {})
    assert bad_token.status == 401

    logged_in = admin(daemon)
    no_csrf = logged_in.call(method, url, {}, csrf=False)
    assert no_csrf.status == 403, no_csrf.body
    wrong_csrf = logged_in.call(method, url, {}, headers={"X-CSRF-Token": "x" * 43})
    assert wrong_csrf.status == 403
    foreign = logged_in.call(method, url, {}, headers={"Origin": "http://evil.example"})
    assert foreign.status == 403
    foreign_ref = logged_in.call(method, url, {},
                                 headers={"Referer": "http://evil.example/page"})
    assert foreign_ref.status == 403
    # The same session with its token and its own origin gets past the guard.
    own = logged_in.call(method, url, [], headers={"Origin": daemon.url})
    assert own.status not in (401, 403), own.body


@pytest.mark.parametrize(("method", "path"), sorted(
    (m, p) for m, p, access in app_routes()
    if access == "user" and m == "GET"))
def test_reads_need_a_login_too(daemon: DaemonProc, method: str, path: str) -> None:
    r = Client(daemon.url).call(method, concrete(path))
    if path.startswith("/api/"):
        assert r.status == 401
    else:
        assert r.status == 303 and r.headers["Location"] == "/login"


def test_login_and_setup_refuse_other_origins(daemon: DaemonProc) -> None:
    for path in ("/api/v1/login", "/api/v1/setup"):
        r = Client(daemon.url).call("POST", path, {"password": ADMIN_PASSWORD},
                                    headers={"Origin": "http://evil.example"})
        assert r.status == 403, path


def test_bearer_token_needs_no_csrf_and_dies_when_revoked(daemon: DaemonProc) -> None:
    script = bearer(daemon, "script")
    made = script.call("POST", "/api/v1/tokens", {"name": "made-by-script"})
    assert made.status == 201
    other = Client(daemon.url, bearer=made.json()["token"])
    assert other.get("/api/v1/status").status == 200
    assert script.call("DELETE", f"/api/v1/tokens/{made.json()['id']}").status == 200
    assert other.get("/api/v1/status").status == 401
    # A bearer client sends no cookie: no session is involved at all.
    assert script.cookie("appliance_session") is None


@pytest.mark.parametrize("path", [
    "/static/../../etc/passwd",
    "/static/..%2f..%2fdaemon.py",
    "/static/%2e%2e/%2e%2e/daemon.py",
    "/static/..%5c..%5cdaemon.py",
    "/static/vendor/hls.js/..%2f..%2fpackage.json",
    "/static/vendor/hls.js/../../../package.json",
    "/live/../../etc/passwd",
    "/live/..%2f..%2fstate%2fsecrets.json",
    "/live/180p/..%2f..%2f..%2fstate%2fsecrets.json",
    "/live/%2e%2e/%2e%2e/state/secrets.json",
])
def test_path_traversal_is_404(daemon: DaemonProc, path: str) -> None:
    status, body = raw_get(daemon.url, path)
    assert status == 404, (path, status)
    assert b"Traceback" not in body and b"admin_hash" not in body


@pytest.mark.parametrize("name", [
    "..%2f..%2fsecrets.json", "..%2fappliance.toml", "rec-20000101T000000Z.mp4%2f..%2f..",
    "%2e%2e", "rec-20000101T000000Z.mp4%00.txt", "..%5csecrets.json",
])
def test_recording_names_cannot_escape(daemon: DaemonProc, name: str) -> None:
    headers = {"Authorization": f"Bearer {bearer(daemon).bearer}"}
    status, body = raw_get(daemon.url, f"/api/v1/recordings/{name}", headers)
    assert status == 404, (name, status)
    assert b"admin_hash" not in body and b"[web]" not in body


def _read_one_event(d: DaemonProc, token: str) -> bytes:
    req = urllib.request.Request(d.url + "/api/v1/events",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        data = b""
        while b"\n\n" not in data:
            data += r.read1(4096)
        return data


def test_secrets_are_never_in_responses_or_logs(daemon: DaemonProc) -> None:
    script = bearer(daemon, "leak-check")
    assert script.bearer is not None
    secrets = [KEY, PASSPHRASE, FLEET_PW, ADMIN_PASSWORD, script.bearer]
    seen: list[bytes] = []

    def keep(r: object) -> None:
        seen.append(getattr(r, "body", b"") + str(getattr(r, "headers", "")).encode())

    for method, path, _ in app_routes():
        if method == "GET" and path.startswith("/api/v1/") and path != "/api/v1/events":
            keep(script.get(concrete(path, uplink="rtmp-a")))
    seen.append(_read_one_event(daemon, script.bearer))
    keep(script.call("POST", "/api/v1/uplinks/rtmp-a/test"))
    keep(script.call("POST", "/api/v1/uplinks/srt-b/test"))
    config = script.get("/api/v1/config").json()
    keep(script.call("POST", "/api/v1/config/validate", config))
    config["uplink"][0]["url"] = "rtmp://127.0.0.1:1/other"  # a change that restarts it
    keep(script.call("PUT", "/api/v1/config", config))
    keep(script.call("POST", "/api/v1/tokens", {"name": "another"}))  # its own token only
    keep(script.get("/api/v1/logs?lines=1000"))
    keep(admin(daemon).get("/api/v1/session"))

    assert len(seen) >= 20
    for body in seen:
        for secret in secrets:
            assert secret.encode() not in body, (secret, body[:300])
    # The secrets were really there: the config file holds them (the PUT kept them).
    saved = (daemon.log_path.parent / "appliance.toml").read_text()
    assert KEY in saved and PASSPHRASE in saved and FLEET_PW in saved
    assert json.dumps(config).count("**********") >= 3
    log = daemon.log()
    assert "uplink rtmp-a" in log  # the uplinks did log (connection refused, changed)
    for secret in secrets:
        assert secret not in log, secret
    state = (daemon.log_path.parent / "state" / "secrets.json").read_text()
    assert ADMIN_PASSWORD not in state and script.bearer not in state
    assert not re.search(r"apl_[A-Za-z0-9_-]{43}", state)
