"""Events API: GET /v3/<domain>/events and the page URLs it hands out (mailgun-api.md §4, §1.5 C).

Events are created by sending through the real sending API; nothing is written to the store
directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any

import aiohttp

from tests.conftest import DOMAIN, Running

SENDER = "Sender <sender@mg.example.test>"
Params = Sequence[tuple[str, str]]


async def send(
    api: aiohttp.ClientSession,
    *,
    to: Sequence[str] = ("alice@example.net",),
    domain: str = DOMAIN,
    subject: str = "Hello",
    text: str = "Plain body",
    sender: str = SENDER,
    tags: Sequence[str] = (),
    extra: Params = (),
) -> tuple[int, dict[str, Any]]:
    """POST /v3/<domain>/messages urlencoded, as the Python SDK does; (status, body)."""
    form = aiohttp.FormData()
    form.add_field("from", sender)
    for address in to:
        form.add_field("to", address)
    form.add_field("subject", subject)
    form.add_field("text", text)
    for tag in tags:
        form.add_field("o:tag", tag)
    for name, value in extra:
        form.add_field(name, value)
    async with api.post(f"/v3/{domain}/messages", data=form) as resp:
        return resp.status, await resp.json(content_type=None)


async def sent_id(api: aiohttp.ClientSession, **kwargs: Any) -> str:
    """Send and return the Message-Id without angle brackets."""
    status, body = await send(api, **kwargs)
    assert status == 200, body
    return str(body["id"]).strip("<>")


async def events(
    api: aiohttp.ClientSession, params: Params = (), domain: str = DOMAIN
) -> tuple[int, dict[str, Any]]:
    async with api.get(f"/v3/{domain}/events", params=list(params)) as resp:
        return resp.status, await resp.json(content_type=None)


async def items(api: aiohttp.ClientSession, params: Params = ()) -> list[dict[str, Any]]:
    status, body = await events(api, [*params, ("limit", "300")])
    assert status == 200, body
    return body["items"]


async def follow(api: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with api.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def walk(
    api: aiohttp.ClientSession, page: dict[str, Any], link: str = "next"
) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Follow `link` from `page` until an empty page: (the non-empty pages in the order
    visited, the empty page). A traversal that does not end fails instead of hanging."""
    pages = []
    for _ in range(50):
        if not page["items"]:
            return pages, page
        pages.append(page["items"])
        page = await follow(api, page["paging"][link])
    raise AssertionError(f"following {link!r} did not reach an empty page")


def recipients_of(found: list[dict[str, Any]]) -> list[str]:
    return sorted(e["recipient"] for e in found)


# -- the accepted event ---------------------------------------------------------------------------


async def test_accepted_event_per_recipient_carries_mailgun_fields(api: aiohttp.ClientSession):
    before = time.time()
    message_id = await sent_id(
        api,
        to=("Alice <alice@example.net>", "bob@example.org"),
        subject="Quarterly report",
        tags=("newsletter",),
        extra=[("v:order-id", "12345")],
    )
    after = time.time()
    found = await items(api)
    assert recipients_of(found) == ["alice@example.net", "bob@example.org"]
    by_recipient = {e["recipient"]: e for e in found}
    alice = by_recipient["alice@example.net"]
    assert alice["event"] == "accepted"
    assert isinstance(alice["id"], str) and len(alice["id"]) == 22
    assert alice["id"] != by_recipient["bob@example.org"]["id"]
    assert isinstance(alice["timestamp"], float)
    assert before <= alice["timestamp"] <= after
    assert alice["log-level"] == "info"
    assert alice["method"] == "http"
    assert alice["recipient-domain"] == "example.net"
    assert by_recipient["bob@example.org"]["recipient-domain"] == "example.org"
    assert alice["tags"] == ["newsletter"]
    assert alice["user-variables"] == {"order-id": "12345"}
    assert alice["flags"]["is-authenticated"] is True
    assert alice["flags"]["is-test-mode"] is False
    assert alice["envelope"] == {
        "sender": "sender@mg.example.test",
        "transport": "http",
        "targets": "alice@example.net",
    }
    message = alice["message"]
    assert message["headers"] == {
        "to": "Alice <alice@example.net>, bob@example.org",
        "message-id": message_id,
        "from": SENDER,
        "subject": "Quarterly report",
    }
    assert message["recipients"] == ["alice@example.net", "bob@example.org"]
    assert isinstance(message["size"], int) and message["size"] > len("Plain body")


async def test_no_parameters_lists_newest_first(api: aiohttp.ClientSession):
    for n in range(3):
        await sent_id(api, to=(f"r{n}@example.net",))
    status, body = await events(api)
    assert status == 200
    assert [e["recipient"] for e in body["items"]] == [
        "r2@example.net",
        "r1@example.net",
        "r0@example.net",
    ]
    stamps = [e["timestamp"] for e in body["items"]]
    assert stamps == sorted(stamps, reverse=True)


async def test_test_mode_send_is_flagged_on_its_event(api: aiohttp.ClientSession):
    await sent_id(api, extra=[("o:testmode", "yes")])
    (event,) = await items(api)
    assert event["flags"]["is-test-mode"] is True


# -- the rejected event ---------------------------------------------------------------------------


async def test_send_refused_after_sender_and_recipient_leaves_rejected_event(
    api: aiohttp.ClientSession,
):
    status, body = await send(api, tags=("a", "b", "c", "d"), subject="Too many tags")
    assert status == 400
    (event,) = await items(api)
    assert event["event"] == "rejected"
    assert "recipient" not in event
    assert event["log-level"] == "warn"
    assert event["reject"]["reason"] == "invalid"
    assert event["reject"]["description"] == body["message"]
    assert event["message"]["headers"]["subject"] == "Too many tags"
    assert isinstance(event["timestamp"], float)


async def test_send_refused_before_recipient_was_given_leaves_no_event(
    api: aiohttp.ClientSession,
):
    status, _ = await send(api, to=())
    assert status == 400
    assert await items(api) == []


# -- filters --------------------------------------------------------------------------------------


async def test_filter_expression_with_or_matches_either_event(api: aiohttp.ClientSession):
    await sent_id(api)
    await send(api, tags=("a", "b", "c", "d"))
    both = await items(api, [("event", "accepted OR rejected")])
    assert sorted(e["event"] for e in both) == ["accepted", "rejected"]
    only = await items(api, [("event", "rejected")])
    assert [e["event"] for e in only] == ["rejected"]
    assert await items(api, [("event", "delivered OR failed")]) == []


async def test_filter_not_excludes_matching_events(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net",), tags=("newsletter",))
    await sent_id(api, to=("bob@example.net",), tags=("receipt",))
    await send(api, tags=("a", "b", "c", "d"))
    not_accepted = await items(api, [("event", "NOT accepted")])
    assert [e["event"] for e in not_accepted] == ["rejected"]
    not_newsletter = await items(api, [("event", "accepted"), ("tags", "NOT newsletter")])
    assert recipients_of(not_newsletter) == ["bob@example.net"]


async def test_filter_quoted_phrase_matches_only_the_exact_phrase(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net",), subject="Your quarterly report is ready")
    await sent_id(api, to=("bob@example.net",), subject="Report: quarterly figures")
    phrase = await items(api, [("subject", '"quarterly report"')])
    assert recipients_of(phrase) == ["alice@example.net"]
    words = await items(api, [("subject", "quarterly report")])
    assert recipients_of(words) == ["alice@example.net", "bob@example.net"]


async def test_filter_parentheses_group_terms(api: aiohttp.ClientSession):
    subjects = {
        "a@example.net": "Hello Rachel",
        "b@example.net": "Hello Ross",
        "c@example.net": "Farewell Monica",
        "d@example.net": "Farewell Joey",
    }
    for address, subject in subjects.items():
        await sent_id(api, to=(address,), subject=subject)
    found = await items(api, [("subject", "(Hello AND NOT Rachel) OR (Farewell AND Monica)")])
    assert recipients_of(found) == ["b@example.net", "c@example.net"]


async def test_filter_by_recipient_matches_only_that_recipient(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net", "bob@example.net"))
    found = await items(api, [("recipient", "Alice@Example.net")])
    assert recipients_of(found) == ["alice@example.net"]
    assert await items(api, [("recipient", "carol@example.net")]) == []


async def test_filter_by_message_id_with_or_without_angle_brackets(api: aiohttp.ClientSession):
    first = await sent_id(api, to=("alice@example.net", "bob@example.net"))
    await sent_id(api, to=("carol@example.net",))
    bare = await items(api, [("message-id", first)])
    bracketed = await items(api, [("message-id", f"<{first}>")])
    assert recipients_of(bare) == ["alice@example.net", "bob@example.net"]
    assert [e["id"] for e in bracketed] == [e["id"] for e in bare]
    assert all(e["message"]["headers"]["message-id"] == first for e in bare)


async def test_filter_by_tags_matches_whole_tags(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net",), tags=("newsletter", "september"))
    await sent_id(api, to=("bob@example.net",), tags=("news",))
    assert recipients_of(await items(api, [("tags", "newsletter")])) == ["alice@example.net"]
    assert recipients_of(await items(api, [("tags", "news")])) == ["bob@example.net"]
    either = await items(api, [("tags", "september OR news")])
    assert recipients_of(either) == ["alice@example.net", "bob@example.net"]


async def test_filter_by_subject_matches_contained_text_in_any_case(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net",), subject="Your Invoice for May")
    await sent_id(api, to=("bob@example.net",), subject="Welcome aboard")
    assert recipients_of(await items(api, [("subject", "invoice")])) == ["alice@example.net"]


async def test_filter_by_from_matches_the_from_header(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net",), sender="Billing <billing@mg.example.test>")
    await sent_id(api, to=("bob@example.net",), sender="news@mg.example.test")
    found = await items(api, [("from", "billing@mg.example.test")])
    assert recipients_of(found) == ["alice@example.net"]


async def test_filter_by_size_takes_greater_and_less_than(api: aiohttp.ClientSession):
    await sent_id(api, to=("small@example.net",), text="x")
    await sent_id(api, to=("big@example.net",), text="y" * 5000)
    sizes = {e["recipient"]: e["message"]["size"] for e in await items(api)}
    small, big = sizes["small@example.net"], sizes["big@example.net"]
    assert big > small + 4000
    assert recipients_of(await items(api, [("size", f">{small}")])) == ["big@example.net"]
    assert recipients_of(await items(api, [("size", f"<{big}")])) == ["small@example.net"]
    both = await items(api, [("size", f">{small - 1} <{big + 1}")])
    assert recipients_of(both) == ["big@example.net", "small@example.net"]
    assert await items(api, [("size", f">{big}")]) == []


async def test_repeated_filter_fields_are_anded(api: aiohttp.ClientSession):
    await sent_id(api, to=("alice@example.net",), subject="Hello world", tags=("a",))
    await sent_id(api, to=("bob@example.net",), subject="Hello there", tags=("a",))
    await sent_id(api, to=("carol@example.net",), subject="Goodbye world", tags=("b",))
    same_field = await items(api, [("subject", "hello"), ("subject", "world")])
    assert recipients_of(same_field) == ["alice@example.net"]
    two_fields = await items(api, [("subject", "world"), ("tags", "b")])
    assert recipients_of(two_fields) == ["carol@example.net"]


# -- time range and order -------------------------------------------------------------------------


async def test_begin_and_end_select_a_time_range_in_either_direction(api: aiohttp.ClientSession):
    await sent_id(api, to=("early@example.net",))
    middle = time.time()
    await sent_id(api, to=("late@example.net",))
    hour_ago = formatdate(time.time() - 3600, usegmt=True)
    ascending = await items(api, [("begin", hour_ago), ("ascending", "yes")])
    assert [e["recipient"] for e in ascending] == ["early@example.net", "late@example.net"]
    after = await items(api, [("begin", repr(middle)), ("ascending", "yes")])
    assert [e["recipient"] for e in after] == ["late@example.net"]
    before = await items(api, [("begin", repr(middle)), ("end", hour_ago)])
    assert [e["recipient"] for e in before] == ["early@example.net"]
    descending = await items(api, [("begin", repr(time.time() + 1)), ("end", hour_ago)])
    assert [e["recipient"] for e in descending] == ["late@example.net", "early@example.net"]


async def test_ascending_takes_any_boolean_spelling(api: aiohttp.ClientSession):
    await sent_id(api, to=("early@example.net", "late@example.net"))
    for spelling, order in (("yes", "early"), ("True", "early"), ("1", "early"), ("NO", "late")):
        found = await items(api, [("ascending", spelling)])
        assert found[0]["recipient"] == f"{order}@example.net", spelling
    await assert_bad_request(api, [("ascending", "sideways")])


async def assert_bad_request(api: aiohttp.ClientSession, params: Params) -> str:
    status, body = await events(api, params)
    assert status == 400, body
    assert set(body) == {"message"} and body["message"]
    return str(body["message"])


async def test_ascending_that_disagrees_with_begin_and_end_is_refused(api: aiohttp.ClientSession):
    now = time.time()
    message = await assert_bad_request(
        api, [("begin", str(now)), ("end", str(now - 60)), ("ascending", "yes")]
    )
    assert "ascending" in message
    await assert_bad_request(
        api, [("begin", str(now - 60)), ("end", str(now)), ("ascending", "no")]
    )


async def test_limit_above_300_is_refused(api: aiohttp.ClientSession):
    message = await assert_bad_request(api, [("limit", "301")])
    assert "300" in message
    status, _ = await events(api, [("limit", "300")])
    assert status == 200


async def test_unparseable_date_is_refused(api: aiohttp.ClientSession):
    message = await assert_bad_request(api, [("begin", "yesterday-ish")])
    assert "begin" in message
    await assert_bad_request(api, [("end", "Thu, 45 Foo 2011 18:02:00 +0000")])


async def test_bad_filter_syntax_and_unknown_fields_are_refused(api: aiohttp.ClientSession):
    for expression in ("(accepted", "accepted OR", '"accepted', "accepted)"):
        await assert_bad_request(api, [("event", expression)])
    message = await assert_bad_request(api, [("colour", "blue")])
    assert "colour" in message
    await assert_bad_request(api, [("subject", ">100")])


async def test_pretty_yes_indents_the_json(api: aiohttp.ClientSession):
    await sent_id(api)
    async with api.get(f"/v3/{DOMAIN}/events", params={"pretty": "yes"}) as resp:
        text = await resp.text()
        assert resp.status == 200
        assert resp.content_type == "application/json"
    assert text.startswith("{\n  ")
    async with api.get(f"/v3/{DOMAIN}/events") as resp:
        assert "\n" not in await resp.text()


# -- paging ---------------------------------------------------------------------------------------


async def test_paging_links_are_absolute_urls_back_to_this_server(
    running: Running, api: aiohttp.ClientSession
):
    await sent_id(api)
    status, body = await events(api, [("limit", "1")])
    assert status == 200
    prefix = f"{running.url}/v3/{DOMAIN}/events/"
    assert set(body["paging"]) >= {"next", "previous"}
    for link in (body["paging"]["next"], body["paging"]["previous"]):
        assert link.startswith(prefix)
        token = link[len(prefix) :]
        assert token and "/" not in token and "?" not in token


async def test_following_next_walks_every_event_once_and_ends_empty(api: aiohttp.ClientSession):
    addresses = [f"r{n}@example.net" for n in range(7)]
    await sent_id(api, to=addresses)
    await sent_id(api, to=("late@example.net",))
    status, page = await events(api, [("limit", "3"), ("event", "accepted")])
    assert status == 200
    pages, page = await walk(api, page)
    assert [len(p) for p in pages] == [3, 3, 2]
    seen = [e for p in pages for e in p]
    assert len({e["id"] for e in seen}) == len(seen) == 8
    assert sorted(e["recipient"] for e in seen) == sorted([*addresses, "late@example.net"])
    stamps = [e["timestamp"] for e in seen]
    assert stamps == sorted(stamps, reverse=True)
    assert seen[0]["recipient"] == "late@example.net"
    assert "next" in page["paging"] and "previous" in page["paging"]


async def test_previous_of_first_page_is_empty_and_previous_goes_back(api: aiohttp.ClientSession):
    await sent_id(api, to=[f"r{n}@example.net" for n in range(4)])
    status, first = await events(api, [("limit", "2")])
    assert status == 200
    assert (await follow(api, first["paging"]["previous"]))["items"] == []
    second = await follow(api, first["paging"]["next"])
    back = await follow(api, second["paging"]["previous"])
    assert [e["id"] for e in back["items"]] == [e["id"] for e in first["items"]]


async def test_following_previous_back_from_the_end_walks_every_event_once(
    api: aiohttp.ClientSession,
):
    await sent_id(api, to=[f"r{n}@example.net" for n in range(7)])
    status, page = await events(api, [("limit", "3")])
    assert status == 200
    pages, end = await walk(api, page)
    forwards = [e for p in pages for e in p]
    pages, _ = await walk(api, await follow(api, end["paging"]["previous"]), "previous")
    backwards = [e for p in reversed(pages) for e in p]
    assert [e["id"] for e in backwards] == [e["id"] for e in forwards]
    assert len(forwards) == 7


async def test_next_of_the_empty_page_before_the_first_is_the_first_page(
    api: aiohttp.ClientSession,
):
    await sent_id(api, to=[f"r{n}@example.net" for n in range(3)])
    for order in ([], [("begin", str(time.time() - 60)), ("ascending", "yes")]):
        status, first = await events(api, [*order, ("limit", "2")])
        assert status == 200
        before = await follow(api, first["paging"]["previous"])
        assert before["items"] == []
        again = await follow(api, before["paging"]["next"])
        assert [e["id"] for e in again["items"]] == [e["id"] for e in first["items"]]


async def test_page_tokens_keep_the_filters(api: aiohttp.ClientSession):
    await sent_id(api, to=[f"a{n}@example.net" for n in range(3)], tags=("keep",))
    await sent_id(api, to=[f"b{n}@example.net" for n in range(3)], tags=("drop",))
    status, page = await events(api, [("limit", "2"), ("tags", "keep")])
    assert status == 200
    pages, _ = await walk(api, page)
    assert recipients_of([e for p in pages for e in p]) == [f"a{n}@example.net" for n in range(3)]


async def test_ascending_last_next_link_returns_events_that_arrive_later(
    api: aiohttp.ClientSession,
):
    await sent_id(api, to=("first@example.net", "second@example.net", "third@example.net"))
    begin = str(time.time() - 60)
    status, page = await events(api, [("begin", begin), ("ascending", "yes"), ("limit", "2")])
    assert status == 200
    pages, page = await walk(api, page)
    seen = [e["recipient"] for p in pages for e in p]
    assert seen == ["first@example.net", "second@example.net", "third@example.net"]
    tail = page["paging"]["next"]
    assert (await follow(api, tail))["items"] == []
    await sent_id(api, to=("fourth@example.net",))
    arrived = await follow(api, tail)
    assert [e["recipient"] for e in arrived["items"]] == ["fourth@example.net"]
    assert (await follow(api, arrived["paging"]["next"]))["items"] == []


async def test_malformed_page_token_is_refused(api: aiohttp.ClientSession):
    async with api.get(f"/v3/{DOMAIN}/events/not-a-token") as resp:
        assert resp.status == 400
        assert set(await resp.json()) == {"message"}


# -- domains --------------------------------------------------------------------------------------


async def test_events_of_another_domain_are_not_visible(
    running: Running, api: aiohttp.ClientSession
):
    await running.services.domains.create("other.example.test")
    await sent_id(api, to=("ours@example.net",))
    await sent_id(
        api,
        to=("theirs@example.net",),
        domain="other.example.test",
        sender="x@other.example.test",
    )
    assert recipients_of(await items(api)) == ["ours@example.net"]
    status, body = await events(api, domain="other.example.test")
    assert status == 200
    assert recipients_of(body["items"]) == ["theirs@example.net"]


async def test_unknown_domain_is_404_in_mailguns_words(api: aiohttp.ClientSession):
    status, body = await events(api, domain="nowhere.example.test")
    assert status == 404
    assert body == {"message": "Domain not found: nowhere.example.test"}
