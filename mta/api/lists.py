"""The Mailing Lists API (mailgun-api.md §7): /v3/lists and /v3/lists/<address>/members.

Lists are paged by address with `/v3/lists/pages` (scheme B) or the legacy `/v3/lists`
(scheme A: `skip` up to 10,000, an exact `address` filter); members likewise with
`/members/pages` and `/members`, both filtered by `subscribed`. Page sizes go up to 1,000.
Path addresses arrive URL-encoded or raw (`%40` or `@`), in any case.

Bulk uploads go through mta.lists.imports (the parsing `mta list import` uses too) and are
written before the reply, a chunk of `lists.upload_chunk` members per transaction with their
`list_member_uploaded` / `list_member_upload_error` / `list_uploaded` events, so the counts in
the reply are final. A malformed entry does not fail the call: the others are kept.

- `POST members.json`: `members` a JSON array (at most `lists.max_members_per_call` entries,
  else 400 and nothing is written) of `"a@b"`, `"Name <a@b>"` or
  `{address, name, vars, subscribed}`; `upsert` yes/no (no: an existing member is left as it
  is, and reported). Reply: Mailgun's `{"message": "Mailing list has been updated", "list"}`.
- `POST members.csv`: file field `members`, a CSV with a header row naming `address` and
  optionally `name`, `vars` (JSON object text) and `subscribed` (other columns are ignored);
  form `subscribed` (the default for rows that do not say, yes) and `upsert`. A file without
  an `address` column is a 400 before anything is written. Reply: `{"message": "Mailing list
  upload started", "list"}` (Mailgun's words; here the upload has finished).

Both replies add (the spec leaves them open):
  `"task-id"`: the upload's id, also on each of its events (`task-id`);
  `"upserted-count"`: members written (created or updated);
  `"failed-count"`: entries not written: malformed, already members while upsert is off, or
      over the list's member limit (each has a `list_member_upload_error` event);
  `"errors"`: the first 10 of those, `{"row", "entry", "message"}`: `row` is the 1-based
      position in the JSON array or the line number in the CSV file, `entry` the entry as
      sent (cut at 200 characters).

The `…/validate` endpoints (a paid verification job at Mailgun) answer 501.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Awaitable, Callable, Sequence
from itertools import islice
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mta.api import paging
from mta.api.context import base_url, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import Form, parse_bool, read_form
from mta.dates import rfc2822
from mta.lists import ListError, MailingList, Member
from mta.lists.imports import ImportFailure, Summary, Upload, csv_entries, json_entries

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_LIMIT = 1000  # items per page
MAX_SKIP = 10_000  # the legacy listings' cap


def list_json(lst: MailingList, members_count: int) -> dict[str, Any]:
    return {
        "address": lst.address,
        "name": lst.name,
        "description": lst.description,
        "access_level": lst.access_level,
        "reply_preference": lst.reply_preference,
        "members_count": members_count,
        "created_at": rfc2822(lst.created_at),
    }


def member_json(member: Member) -> dict[str, Any]:
    return {
        "address": member.address,
        "name": member.name,
        "subscribed": member.subscribed,
        "vars": member.vars,
    }


def _mapped(handler: Handler) -> Handler:
    """A refusal from mta.lists becomes its API error."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ListError as exc:
            raise ApiError(exc.status, exc.message) from None

    return run


async def _lists_json(request: web.Request, found: Sequence[MailingList]) -> list[dict[str, Any]]:
    counts = await services(request).lists.members_counts(found)
    return [list_json(lst, counts[lst.id]) for lst in found]


async def _list(request: web.Request) -> MailingList:
    """The list named in the path, or its 404."""
    address = request.match_info["address"]
    lst = await services(request).lists.get(address)
    if lst is None:
        raise ApiError(404, f"Mailing list {address} not found")
    return lst


def _member_not_found(address: str, lst: MailingList) -> ApiError:
    return ApiError(404, f"Member {address} of mailing list {lst.address} not found")


async def _member(request: web.Request, lst: MailingList) -> Member:
    address = request.match_info["member"]
    member = None
    if "\0" not in address:  # no address has one (and PostgreSQL text cannot hold it)
        member = await services(request).lists.member(lst, address)
    if member is None:
        raise _member_not_found(address, lst)
    return member


def _text(form: Form, name: str) -> str | None:
    """A field's value (None when absent); NUL is refused: no store keeps it in text."""
    value = form.text(name)
    if value is not None and "\0" in value:
        raise ApiError(400, f"'{name}' must not contain NUL characters")
    return value


def _filled(form: Form, name: str) -> str | None:
    """A field's value; None when absent or blank."""
    value = _text(form, name)
    return value if value is not None and value.strip() else None


def _pivot(request: web.Request) -> str:
    pivot = request.query.get("address", "").strip().lower()
    if "\0" in pivot:
        raise ApiError(400, "'address' must not contain NUL characters")
    return pivot


def _subscribed_filter(request: web.Request) -> bool | None:
    value = request.query.get("subscribed")
    if value is None or not value.strip():
        return None
    return bool(parse_bool("subscribed", value))


# -- lists ----------------------------------------------------------------------------------------


async def list_pages(request: web.Request) -> web.Response:
    """Scheme B: pages in address order around the `address` pivot."""
    limit = query_int(request, "limit", 100, MAX_LIMIT, 1)
    which = paging.requested_page(request)
    pivot = _pivot(request)
    every = await services(request).lists.all()
    if which == "first":
        found = every[:limit]
    elif which == "last":
        found = every[-limit:]
    elif which == "next":
        found = [lst for lst in every if lst.address > pivot][:limit]
    else:
        found = [lst for lst in every if lst.address < pivot][-limit:]
    ends = (found[0].address, found[-1].address) if found else None
    url = f"{base_url(request)}/v3/lists/pages"
    return json_response(
        {
            "items": await _lists_json(request, found),
            "paging": paging.links(url, "address", limit, which, pivot, ends),
        }
    )


async def list_lists(request: web.Request) -> web.Response:
    """Scheme A (legacy): `address` (exact), `limit`, `skip` up to 10,000."""
    limit = query_int(request, "limit", 100, MAX_LIMIT)
    skip = query_int(request, "skip", 0, MAX_SKIP)
    lists = services(request).lists
    address = request.query.get("address", "").strip()
    if address:
        one = await lists.get(address)
        every = [one] if one is not None else []
    else:
        every = await lists.all()
    return json_response(
        {
            "total_count": len(every),
            "items": await _lists_json(request, every[skip : skip + limit]),
        }
    )


async def get_list(request: web.Request) -> web.Response:
    lst = await _list(request)
    [item] = await _lists_json(request, [lst])
    return json_response({"list": item})


async def create_list(request: web.Request) -> web.Response:
    form = await read_form(request)
    address = _filled(form, "address")
    if address is None:
        raise ApiError(400, "'address' parameter is missing")
    lst = await services(request).lists.create(
        address,
        name=_text(form, "name") or "",
        description=_text(form, "description") or "",
        access=_filled(form, "access_level") or "readonly",
        reply=_filled(form, "reply_preference"),
    )
    return json_response({"message": "Mailing list has been created", "list": list_json(lst, 0)})


async def update_list(request: web.Request) -> web.Response:
    """Only the fields given change; `address` renames the list (its members stay)."""
    lst = await _list(request)
    form = await read_form(request)
    updated = await services(request).lists.update(
        lst,
        address=_filled(form, "address"),
        name=_text(form, "name"),
        description=_text(form, "description"),
        access=_filled(form, "access_level"),
        reply=_filled(form, "reply_preference"),
    )
    [item] = await _lists_json(request, [updated])
    return json_response({"message": "Mailing list has been updated", "list": item})


async def delete_list(request: web.Request) -> web.Response:
    lst = await _list(request)
    await services(request).lists.delete(lst)
    return json_response({"message": "Mailing list has been deleted", "address": lst.address})


async def validate_list(request: web.Request) -> web.Response:
    await _list(request)
    raise ApiError(501, "Mailing list validation is not available on this server")


# -- members --------------------------------------------------------------------------------------


async def member_pages(request: web.Request) -> web.Response:
    """Scheme B over members, `subscribed` (yes/no) filtering; the links keep the filter."""
    lst = await _list(request)
    limit = query_int(request, "limit", 100, MAX_LIMIT, 1)
    which = paging.requested_page(request)
    pivot = _pivot(request)
    subscribed = _subscribed_filter(request)
    found = await services(request).lists.members_page(lst, which, pivot, limit, subscribed)
    ends = (found[0].address, found[-1].address) if found else None
    url = f"{base_url(request)}/v3/lists/{quote(lst.address, safe='@')}/members/pages"
    links = paging.links(url, "address", limit, which, pivot, ends)
    if subscribed is not None:
        kept = "&subscribed=" + ("yes" if subscribed else "no")
        links = {name: link + kept for name, link in links.items()}
    return json_response({"items": [member_json(m) for m in found], "paging": links})


async def list_members(request: web.Request) -> web.Response:
    """Scheme A (legacy): `subscribed`, `limit`, `skip` up to 10,000; `address` (exact, as
    mailgun.js's listMembersByAddress may send)."""
    lst = await _list(request)
    limit = query_int(request, "limit", 100, MAX_LIMIT)
    skip = query_int(request, "skip", 0, MAX_SKIP)
    subscribed = _subscribed_filter(request)
    lists = services(request).lists
    address = request.query.get("address", "").strip()
    if address:
        one = await lists.member(lst, address) if "\0" not in address else None
        every = [one] if one is not None and subscribed in (None, one.subscribed) else []
        total, found = len(every), every[skip : skip + limit]
    else:
        total, found = await lists.members_skip(lst, skip, limit, subscribed)
    return json_response({"total_count": total, "items": [member_json(m) for m in found]})


async def get_member(request: web.Request) -> web.Response:
    lst = await _list(request)
    return json_response({"member": member_json(await _member(request, lst))})


async def add_member(request: web.Request) -> web.Response:
    """`address` (or `Name <address>`), `name`, `vars` (a JSON object), `subscribed` (yes),
    `upsert` (no: an existing member is a 400)."""
    lst = await _list(request)
    form = await read_form(request)
    address = _filled(form, "address")
    if address is None:
        raise ApiError(400, "'address' parameter is missing")
    lists = services(request).lists
    subscribed = parse_bool("subscribed", form.text("subscribed"))
    member = lists.checked_member(
        address, _text(form, "name"), _text(form, "vars"), subscribed is not False
    )
    upsert = bool(parse_bool("upsert", form.text("upsert")))
    member = await lists.add_member(lst, member, upsert=upsert)
    return json_response(
        {"member": member_json(member), "message": "Mailing list member has been created"}
    )


async def update_member(request: web.Request) -> web.Response:
    """Only the fields given change (`address` moves the member to a new address)."""
    lst = await _list(request)
    current = await _member(request, lst)
    form = await read_form(request)
    subscribed = parse_bool("subscribed", _filled(form, "subscribed"))
    member = await services(request).lists.update_member(
        lst,
        current,
        address=_filled(form, "address"),
        name=_text(form, "name"),
        variables=_text(form, "vars"),
        subscribed=None if subscribed is None else bool(subscribed),
    )
    return json_response(
        {"member": member_json(member), "message": "Mailing list member has been updated"}
    )


async def delete_member(request: web.Request) -> web.Response:
    lst = await _list(request)
    address = request.match_info["member"]
    if "\0" in address or not await services(request).lists.delete_member(lst, address):
        raise _member_not_found(address, lst)
    return json_response(
        {"member": {"address": address.strip().lower()},
         "message": "Mailing list member has been deleted"}
    )


def _upload_reply(message: str, lst: dict[str, Any], summary: Summary) -> dict[str, Any]:
    return {
        "message": message,
        "list": lst,
        "task-id": summary.task_id,
        "upserted-count": summary.upserted,
        "failed-count": summary.failed,
        "errors": [
            {"row": e.row, "entry": e.entry, "message": e.message} for e in summary.errors
        ],
    }


async def add_members_json(request: web.Request) -> web.Response:
    lst = await _list(request)
    form = await read_form(request)
    text = form.text("members")
    if text is None or not text.strip():
        raise ApiError(400, "'members' parameter is missing")
    upsert = bool(parse_bool("upsert", form.text("upsert")))
    s = services(request)
    most = s.config.lists.max_members_per_call
    try:  # all of it is read before anything is written: a 400 writes nothing
        entries = list(islice(json_entries(s.lists, io.StringIO(text)), most + 1))
    except ImportFailure as exc:
        raise ApiError(400, f"'members': {exc}") from None
    if len(entries) > most:
        raise ApiError(400, f"Too many members: at most {most} may be added in one call")
    upload = Upload(s.lists, s.store, lst, upsert=upsert, format="json")
    for entry in entries:
        await upload.add(entry)
    summary = await upload.finish()
    [item] = await _lists_json(request, [lst])
    return json_response(_upload_reply("Mailing list has been updated", item, summary))


async def add_members_csv(request: web.Request) -> web.Response:
    lst = await _list(request)
    form = await read_form(request)
    files = form.uploads("members")
    if not files:
        raise ApiError(400, "'members' file is missing (a CSV file with an 'address' column)")
    subscribed = parse_bool("subscribed", _filled(form, "subscribed"))
    upsert = bool(parse_bool("upsert", form.text("upsert")))
    s = services(request)
    stream = io.TextIOWrapper(
        io.BytesIO(files[-1].data), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    try:
        rows = csv_entries(s.lists, stream, subscribed=subscribed is not False)
    except ImportFailure as exc:
        raise ApiError(400, f"'members': {exc}") from None
    upload = Upload(
        s.lists, s.store, lst, upsert=upsert, format="csv", subscribed=subscribed is not False
    )
    for entry in rows:
        await upload.add(entry)
    summary = await upload.finish()
    [item] = await _lists_json(request, [lst])
    return json_response(_upload_reply("Mailing list upload started", item, summary))


_ONE = "/v3/lists/{address}"
_MEMBERS = _ONE + "/members"
ROUTES: list[tuple[str, str, Handler]] = [
    (method, path, _mapped(handler))
    for method, path, handler in [
        ("GET", "/v3/lists/pages", list_pages),
        ("GET", "/v3/lists", list_lists),
        ("POST", "/v3/lists", create_list),
        ("GET", _ONE, get_list),
        ("PUT", _ONE, update_list),
        ("DELETE", _ONE, delete_list),
        ("GET", _ONE + "/validate", validate_list),
        ("POST", _ONE + "/validate", validate_list),
        ("DELETE", _ONE + "/validate", validate_list),
        ("GET", _MEMBERS + "/pages", member_pages),
        ("GET", _MEMBERS, list_members),
        ("POST", _MEMBERS, add_member),
        ("POST", _MEMBERS + ".json", add_members_json),
        ("POST", _MEMBERS + ".csv", add_members_csv),
        ("GET", _MEMBERS + "/{member}", get_member),
        ("PUT", _MEMBERS + "/{member}", update_member),
        ("DELETE", _MEMBERS + "/{member}", delete_member),
    ]
]
