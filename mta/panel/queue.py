"""The panel's Queue pages: each destination's state (the store's counts, every node's; what this
node's scheduler knows of its site), retry now, pause and resume; a message's recipients and
their next attempt by Message-Id or storage key, with retry now per recipient. Every action is
the mta.queue.control function the API calls."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from mta.outbound.scheduler import SiteView, running
from mta.panel.page import Handler, PanelError, field, form, redirect, render, services
from mta.queue import control

LIMIT = 200  # destinations shown, most queued first


@dataclass(frozen=True)
class Row:
    """One destination as the page shows it."""

    destination: control.Destination
    state: str
    view: SiteView | None


def _name(request: web.Request, given: str = "") -> str:
    """The destination the path (or else `given`, a form's field) names, cleaned."""
    name = control.clean_name(request.match_info.get("destination", given))
    if name is None:
        raise PanelError(400, "That is not a destination domain.")
    return name


async def list_destinations(request: web.Request) -> web.StreamResponse:
    store = services(request).store
    now = time.time()
    scheduler = running(store)
    views = scheduler.destinations() if scheduler is not None else {}
    rows = []
    for d in await control.destinations(store, now, LIMIT):
        view = views.get(d.name)
        throttled = view is not None and bool(view.throttled_until)
        unreachable = view is not None and bool(view.down_until)
        rows.append(Row(d, control.destination_state(d, throttled, unreachable), view))
    return render(request, "queue.html", rows=rows, limit=LIMIT, now=now,
                  delivering=scheduler is not None)


async def retry_destination(request: web.Request) -> web.StreamResponse:
    await form(request)
    store = services(request).store
    name = _name(request)
    now = time.time()
    if await control.destination(store, name, now) is None:
        raise PanelError(404, f"Nothing is queued for {name}.")
    done = await control.retry_destination(store, name, now)
    notice = f"{done.retried} recipient(s) of {name} will be retried now"
    if done.in_flight:
        notice += f", {done.in_flight} already in flight"
    if done.waiting:
        notice += f"; {done.waiting} not tried yet keep their time"
    return redirect("/queue", notice + ".")


async def pause_destination(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    name = _name(request, field(posted, "destination"))
    await control.pause(services(request).store, name, time.time(), field(posted, "reason"))
    return redirect("/queue", f"Deliveries to {name} are paused.")


async def resume_destination(request: web.Request) -> web.StreamResponse:
    await form(request)
    name = _name(request)
    if not await control.resume(services(request).store, name, time.time()):
        raise PanelError(404, f"{name} is not paused.")
    return redirect("/queue", f"Deliveries to {name} go on.")


async def show_message(request: web.Request) -> web.StreamResponse:
    """The messages a Message-Id or storage key names (any domain: the panel is the
    account's), each recipient with its state, attempts, next attempt and last try."""
    store = services(request).store
    ident = request.query.get("id", "").strip()
    found = await control.messages(store, ident, time.time()) if ident else []
    paused = {p.destination for p in await control.all_pauses(store)}
    states = {
        (m.key, r.address): control.recipient_state(r, paused)
        for m in found for r in m.recipients
    }
    return render(request, "queue_message.html", ident=ident, found=found, states=states,
                  max_recipients=control.MAX_LIMIT, status=404 if ident and not found else 200)


async def retry_message(request: web.Request) -> web.StreamResponse:
    """The message's queued recipients now, or only the one named."""
    posted = await form(request)
    store = services(request).store
    key = request.match_info["key"]
    now = time.time()
    found = [m for m in await control.messages(store, key, now) if m.key == key]
    if not found:
        raise PanelError(404, "Message not found.")
    recipient = field(posted, "recipient") or None
    done = await control.retry_messages(store, found, now, recipient)
    if done is None:
        raise PanelError(404, f"{recipient} is not a recipient of this message.")
    notice = f"{done.retried} recipient(s) will be retried now"
    if done.in_flight:
        notice += f", {done.in_flight} already in flight"
    return redirect("/queue/message", notice + ".", id=field(posted, "back") or key)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/queue", list_destinations),
    ("POST", "/queue/destinations/{destination}/retry", retry_destination),
    ("POST", "/queue/destinations/{destination}/pause", pause_destination),
    ("POST", "/queue/pause", pause_destination),
    ("POST", "/queue/destinations/{destination}/resume", resume_destination),
    ("GET", "/queue/message", show_message),
    ("POST", "/queue/messages/{key}/retry", retry_message),
]
