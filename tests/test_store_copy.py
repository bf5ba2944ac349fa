"""Moving up: `mta store copy --to postgresql://…` takes everything a user keeps from the
embedded SQLite store into an empty PostgreSQL database, and a server started on that database
carries on where the old one stopped (its queued mail is delivered from there)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from mta.app import Server
from tests import postgres
from tests.capture import start_capture
from tests.conftest import DOMAIN, auth_header, cli_env, make_config, run_cli

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"


async def fill_a_sqlite_store(tmp_path: Path, tls_pair: tuple[str, str]) -> tuple[str, list[str]]:
    """A server on the embedded store with a domain, a key, a login, a route, suppressions,
    queued mail and its events; stopped before the copy. Its key and the queued ids."""
    server = Server(make_config(tmp_path, tls_pair, store__url=""))
    await server.start()
    try:
        services = server.services
        assert services is not None
        await services.domains.create(DOMAIN)
        _, key = await services.keys.create()
        url = f"http://127.0.0.1:{server.api_port}"
        ids = []
        async with aiohttp.ClientSession(url, headers=auth_header(key)) as api:
            for i in range(30):
                form = {"from": f"s@{DOMAIN}", "to": f"r{i}@{DEST}", "subject": f"m{i}",
                        "text": "queued before the move", "o:tag": "moved"}
                async with api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
                    assert resp.status == 200, await resp.text()
                    ids.append((await resp.json())["id"].strip("<>"))
            for priority, name in ((2, "second"), (1, "first"), (2, "third")):
                form = {"priority": str(priority), "description": name,
                        "expression": f'match_recipient("{name}@{DOMAIN}")', "action": "stop()"}
                async with api.post("/v3/routes", data=form) as resp:
                    assert resp.status == 200, await resp.text()
            async with api.post(f"/v3/{DOMAIN}/bounces",
                                data={"address": f"gone@{DEST}", "code": "550"}) as resp:
                assert resp.status == 200, await resp.text()
            async with api.post(f"/v3/{DOMAIN}/unsubscribes",
                                data={"address": f"bye@{DEST}", "tag": "news"}) as resp:
                assert resp.status == 200, await resp.text()
            async with api.post(f"/v3/domains/{DOMAIN}/credentials",
                                data={"login": f"alice@{DOMAIN}",
                                      "password": "a-long-password"}) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        await server.stop()
    return key, ids


async def test_a_sqlite_store_copied_to_postgresql_carries_on_there(
    tmp_path: Path, tls_pair: tuple[str, str], postgres_cluster: postgres.Cluster
):
    key, ids = await fill_a_sqlite_store(tmp_path, tls_pair)
    url = postgres_cluster.new_database()

    copied = run_cli(cli_env(tmp_path), "store", "copy", "--to", url)
    assert "copied" in copied.stdout
    assert "events" in copied.stderr and "recipients" in copied.stderr  # the progress lines
    again = run_cli(cli_env(tmp_path), "store", "copy", "--to", url, check=False)
    assert again.returncode != 0 and "empty" in again.stderr

    mx = await start_capture()
    try:
        server = Server(make_config(tmp_path / "pg", tls_pair, store__url=url,
                                    outbound__enabled=True,
                                    dns__static_mx={DEST: [mx.address]}))
        await server.start()
        try:
            api_url = f"http://127.0.0.1:{server.api_port}"
            async with aiohttp.ClientSession(api_url, headers=auth_header(key)) as api:
                async with api.get("/v3/routes") as resp:
                    routes = (await resp.json())["items"]
                    assert [r["description"] for r in routes] == ["first", "second", "third"]
                async with api.get(f"/v3/{DOMAIN}/bounces/gone@{DEST}") as resp:
                    assert resp.status == 200
                async with api.get(f"/v3/{DOMAIN}/unsubscribes/bye@{DEST}") as resp:
                    assert (await resp.json())["tags"] == ["news"]
                async with api.get(f"/v3/domains/{DOMAIN}/credentials") as resp:
                    assert (await resp.json())["total_count"] == 1
                # the queued mail leaves from the new store, each message once
                await mx.wait_for(len(ids), timeout=30)
                async with api.get(f"/v3/{DOMAIN}/events",
                                   params={"event": "accepted", "limit": "300"}) as resp:
                    accepted = (await resp.json())["items"]
                assert {e["message"]["headers"]["message-id"] for e in accepted} == set(ids)
        finally:
            await server.stop()
        assert sorted(m.rcpt_to for m in mx.messages) == sorted(f"r{i}@{DEST}" for i in range(30))
    finally:
        await mx.close()
