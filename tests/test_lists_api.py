"""The Mailing Lists API (manual: "Mailing Lists"; mailgun-api.md §7): lists and members made,
read, changed and deleted in Mailgun's shapes and words, both paging styles walked through
their links, bulk uploads (members.json, members.csv) keeping the good entries and reporting
the others, their upload events in the Events API, and the official SDKs (mailgun-python,
mailgun.js) managing lists and members."""

from __future__ import annotations

import email.utils
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from mailgun.client import AsyncClient
from yarl import URL

from mta.events import Event
from mta.webhooks import CURRENT_NAMES, LEGACY_NAMES
from tests import storeview
from tests.conftest import DOMAIN, Running
from tests.js import mailgun_js

pytestmark = pytest.mark.asyncio

LIST = f"devs@{DOMAIN}"
LISTS = "/v3/lists"
ONE = f"/v3/lists/{LIST}"
MEMBERS = f"{ONE}/members"
LIST_KEYS = {"address", "name", "description", "access_level", "reply_preference",
             "members_count", "created_at"}


async def call(
    running: Running, method: str, path: str, params: Any = (), data: Any = None
) -> tuple[int, Any]:
    """Status and JSON body; a path with `%` is sent as written (already encoded)."""
    target = URL(path, encoded=True) if "%" in path else path
    async with (
        running.session() as api,
        api.request(method, target, params=params, data=data) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def ok(running: Running, method: str, path: str, params: Any = (), data: Any = None) -> Any:
    status, body = await call(running, method, path, params, data)
    assert status == 200, body
    return body


async def make_list(running: Running, address: str = LIST, **fields: str) -> dict[str, Any]:
    return (await ok(running, "POST", LISTS, data={"address": address, **fields}))["list"]


async def add(running: Running, address: str, list_address: str = LIST, **fields: str) -> Any:
    return await ok(running, "POST", f"{LISTS}/{list_address}/members",
                    data={"address": address, **fields})


async def walk(running: Running, url: str, direction: str = "next") -> list[list[str]]:
    """Every page from `url` following `paging[direction]` until an empty page: the
    addresses on each."""
    pages = []
    while True:
        parts = urlsplit(url)
        body = await ok(running, "GET", parts.path, params=parse_qsl(parts.query))
        if not body["items"]:
            return pages
        pages.append([item["address"] for item in body["items"]])
        assert set(body["paging"]) == {"first", "last", "next", "previous"}
        url = body["paging"][direction]
        assert url.startswith(running.url), url  # absolute, back to this server


def csv_upload(text: str | bytes, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    data = text.encode() if isinstance(text, str) else text
    form.add_field("members", data, filename="members.csv", content_type="text/csv")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


# -- lists ----------------------------------------------------------------------------------------


async def test_a_list_is_created_and_read_back_in_mailguns_shape(running: Running):
    created = await ok(running, "POST", LISTS, data={
        "address": LIST, "name": "Devs", "description": "Developers"})
    assert created["message"] == "Mailing list has been created"
    lst = created["list"]
    assert set(lst) == LIST_KEYS
    assert lst | {"created_at": None} == {
        "address": LIST, "name": "Devs", "description": "Developers",
        "access_level": "readonly", "reply_preference": "list", "members_count": 0,
        "created_at": None,
    }
    assert lst["created_at"].endswith(" GMT")
    assert email.utils.parsedate_to_datetime(lst["created_at"]) is not None
    for path in (ONE, f"/v3/lists/devs%40{DOMAIN}", f"/v3/lists/DEVS%40{DOMAIN.upper()}/"):
        assert await ok(running, "GET", path) == {"list": lst}, path


async def test_a_name_comes_from_the_address_and_read_only_is_readonly(running: Running):
    lst = await make_list(running, f"Team Devs <{LIST}>", access_level="read-only",
                          reply_preference="sender")
    assert (lst["address"], lst["name"], lst["access_level"], lst["reply_preference"]) == (
        LIST, "Team Devs", "readonly", "sender")


async def test_creating_a_list_twice_is_a_400(running: Running):
    await make_list(running)
    assert await call(running, "POST", LISTS, data={"address": LIST.upper()}) == (
        400, {"message": f"Duplicate object: Mailing list {LIST} already exists"})


async def test_a_list_on_a_domain_not_hosted_here_is_refused(running: Running):
    status, body = await call(running, "POST", LISTS, data={"address": "devs@elsewhere.test"})
    assert (status, body) == (400, {"message": "Domain not found: elsewhere.test"})
    assert (await ok(running, "GET", LISTS))["items"] == []


async def test_a_missing_or_bad_list_field_is_a_400(running: Running):
    for data, message in [
        ({}, "'address' parameter is missing"),
        ({"address": "not an address"}, "'address' parameter is not a valid email address"),
        ({"address": LIST, "access_level": "all"},
         "Invalid access level. Valid values are: readonly, members, everyone"),
        ({"address": LIST, "reply_preference": "nobody"},
         "Invalid reply preference. Valid values are: list, sender"),
        ({"address": LIST, "name": "x" * 1025}, "name and description are limited to 1024 characters"),
        ({"address": LIST, "name": "a\0b"}, "'name' must not contain NUL characters"),
    ]:
        assert await call(running, "POST", LISTS, data=data) == (400, {"message": message}), data
    assert (await ok(running, "GET", LISTS))["items"] == []


async def test_an_unknown_list_is_404_everywhere(running: Running):
    nowhere = f"/v3/lists/nobody@{DOMAIN}"
    not_found = (404, {"message": f"Mailing list nobody@{DOMAIN} not found"})
    for method, path, data in [
        ("GET", nowhere, None),
        ("PUT", nowhere, {"name": "x"}),
        ("DELETE", nowhere, None),
        ("GET", f"{nowhere}/members", None),
        ("GET", f"{nowhere}/members/pages", None),
        ("POST", f"{nowhere}/members", {"address": "a@example.net"}),
        ("POST", f"{nowhere}/members.json", {"members": '["a@example.net"]'}),
        ("POST", f"{nowhere}/members.csv", {"members": "address\na@example.net\n"}),
        ("GET", f"{nowhere}/members/a@example.net", None),
        ("PUT", f"{nowhere}/members/a@example.net", {"name": "x"}),
        ("DELETE", f"{nowhere}/members/a@example.net", None),
    ]:
        assert await call(running, method, path, data=data) == not_found, (method, path)


async def test_list_pages_walk_every_list_both_ways_through_the_links(running: Running):
    addresses = sorted(f"list{n}@{DOMAIN}" for n in range(7))
    for address in reversed(addresses):
        await make_list(running, address)
    forwards = await walk(running, f"{running.url}/v3/lists/pages?limit=3")
    assert forwards == [addresses[0:3], addresses[3:6], addresses[6:7]]
    backwards = await walk(running, f"{running.url}/v3/lists/pages?page=last&limit=3", "previous")
    assert backwards == [addresses[4:7], addresses[1:4], addresses[0:1]]
    body = await ok(running, "GET", "/v3/lists/pages", params={"limit": 2})
    assert dict(parse_qsl(urlsplit(body["paging"]["next"]).query)) == {
        "page": "next", "address": addresses[1], "limit": "2"}
    assert all(set(item) == LIST_KEYS for item in body["items"])


async def test_legacy_list_listing_counts_skips_and_filters_by_address(running: Running):
    addresses = sorted(f"list{n}@{DOMAIN}" for n in range(5))
    for address in addresses:
        await make_list(running, address)
    body = await ok(running, "GET", LISTS, params={"skip": 1, "limit": 2})
    assert body["total_count"] == 5
    assert [item["address"] for item in body["items"]] == addresses[1:3]
    assert len((await ok(running, "GET", LISTS))["items"]) == 5
    one = await ok(running, "GET", LISTS, params={"address": addresses[3].upper()})
    assert (one["total_count"], [i["address"] for i in one["items"]]) == (1, [addresses[3]])
    none = await ok(running, "GET", LISTS, params={"address": f"other@{DOMAIN}"})
    assert none == {"total_count": 0, "items": []}


async def test_page_sizes_and_skips_are_bounded(running: Running):
    await make_list(running)
    for path, params, message in [
        ("/v3/lists/pages", {"limit": 1001}, "'limit' must be a whole number from 1 to 1000"),
        ("/v3/lists/pages", {"limit": 0}, "'limit' must be a whole number from 1 to 1000"),
        ("/v3/lists/pages", {"page": "sideways"},
         "'page' must be one of first, last, next, prev, previous"),
        (LISTS, {"limit": "1" * 40}, "'limit' must be a whole number from 0 to 1000"),
        (LISTS, {"skip": 10001}, "'skip' must be a whole number from 0 to 10000"),
        (f"{MEMBERS}/pages", {"limit": 5000}, "'limit' must be a whole number from 1 to 1000"),
        (f"{MEMBERS}/pages", {"subscribed": "maybe"},
         "'subscribed' must be one of yes, no, true, false, got 'maybe'"),
        (MEMBERS, {"skip": -1}, "'skip' must be a whole number from 0 to 10000"),
        (MEMBERS, {"skip": 20000}, "'skip' must be a whole number from 0 to 10000"),
    ]:
        assert await call(running, "GET", path, params) == (400, {"message": message}), params


async def test_an_update_changes_only_the_fields_given(running: Running):
    await make_list(running, name="Devs", description="Developers")
    body = await ok(running, "PUT", ONE, data={"description": "All developers",
                                               "access_level": "members"})
    assert body["message"] == "Mailing list has been updated"
    assert (body["list"]["name"], body["list"]["description"], body["list"]["access_level"]) == (
        "Devs", "All developers", "members")
    assert (await ok(running, "GET", ONE))["list"] == body["list"]
    assert await call(running, "PUT", ONE, data={"access_level": "nobody"}) == (
        400, {"message": "Invalid access level. Valid values are: readonly, members, everyone"})


async def test_renaming_a_list_keeps_its_members(running: Running):
    await make_list(running)
    await add(running, "alice@example.net", vars='{"team": "a"}')
    await add(running, "bob@example.net")
    renamed = f"engineers@{DOMAIN}"
    body = await ok(running, "PUT", ONE, data={"address": renamed})
    assert (body["list"]["address"], body["list"]["members_count"]) == (renamed, 2)
    assert (await call(running, "GET", ONE))[0] == 404
    members = await ok(running, "GET", f"/v3/lists/{renamed}/members")
    assert [(m["address"], m["vars"]) for m in members["items"]] == [
        ("alice@example.net", {"team": "a"}), ("bob@example.net", {})]
    await make_list(running, f"other@{DOMAIN}")
    assert await call(running, "PUT", f"/v3/lists/{renamed}", data={"address": f"other@{DOMAIN}"}) == (
        400, {"message": f"Duplicate object: Mailing list other@{DOMAIN} already exists"})
    status, _ = await call(running, "PUT", f"/v3/lists/{renamed}",
                           data={"address": "x@elsewhere.test"})
    assert status == 400


async def test_deleting_a_list_removes_its_members(running: Running):
    await make_list(running)
    await add(running, "alice@example.net")
    assert await ok(running, "DELETE", f"/v3/lists/devs%40{DOMAIN}") == {
        "message": "Mailing list has been deleted", "address": LIST}
    assert (await call(running, "GET", ONE))[0] == 404
    assert await storeview.count(running.services.store, "list_members") == 0
    assert (await make_list(running))["members_count"] == 0
    assert (await ok(running, "GET", MEMBERS))["items"] == []


async def test_list_validation_is_not_available(running: Running):
    await make_list(running)
    for method in ("GET", "POST", "DELETE"):
        assert await call(running, method, f"{ONE}/validate") == (
            501, {"message": "Mailing list validation is not available on this server"})
    assert (await call(running, "POST", f"/v3/lists/x@{DOMAIN}/validate"))[0] == 404


# -- members --------------------------------------------------------------------------------------


async def test_a_member_is_added_with_name_vars_and_subscribed_and_read_back(running: Running):
    await make_list(running)
    body = await add(running, "Bob Bar <Bob@Example.NET>", vars='{"age": 26}', subscribed="False",
                     description="Developer")  # mailgun-python sends description: ignored
    assert body == {
        "member": {"address": "bob@example.net", "name": "Bob Bar", "subscribed": False,
                   "vars": {"age": 26}},
        "message": "Mailing list member has been created",
    }
    for path in (f"{MEMBERS}/bob@example.net", f"/v3/lists/devs%40{DOMAIN}/members/BOB%40example.net/"):
        assert await ok(running, "GET", path) == {"member": body["member"]}, path
    named = await add(running, "carol@example.net", name="Carol C")
    assert named["member"] == {"address": "carol@example.net", "name": "Carol C",
                               "subscribed": True, "vars": {}}
    assert (await ok(running, "GET", ONE))["list"]["members_count"] == 2


async def test_an_existing_member_is_a_400_without_upsert_and_updated_with_it(running: Running):
    await make_list(running)
    await add(running, "bob@example.net", name="Bob", vars='{"age": 26}')
    assert await call(running, "POST", MEMBERS, data={"address": "BOB@example.net"}) == (
        400, {"message": "Address already exists 'bob@example.net'"})
    body = await add(running, "bob@example.net", name="Robert", vars='{"age": 27}', upsert="yes",
                     subscribed="no")
    assert body["member"] == {"address": "bob@example.net", "name": "Robert",
                              "subscribed": False, "vars": {"age": 27}}
    assert (await ok(running, "GET", ONE))["list"]["members_count"] == 1


async def test_bad_member_fields_are_400(running: Running):
    await make_list(running)
    for data, message in [
        ({}, "'address' parameter is missing"),
        ({"address": "a@example.net, b@example.net"},
         "'address' parameter is not a valid email address"),
        ({"address": "a@example.net", "vars": "[1, 2]"}, "'vars' must be a JSON object"),
        ({"address": "a@example.net", "vars": '"text"'}, "'vars' must be a JSON object"),
        ({"address": "a@example.net", "vars": "{nope"}, "Failed to parse 'vars' as JSON object"),
        ({"address": "a@example.net", "vars": json.dumps({"x": "y" * 9000})},
         "'vars' is limited to 8192 bytes"),
        ({"address": "a@example.net", "subscribed": "perhaps"},
         "'subscribed' must be one of yes, no, true, false, got 'perhaps'"),
        ({"address": "a@example.net", "name": "a\0b"}, "'name' must not contain NUL characters"),
    ]:
        assert await call(running, "POST", MEMBERS, data=data) == (400, {"message": message}), data
    assert (await ok(running, "GET", MEMBERS))["items"] == []


async def test_a_member_update_changes_only_what_is_given(running: Running):
    await make_list(running)
    await add(running, "bob@example.net", name="Bob", vars='{"age": 26}')
    await add(running, "carol@example.net")
    path = f"{MEMBERS}/bob@example.net"
    body = await ok(running, "PUT", path, data={"subscribed": "no"})
    assert body == {
        "member": {"address": "bob@example.net", "name": "Bob", "subscribed": False,
                   "vars": {"age": 26}},
        "message": "Mailing list member has been updated",
    }
    body = await ok(running, "PUT", path, data={"vars": '{"age": 27}', "name": "Robert"})
    assert body["member"] | {} == {"address": "bob@example.net", "name": "Robert",
                                   "subscribed": False, "vars": {"age": 27}}
    moved = await ok(running, "PUT", path, data={"address": "rob@example.net"})
    assert moved["member"]["address"] == "rob@example.net"
    assert moved["member"]["name"] == "Robert"
    assert (await call(running, "GET", path))[0] == 404
    assert await call(running, "PUT", f"{MEMBERS}/rob@example.net",
                      data={"address": "carol@example.net"}) == (
        400, {"message": "Address already exists 'carol@example.net'"})
    assert await call(running, "PUT", f"{MEMBERS}/rob@example.net", data={"vars": "[]"}) == (
        400, {"message": "'vars' must be a JSON object"})
    assert await call(running, "PUT", f"{MEMBERS}/nobody@example.net", data={"name": "x"}) == (
        404, {"message": f"Member nobody@example.net of mailing list {LIST} not found"})


async def test_deleting_a_member(running: Running):
    await make_list(running)
    await add(running, "bob@example.net")
    assert await ok(running, "DELETE", f"/v3/lists/devs%40{DOMAIN}/members/Bob%40example.net") == {
        "member": {"address": "bob@example.net"},
        "message": "Mailing list member has been deleted",
    }
    not_found = (404, {"message": f"Member bob@example.net of mailing list {LIST} not found"})
    assert await call(running, "GET", f"{MEMBERS}/bob@example.net") == not_found
    assert await call(running, "DELETE", f"{MEMBERS}/bob@example.net") == not_found
    assert (await ok(running, "GET", ONE))["list"]["members_count"] == 0


async def test_member_pages_walk_every_member_and_keep_the_subscribed_filter(running: Running):
    await make_list(running)
    everyone = [f"m{n:02}@example.net" for n in range(9)]
    members = [{"address": a, "subscribed": n % 3 != 0} for n, a in enumerate(everyone)]
    await ok(running, "POST", f"{MEMBERS}.json", data={"members": json.dumps(members)})
    subscribed = [m["address"] for m in members if m["subscribed"]]
    unsubscribed = [m["address"] for m in members if not m["subscribed"]]

    pages = await walk(running, f"{running.url}{MEMBERS}/pages?limit=4")
    assert pages == [everyone[0:4], everyone[4:8], everyone[8:9]]
    pages = await walk(running, f"{running.url}{MEMBERS}/pages?subscribed=yes&limit=4")
    assert [a for page in pages for a in page] == subscribed and len(pages) == 2
    pages = await walk(running, f"{running.url}{MEMBERS}/pages?subscribed=no&limit=2")
    assert [a for page in pages for a in page] == unsubscribed
    pages = await walk(
        running, f"{running.url}{MEMBERS}/pages?page=last&subscribed=true&limit=4", "previous")
    assert pages == [subscribed[2:6], subscribed[0:2]]
    body = await ok(running, "GET", f"{MEMBERS}/pages", params={"limit": 1})
    assert set(body["items"][0]) == {"address", "name", "subscribed", "vars"}


async def test_legacy_member_listing_counts_skips_and_filters(running: Running):
    await make_list(running)
    await add(running, "a@example.net")
    await add(running, "b@example.net", subscribed="no")
    await add(running, "c@example.net")
    body = await ok(running, "GET", MEMBERS, params={"subscribed": "yes"})
    assert body["total_count"] == 2
    assert [m["address"] for m in body["items"]] == ["a@example.net", "c@example.net"]
    body = await ok(running, "GET", MEMBERS, params={"skip": 1, "limit": 1})
    assert (body["total_count"], [m["address"] for m in body["items"]]) == (3, ["b@example.net"])
    body = await ok(running, "GET", MEMBERS, params={"address": "b@example.net"})
    assert (body["total_count"], body["items"][0]["subscribed"]) == (1, False)


# -- bulk uploads ---------------------------------------------------------------------------------


async def test_members_json_adds_every_form_and_reports_malformed_entries(running: Running):
    await make_list(running)
    members = [
        "alice@example.net",
        "Bob Bar <BOB@example.net>",
        {"address": "carol@example.net", "name": "Carol", "vars": {"age": 30},
         "subscribed": False},
        {"address": "Dan <dan@example.net>", "vars": '{"team": "x"}'},
        "not an address",
        {"name": "no address"},
        {"address": "eve@example.net", "vars": [1, 2]},
        42,
    ]
    body = await ok(running, "POST", f"{MEMBERS}.json",
                    data={"members": json.dumps(members), "upsert": "no"})
    assert body["message"] == "Mailing list has been updated"
    assert set(body["list"]) == LIST_KEYS and body["list"]["members_count"] == 4
    assert (body["upserted-count"], body["failed-count"]) == (4, 4)
    assert len(body["task-id"]) == 32
    assert body["errors"] == [
        {"row": 5, "entry": "not an address",
         "message": "'address' parameter is not a valid email address"},
        {"row": 6, "entry": '{"name":"no address"}', "message": "'address' parameter is missing"},
        {"row": 7, "entry": '{"address":"eve@example.net","vars":[1,2]}',
         "message": "'vars' must be a JSON object"},
        {"row": 8, "entry": "42",
         "message": "an entry must be an address or an object with an 'address'"},
    ]
    found = {m["address"]: m for m in (await ok(running, "GET", MEMBERS))["items"]}
    assert found == {
        "alice@example.net": {"address": "alice@example.net", "name": "", "subscribed": True,
                              "vars": {}},
        "bob@example.net": {"address": "bob@example.net", "name": "Bob Bar", "subscribed": True,
                            "vars": {}},
        "carol@example.net": {"address": "carol@example.net", "name": "Carol",
                              "subscribed": False, "vars": {"age": 30}},
        "dan@example.net": {"address": "dan@example.net", "name": "Dan", "subscribed": True,
                            "vars": {"team": "x"}},
    }


async def test_members_json_leaves_existing_members_unless_upsert(running: Running):
    await make_list(running)
    await add(running, "alice@example.net", name="Alice", vars='{"v": 1}')
    members = json.dumps([{"address": "alice@example.net", "name": "Changed", "vars": {"v": 2}},
                          "bob@example.net"])
    body = await ok(running, "POST", f"{MEMBERS}.json", data={"members": members})
    assert (body["upserted-count"], body["failed-count"]) == (1, 1)
    assert body["errors"] == [{"row": 1, "entry": "Changed <alice@example.net>",
                               "message": "Address already exists 'alice@example.net'"}]
    alice = (await ok(running, "GET", f"{MEMBERS}/alice@example.net"))["member"]
    assert (alice["name"], alice["vars"]) == ("Alice", {"v": 1})

    body = await ok(running, "POST", f"{MEMBERS}.json", data={"members": members, "upsert": "True"})
    assert (body["upserted-count"], body["failed-count"], body["errors"]) == (2, 0, [])
    alice = (await ok(running, "GET", f"{MEMBERS}/alice@example.net"))["member"]
    assert (alice["name"], alice["vars"]) == ("Changed", {"v": 2})
    assert body["list"]["members_count"] == 2


async def test_more_members_than_one_call_takes_is_a_400_and_writes_nothing(running: Running):
    await make_list(running)
    members = json.dumps([f"m{n}@example.net" for n in range(1001)])
    assert await call(running, "POST", f"{MEMBERS}.json", data={"members": members}) == (
        400, {"message": "Too many members: at most 1000 may be added in one call"})
    assert (await ok(running, "GET", ONE))["list"]["members_count"] == 0
    members = json.dumps([f"m{n}@example.net" for n in range(1000)])
    body = await ok(running, "POST", f"{MEMBERS}.json", data={"members": members})
    assert (body["upserted-count"], body["list"]["members_count"]) == (1000, 1000)


async def test_members_json_that_is_not_a_json_array_is_a_400(running: Running):
    await make_list(running)
    for members, message in [
        ('{"address": "a@example.net"}', "'members': the members must be a JSON array"),
        ('["a@example.net", ', "'members': entry 2 is not valid JSON: Expecting value"),
        ('["a@example.net" "b@example.net"]', "'members': expected ',' or ']' after entry 1"),
        ('["a@example.net"] []', "'members': unexpected text after the JSON array"),
        ("[NaN]", "'members': entry 1 is not valid JSON: NaN is not JSON"),
        ("[" * 100_000, None),
    ]:
        status, body = await call(running, "POST", f"{MEMBERS}.json", data={"members": members})
        assert status == 400, body
        assert message is None or body == {"message": message}
    assert await call(running, "POST", f"{MEMBERS}.json", data={"upsert": "yes"}) == (
        400, {"message": "'members' parameter is missing"})
    assert (await ok(running, "GET", ONE))["list"]["members_count"] == 0


async def test_members_csv_adds_rows_and_reports_malformed_ones_by_line(running: Running):
    await make_list(running)
    text = (
        "\ufeffAddress,Name,vars,subscribed,ignored\r\n"
        'alice@example.net,Alice,"{""age"": 30}",,x\r\n'
        "bob@example.net,,,yes,\r\n"
        "\r\n"
        "not an address,Nobody,,,\r\n"
        'carol@example.net,Carol,"{broken",,\r\n'
        '"Dan <dan@example.net>",,,no\r\n'
    )
    body = await ok(running, "POST", f"{MEMBERS}.csv", data=csv_upload(text, subscribed="no"))
    assert body["message"] == "Mailing list upload started"
    assert (body["upserted-count"], body["failed-count"]) == (3, 2)
    assert body["list"]["members_count"] == 3 and len(body["task-id"]) == 32
    assert body["errors"] == [
        {"row": 5, "entry": "not an address,Nobody,,,",
         "message": "'address' parameter is not a valid email address"},
        {"row": 6, "entry": 'carol@example.net,Carol,{broken,,',
         "message": "Failed to parse 'vars' as JSON object"},
    ]
    found = {m["address"]: m for m in (await ok(running, "GET", MEMBERS))["items"]}
    assert found == {
        "alice@example.net": {"address": "alice@example.net", "name": "Alice",
                              "subscribed": False, "vars": {"age": 30}},  # the form's default
        "bob@example.net": {"address": "bob@example.net", "name": "", "subscribed": True,
                            "vars": {}},
        "dan@example.net": {"address": "dan@example.net", "name": "Dan", "subscribed": False,
                            "vars": {}},
    }


async def test_a_csv_without_an_address_column_is_a_400_and_writes_nothing(running: Running):
    await make_list(running)
    for text, message in [
        ("email,name\na@example.net,A\n", "'members': the CSV header row has no 'address' column"),
        ("", "'members': the CSV file is empty: expected a header row with 'address'"),
    ]:
        assert await call(running, "POST", f"{MEMBERS}.csv", data=csv_upload(text)) == (
            400, {"message": message})
    assert await call(running, "POST", f"{MEMBERS}.csv", data={"upsert": "yes"}) == (
        400, {"message": "'members' file is missing (a CSV file with an 'address' column)"})
    assert (await ok(running, "GET", ONE))["list"]["members_count"] == 0


async def test_a_csv_upload_longer_than_a_chunk_is_written_whole(start_server):
    running = await start_server(lists__upload_chunk=7)
    await make_list(running)
    rows = "".join(f"m{n:03}@example.net,Member {n}\n" for n in range(50))
    body = await ok(running, "POST", f"{MEMBERS}.csv", data=csv_upload("address,name\n" + rows))
    assert (body["upserted-count"], body["failed-count"], body["list"]["members_count"]) == (
        50, 0, 50)
    again = await ok(running, "POST", f"{MEMBERS}.csv",
                     data=csv_upload("address,name\n" + rows, upsert="yes"))
    assert (again["upserted-count"], again["list"]["members_count"]) == (50, 50)
    store = running.services.store
    uploaded = await storeview.events(store, "list_member_uploaded")
    assert len(uploaded) == 100
    assert [e["upserted-count"] for e in await storeview.events(store, "list_uploaded")] == [50, 50]


async def test_a_full_list_refuses_new_members_and_keeps_updating_existing_ones(start_server):
    running = await start_server(lists__max_members=3)
    await make_list(running)
    await add(running, "a@example.net")
    members = json.dumps(["a@example.net", "b@example.net", "c@example.net", "d@example.net"])
    body = await ok(running, "POST", f"{MEMBERS}.json", data={"members": members, "upsert": "yes"})
    assert (body["upserted-count"], body["failed-count"]) == (3, 1)
    assert body["errors"] == [{"row": 4, "entry": "d@example.net",
                               "message": f"Mailing list {LIST} may have at most 3 members"}]
    assert body["list"]["members_count"] == 3


async def test_upload_events_are_in_the_events_api(running: Running):
    await make_list(running)
    for name in (*CURRENT_NAMES, *LEGACY_NAMES):  # none of them fires for upload events
        await ok(running, "POST", f"/v3/domains/{DOMAIN}/webhooks",
                 data={"id": name, "url": "http://127.0.0.1:9/hook"})
    members = json.dumps(["alice@example.net", {"address": "Bob <bob@example.net>",
                                                "subscribed": "no"}, "broken"])
    body = await ok(running, "POST", f"{MEMBERS}.json", data={"members": members, "upsert": "yes"})
    task = body["task-id"]
    events = f"/v3/{DOMAIN}/events"

    [done] = (await ok(running, "GET", events, params={"event": "list_uploaded"}))["items"]
    assert done | {"id": None, "timestamp": None, "mailing-list": None} == {
        "id": None, "timestamp": None, "event": "list_uploaded", "log-level": "info",
        "mailing-list": None, "task-id": task, "format": "json", "is-upsert": True,
        "upserted-count": 2, "failed-count": 1,
    }
    assert done["mailing-list"]["address"] == LIST
    uploaded = (await ok(running, "GET", events,
                         params={"event": "list_member_uploaded", "ascending": "yes"}))["items"]
    assert [(e["member"], e["task-id"], e["format"]) for e in uploaded] == [
        ({"address": "alice@example.net", "name": "", "subscribed": True}, task, "json"),
        ({"address": "bob@example.net", "name": "Bob", "subscribed": False}, task, "json"),
    ]
    [error] = (await ok(running, "GET", events,
                        params={"event": "list_member_upload_error"}))["items"]
    assert (error["log-level"], error["member-description"], error["error"], error["task-id"]) == (
        "warn", "broken", {"message": "'address' parameter is not a valid email address"}, task)
    by_list = await ok(running, "GET", events, params={"list": LIST})
    assert len(by_list["items"]) == 4
    for item in by_list["items"]:  # the model reads back what it wrote
        assert Event.from_payload(item).payload() == item
    # not counted in the domain's stats, and no webhook fires for them
    stats = await ok(running, "GET", f"/v3/{DOMAIN}/stats/total",
                     params=[("event", "accepted"), ("event", "delivered"), ("duration", "1d")])
    assert all(s["accepted"]["total"] == 0 for s in stats["stats"])
    store = running.services.store
    assert await storeview.count(store, "jobs", "WHERE kind LIKE 'webhook%'") == 0


async def test_hostile_input_gets_a_4xx_never_a_500(running: Running):
    await make_list(running)
    await add(running, "a@example.net")
    deep = json.dumps({"address": "b@example.net", "vars": {"v": 10**30}})
    for method, path, params, data in [
        ("GET", f"{MEMBERS}/%00", (), None),
        ("DELETE", f"{MEMBERS}/%00", (), None),
        ("PUT", f"{MEMBERS}/%00", (), {"name": "x"}),
        ("GET", f"{MEMBERS}/%ED%A0%80", (), None),
        ("GET", "/v3/lists/%00", (), None),
        ("GET", "/v3/lists/%00/members", (), None),
        ("GET", f"{MEMBERS}/pages", {"page": "next", "address": "\0"}, None),
        ("GET", "/v3/lists/pages", {"page": "next", "address": "\0"}, None),
        ("GET", MEMBERS, {"address": "\0"}, None),
        ("POST", MEMBERS, (), {"address": "a\0@example.net"}),
        ("PUT", f"{MEMBERS}/a@example.net", (), {"name": "\0"}),
        ("PUT", ONE, (), {"description": "\0"}),
        ("POST", f"{MEMBERS}.json", (), {"members": f"[{deep}]"}),
        ("POST", f"{MEMBERS}.json", (), {"members": '[{"address": "c@example.net", "name": "\\u0000"}]'}),
        ("POST", f"{MEMBERS}.json", (), {"members": '[{"address": ["x"], "name": 5, "subscribed": [] }]'}),
        ("POST", f"{MEMBERS}.json", (), {"members": '["' + "x" * 200_000 + '"]'}),
        ("POST", f"{MEMBERS}.csv", (), {"members": 'address\n"' + "x" * 200_000 + '"\n'}),
        ("POST", f"{MEMBERS}.csv", (), {"members": "address,name\nc@example.net,a\0b\n"}),
        ("POST", f"{MEMBERS}.csv", (), csv_upload(b"address,name\n\xff\xfe@example.net,\xff\n")),
    ]:
        status, body = await call(running, method, path, params, data)
        assert status < 500 and isinstance(body, dict), (method, path, params, data, body)
    found = [m["address"] for m in (await ok(running, "GET", MEMBERS))["items"]]
    assert found == ["a@example.net"]


# -- official SDKs --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_mailgun_python_manages_lists_and_members(running: Running):
    async with AsyncClient(auth=("api", running.key), api_url=running.url) as client:
        created = await client.lists.create(domain=DOMAIN, data={
            "address": LIST, "name": "Devs", "description": "Developers",
            "access_level": "readonly", "reply_preference": "list"})
        assert created.status_code == 200, created.text
        updated = await client.lists.put(domain=DOMAIN, address=LIST,
                                         data={"description": "All developers"})
        got = await client.lists.get(domain=DOMAIN, address=LIST)
        pages = await client.lists_pages.get(domain=DOMAIN)
        member = await client.lists_members.create(domain=DOMAIN, address=LIST, data={
            "subscribed": True, "address": "bar@example.net", "name": "Bob Bar",
            "description": "Developer", "vars": '{"age": 26}', "upsert": "yes"})
        bulk = await client.lists_members.create(domain=DOMAIN, address=LIST, multiple=True, data={
            "upsert": True,
            "members": '[{"address": "Alice <alice@example.net>", "vars": {"age": 26}},'
                       '{"name": "Bob1", "address": "bob2@example.net", "vars": {"age": 34}}]'})
        changed = await client.lists_members.put(
            domain=DOMAIN, address=LIST, member_address="bar@example.net",
            data={"subscribed": False, "name": "Bob Bar 2", "vars": '{"age": 28}'})
        one = await client.lists_members.get(domain=DOMAIN, address=LIST,
                                             member_address="bar@example.net")
        listed = await client.lists_members.get(domain=DOMAIN, address=LIST)
        paged = await client.lists_members_pages.get(domain=DOMAIN, address=LIST,
                                                     filters={"limit": 2})
        removed = await client.lists_members.delete(domain=DOMAIN, address=LIST,
                                                    member_address="bar@example.net")
        deleted = await client.lists.delete(domain=DOMAIN, address=LIST)
    assert updated.json()["list"]["description"] == "All developers"
    assert got.json()["list"]["name"] == "Devs"
    assert [item["address"] for item in pages.json()["items"]] == [LIST]
    assert member.json()["member"] == {"address": "bar@example.net", "name": "Bob Bar",
                                       "subscribed": True, "vars": {"age": 26}}
    assert (bulk.json()["message"], bulk.json()["upserted-count"]) == (
        "Mailing list has been updated", 2)
    assert changed.json()["member"]["subscribed"] is False
    assert one.json()["member"] == {"address": "bar@example.net", "name": "Bob Bar 2",
                                    "subscribed": False, "vars": {"age": 28}}
    assert listed.json()["total_count"] == 3
    assert [m["address"] for m in paged.json()["items"]] == ["alice@example.net", "bar@example.net"]
    assert removed.json()["message"] == "Mailing list member has been deleted"
    assert deleted.json() == {"message": "Mailing list has been deleted", "address": LIST}


async def test_mailgun_js_manages_lists_and_members(running: Running):
    created = await mailgun_js.call(running, "createList", {
        "address": LIST, "name": "Devs", "description": "Developers", "access_level": "readonly"})
    assert (created["address"], created["members_count"]) == (LIST, 0)
    assert (await mailgun_js.call(running, "getList", LIST))["description"] == "Developers"
    updated = await mailgun_js.call(running, "updateList",
                                    {"address": LIST, "data": {"name": "Developers"}})
    assert updated["name"] == "Developers"
    await make_list(running, f"zz@{DOMAIN}")
    listed = await mailgun_js.call(running, "listLists", {"limit": 1})
    assert [item["address"] for item in listed["items"]] == [LIST]
    assert listed["pages"]["next"]["iteratorPosition"] == LIST
    following = await mailgun_js.call(running, "listLists", {"page": listed["pages"]["next"]["page"]})
    assert [item["address"] for item in following["items"]] == [f"zz@{DOMAIN}"]
    by_address = await mailgun_js.call(running, "listListsByAddress", {"address": LIST})
    assert (by_address["total_count"], by_address["items"][0]["address"]) == (1, LIST)

    member = await mailgun_js.call(running, "createMember", {"list": LIST, "data": {
        "address": "bob@example.net", "name": "Bob", "vars": {"age": 26}, "subscribed": True,
        "upsert": "yes"}})
    assert member == {"address": "bob@example.net", "name": "Bob", "subscribed": True,
                      "vars": {"age": 26}}
    bulk = await mailgun_js.call(running, "createMembers", {"list": LIST, "data": {
        "members": [{"address": "alice@example.net", "name": "Alice", "vars": {"a": 1},
                     "subscribed": True}, {"address": "carol@example.net", "subscribed": False}],
        "upsert": "yes"}})
    assert (bulk["message"], bulk["list"]["members_count"], bulk["upserted-count"]) == (
        "Mailing list has been updated", 3, 2)
    assert len(bulk["task-id"]) == 32
    uploaded = await mailgun_js.call(running, "uploadMembers", {
        "list": LIST, "csv": "address,name\ndan@example.net,Dan\n", "subscribed": False,
        "upsert": True})
    assert (uploaded["message"], uploaded["list"]["members_count"]) == (
        "Mailing list upload started", 4)
    changed = await mailgun_js.call(running, "updateMember", {
        "list": LIST, "address": "bob@example.net", "data": {"subscribed": False, "name": "Rob"}})
    assert (changed["name"], changed["subscribed"], changed["vars"]) == ("Rob", False, {"age": 26})
    assert (await mailgun_js.call(running, "getMember",
                                  {"list": LIST, "address": "dan@example.net"}))["subscribed"] is False
    paged = await mailgun_js.call(running, "listMembers", {"list": LIST, "query": {"limit": 2}})
    assert [m["address"] for m in paged["items"]] == ["alice@example.net", "bob@example.net"]
    following = await mailgun_js.call(running, "listMembers", {
        "list": LIST, "query": {"page": paged["pages"]["next"]["page"]}})
    assert [m["address"] for m in following["items"]] == ["carol@example.net", "dan@example.net"]
    subscribed = await mailgun_js.call(running, "listMembersByAddress",
                                       {"list": LIST, "query": {"subscribed": True}})
    assert (subscribed["total_count"], subscribed["items"][0]["address"]) == (
        1, "alice@example.net")
    assert await mailgun_js.call(running, "destroyMember",
                                 {"list": LIST, "address": "bob@example.net"}) == {
        "member": {"address": "bob@example.net"},
        "message": "Mailing list member has been deleted"}
    assert await mailgun_js.call(running, "destroyList", LIST) == {
        "message": "Mailing list has been deleted", "address": LIST}
