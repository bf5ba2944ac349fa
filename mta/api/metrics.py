"""GET /metrics (issue 14): Prometheus text format, for loopback clients or with the
configured bearer token (the API's key check does not apply to it).

Who the client is comes from `client_ip`, the rule of the tracking endpoints and the panel: a
reverse proxy listed in `tracking.trusted_proxies` stands for the address it forwards for, so
a proxy on this host does not make every public request a loopback one.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mta.api.context import services
from mta.api.errors import error
from mta.api.tracking import TRACKING, client_ip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PATH = "/metrics"


def admitted(client: str, authorization: str, token: str) -> bool:
    """A loopback client always; any other only with `Authorization: Bearer <token>` (never
    when no token is configured)."""
    try:
        if ipaddress.ip_address(client).is_loopback:
            return True
    except ValueError:
        pass
    scheme, _, offered = authorization.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        offered.strip().encode(), token.encode()
    )


async def get_metrics(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    config = svc.config
    if not config.metrics.enabled:
        return error(404, "Not found")
    client = client_ip(request, request.app[TRACKING].trusted_proxies)
    if not admitted(client, request.headers.get("Authorization", ""), config.metrics.token):
        return error(401, "Metrics are served to loopback clients, or with the bearer token"
                          " of [metrics] token")
    return web.Response(body=await svc.metrics.exposition(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES: list[tuple[str, str, Handler]] = [("GET", PATH, get_metrics)]
