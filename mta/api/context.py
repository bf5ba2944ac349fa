"""What request handlers are given: the components, built once by mta.app."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from mta.accept import Acceptor
from mta.api.errors import ApiError
from mta.api.forms import whole_number
from mta.budget import ByteBudget
from mta.config import Config
from mta.credentials import Credentials
from mta.dns import Resolver
from mta.domains import Domain, Domains
from mta.inbound import Inbound
from mta.inbound.routes import Routes
from mta.keys import ApiKey, ApiKeys
from mta.outbound.policy import Classifier
from mta.outbound.returnpath import ReturnPaths
from mta.queue import make_due
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
    accepting: ByteBudget  # message bytes being accepted at once, HTTP and SMTP together

    async def delete_domain(self, name: str) -> bool:
        """A domain goes with its sending keys (revoked in the same commit); what it has queued
        is made due, so delivery fails it with events rather than sending it unsigned. Its
        events stay until their retention ends."""
        now = time.time()
        name = name.strip().lower()
        if not await self.domains.delete(name, self.keys.revoke_domain(name, now)):
            return False
        await make_due(self.store, name, now)
        return True


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
