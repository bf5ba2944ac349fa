"""Suppression lists (mailgun-api.md §8.1-8.3, §8.6): the HTTP API under
/v3/<d>/bounces|unsubscribes|complaints, and `suppressed()`, which the outbound scheduler asks
before each delivery (checked here against a real store)."""

from __future__ import annotations

import email.utils
import re
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from mta import suppressions
from mta.store import Store
from tests import storeview
from tests.conftest import DOMAIN, Running

OTHER = "other.example.test"
BOUNCES = f"/v3/{DOMAIN}/bounces"
UNSUBSCRIBES = f"/v3/{DOMAIN}/unsubscribes"
COMPLAINTS = f"/v3/{DOMAIN}/complaints"
KINDS = ["bounces", "unsubscribes", "complaints"]
RFC2822_GMT = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
NOT_FOUND = {
    "bounces": "Address not found in bounces table",
    "unsubscribes": "Address not found in unsubscribers table",
    "complaints": "No spam complaints found for this address",
}


async def call(
    api: aiohttp.ClientSession,
    method: str,
    path: str | URL,
    data: Any = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with api.request(method, path, data=data, json=json, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def get(api: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    status, body = await call(api, "GET", path)
    assert status == 200, body
    return body


async def addresses(api: aiohttp.ClientSession, path: str) -> list[str]:
    return [item["address"] for item in (await get(api, f"{path}?limit=1000"))["items"]]


async def table_counts(running: Running) -> dict[str, int]:
    return {k: await storeview.count(running.services.store, k) for k in KINDS}


# -- bounces --------------------------------------------------------------------------------------


async def test_added_bounce_is_returned_with_mailguns_shape_and_a_string_code(
    api: aiohttp.ClientSession,
):
    data = {"address": "bad@example.net", "code": "550", "error": "No such user"}
    status, body = await call(api, "POST", BOUNCES, data)
    assert (status, body) == (
        200,
        {"message": "Address has been added to the bounces table", "address": "bad@example.net"},
    )
    item = await get(api, f"{BOUNCES}/bad%40example.net")
    assert RFC2822_GMT.fullmatch(item.pop("created_at")), item
    assert item == {"address": "bad@example.net", "code": "550", "error": "No such user"}


async def test_bounce_defaults_to_code_550_empty_error_and_now(api: aiohttp.ClientSession):
    before = int(time.time())
    assert (await call(api, "POST", BOUNCES, {"address": "bad@example.net"}))[0] == 200
    item = await get(api, f"{BOUNCES}/bad@example.net")
    assert (item["code"], item["error"]) == ("550", "")
    created = email.utils.parsedate_to_datetime(item["created_at"]).timestamp()
    assert before <= created <= time.time()


async def test_adding_a_bounce_twice_updates_it(api: aiohttp.ClientSession):
    await call(api, "POST", BOUNCES, {"address": "bad@example.net", "code": "550", "error": "a"})
    await call(api, "POST", BOUNCES, {"address": "BAD@example.net", "code": "554", "error": "b"})
    body = await get(api, BOUNCES)
    assert [(i["address"], i["code"], i["error"]) for i in body["items"]] == [
        ("bad@example.net", "554", "b")
    ]


@pytest.mark.parametrize(
    "created_at",
    ["Thu, 13 Oct 2011 18:02:00 +0000", "Thu, 13 Oct 2011 18:02:00 GMT", "1318528920"],
)
async def test_created_at_is_taken_as_rfc2822_or_epoch_and_given_back_in_gmt(
    api: aiohttp.ClientSession, created_at: str
):
    data = {"address": "bad@example.net", "created_at": created_at}
    assert (await call(api, "POST", BOUNCES, data))[0] == 200
    item = await get(api, f"{BOUNCES}/bad@example.net")
    assert item["created_at"] == "Thu, 13 Oct 2011 18:02:00 GMT"


async def test_a_created_at_that_is_no_date_is_refused(api: aiohttp.ClientSession):
    data = {"address": "bad@example.net", "created_at": "yesterday"}
    assert await call(api, "POST", BOUNCES, data) == (
        400,
        {"message": "'created_at' is not a valid date: 'yesterday' (RFC 2822 or epoch seconds)"},
    )


async def test_addresses_are_stored_lower_cased_and_found_in_any_case(
    api: aiohttp.ClientSession,
):
    status, body = await call(api, "POST", BOUNCES, {"address": "Bad@Example.NET"})
    assert (status, body["address"]) == (200, "bad@example.net")
    item = await get(api, f"{BOUNCES}/BAD%40example.net")
    assert item["address"] == "bad@example.net"


async def test_json_array_adds_bounces_with_int_or_string_codes_like_mailgun_js(
    api: aiohttp.ClientSession,
):
    items = [
        {"address": "x1@example.net", "code": 550, "error": "No such user"},
        {"address": "x2@example.net", "code": "421"},
        {"address": "x3@example.net", "created_at": 1318528920},
    ]
    status, body = await call(api, "POST", BOUNCES, json=items)
    assert (status, body) == (
        200,
        {"message": "3 addresses have been added to the bounces table"},
    )
    found = (await get(api, BOUNCES))["items"]
    assert [(i["address"], i["code"], i["error"]) for i in found] == [
        ("x1@example.net", "550", "No such user"),
        ("x2@example.net", "421", ""),
        ("x3@example.net", "550", ""),
    ]
    assert found[2]["created_at"] == "Thu, 13 Oct 2011 18:02:00 GMT"


async def test_json_array_of_1000_is_accepted(api: aiohttp.ClientSession):
    items = [{"address": f"u{n:04}@example.net"} for n in range(1000)]
    status, body = await call(api, "POST", BOUNCES, json=items)
    assert (status, body) == (
        200,
        {"message": "1000 addresses have been added to the bounces table"},
    )
    assert len(await addresses(api, BOUNCES)) == 1000


@pytest.mark.parametrize("kind", KINDS)
async def test_json_array_of_more_than_1000_is_refused_and_nothing_is_added(
    running: Running, api: aiohttp.ClientSession, kind: str
):
    items = [{"address": f"u{n}@example.net"} for n in range(1001)]
    assert await call(api, "POST", f"/v3/{DOMAIN}/{kind}", json=items) == (
        400,
        {"message": "too many addresses: 1001 given, at most 1000 per request"},
    )
    assert (await table_counts(running))[kind] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[{", "malformed JSON body: "),
        (b'{"address": "bad@example.net"}', "JSON body must be an array of objects"),
        (b'[{"address": "ok@example.net"}, "bad@example.net"]', "item 2: not a JSON object"),
        (b'[{"code": 550}]', "item 1: address parameter is missing"),
        (
            b'[{"address": "no-at-sign"}]',
            "item 1: address parameter is not a valid address: no-at-sign",
        ),
        (
            b'[{"address": "a@example.net", "code": [550]}]',
            "item 1: code parameter must be an SMTP reply code, got [550]",
        ),
        (
            b'[{"address": "a@example.net", "error": 5}]',
            "item 1: error parameter must be a string, got 5",
        ),
        (
            b'[{"address": "a@example.net", "created_at": -1}]',
            "item 1: 'created_at' is not a valid date: -1 (RFC 2822 or epoch seconds)",
        ),
    ],
)
async def test_malformed_json_body_is_refused_naming_the_problem_and_nothing_is_added(
    running: Running, api: aiohttp.ClientSession, body: bytes, message: str
):
    headers = {"Content-Type": "application/json"}
    status, answer = await call(api, "POST", BOUNCES, data=body, headers=headers)
    assert status == 400
    assert answer["message"].startswith(message), answer
    assert (await table_counts(running))["bounces"] == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_add_without_address_is_refused(api: aiohttp.ClientSession, kind: str):
    assert await call(api, "POST", f"/v3/{DOMAIN}/{kind}", {"code": "550"}) == (
        400,
        {"message": "address parameter is missing"},
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("address", ["no-at-sign", "two@@example.net", "Bob <bob@example.net>"])
async def test_add_with_an_invalid_address_is_refused(
    api: aiohttp.ClientSession, kind: str, address: str
):
    assert await call(api, "POST", f"/v3/{DOMAIN}/{kind}", {"address": address}) == (
        400,
        {"message": f"address parameter is not a valid address: {address}"},
    )


async def test_multipart_form_adds_like_urlencoded(api: aiohttp.ClientSession):
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("address", "bad@example.net")
    form.add_field("code", "551")
    assert (await call(api, "POST", BOUNCES, form))[0] == 200
    assert (await get(api, f"{BOUNCES}/bad@example.net"))["code"] == "551"


@pytest.mark.parametrize("kind", KINDS)
async def test_an_address_not_on_the_list_is_404_on_get_and_delete(
    api: aiohttp.ClientSession, kind: str
):
    for method in ("GET", "DELETE"):
        path = f"/v3/{DOMAIN}/{kind}/nobody%40example.net"
        assert await call(api, method, path) == (404, {"message": NOT_FOUND[kind]})


async def test_deleting_a_bounce_removes_it_and_a_second_delete_is_404(
    api: aiohttp.ClientSession,
):
    await call(api, "POST", BOUNCES, {"address": "bad@example.net"})
    assert await call(api, "DELETE", f"{BOUNCES}/Bad%40example.net") == (
        200,
        {"message": "Bounced address has been removed", "address": "bad@example.net"},
    )
    assert await call(api, "DELETE", f"{BOUNCES}/bad%40example.net") == (
        404,
        {"message": "Address not found in bounces table"},
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("bounces", "Bounced addresses for this domain have been removed"),
        ("unsubscribes", "Unsubscribe addresses for this domain have been removed"),
        ("complaints", "Complaint addresses for this domain have been removed"),
    ],
)
async def test_delete_all_empties_the_domains_list_and_spares_other_domains(
    running: Running, api: aiohttp.ClientSession, kind: str, message: str
):
    await running.services.domains.create(OTHER)
    for domain in (DOMAIN, OTHER):
        await call(api, "POST", f"/v3/{domain}/{kind}", {"address": "x@example.net"})
    assert await call(api, "DELETE", f"/v3/{DOMAIN}/{kind}") == (200, {"message": message})
    assert await addresses(api, f"/v3/{DOMAIN}/{kind}") == []
    assert await addresses(api, f"/v3/{OTHER}/{kind}") == ["x@example.net"]


# -- unsubscribes ---------------------------------------------------------------------------------


async def test_unsubscribe_without_tag_is_from_all_mail_and_items_carry_tag_and_tags(
    api: aiohttp.ClientSession,
):
    status, body = await call(api, "POST", UNSUBSCRIBES, {"address": "unsub@example.net"})
    assert (status, body) == (
        200,
        {
            "message": "Address has been added to the unsubscribes table",
            "address": "unsub@example.net",
        },
    )
    item = await get(api, f"{UNSUBSCRIBES}/unsub%40example.net")
    assert RFC2822_GMT.fullmatch(item.pop("created_at")), item
    assert item == {"address": "unsub@example.net", "tag": "*", "tags": ["*"]}


async def test_unsubscribing_from_more_tags_appends_each_once(api: aiohttp.ClientSession):
    for tag in ("news", "promo", "news"):
        data = {"address": "unsub@example.net", "tag": tag}
        assert (await call(api, "POST", UNSUBSCRIBES, data))[0] == 200
    item = await get(api, f"{UNSUBSCRIBES}/unsub@example.net")
    assert (item["tag"], item["tags"]) == ("news", ["news", "promo"])


async def test_json_unsubscribes_take_tag_lists_and_default_to_all_tags(
    api: aiohttp.ClientSession,
):
    items = [
        {"address": "a@example.net", "tags": ["news", "promo"]},
        {"address": "b@example.net"},
        {"address": "a@example.net", "tags": ["weekly", "news"]},
    ]
    status, body = await call(api, "POST", UNSUBSCRIBES, json=items)
    assert (status, body) == (
        200,
        {"message": "3 addresses have been added to the unsubscribes table"},
    )
    found = (await get(api, UNSUBSCRIBES))["items"]
    assert [(i["address"], i["tags"]) for i in found] == [
        ("a@example.net", ["news", "promo", "weekly"]),
        ("b@example.net", ["*"]),
    ]


@pytest.mark.parametrize("tags", [[], "", [""], [1], {"news": True}])
async def test_json_unsubscribe_tags_must_be_a_list_of_names(api: aiohttp.ClientSession, tags: Any):
    status, body = await call(
        api, "POST", UNSUBSCRIBES, json=[{"address": "a@example.net", "tags": tags}]
    )
    assert status == 400
    assert body["message"].startswith("item 1: tags parameter must be a list of tag names"), body


@pytest.mark.parametrize("where", ["query", "form"])
async def test_deleting_one_tag_keeps_the_others_and_the_last_tag_removes_the_address(
    api: aiohttp.ClientSession, where: str
):
    for tag in ("news", "promo"):
        await call(api, "POST", UNSUBSCRIBES, {"address": "unsub@example.net", "tag": tag})

    async def delete_tag(tag: str) -> tuple[int, Any]:
        path = f"{UNSUBSCRIBES}/unsub%40example.net"
        if where == "query":
            return await call(api, "DELETE", f"{path}?tag={tag}")
        return await call(api, "DELETE", path, {"tag": tag})

    removed = {"message": "Unsubscribe event has been removed", "address": "unsub@example.net"}
    assert await delete_tag("news") == (200, removed)
    assert (await get(api, f"{UNSUBSCRIBES}/unsub@example.net"))["tags"] == ["promo"]
    assert await delete_tag("promo") == (200, removed)
    assert await addresses(api, UNSUBSCRIBES) == []
    assert await delete_tag("promo") == (404, {"message": NOT_FOUND["unsubscribes"]})


async def test_deleting_a_tag_the_address_is_not_unsubscribed_from_changes_nothing(
    api: aiohttp.ClientSession,
):
    await call(api, "POST", UNSUBSCRIBES, {"address": "unsub@example.net"})
    status, _ = await call(api, "DELETE", f"{UNSUBSCRIBES}/unsub%40example.net?tag=news")
    assert status == 200
    assert (await get(api, f"{UNSUBSCRIBES}/unsub@example.net"))["tags"] == ["*"]


async def test_deleting_an_unsubscribe_without_tag_removes_every_tag(api: aiohttp.ClientSession):
    for tag in ("news", "promo"):
        await call(api, "POST", UNSUBSCRIBES, {"address": "unsub@example.net", "tag": tag})
    assert await call(api, "DELETE", f"{UNSUBSCRIBES}/unsub%40example.net") == (
        200,
        {"message": "Unsubscribe event has been removed", "address": "unsub@example.net"},
    )
    assert await addresses(api, UNSUBSCRIBES) == []


# -- complaints -----------------------------------------------------------------------------------


async def test_added_complaint_has_a_count_and_adding_it_again_counts_it(
    api: aiohttp.ClientSession,
):
    status, body = await call(api, "POST", COMPLAINTS, {"address": "spam@example.net"})
    assert (status, body) == (
        200,
        {
            "message": "Address has been added to the complaints table",
            "address": "spam@example.net",
        },
    )
    item = await get(api, f"{COMPLAINTS}/spam%40example.net")
    assert RFC2822_GMT.fullmatch(item.pop("created_at")), item
    assert item == {"address": "spam@example.net", "count": 1}
    await call(api, "POST", COMPLAINTS, {"address": "Spam@example.net"})
    assert (await get(api, f"{COMPLAINTS}/spam%40example.net"))["count"] == 2


async def test_json_complaints_are_added_with_mailguns_message(api: aiohttp.ClientSession):
    items = [{"address": "spam@example.net"}, {"address": "abuse@example.net"}]
    assert await call(api, "POST", COMPLAINTS, json=items) == (
        200,
        {"message": "2 complaint addresses have been added to the complaints table"},
    )
    assert await addresses(api, COMPLAINTS) == ["abuse@example.net", "spam@example.net"]


async def test_deleting_a_complaint_removes_it(api: aiohttp.ClientSession):
    await call(api, "POST", COMPLAINTS, {"address": "spam@example.net"})
    assert await call(api, "DELETE", f"{COMPLAINTS}/spam%40example.net") == (
        200,
        {"message": "Spam complaint has been removed", "address": "spam@example.net"},
    )
    assert await addresses(api, COMPLAINTS) == []


# -- listing and paging ---------------------------------------------------------------------------


async def test_lists_are_in_alphabetical_order_of_address(api: aiohttp.ClientSession):
    for address in ("carol@example.net", "alice@example.net", "bob@example.net"):
        await call(api, "POST", BOUNCES, {"address": address})
    assert await addresses(api, BOUNCES) == [
        "alice@example.net",
        "bob@example.net",
        "carol@example.net",
    ]


async def test_paging_walks_250_addresses_in_hundreds_to_an_empty_page_and_back(
    running: Running, api: aiohttp.ClientSession
):
    everyone = [f"user{n:03}@example.net" for n in range(250)]
    await call(api, "POST", BOUNCES, json=[{"address": a} for a in reversed(everyone)])
    body = await get(api, f"{BOUNCES}?limit=100")
    seen, pages = [], []
    while body["items"]:
        pages.append(len(body["items"]))
        seen += [item["address"] for item in body["items"]]
        next_url = URL(body["paging"]["next"])
        assert next_url.origin() == URL(running.url).origin()
        body = await get(api, body["paging"]["next"])
    assert (pages, seen) == ([100, 100, 50], everyone)
    assert (
        body["paging"]["next"]
        == f"{running.url}{BOUNCES}?page=next&address=user249%40example.net&limit=100"
    )

    back = await get(api, body["paging"]["previous"])
    assert [i["address"] for i in back["items"]] == everyone[150:]
    back = await get(api, back["paging"]["previous"])
    assert [i["address"] for i in back["items"]] == everyone[50:150]
    back = await get(api, back["paging"]["previous"])
    assert [i["address"] for i in back["items"]] == everyone[:50]
    back = await get(api, back["paging"]["previous"])
    assert back["items"] == []
    onwards = await get(api, back["paging"]["next"])
    assert [i["address"] for i in onwards["items"]] == everyone[:100]


async def test_paging_links_are_absolute_back_to_the_same_path_and_all_four_always_present(
    api: aiohttp.ClientSession,
):
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "mta.example.com"}
    base = f"https://mta.example.com{UNSUBSCRIBES}"
    status, empty = await call(api, "GET", UNSUBSCRIBES, headers=headers)
    assert (status, empty["items"]) == (200, [])
    assert empty["paging"] == {
        "first": f"{base}?page=first&limit=100",
        "last": f"{base}?page=last&limit=100",
        "next": f"{base}?page=next&address=&limit=100",
        "previous": f"{base}?page=last&limit=100",
    }
    for address in ("a@example.net", "b@example.net", "c@example.net"):
        await call(api, "POST", UNSUBSCRIBES, {"address": address})
    status, body = await call(
        api, "GET", f"{UNSUBSCRIBES}?page=next&address=a%40example.net&limit=1", headers=headers
    )
    assert [i["address"] for i in body["items"]] == ["b@example.net"]
    assert body["paging"] == {
        "first": f"{base}?page=first&limit=1",
        "last": f"{base}?page=last&limit=1",
        "next": f"{base}?page=next&address=b%40example.net&limit=1",
        "previous": f"{base}?page=previous&address=b%40example.net&limit=1",
    }


async def test_last_page_holds_the_final_entries(api: aiohttp.ClientSession):
    items = [{"address": f"user{n}@example.net"} for n in range(5)]
    await call(api, "POST", COMPLAINTS, json=items)
    body = await get(api, f"{COMPLAINTS}?page=last&limit=2")
    assert [i["address"] for i in body["items"]] == ["user3@example.net", "user4@example.net"]


async def test_prev_is_taken_as_previous(api: aiohttp.ClientSession):
    await call(api, "POST", BOUNCES, json=[{"address": "a@example.net"}, {"address": "b@x.net"}])
    body = await get(api, f"{BOUNCES}?page=prev&address=b%40x.net")
    assert [i["address"] for i in body["items"]] == ["a@example.net"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=1001", "'limit' must be a whole number from 0 to 1000"),
        ("limit=ten", "'limit' must be a whole number from 0 to 1000"),
        ("page=after", "'page' must be one of first, last, next, prev, previous"),
        ("skip=-1", "'skip' must be a whole number from 0 to 1000000000"),
    ],
)
async def test_bad_paging_parameters_are_refused(
    api: aiohttp.ClientSession, query: str, message: str
):
    assert await call(api, "GET", f"{BOUNCES}?{query}") == (400, {"message": message})


async def test_legacy_skip_pages_with_a_total_count(api: aiohttp.ClientSession):
    items = [{"address": f"user{n}@example.net", "tags": ["news"]} for n in range(5)]
    await call(api, "POST", UNSUBSCRIBES, json=items)
    body = await get(api, f"{UNSUBSCRIBES}?skip=1&limit=2")
    assert body["total_count"] == 5
    assert [i["address"] for i in body["items"]] == ["user1@example.net", "user2@example.net"]
    assert body["items"][0]["tags"] == ["news"]
    assert "paging" not in body


async def test_a_trailing_slash_is_tolerated(api: aiohttp.ClientSession):
    await call(api, "POST", f"{BOUNCES}/", {"address": "bad@example.net"})
    assert await addresses(api, f"{BOUNCES}/") == ["bad@example.net"]
    assert (await get(api, f"{BOUNCES}/bad%40example.net/"))["address"] == "bad@example.net"


# -- domains and keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", ""), ("DELETE", ""), ("GET", "/a%40b.net"), ("DELETE", "/a%40b.net")],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_domain_is_404(
    api: aiohttp.ClientSession, kind: str, method: str, suffix: str
):
    path = f"/v3/nowhere.example.test/{kind}{suffix}"
    assert await call(api, method, path, {"address": "a@b.net"}) == (
        404,
        {"message": "Domain not found: nowhere.example.test"},
    )


async def test_lists_are_per_domain(running: Running, api: aiohttp.ClientSession):
    await running.services.domains.create(OTHER)
    await call(api, "POST", BOUNCES, {"address": "bad@example.net"})
    assert await addresses(api, f"/v3/{OTHER}/bounces") == []
    assert (await call(api, "GET", f"/v3/{OTHER}/bounces/bad%40example.net"))[0] == 404


async def test_sending_key_cannot_read_or_change_suppressions(
    running: Running, api: aiohttp.ClientSession
):
    await call(api, "POST", BOUNCES, {"address": "bad@example.net"})
    _, secret = await running.services.keys.create(domain=DOMAIN)
    async with running.session(secret) as sending:
        for kind in KINDS:
            for method, suffix in (
                ("GET", ""),
                ("POST", ""),
                ("DELETE", ""),
                ("GET", "/bad%40example.net"),
                ("DELETE", "/bad%40example.net"),
            ):
                path = f"/v3/{DOMAIN}/{kind}{suffix}"
                async with sending.request(method, path, data={"address": "x@y.net"}) as resp:
                    assert (resp.status, await resp.text()) == (401, "Forbidden"), (method, path)
    assert await addresses(api, BOUNCES) == ["bad@example.net"]


async def test_deleting_the_domain_deletes_its_suppressions(
    running: Running, api: aiohttp.ClientSession
):
    await running.services.domains.create(OTHER)
    for domain in (DOMAIN, OTHER):
        for kind in KINDS:
            await call(api, "POST", f"/v3/{domain}/{kind}", {"address": "x@example.net"})
    assert (await call(api, "DELETE", f"/v3/domains/{DOMAIN}"))[0] == 200
    assert await table_counts(running) == {"bounces": 1, "unsubscribes": 1, "complaints": 1}
    await running.services.domains.create(DOMAIN)
    for kind in KINDS:
        assert await addresses(api, f"/v3/{DOMAIN}/{kind}") == []


# -- suppressed(): what the outbound scheduler asks -----------------------------------------------


async def unsubscribe(store: Store, address: str, *tags: str, domain: str = DOMAIN) -> None:
    await suppressions.add(store, domain, [suppressions.Unsubscribe(address, tags, 0.0)])


async def test_suppressed_reports_bounce_before_complaint_before_unsubscribe(store: Store):
    await store.write(
        suppressions.bounce_statement(DOMAIN, "all@example.net", "550", "gone", 0.0),
        suppressions.complaint_statement(DOMAIN, "all@example.net", 0.0),
        suppressions.complaint_statement(DOMAIN, "two@example.net", 0.0),
    )
    await unsubscribe(store, "all@example.net", "*")
    await unsubscribe(store, "two@example.net", "*")
    await unsubscribe(store, "one@example.net", "*")
    found = await suppressions.suppressed(
        store, DOMAIN, ["all@example.net", "two@example.net", "one@example.net", "ok@x.net"], []
    )
    assert found == {
        "all@example.net": "suppress-bounce",
        "two@example.net": "suppress-complaint",
        "one@example.net": "suppress-unsubscribe",
    }


async def test_suppressed_matches_recipients_in_any_case_and_answers_lower_cased(store: Store):
    await store.write(suppressions.bounce_statement(DOMAIN, "Bad@Example.net", "550", "", 0.0))
    found = await suppressions.suppressed(store, DOMAIN, ["BAD@example.NET"], [])
    assert found == {"bad@example.net": "suppress-bounce"}


async def test_unsubscribe_from_all_tags_suppresses_every_message(store: Store):
    await unsubscribe(store, "unsub@example.net", "*")
    for tags in ([], ["news"]):
        found = await suppressions.suppressed(store, DOMAIN, ["unsub@example.net"], tags)
        assert found == {"unsub@example.net": "suppress-unsubscribe"}


async def test_tag_unsubscribe_suppresses_only_messages_with_one_of_its_tags(store: Store):
    await unsubscribe(store, "unsub@example.net", "news", "promo")

    async def check(*tags: str) -> bool:
        found = await suppressions.suppressed(store, DOMAIN, ["unsub@example.net"], list(tags))
        return found == {"unsub@example.net": "suppress-unsubscribe"}

    assert await check("promo")
    assert await check("weekly", "news")
    assert not await check()
    assert not await check("weekly")
    assert await check("News")  # tags are case-insensitive, as the manual says


async def test_suppressed_is_per_domain(store: Store):
    await store.write(suppressions.bounce_statement(OTHER, "bad@example.net", "550", "", 0.0))
    await unsubscribe(store, "unsub@example.net", "*", domain=OTHER)
    found = await suppressions.suppressed(
        store, DOMAIN, ["bad@example.net", "unsub@example.net"], []
    )
    assert found == {}


async def test_suppressed_checks_a_batch_larger_than_sqlites_variable_limit(store: Store):
    listed = [f"user{n}@example.net" for n in range(0, 5000, 7)]
    await suppressions.add(store, DOMAIN, [suppressions.Bounce(a, "550", "", 0.0) for a in listed])
    batch = [f"User{n}@example.net" for n in range(5000)]
    found = await suppressions.suppressed(store, DOMAIN, batch, [])
    assert found == dict.fromkeys(listed, "suppress-bounce")


async def test_bounce_statement_replaces_and_complaint_statement_counts(store: Store):
    await store.write(
        suppressions.bounce_statement(DOMAIN, "bad@example.net", "550", "first", 1.0),
        suppressions.complaint_statement(DOMAIN, "spam@example.net", 1.0),
    )
    await store.write(
        suppressions.bounce_statement(DOMAIN, "BAD@example.net", "554", "second", 2.0),
        suppressions.complaint_statement(DOMAIN, "SPAM@example.net", 2.0),
    )
    assert await suppressions.get(store, "bounces", DOMAIN, "bad@example.net") == (
        suppressions.Bounce("bad@example.net", "554", "second", 2.0)
    )
    assert await suppressions.get(store, "complaints", DOMAIN, "spam@example.net") == (
        suppressions.Complaint("spam@example.net", 2.0, count=2)
    )
