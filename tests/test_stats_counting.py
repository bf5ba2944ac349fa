"""Stats counters (manual: "Stats", "Tagging"): every event is counted in the transaction that
records it, per domain, tag and campaign, per hour, day and month; counts read back through
the stats reader (mta.stats.totals) after real sends, deliveries and tracking hits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from mta.stats import totals
from mta.stats.counting import DOMAIN_SCOPE, tag_scope
from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"


@pytest.fixture
async def mx() -> Any:
    capture = await start_capture()
    yield capture
    await capture.close()


async def send(running: Running, to: list[str], *form: tuple[str, str]) -> str:
    fields = [("from", f"News <news@{DOMAIN}>"), ("subject", "Hello"), ("text", "Hi"),
              *(("to", addr) for addr in to), *form]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=fields) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"]).strip("<>")


async def wait_for(running: Running, kind: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(await storeview.events(running.services.store, kind)) < count:
        assert loop.time() < deadline, f"fewer than {count} {kind} events"
        await asyncio.sleep(0.05)


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
