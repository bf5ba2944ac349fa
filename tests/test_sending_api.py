"""Sending over HTTP (manual: "Sending via API", "Batch Sending", "Attaching Data to Messages",
"Tagging", "Scheduling Delivery", "Sending in Test Mode"), checked against what was stored."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests import storeview
from tests.capture import start_capture
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio


def message_id_of(body: dict) -> str:
    assert body["message"] == "Queued. Thank you."
    assert re.fullmatch(r"<[^<>@\s]+@mg\.example\.test>", body["id"]), body["id"]
    return body["id"].strip("<>")


async def send(api: aiohttp.ClientSession, data, path: str = "messages") -> tuple[int, dict]:
    async with api.post(f"/v3/{DOMAIN}/{path}", data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_manuals_first_curl_example_is_queued_with_mailguns_answer(running: Running):
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "curl",
            "-s",
            "--user",
            f"api:{running.key}",
            f"{running.url}/v3/{DOMAIN}/messages",
            "-F",
            f"from=Excited User <mailgun@{DOMAIN}>",
            "-F",
            f"to=YOU@{DOMAIN}",
            "-F",
            "to=bar@example.com",
            "-F",
            "subject=Hello",
            "-F",
            "text=Testing some Mailgun awesomness!",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body = json.loads(result.stdout)
    assert set(body) == {"id", "message"}
    message_id = message_id_of(body)
    store = running.services.store
    rows = await storeview.recipients(store, message_id)
    assert [r["address"] for r in rows] == [f"YOU@{DOMAIN}", "bar@example.com"]
    assert {r["state"] for r in rows} == {"queued"}
    msg = await storeview.message_for(store, message_id, "bar@example.com")
    assert msg["From"] == f"Excited User <mailgun@{DOMAIN}>"
    assert msg["To"] == f"YOU@{DOMAIN}, bar@example.com"
    assert msg["Subject"] == "Hello"
    assert msg["Message-Id"] == f"<{message_id}>"
    assert msg.get_content() == "Testing some Mailgun awesomness!"
    accepted = await storeview.events(store, "accepted")
    assert {e["recipient"] for e in accepted} == {"bar@example.com", f"YOU@{DOMAIN}"}


async def test_stored_message_uses_crlf_line_ends_throughout(running: Running, api):
    status, body = await send(
        api,
        {"from": f"a@{DOMAIN}", "to": "b@example.net", "subject": "s", "text": "one\ntwo\r\nthree"},
    )
    assert status == 200
    rows = await storeview.recipients(running.services.store, message_id_of(body))
    mime = rows[0]["mime"]
    assert b"\n" not in mime.replace(b"\r\n", b"")
    assert b"one\r\ntwo\r\nthree" in mime


async def test_full_send_builds_alternative_related_and_mixed_parts(running: Running, api):
    form = aiohttp.FormData()
    form.add_field("from", f"Sender <sender@{DOMAIN}>")
    form.add_field("to", "Alice <alice@example.net>")
    form.add_field("to", "bob@example.net")
    form.add_field("cc", "carol@example.net")
    form.add_field("bcc", "dave@example.net")
    form.add_field("subject", "Hello")
    form.add_field("text", "Plain body")
    form.add_field("html", '<p>Hi <img src="cid:logo.png"></p>')
    form.add_field(
        "attachment", b"%PDF-1.4 fake", filename="report.pdf", content_type="application/pdf"
    )
    form.add_field(
        "inline", b"\x89PNG\r\n\x1a\nfake", filename="logo.png", content_type="image/png"
    )
    status, body = await send(api, form)
    assert status == 200, body
    message_id = message_id_of(body)
    store = running.services.store
    rows = await storeview.recipients(store, message_id)
    assert [r["address"] for r in rows] == [
        "alice@example.net",
        "bob@example.net",
        "carol@example.net",
        "dave@example.net",
    ]
    msg = await storeview.message_for(store, message_id, "dave@example.net")
    assert "Bcc" not in msg
    assert "dave@example.net" not in bytes(msg).decode()
    assert msg["To"] == "Alice <alice@example.net>, bob@example.net"
    assert msg["Cc"] == "carol@example.net"
    assert msg.get_content_type() == "multipart/mixed"
    body_part, attachment = msg.get_payload()
    assert body_part.get_content_type() == "multipart/alternative"
    text, related = body_part.get_payload()
    assert text.get_content() == "Plain body"
    assert related.get_content_type() == "multipart/related"
    html, image = related.get_payload()
    assert html.get_content() == '<p>Hi <img src="cid:logo.png"></p>'
    assert image["Content-ID"] == "<logo.png>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == b"\x89PNG\r\n\x1a\nfake"
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"
    event = (await storeview.events(store, "accepted"))[0]
    assert event["message"]["attachments"] == [
        {"filename": "report.pdf", "content-type": "application/pdf", "size": 13},
        {"filename": "logo.png", "content-type": "image/png", "size": 12},
    ]


async def test_inline_file_named_by_its_content_id_gets_that_content_id(running: Running, api):
    form = aiohttp.FormData(quote_fields=False)  # file names go raw, as requests sends them
    for name, value in (
        ("from", f"sender@{DOMAIN}"),
        ("to", "alice@example.net"),
        ("subject", "Full"),
        ("text", "t"),
        ("html", '<img src="cid:logo123@example.test">'),
    ):
        form.add_field(name, value)
    form.add_field("inline", b"png", filename="logo123@example.test", content_type="image/png")
    status, body = await send(api, form)
    assert status == 200
    msg = await storeview.message_for(
        running.services.store, message_id_of(body), "alice@example.net"
    )
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert [p["Content-ID"] for p in images] == ["<logo123@example.test>"]


async def test_options_tags_variables_and_custom_headers_are_kept(running: Running, api):
    when = time.time() + 3600
    data = [
        ("from", f"Sender <sender@{DOMAIN}>"),
        ("to", "alice@example.net"),
        ("subject", "Hello"),
        ("text", "Plain body"),
        ("o:tag", "Newsletter"),
        ("o:tag", "september"),
        ("o:campaign", "camp1"),
        ("o:deliverytime", time.strftime("%a, %d %b %Y %H:%M:%S -0000", time.gmtime(when))),
        ("o:testmode", "yes"),
        ("o:tracking", "yes"),
        ("o:tracking-clicks", "htmlonly"),
        ("o:tracking-opens", "True"),
        ("o:require-tls", "true"),
        ("o:skip-verification", "False"),
        ("o:dkim", "yes"),
        ("h:X-Custom-Header", "custom-value"),
        ("h:Reply-To", "replies@example.net"),
        ("h:X-Mailgun-Variables", '{"via": "header"}'),
        ("v:order-id", "12345"),
        ("v:my-json", '{"a": 1}'),
    ]
    campaign = {"id": "camp1", "name": "First campaign"}
    async with api.post(f"/v3/{DOMAIN}/campaigns", data=campaign) as resp:
        assert resp.status == 200, await resp.text()
    status, body = await send(api, data)
    assert status == 200, body
    message_id = message_id_of(body)
    store = running.services.store
    msg = await storeview.message_for(store, message_id, "alice@example.net")
    assert msg["X-Custom-Header"] == "custom-value"
    assert msg["Reply-To"] == "replies@example.net"
    assert msg.get_all("X-Mailgun-Variables") == [
        '{"via":"header","order-id":"12345","my-json":"{\\"a\\": 1}"}'
    ]
    opts = await storeview.options(store, message_id)
    assert opts["tags"] == ["newsletter", "september"]
    assert opts["campaigns"] == ["camp1"]
    assert opts["test_mode"] is True
    assert opts["tracking"] is True
    assert opts["tracking_clicks"] == "htmlonly"
    assert opts["tracking_opens"] is True
    assert opts["require_tls"] is True
    assert opts["dkim"] is True
    assert opts["skip_verification"] is False
    (row,) = await storeview.recipients(store, message_id)
    assert row["due_at"] == pytest.approx(int(when), abs=1)
    (event,) = await storeview.events(store, "accepted")
    assert event["tags"] == ["newsletter", "september"]
    assert event["campaigns"] == [campaign]
    assert event["flags"]["is-test-mode"] is True
    assert event["user-variables"] == {"via": "header", "order-id": "12345", "my-json": '{"a": 1}'}


async def test_deliverytime_as_epoch_and_gmt_forms_are_both_understood(running: Running, api):
    when = int(time.time()) + 7200
    for value in (str(when), time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))):
        status, body = await send(
            api,
            {"from": f"s@{DOMAIN}", "to": "a@example.net", "text": "x", "o:deliverytime": value},
        )
        assert status == 200, body
        (row,) = await storeview.recipients(running.services.store, message_id_of(body))
        assert row["due_at"] == pytest.approx(when, abs=1)


async def test_non_ascii_subject_names_and_body_survive_encoding(running: Running, api):
    status, body = await send(
        api,
        {
            "from": f"Zoë Ünïcode <zoe@{DOMAIN}>",
            "to": "Jörg <joerg@example.net>",
            "subject": "Grüße – ☃ " + "long " * 30,
            "text": "Ça va? ☃\nNächste Zeile",
            "html": "<p>Größe ☃</p>",
        },
    )
    assert status == 200, body
    mime = (await storeview.recipients(running.services.store, message_id_of(body)))[0]["mime"]
    head = mime.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert all(len(line) <= 998 for line in mime.split(b"\r\n"))
    msg = storeview.parse(mime)
    assert msg["Subject"] == "Grüße – ☃ " + "long " * 30
    assert msg["From"].addresses[0].display_name == "Zoë Ünïcode"
    assert msg["To"].addresses[0].display_name == "Jörg"
    text, html = msg.get_payload()
    # Python's parser keeps a quoted-printable hard line break as CRLF
    assert text.get_content().replace("\r\n", "\n") == "Ça va? ☃\nNächste Zeile"
    assert b"=C3=87a va? =E2=98=83\r\nN=C3=A4chste Zeile" in mime
    assert html.get_content() == "<p>Größe ☃</p>"


async def test_batch_with_recipient_variables_personalises_each_copy(running: Running, api):
    data = [
        ("from", f"Excited User <me@{DOMAIN}>"),
        ("to", "alice@example.com"),
        ("to", "Bob <bob@example.com>"),
        ("cc", "boss@example.com"),
        (
            "recipient-variables",
            json.dumps(
                {
                    "bob@example.com": {
                        "first": "Bob",
                        "id": 1,
                        "v:cust": "B",
                        "h:List-Unsubscribe": "<https://u.example/b>",
                    },
                    "alice@example.com": {
                        "first": "Alice",
                        "id": 2,
                        "v:cust": "A",
                        "h:List-Unsubscribe": "<https://u.example/a>",
                    },
                }
            ),
        ),
        ("subject", "Hey, %recipient.first%"),
        (
            "text",
            "If you wish to unsubscribe, click http://mailgun/unsubscribe/%recipient.id%"
            " (%recipient.missing%) %recipient_email%",
        ),
        ("v:cust", "%recipient.v:cust%"),
        ("h:List-Unsubscribe", "%recipient.h:List-Unsubscribe%"),
    ]
    status, body = await send(api, data)
    assert status == 200, body
    message_id = message_id_of(body)
    store = running.services.store
    alice = await storeview.message_for(store, message_id, "alice@example.com")
    assert alice["To"] == "alice@example.com"
    assert alice["Cc"] == "boss@example.com"
    assert alice["Subject"] == "Hey, Alice"
    assert alice.get_content() == (
        "If you wish to unsubscribe, click http://mailgun/unsubscribe/2 () alice@example.com"
    )
    assert alice["List-Unsubscribe"] == "<https://u.example/a>"
    assert json.loads(alice["X-Mailgun-Variables"]) == {"cust": "A"}
    bob = await storeview.message_for(store, message_id, "bob@example.com")
    assert bob["To"] == "Bob <bob@example.com>"
    assert bob["Subject"] == "Hey, Bob"
    assert "unsubscribe/1 ()" in bob.get_content()
    # the cc'd address gets each personalised copy (as Mailgun does)
    rows = await storeview.recipients(store, message_id)
    assert [r["address"] for r in rows] == [
        "alice@example.com",
        "boss@example.com",
        "bob@example.com",
        "boss@example.com",
    ]
    by_recipient = {}
    for event in await storeview.events(store, "accepted"):
        by_recipient.setdefault(event["recipient"], []).append(event)
    assert by_recipient["alice@example.com"][0]["message"]["headers"]["to"] == "alice@example.com"
    assert by_recipient["alice@example.com"][0]["user-variables"] == {"cust": "A"}
    assert by_recipient["bob@example.com"][0]["user-variables"] == {"cust": "B"}
    assert len(by_recipient["boss@example.com"]) == 2
    # each personalised copy is its own message: its events list only its own recipients
    assert by_recipient["bob@example.com"][0]["message"]["recipients"] == [
        "bob@example.com", "boss@example.com"
    ]


async def test_several_to_without_recipient_variables_is_one_message_to_all(running: Running, api):
    status, body = await send(
        api,
        [
            ("from", f"s@{DOMAIN}"),
            ("to", "a@example.net"),
            ("to", "b@example.net, c@example.net"),
            ("subject", "Hi %recipient.first%"),
            ("text", "x"),
        ],
    )
    assert status == 200
    rows = await storeview.recipients(running.services.store, message_id_of(body))
    assert len(rows) == 3
    assert len({r["mime"] for r in rows}) == 1
    msg = storeview.parse(rows[0]["mime"])
    assert msg["To"] == "a@example.net, b@example.net, c@example.net"
    assert msg["Subject"] == "Hi %recipient.first%"


async def test_mime_send_accepts_message_as_file_part_and_as_text_field(running: Running, api):
    mime = (
        f"From: sender@{DOMAIN}\nTo: alice@example.net\nSubject: Pre-built\n"
        "Message-Id: <prebuilt.1@client.example>\n\nHello from MIME\n"
    )
    as_file = aiohttp.FormData()
    as_file.add_field("to", "alice@example.net")
    as_file.add_field("to", "hidden@example.net")
    as_file.add_field("message", mime.encode(), filename="message")
    status, body = await send(api, as_file, "messages.mime")
    assert status == 200, body
    assert body["id"] == "<prebuilt.1@client.example>"
    store = running.services.store
    rows = await storeview.recipients(store, "prebuilt.1@client.example")
    assert [r["address"] for r in rows] == ["alice@example.net", "hidden@example.net"]
    stored = rows[0]["mime"]
    assert b"\r\n\r\nHello from MIME\r\n" in stored
    assert b"Date: " in stored  # added when missing

    as_text = aiohttp.FormData()
    as_text.add_field("to", "alice@example.net")
    as_text.add_field("message", mime.replace("prebuilt.1", "prebuilt.2"))
    status, body = await send(api, as_text, "messages.mime")
    assert status == 200, body
    assert body["id"] == "<prebuilt.2@client.example>"


async def test_mime_send_without_message_id_gets_one(running: Running, api):
    form = aiohttp.FormData()
    form.add_field("to", "alice@example.net")
    form.add_field("o:tag", "mime")
    form.add_field("v:k", "v")
    form.add_field(
        "message", f"From: s@{DOMAIN}\r\nSubject: x\r\n\r\nbody\r\n".encode(), filename="message"
    )
    status, body = await send(api, form, "messages.mime")
    assert status == 200
    message_id = message_id_of(body)
    msg = await storeview.message_for(running.services.store, message_id, "alice@example.net")
    assert msg["Message-Id"] == f"<{message_id}>"
    assert json.loads(msg["X-Mailgun-Variables"]) == {"k": "v"}
    (event,) = await storeview.events(running.services.store, "accepted")
    assert event["tags"] == ["mime"]
    assert event["message"]["headers"]["subject"] == "x"


async def test_sandbox_domain_sends_only_to_authorised_recipients(running: Running, api):
    domains = running.services.domains
    await domains.create("sandbox1.example.test", sandbox=True)
    await domains.authorize("sandbox1.example.test", "Friend@Example.net")
    async with api.post(
        "/v3/sandbox1.example.test/messages",
        data={
            "from": "me@sandbox1.example.test",
            "to": "friend@example.net",
            "text": "hi",
        },
    ) as resp:
        assert resp.status == 200
    async with api.post(
        "/v3/sandbox1.example.test/messages",
        data={
            "from": "me@sandbox1.example.test",
            "to": "friend@example.net, stranger@example.net",
            "text": "hi",
        },
    ) as resp:
        assert resp.status == 400
        message = (await resp.json())["message"]
    assert message.startswith("Domain sandbox1.example.test is not allowed to send")
    assert "stranger@example.net" in message
    for n in range(4):
        await domains.authorize("sandbox1.example.test", f"r{n}@example.net")
    with pytest.raises(Exception, match="at most 5"):
        await domains.authorize("sandbox1.example.test", "sixth@example.net")


async def test_urlencoded_and_multipart_forms_are_equivalent(running: Running, api):
    fields = {"from": f"s@{DOMAIN}", "to": "a@example.net", "subject": "same", "text": "same"}
    status_a, body_a = await send(api, fields)
    form = aiohttp.FormData(fields)
    form._is_multipart = True
    status_b, body_b = await send(api, form)
    assert status_a == status_b == 200
    store = running.services.store
    a = await storeview.message_for(store, message_id_of(body_a), "a@example.net")
    b = await storeview.message_for(store, message_id_of(body_b), "a@example.net")
    assert (a["Subject"], a.get_content()) == (b["Subject"], b.get_content())


async def test_concurrent_sends_are_each_acknowledged_after_their_commit(running: Running, api):
    async def one(n: int) -> str:
        status, body = await send(
            api, {"from": f"s@{DOMAIN}", "to": f"r{n}@example.net", "text": str(n)}
        )
        assert status == 200
        return message_id_of(body)

    ids = await asyncio.gather(*(one(n) for n in range(200)))
    store = running.services.store
    assert (await storeview.counts(store))["messages"] == 200
    for message_id in ids:
        assert len(await storeview.recipients(store, message_id)) == 1
    if store.dialect == "sqlite":  # PostgreSQL groups concurrent commits itself
        assert store.commits < store.committed_jobs  # writes were grouped into shared commits


async def test_resending_the_same_mime_message_id_queues_it_again(running: Running, api):
    mime = f"From: s@{DOMAIN}\r\nMessage-Id: <same.1@client.example>\r\n\r\nbody\r\n".encode()
    for _ in range(2):
        form = aiohttp.FormData()
        form.add_field("to", "alice@example.net")
        form.add_field("message", mime, filename="message")
        status, body = await send(api, form, "messages.mime")
        assert status == 200, body
        assert body["id"] == "<same.1@client.example>"
    rows = await storeview.recipients(running.services.store, "same.1@client.example")
    assert [r["address"] for r in rows] == ["alice@example.net", "alice@example.net"]


async def test_a_large_batch_and_small_sends_sent_together_are_all_accepted(running: Running, api):
    """A 1,000-recipient batch (built off the event loop, and only once: it is stored as one
    template) beside small sends. Which finishes first is a race, not asserted: how long the
    loop stalls is measured by bench/adversarial.py (batch_loop_lag_max_ms)."""
    batch = [
        ("from", f"s@{DOMAIN}"),
        ("subject", "Hi %recipient.n%"),
        ("text", "x" * 20000),  # heavy enough to take a while off the loop
        ("recipient-variables", json.dumps({f"r{n}@example.net": {"n": n} for n in range(1000)})),
    ]
    batch += [("to", f"r{n}@example.net") for n in range(1000)]
    finished: list[str] = []

    async def small(n: int) -> None:
        status, _ = await send(api, {"from": f"s@{DOMAIN}", "to": f"q{n}@example.net", "text": "x"})
        assert status == 200
        finished.append("small")

    async def big() -> None:
        status, _ = await send(api, batch)
        assert status == 200
        finished.append("big")

    await asyncio.gather(big(), *(small(n) for n in range(5)))
    assert sorted(finished) == ["big"] + ["small"] * 5
    assert (await storeview.counts(running.services.store))["recipients"] == 1005


async def test_mime_send_honours_and_removes_x_mailgun_control_headers(running: Running, api):
    when = int(time.time()) + 3600
    mime = (
        f"X-Mailgun-Tag: First\r\nX-Mailgun-Tag: second\r\nX-Mailgun-Campaign-Id: c1\r\n"
        f"X-Mailgun-Dkim: no\r\nX-Mailgun-Deliver-By: {when}\r\nX-Mailgun-Drop-Message: yes\r\n"
        "X-Mailgun-Track: no\r\nX-Mailgun-Track-Clicks: htmlonly\r\nX-Mailgun-Track-Opens: yes\r\n"
        "X-Mailgun-Require-TLS: yes\r\nX-Mailgun-Skip-Verification: true\r\n"
        'X-Mailgun-Variables: {"first_name": "John"}\r\n'
        'X-Mailgun-Variables: {"my_message_id": 123}\r\n'
        "X-Mailgun-Sending-Ip: 192.0.2.1\r\n"
        f"From: me@{DOMAIN}\r\nTo: alice@example.net\r\nSubject: opts\r\n\r\nbody\r\n"
    ).encode()
    async with api.post(f"/v3/{DOMAIN}/campaigns", data={"id": "c1", "name": "C1"}) as resp:
        assert resp.status == 200, await resp.text()
    form = aiohttp.FormData()
    form.add_field("to", "alice@example.net")
    form.add_field("message", mime, filename="message")
    status, body = await send(api, form, "messages.mime")
    assert status == 200, body
    message_id = message_id_of(body)
    store = running.services.store
    msg = await storeview.message_for(store, message_id, "alice@example.net")
    assert [k for k in msg if k.lower().startswith("x-mailgun")] == [
        "X-Mailgun-Variables", "X-Mailgun-Variables"
    ]
    opts = await storeview.options(store, message_id)
    assert opts["tags"] == ["first", "second"]
    assert opts["campaigns"] == ["c1"]
    assert opts["dkim"] is False
    assert opts["test_mode"] is True
    assert opts["tracking"] is False
    assert opts["tracking_clicks"] == "htmlonly"
    assert opts["tracking_opens"] is True
    assert opts["require_tls"] is True
    assert opts["skip_verification"] is True
    assert (await storeview.recipients(store, message_id))[0]["due_at"] == pytest.approx(when)
    (event,) = await storeview.events(store, "accepted")
    assert event["user-variables"] == {"first_name": "John", "my_message_id": 123}


async def test_mime_send_with_recipient_variables_header_is_a_batch(running: Running, api):
    mime = (
        'X-Mailgun-Recipient-Variables: {"bob@example.com": {"first":"Bob", "id":1},\r\n'
        ' "alice@example.com": {"first":"Alice", "id": 2}}\r\n'
        f"From: me@{DOMAIN}\r\nTo: alice@example.com, bob@example.com\r\n"
        "Subject: Hello, %recipient.first%!\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "Hi, %recipient.first%,\r\n=20\r\nPlease review example.com/orders/%recipient.id%.\r\n"
    ).encode()
    form = aiohttp.FormData()
    form.add_field("to", "alice@example.com")
    form.add_field("to", "bob@example.com")
    form.add_field("message", mime, filename="message")
    status, body = await send(api, form, "messages.mime")
    assert status == 200, body
    store = running.services.store
    bob = await storeview.message_for(store, message_id_of(body), "bob@example.com")
    assert bob["To"] == "bob@example.com"
    assert bob["Subject"] == "Hello, Bob!"
    assert "X-Mailgun-Recipient-Variables" not in bob
    assert bob.get_content().replace("\r\n", "\n") == (
        "Hi, Bob,\n \nPlease review example.com/orders/1.\n"
    )


async def test_mime_variables_container_is_unwrapped(running: Running, api):
    import base64

    variables = base64.b64encode(json.dumps(
        {"alice@example.net": {"description": "klmzhentas"}}).encode()).decode()
    mime = (
        'Content-Type: multipart/mailgun-variables; boundary="8686cc907910484e9d21c54776cd791c"\r\n'
        f"Mime-Version: 1.0\r\nFrom: bob@{DOMAIN}\r\n\r\n"
        "--8686cc907910484e9d21c54776cd791c\r\nMime-Version: 1.0\r\n"
        "Content-Type: application/json\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{variables}\r\n\r\n"
        "--8686cc907910484e9d21c54776cd791c\r\nContent-Type: message/rfc822\r\n"
        "Mime-Version: 1.0\r\n\r\n"
        "To: %recipient.description% <alice@example.net>\r\n"
        f"From: bob@{DOMAIN}\r\nSubject: (rackspace) Hello\r\n\r\n"
        "support %recipient.description%\r\n\r\n"
        "--8686cc907910484e9d21c54776cd791c--\r\n"
    ).encode()
    form = aiohttp.FormData()
    form.add_field("to", "alice@example.net")
    form.add_field("message", mime, filename="message")
    status, body = await send(api, form, "messages.mime")
    assert status == 200, body
    msg = await storeview.message_for(running.services.store, message_id_of(body),
                                "alice@example.net")
    assert msg["Subject"] == "(rackspace) Hello"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "support klmzhentas"


async def test_mime_send_with_bad_control_header_is_400(running: Running, api):
    form = aiohttp.FormData()
    form.add_field("to", "alice@example.net")
    form.add_field("message", f"X-Mailgun-Dkim: maybe\r\nFrom: a@{DOMAIN}\r\n\r\nb".encode(),
                   filename="message")
    status, body = await send(api, form, "messages.mime")
    assert status == 400
    assert body["message"] == "X-Mailgun-Dkim must be yes or no, got 'maybe'"


# -- conformance: a past delivery time, and API options over the message's own headers -------------


async def test_the_manuals_past_deliverytime_example_is_queued_due_now(running: Running, api):
    """The manual's example date (2011) is long past: Mailgun sends such mail now, so a client
    copied from the manual must not get a 400 (nor a message held back)."""
    form = aiohttp.FormData()  # curl -F: multipart, as in the manual
    for name, value in (
        ("from", f"Sender Bob <sbob@{DOMAIN}>"),
        ("to", "alice@example.com"),
        ("subject", "Hello"),
        ("text", "Testing some Mailgun awesomness!"),
        ("o:deliverytime", "Fri, 14 Oct 2011 23:10:10 -0000"),
    ):
        form.add_field(name, value)
    status, body = await send(api, form)
    assert status == 200, body
    message_id = message_id_of(body)
    store = running.services.store
    assert "deliver_at" not in await storeview.options(store, message_id)
    created = await store.fetchone(
        "SELECT created_at FROM messages WHERE message_id = ?", (message_id,)
    )
    assert created is not None
    created_at = created["created_at"]
    (row,) = await storeview.recipients(store, message_id)
    assert row["state"] == "queued"
    assert row["due_at"] == created_at  # due the moment it was accepted
    (accepted,) = await storeview.events(store, "accepted")
    assert "delivery-time" not in accepted


async def test_api_o_dkim_no_beats_x_mailgun_dkim_yes_inside_messages_mime(
    start_server: Callable[..., Any],
):
    """The request's own option is what the client asked for this send; a header left in a
    stored template must not override it."""
    mx = await start_capture()
    try:
        running = await start_server(
            outbound__enabled=True, dns__static_mx={"dest.example.test": [mx.address]}
        )
        async with running.session() as api:
            for rcpt, option in (("plain@dest.example.test", "no"),
                                 ("signed@dest.example.test", None)):
                mime = (f"X-Mailgun-Dkim: yes\r\nFrom: me@{DOMAIN}\r\nTo: {rcpt}\r\n"
                        "Subject: dkim\r\n\r\nbody\r\n").encode()
                form = aiohttp.FormData()
                form.add_field("to", rcpt)
                form.add_field("message", mime, filename="message.mime")
                if option is not None:
                    form.add_field("o:dkim", option)
                status, body = await send(api, form, "messages.mime")
                assert status == 200, body
        await mx.wait_for(2)
        plain = mx.to("plain@dest.example.test")[0].data
        signed = mx.to("signed@dest.example.test")[0].data
        assert b"DKIM-Signature" not in plain
        assert b"X-Mailgun-Dkim" not in plain  # consumed all the same
        assert signed.startswith(b"DKIM-Signature: ")  # without o:dkim the header is obeyed
    finally:
        await mx.close()
