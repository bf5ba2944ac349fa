"""Requests a client can get wrong (or craft) that once made the API answer 500: each now gets
a 400 in Mailgun's `{"message": ...}` form naming the problem, nothing is stored, and the
server goes on answering. Real server, real sockets (raw HTTP where aiohttp's client would not
send the bytes)."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import aiohttp
import orjson
import pytest

from mta.events.query import MAX_NESTING, MAX_TERMS
from tests import storeview
from tests.conftest import DOMAIN, Running, auth_header

EVENTS = f"/v3/{DOMAIN}/events"
GOOD = [("from", f"sender@{DOMAIN}"), ("to", "alice@example.net"), ("subject", "Hi"),
        ("text", "body")]
MULTIPART = "multipart/form-data; boundary=XX"


async def get(api: aiohttp.ClientSession, path: str, params: Any = ()) -> tuple[int, str]:
    async with api.get(path, params=params) as resp:
        body = await resp.json(content_type=None)
        assert set(body) == {"message"} or resp.status == 200, body
        return resp.status, body.get("message", "")


async def assert_400(api: aiohttp.ClientSession, path: str, params: Any = ()) -> str:
    status, message = await get(api, path, params)
    assert status == 400, message
    return message


# -- Events API page tokens --------------------------------------------------------------------


async def page_token(api: aiohttp.ClientSession) -> dict[str, Any]:
    """The query carried by the `next` link the server hands out."""
    async with api.get(EVENTS) as resp:
        url = (await resp.json())["paging"]["next"]
    token = url.rsplit("/", 1)[1]
    return orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def encoded(data: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


@pytest.mark.parametrize(
    "edit",
    [
        {"cursor": [1.0, 2, 3]},  # three values for a two-column cursor
        {"cursor": [{"ts": 1}, 2]},  # an object where a time goes
        {"cursor": [1.0, 2**63]},  # beyond SQLite's integers
        {"begin": "yesterday"},
        {"end": True},
        {"limit": "10"},
        {"ascending": "yes"},
        {"filters": [["size", ">" + "9" * 20]]},
        {"filters": [["tags", "(" * 3000 + "a"]]},  # the URL line stays under 8 kB
        {"filters": "tags"},
    ],
    ids=lambda edit: ",".join(edit),
)
async def test_an_edited_page_token_is_refused_as_invalid_not_a_500(
    running: Running, api: aiohttp.ClientSession, edit: dict[str, Any]
):
    token = encoded(await page_token(api) | edit)
    message = await assert_400(api, f"{EVENTS}/{token}")
    assert "token" in message or "filter" in message or "size" in message


async def test_a_page_token_that_is_not_an_object_is_refused(api: aiohttp.ClientSession):
    for data in ([1, 2], "text", 7, None):
        assert await assert_400(api, f"{EVENTS}/{encoded(data)}") == "invalid page token"


# -- Events API filter expressions -------------------------------------------------------------


# as many as fit in aiohttp's 8 kB request line (10,000 get its own plain 400 before any
# handler); Python's recursion limit is 1,000
@pytest.mark.parametrize("field", ["recipient", "tags", "subject"])
async def test_thousands_of_open_parentheses_in_a_filter_are_refused_not_a_recursion_error(
    running: Running, api: aiohttp.ClientSession, field: str
):
    message = await assert_400(api, EVENTS, {field: "(" * 7000 + "a"})
    assert f"nests parentheses and NOT more than {MAX_NESTING} deep" in message
    assert field in message


async def test_a_long_chain_of_not_is_refused_not_a_recursion_error(api: aiohttp.ClientSession):
    message = await assert_400(api, EVENTS, {"recipient": "NOT " * 1500 + "a@example.net"})
    assert f"more than {MAX_NESTING} deep" in message


async def test_nesting_up_to_the_limit_still_works(api: aiohttp.ClientSession):
    depth = MAX_NESTING
    status, _ = await get(api, EVENTS, {"tags": "(" * depth + "a" + ")" * depth})
    assert status == 200


async def test_too_many_filter_terms_in_one_or_across_filters_are_refused(
    api: aiohttp.ClientSession,
):
    one = " OR ".join(f"t{n}" for n in range(MAX_TERMS + 1))
    assert f"at most {MAX_TERMS} terms" in await assert_400(api, EVENTS, {"tags": one})
    spread = [("tags", "a")] * (MAX_TERMS + 1)
    assert f"at most {MAX_TERMS} terms" in await assert_400(api, EVENTS, spread)
    status, _ = await get(api, EVENTS, [("tags", "a")] * MAX_TERMS)
    assert status == 200


@pytest.mark.parametrize("size", [">" + "9" * 5000, "<" + "9" * 20, "9" * 4301])
async def test_a_size_with_too_many_digits_is_refused(api: aiohttp.ClientSession, size: str):
    message = await assert_400(api, EVENTS, {"size": size})
    assert "'size' takes numbers of up to 15 digits" in message
    assert len(message) < 200  # the client's text is not echoed whole


# -- limit and skip ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["9" * 5000, "0" * 5000 + "9" * 11, "²", "１０"])
@pytest.mark.parametrize(
    ("path", "name", "low", "high"),
    [
        (EVENTS, "limit", 1, 300),
        ("/v3/domains", "limit", 0, 1000),
        ("/v3/domains", "skip", 0, 10**9),
        (f"/v3/{DOMAIN}/bounces", "limit", 0, 1000),
        ("/v3/routes", "skip", 0, 10**9),
    ],
)
async def test_limit_or_skip_of_thousands_of_digits_or_non_ascii_digits_is_refused(
    api: aiohttp.ClientSession, path: str, name: str, low: int, high: int, value: str
):
    message = await assert_400(api, path, {name: value})
    assert message == f"'{name}' must be a whole number from {low} to {high}"


async def test_leading_zeros_in_a_limit_are_still_a_number(api: aiohttp.ClientSession):
    status, _ = await get(api, EVENTS, {"limit": "0" * 5000 + "5"})
    assert status == 200


# -- request bodies ----------------------------------------------------------------------------


def part(name: bytes, value: bytes) -> bytes:
    return b'--XX\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"


def multipart(*extra: tuple[bytes, bytes]) -> bytes:
    fields = [(k.encode(), v.encode()) for k, v in GOOD] + list(extra)
    return b"".join(part(k, v) for k, v in fields) + b"--XX--\r\n"


async def post_raw(running: Running, body: bytes, content_type: str, *,
                   path: str = f"/v3/{DOMAIN}/messages", content_length: int | None = None,
                   ) -> tuple[int, str]:
    """POST exactly these bytes; (status, message), or (0, '') when no answer came."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {auth_header(running.key)['Authorization']}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if content_length is None else content_length}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    if content_length is not None:
        writer.write_eof()  # less than announced, and nothing more coming
    try:
        answer = await reader.read()
    finally:
        writer.close()
    if not answer:
        return 0, ""
    status = int(answer.split(b" ", 2)[1])
    return status, orjson.loads(answer.partition(b"\r\n\r\n")[2])["message"]


async def assert_refused(running: Running, body: bytes, content_type: str, expected: str) -> None:
    before = await storeview.counts(running.services.store)
    status, message = await post_raw(running, body, content_type)
    assert status == 400, message
    assert expected in message, message
    assert await storeview.counts(running.services.store) == before
    good = "&".join(f"{k}={v}" for k, v in GOOD).encode()
    assert (await post_raw(running, good, "application/x-www-form-urlencoded"))[0] == 200


async def test_a_multipart_body_cut_inside_a_part_header_is_a_400(running: Running):
    body = multipart()
    cut = body.index(b"Content-Disposition", body.index(b"subject")) + len(b"Content-Dis")
    await assert_refused(running, body[:cut], MULTIPART,
                         "malformed multipart/form-data request")


async def test_raw_crlf_in_a_multipart_h_field_name_cannot_add_a_bcc(running: Running):
    body = multipart((b"h:X-A\r\nBcc", b"victim@example.org"))
    await assert_refused(running, body, MULTIPART, "malformed multipart/form-data request")


async def test_encoded_crlf_in_a_multipart_h_field_name_is_refused(running: Running):
    encoded_name = (b"--XX\r\nContent-Disposition: form-data; name*=utf-8''h%3AX-A%0D%0ABcc"
                    b"\r\n\r\nvictim@example.org\r\n")
    body = multipart()[: -len(b"--XX--\r\n")] + encoded_name + b"--XX--\r\n"
    await assert_refused(running, body, MULTIPART,
                         r"form field name 'h:X-A\r\nBcc' contains a control character")


async def test_crlf_in_a_urlencoded_h_field_name_is_refused(running: Running):
    good = "&".join(f"{k}={v}" for k, v in GOOD)
    await assert_refused(running, f"{good}&h%3AX-A%0D%0ABcc=victim%40example.org".encode(),
                         "application/x-www-form-urlencoded",
                         r"form field name 'h:X-A\r\nBcc' contains a control character")


@pytest.mark.parametrize("name", [b"v:a\x00b", b"h:X\x00Y", b"o:tag\x00"])
async def test_nul_in_a_multipart_field_name_is_a_400(running: Running, name: bytes):
    await assert_refused(running, multipart((name, b"1")), MULTIPART,
                         "malformed multipart/form-data request")


@pytest.mark.parametrize("name", ["v%3Aa%00b", "h%3AX%00Y", "unknown%00"])
async def test_nul_in_a_urlencoded_field_name_is_refused_not_stored(running: Running, name: str):
    good = "&".join(f"{k}={v}" for k, v in GOOD)
    await assert_refused(running, f"{good}&{name}=1".encode(),
                         "application/x-www-form-urlencoded", "contains a control character")


async def test_nul_in_a_query_string_field_name_is_refused(running: Running):
    good = "&".join(f"{k}={v}" for k, v in GOOD)
    status, message = await post_raw(running, good.encode(), "application/x-www-form-urlencoded",
                                     path=f"/v3/{DOMAIN}/messages?v%3Aa%00b=1")
    assert (status, message) == (400, r"form field name 'v:a\x00b' contains a control character")


async def test_a_body_shorter_than_its_content_length_is_not_an_internal_error(
    running: Running, caplog: pytest.LogCaptureFixture
):
    body = multipart()
    with caplog.at_level(logging.ERROR, logger="mta.api"):
        status, _ = await post_raw(running, body, MULTIPART, content_length=len(body) + 100)
    assert status in (0, 400)  # the client left: it may not even see the answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
