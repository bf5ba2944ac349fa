"""The Mailgun-compatible HTTP API (aiohttp): auth and error middleware, routes."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from mta import panel
from mta.api import (
    account,
    campaigns,
    credentials,
    domains,
    events,
    lists,
    messages,
    metrics,
    queue,
    stats,
    stored,
    suppressions,
    tags,
    tracking,
    webhooks,
)
from mta.api import routes as route_api
from mta.api.context import API_KEY, SERVICES
from mta.api.errors import ApiError, error, forbidden
from mta.services import Services

log = logging.getLogger("mta.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SENDING_PATHS = ("messages", "messages.mime")


def _credentials(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return secret if sep and user == "api" and secret else None


def _authenticates_itself(request: web.Request) -> bool:
    """Tracking links (recipients' mail clients), the panel (its own session) and /metrics
    (loopback or its own token) are not API calls."""
    path = request.path
    return (
        tracking.is_public(request)
        or path == panel.PREFIX
        or path.startswith(panel.PREFIX + "/")
        or path == metrics.PATH
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP basic `api:KEY`. A domain sending key may only send for its own domain. Tracking
    links (pixel, clicks, unsubscribe pages) are for recipients' mail clients: no key."""
    if _authenticates_itself(request):
        return await handler(request)
    services = request.app[SERVICES]
    secret = _credentials(request)
    key = await services.keys.authenticate(secret) if secret else None
    if key is None:
        return forbidden()
    if key.domain is not None:
        segments = request.path.strip("/").split("/")
        is_send = (
            request.method == "POST"
            and len(segments) == 3
            and segments[0] == "v3"
            and segments[2] in _SENDING_PATHS
            and segments[1].lower() == key.domain
        )
        if not is_send:
            return forbidden()
    request[API_KEY] = key
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        api_config = request.app[SERVICES].config.api
        log.info("refused oversized request from %s: %s", request.remote, exc.text)
        if (exc.text or "").startswith("Maximum number of form fields"):
            return error(413, f"too many form fields, max is {api_config.max_form_fields}")
        mib = api_config.max_request_bytes / (1024 * 1024)
        return error(413, f"request size exceeds {mib:.1f}MiB limit")
    except web.HTTPNotFound:
        return error(404, "Not Found")
    except web.HTTPMethodNotAllowed:
        return error(405, "Method Not Allowed")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "Internal Server Error")


def build_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=services.config.api.max_request_bytes,
        client_max_fields=services.config.api.max_form_fields,
    )
    app[SERVICES] = services
    routes: list[tuple[str, str, Handler]] = [
        *messages.ROUTES,
        *events.ROUTES,
        *domains.ROUTES,
        *credentials.ROUTES,
        *suppressions.ROUTES,
        *route_api.ROUTES,
        *stored.ROUTES,
        *webhooks.ROUTES,
        *account.ROUTES,
        *stats.ROUTES,
        *lists.ROUTES,
        *queue.ROUTES,
        *metrics.ROUTES,
        *tags.ROUTES,
        *campaigns.ROUTES,
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path + "/", handler)  # tolerate a trailing slash
    tracking.mount(app, services.hits, services.config.tracking.trusted_proxies)
    if services.config.panel.enabled:
        panel.mount(app)
    return app
