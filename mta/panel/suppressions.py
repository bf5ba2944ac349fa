"""The panel's Suppressions page: a domain's bounces, unsubscribes and complaints, newest first
with paging and a search by address prefix; adding one (with the API's checks and messages)
and removing one. Addresses and bounce errors are strangers' text: the templates escape them."""

from __future__ import annotations

import math
import time
from typing import cast, get_args

from aiohttp import web

from mta import suppressions
from mta.api.errors import ApiError
from mta.api.suppressions import TEXTS, read_entry
from mta.domains import Domain
from mta.panel.page import Handler, PanelError, field, form, redirect, render, services
from mta.suppressions import Kind

KINDS: tuple[Kind, ...] = get_args(Kind)
PAGE_SIZE = 50


def _kind(value: str) -> Kind:
    if value not in KINDS:
        raise PanelError(404, f"No such suppression list: {value}")
    return cast(Kind, value)


async def _domain(request: web.Request, name: str) -> Domain:
    domain = await services(request).domains.get(name)
    if domain is None:
        raise PanelError(404, f"Domain not found: {name}")
    return domain


def _pivot(request: web.Request, name: str) -> tuple[float, str] | None:
    """A page boundary from the query: `<name>_at` (created_at) and `<name>` (address)."""
    at, address = request.query.get(name + "_at", ""), request.query.get(name, "")
    if not at:
        return None
    try:
        when = float(at)
    except ValueError:
        when = math.nan
    if not math.isfinite(when):
        raise PanelError(400, "That page link is broken: start again from the first page.")
    return when, address.lower()


async def list_suppressions(request: web.Request) -> web.StreamResponse:
    """The chosen domain's list of the chosen kind (the first domain's bounces by default)."""
    svc = services(request)
    domains = await svc.domains.all()
    kind = _kind(request.query.get("kind", "bounces"))
    name = request.query.get("domain", "") or (domains[0].name if domains else "")
    search = request.query.get("q", "").strip()
    older, newer = _pivot(request, "older"), _pivot(request, "newer")
    entries: list[suppressions.Suppression] = []
    has_older = has_newer = False
    if name:
        domain = await _domain(request, name)
        entries = await suppressions.newest(
            svc.store, kind, domain.name, search, older_than=older, newer_than=newer,
            limit=PAGE_SIZE + 1,
        )
        if newer is not None:
            has_newer = len(entries) > PAGE_SIZE
            entries = entries[-PAGE_SIZE:]
            has_older = True
        else:
            has_older = len(entries) > PAGE_SIZE
            entries = entries[:PAGE_SIZE]
            has_newer = older is not None
    return render(
        request, "suppressions.html", domains=domains, domain=name, kind=kind, kinds=KINDS,
        search=search, entries=entries, has_older=has_older and bool(entries),
        has_newer=has_newer and bool(entries), first_page=older is None and newer is None,
    )


async def add_suppression(request: web.Request) -> web.StreamResponse:
    """One address, with the fields its kind has; refused with the API's message."""
    posted = await form(request)
    domain = await _domain(request, request.match_info["domain"])
    kind = _kind(request.match_info["kind"])
    tag = field(posted, "tag")
    fields: dict[str, object] = {
        "address": field(posted, "address"),
        "code": field(posted, "code"),
        "error": field(posted, "error"),
        "tags": [tag] if tag else None,
    }
    try:
        entry = read_entry(kind, fields, time.time())
    except ApiError as exc:
        raise PanelError(exc.status, exc.message) from None
    await suppressions.add(services(request).store, domain.name, [entry])
    return redirect("/suppressions", f"{TEXTS[kind].added}: {entry.address}",
                    domain=domain.name, kind=kind)


async def remove_suppression(request: web.Request) -> web.StreamResponse:
    await form(request)
    domain = await _domain(request, request.match_info["domain"])
    kind = _kind(request.match_info["kind"])
    address = request.match_info["address"]
    if not await suppressions.delete(services(request).store, kind, domain.name, address):
        raise PanelError(404, TEXTS[kind].not_found)
    return redirect("/suppressions", f"{TEXTS[kind].removed}: {address.lower()}",
                    domain=domain.name, kind=kind)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/suppressions", list_suppressions),
    ("POST", "/suppressions/{domain}/{kind}", add_suppression),
    ("POST", "/suppressions/{domain}/{kind}/{address}/delete", remove_suppression),
]
