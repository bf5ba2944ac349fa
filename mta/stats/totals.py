"""Reading the counters: one period of buckets, rendered in Mailgun's stats shape (§9.1).

A query reads only counter rows (at most one per bucket of the period and scope, by the
primary key), never events: a month at hour resolution is 720 rows, however many events
they count.
"""

from __future__ import annotations

import calendar
import email.utils
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mta.stats.counting import COUNTERS, DOMAIN_SCOPE, day_start, hour_start, month_start
from mta.store import Store

EVENTS = (
    "accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained", "stored",
)
DEFAULT_SPAN_S = 7 * 86400
_DURATION = re.compile(r"^([0-9]{1,6})([hdm])$")
_UNITS = {"h": "hour", "d": "day", "m": "month"}


class PeriodError(ValueError):
    """A period a client asked for that cannot be read (its text is the API's message)."""


@dataclass(frozen=True)
class Period:
    """Whole buckets from the one holding `start` to the one holding `end`, inclusive."""

    start: int
    end: int
    resolution: str

    @classmethod
    def of(
        cls, *, start: float | None, end: float | None, resolution: str | None,
        duration: str | None, now: float | None = None,
    ) -> Period:
        """Mailgun's rules: `duration` (e.g. 7d) overrides `start` and sets the resolution to
        its unit; start defaults to 7 days before end, end to now, resolution to day. A
        period of more than MAX_BUCKETS buckets is refused before anything is read."""
        if end is None:
            end = time.time() if now is None else now
        if resolution is not None and resolution not in RESOLUTION_STARTS:
            raise PeriodError(f"Invalid resolution: {resolution!r} (expected hour, day or month)")
        if duration:
            match = _DURATION.match(duration.strip())
            if match is None:
                raise PeriodError(f"Invalid duration: {duration!r} (expected e.g. 24h, 7d, 1m)")
            count, unit = int(match.group(1)), match.group(2)
            resolution = _UNITS[unit]
            if count >= MAX_BUCKETS:
                raise _too_many(resolution)
            start = _months_before(end, count) if unit == "m" else (
                end - count * (3600 if unit == "h" else 86400)
            )
        resolution = resolution or "day"
        start = end - DEFAULT_SPAN_S if start is None else start
        if start > end:
            raise PeriodError("'start' must be before 'end'")
        floor = RESOLUTION_STARTS[resolution]
        period = cls(floor(start), floor(end), resolution)
        if period.size() > MAX_BUCKETS:
            raise _too_many(resolution)
        return period

    def size(self) -> int:
        """How many buckets the period has (without listing them)."""
        if self.resolution == "month":
            first, last = time.gmtime(self.start), time.gmtime(self.end)
            return (last.tm_year - first.tm_year) * 12 + last.tm_mon - first.tm_mon + 1
        return (self.end - self.start) // (3600 if self.resolution == "hour" else 86400) + 1

    def buckets(self) -> list[int]:
        if self.resolution == "month":
            out, bucket = [], self.start
            while bucket <= self.end:
                out.append(bucket)
                bucket = _next_month(bucket)
            return out
        step = 3600 if self.resolution == "hour" else 86400
        return list(range(self.start, self.end + 1, step))


RESOLUTION_STARTS = {"hour": hour_start, "day": day_start, "month": month_start}
MAX_BUCKETS = 24 * 400  # a period longer than this many buckets is refused (bounded work)


def _too_many(resolution: str) -> PeriodError:
    return PeriodError(
        f"Too many {resolution}s in the period (max {MAX_BUCKETS}): use a coarser resolution"
    )


def _next_month(bucket: int) -> int:
    year, month = time.gmtime(bucket)[:2]
    return calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))


def _months_before(ts: float, count: int) -> float:
    year, month, *rest = time.gmtime(ts)[:6]
    index = year * 12 + (month - 1) - count
    day = min(rest[0], calendar.monthrange(index // 12, index % 12 + 1)[1])
    return float(calendar.timegm((index // 12, index % 12 + 1, day, *rest[1:4])))


def stats_time(ts: float) -> str:
    """'Tue, 14 Feb 2012 00:00:00 UTC' (stats use UTC where objects say GMT)."""
    return email.utils.formatdate(ts, usegmt=True)[:-3] + "UTC"


_COLUMNS = ", ".join(COUNTERS)
_SUMS = ", ".join(f"sum({c})" for c in COUNTERS)
_DOMAIN_ROWS = (
    f"SELECT bucket, {_COLUMNS} FROM stats_counters WHERE domain = ? AND scope = ?"
    " AND resolution = ? AND bucket >= ? AND bucket <= ?"
)
_ACCOUNT_ROWS = (
    f"SELECT bucket, {_SUMS} FROM stats_counters WHERE scope = ? AND resolution = ?"
    " AND bucket >= ? AND bucket <= ? GROUP BY bucket"
)


async def series(
    store: Store, period: Period, *, domain: str | None, scope: str = DOMAIN_SCOPE
) -> dict[int, tuple[int, ...]]:
    """Counters (in COUNTERS order) by bucket start, for buckets that have any. `domain`
    None: the whole account (every domain summed)."""
    if domain is None:
        rows = await store.fetchall(
            _ACCOUNT_ROWS, (scope, period.resolution, period.start, period.end)
        )
    else:
        rows = await store.fetchall(
            _DOMAIN_ROWS, (domain, scope, period.resolution, period.start, period.end)
        )
    return {int(row[0]): tuple(int(v) for v in row[1:]) for row in rows}


_ZERO = (0,) * len(COUNTERS)
_I = {name: n for n, name in enumerate(COUNTERS)}


def render_bucket(counts: Sequence[int], events: Iterable[str]) -> dict[str, Any]:
    """One bucket's requested events in Mailgun's shape (§9.1)."""
    c = {name: counts[n] for name, n in _I.items()}
    out: dict[str, Any] = {}
    for event in events:
        if event == "accepted":
            out[event] = {
                "incoming": c["accepted_incoming"],
                "outgoing": c["accepted_outgoing"],
                "total": c["accepted_incoming"] + c["accepted_outgoing"],
            }
        elif event == "delivered":
            out[event] = {
                "smtp": c["delivered_smtp"],
                "http": c["delivered_http"],
                "total": c["delivered_smtp"] + c["delivered_http"],
            }
        elif event == "failed":
            out[event] = {
                "permanent": {
                    "bounce": c["failed_permanent_bounce"],
                    "delayed-bounce": c["failed_permanent_delayed_bounce"],
                    "suppress-bounce": c["failed_permanent_suppress_bounce"],
                    "suppress-unsubscribe": c["failed_permanent_suppress_unsubscribe"],
                    "suppress-complaint": c["failed_permanent_suppress_complaint"],
                    "old": c["failed_permanent_old"],
                    "total": c["failed_permanent"],
                },
                "temporary": {
                    "espblock": c["failed_temporary_espblock"],
                    "total": c["failed_temporary"],
                },
            }
        elif event in ("opened", "clicked"):
            out[event] = {"total": c[event], "unique": c[f"{event}_unique"]}
        else:
            out[event] = {"total": c[event]}
    return out


def render(
    period: Period, counts: dict[int, tuple[int, ...]], events: Sequence[str]
) -> dict[str, Any]:
    """The body of GET …/stats/total: every bucket of the period, zeros included."""
    return {
        "start": stats_time(period.start),
        "end": stats_time(period.end),
        "resolution": period.resolution,
        "stats": [
            {"time": stats_time(bucket), **render_bucket(counts.get(bucket, _ZERO), events)}
            for bucket in period.buckets()
        ],
    }


# -- the legacy GET /v3/<domain>/stats (mailgun-api.md §9.2) ----------------------------------

# the older manual's event names, in the order a day's items are listed
LEGACY_EVENTS = (
    "sent", "delivered", "opened", "clicked", "bounced", "dropped", "complained", "unsubscribed",
)


def legacy_count(counts: Sequence[int], event: str) -> int:
    """One legacy event's count from a counter row: `sent` is outgoing mail accepted, `bounced`
    the permanent failures that bounced (delayed bounces too), `dropped` every other
    permanent failure (suppressed, too old, refused without a bounce)."""
    c = {name: counts[n] for name, n in _I.items()}
    bounced = c["failed_permanent_bounce"] + c["failed_permanent_delayed_bounce"]
    if event == "sent":
        return c["accepted_outgoing"]
    if event == "delivered":
        return c["delivered_smtp"] + c["delivered_http"]
    if event == "bounced":
        return bounced
    if event == "dropped":
        return c["failed_permanent"] - bounced
    return c[event]


@dataclass(frozen=True)
class DayCount:
    """One item of the legacy stats: an event's count on one day, and its tags' counts."""

    event: str
    day: int
    total: int
    tags: dict[str, int]


_DAYS = (
    f"SELECT bucket, {_COLUMNS} FROM stats_counters WHERE domain = ? AND scope = ?"
    " AND resolution = 'day' AND bucket >= ? ORDER BY bucket DESC"
)
# the domain's current tags only: a deleted tag leaves the legacy stats, as it did at Mailgun
_TAG_DAYS = (
    f"SELECT scope, bucket, {_COLUMNS} FROM stats_counters WHERE domain = ?"
    " AND scope IN (SELECT 't:' || tag FROM tags WHERE domain = ?)"
    " AND resolution = 'day' AND bucket >= ? AND bucket <= ?"
)


async def day_counts(
    store: Store, domain: str, *, events: Sequence[str], since: int, skip: int, limit: int
) -> tuple[int, list[DayCount]]:
    """(how many non-zero items there are, the page of them), newest day first. The domain's
    day rows are bounded by the day retention; tag rows are read for the page's days only."""
    rows = await store.fetchall(_DAYS, (domain, DOMAIN_SCOPE, since))
    items = [
        (int(row[0]), event, count)
        for row in rows
        for event in events
        if (count := legacy_count(row[1:], event))
    ]
    page = items[skip : skip + limit]
    by_day: dict[int, dict[str, Sequence[int]]] = {}
    if page:
        days = [day for day, _, _ in page]
        tag_rows = await store.fetchall(_TAG_DAYS, (domain, domain, min(days), max(days)))
        for row in sorted(tag_rows, key=lambda row: str(row[0])):
            by_day.setdefault(int(row[1]), {})[str(row[0])[2:]] = row[2:]
    return len(items), [
        DayCount(event, day, count, {
            tag: n
            for tag, counts in by_day.get(day, {}).items()
            if (n := legacy_count(counts, event))
        })
        for day, event, count in page
    ]
