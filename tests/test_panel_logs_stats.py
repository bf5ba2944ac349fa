"""The control panel's Logs and Stats pages (issue 14) in a real browser: a message sent through
the API and delivered to a capture server is found in the logs with its events, its JSON and its
history; the stats chart and table move with sends; mail's HTML shows as text; bad filters come
back as the Events API's message."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests import storeview
from tests.capture import Capture
from tests.conftest import DOMAIN, Running
from tests.panel import page, screenshot, sign_in  # noqa: F401

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
HOSTILE = "<script>alert(1)</script><b>bold</b>"


@pytest.fixture
async def delivering(start_server: Callable[..., Any], mx: Capture) -> Running:
    """A server whose mail for DEST goes to the capture server."""
    return await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})


async def send(running: Running, to: str, subject: str = "Panel logs", **extra: str) -> str:
    form = [("from", f"Sender <sender@{DOMAIN}>"), ("to", to), ("subject", subject),
            ("text", "Hello"), *extra.items()]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"]).strip("<>")


async def wait_for_event(running: Running, kind: str, recipient: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        found = [e for e in await storeview.events(running.services.store, kind)
                 if e.get("recipient") == recipient]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {kind} event for {recipient}"
        await asyncio.sleep(0.05)


async def test_a_delivered_message_is_found_by_recipient_with_its_event_json_and_history(
    delivering: Running, page: Page  # noqa: F811
) -> None:
    recipient = f"reader@{DEST}"
    message_id = await send(delivering, recipient)
    await send(delivering, f"someone-else@{DEST}")
    await wait_for_event(delivering, "delivered", recipient)
    await sign_in(page, delivering)
    await page.get_by_role("link", name="Logs", exact=True).click()
    await page.get_by_label("Recipient", exact=True).fill(recipient)
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("#events tbody tr")
    await expect(rows).to_have_count(2)
    # newest first: delivered, then accepted
    await expect(rows.nth(0)).to_have_attribute("data-event", "delivered")
    await expect(rows.nth(1)).to_have_attribute("data-event", "accepted")
    await expect(page.locator("#events")).not_to_contain_text("someone-else")
    await screenshot(page, "logs")

    await rows.nth(0).get_by_role("link", name="JSON").click()
    await expect(page.get_by_role("heading", name="Event: delivered")).to_be_visible()
    shown = json.loads(await page.locator("#event-json").inner_text())
    async with delivering.session() as api, api.get(
        f"/v3/{DOMAIN}/events", params={"event": "delivered", "recipient": recipient}
    ) as resp:
        [from_api] = (await resp.json())["items"]
    assert shown == from_api  # the Events API's very item
    assert shown["message"]["headers"]["message-id"] == message_id
    await screenshot(page, "event")

    await page.get_by_role("link", name=message_id).click()
    await expect(page.get_by_role("heading", name="Message history")).to_be_visible()
    history = page.locator("#history tbody tr")
    await expect(history).to_have_count(2)
    # oldest first: accepted, then delivered
    await expect(history.nth(0)).to_have_attribute("data-event", "accepted")
    await expect(history.nth(1)).to_have_attribute("data-event", "delivered")
    await screenshot(page, "message-history")


async def test_next_and_previous_pages_walk_the_events_newest_first(
    running: Running, page: Page  # noqa: F811
) -> None:
    for n in range(3):
        await send(running, f"r{n}@{DEST}")
    await sign_in(page, running)
    await page.goto(running.url + f"/cp/logs?domain={DOMAIN}&limit=25&event=accepted")
    await expect(page.locator("#events tbody tr")).to_have_count(3)
    await page.goto(running.url + f"/cp/logs?domain={DOMAIN}&limit=25&event=accepted"
                                  f"&recipient=r2@{DEST}")
    await expect(page.locator("#events tbody tr")).to_have_count(1)
    await page.get_by_role("link", name="Next page").click()
    await expect(page.locator("#events tbody tr")).to_contain_text(["No events match."])
    # the form still shows the search the page token carries
    await expect(page.get_by_label("Recipient", exact=True)).to_have_value(f"r2@{DEST}")
    await page.get_by_role("link", name="Previous page").click()
    await expect(page.locator("#events tbody tr")).to_have_count(1)
    await expect(page.locator("#events")).to_contain_text(f"r2@{DEST}")


async def test_stats_chart_and_table_move_after_sends(
    delivering: Running, page: Page  # noqa: F811
) -> None:
    await sign_in(page, delivering)
    await page.goto(delivering.url + f"/cp/stats?domain={DOMAIN}&span=24h&resolution=hour")
    delivered = page.locator("#stats-totals td[data-event=delivered]")
    await expect(delivered).to_have_text("0")
    line = page.locator("#stats-chart polyline[data-event=delivered]")
    await expect(line).to_have_attribute("data-peak", "0")

    recipient = f"counted@{DEST}"
    await send(delivering, recipient, **{"o:tag": "panel-tag"})
    await wait_for_event(delivering, "delivered", recipient)
    await page.reload()
    await expect(delivered).to_have_text("1")
    await expect(page.locator("#stats-totals td[data-event=accepted]")).to_have_text("1")
    await expect(line).to_have_attribute("data-peak", "1")
    # the point of the hour with the delivery is above the zero line of the others
    flat = await page.locator("#stats-chart polyline[data-event=complained]").get_attribute(
        "points")
    moved = await line.get_attribute("points")
    assert flat and moved and flat != moved
    await screenshot(page, "stats")

    await page.get_by_label("Tag").select_option("panel-tag")
    await page.get_by_role("button", name="Show").click()
    await expect(page).to_have_url(re.compile(r"tag=panel-tag"))
    await expect(delivered).to_have_text("1")
    await page.goto(delivering.url + "/cp/stats?span=7d&resolution=day")
    await expect(page.locator("#stats-totals td[data-event=delivered]")).to_have_text("1")
    await screenshot(page, "stats-account-daily")


async def test_html_in_a_subject_and_address_shows_as_text(
    running: Running, page: Page  # noqa: F811
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    message_id = await send(running, f'"{HOSTILE}" <x@{DEST}>', subject=HOSTILE)
    await sign_in(page, running)
    await page.goto(running.url + f"/cp/logs?domain={DOMAIN}")
    await expect(page.locator("#events")).to_contain_text(HOSTILE)
    assert await page.locator("#events b, #events script").count() == 0
    await page.get_by_role("link", name="JSON").first.click()
    await expect(page.locator("#event-json")).to_contain_text("<b>bold</b>")
    await expect(page.locator("main")).to_contain_text(HOSTILE)
    assert await page.locator("main b, main script").count() == 0
    await page.goto(running.url + f"/cp/logs/message?domain={DOMAIN}&id={message_id}")
    await expect(page.locator("main")).to_contain_text(HOSTILE)
    assert await page.locator("main b, main script").count() == 0
    assert dialogs == []


async def test_bad_filters_come_back_with_the_events_api_message(
    running: Running, page: Page  # noqa: F811
) -> None:
    await sign_in(page, running)
    cases = [
        ("begin=not-a-date", "'begin' is not a valid date"),
        ("size=%3Ebig", "'size' takes numbers"),
        ("event=(accepted", "unbalanced parentheses"),
        ("page=garbage", "invalid page token"),
    ]
    for query, message in cases:
        response = await page.goto(running.url + f"/cp/logs?domain={DOMAIN}&{query}")
        assert response is not None and response.status == 400, query
        await expect(page.get_by_role("alert")).to_contain_text(message)
        await expect(page.get_by_role("button", name="Search")).to_be_visible()
    response = await page.goto(running.url + "/cp/stats?span=99x")
    assert response is not None and response.status == 400
    await expect(page.get_by_role("alert")).to_contain_text("Invalid duration")
    response = await page.goto(running.url + f"/cp/stats?domain={DOMAIN}&tag=nope")
    assert response is not None and response.status == 404
    response = await page.goto(running.url + f"/cp/logs/event?domain={DOMAIN}&message=x&id=y")
    assert response is not None and response.status == 404
