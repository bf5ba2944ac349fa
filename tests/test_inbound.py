"""Receiving mail (manual: "Receiving, Forwarding and Storing Messages"): the MX port takes mail
for hosted domains only, routes turn it into HTTP posts, email forwards and stored messages, and
reports about mail we sent (DSN, ARF) update events and suppressions. Real servers over
loopback: an aiohttp application receiving the posts, a capture SMTP server for forwards."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
import pytest
from aiohttp import web

from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"


@dataclass
class App:
    """An application receiving route posts; answers with `status` (a list is used in turn)."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, tuple[str, bytes]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async def enough() -> None:
            while len(self.posts) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.posts


@pytest.fixture
async def app() -> AsyncIterator[App]:
    received = App("")

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        fields: dict[str, Any] = {}
        files: dict[str, tuple[str, bytes]] = {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                files[name] = (value.filename, value.file.read())
            else:
                fields[name] = value
        fields["_path"] = request.path_qs
        received.posts.append(fields)
        received.files.append(files)
        received.arrived.set()
        status = received.statuses.pop(0) if received.statuses else 200
        return web.Response(status=status, text="ok")

    application = web.Application()
    application.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield received
    await runner.cleanup()


async def inbound_server(start_server: Callable[..., Any], capture: Capture | None = None,
                         **overrides: Any) -> Running:
    static = {DEST: [capture.address]} if capture else {}
    return await start_server(
        outbound__enabled=True,
        dns__static_mx=static,
        inbound__retry_intervals_s=[0.2, 0.2],
        **overrides,
    )


async def add_route(running: Running, expression: str, *actions: str, priority: int = 0) -> str:
    form = [("priority", str(priority)), ("expression", expression)]
    form += [("action", a) for a in actions]
    async with running.session() as api, api.post("/v3/routes", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["route"]["id"]


def message(to: str, subject: str = "Hello", body: str = "Hi there\r\n", sender: str =
            "alice@sender.example.org", extra: str = "") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-Id: <m1@sender.example.org>\r\n{extra}\r\n{body}"
    ).encode()


async def send_mx(running: Running, to: str, data: bytes, sender: str =
                  "alice@sender.example.org") -> tuple[int, str]:
    port = running.server.smtp.port("mx")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    try:
        _errors, reply = await client.sendmail(sender, [to], data)
        return 250, reply
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refusal = exc.recipients[0]
        return refusal.code, refusal.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        client.close()


def signature_ok(key: str, fields: dict[str, Any]) -> bool:
    expected = hmac.new(key.encode(), f"{fields['timestamp']}{fields['token']}".encode(),
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["signature"])


async def signing_key(running: Running) -> str:
    return await running.services.account.signing_key()


async def test_mail_for_a_domain_not_hosted_here_is_refused_as_relaying(start_server):
    running = await inbound_server(start_server)
    code, text = await send_mx(running, "someone@elsewhere.example", message("x"))
    assert (code, text) == (550, "5.7.1 Relaying denied")


async def test_mx_offers_starttls_and_no_auth(start_server):
    running = await inbound_server(start_server)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.server.smtp.port("mx"),
                             start_tls=False)
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    client.close()


async def test_forward_to_a_url_posts_the_parsed_message_signed(start_server, app: App):
    running = await inbound_server(start_server)
    await add_route(running, f'match_recipient("(?P<user>.*)@{DOMAIN}")',
                    f'forward("{app.url}/in/\\g<user>")')
    code, _ = await send_mx(running, f"support@{DOMAIN}",
                            message(f"support@{DOMAIN}", subject="Need help"))
    assert code == 250
    [post] = await app.wait_for(1)
    assert post["_path"] == "/in/support"
    assert post["recipient"] == f"support@{DOMAIN}"
    assert post["sender"] == "alice@sender.example.org"
    assert post["subject"] == "Need help"
    assert post["body-plain"].strip() == "Hi there"
    assert post["X-Mailgun-Incoming"] == "Yes"
    headers = json.loads(post["message-headers"])
    assert [h[0] for h in headers][:5] == [
        "Received", "X-Mailgun-Incoming", "X-Envelope-From", "From", "To"
    ]
    assert headers[0][1].startswith("from ")
    assert signature_ok(await signing_key(running), post)
    assert len(post["token"]) == 50


async def test_a_url_ending_in_mime_gets_the_raw_message(start_server, app: App):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", f'forward("{app.url}/messages.mime")')
    await send_mx(running, f"raw@{DOMAIN}", message(f"raw@{DOMAIN}", subject="Raw"))
    [post] = await app.wait_for(1)
    assert "Subject: Raw" in post["body-mime"]
    assert post["subject"] == "Raw" and "body-plain" not in post
    assert signature_ok(await signing_key(running), post)


async def test_a_failing_application_is_retried_and_406_stops_the_retries(start_server,
                                                                          app: App):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", f'forward("{app.url}/hook")')
    app.statuses = [500, 503, 200]
    await send_mx(running, f"a@{DOMAIN}", message(f"a@{DOMAIN}"))
    await app.wait_for(3, timeout=10)
    await asyncio.sleep(0.5)
    assert len(app.posts) == 3  # 200 ends it

    app.posts.clear()
    app.statuses = [406]
    await send_mx(running, f"b@{DOMAIN}", message(f"b@{DOMAIN}"))
    await app.wait_for(1)
    await asyncio.sleep(0.8)
    assert len(app.posts) == 1  # 406: rejected, never retried


async def test_an_application_that_keeps_failing_is_given_up_and_recorded(start_server,
                                                                           app: App):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", f'forward("{app.url}/hook")')
    app.statuses = [500] * 10
    await send_mx(running, f"c@{DOMAIN}", message(f"c@{DOMAIN}"))
    await app.wait_for(3, timeout=10)  # one try and two retries ([0.2, 0.2])
    await asyncio.sleep(0.8)
    assert len(app.posts) == 3
    failed = [e for e in await storeview.events(running.services.store, "failed")
              if e.get("recipient") == f"c@{DOMAIN}"]
    assert len(failed) == 1 and failed[0]["severity"] == "permanent"
    assert failed[0]["delivery-status"]["code"] == 500


async def test_routes_run_in_priority_order_and_stop_ends_the_waterfall(start_server,
                                                                        app: App):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", f'forward("{app.url}/catchall")', priority=10)
    await add_route(running, f'match_recipient("sales@{DOMAIN}")',
                    f'forward("{app.url}/sales")', "stop()", priority=1)
    await add_route(running, f'match_recipient(".*@{DOMAIN}")',
                    f'forward("{app.url}/all")', priority=5)
    await send_mx(running, f"sales@{DOMAIN}", message(f"sales@{DOMAIN}"))
    await send_mx(running, f"other@{DOMAIN}", message(f"other@{DOMAIN}"))
    await app.wait_for(2)
    await asyncio.sleep(0.5)
    paths = sorted(p["_path"] for p in app.posts)
    assert paths == ["/all", "/sales"]  # catch_all: only when nothing before matched


async def test_mail_without_any_matching_route_is_refused(start_server):
    running = await inbound_server(start_server)
    await add_route(running, f'match_recipient("only@{DOMAIN}")', "stop()")
    code, text = await send_mx(running, f"nobody@{DOMAIN}", message(f"nobody@{DOMAIN}"))
    assert code == 550 and text.startswith("5.1.1")


async def test_store_keeps_the_message_notifies_and_serves_it_until_deleted(start_server,
                                                                            app: App):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", f'store(notify="{app.url}/stored")')
    data = message(f"keep@{DOMAIN}", subject="Keep me",
                   extra="MIME-Version: 1.0\r\n")
    assert (await send_mx(running, f"keep@{DOMAIN}", data))[0] == 250
    [note] = await app.wait_for(1)
    url = note["message-url"]
    assert note["domain"] == DOMAIN and note["subject"] == "Keep me"
    assert json.loads(note["attachments"]) == []
    assert signature_ok(await signing_key(running), note)
    [stored] = await storeview.events(running.services.store, "stored")
    assert stored["storage"]["url"] == url
    path = url.split("://", 1)[1].split("/", 1)[1]
    async with running.session() as api:
        async with api.get(f"/{path}") as resp:
            body = await resp.json()
            assert resp.status == 200
            assert body["subject"] == "Keep me" and body["recipients"] == f"keep@{DOMAIN}"
            assert body["body-plain"].strip() == "Hi there"
        async with api.get(f"/{path}", headers={"Accept": "message/rfc2822"}) as resp:
            assert "Subject: Keep me" in (await resp.json())["body-mime"]
        async with api.delete(f"/{path}") as resp:
            assert await resp.json() == {"message": "Message has been deleted"}
        async with api.get(f"/{path}") as resp:
            assert resp.status == 404
            assert await resp.json() == {"message": "Message not found"}


async def test_forward_to_an_address_goes_out_through_the_outbound_queue(start_server,
                                                                         mx: Capture):
    running = await inbound_server(start_server, mx)
    await add_route(running, f'match_recipient("info@{DOMAIN}")', f'forward("boss@{DEST}")')
    await send_mx(running, f"info@{DOMAIN}", message(f"info@{DOMAIN}", subject="Lead"))
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"boss@{DEST}"
    assert b"Subject: Lead" in got.data and b"X-Mailgun-Incoming: Yes" in got.data


async def sent_to(running: Running, mx: Capture, rcpt: str) -> str:
    """Send a message through the API; the return path it went out with."""
    async with running.session() as api:
        form = {"from": f"news@{DOMAIN}", "to": rcpt, "subject": "News", "text": "x"}
        async with api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
            assert resp.status == 200
    [got] = await mx.wait_for(1)
    return got.mail_from


def dsn(return_path: str, rcpt: str, status: str = "5.1.1") -> bytes:
    return (
        f"From: MAILER-DAEMON@{DEST}\r\nTo: {return_path}\r\nSubject: Undelivered Mail\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.{DEST}\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} User unknown\r\n"
        "--B--\r\n"
    ).encode()


async def test_a_delayed_bounce_marks_the_recipient_failed_and_bounced(start_server,
                                                                       mx: Capture):
    running = await inbound_server(start_server, mx)
    rcpt = f"gone@{DEST}"
    return_path = await sent_to(running, mx, rcpt)
    code, _ = await send_mx(running, return_path, dsn(return_path, rcpt), sender="")
    assert code == 250
    store = running.services.store
    failed = [e for e in await storeview.events(store, "failed") if e["recipient"] == rcpt]
    assert len(failed) == 1
    assert failed[0]["flags"]["is-delayed-bounce"] is True
    assert failed[0]["severity"] == "permanent"
    assert failed[0]["delivery-status"]["code"] == 550
    async with running.session() as api, api.get(f"/v3/{DOMAIN}/bounces/{rcpt}") as resp:
        assert resp.status == 200
        assert (await resp.json())["code"] == "550"


async def test_a_forged_bounce_address_is_not_taken_for_ours(start_server, mx: Capture):
    running = await inbound_server(start_server, mx)
    rcpt = f"kept@{DEST}"
    return_path = await sent_to(running, mx, rcpt)
    local, _, domain = return_path.partition("@")
    forged = f"{local[:-1]}{'0' if local[-1] != '0' else '1'}@{domain}"
    code, _ = await send_mx(running, forged, dsn(forged, rcpt), sender="")
    assert code == 550  # no report of ours, no route: refused
    async with running.session() as api, api.get(f"/v3/{DOMAIN}/bounces/{rcpt}") as resp:
        assert resp.status == 404


async def test_a_feedback_loop_complaint_records_complained_and_the_complaints_list(
    start_server, mx: Capture
):
    running = await inbound_server(start_server, mx)
    rcpt = f"annoyed@{DEST}"
    return_path = await sent_to(running, mx, rcpt)
    arf = (
        f"From: fbl@{DEST}\r\nTo: fbl@{DOMAIN}\r\nSubject: FW: News\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n"
        "--F\r\nContent-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: news@{DOMAIN}\r\nTo: {rcpt}\r\n"
        "Subject: News\r\n\r\nx\r\n"
        "--F--\r\n"
    ).encode()
    code, _ = await send_mx(running, f"fbl@{DOMAIN}", arf, sender=f"fbl@{DEST}")
    assert code == 250
    [complained] = await storeview.events(running.services.store, "complained")
    assert complained["recipient"] == rcpt
    async with running.session() as api, api.get(f"/v3/{DOMAIN}/complaints/{rcpt}") as resp:
        assert resp.status == 200


GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


async def tagging_server(start_server: Callable[..., Any], **overrides: Any) -> Running:
    """The sending domain marks spam (spam_action "tag"): verdict headers are added."""
    running = await inbound_server(
        start_server,
        dns__answers={"sender.example.org TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        **overrides,
    )
    await running.services.domains.delete(DOMAIN)
    await running.services.domains.create(DOMAIN, spam_action="tag")
    return running


async def test_marked_domains_get_spf_and_spam_verdict_headers_that_routes_can_match(
    start_server, app: App, spamd: str
):
    running = await tagging_server(start_server, spam__spamd=spamd)
    await add_route(running, 'match_header("X-Mailgun-Sflag", "Yes")',
                    f'forward("{app.url}/spam")', "stop()", priority=1)
    await add_route(running, "catch_all()", f'forward("{app.url}/inbox")', priority=2)
    await send_mx(running, f"a@{DOMAIN}", message(f"a@{DOMAIN}", body=f"{GTUBE}\r\n"))
    await send_mx(running, f"b@{DOMAIN}", message(f"b@{DOMAIN}", subject="Lunch?"))
    posts = {p["recipient"]: p for p in await app.wait_for(2)}
    spam, ham = posts[f"a@{DOMAIN}"], posts[f"b@{DOMAIN}"]
    assert spam["_path"] == "/spam" and spam["X-Mailgun-Sflag"] == "Yes"
    assert float(spam["X-Mailgun-Sscore"]) >= 100
    assert ham["_path"] == "/inbox" and ham["X-Mailgun-Sflag"] == "No"
    assert ham["X-Mailgun-Spf"] == "Pass"


async def test_unmarked_domains_get_no_verdict_headers(start_server, app: App):
    running = await inbound_server(
        start_server, dns__answers={"sender.example.org TXT": ["v=spf1 ip4:127.0.0.1 -all"]}
    )
    await add_route(running, "catch_all()", f'forward("{app.url}/inbox")')
    await send_mx(running, f"a@{DOMAIN}", message(f"a@{DOMAIN}"))
    [post] = await app.wait_for(1)
    assert not [name for name in post if name.startswith("X-Mailgun-S")]


async def test_a_stored_message_is_purged_once_its_time_is_up(start_server):
    running = await inbound_server(start_server, inbound__store_days=0.5 / 86400)
    await add_route(running, "catch_all()", "store()")
    assert (await send_mx(running, f"brief@{DOMAIN}", message(f"brief@{DOMAIN}")))[0] == 250
    [stored] = await storeview.events(running.services.store, "stored")
    path = "/" + stored["storage"]["url"].split("://", 1)[1].split("/", 1)[1]
    await asyncio.sleep(0.6)
    await running.services.inbound.purge()
    assert (await storeview.counts(running.services.store))["inbound"] == 0
    async with running.session() as api, api.get(path) as resp:
        assert resp.status == 404


async def test_strangers_cannot_forge_our_verdict_headers_or_inject_new_ones(
    start_server, app: App
):
    running = await inbound_server(start_server)
    await add_route(running, 'match_header("X-Mailgun-Sflag", "No")',
                    f'forward("{app.url}/trusted")', "stop()", priority=1)
    await add_route(running, "catch_all()", f'forward("{app.url}/inbox")', priority=2)
    forged = message(f"a@{DOMAIN}", extra="X-Mailgun-Sflag: No\r\nX-Envelope-From: <ceo@x>\r\n")
    assert (await send_mx(running, f"a@{DOMAIN}", forged))[0] == 250
    [post] = await app.wait_for(1)
    assert post["_path"] == "/inbox"
    assert "X-Mailgun-Sflag" not in post
    assert post["X-Envelope-From"] == "<alice@sender.example.org>"
    code, _ = await send_mx(running, f"a@{DOMAIN}", message(f"a@{DOMAIN}"),
                            sender='"a\rX-Injected: evil"@evil.example')
    assert code == 553


async def test_a_forwarded_strangers_message_cannot_steer_our_sending_options(
    start_server, mx: Capture
):
    running = await inbound_server(start_server, mx)
    await add_route(running, "catch_all()", f'forward("boss@{DEST}")')
    steering = message(f"info@{DOMAIN}", extra="X-Mailgun-Drop-Message: yes\r\n"
                       "X-Mailgun-Tag: pwned\r\n")
    assert (await send_mx(running, f"info@{DOMAIN}", steering))[0] == 250
    [got] = await mx.wait_for(1)  # not test mode: it really went out
    assert b"X-Mailgun-Tag" not in got.data
    accepted = [e for e in await storeview.events(running.services.store, "accepted")
                if e["recipient"] == f"boss@{DEST}"]
    assert accepted and accepted[0]["tags"] == []


async def test_a_mail_loop_is_refused(start_server):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", "store()")
    hops = "".join(f"Received: from hop{n} by hop{n + 1}; now\r\n" for n in range(51))
    code, text = await send_mx(running, f"a@{DOMAIN}", message(f"a@{DOMAIN}", extra=hops))
    assert code == 554 and text.startswith("5.4.6")


async def test_a_message_for_many_recipients_is_stored_once(start_server):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", "store()")
    port = running.server.smtp.port("mx")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    rcpts = [f"r{n}@{DOMAIN}" for n in range(5)]
    body = "x" * 70 + "\r\n"
    await client.sendmail("alice@sender.example.org", rcpts, message(rcpts[0], body=body * 70))
    client.close()
    store = running.services.store
    rows = await storeview.count(store, "inbound")
    contents = await storeview.count(store, "inbound_mime")
    assert (rows, contents) == (5, 1)


async def test_forwarded_attachments_arrive_as_files_with_their_content_id_map(
    start_server, app: App
):
    running = await inbound_server(start_server)
    await add_route(running, "catch_all()", f'forward("{app.url}/files")')
    logo = base64.b64encode(b"\x89PNG-logo").decode()
    report = base64.b64encode(b"%PDF-1.4 report").decode()
    mime = (
        "From: Alice <alice@sender.example.org>\r\nTo: files@mg.example.test\r\n"
        "Subject: With files\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/related; boundary="R"\r\n\r\n'
        "--R\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>Logo: <img src="cid:logo@x"></p>\r\n'
        "--R\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
        "Content-Disposition: inline; filename=\"logo.png\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{logo}\r\n"
        "--R\r\nContent-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{report}\r\n"
        "--R--\r\n"
    ).encode()
    assert (await send_mx(running, f"files@{DOMAIN}", mime))[0] == 250
    [post] = await app.wait_for(1)
    [files] = app.files
    assert post["attachment-count"] == "2"
    assert files["attachment-1"] == ("logo.png", b"\x89PNG-logo")
    assert files["attachment-2"] == ("report.pdf", b"%PDF-1.4 report")
    assert json.loads(post["content-id-map"]) == {"<logo@x>": "attachment-1"}
    assert "Logo:" in post["body-plain"] and "cid:logo@x" in post["body-html"]
