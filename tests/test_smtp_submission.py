"""SMTP submission (manual: "Sending via SMTP"; ports 587 STARTTLS, 465 implicit TLS, 2525):
AUTH, the accept path behind DATA, X-Mailgun-* headers, limits and protection, and real clients
(aiosmtplib, smtplib, swaks, raw sockets for exact bytes) over loopback, checked against what
was stored."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gc
import logging
import shutil
import smtplib
import subprocess
import time
from typing import Any

import aiosmtplib
import pytest

from mta.store import Store
from tests import storeview
from tests.conftest import DOMAIN, Running
from tests.smtp_clients import (
    AUTH_BAD,
    AUTH_OK,
    LOGIN,
    PASSWORD,
    auth_plain,
    b64,
    client_tls,
    message,
    queued_id,
    submit,
)

pytestmark = pytest.mark.asyncio

OTHER_DOMAIN = "other.example.test"
EHLO_BEFORE_TLS = [
    "250-mx.mta.test",
    "250-PIPELINING",
    "250-ENHANCEDSTATUSCODES",
    "250-SIZE 26214400",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-STARTTLS",
    "250 HELP",
]
EHLO_WITH_TLS = [
    "250-mx.mta.test",
    "250-PIPELINING",
    "250-ENHANCEDSTATUSCODES",
    "250-SIZE 26214400",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-AUTH LOGIN PLAIN",
    "250 HELP",
]
needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")


def store_of(running: Running) -> Store:
    return running.services.store


async def domains_of_rows(running: Running) -> tuple[set[str], set[str]]:
    """The domains the stored messages and events are attributed to."""
    store = store_of(running)
    messages = {r["domain"] for r in await store.fetchall("SELECT domain FROM messages")}
    events = {r["domain"] for r in await store.fetchall("SELECT domain FROM events")}
    return messages, events


# -- listeners and what EHLO offers ----------------------------------------------------------


@pytest.mark.parametrize("listener", ["submission", "submission_alt"])
async def test_starttls_ports_offer_auth_only_after_tls(mail: Running, clients, listener):
    raw = await clients.raw(mail, listener)
    assert raw.banner == ["220 mx.mta.test mta ESMTP"]
    assert await raw.command("EHLO client.example") == EHLO_BEFORE_TLS
    await raw.starttls()
    assert await raw.command("EHLO client.example") == EHLO_WITH_TLS
    assert await raw.command(auth_plain()) == [AUTH_OK]


@pytest.mark.parametrize("listener", ["submission", "submission_alt"])
async def test_aiosmtplib_sends_after_starttls_and_auth(mail: Running, clients, listener):
    client = await clients.smtp(mail, listener, login=False)
    assert client.get_transport_info("sslcontext") is not None
    assert set(client.server_auth_methods) == {"plain", "login"}
    reply = await client.auth_plain(LOGIN, PASSWORD)
    assert (reply.code, reply.message) == (235, "2.7.0 Authentication successful")
    message_id = queued_id(await submit(client, message()))
    assert (await storeview.recipients(store_of(mail), message_id))[0]["address"] == "bob@example.net"


async def test_implicit_tls_port_offers_auth_right_away_and_no_starttls(mail: Running, clients):
    raw = await clients.raw(mail, "submission_tls")
    assert raw.banner == ["220 mx.mta.test mta ESMTP"]
    assert await raw.command("EHLO client.example") == EHLO_WITH_TLS
    assert await raw.command("STARTTLS") == ["454 4.7.0 TLS not available"]
    client = await clients.smtp(mail, "submission_tls")
    message_id = queued_id(await submit(client, message()))
    assert (await storeview.recipients(store_of(mail), message_id))[0]["state"] == "queued"


async def test_status_replies_carry_enhanced_codes_but_ehlo_and_helo_lines_do_not(
    mail: Running, clients
):
    raw = await clients.raw(mail)
    assert await raw.command("HELO client.example") == ["250 mx.mta.test"]
    assert await raw.command("NOOP") == ["250 2.0.0 OK"]
    assert await raw.command("RSET") == ["250 2.0.0 OK"]
    assert await raw.command("EHLO client.example") == EHLO_WITH_TLS
    assert await raw.command("MAIL FROM:<x@example.net>") == ["530 5.7.0 Authentication required"]
    assert await raw.command("QUIT") == ["221 2.0.0 Bye"]


# -- AUTH --------------------------------------------------------------------------------------


async def test_auth_plain_answers_an_empty_334_challenge(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.command("EHLO client.example")
    assert await raw.command("AUTH PLAIN") == ["334 "]
    assert await raw.command(b64(f"\0{LOGIN}\0{PASSWORD}")) == [AUTH_OK]


async def test_auth_login_asks_for_username_then_password(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.command("EHLO client.example")
    assert await raw.command("AUTH LOGIN") == [f"334 {b64('Username:')}"]
    assert await raw.command(b64(LOGIN)) == [f"334 {b64('Password:')}"]
    assert await raw.command(b64(PASSWORD)) == [AUTH_OK]
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]


async def test_auth_plain_with_authzid_equal_to_the_login_is_accepted_like_sendmail(
    mail: Running, clients
):
    raw = await clients.raw(mail)
    await raw.command("EHLO client.example")
    assert await raw.command(auth_plain(authzid=LOGIN)) == [AUTH_OK]


async def test_auth_plain_with_another_authzid_is_refused(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.command("EHLO client.example")
    assert await raw.command(auth_plain(authzid=f"bob@{DOMAIN}")) == [AUTH_BAD]
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["530 5.7.0 Authentication required"]


@pytest.mark.parametrize(
    "login, password",
    [(LOGIN, "wrong-pass"), (f"mallory@{DOMAIN}", PASSWORD), ("alice", PASSWORD)],
    ids=["wrong password", "unknown login", "login without domain"],
)
async def test_bad_credentials_get_535_and_the_session_can_try_again(
    mail: Running, clients, login, password
):
    raw = await clients.raw(mail)
    await raw.command("EHLO client.example")
    assert await raw.command(auth_plain(login, password)) == [AUTH_BAD]
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["530 5.7.0 Authentication required"]
    assert await raw.command(auth_plain()) == [AUTH_OK]


async def test_malformed_auth_is_refused_without_counting_as_a_failed_login(
    mail_server, clients
):
    running = await mail_server(smtp__auth_failures=2)
    raw = await clients.raw(running)
    await raw.command("EHLO client.example")
    assert await raw.command("AUTH PLAIN not*base64") == ["501 5.5.2 Can't decode base64"]
    assert await raw.command(f"AUTH PLAIN {b64(LOGIN + chr(0) + PASSWORD)}") == [
        "501 5.5.2 Can't split auth value"
    ]
    assert await raw.command("AUTH CRAM-MD5") == ["504 5.5.4 Unrecognized authentication type"]
    assert await raw.command("AUTH LOGIN") == [f"334 {b64('Username:')}"]
    assert await raw.command("*") == ["501 5.7.0 Auth aborted"]
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["530 5.7.0 Authentication required"]
    assert await raw.command(auth_plain()) == [AUTH_OK]


@pytest.mark.parametrize("listener", ["submission", "submission_alt"])
async def test_auth_and_mail_before_starttls_are_refused(mail: Running, clients, listener):
    raw = await clients.raw(mail, listener)
    await raw.command("EHLO client.example")
    assert await raw.command(auth_plain()) == [
        "538 5.7.11 Encryption required for requested authentication mechanism"
    ]
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["530 5.7.0 Authentication required"]


async def test_mail_without_auth_after_tls_is_refused_with_530(mail: Running, clients):
    client = await clients.smtp(mail, login=False)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail(LOGIN)
    assert (refused.value.code, refused.value.message) == (530, "5.7.0 Authentication required")


# -- what a submitted message becomes ----------------------------------------------------------


async def test_submitted_message_is_stored_queued_and_accepted_for_the_logins_domain(
    mail: Running, clients
):
    client = await clients.smtp(mail)
    reply = await submit(
        client, message(to="Bob <bob@example.net>"), rcpts=("bob@example.net", "carol@example.org")
    )
    message_id = queued_id(reply)
    assert message_id.endswith(f"@{DOMAIN}")
    store = store_of(mail)
    rows = await storeview.recipients(store, message_id)
    assert [(r["address"], r["state"], r["sender"]) for r in rows] == [
        ("bob@example.net", "queued", LOGIN),
        ("carol@example.org", "queued", LOGIN),
    ]
    stored = await storeview.message_for(store, message_id, "carol@example.org")
    assert stored["Message-Id"] == f"<{message_id}>"
    assert stored["Date"]
    assert stored["Subject"] == "Hello"
    assert stored.get_content() == "Hi Bob.\r\n"
    accepted = await storeview.events(store, "accepted")
    assert [e["recipient"] for e in accepted] == ["bob@example.net", "carol@example.org"]
    for event in accepted:
        assert event["method"] == "smtp"
        assert event["flags"]["is-authenticated"] is True
        assert event["envelope"] == {
            "sender": LOGIN, "transport": "smtp", "targets": event["recipient"]
        }
        assert event["originating-ip"] == "127.0.0.1"
        assert event["message"]["headers"]["message-id"] == message_id
        assert event["message"]["headers"]["subject"] == "Hello"
    assert await domains_of_rows(mail) == ({DOMAIN}, {DOMAIN})


async def test_message_id_of_the_message_itself_is_kept_and_answered(mail: Running, clients):
    client = await clients.smtp(mail)
    reply = await submit(client, message("Message-Id: <own.1@client.example>"))
    assert queued_id(reply) == "own.1@client.example"
    stored = await storeview.message_for(store_of(mail), "own.1@client.example", "bob@example.net")
    assert stored["Message-Id"] == "<own.1@client.example>"


async def test_x_mailgun_headers_become_options_and_only_variables_stay(mail: Running, clients):
    deliver_at = int(time.time()) + 3600
    mime = message(
        "X-Mailgun-Tag: Newsletter",
        "X-Mailgun-Tag: september",
        "X-Mailgun-Campaign-Id: camp1",
        "X-Mailgun-Dkim: no",
        f"X-Mailgun-Deliver-By: {email.utils.formatdate(deliver_at)}",
        "X-Mailgun-Drop-Message: yes",
        "X-Mailgun-Track: yes",
        "X-Mailgun-Track-Clicks: htmlonly",
        "X-Mailgun-Track-Opens: no",
        "X-Mailgun-Require-TLS: true",
        "X-Mailgun-Skip-Verification: false",
        'X-Mailgun-Recipient-Variables: {"bob@example.net": {"first": "Bob"}}',
        'X-Mailgun-Variables: {"order": "123", "n": 1}',
        'X-Mailgun-Variables: {"shop": "north", "n": 2}',
        "X-Custom: kept",
        subject="Hi %recipient.first%",
    )
    campaign = {"id": "camp1", "name": "First campaign"}
    async with mail.session() as api, api.post(f"/v3/{DOMAIN}/campaigns", data=campaign) as resp:
        assert resp.status == 200, await resp.text()
    client = await clients.smtp(mail)
    message_id = queued_id(await submit(client, mime))
    store = store_of(mail)
    options = await storeview.options(store, message_id)
    assert options.pop("message")["headers"]["subject"] == "Hi %recipient.first%"
    assert options == {
        "tags": ["newsletter", "september"],
        "campaigns": ["camp1"],
        "campaign-names": {"camp1": "First campaign"},
        "dkim": False,
        "deliver_at": float(deliver_at),
        "test_mode": True,
        "tracking": True,
        "tracking_clicks": "htmlonly",
        "tracking_opens": False,
        "require_tls": True,
        "skip_verification": False,
        "user-variables": {"order": "123", "n": 2, "shop": "north"},
        "template": True,  # a batch send: stored once, personalised per recipient at delivery
    }
    row = (await storeview.recipients(store, message_id))[0]
    assert row["due_at"] == deliver_at
    stored = await storeview.message_for(store, message_id, "bob@example.net")
    assert [k for k in stored if k.lower().startswith("x-mailgun-")] == [
        "X-Mailgun-Variables", "X-Mailgun-Variables"
    ]
    assert stored.get_all("X-Mailgun-Variables") == [
        '{"order": "123", "n": 1}', '{"shop": "north", "n": 2}'
    ]
    assert stored["X-Custom"] == "kept"
    assert stored["Subject"] == "Hi Bob"
    event = (await storeview.events(store, "accepted"))[0]
    assert event["tags"] == ["newsletter", "september"]
    assert event["campaigns"] == [campaign]
    assert event["flags"]["is-test-mode"] is True
    assert event["user-variables"] == {"order": "123", "n": 2, "shop": "north"}
    assert event["delivery-time"] == deliver_at


async def test_bad_control_header_value_is_refused_naming_it(mail: Running, clients):
    client = await clients.smtp(mail)
    reply = await submit(client, message("X-Mailgun-Track: maybe"))
    assert reply == "550 5.6.0 X-Mailgun-Track must be yes or no, got 'maybe'"
    assert (await storeview.counts(store_of(mail)))["messages"] == 0


async def test_batch_with_recipient_variables_header_personalises_each_copy(
    mail: Running, clients
):
    variables = (  # folded, as a long header must be
        '{"bob@example.net": {"first": "Bob", "id": 1},\r\n'
        ' "carol@example.org": {"first": "Carol", "id": 2}}'
    )
    mime = message(
        f"X-Mailgun-Recipient-Variables: {variables}",
        to="bob@example.net, carol@example.org",
        subject="Hey %recipient.first%",
        body="Hi %recipient.first%, your id is %recipient.id%.\r\n",
    )
    client = await clients.smtp(mail)
    message_id = queued_id(
        await submit(client, mime, rcpts=("bob@example.net", "carol@example.org"))
    )
    store = store_of(mail)
    for address, first, number in (("bob@example.net", "Bob", 1), ("carol@example.org", "Carol", 2)):
        copy = await storeview.message_for(store, message_id, address)
        assert copy["To"] == address
        assert copy["Subject"] == f"Hey {first}"
        assert copy.get_content() == f"Hi {first}, your id is {number}.\r\n"
        assert "X-Mailgun-Recipient-Variables" not in copy
    accepted = await storeview.events(store, "accepted")
    assert {e["recipient"]: e["message"]["headers"]["to"] for e in accepted} == {
        "bob@example.net": "bob@example.net", "carol@example.org": "carol@example.org"
    }


async def test_mailgun_variables_container_is_unwrapped_into_a_batch(mail: Running, clients):
    references = "References: " + " ".join(f"<{c * 30}@example.net>" for c in "abc")
    inner = message(
        references,
        to="bob@example.net, carol@example.org",
        subject="Hello %recipient.first%",
        body="Dear %recipient.first%\r\n",
    )
    variables = b'{"bob@example.net": {"first": "Bob"}, "carol@example.org": {"first": "Carol"}}'
    container = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mailgun-variables; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: application/json\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(variables)
        + b"\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        + inner
        + b"\r\n--b1--\r\n"
    )
    client = await clients.smtp(mail)
    message_id = queued_id(
        await submit(client, container, rcpts=("bob@example.net", "carol@example.org"))
    )
    store = store_of(mail)
    for address, first in (("bob@example.net", "Bob"), ("carol@example.org", "Carol")):
        copy = await storeview.message_for(store, message_id, address)
        assert copy.get_content_type() == "text/plain"
        assert copy["To"] == address
        assert copy["Subject"] == f"Hello {first}"
        assert copy.get_content() == f"Dear {first}\r\n"
        assert b"mailgun-variables" not in bytes(copy)
    for row in await storeview.recipients(store, message_id):  # cut out as it was, not refolded
        assert (references + "\r\n").encode() in row["mime"]


async def test_utf8_headers_and_addresses_are_accepted_and_stored_byte_exact(
    mail: Running, clients
):
    mime = (
        f"From: Zoë Müller <{LOGIN}>\r\n"
        "To: Jürgen <jürgen@example.net>\r\n"
        "Subject: Grüße aus Köln ☕\r\n"
        f"Message-Id: <utf8.1@{DOMAIN}>\r\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Schöne Grüße\r\n"
        ".a line that starts with a dot\r\n"
        "..and one with two\r\n"
    ).encode()
    raw = await clients.raw(mail)
    await raw.login()
    assert await raw.command(f"MAIL FROM:<{LOGIN}> SMTPUTF8 BODY=8BITMIME") == ["250 2.1.0 OK"]
    assert await raw.command("RCPT TO:<jürgen@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    assert await raw.data(mime) == [f"250 2.0.0 OK: queued as <utf8.1@{DOMAIN}>"]
    store = store_of(mail)
    row = (await storeview.recipients(store, f"utf8.1@{DOMAIN}"))[0]
    assert row["address"] == "jürgen@example.net"
    assert row["mime"] == mime
    headers = (await storeview.events(store, "accepted"))[0]["message"]["headers"]
    assert headers["subject"] == "Grüße aus Köln ☕"
    assert headers["from"] == f"Zoë Müller <{LOGIN}>"


# -- sizes and recipients ----------------------------------------------------------------------


async def test_declared_size_over_the_limit_is_refused_at_mail(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.login()
    assert await raw.command(f"MAIL FROM:<{LOGIN}> SIZE=30000000") == [
        "552 5.3.4 message size exceeds fixed maximum message size"
    ]
    assert await raw.command(f"MAIL FROM:<{LOGIN}> SIZE=26214400") == ["250 2.1.0 OK"]


async def test_data_over_the_limit_is_refused_and_the_session_goes_on(mail_server, clients):
    running = await mail_server(sending__max_message_bytes=100_000)
    raw = await clients.raw(running)
    await raw.login()
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    assert await raw.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    big = message(body=("y" * 98 + "\r\n") * 1500)
    assert await raw.data(big) == ["552 5.3.4 Message size exceeds 100000 bytes"]
    assert (await storeview.counts(store_of(running)))["messages"] == 0
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    assert await raw.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    queued_id((await raw.data(message()))[0])
    assert (await storeview.counts(store_of(running)))["messages"] == 1


async def test_message_that_outgrows_the_limit_with_added_headers_is_refused_with_552(
    mail_server, clients
):
    running = await mail_server(sending__max_message_bytes=100_000)
    client = await clients.smtp(running)
    head = message(body="")
    line = "z" * 98 + "\r\n"
    body = line * ((100_000 - len(head)) // 100)
    body += "z" * (100_000 - len(head) - len(body) - 2) + "\r\n"
    fits_only_without_added_headers = message(body=body)
    assert len(fits_only_without_added_headers) == 100_000
    reply = await submit(client, fits_only_without_added_headers)
    assert reply.startswith("552 5.3.4 "), reply
    assert (await storeview.counts(store_of(running)))["messages"] == 0


async def test_recipient_1001_is_refused_with_452_and_the_first_1000_get_the_message(
    mail: Running, clients
):
    raw = await clients.raw(mail)
    await raw.login()
    rcpts = [f"user{i}@example.net" for i in range(1001)]
    raw.send(f"MAIL FROM:<{LOGIN}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts))
    assert await raw.reply() == ["250 2.1.0 OK"]
    replies = [await raw.reply() for _ in rcpts]
    assert replies[:1000] == [["250 2.1.5 OK"]] * 1000
    assert replies[1000] == ["452 4.5.3 Too many recipients (at most 1000)"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    message_id = queued_id((await raw.data(message(to="undisclosed-recipients:;")))[0])
    addresses = [r["address"] for r in await storeview.recipients(store_of(mail), message_id)]
    assert addresses == rcpts[:1000]


async def test_pipelined_commands_are_answered_in_order(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.login()
    raw.send(
        f"MAIL FROM:<{LOGIN}> SIZE=300\r\n"
        "RCPT TO:<bob@example.net>\r\n"
        "RCPT TO:<not-an-address>\r\n"
        "RCPT TO:<carol@example.org>\r\n"
        "DATA\r\n"
    )
    assert [await raw.reply() for _ in range(5)] == [
        ["250 2.1.0 OK"],
        ["250 2.1.5 OK"],
        ["553 5.1.3 Recipient address syntax is not valid"],
        ["250 2.1.5 OK"],
        ["354 End data with <CR><LF>.<CR><LF>"],
    ]
    raw.send(message() + b".\r\nQUIT\r\n")
    message_id = queued_id((await raw.reply())[0])
    assert await raw.reply() == ["221 2.0.0 Bye"]
    assert await raw.closed()
    rows = await storeview.recipients(store_of(mail), message_id)
    assert [r["address"] for r in rows] == ["bob@example.net", "carol@example.org"]


async def test_bad_addresses_are_refused_at_mail_and_rcpt_not_after_data(
    mail: Running, clients
):
    raw = await clients.raw(mail)
    await raw.login()
    assert await raw.command(b"MAIL FROM:<\xff\xfe@example.net>") == [
        "553 5.1.7 Sender address is not valid"
    ]
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    for bad in (b"<b\xff@example.net>", b"<postmaster>", b"<root@localhost>", b"<a..b@example.net>"):
        assert await raw.command(b"RCPT TO:" + bad) == [
            "553 5.1.3 Recipient address syntax is not valid"
        ]
    assert await raw.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    message_id = queued_id((await raw.data(message()))[0])
    assert [r["address"] for r in await storeview.recipients(store_of(mail), message_id)] == [
        "bob@example.net"
    ]


async def test_null_sender_of_a_relayed_bounce_is_accepted(mail_server, clients):
    running = await mail_server(smtp__foreign_senders="reject")
    raw = await clients.raw(running)
    await raw.login()
    assert await raw.command("MAIL FROM:<>") == ["250 2.1.0 OK"]
    assert await raw.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    bounce = message(sender=f"Mail Delivery System <MAILER-DAEMON@{DOMAIN}>")
    message_id = queued_id((await raw.data(bounce))[0])
    (row,) = await storeview.recipients(store_of(running), message_id)
    assert row["state"] == "queued"
    assert row["sender"] == ""  # kept null, so the bounce cannot bounce again


async def test_bad_command_is_answered_with_one_clean_500_line(mail: Running, clients):
    raw = await clients.raw(mail)
    raw.send(b"FOO\rBAR\r\n")
    line = await asyncio.wait_for(raw.reader.readline(), 5)
    assert line == b'500 5.5.2 Error: command "FOO?BAR" not recognized\r\n'
    assert await raw.command("NOOP") == ["250 2.0.0 OK"]


# -- sender policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope, from_header",
    [(f"ceo@{OTHER_DOMAIN}", f"Alice <{LOGIN}>"), (LOGIN, f"CEO <ceo@{OTHER_DOMAIN}>")],
    ids=["envelope", "From header"],
)
async def test_sender_on_another_hosted_domain_is_refused_and_recorded(
    mail: Running, clients, envelope, from_header
):
    await mail.services.domains.create(OTHER_DOMAIN)
    client = await clients.smtp(mail)
    reply = await submit(client, message(sender=from_header), sender=envelope)
    assert reply == (
        f"550 5.7.1 Sender ceo@{OTHER_DOMAIN} is on {OTHER_DOMAIN}; {LOGIN} may only send"
        f" for {DOMAIN}"
    )
    store = store_of(mail)
    assert (await storeview.counts(store))["messages"] == 0
    [rejected] = await storeview.events(store, "rejected")
    assert rejected["reject"]["description"] == reply[len("550 5.7.1 "):]
    assert rejected["envelope"]["transport"] == "smtp"
    assert rejected["envelope"]["targets"] == "bob@example.net"
    assert rejected["message"]["headers"]["from"] == from_header  # read from the message
    assert (await domains_of_rows(mail))[1] == {DOMAIN}


async def test_foreign_sender_is_accepted_by_default_for_relayhost_cron_mail(
    mail: Running, clients
):
    client = await clients.smtp(mail)
    cron = message(sender="Cron Daemon <root@cron.example.org>", subject="Cron <root@host> job")
    message_id = queued_id(await submit(client, cron, sender="root@cron.example.org"))
    row = (await storeview.recipients(store_of(mail), message_id))[0]
    assert row["sender"] == "root@cron.example.org"
    assert (await domains_of_rows(mail))[0] == {DOMAIN}


async def test_foreign_sender_is_refused_when_configured(mail_server, clients):
    running = await mail_server(smtp__foreign_senders="reject")
    client = await clients.smtp(running)
    cron = message(sender="root@cron.example.org")
    reply = await submit(client, cron, sender="root@cron.example.org")
    assert reply == (
        f"550 5.7.1 Sender root@cron.example.org is not on {DOMAIN}, the domain of {LOGIN}"
    )
    assert [e["event"] for e in await storeview.events(store_of(running))] == ["rejected"]


# -- protection --------------------------------------------------------------------------------


async def test_repeated_auth_failures_block_the_address_for_a_while_but_not_live_sessions(
    mail_server, clients
):
    running = await mail_server(smtp__auth_failures=3, smtp__auth_block_s=1.5)
    before = await clients.smtp(running)  # authenticated before the block, kept open
    attacker = await clients.raw(running)
    await attacker.command("EHLO client.example")
    for _ in range(3):
        assert await attacker.command(auth_plain(LOGIN, "guess")) == [AUTH_BAD]
    blocked_at = time.monotonic()
    assert await attacker.command(auth_plain()) == [
        "421 4.7.0 Too many authentication failures from your address, try later"
    ]
    assert await attacker.closed()
    newcomer = await clients.raw(running)
    assert newcomer.banner == [
        "421 4.7.0 Too many authentication failures from your address, try later"
    ]
    assert await newcomer.closed()
    queued_id(await submit(before, message()))
    # a client from another address is not affected by the block
    neighbour = await clients.raw(running, source="127.0.0.2")
    assert neighbour.banner == ["220 mx.mta.test mta ESMTP"]
    await neighbour.login()
    assert await neighbour.command(f"MAIL FROM:<alice@{DOMAIN}>") == ["250 2.1.0 OK"]
    assert await neighbour.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await neighbour.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    queued_id((await neighbour.data(message()))[0])
    await asyncio.sleep(max(0.0, blocked_at + 1.6 - time.monotonic()))
    after = await clients.raw(running)
    assert after.banner == ["220 mx.mta.test mta ESMTP"]
    await after.login()


async def test_connections_over_the_per_address_limit_get_421(mail_server, clients, caplog):
    running = await mail_server(smtp__max_connections_per_ip=3)
    first = [await clients.raw(running) for _ in range(3)]
    assert [c.banner for c in first] == [["220 mx.mta.test mta ESMTP"]] * 3
    fourth = await clients.raw(running)
    assert fourth.banner == ["421 4.7.0 Too many connections from your address, try again later"]
    assert await fourth.closed()
    await first[0].login()
    assert await first[0].command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    assert await first[0].command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await first[0].command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    queued_id((await first[0].data(message()))[0])
    assert await first[1].command("QUIT") == ["221 2.0.0 Bye"]
    assert await first[1].closed()
    deadline = time.monotonic() + 3
    while True:  # the server counts the connection gone once it has seen it close
        again = await clients.raw(running)
        if again.banner == ["220 mx.mta.test mta ESMTP"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert again.banner == ["220 mx.mta.test mta ESMTP"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_connections_over_the_total_limit_get_421(mail_server, clients):
    running = await mail_server(smtp__max_connections=2)
    first = [await clients.raw(running) for _ in range(2)]
    assert [c.banner for c in first] == [["220 mx.mta.test mta ESMTP"]] * 2
    third = await clients.raw(running, "submission")
    assert third.banner == ["421 4.3.2 Too many connections, try again later"]
    assert await third.closed()
    await first[0].login()


async def test_silent_session_is_closed_with_421_after_the_idle_timeout(mail_server, clients):
    running = await mail_server(smtp__idle_timeout_s=0.5)
    raw = await clients.raw(running, "submission")
    started = time.monotonic()
    assert await raw.reply(timeout=3) == ["421 4.4.2 Idle too long, closing"]
    assert 0.4 < time.monotonic() - started < 2
    assert await raw.closed()


async def test_stop_right_after_an_idle_timeout_closed_a_tls_session_still_stops(
    mail_server, clients
):
    running = await mail_server(smtp__idle_timeout_s=0.5)
    raw = await clients.raw(running, "submission_tls")
    await raw.login()
    assert await raw.reply(timeout=3) == ["421 4.4.2 Idle too long, closing"]
    assert await raw.closed()
    await running.server.stop()  # the TLS close is still under way
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", running.server.api_port)


async def test_slow_but_steady_data_is_not_cut_by_the_idle_timeout(mail_server, clients):
    running = await mail_server(smtp__idle_timeout_s=0.5)
    raw = await clients.raw(running)
    await raw.login()
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    assert await raw.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    head, _, body = message().partition(b"\r\n\r\n")
    raw.send(head + b"\r\n\r\n")
    for i in range(8):  # 1.2 s in all, never 0.5 s without a byte
        await asyncio.sleep(0.15)
        raw.send(f"line {i}\r\n".encode())
    raw.send(body + b".\r\n")
    queued_id((await raw.reply())[0])


async def test_session_older_than_the_limit_is_closed_with_421(mail_server, clients):
    running = await mail_server(smtp__session_timeout_s=1.0)
    raw = await clients.raw(running)
    started = time.monotonic()
    while time.monotonic() - started < 3:  # busy, never idle
        reply = await raw.command("NOOP")
        if reply != ["250 2.0.0 OK"]:
            break
        await asyncio.sleep(0.1)
    assert reply == ["421 4.4.2 Session too long, closing"]
    assert 0.9 < time.monotonic() - started < 3
    assert await raw.closed()


async def test_header_block_over_the_limit_is_refused_with_552(mail_server, clients):
    running = await mail_server(smtp__max_header_bytes=2000)
    client = await clients.smtp(running)
    filler = [f"X-Filler-{i}: {'f' * 60}" for i in range(40)]
    assert await submit(client, message(*filler)) == (
        "552 5.3.4 Message header exceeds 2000 bytes"
    )
    queued_id(await submit(client, message(*filler[:10])))
    assert (await storeview.counts(store_of(running)))["messages"] == 1


async def test_stop_says_421_to_idle_sessions_and_may_be_called_twice(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.login()
    port = mail.server.smtp.port("submission_tls")
    await mail.server.stop()
    assert await raw.reply() == ["421 4.3.2 Server shutting down, try again later"]
    assert await raw.closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await mail.server.stop()


async def test_stop_lets_a_message_being_committed_finish_with_250(mail: Running, clients):
    raw = await clients.raw(mail)
    await raw.login()
    assert await raw.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    assert await raw.command("RCPT TO:<bob@example.net>") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    big = message(f"Message-Id: <big.1@{DOMAIN}>", body=("b" * 98 + "\r\n") * 50_000)
    raw.send(big + b".\r\n")
    handler = mail.server.smtp.handler
    deadline = time.monotonic() + 5
    while not handler.busy and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert handler.busy == 1
    await mail.server.stop()
    assert await raw.reply() == [f"250 2.0.0 OK: queued as <big.1@{DOMAIN}>"]
    assert await raw.reply() == ["421 4.3.2 Server shutting down, try again later"]
    async with storeview.reopened(mail.services.config) as store:  # the server's is closed
        [row] = await storeview.recipients(store, f"big.1@{DOMAIN}")
    assert row["mime"].endswith(big)


# -- other clients -----------------------------------------------------------------------------


def smtplib_send(port: int, mime: bytes) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login(LOGIN, PASSWORD)
        return smtp.sendmail(LOGIN, ["bob@example.net", "carol@example.org"], mime)


async def test_smtplib_starttls_login_sendmail_is_stored(mail: Running):
    mime = message(f"Message-Id: <smtplib.1@{DOMAIN}>")
    refused = await asyncio.to_thread(smtplib_send, mail.server.smtp.port("submission"), mime)
    assert refused == {}
    stored = await storeview.message_for(store_of(mail), f"smtplib.1@{DOMAIN}", "carol@example.org")
    assert stored["Subject"] == "Hello"
    assert stored["From"] == f"Alice <{LOGIN}>"


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--from", LOGIN,
         "--to", "bob@example.net", "--auth-user", LOGIN, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


@needs_swaks
@pytest.mark.parametrize(
    "listener, tls, mechanism",
    [
        ("submission", "--tls", "PLAIN"),
        ("submission_alt", "--tls", "LOGIN"),
        ("submission_tls", "--tls-on-connect", "PLAIN"),
    ],
)
async def test_swaks_submits_with_tls_and_auth(mail: Running, listener, tls, mechanism):
    message_id = f"swaks.{listener}@{DOMAIN}"
    result = await asyncio.to_thread(
        swaks, mail.server.smtp.port(listener), tls, "--auth", mechanism,
        "--auth-password", PASSWORD, "--header", f"Message-Id: <{message_id}>",
        "--header", "Subject: from swaks", "--header", "X-Mailgun-Tag: swaks",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"<~  250 2.0.0 OK: queued as <{message_id}>" in result.stdout
    store = store_of(mail)
    stored = await storeview.message_for(store, message_id, "bob@example.net")
    assert stored["Subject"] == "from swaks"
    assert "X-Mailgun-Tag" not in stored
    assert (await storeview.options(store, message_id))["tags"] == ["swaks"]


@needs_swaks
async def test_swaks_gives_up_with_exit_28_on_a_wrong_password(mail: Running):
    result = await asyncio.to_thread(
        swaks, mail.server.smtp.port("submission"), "--tls", "--auth", "PLAIN",
        "--auth-password", "wrong-pass",
    )
    assert result.returncode == 28, result.stdout + result.stderr
    assert f"<~* {AUTH_BAD}" in result.stdout
    assert (await storeview.counts(store_of(mail)))["messages"] == 0


async def test_closed_sessions_are_freed_without_waiting_for_the_garbage_collector(
    mail: Running, clients
):
    """A TLS session holds ~400 KiB of buffers: closed ones must not pile up until a full
    collection (they did: ~300 MiB after a burst of one-message sessions)."""
    from mta.smtp import SubmissionSession

    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            raw = await clients.raw(mail)
            await raw.login()
            assert await raw.command("QUIT") == ["221 2.0.0 Bye"]
            assert await raw.closed()
        await asyncio.sleep(0.2)
        alive = [o for o in gc.get_objects() if isinstance(o, SubmissionSession)]
        assert len(alive) <= 2
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        ("<Bob.Smith+tag@Example.NET>", "Bob.Smith+tag@example.net"),
        ("<carol@[192.0.2.7]>", "carol@[192.0.2.7]"),
        ("<@relay.example:dave@example.net>", "dave@example.net"),
    ],
    ids=["plain", "address literal", "source route"],
)
async def test_mail_and_rcpt_paths_in_every_form_are_read_alike(mail: Running, clients, path, stored):
    """The plain `<local@domain>` form takes a fast path; the others go through aiosmtpd's
    parser. Both must give the same envelope, parameters included."""
    raw = await clients.raw(mail)
    await raw.login()
    assert await raw.command(f"MAIL FROM:<{LOGIN}>  SIZE=300 BODY=8BITMIME") == ["250 2.1.0 OK"]
    assert await raw.command(f"RCPT TO:{path}") == ["250 2.1.5 OK"]
    assert await raw.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    message_id = queued_id((await raw.data(message()))[0])
    (row,) = await storeview.recipients(store_of(mail), message_id)
    assert row["address"] == stored
    assert row["sender"] == LOGIN
