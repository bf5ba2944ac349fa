"""What request handlers read: the node's parts (`Services`, built once by mta.services), the
request's API key, and helpers for path and query values."""

from __future__ import annotations

from aiohttp import web

from mta.api.errors import ApiError
from mta.api.forms import whole_number
from mta.domains import Domain
from mta.keys import ApiKey
from mta.services import Services

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
# the request's authenticated key (set by the auth middleware)
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def api_key(request: web.Request) -> ApiKey:
    return request[API_KEY]


async def path_domain(
    request: web.Request, param: str = "domain", *, name_in_message: bool = True
) -> Domain:
    """The domain named in the path, or a 404 in Mailgun's words: the sending and events
    endpoints name the domain, the domain-admin endpoints answer a bare "Domain not found"."""
    name = request.match_info[param]
    domain = await services(request).domains.get(name)
    if domain is None:
        raise ApiError(404, f"Domain not found: {name}" if name_in_message else "Domain not found")
    return domain


def query_int(request: web.Request, name: str, default: int, high: int, low: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = whole_number(raw, high)
    if value is None or value < low:
        raise ApiError(400, f"'{name}' must be a whole number from {low} to {high}")
    return value


def base_url(request: web.Request) -> str:
    """Where clients reach us, for absolute paging links (X-Forwarded-* aware)."""
    configured = services(request).config.api.public_url
    if configured:
        return configured.rstrip("/")
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{proto}://{host}"
