"""Batch sends are stored once (manual: "Batch Sending"): the message is a template in
`messages.mime` and each recipient row keeps only its own values, so that 1,000 recipients of a
1 MB message cost about 1 MB, not 1 GB. The copies are personalised when they are delivered.

What these tests stop: a batch that writes one full copy per recipient again (a disk filled
by one request), personalisation or signing lost on the way to the template, and recipient
values that break the header they are put into.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import random
import re
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import aiohttp
import dkim
import pytest

from mta.accept.template import Personal, Template
from mta.store import Store
from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.smtp_clients import client_tls

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
RECIPIENTS = [f"r{n}@example.net" for n in range(1000)]
ATTACHMENT = random.Random(5).randbytes(1_000_000)  # incompressible, as a real file mostly is
LOGIN = f"batch@{DOMAIN}"
PASSWORD = "batch-pass-1"


# -- helpers -------------------------------------------------------------------------------------


def store_of(running: Running) -> Store:
    return running.services.store


async def stored_rows(store: Store, message_id: str) -> tuple[list[int], int, int, int]:
    """(length of each `messages.mime` with this Message-Id, recipient rows, rows holding a
    copy of their own, rows holding personal values)."""
    sizes = [
        int(row["n"])
        for row in await store.fetchall(
            "SELECT length(mime) AS n FROM messages WHERE message_id = ?", (message_id,)
        )
    ]
    row = await store.fetchone(
        "SELECT count(*) AS n, count(r.mime) AS copies, count(r.personal) AS personal"
        " FROM recipients r JOIN messages m ON m.key = r.message_key WHERE m.message_id = ?",
        (message_id,),
    )
    assert row is not None
    return sizes, int(row["n"]), int(row["copies"]), int(row["personal"])


async def copy_for(store: Store, message_id: str, address: str) -> EmailMessage:
    """One recipient's copy rendered as the outbound queue renders it (storeview.message_for
    renders every recipient's, which for 1,000 copies of 1 MB is a gigabyte of work)."""
    row = await store.fetchone(
        "SELECT r.personal, m.mime FROM recipients r JOIN messages m"
        " ON m.key = r.message_key WHERE m.message_id = ? AND r.address = ?",
        (message_id, address),
    )
    assert row is not None, address
    template = Template.load(bytes(row["mime"]))
    return storeview.parse(template.render(Personal.load(bytes(row["personal"]))))


async def post(running: Running, form: Any, path: str = "messages") -> tuple[int, dict[str, Any]]:
    async with (
        running.session() as api,
        api.post(f"/v3/{DOMAIN}/{path}", data=form) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def batch_form(variables: dict[str, Any], recipients: list[str] = RECIPIENTS) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("from", f"Shop <news@{DOMAIN}>")
    form.add_field("subject", "Your order %recipient.n%")
    form.add_field("text", "Hello %recipient_email%, order %recipient.n% is attached.")
    form.add_field("recipient-variables", json.dumps(variables))
    for rcpt in recipients:
        form.add_field("to", rcpt)
    form.add_field("attachment", ATTACHMENT, filename="catalogue.bin",
                   content_type="application/octet-stream")
    return form


def attachment_of(message: Any) -> bytes:
    [part] = [p for p in message.iter_attachments() if p.get_filename() == "catalogue.bin"]
    return part.get_content()


async def assert_stored_once(store: Store, message_id: str, one_copy: int, growth: int) -> None:
    """One `messages` row about one message long, every recipient row without a copy of its
    own, and a database that grew by a few copies' worth at most (a copy per recipient would
    be about a thousand)."""
    sizes, rows, copies, personal = await stored_rows(store, message_id)
    assert len(sizes) == 1, sizes
    assert one_copy * 0.9 < sizes[0] < one_copy * 1.1, (sizes[0], one_copy)
    assert (rows, copies, personal) == (len(RECIPIENTS), 0, len(RECIPIENTS))
    assert growth < 10 * one_copy, (growth, one_copy)


# -- stored once: HTTP -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["per-recipient values", "empty object {}"])
async def test_a_1000_recipient_batch_with_a_1mb_attachment_is_stored_once_not_per_recipient(
    running: Running, kind: str
):
    store = store_of(running)
    if kind == "empty object {}":
        variables: dict[str, Any] = {}
    else:
        variables = {rcpt: {"n": n} for n, rcpt in enumerate(RECIPIENTS)}
    before = await storeview.size(store)
    status, body = await post(running, batch_form(variables))
    assert status == 200, body
    growth = await storeview.size(store) - before
    message_id = body["id"].strip("<>")
    assert (await storeview.options(store, message_id))["template"] is True

    copy = await copy_for(store, message_id, "r7@example.net")
    one_copy = len(bytes(copy))
    assert one_copy > len(ATTACHMENT)  # the attachment is in the template, base64-encoded
    await assert_stored_once(store, message_id, one_copy, growth)
    # each recipient still gets the whole message, personalised
    assert copy["To"] == "r7@example.net"
    assert attachment_of(copy) == ATTACHMENT
    expected = "Your order 7" if variables else "Your order "
    assert copy["Subject"] == expected
    last = await copy_for(store, message_id, "r999@example.net")
    assert last["To"] == "r999@example.net"
    assert "r999@example.net" in last.get_body(("plain",)).get_content()


# -- stored once: SMTP ----------------------------------------------------------------------------


def smtp_batch(header: str) -> bytes:
    """A pre-built message with a 1 MB attachment, as a mail client or relayhost sends it."""
    head = (
        f"From: Shop <{LOGIN}>\r\n"
        "To: everyone@example.net\r\n"
        "Subject: Your order %recipient.n%\r\n"
        f"{header}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Hello %recipient_email%, order %recipient.n% is attached.\r\n"
        "--b1\r\n"
        'Content-Type: application/octet-stream; name="catalogue.bin"\r\n'
        'Content-Disposition: attachment; filename="catalogue.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    return head + base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n") + b"--b1--\r\n"


async def reply(reader: asyncio.StreamReader) -> str:
    """One whole SMTP reply (its last line)."""
    while True:
        line = (await asyncio.wait_for(reader.readline(), 30)).decode()
        if line[3:4] != "-":
            return line.rstrip("\r\n")


async def submit_pipelined(running: Running, mime: bytes, rcpts: list[str]) -> str:
    """EHLO, STARTTLS, EHLO, AUTH PLAIN, then MAIL, every RCPT and DATA in one write, as
    Postfix and Exim send when PIPELINING is offered; the reply to the message."""
    port = running.server.smtp.port("submission_alt")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reply(reader)).startswith("220")
        writer.write(b"EHLO client.example\r\n")
        assert (await reply(reader)).startswith("250")
        writer.write(b"STARTTLS\r\n")
        assert (await reply(reader)).startswith("220")
        await writer.start_tls(client_tls())
        writer.write(b"EHLO client.example\r\n")
        assert (await reply(reader)).startswith("250")
        plain = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {plain}\r\n".encode())
        assert (await reply(reader)).startswith("235")
        commands = [f"MAIL FROM:<{LOGIN}>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
        writer.write(("\r\n".join(commands) + "\r\n").encode())
        for _ in commands[:-1]:
            answer = await reply(reader)
            assert answer.startswith("250"), answer
        assert (await reply(reader)).startswith("354")
        writer.write(re.sub(rb"(?m)^\.", b"..", mime) + b".\r\n")
        return await reply(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "header",
    [
        "X-Mailgun-Recipient-Variables: {}",
        # folded: one recipient a line (a header line may not pass 998 characters)
        "X-Mailgun-Recipient-Variables: {"
        + ",\r\n ".join(f'"{rcpt}": {{"n": {n}}}' for n, rcpt in enumerate(RECIPIENTS))
        + "}",
    ],
    ids=["empty object {}", "per-recipient values"],
)
async def test_a_1000_recipient_smtp_batch_with_a_1mb_attachment_is_stored_once(
    running: Running, header: str
):
    await running.services.credentials.create(DOMAIN, "batch", PASSWORD)
    store = store_of(running)
    before = await storeview.size(store)
    reply = await submit_pipelined(running, smtp_batch(header), RECIPIENTS)
    assert reply.startswith("250 "), reply
    growth = await storeview.size(store) - before
    message_id = reply.rsplit("<", 1)[1].rstrip(">")
    assert (await storeview.options(store, message_id))["template"] is True

    copy = await copy_for(store, message_id, "r42@example.net")
    await assert_stored_once(store, message_id, len(bytes(copy)), growth)
    assert copy["To"] == "r42@example.net"
    assert "X-Mailgun-Recipient-Variables" not in copy
    assert attachment_of(copy) == ATTACHMENT
    assert copy["Subject"] == ("Your order " if header.endswith("{}") else "Your order 42")
    assert "r42@example.net" in copy.get_body(("plain",)).get_content()


# -- delivered copies -----------------------------------------------------------------------------


async def test_each_delivered_batch_copy_is_personalised_signed_and_also_goes_to_cc_and_bcc(
    start_server: Callable[..., Any], mx: Capture
):
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    to = {f"ann@{DEST}": f"Ann <ann@{DEST}>", f"ben@{DEST}": f"ben@{DEST}",
          f"zoe@{DEST}": f"Zoë Zed <zoe@{DEST}>"}
    values = {f"ann@{DEST}": "A-1", f"ben@{DEST}": "B-2", f"zoe@{DEST}": "Zoë"}
    cc, bcc = f"boss@{DEST}", f"audit@{DEST}"
    form = [
        ("from", f"Shop <news@{DOMAIN}>"),
        *(("to", shown) for shown in to.values()),
        ("cc", cc),
        ("bcc", bcc),
        ("subject", "Hi %recipient.x%"),
        ("text", "Text %recipient.x%"),
        ("html", "<p>Html %recipient.x%</p>"),
        ("h:X-Custom", "custom %recipient.x%"),
        ("v:var", "%recipient.x%"),
        ("v:fixed", "same"),
        ("recipient-variables", json.dumps({a: {"x": x} for a, x in values.items()})),
    ]
    status, body = await post(running, form)
    assert status == 200, body
    got = await mx.wait_for(3 * 3)  # each `to` copy goes to its recipient, the cc and the bcc
    domain = await running.services.domains.get(DOMAIN)
    record = domain.dkim_record.encode()

    copies: dict[str, list[str]] = {}
    for captured in got:
        assert dkim.verify(captured.data, dnsfunc=lambda name, timeout=5: record)
        message = storeview.parse(captured.data)
        [(_, owner)] = email.utils.getaddresses([str(message["To"])])
        x = values[owner]
        assert message["Subject"] == f"Hi {x}"
        assert message.get_body(("plain",)).get_content().strip() == f"Text {x}"
        assert message.get_body(("html",)).get_content().strip() == f"<p>Html {x}</p>"
        assert message["X-Custom"] == f"custom {x}"
        assert json.loads(message["X-Mailgun-Variables"]) == {"var": x, "fixed": "same"}
        assert message["Cc"] == cc
        assert "Bcc" not in message
        copies.setdefault(captured.rcpt_to, []).append(owner)
    # To shows each copy's own recipient only, with its display name
    assert {str(storeview.parse(mx.to(a)[0].data)["To"]) for a in to} == set(to.values())
    assert {rcpt: sorted(owners) for rcpt, owners in copies.items()} == {
        **{a: [a] for a in to},
        cc: sorted(to),
        bcc: sorted(to),
    }


# -- recipient values put into headers -------------------------------------------------------------


def crlf_batch(where: str, value: str) -> tuple[str, Any]:
    """(path, form) of a two-recipient batch whose variable `name` is used in `where`."""
    variables = json.dumps({"ann@example.net": {"name": value}, "ben@example.net": {"name": "Ben"}})
    if where == "messages.mime header":
        mime = (
            f"From: news@{DOMAIN}\r\nTo: ann@example.net, ben@example.net\r\n"
            "Subject: Hello %recipient.name%\r\n\r\nHello\r\n"
        )
        form = aiohttp.FormData()
        form.add_field("to", "ann@example.net")
        form.add_field("to", "ben@example.net")
        form.add_field("recipient-variables", variables)
        form.add_field("message", mime.encode(), filename="message.mime")
        return "messages.mime", form
    fields = [("from", f"news@{DOMAIN}"), ("to", "ann@example.net"), ("to", "ben@example.net"),
              ("recipient-variables", variables), ("subject", "Hello"), ("text", "Hello")]
    if where == "subject":
        fields[4] = ("subject", "Hello %recipient.name%")
    else:
        fields.append(("h:X-Greeting", "Hello %recipient.name%"))
    return "messages", fields


@pytest.mark.parametrize("value", ["Ann\r\nBcc: victim@example.org", "Ann\nX-Evil: 1", "Ann\rX"])
@pytest.mark.parametrize("where", ["subject", "h: header", "messages.mime header"])
async def test_a_recipient_variable_with_cr_or_lf_used_in_a_header_is_refused_by_name(
    running: Running, where: str, value: str
):
    path, form = crlf_batch(where, value)
    status, body = await post(running, form, path)
    assert status == 400, body
    assert "'name'" in body["message"] and "ann@example.net" in body["message"]
    assert (await storeview.counts(store_of(running)))["messages"] == 0


async def test_a_recipient_variable_with_cr_lf_used_only_in_the_body_is_accepted(
    running: Running,
):
    """Over the API the text parts are encoded around the value (a pre-built message is
    personalised in clear, so there the value is refused: see further down)."""
    variables = {"ann@example.net": {"address": "1 Main St\r\nSpringfield"}}
    form = [("from", f"news@{DOMAIN}"), ("to", "ann@example.net"),
            ("subject", "Your address"), ("text", "We ship to:\r\n%recipient.address%\r\n"),
            ("recipient-variables", json.dumps(variables))]
    status, body = await post(running, form, "messages")
    assert status == 200, body
    copy = await storeview.message_for(store_of(running), body["id"].strip("<>"), "ann@example.net")
    assert copy["Subject"] == "Your address"
    assert copy.get_content().replace("\r\n", "\n") == "We ship to:\n1 Main St\nSpringfield\n"
    assert [k for k in copy if k.lower() not in ("from", "to", "subject", "message-id", "date",
                                                 "mime-version", "content-type",
                                                 "content-transfer-encoding")] == []


async def test_a_recipient_variable_with_cr_lf_used_in_v_stays_escaped_inside_its_json_header(
    running: Running,
):
    """v: values go into X-Mailgun-Variables as JSON, where CR and LF are written \\r and \\n:
    nothing to refuse, and nothing breaks out of the header."""
    form = [("from", f"news@{DOMAIN}"), ("to", "ann@example.net"), ("subject", "Hi"),
            ("text", "Hi"), ("v:note", "%recipient.note%"),
            ("recipient-variables", json.dumps({"ann@example.net": {"note": "a\r\nBcc: x@y"}}))]
    status, body = await post(running, form)
    assert status == 200, body
    copy = await storeview.message_for(store_of(running), body["id"].strip("<>"), "ann@example.net")
    assert json.loads(copy["X-Mailgun-Variables"]) == {"note": "a\r\nBcc: x@y"}
    assert "Bcc" not in copy


async def test_a_recipient_variable_with_cr_lf_used_in_a_mime_part_header_is_refused_by_name(
    running: Running,
):
    variables = {"ann@example.net": {"id": '7.txt"\r\nContent-Type: text/html\r\nX-Injected: 1'}}
    mime = (
        f"From: news@{DOMAIN}\r\nTo: ann@example.net\r\nSubject: Your invoice\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nAttached.\r\n"
        "--b1\r\nContent-Type: text/plain\r\n"
        'Content-Disposition: attachment; filename="invoice-%recipient.id%"\r\n\r\n'
        "total: 1\r\n--b1--\r\n"
    )
    form = aiohttp.FormData()
    form.add_field("to", "ann@example.net")
    form.add_field("recipient-variables", json.dumps(variables))
    form.add_field("message", mime.encode(), filename="message.mime")
    status, body = await post(running, form, "messages.mime")
    if status == 200:  # what gets delivered: the attachment part has headers it never had
        copy = await storeview.message_for(store_of(running), body["id"].strip("<>"), "ann@example.net")
        [part] = list(copy.iter_attachments())
        assert "X-Injected" not in part, part.items()
    assert status == 400, body
    assert "'id'" in body["message"]


async def test_a_body_only_recipient_variable_with_a_bare_lf_or_cr_keeps_the_copy_verifiable(
    start_server: Callable[..., Any], mx: Capture
):
    """API parts encode the text they put a value in; a pre-built message is personalised in
    clear, so there such a value is refused (see the next test)."""
    path = "messages"
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    rcpt = f"ann@{DEST}"
    variables = json.dumps({rcpt: {"address": "1 Main St\nSpringfield\rUSA"}})
    text = "We ship to: %recipient.address%\r\n"
    if path == "messages":
        form: Any = [("from", f"news@{DOMAIN}"), ("to", rcpt), ("subject", "Address"),
                     ("text", text), ("recipient-variables", variables)]
    else:
        form = aiohttp.FormData()
        form.add_field("to", rcpt)
        form.add_field("recipient-variables", variables)
        mime = f"From: news@{DOMAIN}\r\nTo: {rcpt}\r\nSubject: Address\r\n\r\n{text}"
        form.add_field("message", mime.encode(), filename="message.mime")
    status, body = await post(running, form, path)
    assert status == 200, body
    [got] = await mx.wait_for(1)
    assert b"Springfield" in got.data
    record = (await running.services.domains.get(DOMAIN)).dkim_record.encode()
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: record)


async def test_a_recipient_variable_with_a_line_break_in_a_pre_built_message_is_refused(
    running: Running,
):
    """messages.mime (and SMTP) batches are personalised in clear, part headers and all, and a
    bare line end would change what is signed: any value the message uses must be one line."""
    rcpt = "ann@example.net"
    form = aiohttp.FormData()
    form.add_field("to", rcpt)
    form.add_field("recipient-variables", json.dumps({rcpt: {"address": "1 Main St\nUSA"}}))
    mime = f"From: news@{DOMAIN}\r\nTo: {rcpt}\r\nSubject: A\r\n\r\nTo: %recipient.address%\r\n"
    form.add_field("message", mime.encode(), filename="message.mime")
    status, body = await post(running, form, "messages.mime")
    assert (status, body["message"]) == (
        400,
        f"recipient-variables: the value of 'address' for {rcpt} is used in the message and"
        " must not contain CR, LF or NUL",
    )
