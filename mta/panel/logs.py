"""The panel's Logs pages: the event search (the Events API's query, filters and page tokens),
one event's JSON as the Events API returns it, and one message's whole history.

Everything shown comes from strangers' mail (subjects, addresses, reply texts): the templates
autoescape it, and the JSON is shown as text in a <pre>.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

import orjson
from aiohttp import web

from mta.domains import Domain
from mta.events.query import (
    HISTORY_LIMIT,
    EventQuery,
    QueryError,
    message_event,
    message_events,
)
from mta.panel.page import Handler, PanelError, render, services

# the search form's filters: (Events API field, label, hint)
FILTERS = (
    ("event", "Event", "accepted OR delivered"),
    ("recipient", "Recipient", "someone@example.com"),
    ("from", "From", "sender or part of it"),
    ("subject", "Subject", "words of the subject"),
    ("message-id", "Message-ID", "without < >"),
    ("tags", "Tags", "newsletter"),
    ("severity", "Severity", "permanent OR temporary"),
)
# the Events API's other filters, under "More filters"
MORE_FILTERS = (
    ("to", "To header", "part of it"),
    ("recipients", "Any of a send's recipients", "someone@example.com"),
    ("size", "Size (bytes)", ">1000 <5000"),
    ("attachment", "Attachment", "file name"),
    ("list", "Mailing list", "list@example.com"),
)
DATES = ("begin", "end")
LIMITS = (25, 50, 100, 300)
DEFAULT_LIMIT = 50
# a browser's date and time (as typed, or from a datetime-local input), read as UTC
_LOCAL = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?$")


def _date_param(text: str) -> str:
    """`YYYY-MM-DD[ HH:MM[:SS]]` (UTC) as epoch seconds; anything else goes to the Events
    API's date rules as typed (RFC 2822 or epoch seconds), which word its refusal."""
    match = _LOCAL.match(text.strip())
    if match is None:
        return text
    parts = [int(p) if p else 0 for p in match.groups()]
    try:
        time.strptime(match.group(0)[:10], "%Y-%m-%d")  # refuses the 31st of June
    except ValueError:
        return text
    return str(calendar.timegm((*parts, 0, 0, 0)))


def _date_text(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


async def _domain(request: web.Request, name: str) -> Domain | None:
    """The named domain (404 if there is none), else the first one (None: no domains yet)."""
    svc = services(request)
    if name:
        found = await svc.domains.get(name)
        if found is None:
            raise PanelError(404, f"Domain not found: {name}")
        return found
    every = await svc.domains.all()
    return every[0] if every else None


def _query(request: web.Request, values: dict[str, str], limit: int) -> EventQuery:
    """The query of a page token (`page`, from next/previous), else of the search form (whose
    `values` are then refilled from the token, so the form shows what is searched)."""
    token = request.query.get("page", "")
    if token:
        query = EventQuery.from_token(token)
        for name, expression in query.filters:
            values[name] = expression
        values["begin"], values["end"] = _date_text(query.begin), _date_text(query.end)
        return query
    params = [
        (name, _date_param(value) if name in DATES else value)
        for name, value in values.items()
        if value.strip()
    ]
    return EventQuery.from_params(params, limit)


async def search(request: web.Request) -> web.StreamResponse:
    """The event search: newest first, a page at a time (the Events API's page tokens)."""
    svc = services(request)
    domain = await _domain(request, request.query.get("domain", "").strip())
    values = {name: request.query.get(name, "") for name, _, _ in FILTERS + MORE_FILTERS}
    values |= {name: request.query.get(name, "") for name in DATES}
    raw_limit = request.query.get("limit", "")
    limit = int(raw_limit) if raw_limit in {str(n) for n in LIMITS} else DEFAULT_LIMIT
    items: list[dict[str, Any]] = []
    pages = ("", "")
    error, status = "", 200
    if domain is not None:
        try:
            query = _query(request, values, limit)
            limit = query.limit
            items, pages = await query.run(
                svc.store, domain.name, svc.config.events.retention_days,
                since=domain.created_at,
            )
        except QueryError as exc:
            error, status = str(exc), 400
    return render(
        request, "logs.html", status=status,
        domains=[d.name for d in await svc.domains.all()],
        domain=domain.name if domain else "",
        filters=FILTERS, more_filters=MORE_FILTERS, values=values, limit=limit, limits=LIMITS,
        error=error,
        events=[_row(item) for item in items],
        next_page=pages[0], previous_page=pages[1] if request.query.get("page") else "",
    )


def _row(item: dict[str, Any]) -> dict[str, Any]:
    """What a line of the list shows of an event payload."""
    message = item.get("message") or {}
    headers = message.get("headers") or {}
    status = item.get("delivery-status") or {}
    detail = " ".join(str(p) for p in (item.get("severity"), item.get("reason")) if p)
    if status.get("code") or status.get("message") or status.get("description"):
        said = status.get("message") or status.get("description") or ""
        detail = f"{detail} {status.get('code') or ''} {said}".strip()
    return {
        "id": str(item.get("id", "")),
        "timestamp": item.get("timestamp"),
        "event": str(item.get("event", "")),
        "recipient": str(item.get("recipient", "")),
        "from": str(headers.get("from", "")),
        "subject": str(headers.get("subject", "")),
        "message_id": str(headers.get("message-id", "")),
        "tags": [str(t) for t in item.get("tags") or ()],
        "detail": detail,
    }


async def event(request: web.Request) -> web.StreamResponse:
    """One event's JSON, exactly the Events API's item."""
    svc = services(request)
    domain = await _domain(request, request.query.get("domain", "").strip())
    message_id = request.query.get("message", "")
    found = None
    if domain is not None:
        found = await message_event(svc.store, domain.name, message_id,
                                    request.query.get("id", ""), since=domain.created_at)
    if domain is None or found is None:
        raise PanelError(404, "There is no such event (or it is past the event retention).")
    return render(
        request, "event.html", domain=domain.name, item=_row(found),
        json=orjson.dumps(found, option=orjson.OPT_INDENT_2).decode(),
    )


async def history(request: web.Request) -> web.StreamResponse:
    """All events of one message-id, oldest first: accepted, then delivered or failed, then
    opens and clicks."""
    svc = services(request)
    domain = await _domain(request, request.query.get("domain", "").strip())
    message_id = request.query.get("id", "").strip().strip("<>")
    if domain is None or not message_id:
        raise PanelError(404, "There is no such message.")
    items = await message_events(svc.store, domain.name, message_id, since=domain.created_at)
    recipient = request.query.get("recipient", "").strip().lower()
    rows = [_row(item) for item in items]
    if recipient:
        rows = [row for row in rows if row["recipient"].lower() == recipient]
    return render(
        request, "message.html", domain=domain.name, message_id=message_id,
        recipient=recipient, events=rows, capped=len(items) >= HISTORY_LIMIT,
        limit=HISTORY_LIMIT, subject=next((r["subject"] for r in rows if r["subject"]), ""),
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/logs", search),
    ("GET", "/logs/event", event),
    ("GET", "/logs/message", history),
]
