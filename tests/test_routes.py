"""Routes (mailgun-api.md §6.1, §6.3): the /v3/routes API on a real server, the expression and
action parser (never eval'd), and the evaluator (priority, stop, catch_all, captures, headers)
on a real store, including the time limit every match runs under (a pattern that backtracks
catastrophically is cut short) and the bound on what a pattern may compile to."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import aiohttp
import orjson
import pytest

from mta.config import Config
from mta.inbound.expressions import (
    MAX_PATTERN_SIZE,
    ActionError,
    ExpressionError,
    MatchInput,
    OutOfTime,
    check_references,
    matching_clock,
    parse_action,
    parse_expression,
    timed_match,
)
from mta.inbound.routes import Action, MatchingTime, Routes, RoutesOutOfTime
from mta.store import Statement, Store, open_store
from tests.conftest import DOMAIN, Running

RFC2822_GMT = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")

# every filter example of the manuals (the newer one's `"(.*@bar.com"` is a typo for this one)
MANUAL_EXPRESSIONS = [
    'match_recipient("foo@bar.com")',
    'match_recipient(".*@bar.com")',
    'match_recipient("^chris\\+(.*)@example.com$")',
    'match_recipient("(.*)@bar.com")',
    'match_recipient("(?P<user>.*?)@(?P<domain>.*)")',
    'match_header("subject", ".*support")',
    "match_header('subject', '(.*) (urgent|help|asap) (.*)')",
    "match_header('subject', '(.*)(urgent|help|asap)(.*)')",
    "match_header('X-Mailgun-Sflag', 'Yes')",
    "match_recipient('^(.*)@example.com$') and \n"
    'match_header("Content-Language", "^(.*)en-US(.*)$")',
    "catch_all()",
    "catchall()",
    'match_recipient(".*@samples.mailgun.org")',
]
MANUAL_ACTIONS = [
    'forward("http://myhost.com/messages/")',
    "stop()",
    'forward("mailbox@myapp.com")',
    'forward("http://myapp.com/messages")',
    'forward("http://myapp.com/messages, mailbox@myapp.com")',
    'store(notify="http://mydomain.com/callback")',
    "store()",
]


async def call(
    api: aiohttp.ClientSession, method: str, path: str, data: Any = None
) -> tuple[int, Any]:
    async with api.request(method, path, data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def create(api: aiohttp.ClientSession, expression: str, *actions: str, **fields: Any) -> Any:
    data = [("expression", expression), *(("action", a) for a in actions)]
    data += [(k, str(v)) for k, v in fields.items()]
    status, body = await call(api, "POST", "/v3/routes", data)
    assert status == 200, body
    return body["route"]


# -- the API ------------------------------------------------------------------------------------


async def test_created_route_has_mailguns_shape_and_can_be_read_back(api: aiohttp.ClientSession):
    form = aiohttp.FormData()  # multipart, as mailgun.js sends it
    form.add_field("priority", "0")
    form.add_field("description", "Sample route")
    form.add_field("expression", f'match_recipient(".*@{DOMAIN}")')
    form.add_field("action", 'forward("http://myhost.com/messages/")')
    form.add_field("action", "stop()")
    status, body = await call(api, "POST", "/v3/routes", form)
    assert status == 200, body
    assert body["message"] == "Route has been created"
    route = body["route"]
    assert re.fullmatch(r"[0-9a-f]{24}", route["id"])
    assert RFC2822_GMT.fullmatch(route["created_at"])
    assert route == {
        "id": route["id"],
        "priority": 0,
        "description": "Sample route",
        "expression": f'match_recipient(".*@{DOMAIN}")',
        "actions": ['forward("http://myhost.com/messages/")', "stop()"],
        "created_at": route["created_at"],
    }
    assert await call(api, "GET", f"/v3/routes/{route['id']}") == (200, {"route": route})
    assert await call(api, "GET", "/v3/routes") == (200, {"total_count": 1, "items": [route]})
    assert (await call(api, "GET", f"/v3/routes/{route['id']}/"))[0] == 200


async def test_priority_defaults_to_0_and_description_to_empty(api: aiohttp.ClientSession):
    route = await create(api, "catch_all()", "store()")
    assert (route["priority"], route["description"]) == (0, "")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([("action", "stop()")], "expression parameter is missing"),
        ([("expression", "  "), ("action", "stop()")], "expression parameter is missing"),
        ([("expression", "catch_all()")], "action parameter is missing"),
        ([("expression", "catch_all()"), ("action", "")], "action parameter is missing"),
        (
            [("expression", "catch_all()"), ("action", "stop()"), ("priority", "high")],
            "'priority' must be an integer, got 'high'",
        ),
    ],
)
async def test_create_refuses_missing_or_bad_fields(
    api: aiohttp.ClientSession, data: list[tuple[str, str]], message: str
):
    assert await call(api, "POST", "/v3/routes", data) == (400, {"message": message})
    assert (await call(api, "GET", "/v3/routes"))[1]["total_count"] == 0


@pytest.mark.parametrize(
    ("expression", "action", "words"),
    [
        ('match_recipient("a@b.c"', "stop()", ["Invalid expression", "position 24", "end of the"]),
        ('match_recipent("a@b.c")', "stop()", ["unknown filter 'match_recipent'", "position 1"]),
        (
            'match_recipient("(.*@bar.com")',
            "stop()",
            ["not a valid regular expression", "missing )"],
        ),
        (
            'match_recipient("((a{99}){99}){99}")',
            "stop()",
            ["'((a{99}){99}){99}' repeats too much", "the limit is 10000"],
        ),
        ('match_recipient("a@b.c") and', "stop()", ["expected a filter", "end of the expression"]),
        ('match_recipient("a@b.c")', 'forward("not a destination")', ["Invalid action", "neither"]),
        ('match_recipient("a@b.c")', "forward(http://x.y)", ["expected a quoted string", "'http'"]),
        ('match_recipient("a@b.c")', "bounce()", ["unknown action 'bounce'"]),
        ('match_recipient("(a)@b.c")', 'forward("http://x.y/\\2")', ["\\2 refers to group 2"]),
    ],
)
async def test_malformed_expressions_and_actions_are_refused_naming_the_problem(
    api: aiohttp.ClientSession, expression: str, action: str, words: list[str]
):
    status, body = await call(
        api, "POST", "/v3/routes", [("expression", expression), ("action", action)]
    )
    assert status == 400, body
    for word in words:
        assert word in body["message"], body


async def test_list_is_in_priority_then_creation_order_and_paged_with_skip_limit(
    api: aiohttp.ClientSession,
):
    ids = {}
    for name, priority in [("c", 5), ("a", 1), ("d", 5), ("b", 2), ("e", 9)]:
        ids[name] = (await create(api, "catch_all()", "stop()", priority=priority))["id"]
    status, body = await call(api, "GET", "/v3/routes")
    assert status == 200
    assert body["total_count"] == 5
    assert [r["id"] for r in body["items"]] == [ids[n] for n in "abcde"]
    status, body = await call(api, "GET", "/v3/routes?skip=1&limit=2")
    assert (status, body["total_count"]) == (200, 5)
    assert [r["id"] for r in body["items"]] == [ids["b"], ids["c"]]
    assert (await call(api, "GET", "/v3/routes?skip=5"))[1] == {"total_count": 5, "items": []}
    status, body = await call(api, "GET", "/v3/routes?limit=-1")
    assert status == 400 and "'limit'" in body["message"]


async def test_put_changes_only_the_given_fields_and_action_replaces_all(
    api: aiohttp.ClientSession,
):
    route = await create(
        api,
        'match_recipient("a@x.example")',
        'forward("http://h.example/1")',
        "stop()",
        description="first",
    )
    path = f"/v3/routes/{route['id']}"
    status, body = await call(api, "PUT", path, {"priority": "7"})
    assert status == 200, body
    assert body == {**route, "priority": 7, "message": "Route has been updated"}

    status, body = await call(api, "PUT", path, [("action", "store()")])
    assert status == 200 and body["actions"] == ["store()"]
    status, body = await call(
        api, "PUT", path, {"expression": "catch_all()", "description": "second"}
    )
    assert status == 200
    assert (body["expression"], body["description"], body["actions"]) == (
        "catch_all()",
        "second",
        ["store()"],
    )
    assert (await call(api, "GET", path))[1]["route"] == {
        k: v for k, v in body.items() if k != "message"
    }


async def test_put_refuses_a_bad_expression_and_keeps_the_route(api: aiohttp.ClientSession):
    route = await create(
        api, 'match_recipient("(?P<u>.*)@x.example")', 'forward("http://h/\\g<u>")'
    )
    path = f"/v3/routes/{route['id']}"
    status, body = await call(api, "PUT", path, {"expression": "match_recipient(x)"})
    assert status == 400 and "expected a quoted string" in body["message"]
    # the new expression lacks the group the kept action refers to
    status, body = await call(api, "PUT", path, {"expression": 'match_recipient(".*")'})
    assert status == 400 and "\\g<u> refers to a named group" in body["message"]
    assert (await call(api, "GET", path))[1] == {"route": route}


async def test_delete_then_everything_about_it_is_404(api: aiohttp.ClientSession):
    route = await create(api, "catch_all()", "stop()")
    path = f"/v3/routes/{route['id']}"
    assert await call(api, "DELETE", path) == (
        200,
        {"message": "Route has been deleted", "id": route["id"]},
    )
    not_found = (404, {"message": "Route not found"})
    assert await call(api, "GET", path) == not_found
    assert await call(api, "PUT", path, {"priority": "1"}) == not_found
    assert await call(api, "DELETE", path) == not_found
    assert await call(api, "GET", "/v3/routes/000000000000000000000000") == not_found


async def test_match_endpoint_answers_the_first_route_that_would_run(api: aiohttp.ClientSession):
    sales = await create(api, f'match_recipient("sales@{DOMAIN}")', "stop()", priority=1)
    everyone = await create(api, f'match_recipient(".*@{DOMAIN}")', "store()", priority=2)
    status, body = await call(api, "GET", f"/v3/routes/match?address=sales@{DOMAIN}")
    assert (status, body) == (200, {"route": sales})
    status, body = await call(api, "GET", f"/v3/routes/match?address=bob@{DOMAIN}")
    assert (status, body) == (200, {"route": everyone})
    assert await call(api, "GET", "/v3/routes/match?address=bob@elsewhere.example") == (
        404,
        {"message": "Route not found"},
    )
    fallback = await create(api, "catch_all()", "store()", priority=3)
    status, body = await call(api, "GET", "/v3/routes/match?address=bob@elsewhere.example")
    assert (status, body) == (200, {"route": fallback})
    assert await call(api, "GET", "/v3/routes/match") == (
        400,
        {"message": "address parameter is missing"},
    )


async def test_a_sending_key_cannot_reach_the_routes_api(running: Running):
    _, sending_key = await running.services.keys.create(domain=DOMAIN)
    route = await running.services.routes.create(0, "", "catch_all()", ["stop()"])
    async with running.session(sending_key) as api:
        for method, path, data in [
            ("GET", "/v3/routes", None),
            ("POST", "/v3/routes", {"expression": "catch_all()", "action": "stop()"}),
            ("GET", f"/v3/routes/{route.id}", None),
            ("PUT", f"/v3/routes/{route.id}", {"priority": "3"}),
            ("DELETE", f"/v3/routes/{route.id}", None),
            ("GET", "/v3/routes/match?address=a@b.example", None),
        ]:
            async with api.request(method, path, data=data) as resp:
                assert (resp.status, await resp.text()) == (401, "Forbidden"), (method, path)
    assert await running.services.routes.get(route.id) == route
    assert (await running.services.routes.list())[0] == 1


async def test_routes_written_by_another_process_are_seen(running: Running, api):
    other = await open_store(running.services.config)  # the CLI's or another node's store
    try:
        await other.write(Statement(
            "INSERT INTO routes (id, priority, description, expression, actions, created_at)"
            " VALUES (?, 3, 'cli', 'catch_all()', ?, ?)",
            [("ab" * 12, orjson.dumps(["store()"]), time.time())],
        ))
    finally:
        await other.close()
    deadline = time.monotonic() + 2  # re-read every 50 ms (SQLite), pushed by NOTIFY (PostgreSQL)
    while True:
        status, body = await call(api, "GET", "/v3/routes")
        assert status == 200
        if [r["id"] for r in body["items"]] == ["ab" * 12] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert [r["id"] for r in body["items"]] == ["ab" * 12]


# -- the parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", MANUAL_EXPRESSIONS)
def test_every_expression_of_the_manuals_parses(expression: str):
    parsed = parse_expression(expression)
    assert parsed.source == expression.strip()


@pytest.mark.parametrize("action", MANUAL_ACTIONS)
def test_every_action_of_the_manuals_parses(action: str):
    assert parse_action(action).source == action


def test_the_manuals_capture_actions_parse_and_refer_to_existing_groups():
    for expression, action in [
        ('match_recipient("(.*)@bar.com")', 'forward("http://myhost.com/post/?mailbox=\\1")'),
        (
            'match_recipient("(?P<user>.*?)@(?P<domain>.*)")',
            'forward("http://mycallback.com/domains/\\g<domain>/users/\\g<user>")',
        ),
    ]:
        check_references(parse_expression(expression), [parse_action(action)])


def test_pattern_backslashes_are_kept_for_the_regex_and_quotes_can_be_escaped():
    parsed = parse_expression('match_recipient("^chris\\+(.*)@example.com$")')
    assert parsed.terms[0].pattern == "^chris\\+(.*)@example.com$"
    parsed = parse_expression("match_header('subject', 'it\\'s \"here\"')")
    assert parsed.terms[0].pattern == 'it\\\'s "here"'
    assert parsed.terms[0].compiled.match('it\'s "here"')


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("", ["it is empty"]),
        ("match_recipient", ["expected '('", "position 16", "end of the expression"]),
        ('match_recipient("a")  or', ["expected a filter", "position 25"]),
        ('match_recipient("a") xor catch_all()', ["expected 'and', 'or'", "found 'xor'"]),
        ('match_recipient("a', ["unterminated string starting at position 17"]),
        ('(match_recipient("a")', ["expected ')'", "position 22"]),
        ('match_recipient("a"))', ["found ')'", "position 21"]),
        ('match_recipient("a", "b")', ["match_recipient", "takes 1 argument, got 2"]),
        ('match_header("subject")', ["takes 2 arguments, got 1"]),
        ('catch_all("x")', ["catch_all", "takes 0 arguments"]),
        ('match_header("sub ject", "x")', ["'sub ject'", "not a header name"]),
        ('match_recipient(pattern="x")', ["takes no named arguments"]),
        ('__import__("os")', ["unknown filter '__import__'"]),
        ('match_recipient("a") and os.system("x")', ["unknown filter 'os'"]),
        ('match_recipient("a"); catch_all()', ["expected 'and', 'or'", "position 21, found ';'"]),
        ('match_recipient("[a-")', ["'[a-' is not a valid regular expression"]),
        ('match_recipient("x" * 9)', ["expected ',' or ')' at position 21, found '*'"]),
        ("(" * 20 + "catch_all()" + ")" * 20, ["nested more than 16 deep"]),
        ('match_recipient("' + "a" * 1001 + '")', ["1001 characters long; the limit is 1000"]),
        (" or ".join(["catch_all()"] * 33), ["more than 32 filters"]),
    ],
)
def test_malformed_expressions_are_refused_with_what_was_expected(expression: str, words):
    with pytest.raises(ExpressionError) as refused:
        parse_expression(expression)
    for word in words:
        assert word in str(refused.value), str(refused.value)
    assert str(refused.value).startswith("Invalid expression")


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("", ["it is empty"]),
        ("forward()", ["forward needs a destination"]),
        ('forward(" , ")', ["forward needs a destination"]),
        ('forward("ftp://files.example/x")', ["'ftp://files.example/x' is not an http"]),
        ('forward("http://")', ["is not an http"]),
        ('forward("bob")', ["'bob' is neither an http(s) URL nor an email address"]),
        ('forward("a@b.example, nobody")', ["'nobody' is neither"]),
        ('store(notify="mailto:a@b.example")', ["is not an http"]),
        ('store(url="http://a.example")', ['store takes nothing or notify="URL"']),
        ('stop("now")', ["stop() takes no arguments"]),
        ("stop() and stop()", ["expected the end of the action", "position 8"]),
        ("forward('http://a.example/\\g<1x>')", ["bad group reference"]),
        ('exec("x")', ["unknown action 'exec'"]),
        ('forward("http://a.example"', ["expected ',' or ')'"]),
    ],
)
def test_malformed_actions_are_refused_naming_the_problem(action: str, words: list[str]):
    with pytest.raises(ActionError) as refused:
        parse_action(action)
    for word in words:
        assert word in str(refused.value), str(refused.value)


def test_forward_takes_urls_and_addresses_separated_by_commas_and_store_a_notify_url():
    action = parse_action('forward("http://myapp.com/messages, mailbox@myapp.com")')
    assert action.render(None) == Action(
        "forward", ("http://myapp.com/messages", "mailbox@myapp.com")
    )
    assert parse_action("store(notify='https://a.example/n')").render(None) == Action(
        "store", notify="https://a.example/n"
    )
    assert parse_action("store()").render(None) == Action("store")
    assert parse_action("STOP( )").render(None) == Action("stop")


# -- evaluation -----------------------------------------------------------------------------------


@pytest.fixture
async def routes(store: Store) -> Routes:
    return Routes(store, Config())


async def add(routes: Routes, expression: str, *actions: str, priority: int = 0) -> str:
    return (await routes.create(priority, "", expression, list(actions))).id


async def ran(routes: Routes, recipient: str, headers=()) -> list[str]:
    return [m.route.id for m in await routes.evaluate(recipient, headers)]


async def test_all_matching_routes_run_in_priority_order_ties_in_creation_order(routes: Routes):
    low = await add(routes, 'match_recipient(".*")', "store()", priority=5)
    first = await add(routes, 'match_recipient("bob@")', "store()", priority=1)
    tie_a = await add(routes, 'match_recipient("b")', "store()", priority=3)
    tie_b = await add(routes, 'match_recipient(".*@x")', "store()", priority=3)
    await add(routes, 'match_recipient("alice@")', "store()", priority=0)
    assert await ran(routes, "bob@x.example") == [first, tie_a, tie_b, low]


async def test_stop_ends_the_waterfall_after_its_route(routes: Routes):
    await add(
        routes,
        'match_recipient("sales@")',
        'forward("http://a.example/sales")',
        "stop()",
        priority=1,
    )
    everyone = await add(routes, 'match_recipient(".*")', "store()", priority=2)
    [match] = await routes.evaluate("sales@x.example", [])
    assert match.actions == (Action("forward", ("http://a.example/sales",)), Action("stop"))
    assert await ran(routes, "other@x.example") == [everyone]


async def test_catch_all_matches_only_when_no_earlier_route_did(routes: Routes):
    sales = await add(routes, 'match_recipient("sales@")', "store()", priority=1)
    fallback = await add(routes, "catch_all()", "store()", priority=10)
    after = await add(routes, 'match_recipient(".*@x.example")', "store()", priority=20)
    assert await ran(routes, "sales@x.example") == [sales, after]
    assert await ran(routes, "bob@x.example") == [fallback, after]
    assert await ran(routes, "bob@y.example") == [fallback]


async def test_recipient_matching_ignores_case_and_is_anchored_at_the_start_only(routes: Routes):
    route = await add(routes, 'match_recipient("Sales@X.example")', "store()")
    assert await ran(routes, "sales@x.EXAMPLE") == [route]
    assert await ran(routes, "sales@x.example.org") == [route]  # re.match: add $ to end it
    assert await ran(routes, "big-sales@x.example") == []


async def test_headers_match_by_any_value_with_the_name_in_any_case(routes: Routes):
    route = await add(routes, "match_header('x-mailgun-sflag', 'Yes')", "store()")
    assert await ran(routes, "a@x.example", [("X-Mailgun-SFLAG", "Yes")]) == [route]
    assert await ran(routes, "a@x.example", [("X-Mailgun-Sflag", "yes")]) == []  # value: case
    assert await ran(routes, "a@x.example", [("Received", "Yes")]) == []
    received = await add(routes, 'match_header("received", "from mx2")', "store()")
    headers = [("Received", "from mx1 by a"), ("RECEIVED", "from mx2 by b")]
    assert await ran(routes, "a@x.example", headers) == [received]
    subject = await add(routes, 'match_header("Subject", "(?i).*support")', "store()")
    folded = [("Subject", "Need\r\n SUPPORT now")]
    assert await ran(routes, "a@x.example", folded) == [subject]


async def test_and_or_and_parentheses(routes: Routes):
    both = await add(
        routes,
        "match_recipient('^(.*)@example.com$') and\n"
        'match_header("Content-Language", "^(.*)en-US(.*)$")',
        "store()",
    )
    either = await add(
        routes, '(match_header("x-a", "1") or match_header("x-b", "1")) and catch_all()', "store()"
    )
    english = [("Content-Language", "fr, en-US")]
    assert await ran(routes, "bob@example.com", english) == [both]
    assert await ran(routes, "bob@example.com", [("Content-Language", "fr")]) == []
    assert await ran(routes, "bob@example.com", [("X-B", "1")]) == [either]
    assert await ran(routes, "bob@example.com", [("X-B", "1"), *english]) == [both]


async def test_captures_are_substituted_into_actions(routes: Routes):
    await add(
        routes, 'match_recipient("(.*)@bar.com")', 'forward("http://myhost.com/post/?mailbox=\\1")'
    )
    await add(
        routes,
        'match_recipient("(?P<user>.*?)@(?P<domain>.*)")',
        'forward("http://mycallback.com/domains/\\g<domain>/users/\\g<user>")',
        'forward("\\g<user>@archive.example")',
        'store(notify="http://n.example/\\g<2>")',
    )
    first, second = await routes.evaluate("chris+tag@bar.com", [])
    assert first.actions == (Action("forward", ("http://myhost.com/post/?mailbox=chris%2Btag",)),)
    assert second.actions == (
        Action("forward", ("http://mycallback.com/domains/bar.com/users/chris%2Btag",)),
        Action("forward", ("chris+tag@archive.example",)),
        Action("store", notify="http://n.example/bar.com"),
    )


async def test_captures_are_numbered_across_terms_and_unmatched_groups_are_empty(routes: Routes):
    await add(
        routes,
        'match_recipient("(.*)@(.*)") and match_header("subject", "#(\\d+)")',
        'forward("http://h.example/\\1/\\2/\\3")',
    )
    await add(
        routes,
        'match_header("x-a", "(?P<v>a.)") or match_header("x-b", "(?P<v>b.)")',
        'forward("http://h.example/v/\\g<v>/\\1/\\2")',
    )
    [match] = await routes.evaluate("bob@x.example", [("Subject", "#42 help")])
    assert match.actions[0].destinations == ("http://h.example/bob/x.example/42",)
    [match] = await routes.evaluate("bob@x.example", [("X-B", "b7")])
    assert match.actions[0].destinations == ("http://h.example/v/b7//b7",)


async def test_a_destination_spoilt_by_a_capture_is_dropped(routes: Routes):
    await add(
        routes,
        'match_header("subject", "(.*)")',
        'forward("\\1@x.example, ok@x.example")',
        "stop()",
    )
    [match] = await routes.evaluate("a@x.example", [("Subject", "two words")])
    assert match.actions == (Action("forward", ("ok@x.example",)), Action("stop"))


async def test_only_the_first_regex_input_bytes_are_matched(store: Store):
    config = Config()
    config.inbound.regex_input_bytes = 64
    routes = Routes(store, config)
    tail = await add(routes, 'match_recipient(".*z")', "store()")
    head = await add(routes, 'match_recipient("a+$")', "store()")
    assert await ran(routes, "a" * 100 + "z@x.example") == [head]
    assert await ran(routes, "a" * 10 + "z@x.example") == [tail]
    header = await add(routes, 'match_header("subject", ".*needle")', "store()")
    assert await ran(routes, "b@x", [("Subject", "h" * 70 + "needle")]) == []
    assert await ran(routes, "b@x", [("Subject", "é" * 25 + "needle")]) == [header]  # 56 B
    assert await ran(routes, "b@x", [("Subject", "é" * 30 + "needle")]) == []  # 66 bytes
    assert MatchInput("é" * 40, [], 64, matching_clock()).recipient == "é" * 32


async def test_at_most_max_routes_checked_are_evaluated(store: Store):
    config = Config()
    config.inbound.max_routes_checked = 2
    routes = Routes(store, config)
    ids = [await add(routes, 'match_recipient(".*")', "store()", priority=p) for p in range(3)]
    assert await ran(routes, "a@x.example") == ids[:2]
    assert (await routes.list())[0] == 3


async def test_changes_are_seen_by_every_instance_on_the_store(store: Store, routes: Routes):
    other = Routes(store, Config())
    route_id = await add(routes, 'match_recipient("a@")', "store()")
    assert await ran(other, "a@x.example") == [route_id]
    await other.update(route_id, expression='match_recipient("b@")')
    assert await ran(routes, "a@x.example") == []
    assert await ran(routes, "b@x.example") == [route_id]
    assert await other.delete(route_id)
    assert await routes.get(route_id) is None and not await routes.delete(route_id)


async def test_many_hostile_header_values_cannot_stall_the_evaluation(routes: Routes, caplog):
    # each value costs this pattern some ms to refuse (re took seconds): ~1 s for them all
    route = await add(routes, 'match_header("subject", "(a?){20}a{20}[ab]{900}$")', "store()")
    headers = [("Subject", "a" * 40 + "b" * 900 + "c")] * 500
    with caplog.at_level(logging.WARNING, "mta.inbound.routes"), pytest.raises(RoutesOutOfTime):
        await routes.evaluate("a@x.example", headers)
    assert f"matching time ran out at route {route}" in caplog.text


async def test_a_stored_route_that_no_longer_parses_is_skipped_not_fatal(
    store: Store, routes: Routes, caplog
):
    good = await add(routes, 'match_recipient(".*")', "store()", priority=2)
    await store.write(
        Statement(
            "INSERT INTO routes (id, priority, description, expression, actions, created_at)"
            " VALUES (?, 1, '', ?, ?, ?)",
            [("bad0" * 6, 'match_recipient("(a")', orjson.dumps(["store()"]), time.time())],
        )
    )
    with caplog.at_level(logging.ERROR, "mta.inbound.routes"):
        assert await ran(routes, "a@x.example") == [good]
    assert "route bad0bad0bad0bad0bad0bad0 is not evaluated" in caplog.text
    assert (await routes.list())[0] == 2


# -- regex safety ------------------------------------------------------------------------------

# patterns that backtrack catastrophically in the `regex` package too, with a text that makes
# them do so: matching any of them to the end would take longer than the universe has
RUNAWAY = [
    ("(a|aa)+$", "a" * 1000 + "!"),
    ("(.*?,){11}P", "1," * 500),
    ("^(([a-z])+.)+[A-Z]([a-z])+$", "a" * 1000 + "!"),
]


@pytest.mark.parametrize(("pattern", "text"), RUNAWAY)
def test_a_match_that_backtracks_catastrophically_is_cut_short_when_its_time_is_up(
    pattern: str, text: str
):
    term = parse_expression(f'match_header("subject", "{pattern}")').terms[0]
    with pytest.raises(OutOfTime):
        timed_match(term.compiled, text, matching_clock() + 0.01)


def test_no_match_is_started_once_the_time_is_spent():
    # regex takes a negative timeout for none at all: the time left must never be passed as one
    term = parse_expression('match_recipient(".*")').terms[0]
    assert timed_match(term.compiled, "a@x.example", matching_clock() + 1) is not None
    with pytest.raises(OutOfTime):
        timed_match(term.compiled, "a@x.example", matching_clock() - 1)


@pytest.mark.parametrize(
    "pattern",
    [
        "((a{99}){99}){99}",  # ~1e6 items: regex takes gigabytes for ((a{999}){999}){999}
        "(?:a{1000}){1000}",
        "(?:(?:[ab]{100}){100})+",
        "a{10000}",
        "(?:x{e<=1}|y{10}){1000}",  # read by regex only (fuzzy): bounded without a parse
    ],
)
def test_patterns_that_would_compile_too_big_are_refused(pattern: str):
    with pytest.raises(ExpressionError) as refused:
        parse_expression(f'match_header("subject", "{pattern}")')
    assert f"{pattern!r} repeats too much" in str(refused.value)
    assert f"the limit is {MAX_PATTERN_SIZE}" in str(refused.value)


@pytest.mark.parametrize(
    "pattern",
    [
        "(a?){20}a{20}[ab]{900}$",
        "(a+)+$",  # backtracks catastrophically, but every match has a time limit
        "[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$",
        "\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}",
        "(?:[a-z0-9-]{1,63}\\.){1,10}[a-z]{2,63}$",
        "a{5000}",
        ".{0,100000}x",
    ],
)
def test_patterns_of_a_sensible_size_are_admitted_however_they_backtrack(pattern: str):
    assert parse_expression(f'match_header("subject", "{pattern}")').terms[0].pattern == pattern


async def test_patterns_regex_reads_unlike_re_are_matched_as_regex_reads_them(routes: Routes):
    # re takes '{e<=1}' for literal text and ends '[a[:digit:]]' at its first ']': a literal
    # pre-test built from re's reading would wrongly skip these matches
    posix = await add(routes, 'match_header("x-a", "[a[:digit:]]x")', "store()")
    fuzzy = await add(routes, 'match_header("x-b", "(?:support){e<=1}")', "store()")
    unicode = await add(routes, 'match_header("x-c", "\\p{Lu}+ ok")', "store()")
    assert await ran(routes, "a@x.example", [("X-A", "5x")]) == [posix]
    assert await ran(routes, "a@x.example", [("X-A", "a]x")]) == []
    assert await ran(routes, "a@x.example", [("X-B", "suport")]) == [fuzzy]
    assert await ran(routes, "a@x.example", [("X-C", "ÉTÉ ok")]) == [unicode]


async def test_a_route_whose_match_runs_out_of_time_stops_the_evaluation_there(
    routes: Routes, caplog
):
    before = await add(routes, 'match_recipient(".*")', "store()", priority=1)
    runaway = await add(routes, 'match_header("subject", "(a|aa)+$")', "store()", priority=2)
    await add(routes, "catch_all()", "store()", priority=3)
    after = await add(routes, 'match_recipient("a@")', "store()", priority=4)
    with caplog.at_level(logging.WARNING, "mta.inbound.routes"):
        assert await ran(routes, "a@x.example", [("Subject", "a" * 1000 + "!")]) == [before]
    assert f"matching time ran out at route {runaway} (priority 2)" in caplog.text
    assert "1 route(s) matched before" in caplog.text
    assert await ran(routes, "a@x.example", [("Subject", "aaaa")]) == [before, runaway, after]


async def test_a_recipient_whose_message_has_no_time_left_is_told_to_come_back_later(
    routes: Routes, caplog
):
    route = await add(routes, 'match_recipient(".*")', "store()")
    with caplog.at_level(logging.WARNING, "mta.inbound.routes"), pytest.raises(RoutesOutOfTime):
        await routes.evaluate("b@x.example", [], MatchingTime(0.0))
    assert f"matching time ran out at route {route}" in caplog.text
    assert await ran(routes, "b@x.example") == [route]


async def test_a_messages_matching_time_is_spent_by_matching_not_by_waiting(routes: Routes):
    route = await add(routes, 'match_header("subject", "(a|aa)+$")', "store()")
    budget = MatchingTime(0.05)
    await asyncio.sleep(0.1)  # other sessions' turns on the loop cost this message nothing
    found = await routes.evaluate("b@x.example", [("Subject", "aaaa")], budget)
    assert [m.route.id for m in found] == [route]
    assert 0 < budget.left < 0.05
