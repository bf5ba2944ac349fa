"""GET /metrics (issue 14): the Prometheus text, parsed with prometheus-client's own parser;
counters that move after real sends (delivered to a capture server, refused by it), the queue
read by destination, webhook failures and backlog, and who may scrape.

Every client here is on loopback. The non-loopback client is made honestly with the server's
own proxy rule: with `tracking.trusted_proxies` naming loopback, a request is from the address
its X-Forwarded-For gives, as it would be behind a reverse proxy on the same host."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mta.api.metrics import admitted
from tests.capture import Capture
from tests.conftest import DOMAIN, Running

DEST = "dest.example.test"
WAIT_S = 10.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def failing_hook() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A webhook receiver that answers every post 500 (its URL, and the posts it got)."""
    posts: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        posts.append(await request.read())
        return web.Response(status=500, text="down")

    application = web.Application()
    application.router.add_post("/hook", handler)
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", posts
    await runner.cleanup()


async def scrape(running: Running, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(
        running.url + "/metrics", headers=headers or {}
    ) as resp:
        return resp.status, await resp.text()


async def samples(running: Running) -> Samples:
    status, text = await scrape(running)
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def until(running: Running, holds: Callable[[Samples], bool]) -> Samples:
    """The samples once `holds` is true of them (or at the deadline, for the assert to say)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await samples(running)
        if holds(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def send(running: Running, *recipients: str) -> None:
    form = [("from", f"Sender <sender@{DOMAIN}>"), ("subject", "Hi"), ("text", "Hello")]
    form += [("to", r) for r in recipients]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()


async def test_counters_move_after_sends(
    start_server: Callable[..., Any], mx: Capture, failing_hook: tuple[str, list[bytes]]
) -> None:
    url, posts = failing_hook
    running = await start_server(
        outbound__enabled=True,
        dns__static_mx={DEST: [mx.address]},
        webhooks__allow=["127.0.0.0/8"],
        webhooks__retry_intervals_s=[3600],  # the failed post waits: the backlog shows it
    )
    async with running.session() as api, api.post(
        f"/v3/domains/{DOMAIN}/webhooks", data={"id": "permanent_fail", "url": url}
    ) as resp:
        assert resp.status == 200, await resp.text()
    before = await samples(running)
    assert value(before, "mta_accepted_total", domain=DOMAIN) == 0
    assert value(before, "mta_delivered_total", domain=DOMAIN) == 0

    await send(running, f"ok@{DEST}", f"unknown@{DEST}")  # the capture refuses unknown@ (550)
    await mx.wait_for(1)
    found = await until(
        running,
        lambda s: value(s, "mta_delivered_total", domain=DOMAIN) == 1
        and value(s, "mta_failed_total", domain=DOMAIN, severity="permanent",
                  reason="bounce") == 1
        and value(s, "mta_webhook_failures_total", outcome="retry") == 1,
    )
    assert value(found, "mta_accepted_total", domain=DOMAIN) == 2
    assert value(found, "mta_delivered_total", domain=DOMAIN) == 1
    assert value(found, "mta_failed_total", domain=DOMAIN, severity="permanent",
                 reason="bounce") == 1
    assert value(found, "mta_delivery_latency_seconds_count") == 1
    assert value(found, "mta_store_commit_seconds_count") > 0
    # the receiver answered 500: one failed post, waiting for its retry
    assert len(posts) == 1
    assert value(found, "mta_webhook_failures_total", outcome="retry") == 1
    assert value(found, "mta_webhook_backlog") == 1
    assert value(found, "mta_webhook_backlog_oldest_age_seconds") >= 0
    # nothing waits any more for the destination
    assert not any(name == "mta_queue_recipients" and dict(labels)["destination"] == DEST
                   for name, labels in found)


async def test_queue_depth_and_sessions(start_server: Callable[..., Any]) -> None:
    """Outbound delivery off: what is sent stays queued, due, for its destination."""
    running = await start_server()
    await send(running, f"a@{DEST}", f"b@{DEST}", "c@other.example.test")
    found = await samples(running)
    assert value(found, "mta_queue_recipients", destination=DEST, state="due") == 2
    assert value(found, "mta_queue_recipients", destination=DEST, state="deferred") == 0
    assert value(found, "mta_queue_recipients", destination="other.example.test",
                 state="due") == 1
    assert value(found, "mta_queue_oldest_age_seconds", destination=DEST) >= 0
    assert ("mta_queue_oldest_age_seconds", frozenset({("destination", DEST)})) in found

    # one SMTP session open on the MX listener, then closed and timed
    _, mx_port = running.server.smtp.servers["mx"].sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection("127.0.0.1", mx_port)
    await reader.readline()  # the banner: the session is counted by now
    found = await samples(running)
    assert value(found, "mta_smtp_open_sessions", listener="mx") == 1
    assert value(found, "mta_smtp_open_sessions", listener="submission") == 0
    writer.write(b"QUIT\r\n")
    await reader.readline()
    writer.close()
    await writer.wait_closed()
    found = await until(
        running, lambda s: value(s, "mta_smtp_session_seconds_count", listener="mx") == 1
    )
    assert value(found, "mta_smtp_open_sessions", listener="mx") == 0
    assert value(found, "mta_smtp_session_seconds_count", listener="mx") == 1


async def test_other_clients_need_the_token(start_server: Callable[..., Any]) -> None:
    running = await start_server(
        metrics__token="s3cret-token", tracking__trusted_proxies=["127.0.0.0/8"]
    )
    outside = {"X-Forwarded-For": "203.0.113.7"}
    assert (await scrape(running))[0] == 200  # loopback itself
    status, body = await scrape(running, outside)
    assert status == 401
    assert "bearer token" in body
    assert (await scrape(running, {**outside, "Authorization": "Bearer wrong"}))[0] == 401
    assert (await scrape(running, {**outside, "Authorization": "Basic s3cret-token"}))[0] == 401
    status, body = await scrape(running, {**outside, "Authorization": "Bearer s3cret-token"})
    assert status == 200
    assert any(f.name == "mta_accepted" for f in text_string_to_metric_families(body))
    # a left-hand X-Forwarded-For hop is anyone's to write: it does not make a client loopback
    forged = {"X-Forwarded-For": "127.0.0.1, 203.0.113.7"}
    assert (await scrape(running, forged))[0] == 401


async def test_without_a_token_only_loopback(start_server: Callable[..., Any]) -> None:
    running = await start_server(tracking__trusted_proxies=["127.0.0.0/8"])
    outside = {"X-Forwarded-For": "203.0.113.7"}
    assert (await scrape(running))[0] == 200
    assert (await scrape(running, {**outside, "Authorization": "Bearer "}))[0] == 401


async def test_off(start_server: Callable[..., Any]) -> None:
    running = await start_server(metrics__enabled=False)
    assert (await scrape(running))[0] == 404


def test_admitted() -> None:
    assert admitted("127.0.0.1", "", "")
    assert admitted("::1", "", "")
    assert admitted("127.5.6.7", "", "t")
    assert not admitted("192.0.2.1", "", "")
    assert not admitted("192.0.2.1", "Bearer ", "")
    assert not admitted("192.0.2.1", "Bearer x", "t")
    assert admitted("2001:db8::1", "bearer t", "t")
    assert not admitted("", "", "t")
