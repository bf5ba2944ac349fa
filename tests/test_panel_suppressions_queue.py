"""The control panel's Suppressions and Queue pages (issue 14) in a real browser: adding, finding,
paging and removing suppressions; a destination's queued mail, pause and resume, retry now, and
a message's recipients. A capture server stands in for the destination's MX (tests/capture.py:
full@ is refused for now each time, defer-once@ the first time only)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from mta import suppressions
from mta.suppressions import Bounce
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.panel import page, screenshot, sign_in  # noqa: F401
from tests.test_queue_control import (
    DEST,
    events_of,
    held,
    recipient_view,
    send,
    serve,
)

pytestmark = pytest.mark.asyncio

HOSTILE = '<b>bold</b><script>alert("x")</script>'


def accept_confirmations(page: Page) -> None:  # noqa: F811
    page.on("dialog", lambda dialog: dialog.accept())


# -- suppressions ----------------------------------------------------------------------------------


async def test_a_bounce_added_in_the_panel_is_found_by_search_shown_as_text_and_removed(
    running: Running, page: Page  # noqa: F811
):
    await sign_in(page, running)
    accept_confirmations(page)
    await page.get_by_role("link", name="Suppressions").click()
    await expect(page.get_by_role("heading", name=f"Bounces of {DOMAIN}")).to_be_visible()
    await page.get_by_label("Address", exact=True).fill("Mallory@Example.COM")
    await page.get_by_label("Code").fill("554")
    await page.get_by_label("Error").fill(HOSTILE)
    await page.get_by_role("button", name="Add", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text(
        "Address has been added to the bounces table: mallory@example.com"
    )
    row = page.locator("table.suppressions tbody tr", has_text="mallory@example.com")
    await expect(row).to_contain_text(HOSTILE)  # the markup is text
    await expect(row.locator("b, script")).to_have_count(0)
    await expect(row).to_contain_text("554")
    stored = await suppressions.get(running.services.store, "bounces", DOMAIN,
                                    "mallory@example.com")
    assert isinstance(stored, Bounce) and stored.error == HOSTILE and stored.code == "554"

    await suppressions.add(running.services.store, DOMAIN,
                           [Bounce("alice@example.com", "550", "gone", time.time())])
    await page.get_by_label("Address starts with").fill("MALL")
    await page.get_by_role("button", name="Show").click()
    rows = page.locator("table.suppressions tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("mallory@example.com")
    await screenshot(page, "suppressions")
    await page.get_by_label("Address starts with").fill("nobody%")
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_text(re.compile("No address in bounces starts with"))

    await page.get_by_role("link", name="Clear search").click()
    await expect(rows).to_have_count(2)
    await page.get_by_role("button", name="Remove mallory@example.com").click()
    await expect(page.get_by_role("status")).to_have_text(
        "Bounced address has been removed: mallory@example.com"
    )
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("alice@example.com")
    assert await suppressions.get(running.services.store, "bounces", DOMAIN,
                                  "mallory@example.com") is None


async def test_each_kind_takes_its_own_fields_and_a_bad_address_gets_the_apis_message(
    running: Running, page: Page  # noqa: F811
):
    await sign_in(page, running)
    await page.goto(f"{running.url}/cp/suppressions?domain={DOMAIN}&kind=unsubscribes")
    await expect(page.get_by_label("Error")).to_have_count(0)
    await page.get_by_label("Address", exact=True).fill("reader@example.com")
    await page.get_by_label("Tag").fill("newsletter")
    await page.get_by_role("button", name="Add", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("added to the unsubscribes table")
    row = page.locator("table.suppressions tbody tr", has_text="reader@example.com")
    await expect(row).to_contain_text("newsletter")

    await page.get_by_role("link", name="Complaints").click()
    await expect(page.get_by_label("Tag")).to_have_count(0)
    await page.get_by_label("Address", exact=True).fill("not an address")
    await page.get_by_role("button", name="Add", exact=True).click()
    await expect(page.get_by_text("address parameter is not a valid address")).to_be_visible()


async def test_a_long_list_pages_newest_first(
    running: Running, page: Page  # noqa: F811
):
    now = time.time()
    await suppressions.add(running.services.store, DOMAIN, [
        Bounce(f"user{i:03}@example.com", "550", "gone", now - i) for i in range(60)
    ])
    await sign_in(page, running)
    await page.goto(f"{running.url}/cp/suppressions?domain={DOMAIN}")
    rows = page.locator("table.suppressions tbody tr")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_contain_text("user000@example.com")  # the newest
    await page.get_by_role("link", name="Older ›").click()
    await expect(rows).to_have_count(10)
    await expect(rows.first).to_contain_text("user050@example.com")
    await expect(rows.last).to_contain_text("user059@example.com")
    await expect(page.get_by_role("link", name="Older ›")).to_have_count(0)
    await page.get_by_role("link", name="‹ Newer").click()
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_contain_text("user000@example.com")
    await expect(rows.last).to_contain_text("user049@example.com")


async def test_suppression_forms_need_the_sessions_csrf_token(running: Running):
    async with aiohttp.ClientSession(running.url,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get("/cp/sign-in") as resp:
            pre = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert pre is not None
        async with http.post("/cp/sign-in", data={"csrf": pre.group(1), "secret": running.key,
                                                  "next": ""}) as resp:
            assert resp.status == 200
        async with http.post(f"/cp/suppressions/{DOMAIN}/bounces",
                             data={"csrf": "forged", "address": "x@example.com"}) as resp:
            assert resp.status == 403
    assert await suppressions.get(running.services.store, "bounces", DOMAIN,
                                  "x@example.com") is None


# -- the queue -------------------------------------------------------------------------------------


async def until_state(page: Page, address: str, state: str) -> None:  # noqa: F811
    """Reload the message page until the recipient shows `state` (the scheduler got there)."""
    row = page.locator("table.recipients tbody tr", has_text=address)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if state in (await row.locator("td").nth(1).inner_text()):
            return
        await page.reload()
    await expect(row.locator("td").nth(1)).to_have_text(state)


async def test_a_refusing_destination_shows_its_mail_and_retry_now_delivers_it(
    start_server: Callable[..., Any], mx: Capture, page: Page  # noqa: F811
):
    running = await serve(start_server, mx)
    message_id = await send(running, f"defer-once@{DEST}", f"full@{DEST}")
    await events_of(running, "failed", 2)  # both wait an hour to be tried again
    await sign_in(page, running)
    await page.get_by_role("link", name="Queue").click()
    row = page.locator(f'tr[data-destination="{DEST}"]')
    await expect(row.locator("td").nth(1)).to_contain_text("deferred")
    await expect(row.locator("td").nth(2)).to_have_text("2")  # queued
    await expect(row.locator("td").nth(4)).to_have_text("2")  # deferred
    await expect(row).to_contain_text(re.compile(r"45[12]"))  # the last reply
    await screenshot(page, "queue")

    await page.get_by_label("Message-Id or storage key").fill(f"<{message_id}>")
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("heading", name=f"<{message_id}>")).to_be_visible()
    recipients = page.locator("table.recipients tbody tr")
    await expect(recipients).to_have_count(2)
    for address in (f"defer-once@{DEST}", f"full@{DEST}"):
        one = recipients.filter(has_text=address)
        await expect(one.locator("td").nth(1)).to_have_text("queued")
        await expect(one.locator("td").nth(2)).to_have_text("1")  # attempts
        await expect(one.locator("td").nth(4)).to_contain_text("failed (temporary)")
    await page.get_by_role("button", name=f"Retry defer-once@{DEST} now").click()
    await expect(page.get_by_role("status")).to_have_text("1 recipient(s) will be retried now.")
    [got] = await mx.wait_for(1)  # now, not in an hour
    assert got.rcpt_to == f"defer-once@{DEST}"
    await until_state(page, f"defer-once@{DEST}", "delivered")
    full = recipients.filter(has_text=f"full@{DEST}")
    await expect(full.locator("td").nth(1)).to_have_text("queued")
    await screenshot(page, "queue-message")

    await page.get_by_role("link", name="Back to the queue").click()
    await page.get_by_role("button", name=f"Retry {DEST} now").click()
    await expect(page.get_by_role("status")).to_have_text(
        f"1 recipient(s) of {DEST} will be retried now."
    )
    await events_of(running, "failed", 3)  # full@ tried again at once (and refused again)


async def test_a_paused_destination_shows_its_reason_and_delivers_once_resumed(
    start_server: Callable[..., Any], mx: Capture, page: Page  # noqa: F811
):
    running = await serve(start_server, mx)
    await sign_in(page, running)
    await page.get_by_role("link", name="Queue").click()
    await page.get_by_label("Destination domain").fill(DEST.upper())
    await page.get_by_label("Reason", exact=True).fill("<b>maintenance</b> window")
    await page.get_by_role("button", name="Pause", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text(f"Deliveries to {DEST} are paused.")

    message_id = await send(running, f"alice@{DEST}")
    await recipient_view(running, message_id, f"alice@{DEST}", held)
    await page.reload()
    row = page.locator(f'tr[data-destination="{DEST}"]')
    await expect(row.locator("td").nth(1)).to_contain_text("paused")
    await expect(row.locator(".pause-reason")).to_have_text("<b>maintenance</b> window")
    await expect(row.locator("b")).to_have_count(0)
    await expect(row.locator("td").nth(2)).to_have_text("1")
    await screenshot(page, "queue-paused")

    await page.goto(f"{running.url}/cp/queue/message?id={message_id}")
    alice = page.locator("table.recipients tbody tr", has_text=f"alice@{DEST}")
    await expect(alice.locator("td").nth(1)).to_have_text("paused")
    await expect(alice.locator("td").nth(2)).to_have_text("0")
    assert not mx.messages

    await page.get_by_role("link", name="Back to the queue").click()
    await page.get_by_role("button", name=f"Resume {DEST}").click()
    await expect(page.get_by_role("status")).to_have_text(f"Deliveries to {DEST} go on.")
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"alice@{DEST}"
    await page.goto(f"{running.url}/cp/queue/message?id={message_id}")
    await until_state(page, f"alice@{DEST}", "delivered")
    await page.goto(f"{running.url}/cp/queue")
    await expect(page.locator(f'tr[data-destination="{DEST}"]')).to_have_count(0)


async def test_unknown_messages_and_destinations_get_the_panels_error_page(
    running: Running, page: Page  # noqa: F811
):
    await sign_in(page, running)
    response = await page.goto(f"{running.url}/cp/queue/message?id=no-such@message")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("alert")).to_contain_text("No message has the Message-Id")
    await page.goto(f"{running.url}/cp/queue")
    await expect(page.get_by_text("Nothing is queued and no destination is paused.")) \
        .to_be_visible()
    await page.get_by_label("Destination domain").fill("a b")
    await page.get_by_role("button", name="Pause", exact=True).click()
    await expect(page.get_by_text("That is not a destination domain.")).to_be_visible()
