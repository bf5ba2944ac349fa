"""Suppressions API (mailgun-api.md §8.1-8.3, §8.6): /v3/<domain>/bounces|unsubscribes|complaints.

Lists are paged by address (scheme B, pivot `address`), or with the legacy `skip` (scheme A).
Adds take a form (one address) or a JSON array (up to 1000, as mailgun.js sends even one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web

from mta import suppressions
from mta.accept import valid_addr_spec
from mta.api import paging
from mta.api.context import base_url, path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import read_form, read_json_body
from mta.dates import parse_date, rfc2822
from mta.suppressions import Bounce, Complaint, Kind, Suppression, Unsubscribe

MAX_LIMIT = 1000
MAX_BATCH = 1000


@dataclass(frozen=True)
class _Texts:
    not_found: str
    added: str
    added_many: str
    removed: str
    removed_all: str


TEXTS: dict[Kind, _Texts] = {
    "bounces": _Texts(
        "Address not found in bounces table",
        "Address has been added to the bounces table",
        "{count} addresses have been added to the bounces table",
        "Bounced address has been removed",
        "Bounced addresses for this domain have been removed",
    ),
    "unsubscribes": _Texts(
        "Address not found in unsubscribers table",
        "Address has been added to the unsubscribes table",
        "{count} addresses have been added to the unsubscribes table",
        "Unsubscribe event has been removed",
        "Unsubscribe addresses for this domain have been removed",
    ),
    "complaints": _Texts(
        "No spam complaints found for this address",
        "Address has been added to the complaints table",
        "{count} complaint addresses have been added to the complaints table",
        "Spam complaint has been removed",
        "Complaint addresses for this domain have been removed",
    ),
}


def _kind(request: web.Request) -> Kind:
    return cast(Kind, request.match_info["kind"])


def item_json(entry: Suppression) -> dict[str, Any]:
    created_at = rfc2822(entry.created_at)
    match entry:
        case Bounce():
            return {
                "address": entry.address,
                "code": entry.code,
                "error": entry.error,
                "created_at": created_at,
            }
        case Unsubscribe():
            # current docs show `tag`, older docs and the Go SDK `tags`: give both
            return {
                "address": entry.address,
                "tag": entry.tags[0],
                "tags": list(entry.tags),
                "created_at": created_at,
            }
        case Complaint():
            return {"address": entry.address, "count": entry.count, "created_at": created_at}


# -- reading what clients send --------------------------------------------------------------------


def _address(value: object) -> str:
    if value is None or value == "":
        raise ApiError(400, "address parameter is missing")
    if not isinstance(value, str) or not valid_addr_spec(value.strip()):
        raise ApiError(400, f"address parameter is not a valid address: {value}")
    return value.strip().lower()


def _created_at(value: object, now: float) -> float:
    """RFC 2822 or epoch seconds, as text or (in JSON) a number; now when absent."""
    if value is None or value == "":
        return now
    if isinstance(value, int | float) and not isinstance(value, bool):
        parsed = float(value) if math.isfinite(value) and value >= 0 else None
    else:
        parsed = parse_date(value) if isinstance(value, str) else None
    if parsed is None:
        raise ApiError(
            400, f"'created_at' is not a valid date: {value!r} (RFC 2822 or epoch seconds)"
        )
    return parsed


def _code(value: object) -> str:
    """Older clients send the code as a number, newer ones as a string: store a string."""
    if value is None or value == "":
        return "550"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise ApiError(400, f"code parameter must be an SMTP reply code, got {value!r}")


def _error(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"error parameter must be a string, got {value!r}")
    return value


def _tags(value: object) -> tuple[str, ...]:
    """A list of tag names (or one name); "*" (all mail from the domain) when absent."""
    if value is None:
        return (suppressions.ALL_TAGS,)
    tags = [value] if isinstance(value, str) else value
    if (
        not isinstance(tags, list)
        or not tags
        or not all(isinstance(tag, str) and tag for tag in tags)
    ):
        raise ApiError(400, f"tags parameter must be a list of tag names, got {value!r}")
    return tuple(dict.fromkeys(tags))


def read_entry(kind: Kind, fields: Mapping[str, object], now: float) -> Suppression:
    """One entry from a client's fields (the API's and the control panel's checks)."""
    address = _address(fields.get("address"))
    created_at = _created_at(fields.get("created_at"), now)
    if kind == "bounces":
        return Bounce(address, _code(fields.get("code")), _error(fields.get("error")), created_at)
    if kind == "unsubscribes":
        tags = fields.get("tags", fields.get("tag"))
        return Unsubscribe(address, _tags(tags), created_at)
    return Complaint(address, created_at)


def _json_entries(kind: Kind, body: bytes, now: float) -> list[Suppression]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(items, list):
        raise ApiError(400, "JSON body must be an array of objects")
    if len(items) > MAX_BATCH:
        raise ApiError(
            400, f"too many addresses: {len(items)} given, at most {MAX_BATCH} per request"
        )
    entries = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ApiError(400, f"item {number}: not a JSON object")
        try:
            entries.append(read_entry(kind, item, now))
        except ApiError as exc:
            raise ApiError(400, f"item {number}: {exc.message}") from None
    return entries


# -- handlers -------------------------------------------------------------------------------------


async def list_suppressions(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    kind = _kind(request)
    store = services(request).store
    limit = query_int(request, "limit", 100, MAX_LIMIT)
    if "skip" in request.query:  # the pre-2015 API pages with skip and counts the list
        skip = query_int(request, "skip", 0, 10**9)
        total, entries = await suppressions.skip_page(store, kind, domain.name, skip, limit)
        return json_response({"total_count": total, "items": [item_json(e) for e in entries]})
    which = paging.requested_page(request)
    pivot = request.query.get("address", "")
    entries = await suppressions.page(store, kind, domain.name, which, pivot, limit)
    ends = (entries[0].address, entries[-1].address) if entries else None
    url = f"{base_url(request)}/v3/{domain.name}/{kind}"
    return json_response(
        {
            "items": [item_json(e) for e in entries],
            "paging": paging.links(url, "address", limit, which, pivot, ends),
        }
    )


async def get_suppression(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    kind = _kind(request)
    entry = await suppressions.get(
        services(request).store, kind, domain.name, request.match_info["address"]
    )
    if entry is None:
        raise ApiError(404, TEXTS[kind].not_found)
    return json_response(item_json(entry))


async def add_suppressions(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    kind = _kind(request)
    store = services(request).store
    now = time.time()
    if request.content_type == "application/json":
        entries = _json_entries(kind, await read_json_body(request), now)
        await suppressions.add(store, domain.name, entries)
        return json_response({"message": TEXTS[kind].added_many.format(count=len(entries))})
    form = await read_form(request)
    fields: dict[str, object] = {
        name: form.text(name) for name in ("address", "code", "error", "created_at")
    }
    fields["tags"] = [tag for tag in form.texts("tag") if tag] or None
    entry = read_entry(kind, fields, now)
    await suppressions.add(store, domain.name, [entry])
    return json_response({"message": TEXTS[kind].added, "address": entry.address})


async def delete_suppression(request: web.Request) -> web.Response:
    """Unsubscribes take an optional `tag` (query or form): only that tag is removed."""
    domain = await path_domain(request)
    kind = _kind(request)
    store = services(request).store
    address = request.match_info["address"]
    tag = (await read_form(request)).text("tag") if kind == "unsubscribes" else None
    if tag:
        found = await suppressions.remove_tag(store, domain.name, address, tag)
    else:
        found = await suppressions.delete(store, kind, domain.name, address)
    if not found:
        raise ApiError(404, TEXTS[kind].not_found)
    return json_response({"message": TEXTS[kind].removed, "address": address.lower()})


async def delete_all_suppressions(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    kind = _kind(request)
    await suppressions.delete_all(services(request).store, kind, domain.name)
    return json_response({"message": TEXTS[kind].removed_all})


_LIST = "/v3/{domain}/{kind:bounces|unsubscribes|complaints}"
ROUTES = [
    ("GET", _LIST, list_suppressions),
    ("POST", _LIST, add_suppressions),
    ("DELETE", _LIST, delete_all_suppressions),
    ("GET", _LIST + "/{address}", get_suppression),
    ("DELETE", _LIST + "/{address}", delete_suppression),
]
