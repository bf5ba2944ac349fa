"""Queue inspection and control (issue 14): per-destination state, a message's recipients and
their next attempt, retry now, pause and resume, over the API and the `mta queue` CLI. A capture
server stands in for the destinations' MX (two destinations share it, so one site: a pause is
per destination, not per site)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running, cli_env, run_cli, store_env

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
OTHER = "other.example.test"
LONG_RETRY = [3600]  # a retried recipient would wait an hour unless retried now


async def serve(start_server: Callable[..., Any], mx: Capture, **overrides: Any) -> Running:
    return await start_server(
        outbound__enabled=True,
        outbound__retry_intervals_s=LONG_RETRY,
        dns__static_mx={DEST: [mx.address], OTHER: [mx.address]},
        **overrides,
    )


async def send(running: Running, *recipients: str) -> str:
    form = [("from", f"Sender <sender@{DOMAIN}>"), ("subject", "Hi"), ("text", "Hello")]
    form += [("to", r) for r in recipients]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["id"].strip("<>")


async def call(running: Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with running.session() as api, api.request(method, path, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def events_of(running: Running, kind: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        found = await storeview.events(running.services.store, kind)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def recipient_view(running: Running, message_id: str, address: str,
                         until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The message view of one recipient, once `until` holds (the scheduler got to it)."""
    deadline = time.monotonic() + 10
    while True:
        status, body = await call(running, "GET", f"/v3/{DOMAIN}/queue/messages/{message_id}")
        assert status == 200, body
        [message] = body["items"]
        [found] = [r for r in message["recipients"] if r["recipient"] == address]
        if until(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def held(recipient: dict[str, Any]) -> bool:
    """Put back by a pause: queued, never tried, due a good while later."""
    due = recipient["next_attempt"]
    return recipient["attempts"] == 0 and due is not None and due > time.time() + 30


# -- inspection -------------------------------------------------------------------------------------


async def test_a_failing_destination_shows_its_deferred_mail_and_last_reply(
    start_server: Callable[..., Any], mx: Capture
):
    running = await serve(start_server, mx)
    message_id = await send(running, f"full@{DEST}")
    await send(running, f"full@{DEST}")
    await events_of(running, "failed", 2)  # 452 over quota: retried in an hour
    status, body = await call(running, "GET", "/v3/queue/destinations")
    assert status == 200, body
    [dest] = [d for d in body["items"] if d["destination"] == DEST]
    assert dest["queued"] == 2 and dest["deferred"] == 2 and dest["in_flight"] == 0
    assert dest["state"] == "deferred"
    assert dest["next_due"] > time.time() + 3000
    assert dest["oldest_age_seconds"] >= 0
    assert dest["last_reply"]["code"] == 452
    assert "over quota" in dest["last_reply"]["message"]
    assert dest["site"]

    status, one = await call(running, "GET", f"/v3/queue/destinations/{DEST.upper()}")
    assert status == 200 and one["queued"] == 2

    status, body = await call(running, "GET", f"/v3/{DOMAIN}/queue/messages/<{message_id}>")
    assert status == 200, body
    [message] = body["items"]
    assert message["message_id"] == message_id and message["domain"] == DOMAIN
    [r] = message["recipients"]
    assert r["recipient"] == f"full@{DEST}"
    assert r["state"] == "queued" and r["attempts"] == 1
    assert r["next_attempt"] > time.time() + 3000
    assert r["last_event"]["event"] == "failed"
    assert r["last_event"]["severity"] == "temporary"
    assert r["last_event"]["code"] == 452
    # by storage key too
    status, by_key = await call(
        running, "GET", f"/v3/{DOMAIN}/queue/messages/{message['storage_key']}"
    )
    assert status == 200 and by_key["items"][0]["message_id"] == message_id


async def test_a_delivered_message_shows_its_recipients_done(
    start_server: Callable[..., Any], mx: Capture
):
    running = await serve(start_server, mx)
    message_id = await send(running, f"alice@{DEST}")
    await mx.wait_for(1)
    found = await recipient_view(running, message_id, f"alice@{DEST}",
                                 lambda r: r["state"] == "delivered")
    assert found["state"] == "delivered" and found["next_attempt"] is None
    assert found["last_event"]["event"] == "delivered" and found["last_event"]["code"] == 250


# -- retry now ---------------------------------------------------------------------------------------


async def test_retry_now_sends_a_deferred_destination_at_once(
    start_server: Callable[..., Any], mx: Capture
):
    running = await serve(start_server, mx)
    await send(running, f"defer-once@{DEST}")  # 451 the first time, then accepted
    await events_of(running, "failed")
    status, body = await call(running, "POST", f"/v3/queue/destinations/{DEST}/retry")
    assert status == 200, body
    assert body["retried"] == 1 and body["in_flight"] == 0 and body["paused"] is False
    [got] = await mx.wait_for(1)  # not in an hour
    assert got.rcpt_to == f"defer-once@{DEST}"
    [delivered] = await events_of(running, "delivered")
    assert delivered["delivery-status"]["attempt-no"] == 2


async def test_retry_now_for_one_recipient_of_a_message(
    start_server: Callable[..., Any], mx: Capture
):
    running = await serve(start_server, mx)
    message_id = await send(running, f"defer-once@{DEST}", f"full@{DEST}")
    await events_of(running, "failed", 2)
    status, body = await call(
        running, "POST", f"/v3/{DOMAIN}/queue/messages/{message_id}/retry",
        data={"recipient": f"DEFER-ONCE@{DEST}"},
    )
    assert status == 200, body
    assert body["retried"] == 1
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"defer-once@{DEST}"
    still = await recipient_view(running, message_id, f"full@{DEST}", lambda r: True)
    assert still["attempts"] == 1 and still["next_attempt"] > time.time() + 3000

    status, body = await call(
        running, "POST", f"/v3/{DOMAIN}/queue/messages/{message_id}/retry",
        data={"recipient": f"nobody@{DEST}"},
    )
    assert status == 404 and "not a recipient" in body["message"]


# -- pause and resume ----------------------------------------------------------------------------


async def test_a_paused_destination_keeps_its_mail_until_resumed(
    start_server: Callable[..., Any], mx: Capture
):
    running = await serve(start_server, mx)
    status, body = await call(running, "POST", f"/v3/queue/destinations/{DEST}/pause",
                              data={"reason": "asked us to wait"})
    assert status == 200, body
    message_id = await send(running, f"alice@{DEST}", f"bob@{OTHER}")
    # the other destination (same MX, same site) keeps flowing
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"bob@{OTHER}"
    alice = await recipient_view(running, message_id, f"alice@{DEST}", held)
    assert held(alice), alice
    assert alice["state"] == "paused"
    later = await send(running, f"carol@{DEST}")
    carol = await recipient_view(running, later, f"carol@{DEST}", held)
    assert held(carol), carol
    assert not mx.to(f"alice@{DEST}") and not mx.to(f"carol@{DEST}")

    status, body = await call(running, "GET", "/v3/queue/destinations")
    [dest] = [d for d in body["items"] if d["destination"] == DEST]
    assert dest["state"] == "paused" and dest["paused"]["reason"] == "asked us to wait"
    assert dest["queued"] == 2 and dest["deferred"] == 2

    status, body = await call(running, "POST", f"/v3/queue/destinations/{DEST}/resume")
    assert status == 200, body
    await mx.wait_for(3)
    assert {m.rcpt_to for m in mx.messages} == {f"bob@{OTHER}", f"alice@{DEST}", f"carol@{DEST}"}
    assert len(mx.messages) == 3
    status, body = await call(running, "POST", f"/v3/queue/destinations/{DEST}/resume")
    assert status == 404


async def test_pausing_holds_mail_already_waiting_in_memory(
    start_server: Callable[..., Any], tmp_path: Path
):
    """Mail sorted to a site before the pause goes back too: with one slow connection, most of
    a burst waits in memory when the pause comes."""
    slow = await start_capture(delay_s=0.5)
    try:
        shaping = tmp_path / "shaping.toml"
        shaping.write_text("[default]\nconnections = 1\nmessages_per_connection = 100\n")
        running = await serve(start_server, slow, outbound__shaping_file=str(shaping))
        message_id = await send(running, *(f"r{i}@{DEST}" for i in range(6)))
        await slow.wait_for(1)
        status, _ = await call(running, "POST", f"/v3/queue/destinations/{DEST}/pause")
        assert status == 200
        views = [
            await recipient_view(running, message_id, f"r{i}@{DEST}",
                                 lambda r: r["state"] == "delivered" or held(r))
            for i in range(6)
        ]
        waiting = [v for v in views if v["state"] != "delivered"]
        assert waiting and all(held(v) for v in waiting), views
        status, _ = await call(running, "POST", f"/v3/queue/destinations/{DEST}/resume")
        assert status == 200
        await slow.wait_for(6)
        assert sorted(m.rcpt_to for m in slow.messages) == [f"r{i}@{DEST}" for i in range(6)]
    finally:
        await slow.close()


# -- the CLI ---------------------------------------------------------------------------------------


async def test_the_queue_cli(
    start_server: Callable[..., Any], mx: Capture, tmp_path: Path, store_url: str
):
    running = await serve(start_server, mx)
    env = cli_env(tmp_path) | store_env(store_url)

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(run_cli, env, "queue", *args, check=False)

    done = await cli("pause", DEST, "--reason", "maintenance")
    assert done.returncode == 0, done.stderr
    assert f"{DEST}: paused" in done.stdout
    message_id = await send(running, f"alice@{DEST}")
    await recipient_view(running, message_id, f"alice@{DEST}", held)

    done = await cli("list")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["DESTINATION", "STATE", "QUEUED", "IN-FLIGHT", "DEFERRED",
                              "OLDEST", "NEXT"]
    [line] = [ln for ln in lines if ln.startswith(DEST)]
    assert line.split()[:5] == [DEST, "paused", "1", "0", "1"]

    done = await cli("show", message_id)
    assert done.returncode == 0, done.stderr
    assert message_id in done.stdout
    [row] = [ln for ln in done.stdout.splitlines() if ln.startswith(f"alice@{DEST}")]
    assert row.split()[1:4] == ["paused", "0", "in"]

    done = await cli("resume", DEST)
    assert done.returncode == 0, done.stderr
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"alice@{DEST}"

    # retry by destination, then by message and recipient
    second = await send(running, f"defer-once@{DEST}", f"full@{DEST}")
    await events_of(running, "failed", 2)
    done = await cli("retry", "--message", second, "--recipient", f"defer-once@{DEST}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 recipient(s) retried now")
    await mx.wait_for(2)
    done = await cli("retry", "--destination", DEST)
    assert done.returncode == 0, done.stderr
    assert f"{DEST}: 1 recipient(s) retried now" in done.stdout

    for bad in (("show", "no-such@message"), ("retry", "--destination", "nowhere.test"),
                ("resume", DEST), ("pause", "a b"),
                ("retry", "--message", second, "--recipient", "nobody@x.test")):
        done = await cli(*bad)
        assert done.returncode == 1, (bad, done.stdout)
        assert done.stderr.startswith("mta: "), done.stderr


# -- bad input --------------------------------------------------------------------------------------


async def test_bad_input_gets_clear_errors(start_server: Callable[..., Any], mx: Capture):
    running = await serve(start_server, mx)
    message_id = await send(running, f"full@{DEST}")
    await running.services.domains.create("another.example.test")
    cases = [
        ("GET", "/v3/queue/destinations/nowhere.example.test", 404),
        ("POST", "/v3/queue/destinations/nowhere.example.test/retry", 404),
        ("POST", "/v3/queue/destinations/nowhere.example.test/resume", 404),
        ("GET", f"/v3/{DOMAIN}/queue/messages/no-such-message@here", 404),
        ("POST", f"/v3/{DOMAIN}/queue/messages/no-such-message@here/retry", 404),
        # a tenant's message is only found under its own domain
        ("GET", f"/v3/another.example.test/queue/messages/{message_id}", 404),
        ("GET", f"/v3/unknown.example.test/queue/messages/{message_id}", 404),
        ("GET", "/v3/queue/destinations?limit=5000", 400),
        ("GET", "/v3/queue/destinations?limit=x", 400),
        ("GET", "/v3/queue/destinations/a%20b", 400),
    ]
    for method, path, expected in cases:
        status, body = await call(running, method, path)
        assert status == expected, (path, status, body)
        assert isinstance(body, dict) and body["message"], (path, body)
    huge = "x" * 1_000_000
    for path in (f"/v3/queue/destinations/{huge}", f"/v3/{DOMAIN}/queue/messages/{huge}"):
        status, _ = await call(running, "GET", path)
        assert 400 <= status < 500, status

    _, sending_key = await running.services.keys.create(domain=DOMAIN)
    async with running.session(sending_key) as api:
        for method, path in (("GET", "/v3/queue/destinations"),
                             ("POST", f"/v3/queue/destinations/{DEST}/pause"),
                             ("GET", f"/v3/{DOMAIN}/queue/messages/{message_id}")):
            async with api.request(method, path) as resp:
                assert resp.status == 401, path
    status, body = await call(running, "GET", f"/v3/domains/{DOMAIN}/sending_queues")
    assert status == 200 and body["regular"]["is_disabled"] is False
