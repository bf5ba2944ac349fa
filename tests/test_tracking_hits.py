"""Tracking endpoints (manual: "Tracking Opens", "Tracking Clicks", "Tracking Unsubscribes"):
a delivered message's open pixel, click links and unsubscribe link, fetched the way a mail
client or browser fetches them, become opened / clicked / unsubscribed events carrying the
message's tags and variables, and an unsubscribe lands on the domain's list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from mta.api.tracking import mount
from mta.tracking.clients import ClientDescriber
from mta.tracking.hits import Hits
from mta.tracking.links import LinkKind, TrackingLinks
from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.tracked import city_database

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
RECIPIENT = f"reader@{DEST}"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
UNKNOWN_PLACE = {"country": "unknown", "region": "unknown", "city": "unknown"}


@dataclass
class Tracked:
    """A server that delivered one message to RECIPIENT, and the tracking endpoints beside it
    (on their own loopback port, sharing its store)."""

    running: Running
    links: TrackingLinks
    url: str
    message_id: str

    def token(self, kind: LinkKind, extra: Any = None, **fields: Any) -> str:
        made = {"domain": DOMAIN, "message_id": self.message_id, "recipient": RECIPIENT}
        made |= fields
        now = made.pop("now", None)
        return self.links.token(kind, made["domain"], made["message_id"], made["recipient"],
                                extra=extra, now=now)

    async def events(self, kind: str) -> list[dict[str, Any]]:
        """The domain's events of one kind, through the Events API."""
        async with (
            self.running.session() as api,
            api.get(f"/v3/{DOMAIN}/events", params={"event": kind}) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return (await resp.json())["items"]


@pytest.fixture
async def track(
    start_server: Callable[..., Any], mx: Capture
) -> AsyncIterator[Callable[..., Any]]:
    """Start a server (config overrides as section__key=value; clicks are a person's however
    soon they come, unless the test sets tracking__scanner_window_s), deliver a tagged message
    with a user variable, and serve the tracking endpoints for it."""
    runners: list[web.AppRunner] = []
    describers: list[ClientDescriber] = []

    async def start(**overrides: Any) -> Tracked:
        overrides.setdefault("tracking__scanner_window_s", 0.0)
        running = await start_server(
            outbound__enabled=True, dns__static_mx={DEST: [mx.address]}, **overrides
        )
        message_id = await deliver(running)
        services, config = running.services, running.services.config.tracking
        links = TrackingLinks(
            await services.account.tracking_secret(), config.link_lifetime_days * 86400
        )
        describer = ClientDescriber(config.geoip_database, config.scanner_window_s)
        describers.append(describer)
        app = web.Application()
        mount(app, Hits(services.store, services.domains, links, describer),
              config.trusted_proxies)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return Tracked(running, links, f"http://127.0.0.1:{port}", message_id)

    yield start
    for runner in runners:
        await runner.cleanup()
    for describer in describers:
        describer.close()


@pytest.fixture
async def tracked(track: Callable[..., Any]) -> Tracked:
    return await track()


async def deliver(running: Running) -> str:
    """Send a message with two tags, a campaign (made first) and a user variable; wait for its
    delivery."""
    form = [
        ("from", f"News <news@{DOMAIN}>"), ("to", RECIPIENT), ("subject", "Spring news"),
        ("html", "<p>Hello</p>"), ("o:tag", "newsletter"), ("o:tag", "spring"),
        ("o:campaign", "launch"), ("v:customer", "42"),
    ]
    async with running.session() as api:
        # named as its id: hits copy the delivered event's campaigns, named by mta.queue
        campaign = {"id": "launch", "name": "launch"}
        async with api.post(f"/v3/{DOMAIN}/campaigns", data=campaign) as resp:
            assert resp.status == 200, await resp.text()
        async with api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
            assert resp.status == 200, await resp.text()
            message_id = (await resp.json())["id"].strip("<>")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await storeview.events(running.services.store, "delivered"):
        assert loop.time() < deadline, "the message was not delivered"
        await asyncio.sleep(0.05)
    return message_id


async def fetch(
    method: str, url: str, agent: str = CHROME, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    """One request as a browser makes it (its User-Agent), redirects not followed."""
    headers = {"User-Agent": agent, **kwargs.pop("headers", {})}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, allow_redirects=False, **kwargs) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def assert_copied_from_the_message(event: dict[str, Any], message_id: str) -> None:
    assert event["recipient"] == RECIPIENT
    assert event["tags"] == ["newsletter", "spring"]
    assert event["campaigns"] == [{"id": "launch", "name": "launch"}]
    assert event["user-variables"] == {"customer": "42"}
    assert event["message"]["headers"] == {"message-id": message_id}


async def test_the_open_pixel_is_an_uncacheable_transparent_gif_and_records_the_open(
    tracked: Tracked,
):
    status, headers, body = await fetch("GET", f"{tracked.url}/o/{tracked.token('o')}")
    assert status == 200
    assert headers["Content-Type"] == "image/gif"
    assert body[:6] == b"GIF89a" and body[6:10] == b"\x01\x00\x01\x00"  # 1 x 1
    assert body[-1:] == b";" and len(body) == 43
    assert headers["Cache-Control"] == "no-cache, no-store, must-revalidate, private"
    assert headers["Pragma"] == "no-cache" and headers["Expires"] == "0"
    [event] = await tracked.events("opened")
    assert_copied_from_the_message(event, tracked.message_id)
    assert event["ip"] == "127.0.0.1"
    assert event["geolocation"] == UNKNOWN_PLACE  # loopback is nowhere
    assert event["client-info"] == {
        "client-type": "browser", "client-os": "Windows", "device-type": "desktop",
        "client-name": "Chrome", "user-agent": CHROME, "bot": "",
    }
    assert event["log-level"] == "info"


async def test_every_open_is_recorded_not_only_the_first(tracked: Tracked):
    url = f"{tracked.url}/o/{tracked.token('o')}"
    for _ in range(3):
        assert (await fetch("GET", url, THUNDERBIRD))[0] == 200
    opened = await tracked.events("opened")
    assert len(opened) == 3
    assert {e["client-info"]["client-type"] for e in opened} == {"email client"}


async def test_a_click_redirects_to_the_url_byte_for_byte_and_records_it(tracked: Tracked):
    urls = [
        "https://shop.example.com/a%20b/c+d?q=a+b&r=%2F%3F&empty=&x=1#frag-ment",
        "https://example.com/ünïcödé/路径?q=ü&tick=✓#färg",
        "http://example.com/?next=https%3A%2F%2Fother.example%2F%3Fa%3Db%26c%3Dd",
        "https://example.com/p;params?a=1&a=2&bad=%zz&%7E=~",
    ]
    for url in urls:
        status, headers, _ = await fetch("GET", f"{tracked.url}/c/{tracked.token('c', url)}")
        assert status == 302
        assert headers["Location"] == url
        assert "no-store" in headers["Cache-Control"]
    clicked = await tracked.events("clicked")
    assert sorted(e["url"] for e in clicked) == sorted(urls)  # the API lists newest first
    assert_copied_from_the_message(clicked[0], tracked.message_id)
    assert clicked[0]["client-info"]["bot"] == ""


async def test_a_head_request_on_a_link_answers_but_records_nothing(tracked: Tracked):
    url = "https://example.com/landing"
    status, headers, _ = await fetch("HEAD", f"{tracked.url}/c/{tracked.token('c', url)}")
    assert (status, headers["Location"]) == (302, url)
    assert (await fetch("HEAD", f"{tracked.url}/o/{tracked.token('o')}"))[0] == 200
    assert await storeview.events(tracked.running.services.store, "clicked") == []
    assert await storeview.events(tracked.running.services.store, "opened") == []


def tampered(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


async def assert_not_found_page(url: str, method: str = "GET") -> None:
    status, headers, body = await fetch(method, url)
    assert status == 404
    assert headers["Content-Type"].startswith("text/html")
    assert b"not valid" in body


async def test_a_tampered_token_is_a_404_page_and_records_nothing(tracked: Tracked):
    await assert_not_found_page(f"{tracked.url}/o/{tampered(tracked.token('o'))}")
    click = tracked.token("c", "https://example.com/")
    await assert_not_found_page(f"{tracked.url}/c/{tampered(click)}")
    unsubscribe = tampered(tracked.token("u", "*"))
    await assert_not_found_page(f"{tracked.url}/u/{unsubscribe}")
    await assert_not_found_page(f"{tracked.url}/u/{unsubscribe}", "POST")
    await assert_not_found_page(f"{tracked.url}/c/not-a-token-at-all")
    store = tracked.running.services.store
    for kind in ("opened", "clicked", "unsubscribed"):
        assert await storeview.events(store, kind) == []
    assert await storeview.count(store, "unsubscribes") == 0


async def test_a_token_of_another_kind_is_a_404(tracked: Tracked):
    await assert_not_found_page(f"{tracked.url}/c/{tracked.token('o')}")
    await assert_not_found_page(f"{tracked.url}/o/{tracked.token('c', 'https://example.com/')}")
    await assert_not_found_page(f"{tracked.url}/u/{tracked.token('c', 'https://example.com/')}",
                                "POST")
    assert await storeview.events(tracked.running.services.store, "clicked") == []


async def test_an_expired_token_is_a_404(tracked: Tracked):
    lifetime = tracked.running.services.config.tracking.link_lifetime_days * 86400
    issued = time.time() - lifetime - 60
    await assert_not_found_page(f"{tracked.url}/o/{tracked.token('o', now=issued)}")
    await assert_not_found_page(
        f"{tracked.url}/c/{tracked.token('c', 'https://example.com/', now=issued)}"
    )
    assert await storeview.events(tracked.running.services.store, "opened") == []


async def test_a_deleted_domains_links_still_redirect_and_answer_but_record_nothing(
    tracked: Tracked,
):
    await tracked.running.services.domains.delete(DOMAIN)
    url = "https://example.com/still-there?a=1"
    status, headers, _ = await fetch("GET", f"{tracked.url}/c/{tracked.token('c', url)}")
    assert (status, headers["Location"]) == (302, url)
    assert (await fetch("GET", f"{tracked.url}/o/{tracked.token('o')}"))[0] == 200
    store = tracked.running.services.store
    assert await storeview.events(store, "clicked") == []
    assert await storeview.events(store, "opened") == []


async def test_a_message_never_sent_gets_its_pixel_and_redirect_but_no_event(tracked: Tracked):
    other = {"message_id": "never-sent@mg.example.test"}
    assert (await fetch("GET", f"{tracked.url}/o/{tracked.token('o', **other)}"))[0] == 200
    url = "https://example.com/"
    status, headers, _ = await fetch("GET", f"{tracked.url}/c/{tracked.token('c', url, **other)}")
    assert (status, headers["Location"]) == (302, url)
    store = tracked.running.services.store
    assert await storeview.events(store, "opened") == []
    assert await storeview.events(store, "clicked") == []


async def test_the_unsubscribe_page_asks_first_and_escapes_what_it_shows(tracked: Tracked):
    hostile = '"<script>alert(1)</script>"@dest.example.test'
    token = tracked.token("u", ["<img src=x onerror=alert(2)>"], recipient=hostile)
    status, headers, body = await fetch("GET", f"{tracked.url}/u/{token}")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "<script>" not in page and "<img" not in page
    assert "&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;@dest.example.test" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert '<form method="post">' in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert await storeview.events(tracked.running.services.store, "unsubscribed") == []
    assert await storeview.count(tracked.running.services.store, "unsubscribes") == 0


async def unsubscribes(tracked: Tracked) -> list[dict[str, Any]]:
    async with (
        tracked.running.session() as api,
        api.get(f"/v3/{DOMAIN}/unsubscribes") as resp,
    ):
        assert resp.status == 200
        return (await resp.json())["items"]


async def test_confirming_the_page_unsubscribes_from_the_whole_domain(tracked: Tracked):
    status, _, body = await fetch("POST", f"{tracked.url}/u/{tracked.token('u', '*')}", data={})
    assert status == 200
    assert b"You have been unsubscribed" in body
    [event] = await tracked.events("unsubscribed")
    assert_copied_from_the_message(event, tracked.message_id)
    assert event["client-info"]["client-name"] == "Chrome"
    [entry] = await unsubscribes(tracked)
    assert (entry["address"], entry["tags"]) == (RECIPIENT, ["*"])


async def test_a_tag_unsubscribe_link_unsubscribes_from_the_messages_tags(tracked: Tracked):
    token = tracked.token("u", ["newsletter", "spring"])
    assert (await fetch("POST", f"{tracked.url}/u/{token}", data={}))[0] == 200
    [entry] = await unsubscribes(tracked)
    assert (entry["address"], sorted(entry["tags"])) == (RECIPIENT, ["newsletter", "spring"])


async def test_one_click_unsubscribe_needs_no_page(tracked: Tracked):
    status, _, _ = await fetch(
        "POST", f"{tracked.url}/u/{tracked.token('u', '*')}",
        data={"List-Unsubscribe": "One-Click"},
    )
    assert status == 200
    [entry] = await unsubscribes(tracked)
    assert (entry["address"], entry["tags"]) == (RECIPIENT, ["*"])
    assert len(await tracked.events("unsubscribed")) == 1


async def test_a_list_unsubscribe_link_records_the_list_and_leaves_the_domain_lists_alone(
    tracked: Tracked,
):
    token = tracked.token("u", "list:news@mg.example.test")
    status, _, body = await fetch("POST", f"{tracked.url}/u/{token}", data={})
    assert status == 200 and b"news@mg.example.test" in body
    [event] = await tracked.events("unsubscribed")
    assert event["mailing-list"] == {"address": "news@mg.example.test"}
    assert await unsubscribes(tracked) == []


async def test_an_open_through_gmails_image_proxy_is_marked_as_gmails(tracked: Tracked):
    assert (await fetch("GET", f"{tracked.url}/o/{tracked.token('o')}", GMAIL_PROXY))[0] == 200
    [event] = await tracked.events("opened")
    assert event["client-info"]["bot"] == "gmail"
    assert event["client-info"]["user-agent"] == GMAIL_PROXY


async def test_a_click_within_the_scanner_window_of_delivery_is_marked_as_a_scanners(
    track: Callable[..., Any],
):
    tracked = await track(tracking__scanner_window_s=3600.0)
    url = "https://example.com/offer"
    assert (await fetch("GET", f"{tracked.url}/c/{tracked.token('c', url)}"))[0] == 302
    [event] = await tracked.events("clicked")
    assert event["client-info"]["bot"] == "scanner"
    assert event["client-info"]["client-name"] == "Chrome"  # what it posed as


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(tracked: Tracked):
    forwarded = {"X-Forwarded-For": "81.2.69.160"}
    await fetch("GET", f"{tracked.url}/o/{tracked.token('o')}", headers=forwarded)
    [event] = await tracked.events("opened")
    assert event["ip"] == "127.0.0.1"


async def test_a_hit_through_a_trusted_proxy_is_placed_by_the_configured_database(
    track: Callable[..., Any], tmp_path: Path
):
    tracked = await track(
        tracking__geoip_database=city_database(tmp_path / "city.mmdb"),
        tracking__trusted_proxies=["127.0.0.0/8"],
    )
    # the left hop could be made up by the client; the proxy appended the right one
    forwarded = {"X-Forwarded-For": "203.0.113.7, 81.2.69.160"}
    await fetch("GET", f"{tracked.url}/o/{tracked.token('o')}", headers=forwarded)
    [event] = await tracked.events("opened")
    assert event["ip"] == "81.2.69.160"
    assert event["geolocation"] == {"country": "GB", "region": "ENG", "city": "London"}


async def test_opens_arriving_together_each_carry_their_own_recipients_variables(
    tracked: Tracked,
):
    running = tracked.running
    readers = [f"reader{n}@{DEST}" for n in range(20)]
    variables = {address: {"id": str(n)} for n, address in enumerate(readers)}
    form = [("from", f"news@{DOMAIN}"), ("subject", "Batch"), ("html", "<p>Hi</p>"),
            ("v:customer", "%recipient.id%"), ("recipient-variables", orjson.dumps(variables).decode()),
            *(("to", address) for address in readers)]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        batch_id = (await resp.json())["id"].strip("<>")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(await storeview.events(running.services.store, "delivered")) < 1 + len(readers):
        assert loop.time() < deadline, "the batch was not delivered"
        await asyncio.sleep(0.05)
    urls = [
        f"{tracked.url}/o/{tracked.token('o', message_id=batch_id, recipient=address)}"
        for address in readers
    ]
    statuses = await asyncio.gather(*(fetch("GET", url) for url in urls))
    assert [status for status, _, _ in statuses] == [200] * len(readers)
    opened = await storeview.events(running.services.store, "opened")
    assert sorted((e["recipient"], e["user-variables"]["customer"]) for e in opened) == sorted(
        (address, str(n)) for n, address in enumerate(readers)
    )
