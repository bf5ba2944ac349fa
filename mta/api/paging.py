"""Paging scheme B (mailgun-api.md §1.5): pages by a pivot (an address, a tag), with absolute
`first`/`last`/`next`/`previous` links back to the same path (mailgun.js re-requests them)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from mta.api.errors import ApiError
from mta.store.pages import Page

_PAGES: dict[str, Page] = {
    "first": "first",
    "last": "last",
    "next": "next",
    "prev": "previous",
    "previous": "previous",
}


def requested_page(request: web.Request) -> Page:
    """The `page` asked for (first when none; `prev` is `previous`), else a 400."""
    which = _PAGES.get(request.query.get("page") or "first")
    if which is None:
        raise ApiError(400, "'page' must be one of first, last, next, prev, previous")
    return which


def links(
    url: str, pivot_name: str, limit: int, which: Page, pivot: str, found: tuple[str, str] | None
) -> dict[str, str]:
    """The `paging` object of a page of `url`: `found` is the pivots of its first and last
    item (None for an empty page, whose links lead back into the list)."""

    def link(page: str, at: str | None = None) -> str:
        query = {"page": page} | ({} if at is None else {pivot_name: at})
        return f"{url}?{urlencode(query | {'limit': limit})}"

    if found is not None:
        next_link, previous_link = link("next", found[1]), link("previous", found[0])
    elif which == "previous":  # ran off the start: onwards is the first page
        next_link, previous_link = link("first"), link("previous", pivot)
    else:  # ran off the end (the pivot itself is not on this page): back is the last page
        next_link, previous_link = link("next", pivot), link("last")
    return {
        "first": link("first"),
        "last": link("last"),
        "next": next_link,
        "previous": previous_link,
    }
