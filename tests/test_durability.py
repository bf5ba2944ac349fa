"""Durable before acknowledged: kill -9 the server in the middle of a stream of sends; every
message that got a 200 is in the store afterwards, whole (message, recipients, events)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DOMAIN, auth_header

pytestmark = pytest.mark.asyncio


async def test_every_acknowledged_message_survives_kill_9(server_process, tmp_path: Path):
    proc = server_process()
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

    db = tmp_path / "var" / "mta.db"
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
        per_message = dict(
            conn.execute(
                "SELECT m.message_id, count(*) FROM recipients r"
                " JOIN messages m ON m.key = r.message_key GROUP BY m.message_id"
            ).fetchall()
        )
        events = dict(
            conn.execute(
                "SELECT message_id, count(*) FROM events WHERE event = 'accepted'"
                " GROUP BY message_id"
            ).fetchall()
        )
    missing = [m for m in acknowledged if m not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost"
    # nothing half-written: every stored message has both recipients and both events
    assert set(per_message.values()) == {2}
    assert set(events.values()) == {2}
    assert set(per_message) == stored == set(events)

    # and the restarted server serves the same store
    restarted = server_process()
    async with (
        aiohttp.ClientSession(restarted.url, headers=auth_header(key)) as session,
        session.get(f"/v3/{DOMAIN}/events", params={"message-id": acknowledged[0]}) as resp,
    ):
        assert resp.status == 200
        assert len((await resp.json())["items"]) == 2
