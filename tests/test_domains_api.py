"""Domains API on /v3 and /v4: create, list, get, delete, and DNS verification
(mailgun-api.md §12). DNS is the config's static answers; nothing else stands in for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mta.app import Server
from tests import storeview
from tests.capture import Capture
from tests.conftest import (
    DOMAIN,
    Running,
    cli_env,
    free_port,
    make_config,
    run_cli,
    store_env,
)

NEW = "new.example.test"
HOST = "mx.mta.test"  # conftest's server.hostname: SPF, MX and CNAME targets derive from it
RFC2822_GMT = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


async def create(
    api: aiohttp.ClientSession, name: str = NEW, *, version: str = "v3", **fields: str
) -> tuple[int, dict[str, Any]]:
    """Urlencoded, as the Python SDK sends it (dkim_key_size 1024 keeps the test fast)."""
    data = {"name": name, "dkim_key_size": "1024", **fields}
    async with api.post(f"/{version}/domains", data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def get(api: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with api.get(path) as resp:
        return resp.status, await resp.json(content_type=None)


async def verify(
    api: aiohttp.ClientSession, name: str = NEW, version: str = "v3"
) -> dict[str, Any]:
    async with api.put(f"/{version}/domains/{name}/verify") as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def send(api: aiohttp.ClientSession, domain: str, to: str = "alice@example.net") -> int:
    data = {"from": f"sender@{domain}", "to": to, "subject": "Hi", "text": "Body"}
    async with api.post(f"/v3/{domain}/messages", data=data) as resp:
        return resp.status


def record(body: dict[str, Any], record_type: str, name: str) -> dict[str, Any]:
    found = [
        r
        for r in body["sending_dns_records"] + body["receiving_dns_records"]
        if r["record_type"] == record_type and r["name"] == name
    ]
    assert len(found) == 1, found
    return found[0]


def dkim_record(body: dict[str, Any], name: str = NEW) -> dict[str, Any]:
    return record(body, "TXT", f"mta._domainkey.{name}")


def published(body: dict[str, Any], **override: list[str]) -> dict[str, list[str]]:
    """Static DNS answers holding exactly the records the API told us to publish, with
    `override` (keyed "spf", "dkim", "mx", "cname") replacing some of them."""
    spf = record(body, "TXT", NEW)
    answers = {
        "spf": (f"{NEW} TXT", [spf["value"]]),
        "dkim": (f"mta._domainkey.{NEW} TXT", [dkim_record(body)["value"]]),
        "mx": (f"{NEW} MX", [f"10 {HOST}"]),
        "cname": (f"email.{NEW} CNAME", [HOST]),
    }
    return {key: override.get(kind, values) for kind, (key, values) in answers.items()}


@pytest.fixture
def with_dns(running: Running, tmp_path: Path) -> Callable[..., Any]:
    """Restart the server (same data directory, same key) with `answers` as its DNS: the
    operator has published records since the domain was created."""

    @contextlib.asynccontextmanager
    async def restart(answers: dict[str, list[str]]) -> AsyncIterator[aiohttp.ClientSession]:
        await running.server.stop()
        store_url = running.services.config.store.url  # the same database too
        server = Server(make_config(tmp_path, dns__answers=answers, store__url=store_url))
        await server.start()
        try:
            url = f"http://127.0.0.1:{server.api_port}"
            async with Running(server, url, running.key, DOMAIN).session() as session:
                yield session
        finally:
            await server.stop()

    return restart


# -- create ---------------------------------------------------------------------------------------


async def test_create_with_urlencoded_form_answers_with_domain_and_records(
    api: aiohttp.ClientSession,
):
    status, body = await create(
        api, smtp_password="s3cretpass", spam_action="disabled", wildcard="false"
    )
    assert status == 200, body
    assert set(body) == {"message", "domain", "receiving_dns_records", "sending_dns_records"}
    assert body["message"] == "Domain has been created"
    domain = body["domain"]
    assert domain["name"] == NEW
    assert domain["state"] == "unverified"
    assert domain["type"] == "custom"
    assert domain["is_disabled"] is False
    assert domain["spam_action"] == "disabled"
    assert domain["wildcard"] is False
    assert domain["require_tls"] is False
    assert domain["skip_verification"] is False
    assert domain["smtp_login"] == f"postmaster@{NEW}"
    assert domain["web_prefix"] == "email"
    assert domain["web_scheme"] == "http"
    assert isinstance(domain["id"], str) and domain["id"]
    assert RFC2822_GMT.fullmatch(domain["created_at"]), domain["created_at"]

    assert body["receiving_dns_records"] == [
        {
            "record_type": "MX",
            "name": NEW,
            "value": HOST,
            "priority": "10",
            "valid": "unknown",
            "cached": [],
            "is_active": True,
        }
    ]
    spf, dkim, cname = body["sending_dns_records"]
    assert spf == {
        "record_type": "TXT",
        "name": NEW,
        "value": f"v=spf1 a:{HOST} ~all",
        "valid": "unknown",
        "cached": [],
        "is_active": True,
    }
    assert dkim["record_type"] == "TXT"
    assert dkim["name"] == f"mta._domainkey.{NEW}"
    assert re.fullmatch(r"k=rsa; p=[A-Za-z0-9+/]+=*", dkim["value"]), dkim["value"]
    assert (dkim["valid"], dkim["cached"]) == ("unknown", [])
    assert cname == {
        "record_type": "CNAME",
        "name": f"email.{NEW}",
        "value": HOST,
        "valid": "unknown",
        "cached": [],
        "is_active": True,
    }


async def test_create_with_multipart_form_on_v4_like_mailgun_js(api: aiohttp.ClientSession):
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in (
        ("name", NEW),
        ("smtp_password", "s3cretpass"),
        ("spam_action", "tag"),
        ("wildcard", "true"),
        ("dkim_key_size", "1024"),
    ):
        form.add_field(name, value)
    async with api.post("/v4/domains", data=form) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        body = await resp.json()
        assert resp.status == 200, body
    assert body["message"] == "Domain has been created"
    assert body["domain"]["name"] == NEW
    assert body["domain"]["spam_action"] == "tag"
    assert body["domain"]["wildcard"] is True
    assert dkim_record(body)["value"].startswith("k=rsa; p=")


async def test_domain_names_are_kept_in_lower_case(api: aiohttp.ClientSession):
    status, body = await create(api, "New.Example.TEST")
    assert status == 200, body
    assert body["domain"]["name"] == NEW
    status, got = await get(api, "/v3/domains/NEW.example.test")
    assert status == 200
    assert got["domain"]["name"] == NEW


async def test_creating_an_existing_domain_is_refused(api: aiohttp.ClientSession):
    assert (await create(api))[0] == 200
    for name in (NEW, NEW.upper()):
        status, body = await create(api, name, version="v4")
        assert status == 400
        assert body == {"message": "This domain name is already taken"}
    status, listing = await get(api, "/v4/domains")
    assert [d["name"] for d in listing["items"]] == [DOMAIN, NEW]


@pytest.mark.parametrize(
    "name", ["not a domain", "nodots", "-bad.example.test", "bad_.example.test", "a..b.test"]
)
async def test_creating_a_domain_with_a_bad_name_is_refused(api: aiohttp.ClientSession, name: str):
    status, body = await create(api, name)
    assert status == 400
    assert set(body) == {"message"} and body["message"]
    status, listing = await get(api, "/v3/domains")
    assert listing["total_count"] == 1


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("disabled", "disabled"),
        ("block", "block"),
        ("delete", "block"),
        ("tag", "tag"),
        ("mark", "tag"),
    ],
)
async def test_spam_action_takes_mailguns_values_and_the_go_sdk_aliases(
    api: aiohttp.ClientSession, given: str, stored: str
):
    status, body = await create(api, spam_action=given)
    assert status == 200, body
    assert body["domain"]["spam_action"] == stored


@pytest.mark.parametrize(
    "fields",
    [
        {"spam_action": "bin"},
        {"dkim_key_size": "4096"},
        {"wildcard": "maybe"},
        {"web_scheme": "ftp"},
    ],
)
async def test_creating_a_domain_with_a_bad_option_is_refused(
    api: aiohttp.ClientSession, fields: dict[str, str]
):
    status, body = await create(api, **fields)
    assert status == 400
    assert set(body) == {"message"} and body["message"]
    assert (await get(api, f"/v3/domains/{NEW}"))[0] == 404


async def test_creating_a_domain_without_a_name_is_refused(api: aiohttp.ClientSession):
    async with api.post("/v3/domains", data={"spam_action": "disabled"}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"message": "name parameter is missing"}


# -- list, get, delete ----------------------------------------------------------------------------


async def test_list_on_v3_and_v4_gives_total_count_and_items_with_limit_and_skip(
    api: aiohttp.ClientSession,
):
    names = [DOMAIN] + [f"d{n}.example.test" for n in range(3)]
    for name in names[1:]:
        assert (await create(api, name))[0] == 200
    for version in ("v3", "v4"):
        status, body = await get(api, f"/{version}/domains")
        assert status == 200
        assert body["total_count"] == 4
        assert [d["name"] for d in body["items"]] == names
        assert body["items"][1]["smtp_login"] == "postmaster@d0.example.test"
        status, body = await get(api, f"/{version}/domains?limit=2&skip=1")
        assert status == 200
        assert body["total_count"] == 4
        assert [d["name"] for d in body["items"]] == names[1:3]
    status, body = await get(api, "/v4/domains?skip=10")
    assert (body["total_count"], body["items"]) == (4, [])


async def test_get_one_domain_on_v3_and_v4_gives_domain_and_records(api: aiohttp.ClientSession):
    status, created = await create(api)
    assert status == 200
    for version in ("v3", "v4"):
        status, body = await get(api, f"/{version}/domains/{NEW}")
        assert status == 200
        assert set(body) == {"domain", "receiving_dns_records", "sending_dns_records"}
        assert body["domain"] == created["domain"]
        assert body["sending_dns_records"] == created["sending_dns_records"]
        assert body["receiving_dns_records"] == created["receiving_dns_records"]


async def test_get_unknown_domain_is_404_with_mailguns_message(api: aiohttp.ClientSession):
    for version in ("v3", "v4"):
        status, body = await get(api, f"/{version}/domains/nowhere.example.test")
        assert status == 404
        assert body == {"message": "Domain not found"}


async def test_delete_removes_the_domain_and_its_sending(api: aiohttp.ClientSession):
    assert (await create(api))[0] == 200
    assert await send(api, NEW) == 200
    async with api.delete(f"/v3/domains/{NEW}") as resp:
        assert resp.status == 200
        assert await resp.json() == {"message": "Domain has been deleted"}
    assert (await get(api, f"/v3/domains/{NEW}"))[0] == 404
    assert [d["name"] for d in (await get(api, "/v4/domains"))[1]["items"]] == [DOMAIN]
    assert await send(api, NEW) == 404
    async with api.delete(f"/v3/domains/{NEW}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"message": "Domain not found"}


async def test_new_domain_can_send_at_once_while_unverified(api: aiohttp.ClientSession):
    status, body = await create(api, version="v4")
    assert status == 200
    assert body["domain"]["state"] == "unverified"
    assert await send(api, NEW) == 200


# -- verification ---------------------------------------------------------------------------------


async def test_verify_with_published_spf_and_dkim_makes_domain_active(
    api: aiohttp.ClientSession, with_dns: Callable[..., Any]
):
    _, created = await create(api)
    answers = published(created)
    async with with_dns(answers) as dns_api:
        body = await verify(dns_api)
        assert body["message"] == "Domain DNS records have been updated"
        assert body["domain"]["state"] == "active"
        assert body["domain"]["is_disabled"] is False
        for r in body["sending_dns_records"] + body["receiving_dns_records"]:
            assert r["valid"] == "valid", r
        assert record(body, "TXT", NEW)["cached"] == answers[f"{NEW} TXT"]
        assert dkim_record(body)["cached"] == answers[f"mta._domainkey.{NEW} TXT"]
        assert record(body, "MX", NEW)["cached"] == [f"10 {HOST}"]
        assert record(body, "CNAME", f"email.{NEW}")["cached"] == [HOST]
        status, again = await get(dns_api, f"/v4/domains/{NEW}")
        assert status == 200
        assert again["domain"]["state"] == "active"
        assert again["sending_dns_records"] == body["sending_dns_records"]
        status, listing = await get(dns_api, "/v3/domains?state=active")
        assert [d["name"] for d in listing["items"]] == [NEW]


async def test_verify_with_another_dkim_key_leaves_domain_unverified(
    api: aiohttp.ClientSession, with_dns: Callable[..., Any]
):
    _, created = await create(api)
    _, other = await get(api, f"/v3/domains/{DOMAIN}")
    wrong_key = dkim_record(other, DOMAIN)["value"]
    async with with_dns(published(created, dkim=[wrong_key])) as dns_api:
        body = await verify(dns_api, version="v4")
        assert body["domain"]["state"] == "unverified"
        dkim = dkim_record(body)
        assert dkim["valid"] == "invalid"
        assert dkim["cached"] == [wrong_key]
        assert record(body, "TXT", NEW)["valid"] == "valid"
        assert await send(dns_api, NEW) == 200


async def test_verify_with_nothing_published_marks_every_record_invalid(
    api: aiohttp.ClientSession, with_dns: Callable[..., Any]
):
    assert (await create(api))[0] == 200
    async with with_dns({}) as dns_api:
        body = await verify(dns_api)
        assert body["domain"]["state"] == "unverified"
        for r in body["sending_dns_records"] + body["receiving_dns_records"]:
            assert (r["valid"], r["cached"]) == ("invalid", []), r


async def test_spf_record_that_includes_ours_among_other_mechanisms_is_valid(
    api: aiohttp.ClientSession, with_dns: Callable[..., Any]
):
    _, created = await create(api)
    spf = f"v=spf1 ip4:192.0.2.0/24 include:_spf.example.net +a:{HOST} -all"
    unrelated = "google-site-verification=abc123"
    async with with_dns(published(created, spf=[unrelated, spf])) as dns_api:
        body = await verify(dns_api)
        assert record(body, "TXT", NEW)["valid"] == "valid"
        assert body["domain"]["state"] == "active"


async def test_spf_record_without_our_mechanism_is_invalid(
    api: aiohttp.ClientSession, with_dns: Callable[..., Any]
):
    _, created = await create(api)
    async with with_dns(published(created, spf=["v=spf1 include:_spf.example.net ~all"])) as a:
        body = await verify(a)
        assert record(body, "TXT", NEW)["valid"] == "invalid"
        assert body["domain"]["state"] == "unverified"


async def test_dkim_record_split_over_whitespace_is_valid(
    api: aiohttp.ClientSession, with_dns: Callable[..., Any]
):
    _, created = await create(api)
    key = dkim_record(created)["value"].split("p=", 1)[1]
    chunks = " ".join(key[i : i + 60] for i in range(0, len(key), 60))
    split = f"v=DKIM1; k = rsa; p = {chunks}"
    async with with_dns(published(created, dkim=[split])) as dns_api:
        body = await verify(dns_api)
        assert dkim_record(body)["valid"] == "valid"
        assert body["domain"]["state"] == "active"


async def test_a_name_listed_in_dns_answers_is_never_looked_up_for_other_types(
    start_server: Callable[..., Any],
):
    silent = free_port()  # nothing answers there: a real look-up ends as "unknown"
    running = await start_server(
        dns__only_answers=False,
        dns__nameservers=[f"127.0.0.1:{silent}"],
        dns__timeout_s=0.3,
        dns__answers={f"{NEW} TXT": ["v=spf1 -all"]},
    )
    async with running.session() as api:
        assert (await create(api))[0] == 200
        body = await verify(api)
    mx = record(body, "MX", NEW)  # NEW is listed (for TXT): its MX comes from config, none
    assert (mx["valid"], mx["cached"]) == ("invalid", [])
    assert record(body, "TXT", NEW)["cached"] == ["v=spf1 -all"]
    assert record(body, "CNAME", f"email.{NEW}")["valid"] == "unknown"  # not listed: asked
    assert body["domain"]["state"] == "unverified"


async def test_verify_unknown_domain_is_404(api: aiohttp.ClientSession):
    async with api.put("/v4/domains/nowhere.example.test/verify") as resp:
        assert resp.status == 404
        assert await resp.json() == {"message": "Domain not found"}


# -- keys and key sizes ---------------------------------------------------------------------------


async def test_sending_key_cannot_use_domain_endpoints_but_sends_for_its_domain(
    running: Running, api: aiohttp.ClientSession
):
    assert (await create(api, "other.example.test"))[0] == 200
    _, secret = await running.services.keys.create(domain=DOMAIN)
    async with running.session(secret) as sending:
        for method, path in (
            ("GET", "/v3/domains"),
            ("GET", "/v4/domains"),
            ("GET", f"/v3/domains/{DOMAIN}"),
            ("POST", "/v4/domains"),
            ("PUT", f"/v3/domains/{DOMAIN}/verify"),
            ("DELETE", "/v3/domains/other.example.test"),
        ):
            async with sending.request(method, path, data={"name": "x.example.test"}) as resp:
                assert resp.status == 401, (method, path)
                assert await resp.text() == "Forbidden"
        assert await send(sending, DOMAIN) == 200
        assert await send(sending, "other.example.test") == 401
    _, listing = await get(api, "/v3/domains")
    assert [d["name"] for d in listing["items"]] == [DOMAIN, "other.example.test"]


def modulus_bits(dkim_value: str) -> int:
    key = load_der_public_key(base64.b64decode(dkim_value.split("p=", 1)[1]))
    assert isinstance(key, rsa.RSAPublicKey)
    return key.key_size


async def test_default_dkim_key_is_2048_bit(start_server: Callable[..., Any]):
    running = await start_server(domains__dkim_key_bits=2048)
    async with running.session() as api:
        async with api.post("/v3/domains", data={"name": NEW}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert modulus_bits(dkim_record(body)["value"]) == 2048
        status, small = await create(api, "small.example.test", dkim_key_size="1024")
        assert status == 200
        assert modulus_bits(dkim_record(small, "small.example.test")["value"]) == 1024


# -- removing a domain: its keys and its queued mail go with it ------------------------------------


@pytest.mark.parametrize("how", ["DELETE /v3/domains/<d>", "mta domain remove"])
async def test_removing_a_domain_revokes_its_sending_keys_even_once_it_is_added_again(
    running: Running, api: aiohttp.ClientSession, tmp_path: Path, how: str
):
    """A leaked domain key must not outlive its domain, nor come back to life when the name
    is added again (perhaps for someone else)."""
    assert (await create(api))[0] == 200
    _, doomed = await running.services.keys.create(domain=NEW)
    _, bystander = await running.services.keys.create(domain=DOMAIN)
    async with running.session(doomed) as sending:
        assert await send(sending, NEW) == 200
        if how == "mta domain remove":
            env = cli_env(tmp_path) | store_env(running.services.config.store.url)
            result = await asyncio.to_thread(run_cli, env, "domain", "remove", NEW)
            assert f"removed {NEW}" in result.stdout
        else:
            async with api.delete(f"/v3/domains/{NEW}") as resp:
                assert resp.status == 200
        assert await send(sending, NEW) == 401
        assert (await create(api))[0] == 200
        assert await send(sending, NEW) == 401
    async with running.session(bystander) as other:
        assert await send(other, DOMAIN) == 200  # another domain's key is left alone
    assert await send(api, NEW) == 200  # the account key sends for the domain added again


async def failed_events(running: Running, recipient: str, timeout: float = 10) -> list[Any]:
    """The `failed` events about `recipient` in the store, waiting for the first one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in await storeview.events(running.services.store, "failed")
                 if e["recipient"] == recipient]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_removing_a_domain_fails_its_queued_mail_instead_of_sending_it_unsigned(
    start_server: Callable[..., Any], mx: Capture
):
    """Scheduled mail of a removed domain has no key to be signed with any more: it is failed
    with an event saying why, and never reaches the recipient's server."""
    dest = "dest.example.test"
    running = await start_server(outbound__enabled=True, dns__static_mx={dest: [mx.address]})
    async with running.session() as api:
        assert (await create(api))[0] == 200
        data = {"from": f"news@{NEW}", "to": [f"ann@{dest}", f"ben@{dest}"], "subject": "Later",
                "text": "Body", "o:deliverytime": str(int(time.time()) + 3600)}
        form = [(k, v) for k, vs in data.items() for v in (vs if isinstance(vs, list) else [vs])]
        async with api.post(f"/v3/{NEW}/messages", data=form) as resp:
            assert resp.status == 200
            message_id = (await resp.json())["id"].strip("<>")
        async with api.delete(f"/v3/domains/{NEW}") as resp:
            assert resp.status == 200

    for rcpt in (f"ann@{dest}", f"ben@{dest}"):
        [failed] = await failed_events(running, rcpt)
        assert failed["severity"] == "permanent"
        assert failed["delivery-status"]["description"] == (
            f"Not delivering: the sending domain {NEW} was removed"
        )
        assert failed["message"]["headers"]["message-id"] == message_id
    store = running.services.store
    assert {r["state"] for r in await storeview.recipients(store, message_id)} == {"failed"}
    assert mx.messages == [] and mx.connections == 0


async def test_a_domain_added_again_does_not_show_the_removed_domains_events(
    running: Running, api: aiohttp.ClientSession
):
    form = {"from": f"me@{DOMAIN}", "to": "bob@example.net", "subject": "s", "text": "t"}
    async with api.post(f"/v3/{DOMAIN}/messages", data=form) as response:
        assert response.status == 200
    async with api.get(f"/v3/{DOMAIN}/events") as response:
        assert [e["event"] for e in (await response.json())["items"]] == ["accepted"]
    async with api.delete(f"/v3/domains/{DOMAIN}") as response:
        assert response.status == 200
    await running.services.domains.create(DOMAIN)  # the name, perhaps for someone else
    async with api.get(f"/v3/{DOMAIN}/events") as response:
        assert (await response.json())["items"] == []
