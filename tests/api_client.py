"""A small HTTP client for the API of a running daemon: cookies, CSRF token, bearer token.

Plain urllib, so that every request is one the test wrote: no client library adds or
drops a header behind its back.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import ssl
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.daemon_proc import DaemonProc

ADMIN_PASSWORD = "correct horse battery staple"

# A small picture at a low rate: these tests are about the API, and each daemon they
# start costs less CPU with it.
LIGHT = """[video]
width = 320
height = 180
fps = 15

[[video.ladder]]
name = "180p"
width = 320
height = 180
bitrate_kbps = 300
"""


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    base: str
    csrf: str | None = None
    bearer: str | None = None
    context: ssl.SSLContext | None = None
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    def __post_init__(self) -> None:
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if self.context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.context))
        self._opener = urllib.request.build_opener(*handlers)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, csrf: bool = True,
             timeout: float = 15) -> Reply:
        hdrs = {"Content-Type": "application/json"}
        if csrf and self.csrf:
            hdrs["X-CSRF-Token"] = self.csrf
        if self.bearer:
            hdrs["Authorization"] = f"Bearer {self.bearer}"
        hdrs.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode()
                                            if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with self._opener.open(req, timeout=timeout) as r:
                return Reply(r.status, r.headers, r.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read())

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def cookie(self, name: str) -> http.cookiejar.Cookie | None:
        return next((c for c in self.jar if c.name == name), None)

    def login(self, password: str = ADMIN_PASSWORD) -> Reply:
        r = self.call("POST", "/api/v1/login", {"password": password}, csrf=False)
        if r.status == 200:
            self.csrf = r.json()["csrf_token"]
        return r

    def setup(self, password: str = ADMIN_PASSWORD) -> Reply:
        r = self.call("POST", "/api/v1/setup", {"password": password}, csrf=False)
        if r.status == 201:
            self.csrf = r.json()["csrf_token"]
        return r


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as they are: tests check where a page sends the browser."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def admin(d: DaemonProc) -> Client:
    """A client logged in as admin, setting the password first if the daemon has none."""
    c = Client(d.url)
    if c.get("/api/v1/session").json()["setup_required"]:
        assert c.setup().status == 201
    else:
        assert c.login().status == 200
    return c


def bearer(d: DaemonProc, name: str = "test") -> Client:
    """A client with a fresh API token (made by a logged-in admin)."""
    r = admin(d).call("POST", "/api/v1/tokens", {"name": name})
    assert r.status == 201, r.body
    return Client(d.url, bearer=r.json()["token"])


def raw_get(url: str, path: str, headers: dict[str, str] | None = None,
            timeout: float = 10) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation of "..")."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def app_routes() -> list[tuple[str, str, str]]:
    """(method, path, access class) of every route the daemon's app registers, read from
    the app itself, so that a route added later is in every test that enumerates them."""
    from appliance.daemon import Daemon
    from appliance.web.app import make_app
    from appliance.web.auth import ACCESS_KEY

    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp) / "appliance.toml", Path(tmp))
        app = make_app(daemon, daemon.store, daemon.creds)
        access = app[ACCESS_KEY]
        return [(r.method, r.resource.canonical, access.get(r, "user"))
                for r in app.router.routes() if r.resource is not None]


def login_browser(page: Any, base: str) -> None:
    """Log a Playwright page's browser context in as admin, setting the password first if
    the daemon at `base` has none: the page at / needs a session (issue 5)."""
    c = Client(base)
    if c.get("/api/v1/session").json()["setup_required"]:
        assert c.setup().status == 201
    # page.request shares the context's cookies: the page's requests carry the session.
    r = page.request.post(base + "/api/v1/login", data={"password": ADMIN_PASSWORD})
    assert r.ok, r.text()
