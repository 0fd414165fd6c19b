"""The HTTPS front's certificate (appliance.provision.tls): see it, replace it.

The daemon only writes the files; on the device a systemd path unit sees cert.pem change
and reloads nginx (the daemon has no right to). The key goes in and is never shown again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from appliance.provision import tls
from appliance.web.backend import BACKEND_KEY
from appliance.web.routes import ApiError, read_body, reply

log = logging.getLogger(__name__)


class TlsReply(BaseModel):
    subject: str
    issuer: str
    names: list[str] = Field(description="subjectAltName: DNS names and IP addresses")
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str = Field(description="SHA-256 fingerprint, as browsers show it")
    self_signed: bool


class TlsUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert: str = Field(max_length=tls.MAX_PEM,
                      description="PEM certificate, then any intermediate certificates")
    key: str = Field(max_length=tls.MAX_PEM,
                     description="its PEM private key, unencrypted (never shown again)")


def tls_dir(request: web.Request) -> Path:
    backend = request.app[BACKEND_KEY]
    configured = backend.cfg.web.tls_dir
    return Path(configured) if configured else tls.default_dir(backend.state_dir)


def _reply(info: tls.CertInfo) -> web.Response:
    return reply(TlsReply.model_validate(info.public()))


async def get_tls(request: web.Request) -> web.Response:
    try:
        info = await asyncio.to_thread(tls.installed, tls_dir(request))
    except tls.TlsError as exc:
        raise ApiError(409, f"{exc}: upload a new certificate") from None
    if info is None:
        raise ApiError(404, "no certificate yet (`appliance tls-cert` makes one)")
    return _reply(info)


async def put_tls(request: web.Request) -> web.Response:
    body = await read_body(request, TlsUpload)
    directory = tls_dir(request)
    try:
        pair = tls.load_pair(body.cert.encode(), body.key.encode())
        tls.check_dates(pair.info)
    except tls.TlsError as exc:
        raise ApiError(400, str(exc), [{"key": exc.key, "message": exc.message}]) from None
    await asyncio.to_thread(tls.install, directory, pair)
    log.info("TLS certificate in %s replaced: %s, SHA-256 %s", directory, pair.info.subject,
             pair.info.sha256)
    return _reply(pair.info)
