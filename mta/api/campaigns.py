"""Campaigns API (mailgun-api.md §11, legacy): /v3/<domain>/campaigns and its reports.

Campaigns are listed with skip/limit (scheme A). The reports answer JSON arrays (the events
list and the aggregated clicks, opens, unsubscribes and complaints, paged by `limit` at most
100 and `page` from 1) or, with the `count` flag, `{"count": N}`, the number of rows there
are. Bad input is a 400 naming it; an unknown campaign a 404 "Campaign not found".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

from mta.api.context import path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import parse_bool, read_form
from mta.stats import campaigns
from mta.stats.campaigns import MAX_REPORT_ROWS, CampaignError, CampaignNotFound, Filters


@contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except CampaignNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except CampaignError as exc:
        raise ApiError(400, str(exc)) from None


async def _domain(request: web.Request) -> str:
    return (await path_domain(request)).name


def _text(value: str | None) -> str | None:
    """A parameter's text without surrounding space; None when absent or blank."""
    text = (value or "").strip()
    return text or None


def _count_flag(request: web.Request) -> bool:
    """`count` given bare (`?count`) is on, as a flag is; else a boolean spelling."""
    raw = request.query.get("count")
    return raw is not None and (not raw.strip() or bool(parse_bool("count", raw)))


def _filters(request: web.Request) -> Filters:
    query = request.query
    return Filters(
        country=_text(query.get("country")),
        region=_text(query.get("region")),
        city=_text(query.get("city")),
    )


def _paging(request: web.Request) -> tuple[int, int]:
    limit = query_int(request, "limit", MAX_REPORT_ROWS, MAX_REPORT_ROWS, low=1)
    return limit, query_int(request, "page", 1, 10**6, low=1)


async def list_campaigns(request: web.Request) -> web.Response:
    domain = await _domain(request)
    limit = query_int(request, "limit", 100, 1000)
    skip = query_int(request, "skip", 0, 10**9)
    total, found = await campaigns.page(services(request).store, domain, skip, limit)
    return json_response({"total_count": total, "items": [c.render() for c in found]})


async def create_campaign(request: web.Request) -> web.Response:
    domain = await _domain(request)
    form = await read_form(request)
    name = form.text("name") or ""
    found = services(request)
    with _refusals():
        campaign = await campaigns.create(
            found.store, domain, name, _text(form.text("id")),
            limit=found.config.stats.campaign_limit,
        )
    return json_response({"message": "Campaign created", "campaign": campaign.render()})


async def get_campaign(request: web.Request) -> web.Response:
    domain = await _domain(request)
    with _refusals():
        campaign = await campaigns.get(services(request).store, domain, request.match_info["id"])
    return json_response(campaign.render())


async def update_campaign(request: web.Request) -> web.Response:
    domain = await _domain(request)
    form = await read_form(request)
    with _refusals():
        campaign = await campaigns.update(
            services(request).store, domain, request.match_info["id"],
            name=form.text("name"), new_id=_text(form.text("id")),
        )
    return json_response({"message": "Campaign updated", "campaign": campaign.render()})


async def delete_campaign(request: web.Request) -> web.Response:
    domain = await _domain(request)
    campaign_id = request.match_info["id"]
    with _refusals():
        await campaigns.delete(services(request).store, domain, campaign_id)
    return json_response({"message": "Campaign deleted", "id": campaign_id})


async def campaign_stats(request: web.Request) -> web.Response:
    domain = await _domain(request)
    with _refusals():
        body = await campaigns.stats(
            services(request).store, domain, request.match_info["id"],
            _text(request.query.get("groupby")),
        )
    return json_response(body)


def _report(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of one aggregated report (clicks, opens, unsubscribes, complaints)."""

    async def handler(request: web.Request) -> web.Response:
        domain = await _domain(request)
        store, campaign_id = services(request).store, request.match_info["id"]
        groups = [g.strip() for g in request.query.getall("groupby", []) if g.strip()]
        filters = _filters(request)
        limit, page = _paging(request)
        with _refusals():
            if _count_flag(request):
                number = await campaigns.report_count(
                    store, domain, campaign_id, kind, groups, filters
                )
                return json_response({"count": number})
            rows = await campaigns.report(
                store, domain, campaign_id, kind, groups, filters, limit, page
            )
        return json_response(rows)

    return handler


async def campaign_events(request: web.Request) -> web.Response:
    domain = await _domain(request)
    store, campaign_id = services(request).store, request.match_info["id"]
    kinds = [k.strip() for k in request.query.getall("event", []) if k.strip()]
    recipient = _text(request.query.get("recipient"))
    filters = Filters(
        country=_text(request.query.get("country")), region=_text(request.query.get("region"))
    )
    limit, page = _paging(request)
    with _refusals():
        if _count_flag(request):
            number = await campaigns.events_count(
                store, domain, campaign_id, kinds, recipient, filters
            )
            return json_response({"count": number})
        rows = await campaigns.events(
            store, domain, campaign_id, kinds, recipient, filters, limit, page
        )
    return json_response(rows)


ROUTES = [
    ("GET", "/v3/{domain}/campaigns", list_campaigns),
    ("POST", "/v3/{domain}/campaigns", create_campaign),
    ("GET", "/v3/{domain}/campaigns/{id}", get_campaign),
    ("PUT", "/v3/{domain}/campaigns/{id}", update_campaign),
    ("DELETE", "/v3/{domain}/campaigns/{id}", delete_campaign),
    ("GET", "/v3/{domain}/campaigns/{id}/stats", campaign_stats),
    ("GET", "/v3/{domain}/campaigns/{id}/clicks", _report("clicks")),
    ("GET", "/v3/{domain}/campaigns/{id}/opens", _report("opens")),
    ("GET", "/v3/{domain}/campaigns/{id}/unsubscribes", _report("unsubscribes")),
    ("GET", "/v3/{domain}/campaigns/{id}/complaints", _report("complaints")),
    ("GET", "/v3/{domain}/campaigns/{id}/events", campaign_events),
]
