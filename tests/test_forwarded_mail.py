"""Forwards of received mail (a route's `forward("someone@example.net")`): a stranger's message
goes out again through our queue, from our return path.

What these tests stop:
- a spoof laundered into a pass: a stranger writes `From: ceo@<a domain hosted here>`, a route
  forwards it, and our DKIM signature for that domain would make it pass DMARC at the next hop.
  Such a forward is signed only when the inbound SPF or DKIM result was aligned with its From;
- a stranger steering our sending: X-Mailgun-* control headers (tags, test mode, delivery
  time) or a multipart/mailgun-variables container in the stranger's message are never obeyed
  when we forward it.

Real server, real MX port, a capture SMTP server as the forward's destination, DNS from the
config's fixed answers (the stranger's DKIM key and SPF records are published there).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import aiosmtplib
import dkim
import pytest

from mta.domains import generate_dkim_key
from tests import storeview
from tests.capture import Capture, Captured
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

ELSEWHERE = "elsewhere.example.test"
BOSS = f"boss@{ELSEWHERE}"
INFO = f"info@{DOMAIN}"
STRANGER = "stranger.example.org"
OTHER_HOSTED = "brand.example.test"
SELECTOR = "corp"  # the From domain's own DKIM selector (not ours, which is "mta")


@functools.cache
def dkim_key(owner: str) -> tuple[str, str]:
    """(private PEM, public base64) of a domain's own DKIM key, made once per run."""
    return generate_dkim_key(1024)


# -- helpers -------------------------------------------------------------------------------------


def key_record(public: str) -> list[str]:
    return [f"v=DKIM1; k=rsa; p={public}"]


async def forwarding_server(
    start_server: Callable[..., Any], mx: Capture, **answers: list[str]
) -> Running:
    """Mail to info@ is forwarded to BOSS (delivered to `mx`). The domain keeps its default
    spam_action ("disabled"): no verdict is asked for in general, only for this check.
    `answers` are the DNS answers, keyed "name TYPE"."""
    running = await start_server(
        outbound__enabled=True,
        dns__static_mx={ELSEWHERE: [mx.address]},
        dns__answers=answers,
        inbound__retry_intervals_s=[0.2, 0.2],
    )
    assert (await running.services.domains.get(DOMAIN)).spam_action == "disabled"
    await running.services.domains.create(OTHER_HOSTED)
    async with running.session() as api, api.post("/v3/routes", data={
        "priority": "0",
        "expression": f'match_recipient("{INFO}")',
        "action": f'forward("{BOSS}")',
    }) as resp:
        assert resp.status == 200, await resp.text()
    return running


def message(from_: str, extra: str = "", body: str = "Please wire the money today.\r\n") -> bytes:
    return (
        f"From: CEO <{from_}>\r\nTo: {INFO}\r\nSubject: Urgent\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-Id: <{time.time_ns()}@{STRANGER}>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def signed(data: bytes, domain: str) -> bytes:
    """`data` with a DKIM signature of `domain` (its key, selector SELECTOR), made by dkimpy."""
    signature = dkim.sign(
        data, SELECTOR.encode(), domain.encode(), dkim_key(domain)[0].encode(),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + data


async def send_mx(running: Running, data: bytes, sender: str = f"mallory@{STRANGER}") -> None:
    """One message to info@ through the MX port, as a stranger's server sends it."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.server.smtp.port("mx"),
                             start_tls=False)
    await client.connect()
    try:
        await client.sendmail(sender, [INFO], data)
    finally:
        client.close()


async def forwarded(running: Running, mx: Capture, data: bytes, **send: str) -> Captured:
    await send_mx(running, data, **send)
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == BOSS
    return got


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature header, in order."""
    found = []
    for value in storeview.parse(data).get_all("DKIM-Signature") or []:
        tags = {}
        for part in str(value).replace("\r\n", "").split(";"):
            name, sep, content = part.partition("=")
            if sep:
                tags[name.strip().encode()] = "".join(content.split()).encode()
        found.append(tags)
    return found


async def our_signature_verifies(running: Running, data: bytes) -> bool:
    """dkimpy's verdict on the first (outermost) signature, with our key published."""
    ours = (await running.services.domains.get(DOMAIN)).dkim_record.encode()
    theirs = key_record(dkim_key(DOMAIN)[1])[0].encode()

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        if name.startswith(b"mta._domainkey."):
            return ours
        return theirs if name.startswith(f"{SELECTOR}._domainkey.".encode()) else None

    return bool(dkim.verify(data, dnsfunc=txt))


async def events_for(running: Running, kind: str, recipient: str,
                     timeout: float = 10) -> list[dict[str, Any]]:
    """`kind` events about `recipient`, waiting for the first one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in await storeview.events(running.services.store, kind)
                 if e["recipient"] == recipient]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


# -- DKIM: a forward is signed for a hosted From only when that From was authenticated --------


@pytest.mark.parametrize(
    "from_", [f"ceo@{DOMAIN}", f"ceo@eu.{DOMAIN}", f"ceo@{OTHER_HOSTED}"],
    ids=["the route's domain", "a name under it", "another hosted domain"],
)
async def test_a_strangers_spoof_of_a_hosted_from_is_forwarded_without_our_signature(
    start_server: Callable[..., Any], mx: Capture, from_: str
):
    running = await forwarding_server(start_server, mx)
    got = await forwarded(running, mx, message(from_))
    assert signatures(got.data) == []
    assert storeview.parse(got.data)["From"] == f"CEO <{from_}>"
    [delivered] = await events_for(running, "delivered", BOSS)
    assert "primary-dkim" not in delivered


async def test_spf_and_dkim_passes_for_the_strangers_own_domain_do_not_get_a_spoof_signed(
    start_server: Callable[..., Any], mx: Capture
):
    """Authenticated, but as someone else: nothing vouches for the From domain."""
    running = await forwarding_server(
        start_server, mx,
        **{f"{STRANGER} TXT": ["v=spf1 ip4:127.0.0.1 -all"],
           f"{SELECTOR}._domainkey.{STRANGER} TXT": key_record(dkim_key(STRANGER)[1])},
    )
    data = signed(message(f"ceo@{DOMAIN}"), STRANGER)
    got = await forwarded(running, mx, data)
    assert [s[b"d"] for s in signatures(got.data)] == [STRANGER.encode()]  # theirs, kept


async def test_a_forward_of_mail_dkim_signed_by_its_hosted_from_domain_is_signed_again(
    start_server: Callable[..., Any], mx: Capture
):
    running = await forwarding_server(
        start_server, mx, **{f"{SELECTOR}._domainkey.{DOMAIN} TXT": key_record(dkim_key(DOMAIN)[1])}
    )
    got = await forwarded(running, mx, signed(message(f"ceo@{DOMAIN}"), DOMAIN))
    ours, theirs = signatures(got.data)
    assert (ours[b"d"], ours[b"s"]) == (DOMAIN.encode(), b"mta")
    assert (theirs[b"d"], theirs[b"s"]) == (DOMAIN.encode(), SELECTOR.encode())
    assert await our_signature_verifies(running, got.data)


async def test_a_forward_of_mail_whose_spf_passed_for_its_hosted_from_domain_is_signed_again(
    start_server: Callable[..., Any], mx: Capture
):
    running = await forwarding_server(
        start_server, mx, **{f"{DOMAIN} TXT": ["v=spf1 ip4:127.0.0.1 -all"]}
    )
    got = await forwarded(running, mx, message(f"ceo@{DOMAIN}"), sender=f"ceo@{DOMAIN}")
    assert [s[b"d"] for s in signatures(got.data)] == [DOMAIN.encode()]
    assert await our_signature_verifies(running, got.data)


async def test_a_forward_of_mail_from_a_domain_not_hosted_here_is_signed_as_before(
    start_server: Callable[..., Any], mx: Capture
):
    running = await forwarding_server(start_server, mx)
    got = await forwarded(running, mx, message(f"alice@{STRANGER}"))
    [ours] = signatures(got.data)
    assert (ours[b"d"], ours[b"s"]) == (DOMAIN.encode(), b"mta")
    assert await our_signature_verifies(running, got.data)
    [delivered] = await events_for(running, "delivered", BOSS)
    assert delivered["primary-dkim"] == DOMAIN


# -- a stranger's X-Mailgun-* headers steer nothing -----------------------------------------------


def tomorrow() -> str:
    return email.utils.formatdate(time.time() + 86400)


async def assert_sent_plainly(running: Running) -> None:
    """The forward's events: no tags, not test mode, not scheduled."""
    [accepted] = await events_for(running, "accepted", BOSS)
    [delivered] = await events_for(running, "delivered", BOSS)
    for event in (accepted, delivered):
        assert event["tags"] == []
        assert event["flags"]["is-test-mode"] is False
    assert "delivery-time" not in accepted


async def test_a_strangers_x_mailgun_control_headers_have_no_effect_on_the_forward(
    start_server: Callable[..., Any], mx: Capture
):
    running = await forwarding_server(start_server, mx)
    steering = message(
        f"alice@{STRANGER}",
        extra="X-Mailgun-Tag: pwned\r\nX-Mailgun-Drop-Message: yes\r\n"
        f"X-Mailgun-Deliver-By: {tomorrow()}\r\nX-Mailgun-Dkim: no\r\n",
    )
    got = await forwarded(running, mx, steering)  # delivered now, not tomorrow, not dropped
    assert b"X-Mailgun-Tag" not in got.data and b"pwned" not in got.data
    await assert_sent_plainly(running)
    assert len(signatures(got.data)) == 1  # X-Mailgun-Dkim: no was not obeyed either


async def test_a_strangers_mailgun_variables_container_is_forwarded_as_it_is_not_unwrapped(
    start_server: Callable[..., Any], mx: Capture
):
    """The container is for our customers' own submissions: in a stranger's message it is
    just content. Unwrapped, its inner message's X-Mailgun-* headers would steer the forward
    and its variables would be put into it."""
    running = await forwarding_server(start_server, mx)
    variables = json.dumps({BOSS: {"who": "UNWRAPPED"}})
    container = message(
        f"alice@{STRANGER}",
        extra='MIME-Version: 1.0\r\nContent-Type: multipart/mailgun-variables; boundary="mgv"\r\n',
        body=(
            "--mgv\r\nContent-Type: application/json\r\n\r\n"
            f"{variables}\r\n"
            "--mgv\r\nContent-Type: message/rfc822\r\n\r\n"
            f"From: alice@{STRANGER}\r\nTo: {BOSS}\r\nSubject: Inner %recipient.who%\r\n"
            "X-Mailgun-Tag: pwned\r\nX-Mailgun-Drop-Message: yes\r\n"
            f"X-Mailgun-Deliver-By: {tomorrow()}\r\n\r\n"
            "Hello %recipient.who%\r\n"
            "--mgv--\r\n"
        ),
    )
    got = await forwarded(running, mx, container)
    outer = storeview.parse(got.data)
    assert outer.get_content_type() == "multipart/mailgun-variables"
    assert outer["Subject"] == "Urgent"
    assert b"UNWRAPPED" not in got.data.split(b"\r\n\r\n", 1)[0]  # headers untouched
    assert b"Subject: Inner %recipient.who%" in got.data and b"Hello %recipient.who%" in got.data
    await assert_sent_plainly(running)
