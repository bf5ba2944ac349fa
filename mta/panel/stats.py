"""The panel's Stats page: accepted, delivered, failed, opened, clicked, complained and
unsubscribed per hour or day, for the account, a domain or one of its tags, as a server-drawn
SVG chart and a table. Read from the counters as the Stats and Tags APIs read them
(mta.stats.totals), never from events."""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiohttp import web

from mta.panel.charts import line_chart
from mta.panel.page import Handler, PanelError, render, services
from mta.stats import tags, totals
from mta.stats.counting import DOMAIN_SCOPE, tag_scope

# (event, colour of its line)
SERIES = (
    ("accepted", "#2563eb"),
    ("delivered", "#16a34a"),
    ("failed", "#dc2626"),
    ("opened", "#9333ea"),
    ("clicked", "#0891b2"),
    ("complained", "#ea580c"),
    ("unsubscribed", "#6b7280"),
)
SPANS = (("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days"))
RESOLUTIONS = ("hour", "day")
TAGS_LISTED = 300  # tags offered in the picker (more can be typed into the URL)


def _total(counts: Sequence[int], event: str) -> int:
    """An event's total in one bucket, as the Stats API's `total` (failed: both kinds)."""
    rendered = totals.render_bucket(counts, (event,))[event]
    if event == "failed":
        return int(rendered["permanent"]["total"] + rendered["temporary"]["total"])
    return int(rendered["total"])


def _period(span: str, resolution: str) -> totals.Period:
    """The last `span` (a Stats API duration) at `resolution`; the API's words for bad ones."""
    now = time.time()
    reach = totals.Period.of(start=None, end=now, resolution=None, duration=span)
    return totals.Period.of(start=reach.start, end=now, resolution=resolution, duration=None)


def _bucket_text(bucket: int, resolution: str) -> str:
    return time.strftime("%Y-%m-%d %H:00" if resolution == "hour" else "%Y-%m-%d",
                         time.gmtime(bucket))


async def show(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    query = request.query
    domain_name = query.get("domain", "").strip()
    tag_name = query.get("tag", "").strip().lower()
    span = query.get("span", "7d").strip() or "7d"
    resolution = query.get("resolution", "day").strip() or "day"
    domains = [d.name for d in await svc.domains.all()]
    if domain_name and domain_name not in domains:
        raise PanelError(404, f"Domain not found: {domain_name}")
    tag_names = (
        [t.tag for t in await tags.page(svc.store, domain_name, "first", "", TAGS_LISTED)]
        if domain_name else []
    )
    error, status = "", 200
    chart, rows, period_totals = None, [], {}
    if tag_name and not domain_name:
        error, status = "Tags belong to a domain: choose the domain first.", 400
    elif tag_name and await tags.get(svc.store, domain_name, tag_name) is None:
        error, status = f"The domain has no tag {tag_name!r}.", 404
    else:
        try:
            period = _period(span, resolution)
            counts = await totals.series(
                svc.store, period, domain=domain_name or None,
                scope=tag_scope(tag_name) if tag_name else DOMAIN_SCOPE,
            )
        except totals.PeriodError as exc:
            error, status = str(exc), 400
        else:
            buckets = period.buckets()
            values = {
                event: [_total(counts[b], event) if b in counts else 0 for b in buckets]
                for event, _ in SERIES
            }
            chart = line_chart(
                buckets, [(e, color, values[e]) for e, color in SERIES], period.resolution
            )
            period_totals = {line.name: line.total for line in chart.lines}
            rows = [
                (_bucket_text(bucket, period.resolution), [values[e][n] for e, _ in SERIES])
                for n, bucket in reversed(list(enumerate(buckets)))
                if bucket in counts
            ]
    return render(
        request, "stats.html", status=status, domains=domains, domain=domain_name,
        tags=tag_names, tag=tag_name, spans=SPANS, span=span, resolutions=RESOLUTIONS,
        resolution=resolution, error=error, chart=chart, series=SERIES,
        period_totals=period_totals, rows=rows,
    )


ROUTES: list[tuple[str, str, Handler]] = [("GET", "/stats", show)]
