"""Fallback load generator for bench/http_accept.py when wrk is not installed.

Runs in its own process (so it does not share the server's interpreter): CONNECTIONS workers on
one keep-alive aiohttp session, each POSTing the body from $MTA_BENCH_BODY in a loop until the
duration is over; requests in flight at the end are waited for. Prints the same load_* lines
as bench/wrk_post.lua and writes the 200-answered Message-Ids to $MTA_BENCH_IDS.

    python bench/aiohttp_load.py URL DURATION_S CONNECTIONS
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import aiohttp


async def run(url: str, duration: float, connections: int) -> None:
    headers = {
        "Authorization": os.environ["MTA_BENCH_AUTH"],
        "Content-Type": "application/x-www-form-urlencoded",
    }
    body = os.environ["MTA_BENCH_BODY"].encode()
    target = url + os.environ["MTA_BENCH_PATH"]
    ids: list[str] = []
    latencies: list[float] = []
    counts = {"non_200": 0, "bad_body": 0, "socket_errors": 0}
    deadline = time.monotonic() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                counts["socket_errors"] += 1
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                counts["non_200"] += 1
                continue
            start = raw.find(b'"id":"<')
            end = raw.find(b'>"', start)
            if start < 0 or end < 0:
                counts["bad_body"] += 1
                continue
            ids.append(raw[start + 7 : end].decode())

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    with open(os.environ["MTA_BENCH_IDS"], "w") as out:
        out.write("".join(f"{i}\n" for i in ids))
    latencies.sort()

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6)

    print(f"load_ok: {len(ids)}")
    for name, value in counts.items():
        print(f"load_{name}: {value}")
    print(f"load_duration_us: {int(elapsed * 1e6)}")
    if latencies:
        print(f"load_latency_p50_us: {pct(0.50)}")
        print(f"load_latency_p99_us: {pct(0.99)}")
        print(f"load_latency_max_us: {int(latencies[-1] * 1e6)}")


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
