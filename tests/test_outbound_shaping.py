"""Per-destination shaping over real sockets (config/shaping.toml): connections are reused and
renewed after messages_per_connection, a site never gets more than its connections, a paced site
keeps its rate while another runs at full speed, a throttling site is paused on its own, and
domains that share MX hosts share one site. Remote MX hosts are capture servers on 127.0.0.x."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests import storeview
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running

pytestmark = pytest.mark.asyncio

SLOW = "slow.example.test"
FAST = "fast.example.test"


@pytest.fixture
async def captures() -> AsyncIterator[Callable[..., Any]]:
    """Start capture servers (one per 127.0.0.x host asked for); closed after the test."""
    started: list[Capture] = []

    async def start(host: str = "127.0.0.1") -> Capture:
        capture = await start_capture(host)
        started.append(capture)
        return capture

    yield start
    for capture in started:
        await capture.close()


def shaping_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shaping.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


async def serve(start_server: Callable[..., Any], tmp_path: Path, shaping: str,
                routes: dict[str, Capture], **overrides: Any) -> Running:
    return await start_server(
        outbound__enabled=True,
        outbound__shaping_file=shaping_file(tmp_path, shaping),
        outbound__idle_connection_s=1.0,
        dns__static_mx={domain: [c.address] for domain, c in routes.items()},
        **overrides,
    )


async def send(running: Running, recipients: list[str]) -> str:
    """One accepted message to all `recipients` (one queued row each); its message id."""
    form = [("from", f"Sender <sender@{DOMAIN}>"), ("subject", "Hi"), ("text", "Hello")]
    form += [("to", r) for r in recipients]
    async with running.session() as api, api.post(f"/v3/{DOMAIN}/messages", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["id"].strip("<>")


async def events_of(running: Running, kind: str, count: int = 1, timeout: float = 10) -> list:
    store = running.services.store
    deadline = time.monotonic() + timeout
    while True:
        found = await storeview.events(store, kind)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def addresses(local: str, domain: str, count: int) -> list[str]:
    return [f"{local}{i}@{domain}" for i in range(count)]


# -- connections: reuse, renewal, limit ------------------------------------------------------------


async def test_a_connection_carries_many_messages(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    mx = await captures("127.0.0.2")
    running = await serve(start_server, tmp_path, "", {FAST: mx})
    # one after another, as an application sends: each finds the last one's connection open
    for i in range(20):
        await send(running, [f"one{i}@{FAST}"])
        await mx.wait_for(i + 1)
    assert mx.connections == 1
    assert len(await events_of(running, "delivered", 20)) == 20


async def test_a_burst_to_one_site_shares_connections(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    mx = await captures("127.0.0.2")
    running = await serve(start_server, tmp_path, "", {FAST: mx})
    await send(running, addresses("burst", FAST, 20))
    await mx.wait_for(20)
    assert len(await events_of(running, "delivered", 20)) == 20
    assert mx.connections <= 5, f"{mx.connections} connections for a burst of 20 messages"


async def test_messages_per_connection_renews_the_connection(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    mx = await captures("127.0.0.2")
    running = await serve(
        start_server, tmp_path, "[default]\nconnections = 1\nmessages_per_connection = 5\n",
        {FAST: mx},
    )
    await send(running, addresses("r", FAST, 20))
    await mx.wait_for(20)
    await events_of(running, "delivered", 20)
    assert mx.connections == 4
    assert mx.most_open_sessions == 1
    peers = {m.peer for m in mx.messages}
    assert peers == {"127.0.0.1"}


async def test_a_site_never_gets_more_than_its_connections(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    limited = await captures("127.0.0.2")
    free = await captures("127.0.0.3")
    running = await serve(
        start_server, tmp_path,
        f'[default]\nmessages_per_connection = 3\n\n[profile.narrow]\ndomains = ["{SLOW}"]\n'
        "connections = 2\n",
        {SLOW: limited, FAST: free},
    )
    await asyncio.gather(
        send(running, addresses("n", SLOW, 30)), send(running, addresses("w", FAST, 30))
    )
    await limited.wait_for(30)
    await free.wait_for(30)
    assert limited.most_open_sessions == 2  # used both, never a third
    assert limited.connections >= 10  # 3 messages each
    assert free.most_open_sessions > 2  # the limit is the narrow profile's only


# -- pacing ---------------------------------------------------------------------------------------


async def test_a_paced_site_keeps_its_rate_while_another_runs_at_full_speed(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path,
    store_url: str,
):
    if store_url:
        pytest.skip("timing bounds calibrated on the embedded engine; on PostgreSQL they flaked"
                    " on a loaded 2-core box (see the issue 10 note); site-wide shaping across"
                    " nodes is tested in test_several_nodes")
    slow = await captures("127.0.0.2")
    fast = await captures("127.0.0.3")
    running = await serve(
        start_server, tmp_path,
        f'[profile.slow]\ndomains = ["{SLOW}"]\nper_minute = 600\n',  # 10 a second
        {SLOW: slow, FAST: fast},
    )
    await asyncio.gather(
        send(running, addresses("s", SLOW, 40)), send(running, addresses("f", FAST, 200))
    )
    await fast.wait_for(200, timeout=20)
    await slow.wait_for(40, timeout=20)
    times = sorted(m.at for m in slow.messages)
    # from the second arrival: the first one also waited for its session's connect and TLS,
    # which shortens the measured span and read as 11.1/s on a loaded box
    paced = times[1:]
    rate = (len(paced) - 1) / (paced[-1] - paced[0])
    assert 9.0 <= rate <= 11.0, f"{rate:.2f} messages/s to the paced site, wanted 10 ± 10%"
    # evenly paced, no bursts: no second holds much more than its 10 (jitter gives 11)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 13, f"{busiest} messages within one second"
    # the fast site did not wait for the slow one
    fast_done = max(m.at for m in fast.messages)
    assert fast_done < times[0] + (times[-1] - times[0]) / 2, (
        f"the fast site finished {fast_done - times[0]:.2f} s into the slow site's "
        f"{times[-1] - times[0]:.2f} s"
    )
    assert fast.most_open_sessions > 1


# -- throttling -------------------------------------------------------------------------------------

TOUCHY = "touchy.example.test"
THROTTLE_SHAPING = (
    f'[profile.touchy]\ndomains = ["{TOUCHY}", "touchy2.example.test", "touchy3.example.test"]\n'
    "throttle_pause_s = 2.0\n"
)


async def test_a_throttling_site_is_paused_alone_and_resumes(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    touchy = await captures("127.0.0.2")
    other = await captures("127.0.0.3")
    running = await serve(
        start_server, tmp_path, THROTTLE_SHAPING, {TOUCHY: touchy, FAST: other},
        outbound__retry_intervals_s=[600],
    )
    store = running.services.store
    started = time.time()
    t0 = time.monotonic()
    await send(running, [f"throttle@{TOUCHY}"])
    [failed] = await events_of(running, "failed", 1, timeout=5)
    assert failed["recipient"] == f"throttle@{TOUCHY}"
    assert failed["severity"] == "temporary"
    assert failed["reason"] == "espblock"
    assert failed["delivery-status"]["code"] == 421
    assert failed["delivery-status"]["description"] == "throttled"
    assert failed["recipient-provider"] == "Touchy"
    connections, attempts = touchy.connections, sum(touchy.attempts.values())
    assert (connections, attempts) == (1, 1)

    # during the pause: mail for the throttled site waits in the store, the other site's goes
    paused_id = await send(running, addresses("later", TOUCHY, 5))
    await send(running, addresses("meanwhile", FAST, 20))
    await other.wait_for(20, timeout=3)
    assert max(m.at for m in other.messages) < t0 + 2.0
    deadline = time.monotonic() + 1.5
    while True:  # deferred (due when the pause ends), not leased for a delivery run
        rows = await storeview.recipients(store, paused_id)
        if all(r["due_at"] < time.time() + 10 for r in rows) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    for row in rows:
        assert row["state"] == "queued"
        assert started + 2.0 <= row["due_at"] <= failed["timestamp"] + 2.0 + 0.1, row["due_at"]
    assert time.monotonic() < t0 + 2.0, "too slow to look inside the pause"
    assert (touchy.connections, sum(touchy.attempts.values())) == (connections, attempts)
    assert touchy.messages == []

    # after the pause the site takes mail again
    await touchy.wait_for(5, timeout=5)
    arrivals = [m.at for m in touchy.messages]
    assert min(arrivals) >= t0 + 2.0 - 0.05
    assert max(arrivals) < t0 + 4.0
    assert len(await events_of(running, "delivered", 25)) == 25
    assert touchy.attempts[f"throttle@{TOUCHY}"] == 1  # its own retry is 600 s away


async def test_one_burst_of_throttling_replies_is_one_pause(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path,
    store_url: str,
):
    if store_url:
        pytest.skip("timing bounds calibrated on the embedded engine; on PostgreSQL they flaked"
                    " on a loaded 2-core box (see the issue 10 note); site-wide shaping across"
                    " nodes is tested in test_several_nodes")
    touchy = await captures("127.0.0.2")
    # three domains of one profile on one MX: one site; 30 waiting messages open three
    # connections (one per ten waiting), whose first messages are all refused at once
    domains = [TOUCHY, "touchy2.example.test", "touchy3.example.test"]
    running = await serve(
        start_server, tmp_path, THROTTLE_SHAPING, dict.fromkeys(domains, touchy),
        outbound__retry_intervals_s=[1],
    )
    await send(running, [f"throttle-{n}@{d}" for d in domains for n in range(10)])
    failed = (await events_of(running, "failed", 3, timeout=5))[:3]
    assert len(failed) == 3 and touchy.connections == 3
    assert all(e["reason"] == "espblock" for e in failed)
    # each retry waits for the end of the site's pause: one pause of throttle_pause_s
    waits = sorted(e["delivery-status"]["retry-seconds"] for e in failed)
    assert waits == [2, 2, 2], f"retry waits {waits}: the pause escalated within one burst"


# -- sites ------------------------------------------------------------------------------------------


async def test_domains_with_the_same_mx_share_one_site(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    mx = await captures("127.0.0.2")
    domains = ["one.example.test", "two.example.test"]
    running = await serve(
        start_server, tmp_path, "[default]\nconnections = 1\n", dict.fromkeys(domains, mx)
    )
    await asyncio.gather(*(send(running, addresses("r", d, 10)) for d in domains))
    await mx.wait_for(20)
    assert mx.most_open_sessions == 1
    assert {m.rcpt_to.partition("@")[2] for m in mx.messages} == set(domains)
    assert mx.connections <= 2  # one connection carries both domains' mail


async def test_a_profile_matched_by_mx_host_shapes_the_site(
    start_server: Callable[..., Any], captures: Callable[..., Any], tmp_path: Path
):
    """A Google Workspace domain (MX aspmx.l.google.com) gets the gmail profile's limits."""
    google = await captures("127.0.0.4")
    other = await captures("127.0.0.5")
    running = await serve(
        start_server, tmp_path,
        '[profile.gmail]\ndomains = ["gmail.com"]\nmx = ["*.google.com"]\nconnections = 1\n',
        {"gmail.com": google, FAST: other},
        outbound__port=google.port,
        dns__answers={
            "corp.example.test MX": ["10 aspmx.l.google.com.", "20 alt1.aspmx.l.google.com."],
            "aspmx.l.google.com A": ["127.0.0.4"],
            "alt1.aspmx.l.google.com A": ["127.0.0.4"],
        },
    )
    await asyncio.gather(
        send(running, addresses("w", "corp.example.test", 10)),
        send(running, addresses("g", "gmail.com", 10)),
        send(running, addresses("o", FAST, 10)),
    )
    await google.wait_for(20)
    await other.wait_for(10)
    delivered = await events_of(running, "delivered", 30)
    providers = {e["recipient-domain"]: e["recipient-provider"] for e in delivered}
    assert providers == {"corp.example.test": "Gmail", "gmail.com": "Gmail", FAST: "Other"}
    by_mx = {e["delivery-status"]["mx-host"] for e in delivered
             if e["recipient-domain"] == "corp.example.test"}
    assert by_mx == {"aspmx.l.google.com"}
    # gmail.com (static route) and corp.example.test (MX) are two sites of one connection each
    assert google.most_open_sessions <= 2
