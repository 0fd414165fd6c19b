"""API bearer tokens: list, create (the token is in that one reply only), revoke."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from appliance.credentials import CredentialError
from appliance.web.backend import CREDS_KEY
from appliance.web.models import Ok, TokenCreate, TokenCreated, TokenItem, TokensReply
from appliance.web.routes import ApiError, read_body, reply

log = logging.getLogger(__name__)

TOKEN_ID = r"[0-9a-f]{16}"


async def list_tokens(request: web.Request) -> web.Response:
    tokens = request.app[CREDS_KEY].tokens()
    return reply(TokensReply(tokens=[TokenItem(**t.public()) for t in tokens]))


async def create_token(request: web.Request) -> web.Response:
    body = await read_body(request, TokenCreate)
    try:
        info, token = await asyncio.to_thread(request.app[CREDS_KEY].create_token, body.name)
    except CredentialError as exc:
        raise ApiError(400, str(exc), [{"key": "name", "message": str(exc)}]) from None
    log.info("API token %s (%s) created", info.id, info.name)
    return reply(TokenCreated(**info.public(), token=token), 201)


async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["id"]
    if not await asyncio.to_thread(request.app[CREDS_KEY].revoke_token, token_id):
        raise ApiError(404, "no such token")
    log.info("API token %s revoked", token_id)
    return reply(Ok(ok=True))
