"""Several `mta serve` nodes on one PostgreSQL database are one system: any node accepts, any
node delivers, each message once; a destination's connection limit is the site's; an admin change
made on one node holds on every node within a second; a node killed with kill -9 loses nothing.

Each node is a real `mta serve` process with its own data directory and node id, sharing
nothing but the database; a capture SMTP server in the test stands in for the remote MX.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from mta.store.postgres import PostgresStore
from tests import postgres
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, auth_header, free_port, run_cli, wait_for_port
from tests.smtp_clients import client_tls

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
CONNECTIONS = 10  # the crash test's limit of connections to the destination, site-wide
LOGIN, PASSWORD = f"alice@{DOMAIN}", "s3cret-pass-for-nodes"


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    api: str
    submission: int
    env: dict[str, str]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@dataclass
class Site:
    """What every node shares: the database URL and one admin key made with the CLI."""

    url: str
    key: str
    capture: Capture
    tmp: Path

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "MTA_STORE_URL": self.url,
            "MTA_SERVER_NODE_ID": name,
            "MTA_SERVER_DATA_DIR": str(self.tmp / name),
            "MTA_SERVER_HOSTNAME": f"{name}.mta.test",
            "MTA_SMTP_SUBMISSION_TLS": "127.0.0.1:0",
            "MTA_SMTP_SUBMISSION_ALT": "127.0.0.1:0",
            "MTA_SMTP_MX": "127.0.0.1:0",
            "MTA_DNS_ONLY_ANSWERS": "true",
            "MTA_DNS_STATIC_MX": json.dumps({DEST: [self.capture.address]}),
            "MTA_DOMAINS_DKIM_KEY_BITS": "1024",
            "MTA_OUTBOUND_ENABLED": "true",
            "MTA_OUTBOUND_RETRY_INTERVALS_S": "[1]",
        })
        return env | extra


@pytest.fixture
async def site(postgres_cluster: postgres.Cluster, tmp_path: Path) -> AsyncIterator[Site]:
    capture = await start_capture()
    shared = Site(postgres_cluster.new_database(), "", capture, tmp_path)
    env = shared.env("admin")
    run_cli(env, "domain", "add", DOMAIN)
    shared.key = run_cli(env, "key", "create").stdout.split()[-1]
    run_cli(env, "credential", "add", DOMAIN, LOGIN, "--password", PASSWORD)
    yield shared
    await capture.close()


@pytest.fixture
def start_node(site: Site) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(name: str, **extra: str) -> Node:
        port, submission = free_port(), free_port()
        env = site.env(name, MTA_API_LISTEN=f"127.0.0.1:{port}",
                       MTA_SMTP_SUBMISSION=f"127.0.0.1:{submission}", **extra)
        log = open(site.tmp / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "mta", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        wait_for_port(port, proc)
        wait_for_port(submission, proc)
        node = Node(name, proc, f"http://127.0.0.1:{port}", submission, env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(15)
            except subprocess.TimeoutExpired:
                node.kill()


async def send_http(node: Node, key: str, count: int, tag: str, workers: int = 10) -> None:
    """`count` messages to the node's API from `workers` keep-alive connections at once."""
    numbers = iter(range(count))

    async def worker(api: aiohttp.ClientSession) -> None:
        for i in numbers:
            form = {"from": f"sender@{DOMAIN}", "to": f"rcpt{i}@{DEST}",
                    "subject": f"{tag} {i}", "text": "hello"}
            async with api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
                assert resp.status == 200, await resp.text()

    async with aiohttp.ClientSession(node.api, headers=auth_header(key)) as api:
        await asyncio.gather(*(worker(api) for _ in range(workers)))


async def send_smtp(node: Node, count: int, tag: str) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.submission, tls_context=client_tls(),
                             start_tls=True)
    async with client:
        await client.login(LOGIN, PASSWORD)
        for i in range(count):
            body = (f"From: {LOGIN}\r\nTo: smtp{i}@{DEST}\r\nSubject: {tag} {i}\r\n\r\nhi\r\n")
            await client.sendmail(LOGIN, [f"smtp{i}@{DEST}"], body.encode())


def delivered_subjects(capture: Capture) -> Counter[str]:
    return Counter(str(message_from_bytes(m.data)["Subject"]) for m in capture.messages)


async def test_mail_submitted_to_either_node_is_delivered_exactly_once(
    site: Site, start_node: Callable[..., Node]
):
    a, b = start_node("node-a"), start_node("node-b")
    await asyncio.gather(send_http(a, site.key, 60, "http-a"), send_http(b, site.key, 60, "http-b"),
                         send_smtp(b, 30, "smtp-b"))
    await site.capture.wait_for(150, timeout=60)
    await asyncio.sleep(1.0)  # anything delivered twice would have arrived by now
    subjects = delivered_subjects(site.capture)
    assert len(subjects) == 150
    assert [s for s, n in subjects.items() if n > 1] == []
    assert set(await delivered_by(site)) == {"node-a", "node-b"}


async def test_a_destination_connection_limit_holds_across_nodes(
    site: Site, start_node: Callable[..., Node]
):
    shaping = site.tmp / "shaping.toml"
    shaping.write_text(f'[profile.narrow]\ndomains = ["{DEST}"]\nconnections = 2\n'
                       "messages_per_connection = 5\n")
    site.capture.delay_s = 0.05  # each message keeps its connection busy a while
    a = start_node("node-a", MTA_OUTBOUND_SHAPING_FILE=str(shaping))
    b = start_node("node-b", MTA_OUTBOUND_SHAPING_FILE=str(shaping))
    await asyncio.gather(send_http(a, site.key, 40, "a"), send_http(b, site.key, 40, "b"))
    await site.capture.wait_for(80, timeout=90)
    assert site.capture.most_open_sessions <= 2
    assert set(await delivered_by(site)) == {"node-a", "node-b"}  # both took their share


async def delivered_by(site: Site) -> Counter[str]:
    """How many recipients each node delivered (a lease names its node, and keeps it)."""
    store = await PostgresStore.open(site.url, node_id="test", pool_size=2,
                                     statement_timeout_s=30)
    try:
        rows = await store.fetchall(
            "SELECT lease_node, count(*) AS n FROM recipients WHERE state = 'delivered'"
            " GROUP BY lease_node"
        )
    finally:
        await store.close()
    return Counter({r["lease_node"]: r["n"] for r in rows})


async def test_an_admin_change_on_one_node_holds_on_the_other_within_a_second(
    site: Site, start_node: Callable[..., Node]
):
    a, b = start_node("node-a"), start_node("node-b")
    async with aiohttp.ClientSession(b.api, headers=auth_header(site.key)) as on_b:
        async with on_b.get("/v3/domains") as resp:
            assert resp.status == 200
        # an SMTP login deleted through node A's API
        async with aiohttp.ClientSession(a.api, headers=auth_header(site.key)) as on_a:
            async with on_a.delete(f"/v3/domains/{DOMAIN}/credentials/{LOGIN}") as resp:
                assert resp.status == 200, await resp.text()
            deleted_at = time.monotonic()
            # a domain added through node A
            async with on_a.post("/v3/domains", data={"name": "new.example.test"}) as resp:
                assert resp.status == 200, await resp.text()
        await asyncio.sleep(max(0.0, deleted_at + 1.0 - time.monotonic()))
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=b.submission,
                                 tls_context=client_tls(), start_tls=True)
        async with client:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await client.login(LOGIN, PASSWORD)
        async with on_b.get("/v3/domains/new.example.test") as resp:
            assert resp.status == 200
        # the admin key revoked with the CLI (another process on the database)
        key_id = run_cli(b.env, "key", "list").stdout.split()[0]
        run_cli(b.env, "key", "revoke", key_id)
        await asyncio.sleep(1.0)
        async with on_b.get("/v3/domains") as resp:
            assert resp.status == 401


async def test_a_node_killed_mid_run_loses_nothing(
    site: Site, start_node: Callable[..., Node], capsys: Any
):
    # ten connections to the destination in all, 0.1 s a message: delivery lags the sending,
    # so node A dies with mail in flight and more leased
    shaping = site.tmp / "shaping.toml"
    shaping.write_text(f'[profile.dest]\ndomains = ["{DEST}"]\nconnections = {CONNECTIONS}\n')
    site.capture.delay_s = 0.1
    short = {"MTA_OUTBOUND_LEASE_S": "3", "MTA_OUTBOUND_SITE_SLOT_LEASE_S": "3",
             "MTA_OUTBOUND_SHAPING_FILE": str(shaping)}
    a, b = start_node("node-a", **short), start_node("node-b", **short)
    total = 2000
    await asyncio.gather(send_http(a, site.key, total // 2, "a"),
                         send_http(b, site.key, total // 2, "b"))
    a.kill()
    killed_at = len(site.capture.messages)
    await site.capture.wait_for(total, timeout=180)
    await asyncio.sleep(1.0)
    subjects = delivered_subjects(site.capture)
    duplicates = sum(n - 1 for n in subjects.values())
    with capsys.disabled():
        print(f"\nkill -9 of one node after {killed_at} of {total} deliveries:"
              f" {len(subjects)} delivered, {total - len(subjects)} lost, {duplicates} twice")
    assert killed_at < total * 0.9  # the kill came mid-run
    assert len(subjects) == total
    # only what node A had sent but not yet recorded can go twice: per connection the
    # message in flight and the one whose outcome was still committing
    assert duplicates <= 2 * CONNECTIONS


async def test_sends_to_a_list_expanded_on_both_nodes_reach_each_member_once(
    site: Site, start_node: Callable[..., Node]
):
    """Both nodes expand list sends (each takes a send's lease and queues a chunk of members per
    transaction): every member gets one copy of each send, and has one recipient row for it."""
    chunked = {"MTA_LISTS_EXPANSION_CHUNK": "25", "MTA_LISTS_EXPANSION_POLL_S": "0.2"}
    a, b = start_node("node-a", **chunked), start_node("node-b", **chunked)
    # more sends than one node claims at once (4), so that both take some
    address, sends, count = f"all@{DOMAIN}", 8, 150
    members = [{"address": f"m{i}@{DEST}", "name": f"Member {i}"} for i in range(count)]
    async with aiohttp.ClientSession(a.api, headers=auth_header(site.key)) as api:
        async with api.post("/v3/lists", data={"address": address, "name": "All"}) as resp:
            assert resp.status == 200, await resp.text()
        async with api.post(f"/v3/lists/{address}/members.json",
                            data={"members": json.dumps(members)}) as resp:
            assert resp.status == 200, await resp.text()

    async def post(node: Node, n: int) -> None:
        form = {"from": f"news@{DOMAIN}", "to": address, "subject": f"issue {n}",
                "text": "Hello %recipient_name%"}
        async with aiohttp.ClientSession(node.api, headers=auth_header(site.key)) as api, \
                api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
            assert resp.status == 200, await resp.text()

    await asyncio.gather(*(post(node, n) for n, node in enumerate([a, b] * (sends // 2))))
    await site.capture.wait_for(sends * count, timeout=120)
    await asyncio.sleep(1.0)  # anything queued twice would have arrived by now
    copies = Counter((str(message_from_bytes(m.data)["Subject"]), m.rcpt_to)
                     for m in site.capture.messages)
    assert len(copies) == sends * count
    assert [c for c, n in copies.items() if n > 1] == []
    store = await PostgresStore.open(site.url, node_id="test", pool_size=2,
                                     statement_timeout_s=30)
    try:
        [row] = await store.fetchall(
            "SELECT count(*) AS n, count(DISTINCT (message_key, address)) AS distinct_n,"
            " count(DISTINCT lease_node) AS nodes FROM recipients")
    finally:
        await store.close()
    assert (row["n"], row["distinct_n"]) == (sends * count, sends * count)
    assert row["nodes"] == 2  # and both nodes delivered
    expanded = {node.name: (site.tmp / f"{node.name}.log").read_text().count(
        f"member(s) of list <{address}>") for node in (a, b)}
    assert sum(expanded.values()) == sends, expanded  # each send expanded to its end once
    assert min(expanded.values()) > 0, expanded  # by both nodes
