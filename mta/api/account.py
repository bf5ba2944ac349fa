"""The account's HTTP signing key (`/v5/accounts/http_signing_key`): the one key receivers
check webhooks, route forwards and store notifications with. Primary API keys only: the auth
middleware lets a domain sending key do nothing but send."""

from __future__ import annotations

from aiohttp import web

from mta.api.context import services
from mta.api.errors import json_response


async def get_signing_key(request: web.Request) -> web.Response:
    return json_response({"http_signing_key": await services(request).account.signing_key()})


async def rotate_signing_key(request: web.Request) -> web.Response:
    """Every post from now on is signed with the new key (every node: admin data moved)."""
    key = await services(request).account.rotate_signing_key()
    return json_response({"message": "success", "http_signing_key": key})


ROUTES = [
    ("GET", "/v5/accounts/http_signing_key", get_signing_key),
    ("POST", "/v5/accounts/http_signing_key", rotate_signing_key),
]
