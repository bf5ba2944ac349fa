"""`mta serve` for the bench commands, with two optional extras set by environment variables:

    MTA_BENCH_UVLOOP=1        run on uvloop (installs its event-loop policy first)
    MTA_BENCH_SWITCH_INTERVAL=S  sys.setswitchinterval(S) (GIL hand-over; Python's default 0.005)
    MTA_BENCH_STATS=FILE      measure the store's group commit (jobs per commit, commit time,
                              how long each write waited) and write them to FILE as JSON at
                              exit or on SIGUSR2 (the end of the measured phase: later
                              activity is then left out); SIGUSR1 clears them (its start)

Everything else is the normal CLI: `python bench/serve.py` == `mta serve`, same MTA_* settings.
The measuring wraps two Store methods from the outside; mta itself is not changed.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import sys
import time
from typing import Any

from mta.cli import main


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def install_stats(path: str) -> None:
    from mta.store import Store

    batches: list[int] = []
    commit_s: list[float] = []
    wait_s: list[float] = []
    began = [time.monotonic()]
    written = [False]

    commit_batch = Store._commit_batch
    write = Store.write

    def timed_commit(self: Store, batch: list[Any]) -> list[Exception | None]:
        started = time.perf_counter()
        try:
            return commit_batch(self, batch)
        finally:
            commit_s.append(time.perf_counter() - started)
            batches.append(len(batch))

    async def timed_write(self: Store, *statements: Any) -> None:
        started = time.perf_counter()
        try:
            await write(self, *statements)
        finally:
            wait_s.append(time.perf_counter() - started)

    Store._commit_batch = timed_commit  # type: ignore[method-assign]
    Store.write = timed_write  # type: ignore[method-assign]

    def reset(*_: Any) -> None:
        batches.clear()
        commit_s.clear()
        wait_s.clear()
        began[0] = time.monotonic()

    def dump(*_: Any) -> None:
        if written[0]:
            return
        written[0] = True
        elapsed = time.monotonic() - began[0]
        jobs = sum(batches)
        stats = {
            "seconds": round(elapsed, 3),
            "commits": len(batches),
            "jobs": jobs,
            "commits_per_s": round(len(batches) / elapsed, 1) if elapsed else 0,
            "jobs_per_commit_mean": round(jobs / len(batches), 2) if batches else 0,
            "jobs_per_commit_max": max(batches, default=0),
            "commit_ms_p50": round(1000 * percentile(commit_s, 0.5), 3),
            "commit_ms_p99": round(1000 * percentile(commit_s, 0.99), 3),
            "writer_busy_pct": round(100 * sum(commit_s) / elapsed, 1) if elapsed else 0,
            "write_wait_ms_p50": round(1000 * percentile(wait_s, 0.5), 3),
            "write_wait_ms_p99": round(1000 * percentile(wait_s, 0.99), 3),
        }
        with open(path, "w") as out:
            json.dump(stats, out)

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)
    atexit.register(dump)


if __name__ == "__main__":
    if os.environ.get("MTA_BENCH_STATS"):
        install_stats(os.environ["MTA_BENCH_STATS"])
    if os.environ.get("MTA_BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["MTA_BENCH_SWITCH_INTERVAL"]))
    if os.environ.get("MTA_BENCH_UVLOOP") == "1":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(["serve", *sys.argv[1:]]))
