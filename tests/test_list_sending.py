"""Sending to mailing lists (manual: "Mailing Lists", "Tracking Unsubscribes"; mailgun-api.md
§7): a message sent to a list's address, over the API, by authenticated SMTP or from outside
through the MX as the list's access level allows, is delivered to each subscribed member, each
copy personalised with the member's name and vars, carrying the list's headers and an
unsubscribe link that takes the member off that list only. The message is stored once; the
members' rows are queued a chunk at a time after the send is acknowledged, and a crash in the
middle of that resumes where it stopped.

Real parts throughout: the server on loopback, the capture SMTP server standing in for the
members' MX hosts, swaks talking to our MX, and the store read through its own readers (so
every check runs on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mta.config import load as load_config
from mta.services import open_services
from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running, auth_header, cli_env, store_env
from tests.smtp_clients import LOGIN, Clients, submit

pytestmark = pytest.mark.asyncio
needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")

DEST = "members.example.test"  # where the members' mailboxes are: the capture server
LIST = f"devs@{DOMAIN}"
LIST_ID = '"Developers" <devs.mg.example.test>'
BOB, CAROL, DAVE, ERIN = (f"{n}@{DEST}" for n in ("bob", "carol", "dave", "erin"))
STRANGER = "stranger@outside.example.org"


@dataclass
class Member:
    address: str
    name: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    subscribed: bool = True


# Bob and Carol have names and vars, Dave only an address; Erin unsubscribed long ago
DEVS = (
    Member(BOB, "Bob Bar", {"age": 26, "team": "core"}),
    Member(CAROL, "Carol Q. Public", {"age": 31, "team": "web"}),
    Member(DAVE),
    Member(ERIN, "Erin Gone", {"age": 40}, subscribed=False),
)
SUBSCRIBED = [m.address for m in DEVS if m.subscribed]


# -- helpers -------------------------------------------------------------------------------------


async def list_server(start: Callable[..., Any], mx: Capture, **overrides: Any) -> Running:
    """A server delivering to the capture server for DEST and expanding list sends promptly."""
    overrides.setdefault("dns__static_mx", {DEST: [mx.address]})
    return await start(outbound__enabled=True, lists__expansion_poll_s=0.05,
                       inbound__retry_intervals_s=[0.2, 0.2], **overrides)


async def has_lists_api(running: Running) -> bool:
    async with running.session() as api, api.get("/v3/lists") as resp:
        return resp.status == 200


async def make_list(
    running: Running,
    address: str,
    members: Sequence[Member] = DEVS,
    *,
    name: str = "Developers",
    access: str = "readonly",
    reply: str | None = None,
) -> None:
    """A list and its members, as a customer makes them: through the Lists API
    (POST /v3/lists, POST /v3/lists/<address>/members) when the server answers it, else
    through the same service the API calls."""
    if await has_lists_api(running):
        form = {"address": address, "name": name, "access_level": access}
        if reply is not None:
            form["reply_preference"] = reply
        async with running.session() as api:
            async with api.post("/v3/lists", data=form) as resp:
                assert resp.status == 200, await resp.text()
            for m in members:
                member = {"address": m.address, "name": m.name, "vars": json.dumps(m.vars),
                          "subscribed": "yes" if m.subscribed else "no"}
                async with api.post(f"/v3/lists/{address}/members", data=member) as resp:
                    assert resp.status == 200, await resp.text()
        return
    lists = running.services.lists
    lst = await lists.create(address, name=name, access=access, reply=reply)
    for m in members:
        member = lists.checked_member(m.address, m.name, m.vars, m.subscribed)
        await lists.add_member(lst, member, upsert=False)


async def member_of(running: Running, address: str, member: str) -> dict[str, Any] | None:
    """A list's member as the Lists API shows it (None: not a member)."""
    if await has_lists_api(running):
        async with (
            running.session() as api,
            api.get(f"/v3/lists/{address}/members/{member}") as resp,
        ):
            if resp.status == 404:
                return None
            assert resp.status == 200, await resp.text()
            return (await resp.json())["member"]
    lists = running.services.lists
    lst = await lists.get(address)
    assert lst is not None
    found = await lists.member(lst, member)
    if found is None:
        return None
    return {"address": found.address, "name": found.name, "subscribed": found.subscribed,
            "vars": found.vars}


async def send(running: Running, *form: tuple[str, str], domain: str = DOMAIN) -> str:
    """POST /v3/<domain>/messages; the Message-Id."""
    fields = [("from", f"Owner <owner@{domain}>"), *form]
    async with (
        running.session() as api,
        api.post(f"/v3/{domain}/messages", data=fields) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return (await resp.json())["id"].strip("<>")


async def settled(running: Running, timeout: float = 30) -> None:
    """Until every list send is expanded and every recipient delivered or failed."""
    store = running.services.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (
        await storeview.count(store, "list_sends")
        or await storeview.count(store, "recipients", "WHERE state NOT IN ('delivered', 'failed')")
    ):
        assert loop.time() < deadline, "list sends were not expanded and delivered in time"
        await asyncio.sleep(0.05)


async def events(running: Running, *params: tuple[str, str]) -> list[dict[str, Any]]:
    """Events of the domain through the Events API (one page is all these tests make)."""
    async with (
        running.session() as api,
        api.get(f"/v3/{DOMAIN}/events", params=[("limit", "300"), *params]) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return (await resp.json())["items"]


def one_each(mx: Capture, addresses: Sequence[str]) -> dict[str, EmailMessage]:
    """The copies that arrived: exactly one per address, each in an envelope of its own (the
    capture keeps an envelope's first RCPT only: a shared one would leave members out)."""
    arrived = Counter(m.rcpt_to for m in mx.messages)
    assert arrived == Counter(addresses), arrived
    return {m.rcpt_to: storeview.parse(m.data) for m in mx.messages}


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def unsubscribe_token(message: EmailMessage) -> str:
    """The token of the %mailing_list_unsubscribe_url% link in the copy's text."""
    found = re.search(r"Leave: https?://\S+/u/(\S+)", text_of(message))
    assert found, text_of(message)
    return found.group(1)


async def press(running: Running, path: str, data: dict[str, str]) -> None:
    """A member's browser (the tracking host's CNAME leads to the server) posting to a link."""
    async with (
        aiohttp.ClientSession() as browser,
        browser.post(f"{running.url}{path}", data=data) as resp,
    ):
        assert resp.status == 200, await resp.text()


def swaks(port: int, sender: str, to: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An outside mail server delivering one message to our MX."""
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "mail.outside.example",
         "--from", sender, "--to", to, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


async def post_mx(running: Running, sender: str, to: str, *args: str
                  ) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(swaks, running.server.smtp.port("mx"), sender, to, *args)


async def message_rows(running: Running, message_id: str) -> list[dict[str, Any]]:
    store = running.services.store
    return [dict(r) for r in await store.fetchall(
        "SELECT r.address, r.mailing_list, r.state, r.mime IS NOT NULL AS own_copy"
        " FROM recipients r JOIN messages m ON m.key = r.message_key WHERE m.message_id = ?"
        " ORDER BY r.address", (message_id,),
    )]


# -- sending to a list: the API, SMTP submission, the MX -----------------------------------------


async def test_a_send_over_the_api_reaches_each_subscribed_member_once_personalised(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    await make_list(running, LIST, access="members", reply="list")
    message_id = await send(
        running, ("to", LIST), ("subject", "Hi %recipient_fname%"),
        ("text", "Dear %recipient_name% (%recipient_fname% / %recipient_lname%),\n"
                 "you are %recipient% = %recipient_email%, age %recipient.age%, team"
                 " %recipient.team%.\nLeave: %mailing_list_unsubscribe_url%\n"),
    )
    await settled(running)
    copies = one_each(mx, SUBSCRIBED)  # Erin, unsubscribed, gets nothing
    for address, copy in copies.items():
        assert copy["To"] == LIST  # the list, never the member alone nor another member
        others = [m.address for m in DEVS if m.address != address]
        raw = next(m.data for m in mx.messages if m.rcpt_to == address)
        assert not any(o.encode() in raw for o in others), address
        assert copy["From"] == f"Owner <owner@{DOMAIN}>"
        assert copy["List-Id"] == LIST_ID
        assert copy["Reply-To"] == LIST  # reply_preference=list
        assert re.fullmatch(r"<https?://\S+/u/\S+>,\s*<mailto:unsubscribe@\S+>",
                            copy["List-Unsubscribe"]), copy["List-Unsubscribe"]
        assert copy["Message-Id"].strip("<>") == message_id
    bob, carol, dave = (copies[a] for a in (BOB, CAROL, DAVE))
    assert (bob["Subject"], carol["Subject"], dave["Subject"]) == ("Hi Bob", "Hi Carol", "Hi ")
    assert text_of(bob).startswith(
        f"Dear Bob Bar (Bob / Bar),\nyou are Bob Bar <{BOB}> = {BOB}, age 26, team core.\n"
    )
    assert text_of(carol).startswith(
        f"Dear Carol Q. Public (Carol / Q. Public),\nyou are \"Carol Q. Public\" <{CAROL}>"
        f" = {CAROL}, age 31, team web.\n"
    )
    assert text_of(dave).startswith(f"Dear  ( / ),\nyou are {DAVE} = {DAVE}, age , team .\n")
    assert len({unsubscribe_token(c) for c in copies.values()}) == 3  # a link of their own


async def test_an_authenticated_smtp_submission_to_a_list_reaches_each_member_replies_to_the_sender(
    mail_server: Callable[..., Any], mx: Capture, clients: Clients
):
    running = await list_server(mail_server, mx)
    announce = f"announce@{DOMAIN}"
    await make_list(running, announce, name="Announcements", access="readonly", reply="sender")
    mime = (
        f"From: Alice <{LOGIN}>\r\nTo: Everyone <{announce}>\r\n"
        f"Subject: Release for %recipient_fname%\r\nMessage-Id: <release.1@{DOMAIN}>\r\n"
        "X-Mailgun-Tag: release\r\n\r\n"
        "Hello %recipient_name%, your team %recipient.team% ships today.\r\n"
    ).encode()
    client = await clients.smtp(running)
    reply = await submit(client, mime, rcpts=(announce,))
    assert reply == f"250 2.0.0 OK: queued as <release.1@{DOMAIN}>"
    await settled(running)
    copies = one_each(mx, SUBSCRIBED)
    for copy in copies.values():
        assert copy["To"] == f"Everyone <{announce}>"
        assert copy["List-Id"] == '"Announcements" <announce.mg.example.test>'
        assert copy["Reply-To"] is None  # reply_preference=sender: replies go to From
        assert copy["List-Unsubscribe"] is not None
        assert copy["X-Mailgun-Tag"] is None
    assert copies[BOB]["Subject"] == "Release for Bob"
    assert text_of(copies[BOB]) == "Hello Bob Bar, your team core ships today.\n"
    assert text_of(copies[CAROL]) == "Hello Carol Q. Public, your team web ships today.\n"
    delivered = await events(running, ("event", "delivered"))
    assert sorted(e["recipient"] for e in delivered) == sorted(SUBSCRIBED)
    assert all(e["tags"] == ["release"] for e in delivered)


@needs_swaks
async def test_posts_from_outside_through_the_mx_reach_the_members_as_the_access_level_allows(
    start_server: Callable[..., Any], mx: Capture
):
    """An everyone list takes a stranger's post; a members list its subscribed member's, by
    the envelope sender or by From. Each post reaches every subscribed member once."""
    running = await list_server(start_server, mx)
    everyone, members = f"open@{DOMAIN}", f"team@{DOMAIN}"
    await make_list(running, everyone, name="Open", access="everyone", reply="list")
    await make_list(running, members, name="Team", access="members", reply="list")
    result = await post_mx(running, STRANGER, everyone, "--header", "Subject: From outside",
                           "--header", f"From: Stranger <{STRANGER}>",
                           "--body", "Hi %recipient_fname%, a question.")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\n -> \.\n<-  250 2\.0\.0 ", result.stdout)  # taken at the end of DATA
    await settled(running)
    copies = one_each(mx, SUBSCRIBED)
    for copy in copies.values():
        assert copy["From"] == f"Stranger <{STRANGER}>"
        assert copy["To"] == everyone
        assert copy["List-Id"] == '"Open" <open.mg.example.test>'
        assert copy["Reply-To"] == everyone
        assert copy["List-Unsubscribe"] is not None
    assert text_of(copies[CAROL]).startswith("Hi Carol, a question.")

    mx.messages.clear()
    result = await post_mx(running, BOB, members, "--header", "Subject: From Bob",
                           "--body", "A member's post")
    assert result.returncode == 0, result.stdout + result.stderr
    await settled(running)
    copies = one_each(mx, SUBSCRIBED)  # Bob too: he is a member like the others
    assert all(c["Subject"] == "From Bob" and c["To"] == members for c in copies.values())

    mx.messages.clear()  # a member's From, sent through a mail system with its own return path
    result = await post_mx(running, f"bounces+x@relay.{DEST}", members,
                           "--header", f"From: Carol <{CAROL}>", "--header", "Subject: Relayed")
    assert result.returncode == 0, result.stdout + result.stderr
    await settled(running)
    assert all(c["Subject"] == "Relayed" for c in one_each(mx, SUBSCRIBED).values())


# -- stored once ---------------------------------------------------------------------------------


async def test_a_list_send_is_stored_once_with_rows_for_subscribed_members_only(
    start_server: Callable[..., Any], mx: Capture
):
    crowd = [Member(f"m{n:02}@{DEST}", f"Member {n}", {"n": n}, subscribed=n % 5 != 0)
             for n in range(40)]
    running = await list_server(start_server, mx, lists__expansion_chunk=7)
    await make_list(running, LIST, crowd, access="members")
    attachment = bytes(range(256)) * 400  # 100 KB
    form = aiohttp.FormData()
    for name, value in (("from", f"owner@{DOMAIN}"), ("to", LIST), ("subject", "Big one"),
                        ("text", "For %recipient.n%")):
        form.add_field(name, value)
    form.add_field("attachment", attachment, filename="notes.bin",
                   content_type="application/octet-stream")
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        message_id = (await resp.json())["id"].strip("<>")
    await settled(running)
    subscribed = sorted(m.address for m in crowd if m.subscribed)
    store = running.services.store
    [stored] = await store.fetchall(
        "SELECT length(mime) AS n FROM messages WHERE message_id = ?", (message_id,)
    )
    assert await storeview.count(store, "messages") == 1
    one_copy = len(next(m.data for m in mx.messages))
    assert len(attachment) < int(stored["n"]) < 1.1 * one_copy  # one message, not 32
    rows = await message_rows(running, message_id)
    assert [r["address"] for r in rows] == subscribed  # no row for the list itself
    assert {(r["mailing_list"], r["state"], bool(r["own_copy"])) for r in rows} == {
        (LIST, "delivered", False)
    }
    assert await storeview.count(store, "list_sends") == 0
    copies = one_each(mx, subscribed)
    assert text_of(copies[f"m07@{DEST}"]).startswith("For 7")


# -- unsubscribing from a list -------------------------------------------------------------------


async def test_the_mailing_list_unsubscribe_link_flags_that_member_on_that_list_only(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    ops = f"ops@{DOMAIN}"
    await make_list(running, LIST, access="members")
    await make_list(running, ops, [Member(BOB, "Bob Bar"), Member(CAROL, "Carol")], name="Ops")
    await send(running, ("to", LIST), ("subject", "First"),
               ("text", "Leave: %mailing_list_unsubscribe_url%\n"))
    await settled(running)
    copies = one_each(mx, SUBSCRIBED)
    # Bob follows the link in the text and confirms on the page; Carol's mail client uses
    # the List-Unsubscribe header's one-click POST
    await press(running, f"/u/{unsubscribe_token(copies[BOB])}", {})
    header = re.search(r"<(https?://[^>]+)>", copies[CAROL]["List-Unsubscribe"])
    assert header
    await press(running, "/u/" + header.group(1).split("/u/", 1)[1],
                {"List-Unsubscribe": "One-Click"})

    for member in (BOB, CAROL):  # still members, flagged unsubscribed
        found = await member_of(running, LIST, member)
        assert found is not None and found["subscribed"] is False, found
        assert (await member_of(running, ops, member) or {})["subscribed"] is True
    assert (await member_of(running, LIST, DAVE) or {})["subscribed"] is True
    async with running.session() as api, api.get(f"/v3/{DOMAIN}/unsubscribes") as resp:
        assert (await resp.json())["items"] == []  # no domain suppression
    unsubscribed = await events(running, ("event", "unsubscribed"))
    assert sorted(e["recipient"] for e in unsubscribed) == [BOB, CAROL]
    assert all(e["mailing-list"]["address"] == LIST for e in unsubscribed)

    mx.messages.clear()
    await send(running, ("to", LIST), ("subject", "Second"), ("text", "Only Dave now"))
    await settled(running)
    assert one_each(mx, [DAVE])[DAVE]["Subject"] == "Second"
    mx.messages.clear()
    await send(running, ("to", ops), ("subject", "Ops news"), ("text", "Both of you"))
    await settled(running)
    assert set(one_each(mx, [BOB, CAROL])) == {BOB, CAROL}


# -- events, suppressions, tags, campaigns, stats, sandbox ---------------------------------------


async def test_each_member_has_accepted_and_delivered_events_naming_the_list(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    other = f"other@{DOMAIN}"
    await make_list(running, LIST, access="members")
    await make_list(running, other, [Member(BOB)], name="Other")
    message_id = await send(running, ("to", LIST), ("subject", "Events"), ("text", "x"))
    await send(running, ("to", other), ("subject", "Elsewhere"), ("text", "y"))
    await settled(running)
    for kind in ("accepted", "delivered"):
        found = await events(running, ("event", kind), ("list", LIST))
        assert sorted(e["recipient"] for e in found) == sorted(SUBSCRIBED), kind
        for event in found:
            assert event["mailing-list"]["address"] == LIST
            assert event["message"]["headers"]["message-id"] == message_id
            assert event["message"]["headers"]["to"] == LIST
        everything = await events(running, ("event", kind))
        assert len(everything) == len(SUBSCRIBED) + 1  # the other list's member
        [bob_other] = [e for e in everything if e["mailing-list"]["address"] == other]
        assert bob_other["recipient"] == BOB
    # nothing is recorded for the list address itself: it is no recipient
    assert await events(running, ("recipient", LIST)) == []


async def test_suppressions_apply_per_member_and_members_are_counted_in_tags_campaigns_and_stats(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    await make_list(running, LIST, access="members")
    async with running.session() as api:
        async with api.post(f"/v3/{DOMAIN}/bounces", data={"address": CAROL}) as resp:
            assert resp.status == 200, await resp.text()
        async with api.post(f"/v3/{DOMAIN}/unsubscribes", data={"address": DAVE}) as resp:
            assert resp.status == 200, await resp.text()
        async with api.post(f"/v3/{DOMAIN}/campaigns",
                            data={"id": "spring", "name": "Spring sale"}) as resp:
            assert resp.status == 200, await resp.text()
    await send(running, ("to", LIST), ("subject", "Sale"), ("text", "x"),
               ("o:tag", "news"), ("o:campaign", "spring"))
    await settled(running)
    one_each(mx, [BOB])  # Carol bounced before, Dave unsubscribed from the domain
    failed = {e["recipient"]: e for e in await events(running, ("event", "failed"))}
    assert set(failed) == {CAROL, DAVE}
    assert failed[CAROL]["reason"] == "suppress-bounce"
    assert failed[DAVE]["reason"] == "suppress-unsubscribe"
    for event in [*failed.values(), *await events(running, ("event", "delivered"))]:
        assert event["tags"] == ["news"]
        assert event["campaigns"] == [{"id": "spring", "name": "Spring sale"}]
        assert event["mailing-list"]["address"] == LIST

    async with running.session() as api:
        params = [("event", "accepted"), ("event", "delivered"), ("event", "failed"),
                  ("duration", "1d")]
        async with api.get(f"/v3/{DOMAIN}/stats/total", params=params) as resp:
            assert resp.status == 200, await resp.text()
            buckets = (await resp.json())["stats"]
        assert sum(b["accepted"]["total"] for b in buckets) == 3
        assert sum(b["delivered"]["total"] for b in buckets) == 1
        failures = [b["failed"]["permanent"] for b in buckets]
        assert sum(f["suppress-bounce"] for f in failures) == 1
        assert sum(f["suppress-unsubscribe"] for f in failures) == 1
        async with api.get(f"/v3/{DOMAIN}/tags/news/stats", params=params) as resp:
            assert resp.status == 200, await resp.text()
            assert sum(b["accepted"]["total"] for b in (await resp.json())["stats"]) == 3
        async with api.get(f"/v3/{DOMAIN}/campaigns/spring") as resp:
            campaign = await resp.json()
        assert (campaign["submitted_count"], campaign["delivered_count"]) == (3, 1)


async def test_a_sandbox_domains_list_sends_only_to_its_authorized_members(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    sandbox = "sandbox.example.test"
    await running.services.domains.create(sandbox, sandbox=True)
    await running.services.domains.authorize(sandbox, BOB)
    await make_list(running, f"devs@{sandbox}", access="members")
    await send(running, ("to", f"devs@{sandbox}"), ("subject", "Try"), ("text", "x"),
               domain=sandbox)
    await settled(running)
    one_each(mx, [BOB])
    store = running.services.store
    rejected = await storeview.events(store, "rejected")
    assert sorted(e["recipient"] for e in rejected) == [CAROL, DAVE]
    for event in rejected:
        assert event["mailing-list"]["address"] == f"devs@{sandbox}"
        assert "Sandbox subdomains are for test purposes only" in event["reject"]["description"]
    assert [e["recipient"] for e in await storeview.events(store, "accepted")] == [BOB]


# -- the MX and access levels --------------------------------------------------------------------


@needs_swaks
async def test_a_readonly_list_refuses_posts_from_the_mx_at_data_with_a_rejected_event(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    await make_list(running, LIST, access="readonly")
    for sender in (STRANGER, BOB):  # on the MX not even a member: the owner posts by the API
        result = await post_mx(running, sender, LIST, "--header", "Subject: Let me in")
        assert result.returncode == 26, result.stdout + result.stderr  # refused after DATA
        assert f" -> RCPT TO:<{LIST}>\n<-  250" in result.stdout
        assert f"<** 550 5.7.1 The list {LIST} takes posts from its owner only" in result.stdout
    rejected = await events(running, ("event", "rejected"))
    assert sorted(e["envelope"]["sender"] for e in rejected) == sorted([STRANGER, BOB])
    for event in rejected:
        assert event["recipient"] == LIST
        assert event["mailing-list"]["address"] == LIST
        assert event["message"]["headers"]["subject"] == "Let me in"
    store = running.services.store
    assert await storeview.count(store, "messages") == 0
    assert await storeview.count(store, "list_sends") == 0


@needs_swaks
async def test_a_members_list_refuses_a_strangers_post_and_an_unsubscribed_members(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    await make_list(running, LIST, access="members")
    for sender in (STRANGER, ERIN):
        result = await post_mx(running, sender, LIST, "--header", f"From: <{sender}>")
        assert result.returncode == 26, result.stdout + result.stderr
        assert f"<** 550 5.7.1 Only members may post to the list {LIST}" in result.stdout
    assert len(await events(running, ("event", "rejected"), ("list", LIST))) == 2
    assert await storeview.count(running.services.store, "messages") == 0


@needs_swaks
async def test_a_route_on_a_readonly_lists_address_still_takes_the_strangers_message(
    start_server: Callable[..., Any], mx: Capture
):
    """Lists and routes act independently: the route forwards the post, the list refuses it
    (a `rejected` event) and nobody on it gets a copy."""
    running = await list_server(start_server, mx)
    await make_list(running, LIST, access="readonly")
    archive = f"archive@{DEST}"
    async with running.session() as api, api.post("/v3/routes", data=[
        ("priority", "0"), ("expression", f'match_recipient("{LIST}")'),
        ("action", f'forward("{archive}")'),
    ]) as resp:
        assert resp.status == 200, await resp.text()
    result = await post_mx(running, STRANGER, LIST, "--header", "Subject: For the archive")
    assert result.returncode == 0, result.stdout + result.stderr
    await mx.wait_for(1)  # the route's work is queued beside the MX session, then sent
    await settled(running)
    [got] = one_each(mx, [archive]).values()
    assert got["Subject"] == "For the archive" and got["List-Id"] is None
    [rejected] = await events(running, ("event", "rejected"))
    assert rejected["mailing-list"]["address"] == LIST
    assert await storeview.count(running.services.store, "list_sends") == 0


@needs_swaks
async def test_a_message_that_already_went_out_to_the_list_is_refused_as_a_loop(
    start_server: Callable[..., Any], mx: Capture
):
    running = await list_server(start_server, mx)
    await make_list(running, LIST, access="everyone")
    result = await post_mx(running, BOB, LIST, "--header", f"List-Id: {LIST_ID}",
                           "--header", "Subject: Re: a member's auto-reply")
    assert result.returncode == 26, result.stdout + result.stderr
    assert f"<** 550 5.7.1 Mail loop: this message already went out to the list {LIST}" in (
        result.stdout
    )
    [rejected] = await events(running, ("event", "rejected"))
    assert rejected["mailing-list"]["address"] == LIST
    assert await storeview.count(running.services.store, "messages") == 0
    # another list's List-Id is no loop
    result = await post_mx(running, BOB, LIST, "--header", "List-Id: <other.lists.example.org>")
    assert result.returncode == 0, result.stdout + result.stderr
    await settled(running)
    one_each(mx, SUBSCRIBED)


# -- tenants -------------------------------------------------------------------------------------


async def test_another_domains_list_address_is_an_ordinary_recipient_for_a_sender(
    start_server: Callable[..., Any], mx: Capture
):
    """Domain A's mail to domain B's list is not expanded by A's send: it goes to B's list
    address like mail to anyone (to the list's MX, here the capture server)."""
    theirs = "theirs.example.test"
    running = await list_server(start_server, mx,
                                dns__static_mx={DEST: [mx.address], theirs: [mx.address]})
    await running.services.domains.create(theirs)
    their_list = f"news@{theirs}"
    await make_list(running, their_list, access="everyone")
    message_id = await send(running, ("to", their_list), ("subject", "Hello B"),
                            ("text", "Hi %recipient_fname%"))
    await settled(running)
    [copy] = one_each(mx, [their_list]).values()
    assert copy["To"] == their_list and copy["List-Id"] is None
    assert text_of(copy).startswith("Hi")  # no member's name: it is no member's copy
    rows = await message_rows(running, message_id)
    assert [(r["address"], r["mailing_list"]) for r in rows] == [(their_list, None)]
    [accepted] = await events(running, ("event", "accepted"))
    assert accepted["recipient"] == their_list and "mailing-list" not in accepted
    assert await storeview.count(running.services.store, "list_sends") == 0


# -- durability ----------------------------------------------------------------------------------


async def test_a_list_expansion_killed_midway_resumes_and_every_member_gets_one_copy(
    server_process: Callable[..., Any], store_url: str, tmp_path: Path
):
    """kill -9 while a 2,000-member list is being expanded 20 members per transaction: after a
    restart every member has exactly one recipient row and one accepted event, and every
    member's copy arrives (a copy in flight at the kill may arrive twice: counted, few)."""
    total, chunk = 2000, 20
    capture = await start_capture()
    env = {
        "MTA_OUTBOUND_ENABLED": "true",
        "MTA_DNS_STATIC_MX": json.dumps({DEST: [capture.address]}),
        "MTA_LISTS_EXPANSION_CHUNK": str(chunk),
        "MTA_LISTS_EXPANSION_POLL_S": "0.05",
    } | store_env(store_url)
    crowd = [f"m{n:04}@{DEST}" for n in range(total)]
    services = await open_services(load_config(env=cli_env(tmp_path) | env))
    try:
        await services.domains.create(DOMAIN)
        _, key = await services.keys.create()
        lst = await services.lists.create(LIST, name="Crowd", access="readonly")
        members = [services.lists.checked_member(a, f"Member {a[1:5]}") for a in crowd]
        for start in range(0, total, 500):
            await services.store.write(
                services.lists.upsert_statement(lst, members[start : start + 500], upsert=True)
            )
    finally:
        await services.close()
    try:
        proc = server_process(**env)
        async with aiohttp.ClientSession(proc.url, headers=auth_header(key)) as api:
            form = {"from": f"owner@{DOMAIN}", "to": LIST, "subject": "Hi %recipient_fname%",
                    "text": "x"}
            async with api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
                assert resp.status == 200, await resp.text()
        loop = asyncio.get_running_loop()
        async with storeview.reopened(proc.config()) as store:
            deadline = loop.time() + 30
            while await storeview.count(store, "recipients") < total // 4:
                assert loop.time() < deadline, "the expansion did not start"
                await asyncio.sleep(0.002)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        async with storeview.reopened(proc.config()) as store:
            queued = await storeview.count(store, "recipients")
            assert await storeview.count(store, "list_sends") == 1, "expanded before the kill"
        assert queued < total
        before = len(capture.messages)

        restarted = server_process(**env)
        async with storeview.reopened(restarted.config()) as store:
            deadline = loop.time() + 90
            while await storeview.count(store, "recipients", "WHERE state = 'delivered'") < total:
                assert loop.time() < deadline, "the rest was not expanded and delivered"
                await asyncio.sleep(0.1)
            rows = Counter(r["address"] for r in await store.fetchall(
                "SELECT address FROM recipients"))
            accepted = Counter(r["recipient"] for r in await store.fetchall(
                "SELECT recipient FROM events WHERE event = 'accepted'"))
            assert await storeview.count(store, "list_sends") == 0
        assert rows == Counter(crowd), "a member has no row, or more than one"
        assert accepted == Counter(crowd)
        await capture.wait_for(total, timeout=30)
        arrived = Counter(m.rcpt_to for m in capture.messages)
        assert set(arrived) == set(crowd), "a member's copy never arrived"
        duplicates = sum(n - 1 for n in arrived.values())
        print(f"kill -9 with {queued}/{total} members queued, {before} delivered:"
              f" {duplicates} duplicate copies")
        assert duplicates <= 20 * 5  # at most what was in flight at the kill
        subjects = {storeview.parse(m.data)["Subject"] for m in capture.messages[-50:]}
        assert subjects == {"Hi Member"}
    finally:
        await capture.close()
