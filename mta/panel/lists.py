"""The panel's Mailing lists pages: the lists (paged), creating and deleting one, a list's
members (paged, filtered by subscription), adding, unsubscribing, resubscribing and removing a
member, and a CSV upload read and written by the same code as `POST …/members.csv`
(mta.lists.imports), whose counts and first errors the page it answers with shows.

Addresses and names are chosen by strangers: the templates escape them, and put addresses in
URLs through the `segment` filter."""

from __future__ import annotations

import io

import orjson
from aiohttp import web

from mta.lists import ListError, MailingList, Member
from mta.lists.imports import ImportFailure, Summary, Upload, csv_entries
from mta.panel.page import (
    Handler,
    PanelError,
    checked,
    field,
    form,
    redirect,
    render,
    segment,
    services,
)

PAGE_SIZE = 50
MAX_SKIP = 10_000  # as the API's legacy paging


def _skip(request: web.Request) -> int:
    try:
        return min(max(0, int(request.query.get("skip", "0"))), MAX_SKIP)
    except ValueError:
        return 0


def _path(lst: MailingList) -> str:
    return "/lists/" + segment(lst.address)


def _vars_text(variables: dict[str, object]) -> str:
    """A member's variables as the JSON text they were given in (escaped by the template)."""
    return orjson.dumps(variables).decode()


async def _list(request: web.Request) -> MailingList:
    address = request.match_info["address"]
    lst = await services(request).lists.get(address) if "\0" not in address else None
    if lst is None:
        raise PanelError(404, f"Mailing list {address} not found")
    return lst


async def _member(request: web.Request, lst: MailingList) -> Member:
    address = request.match_info["member"]
    member = await services(request).lists.member(lst, address) if "\0" not in address else None
    if member is None:
        raise PanelError(404, f"Member {address} of mailing list {lst.address} not found")
    return member


async def all_lists(request: web.Request) -> web.StreamResponse:
    every = await services(request).lists.all()
    skip = _skip(request)
    shown = every[skip : skip + PAGE_SIZE]
    counts = await services(request).lists.members_counts(shown)
    return render(request, "lists.html", lists=[(lst, counts[lst.id]) for lst in shown],
                  total=len(every), skip=skip, page_size=PAGE_SIZE,
                  domains=await services(request).domains.all())


async def create_list(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    try:
        lst = await services(request).lists.create(
            field(posted, "address"),
            name=field(posted, "name"),
            description=field(posted, "description"),
            access=field(posted, "access_level") or "readonly",
            reply=field(posted, "reply_preference") or None,
        )
    except ListError as exc:
        raise PanelError(exc.status, exc.message) from None
    return redirect(_path(lst), f"Mailing list {lst.address} created.")


async def _list_page(
    request: web.Request, lst: MailingList, summary: Summary | None = None
) -> web.Response:
    lists = services(request).lists
    skip = _skip(request)
    wanted = request.query.get("subscribed", "")
    subscribed = {"yes": True, "no": False}.get(wanted)
    total, members = await lists.members_skip(lst, skip, PAGE_SIZE, subscribed)
    count = (await lists.members_counts([lst]))[lst.id]
    return render(request, "list_page.html", lst=lst, members=members, total=total,
                  count=count, skip=skip, page_size=PAGE_SIZE,
                  subscribed="" if subscribed is None else wanted, summary=summary,
                  vars_text=_vars_text)


async def show_list(request: web.Request) -> web.StreamResponse:
    return await _list_page(request, await _list(request))


async def delete_list(request: web.Request) -> web.StreamResponse:
    await form(request)
    lst = await _list(request)
    await services(request).lists.delete(lst)
    return redirect("/lists", f"Mailing list {lst.address} deleted.")


async def add_member(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    lst = await _list(request)
    lists = services(request).lists
    try:
        member = lists.checked_member(
            field(posted, "address"), field(posted, "name") or None, field(posted, "vars"),
            checked(posted, "subscribed"),
        )
        await lists.add_member(lst, member, upsert=False)
    except ListError as exc:
        raise PanelError(exc.status, exc.message) from None
    return redirect(_path(lst), f"Member {member.address} added.")


async def set_subscribed(request: web.Request) -> web.StreamResponse:
    """Unsubscribe or resubscribe: the member stays on the list either way."""
    posted = await form(request)
    lst = await _list(request)
    member = await _member(request, lst)
    subscribed = field(posted, "subscribed") == "yes"
    try:
        await services(request).lists.update_member(lst, member, subscribed=subscribed)
    except ListError as exc:
        raise PanelError(exc.status, exc.message) from None
    verb = "resubscribed" if subscribed else "unsubscribed"
    return redirect(_path(lst), f"Member {member.address} {verb}.")


async def remove_member(request: web.Request) -> web.StreamResponse:
    await form(request)
    lst = await _list(request)
    member = await _member(request, lst)
    await services(request).lists.delete_member(lst, member.address)
    return redirect(_path(lst), f"Member {member.address} removed.")


async def upload_csv(request: web.Request) -> web.StreamResponse:
    """As `POST …/members.csv`: a file with an `address` column (and optionally name, vars,
    subscribed); the list page answers with the counts and the first errors."""
    posted = await form(request)
    lst = await _list(request)
    upload = posted.get("members")
    if isinstance(upload, str) or upload is None or not upload.filename:
        raise PanelError(400, "Choose a CSV file with an 'address' column.")
    subscribed = field(posted, "subscribed") != "no"
    s = services(request)
    stream = io.TextIOWrapper(
        io.BytesIO(upload.file.read()), encoding="utf-8-sig", errors="surrogateescape",
        newline="",
    )
    try:
        rows = csv_entries(s.lists, stream, subscribed=subscribed)
        writer = Upload(s.lists, s.store, lst, upsert=checked(posted, "upsert"), format="csv",
                        subscribed=subscribed)
        for entry in rows:
            await writer.add(entry)
    except ImportFailure as exc:
        raise PanelError(400, f"The file cannot be read: {exc}") from None
    return await _list_page(request, lst, await writer.finish())


async def after_upload(request: web.Request) -> web.StreamResponse:
    """Reloading the page an upload answered with shows the list again."""
    return redirect(_path(await _list(request)))


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/lists", all_lists),
    ("POST", "/lists", create_list),
    ("GET", "/lists/{address}", show_list),
    ("POST", "/lists/{address}/delete", delete_list),
    ("POST", "/lists/{address}/members", add_member),
    ("POST", "/lists/{address}/upload", upload_csv),
    ("GET", "/lists/{address}/upload", after_upload),
    ("POST", "/lists/{address}/members/{member}/subscribed", set_subscribed),
    ("POST", "/lists/{address}/members/{member}/delete", remove_member),
]
