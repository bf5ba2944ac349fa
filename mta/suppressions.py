"""Suppression lists per domain: bounces, unsubscribes (all mail or per tag) and complaints.

Owns the `bounces`, `unsubscribes` and `complaints` tables. Addresses are stored lower-cased,
so a list entry matches a recipient in any case. The outbound scheduler asks `suppressed()`
before delivering and records hard bounces with `bounce_statement()` in its own transaction;
inbound feedback loops record complaints with `complaint_statement()`, and the tracking
endpoints' unsubscribe links their unsubscribes with `unsubscribe_statement()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from mta.store import Row, Statement, Store
from mta.store.pages import Page, by_pivot

Kind = Literal["bounces", "unsubscribes", "complaints"]

ALL_TAGS = "*"
REASONS = ("suppress-bounce", "suppress-complaint", "suppress-unsubscribe")  # precedence order

_COLUMNS: dict[Kind, str] = {
    "bounces": "address, code, error, created_at",
    "unsubscribes": "address, tags, created_at",
    "complaints": "address, count, created_at",
}

_BOUNCE_UPSERT = (
    "INSERT INTO bounces (domain, address, code, error, created_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (domain, address) DO UPDATE SET"
    " code = excluded.code, error = excluded.error, created_at = excluded.created_at"
)
_COMPLAINT_UPSERT = (
    "INSERT INTO complaints (domain, address, count, created_at) VALUES (?, ?, 1, ?)"
    " ON CONFLICT (domain, address) DO UPDATE SET"
    " count = complaints.count + 1, created_at = excluded.created_at"
)
# One tag per row (?5), appended in SQL so concurrent adds to one address cannot lose a tag.
# Tags are a JSON array kept as bytes; each engine has its own JSON functions (newer SQLite
# reads a BLOB as binary JSONB, hence the casts to TEXT).
_UNSUBSCRIBE_UPSERT = {
    "sqlite": (
        "INSERT INTO unsubscribes (domain, address, tags, created_at) VALUES (?1, ?2, ?3, ?4)"
        " ON CONFLICT (domain, address) DO UPDATE SET created_at = excluded.created_at,"
        " tags = CASE WHEN EXISTS (SELECT 1 FROM json_each(CAST(unsubscribes.tags AS TEXT))"
        " WHERE lower(value) = lower(?5)) THEN unsubscribes.tags"
        " ELSE CAST(json_insert(CAST(unsubscribes.tags AS TEXT), '$[#]', ?5) AS BLOB) END"
    ),
    "postgresql": (
        "INSERT INTO unsubscribes (domain, address, tags, created_at) VALUES (?1, ?2, ?3, ?4)"
        " ON CONFLICT (domain, address) DO UPDATE SET created_at = excluded.created_at,"
        " tags = CASE WHEN EXISTS (SELECT 1 FROM jsonb_array_elements_text("
        "convert_from(unsubscribes.tags, 'UTF8')::jsonb) AS t(value)"
        " WHERE lower(value) = lower(?5::text)) THEN unsubscribes.tags"
        " ELSE convert_to((convert_from(unsubscribes.tags, 'UTF8')::jsonb"
        " || to_jsonb(?5::text))::text, 'UTF8') END"
    ),
}
# The addresses of one batch as one JSON parameter (no variable limit to chunk around)
_JSON_VALUES = {
    "sqlite": "SELECT value FROM json_each(?2)",
    "postgresql": "SELECT jsonb_array_elements_text(?2::text::jsonb)",
}
_REMOVE_TAG = {
    "sqlite": (
        "UPDATE unsubscribes SET tags = CAST((SELECT json_group_array(value)"
        " FROM json_each(CAST(unsubscribes.tags AS TEXT))"
        " WHERE lower(value) != lower(?1)) AS BLOB)"
        " WHERE domain = ?2 AND address = ?3"
    ),
    "postgresql": (
        "UPDATE unsubscribes SET tags = convert_to(coalesce((SELECT jsonb_agg(value)"
        " FROM jsonb_array_elements_text(convert_from(unsubscribes.tags, 'UTF8')::jsonb)"
        " AS t(value) WHERE lower(value) != lower(?1::text)), '[]'::jsonb)::text, 'UTF8')"
        " WHERE domain = ?2 AND address = ?3"
    ),
}
_TAGLESS = {
    "sqlite": "json_array_length(CAST(tags AS TEXT)) = 0",
    "postgresql": "jsonb_array_length(convert_from(tags, 'UTF8')::jsonb) = 0",
}


@dataclass(frozen=True)
class Bounce:
    address: str
    code: str
    error: str
    created_at: float


@dataclass(frozen=True)
class Unsubscribe:
    address: str
    tags: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class Complaint:
    """`count` is kept by the store (each complaint about the address adds one)."""

    address: str
    created_at: float
    count: int = 1


Suppression = Bounce | Unsubscribe | Complaint


def bounce_statement(
    domain: str, address: str, code: str, error: str, created_at: float
) -> Statement:
    """Record a bounce (replacing an earlier one for the address), inside the caller's write."""
    return Statement(_BOUNCE_UPSERT, [(domain, address.lower(), code, error, created_at)])


def complaint_statement(domain: str, address: str, created_at: float) -> Statement:
    """Record a complaint (counting it when the address already complained)."""
    return Statement(_COMPLAINT_UPSERT, [(domain, address.lower(), created_at)])


def unsubscribe_statement(
    dialect: str, domain: str, address: str, tags: Sequence[str], created_at: float
) -> Statement:
    """Unsubscribe the address from `tags` ("*": all mail from the domain), adding them to
    the tags it is already unsubscribed from, inside the caller's write (a tracking hit's)."""
    rows = _unsubscribe_rows(domain, address, tags, created_at)
    return Statement(_UNSUBSCRIBE_UPSERT[dialect], rows)


async def suppressed(
    store: Store, domain: str, addresses: list[str], tags: list[str]
) -> dict[str, str]:
    """{lower-cased address: reason} for the recipients that must not be sent to.

    One query for the whole batch: the addresses go in as one JSON parameter, so there is no
    SQLite variable limit to chunk around, and each list is still read through its primary key.
    """
    wanted = sorted({a.lower() for a in addresses})
    if not wanted:
        return {}
    values = _JSON_VALUES[store.dialect]
    # unsubscribes first: PostgreSQL types the tags column by its first branch
    rows = await store.fetchall(
        "SELECT address, 2 AS rank, tags FROM unsubscribes"
        f" WHERE domain = ?1 AND address IN ({values})"
        " UNION ALL SELECT address, 0, NULL FROM bounces"
        f" WHERE domain = ?1 AND address IN ({values})"
        " UNION ALL SELECT address, 1, NULL FROM complaints"
        f" WHERE domain = ?1 AND address IN ({values})",
        (domain, orjson.dumps(wanted).decode()),
    )
    message_tags = {t.lower() for t in tags}  # tags are case-insensitive (the manual)
    ranks: dict[str, int] = {}
    for row in rows:
        rank = row["rank"]
        if rank == 2:
            listed = {t.lower() for t in orjson.loads(row["tags"])}
            if ALL_TAGS not in listed and not listed & message_tags:
                continue
        ranks[row["address"]] = min(rank, ranks.get(row["address"], rank))
    return {address: REASONS[rank] for address, rank in ranks.items()}


# -- the API's operations ---------------------------------------------------------------------


async def add(store: Store, domain: str, entries: Sequence[Suppression]) -> None:
    """Add entries in one transaction: a bounce replaces the address's earlier one, an
    unsubscribe adds its tags to the address's, a complaint counts once more."""
    rows: dict[str, list[tuple[object, ...]]] = {}
    for entry in entries:
        address = entry.address.lower()
        match entry:
            case Bounce():
                rows.setdefault(_BOUNCE_UPSERT, []).append(
                    (domain, address, entry.code, entry.error, entry.created_at)
                )
            case Unsubscribe():
                rows.setdefault(_UNSUBSCRIBE_UPSERT[store.dialect], []).extend(
                    _unsubscribe_rows(domain, address, entry.tags, entry.created_at)
                )
            case Complaint():
                rows.setdefault(_COMPLAINT_UPSERT, []).append((domain, address, entry.created_at))
    if rows:
        await store.write(*(Statement(sql, batch) for sql, batch in rows.items()))


async def get(store: Store, kind: Kind, domain: str, address: str) -> Suppression | None:
    row = await store.fetchone(
        f"SELECT {_COLUMNS[kind]} FROM {kind} WHERE domain = ? AND address = ?",
        (domain, address.lower()),
    )
    return None if row is None else _entry(kind, row)


async def page(
    store: Store, kind: Kind, domain: str, which: Page, pivot: str, limit: int
) -> list[Suppression]:
    """One page in address order (mta.store.pages.by_pivot)."""
    rows = await by_pivot(store, f"SELECT {_COLUMNS[kind]} FROM {kind} WHERE domain = ?",
                          (domain,), "address", which, pivot.lower(), limit)
    return [_entry(kind, row) for row in rows]


async def newest(
    store: Store,
    kind: Kind,
    domain: str,
    prefix: str = "",
    *,
    older_than: tuple[float, str] | None = None,
    newer_than: tuple[float, str] | None = None,
    limit: int = 50,
) -> list[Suppression]:
    """Newest first, as the control panel lists them: addresses starting with `prefix`, the
    `limit` after the entry `older_than` (created_at, address) or just before `newer_than`."""
    sql = f"SELECT {_COLUMNS[kind]} FROM {kind} WHERE domain = ?"
    params: list[object] = [domain]
    if prefix:
        escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        sql += " AND address LIKE ? ESCAPE '\\'"
        params.append(escaped + "%")
    order = "DESC"
    if older_than is not None:
        sql += " AND (created_at < ? OR (created_at = ? AND address < ?))"
        params += [older_than[0], older_than[0], older_than[1]]
    elif newer_than is not None:
        sql += " AND (created_at > ? OR (created_at = ? AND address > ?))"
        params += [newer_than[0], newer_than[0], newer_than[1]]
        order = "ASC"
    rows = await store.fetchall(
        f"{sql} ORDER BY created_at {order}, address {order} LIMIT ?", (*params, limit)
    )
    entries = [_entry(kind, row) for row in rows]
    return entries[::-1] if order == "ASC" else entries


async def skip_page(
    store: Store, kind: Kind, domain: str, skip: int, limit: int
) -> tuple[int, list[Suppression]]:
    """(total, entries) for the legacy skip/limit paging."""
    total = await store.fetchone(f"SELECT count(*) FROM {kind} WHERE domain = ?", (domain,))
    rows = await store.fetchall(
        f"SELECT {_COLUMNS[kind]} FROM {kind} WHERE domain = ? ORDER BY address LIMIT ? OFFSET ?",
        (domain, limit, skip),
    )
    assert total is not None
    return total[0], [_entry(kind, row) for row in rows]


async def delete(store: Store, kind: Kind, domain: str, address: str) -> bool:
    """Remove the address from the list; False if it was not on it."""
    if await get(store, kind, domain, address) is None:
        return False
    await store.write(
        Statement(
            f"DELETE FROM {kind} WHERE domain = ? AND address = ?", [(domain, address.lower())]
        )
    )
    return True


async def remove_tag(store: Store, domain: str, address: str, tag: str) -> bool:
    """Unsubscribe the address from one tag less; with no tag left it is off the list.
    False if the address was not unsubscribed at all."""
    if await get(store, "unsubscribes", domain, address) is None:
        return False
    key = (domain, address.lower())
    await store.write(
        Statement(_REMOVE_TAG[store.dialect], [(tag, *key)]),
        Statement(
            "DELETE FROM unsubscribes WHERE domain = ? AND address = ?"
            f" AND {_TAGLESS[store.dialect]}",
            [key],
        ),
    )
    return True


async def delete_all(store: Store, kind: Kind, domain: str) -> None:
    await store.write(Statement(f"DELETE FROM {kind} WHERE domain = ?", [(domain,)]))


def _unsubscribe_rows(
    domain: str, address: str, tags: Sequence[str], created_at: float
) -> list[tuple[object, ...]]:
    """One upsert row per tag (the SQL appends a tag the address does not have yet)."""
    return [(domain, address.lower(), orjson.dumps([tag]), created_at, tag) for tag in tags]


def _entry(kind: Kind, row: Row) -> Suppression:
    if kind == "bounces":
        return Bounce(row["address"], row["code"], row["error"], row["created_at"])
    if kind == "unsubscribes":
        return Unsubscribe(row["address"], tuple(orjson.loads(row["tags"])), row["created_at"])
    return Complaint(row["address"], row["created_at"], row["count"])
