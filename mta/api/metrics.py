"""GET /metrics (issue 14): Prometheus text format, for loopback clients or with the
configured bearer token (the API's key check does not apply to it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PATH = "/metrics"
ROUTES: list[tuple[str, str, Handler]] = []
