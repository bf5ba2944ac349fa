"""Stats counters (manual: "Stats", "Tagging"): every event is counted in the transaction that
records it, per domain, tag and campaign, per hour, day and month; counts read back through
the stats reader (mta.stats.totals) after real sends, deliveries and tracking hits."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from mta import events
from mta.events import Event
from mta.stats import retention, totals
from mta.stats.counting import DOMAIN_SCOPE, tag_scope
from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running, auth_header, store_env
from tests.tracked import hit, wait_for

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"


async def send(running: Running, to: list[str], *form: tuple[str, str]) -> str:
    fields = [("from", f"News <news@{DOMAIN}>"), ("subject", "Hello"), ("text", "Hi"),
              *(("to", addr) for addr in to), *form]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=fields) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"]).strip("<>")


def day_period(now: float | None = None) -> totals.Period:
    now = time.time() if now is None else now
    return totals.Period.of(start=now - 3600, end=now + 3600, resolution="day", duration=None)


async def bucket_totals(
    running: Running, resolution: str = "day", scope: str = DOMAIN_SCOPE, domain: str | None = DOMAIN
) -> dict[str, Any]:
    """The requested-everything rendering summed over the buckets of the last hour's period."""
    now = time.time()
    period = totals.Period.of(start=now - 7200, end=now, resolution=resolution, duration=None)
    series = await totals.series(running.services.store, period, domain=domain, scope=scope)
    summed = [sum(column) for column in zip(*series.values(), strict=True)] or [0] * 20
    return totals.render_bucket(summed, totals.EVENTS)


async def test_sends_and_deliveries_are_counted_by_domain_and_tag_at_every_resolution(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    await send(running, [f"a@{DEST}", f"b@{DEST}"], ("o:tag", "Newsletter"))
    await send(running, [f"c@{DEST}"])
    await wait_for(running, "delivered", 3)
    for resolution in ("hour", "day", "month"):
        domain = await bucket_totals(running, resolution)
        assert domain["accepted"] == {"incoming": 0, "outgoing": 3, "total": 3}
        assert domain["delivered"] == {"smtp": 3, "http": 0, "total": 3}
        assert domain["failed"]["permanent"]["total"] == 0
        tagged = await bucket_totals(running, resolution, scope=tag_scope("newsletter"))
        assert tagged["accepted"]["total"] == 2 and tagged["delivered"]["total"] == 2
    account = await bucket_totals(running, domain=None)
    assert account["accepted"]["total"] == 3


async def test_failures_are_counted_by_severity_and_reason(
    start_server: Callable[..., Any], mx: Capture
):
    """A hard bounce, then a send to the now-suppressed address (dropped: suppress-bounce),
    and a soft bounce (temporary, retried)."""
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    await send(running, [f"unknown@{DEST}"])
    await wait_for(running, "failed", 1)
    await send(running, [f"unknown@{DEST}", f"full@{DEST}"])
    await wait_for(running, "failed", 3)
    failed = (await bucket_totals(running))["failed"]
    assert failed["permanent"]["bounce"] == 1
    assert failed["permanent"]["suppress-bounce"] == 1
    assert failed["permanent"]["total"] == 2
    assert failed["temporary"]["total"] >= 1 and failed["temporary"]["espblock"] == 0


async def test_opens_and_clicks_are_counted_in_total_and_once_per_recipient_as_unique(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    first, second = f"first@{DEST}", f"second@{DEST}"
    message_id = await send(running, [first, second], ("o:tag", "promo"), ("html", "<p>x</p>"))
    await wait_for(running, "delivered", 2)
    for _ in range(3):
        await hit(running, "o", message_id, first)
    await hit(running, "o", message_id, second)
    await hit(running, "c", message_id, first, url="https://example.com/a")
    await hit(running, "c", message_id, first, url="https://example.com/b")
    await wait_for(running, "clicked", 2)
    for scope in (DOMAIN_SCOPE, tag_scope("promo")):
        counted = await bucket_totals(running, "hour", scope=scope)
        assert counted["opened"] == {"total": 4, "unique": 2}
        assert counted["clicked"] == {"total": 2, "unique": 1}


async def test_concurrent_first_opens_of_one_recipient_count_one_unique(
    start_server: Callable[..., Any], mx: Capture
):
    """Mail clients often fetch the pixel twice at once: only one of them is the first."""
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    reader = f"reader@{DEST}"
    message_id = await send(running, [reader], ("html", "<p>x</p>"))
    await wait_for(running, "delivered", 1)
    await asyncio.gather(*(hit(running, "o", message_id, reader) for _ in range(8)))
    assert (await bucket_totals(running))["opened"] == {"total": 8, "unique": 1}


async def test_tags_beyond_the_domain_limit_travel_in_events_but_are_not_counted(
    start_server: Callable[..., Any]
):
    running = await start_server(stats__tag_limit=2)
    await send(running, [f"a@{DEST}"], ("o:tag", "one"), ("o:tag", "two"))
    await send(running, [f"b@{DEST}"], ("o:tag", "three"), ("o:tag", "one"))
    [*_, event] = await storeview.events(running.services.store, "accepted")
    assert sorted(event["tags"]) == ["one", "three"]
    assert (await bucket_totals(running, scope=tag_scope("one")))["accepted"]["total"] == 2
    assert (await bucket_totals(running, scope=tag_scope("two")))["accepted"]["total"] == 1
    assert (await bucket_totals(running, scope=tag_scope("three")))["accepted"]["total"] == 0


async def test_purging_drops_old_hour_counters_keeps_day_and_month_and_never_queued_mail(
    start_server: Callable[..., Any]
):
    running = await start_server()
    store = running.services.store
    long_ago = time.time() - 200 * 86400
    await events.record(store, DOMAIN, [Event("stored", timestamp=long_ago)])
    message_id = await send(running, [f"waiting@{DEST}"])  # outbound is off: it stays queued
    await retention.purge_expired(store, running.services.config.stats)
    rows = await store.fetchall(
        "SELECT resolution, count(*) AS n FROM stats_counters WHERE bucket < ?"
        " GROUP BY resolution", (time.time() - 100 * 86400,)
    )
    assert {row["resolution"]: row["n"] for row in rows} == {"day": 1, "month": 1}
    [queued] = await storeview.recipients(store, message_id)
    assert queued["state"] == "queued"


async def test_deleting_a_domain_deletes_its_counts(start_server: Callable[..., Any]):
    running = await start_server()
    await send(running, [f"a@{DEST}"], ("o:tag", "gone"))
    assert (await bucket_totals(running))["accepted"]["total"] == 1
    async with running.session() as api, api.delete(f"/v3/domains/{DOMAIN}") as resp:
        assert resp.status == 200, await resp.text()
    assert await storeview.count(running.services.store, "stats_counters") == 0
    assert await storeview.count(running.services.store, "tags") == 0


async def test_counts_after_kill_9_mid_run_match_the_events_exactly(
    server_process: Callable[..., Any], store_url: str
):
    """Kill the server while it accepts and delivers; after a restart delivers the rest, every
    counter equals the number of events of its kind: none counted twice, none missed."""
    capture = await start_capture(delay_s=0.003)
    env = {"MTA_OUTBOUND_ENABLED": "true",
           "MTA_DNS_STATIC_MX": json.dumps({DEST: [capture.address]})} | store_env(store_url)
    total = 300
    try:
        proc = server_process(**env)
        proc.cli("domain", "add", DOMAIN)
        key = proc.cli("key", "create").stdout.strip()
        async with aiohttp.ClientSession(proc.url, headers=auth_header(key)) as session:

            async def post(n: int) -> None:
                data = {"from": f"s@{DOMAIN}", "to": f"r{n}@{DEST}", "subject": "crash",
                        "text": "x", "o:tag": "crash"}
                async with session.post(f"/v3/{DOMAIN}/messages", data=data) as resp:
                    assert resp.status == 200

            for start in range(0, total, 50):
                await asyncio.gather(*(post(n) for n in range(start, start + 50)))
        await capture.wait_for(total // 3, timeout=60)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        assert len(capture.messages) < total, "everything was delivered before the kill"

        restarted = server_process(**env)
        async with storeview.reopened(restarted.config()) as store:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await storeview.count(store, "events", "WHERE event = 'delivered'") < total:
                assert loop.time() < deadline, "the rest was not delivered after the restart"
                await asyncio.sleep(0.1)
            now = time.time()
            period = totals.Period.of(start=now - 7200, end=now, resolution="hour", duration=None)
            for scope in (DOMAIN_SCOPE, tag_scope("crash")):
                series = await totals.series(store, period, domain=DOMAIN, scope=scope)
                summed = [sum(c) for c in zip(*series.values(), strict=True)]
                counted = totals.render_bucket(summed, ("accepted", "delivered"))
                assert counted["accepted"]["total"] == total
                assert counted["delivered"]["total"] == total
            assert await storeview.count(store, "events", "WHERE event = 'accepted'") == total
            assert await storeview.count(store, "events", "WHERE event = 'delivered'") == total
    finally:
        await capture.close()
