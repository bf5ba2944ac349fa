"""What the tests of tracked mail share: waiting for events, a mail client or browser fetching
a tracking link of a delivered copy from the running server, and a small city database that
places one network (LONDON) for geolocation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests import storeview
from tests.conftest import DOMAIN, Running

LONDON = "81.2.69.160"  # the one network city_database knows
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


async def wait_for(running: Running, kind: str, count: int) -> None:
    """Until the store holds `count` events of `kind` (30 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(await storeview.events(running.services.store, kind)) < count:
        assert loop.time() < deadline, f"fewer than {count} {kind} events"
        await asyncio.sleep(0.05)


async def hit(
    running: Running, kind: str, message_id: str, recipient: str, *, url: str | None = None,
    agent: str = THUNDERBIRD, ip: str | None = None,
) -> None:
    """An open (kind "o") or a click ("c") through the server's own tracking endpoints; `ip`
    is where it came from (sent as X-Forwarded-For: the test trusts the loopback proxy)."""
    token = running.services.tracking_links.token(kind, DOMAIN, message_id, recipient, extra=url)
    headers = {"User-Agent": agent, **({"X-Forwarded-For": ip} if ip else {})}
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(f"{running.url}/{kind}/{token}", headers=headers,
                    allow_redirects=False) as resp,
    ):
        assert resp.status == (302 if kind == "c" else 200), await resp.text()


def city_database(path: Path) -> str:
    """A MaxMind-format city database that places one network in London."""
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["81.2.69.0/24"]), {
        "country": {"iso_code": "GB"},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
        "city": {"names": {"en": "London"}},
    })
    writer.to_db_file(str(path))
    return str(path)
