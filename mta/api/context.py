"""What request handlers are given: the components, built once by mta.app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mta.accept import Acceptor
from mta.api.errors import ApiError
from mta.api.forms import whole_number
from mta.config import Config
from mta.credentials import Credentials
from mta.dns import Resolver
from mta.domains import Domain, Domains
from mta.inbound import Inbound
from mta.inbound.routes import Routes
from mta.keys import ApiKeys
from mta.outbound.policy import Classifier
from mta.outbound.returnpath import ReturnPaths
from mta.store import Store


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    resolver: Resolver
    domains: Domains
    keys: ApiKeys
    credentials: Credentials
    acceptor: Acceptor
    routes: Routes
    return_paths: ReturnPaths
    classifier: Classifier
    inbound: Inbound


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


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
