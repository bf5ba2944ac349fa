"""A stranger against the route patterns, over real sockets (issue 9): a route whose pattern
backtracks badly on the stranger's Subject is given only the message's matching time, counts
as not matched when that runs out (a warning names it; with no route matched the stranger gets
a temporary refusal), and the server answers the stranger and goes on serving other clients
meanwhile. Real server, API over HTTP, mail over the MX port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.conftest import DOMAIN

pytestmark = pytest.mark.asyncio

SENDER = "stranger@elsewhere.example.org"


async def create_route(api: aiohttp.ClientSession, expression: str, priority: int) -> str:
    form = [("priority", str(priority)), ("expression", expression), ("action", "store()")]
    async with api.post("/v3/routes", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["route"]["id"]


def message(to: str, subjects: list[str]) -> bytes:
    head = "".join(f"Subject: {subject}\r\n" for subject in subjects)
    return f"From: <{SENDER}>\r\nTo: <{to}>\r\n{head}\r\nHello\r\n".encode()


async def reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = await reader.readline()
        lines.append(line.decode().rstrip())
        if line[3:4] != b"-":
            return "\n".join(lines)


async def send_up_to_the_reply(
    port: int, to: str, data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A whole message sent over a plain socket, its final reply not yet read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reply(reader)).startswith("220")
    for command, code in [
        ("EHLO stranger.example.org", "250"),
        (f"MAIL FROM:<{SENDER}>", "250"),
        (f"RCPT TO:<{to}>", "250"),
        ("DATA", "354"),
    ]:
        writer.write(command.encode() + b"\r\n")
        assert (await reply(reader)).startswith(code), command
    writer.write(data + b"\r\n.\r\n")
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize(
    ("pattern", "subjects"),
    [
        # some ms per value in `regex` (seconds in `re`), so the stranger repeats the Subject
        pytest.param(
            "(a?){20}a{20}[ab]{900}$", ["a" * 40 + "b" * 900 + "c"] * 200, id="costly-per-value"
        ),
        # exponential in `regex` too: one value would take forever
        pytest.param("(a|aa)+$", ["a" * 900 + "!"], id="runaway"),
    ],
)
async def test_a_strangers_subject_that_makes_a_route_pattern_backtrack_cannot_stall_the_server(
    start_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    pattern: str,
    subjects: list[str],
):
    running = await start_server()
    async with running.session() as api:
        hostile = await create_route(api, f'match_header("Subject", "{pattern}")', 0)
        await create_route(api, f'match_recipient("friend@{DOMAIN}")', 1)
    port = running.server.smtp.port("mx")
    friend = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await friend.connect()
    served: list[int] = []
    with caplog.at_level(logging.WARNING, "mta.inbound.routes"):
        to = f"anyone@{DOMAIN}"
        reader, writer = await send_up_to_the_reply(port, to, message(to, subjects))
        answer = asyncio.create_task(reply(reader))
        async with running.session() as api:
            # another client over SMTP and one over HTTP, served all the while the server reads,
            # matches and answers the stranger's message
            while not answer.done() or not served:
                errors, _ = await friend.sendmail(
                    SENDER, [f"friend@{DOMAIN}"], message(f"friend@{DOMAIN}", ["Hi"])
                )
                served.append(250 if not errors else 0)
                async with api.get("/v3/routes") as resp:
                    served.append(resp.status)
        answered = await answer
    friend.close()
    writer.close()
    # answered: a temporary refusal, as time ran out before any route matched (the sender
    # tries again later; mail that only met a busy server is not refused for good)
    assert answered.startswith("451 4.3.0"), answered
    assert f"matching time ran out at route {hostile} (priority 0)" in caplog.text
    assert set(served) <= {200, 250}, served
