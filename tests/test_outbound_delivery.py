"""Outbound delivery (manual: "Message Queue", "Tracking Deliveries", "Tracking Failures"):
queued mail leaves for the recipient domain's MX host, and every outcome is an event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import dkim
import pytest

from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"


async def deliver(running: Running, to: str, **fields: Any) -> str:
    async with running.session() as api:
        form = {"from": f"Sender <sender@{DOMAIN}>", "to": to, "subject": "Hi", "text": "Hello"}
        async with api.post(f"/v3/{DOMAIN}/messages", data=form | fields) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["id"].strip("<>")


async def events_of(running: Running, kind: str, count: int = 1, timeout: float = 10) -> list:
    store = running.services.store
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in await storeview.events(store) if e["event"] == kind]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_accepted_message_is_delivered_signed_and_recorded(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    message_id = await deliver(running, f"alice@{DEST}")
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"alice@{DEST}"
    assert got.mail_from.startswith("bounce+") and got.mail_from.endswith("@" + DOMAIN)
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record)
    [event] = await events_of(running, "delivered")
    assert event["recipient"] == f"alice@{DEST}"
    assert event["message"]["headers"]["message-id"] == message_id
    status = event["delivery-status"]
    assert status["code"] == 250
    assert status["mx-host"] == "127.0.0.1"
    assert status["attempt-no"] == 1


async def test_lines_starting_with_a_dot_arrive_as_they_were_sent(
    start_server: Callable[..., Any], mx: Capture
):
    """Dot-stuffing on the way out (RFC 5321 4.5.2): a lone dot must not end the message early
    and no line may gain a dot, the first line of the body and a last line without CRLF too."""
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    body = ".first line\r\n.\r\n..two dots\r\nmiddle\r\n. after a space\r\n.last"
    mime = f"From: Sender <sender@{DOMAIN}>\r\nTo: alice@{DEST}\r\nSubject: Dots\r\n\r\n{body}"
    form = aiohttp.FormData()
    form.add_field("to", f"alice@{DEST}")
    form.add_field("message", mime.encode(), filename="message.mime")
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages.mime",
                                                  data=form) as resp:
        assert resp.status == 200, await resp.text()
    [got] = await mx.wait_for(1)
    assert got.data.endswith(b"\r\n\r\n" + body.encode() + b"\r\n")
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record)


async def test_a_2048_bit_key_signs_as_well(start_server: Callable[..., Any], mx: Capture):
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    domain = await running.services.domains.create("big.example.test", dkim_key_bits=2048)
    async with running.session() as api:
        form = {"from": "s@big.example.test", "to": f"bob@{DEST}", "subject": "2048",
                "text": "Hello"}
        async with api.post("/v3/big.example.test/messages", data=form) as resp:
            assert resp.status == 200
    [got] = await mx.wait_for(1)
    record = domain.dkim_record.encode()
    assert b"d=big.example.test" in got.data
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record, minkey=2048)


async def test_every_copy_of_a_batch_is_signed_after_personalisation(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    variables = '{"ann@dest.example.test": {"name": "Ann"}, "ben@dest.example.test": {"name": "Ben"}}'
    form = [("from", f"s@{DOMAIN}"), ("to", f"ann@{DEST}"), ("to", f"ben@{DEST}"),
            ("subject", "Hi %recipient.name%"), ("text", "Hello"),
            ("recipient-variables", variables)]
    async with (
        running.session() as api,
        api.post(f"/v3/{DOMAIN}/messages", data=form) as resp,
    ):
        assert resp.status == 200
    got = await mx.wait_for(2)
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()
    subjects = set()
    for message in got:
        assert dkim.verify(message.data, dnsfunc=lambda name, timeout=5: record)
        subjects.add(storeview.parse(message.data)["Subject"])
    assert subjects == {"Hi Ann", "Hi Ben"}
