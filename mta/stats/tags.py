"""Tags: made by the sends that use them (`o:tag`, `X-Mailgun-Tag`), within a per-domain limit.

A tag is counted (stats, aggregates) only while it is one of its domain's tags: a send's tags
beyond the limit still travel in its events, but make no new counters. Deleting a tag keeps
its counters (Mailgun's "stats are kept"); a later send with it makes it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mta.stats.counting import AGGREGATES
from mta.store import Row, Statement, Store
from mta.store.pages import Page, by_pivot

MAX_DESCRIPTION = 1024  # characters: one tenant's descriptions are stored and listed
Dimension = Literal["country", "provider", "device"]

_SEEN = "UPDATE tags SET last_seen = ?1 WHERE domain = ?2 AND tag = ?3 AND last_seen < ?1"
_NEW = (
    "INSERT INTO tags (domain, tag, description, first_seen, last_seen)"
    " SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), '', CAST(?3 AS DOUBLE PRECISION),"
    " CAST(?3 AS DOUBLE PRECISION)"
    " WHERE NOT EXISTS (SELECT 1 FROM tags WHERE domain = ?1 AND tag = ?2)"
    " AND (SELECT count(*) FROM tags WHERE domain = ?1) < ?4"
    " ON CONFLICT (domain, tag) DO NOTHING"
)


def seen_statements(domain: str, tags: Sequence[str], now: float, limit: int) -> list[Statement]:
    """A send's tags, noted in its accept transaction (before its events are counted)."""
    return [
        Statement(_SEEN, [(now, domain, tag) for tag in tags]),
        Statement(_NEW, [(domain, tag, now, limit) for tag in tags]),
    ]


@dataclass(frozen=True)
class Tag:
    tag: str
    description: str
    first_seen: float
    last_seen: float


_COLUMNS = "tag, description, first_seen, last_seen"


def _tag(row: Row) -> Tag:
    return Tag(row["tag"], row["description"], float(row["first_seen"]), float(row["last_seen"]))


async def get(store: Store, domain: str, tag: str) -> Tag | None:
    """Tags are case-insensitive: stored lower-cased, found in any case."""
    row = await store.fetchone(
        f"SELECT {_COLUMNS} FROM tags WHERE domain = ? AND tag = ?", (domain, tag.lower())
    )
    return None if row is None else _tag(row)


async def page(store: Store, domain: str, which: Page, pivot: str, limit: int) -> list[Tag]:
    """One page in tag order (mta.store.pages.by_pivot)."""
    rows = await by_pivot(store, f"SELECT {_COLUMNS} FROM tags WHERE domain = ?", (domain,),
                          "tag", which, pivot.lower(), limit)
    return [_tag(row) for row in rows]


async def count(store: Store, domain: str) -> int:
    row = await store.fetchone("SELECT count(*) FROM tags WHERE domain = ?", (domain,))
    assert row is not None
    return int(row[0])


async def describe(store: Store, domain: str, tag: str, description: str) -> bool:
    """Set a tag's description; False if the domain has no such tag."""
    rows = await store.write_returning(
        "UPDATE tags SET description = ? WHERE domain = ? AND tag = ? RETURNING tag",
        (description, domain, tag.lower()),
    )
    return bool(rows)


async def delete(store: Store, domain: str, tag: str) -> bool:
    """Forget a tag (its counters stay: a later send with it makes it again and counts on);
    False if the domain has no such tag."""
    rows = await store.write_returning(
        "DELETE FROM tags WHERE domain = ? AND tag = ? RETURNING tag", (domain, tag.lower())
    )
    return bool(rows)


async def aggregates(
    store: Store, domain: str, tag: str, dimension: Dimension
) -> dict[str, dict[str, int]]:
    """A tag's all-time counters by country, provider (recipient domain) or device type, each
    key's counters by name (AGGREGATES)."""
    rows = await store.fetchall(
        f"SELECT key, {', '.join(AGGREGATES)} FROM tag_aggregates"
        " WHERE domain = ? AND tag = ? AND dimension = ? ORDER BY key",
        (domain, tag.lower(), dimension),
    )
    return {
        str(row[0]): {name: int(row[n]) for n, name in enumerate(AGGREGATES, start=1)}
        for row in rows
    }
