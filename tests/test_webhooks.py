"""Webhooks (manual: "Webhooks", "Securing Webhooks", the "Tracking ..." webhook tables): every
committed event reaches the URLs its domain configured, signed with the account key, in
Mailgun's JSON or legacy form style, retried on failure, never lost to a crash. Real parts over
loopback: the server, aiohttp receivers, the capture SMTP server as the remote MX, and
django-anymail's Mailgun tracking view as a real consumer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import threading
import types
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
import pytest
from aiohttp import web

from mta import jobs
from mta.app import Server
from mta.events import ClientInfo, Event, Geolocation, MessageHeaders, MessageSummary, record
from mta.store import open_store
from tests import postgres, storeview
from tests.capture import Capture
from tests.conftest import (
    DOMAIN,
    Running,
    auth_header,
    cli_env,
    free_port,
    make_config,
    run_cli,
    store_env,
)

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
OTHER = "other.example.test"  # a second sending domain (another tenant)
WAIT_S = 15.0  # an upper bound for things that take milliseconds, not a timing assertion


# -- a receiving application ----------------------------------------------------------------


@dataclass
class Post:
    path: str
    content_type: str
    body: bytes
    authorization: str | None

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def form(self) -> list[tuple[str, str]]:
        return urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True)

    def field(self, name: str) -> str:
        values = [v for k, v in self.form if k == name]
        assert values, f"no {name!r} in {self.form}"
        return values[-1]

    @property
    def signed(self) -> dict[str, str]:
        if self.content_type == "application/json":
            return self.json["signature"]
        return {k: self.field(k) for k in ("timestamp", "token", "signature")}


@dataclass
class Receiver:
    """An application answering webhook posts with `statuses` in turn (then 200); posts to a
    path in `held` wait until `release` is set."""

    url: str = ""
    posts: list[Post] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    answered_held: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def to(self, path: str) -> list[Post]:
        return [p for p in self.posts if p.path == path]

    async def wait_for(self, count: int, path: str | None = None) -> list[Post]:
        async def enough() -> None:
            while len(self.posts if path is None else self.to(path)) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), WAIT_S)
        return self.posts if path is None else self.to(path)


async def serve_receiver(received: Receiver, port: int = 0) -> web.AppRunner:
    async def handler(request: web.Request) -> web.Response:
        received.posts.append(Post(request.path, request.content_type, await request.read(),
                                   request.headers.get("Authorization")))
        received.arrived.set()
        if request.path in received.held:
            await received.release.wait()
            received.answered_held += 1
        status = received.statuses.pop(0) if received.statuses else 200
        if status == 302:
            raise web.HTTPFound(location="/redirected")
        return web.Response(status=status, text="ok")

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handler)  # a followed redirect is a GET
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
async def app() -> AsyncIterator[Receiver]:
    received = Receiver()
    runner = await serve_receiver(received)
    yield received
    received.release.set()
    await runner.cleanup()


async def hooks_server(start_server: Callable[..., Any], mx: Capture | None = None,
                       **overrides: Any) -> Running:
    """A server whose webhooks may post to loopback and retry within a test's time."""
    overrides.setdefault("webhooks__retry_intervals_s", [0.2, 0.2])
    return await start_server(
        outbound__enabled=mx is not None,
        dns__static_mx={DEST: [mx.address]} if mx else {},
        webhooks__allow=["127.0.0.0/8"],
        **overrides,
    )


async def add_hook(running: Running, name: str, *urls: str, domain: str = DOMAIN) -> None:
    form = [("id", name), *(("url", u) for u in urls)]
    async with running.session() as api, api.post(f"/v3/domains/{domain}/webhooks",
                                                  data=form) as resp:
        assert resp.status == 200, await resp.text()


async def send(running: Running, to: str, domain: str = DOMAIN, **extra: str) -> str:
    """A message through the API; its Message-Id without brackets."""
    form = {"from": f"news@{domain}", "to": to, "subject": "News", "text": "x", **extra}
    async with running.session() as api, api.post(f"/v3/{domain}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["id"].strip("<>")


def signature_ok(key: str, signed: dict[str, str]) -> bool:
    expected = hmac.new(key.encode(), f"{signed['timestamp']}{signed['token']}".encode(),
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signed["signature"])


async def signing_key(running: Running) -> str:
    return await running.services.account.signing_key()


async def webhook_jobs(running: Running) -> list[dict[str, Any]]:
    found = await jobs.find(running.services.store)
    return [j for j in found if j["kind"].startswith("webhook")]


async def until_finished(running: Running, count: int) -> list[dict[str, Any]]:
    """The webhook jobs once `count` of them are no longer queued."""
    async def finished() -> list[dict[str, Any]]:
        while True:
            found = await webhook_jobs(running)
            if sum(j["state"] != jobs.QUEUED for j in found) >= count:
                return found
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(finished(), WAIT_S)


# -- the API ------------------------------------------------------------------------------------


async def test_webhooks_api_creates_lists_updates_and_deletes_in_mailgun_shapes(start_server):
    running = await start_server()
    base = f"/v3/domains/{DOMAIN}/webhooks"
    async with running.session() as api:
        async with api.get(base) as resp:
            assert resp.status == 200 and await resp.json() == {"webhooks": {}}
        form = [("id", "delivered"), ("url", "https://a.example.com/1"),
                ("url", "https://a.example.com/2")]
        async with api.post(base, data=form) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "message": "Webhook has been created",
                "webhook": {"urls": ["https://a.example.com/1", "https://a.example.com/2"]},
            }
        async with api.post(base, data={"id": "bounce", "url": "http://b.example.com/"}) as resp:
            assert await resp.json() == {"message": "Webhook has been created",
                                         "webhook": {"url": "http://b.example.com/"}}
        async with api.get(base) as resp:
            assert await resp.json() == {"webhooks": {
                "bounce": {"url": "http://b.example.com/"},
                "delivered": {"urls": ["https://a.example.com/1", "https://a.example.com/2"]},
            }}
        async with api.get(f"{base}/delivered") as resp:
            assert await resp.json() == {
                "webhook": {"urls": ["https://a.example.com/1", "https://a.example.com/2"]}}
        async with api.put(f"{base}/delivered", data={"url": "https://a.example.com/3"}) as resp:
            assert await resp.json() == {"message": "Webhook has been updated",
                                         "webhook": {"urls": ["https://a.example.com/3"]}}
        async with api.delete(f"{base}/bounce") as resp:
            assert await resp.json() == {"message": "Webhook has been deleted",
                                         "webhook": {"url": "http://b.example.com/"}}
        async with api.get(f"{base}/bounce") as resp:
            assert resp.status == 404 and await resp.json() == {"message": "Webhook not found"}
        async with api.get(base) as resp:
            assert await resp.json() == {
                "webhooks": {"delivered": {"urls": ["https://a.example.com/3"]}}}


async def test_webhooks_api_refuses_bad_names_too_many_urls_and_non_http_urls(start_server):
    running = await start_server()
    base = f"/v3/domains/{DOMAIN}/webhooks"
    refused = [
        [("id", "sent"), ("url", "https://a.example.com/")],
        [("id", "delivered"), *(("url", f"https://a.example.com/{i}") for i in range(4))],
        [("id", "deliver"), ("url", "https://a.example.com/1"), ("url", "https://a.example.com/2")],
        [("id", "opened"), ("url", "ftp://a.example.com/")],
        [("id", "opened"), ("url", "javascript:alert(1)")],
        [("id", "opened")],
        [("url", "https://a.example.com/")],
    ]
    async with running.session() as api:
        for form in refused:
            async with api.post(base, data=form) as resp:
                assert resp.status == 400, form
                assert (await resp.json())["message"], form
        await add_hook(running, "opened", "https://a.example.com/")
        async with api.post(base, data={"id": "opened", "url": "https://b.example.com/"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == "Webhook 'opened' already exists"
        async with api.put(f"{base}/clicked", data={"url": "https://a.example.com/"}) as resp:
            assert resp.status == 404
        async with api.get(f"{base}/nonsense") as resp:
            assert resp.status == 400
        async with api.get("/v3/domains/nope.example.test/webhooks") as resp:
            assert resp.status == 404 and await resp.json() == {"message": "Domain not found"}


async def test_v4_webhooks_set_one_url_for_several_event_types(start_server):
    running = await start_server()
    url = "https://app.example.com/hooks"
    async with running.session() as api:
        form = [("url", url), ("event_types", "delivered"), ("event_types", "opened")]
        async with api.post(f"/v4/domains/{DOMAIN}/webhooks", data=form) as resp:
            assert resp.status == 200
            assert await resp.json() == {"message": "Webhook has been created", "webhooks": {
                "delivered": {"urls": [url]}, "opened": {"urls": [url]}}}
        form = [("url", url), ("event_types", "opened"), ("event_types", "clicked")]
        async with api.put(f"/v4/domains/{DOMAIN}/webhooks", data=form) as resp:
            assert await resp.json() == {"message": "Webhook has been updated", "webhooks": {
                "clicked": {"urls": [url]}, "opened": {"urls": [url]}}}
        form = [("url", url), ("event_types", "sent")]
        async with api.post(f"/v4/domains/{DOMAIN}/webhooks", data=form) as resp:
            assert resp.status == 400


async def test_signing_key_api_shows_and_rotates_the_key_posts_are_signed_with(
    start_server, app: Receiver
):
    running = await hooks_server(start_server)
    await add_hook(running, "accepted", app.url + "/hook")
    async with running.session() as api:
        async with api.get("/v5/accounts/http_signing_key") as resp:
            old = (await resp.json())["http_signing_key"]
        assert old == await signing_key(running)
        async with api.post("/v5/accounts/http_signing_key") as resp:
            answer = await resp.json()
        assert answer["message"] == "success" and answer["http_signing_key"] != old
    await send(running, f"a@{DEST}")
    [post] = await app.wait_for(1)
    assert signature_ok(answer["http_signing_key"], post.signed)
    assert not signature_ok(old, post.signed)


async def test_signing_key_api_refuses_a_domain_sending_key(start_server):
    running = await start_server()
    _, sending_key = await running.services.keys.create(domain=DOMAIN)
    async with running.session(sending_key) as api:
        async with api.get("/v5/accounts/http_signing_key") as resp:
            assert resp.status == 401
        async with api.post("/v5/accounts/http_signing_key") as resp:
            assert resp.status == 401
        async with api.get(f"/v3/domains/{DOMAIN}/webhooks") as resp:
            assert resp.status == 401


async def test_the_test_endpoint_posts_a_signed_sample_and_tells_the_answer(
    start_server, app: Receiver
):
    running = await hooks_server(start_server)
    await add_hook(running, "delivered", app.url + "/configured")
    async with running.session() as api:
        async with api.put(f"/v3/domains/{DOMAIN}/webhooks/delivered/test") as resp:
            assert await resp.json() == {"code": 200, "message": "HTTP 200 OK"}
        app.statuses = [406]
        async with api.put(f"/v3/domains/{DOMAIN}/webhooks/bounce/test",
                           data={"url": app.url + "/given"}) as resp:
            assert await resp.json() == {"code": 406, "message": "HTTP 406 Not Acceptable"}
        async with api.put(f"/v3/domains/{DOMAIN}/webhooks/opened/test",
                           data={"url": f"http://127.0.0.1:{free_port()}/down"}) as resp:
            answer = await resp.json()
            assert answer["code"] == 0 and "cannot connect" in answer["message"]
    first, second = app.posts
    assert first.path == "/configured" and first.json["event-data"]["event"] == "delivered"
    assert second.path == "/given" and second.field("event") == "bounced"
    key = await signing_key(running)
    assert signature_ok(key, first.signed) and signature_ok(key, second.signed)


# -- what is posted -----------------------------------------------------------------------------


async def test_a_delivered_message_posts_the_stored_event_signed_as_json(
    start_server, app: Receiver, mx: Capture
):
    running = await hooks_server(start_server, mx)
    await add_hook(running, "delivered", app.url + "/delivered")
    message_id = await send(running, f"bob@{DEST}", **{"v:order": "42", "o:tag": "news"})
    [post] = await app.wait_for(1)
    assert post.content_type == "application/json"
    signed = post.json["signature"]
    assert len(signed["token"]) == 50 and signed["timestamp"].isdigit()
    assert signature_ok(await signing_key(running), signed)
    [stored] = await storeview.events(running.services.store, "delivered")
    assert post.json["event-data"] == stored  # as the Events API returns it
    assert stored["message"]["headers"]["message-id"] == message_id
    assert stored["user-variables"] == {"order": "42"} and stored["tags"] == ["news"]


async def test_current_and_legacy_hooks_both_fire_each_in_its_style(
    start_server, app: Receiver, mx: Capture
):
    running = await hooks_server(start_server, mx)
    await add_hook(running, "delivered", app.url + "/new")
    await add_hook(running, "deliver", app.url + "/old")
    message_id = await send(running, f"bob@{DEST}", **{"v:order": "42", "o:tag": "news"})
    await app.wait_for(2)
    [new] = app.to("/new")
    [old] = app.to("/old")
    assert new.json["event-data"]["event"] == "delivered"
    assert old.content_type == "application/x-www-form-urlencoded"
    assert old.field("event") == "delivered"
    assert old.field("recipient") == f"bob@{DEST}" and old.field("domain") == DOMAIN
    assert old.field("Message-Id") == f"<{message_id}>"
    assert old.field("order") == "42"  # user variables as top-level fields
    headers = json.loads(old.field("message-headers"))
    assert ["Message-Id", f"<{message_id}>"] in headers
    assert ["X-Mailgun-Variables", '{"order":"42"}'] in headers
    assert old.field("X-Mailgun-Sid")
    key = await signing_key(running)
    assert signature_ok(key, new.signed) and signature_ok(key, old.signed)
    assert new.signed["token"] != old.signed["token"]
    assert [k for k, _ in old.form][-3:] == ["timestamp", "token", "signature"]


async def test_failures_fire_permanent_and_temporary_hooks_and_legacy_bounce_or_drop(
    start_server, app: Receiver, mx: Capture
):
    running = await hooks_server(start_server, mx)
    for name in ("permanent_fail", "temporary_fail", "bounce", "drop"):
        await add_hook(running, name, f"{app.url}/{name}")
    await send(running, f"unknown@{DEST}")  # 550 5.1.1: a hard bounce, then suppressed
    await app.wait_for(1, "/bounce")
    [bounced] = app.to("/bounce")
    assert bounced.field("event") == "bounced" and bounced.field("code") == "550"
    assert bounced.field("recipient") == f"unknown@{DEST}" and bounced.field("error")
    await send(running, f"unknown@{DEST}")  # now on the bounces list: dropped
    await app.wait_for(1, "/drop")
    [dropped] = app.to("/drop")
    assert dropped.field("event") == "dropped" and dropped.field("reason") == "hardfail"
    assert dropped.field("code") == "605" and dropped.field("description")
    await send(running, f"full@{DEST}")  # 452: a temporary failure
    [temporary] = await app.wait_for(1, "/temporary_fail")
    data = temporary.json["event-data"]
    assert data["severity"] == "temporary" and data["recipient"] == f"full@{DEST}"
    permanent = await app.wait_for(2, "/permanent_fail")
    assert [p.json["event-data"]["reason"] for p in permanent] == ["bounce", "suppress-bounce"]
    assert {p.json["event-data"]["severity"] for p in permanent} == {"permanent"}
    # each legacy hook had a job for both failures: the one it does not post is done unposted
    finished = await until_finished(running, 6)
    assert {j["state"] for j in finished if j["state"] != jobs.QUEUED} == {jobs.DONE}
    assert len(app.to("/bounce")) == 1 and len(app.to("/drop")) == 1


async def test_legacy_open_and_click_hooks_post_the_tracking_fields(start_server, app: Receiver):
    running = await hooks_server(start_server)
    await add_hook(running, "open", app.url + "/open")
    await add_hook(running, "click", app.url + "/click")
    hit: dict[str, Any] = {
        "recipient": f"bob@{DEST}",
        "message": MessageSummary(headers=MessageHeaders(message_id="m1@mg.example.test")),
        "tags": ("news", "weekly"),
        "user_variables": {"order": "42"},
        "ip": "192.0.2.7",
        "geolocation": Geolocation(country="NL", region="NH", city="Amsterdam"),
        "client_info": ClientInfo(client_type="browser", client_os="Linux",
                                  device_type="desktop", client_name="Firefox",
                                  user_agent="Mozilla/5.0 Firefox/128.0"),
    }
    await record(running.services.store, DOMAIN, [
        Event("opened", **hit), Event("clicked", url="https://shop.example.com/?a=1&b=2", **hit)])
    await app.wait_for(2)
    [opened] = app.to("/open")
    [clicked] = app.to("/click")
    assert opened.field("event") == "opened" and clicked.field("event") == "clicked"
    for post in (opened, clicked):
        assert post.field("message-id") == "m1@mg.example.test"
        assert post.field("ip") == "192.0.2.7" and post.field("country") == "NL"
        assert post.field("city") == "Amsterdam" and post.field("client-name") == "Firefox"
        assert post.field("user-agent") == "Mozilla/5.0 Firefox/128.0"
        assert [v for k, v in post.form if k == "tag"] == ["news", "weekly"]
        assert post.field("order") == "42"
    assert clicked.field("url") == "https://shop.example.com/?a=1&b=2"


async def test_a_webhook_fires_for_its_own_domains_events_only(start_server, app: Receiver):
    running = await hooks_server(start_server)
    await running.services.domains.create(OTHER)
    await add_hook(running, "accepted", app.url + "/mine")
    await send(running, f"theirs@{DEST}", domain=OTHER)
    await send(running, f"mine@{DEST}")
    [post] = await app.wait_for(1)
    assert post.json["event-data"]["recipient"] == f"mine@{DEST}"
    owners = {j["owner"] for j in await webhook_jobs(running)}
    assert len(owners) == 1 and len(await webhook_jobs(running)) == 1


# -- retries ------------------------------------------------------------------------------------


async def test_a_receiver_answering_500_gets_the_post_again_with_a_fresh_token(
    start_server, app: Receiver
):
    running = await hooks_server(start_server)
    await add_hook(running, "accepted", app.url + "/hook")
    app.statuses = [500]
    await send(running, f"a@{DEST}")
    first, second = await app.wait_for(2)
    assert first.json["event-data"] == second.json["event-data"]
    assert first.signed["token"] != second.signed["token"]
    [job] = await until_finished(running, 1)
    assert job["state"] == jobs.DONE and job["attempts"] == 2


async def test_a_receiver_answering_406_gets_exactly_one_post(start_server, app: Receiver):
    running = await hooks_server(start_server)
    await add_hook(running, "accepted", app.url + "/hook")
    app.statuses = [406]
    await send(running, f"a@{DEST}")
    [job] = await until_finished(running, 1)
    assert job["state"] == jobs.STOPPED and job["attempts"] == 1
    assert len(app.posts) == 1


async def test_a_delivery_notification_is_posted_once_even_when_it_fails(
    start_server, app: Receiver, mx: Capture
):
    running = await hooks_server(start_server, mx)
    await add_hook(running, "delivered", app.url + "/hook")
    app.statuses = [500]
    await send(running, f"a@{DEST}")
    [job] = await until_finished(running, 1)
    assert job["kind"] == "webhook.once" and job["state"] == jobs.FAILED
    assert len(app.posts) == 1


async def test_a_redirect_is_not_followed_and_the_post_is_retried(start_server, app: Receiver):
    running = await hooks_server(start_server)
    await add_hook(running, "accepted", app.url + "/hook")
    app.statuses = [302]
    await send(running, f"a@{DEST}")
    await app.wait_for(2)
    assert [p.path for p in app.posts] == ["/hook", "/hook"]
    [job] = await until_finished(running, 1)
    assert job["state"] == jobs.DONE and job["attempts"] == 2


async def test_a_url_with_credentials_sends_basic_auth_and_logs_never_show_the_password(
    start_server, app: Receiver
):
    running = await hooks_server(start_server, webhooks__retry_intervals_s=[0.1])
    authed = app.url.replace("http://", "http://hookuser:s3cret-pw@") + "/authed"
    down = f"http://hookuser:s3cret-pw@127.0.0.1:{free_port()}/down"
    await add_hook(running, "accepted", authed, down)
    await send(running, f"a@{DEST}")
    [post] = await app.wait_for(1)
    assert post.authorization == "Basic " + base64.b64encode(b"hookuser:s3cret-pw").decode()
    finished = await until_finished(running, 2)
    [failed] = [j for j in finished if j["state"] == jobs.FAILED]
    assert "cannot connect" in failed["last_error"]
    assert all("s3cret-pw" not in (j["last_error"] or "") for j in finished)


# -- never lost, never stuck --------------------------------------------------------------------


async def test_a_webhook_committed_before_kill_9_is_posted_after_restart(
    server_process, store_url: str
):
    port = free_port()  # the receiver is down until the server has been killed
    env = {"MTA_WEBHOOKS_ALLOW": '["127.0.0.0/8"]', "MTA_WEBHOOKS_RETRY_INTERVALS_S": "[1, 1]"}
    env |= store_env(store_url)
    proc = await asyncio.to_thread(server_process, **env)
    await asyncio.to_thread(proc.cli, "domain", "add", DOMAIN)
    key = (await asyncio.to_thread(proc.cli, "key", "create")).stdout.strip()
    async with aiohttp.ClientSession(proc.url, headers=auth_header(key)) as api:
        async with api.post(f"/v3/domains/{DOMAIN}/webhooks", data={
                "id": "accepted", "url": f"http://127.0.0.1:{port}/hook"}) as resp:
            assert resp.status == 200
        async with api.post(f"/v3/{DOMAIN}/messages", data={
                "from": f"s@{DOMAIN}", "to": f"a@{DEST}", "text": "x"}) as resp:
            assert resp.status == 200
            message_id = (await resp.json())["id"].strip("<>")
    proc.proc.send_signal(signal.SIGKILL)  # the event is committed; its post is not made
    proc.proc.wait()
    received = Receiver()
    runner = await serve_receiver(received, port)
    try:
        await asyncio.to_thread(server_process, **env)
        [post] = await received.wait_for(1)
        data = post.json["event-data"]
        assert data["event"] == "accepted"
        assert data["message"]["headers"]["message-id"] == message_id
    finally:
        await runner.cleanup()


async def test_a_stuck_receiver_for_one_domain_does_not_hold_up_another_domains_webhooks(
    start_server, app: Receiver
):
    running = await hooks_server(start_server, webhooks__concurrency=4,
                                 webhooks__posts_per_url=1, webhooks__timeout_s=30.0)
    await running.services.domains.create(OTHER)
    app.held = {"/stuck"}
    await add_hook(running, "accepted", app.url + "/stuck")
    await add_hook(running, "accepted", app.url + "/flowing", domain=OTHER)
    for n in range(12):
        await send(running, f"a{n}@{DEST}")
    await app.wait_for(1, "/stuck")
    for n in range(6):
        await send(running, f"b{n}@{DEST}", domain=OTHER)
    await app.wait_for(6, "/flowing")
    # every post of the other domain arrived while the stuck receiver still held its first
    assert app.answered_held == 0 and len(app.to("/stuck")) == 1
    app.release.set()
    await app.wait_for(12, "/stuck")


async def test_store_copy_to_postgresql_carries_webhooks_without_posting_history_again(
    tmp_path: Path, tls_pair: tuple[str, str], postgres_cluster: postgres.Cluster
):
    server = Server(make_config(tmp_path, tls_pair, store__url=""))
    await server.start()
    try:
        services = server.services
        assert services is not None
        await services.domains.create(DOMAIN)
        await services.webhooks.create(DOMAIN, "accepted", ["https://app.example.com/hook"])
        await record(services.store, DOMAIN, [Event("accepted", recipient=f"r{n}@{DEST}")
                                              for n in range(5)])
        before = [j for j in await jobs.find(services.store) if j["kind"] == "webhook"]
        assert len(before) == 5
    finally:
        await server.stop()
    url = postgres_cluster.new_database()
    await asyncio.to_thread(run_cli, cli_env(tmp_path), "store", "copy", "--to", url)
    store = await open_store(make_config(tmp_path / "pg", store__url=url))
    try:
        after = [j for j in await jobs.find(store) if j["kind"] == "webhook"]
        assert [(j["owner"], j["payload"]) for j in after] == [
            (j["owner"], j["payload"]) for j in before]
        assert await storeview.count(store, "webhooks") == 1
        assert await storeview.count(store, "events") == 5
    finally:
        await store.close()


# -- django-anymail, a real consumer ------------------------------------------------------------


@dataclass
class Anymail:
    """django-anymail's Mailgun tracking view in a WSGI server on loopback; `events` are the
    AnymailTrackingEvents its `tracking` signal sent."""

    url: str
    events: list[Any]

    async def wait_for(self, count: int) -> list[Any]:
        async def enough() -> None:
            while len(self.events) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(enough(), WAIT_S)
        return self.events


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test's output."""


def _django() -> Any:
    """Django set up once per process: the anymail URLs, nothing else."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["127.0.0.1"],
            INSTALLED_APPS=["anymail"], ROOT_URLCONF=types.ModuleType("anymail_urls"),
            ANYMAIL={}, LOGGING_CONFIG=None,
        )
        import django

        django.setup()
        from django.urls import include, path

        settings.ROOT_URLCONF.urlpatterns = [path("anymail/", include("anymail.urls"))]
    return settings


@pytest.fixture
async def anymail(running_key: str) -> AsyncIterator[Anymail]:
    from anymail.signals import tracking
    from django.core.handlers.wsgi import WSGIHandler

    settings = _django()
    settings.ANYMAIL = {"MAILGUN_WEBHOOK_SIGNING_KEY": running_key, "WEBHOOK_SECRET": "user:pass"}
    events: list[Any] = []

    def collect(sender: Any, event: Any, esp_name: str, **kwargs: Any) -> None:
        events.append(event)

    tracking.connect(collect, weak=False)
    server: WSGIServer = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield Anymail(f"http://user:pass@127.0.0.1:{port}/anymail/mailgun/tracking/", events)
    finally:
        server.shutdown()
        server.server_close()
        tracking.disconnect(collect)


@pytest.fixture
async def hooks_running(start_server, mx: Capture) -> Running:
    return await hooks_server(start_server, mx)


@pytest.fixture
async def running_key(hooks_running: Running) -> str:
    return await signing_key(hooks_running)


@pytest.mark.parametrize("style", ["json", "legacy"])
async def test_django_anymail_parses_deliveries_and_bounces_in_both_styles(
    hooks_running: Running, anymail: Anymail, style: str
):
    running = hooks_running
    names = ("delivered", "permanent_fail") if style == "json" else ("deliver", "bounce")
    for name in names:
        await add_hook(running, name, anymail.url)
    delivered_id = await send(running, f"bob@{DEST}", **{"v:order": "42", "o:tag": "news"})
    [delivered] = await anymail.wait_for(1)
    bounced_id = await send(running, f"unknown@{DEST}")
    bounced = (await anymail.wait_for(2))[1]
    assert delivered.event_type == "delivered"
    assert delivered.recipient == f"bob@{DEST}"
    assert delivered.message_id == f"<{delivered_id}>"
    assert delivered.metadata == {"order": "42"}
    assert bounced.event_type == "bounced"
    assert bounced.recipient == f"unknown@{DEST}"
    assert bounced.message_id == f"<{bounced_id}>"
    assert bounced.reject_reason == "bounced"
    assert delivered.event_id != bounced.event_id  # the token: one per post
