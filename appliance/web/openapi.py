"""The OpenAPI 3.1 document of the API, built from the same route table the app serves.

Request and response schemas are the pydantic models' own JSON schemas (OpenAPI 3.1
uses JSON Schema 2020-12, which is what pydantic writes), so the document follows the
code: a field added to a model shows up here, and a route added to the table too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from appliance.web.auth import COOKIE
from appliance.web.models import ErrorReply
from appliance.web.routes import ApiRoute

_REF = "#/components/schemas/{model}"
_REASONS = {400: "Bad request (the errors name the keys)", 401: "Not logged in",
            403: "Refused (CSRF token or origin)", 404: "Not found",
            405: "Not supported on this resource", 409: "Conflicts with the current state",
            413: "Body too large", 415: "Wrong Content-Type",
            429: "Too many attempts: see Retry-After", 500: "Could not be done",
            503: "Not available now (no media yet, or no free slot): see Retry-After"}


def _error_ref() -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": _REF.format(
        model=ErrorReply.__name__)}}}}


def _operation(route: ApiRoute, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                          "tags": [route.path.strip("/").split("/")[0]]}
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "pattern": f"^{regex}$"}}
        for name, regex in route.params.items()
    ]
    params += [{"name": q.name, "in": "query", "required": False, "schema": q.schema,
                "description": q.description} for q in route.query]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required,
                             "content": {"application/json": {"schema": refs[route.body]}}}
    elif route.raw_body is not None:
        op["requestBody"] = {"required": True,
                             "content": {route.raw_body: {"schema": {"type": "string"}}}}
    if route.response is not None:
        content = {route.media_type: {"schema": refs[route.response]}}
    elif route.media_type == "application/json":
        content = {"application/json": {"schema": {"type": "object"}}}
    elif route.media_type.startswith("text/"):
        content = {route.media_type: {"schema": {"type": "string"}}}
    else:
        content = {route.media_type: {"schema": {"type": "string", "format": "binary"}}}
    responses: dict[str, Any] = {str(route.status): {"description": "OK", "content": content}}
    codes = set(route.errors)
    if not route.public:
        codes |= {401, 403}
    if route.body is not None or route.raw_body is not None:
        codes.add(400)
    for code in sorted(codes):
        responses[str(code)] = {"description": _REASONS[code], **_error_ref()}
    op["responses"] = responses
    # Public routes need nothing; the others take either scheme.
    op["security"] = [] if route.public else [{"bearer": []}, {"session": []}]
    return op


def build(routes: list[ApiRoute], title: str = "appliance", version: str = "1") -> dict[str, Any]:
    models: list[type[BaseModel]] = [ErrorReply]
    for r in routes:
        for m in (r.body, r.response):
            if m is not None and m not in models:
                models.append(m)
    keys, schema = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    refs = {m: keys[(m, "validation")] for m in models}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Changes need a session cookie plus the X-CSRF-Token "
                                "header, or a bearer token (appliance token create)."},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": COOKIE},
            },
        },
    }

