"""The control panel's Routes, Webhooks and Mailing lists pages (issue 14), in a real browser:
what a person does there and what the server then holds, posts or shows."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from playwright.async_api import Locator, Page, expect

from tests.conftest import DOMAIN, Running
from tests.panel import page, screenshot, sign_in  # noqa: F401
from tests.test_panel import Browserless

pytestmark = pytest.mark.asyncio

HTML_NAME = "<b>Alice</b><script>window.hacked = 1</script>"


def cell(page: Page, text: str) -> Locator:  # noqa: F811
    return page.get_by_role("cell", name=text, exact=True)


def confirm_dialogs(page: Page) -> None:  # noqa: F811
    page.on("dialog", lambda dialog: dialog.accept())


# -- routes -------------------------------------------------------------------------------------


async def test_a_route_with_a_bad_expression_is_refused_with_the_apis_message_and_not_saved(
    running: Running, page: Page  # noqa: F811
):
    await sign_in(page, running)
    await page.goto(running.url + "/cp/routes")
    await page.get_by_label("Expression").fill('match_recipient("unclosed@')
    await page.get_by_label("Actions, one per line").fill("stop()")
    await page.get_by_role("button", name="Create route").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_be_visible()
    async with running.session() as api, api.post(
        "/v3/routes", data={"expression": 'match_recipient("unclosed@', "action": "stop()"}
    ) as resp:
        assert resp.status == 400
        api_message = (await resp.json())["message"]
    await expect(alert).to_have_text(api_message)
    # what was typed is still there to be corrected
    await expect(page.get_by_label("Expression")).to_have_value('match_recipient("unclosed@')
    await screenshot(page, "routes-refused")
    assert (await running.services.routes.list())[0] == 0


async def test_a_route_is_created_tested_against_recipients_and_deleted(
    running: Running, page: Page  # noqa: F811
):
    confirm_dialogs(page)
    await sign_in(page, running)
    await page.goto(running.url + "/cp/routes")
    await page.get_by_label("Priority").fill("5")
    await page.get_by_label("Description").fill("<b>support</b> desk")
    await page.get_by_label("Expression").fill(r'match_recipient("support-(.*)@mg.example.test")')
    await page.get_by_label("Actions, one per line").fill(
        'forward("https://app.example.com/inbound/\\1")\nstore(notify="https://app.example.com/n")'
        "\nstop()"
    )
    await page.get_by_role("button", name="Create route").click()
    await expect(page.get_by_role("status")).to_contain_text("created")
    await expect(cell(page, "<b>support</b> desk")).to_be_visible()
    total, [route] = await running.services.routes.list()
    assert total == 1 and route.priority == 5 and len(route.actions) == 3

    await page.get_by_label("Recipient").fill("support-billing@mg.example.test")
    await page.get_by_label("Subject (optional)").fill("Invoice")
    await page.get_by_role("button", name="Test", exact=True).click()
    result = page.get_by_role("region", name="Test result")
    await expect(result).to_contain_text("1 route(s) match")
    await expect(result).to_contain_text("forward to https://app.example.com/inbound/billing")
    await expect(result).to_contain_text("store, notify https://app.example.com/n")
    await screenshot(page, "routes-test-match")

    await page.get_by_label("Recipient").fill("sales@mg.example.test")
    await page.get_by_role("button", name="Test", exact=True).click()
    await expect(result).to_contain_text("No route matches")

    await page.get_by_role("button", name=f"Delete route {route.id}").click()
    await expect(page.get_by_role("status")).to_contain_text("deleted")
    await expect(cell(page, "No routes yet.")).to_be_visible()
    assert (await running.services.routes.list())[0] == 0


# -- webhooks -----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An application on 127.0.0.1 that keeps what is posted to it: (its URL, the posts)."""
    posts: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posts.append(orjson.loads(await request.read()))
        return web.Response(text="thanks")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/hook", posts
    await runner.cleanup()


async def test_a_webhook_url_is_set_and_its_test_post_arrives_signed_with_the_account_key(
    start_server: Callable[..., Any],
    receiver: tuple[str, list[dict[str, Any]]],
    page: Page,  # noqa: F811
):
    running = await start_server(webhooks__allow=["127.0.0.0/8"])
    hook_url, posts = receiver
    confirm_dialogs(page)
    await sign_in(page, running)
    await page.goto(running.url + "/cp/webhooks")
    await page.get_by_label("URLs for delivered").fill(hook_url)
    await page.get_by_role("button", name="Save delivered").click()
    await expect(page.get_by_role("status")).to_contain_text("Webhook delivered saved")
    assert await running.services.webhooks.list(DOMAIN) == {"delivered": [hook_url]}

    await page.get_by_role("button", name="Send a test delivered").click()
    await expect(page.get_by_role("status")).to_contain_text("HTTP 200 OK")
    await screenshot(page, "webhooks")
    [post] = posts
    signed = post["signature"]
    key = await running.services.account.signing_key()
    expected = hmac.new(key.encode(), f"{signed['timestamp']}{signed['token']}".encode(),
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, signed["signature"])
    assert post["event-data"]["event"] == "delivered"

    await page.get_by_role("button", name="Remove delivered").click()
    await expect(page.get_by_role("status")).to_contain_text("removed")
    assert await running.services.webhooks.list(DOMAIN) == {}


async def test_a_webhook_url_is_checked_as_the_api_checks_it(
    running: Running, page: Page  # noqa: F811
):
    await sign_in(page, running)
    await page.goto(f"{running.url}/cp/webhooks?domain={DOMAIN}")
    await page.get_by_label("URLs for opened").fill("ftp://files.example.com/x")
    await page.get_by_role("button", name="Save opened").click()
    await expect(page.locator("main")).to_contain_text("expected an http:// or https:// URL")
    await page.goto(f"{running.url}/cp/webhooks?domain={DOMAIN}")
    await page.get_by_label("URLs for opened").fill(
        "\n".join(f"https://app{i}.example.com/" for i in range(4))
    )
    await page.get_by_role("button", name="Save opened").click()
    await expect(page.locator("main")).to_contain_text("takes at most 3 URL(s)")
    assert await running.services.webhooks.list(DOMAIN) == {}


async def test_a_webhook_test_to_a_loopback_url_is_refused_by_the_runners_address_policy(
    running: Running,
    receiver: tuple[str, list[dict[str, Any]]],
    page: Page,  # noqa: F811
):
    hook_url, posts = receiver
    await sign_in(page, running)
    await page.goto(running.url + "/cp/webhooks")
    await page.get_by_label("URLs for clicked").fill(hook_url)
    await page.get_by_role("button", name="Save clicked").click()
    await page.get_by_role("button", name="Send a test clicked").click()
    await expect(page.get_by_role("status")).to_contain_text("webhooks.deny")
    assert posts == []


# -- mailing lists ------------------------------------------------------------------------------

CSV = (
    "address,name,vars,subscribed\n"
    "bob@example.com,Bob,\"{\"\"plan\"\": \"\"pro\"\"}\",yes\n"
    "odd/one?x#y@example.com,Odd,,no\n"
    "not an address,Nobody,,\n"
)


async def test_a_list_is_created_and_members_added_uploaded_unsubscribed_and_removed(
    running: Running, page: Page  # noqa: F811
):
    confirm_dialogs(page)
    await sign_in(page, running)
    await page.goto(running.url + "/cp/lists")
    await page.get_by_label("Address").fill(f"news@{DOMAIN}")
    await page.get_by_label("Name", exact=True).fill("<i>News</i>")
    await page.get_by_label("Who may post").select_option("members")
    await page.get_by_role("button", name="Create list").click()
    await expect(page).to_have_url(re.compile(f"/cp/lists/news@{DOMAIN}$"))
    await expect(page.get_by_text("<i>News</i>.")).to_be_visible()
    lst = await running.services.lists.get(f"news@{DOMAIN}")
    assert lst is not None and lst.access_level == "members"

    # a name with markup is shown as text
    await page.get_by_label("Address").fill("alice@example.com")
    await page.get_by_label("Name", exact=True).fill(HTML_NAME)
    await page.get_by_label("Variables (a JSON object)").fill('{"tier": "<gold>"}')
    await page.get_by_role("button", name="Add member").click()
    await expect(cell(page, HTML_NAME)).to_be_visible()
    await expect(cell(page, '{"tier":"<gold>"}')).to_be_visible()
    assert await page.evaluate("window.hacked") is None

    # a CSV upload: the page it answers with has the counts and the first errors
    await page.get_by_label("CSV file").set_input_files(
        files=[{"name": "members.csv", "mimeType": "text/csv", "buffer": CSV.encode()}]
    )
    await page.get_by_role("button", name="Upload").click()
    result = page.get_by_role("region", name="Upload result")
    await expect(result).to_contain_text("2 member(s) written (2 new, 0 updated), 1 not written")
    await expect(result).to_contain_text("not an address")
    await expect(cell(page, "bob@example.com")).to_be_visible()
    await expect(cell(page, "odd/one?x#y@example.com")).to_be_visible()
    await screenshot(page, "list-upload")
    member = await running.services.lists.member(lst, "bob@example.com")
    assert member is not None and member.vars == {"plan": "pro"}

    await page.reload()  # the upload's page reloads as the list
    await expect(cell(page, "bob@example.com")).to_be_visible()

    await page.get_by_role("button", name="Unsubscribe alice@example.com").click()
    await expect(page.get_by_role("button", name="Resubscribe alice@example.com")).to_be_visible()
    await page.get_by_label("Show").select_option("no")
    await page.get_by_role("button", name="Filter").click()
    await expect(cell(page, "alice@example.com")).to_be_visible()
    await expect(cell(page, "bob@example.com")).to_have_count(0)
    await page.get_by_role("button", name="Resubscribe alice@example.com").click()
    await expect(page.get_by_role("button", name="Unsubscribe alice@example.com")).to_be_visible()

    # an address with URL characters in it travels as one path segment
    await page.get_by_role("button", name="Remove odd/one?x#y@example.com").click()
    await expect(page.get_by_role("status")).to_contain_text("removed")
    await page.get_by_role("button", name="Remove bob@example.com").click()
    await expect(page.get_by_role("status")).to_contain_text("Member bob@example.com removed")
    total, members = await running.services.lists.members_skip(lst, 0, 10)
    assert total == 1 and [m.address for m in members] == ["alice@example.com"]
    await screenshot(page, "list")

    await page.goto(running.url + "/cp/lists")
    await expect(cell(page, "<i>News</i>")).to_be_visible()
    await screenshot(page, "lists")
    await page.get_by_role("link", name=f"news@{DOMAIN}").click()
    await page.get_by_role("button", name=f"Delete news@{DOMAIN}").click()
    await expect(page.get_by_role("status")).to_contain_text("deleted")
    assert await running.services.lists.get(f"news@{DOMAIN}") is None


# -- forms from elsewhere -----------------------------------------------------------------------


async def test_the_pages_forms_without_the_sessions_csrf_token_are_refused_and_change_nothing(
    running: Running,
):
    client = Browserless(running)
    try:
        assert (await client.sign_in(running.key)).status == 303
        await running.services.lists.create(f"team@{DOMAIN}")
        client.csrf = "forged"
        for path, data in (
            ("/cp/routes", {"expression": "catch_all()", "actions": "stop()"}),
            (f"/cp/webhooks/{DOMAIN}/delivered", {"urls": "https://app.example.com/"}),
            ("/cp/lists", {"address": f"other@{DOMAIN}"}),
            (f"/cp/lists/team@{DOMAIN}/members", {"address": "eve@example.com"}),
            (f"/cp/lists/team@{DOMAIN}/delete", {}),
        ):
            status, _ = await client.post(path, **data)
            assert status == 403, path
        assert (await running.services.routes.list())[0] == 0
        assert await running.services.webhooks.list(DOMAIN) == {}
        assert [lst.address for lst in await running.services.lists.all()] == [f"team@{DOMAIN}"]
    finally:
        await client.http.close()
