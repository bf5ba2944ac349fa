"""What one request can make the server do is bounded: address fields are capped before any
parsing (and parsed in linear time), header blocks are capped in bytes and fields, the MX
refuses messages of too many MIME parts or too deep a nesting, DATA waits on disk rather than
in memory past a shared budget (and gets 451 past the disk budget), and a client must keep
sending: a byte now and then holds no session. How long each takes is measured by
bench/adversarial.py, not asserted here."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mta.budget import ByteBudget
from tests import storeview
from tests.conftest import DOMAIN, Running
from tests.smtp_clients import message, queued_id, submit
from tests.test_inbound import add_route, send_mx

pytestmark = pytest.mark.asyncio

GOOD = {"from": f"me@{DOMAIN}", "to": "bob@example.net", "subject": "Hi", "text": "body"}


async def send(api, data: Any) -> tuple[int, str]:
    async with api.post(f"/v3/{DOMAIN}/messages", data=data) as response:
        return response.status, (await response.json(content_type=None))["message"]


# -- addresses ------------------------------------------------------------------------------------


async def test_a_megabyte_from_field_is_refused_before_it_is_parsed(running: Running, api):
    assert await send(api, GOOD | {"from": " " * 1_000_000 + f"me@{DOMAIN}"}) == (
        400, "from, to, cc and bcc are limited to 262144 bytes in all"
    )


async def test_sixteen_thousand_spaces_in_from_are_just_a_bad_address(running: Running, api):
    assert await send(api, GOOD | {"from": "a" + " " * 16_000 + "b"}) == (
        400, "from parameter is not a valid address. please check documentation"
    )


async def test_ten_thousand_nested_comments_are_a_bad_address_not_a_crash(api):
    status, text = await send(api, GOOD | {"to": "(" * 10_000 + "bob@example.net"})
    assert (status, text) == (400, "to parameter is not a valid address. please check documentation")


async def test_more_addresses_than_recipients_allowed_are_refused_before_parsing(api):
    to = ",".join(f"r{i}@example.net" for i in range(2_100))
    assert await send(api, GOOD | {"to": to}) == (400, "Too many recipients, max is 1000")


# -- header blocks ---------------------------------------------------------------------------------


async def test_a_header_block_of_too_many_fields_is_refused_on_submission(
    mail: Running, clients
):
    client = await clients.smtp(mail)
    mime = message(*(f"X-A{i}: b" for i in range(1_001)))
    assert await submit(client, mime) == "552 5.3.4 Message header has more than 1000 fields"


async def test_a_header_block_of_too_many_fields_is_refused_on_the_mx(start_server):
    running = await start_server()
    await add_route(running, 'match_recipient(".*")', "stop()")
    headers = "".join(f"X-A{i}: b\r\n" for i in range(1_001))
    mime = f"From: a@example.org\r\n{headers}Subject: s\r\n\r\nbody\r\n".encode()
    assert await send_mx(running, f"info@{DOMAIN}", mime) == (
        552, "5.3.4 Message header has more than 1000 fields"
    )


async def test_an_uploaded_message_of_too_many_header_fields_is_refused(running: Running, api):
    headers = "".join(f"X-A{i}: b\r\n" for i in range(1_001))
    mime = f"From: me@{DOMAIN}\r\n{headers}\r\nbody\r\n"
    async with api.post(f"/v3/{DOMAIN}/messages.mime",
                        data={"to": "bob@example.net", "message": mime}) as response:
        assert response.status == 400
        assert (await response.json())["message"] == (
            "Message header has more than 1000 fields"
        )


# -- MIME structure on the MX ----------------------------------------------------------------------


def multipart(parts: int) -> bytes:
    return (
        b"From: a@example.org\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        + b"--XX\r\n\r\n\r\n" * parts + b"--XX--\r\n"
    )


def nested(depth: int) -> bytes:
    body = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=B0\r\n\r\n"
    for level in range(depth):
        body += b"--B%d\r\nContent-Type: multipart/mixed; boundary=B%d\r\n\r\n" % (level, level + 1)
    body += b"--B%d\r\n\r\nleaf\r\n" % depth
    for level in range(depth, -1, -1):
        body += b"--B%d--\r\n" % level
    return body


async def test_the_mx_refuses_a_message_of_too_many_mime_parts(start_server):
    running = await start_server(inbound__max_mime_parts=50)
    await add_route(running, 'match_recipient(".*")', "stop()")
    to = f"info@{DOMAIN}"
    assert (await send_mx(running, to, multipart(50)))[0] == 250
    assert await send_mx(running, to, multipart(100_000)) == (
        552, "5.3.4 Message has more than 50 MIME parts"
    )


async def test_the_mx_refuses_mime_parts_nested_too_deep(start_server):
    running = await start_server()
    await add_route(running, 'match_recipient(".*")', "stop()")
    to = f"info@{DOMAIN}"
    assert (await send_mx(running, to, nested(18)))[0] == 250
    assert await send_mx(running, to, nested(40)) == (
        552, "5.3.4 MIME parts nest deeper than 20"
    )


# -- DATA in memory, on disk, and not at all ---------------------------------------------------------


def spool_files(running: Running) -> list[Path]:
    spool = Path(running.services.config.server.data_dir) / "spool"
    return list(spool.iterdir()) if spool.exists() else []


async def test_data_past_the_memory_budget_waits_on_disk_and_arrives_intact(
    mail_server, clients
):
    running = await mail_server(smtp__data_memory_bytes=4096)
    client = await clients.smtp(running)
    body = "".join(f"line {i:06d} of a message bigger than the memory budget\r\n"
                   for i in range(5_000))
    mime = message(body=body)
    message_id = queued_id(await submit(client, mime))
    stored = (await storeview.recipients(running.services.store, message_id))[0]["mime"]
    assert stored.endswith(mime.split(b"\r\n\r\n", 1)[1])
    assert spool_files(running) == []  # spooled to unlinked files: nothing is left behind
    assert (running.server.smtp.spool.memory_used, running.server.smtp.spool.disk_used) == (0, 0)


async def test_a_message_held_in_memory_gives_its_share_of_the_budget_back(mail: Running, clients):
    client = await clients.smtp(mail)
    for _ in range(3):
        assert (await submit(client, message())).startswith("250 2.0.0 OK")
    assert (mail.server.smtp.spool.memory_used, mail.server.smtp.spool.disk_used) == (0, 0)


async def test_past_the_disk_budget_a_message_gets_451_and_the_session_goes_on(
    mail_server, clients
):
    running = await mail_server(smtp__data_memory_bytes=4096, smtp__spool_max_bytes=65536)
    client = await clients.smtp(running)
    big = message(body="x" * 76 + "\r\n" * 1 + ("y" * 76 + "\r\n") * 2_000)
    assert await submit(client, big) == (
        "451 4.3.1 Insufficient system storage, please try again later"
    )
    assert (await submit(client, message())).startswith("250 2.0.0 OK: queued as")


async def test_a_slow_data_upload_is_closed_past_the_minimum_rate(mail_server, clients):
    running = await mail_server(smtp__min_data_rate=10_000_000, smtp__data_rate_grace_s=0.2)
    raw = await clients.raw(running)
    await raw.login()
    assert (await raw.command("MAIL FROM:<alice@mg.example.test>"))[0].startswith("250")
    assert (await raw.command("RCPT TO:<bob@example.net>"))[0].startswith("250")
    assert (await raw.command("DATA"))[0].startswith("354")
    raw.send(b"Subject: slow\r\n")
    assert await raw.reply(timeout=10) == ["421 4.4.2 Data too slow, closing"]
    assert await raw.closed()


async def test_a_byte_now_and_then_does_not_hold_a_session(mail_server, clients):
    running = await mail_server(smtp__idle_timeout_s=0.5)
    raw = await clients.raw(running, "submission")
    trickle = b"NOOP" + b" " * 100
    closed = None
    for byte in trickle:  # a command that never ends, a byte at a time
        raw.send(bytes([byte]))
        await asyncio.sleep(0.1)
        if raw.reader.at_eof() or raw.reader._buffer:  # type: ignore[attr-defined]
            closed = await raw.reply()
            break
    assert closed == ["421 4.4.2 Idle too long, closing"]


# -- the shared budget of bytes being accepted --------------------------------------------------------


class Holders:
    """Tasks that each take a share of a budget, note when they got it, and keep it until
    `release` is set."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.order: list[str] = []
        self.release = asyncio.Event()

    def start(self, name: str, size: int) -> asyncio.Task[None]:
        return asyncio.create_task(self._hold(name, size))

    async def _hold(self, name: str, size: int) -> None:
        async with self.budget.hold(size):
            self.order.append(name)
            await self.release.wait()


async def test_the_accepting_budget_holds_big_messages_back_in_order_and_frees_on_cancel():
    holders = Holders(ByteBudget(100))
    first = holders.start("first", 60)
    await asyncio.sleep(0)
    second = holders.start("second", 60)  # does not fit beside the first
    third = holders.start("third", 10)  # fits, but waits its turn behind the second
    cancelled = holders.start("cancelled", 30)
    await asyncio.sleep(0.01)
    assert holders.order == ["first"]
    cancelled.cancel()
    holders.release.set()
    await asyncio.gather(first, second, third, return_exceptions=True)
    assert holders.order == ["first", "second", "third"]
    assert holders.budget.used == 0


async def test_a_small_send_is_not_held_behind_big_ones_waiting_for_the_budget():
    holders = Holders(ByteBudget(6400))  # small: at most 100 bytes
    big = [holders.start(f"big{i}", 4000) for i in range(2)]
    await asyncio.sleep(0.01)
    small = holders.start("small", 50)
    await asyncio.sleep(0.01)
    assert holders.order == ["big0", "small"]  # big1 waits for room; the small one went past it
    holders.release.set()
    await asyncio.gather(*big, small)
    assert holders.order == ["big0", "small", "big1"]
    assert holders.budget.used == 0
