"""Durable before acknowledged: kill -9 the server in the middle of a stream of sends; every
message that got a 200 is in the store afterwards, whole (message, recipients, events)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests import storeview
from tests.capture import start_capture
from tests.conftest import DOMAIN, auth_header, store_env

pytestmark = pytest.mark.asyncio


def pairs(rows: list[Any]) -> dict[str, int]:
    """{first column: count} of GROUP BY rows."""
    return {row[0]: int(row["n"]) for row in rows}


async def test_every_acknowledged_message_survives_kill_9(server_process, store_url: str):
    proc = server_process(**store_env(store_url))
    proc.cli("domain", "add", DOMAIN)
    key = proc.cli("key", "create").stdout.strip()
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def sender(session: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            data = [
                ("from", f"s@{DOMAIN}"),
                ("to", f"w{worker}-{n}@example.net"),
                ("to", f"copy{worker}-{n}@example.net"),
                ("text", "x" * 500),
            ]
            try:
                async with session.post(f"/v3/{DOMAIN}/messages", data=data) as resp:
                    if resp.status == 200:
                        acknowledged.append((await resp.json())["id"].strip("<>"))
            except (TimeoutError, aiohttp.ClientError):
                return

    async with aiohttp.ClientSession(proc.url, headers=auth_header(key)) as session:
        workers = [asyncio.create_task(sender(session, w)) for w in range(20)]
        while len(acknowledged) < 400:
            await asyncio.sleep(0.01)
            assert proc.proc.poll() is None
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        stop.set()
        await asyncio.gather(*workers)

    async with storeview.reopened(proc.config()) as store:
        stored = {r["message_id"] for r in await store.fetchall("SELECT message_id FROM messages")}
        per_message = pairs(await store.fetchall(
            "SELECT m.message_id, count(*) AS n FROM recipients r"
            " JOIN messages m ON m.key = r.message_key GROUP BY m.message_id"
        ))
        events = pairs(await store.fetchall(
            "SELECT message_id, count(*) AS n FROM events WHERE event = 'accepted'"
            " GROUP BY message_id"
        ))
    missing = [m for m in acknowledged if m not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost"
    # nothing half-written: every stored message has both recipients and both events
    assert set(per_message.values()) == {2}
    assert set(events.values()) == {2}
    assert set(per_message) == stored == set(events)

    # and the restarted server serves the same store
    restarted = server_process(**store_env(store_url))
    async with (
        aiohttp.ClientSession(restarted.url, headers=auth_header(key)) as session,
        session.get(f"/v3/{DOMAIN}/events", params={"message-id": acknowledged[0]}) as resp,
    ):
        assert resp.status == 200
        assert len((await resp.json())["items"]) == 2


async def test_kill_9_during_delivery_leaves_every_recipient_delivered_or_queued(
    server_process, store_url: str
):
    """Crash while delivering: after a restart every accepted recipient is delivered (or still
    queued), none is lost. A message the remote took just before the kill, whose outcome was
    not yet committed, is sent again (at-least-once): those duplicates are counted."""
    capture = await start_capture(delay_s=0.005)
    destinations = [f"d{i}.example.test" for i in range(5)]
    static_mx = json.dumps({d: [capture.address] for d in destinations})
    env = {"MTA_OUTBOUND_ENABLED": "true", "MTA_DNS_STATIC_MX": static_mx}
    env |= store_env(store_url)
    try:
        proc = server_process(**env)
        proc.cli("domain", "add", DOMAIN)
        key = proc.cli("key", "create").stdout.strip()
        total = 600
        recipients = [f"r{n}@{destinations[n % 5]}" for n in range(total)]

        async with aiohttp.ClientSession(proc.url, headers=auth_header(key)) as session:

            async def send(rcpt: str) -> None:
                data = {"from": f"s@{DOMAIN}", "to": rcpt, "subject": "crash", "text": "x" * 300}
                async with session.post(f"/v3/{DOMAIN}/messages", data=data) as resp:
                    assert resp.status == 200

            for start in range(0, total, 50):
                await asyncio.gather(*(send(r) for r in recipients[start : start + 50]))
        await capture.wait_for(total // 3, timeout=60)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        before_restart = len(capture.messages)
        assert before_restart < total, "everything was delivered before the kill"

        restarted = server_process(**env)
        async with storeview.reopened(restarted.config()) as store:
            deadline = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < deadline:
                states = pairs(await store.fetchall(
                    "SELECT state, count(*) AS n FROM recipients GROUP BY state"
                ))
                if states.get("delivered", 0) == total:
                    break
                await asyncio.sleep(0.1)
            rows = {r["address"]: r["state"]
                    for r in await store.fetchall("SELECT address, state FROM recipients")}
        assert set(rows) == set(recipients), "a recipient row was lost"
        assert set(rows.values()) == {"delivered"}, states
        arrived = Counter(m.rcpt_to for m in capture.messages)
        assert set(arrived) == set(recipients), "an accepted recipient never arrived"
        duplicates = sum(n - 1 for n in arrived.values())
        print(f"kill -9 after {before_restart}/{total} delivered: {duplicates} duplicate(s)")
        assert duplicates <= 20 * 5  # at most one in flight per connection at the kill
    finally:
        await capture.close()
