"""The JSON API under /api/v1: its route table, and the handlers too small for a module.

`api_routes()` is the single list the app registers, the access middleware opens (the
`public` ones) and the OpenAPI document describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from appliance.config.schema import Config, Uplink
from appliance.device.leds import leds_for
from appliance.update import api as update_api
from appliance.web import auth, config_api, playback, recordings_api, tls_api, tokens_api
from appliance.web.auth import AUTH_KEY
from appliance.web.backend import BACKEND_KEY
from appliance.web.models import (
    ApplyReply,
    LoginBody,
    LoginReply,
    LogsReply,
    Ok,
    PasswordBody,
    PlaybackUrlReply,
    RecordingsReply,
    SessionReply,
    StatusReply,
    TestReply,
    TokenCreate,
    TokenCreated,
    TokensReply,
    UplinksReply,
    ValidateReply,
)
from appliance.web.routes import ApiError, ApiRoute, QueryParam, reply
from appliance.web.whep import whep_routes

OPENAPI_KEY = web.AppKey("openapi", dict)
SHUTDOWN_KEY = web.AppKey("shutdown", asyncio.Event)
EVENTS_EVERY_S = 1.0
LOG_LINES_DEFAULT, LOG_LINES_MAX = 200, 1000
UPLINK_NAME = r"[A-Za-z0-9_-]{1,32}"


def status_payload(request: web.Request) -> dict[str, Any]:
    snap = request.app[BACKEND_KEY].hub.snapshot()
    return {**snap, "leds": leds_for(snap["state"])}


async def status(request: web.Request) -> web.Response:
    return reply(status_payload(request))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the status snapshot every second, for as long as the client
    stays and its login holds (a logout or a revoked token ends the stream)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    shutdown = request.app[SHUTDOWN_KEY]
    try:
        while not shutdown.is_set() and request.app[AUTH_KEY].identify(request) is not None:
            data = json.dumps(status_payload(request), separators=(",", ":"))
            await resp.write(f"event: status\ndata: {data}\n\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown.wait(), EVENTS_EVERY_S)
    except ConnectionResetError:
        pass  # the page went away
    return resp


async def logs(request: web.Request) -> web.Response:
    raw = request.query.get("lines", str(LOG_LINES_DEFAULT))
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= LOG_LINES_MAX:
        raise ApiError(400, f"lines must be a whole number from 1 to {LOG_LINES_MAX}",
                       [{"key": "lines", "message": "out of range"}])
    records = request.app[BACKEND_KEY].log_ring.recent(int(raw))
    return reply(LogsReply.model_validate({"records": records}))


async def restart_stream(request: web.Request) -> web.Response:
    if not await request.app[BACKEND_KEY].restart_media():
        raise ApiError(409, "media is off (safe mode): fix the config first")
    return reply(Ok(ok=True))


async def playback_url(request: web.Request) -> web.Response:
    cfg = request.app[BACKEND_KEY].cfg.playback
    origin = f"{request.scheme}://{request.host}"
    token = expires = None
    query = ""
    if cfg.require_token:
        expires = int(time.time()) + cfg.token_ttl_s
        token = playback.sign(request.app[AUTH_KEY].playback_key(), expires)
        query = f"?{playback.PARAM}={token}"
    return reply(PlaybackUrlReply(url=f"{origin}/live/index.m3u8{query}",
                                  mpd_url=f"{origin}/live/manifest.mpd{query}",
                                  token=token, expires=expires))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


def api_routes() -> list[ApiRoute]:
    name = {"name": UPLINK_NAME}
    return [
        # -- auth
        ApiRoute("GET", "/session", auth.api_session, "session", public=True,
                 summary="Whether this client is logged in; its CSRF token if so",
                 response=SessionReply),
        ApiRoute("POST", "/setup", auth.api_setup, "setup", public=True,
                 summary="First run: set the admin password (refused once set); logs in",
                 body=PasswordBody, response=LoginReply, status=201, errors=(400, 409)),
        ApiRoute("POST", "/login", auth.api_login, "login", public=True,
                 summary="Log in: sets the session cookie, returns the CSRF token",
                 body=LoginBody, response=LoginReply, errors=(400, 401, 409, 429)),
        ApiRoute("POST", "/logout", auth.api_logout, "logout", summary="End this session",
                 response=Ok),
        # -- status
        ApiRoute("GET", "/status", status, "status", response=StatusReply,
                 summary="The full live status: media, encoders, uplinks, LEDs, device"),
        ApiRoute("GET", "/events", events, "events", media_type="text/event-stream",
                 summary="Server-Sent Events: `status` events carrying /status each second"),
        # -- config
        ApiRoute("GET", "/config", config_api.get_config, "get_config", response=Config,
                 summary="The running config, secrets masked"),
        ApiRoute("PUT", "/config", config_api.put_config, "put_config", body=Config,
                 response=ApplyReply, errors=(400,),
                 summary="Validate, save atomically and apply a whole config (a masked "
                         "secret keeps its stored value)"),
        ApiRoute("GET", "/config/schema", config_api.get_schema, "config_schema",
                 summary="The config's JSON schema (titles, ranges, secret markers)"),
        ApiRoute("POST", "/config/validate", config_api.validate_config, "validate_config",
                 body=Config, response=ValidateReply, errors=(400,),
                 summary="Check a config without saving it"),
        # -- uplinks
        ApiRoute("GET", "/uplinks", config_api.list_uplinks, "list_uplinks",
                 response=UplinksReply, summary="Uplink destinations, secrets masked"),
        ApiRoute("POST", "/uplinks", config_api.create_uplink, "create_uplink", body=Uplink,
                 response=ApplyReply, status=201, errors=(400, 409),
                 summary="Add an uplink destination (saved and applied)"),
        ApiRoute("GET", "/uplinks/{name}", config_api.get_uplink, "get_uplink", params=name,
                 response=Uplink, errors=(404,), summary="One uplink, secrets masked"),
        ApiRoute("PUT", "/uplinks/{name}", config_api.update_uplink, "update_uplink",
                 params=name, body=Uplink, response=ApplyReply, errors=(400, 404),
                 summary="Replace an uplink (a masked secret keeps its stored value)"),
        ApiRoute("DELETE", "/uplinks/{name}", config_api.delete_uplink, "delete_uplink",
                 params=name, response=ApplyReply, errors=(400, 404),
                 summary="Remove an uplink"),
        ApiRoute("POST", "/uplinks/{name}/test", config_api.test_uplink, "test_uplink",
                 params=name, response=TestReply, errors=(404, 429),
                 summary="Try one connection to the uplink's origin, then close it"),
        # -- stream, logs, recordings
        ApiRoute("POST", "/stream/restart", restart_stream, "restart_stream", response=Ok,
                 errors=(409,), summary="Restart capture, encoders, packagers and uplinks"),
        ApiRoute("GET", "/logs", logs, "logs", response=LogsReply, errors=(400,),
                 query=(QueryParam("lines", {"type": "integer", "minimum": 1,
                                             "maximum": LOG_LINES_MAX,
                                             "default": LOG_LINES_DEFAULT},
                                   "How many of the most recent records"),),
                 summary="Recent log records, oldest first"),
        ApiRoute("GET", "/recordings", recordings_api.list_all, "list_recordings",
                 response=RecordingsReply, summary="Local recordings, oldest first"),
        ApiRoute("GET", "/recordings/{name}", recordings_api.download, "get_recording",
                 params={"name": recordings_api.NAME}, media_type="video/mp4",
                 errors=(404,), summary="Download a recording (fragmented MP4)"),
        ApiRoute("DELETE", "/recordings/{name}", recordings_api.delete, "delete_recording",
                 params={"name": recordings_api.NAME}, response=Ok, errors=(404, 409),
                 summary="Delete a recording (not the one being written)"),
        # -- tokens and playback
        ApiRoute("GET", "/tokens", tokens_api.list_tokens, "list_tokens",
                 response=TokensReply, summary="API bearer tokens (never the tokens)"),
        ApiRoute("POST", "/tokens", tokens_api.create_token, "create_token", body=TokenCreate,
                 response=TokenCreated, status=201, errors=(400,),
                 summary="Create a bearer token: the reply holds it, and nothing ever again"),
        ApiRoute("DELETE", "/tokens/{id}", tokens_api.revoke_token, "revoke_token",
                 params={"id": tokens_api.TOKEN_ID}, response=Ok, errors=(404,),
                 summary="Revoke a bearer token"),
        ApiRoute("GET", "/playback-url", playback_url, "playback_url",
                 response=PlaybackUrlReply,
                 summary="URLs of the live stream, signed when playback needs a token"),
        # -- the HTTPS front's certificate
        ApiRoute("GET", "/tls", tls_api.get_tls, "get_tls", response=tls_api.TlsReply,
                 errors=(404, 409),
                 summary="The HTTPS front's certificate: subject, names, dates, fingerprint"),
        ApiRoute("PUT", "/tls", tls_api.put_tls, "put_tls", body=tls_api.TlsUpload,
                 response=tls_api.TlsReply, errors=(400,),
                 summary="Replace the HTTPS front's certificate and key (checked: they parse, "
                         "match and are valid now); nginx reloads it"),
        # -- signed A/B updates (appliance.update)
        ApiRoute("GET", "/update", update_api.get_update, "get_update",
                 response=update_api.UpdateStatus,
                 summary="The update's state: idle, downloading, installing, rebooting or "
                         "failed, with progress, and the running version and slot"),
        ApiRoute("POST", "/update", update_api.post_update, "post_update",
                 raw_body=update_api.MEDIA_TYPE, response=update_api.UpdateStatus, status=202,
                 errors=(409, 415),
                 summary="Upload a RAUC bundle (the raw body); it is installed in the "
                         "background (RAUC checks signature, board and version), then the "
                         "device reboots into it: follow GET /update or /status"),
        ApiRoute("GET", "/openapi.json", openapi, "openapi", public=True,
                 summary="This document"),
        *whep_routes(),
    ]
