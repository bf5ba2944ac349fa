"""The Stats API (mailgun-api.md §9): counters per bucket of a period for one domain or the whole
account (`/stats/total`, also the tags API's `/tags/<tag>/stats`), and the older manual's
per-day items (`GET /v3/<domain>/stats`). Everything is read from the counters (mta.stats),
never from events."""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiohttp import web

from mta.api.context import path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import shown
from mta.dates import parse_date, rfc2822
from mta.stats import totals
from mta.stats.counting import DOMAIN_SCOPE

MAX_LIMIT = 1000
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def requested_events(request: web.Request, valid: Sequence[str]) -> list[str]:
    """The `event` parameters (clients repeat `event`, some send `event[]`), once each, in
    the order given; an unknown name is refused, naming the valid ones."""
    names = [v for k, v in request.query.items() if k in ("event", "event[]") and v.strip()]
    for name in names:
        if name.strip() not in valid:
            raise ApiError(
                400, f"{shown(name)} is not a valid event; valid events are {', '.join(valid)}"
            )
    return list(dict.fromkeys(name.strip() for name in names))


def _date(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or not raw.strip():
        return None
    parsed = parse_date(raw)
    if parsed is None:
        raise ApiError(
            400, f"'{name}' is not a valid date: {shown(raw)} (RFC 2822 or epoch seconds)"
        )
    return parsed


async def period_totals(request: web.Request, domain: str | None, scope: str) -> dict[str, Any]:
    """The §9.1 body for one scope of a domain (None: every domain of the account) over the
    period the query asks for (`event` required; `start`, `end`, `resolution`, `duration`)."""
    events = requested_events(request, totals.EVENTS)
    if not events:
        raise ApiError(400, "'event' parameter is required")
    try:
        period = totals.Period.of(
            start=_date(request, "start"),
            end=_date(request, "end"),
            resolution=request.query.get("resolution") or None,
            duration=request.query.get("duration") or None,
        )
        counts = await totals.series(services(request).store, period, domain=domain, scope=scope)
    except totals.PeriodError as exc:
        raise ApiError(400, str(exc)) from None
    return totals.render(period, counts, events)


async def domain_totals(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    return json_response(await period_totals(request, domain.name, DOMAIN_SCOPE))


async def account_totals(request: web.Request) -> web.Response:
    return json_response(await period_totals(request, None, DOMAIN_SCOPE))


def _start_date(request: web.Request) -> int:
    """`start-date` (YYYY-MM-DD, UTC) as the epoch second its day starts; 0 when absent."""
    raw = request.query.get("start-date", "").strip()
    if not raw:
        return 0
    refused = ApiError(400, f"'start-date' must be a date as YYYY-MM-DD, got {shown(raw)}")
    if not _DAY.match(raw):
        raise refused
    try:
        day = datetime.strptime(raw, "%Y-%m-%d")  # refuses a 31st of June
    except ValueError:
        raise refused from None
    return calendar.timegm(day.timetuple())


def legacy_id(domain: str, day: int, event: str) -> str:
    """The same 24 hex digits for one domain, day and event every time it is listed."""
    return hashlib.sha256(f"{domain}\0{day}\0{event}".encode()).hexdigest()[:24]


async def legacy_stats(request: web.Request) -> web.Response:
    """The older manual's stats: one item per event and day with a count (newest day first),
    paged with `skip`/`limit`; `event` narrows the events, `start-date` the days."""
    domain = await path_domain(request)
    events = requested_events(request, totals.LEGACY_EVENTS) or list(totals.LEGACY_EVENTS)
    since = _start_date(request)
    limit = query_int(request, "limit", 100, MAX_LIMIT)
    skip = query_int(request, "skip", 0, 10**9)
    total, items = await totals.day_counts(
        services(request).store, domain.name, events=events, since=since, skip=skip, limit=limit
    )
    return json_response(
        {
            "total_count": total,
            "items": [
                {
                    "event": item.event,
                    "total_count": item.total,
                    "created_at": rfc2822(item.day),
                    "id": legacy_id(domain.name, item.day, item.event),
                    "tags": item.tags,
                }
                for item in items
            ],
        }
    )


ROUTES = [
    ("GET", "/v3/stats/total", account_totals),
    ("GET", "/v3/{domain}/stats/total", domain_totals),
    ("GET", "/v3/{domain}/stats", legacy_stats),
]
