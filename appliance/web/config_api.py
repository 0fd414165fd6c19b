"""Config and uplink handlers: read (masked), validate, and apply.

Every change goes the same way, whole config at a time: secrets sent back as the mask
get their stored value, the result is validated as a whole (so cross-table rules hold
and errors name full keys), saved atomically to the config file, then hot-applied by
the daemon. One change at a time (CONFIG_LOCK): two concurrent edits cannot lose one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from appliance.config.load import ConfigError, dump, save_atomic, validate
from appliance.config.schema import Config, Uplink
from appliance.uplink.destination import TransportError, make_transport
from appliance.web.backend import BACKEND_KEY
from appliance.web.masking import MASK, mask, secret_values, unmask
from appliance.web.models import ApplyReply, TestReply, ValidateReply
from appliance.web.routes import ApiError, error_items, read_json, reply

log = logging.getLogger(__name__)

CONFIG_LOCK = web.AppKey("config_lock", asyncio.Lock)
# Connection tests at once: each may hold a thread for TEST_TIMEOUT_S.
TEST_SLOTS = web.AppKey("uplink_test_slots", asyncio.Semaphore)
MAX_TESTS = 2
TEST_TIMEOUT_S = 10.0


def _validated(data: Any) -> Config:
    if not isinstance(data, dict):
        raise ApiError(400, "the config must be a JSON object")
    try:
        return validate(data)
    except ConfigError as exc:
        raise ApiError(400, "invalid config", error_items(exc.errors)) from None


async def _save_and_apply(request: web.Request, cfg: Config, status: int = 200) -> web.Response:
    backend = request.app[BACKEND_KEY]
    path = backend.config_file()
    try:
        await asyncio.to_thread(save_atomic, path, dump(cfg))
    except OSError as exc:
        log.error("cannot save the config to %s: %s", path, exc.strerror)
        raise ApiError(500, f"cannot save the config: {exc.strerror}") from None
    log.info("config saved to %s by the API", path)
    restart = await backend.apply_config(cfg)
    return reply(ApplyReply(ok=True, restart_needed=restart), status)


# -- the whole config ----------------------------------------------------------------------


async def get_config(request: web.Request) -> web.Response:
    cfg = request.app[BACKEND_KEY].cfg
    return reply(mask(Config, cfg.model_dump(mode="json")))


_SCHEMA: dict[str, Any] = {}


async def get_schema(request: web.Request) -> web.Response:
    if not _SCHEMA:
        _SCHEMA.update(Config.model_json_schema())
    return reply(_SCHEMA)


async def validate_config(request: web.Request) -> web.Response:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(400, "the config must be a JSON object")
    data = unmask(Config, data, request.app[BACKEND_KEY].cfg)
    try:
        _validated(data)
    except ApiError as exc:
        return reply(ValidateReply.model_validate({"ok": False, "errors": exc.errors}))
    return reply(ValidateReply(ok=True))


async def put_config(request: web.Request) -> web.Response:
    data = await read_json(request)
    async with request.app[CONFIG_LOCK]:
        cfg = _validated(unmask(Config, data, request.app[BACKEND_KEY].cfg))
        return await _save_and_apply(request, cfg)


# -- uplinks -------------------------------------------------------------------------------


def _find(request: web.Request) -> tuple[int, Uplink]:
    name = request.match_info["name"]
    for i, u in enumerate(request.app[BACKEND_KEY].cfg.uplink):
        if u.name == name:
            return i, u
    raise ApiError(404, f"no uplink named {name!r}")


def _with_uplinks(request: web.Request, uplinks: list[Any], edited: int | None) -> Config:
    """The running config with `uplinks` instead of its own, validated; errors about the
    uplink being edited name its own keys ("url", not "uplink[2].url")."""
    data = request.app[BACKEND_KEY].cfg.model_dump(mode="json", exclude_none=True)
    data["uplink"] = uplinks
    try:
        return _validated(data)
    except ApiError as exc:
        if edited is not None:
            prefix = f"uplink[{edited}]."
            for item in exc.errors:
                item["key"] = item["key"].removeprefix(prefix)
        raise


def _dumped(cfg: Config) -> list[dict[str, Any]]:
    return [u.model_dump(mode="json", exclude_none=True) for u in cfg.uplink]


async def list_uplinks(request: web.Request) -> web.Response:
    cfg = request.app[BACKEND_KEY].cfg
    return reply({"uplinks": [mask(Uplink, u.model_dump(mode="json")) for u in cfg.uplink]})


async def get_uplink(request: web.Request) -> web.Response:
    _, uplink = _find(request)
    return reply(mask(Uplink, uplink.model_dump(mode="json")))


async def create_uplink(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the uplink must be a JSON object")
    async with request.app[CONFIG_LOCK]:
        cfg = request.app[BACKEND_KEY].cfg
        if any(u.name == body.get("name") for u in cfg.uplink):
            raise ApiError(409, f"an uplink named {body.get('name')!r} exists already",
                           [{"key": "name", "message": "already taken"}])
        uplinks = [*_dumped(cfg), unmask(Uplink, body, None)]
        new = _with_uplinks(request, uplinks, len(uplinks) - 1)
        return await _save_and_apply(request, new, 201)


async def update_uplink(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the uplink must be a JSON object")
    async with request.app[CONFIG_LOCK]:
        index, old = _find(request)
        uplinks = _dumped(request.app[BACKEND_KEY].cfg)
        uplinks[index] = {"name": old.name, **unmask(Uplink, body, old)}
        return await _save_and_apply(request, _with_uplinks(request, uplinks, index))


async def delete_uplink(request: web.Request) -> web.Response:
    async with request.app[CONFIG_LOCK]:
        index, _ = _find(request)
        uplinks = _dumped(request.app[BACKEND_KEY].cfg)
        del uplinks[index]
        return await _save_and_apply(request, _with_uplinks(request, uplinks, None))


async def test_uplink(request: web.Request) -> web.Response:
    """One connect attempt with the uplink's own transport, then close: does the origin
    take this URL and key? Bounded by TEST_TIMEOUT_S (the connect is woken by a close)."""
    _, uplink = _find(request)
    slots = request.app[TEST_SLOTS]
    if slots.locked():
        raise ApiError(429, "connection tests are running: try again in a moment",
                       headers={"Retry-After": str(int(TEST_TIMEOUT_S))})
    async with slots:
        ok, message = await _attempt(uplink)
    log.info("uplink %s: connection test: %s", uplink.name, message)
    return reply(TestReply(ok=ok, message=message))


async def _attempt(uplink: Uplink) -> tuple[bool, str]:
    made: list[Any] = []

    def attempt() -> tuple[bool, str]:
        try:
            transport = make_transport(uplink)
            made.append(transport)
            transport.connect()
            return True, "connected: the origin accepted the stream"
        except TransportError as exc:
            return False, str(exc)
        except OSError as exc:
            return False, f"cannot connect: {exc.strerror or exc}"
        finally:
            for t in made:
                t.close()

    task = asyncio.ensure_future(asyncio.to_thread(attempt))
    done, _ = await asyncio.wait({task}, timeout=TEST_TIMEOUT_S)
    if done:
        ok, message = task.result()
    else:
        for t in made:
            await asyncio.to_thread(t.close)
        ok, message = False, f"no answer within {TEST_TIMEOUT_S:g} s"
    for secret in secret_values(uplink):  # no origin error may echo a key back to the page
        message = message.replace(secret, MASK)
    return ok, message
