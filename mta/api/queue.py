"""Queue inspection and control over the API (issue 14), for the account's primary key (the
auth middleware refuses domain sending keys on every path but sending):

- GET  /v3/queue/destinations[?limit=N]          the destinations with the most queued mail
- GET  /v3/queue/destinations/<destination>      one destination (a recipient domain)
- POST /v3/queue/destinations/<destination>/retry|pause|resume
- GET  /v3/<domain>/queue/messages/<message-id or storage key>
- POST /v3/<domain>/queue/messages/<message-id or storage key>/retry  [recipient=...]
- GET  /v3/domains/<domain>/sending_queues       Mailgun's shape (mailgun-api.md §12)

Counts are the store's (every node's); `site`, `throttled_until`, `unreachable_until` and
`last_reply` are what this node's scheduler knows (empty where outbound delivery is off).
Times are Unix seconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mta.api.context import path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import read_form, shown
from mta.outbound.scheduler import SiteView, running
from mta.queue import control
from mta.store import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NO_DESTINATION = "Destination not found"
NO_MESSAGE = "Message not found"


def _views(store: Store) -> dict[str, SiteView]:
    scheduler = running(store)
    return scheduler.destinations() if scheduler is not None else {}


def destination_json(d: control.Destination, view: SiteView | None, now: float) -> dict[str, Any]:
    """One destination's state (control.destination_state) and counts."""
    state = control.destination_state(d, view is not None and bool(view.throttled_until),
                                      view is not None and bool(view.down_until))
    reply = view.last_reply if view is not None else None
    return {
        "destination": d.name,
        "state": state,
        "queued": d.queued,
        "in_flight": d.in_flight,
        "deferred": d.deferred,
        "due": d.due,
        "next_due": d.next_due,
        "oldest_age_seconds": round(now - d.oldest_at, 1) if d.oldest_at is not None else None,
        "paused": None if d.pause is None else {"at": d.pause.paused_at,
                                                "reason": d.pause.reason},
        "site": view.site if view is not None else None,
        "throttled_until": view.throttled_until if view is not None else None,
        "unreachable_until": view.down_until if view is not None else None,
        "last_reply": None if reply is None else {"at": reply.at, "code": reply.code,
                                                  "message": reply.message},
    }


def _name(request: web.Request) -> str:
    name = control.clean_name(request.match_info["destination"])
    if name is None:
        raise ApiError(400, f"not a destination domain: {shown(request.match_info['destination'])}")
    return name


async def list_destinations(request: web.Request) -> web.Response:
    store = services(request).store
    limit = query_int(request, "limit", 100, control.MAX_LIMIT, 1)
    now = time.time()
    found = await control.destinations(store, now, limit)
    views = _views(store)
    return json_response({
        "items": [destination_json(d, views.get(d.name), now) for d in found],
        "limit": limit,
    })


async def get_destination(request: web.Request) -> web.Response:
    store = services(request).store
    name = _name(request)
    now = time.time()
    found = await control.destination(store, name, now)
    views = _views(store)
    if found is None:
        if name not in views:
            raise ApiError(404, NO_DESTINATION)
        found = control.Destination(name)
    return json_response(destination_json(found, views.get(name), now))


async def retry_destination(request: web.Request) -> web.Response:
    store = services(request).store
    name = _name(request)
    now = time.time()
    if await control.destination(store, name, now) is None:
        raise ApiError(404, NO_DESTINATION)
    done = await control.retry_destination(store, name, now)
    return json_response({
        "message": f"{done.retried} recipient(s) of {name} will be retried now",
        "destination": name,
        "retried": done.retried,
        "in_flight": done.in_flight,
        "not_tried_yet": done.waiting,
        "paused": await control.pause_of(store, name) is not None,
    })


async def pause_destination(request: web.Request) -> web.Response:
    store = services(request).store
    name = _name(request)
    form = await read_form(request)
    paused = await control.pause(store, name, time.time(), form.text("reason") or "")
    return json_response({
        "message": f"Deliveries to {name} are paused",
        "destination": name,
        "paused": {"at": paused.paused_at, "reason": paused.reason},
    })


async def resume_destination(request: web.Request) -> web.Response:
    store = services(request).store
    name = _name(request)
    if not await control.resume(store, name, time.time()):
        raise ApiError(404, f"{name} is not paused")
    return json_response({"message": f"Deliveries to {name} go on", "destination": name})


def message_json(m: control.QueuedMessage, paused: set[str]) -> dict[str, Any]:
    recipients = []
    for r in m.recipients:
        last = r.last
        recipients.append({
            "recipient": r.address,
            "state": control.recipient_state(r, paused),
            "attempts": r.attempts,
            "next_attempt": r.due_at,
            "mailing_list": r.mailing_list,
            "last_event": None if last is None else {
                "event": last.event, "at": last.at, "severity": last.severity or None,
                "code": last.code, "message": last.message,
            },
        })
    return {
        "storage_key": m.key,
        "message_id": m.message_id,
        "domain": m.domain,
        "accepted_at": m.created_at,
        "recipients": recipients,
        "more_recipients": m.more,
    }


async def _messages(request: web.Request) -> tuple[Store, list[control.QueuedMessage]]:
    """The messages the path names, of the path's own domain only; 404 if none."""
    domain = await path_domain(request)
    store = services(request).store
    found = await control.messages(store, request.match_info["message_id"], time.time(),
                                   domain=domain.name)
    if not found:
        raise ApiError(404, NO_MESSAGE)
    return store, found


async def get_message(request: web.Request) -> web.Response:
    store, found = await _messages(request)
    paused = {p.destination for p in await control.all_pauses(store)}
    return json_response({"items": [message_json(m, paused) for m in found]})


async def retry_message(request: web.Request) -> web.Response:
    store, found = await _messages(request)
    form = await read_form(request)
    recipient = (form.text("recipient") or "").strip() or None
    done = await control.retry_messages(store, found, time.time(), recipient)
    if done is None:
        raise ApiError(404, f"{shown(recipient or '')} is not a recipient of this message")
    return json_response({
        "message": f"{done.retried} recipient(s) will be retried now",
        "retried": done.retried,
        "in_flight": done.in_flight,
    })


async def sending_queues(request: web.Request) -> web.Response:
    """Mailgun's sending queues of a domain: this server never disables a sending domain's
    queue (pauses are per destination), so both are enabled."""
    await path_domain(request)
    enabled = {"is_disabled": False, "disabled": {"until": "", "reason": ""}}
    return json_response({"regular": enabled, "scheduled": dict(enabled)})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v3/queue/destinations", list_destinations),
    ("GET", "/v3/queue/destinations/{destination}", get_destination),
    ("POST", "/v3/queue/destinations/{destination}/retry", retry_destination),
    ("POST", "/v3/queue/destinations/{destination}/pause", pause_destination),
    ("POST", "/v3/queue/destinations/{destination}/resume", resume_destination),
    ("GET", "/v3/{domain}/queue/messages/{message_id}", get_message),
    ("POST", "/v3/{domain}/queue/messages/{message_id}/retry", retry_message),
    ("GET", "/v3/domains/{domain}/sending_queues", sending_queues),
]
