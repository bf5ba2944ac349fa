"""Campaigns (mailgun-api.md §11, the older manual's "Campaign Analytics"): the campaigns table,
and the reports read from campaign_events.

A send names its campaigns by id (`o:campaign`, `X-Mailgun-Campaign-Id`); the accept path looks
them up here (`names`) and refuses an id the domain has no campaign for. Every counted event of
such a send then leaves a campaign_events row per campaign and adds to the campaign's counters
(scope 'c:<id>'), both written by mta.stats.counting in the event's own transaction.

A campaign's counts (`submitted_count`, ...) are summed from its month counters: kept for good
and a few rows per campaign, where its campaign_events rows are many and purged after the
campaign retention. The reports (stats, clicks, opens, unsubscribes, complaints, events) group
campaign_events rows by SQL over the index on (domain, campaign, ts), so they cover the
retention window.

Events still in flight carry the id they were sent with: one that arrives after its campaign
was deleted or renamed leaves rows under an id no campaign has. Such rows are cleared when a
campaign takes that id again, so a new campaign starts from nothing.
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mta import tokens
from mta.dates import rfc2822
from mta.stats.counting import campaign_scope
from mta.store import Statement, Store

MAX_ID = 64
MAX_NAME = 64
MAX_REPORT_ROWS = 100  # `limit` of the reports and the events list
# the campaign event names (the older manual's), in the order reports show them
EVENTS = (
    "sent", "delivered", "opened", "clicked", "unsubscribed", "complained", "bounced", "dropped",
)
# printable ASCII but for the space and "/": an id is a path segment of the API's URLs
_ID_CHARACTERS = frozenset(string.printable) - frozenset(string.whitespace) - {"/"}
NOT_FOUND = "Campaign not found"


class CampaignError(ValueError):
    """A campaign request that cannot be done; its text is the API's message (a 400)."""


class CampaignNotFound(CampaignError):
    """No campaign of that id on the domain (a 404)."""

    def __init__(self) -> None:
        super().__init__(NOT_FOUND)


@dataclass(frozen=True)
class Campaign:
    id: str
    name: str
    created_at: float
    counts: dict[str, int]  # submitted_count, delivered_count, ... (Mailgun's names)

    def render(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": rfc2822(self.created_at),
                **self.counts}


def check_id(campaign_id: str) -> None:
    """The older manual's rules: pure ASCII and at most 64 characters (and no space or "/",
    which no URL path segment could carry)."""
    if len(campaign_id) > MAX_ID:
        raise CampaignError(f"Campaign id is too long (max {MAX_ID} characters)")
    if not campaign_id.isascii():
        raise CampaignError(f"Campaign id must be pure ASCII: {campaign_id!r}")
    if not set(campaign_id) <= _ID_CHARACTERS:
        raise CampaignError(
            f"Campaign id must not contain spaces, control characters or '/': {campaign_id!r}"
        )


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise CampaignError("name parameter is missing")
    if len(name) > MAX_NAME:
        raise CampaignError(f"Campaign name is too long (max {MAX_NAME} characters)")
    return name


# -- the campaigns ---------------------------------------------------------------------------------

# month counters of the campaign summed into Mailgun's counts (see counting.counted: a bounce
# is failed_permanent with its bounce or delayed-bounce detail, any other permanent failure a
# drop, as counting.campaign_event_name tells them apart)
_BOUNCED = "s.failed_permanent_bounce + s.failed_permanent_delayed_bounce"
_COUNTS = {
    "submitted_count": "s.accepted_incoming + s.accepted_outgoing",
    "delivered_count": "s.delivered_smtp + s.delivered_http",
    "opened_count": "s.opened",
    "clicked_count": "s.clicked",
    "unsubscribed_count": "s.unsubscribed",
    "bounced_count": _BOUNCED,
    "complained_count": "s.complained",
    "dropped_count": f"s.failed_permanent - ({_BOUNCED})",
}
_SUMS = ", ".join(f"coalesce(sum({expr}), 0)" for expr in _COUNTS.values())


def _with_counts(campaigns: str) -> str:
    """Campaign rows (`campaigns`: a query of their domain, id, name and created_at) with
    their counts, each from its few month counter rows (found by primary key)."""
    return (
        f"SELECT c.id, c.name, c.created_at, {_SUMS} FROM ({campaigns}) c"
        " LEFT JOIN stats_counters s ON s.domain = c.domain AND s.scope = 'c:' || c.id"
        " AND s.resolution = 'month'"
        " GROUP BY c.id, c.name, c.created_at ORDER BY c.created_at, c.id"
    )


_PAGE = _with_counts(
    "SELECT domain, id, name, created_at FROM campaigns WHERE domain = ?"
    " ORDER BY created_at, id LIMIT ? OFFSET ?"
)
_ONE = _with_counts(
    "SELECT domain, id, name, created_at FROM campaigns WHERE domain = ? AND id = ?"
)
_CREATE = (
    "INSERT INTO campaigns (domain, id, name, created_at)"
    " SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS DOUBLE PRECISION)"
    " WHERE (SELECT count(*) FROM campaigns WHERE domain = ?1) < ?5"
    " ON CONFLICT (domain, id) DO NOTHING RETURNING id"
)
_NO_CAMPAIGN = "NOT EXISTS (SELECT 1 FROM campaigns WHERE domain = ?1 AND id = ?2)"
# rows left under an id no campaign has (see the module's docstring)
_CLEAR_EVENTS = (
    f"DELETE FROM campaign_events WHERE domain = ?1 AND campaign = ?2 AND {_NO_CAMPAIGN}"
)
_CLEAR_COUNTERS = (
    f"DELETE FROM stats_counters WHERE domain = ?1 AND scope = ?3 AND {_NO_CAMPAIGN}"
)
# a rename moves the rows only while the old id is a campaign and the new one is not
_RENAMING = (
    "EXISTS (SELECT 1 FROM campaigns WHERE domain = ?1 AND id = ?2)"
    " AND NOT EXISTS (SELECT 1 FROM campaigns WHERE domain = ?1 AND id = ?3)"
)


def _campaign(row: Sequence[Any]) -> Campaign:
    counts = {name: int(value) for name, value in zip(_COUNTS, row[3:], strict=True)}
    return Campaign(row[0], row[1], float(row[2]), counts)


async def _count(store: Store, domain: str) -> int:
    row = await store.fetchone("SELECT count(*) FROM campaigns WHERE domain = ?", (domain,))
    return int(row[0]) if row else 0


async def page(store: Store, domain: str, skip: int, limit: int) -> tuple[int, list[Campaign]]:
    """The domain's campaigns, oldest first (new ones come last, so skip/limit pages stay put),
    and how many it has."""
    rows = await store.fetchall(_PAGE, (domain, limit, skip))
    return await _count(store, domain), [_campaign(row) for row in rows]


async def get(store: Store, domain: str, campaign_id: str) -> Campaign:
    row = await store.fetchone(_ONE, (domain, campaign_id))
    if row is None:
        raise CampaignNotFound
    return _campaign(row)


async def names(store: Store, domain: str, ids: Sequence[str]) -> dict[str, str]:
    """Name by id of those of `ids` that are the domain's campaigns (what a send names)."""
    marks = ", ".join("?" * len(ids))
    rows = await store.fetchall(
        f"SELECT id, name FROM campaigns WHERE domain = ? AND id IN ({marks})", (domain, *ids)
    )
    return {row[0]: row[1] for row in rows}


async def create(
    store: Store, domain: str, name: str, campaign_id: str | None, *, limit: int
) -> Campaign:
    """A new campaign (its id generated when not given), while the domain has fewer than
    `limit`. Rows left under the id by a campaign that had it before are cleared first."""
    name = _checked_name(name)
    campaign_id = campaign_id or tokens.token_hex(8)
    check_id(campaign_id)
    await store.write(
        Statement(_CLEAR_EVENTS, [(domain, campaign_id)]),
        Statement(_CLEAR_COUNTERS, [(domain, campaign_id, campaign_scope(campaign_id))]),
    )
    created = await store.write_returning(
        _CREATE, (domain, campaign_id, name, time.time(), limit)
    )
    if not created:
        if await store.fetchone(_ONE, (domain, campaign_id)) is not None:
            raise CampaignError(f"Campaign {campaign_id!r} already exists")
        raise CampaignError(f"Campaign limit reached: a domain may have at most {limit} campaigns")
    return await get(store, domain, campaign_id)


async def update(
    store: Store, domain: str, campaign_id: str, *, name: str | None, new_id: str | None
) -> Campaign:
    """A new name and/or a new id. A rename carries the campaign's report rows and counters
    with it, in the transaction that renames it."""
    current = await get(store, domain, campaign_id)
    if name is None and new_id is None:
        raise CampaignError("name or id parameter is missing")
    name = current.name if name is None else _checked_name(name)
    if new_id is None or new_id == campaign_id:
        renamed = await store.write_returning(
            "UPDATE campaigns SET name = ? WHERE domain = ? AND id = ? RETURNING id",
            (name, domain, campaign_id),
        )
        if not renamed:
            raise CampaignNotFound
        return await get(store, domain, campaign_id)
    check_id(new_id)
    if await store.fetchone(_ONE, (domain, new_id)) is not None:
        raise CampaignError(f"Campaign {new_id!r} already exists")
    ids = (domain, campaign_id, new_id)
    old_scope, new_scope = campaign_scope(campaign_id), campaign_scope(new_id)
    await store.write(
        # rows left under the new id by an earlier campaign of that id go first
        Statement(
            f"DELETE FROM campaign_events WHERE domain = ?1 AND campaign = ?3 AND {_RENAMING}",
            [ids],
        ),
        Statement(
            f"DELETE FROM stats_counters WHERE domain = ?1 AND scope = ?4 AND {_RENAMING}",
            [(*ids, new_scope)],
        ),
        Statement(
            "UPDATE campaign_events SET campaign = ?3"
            f" WHERE domain = ?1 AND campaign = ?2 AND {_RENAMING}",
            [ids],
        ),
        Statement(
            "UPDATE stats_counters SET scope = ?5"
            f" WHERE domain = ?1 AND scope = ?4 AND {_RENAMING}",
            [(*ids, old_scope, new_scope)],
        ),
        Statement(
            "UPDATE campaigns SET id = ?3, name = ?4 WHERE domain = ?1 AND id = ?2"
            " AND NOT EXISTS (SELECT 1 FROM campaigns WHERE domain = ?1 AND id = ?3)",
            [(*ids, name)],
        ),
    )
    try:
        return await get(store, domain, new_id)
    except CampaignNotFound:  # deleted, or renamed by another request, meanwhile
        raise CampaignError(f"Campaign {campaign_id!r} changed meanwhile; try again") from None


async def delete(store: Store, domain: str, campaign_id: str) -> None:
    """The campaign and all its data: report rows and counters, in one transaction."""
    await get(store, domain, campaign_id)
    await store.write(
        Statement(
            "DELETE FROM campaign_events WHERE domain = ? AND campaign = ?", [(domain, campaign_id)]
        ),
        Statement(
            "DELETE FROM stats_counters WHERE domain = ? AND scope = ?",
            [(domain, campaign_scope(campaign_id))],
        ),
        Statement("DELETE FROM campaigns WHERE domain = ? AND id = ?", [(domain, campaign_id)]),
    )


# -- reports -----------------------------------------------------------------------------------

_COLUMN_GROUPS = {
    "link": "link",
    "recipient": "recipient",
    "domain": "recipient_domain",
    "country": "country",
    "region": "region",
    "city": "city",
}
# the start of the minute, hour, day or month of `ts` (UTC, epoch seconds); the hour of the day
_TIME_GROUPS = {
    "sqlite": {
        "minute": "CAST(ts / 60 AS INTEGER) * 60",
        "hour": "CAST(ts / 3600 AS INTEGER) * 3600",
        "day": "CAST(ts / 86400 AS INTEGER) * 86400",
        "month": "CAST(strftime('%s', ts, 'unixepoch', 'start of month') AS INTEGER)",
        "daily_hour": "CAST(ts / 3600 AS INTEGER) % 24",
    },
    "postgresql": {
        "minute": "CAST(floor(ts / 60) AS BIGINT) * 60",
        "hour": "CAST(floor(ts / 3600) AS BIGINT) * 3600",
        "day": "CAST(floor(ts / 86400) AS BIGINT) * 86400",
        "month": (
            "CAST(extract(epoch FROM date_trunc('month', to_timestamp(ts) AT TIME ZONE 'UTC'))"
            " AS BIGINT)"
        ),
        "daily_hour": "CAST(floor(ts / 3600) AS BIGINT) % 24",
    },
}
_DATED = frozenset({"minute", "hour", "day", "month"})  # shown as RFC 2822 dates
_TIMES = ("month", "day", "hour", "minute", "daily_hour")
_PLACES = ("country", "region", "city")
# the reference documents domain and daily_hour; its own examples group stats by place too
STATS_GROUPS = ("domain", "daily_hour", *_PLACES)


@dataclass(frozen=True)
class Report:
    """One of the aggregated reports: which events it counts, by what it may group, and what
    its rows count as unique."""

    event: str
    groups: tuple[str, ...]
    unique: str | None  # the column counted distinct in each row ("unique": {<it>: n})


REPORTS = {
    "clicks": Report("clicked", ("link", "recipient", "domain", *_PLACES, *_TIMES), "link"),
    "opens": Report("opened", ("recipient", "domain", *_PLACES, *_TIMES), "recipient"),
    "unsubscribes": Report("unsubscribed", ("domain", *_PLACES, *_TIMES), None),
    "complaints": Report("complained", ("recipient", "domain", *_TIMES), None),
}


@dataclass(frozen=True)
class Filters:
    """Where the hits came from (matched without case); None: any."""

    country: str | None = None
    region: str | None = None
    city: str | None = None

    def sql(self) -> tuple[str, list[str]]:
        where, params = "", []
        for column, value in (("country", self.country), ("region", self.region),
                              ("city", self.city)):
            if value is not None:
                where += f" AND lower({column}) = lower(?)"
                params.append(value)
        return where, params


def _group_expressions(dialect: str, groups: Iterable[str], allowed: Sequence[str]) -> list[str]:
    out = []
    for group in groups:
        if group not in allowed:
            raise CampaignError(
                f"Invalid groupby: {group!r} (expected one of {', '.join(allowed)})"
            )
        out.append(_COLUMN_GROUPS.get(group) or _TIME_GROUPS[dialect][group])
    return out


def _key(group: str, value: Any) -> Any:
    if group in _DATED:
        return rfc2822(int(value))
    return int(value) if group == "daily_hour" else value


async def _require(store: Store, domain: str, campaign_id: str) -> None:
    found = await store.fetchone(
        "SELECT 1 FROM campaigns WHERE domain = ? AND id = ?", (domain, campaign_id)
    )
    if found is None:
        raise CampaignNotFound


def _no_stats() -> dict[str, Any]:
    return {
        "total": dict.fromkeys(EVENTS, 0),
        "unique": {"clicked": {"recipient": 0, "link": 0}, "opened": {"recipient": 0}},
    }


async def stats(
    store: Store, domain: str, campaign_id: str, groupby: str | None
) -> dict[str, Any] | list[dict[str, Any]]:
    """Totals of each event, and unique clickers, clicked links and openers; grouped by
    `groupby`, a list of those with the group's key."""
    await _require(store, domain, campaign_id)
    groups = [groupby] if groupby else []
    keys = _group_expressions(store.dialect, groups, STATS_GROUPS)
    selected = "".join(f"{k} AS g{n}, " for n, k in enumerate(keys))
    grouped = "".join(f"g{n}, " for n in range(len(keys)))
    rows = await store.fetchall(
        f"SELECT {selected}event, count(*), count(DISTINCT recipient), count(DISTINCT link)"
        " FROM campaign_events WHERE domain = ? AND campaign = ?"
        f" GROUP BY {grouped}event",
        (domain, campaign_id),
    )
    by_key: dict[Any, dict[str, Any]] = {}
    for row in rows:
        key = row[0] if groupby else None
        entry = by_key.get(key)
        if entry is None:
            entry = by_key[key] = _no_stats()
        event, total, recipients, links = row[len(keys):]
        entry["total"][event] = int(total)
        if event == "clicked":
            entry["unique"]["clicked"] = {"recipient": int(recipients), "link": int(links)}
        elif event == "opened":
            entry["unique"]["opened"] = {"recipient": int(recipients)}
    if groupby is None:
        return by_key.get(None) or _no_stats()
    return [
        {groupby: _key(groupby, key), **entry}
        for key, entry in sorted(by_key.items(), key=lambda item: item[0])
    ]


def _report_query(
    dialect: str, report: Report, groups: Sequence[str], filters: Filters
) -> tuple[str, list[str]]:
    """The rows of one report, most hits first (then by key): each group's key columns, its
    total and (when the report has one) its unique count."""
    keys = _group_expressions(dialect, groups, report.groups)
    where, params = filters.sql()
    selected = "".join(f"{k} AS g{n}, " for n, k in enumerate(keys))
    names = [f"g{n}" for n in range(len(keys))]
    unique = f", count(DISTINCT {report.unique})" if report.unique else ""
    sql = (
        f"SELECT {selected}count(*) AS total{unique} FROM campaign_events"
        f" WHERE domain = ? AND campaign = ? AND event = ?{where}"
    )
    if names:
        sql += f" GROUP BY {', '.join(names)} ORDER BY total DESC, {', '.join(names)}"
    return sql, params


async def report(
    store: Store, domain: str, campaign_id: str, kind: str, groups: Sequence[str],
    filters: Filters, limit: int, page_number: int,
) -> list[dict[str, Any]]:
    """One page (`page_number` from 1) of a report's rows."""
    report = REPORTS[kind]
    groups = list(dict.fromkeys(groups))
    sql, params = _report_query(store.dialect, report, groups, filters)
    await _require(store, domain, campaign_id)
    rows = await store.fetchall(
        f"{sql} LIMIT ? OFFSET ?",
        (domain, campaign_id, report.event, *params, limit, (page_number - 1) * limit),
    )
    out = []
    for row in rows:
        entry: dict[str, Any] = {g: _key(g, row[n]) for n, g in enumerate(groups)}
        entry["total"] = int(row[len(groups)])
        if report.unique:
            entry["unique"] = {report.unique: int(row[len(groups) + 1])}
        out.append(entry)
    return out


async def report_count(
    store: Store, domain: str, campaign_id: str, kind: str, groups: Sequence[str],
    filters: Filters,
) -> int:
    """How many rows the whole report has (its `count` flag)."""
    report = REPORTS[kind]
    sql, params = _report_query(store.dialect, report, list(dict.fromkeys(groups)), filters)
    await _require(store, domain, campaign_id)
    row = await store.fetchone(
        f"SELECT count(*) FROM ({sql}) AS report_rows", (domain, campaign_id, report.event, *params)
    )
    return int(row[0]) if row else 0


def _events_query(
    kinds: Sequence[str], recipient: str | None, filters: Filters
) -> tuple[str, list[str]]:
    for kind in kinds:
        if kind not in EVENTS:
            raise CampaignError(f"Invalid event: {kind!r} (expected one of {', '.join(EVENTS)})")
    where, params = "", []
    if kinds:
        where += f" AND event IN ({', '.join('?' * len(kinds))})"
        params += kinds
    if recipient is not None:
        where += " AND recipient = ?"
        params.append(recipient.strip().lower())  # stored lower-cased (counting)
    place, place_params = filters.sql()
    return where + place, params + place_params


async def events(
    store: Store, domain: str, campaign_id: str, kinds: Sequence[str], recipient: str | None,
    filters: Filters, limit: int, page_number: int,
) -> list[dict[str, Any]]:
    """One page of the campaign's events, newest first, in the older manual's shape."""
    kinds = list(dict.fromkeys(kinds))
    where, params = _events_query(kinds, recipient, filters)
    await _require(store, domain, campaign_id)
    rows = await store.fetchall(
        "SELECT domain, ts, event, recipient, tags, user_vars FROM campaign_events"
        f" WHERE domain = ? AND campaign = ?{where} ORDER BY ts DESC, seq DESC LIMIT ? OFFSET ?",
        (domain, campaign_id, *params, limit, (page_number - 1) * limit),
    )
    return [
        {"domain": row[0], "tags": orjson.loads(row[4]), "timestamp": rfc2822(float(row[1])),
         "recipient": row[3], "event": row[2], "user_vars": orjson.loads(row[5])}
        for row in rows
    ]


async def events_count(
    store: Store, domain: str, campaign_id: str, kinds: Sequence[str], recipient: str | None,
    filters: Filters,
) -> int:
    where, params = _events_query(list(dict.fromkeys(kinds)), recipient, filters)
    await _require(store, domain, campaign_id)
    row = await store.fetchone(
        f"SELECT count(*) FROM campaign_events WHERE domain = ? AND campaign = ?{where}",
        (domain, campaign_id, *params),
    )
    return int(row[0]) if row else 0
