"""The API's route table type and the helpers its handlers share.

One table (appliance.web.api.api_routes) is what the app registers, what the access
middleware reads to know the public routes, and what the OpenAPI document is built from,
so a route cannot be served without being documented, or documented without existing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

API_BASE = "/api/v1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # under API_BASE; "{name}" placeholders take their pattern from `params`
    handler: Handler
    name: str  # the OpenAPI operationId and the aiohttp route name ("api-" + name)
    summary: str
    public: bool = False
    body: type[BaseModel] | None = None
    body_required: bool = True
    raw_body: str | None = None  # media type of a body that is not JSON (WHEP's SDP offer)
    response: type[BaseModel] | None = None
    status: int = 200
    media_type: str = "application/json"  # of the success reply
    params: dict[str, str] = field(default_factory=dict)  # path parameter -> regex
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = ()  # documented 4xx replies besides 401/403

    @property
    def full_path(self) -> str:
        return API_BASE + self.path

    @property
    def aiohttp_path(self) -> str:
        path = self.full_path
        for param, regex in self.params.items():
            path = path.replace("{" + param + "}", "{" + param + ":" + regex + "}")
        return path


class ApiError(Exception):
    """Raised by a handler to answer {"error": ..., "errors": [...]} with a 4xx status."""

    def __init__(self, status: int, error: str, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error = status, error
        self.errors = errors or []
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.error, self.errors, self.headers)


def error_response(status: int, error: str, errors: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "errors": errors or []}, status=status,
                             headers={"Cache-Control": "no-store", **(headers or {})})


def reply(data: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


_LINE = re.compile(r" \(line \d+\)$")


def error_items(lines: list[str]) -> list[dict[str, str]]:
    """ConfigError lines ("key: message") as {"key", "message"} items."""
    out = []
    for line in lines:
        key, sep, message = _LINE.sub("", line).partition(": ")
        out.append({"key": key, "message": message} if sep else {"key": "", "message": line})
    return out


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else ("." if key else "") + part
    return key


def validation_items(exc: ValidationError) -> list[dict[str, str]]:
    return [{"key": _key(tuple(e["loc"])) or "(body)",
             "message": "unknown key" if e["type"] == "extra_forbidden"
             else e["msg"].removeprefix("Value error, ")} for e in exc.errors()]


async def read_json(request: web.Request, required: bool = True) -> Any:
    """The request's JSON body; ApiError 400 when it is not JSON (None if empty and not
    `required`)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "a JSON body is required")
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None


async def read_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid request", validation_items(exc)) from None
