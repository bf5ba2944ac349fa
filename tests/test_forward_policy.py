"""Route posts (forward() to a URL, store(notify=)) go to users' URLs, so they must not become a
way into the server's own network: loopback, private and metadata addresses are refused on the
address actually connected to, redirects are not followed, and neither the application's reply
nor the credentials in a URL end up in events or logs. Real servers over loopback; the default
policy is tested by starting a server whose forward_allow is empty."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from mta.config import InboundConfig
from mta.webpost import Policy, Refused
from tests import storeview
from tests.conftest import DOMAIN, Running
from tests.test_inbound import add_route, message, send_mx

SECRET = "s3cret-pass"


@dataclass
class Seen:
    method: str
    path: str
    content_type: str
    authorization: str


@dataclass
class Receiver:
    """A loopback HTTP server that records every request; `replies` maps a path to the
    response it gets (200 "ok" otherwise)."""

    url: str = ""
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    replies: dict[str, Callable[[], web.StreamResponse]] = field(default_factory=dict)

    def at(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        received.seen.append(Seen(request.method, request.path, request.content_type,
                                  request.headers.get("Authorization", "")))
        reply = received.replies.get(request.path)
        return reply() if reply is not None else web.Response(text="ok")

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    received.port = runner.addresses[0][1]
    received.url = f"http://127.0.0.1:{received.port}"
    yield received
    await runner.cleanup()


async def route_server(start_server: Callable[..., Any], **overrides: Any) -> Running:
    """A server that retries a failed post once, quickly."""
    return await start_server(inbound__retry_intervals_s=[0.1], **overrides)


async def given_up(running: Running, recipient: str, timeout: float = 10.0) -> dict[str, Any]:
    """The failed event of a post that has used up its retries (no more requests follow)."""

    async def poll() -> dict[str, Any]:
        while True:
            for event in await storeview.events(running.services.store, "failed"):
                if event.get("recipient") == recipient:
                    return event
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


async def wait_for_requests(receiver: Receiver, count: int, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while len(receiver.seen) < count:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def all_events(running: Running) -> str:
    return json.dumps(await storeview.events(running.services.store))


async def test_a_route_cannot_post_to_loopback_under_the_default_policy(
    start_server, receiver: Receiver
):
    running = await route_server(start_server, inbound__forward_allow=[])
    await add_route(running, "catch_all()", f'forward("{receiver.url}/hook")')
    assert (await send_mx(running, f"a@{DOMAIN}", message(f"a@{DOMAIN}")))[0] == 250
    failed = await given_up(running, f"a@{DOMAIN}")
    assert "address 127.0.0.1 is not allowed (inbound.forward_deny)" in (
        failed["delivery-status"]["message"]
    )
    assert receiver.seen == []


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("[::1]", "address ::1"),
        ("[::ffff:127.0.0.1]", "(127.0.0.1)"),  # IPv4-mapped IPv6 reaches 127.0.0.1
        ("169.254.169.254", "address 169.254.169.254"),  # cloud metadata
        ("10.0.0.5", "address 10.0.0.5"),
        ("0.0.0.0", "address 0.0.0.0"),  # Linux connects this to the local host
    ],
)
async def test_ip_literals_of_internal_addresses_are_refused_in_any_spelling(
    start_server, host: str, refused: str
):
    running = await route_server(start_server, inbound__forward_allow=[])
    await add_route(running, "catch_all()", f'forward("http://{host}:8080/latest/meta-data/")')
    await send_mx(running, f"b@{DOMAIN}", message(f"b@{DOMAIN}"))
    failed = await given_up(running, f"b@{DOMAIN}")
    assert f"{refused} is not allowed (inbound.forward_deny)" in (
        failed["delivery-status"]["message"]
    )


async def test_a_name_that_resolves_to_loopback_is_refused_like_the_address(
    start_server, receiver: Receiver
):
    running = await route_server(
        start_server,
        inbound__forward_allow=[],
        dns__answers={"hooks.customer.example A": ["127.0.0.1"]},
    )
    url = f"http://hooks.customer.example:{receiver.port}/hook"
    await add_route(running, "catch_all()", f'forward("{url}")')
    await send_mx(running, f"c@{DOMAIN}", message(f"c@{DOMAIN}"))
    failed = await given_up(running, f"c@{DOMAIN}")
    assert "address 127.0.0.1 is not allowed (inbound.forward_deny)" in (
        failed["delivery-status"]["message"]
    )
    assert receiver.seen == []


async def test_names_are_resolved_by_our_resolver_so_configured_answers_apply(
    start_server, receiver: Receiver
):
    # only_answers is on in tests: the system resolver does not know this name, ours does
    running = await route_server(
        start_server, dns__answers={"hooks.customer.example A": ["127.0.0.1"]}
    )
    url = f"http://hooks.customer.example:{receiver.port}/hook"
    await add_route(running, "catch_all()", f'forward("{url}")')
    await send_mx(running, f"d@{DOMAIN}", message(f"d@{DOMAIN}"))
    await wait_for_requests(receiver, 1)
    assert [s.path for s in receiver.seen] == ["/hook"]


async def test_a_redirect_is_not_followed_so_a_post_cannot_be_bounced_elsewhere(
    start_server, receiver: Receiver
):
    running = await route_server(start_server)
    receiver.replies["/hook"] = lambda: web.Response(
        status=307, headers={"Location": f"{receiver.url}/internal"}
    )
    await add_route(running, "catch_all()", f'forward("{receiver.url}/hook")')
    await send_mx(running, f"e@{DOMAIN}", message(f"e@{DOMAIN}"))
    failed = await given_up(running, f"e@{DOMAIN}")
    assert failed["delivery-status"]["code"] == 307
    assert failed["delivery-status"]["message"] == (
        "HTTP 307 Temporary Redirect: redirects are not followed"
    )
    assert len(receiver.at("/hook")) == 2  # the first try and one retry
    assert receiver.at("/internal") == []


async def test_the_applications_reply_never_lands_in_events_or_logs(
    start_server, receiver: Receiver, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, "mta")
    running = await route_server(start_server)
    receiver.replies["/hook"] = lambda: web.Response(
        status=500, reason="Leaked-Reason", text="root:x:0:0 leaked-body"
    )
    await add_route(running, "catch_all()", f'forward("{receiver.url}/hook")')
    await send_mx(running, f"f@{DOMAIN}", message(f"f@{DOMAIN}"))
    failed = await given_up(running, f"f@{DOMAIN}")
    assert failed["delivery-status"]["code"] == 500
    assert failed["delivery-status"]["message"] == "HTTP 500 Internal Server Error"
    for text in (await all_events(running), caplog.text):
        assert "leaked" not in text.lower()


async def test_credentials_in_a_url_are_used_but_never_logged_or_recorded(
    start_server, receiver: Receiver, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, "mta")
    running = await route_server(start_server)
    receiver.replies["/hook"] = lambda: web.Response(status=503)
    host = receiver.url.removeprefix("http://")
    await add_route(running, "catch_all()", f'forward("http://hookuser:{SECRET}@{host}/hook")')
    await send_mx(running, f"g@{DOMAIN}", message(f"g@{DOMAIN}"))
    failed = await given_up(running, f"g@{DOMAIN}")
    expected = "Basic " + base64.b64encode(f"hookuser:{SECRET}".encode()).decode()
    assert {s.authorization for s in receiver.seen} == {expected}
    assert failed["envelope"]["targets"] == f"http://***@{host}/hook"
    for text in (await all_events(running), caplog.text):
        assert SECRET not in text and "hookuser" not in text


async def test_route_posts_are_multipart_even_without_attachments(
    start_server, receiver: Receiver
):
    running = await route_server(start_server)
    await add_route(
        running,
        "catch_all()",
        f'forward("{receiver.url}/parsed")',
        f'forward("{receiver.url}/raw.mime")',
        f'store(notify="{receiver.url}/notify")',
    )
    await send_mx(running, f"h@{DOMAIN}", message(f"h@{DOMAIN}"))
    await wait_for_requests(receiver, 3)
    assert sorted((s.path, s.content_type) for s in receiver.seen) == [
        ("/notify", "multipart/form-data"),
        ("/parsed", "multipart/form-data"),
        ("/raw.mime", "multipart/form-data"),
    ]


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "::ffff:10.0.0.5", "169.254.169.254", "192.168.1.1", "fe80::1",
     "fd00::1", "0.0.0.0", "not-an-address"],
)
def test_policy_refuses_internal_addresses_and_anything_that_is_no_address(address: str):
    policy = Policy([], InboundConfig().forward_deny, "inbound.forward_deny")
    with pytest.raises(Refused):
        policy.check(address)


def test_policy_allows_public_addresses_and_allow_listed_ones_inside_the_deny_list():
    policy = Policy(["10.1.0.0/16"], InboundConfig().forward_deny, "inbound.forward_deny")
    for address in ("93.184.216.34", "2606:2800:220:1::1", "10.1.2.3", "::ffff:10.1.2.3"):
        policy.check(address)
    with pytest.raises(Refused, match=r"address 10\.2\.0\.1 is not allowed"):
        policy.check("10.2.0.1")
