"""The update API: GET /api/v1/update (the hub's `update` section), POST /api/v1/update
(the bundle as the raw body, streamed to disk, then installed in the background).

Like every change it needs a login with the CSRF header, or a bearer token. The body is
read chunk by chunk, so the app's small body limit does not apply; MAX_BUNDLE does.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from appliance.update.installer import CHUNK, Busy, UpdateError
from appliance.web.backend import BACKEND_KEY
from appliance.web.routes import ApiError, reply

MEDIA_TYPE = "application/octet-stream"


class UpdateStatus(BaseModel):
    state: str = Field(description="idle, downloading, installing, rebooting or failed")
    percent: int = Field(0, description="progress of the current step")
    message: str = Field("", description="what RAUC does now, or why it failed")
    version: str | None = Field(None, description="version of the running image")
    slot: str | None = Field(None, description="the booted slot (a or b)")


def _status(request: web.Request) -> UpdateStatus:
    section = request.app[BACKEND_KEY].hub.snapshot()["sections"].get("update", {})
    return UpdateStatus.model_validate({k: section.get(k) for k in UpdateStatus.model_fields
                                        if section.get(k) is not None} or {"state": "idle"})


async def get_update(request: web.Request) -> web.Response:
    return reply(_status(request))


async def post_update(request: web.Request) -> web.Response:
    if request.content_type != MEDIA_TYPE:
        raise ApiError(415, f"send the bundle as {MEDIA_TYPE}")
    updater = request.app[BACKEND_KEY].updater
    try:
        bundle = await updater.receive_upload(request.content.iter_chunked(CHUNK),
                                              request.content_length)
    except Busy as exc:
        raise ApiError(409, str(exc)) from None
    except UpdateError as exc:
        raise ApiError(400, str(exc)) from None
    updater.install_soon(bundle)
    return reply(_status(request), status=202)
