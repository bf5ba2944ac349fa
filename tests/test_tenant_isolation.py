"""One server hosts many customers: a customer's SMTP login or domain sending key speaks for its
own domain only (`smtp.foreign_senders`), every address of every From and Sender header is
checked, and a message with two From or two Sender headers is refused (which one a reader
believes would otherwise decide who it is from)."""

from __future__ import annotations

from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.conftest import DOMAIN, Running
from tests.smtp_clients import LOGIN, message, submit

pytestmark = pytest.mark.asyncio

OTHER = "other.example.test"  # another customer's domain on the same server


async def hosted_other(running: Running) -> None:
    await running.services.domains.create(OTHER)


async def sending_key(running: Running) -> str:
    _, secret = await running.services.keys.create(domain=DOMAIN)
    return secret


async def post(running: Running, key: str, path: str, data: Any) -> tuple[int, dict[str, Any]]:
    async with running.session(key) as api, api.post(path, data=data) as response:
        return response.status, await response.json(content_type=None)


async def test_a_login_cannot_send_a_message_with_a_second_from_header(mail: Running, clients):
    client = await clients.smtp(mail)
    mime = message(f"From: CEO <ceo@{OTHER}>")
    assert await submit(client, mime) == (
        "550 5.6.0 'message' has more than one From header"
    )


async def test_a_login_cannot_send_a_message_with_a_second_sender_header(mail: Running, clients):
    client = await clients.smtp(mail)
    mime = message(f"Sender: {LOGIN}", f"Sender: ceo@{OTHER}")
    assert await submit(client, mime) == (
        "550 5.6.0 'message' has more than one Sender header"
    )


async def test_a_login_cannot_hide_another_tenant_in_a_from_list(mail: Running, clients):
    await hosted_other(mail)
    client = await clients.smtp(mail)
    reply = await submit(client, message(sender=f"me <{LOGIN}>, CEO <ceo@{OTHER}>"))
    assert reply.startswith(f"550 5.7.1 Sender ceo@{OTHER} is on {OTHER}")


async def test_a_login_cannot_put_another_tenant_in_the_sender_header(mail: Running, clients):
    await hosted_other(mail)
    client = await clients.smtp(mail)
    reply = await submit(client, message(f"Sender: ceo@{OTHER}"))
    assert reply.startswith(f"550 5.7.1 Sender ceo@{OTHER} is on {OTHER}")


async def test_a_domain_sending_key_cannot_send_as_another_hosted_domain(running: Running):
    await hosted_other(running)
    key = await sending_key(running)
    form = {"from": f"CEO <ceo@{OTHER}>", "to": "bob@example.net", "subject": "s", "text": "t"}
    status, body = await post(running, key, f"/v3/{DOMAIN}/messages", form)
    assert status == 403
    assert body["message"] == (
        f"Sender ceo@{OTHER} is on {OTHER}; sending key"
        f" {(await running.services.keys.list())[-1].id} may only send for {DOMAIN}"
    )
    form["from"] = f"me@{DOMAIN}"
    form["h:Sender"] = f"ceo@{OTHER}"
    status, _ = await post(running, key, f"/v3/{DOMAIN}/messages", form)
    assert status == 403


async def test_a_domain_sending_key_cannot_upload_a_mime_message_from_another_domain(
    running: Running,
):
    await hosted_other(running)
    key = await sending_key(running)
    mime = f"From: ceo@{OTHER}\r\nTo: bob@example.net\r\nSubject: s\r\n\r\nbody\r\n".encode()
    form = aiohttp.FormData()
    form.add_field("to", "bob@example.net")
    form.add_field("message", mime, filename="message.mime")
    status, body = await post(running, key, f"/v3/{DOMAIN}/messages.mime", form)
    assert status == 403, body


async def test_a_domain_sending_key_may_send_for_its_own_domain_and_its_subdomains(
    running: Running,
):
    key = await sending_key(running)
    for sender in (f"me@{DOMAIN}", f"news@eu.{DOMAIN}"):
        form = {"from": sender, "to": "bob@example.net", "subject": "s", "text": "t"}
        status, body = await post(running, key, f"/v3/{DOMAIN}/messages", form)
        assert status == 200, body


async def test_foreign_senders_reject_confines_domain_keys_too(start_server):
    running = await start_server(smtp__foreign_senders="reject")
    key = await sending_key(running)
    form = {"from": "root@host.example.org", "to": "bob@example.net", "subject": "s", "text": "t"}
    status, body = await post(running, key, f"/v3/{DOMAIN}/messages", form)
    assert status == 403
    assert body["message"].startswith(f"Sender root@host.example.org is not on {DOMAIN}")
    status, _ = await post(running, running.key, f"/v3/{DOMAIN}/messages", form)
    assert status == 200  # the account's own key is not confined to one domain


async def test_the_account_key_may_send_as_any_of_its_domains(running: Running):
    await hosted_other(running)
    form = {"from": f"ceo@{OTHER}", "to": "bob@example.net", "subject": "s", "text": "t"}
    status, body = await post(running, running.key, f"/v3/{DOMAIN}/messages", form)
    assert status == 200, body


async def test_the_mx_refuses_a_strangers_message_with_two_from_headers(running: Running):
    await running.services.routes.create(
        priority=0, description="", expression='match_recipient(".*")', actions=["stop()"]
    )
    mime = (
        f"From: friend@example.org\r\nFrom: CEO <ceo@{DOMAIN}>\r\nTo: info@{DOMAIN}\r\n"
        "Subject: s\r\n\r\nbody\r\n"
    ).encode()
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=running.server.smtp.port("mx"), start_tls=False
    )
    await smtp.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail("friend@example.org", [f"info@{DOMAIN}"], mime)
        assert refused.value.code == 550
        assert "more than one From header" in refused.value.message
    finally:
        smtp.close()


@pytest.mark.parametrize(
    "sender",
    [
        f"Alice <{LOGIN},ceo@{OTHER}>",  # a comma inside the brackets: two addresses to some
        f'"ceo@{OTHER}" <{LOGIN}>',  # another tenant's address as the display name
        f"{LOGIN} (ceo@{OTHER})",  # or as a comment
    ],
)
async def test_a_login_cannot_slip_another_tenant_into_from_through_odd_syntax(
    mail: Running, clients, sender: str
):
    await hosted_other(mail)
    client = await clients.smtp(mail)
    assert (await submit(client, message(sender=sender))).startswith("550 5.7.1 Sender")
