"""Regression tests for the outbound robustness review: leases renewed while a slow site holds
a message, one failed connection not taking a whole site down, TLS upgrade failures, refused
envelope senders, a 421 to EHLO, names DNS cannot carry, lone CRs and DKIM, return-path tags,
the purge of finished messages, and outcome writes that survive stop.

Real servers and real capture SMTP servers (tests/capture.py) over loopback, as in
test_outbound_failures.py, with timings shortened through config.
"""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import dkim
import pytest

from mta.config import Config
from mta.outbound.returnpath import BounceAddress, ReturnPaths
from mta.store import Store
from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running
from tests.test_outbound_failures import (
    DEST,
    api_call,
    bounce_entry,
    outcomes,
    routed_to,
    send,
    state_of,
    wait_events,
)


@pytest.fixture
async def captures() -> AsyncIterator[Callable[..., Any]]:
    """Start capture servers with any options; all are closed after the test."""
    started: list[Capture] = []

    async def start(**kwargs: Any) -> Capture:
        capture = await start_capture(**kwargs)
        started.append(capture)
        return capture

    yield start
    for capture in started:
        await capture.close()


def certificateless_tls() -> ssl.SSLContext:
    """A server context with no certificate: STARTTLS is offered, and every handshake fails on
    the server's side (no shared cipher), which hangs up: the client sees the connection reset
    during the upgrade, not a TLS alert."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


async def recipient_rows(store: Store) -> list[dict[str, Any]]:
    """Every recipient row with its message key."""
    rows = await store.fetchall(
        "SELECT r.id, r.address, r.state, m.key AS message_key, m.message_id"
        " FROM recipients r JOIN messages m ON m.key = r.message_key ORDER BY r.id"
    )
    return [dict(row) for row in rows]


@asynccontextmanager
async def writes_held(config: Config) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another client holds what outcome writes need (SQLite: the write lock; PostgreSQL: the
    recipients and events tables) until the yielded release is awaited, or the block ends."""
    if config.store.url:
        conn = await asyncpg.connect(config.store.url)
        held = conn.transaction()
        await held.start()
        await conn.execute("LOCK TABLE recipients, events IN EXCLUSIVE MODE")

        async def release() -> None:
            if not conn.is_closed() and conn.is_in_transaction():
                await held.rollback()

        try:
            yield release
        finally:
            await release()
            await conn.close()
        return
    holder = sqlite3.connect(config.db_path, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")

    async def release_sqlite() -> None:
        if holder.in_transaction:
            holder.execute("ROLLBACK")

    try:
        yield release_sqlite
    finally:
        await release_sqlite()
        holder.close()


async def release_after(release: Callable[[], Awaitable[None]], delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await release()


async def first_outcome(running: Running, rcpt: str, timeout: float = 5.0) -> list:
    """The first delivered or failed event of a recipient, temporary ones too (waited for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await outcomes(running, rcpt)
        if found or loop.time() > deadline:
            return found[:1]
        await asyncio.sleep(0.05)


# -- 1. leases --------------------------------------------------------------------------------


async def test_lease_is_renewed_while_a_slow_site_holds_the_message_so_it_is_sent_once(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(delay_s=1.5)  # longer than the lease
    running = await routed_to(
        start_server, mx, outbound__lease_s=1.0, outbound__data_timeout_s=5.0
    )
    rcpt = f"alice@{DEST}"
    await send(running, rcpt)

    [delivered] = await wait_events(running, "delivered", rcpt, timeout=5)
    assert delivered["delivery-status"]["attempt-no"] == 1
    await asyncio.sleep(0.5)  # a second claim would have started its attempt by now
    assert mx.attempts[rcpt] == 1
    assert len(mx.to(rcpt)) == 1
    assert mx.connections == 1
    assert [e["event"] for e in await outcomes(running, rcpt)] == ["delivered"]


# -- 2. one failed connection is not an unreachable site ------------------------------------------


async def test_a_refused_connection_beside_an_open_one_fails_only_its_own_message(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(refuse_every=2, delay_s=0.02)  # the 2nd, 4th, ... closed at once
    running = await routed_to(start_server, mx)
    first = [f"early{i}@{DEST}" for i in range(10)]  # one connection's worth
    await send(running, first)
    await mx.wait_for(1)  # the first connection is open and sending
    rest = [f"late{i}@{DEST}" for i in range(30)]  # more connections are opened for these
    await send(running, rest)

    delivered = await wait_events(running, "delivered", count=40, timeout=15)
    assert sorted(e["recipient"] for e in delivered) == sorted(first + rest)
    assert sorted(m.rcpt_to for m in mx.messages) == sorted(first + rest)  # each once
    assert mx.refused >= 1
    failed = await storeview.events(running.services.store, "failed")
    assert all(e["severity"] == "temporary" for e in failed)
    assert len(failed) <= mx.refused, [e["recipient"] for e in failed]


async def test_a_refused_connection_among_several_opening_does_not_mark_the_site_unreachable(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(refuse_every=2)  # the 2nd, 4th, ... connection is closed at once
    running = await routed_to(start_server, mx)
    recipients = [f"user{i}@{DEST}" for i in range(40)]
    await send(running, recipients)  # 40 rows due at once: several connections open

    delivered = await wait_events(running, "delivered", count=40, timeout=15)
    assert sorted(e["recipient"] for e in delivered) == sorted(recipients)
    assert sorted(m.rcpt_to for m in mx.messages) == sorted(recipients)  # each once
    assert mx.refused >= 1  # the server did refuse some connection
    failed = await storeview.events(running.services.store, "failed")
    assert all(e["severity"] == "temporary" for e in failed)
    # each refused connection costs at most the one message it was opened for, not the
    # whole site's waiting mail
    assert len(failed) <= mx.refused, [e["recipient"] for e in failed]


# -- 3. a failed TLS upgrade ------------------------------------------------------------------------


async def test_failed_tls_handshake_falls_back_to_plain_text_when_tls_is_not_required(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(break_tls=True)  # the client's handshake fails with an SSL error
    running = await routed_to(start_server, mx, outbound__retry_intervals_s=[60])
    rcpt = f"alice@{DEST}"
    await send(running, rcpt)

    [delivered] = await wait_events(running, "delivered", rcpt)
    status = delivered["delivery-status"]
    assert status["tls"] is False
    assert status["certificate-verified"] is False
    assert status["attempt-no"] == 1
    [got] = mx.to(rcpt)
    assert not got.tls
    assert await wait_events(running, "failed", rcpt, timeout=0) == []


async def test_failed_tls_handshake_is_a_temporary_4_7_5_failure_when_tls_is_required(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(break_tls=True)
    running = await routed_to(start_server, mx, outbound__retry_intervals_s=[60])
    rcpt = f"alice@{DEST}"
    message_id = await send(running, rcpt, ("o:require-tls", "yes"))

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "temporary"
    status = failed["delivery-status"]
    assert status["enhanced-code"] == "4.7.5"
    assert status["tls"] is False
    assert "retry-seconds" in status
    assert await state_of(running, message_id, rcpt) == "queued"
    await asyncio.sleep(0.2)
    assert mx.messages == []
    assert mx.attempts[rcpt] == 0  # not even a RCPT in plain text


async def test_connection_dropped_during_tls_handshake_falls_back_to_plain_text(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(tls=certificateless_tls())
    running = await routed_to(start_server, mx, outbound__retry_intervals_s=[60])
    rcpt = f"alice@{DEST}"
    await send(running, rcpt)

    [first] = await first_outcome(running, rcpt)
    assert first["event"] == "delivered", first["delivery-status"]
    assert first["delivery-status"]["tls"] is False
    [got] = mx.to(rcpt)
    assert not got.tls


# -- 4. a refused envelope sender -------------------------------------------------------------------


async def test_refused_envelope_sender_fails_the_message_without_suppressing_the_recipient(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(
        mail_reply="553 5.1.8 <{sender}>: Sender address rejected: Domain not found"
    )
    running = await routed_to(start_server, mx)
    rcpt = f"alice@{DEST}"
    message_id = await send(running, rcpt)

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    status = failed["delivery-status"]
    assert status["code"] == 553
    assert status["enhanced-code"] == "5.1.8"
    assert "Sender address rejected" in status["message"]
    assert await state_of(running, message_id, rcpt) == "failed"
    assert mx.attempts[rcpt] == 0  # refused at MAIL FROM, before any RCPT
    code, body = await bounce_entry(running, rcpt)
    assert code == 404, body


# -- 5. a 421 to EHLO ---------------------------------------------------------------------------------


async def test_421_in_answer_to_ehlo_pauses_the_site_as_a_throttle_not_as_unreachable(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(ehlo_reply="421 4.7.0 Too busy, try later")
    running = await routed_to(start_server, mx)
    first, second = f"alice@{DEST}", f"bob@{DEST}"
    await send(running, first)

    [failed] = await wait_events(running, "failed", first)
    assert failed["severity"] == "temporary"
    assert failed["reason"] == "espblock"
    status = failed["delivery-status"]
    assert status["code"] == 421
    assert status["enhanced-code"] == "4.7.0"
    assert "Too busy" in status["message"]
    assert status["retry-seconds"] >= 30  # retried after the site's pause, not in 0.2 s
    assert mx.connections == 1

    # the site is paused: later mail waits in the queue (no connection, no failure) instead
    # of failing at once with the site's last reply, as mail for an unreachable site would
    second_id = await send(running, second)
    await asyncio.sleep(0.5)
    assert await wait_events(running, "failed", second, timeout=0) == []
    assert await state_of(running, second_id, second) == "queued"
    assert mx.connections == 1


# -- 6. names DNS cannot carry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rcpt",
    [
        "a@" + "a" * 64 + ".example.net",  # an ASCII label of 64 bytes
        "a@" + "ü" * 60 + ".example.net",  # 60 characters, far more than 63 bytes in punycode
    ],
    ids=["ascii-label-64", "idn-punycode-label-over-63"],
)
async def test_accept_refuses_a_recipient_domain_dns_cannot_carry(
    running: Running, api: aiohttp.ClientSession, rcpt: str
):
    label = rcpt.partition("@")[2].split(".")[0]
    on_the_wire = label if label.isascii() else "xn--" + label.encode("punycode").decode()
    assert len(on_the_wire) > 63
    form = {"from": f"s@{DOMAIN}", "to": rcpt, "subject": "Hi", "text": "Hello"}
    async with api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        body = await resp.json()
        assert resp.status == 400, body
    assert body["message"] == "to parameter is not a valid address. please check documentation"
    counts = await storeview.counts(running.services.store)
    assert counts["messages"] == 0 and counts["recipients"] == 0


# -- 7. lone CRs and DKIM -------------------------------------------------------------------------------


async def test_body_with_a_lone_cr_is_delivered_with_a_valid_dkim_signature(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures()
    running = await routed_to(start_server, mx)
    rcpt = f"alice@{DEST}"
    mime = (
        f"From: s@{DOMAIN}\r\nTo: {rcpt}\r\nSubject: cr\r\n\r\n"
        "first half\rsecond half\r\nlast line\r\n"
    ).encode()
    form = aiohttp.FormData()
    form.add_field("to", rcpt)
    form.add_field("message", mime, filename="message")
    code, body = await api_call(running, "POST", f"/v3/{DOMAIN}/messages.mime", data=form)
    assert code == 200, body

    [got] = await mx.wait_for(1)
    assert b"first half\r\nsecond half\r\n" in got.data  # the lone CR became a line end
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()
    assert storeview.parse(got.data)["DKIM-Signature"] is not None
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record)


# -- 8. return paths -------------------------------------------------------------------------------------

SECRET = b"s" * 32


def test_return_path_address_parses_back_to_its_row_and_is_genuine():
    paths = ReturnPaths(SECRET)
    address = paths.address(123456, "msgkey1", DOMAIN)
    assert address.startswith("bounce+") and address.endswith("@" + DOMAIN)
    claim = ReturnPaths.parse(address)
    assert claim is not None
    assert claim.recipient_id == 123456
    assert claim.domain == DOMAIN
    assert paths.genuine(claim, "msgkey1")


def test_return_path_with_a_tampered_tag_is_not_genuine():
    paths = ReturnPaths(SECRET)
    claim = ReturnPaths.parse(paths.address(42, "msgkey1", DOMAIN))
    assert claim is not None
    last = "0" if claim.tag[-1] != "0" else "1"
    tampered = BounceAddress(claim.recipient_id, claim.tag[:-1] + last, claim.domain)
    assert not paths.genuine(tampered, "msgkey1")


def test_return_path_tag_is_not_genuine_for_another_recipient_row():
    paths = ReturnPaths(SECRET)
    claim = ReturnPaths.parse(paths.address(42, "msgkey1", DOMAIN))
    assert claim is not None
    assert not paths.genuine(BounceAddress(43, claim.tag, claim.domain), "msgkey1")


def test_return_path_is_not_genuine_under_another_secret():
    claim = ReturnPaths.parse(ReturnPaths(SECRET).address(42, "msgkey1", DOMAIN))
    assert claim is not None
    assert not ReturnPaths(b"t" * 32).genuine(claim, "msgkey1")


def test_return_path_is_not_genuine_for_another_message_key():
    paths = ReturnPaths(SECRET)
    claim = ReturnPaths.parse(paths.address(42, "msgkey1", DOMAIN))
    assert claim is not None
    assert not paths.genuine(claim, "msgkey2")


def test_return_path_is_not_genuine_for_another_domain():
    paths = ReturnPaths(SECRET)
    address = paths.address(42, "msgkey1", DOMAIN)
    moved = ReturnPaths.parse(address.replace("@" + DOMAIN, "@other.example.test"))
    assert moved is not None
    assert not paths.genuine(moved, "msgkey1")


@pytest.mark.parametrize(
    "address",
    [
        f"sender@{DOMAIN}",
        f"bounce@{DOMAIN}",
        f"bounce+@{DOMAIN}",
        f"bounce+abc@{DOMAIN}",
        f"bounce+abc.@{DOMAIN}",
        f"bounce+abc.xyz@{DOMAIN}",  # the tag is hex
        "bounce+abc.0123456789",
        "",
    ],
)
def test_address_not_in_bounce_form_parses_to_none(address: str):
    assert ReturnPaths.parse(address) is None


async def test_captured_mail_from_is_a_genuine_return_path_for_its_recipient_row(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures()
    running = await routed_to(start_server, mx)
    alice, bob = f"alice@{DEST}", f"bob@{DEST}"
    await send(running, [alice, bob])
    got = {m.rcpt_to: m for m in await mx.wait_for(2)}

    store = running.services.store
    secret = await store.fetchone("SELECT value FROM server_secrets WHERE name = 'return_path'")
    assert secret is not None
    paths = ReturnPaths(bytes(secret["value"]))
    rows = {r["address"]: r for r in await recipient_rows(store)}
    for rcpt in (alice, bob):
        claim = ReturnPaths.parse(got[rcpt].mail_from)
        assert claim is not None, got[rcpt].mail_from
        assert claim.recipient_id == rows[rcpt]["id"]
        assert claim.domain == DOMAIN
        assert paths.genuine(claim, rows[rcpt]["message_key"])
        assert not paths.genuine(claim, "another-message-key")
    assert got[alice].mail_from != got[bob].mail_from


# -- 9. purge -----------------------------------------------------------------------------------------


async def test_purge_removes_finished_messages_and_keeps_queued_ones(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures()
    running = await routed_to(start_server, mx, outbound__message_retention_days=0)
    done, later = f"alice@{DEST}", f"bob@{DEST}"
    done_id = await send(running, done)
    later_id = await send(running, later, ("o:deliverytime", str(int(time.time()) + 3600)))
    await wait_events(running, "delivered", done)
    assert await state_of(running, done_id, done) == "delivered"

    assert running.server.outbound is not None and running.server.outbound.scheduler
    await running.server.outbound.scheduler.purge_finished()

    store = running.services.store
    assert await storeview.recipients(store, done_id) == []
    [row] = await storeview.recipients(store, later_id)
    assert row["address"] == later and row["state"] == "queued"
    kept = [r["message_id"] for r in await store.fetchall("SELECT message_id FROM messages")]
    assert kept == [later_id]
    assert len(await storeview.events(store, "delivered")) == 1  # events are kept on their own terms


# -- 10. stop -----------------------------------------------------------------------------------------


async def test_stop_during_deliveries_leaves_every_recipient_delivered_with_its_event_or_queued(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(delay_s=0.05)
    running = await routed_to(start_server, mx)
    recipients = [f"user{i}@{DEST}" for i in range(20)]
    await send(running, recipients)
    await mx.wait_for(3)
    await running.server.stop()  # while the connections are sending

    async with storeview.reopened(running.services.config) as store:
        rows = {r["address"]: r["state"] for r in await recipient_rows(store)}
        delivered = [e["recipient"] for e in await storeview.events(store, "delivered")]
    assert sorted(rows) == sorted(recipients)
    assert len(delivered) == len(set(delivered))
    for rcpt, state in rows.items():
        assert state in ("delivered", "queued"), (rcpt, state)
        assert (state == "delivered") == (rcpt in delivered), (rcpt, state)
    assert "queued" in rows.values()  # stopped part way, or this test shows nothing

    received = [m.rcpt_to for m in mx.messages]
    assert len(received) == len(set(received))
    received_but_queued = [r for r in received if rows[r] == "queued"]
    # each would be sent again after a restart (a duplicate): the outcome of every message
    # the remote server took must commit before stop returns
    assert received_but_queued == [], f"{len(received_but_queued)} received but still queued"
    assert all(r in delivered for r in received)


async def test_stop_past_the_grace_while_the_store_stalls_still_records_what_the_remote_took(
    start_server: Callable[..., Any], captures: Callable[..., Any]
):
    mx = await captures(delay_s=0.1)
    running = await routed_to(start_server, mx, outbound__stop_grace_s=0.1)
    recipients = [f"user{i}@{DEST}" for i in range(20)]
    await send(running, recipients)
    await mx.wait_for(1)

    # another writer holds the database: outcome writes wait (the store's busy timeout is
    # 10 s, PostgreSQL's lock wait), and each connection is left waiting for its previous
    # outcome to commit
    async with writes_held(running.services.config) as release:
        release_later = asyncio.create_task(release_after(release, 0.75))
        try:
            await asyncio.sleep(0.35)  # each connection sends one more message meanwhile
            await running.server.stop()  # cancels the connections after 0.1 s, then waits
        finally:
            release_later.cancel()

    async with storeview.reopened(running.services.config) as store:
        rows = {r["address"]: r["state"] for r in await recipient_rows(store)}
    received = [m.rcpt_to for m in mx.messages]
    received_but_queued = [r for r in received if rows[r] == "queued"]
    assert received_but_queued == [], f"{len(received_but_queued)} received but still queued"
