"""Abuse of the SMTP listeners (issue 9): AUTH brute force from one network, from many networks
against one login, and fast enough to eat the CPU with scrypt; connection floods per network.

Over real sockets: every 127.0.0.0/8 address is loopback here, so a client binding 127.0.0.N is
another network to the server. IPv6 has only ::1 here, so the /64 grouping is checked on the
guard itself. AUTH limits are the site's (counted in the store): two servers on one store count
failures together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mta.app import Server
from mta.config import SmtpConfig
from mta.smtp import REAUTHENTICATE
from mta.smtp import guard as guard_module
from mta.smtp.guard import AuthThrottle, Guard, network_of
from tests.conftest import DOMAIN, Running, make_config
from tests.smtp_clients import AUTH_BAD, AUTH_OK, LOGIN, PASSWORD, Clients, Raw, auth_plain

CAROL = f"carol@{DOMAIN}"
BANNER = ["220 mx.mta.test mta ESMTP"]
BLOCKED = ["421 4.7.0 Too many authentication failures from your address, try later"]
TEMPORARY = ["454 4.7.0 Temporary authentication failure, try again later"]
TOO_MANY = ["421 4.7.0 Too many connections from your address, try again later"]


@pytest.fixture
def server(start_server: Callable[..., Any]) -> Callable[..., Any]:
    """A server (config overrides as section__key=value) with the SMTP credentials
    alice@ and carol@mg.example.test, both with PASSWORD."""

    async def start(**overrides: Any) -> Running:
        running = await start_server(**overrides)
        await running.services.credentials.create(DOMAIN, "alice", PASSWORD)
        await running.services.credentials.create(DOMAIN, "carol", PASSWORD)
        return running

    return start


async def auth(
    clients: Clients, running: Running, source: str, login: str = LOGIN,
    password: str = PASSWORD,
) -> tuple[Raw, list[str]]:
    """A new implicit-TLS session from `source`: EHLO, one AUTH PLAIN; the session and the
    reply."""
    raw = await clients.raw(running, source=source)
    assert raw.banner == BANNER
    await raw.command("EHLO client.example")
    return raw, await raw.command(auth_plain(login, password))


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# -- one network -------------------------------------------------------------------------------


async def test_auth_failures_from_one_network_block_it_but_not_another_network(
    server, clients, caplog
):
    running = await server(smtp__auth_failures=3)
    first, reply = await auth(clients, running, "127.0.0.2", password="guess-1")
    assert reply == [AUTH_BAD]
    assert await first.command(auth_plain(LOGIN, "guess-2")) == [AUTH_BAD]
    # counted per network, not per session
    second, reply = await auth(clients, running, "127.0.0.2", password="guess-3")
    assert reply == [AUTH_BAD]
    assert await second.command(auth_plain()) == BLOCKED
    assert await second.closed()
    again = await clients.raw(running, source="127.0.0.2")
    assert again.banner == BLOCKED
    assert await again.closed()
    _, reply = await auth(clients, running, "127.0.0.3")
    assert reply == [AUTH_OK]
    assert any(m.startswith("blocking 127.0.0.2 for 300 s") for m in messages(caplog))


async def test_addresses_inside_one_ipv6_64_count_as_one_network_and_ipv4_mapped_as_ipv4(
    running: Running,
):
    assert network_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert network_of("fe80::1%eth0") == "fe80::/64"
    assert network_of("::ffff:192.0.2.7") == network_of("192.0.2.7") == "192.0.2.7"
    config = SmtpConfig(auth_failures=3)
    guard = Guard(config, max_per_network=2)
    assert guard.connect("2001:db8:1:2::1") is None
    assert guard.connect("2001:db8:1:2::2") is None
    assert guard.connect("2001:db8:1:2:abcd::3") == TOO_MANY[0]
    assert guard.connect("2001:db8:1:3::1") is None
    guard.disconnect("2001:db8:1:2::2")
    assert guard.connect("2001:db8:1:2:abcd::3") is None
    throttle = AuthThrottle(config, running.services.store, guard)
    for n, login in enumerate(["a@x", "b@x", "c@x"]):  # a new address and login each time
        await throttle.failed(await throttle.look(network_of(f"2001:db8:1:2::{n + 10}"), login))
    assert guard.connect("2001:db8:1:2:9::9") == BLOCKED[0]
    assert guard.connect("2001:db8:1:3::2") is None


# -- one login, many networks ------------------------------------------------------------------


async def test_login_attacked_from_many_networks_still_works_from_the_network_it_logged_in_from(
    server, clients, caplog
):
    running = await server(
        smtp__auth_failures=3, smtp__auth_login_failures=4, smtp__auth_failures_per_s=100.0
    )
    owner, reply = await auth(clients, running, "127.0.0.2")
    assert reply == [AUTH_OK]
    owner.close()
    for source in ("127.0.0.3", "127.0.0.4"):  # two tries each: no network gets blocked
        attacker, reply = await auth(clients, running, source, password="guess-1")
        assert reply == [AUTH_BAD]
        assert await attacker.command(auth_plain(LOGIN, "guess-2")) == [AUTH_BAD]
    assert any(m.startswith(f"login '{LOGIN}' backs off for 60 s") for m in messages(caplog))
    # from a network the login never used, even the right password is not looked at
    stranger, reply = await auth(clients, running, "127.0.0.5")
    assert reply == TEMPORARY
    assert await stranger.command(auth_plain(CAROL, PASSWORD)) == [AUTH_OK]  # other logins work
    _, reply = await auth(clients, running, "127.0.0.2")
    assert reply == [AUTH_OK]


# -- the server as a whole ---------------------------------------------------------------------


async def test_failed_logins_past_the_server_wide_rate_get_454_without_a_password_check(
    server, clients, caplog
):
    running = await server(smtp__auth_failures_per_s=0.1)  # one failure, then one per 10 s
    _, reply = await auth(clients, running, "127.0.0.2")
    assert reply == [AUTH_OK]  # remembered from now on
    attacker, reply = await auth(clients, running, "127.0.0.3", password="guess-1")
    assert reply == [AUTH_BAD]
    assert await attacker.command(auth_plain(LOGIN, "guess-2")) == TEMPORARY
    # a right password that would need scrypt is not checked either...
    newcomer, reply = await auth(clients, running, "127.0.0.4", login=CAROL)
    assert reply == TEMPORARY
    # ...but one checked before costs an HMAC and goes through, from any network
    assert await newcomer.command(auth_plain()) == [AUTH_OK]
    assert any(m.startswith("failed logins over 0.1/s") for m in messages(caplog))


async def test_password_checks_beyond_the_wait_list_get_454_while_the_check_threads_are_busy(
    server, clients
):
    running = await server(smtp__auth_check_threads=1, smtp__auth_check_queue=1)
    _, reply = await auth(clients, running, "127.0.0.2")
    assert reply == [AUTH_OK]
    checks = running.services.credentials.checks
    gate = threading.Event()
    busy = asyncio.create_task(checks.run(gate.wait))  # the one thread, held until released
    try:
        waiting = await clients.raw(running, source="127.0.0.3")
        await waiting.command("EHLO client.example")
        waiting.send(auth_plain(LOGIN, "guess") + "\r\n")
        async with asyncio.timeout(5):
            while checks.pending < 2:
                await asyncio.sleep(0.01)
        _, reply = await auth(clients, running, "127.0.0.4", login=CAROL)
        assert reply == TEMPORARY  # no place left: not checked, though right
        _, reply = await auth(clients, running, "127.0.0.4")
        assert reply == [AUTH_OK]  # remembered: needs no thread
    finally:
        gate.set()
    assert await waiting.reply() == [AUTH_BAD]
    assert await busy


async def test_guard_memory_stays_bounded_and_backoffs_stay_in_the_store_while_networks_cycle(
    running: Running, monkeypatch: pytest.MonkeyPatch,
):
    cap = 1000
    monkeypatch.setattr(guard_module, "MAX_TRACKED", cap)  # the real cap, 100 times smaller
    config = SmtpConfig(auth_login_failures=2, auth_failure_window_s=1e9)
    guard = Guard(config, max_per_network=10)
    throttle = AuthThrottle(config, running.services.store, guard)
    await throttle.succeeded(await throttle.look("192.0.2.1", "victim@x"))
    for _ in range(2):
        await throttle.failed(await throttle.look("198.51.100.1", "victim@x"))
    assert (await throttle.look("198.51.100.2", "victim@x")).held
    for n in range(5 * cap):  # blocks learnt from the store, each for a new /64
        guard.block(f"2001:db8:0:{n:x}::/64", time.time() + 300)
    assert len(guard._blocked_until) <= cap
    assert guard.blocked(f"2001:db8:0:{5 * cap - 1:x}::/64")
    assert (await throttle.look("198.51.100.2", "victim@x")).held
    assert not (await throttle.look("192.0.2.1", "victim@x")).held


# -- several nodes on one store ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def second_node(
    first: Running, tmp_path: Path, tls_pair: tuple[str, str], store_url: str, **overrides: Any
) -> AsyncIterator[Running]:
    """Another server on the first one's store: the same data directory (SQLite: the same
    file) or the same PostgreSQL database."""
    other = Server(make_config(tmp_path, tls_pair, store__url=store_url, server__node_id="b",
                               **overrides))
    await other.start()
    try:
        yield Running(other, f"http://127.0.0.1:{other.api_port}", first.key, DOMAIN)
    finally:
        await other.stop()


async def test_auth_failures_spread_over_two_nodes_on_one_store_are_counted_together(
    server, clients, caplog, tmp_path, tls_pair, store_url
):
    limits = {"smtp__auth_failures": 3, "smtp__auth_login_failures": 4,
              "smtp__auth_failures_per_s": 100.0}
    a = await server(server__node_id="a", **limits)
    async with second_node(a, tmp_path, tls_pair, store_url, **limits) as b:
        # one network guessing on both nodes in turn: its third failure blocks it everywhere
        for node in (a, b, a):
            _, reply = await auth(clients, node, "127.0.0.2", password="guess")
            assert reply == [AUTH_BAD]
        _, reply = await auth(clients, b, "127.0.0.2")
        assert reply == BLOCKED  # read from the store at AUTH...
        assert (await clients.raw(b, source="127.0.0.2")).banner == BLOCKED  # ...then remembered
        # one login guessed from four networks over both nodes backs off on both, except
        # from the network it logged in from (on the other node)
        _, reply = await auth(clients, a, "127.0.0.3", login=CAROL)
        assert reply == [AUTH_OK]
        for node, source in zip((a, b, a, b), ("127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"),
                                strict=True):
            _, reply = await auth(clients, node, source, login=CAROL, password="guess")
            assert reply == [AUTH_BAD]
        for node in (a, b):
            _, reply = await auth(clients, node, "127.0.0.8", login=CAROL)
            assert reply == TEMPORARY
        _, reply = await auth(clients, b, "127.0.0.3", login=CAROL)
        assert reply == [AUTH_OK]
        assert sum(m.startswith(f"login '{CAROL}' backs off") for m in messages(caplog)) == 1


async def mail_until_refused(raw: Raw, sender: str, timeout: float = 5.0) -> list[str]:
    """MAIL (then RSET) until it is not taken: another node's admin change arrives within
    moments (NOTIFY, or SQLite's admin_version read at most 50 ms old)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await raw.command(f"MAIL FROM:<{sender}>")
        if reply != ["250 2.1.0 OK"] or time.monotonic() > deadline:
            return reply
        assert await raw.command("RSET") == ["250 2.0.0 OK"]
        await asyncio.sleep(0.01)


async def test_sessions_of_a_login_deleted_or_given_a_new_password_on_another_node_log_in_again(
    server, clients, tmp_path, tls_pair, store_url
):
    a = await server(server__node_id="a")
    alice, reply = await auth(clients, a, "127.0.0.2")
    assert reply == [AUTH_OK]
    carol, reply = await auth(clients, a, "127.0.0.3", login=CAROL)
    assert reply == [AUTH_OK]
    async with second_node(a, tmp_path, tls_pair, store_url) as b:
        await b.services.credentials.set_password(DOMAIN, LOGIN, "a-new-password")
        await b.services.credentials.delete(DOMAIN, CAROL)
    assert await mail_until_refused(alice, LOGIN) == [REAUTHENTICATE]
    assert await mail_until_refused(carol, CAROL) == [REAUTHENTICATE]
    assert await alice.command(auth_plain()) == [AUTH_BAD]
    assert await alice.command(auth_plain(LOGIN, "a-new-password")) == [AUTH_OK]
    assert await alice.command(f"MAIL FROM:<{LOGIN}>") == ["250 2.1.0 OK"]
    assert await carol.command(auth_plain(CAROL, PASSWORD)) == [AUTH_BAD]


# -- connections -------------------------------------------------------------------------------


async def test_mx_connections_per_network_stop_at_the_lower_mx_limit(start_server, clients):
    running = await start_server(smtp__mx_max_connections_per_ip=2, smtp__max_connections_per_ip=4)
    mx = [await clients.raw(running, "mx", source="127.0.0.2") for _ in range(2)]
    assert [c.banner for c in mx] == [BANNER] * 2
    third = await clients.raw(running, "mx", source="127.0.0.2")
    assert third.banner == TOO_MANY
    assert await third.closed()
    assert (await clients.raw(running, "mx", source="127.0.0.3")).banner == BANNER
    submission = [await clients.raw(running, source="127.0.0.2") for _ in range(4)]
    assert [c.banner for c in submission] == [BANNER] * 4
    assert (await clients.raw(running, source="127.0.0.2")).banner == TOO_MANY
