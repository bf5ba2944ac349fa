"""No header injection from API input: a CR or LF (or NUL) in anything that becomes a header --
the subject, an `h:` value, a recipient variable used in a header, an attachment's file name,
a domain's DKIM selector or tracking prefix -- is refused with 400 naming the field, and
non-ASCII text is encoded (RFC 2047 / RFC 2231), never written raw."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests import storeview
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

GOOD = {"from": f"me@{DOMAIN}", "to": "bob@example.net", "subject": "Hi", "text": "body"}
INJECTED = "x\r\nBcc: victim@example.net"


async def send(api: aiohttp.ClientSession, data: Any) -> tuple[int, dict[str, Any]]:
    async with api.post(f"/v3/{DOMAIN}/messages", data=data) as response:
        return response.status, await response.json(content_type=None)


async def refused(running: Running, api, data: Any, message: str) -> None:
    before = (await storeview.counts(running.services.store))["messages"]
    status, body = await send(api, data)
    assert (status, body["message"]) == (400, message)
    assert (await storeview.counts(running.services.store))["messages"] == before


@pytest.mark.parametrize("value", [INJECTED, "x\nBcc: v@example.net", "x\rBcc: v", "x\0y"])
async def test_a_subject_cannot_add_a_header(running: Running, api, value: str):
    await refused(
        running, api, GOOD | {"subject": value},
        "subject parameter must not contain CR, LF or NUL",
    )


async def test_an_h_value_cannot_add_a_header(running: Running, api):
    await refused(
        running, api, GOOD | {"h:X-Note": "a\0b"},
        "Header value of X-Note must not contain CR, LF or NUL",
    )


async def test_a_recipient_variable_cannot_add_a_header_where_a_header_uses_it(
    running: Running, api
):
    variables = {"bob@example.net": {"name": INJECTED}}
    for where in ({"subject": "Hi %recipient.name%"}, {"h:X-Greeting": "%recipient.name%"}):
        await refused(
            running, api,
            GOOD | where | {"recipient-variables": orjson.dumps(variables).decode()},
            "recipient-variables: the value of 'name' for bob@example.net is used in a header"
            " and must not contain CR, LF or NUL",
        )


async def test_a_recipient_variable_with_line_breaks_is_fine_in_the_body(running: Running, api):
    variables = {"bob@example.net": {"lines": "one\r\ntwo"}}
    data = GOOD | {"text": "%recipient.lines%", "recipient-variables": orjson.dumps(variables)
                   .decode()}
    status, body = await send(api, data)
    assert status == 200, body
    copy = await storeview.message_for(running.services.store, body["id"][1:-1],
                                 "bob@example.net")
    assert copy.get_content().replace("\r\n", "\n") == "one\ntwo"
    assert copy["Bcc"] is None


def multipart(fields: dict[str, str], file_field: str, disposition_name: str) -> aiohttp.Payload:
    """A multipart body written by hand: the file part's name parameter exactly as given
    (clients differ in how they write a file name; RFC 2231's filename* can carry anything)."""
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'
        for n, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}";'
        f" {disposition_name}\r\nContent-Type: text/plain\r\n\r\ndata\r\n--{boundary}--\r\n"
    )
    return aiohttp.BytesPayload(
        "".join(parts).encode(), content_type=f"multipart/form-data; boundary={boundary}"
    )


@pytest.mark.parametrize("field", ["attachment", "inline"])
async def test_an_attachment_file_name_cannot_add_a_header(running: Running, api, field: str):
    name = "filename*=utf-8''a.txt%22%0D%0AContent-Type%3A%20text%2Fhtml"
    await refused(running, api, multipart(GOOD, field, name),
                  f"{field} file name must not contain CR, LF or NUL")


async def test_a_non_ascii_subject_and_file_name_are_encoded_not_written_raw(
    running: Running, api
):
    body_in = multipart(GOOD | {"subject": "Grüße"}, "attachment", 'filename="prix €.txt"')
    status, body = await send(api, body_in)
    assert status == 200, body
    raw = (await storeview.recipients(running.services.store, body["id"][1:-1]))[0]["mime"]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"Subject: =?utf-8?" in head
    assert b"filename*=utf-8''prix%20%E2%82%AC.txt\r\n" in raw
    assert raw.isascii()


@pytest.mark.parametrize(
    ("field", "value"),
    [("dkim_selector", "mta\r\nX-Evil: 1"), ("web_prefix", "email\nevil"),
     ("dkim_selector", "a b"), ("web_prefix", "a.b")],
)
async def test_a_domains_selector_and_prefix_cannot_carry_line_breaks(
    api, field: str, value: str
):
    data = {"name": "new.example.test", field: value}
    async with api.post("/v3/domains", data=data) as response:
        body = await response.json()
        assert response.status == 400
    assert body["message"] == f"{field} must be one DNS label (letters, digits, '-', '_')"
    async with api.get("/v3/domains/new.example.test") as response:
        assert response.status == 404
