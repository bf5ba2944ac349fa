"""Outbound delivery when things go wrong, and the delivery options (manual: "Tracking Bounces",
"Tracking Failures", "Tracking Deliveries", "Sending in Test Mode", "Scheduling Delivery";
mailgun-api.md §2.5, §4.6, §4.7).

Every test runs a real server and real capture SMTP servers (tests/capture.py) over loopback;
the capture server misbehaves on magic local parts (unknown@, full@, defer-once@, reject@,
drop@) or as a whole (mode="silent"). Timings come from config, so retries take fractions of a
second instead of minutes.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import socket
import time
from collections.abc import Callable
from typing import Any

import dkim
import pytest

from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
OTHER = "other.example.test"

# short timings, so that a retry or a timeout costs a fraction of a second
FAST: dict[str, Any] = {
    "outbound__enabled": True,
    "outbound__retry_intervals_s": [0.2],
    "outbound__connect_timeout_s": 0.5,
    "outbound__command_timeout_s": 1.0,
    "outbound__data_timeout_s": 1.0,
}


# -- helpers -----------------------------------------------------------------------------------


async def start(start_server: Callable[..., Any], **overrides: Any) -> Running:
    return await start_server(**(FAST | overrides))


async def routed_to(
    start_server: Callable[..., Any], capture: Capture, **overrides: Any
) -> Running:
    """A server whose mail for DEST and OTHER goes to `capture`."""
    static = {DEST: [capture.address], OTHER: [capture.address]}
    return await start(start_server, dns__static_mx=static, **overrides)


async def send(
    running: Running, to: str | list[str], *extra: tuple[str, str], **fields: str
) -> str:
    """POST /messages; returns the Message-Id without its angle brackets."""
    form: list[tuple[str, str]] = [
        ("from", f"Sender <sender@{DOMAIN}>"),
        ("subject", fields.pop("subject", "Hi")),
        ("text", "Hello"),
    ]
    form += [("to", t) for t in ([to] if isinstance(to, str) else to)]
    form += list(extra) + list(fields.items())
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["id"].strip("<>")


async def api_call(running: Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with running.session() as api, api.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_events(
    running: Running,
    kind: str,
    recipient: str | None = None,
    count: int = 1,
    timeout: float = 10.0,
    **match: Any,
) -> list[dict[str, Any]]:
    """Events of `kind` (for `recipient`, with top-level fields equal to `match`), polled from
    the store until there are `count` of them or `timeout` has passed."""
    store = running.services.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = [
            e
            for e in await storeview.events(store, kind)
            if (recipient is None or e.get("recipient") == recipient)
            and all(e.get(k) == v for k, v in match.items())
        ]
        if len(found) >= count or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def outcomes(running: Running, recipient: str) -> list[dict[str, Any]]:
    """Every delivered/failed event of one recipient, in order."""
    return [
        e
        for e in await storeview.events(running.services.store)
        if e["event"] in ("delivered", "failed") and e.get("recipient") == recipient
    ]


async def final_outcome(running: Running, recipient: str, timeout: float = 10.0) -> list:
    """The first delivered or permanently failed event of a recipient (waited for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done = [
            e
            for e in await outcomes(running, recipient)
            if e["event"] == "delivered" or e.get("severity") == "permanent"
        ]
        if done or loop.time() > deadline:
            return done[:1]
        await asyncio.sleep(0.05)


async def state_of(running: Running, message_id: str, address: str) -> str:
    rows = await storeview.recipients(running.services.store, message_id)
    [row] = [r for r in rows if r["address"] == address]
    return row["state"]


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def bounce_entry(running: Running, address: str) -> tuple[int, Any]:
    return await api_call(running, "GET", f"/v3/{DOMAIN}/bounces/{address}")


# -- 1. soft bounces are retried -----------------------------------------------------------------


async def test_soft_4xx_is_a_temporary_failure_then_delivered_on_retry_exactly_once(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"defer-once@{DEST}"
    await send(running, rcpt)

    [delivered] = await wait_events(running, "delivered", rcpt)
    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "temporary"
    assert failed["log-level"] == "warn"
    status = failed["delivery-status"]
    assert status["code"] == 451
    assert status["enhanced-code"] == "4.3.0"
    assert "Temporary local problem" in status["message"]
    assert status["attempt-no"] == 1
    assert isinstance(status["retry-seconds"], int) and status["retry-seconds"] >= 0
    assert status["mx-host"] == "127.0.0.1"
    assert status["bounce-type"] == "soft"

    assert delivered["delivery-status"]["attempt-no"] == 2
    assert delivered["delivery-status"]["code"] == 250
    assert delivered["timestamp"] > failed["timestamp"]
    await asyncio.sleep(0.4)  # a second retry would have come by now
    assert len(mx.to(rcpt)) == 1
    assert [e["event"] for e in await outcomes(running, rcpt)] == ["failed", "delivered"]


# -- 2. hard bounces are suppressed ----------------------------------------------------------------


async def test_hard_bounce_550_5_1_1_is_permanent_and_added_to_bounces(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"unknown@{DEST}"
    message_id = await send(running, rcpt)

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    assert failed["reason"] == "bounce"
    assert failed["log-level"] == "error"
    status = failed["delivery-status"]
    assert status["code"] == 550
    assert status["enhanced-code"] == "5.1.1"
    assert "does not exist" in status["message"]
    assert "retry-seconds" not in status
    assert status["bounce-type"] == "hard"
    assert await state_of(running, message_id, rcpt) == "failed"

    code, entry = await bounce_entry(running, rcpt)
    assert code == 200, entry
    assert entry["address"] == rcpt
    assert entry["code"] == "550"
    assert "does not exist" in entry["error"]


async def test_message_to_a_bounced_address_fails_suppress_bounce_without_contacting_the_mx(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"unknown@{DEST}"
    await send(running, rcpt)
    await wait_events(running, "failed", rcpt, reason="bounce")
    assert mx.attempts[rcpt] == 1

    second = await send(running, rcpt)
    [suppressed] = await wait_events(running, "failed", rcpt, reason="suppress-bounce")
    assert suppressed["message"]["headers"]["message-id"] == second
    assert suppressed["severity"] == "permanent"
    assert suppressed["log-level"] == "error"
    status = suppressed["delivery-status"]
    assert status["code"] == 605
    assert status["description"] == "Not delivering to previously bounced address"
    assert "bounce-type" not in status  # never tried: not a bounce
    assert mx.attempts[rcpt] == 1  # no second RCPT for the bounced address
    assert await state_of(running, second, rcpt) == "failed"


# -- 3. unsubscribes and complaints ------------------------------------------------------------------


async def test_address_unsubscribed_from_all_mail_fails_suppress_unsubscribe(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"carol@{DEST}"
    code, body = await api_call(
        running, "POST", f"/v3/{DOMAIN}/unsubscribes", data={"address": rcpt, "tag": "*"}
    )
    assert code == 200, body
    await send(running, rcpt, ("o:tag", "anything"))

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    assert failed["reason"] == "suppress-unsubscribe"
    assert failed["delivery-status"]["code"] == 606
    assert mx.attempts[rcpt] == 0 and mx.connections == 0


async def test_address_unsubscribed_from_one_tag_misses_only_mail_with_that_tag(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"dave@{DEST}"
    code, body = await api_call(
        running, "POST", f"/v3/{DOMAIN}/unsubscribes", data={"address": rcpt, "tag": "news"}
    )
    assert code == 200, body
    tagged = await send(running, rcpt, ("o:tag", "news"), subject="Tagged")
    untagged = await send(running, rcpt, subject="Untagged")

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["message"]["headers"]["message-id"] == tagged
    assert failed["reason"] == "suppress-unsubscribe"
    assert failed["delivery-status"]["code"] == 606
    [delivered] = await wait_events(running, "delivered", rcpt)
    assert delivered["message"]["headers"]["message-id"] == untagged
    [got] = mx.to(rcpt)
    assert storeview.parse(got.data)["Subject"] == "Untagged"


async def test_tag_unsubscribe_matches_message_tags_case_insensitively(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"frank@{DEST}"
    code, body = await api_call(
        running, "POST", f"/v3/{DOMAIN}/unsubscribes", data={"address": rcpt, "tag": "Newsletter"}
    )
    assert code == 200, body
    await send(running, rcpt, ("o:tag", "Newsletter"))

    [outcome] = await final_outcome(running, rcpt)
    assert outcome["event"] == "failed"
    assert outcome["reason"] == "suppress-unsubscribe"
    assert mx.to(rcpt) == []


async def test_address_that_complained_fails_suppress_complaint(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"erin@{DEST}"
    code, body = await api_call(running, "POST", f"/v3/{DOMAIN}/complaints", data={"address": rcpt})
    assert code == 200, body
    await send(running, rcpt)

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    assert failed["reason"] == "suppress-complaint"
    assert failed["delivery-status"]["code"] == 607
    assert mx.connections == 0


# -- 4./5. permanent refusals that are no hard bounce, and soft bounces -----------------------------


async def test_554_5_7_1_refusal_is_a_permanent_bounce_but_not_added_to_bounces(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"reject@{DEST}"
    await send(running, rcpt)

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    assert failed["reason"] == "bounce"
    assert failed["delivery-status"]["code"] == 554
    assert failed["delivery-status"]["enhanced-code"] == "5.7.1"
    code, body = await bounce_entry(running, rcpt)
    assert code == 404, body
    # and a later message is attempted again, not suppressed
    await send(running, rcpt)
    await wait_events(running, "failed", rcpt, count=2)
    assert mx.attempts[rcpt] == 2
    assert not await wait_events(running, "failed", rcpt, timeout=0, reason="suppress-bounce")


async def test_mailbox_full_452_4_2_2_is_retried_and_not_added_to_bounces(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"full@{DEST}"
    await send(running, rcpt)

    failures = await wait_events(running, "failed", rcpt, count=2)
    assert len(failures) >= 2
    for attempt, failed in enumerate(failures[:2], start=1):
        assert failed["severity"] == "temporary"
        assert failed["log-level"] == "warn"
        status = failed["delivery-status"]
        assert status["code"] == 452
        assert status["enhanced-code"] == "4.2.2"
        assert status["attempt-no"] == attempt
        assert "retry-seconds" in status
    assert mx.attempts[rcpt] >= 2
    code, body = await bounce_entry(running, rcpt)
    assert code == 404, body


# -- 6. lost connections, and giving up -------------------------------------------------------------


async def test_connection_cut_after_data_is_a_temporary_499_and_retried(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"drop@{DEST}"
    message_id = await send(running, rcpt)

    failures = await wait_events(running, "failed", rcpt, count=2)
    assert len(failures) >= 2
    for attempt, failed in enumerate(failures[:2], start=1):
        assert failed["severity"] == "temporary"
        status = failed["delivery-status"]
        assert status["code"] == 499
        assert status["attempt-no"] == attempt
        assert "retry-seconds" in status
    assert mx.attempts[rcpt] >= 2
    assert mx.to(rcpt) == []
    assert await state_of(running, message_id, rcpt) == "queued"


async def test_mail_still_failing_after_max_age_fails_permanently_as_old(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx, outbound__max_age_s=1.0)
    rcpt = f"drop@{DEST}"
    sent_at = time.time()
    message_id = await send(running, rcpt)

    [old] = await wait_events(running, "failed", rcpt, severity="permanent")
    assert old["reason"] == "old"
    assert old["log-level"] == "error"
    assert old["delivery-status"]["code"] == 499
    assert old["timestamp"] - sent_at >= 1.0
    temporary = [e for e in await outcomes(running, rcpt) if e["severity"] == "temporary"]
    assert len(temporary) >= 2  # retried until it was too old
    assert (await outcomes(running, rcpt))[-1]["reason"] == "old"  # the last word
    assert await state_of(running, message_id, rcpt) == "failed"
    attempts = mx.attempts[rcpt]
    await asyncio.sleep(0.5)
    assert mx.attempts[rcpt] == attempts  # no attempt after giving up


# -- 7. a silent server holds up nobody else ----------------------------------------------------------


async def test_silent_server_times_out_as_499_while_other_destinations_are_delivered(
    start_server: Callable[..., Any], mx: Capture
):
    silent = await start_capture("127.0.0.2", mode="silent")
    try:
        running = await start(
            start_server,
            outbound__connect_timeout_s=1.0,
            dns__static_mx={DEST: [silent.address], OTHER: [mx.address]},
        )
        stuck, healthy = f"alice@{DEST}", f"bob@{OTHER}"
        sent_at = time.time()
        await send(running, stuck)
        await send(running, healthy)

        [delivered] = await wait_events(running, "delivered", healthy)
        assert delivered["timestamp"] - sent_at < 0.9  # not behind the silent server's timeout
        assert await wait_events(running, "failed", stuck, timeout=0) == []
        [got] = mx.to(healthy)
        assert got.rcpt_to == healthy

        [failed] = await wait_events(running, "failed", stuck)
        assert failed["severity"] == "temporary"
        assert failed["delivery-status"]["code"] == 499
        assert "timed out" in failed["delivery-status"]["message"]
        assert failed["delivery-status"]["mx-host"] == "127.0.0.2"
        assert failed["timestamp"] - sent_at >= 0.9  # after the connect timeout
        assert delivered["timestamp"] < failed["timestamp"]
    finally:
        await silent.close()


# -- 8./9./10. routing -------------------------------------------------------------------------------


async def test_next_mx_host_is_tried_when_the_first_refuses_connections(
    start_server: Callable[..., Any], mx: Capture
):
    dead = f"127.0.0.2:{closed_port('127.0.0.2')}"
    running = await start(start_server, dns__static_mx={DEST: [dead, mx.address]})
    rcpt = f"alice@{DEST}"
    await send(running, rcpt)

    [delivered] = await wait_events(running, "delivered", rcpt)
    status = delivered["delivery-status"]
    assert status["mx-host"] == "127.0.0.1"
    assert status["attempt-no"] == 1
    assert len(mx.to(rcpt)) == 1
    assert await wait_events(running, "failed", rcpt, timeout=0) == []


async def test_mx_records_from_dns_route_mail_to_the_preferred_mx_host(
    start_server: Callable[..., Any], mx: Capture
):
    # the less preferred host listens on the same port elsewhere and counts who knocks
    knocks: list[int] = []

    def knocked() -> asyncio.Protocol:
        knocks.append(1)
        return asyncio.Protocol()  # says nothing: trying it would cost a connect timeout

    backup = await asyncio.get_running_loop().create_server(knocked, "127.0.0.3", mx.port)
    try:
        running = await start(
            start_server,
            outbound__port=mx.port,
            dns__answers={
                f"{DEST} MX": [f"20 mx2.{DEST}", f"10 mx1.{DEST}"],  # listed out of order
                f"mx1.{DEST} A": ["127.0.0.1"],
                f"mx2.{DEST} A": ["127.0.0.3"],
            },
        )
        rcpt = f"alice@{DEST}"
        await send(running, rcpt)

        [delivered] = await wait_events(running, "delivered", rcpt)
        assert delivered["delivery-status"]["mx-host"] == f"mx1.{DEST}"
        assert len(mx.to(rcpt)) == 1
        assert knocks == []  # the preference-20 host was never tried
    finally:
        backup.close()
        await backup.wait_closed()


async def test_domain_without_mx_but_with_an_address_gets_implicit_mx_delivery(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start(
        start_server, outbound__port=mx.port, dns__answers={f"{DEST} A": ["127.0.0.1"]}
    )
    rcpt = f"alice@{DEST}"
    await send(running, rcpt)

    [delivered] = await wait_events(running, "delivered", rcpt)
    assert delivered["delivery-status"]["mx-host"] == DEST
    assert len(mx.to(rcpt)) == 1


async def test_null_mx_fails_permanently_without_any_connection(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start(
        start_server,
        outbound__port=mx.port,
        dns__answers={f"{DEST} MX": ["0 ."], f"{DEST} A": ["127.0.0.1"]},
    )
    rcpt = f"alice@{DEST}"
    message_id = await send(running, rcpt)

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    assert failed["log-level"] == "error"
    assert failed["delivery-status"]["code"] == 498
    assert "null MX" in failed["delivery-status"]["message"]
    assert mx.connections == 0
    assert await state_of(running, message_id, rcpt) == "failed"


async def test_domain_with_neither_mx_nor_address_fails_permanently(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start(start_server, outbound__port=mx.port)  # only_answers: NXDOMAIN
    rcpt = f"alice@{DEST}"
    message_id = await send(running, rcpt)

    [failed] = await wait_events(running, "failed", rcpt)
    assert failed["severity"] == "permanent"
    assert failed["delivery-status"]["code"] == 498
    assert mx.connections == 0
    assert await state_of(running, message_id, rcpt) == "failed"


async def test_dns_lookup_that_times_out_is_a_temporary_failure(
    start_server: Callable[..., Any], mx: Capture
):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:  # a resolver that never answers
        mute.bind(("127.0.0.1", 0))
        running = await start(
            start_server,
            outbound__port=mx.port,
            dns__only_answers=False,
            dns__nameservers=[f"127.0.0.1:{mute.getsockname()[1]}"],
            dns__timeout_s=0.3,
        )
        rcpt = f"alice@{DEST}"
        message_id = await send(running, rcpt)

        [failed] = await wait_events(running, "failed", rcpt)
        assert failed["severity"] == "temporary"
        assert failed["log-level"] == "warn"
        status = failed["delivery-status"]
        assert status["code"] == 498
        assert "retry-seconds" in status
        assert await state_of(running, message_id, rcpt) == "queued"
        assert mx.connections == 0


async def test_relay_receives_mail_for_every_domain(start_server: Callable[..., Any], mx: Capture):
    running = await start(
        start_server,
        outbound__relay=mx.address,
        dns__answers={f"{DEST} MX": ["0 ."]},  # the relay wins over DNS, even a null MX
    )
    recipients = [f"alice@{DEST}", "bob@elsewhere.example.test", "carol@example.org"]
    for rcpt in recipients:
        await send(running, rcpt)

    delivered = await wait_events(running, "delivered", count=3)
    assert sorted(e["recipient"] for e in delivered) == sorted(recipients)
    assert all(e["delivery-status"]["mx-host"] == "127.0.0.1" for e in delivered)
    assert sorted(m.rcpt_to for m in mx.messages) == sorted(recipients)


# -- 11./12./13. options ---------------------------------------------------------------------------


async def test_test_mode_records_delivered_without_sending_anything(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    rcpt = f"alice@{DEST}"
    message_id = await send(running, rcpt, ("o:testmode", "yes"))

    [delivered] = await wait_events(running, "delivered", rcpt)
    assert delivered["flags"]["is-test-mode"] is True
    assert delivered["message"]["headers"]["message-id"] == message_id
    assert await state_of(running, message_id, rcpt) == "delivered"
    await asyncio.sleep(0.3)
    assert mx.connections == 0 and mx.messages == []


async def test_scheduled_message_is_held_until_its_delivery_time(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    when = math.ceil(time.time()) + 2  # whole seconds: RFC 2822 has no fractions
    epoch, rfc = f"alice@{DEST}", f"bob@{DEST}"
    await send(running, epoch, ("o:deliverytime", str(when)))
    await send(running, rfc, ("o:deliverytime", email.utils.formatdate(when)))

    await asyncio.sleep(max(0.0, when - 0.4 - time.time()))
    assert mx.messages == []
    assert await wait_events(running, "delivered", timeout=0) == []

    delivered = await wait_events(running, "delivered", count=2)
    assert sorted(e["recipient"] for e in delivered) == [epoch, rfc]
    assert all(e["timestamp"] >= when for e in delivered)
    assert sorted(m.rcpt_to for m in mx.messages) == [epoch, rfc]


async def test_dkim_no_delivers_unsigned_while_default_is_signed(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    unsigned, signed = f"alice@{DEST}", f"bob@{DEST}"
    await send(running, unsigned, ("o:dkim", "no"))
    await send(running, signed)

    await mx.wait_for(2)
    [plain] = mx.to(unsigned)
    assert storeview.parse(plain.data)["DKIM-Signature"] is None
    [with_dkim] = mx.to(signed)
    assert storeview.parse(with_dkim.data)["DKIM-Signature"] is not None
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()
    assert dkim.verify(with_dkim.data, dnsfunc=lambda name, timeout=5: record)
    [event] = await wait_events(running, "delivered", signed)
    assert event["primary-dkim"] == DOMAIN


# -- 14. the Events API -------------------------------------------------------------------------------


async def test_events_api_returns_delivered_and_failed_events_with_mailgun_fields(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    ok, soft, hard = f"alice@{DEST}", f"full@{DEST}", f"unknown@{DEST}"
    message_id = await send(
        running, ok, ("o:tag", "welcome"), ("v:order-id", "42"), subject="Welcome"
    )
    await send(running, soft)
    await send(running, hard)
    await wait_events(running, "delivered", ok)
    await wait_events(running, "failed", soft)
    await wait_events(running, "failed", hard)

    code, body = await api_call(running, "GET", f"/v3/{DOMAIN}/events?event=delivered")
    assert code == 200, body
    [item] = body["items"]
    assert item["event"] == "delivered"
    assert item["log-level"] == "info"
    assert item["recipient"] == ok
    assert item["recipient-domain"] == DEST
    assert item["tags"] == ["welcome"]
    assert item["user-variables"] == {"order-id": "42"}
    headers = item["message"]["headers"]
    assert headers["to"] == ok
    assert headers["from"] == f"Sender <sender@{DOMAIN}>"
    assert headers["subject"] == "Welcome"
    assert headers["message-id"] == message_id
    assert item["envelope"]["targets"] == ok
    assert item["flags"]["is-test-mode"] is False
    status = item["delivery-status"]
    assert status["tls"] is False
    assert status["certificate-verified"] is False
    assert status["mx-host"] == "127.0.0.1"
    assert status["code"] == 250
    assert "OK captured" in status["message"]
    assert status["description"] == ""
    assert status["attempt-no"] == 1
    assert isinstance(status["session-seconds"], float) and status["session-seconds"] >= 0
    assert isinstance(item["timestamp"], float) and item["id"]

    code, body = await api_call(running, "GET", f"/v3/{DOMAIN}/events?event=failed")
    assert code == 200, body
    by_recipient: dict[str, list[dict[str, Any]]] = {}
    for event in body["items"]:
        by_recipient.setdefault(event["recipient"], []).append(event)
    assert set(by_recipient) == {soft, hard}
    for event in by_recipient[soft]:
        assert event["severity"] == "temporary"
        assert event["log-level"] == "warn"
        assert "retry-seconds" in event["delivery-status"]
    [bounced] = by_recipient[hard]
    assert bounced["severity"] == "permanent"
    assert bounced["reason"] == "bounce"
    assert bounced["log-level"] == "error"
    assert bounced["recipient-domain"] == DEST
    assert bounced["delivery-status"]["code"] == 550
    assert bounced["delivery-status"]["mx-host"] == "127.0.0.1"


# -- 15. batch sends ------------------------------------------------------------------------------------


async def test_batch_send_delivers_personalised_copies_with_their_own_events(
    start_server: Callable[..., Any], mx: Capture
):
    running = await routed_to(start_server, mx)
    alice, bob = f"alice@{DEST}", f"bob@{DEST}"
    variables = {alice: {"name": "Alice", "uid": "1"}, bob: {"name": "Bob", "uid": "2"}}
    await send(
        running,
        [f"Alice <{alice}>", bob],
        ("recipient-variables", json.dumps(variables)),
        ("v:uid", "%recipient.uid%"),
        subject="Hello %recipient.name%",
    )

    await mx.wait_for(2)
    copies = {m.rcpt_to: storeview.parse(m.data) for m in mx.messages}
    assert set(copies) == {alice, bob}
    assert copies[alice]["Subject"] == "Hello Alice"
    assert copies[bob]["Subject"] == "Hello Bob"
    assert bob not in copies[alice]["To"] and alice in copies[alice]["To"]
    assert alice not in copies[bob]["To"] and bob in copies[bob]["To"]

    delivered = {e["recipient"]: e for e in await wait_events(running, "delivered", count=2)}
    assert set(delivered) == {alice, bob}
    for rcpt, copy in copies.items():
        event = delivered[rcpt]
        assert event["message"]["headers"]["to"] == str(copy["To"])
        assert event["user-variables"]["uid"] == variables[rcpt]["uid"]
    assert len(mx.to(alice)) == 1 and len(mx.to(bob)) == 1
