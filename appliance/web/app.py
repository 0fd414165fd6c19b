"""The aiohttp application: one listener for the page, the API, /live and /healthz."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from appliance.package.store import SegmentStore
from appliance.status import StatusHub
from appliance.web.live import setup_live

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
HUB_KEY = web.AppKey("hub", StatusHub)
STORE_KEY = web.AppKey("store", SegmentStore)


def vendor_dir() -> Path:
    """Where npm put the third-party browser code (hls.js, ...)."""
    env = os.environ.get("APPLIANCE_VENDOR_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "node_modules"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A bug in a handler is logged with its traceback; the client sees only a status.
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("error serving %s %s", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


async def healthz(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return web.json_response({"ok": True, "state": hub.state()})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


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


def make_app(hub: StatusHub, store: SegmentStore) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[HUB_KEY] = hub
    app[STORE_KEY] = store
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get(r"/static/vendor/{pkg:[a-z0-9.-]+}/{file:" + _VENDOR_FILE + "}", vendor)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    setup_live(app, store)
    return app
