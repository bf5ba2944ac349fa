"""Campaigns (older manual: "Campaign Analytics"; mailgun-api.md §11): made, listed, renamed and
deleted through the API; a send must name a campaign its domain has (HTTP and SMTP); a campaign
send is delivered to a capture MX, opened and clicked through the real tracking endpoints, and
the reports (stats, clicks, opens, events) and the campaign's counts are read back; a rename
carries the data with it and a delete removes it."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mta.dates import rfc2822
from mta.events import Campaign, Event, Geolocation, record
from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.smtp_clients import message, queued_id, submit
from tests.tracked import CHROME, LONDON, city_database, hit, wait_for

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
ALICE = f"alice@{DEST}"
BOB = f"bob@{DEST}"
LINK1 = "https://shop.example.com/a"
LINK2 = "https://shop.example.com/b"
NO_COUNTS = {
    "submitted_count": 0, "delivered_count": 0, "opened_count": 0, "clicked_count": 0,
    "unsubscribed_count": 0, "bounced_count": 0, "complained_count": 0, "dropped_count": 0,
}
NOT_FOUND = {"message": "Campaign not found"}


async def call(
    api: aiohttp.ClientSession, method: str, path: str = "", **kwargs: Any
) -> tuple[int, Any]:
    """One request under /v3/<domain>/campaigns; its status and JSON body."""
    async with api.request(method, f"/v3/{DOMAIN}/campaigns{path}", **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def create(api: aiohttp.ClientSession, campaign_id: str, name: str) -> dict[str, Any]:
    status, body = await call(api, "POST", data={"id": campaign_id, "name": name})
    assert status == 200, body
    return body["campaign"]


async def send(api: aiohttp.ClientSession, *form: tuple[str, str]) -> tuple[int, Any]:
    fields = [("from", f"News <news@{DOMAIN}>"), ("subject", "Spring"), ("html", "<p>Hi</p>"),
              *form]
    async with api.post(f"/v3/{DOMAIN}/messages", data=fields) as resp:
        return resp.status, await resp.json(content_type=None)



async def campaign_send(start_server: Callable[..., Any], mx: Capture, tmp_path: Path) -> Running:
    """A server that delivered a message of campaign 'spring' ("Spring sale") to ALICE and BOB,
    which ALICE opened twice from London and BOB once from nowhere known; ALICE clicked LINK1
    twice and LINK2 once from London, BOB LINK1 once."""
    running = await start_server(
        outbound__enabled=True, dns__static_mx={DEST: [mx.address]},
        tracking__geoip_database=city_database(tmp_path / "city.mmdb"),
        tracking__trusted_proxies=["127.0.0.0/8"], tracking__scanner_window_s=0.0,
    )
    async with running.session() as api:
        await create(api, "spring", "Spring sale")
        status, body = await send(
            api, ("to", ALICE), ("to", BOB), ("o:campaign", "spring"), ("o:tag", "news"),
            ("v:customer", "42"),
        )
        assert status == 200, body
    message_id = body["id"].strip("<>")
    await wait_for(running, "delivered", 2)
    for recipient, ip in ((ALICE, LONDON), (ALICE, LONDON), (BOB, None)):
        await hit(running, "o", message_id, recipient, agent=CHROME, ip=ip)
    for recipient, url, ip in ((ALICE, LINK1, LONDON), (ALICE, LINK1, LONDON),
                               (ALICE, LINK2, LONDON), (BOB, LINK1, None)):
        await hit(running, "c", message_id, recipient, url=url, agent=CHROME, ip=ip)
    return running


async def stored_rows(running: Running, campaign_id: str) -> tuple[int, int]:
    """The campaign_events rows and the counter rows (scope c:<id>) stored under an id."""
    store = running.services.store
    events = await storeview.count(
        store, "campaign_events", "WHERE domain = ? AND campaign = ?", (DOMAIN, campaign_id)
    )
    counters = await storeview.count(
        store, "stats_counters", "WHERE domain = ? AND scope = ?", (DOMAIN, f"c:{campaign_id}")
    )
    return events, counters


# -- the campaigns ---------------------------------------------------------------------------


async def test_campaigns_are_created_read_listed_by_skip_and_limit_updated_and_deleted(api):
    before = time.time()
    status, body = await call(api, "POST", data={"id": "c1", "name": "Spring sale"})
    assert status == 200
    assert body == {"message": "Campaign created", "campaign": {
        "id": "c1", "name": "Spring sale", "created_at": body["campaign"]["created_at"],
        **NO_COUNTS,
    }}
    created_at = body["campaign"]["created_at"]
    assert created_at.endswith(" GMT")
    assert before - 1 <= email.utils.parsedate_to_datetime(created_at).timestamp() <= time.time()
    assert await call(api, "GET", "/c1") == (200, body["campaign"])
    for n in (2, 3, 4):
        await create(api, f"c{n}", f"Campaign {n}")
    status, body = await call(api, "POST", data={"name": "No id given"})
    assert status == 200 and body["message"] == "Campaign created"
    generated = body["campaign"]["id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)

    async def listed(**params: Any) -> tuple[int, list[str]]:
        status, body = await call(api, "GET", params=params)
        assert status == 200, body
        return body["total_count"], [c["id"] for c in body["items"]]

    assert await listed() == (5, ["c1", "c2", "c3", "c4", generated])
    assert await listed(limit=2) == (5, ["c1", "c2"])
    assert await listed(skip=2, limit=2) == (5, ["c3", "c4"])
    assert await listed(skip=4, limit=2) == (5, [generated])
    assert await listed(skip=9) == (5, [])

    status, body = await call(api, "PUT", "/c2", data={"name": "Summer sale"})
    assert status == 200
    assert body["message"] == "Campaign updated"
    assert body["campaign"] | {"created_at": ""} == {
        "id": "c2", "name": "Summer sale", "created_at": "", **NO_COUNTS
    }
    status, body = await call(api, "PUT", "/c2", data={"id": "summer"})
    assert status == 200 and (body["campaign"]["id"], body["campaign"]["name"]) == (
        "summer", "Summer sale"
    )
    assert await call(api, "GET", "/c2") == (404, NOT_FOUND)
    assert (await call(api, "GET", "/summer"))[1]["name"] == "Summer sale"

    assert await call(api, "DELETE", "/summer") == (
        200, {"message": "Campaign deleted", "id": "summer"}
    )
    assert await call(api, "GET", "/summer") == (404, NOT_FOUND)
    assert await listed() == (4, ["c1", "c3", "c4", generated])


async def test_bad_campaign_requests_are_refused_with_a_message(start_server):
    running = await start_server(stats__campaign_limit=2)
    async with running.session() as api:
        refused = [
            ({"id": "x"}, "name parameter is missing"),
            ({"id": "x", "name": "  "}, "name parameter is missing"),
            ({"name": "n" * 65}, "Campaign name is too long (max 64 characters)"),
            ({"id": "i" * 65, "name": "ok"}, "Campaign id is too long (max 64 characters)"),
            ({"id": "café", "name": "ok"}, "Campaign id must be pure ASCII: 'café'"),
            ({"id": "a/b", "name": "ok"},
             "Campaign id must not contain spaces, control characters or '/': 'a/b'"),
            ({"id": "a b", "name": "ok"},
             "Campaign id must not contain spaces, control characters or '/': 'a b'"),
        ]
        for form, text in refused:
            assert await call(api, "POST", data=form) == (400, {"message": text}), form
        longest = await create(api, "i" * 64, "n" * 64)  # 64 is allowed
        await create(api, "first", "First")
        assert await call(api, "POST", data={"id": "first", "name": "Again"}) == (
            400, {"message": "Campaign 'first' already exists"}
        )
        assert await call(api, "POST", data={"id": "third", "name": "Third"}) == (
            400, {"message": "Campaign limit reached: a domain may have at most 2 campaigns"}
        )
        assert await call(api, "PUT", "/first", data={"id": longest["id"]}) == (
            400, {"message": f"Campaign {longest['id']!r} already exists"}
        )
        assert await call(api, "PUT", "/first", data={"id": "ünï"}) == (
            400, {"message": "Campaign id must be pure ASCII: 'ünï'"}
        )
        assert await call(api, "PUT", "/first", data={"name": "n" * 65}) == (
            400, {"message": "Campaign name is too long (max 64 characters)"}
        )
        assert await call(api, "PUT", "/first") == (
            400, {"message": "name or id parameter is missing"}
        )
        assert (await call(api, "GET", "/first"))[1]["name"] == "First"  # nothing changed

        for method, path in [("GET", "/nope"), ("PUT", "/nope"), ("DELETE", "/nope"),
                             *(("GET", f"/nope/{report}") for report in (
                                 "stats", "clicks", "opens", "unsubscribes", "complaints",
                                 "events"))]:
            assert await call(api, method, path, data={"name": "x"}) == (404, NOT_FOUND), path

        bad_queries = [
            ("/first/stats", {"groupby": "link"},
             "Invalid groupby: 'link' (expected one of domain, daily_hour, country, region,"
             " city)"),
            ("/first/opens", {"groupby": "link"},
             "Invalid groupby: 'link' (expected one of recipient, domain, country, region,"
             " city, month, day, hour, minute, daily_hour)"),
            ("/first/complaints", {"groupby": "country"},
             "Invalid groupby: 'country' (expected one of recipient, domain, month, day, hour,"
             " minute, daily_hour)"),
            ("/first/clicks", {"groupby": "week"},
             "Invalid groupby: 'week' (expected one of link, recipient, domain, country,"
             " region, city, month, day, hour, minute, daily_hour)"),
            ("/first/clicks", {"limit": "101"}, "'limit' must be a whole number from 1 to 100"),
            ("/first/events", {"limit": "500"}, "'limit' must be a whole number from 1 to 100"),
            ("/first/events", {"page": "0"}, "'page' must be a whole number from 1 to 1000000"),
            ("/first/events", {"event": "nope"},
             "Invalid event: 'nope' (expected one of sent, delivered, opened, clicked,"
             " unsubscribed, complained, bounced, dropped)"),
            ("/first/events", {"count": "maybe"},
             "'count' must be one of yes, no, true, false, got 'maybe'"),
        ]
        for path, params, text in bad_queries:
            assert await call(api, "GET", path, params=params) == (400, {"message": text}), path
        async with api.get("/v3/other.example.test/campaigns") as resp:
            assert resp.status == 404
            assert await resp.json() == {"message": "Domain not found: other.example.test"}


# -- sending -----------------------------------------------------------------------------------


async def test_a_send_naming_a_campaign_the_domain_lacks_is_refused_over_http_and_smtp(
    mail: Running, clients
):
    store = mail.services.store
    async with mail.session() as api:
        status, body = await send(api, ("to", ALICE), ("o:campaign", "launch"))
        assert (status, body) == (400, {"message": "Campaign 'launch' not found"})
        status, body = await send(api, ("to", ALICE), ("o:campaign", "x" * 65))
        assert (status, body) == (400, {"message": "Campaign id is too long (max 64 characters)"})
    client = await clients.smtp(mail)
    reply = await submit(client, message("X-Mailgun-Campaign-Id: launch"))
    assert reply == "550 5.6.0 Campaign 'launch' not found"
    assert (await storeview.counts(store))["messages"] == 0

    async with mail.session() as api:
        await create(api, "launch", "Launch day")
        status, body = await send(api, ("to", ALICE), ("o:campaign", "launch"))
        assert status == 200, body
    queued_id(await submit(client, message("X-Mailgun-Campaign-Id: launch")))
    accepted = await storeview.events(store, "accepted")
    assert [e["campaigns"] for e in accepted] == [[{"id": "launch", "name": "Launch day"}]] * 2
    rejected = await storeview.events(store, "rejected")
    assert [e["reject"]["description"] for e in rejected] == [
        "Campaign 'launch' not found", "Campaign id is too long (max 64 characters)",
        "Campaign 'launch' not found",
    ]


# -- reports -----------------------------------------------------------------------------------


async def test_a_delivered_opened_and_clicked_campaign_send_makes_the_reports(
    start_server: Callable[..., Any], mx: Capture, tmp_path: Path
):
    running = await campaign_send(start_server, mx, tmp_path)
    for kind in ("delivered", "opened", "clicked"):
        for event in await storeview.events(running.services.store, kind):
            assert event["campaigns"] == [{"id": "spring", "name": "Spring sale"}], kind
    async with running.session() as api:
        status, campaign = await call(api, "GET", "/spring")
        assert status == 200
        assert campaign | {"created_at": ""} == {
            "id": "spring", "name": "Spring sale", "created_at": "", **NO_COUNTS,
            "submitted_count": 2, "delivered_count": 2, "opened_count": 3, "clicked_count": 4,
        }
        assert await call(api, "GET", "/spring/stats") == (200, {
            "total": {"sent": 2, "delivered": 2, "opened": 3, "clicked": 4, "unsubscribed": 0,
                      "complained": 0, "bounced": 0, "dropped": 0},
            "unique": {"clicked": {"recipient": 2, "link": 2}, "opened": {"recipient": 2}},
        })
        assert await call(api, "GET", "/spring/clicks", params={"groupby": "link"}) == (200, [
            {"link": LINK1, "total": 3, "unique": {"link": 1}},
            {"link": LINK2, "total": 1, "unique": {"link": 1}},
        ])
        assert await call(api, "GET", "/spring/clicks", params={"groupby": "recipient"}) == (
            200, [{"recipient": ALICE, "total": 3, "unique": {"link": 2}},
                  {"recipient": BOB, "total": 1, "unique": {"link": 1}}]
        )
        both = [("groupby", "link"), ("groupby", "recipient")]
        assert await call(api, "GET", "/spring/clicks", params=both) == (200, [
            {"link": LINK1, "recipient": ALICE, "total": 2, "unique": {"link": 1}},
            {"link": LINK1, "recipient": BOB, "total": 1, "unique": {"link": 1}},
            {"link": LINK2, "recipient": ALICE, "total": 1, "unique": {"link": 1}},
        ])
        assert await call(api, "GET", "/spring/clicks", params=[*both, ("count", "")]) == (
            200, {"count": 3}
        )
        assert await call(api, "GET", "/spring/clicks", params=[*both, ("limit", "2"),
                                                                ("page", "2")]) == (
            200, [{"link": LINK2, "recipient": ALICE, "total": 1, "unique": {"link": 1}}]
        )
        for place in ({"country": "gb"}, {"region": "ENG"}, {"city": "london"}):
            assert await call(api, "GET", "/spring/clicks",
                              params={"groupby": "recipient", **place}) == (
                200, [{"recipient": ALICE, "total": 3, "unique": {"link": 2}}]
            ), place
        assert await call(api, "GET", "/spring/clicks") == (
            200, [{"total": 4, "unique": {"link": 2}}]
        )
        assert await call(api, "GET", "/spring/opens", params={"groupby": "country"}) == (200, [
            {"country": "GB", "total": 2, "unique": {"recipient": 1}},
            {"country": "unknown", "total": 1, "unique": {"recipient": 1}},
        ])
        assert await call(api, "GET", "/spring/opens",
                          params={"groupby": "city", "limit": "1", "page": "2"}) == (
            200, [{"city": "unknown", "total": 1, "unique": {"recipient": 1}}]
        )
        assert await call(api, "GET", "/spring/unsubscribes", params={"groupby": "domain"}) == (
            200, []
        )

        status, events = await call(api, "GET", "/spring/events")
        assert status == 200 and len(events) == 11
        times = [email.utils.parsedate_to_datetime(e["timestamp"]).timestamp() for e in events]
        assert times == sorted(times, reverse=True)  # newest first
        assert sorted(e["event"] for e in events) == sorted(
            ["sent"] * 2 + ["delivered"] * 2 + ["opened"] * 3 + ["clicked"] * 4
        )
        first = events[0]
        assert first == {"domain": DOMAIN, "tags": ["news"], "timestamp": first["timestamp"],
                         "recipient": BOB, "event": "clicked", "user_vars": {"customer": "42"}}
        assert first["timestamp"].endswith(" GMT")
        counted = [
            ({}, 11), ({"event": ["clicked", "opened"]}, 7), ({"recipient": BOB.upper()}, 4),
            ({"country": "GB"}, 5), ({"country": "GB", "event": "clicked"}, 3),
            ({"region": "eng"}, 5),
        ]
        for filters, number in counted:
            params = [(k, v) for k, values in filters.items()
                      for v in (values if isinstance(values, list) else [values])]
            assert await call(api, "GET", "/spring/events", params=[*params, ("count", "yes")]) \
                == (200, {"count": number}), filters
        status, page3 = await call(api, "GET", "/spring/events",
                                   params={"limit": "5", "page": "3"})
        assert status == 200 and page3 == events[10:]

        # time groups, as the events' own times say (the run may cross an hour)
        clicked = [t for t, e in zip(times, events, strict=True) if e["event"] == "clicked"]
        hours = sorted({int(t // 3600) % 24 for t in times})
        status, by_hour = await call(api, "GET", "/spring/stats", params={"groupby": "daily_hour"})
        assert status == 200
        assert [row["daily_hour"] for row in by_hour] == hours
        assert sum(row["total"]["clicked"] for row in by_hour) == 4
        assert sum(row["total"]["sent"] for row in by_hour) == 2
        status, by_day = await call(api, "GET", "/spring/clicks", params={"groupby": "day"})
        assert status == 200
        assert sorted(row["day"] for row in by_day) == sorted(
            {rfc2822(int(t // 86400) * 86400) for t in clicked}
        )
        status, by_domain = await call(api, "GET", "/spring/stats", params={"groupby": "domain"})
        assert status == 200 and [row["domain"] for row in by_domain] == [DEST]
        assert by_domain[0]["total"]["opened"] == 3

        # the Events API's accepted events carry the campaign's name
        async with api.get(f"/v3/{DOMAIN}/events", params={"event": "accepted"}) as resp:
            items = (await resp.json())["items"]
        assert [e["campaigns"] for e in items] == [[{"id": "spring", "name": "Spring sale"}]] * 2


async def test_time_groups_are_utc_minutes_hours_days_and_months_on_either_engine(
    running: Running, api
):
    """Events recorded at chosen moments (the events' own writer): each lands in the right
    minute, hour, day, month and hour of the day, across a month's end."""
    await create(api, "timed", "Timed")
    campaign = (Campaign("timed", "Timed"),)
    moments = [
        1709251199.75,  # Thu, 29 Feb 2024 23:59:59 (leap day, last second of February)
        1709251230.0,  # Fri, 01 Mar 2024 00:00:30
        1709251235.5,  # Fri, 01 Mar 2024 00:00:35
    ]
    place = Geolocation(country="US", region="CA", city="San Francisco")
    await record(running.services.store, DOMAIN, [
        Event("clicked", timestamp=t, recipient=ALICE, campaigns=campaign, url=LINK1,
              geolocation=place)
        for t in moments
    ] + [
        Event("complained", timestamp=moments[0], recipient=BOB, campaigns=campaign),
        Event("unsubscribed", timestamp=moments[1], recipient=BOB, campaigns=campaign,
              geolocation=place),
        Event("failed", timestamp=moments[1], recipient=BOB, campaigns=campaign,
              severity="permanent", reason="bounce"),
        Event("failed", timestamp=moments[1], recipient=ALICE, campaigns=campaign,
              severity="permanent", reason="suppress-bounce"),
        Event("failed", timestamp=moments[1], recipient=ALICE, campaigns=campaign,
              severity="temporary", reason="generic"),  # no campaign event: not final
    ])
    expected = {
        "month": [("Fri, 01 Mar 2024 00:00:00 GMT", 2), ("Thu, 01 Feb 2024 00:00:00 GMT", 1)],
        "day": [("Fri, 01 Mar 2024 00:00:00 GMT", 2), ("Thu, 29 Feb 2024 00:00:00 GMT", 1)],
        "hour": [("Fri, 01 Mar 2024 00:00:00 GMT", 2), ("Thu, 29 Feb 2024 23:00:00 GMT", 1)],
        "minute": [("Fri, 01 Mar 2024 00:00:00 GMT", 2), ("Thu, 29 Feb 2024 23:59:00 GMT", 1)],
        "daily_hour": [(0, 2), (23, 1)],
    }
    for group, rows in expected.items():
        assert await call(api, "GET", "/timed/clicks", params={"groupby": group}) == (
            200, [{group: key, "total": n, "unique": {"link": 1}} for key, n in rows]
        ), group
    assert await call(api, "GET", "/timed/complaints",
                      params=[("groupby", "recipient"), ("groupby", "daily_hour")]) == (
        200, [{"recipient": BOB, "daily_hour": 23, "total": 1}]
    )
    assert await call(api, "GET", "/timed/unsubscribes", params={"groupby": "city"}) == (
        200, [{"city": "San Francisco", "total": 1}]
    )
    none = dict.fromkeys(("sent", "delivered", "opened", "clicked", "unsubscribed",
                          "complained", "bounced", "dropped"), 0)
    one_clicker = {"clicked": {"recipient": 1, "link": 1}, "opened": {"recipient": 0}}
    assert await call(api, "GET", "/timed/stats", params={"groupby": "daily_hour"}) == (200, [
        {"daily_hour": 0, "total": none | {"clicked": 2, "unsubscribed": 1, "bounced": 1,
                                           "dropped": 1}, "unique": one_clicker},
        {"daily_hour": 23, "total": none | {"clicked": 1, "complained": 1},
         "unique": one_clicker},
    ])
    status, campaign_body = await call(api, "GET", "/timed")
    assert status == 200
    assert campaign_body | {"created_at": ""} == {
        "id": "timed", "name": "Timed", "created_at": "", **NO_COUNTS, "clicked_count": 3,
        "complained_count": 1, "unsubscribed_count": 1, "bounced_count": 1, "dropped_count": 1,
    }
    assert await call(api, "GET", "/timed/events", params={"event": ["bounced", "dropped"]}) \
        == (200, [
            {"domain": DOMAIN, "tags": [], "timestamp": "Fri, 01 Mar 2024 00:00:30 GMT",
             "recipient": ALICE, "event": "dropped", "user_vars": {}},
            {"domain": DOMAIN, "tags": [], "timestamp": "Fri, 01 Mar 2024 00:00:30 GMT",
             "recipient": BOB, "event": "bounced", "user_vars": {}},
        ])


# -- rename and delete ------------------------------------------------------------------------


async def test_a_rename_carries_the_campaigns_data_and_a_new_campaign_of_the_old_id_starts_empty(
    start_server: Callable[..., Any], mx: Capture, tmp_path: Path
):
    running = await campaign_send(start_server, mx, tmp_path)
    before = await stored_rows(running, "spring")
    assert before[0] == 11 and before[1] > 0
    async with running.session() as api:
        _, stats_before = await call(api, "GET", "/spring/stats")
        status, body = await call(api, "PUT", "/spring", data={"id": "autumn",
                                                               "name": "Autumn sale"})
        assert status == 200 and body["message"] == "Campaign updated"
        assert body["campaign"] | {"created_at": ""} == {
            "id": "autumn", "name": "Autumn sale", "created_at": "", **NO_COUNTS,
            "submitted_count": 2, "delivered_count": 2, "opened_count": 3, "clicked_count": 4,
        }
        assert await stored_rows(running, "autumn") == before
        assert await stored_rows(running, "spring") == (0, 0)
        assert await call(api, "GET", "/spring") == (404, NOT_FOUND)
        assert await call(api, "GET", "/autumn/stats") == (200, stats_before)
        assert await call(api, "GET", "/autumn/events", params={"count": "true"}) == (
            200, {"count": 11}
        )
        # the old id is free again, and a campaign made with it has none of the data
        fresh = await create(api, "spring", "Spring again")
        assert fresh | {"created_at": ""} == {
            "id": "spring", "name": "Spring again", "created_at": "", **NO_COUNTS
        }
        assert await call(api, "GET", "/spring/events") == (200, [])


async def test_a_delete_removes_the_campaign_with_all_its_data(
    start_server: Callable[..., Any], mx: Capture, tmp_path: Path
):
    running = await campaign_send(start_server, mx, tmp_path)
    async with running.session() as api:
        assert await call(api, "DELETE", "/spring") == (
            200, {"message": "Campaign deleted", "id": "spring"}
        )
        assert await stored_rows(running, "spring") == (0, 0)
        assert await call(api, "GET", "/spring/stats") == (404, NOT_FOUND)
        assert await call(api, "DELETE", "/spring") == (404, NOT_FOUND)
        status, body = await send(api, ("to", ALICE), ("o:campaign", "spring"))
        assert (status, body) == (400, {"message": "Campaign 'spring' not found"})
        # an event of mail still in flight, written after the delete, stays under the id...
        late = Event("delivered", recipient=ALICE, campaigns=(Campaign("spring", "Spring sale"),))
        await record(running.services.store, DOMAIN, [late])
        assert (await stored_rows(running, "spring"))[0] == 1
        # ...until a campaign takes the id again: it starts from nothing
        again = await create(api, "spring", "Spring sale")
        assert again | {"created_at": ""} == {
            "id": "spring", "name": "Spring sale", "created_at": "", **NO_COUNTS
        }
        assert await stored_rows(running, "spring") == (0, 0)
        assert await call(api, "GET", "/spring/events") == (200, [])
