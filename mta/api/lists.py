"""The Mailing Lists API (mailgun-api.md §7): /v3/lists and /v3/lists/<address>/members."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: list[tuple[str, str, Handler]] = []
