"""Tracked messages (manual: "Tracking Opens", "Tracking Clicks", "Tracking Unsubscribes"): each
recipient's copy gets its own click links, open pixel and unsubscribe links, the domain's
settings apply unless the message says otherwise, and DKIM signs what is sent. The capture SMTP
server stands in for the recipients' MX."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import re
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

import aiohttp
import aiosmtplib
import dkim
import orjson
import pytest
from aiohttp import web

from mta.tracking.rewrite import Choice, RecipientLinks, track
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.smtp_clients import submit

DEST = "dest.example.test"
LINK_BASE = f"http://email.{DOMAIN}"  # the CNAME default: <web_scheme>://<web_prefix>.<domain>
HTML = (
    '<html><body><p>Hi <a href="https://shop.example.com/sale?a=1&amp;b=%20x#top">sale</a>'
    ' <a href="mailto:help@shop.example.com">mail us</a> <a href="tel:+15550100">call</a>'
    ' <a href="#section">jump</a></p></body></html>'
)
TEXT = "Sale at https://shop.example.com/sale?a=1&b=2. Mail help@shop.example.com"


async def tracking_server(start_server: Callable[..., Any], mx: Capture) -> Running:
    return await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})


async def send(running: Running, **fields: Any) -> None:
    form = {"from": f"Shop <news@{DOMAIN}>", "to": f"alice@{DEST}", "subject": "Sale",
            "text": TEXT, "html": HTML} | fields
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()


def parsed(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def part(message: EmailMessage, media: str) -> str:
    for leaf in message.walk():
        if leaf.get_content_type() == media:
            return str(leaf.get_content())
    raise AssertionError(f"no {media} part")


async def signature_verifies(running: Running, data: bytes) -> bool:
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()
    return bool(dkim.verify(data, dnsfunc=lambda name, timeout=5: record))


async def put(running: Running, path: str, **form: str) -> tuple[int, dict[str, Any]]:
    async with running.session() as api, api.put(path, data=form) as resp:
        return resp.status, await resp.json()


# -- the domain's settings -------------------------------------------------------------------


async def test_domain_tracking_settings_start_off_with_mailguns_default_footers(running: Running):
    async with running.session() as api, api.get(f"/v3/domains/{DOMAIN}/tracking") as resp:
        assert resp.status == 200
        body = await resp.json()
    tracking = body["tracking"]
    assert tracking["open"]["active"] is False
    assert tracking["click"]["active"] is False
    assert tracking["unsubscribe"]["active"] is False
    assert tracking["unsubscribe"]["html_footer"] == (
        '\n<br>\n<p><a href="%unsubscribe_url%">unsubscribe</a></p>\n'
    )
    assert tracking["unsubscribe"]["text_footer"] == "\n\nTo unsubscribe click: <%unsubscribe_url%>\n\n"


async def test_domain_tracking_settings_are_changed_one_kind_at_a_time(running: Running):
    status, body = await put(running, f"/v3/domains/{DOMAIN}/tracking/open", active="yes")
    assert (status, body) == (200, {"message": "Domain tracking settings have been updated",
                                    "open": {"active": True}})
    status, body = await put(running, f"/v3/domains/{DOMAIN}/tracking/click", active="htmlonly")
    assert body["click"] == {"active": "htmlonly"}
    status, body = await put(running, f"/v3/domains/{DOMAIN}/tracking/unsubscribe",
                             active="true", html_footer="<p>%unsubscribe_url%</p>")
    assert body["unsubscribe"]["active"] is True
    assert body["unsubscribe"]["html_footer"] == "<p>%unsubscribe_url%</p>"
    async with running.session() as api, api.get(f"/v4/domains/{DOMAIN}/tracking") as resp:
        tracking = (await resp.json())["tracking"]
    assert tracking["open"]["active"] is True
    assert tracking["click"]["active"] == "htmlonly"
    assert tracking["unsubscribe"]["text_footer"].startswith("\n\nTo unsubscribe")


async def test_bad_tracking_values_and_unknown_domains_are_refused(running: Running):
    status, body = await put(running, f"/v3/domains/{DOMAIN}/tracking/open", active="maybe")
    assert status == 400 and "active" in body["message"]
    limit = running.server.config.tracking.max_footer_chars
    status, body = await put(running, f"/v3/domains/{DOMAIN}/tracking/unsubscribe",
                             active="true", text_footer="x" * (limit + 1))
    assert (status, body) == (400, {"message": f"text_footer is limited to {limit} characters"})
    async with running.session() as api, api.get(f"/v4/domains/{DOMAIN}/tracking") as resp:
        unsubscribe = (await resp.json())["tracking"]["unsubscribe"]
    assert len(unsubscribe["text_footer"]) <= limit  # nothing of the refused call was kept
    status, body = await put(running, "/v3/domains/nope.example.test/tracking/open", active="yes")
    assert (status, body) == (404, {"message": "Domain not found"})


async def test_a_domain_update_changes_spam_action_wildcard_and_web_settings(running: Running):
    status, body = await put(running, f"/v4/domains/{DOMAIN}", spam_action="tag",
                             wildcard="true", web_scheme="https", web_prefix="track")
    assert status == 200
    assert body["message"] == "Domain has been updated"
    domain = body["domain"]
    assert (domain["spam_action"], domain["wildcard"], domain["web_scheme"],
            domain["web_prefix"]) == ("tag", True, "https", "track")
    cname = [r for r in body["sending_dns_records"] if r["record_type"] == "CNAME"]
    assert cname[0]["name"] == f"track.{DOMAIN}"
    status, body = await put(running, f"/v3/domains/{DOMAIN}", web_scheme="ftp")
    assert (status, body) == (400, {"message": "web_scheme must be http or https"})
    status, body = await put(running, f"/v3/domains/{DOMAIN}", spam_action="explode")
    assert status == 400


# -- what recipients get ---------------------------------------------------------------------


async def test_an_untracked_message_goes_out_with_its_links_as_written(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(running)
    [got] = await mx.wait_for(1)
    message = parsed(got.data)
    assert 'href="https://shop.example.com/sale?a=1&amp;b=%20x#top"' in part(message, "text/html")
    assert "List-Unsubscribe" not in message
    assert "/o/" not in part(message, "text/html")


async def test_o_tracking_rewrites_web_links_adds_a_pixel_and_signs_the_copy(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(running, **{"o:tracking": "yes"})
    [got] = await mx.wait_for(1)
    assert await signature_verifies(running, got.data)
    message = parsed(got.data)
    html = part(message, "text/html")
    links = re.findall(r'href="([^"]+)"', html)
    assert links[0].startswith(f"{LINK_BASE}/c/")
    assert links[1:] == ["mailto:help@shop.example.com", "tel:+15550100", "#section"]
    pixels = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(pixels) == 1 and pixels[0].startswith(f"{LINK_BASE}/o/")
    assert html.index("<img") > html.index("</p>")  # at the bottom unless asked otherwise
    text = part(message, "text/plain")
    assert "https://shop.example.com" not in text
    assert re.search(re.escape(LINK_BASE) + r"/c/\S+\. Mail help@shop\.example\.com", text)
    assert "/o/" not in text  # no pixel in plain text


async def test_click_links_carry_the_original_url_byte_for_byte(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(running, **{"o:tracking-clicks": "yes"})
    [got] = await mx.wait_for(1)
    html = part(parsed(got.data), "text/html")
    token = re.search(r'href="[^"]*/c/([^"]+)"', html).group(1)
    link = running.services.tracking_links.read("c", token)
    assert link.url == "https://shop.example.com/sale?a=1&b=%20x#top"
    assert (link.domain, link.recipient) == (DOMAIN, f"alice@{DEST}")


async def test_htmlonly_leaves_the_text_part_alone_and_the_pixel_can_go_on_top(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(running, **{"o:tracking-clicks": "htmlonly", "o:tracking-opens": "yes",
                           "o:tracking-pixel-location-top": "yes"})
    [got] = await mx.wait_for(1)
    message = parsed(got.data)
    assert part(message, "text/plain").rstrip() == TEXT
    html = part(message, "text/html")
    assert "/c/" in html
    assert html.index("<img") < html.index("<p>")


async def test_every_recipient_gets_links_of_their_own(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(running, to=f"alice@{DEST}, bob@{DEST}", **{"o:tracking": "yes"})
    got = await mx.wait_for(2)
    tokens = {}
    for delivery in got:
        assert await signature_verifies(running, delivery.data)
        html = part(parsed(delivery.data), "text/html")
        token = re.search(r'src="[^"]*/o/([^"]+)"', html).group(1)
        tokens[delivery.rcpt_to] = running.services.tracking_links.read("o", token).recipient
    assert tokens == {f"alice@{DEST}": f"alice@{DEST}", f"bob@{DEST}": f"bob@{DEST}"}


async def test_a_batch_send_is_personalised_then_tracked_per_recipient(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    variables = orjson.dumps({f"alice@{DEST}": {"name": "Alice"},
                              f"bob@{DEST}": {"name": "Bob"}}).decode()
    await send(running, to=f"alice@{DEST}, bob@{DEST}",
               text="Hi %recipient.name%: %unsubscribe_url%",
               html='<p>Hi <a href="https://x.example/%recipient.name%">go</a></p>',
               **{"recipient-variables": variables, "o:tracking": "yes"})
    for delivery in await mx.wait_for(2):
        assert await signature_verifies(running, delivery.data)
        message = parsed(delivery.data)
        name = "Alice" if delivery.rcpt_to.startswith("alice") else "Bob"
        text = part(message, "text/plain")
        token = re.search(rf"Hi {name}: {re.escape(LINK_BASE)}/u/(\S+)", text).group(1)
        assert running.services.tracking_links.read("u", token).recipient == delivery.rcpt_to
        click = re.search(r'href="[^"]*/c/([^"]+)"', part(message, "text/html")).group(1)
        assert running.services.tracking_links.read("c", click).url == f"https://x.example/{name}"


async def test_the_domains_settings_apply_and_the_message_wins(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await running.services.domains.set_tracking(DOMAIN, opens=True, clicks=True)
    await send(running, to=f"on@{DEST}")
    await send(running, to=f"off@{DEST}", **{"o:tracking": "no"})
    got = {d.rcpt_to: part(parsed(d.data), "text/html") for d in await mx.wait_for(2)}
    assert "/o/" in got[f"on@{DEST}"] and "/c/" in got[f"on@{DEST}"]
    assert "/o/" not in got[f"off@{DEST}"] and "/c/" not in got[f"off@{DEST}"]


async def test_unsubscribe_variables_become_links_and_list_unsubscribe_is_signed(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(
        running,
        text="Bye: %unsubscribe_url% (you are %unsubscribe_email%)",
        html='<p><a href="%tag_unsubscribe_url%">stop news</a></p>',
        **{"o:tag": "news"},
    )
    [got] = await mx.wait_for(1)
    assert b"%unsubscribe_url%" not in got.data and b"%tag_unsubscribe_url%" not in got.data
    message = parsed(got.data)
    text = part(message, "text/plain")
    domain_link = re.search(re.escape(LINK_BASE) + r"/u/(\S+) ", text).group(1)
    assert running.services.tracking_links.read("u", domain_link).scope == "*"
    assert f"you are alice@{DEST}" in text
    tag_link = re.search(r'href="[^"]*/u/([^"]+)"', part(message, "text/html")).group(1)
    assert running.services.tracking_links.read("u", tag_link).scope == ["news"]
    https, mailto = message["List-Unsubscribe"].split(", ")
    assert https.startswith(f"<{LINK_BASE}/u/")
    assert mailto.startswith(f"<mailto:unsubscribe@{DOMAIN}?subject=unsubscribe%20")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    signature = message["DKIM-Signature"].replace(" ", "").replace("\r\n", "")
    signed = re.search(r"h=([^;]+)", signature).group(1).lower().split(":")
    assert signed.count("list-unsubscribe") == 2  # signed, and oversigned: none can be added
    assert "list-unsubscribe-post" in signed
    assert await signature_verifies(running, got.data)


async def test_the_domains_unsubscribe_footer_goes_on_messages_without_a_variable(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await running.services.domains.set_tracking(DOMAIN, unsubscribes=True)
    await send(running)
    [got] = await mx.wait_for(1)
    message = parsed(got.data)
    html = part(message, "text/html")
    assert re.search(r'<p><a href="' + re.escape(LINK_BASE) + r'/u/[^"]+">unsubscribe</a></p>'
                     r"\s*</body>", html)
    assert re.search(r"To unsubscribe click: <" + re.escape(LINK_BASE) + r"/u/\S+>",
                     part(message, "text/plain"))
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert await signature_verifies(running, got.data)


async def test_smtp_submissions_with_x_mailgun_track_are_tracked_too(
    mail_server: Callable[..., Any], mx: Capture, clients: Any
):
    running = await mail_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    html = base64.encodebytes(HTML.encode()).decode()
    mime = (
        f"From: news@{DOMAIN}\r\nTo: alice@{DEST}\r\nSubject: Sale\r\nX-Mailgun-Track: yes\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
        "preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "Caf=C3=A9 https://shop.example.com/caf=C3=A9?x=3D1\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
        f"\r\n{html}--b1--\r\nepilogue\r\n"
    )
    client = await clients.smtp(running)
    reply = await submit(client, mime.encode(), (f"alice@{DEST}",), sender=f"news@{DOMAIN}")
    assert reply.startswith("250"), reply
    [got] = await mx.wait_for(1)
    assert await signature_verifies(running, got.data)
    message = parsed(got.data)
    assert part(message, "text/plain").startswith(f"Café {LINK_BASE}/c/")
    html_out = part(message, "text/html")
    assert "/c/" in html_out and "/o/" in html_out and "mailto:help@shop.example.com" in html_out
    assert b"preamble" in got.data and b"epilogue" in got.data


# -- the rewriting itself, on awkward messages ------------------------------------------------


def links() -> RecipientLinks:
    return RecipientLinks(
        "http://t.example",
        open_url=lambda: "http://t.example/o/OPEN",
        click_url=lambda url: "http://t.example/c/CLICK",
        unsubscribe_url=lambda scope: "http://t.example/u/UNSUB",
        unsubscribe_mailto=lambda: "mailto:unsubscribe@example.com?subject=x",
        recipient="bob@example.net",
        tags=[],
    )


def test_a_part_in_an_unknown_charset_is_sent_as_it_came():
    message = (b"From: a@example.com\r\nContent-Type: text/html; charset=x-klingon\r\n\r\n"
               b'<a href="https://x.example/">x</a>\r\n')
    out = track(message, Choice(clicks=True), links(), max_parts=10, max_depth=5)
    assert out.endswith(b'<a href="https://x.example/">x</a>\r\n')


def test_attachments_are_never_rewritten():
    message = (b'From: a@example.com\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n'
               b'--m\r\nContent-Type: text/html\r\n\r\n<a href="https://x.example/">x</a>\r\n'
               b'--m\r\nContent-Type: text/html\r\nContent-Disposition: attachment;'
               b' filename="a.html"\r\n\r\n<a href="https://y.example/">y</a>\r\n--m--\r\n')
    out = track(message, Choice(clicks=True), links(), max_parts=10, max_depth=5)
    assert b'href="http://t.example/c/CLICK"' in out
    assert b'<a href="https://y.example/">y</a>' in out


def test_nesting_deeper_than_the_limit_is_left_alone():
    inner = b'Content-Type: text/html\r\n\r\n<a href="https://x.example/">x</a>\r\n'
    for depth in range(6):
        boundary = f"b{depth}".encode()
        inner = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
                 + boundary + b"\r\n" + inner + b"--" + boundary + b"--\r\n")
    message = b"From: a@example.com\r\n" + inner
    out = track(message, Choice(clicks=True), links(), max_parts=100, max_depth=3)
    assert b'<a href="https://x.example/">x</a>' in out


# -- end to end: the recipient's mail client follows the links --------------------------------

BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
           " Chrome/131.0.0.0 Safari/537.36")


async def test_a_recipient_opening_clicking_and_unsubscribing_is_recorded_and_posted(
    start_server: Callable[..., Any], mx: Capture
):
    posts: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hooks", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]},
                                     webhooks__allow=["127.0.0.0/8"])
        async with running.session() as api:
            for hook in ("opened", "clicked", "unsubscribed"):
                async with api.post(f"/v3/domains/{DOMAIN}/webhooks",
                                    data={"id": hook, "url": f"http://127.0.0.1:{port}/hooks"}
                                    ) as resp:
                    assert resp.status == 200, await resp.text()
        await send(running, text="Leave: %unsubscribe_url%", **{"o:tracking": "yes",
                                                                 "o:tag": "sale"})
        [got] = await mx.wait_for(1)
        message = parsed(got.data)
        html = part(message, "text/html")
        pixel = re.search(r'src="' + re.escape(LINK_BASE) + r'([^"]+)"', html).group(1)
        click = re.search(r'href="' + re.escape(LINK_BASE) + r'(/c/[^"]+)"', html).group(1)
        leave = re.search(re.escape(LINK_BASE) + r"(/u/\S+)", part(message, "text/plain")).group(1)
        headers = {"User-Agent": BROWSER}
        async with aiohttp.ClientSession(running.url, headers=headers) as browser:
            async with browser.get(pixel) as resp:  # the CNAME would lead here
                assert resp.status == 200 and resp.content_type == "image/gif"
            async with browser.get(click, allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"] == "https://shop.example.com/sale?a=1&b=%20x#top"
            async with browser.post(leave, data={"List-Unsubscribe": "One-Click"}) as resp:
                assert resp.status == 200
        async with running.session() as api:
            async with api.get(f"/v3/{DOMAIN}/events", params={"event": "opened"}) as resp:
                [opened] = (await resp.json())["items"]
            async with api.get(f"/v3/{DOMAIN}/unsubscribes/alice@{DEST}") as resp:
                assert resp.status == 200
        assert opened["recipient"] == f"alice@{DEST}" and opened["tags"] == ["sale"]
        assert opened["client-info"]["client-name"] == "Chrome"
        assert opened["client-info"]["bot"] == ""
        for _ in range(200):
            if len(posts) >= 3:
                break
            await asyncio.sleep(0.05)
        kinds = sorted(p["event-data"]["event"] for p in posts)
        assert kinds == ["clicked", "opened", "unsubscribed"]
        clicked = next(p for p in posts if p["event-data"]["event"] == "clicked")
        assert clicked["event-data"]["url"] == "https://shop.example.com/sale?a=1&b=%20x#top"
        key = await running.services.account.signing_key()
        for post in posts:
            signature = post["signature"]
            expected = hmac.new(key.encode(), (signature["timestamp"] + signature["token"])
                                .encode(), hashlib.sha256).hexdigest()
            assert hmac.compare_digest(expected, signature["signature"])
    finally:
        await runner.cleanup()


async def test_a_list_unsubscribe_mailto_arriving_on_the_mx_unsubscribes_the_recipient(
    start_server: Callable[..., Any], mx: Capture
):
    running = await tracking_server(start_server, mx)
    await send(running, text="Leave: %unsubscribe_url%")
    [got] = await mx.wait_for(1)
    mailto = re.search(r"<mailto:([^?]+)\?subject=([^>]+)>",
                       parsed(got.data)["List-Unsubscribe"]).groups()
    address, subject = mailto[0], unquote(mailto[1])
    assert address == f"unsubscribe@{DOMAIN}"
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.server.smtp.port("mx"),
                             start_tls=False)
    await client.connect()
    try:
        stranger = f"From: x@{DEST}\r\nTo: {address}\r\nSubject: unsubscribe forged\r\n\r\nx\r\n"
        with pytest.raises(aiosmtplib.SMTPResponseException):  # no token: not ours, no route
            await client.sendmail(f"alice@{DEST}", [address], stranger.encode())
        mail = f"From: alice@{DEST}\r\nTo: {address}\r\nSubject: {subject}\r\n\r\n\r\n"
        await client.sendmail(f"alice@{DEST}", [address], mail.encode())
    finally:
        client.close()
    async with running.session() as api, api.get(
        f"/v3/{DOMAIN}/unsubscribes/alice@{DEST}"
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["tags"] == ["*"]
