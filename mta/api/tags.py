"""The Tags API (mailgun-api.md §10): /v3/<domain>/tags, one tag, its stats and aggregates, and
the domain's tag limit (/v3/domains/<domain>/limits/tag).

Tags are made by sends (mta.stats.tags), case-insensitively: a tag in a path is found in any
case. The list is paged by tag (scheme B, pivot `tag`). Times are RFC 3339 (ISO 8601 in UTC),
which mailgun-go decodes into time.Time and mailgun.js into Date.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from mta.api import paging
from mta.api.context import base_url, path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import read_form
from mta.api.stats import period_totals
from mta.stats import tags
from mta.stats.counting import tag_scope

MAX_LIMIT = 1000
NOT_FOUND = "tag not found"
# Mailgun's counter names for each aggregate, and ours (mta.stats.counting.AGGREGATES)
_HIT_COUNTERS = {
    "clicked": "clicked",
    "complained": "complained",
    "opened": "opened",
    "unique_clicked": "clicked_unique",
    "unique_opened": "opened_unique",
    "unsubscribed": "unsubscribed",
}
_DIMENSIONS: dict[str, tuple[tags.Dimension, dict[str, str]]] = {
    "countries": ("country", _HIT_COUNTERS),
    "devices": ("device", _HIT_COUNTERS),
    "providers": ("provider", {"accepted": "accepted", "delivered": "delivered", **_HIT_COUNTERS}),
}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_json(tag: tags.Tag) -> dict[str, Any]:
    return {
        "tag": tag.tag,
        "description": tag.description,
        "first-seen": rfc3339(tag.first_seen),
        "last-seen": rfc3339(tag.last_seen),
    }


async def _existing(request: web.Request) -> tuple[str, tags.Tag]:
    """(domain name, tag) named in the path, or the 404 of either."""
    domain = await path_domain(request)
    tag = await tags.get(services(request).store, domain.name, request.match_info["tag"])
    if tag is None:
        raise ApiError(404, NOT_FOUND)
    return domain.name, tag


async def list_tags(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    limit = query_int(request, "limit", 100, MAX_LIMIT, 1)
    which = paging.requested_page(request)
    pivot = request.query.get("tag", "")
    found = await tags.page(services(request).store, domain.name, which, pivot, limit)
    ends = (found[0].tag, found[-1].tag) if found else None
    url = f"{base_url(request)}/v3/{domain.name}/tags"
    return json_response(
        {
            "items": [tag_json(tag) for tag in found],
            "paging": paging.links(url, "tag", limit, which, pivot, ends),
        }
    )


async def get_tag(request: web.Request) -> web.Response:
    _, tag = await _existing(request)
    return json_response(tag_json(tag))


async def update_tag(request: web.Request) -> web.Response:
    """PUT `description` (form or query)."""
    domain = await path_domain(request)
    description = (await read_form(request)).text("description")
    if description is None:
        raise ApiError(400, "'description' parameter is required")
    if len(description) > tags.MAX_DESCRIPTION:
        raise ApiError(
            400, f"Tag description is too long (max {tags.MAX_DESCRIPTION} characters)"
        )
    if not await tags.describe(
        services(request).store, domain.name, request.match_info["tag"], description
    ):
        raise ApiError(404, NOT_FOUND)
    return json_response({"message": "Tag updated"})


async def delete_tag(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    if not await tags.delete(services(request).store, domain.name, request.match_info["tag"]):
        raise ApiError(404, NOT_FOUND)
    return json_response({"message": "Tag deleted"})


async def tag_stats(request: web.Request) -> web.Response:
    domain, tag = await _existing(request)
    body = await period_totals(request, domain, tag_scope(tag.tag))
    return json_response({"tag": tag.tag, **body})


async def tag_aggregates(request: web.Request) -> web.Response:
    domain, tag = await _existing(request)
    dimension, counters = _DIMENSIONS[request.match_info["dimension"]]
    found = await tags.aggregates(services(request).store, domain, tag.tag, dimension)
    return json_response(
        {
            "tag": tag.tag,
            dimension: {
                key: {name: counts[ours] for name, ours in counters.items()}
                for key, counts in found.items()
            },
        }
    )


async def tag_limit(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    svc = services(request)
    return json_response(
        {
            "limit": svc.config.stats.tag_limit,
            "count": await tags.count(svc.store, domain.name),
        }
    )


_TAGS = "/v3/{domain}/tags"
ROUTES = [
    ("GET", _TAGS, list_tags),
    ("GET", _TAGS + "/{tag}", get_tag),
    ("PUT", _TAGS + "/{tag}", update_tag),
    ("DELETE", _TAGS + "/{tag}", delete_tag),
    ("GET", _TAGS + "/{tag}/stats", tag_stats),
    ("GET", _TAGS + "/{tag}/stats/aggregates/{dimension:countries|providers|devices}",
     tag_aggregates),
    ("GET", "/v3/domains/{name}/limits/tag", tag_limit),
]
