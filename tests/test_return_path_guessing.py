"""Forging a bounce or a complaint for someone else's recipient means guessing the HMAC tag of
its return path (`bounce+<id>.<tag>@domain`): the tag is long enough, and one report cannot
try more than a few tags however many of our bounce addresses it is sent to. Real server,
real MX session, a capture server as the recipients' MX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiosmtplib

from mta.inbound.reports import MAX_GUESSES
from mta.outbound.returnpath import ReturnPaths
from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.test_inbound import DEST, dsn, inbound_server, sent_to


def test_return_path_tag_carries_at_least_64_bits():
    claim = ReturnPaths.parse(ReturnPaths(b"s" * 32).address(42, "msgkey1", DOMAIN))
    assert claim is not None
    assert len(claim.tag) * 4 >= 64  # hex


async def send_mx_to(running: Running, recipients: list[str], data: bytes) -> int:
    """One MX transaction from the null sender (as DSNs come) to all `recipients`."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.server.smtp.port("mx"),
                             start_tls=False)
    await client.connect()
    try:
        await client.sendmail("", recipients, data)
        return 250
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code
    finally:
        client.close()


def wrong_tags(return_path: str, count: int) -> list[str]:
    """The genuine return path's recipient id with `count` other tags: guesses."""
    local, _, domain = return_path.partition("@")
    head, _, tag = local.rpartition(".")
    return [f"{head}.{n:0{len(tag)}x}@{domain}" for n in range(1, count + 1)]


async def test_one_dsn_sent_to_many_bounce_addresses_cannot_try_many_tags(
    start_server: Callable[..., Any], mx: Capture
):
    running = await inbound_server(start_server, mx)
    rcpt = f"gone@{DEST}"
    genuine = await sent_to(running, mx, rcpt)
    guesses = wrong_tags(genuine, MAX_GUESSES)

    # the genuine tag comes after the report's guesses are spent: it is not even checked
    code = await send_mx_to(running, [*guesses, genuine], dsn(genuine, rcpt))
    assert code == 550  # nothing took the report
    store = running.services.store
    assert [e for e in await storeview.events(store, "failed") if e["recipient"] == rcpt] == []
    async with running.session() as api, api.get(f"/v3/{DOMAIN}/bounces/{rcpt}") as resp:
        assert resp.status == 404

    # the same report sent to its own return path alone is taken
    assert await send_mx_to(running, [genuine], dsn(genuine, rcpt)) == 250
    assert len([e for e in await storeview.events(store, "failed") if e["recipient"] == rcpt]) == 1


async def test_a_dsn_with_fewer_wrong_tags_than_the_limit_still_reaches_its_recipient(
    start_server: Callable[..., Any], mx: Capture
):
    running = await inbound_server(start_server, mx)
    rcpt = f"gone@{DEST}"
    genuine = await sent_to(running, mx, rcpt)
    guesses = wrong_tags(genuine, MAX_GUESSES - 1)
    assert await send_mx_to(running, [*guesses, genuine], dsn(genuine, rcpt)) == 250
    store = running.services.store
    assert len([e for e in await storeview.events(store, "failed") if e["recipient"] == rcpt]) == 1
