"""SMTP credentials API under /v3/domains/<d>/credentials (mailgun-api.md §13), the
`smtp_password` of domain creation, and the `mta credential` commands. What SMTP AUTH will
call, `services.credentials.verify`, is checked against every change."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mta.app import open_services
from tests import storeview
from tests.conftest import DOMAIN, Process, Running, cli_env, make_config, run_cli

ALICE = f"alice@{DOMAIN}"
OTHER = "other.example.test"
RFC2822_GMT = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
BASE = f"/v3/domains/{DOMAIN}/credentials"


async def call(
    api: aiohttp.ClientSession, method: str, path: str, data: Any = None
) -> tuple[int, Any]:
    async with api.request(method, path, data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def add(
    api: aiohttp.ClientSession, login: str = "alice", password: str = "supasecret"
) -> None:
    status, body = await call(api, "POST", BASE, {"login": login, "password": password})
    assert (status, body) == (200, {"message": "Created 1 credentials pair(s)"})


async def logins(api: aiohttp.ClientSession, domain: str = DOMAIN) -> list[str]:
    status, body = await call(api, "GET", f"/v3/domains/{domain}/credentials")
    assert status == 200, body
    return [item["login"] for item in body["items"]]


async def verifies(running: Running, login: str, password: str) -> bool:
    return await running.services.credentials.verify(login, password) is not None


# -- create and list ------------------------------------------------------------------------------


async def test_created_credential_is_listed_with_mailguns_item_shape(api: aiohttp.ClientSession):
    await add(api, "alice", "supasecret")
    status, body = await call(api, "GET", BASE)
    assert status == 200
    assert body["total_count"] == 1
    [item] = body["items"]
    assert RFC2822_GMT.fullmatch(item.pop("created_at")), item
    assert item == {"login": ALICE, "mailbox": ALICE, "size_bytes": 0}


async def test_create_with_multipart_full_address_like_mailgun_js(api: aiohttp.ClientSession):
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("login", ALICE)
    form.add_field("password", "supasecret")
    status, body = await call(api, "POST", BASE, form)
    assert (status, body) == (200, {"message": "Created 1 credentials pair(s)"})
    assert await logins(api) == [ALICE]


async def test_list_pages_with_limit_and_skip_and_counts_every_login(
    api: aiohttp.ClientSession,
):
    for name in ("a1", "a2", "a3"):
        await add(api, name)
    status, body = await call(api, "GET", f"{BASE}?limit=1&skip=1")
    assert status == 200
    assert body["total_count"] == 3
    assert [i["login"] for i in body["items"]] == [f"a2@{DOMAIN}"]
    status, body = await call(api, "GET", f"{BASE}?limit=many")
    assert (status, body) == (400, {"message": "'limit' must be a whole number from 0 to 1000"})


async def test_v4_paths_serve_credentials_like_v3(api: aiohttp.ClientSession):
    status, _ = await call(
        api, "POST", f"/v4/domains/{DOMAIN}/credentials", {"login": "alice", "password": "12345"}
    )
    assert status == 200
    assert await logins(api) == [ALICE]


async def test_creating_an_existing_login_is_refused_in_any_case(api: aiohttp.ClientSession):
    await add(api, "alice")
    for login in ("alice", f"ALICE@{DOMAIN.upper()}"):
        status, body = await call(api, "POST", BASE, {"login": login, "password": "otherpass"})
        assert (status, body) == (400, {"message": f"Credentials already exist: {ALICE}"})


@pytest.mark.parametrize("password", ["abcd", "x" * 129])
async def test_password_length_outside_5_to_128_is_refused(
    api: aiohttp.ClientSession, password: str
):
    status, body = await call(api, "POST", BASE, {"login": "alice", "password": password})
    assert status == 400
    assert body == {"message": "Password length must be between 5 and 128 characters"}
    assert await logins(api) == []


@pytest.mark.parametrize("missing", ["login", "password"])
async def test_create_without_login_or_password_names_the_missing_parameter(
    api: aiohttp.ClientSession, missing: str
):
    data = {"login": "alice", "password": "supasecret"}
    del data[missing]
    status, body = await call(api, "POST", BASE, data)
    assert (status, body) == (400, {"message": f"{missing} parameter is missing"})


async def test_login_on_another_domain_is_refused(api: aiohttp.ClientSession):
    status, body = await call(
        api, "POST", BASE, {"login": f"bob@{OTHER}", "password": "supasecret"}
    )
    assert status == 400
    assert body == {"message": f"login must be an address on {DOMAIN}: bob@{OTHER}"}
    assert await logins(api) == []


async def test_passwords_are_stored_as_scrypt_hashes_never_in_clear(
    running: Running, api: aiohttp.ClientSession
):
    await add(api, "alice", "supasecret")
    rows = await running.services.store.fetchall(
        "SELECT login, domain, password_hash FROM credentials"
    )
    assert [(r["login"], r["domain"]) for r in rows] == [(ALICE, DOMAIN)]
    stored = rows[0]["password_hash"]
    assert stored.startswith("scrypt$")
    assert "supasecret" not in stored


# -- password change, delete, and what SMTP AUTH sees ---------------------------------------------


async def test_smtp_auth_check_follows_create_password_change_and_delete(
    running: Running, api: aiohttp.ClientSession
):
    assert not await verifies(running, ALICE, "supasecret")
    await add(api, "alice", "supasecret")
    assert await verifies(running, ALICE, "supasecret")
    assert await verifies(running, "Alice@MG.example.test", "supasecret")
    assert not await verifies(running, ALICE, "wrongpass")

    status, body = await call(api, "PUT", f"{BASE}/alice", {"password": "newsecret"})
    assert (status, body) == (200, {"message": "Password changed"})
    assert await verifies(running, ALICE, "newsecret")
    assert not await verifies(running, ALICE, "supasecret")  # not remembered from before

    status, body = await call(api, "DELETE", f"{BASE}/alice")
    assert (status, body) == (200, {"message": "Credentials have been deleted", "spec": ALICE})
    assert not await verifies(running, ALICE, "newsecret")
    assert await logins(api) == []


async def test_password_change_on_the_manuals_path_and_with_an_encoded_full_login(
    running: Running, api: aiohttp.ClientSession
):
    await add(api, "alice", "supasecret")
    status, body = await call(api, "PUT", f"/v3/{DOMAIN}/credentials/alice", {"password": "abc123"})
    assert (status, body) == (200, {"message": "Password changed"})
    assert await verifies(running, ALICE, "abc123")
    status, _ = await call(api, "PUT", f"{BASE}/alice%40{DOMAIN}", {"password": "multipass"})
    assert status == 200
    assert await verifies(running, ALICE, "multipass")
    assert not await verifies(running, ALICE, "abc123")


async def test_password_change_is_refused_for_unknown_login_or_bad_password(
    running: Running, api: aiohttp.ClientSession
):
    status, body = await call(api, "PUT", f"{BASE}/nobody", {"password": "supasecret"})
    assert (status, body) == (404, {"message": "Credentials not found"})
    await add(api, "alice", "supasecret")
    status, body = await call(api, "PUT", f"{BASE}/alice", {"password": "abc"})
    assert status == 400
    assert body == {"message": "Password length must be between 5 and 128 characters"}
    status, body = await call(api, "PUT", f"{BASE}/alice", {})
    assert (status, body) == (400, {"message": "password parameter is missing"})
    assert await verifies(running, ALICE, "supasecret")


async def test_delete_by_encoded_full_login_then_again_is_404(api: aiohttp.ClientSession):
    await add(api, "alice")
    status, body = await call(api, "DELETE", f"{BASE}/alice%40{DOMAIN}")
    assert (status, body) == (200, {"message": "Credentials have been deleted", "spec": ALICE})
    status, body = await call(api, "DELETE", f"{BASE}/alice")
    assert (status, body) == (404, {"message": "Credentials not found"})


async def test_a_login_of_another_domain_cannot_be_changed_or_deleted_through_this_one(
    running: Running, api: aiohttp.ClientSession
):
    await running.services.domains.create(OTHER)
    await running.services.credentials.create(OTHER, "bob", "supasecret")
    for method, data in (("PUT", {"password": "takenover"}), ("DELETE", None)):
        status, body = await call(api, method, f"{BASE}/bob%40{OTHER}", data)
        assert (status, body) == (404, {"message": "Credentials not found"})
    assert await verifies(running, f"bob@{OTHER}", "supasecret")


async def test_delete_all_counts_and_spares_other_domains(
    running: Running, api: aiohttp.ClientSession
):
    await running.services.domains.create(OTHER)
    await running.services.credentials.create(OTHER, "bob", "supasecret")
    await add(api, "alice")
    await add(api, "carol")
    status, body = await call(api, "DELETE", BASE)
    assert (status, body) == (
        200,
        {"message": "All domain credentials have been deleted", "count": 2},
    )
    assert await logins(api) == []
    assert await logins(api, OTHER) == [f"bob@{OTHER}"]
    assert (await call(api, "DELETE", BASE))[1]["count"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v3/domains/nowhere.example.test/credentials"),
        ("POST", "/v3/domains/nowhere.example.test/credentials"),
        ("DELETE", "/v3/domains/nowhere.example.test/credentials"),
        ("PUT", "/v3/domains/nowhere.example.test/credentials/alice"),
        ("PUT", "/v3/nowhere.example.test/credentials/alice"),
        ("DELETE", "/v4/domains/nowhere.example.test/credentials/alice"),
    ],
)
async def test_unknown_domain_is_404_domain_not_found(
    api: aiohttp.ClientSession, method: str, path: str
):
    data = {"login": "alice", "password": "supasecret"}
    assert await call(api, method, path, data) == (404, {"message": "Domain not found"})


async def test_sending_key_cannot_manage_credentials(running: Running, api: aiohttp.ClientSession):
    await add(api, "alice", "supasecret")
    _, secret = await running.services.keys.create(domain=DOMAIN)
    async with running.session(secret) as sending:
        for method, path in (("GET", BASE), ("POST", BASE), ("PUT", f"{BASE}/alice")):
            async with sending.request(method, path, data={"password": "takenover"}) as resp:
                assert (resp.status, await resp.text()) == (401, "Forbidden"), (method, path)
    assert await verifies(running, ALICE, "supasecret")


# -- domains ---------------------------------------------------------------------------------------


async def test_deleting_the_domain_removes_its_credentials(
    running: Running, api: aiohttp.ClientSession
):
    await add(api, "alice", "supasecret")
    assert (await call(api, "DELETE", f"/v3/domains/{DOMAIN}"))[0] == 200
    assert not await verifies(running, ALICE, "supasecret")
    assert await storeview.count(running.services.store, "credentials") == 0


async def test_domain_created_with_smtp_password_has_a_postmaster_credential(
    running: Running, api: aiohttp.ClientSession
):
    data = {"name": OTHER, "dkim_key_size": "1024", "smtp_password": "postpass"}
    status, body = await call(api, "POST", "/v3/domains", data)
    assert status == 200, body
    assert body["domain"]["smtp_login"] == f"postmaster@{OTHER}"
    assert await logins(api, OTHER) == [f"postmaster@{OTHER}"]
    assert await verifies(running, f"postmaster@{OTHER}", "postpass")


async def test_domain_with_a_bad_smtp_password_is_refused_and_not_created(
    api: aiohttp.ClientSession,
):
    data = {"name": OTHER, "dkim_key_size": "1024", "smtp_password": "abc"}
    status, body = await call(api, "POST", "/v3/domains", data)
    assert status == 400
    assert body == {"message": "Password length must be between 5 and 128 characters"}
    assert await call(api, "GET", f"/v3/domains/{OTHER}") == (
        404,
        {"message": "Domain not found"},
    )


# -- CLI ------------------------------------------------------------------------------------------


def cli_with_stdin(env: dict[str, str], stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mta", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_adds_with_stdin_password_lists_changes_and_removes_on_a_running_server(
    tmp_path: Path, server_process: Callable[[], Process]
):
    proc = await asyncio.to_thread(server_process)
    env = proc.env
    await asyncio.to_thread(run_cli, env, "domain", "add", DOMAIN)
    secret = "stdin-secret"
    added = await asyncio.to_thread(
        cli_with_stdin, env, secret + "\n", "credential", "add", DOMAIN.upper(), "alice"
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"created {ALICE}\n"
    assert secret not in added.stdout + added.stderr

    key = (await asyncio.to_thread(run_cli, env, "key", "create")).stdout.strip()
    headers = {"Authorization": aiohttp.encode_basic_auth("api", key)}
    async with aiohttp.ClientSession(proc.url, headers=headers) as api:
        assert await logins(api) == [ALICE]  # the running server sees the CLI's change

    listed = await asyncio.to_thread(run_cli, env, "credential", "list", DOMAIN)
    [line] = listed.stdout.splitlines()
    login, created = line.split("\t")
    assert login == ALICE
    assert RFC2822_GMT.fullmatch(created.removeprefix("created ")), created

    services = await open_services(make_config(tmp_path))  # the server's own store file
    try:
        assert await services.credentials.verify(ALICE, secret) is not None
        changed = await asyncio.to_thread(
            run_cli, env, "credential", "passwd", DOMAIN, ALICE, "--password", "changed-pass"
        )
        assert changed.stdout == f"password changed for {ALICE}\n"
        assert await services.credentials.verify(ALICE, "changed-pass") is not None
        assert await services.credentials.verify(ALICE, secret) is None
        removed = await asyncio.to_thread(run_cli, env, "credential", "remove", DOMAIN, "alice")
        assert removed.stdout == f"removed {ALICE}\n"
        assert await services.credentials.verify(ALICE, "changed-pass") is None
    finally:
        await services.store.close()


@pytest.mark.parametrize(
    ("args", "stdin", "error"),
    [
        (
            ("add", "nowhere.example.test", "alice"),
            "supasecret\n",
            "mta: no such domain: nowhere.example.test",
        ),
        (
            ("add", DOMAIN, "alice"),
            "abc\n",
            "mta: Password length must be between 5 and 128 characters",
        ),
        (
            ("add", DOMAIN, f"bob@{OTHER}", "--password", "supasecret"),
            "",
            f"mta: login must be an address on {DOMAIN}: bob@{OTHER}",
        ),
        (("passwd", DOMAIN, "nobody"), "supasecret\n", "mta: Credentials not found"),
        (("remove", DOMAIN, "nobody"), "", "mta: Credentials not found"),
        (("list", "nowhere.example.test"), "", "mta: no such domain: nowhere.example.test"),
    ],
)
async def test_cli_errors_are_one_line_on_stderr_with_exit_1(
    tmp_path: Path, args: tuple[str, ...], stdin: str, error: str
):
    services = await open_services(make_config(tmp_path))
    try:
        await services.domains.create(DOMAIN)
    finally:
        await services.store.close()
    env = cli_env(tmp_path)
    result = await asyncio.to_thread(cli_with_stdin, env, stdin, "credential", *args)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", error + "\n")
