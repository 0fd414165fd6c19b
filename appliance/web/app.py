"""The aiohttp application: one listener for the page, the API, /live and /healthz.

Each route gets an access class here (see appliance.web.auth): what is not said to be
public or live needs a login.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from appliance import metrics
from appliance.credentials import CredentialStore
from appliance.package.store import SegmentStore
from appliance.web import auth, openapi
from appliance.web.api import OPENAPI_KEY, SHUTDOWN_KEY, api_routes
from appliance.web.auth import ACCESS_KEY, AUTH_KEY, Access, Auth, access_middleware
from appliance.web.backend import BACKEND_KEY, CREDS_KEY, STORE_KEY, Backend
from appliance.web.captive import captive_middleware
from appliance.web.config_api import CONFIG_LOCK, MAX_TESTS, TEST_SLOTS
from appliance.web.forwarded import forwarded_middleware
from appliance.web.live import setup_live
from appliance.web.routes import ApiError, error_response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 1 << 20  # a config is a few kB
# Headers of an aiohttp error worth keeping when it is turned into JSON.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def vendor_dir() -> Path:
    """Where npm put the third-party browser code (hls.js, ...)."""
    env = os.environ.get("APPLIANCE_VENDOR_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "node_modules"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A bug in a handler is logged with its traceback; the client sees only a status.
    # API errors are JSON, whoever raised them.
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            kept = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
            return error_response(exc.status, exc.reason.lower(), headers=kept)
        raise
    except Exception:
        log.exception("error serving %s %s", request.method, request.path)
        return web.json_response({"error": "internal error", "errors": []}, status=500)


async def security_headers(request: web.BaseRequest, resp: web.StreamResponse) -> None:
    # No framing (clickjacking of the settings page), no MIME sniffing, and no full URLs
    # (a signed playback link) in Referer headers sent to other sites.
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")


def static_page(name: str) -> Handler:
    """A page of static/ for logged-in users (the access class says who may see it)."""

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-store"})

    return handler


async def healthz(request: web.Request) -> web.Response:
    hub = request.app[BACKEND_KEY].hub
    return web.json_response({"ok": True, "state": hub.state()})


METRICS_KEY = web.AppKey("metrics", metrics.CollectorRegistry)


async def metrics_page(request: web.Request) -> web.Response:
    """/metrics, read from the status hub at each scrape (appliance.metrics)."""
    body = await asyncio.to_thread(metrics.render, request.app[METRICS_KEY])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE,
                                            "Cache-Control": "no-store"})


# A file under the package's dist/, up to three folders deep (dash.js ships
# dist/modern/esm/...). No part may start with a dot, so no "..": resolve() below checks too.
_VENDOR_PART = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_VENDOR_FILE = rf"(?:{_VENDOR_PART}/){{0,3}}{_VENDOR_PART}"


async def vendor(request: web.Request) -> web.FileResponse:
    pkg, name = request.match_info["pkg"], request.match_info["file"]
    root = (vendor_dir() / pkg / "dist").resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def make_app(backend: Backend, store: SegmentStore, creds: CredentialStore) -> web.Application:
    # First: every later middleware and handler must see the real client and scheme.
    app = web.Application(middlewares=[forwarded_middleware(backend.cfg.web.proxies),
                                       errors_middleware, captive_middleware,
                                       access_middleware],
                          client_max_size=MAX_BODY)
    app[BACKEND_KEY] = backend
    app[STORE_KEY] = store
    app[CREDS_KEY] = creds
    app[AUTH_KEY] = Auth(creds)
    app[CONFIG_LOCK] = asyncio.Lock()
    app[TEST_SLOTS] = asyncio.Semaphore(MAX_TESTS)
    app[SHUTDOWN_KEY] = asyncio.Event()
    access: dict[web.AbstractRoute, Access] = {}
    app[ACCESS_KEY] = access

    def mark(resource: web.AbstractResource, how: Access) -> None:
        for route in resource:
            access[route] = how

    def page(path: str, handler: Handler, how: Access) -> None:
        resource = app.router.add_resource(path)
        resource.add_route("GET", handler)
        resource.add_route("HEAD", handler)
        mark(resource, how)

    page("/healthz", healthz, "public")
    # SPEC: open on the LAN when `[metrics] open` (read at start: a daemon section), else
    # like a page: a login or an API bearer token.
    app[METRICS_KEY] = metrics.make_registry(backend.hub)
    page("/metrics", metrics_page, "public" if backend.cfg.metrics.open else "user")
    page("/", auth.index_page, "user")
    page("/settings", static_page("settings.html"), "user")
    page("/logs", static_page("logs.html"), "user")
    page("/login", auth.login_page, "public")
    page("/setup", auth.setup_page, "public")
    page(r"/static/vendor/{pkg:[a-z0-9.-]+}/{file:" + _VENDOR_FILE + "}", vendor, "public")
    mark(app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False), "public")

    routes = api_routes()
    resources: dict[str, web.Resource] = {}
    for r in routes:
        resource = resources.get(r.aiohttp_path)
        if resource is None:
            resource = resources[r.aiohttp_path] = app.router.add_resource(r.aiohttp_path)
        route = resource.add_route(r.method, r.handler)
        access[route] = "public" if r.public else "user"
    app[OPENAPI_KEY] = openapi.build(routes)

    setup_live(app, store)
    for live in app.router.resources():
        if (live.name or "").startswith("live-"):
            mark(live, "live")

    async def on_shutdown(app: web.Application) -> None:
        app[SHUTDOWN_KEY].set()  # ends the event streams, so shutdown need not wait on them

    app.on_shutdown.append(on_shutdown)
    app.on_response_prepare.append(security_headers)
    return app
