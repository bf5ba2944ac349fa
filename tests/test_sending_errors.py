"""Bad sends: each gets a clear 4xx in Mailgun's terms, nothing half-written stays in the store,
and the server goes on serving everyone else."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests import storeview
from tests.conftest import DOMAIN, Running, auth_header

pytestmark = pytest.mark.asyncio

GOOD = {
    "from": f"Sender <sender@{DOMAIN}>",
    "to": "alice@example.net",
    "subject": "Hi",
    "text": "body",
}


async def post(
    api: aiohttp.ClientSession, data, path: str = f"/v3/{DOMAIN}/messages", **kwargs
) -> tuple[int, str]:
    async with api.post(path, data=data, **kwargs) as resp:
        return resp.status, await resp.text()


async def assert_refused(running: Running, api, data, status: int, message: str) -> None:
    before = await storeview.counts(running.services.store)
    got_status, text = await post(api, data)
    assert got_status == status, text
    assert resp_message(text) == message
    after = await storeview.counts(running.services.store)
    assert (after["messages"], after["recipients"]) == (before["messages"], before["recipients"])
    # and the next, well-formed send still goes through
    ok_status, _ = await post(api, GOOD)
    assert ok_status == 200


def resp_message(text: str) -> str:
    import json

    return json.loads(text)["message"]


async def test_wrong_or_missing_api_key_is_401_forbidden_and_stores_nothing(running: Running):
    store = running.services.store
    for headers in (
        {},
        auth_header("key-wrong"),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer " + running.key},
    ):
        async with (
            aiohttp.ClientSession(running.url, headers=headers) as anon,
            anon.post(f"/v3/{DOMAIN}/messages", data=GOOD) as resp,
        ):
            assert resp.status == 401
            assert await resp.text() == "Forbidden"
    assert (await storeview.counts(store))["messages"] == 0


async def test_unknown_domain_is_404_domain_not_found(running: Running, api):
    status, text = await post(api, GOOD, "/v3/nowhere.example/messages")
    assert status == 404
    assert resp_message(text) == "Domain not found: nowhere.example"


async def test_unknown_path_is_404_json(running: Running, api):
    async with api.get("/v3/nothing/here/at/all") as resp:
        assert resp.status == 404
        assert await resp.json() == {"message": "Not Found"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"from": None}, "from parameter is missing"),
        ({"to": None}, "to parameter is missing"),
        (
            {"to": "not-an-address"},
            "to parameter is not a valid address. please check documentation",
        ),
        (
            {"to": "a@b@c.example"},
            "to parameter is not a valid address. please check documentation",
        ),
        (
            {"from": "Sender <sender@>"},
            "from parameter is not a valid address. please check documentation",
        ),
        (
            {"cc": "x y@example.net"},
            "cc parameter is not a valid address. please check documentation",
        ),
        ({"text": None}, "Need at least one of 'text' or 'html' parameters specified"),
        (
            {"recipient-variables": "{not json"},
            "'recipient-variables' parameter is not a valid JSON",
        ),
        ({"recipient-variables": "[1, 2]"}, "'recipient-variables' parameter is not a valid JSON"),
        ({"o:deliverytime": "next tuesday"}, "next tuesday is not an RFC-2822 compliant date"),
        (
            {"o:testmode": "perhaps"},
            "'o:testmode' must be one of yes, no, true, false, got 'perhaps'",
        ),
        (
            {"h:X-Evil": "a\r\nBcc: victim@example.net"},
            "Header value of X-Evil must not contain CR, LF or NUL",
        ),
        ({"h:X-Bad Name": "v"}, "Header name is not valid: 'X-Bad Name'"),
        ({"h:X-Ünicode": "v"}, "Header name must be pure ASCII: X-Ünicode"),
        (
            {"v:big": "x" * 17_000},
            "Send options (parameters starting with o:, h:, or v:) are limited to 16 kB total",
        ),
    ],
)
async def test_bad_field_is_400_naming_the_problem(running: Running, api, change, message):
    data = {k: v for k, v in (GOOD | change).items() if v is not None}
    await assert_refused(running, api, data, 400, message)


async def test_to_with_crlf_injection_is_refused(running: Running, api):
    data = GOOD | {"to": "alice@example.net\r\nBcc: victim@example.net"}
    await assert_refused(
        running, api, data, 400, "to parameter is not a valid address. please check documentation"
    )


async def test_more_than_1000_recipients_is_refused(running: Running, api):
    data = [(k, v) for k, v in GOOD.items() if k != "to"]
    data += [("to", f"r{n}@example.net") for n in range(1001)]
    await assert_refused(running, api, data, 400, "Too many recipients, max is 1000")


async def test_exactly_1000_recipients_is_accepted(running: Running, api):
    data = [(k, v) for k, v in GOOD.items() if k != "to"]
    data += [("to", f"r{n}@example.net") for n in range(1000)]
    status, _ = await post(api, data)
    assert status == 200
    assert (await storeview.counts(running.services.store))["recipients"] == 1000


async def test_more_than_three_tags_is_refused(running: Running, api):
    data = list(GOOD.items()) + [("o:tag", t) for t in ("a", "b", "c", "d")]
    await assert_refused(running, api, data, 400, "Too many tags, max is 3 per message")


async def test_tag_longer_than_128_characters_is_refused(running: Running, api):
    status, text = await post(api, [*list(GOOD.items()), ("o:tag", "t" * 129)])
    assert status == 400
    assert resp_message(text).startswith("Tag is too long")


async def test_tags_are_ascii_only_and_case_insensitive(running: Running, api):
    data = [*list(GOOD.items()), ("o:tag", "Größe"), ("o:tag", "☃☃"), ("o:tag", "NEWS")]
    status, _ = await post(api, data)
    assert status == 200
    (event,) = await storeview.events(running.services.store, "accepted")
    assert event["tags"] == ["gre", "news"]


async def test_deliverytime_beyond_three_days_is_refused(running: Running, api):
    await assert_refused(
        running,
        api,
        GOOD | {"o:deliverytime": str(int(time.time()) + 4 * 86400)},
        400,
        "invalid delivery time: at most 3 days in the future",
    )


async def test_malformed_multipart_is_400(running: Running, api):
    body = b'--XYZ\r\nContent-Disposition: form-data; name="from"\r\n\r\nx@y.z\r\n--XY'
    status, text = await post(
        api, body, headers={"Content-Type": "multipart/form-data; boundary=XYZ"}
    )
    assert status == 400
    assert resp_message(text).startswith("malformed multipart/form-data request")
    ok_status, _ = await post(api, GOOD)
    assert ok_status == 200


async def test_unsupported_content_type_is_400(running: Running, api):
    status, text = await post(api, b"{}", headers={"Content-Type": "application/json"})
    assert status == 400
    assert "Invalid request content type" in resp_message(text)


async def test_message_over_25_mb_is_413_and_not_stored(running: Running, api):
    form = aiohttp.FormData(GOOD)
    form.add_field("attachment", b"\0" * (19 * 1024 * 1024), filename="big.bin")  # 25.3 MB base64
    before = await storeview.counts(running.services.store)
    status, text = await post(api, form)
    assert status == 413
    assert resp_message(text) == "Message size exceeds the 25 MB limit"
    assert await storeview.counts(running.services.store) == before | {
        "events": before["events"] + 1  # the rejected event
    }
    assert (
        (await storeview.events(running.services.store, "rejected"))[-1]["reject"]["description"]
        == "Message size exceeds the 25 MB limit"
    )


async def test_request_over_the_size_limit_is_413_while_others_are_served(start_server):
    running = await start_server(api__max_request_bytes=2 * 1024 * 1024)
    async with running.session() as api:
        big = aiohttp.FormData(GOOD)
        big.add_field("attachment", b"x" * (3 * 1024 * 1024), filename="big.bin")
        results = await asyncio.gather(post(api, big), *(post(api, GOOD) for _ in range(20)))
    (big_status, big_text), *small = results
    assert big_status == 413
    assert resp_message(big_text) == "request size exceeds 2.0MiB limit"
    assert [s for s, _ in small] == [200] * 20
    assert (await storeview.counts(running.services.store))["messages"] == 20


async def test_refusal_with_sender_and_recipient_leaves_a_rejected_event(running: Running, api):
    data = list(GOOD.items()) + [("o:tag", t) for t in ("a", "b", "c", "d")]
    status, _ = await post(api, data)
    assert status == 400
    (event,) = await storeview.events(running.services.store, "rejected")
    assert "recipient" not in event
    assert event["reject"]["description"] == "Too many tags, max is 3 per message"
    assert event["log-level"] == "warn"
    assert event["message"]["headers"]["to"] == "alice@example.net"


async def test_mime_send_without_message_is_400(running: Running, api):
    status, text = await post(api, {"to": "a@example.net"}, f"/v3/{DOMAIN}/messages.mime")
    assert status == 400
    assert resp_message(text) == "message parameter is missing"


async def test_mime_send_without_from_header_is_400(running: Running, api):
    form = aiohttp.FormData()
    form.add_field("to", "a@example.net")
    form.add_field("message", b"Subject: no from\r\n\r\nbody", filename="message")
    status, text = await post(api, form, f"/v3/{DOMAIN}/messages.mime")
    assert status == 400
    assert resp_message(text) == "'message' has no valid From header"


async def test_a_client_that_stalls_mid_body_does_not_block_others(running: Running, api):
    _reader, writer = await asyncio.open_connection("127.0.0.1", running.server.api_port)
    headers = auth_header(running.key)["Authorization"]
    writer.write(
        f"POST /v3/{DOMAIN}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: {headers}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
        "from=a%40b.c&to=".encode()
    )
    await writer.drain()
    statuses = await asyncio.gather(*(post(api, GOOD) for _ in range(10)))
    assert [s for s, _ in statuses] == [200] * 10
    writer.close()


async def test_too_many_form_fields_is_413_saying_so(start_server):
    running = await start_server(api__max_form_fields=50)
    async with running.session() as api:
        data = [*GOOD.items()] + [(f"v:k{n}", "v") for n in range(60)]
        status, text = await post(api, data)
    assert status == 413
    assert resp_message(text) == "too many form fields, max is 50"
