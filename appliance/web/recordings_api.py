"""Local recordings: list, download, delete. Names must match the recorder's own pattern,
so no request can name a file outside the recordings directory."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web

from appliance.record.recorder import PREFIX, SUFFIX, list_recordings
from appliance.web.backend import BACKEND_KEY
from appliance.web.models import Ok, RecordingItem, RecordingsReply
from appliance.web.routes import ApiError, reply

# rec-20250101T120000Z.mp4, or with "-<pts>" when two started within one second.
NAME = re.escape(PREFIX) + r"[0-9]{8}T[0-9]{6}Z(?:-[0-9]{1,20})?" + re.escape(SUFFIX)
_NAME_RE = re.compile(NAME)


def _existing(request: web.Request) -> Path:
    name = request.match_info["name"]
    if not _NAME_RE.fullmatch(name):  # the route's pattern checks too
        raise ApiError(404, "no such recording")
    path = request.app[BACKEND_KEY].recordings_dir() / name
    if not path.is_file():
        raise ApiError(404, "no such recording")
    return path


async def list_all(request: web.Request) -> web.Response:
    backend = request.app[BACKEND_KEY]
    found = await asyncio.to_thread(list_recordings, backend.recordings_dir(),
                                    backend.active_recording())
    items = [RecordingItem(name=r.name, size=r.size, started=r.started, active=r.active)
             for r in found]
    return reply(RecordingsReply(recordings=items))


async def download(request: web.Request) -> web.FileResponse:
    path = _existing(request)
    return web.FileResponse(path, headers={
        "Content-Type": "video/mp4", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{path.name}"'})


async def delete(request: web.Request) -> web.Response:
    path = _existing(request)
    if path.name == request.app[BACKEND_KEY].active_recording():
        raise ApiError(409, "the recording is being written")
    path.unlink(missing_ok=True)
    return reply(Ok(ok=True))
