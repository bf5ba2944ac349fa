"""GET /v3/<domain>/events (first page) and /v3/<domain>/events/<token> (following pages)."""

from __future__ import annotations

from aiohttp import web

from mta.api.context import base_url, path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.events.query import MAX_LIMIT, EventQuery, QueryError


async def get_events(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    svc = services(request)
    try:
        token = request.match_info.get("token")
        if token:
            query = EventQuery.from_token(token)
        else:
            limit = query_int(request, "limit", svc.config.events.default_limit, MAX_LIMIT, 1)
            query = EventQuery.from_params(list(request.query.items()), limit)
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    items, (next_token, previous_token) = await query.run(
        svc.store, domain.name, svc.config.events.retention_days, since=domain.created_at
    )
    pages = f"{base_url(request)}/v3/{domain.name}/events/"
    pretty = request.query.get("pretty", "").lower() in ("yes", "true")
    return json_response(
        {
            "items": items,
            "paging": {"next": pages + next_token, "previous": pages + previous_token},
        },
        pretty=pretty,
    )


ROUTES = [
    ("GET", "/v3/{domain}/events", get_events),
    ("GET", "/v3/{domain}/events/{token}", get_events),
]
