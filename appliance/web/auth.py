"""Who may do what: the access middleware, first-run setup, login, logout, session.

Every route has an access class, kept per route in the app (ACCESS_KEY); a route
nobody classified is "user", so a new route is closed until someone opens it:
- public: answers anyone (/healthz, /static, the login and setup pages, login, setup,
  session, the OpenAPI document);
- live: /live, open unless `playback.require_token`, then a signed URL or a login;
- user: a session cookie (+ X-CSRF-Token and a same-origin Origin/Referer on changes) or
  `Authorization: Bearer <token>` (no CSRF: a script's header is not sent by browsers on
  their own). Without either: 401 JSON under /api/, a redirect to /login for pages.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

from appliance.credentials import CredentialStore, TokenInfo
from appliance.passwords import PasswordError
from appliance.web import playback
from appliance.web.backend import BACKEND_KEY, CREDS_KEY
from appliance.web.live import CORS, PLAYBACK_TOKEN
from appliance.web.models import LoginBody, LoginReply, Ok, PasswordBody, SessionReply
from appliance.web.ratelimit import LoginLimiter
from appliance.web.routes import ApiError, Handler, read_body, reply
from appliance.web.sessions import Session, SessionStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "appliance_session"
# Under TLS the __Host- prefix makes browsers insist on Secure, Path=/ and no Domain.
SECURE_COOKIE = "__Host-appliance_session"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_WAITING_LOGINS = 8  # password checks queued beyond this are refused (429) at once

Access = Literal["public", "live", "user"]
ACCESS_KEY = web.AppKey("access", dict[web.AbstractRoute, Access])


@dataclass(frozen=True, slots=True)
class Identity:
    kind: Literal["session", "token"]
    session: Session | None = None
    token: TokenInfo | None = None


IDENTITY = web.RequestKey("identity", Identity)


class Auth:
    """The login state of one app: sessions, the rate limiter, the password checker."""

    def __init__(self, creds: CredentialStore):
        self.creds = creds
        self.sessions = SessionStore()
        self.limiter = LoginLimiter()
        self._hashing = asyncio.Semaphore(1)  # one 64 MiB scrypt at a time
        self._waiting = 0
        self._playback_key: bytes | None = None

    def identify(self, request: web.Request) -> Identity | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            token = self.creds.check_token(value.strip()) if scheme.lower() == "bearer" else None
            return Identity("token", token=token) if token else None
        session_id = request.cookies.get(cookie_name(request))
        if session_id:
            session = self.sessions.get(session_id, self.creds.password_stamp())
            if session is not None:
                return Identity("session", session=session)
        return None

    async def check_password(self, password: str) -> bool:
        if self._waiting >= MAX_WAITING_LOGINS:
            raise ApiError(429, "too many logins at once: try again", headers={"Retry-After": "1"})
        self._waiting += 1
        try:
            async with self._hashing:
                return await asyncio.to_thread(self.creds.verify_password, password)
        finally:
            self._waiting -= 1

    def playback_key(self) -> bytes:
        if self._playback_key is None:
            self._playback_key = self.creds.playback_key()
        return self._playback_key


AUTH_KEY = web.AppKey("auth", Auth)


def cookie_name(request: web.Request) -> str:
    return SECURE_COOKIE if request.secure else COOKIE


def same_origin(request: web.Request) -> bool:
    """False when Origin (else Referer) names another origin than the one asked."""
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        if not referer:
            return True
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin == f"{request.scheme}://{request.host}"


def csrf_ok(request: web.Request, session: Session) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    return secrets.compare_digest(sent.encode("utf-8", "replace"),
                                  session.csrf_token.encode("utf-8"))


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is not None:
        return await handler(request)  # no such route (404) or method (405): nothing to guard
    access = request.app[ACCESS_KEY].get(match.route, "user")
    auth = request.app[AUTH_KEY]
    if access == "public":
        if request.method in UNSAFE_METHODS and not same_origin(request):
            raise ApiError(403, "cross-origin request refused")
        return await handler(request)
    if access == "live":
        return await _live(request, handler, auth)
    identity = auth.identify(request)
    if identity is None:
        _refuse_anonymous(request, auth)
    assert identity is not None
    if identity.session is not None and request.method in UNSAFE_METHODS:
        if not same_origin(request):
            raise ApiError(403, "cross-origin request refused")
        if not csrf_ok(request, identity.session):
            raise ApiError(403, f"{CSRF_HEADER} header missing or wrong")
    request[IDENTITY] = identity
    return await handler(request)


def _refuse_anonymous(request: web.Request, auth: Auth) -> None:
    if request.path.startswith("/api/") or request.method not in ("GET", "HEAD"):
        raise ApiError(401, "authentication required",
                       headers={"WWW-Authenticate": 'Bearer realm="appliance"'})
    raise web.HTTPSeeOther("/setup" if auth.creds.setup_required() else "/login")


async def _live(request: web.Request, handler: Handler, auth: Auth) -> web.StreamResponse:
    cfg = request.app[BACKEND_KEY].cfg.playback
    if not cfg.require_token or request.method == "OPTIONS":
        return await handler(request)
    token = request.query.get(playback.PARAM, "")
    if token and playback.verify(auth.playback_key(), token):
        # live.py puts it on every URI of the playlists and the MPD it serves.
        request[PLAYBACK_TOKEN] = token
        return await handler(request)
    if auth.identify(request) is not None:  # the page of a logged-in user plays as it is
        return await handler(request)
    return web.Response(status=403, text="a valid playback token is required\n",
                        headers={**CORS, "Cache-Control": "no-store"})


# -- pages -----------------------------------------------------------------------------


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-store"})


async def index_page(request: web.Request) -> web.FileResponse:
    return _page("index.html")


async def login_page(request: web.Request) -> web.FileResponse:
    if request.app[CREDS_KEY].setup_required():
        raise web.HTTPSeeOther("/setup")
    return _page("login.html")


async def setup_page(request: web.Request) -> web.FileResponse:
    if not request.app[CREDS_KEY].setup_required():
        raise web.HTTPSeeOther("/login")
    return _page("setup.html")


# -- API -------------------------------------------------------------------------------


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _start_session(request: web.Request, status: int) -> web.Response:
    auth = request.app[AUTH_KEY]
    session_id, session = auth.sessions.create(auth.creds.password_stamp())
    resp = reply(LoginReply(ok=True, csrf_token=session.csrf_token), status)
    # No Max-Age: the cookie ends with the browser; the server ends it sooner (sessions.py).
    resp.set_cookie(cookie_name(request), session_id, path="/", httponly=True,
                    samesite="Strict", secure=request.secure)
    return resp


async def api_setup(request: web.Request) -> web.Response:
    creds = request.app[CREDS_KEY]
    if not creds.setup_required():
        raise ApiError(409, "the admin password is already set")
    body = await read_body(request, PasswordBody)
    try:
        first = await asyncio.to_thread(creds.set_password, body.password, only_if_unset=True)
    except PasswordError as exc:
        raise ApiError(400, str(exc), [{"key": "password", "message": str(exc)}]) from None
    if not first:
        raise ApiError(409, "the admin password is already set")
    log.info("admin password set by first-run setup from %s", _client(request))
    return _start_session(request, 201)


async def api_login(request: web.Request) -> web.Response:
    auth = request.app[AUTH_KEY]
    client = _client(request)
    wait = auth.limiter.retry_after(client)
    if wait:
        raise ApiError(429, "too many failed logins: try again later",
                       headers={"Retry-After": str(wait)})
    body = await read_body(request, LoginBody)
    if auth.creds.setup_required():
        raise ApiError(409, "no admin password yet: set one at /setup")
    if not await auth.check_password(body.password):
        lock = auth.limiter.failure(client)
        log.warning("login failed from %s", client)
        raise ApiError(401, "wrong password",
                       headers={"Retry-After": str(lock)} if lock else None)
    auth.limiter.success(client)
    log.info("login from %s", client)
    return _start_session(request, 200)


async def api_logout(request: web.Request) -> web.Response:
    identity = request[IDENTITY]
    if identity.session is not None:
        request.app[AUTH_KEY].sessions.drop(identity.session)
    resp = reply(Ok(ok=True))
    resp.del_cookie(cookie_name(request), path="/", secure=request.secure, httponly=True,
                    samesite="Strict")
    return resp


async def api_session(request: web.Request) -> web.Response:
    auth = request.app[AUTH_KEY]
    identity = auth.identify(request)
    session = identity.session if identity else None
    return reply(SessionReply(authenticated=identity is not None,
                              setup_required=auth.creds.setup_required(),
                              csrf_token=session.csrf_token if session else None))
