"""The control panel (issue 14): signing in and out, sessions, CSRF, the security headers, and
the Domains pages, in a real browser (Debian Chromium through Playwright) where a person would
click, and over plain HTTP where the test is about what the server answers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from mta.app import Server
from tests.conftest import DOMAIN, Running, cli_env, make_config, store_env
from tests.panel import page, screenshot, sign_in  # noqa: F401

pytestmark = pytest.mark.asyncio

NEW = "new.example.test"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browserless:
    """An HTTP client with its own cookies, for what a browser hides (statuses, headers)."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.http = aiohttp.ClientSession(
            running.url, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        self.csrf = ""

    async def sign_in(self, secret: str, **headers: str) -> aiohttp.ClientResponse:
        async with self.http.get("/cp/sign-in") as resp:
            pre = CSRF.search(await resp.text())
        assert pre is not None
        resp = await self.http.post(
            "/cp/sign-in", data={"csrf": pre.group(1), "secret": secret, "next": ""},
            headers=headers, allow_redirects=False,
        )
        await resp.read()
        if resp.status == 303:
            async with self.http.get("/cp/domains") as page_resp:
                found = CSRF.search(await page_resp.text())
                self.csrf = found.group(1) if found else ""
        return resp

    async def post(self, path: str, **data: str) -> tuple[int, str]:
        async with self.http.post(path, data={"csrf": self.csrf} | data) as resp:
            return resp.status, await resp.text()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(path) as resp:
            return resp.status, await resp.text()


@pytest.fixture
async def client(running: Running) -> AsyncIterator[Browserless]:
    opened = Browserless(running)
    yield opened
    await opened.http.close()


# -- signing in -------------------------------------------------------------------------------


async def test_signing_in_with_the_primary_key_shows_the_domains_and_signing_out_ends_it(
    running: Running, page: Page  # noqa: F811
):
    await page.goto(f"{running.url}/cp/domains/{DOMAIN}")
    await expect(page).to_have_url(re.compile(r"/cp/sign-in\?next="))
    await screenshot(page, "sign-in")
    await page.get_by_label("API key or admin password").fill(running.key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(f"/cp/domains/{DOMAIN}$"))  # where they were going
    await page.get_by_role("link", name="Domains").click()
    await expect(page.get_by_role("link", name=DOMAIN)).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_text("Signed out.")).to_be_visible()
    await page.goto(running.url + "/cp/domains")
    await expect(page).to_have_url(re.compile(r"/cp/sign-in"))


async def test_wrong_credentials_show_the_sign_in_page_again_with_a_message(
    running: Running, page: Page  # noqa: F811
):
    await page.goto(running.url + "/cp/")
    await page.get_by_label("API key or admin password").fill("key-not-a-real-one")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("Wrong API key or password")
    await screenshot(page, "sign-in-refused")
    await sign_in(page, running)  # the form still works after a failure


async def test_repeated_failures_from_one_address_are_throttled_even_for_the_right_key(
    running: Running, client: Browserless
):
    limit = running.services.config.panel.sign_in_failures
    for _ in range(limit):
        assert (await client.sign_in("key-wrong")).status == 401
    refused = await client.sign_in(running.key)
    assert refused.status == 429
    assert "mta_cp=" not in refused.headers.getall("Set-Cookie", [""])[0]


async def test_a_domain_sending_key_cannot_sign_in(running: Running, client: Browserless):
    _, sending_key = await running.services.keys.create(domain=DOMAIN)
    assert (await client.sign_in(sending_key)).status == 401
    assert (await client.get("/cp/domains"))[1].count("Sign in") >= 1


async def test_the_admin_password_set_with_the_cli_signs_in(
    running: Running, client: Browserless, tmp_path: Path, store_url: str
):
    env = cli_env(tmp_path) | store_env(store_url)
    done = subprocess.run(
        [sys.executable, "-m", "mta", "admin", "password", "--stdin"],
        input="correct horse battery\n", env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    stored = await running.services.store.fetchone(
        "SELECT value FROM account_settings WHERE name = 'panel_admin_password'"
    )
    assert stored["value"].startswith("scrypt$")  # a hash, never the password
    assert (await client.sign_in("wrong horse battery")).status == 401
    assert (await client.sign_in("correct horse battery")).status == 303
    status, body = await client.get("/cp/domains")
    assert status == 200 and "admin" in body


async def test_sign_in_goes_back_only_to_a_page_of_the_panel(
    running: Running, client: Browserless
):
    async with client.http.get("/cp/sign-in") as resp:
        pre = CSRF.search(await resp.text())
    assert pre is not None
    for target in ("//evil.example/x", "https://evil.example/", "/v3/domains"):
        async with client.http.post(
            "/cp/sign-in", data={"csrf": pre.group(1), "secret": running.key, "next": target},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/cp/domains", target
        async with client.http.get("/cp/sign-in") as resp:
            pre = CSRF.search(await resp.text())
        assert pre is not None


# -- sessions and their cookie ----------------------------------------------------------------


async def test_the_session_cookie_is_httponly_and_samesite_strict_and_secure_over_https(
    running: Running, client: Browserless
):
    plain = await client.sign_in(running.key)
    cookie = next(c for c in plain.headers.getall("Set-Cookie") if c.startswith("mta_cp="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/cp" in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would be lost
    behind_tls = await client.sign_in(running.key, **{"X-Forwarded-Proto": "https"})
    cookie = next(c for c in behind_tls.headers.getall("Set-Cookie") if c.startswith("mta_cp="))
    assert "Secure" in cookie


async def test_the_store_keeps_only_a_digest_of_the_session_cookie(
    running: Running, client: Browserless
):
    resp = await client.sign_in(running.key)
    token = resp.cookies["mta_cp"].value
    rows = await running.services.store.fetchall("SELECT token_hash FROM panel_sessions")
    assert len(rows) == 1
    assert token.encode() not in bytes(rows[0]["token_hash"])
    assert len(bytes(rows[0]["token_hash"])) == 32


async def test_revoking_the_key_ends_the_sessions_it_signed_in(
    running: Running, client: Browserless
):
    key, secret = await running.services.keys.create(description="panel user")
    assert (await client.sign_in(secret)).status == 303
    assert (await client.get("/cp/domains"))[0] == 200
    await running.services.keys.revoke(key.id)
    _, body = await client.get("/cp/domains")
    assert "Sign in" in body and "Add a domain" not in body


async def test_a_form_with_a_bad_csrf_token_is_refused_with_403_and_changes_nothing(
    running: Running, client: Browserless
):
    await client.sign_in(running.key)
    for token in ("", "0" * 64, client.csrf[:-1] + "x"):
        async with client.http.post("/cp/domains", data={"csrf": token, "name": NEW}) as resp:
            assert resp.status == 403
            assert "did not come from this panel" in await resp.text()
    assert await running.services.domains.get(NEW) is None
    status, _ = await client.post("/cp/domains", name=NEW)  # the session's own token works
    assert status == 200 and await running.services.domains.get(NEW) is not None


async def test_a_post_without_a_session_is_refused(running: Running, client: Browserless):
    status, body = await client.post("/cp/domains", name=NEW)
    assert status == 403 and "not signed in" in body
    assert await running.services.domains.get(NEW) is None


async def test_pages_forbid_inline_script_framing_and_caching(
    running: Running, client: Browserless
):
    await client.sign_in(running.key)
    async with client.http.get("/cp/domains") as resp:
        policy = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
    async with client.http.get("/cp/no-such-page") as resp:
        assert resp.status == 404 and "Content-Security-Policy" in resp.headers


# -- domains ------------------------------------------------------------------------------------


def answers_for(services: Any, name: str) -> dict[str, list[str]]:
    """Static DNS answers holding exactly the records the panel asks to publish."""
    domain = services.domains._cache[name]
    records = services.domains.sending_records(domain) + services.domains.receiving_records(domain)
    return {
        f"{r.name} {r.record_type}": [f"{r.priority} {r.value}" if r.priority else r.value]
        for r in records
    }


@pytest.fixture
async def restart(running: Running, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """The same store served again with `answers` as its DNS (records published since)."""
    servers: list[Server] = []

    async def start(answers: dict[str, list[str]]) -> str:
        await running.server.stop()
        server = Server(make_config(tmp_path, dns__answers=answers,
                                    store__url=running.services.config.store.url))
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.api_port}"

    yield start
    for server in servers:
        await server.stop()


async def test_adding_a_domain_shows_its_dns_records_and_verifying_them_shows_verified(
    running: Running, page: Page, restart: Callable[..., Any]  # noqa: F811
):
    await sign_in(page, running)
    await page.goto(running.url + "/cp/domains")
    await page.get_by_label("Domain name").fill(NEW)
    await page.get_by_role("button", name="Add domain").click()
    await expect(page.get_by_role("heading", name=NEW)).to_be_visible()
    await expect(page.get_by_text("Unverified")).to_be_visible()
    dkim = page.locator("tr", has_text=f"mta._domainkey.{NEW}")
    await expect(dkim).to_contain_text("k=rsa; p=")
    copy = dkim.get_by_role("button", name="Copy")
    assert (await copy.get_attribute("data-copy") or "").startswith("k=rsa; p=")
    await expect(page.get_by_role("row", name=re.compile(r"^MX \(10\)"))).to_contain_text(NEW)
    await screenshot(page, "domain-added")

    url = await restart(answers_for(running.services, NEW))  # the records are published now
    await page.goto(f"{url}/cp/domains/{NEW}")  # the session lives in the store: still in
    await page.get_by_role("button", name="Verify DNS settings").click()
    await expect(page.get_by_text("DNS records checked: verified.")).to_be_visible()
    await expect(page.get_by_role("heading", name=NEW)).to_contain_text("Verified")
    await expect(page.locator("table.records .badge.ok")).to_have_count(4)
    await screenshot(page, "domain-verified")
    await page.goto(f"{url}/cp/domains")
    await expect(page.locator("tr", has_text=NEW)).to_contain_text("Verified")
    await screenshot(page, "domains")


async def test_domain_settings_credentials_and_deletion_from_the_domain_page(
    running: Running, page: Page  # noqa: F811
):
    await sign_in(page, running)
    await page.goto(f"{running.url}/cp/domains/{DOMAIN}")
    await page.get_by_label("Track opens").check()
    await page.get_by_label("Track clicks").select_option("htmlonly")
    hostile = "</textarea><script>window.owned=1</script><b>bold</b>"
    await page.get_by_label("Text footer").fill(hostile)
    await page.get_by_role("button", name="Save tracking settings").click()
    await expect(page.get_by_text("Tracking settings saved.")).to_be_visible()
    tracking = (await running.services.domains.get(DOMAIN)).tracking
    assert tracking.opens is True and tracking.clicks == "htmlonly"
    assert tracking.text_footer == hostile
    await expect(page.get_by_label("Text footer")).to_have_value(hostile)  # text, not markup
    assert await page.evaluate("window.owned") is None

    await page.get_by_label("Require TLS").check()
    await page.get_by_role("button", name="Save connection settings").click()
    await expect(page.get_by_text("Connection settings saved.")).to_be_visible()
    assert (await running.services.domains.get(DOMAIN)).require_tls is True

    await page.get_by_label("Login").fill("billing")
    await page.get_by_label("Password", exact=True).fill("s3cret-pass")
    await page.get_by_role("button", name="Add SMTP login").click()
    await expect(page.get_by_role("cell", name=f"billing@{DOMAIN}")).to_be_visible()
    assert await running.services.credentials.check(f"billing@{DOMAIN}", "s3cret-pass")
    await screenshot(page, "domain-settings")

    page.on("dialog", lambda dialog: dialog.accept())
    await page.locator("tr", has_text=f"billing@{DOMAIN}").get_by_role(
        "button", name="Delete").click()
    await expect(page.get_by_text(f"SMTP login billing@{DOMAIN} deleted.")).to_be_visible()
    await page.get_by_role("button", name=f"Delete {DOMAIN}").click()
    await expect(page.get_by_text(f"Deleted {DOMAIN}.")).to_be_visible()
    assert await running.services.domains.get(DOMAIN) is None


async def test_a_bad_domain_name_shows_the_reason_and_adds_nothing(
    running: Running, client: Browserless
):
    await client.sign_in(running.key)
    status, body = await client.post("/cp/domains", name="<b>not a domain</b>")
    assert status == 400
    assert "&lt;b&gt;not a domain&lt;/b&gt;" in body and "<b>not" not in body
    assert [d.name for d in await running.services.domains.all()] == [DOMAIN]
