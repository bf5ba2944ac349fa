"""Pages of rows in the order of a key (the API's paging scheme B, by pivot): one query shape
for suppressions, tags and list members."""

from __future__ import annotations

from typing import Any, Literal

from mta.store import Params, Store

Page = Literal["first", "last", "next", "previous"]


async def by_pivot(
    store: Store, select: str, params: Params, key: str, which: Page, pivot: str, limit: int
) -> list[Any]:
    """Rows of `select` (a query ending in its WHERE condition) in `key` order: `next` starts
    after the pivot, `previous` ends before it, `last` is the final `limit` rows."""
    condition, extra, descending = {
        "first": ("", (), False),
        "next": (f" AND {key} > ?", (pivot,), False),
        "previous": (f" AND {key} < ?", (pivot,), True),
        "last": ("", (), True),
    }[which]
    rows = await store.fetchall(
        f"{select}{condition} ORDER BY {key} {'DESC' if descending else 'ASC'} LIMIT ?",
        (*params, *extra, limit),
    )
    return rows[::-1] if descending else rows
