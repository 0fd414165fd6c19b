"""Login against the real daemon: first-run setup, sessions, cookies, lockout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_client import ADMIN_PASSWORD, LIGHT, Client, admin
from tests.daemon_proc import DaemonProc, running_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("auth"), extra=LIGHT) as d:
        yield d


def test_first_run_setup_then_refused(daemon: DaemonProc) -> None:
    c = Client(daemon.url)
    assert c.get("/api/v1/session").json() == {
        "authenticated": False, "setup_required": True, "csrf_token": None}
    # Before setup every page leads to it, and the login page too.
    assert c.get("/").headers["Location"] == "/setup"
    assert c.get("/login").headers["Location"] == "/setup"
    page = c.get("/setup")
    assert page.status == 200 and b"/static/auth.js" in page.body  # the form posts setup

    short = c.call("POST", "/api/v1/setup", {"password": "too short"})
    assert short.status == 400 and short.json()["errors"][0]["key"] == "password"
    assert c.get("/api/v1/session").json()["setup_required"]

    assert c.setup().status == 201  # logs in as well
    session = c.get("/api/v1/session").json()
    assert session["authenticated"] and not session["setup_required"]
    assert session["csrf_token"] == c.csrf

    again = Client(daemon.url).call("POST", "/api/v1/setup", {"password": "another password"})
    assert again.status == 409
    assert Client(daemon.url).login("another password").status == 401
    assert Client(daemon.url).get("/setup").headers["Location"] == "/login"
    assert "another password" not in daemon.log()


def test_session_cookie_flags_and_logout(daemon: DaemonProc) -> None:
    c = admin(daemon)
    cookie = c.cookie("appliance_session")
    assert cookie is not None
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Strict"
    assert cookie.path == "/" and not cookie.secure  # plain HTTP here; see test_https
    assert cookie.expires is None  # a browser-session cookie
    assert cookie.value is not None and len(cookie.value) >= 43  # 256 random bits

    assert c.get("/").status == 200
    assert c.get("/api/v1/status").status == 200
    assert c.call("POST", "/api/v1/logout", csrf=False).status == 403  # CSRF here too
    assert c.call("POST", "/api/v1/logout").status == 200
    assert c.get("/api/v1/status").status == 401
    # The old cookie value is dead on the server, not only deleted in this client.
    r = Client(daemon.url).get("/api/v1/status",
                               headers={"Cookie": f"appliance_session={cookie.value}"})
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/").headers["Location"] == "/login"


def test_each_login_gets_its_own_session_and_csrf_token(daemon: DaemonProc) -> None:
    a, b = admin(daemon), admin(daemon)
    assert a.csrf != b.csrf
    b.csrf = a.csrf  # b's cookie with a's token
    assert b.call("POST", "/api/v1/logout").status == 403


def test_wrong_password_lockout_grows(tmp_path: Path) -> None:
    with running_daemon(tmp_path, extra=LIGHT) as d:
        admin(d)
        c = Client(d.url)
        for _ in range(5):  # free failures
            r = c.login("wrong password!")
            assert r.status == 401 and "Retry-After" not in r.headers
        r = c.login("wrong password!")
        assert r.status == 401 and r.headers["Retry-After"] == "2"
        # Locked out: refused before the password is even checked, the right one too.
        r = c.login(ADMIN_PASSWORD)
        assert r.status == 429 and 1 <= int(r.headers["Retry-After"]) <= 2
        time.sleep(int(r.headers["Retry-After"]) + 0.1)
        r = c.login("wrong password!")
        assert r.status == 401 and r.headers["Retry-After"] == "4"  # it grows
        r = c.login(ADMIN_PASSWORD)
        assert r.status == 429 and 3 <= int(r.headers["Retry-After"]) <= 4
        assert r.json()["error"]
        time.sleep(int(r.headers["Retry-After"]) + 0.1)
        assert c.login(ADMIN_PASSWORD).status == 200  # and success clears the count
        assert c.login("wrong password!").status == 401
        assert c.login(ADMIN_PASSWORD).status == 200
        assert d.log().count("login failed from 127.0.0.1") == 8
        assert "wrong password!" not in d.log()
