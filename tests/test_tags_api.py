"""The Tags API (manual: "Tagging"; mailgun-api.md §10): a send's `o:tag` makes a tag, listed
and paged under /v3/<domain>/tags, described, deleted (its counters kept), with its stats and
its all-time aggregates by country, provider and device after real tracked opens and clicks;
the domain's tag limit; and the official SDKs (mailgun-python, mailgun.js) reading them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from mailgun.client import AsyncClient
from yarl import URL

from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.js import mailgun_js
from tests.tracked import CHROME, LONDON, city_database, hit, wait_for

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
TAGS = f"/v3/{DOMAIN}/tags"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


async def send(running: Running, *tags: str, to: str = f"reader@{DEST}") -> str:
    fields = [("from", f"News <news@{DOMAIN}>"), ("to", to), ("subject", "Hello"),
              ("html", "<p>Hi</p>"), *(("o:tag", tag) for tag in tags)]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=fields) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"]).strip("<>")


async def call(
    running: Running, method: str, path: str, params: Any = (), data: Any = None
) -> tuple[int, Any]:
    async with (
        running.session() as api,
        api.request(method, path, params=params, data=data) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def get(running: Running, path: str, params: Any = ()) -> Any:
    status, body = await call(running, "GET", path, params)
    assert status == 200, body
    return body


def when(text: str) -> float:
    """An RFC 3339 time as Go's time.Time reads it (the layout requires the zone)."""
    assert text.endswith("Z") and "T" in text, text
    return datetime.fromisoformat(text).timestamp()


# -- the list and one tag -------------------------------------------------------------------------


async def test_a_send_makes_its_tags_lower_cased_with_first_and_last_seen(running: Running):
    before = int(time.time())
    await send(running, "Newsletter", "Spring")
    await asyncio.sleep(1.1)
    await send(running, "newsletter")
    body = await get(running, TAGS)
    assert [item["tag"] for item in body["items"]] == ["newsletter", "spring"]
    newsletter, spring = body["items"]
    assert set(newsletter) == {"tag", "description", "first-seen", "last-seen"}
    assert newsletter["description"] == ""
    assert before <= when(newsletter["first-seen"]) < when(newsletter["last-seen"])
    assert spring["first-seen"] == spring["last-seen"] == newsletter["first-seen"]
    assert await get(running, f"{TAGS}/newsletter") == newsletter


async def test_a_tag_is_found_in_any_case_and_url_encoded(running: Running):
    await send(running, "Spring Sale", "a/b", "100%")
    async with running.session() as api:
        for encoded, tag in [("SPRING%20Sale", "spring sale"), ("a%2Fb", "a/b"), ("100%25", "100%")]:
            async with api.get(URL(f"{TAGS}/{encoded}", encoded=True)) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["tag"] == tag


async def test_an_unknown_tag_is_404_everywhere(running: Running):
    for method, path in [
        ("GET", f"{TAGS}/nothing"),
        ("PUT", f"{TAGS}/nothing"),
        ("DELETE", f"{TAGS}/nothing"),
        ("GET", f"{TAGS}/nothing/stats?event=accepted"),
        ("GET", f"{TAGS}/nothing/stats/aggregates/countries"),
    ]:
        data = {"description": "x"} if method == "PUT" else None
        assert await call(running, method, path, data=data) == (
            404, {"message": "tag not found"}
        ), path


async def test_an_unknown_domain_is_404(running: Running):
    for path in ("/v3/nowhere.test/tags", "/v3/nowhere.test/tags/news/stats"):
        assert await call(running, "GET", path) == (
            404, {"message": "Domain not found: nowhere.test"}
        )
    assert await call(running, "GET", "/v3/domains/nowhere.test/limits/tag") == (
        404, {"message": "Domain not found"}
    )


async def test_put_describes_a_tag_from_a_form_or_the_query(running: Running):
    await send(running, "news")
    assert await call(running, "PUT", f"{TAGS}/NEWS", data={"description": "Weekly news"}) == (
        200, {"message": "Tag updated"}
    )
    assert (await get(running, f"{TAGS}/news"))["description"] == "Weekly news"
    assert await call(running, "PUT", f"{TAGS}/news", params={"description": "Monthly"}) == (
        200, {"message": "Tag updated"}
    )
    [item] = (await get(running, TAGS))["items"]
    assert item["description"] == "Monthly"


async def test_put_without_a_description_is_refused(running: Running):
    await send(running, "news")
    assert await call(running, "PUT", f"{TAGS}/news") == (
        400, {"message": "'description' parameter is required"}
    )


async def test_a_description_over_1024_characters_is_refused_and_nothing_changes(
    running: Running,
):
    await send(running, "news")
    assert await call(running, "PUT", f"{TAGS}/news", data={"description": "x" * 1025}) == (
        400, {"message": "Tag description is too long (max 1024 characters)"}
    )
    assert (await get(running, f"{TAGS}/news"))["description"] == ""


async def test_deleting_a_tag_removes_it_and_keeps_its_counters(running: Running):
    await send(running, "promo")
    assert await call(running, "DELETE", f"{TAGS}/Promo") == (200, {"message": "Tag deleted"})
    assert await call(running, "GET", f"{TAGS}/promo") == (404, {"message": "tag not found"})
    assert (await get(running, TAGS))["items"] == []
    assert await call(running, "DELETE", f"{TAGS}/promo") == (404, {"message": "tag not found"})
    await send(running, "promo")  # makes it again: the counts go on from where they were
    stats = await get(running, f"{TAGS}/promo/stats", {"event": "accepted", "duration": "1d"})
    assert sum(bucket["accepted"]["total"] for bucket in stats["stats"]) == 2


# -- paging ---------------------------------------------------------------------------------------


def pivot(link: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(link)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", dict(parse_qsl(parts.query))


async def page_tags(running: Running, link: str) -> tuple[list[str], dict[str, str]]:
    async with running.session() as api, api.get(link) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return [item["tag"] for item in body["items"]], body["paging"]


async def test_paging_walks_the_tags_in_order_to_an_empty_page_and_back(running: Running):
    await send(running, "e", "c", "a")
    await send(running, "b", "d")
    tags, paging = await page_tags(running, f"{running.url}{TAGS}?limit=2")
    assert tags == ["a", "b"]
    walked = [tags]
    while tags:
        tags, paging = await page_tags(running, paging["next"])
        walked.append(tags)
    assert walked == [["a", "b"], ["c", "d"], ["e"], []]
    assert (await page_tags(running, paging["previous"]))[0] == ["d", "e"]
    second = f"{running.url}{TAGS}?page=next&tag=b&limit=2"
    _, paging = await page_tags(running, second)
    assert (await page_tags(running, paging["previous"]))[0] == ["a", "b"]
    assert (await page_tags(running, paging["last"]))[0] == ["d", "e"]
    assert (await page_tags(running, paging["first"]))[0] == ["a", "b"]
    assert (await page_tags(running, f"{running.url}{TAGS}?page=prev&tag=c&limit=2"))[0] == [
        "a", "b"
    ]


async def test_paging_links_are_absolute_back_to_the_same_path_with_the_tag_pivot(
    running: Running,
):
    await send(running, "alpha", "beta")
    _, paging = await page_tags(running, f"{running.url}{TAGS}?limit=1")
    base = f"{running.url}{TAGS}"
    assert {name: pivot(link) for name, link in paging.items()} == {
        "first": (base, {"page": "first", "limit": "1"}),
        "last": (base, {"page": "last", "limit": "1"}),
        "next": (base, {"page": "next", "tag": "alpha", "limit": "1"}),
        "previous": (base, {"page": "previous", "tag": "alpha", "limit": "1"}),
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"page": "sideways"}, "'page' must be one of first, last, next, prev, previous"),
        ({"limit": "0"}, "'limit' must be a whole number from 1 to 1000"),
        ({"limit": "1001"}, "'limit' must be a whole number from 1 to 1000"),
    ],
)
async def test_bad_paging_parameters_are_refused(
    running: Running, params: dict[str, str], message: str
):
    assert await call(running, "GET", TAGS, params) == (400, {"message": message})


# -- stats and aggregates -------------------------------------------------------------------------


async def test_tag_stats_are_the_stats_total_shape_for_the_tags_sends(running: Running):
    await send(running, "news", "other")
    await send(running, "news")
    await send(running)
    body = await get(running, f"{TAGS}/News/stats", [("event", "accepted"), ("event", "opened"),
                                                     ("duration", "2h")])
    assert body["tag"] == "news" and body["resolution"] == "hour"
    assert set(body) == {"tag", "start", "end", "resolution", "stats"}
    assert len(body["stats"]) == 3
    assert sum(b["accepted"]["outgoing"] for b in body["stats"]) == 2
    assert sum(b["opened"]["total"] for b in body["stats"]) == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "'event' parameter is required"),
        ({"event": "sent"}, "'sent' is not a valid event; valid events are accepted, delivered,"
                            " failed, opened, clicked, unsubscribed, complained, stored"),
        ({"event": "accepted", "duration": "soon"},
         "Invalid duration: 'soon' (expected e.g. 24h, 7d, 1m)"),
        ({"event": "accepted", "resolution": "year"},
         "Invalid resolution: 'year' (expected hour, day or month)"),
        ({"event": "accepted", "start": "1700000000", "end": "1600000000"},
         "'start' must be before 'end'"),
        ({"event": "accepted", "start": "tomorrow"},
         "'start' is not a valid date: 'tomorrow' (RFC 2822 or epoch seconds)"),
    ],
)
async def test_bad_tag_stats_parameters_are_refused(
    running: Running, params: dict[str, str], message: str
):
    await send(running, "news")
    assert await call(running, "GET", f"{TAGS}/news/stats", params) == (
        400, {"message": message}
    )


async def test_aggregates_count_a_tags_opens_and_clicks_by_country_provider_and_device(
    start_server: Callable[..., Any], mx: Capture, tmp_path: Path
):
    running = await start_server(
        outbound__enabled=True, dns__static_mx={DEST: [mx.address]},
        tracking__geoip_database=city_database(tmp_path / "city.mmdb"),
        tracking__trusted_proxies=["127.0.0.0/8"], tracking__scanner_window_s=0.0,
    )
    reader = f"reader@{DEST}"
    message_id = await send(running, "news", to=reader)
    await send(running, "news", to="someone@other.example.test")  # not delivered: no MX
    await wait_for(running, "delivered", 1)
    await hit(running, "o", message_id, reader, agent=CHROME, ip=LONDON)
    await hit(running, "o", message_id, reader, agent=CHROME, ip=LONDON)
    await hit(running, "c", message_id, reader, agent=IPHONE, ip=LONDON,
              url="https://example.com/")
    await wait_for(running, "clicked", 1)
    path = f"{TAGS}/news/stats/aggregates"
    hits = {"clicked": 0, "complained": 0, "opened": 0, "unique_clicked": 0,
            "unique_opened": 0, "unsubscribed": 0}
    assert await get(running, f"{path}/countries") == {
        "tag": "news",
        "country": {"gb": hits | {"clicked": 1, "opened": 2, "unique_clicked": 1,
                                  "unique_opened": 1}},
    }
    assert await get(running, f"{path}/devices") == {
        "tag": "news",
        "device": {
            "desktop": hits | {"opened": 2, "unique_opened": 1},
            "mobile": hits | {"clicked": 1, "unique_clicked": 1},
        },
    }
    assert await get(running, f"{path}/providers") == {
        "tag": "news",
        "provider": {
            DEST: hits | {"accepted": 1, "delivered": 1, "clicked": 1, "opened": 2,
                          "unique_clicked": 1, "unique_opened": 1},
            "other.example.test": hits | {"accepted": 1, "delivered": 0},
        },
    }


async def test_aggregates_of_a_tag_without_hits_are_empty(running: Running):
    await send(running, "quiet")
    assert await get(running, f"{TAGS}/quiet/stats/aggregates/devices") == {
        "tag": "quiet", "device": {}
    }


# -- the limit ------------------------------------------------------------------------------------


async def test_the_tag_limit_and_how_many_of_it_the_domain_uses(
    start_server: Callable[..., Any],
):
    running = await start_server(stats__tag_limit=3)
    limits = f"/v3/domains/{DOMAIN}/limits/tag"
    assert await get(running, limits) == {"limit": 3, "count": 0}
    await send(running, "one", "two")
    await send(running, "three", "four")  # one tag over the limit: not made
    assert await get(running, limits) == {"limit": 3, "count": 3}
    assert [item["tag"] for item in (await get(running, TAGS))["items"]] == ["one", "three", "two"]


# -- official SDKs --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:DEPRECATED API CALL:DeprecationWarning")
async def test_mailgun_python_lists_describes_and_reads_a_tag(running: Running):
    await send(running, "news")
    async with AsyncClient(auth=("api", running.key), api_url=running.url) as client:
        listed = await client.tags.get(domain=DOMAIN, filters={"limit": 10})
        updated = await client.tags.put(domain=DOMAIN, tag_name="news",
                                        data={"description": "From Python"})
        one = await client.tags.get(domain=DOMAIN, tag_name="news")
        stats = await client.tags_stats.get(domain=DOMAIN, tag_name="news",
                                            filters={"event": "accepted", "duration": "1d"})
    assert [item["tag"] for item in listed.json()["items"]] == ["news"]
    assert updated.json() == {"message": "Tag updated"}
    assert one.json()["description"] == "From Python"
    assert sum(b["accepted"]["total"] for b in stats.json()["stats"]) == 1


async def test_mailgun_js_lists_pages_reads_and_describes_tags(running: Running):
    await send(running, "alpha", "beta")
    listed = await mailgun_js.call(running, "listTags", {"limit": 1})
    [item] = listed["items"]
    assert item["tag"] == "alpha"
    assert item["first-seen"] is not None and item["last-seen"] is not None  # parsed as Dates
    assert listed["pages"]["next"]["iteratorPosition"] == "alpha"
    assert listed["pages"]["next"]["page"] == "?page=next&tag=alpha&limit=1"
    following = await mailgun_js.call(running, "listTags", {"page": "?page=next&tag=alpha&limit=1"})
    assert [i["tag"] for i in following["items"]] == ["beta"]
    assert await mailgun_js.call(running, "updateTag", {"tag": "beta", "description": "B"}) == {
        "message": "Tag updated"
    }
    beta = await mailgun_js.call(running, "getTag", "beta")
    assert (beta["tag"], beta["description"]) == ("beta", "B")
    assert when(beta["first-seen"].replace(".000Z", "Z")) > 0
    stats = await mailgun_js.call(
        running, "tagStats", {"tag": "beta", "query": {"event": "accepted", "duration": "1d"}}
    )
    assert stats["tag"] == "beta" and stats["resolution"] == "day"
    assert sum(b["accepted"]["total"] for b in stats["stats"]) == 1
