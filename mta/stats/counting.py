"""Counting events into the stats tables, in the transaction that writes the events.

`statements(domain, events)` is what mta.events adds beside every INSERT of events, so each
count exists exactly when its event does: a crash before the commit loses both, after it keeps
both, and nothing is ever counted twice (no follow-up pass to repeat). Within one write the
events are summed in Python first: a send to a thousand recipients is three counter upserts
(hour, day, month) per scope, not three thousand.

The statement list has the same shape (same SQL, in the same order) for every call; parts with
nothing to write have no rows. The SQLite writer groups the writes of one shape into one
executemany per statement, and rows are sorted so that two PostgreSQL transactions take the
counter rows' locks in one order.

Uniques (the first open and the first click of each message and recipient) need to know
whether an earlier event counted already, across transactions and nodes: each hit tries to
place a mark (`stats_uniques`, keyed by message and recipient) carrying its event id, and the
unique columns move only where the mark holds that id. On PostgreSQL the second of two
concurrent hits waits on the first's mark, then finds it is not its own.
"""

from __future__ import annotations

import calendar
import functools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from mta.events.model import Event
from mta.store import Statement

# One column per Mailgun sub-total (mailgun-api.md §9.1), in the tables' order.
COUNTERS = (
    "accepted_incoming",
    "accepted_outgoing",
    "delivered_smtp",
    "delivered_http",
    "failed_temporary",
    "failed_temporary_espblock",
    "failed_permanent",
    "failed_permanent_bounce",
    "failed_permanent_delayed_bounce",
    "failed_permanent_suppress_bounce",
    "failed_permanent_suppress_unsubscribe",
    "failed_permanent_suppress_complaint",
    "failed_permanent_old",
    "opened",
    "opened_unique",
    "clicked",
    "clicked_unique",
    "unsubscribed",
    "complained",
    "stored",
)
_INDEX = {name: n for n, name in enumerate(COUNTERS)}
# tag aggregates (countries, providers, devices): all time, per tag
AGGREGATES = (
    "accepted",
    "delivered",
    "opened",
    "opened_unique",
    "clicked",
    "clicked_unique",
    "unsubscribed",
    "complained",
)
_AGGREGATE_INDEX = {name: n for n, name in enumerate(AGGREGATES)}
RESOLUTIONS = ("hour", "day", "month")
DOMAIN_SCOPE = ""


def tag_scope(tag: str) -> str:
    return "t:" + tag


def campaign_scope(campaign_id: str) -> str:
    return "c:" + campaign_id


def hour_start(ts: float) -> int:
    return int(ts // 3600) * 3600


def day_start(ts: float) -> int:
    return int(ts // 86400) * 86400


@functools.lru_cache(maxsize=128)
def _month_of_day(day: int) -> int:
    year, month = time.gmtime(day)[:2]
    return calendar.timegm((year, month, 1, 0, 0, 0))


def month_start(ts: float) -> int:
    return _month_of_day(day_start(ts))


def buckets(ts: float) -> tuple[tuple[str, int], ...]:
    """The (resolution, bucket start) each event is counted in."""
    day = day_start(ts)
    return ("hour", hour_start(ts)), ("day", day), ("month", _month_of_day(day))


_PERMANENT_REASONS = {
    "bounce": "failed_permanent_bounce",
    "suppress-bounce": "failed_permanent_suppress_bounce",
    "suppress-unsubscribe": "failed_permanent_suppress_unsubscribe",
    "suppress-complaint": "failed_permanent_suppress_complaint",
    "old": "failed_permanent_old",
}


def counted(event: Event) -> tuple[str, ...]:
    """The counter columns one event adds 1 to (none for `rejected`)."""
    kind = event.kind
    if kind == "accepted":
        flags = event.flags
        inbound = flags is not None and flags.is_authenticated is False
        return ("accepted_incoming",) if inbound else ("accepted_outgoing",)
    if kind == "delivered":
        envelope = event.envelope
        smtp = envelope is None or envelope.transport == "smtp"
        return ("delivered_smtp",) if smtp else ("delivered_http",)
    if kind == "failed":
        if event.severity == "temporary":
            if event.reason == "espblock":
                return "failed_temporary", "failed_temporary_espblock"
            return ("failed_temporary",)
        detail = _PERMANENT_REASONS.get(event.reason or "")
        if detail == "failed_permanent_bounce" and event.flags and event.flags.is_delayed_bounce:
            detail = "failed_permanent_delayed_bounce"
        return ("failed_permanent", detail) if detail else ("failed_permanent",)
    if kind in ("opened", "clicked", "unsubscribed", "complained", "stored"):
        return (kind,)
    return ()


_AGGREGATED_KINDS = {
    "accepted": "accepted",
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}
_HIT_KINDS = ("opened", "clicked")
# campaign reports' event names (the older manual's): sent, delivered, bounced, dropped, ...
_CAMPAIGN_KINDS = {
    "accepted": "sent",
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}


def campaign_event_name(event: Event) -> str | None:
    if event.kind == "failed":
        if event.severity != "permanent":
            return None
        return "bounced" if event.reason == "bounce" else "dropped"
    return _CAMPAIGN_KINDS.get(event.kind)


def _upsert(table: str, keys: Sequence[str], columns: Sequence[str], guard: str = "") -> str:
    """An INSERT adding each row's counts to the row of its keys. With a `guard` (SQL over
    the row's own parameters, ?1 the first key) a row is written only where it holds: then
    the values come from a SELECT, where PostgreSQL cannot infer a parameter's type from the
    column, hence the casts."""
    names = ", ".join((*keys, *columns))
    adds = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns)
    if guard:
        typed = [
            f"CAST(?{n} AS {'TEXT' if name in _TEXT_KEYS else 'BIGINT'})"
            for n, name in enumerate((*keys, *columns), start=1)
        ]
        source = f"SELECT {', '.join(typed)} WHERE {guard}"
    else:
        source = f"VALUES ({', '.join('?' * (len(keys) + len(columns)))})"
    return (
        f"INSERT INTO {table} ({names}) {source}"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {adds}"
    )


_TEXT_KEYS = frozenset({"domain", "scope", "resolution", "tag", "dimension", "key"})
_COUNTER_KEYS = ("domain", "scope", "resolution", "bucket")
_COUNTED = tuple(c for c in COUNTERS if not c.endswith("_unique"))
_COUNTED_INDEX = [_INDEX[c] for c in _COUNTED]
UPSERT_COUNTERS = _upsert("stats_counters", _COUNTER_KEYS, _COUNTED)
# a tag counts only while it is one of the domain's tags (within the tag limit; see tags.py)
_TAG_EXISTS = "EXISTS (SELECT 1 FROM tags WHERE tags.domain = ?1 AND tags.tag = {tag})"
UPSERT_TAG_COUNTERS = _upsert(
    "stats_counters", _COUNTER_KEYS, _COUNTED, guard=_TAG_EXISTS.format(tag="substr(?2, 3)")
)
MARK_UNIQUE = (
    "INSERT INTO stats_uniques (domain, message_id, recipient, kind, event_id, ts)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, message_id, recipient, kind) DO NOTHING"
)
_MINE = (
    "EXISTS (SELECT 1 FROM stats_uniques u WHERE u.domain = ?3 AND u.message_id = ?4"
    " AND u.recipient = ?5 AND u.kind = ?6 AND u.event_id = ?7)"
)
COUNT_UNIQUE = (
    "UPDATE stats_counters SET opened_unique = opened_unique + ?1,"
    " clicked_unique = clicked_unique + ?2"
    " WHERE domain = ?3 AND scope = ?8 AND resolution = ?9 AND bucket = ?10 AND " + _MINE
)
_AGGREGATE_KEYS = ("domain", "tag", "dimension", "key")
_AGGREGATED = tuple(c for c in AGGREGATES if not c.endswith("_unique"))
_AGGREGATED_INDEX = [_AGGREGATE_INDEX[c] for c in _AGGREGATED]
UPSERT_AGGREGATES = _upsert(
    "tag_aggregates", _AGGREGATE_KEYS, _AGGREGATED, guard=_TAG_EXISTS.format(tag="?2")
)
COUNT_UNIQUE_AGGREGATE = (
    "UPDATE tag_aggregates SET opened_unique = opened_unique + ?1,"
    " clicked_unique = clicked_unique + ?2"
    " WHERE domain = ?3 AND tag = ?8 AND dimension = ?9 AND key = ?10 AND " + _MINE
)
INSERT_CAMPAIGN_EVENT = (
    "INSERT INTO campaign_events (domain, campaign, ts, event, recipient, recipient_domain,"
    " link, country, region, city, tags, user_vars) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _aggregate_keys(event: Event) -> list[tuple[str, str]]:
    """The (dimension, key) rows a tagged event adds to: its recipient's domain (provider);
    for hits and complaints also the country and the device."""
    keys = []
    if event.recipient:
        keys.append(("provider", event.recipient.rpartition("@")[2].lower()))
    if event.kind in ("opened", "clicked", "unsubscribed", "complained"):
        geo, client = event.geolocation, event.client_info
        keys.append(("country", (geo.country if geo else "unknown").lower()))
        keys.append(("device", client.device_type if client else "unknown"))
    return keys


def statements(domain: str, events: Iterable[Event]) -> list[Statement]:
    """The writes that count `events` of `domain` (to run in the events' transaction)."""
    counters: dict[tuple[str, str, int], list[int]] = {}
    tag_counters: dict[tuple[str, str, int], list[int]] = {}
    aggregates: dict[tuple[str, str, str], list[int]] = {}
    marks: list[tuple[Any, ...]] = []
    uniques: list[tuple[Any, ...]] = []
    unique_aggregates: list[tuple[Any, ...]] = []
    campaign_rows: list[tuple[Any, ...]] = []
    width, aggregate_width = len(COUNTERS), len(AGGREGATES)
    for event in events:
        columns = counted(event)
        if not columns:
            continue
        places = buckets(event.timestamp)
        tags = event.tags or ()
        scopes = [DOMAIN_SCOPE, *(campaign_scope(c.id) for c in event.campaigns or ())]
        for scope in scopes:
            for resolution, bucket in places:
                row = counters.get((scope, resolution, bucket))
                if row is None:
                    row = counters[(scope, resolution, bucket)] = [0] * width
                for column in columns:
                    row[_INDEX[column]] += 1
        for tag in tags:
            for resolution, bucket in places:
                row = tag_counters.get((tag_scope(tag), resolution, bucket))
                if row is None:
                    row = tag_counters[(tag_scope(tag), resolution, bucket)] = [0] * width
                for column in columns:
                    row[_INDEX[column]] += 1
        aggregated = _AGGREGATED_KINDS.get(event.kind)
        keys = _aggregate_keys(event) if tags and aggregated else []
        for tag in tags:
            for dimension, key in keys:
                row = aggregates.get((tag, dimension, key))
                if row is None:
                    row = aggregates[(tag, dimension, key)] = [0] * aggregate_width
                row[_AGGREGATE_INDEX[aggregated]] += 1  # type: ignore[index]
        if event.kind in _HIT_KINDS and event.message is not None and event.recipient:
            message_id = event.message.headers.message_id
            mark = (domain, message_id, event.recipient.lower(), event.kind, event.id)
            marks.append((*mark, event.timestamp))
            adds = (1, 0) if event.kind == "opened" else (0, 1)
            for scope in (*scopes, *(tag_scope(t) for t in tags)):
                for resolution, bucket in places:
                    uniques.append((*adds, *mark, scope, resolution, bucket))
            for tag in tags:
                for dimension, key in keys:
                    unique_aggregates.append((*adds, *mark, tag, dimension, key))
        campaign_event = campaign_event_name(event) if event.campaigns else None
        if campaign_event is not None:
            recipient = (event.recipient or "").lower()
            geo = event.geolocation
            shared = (
                event.timestamp, campaign_event, recipient, recipient.rpartition("@")[2],
                event.url or "",
                geo.country if geo else "", geo.region if geo else "", geo.city if geo else "",
                orjson.dumps(list(tags)).decode(),
                orjson.dumps(event.user_variables or {}).decode(),
            )
            for campaign in event.campaigns or ():
                campaign_rows.append((domain, campaign.id, *shared))
    return [
        Statement(UPSERT_COUNTERS, _rows(domain, counters, _COUNTED_INDEX), summed_keys=4),
        Statement(
            UPSERT_TAG_COUNTERS, _rows(domain, tag_counters, _COUNTED_INDEX), summed_keys=4
        ),
        Statement(
            UPSERT_AGGREGATES, _rows(domain, aggregates, _AGGREGATED_INDEX), summed_keys=4
        ),
        Statement(MARK_UNIQUE, sorted(marks)),
        Statement(COUNT_UNIQUE, sorted(uniques, key=_unique_order)),
        Statement(COUNT_UNIQUE_AGGREGATE, sorted(unique_aggregates, key=_unique_order)),
        Statement(INSERT_CAMPAIGN_EVENT, campaign_rows),
    ]


def _rows(
    domain: str, table: dict[tuple[Any, ...], list[int]], columns: list[int]
) -> list[tuple[Any, ...]]:
    return [(domain, *key, *(row[i] for i in columns)) for key, row in sorted(table.items())]


def _unique_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[7:10]
