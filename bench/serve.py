"""`mta serve` for the bench commands, with optional extras set by environment variables:

    MTA_BENCH_UVLOOP=1        run on uvloop (installs its event-loop policy first)
    MTA_BENCH_SWITCH_INTERVAL=S  sys.setswitchinterval(S) (GIL hand-over; Python's default 0.005)
    MTA_BENCH_STATS=FILE      measure the store's group commit (jobs per commit, commit time,
                              how long each write waited) and write them to FILE as JSON at
                              exit or on SIGUSR2 (the end of the measured phase: later
                              activity is then left out); SIGUSR1 clears them (its start)
    MTA_BENCH_LOOP_LAG=FILE   a task on the server's event loop sleeps LOOP_LAG_TICK_S again and
                              again and records by how much each sleep overshoots (the loop's
                              stall); SIGUSR1 clears the record, SIGUSR2 writes its max, p99,
                              p50 and count to FILE as JSON (written whole: FILE.tmp, renamed)

Everything else is the normal CLI: `python bench/serve.py` == `mta serve`, same MTA_* settings.
The measuring wraps two Store methods (and, for the loop lag, Server.start) from the outside;
mta itself is not changed. With both STATS and LOOP_LAG set, each signal serves both.
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
    from mta.store.sqlite import SqliteStore as Store

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


LOOP_LAG_TICK_S = 0.001
LOOP_LAG_MAX_SAMPLES = 2_000_000  # ~30 min of ticks; older ones are not kept past this


def _chain(sig: int, action: Any) -> None:
    """Run `action` on `sig`, then whatever handler was there before (the stats' one)."""
    before = signal.getsignal(sig)

    def handler(signum: int, frame: Any) -> None:
        action()
        if callable(before):
            before(signum, frame)

    signal.signal(sig, handler)


def install_loop_lag(path: str) -> None:
    """A probe task on the server's loop, started once the server has started."""
    from mta.app import Server

    samples: list[float] = []
    state = {"max": 0.0, "max_at": 0.0, "began": time.monotonic(), "seq": 0}
    start = Server.start

    async def probe() -> None:
        sleep, clock = asyncio.sleep, time.perf_counter
        while True:
            before = clock()
            await sleep(LOOP_LAG_TICK_S)
            late = clock() - before - LOOP_LAG_TICK_S
            if len(samples) < LOOP_LAG_MAX_SAMPLES:
                samples.append(late)
            if late > state["max"]:
                state["max"] = late
                state["max_at"] = time.monotonic() - state["began"]

    async def started(self: Server) -> None:
        await start(self)
        task = asyncio.get_running_loop().create_task(probe(), name="bench-loop-lag")
        self._bench_loop_lag = task  # type: ignore[attr-defined]  # kept referenced

    def reset() -> None:
        samples.clear()
        state.update(max=0.0, max_at=0.0, began=time.monotonic())

    def dump() -> None:
        state["seq"] += 1
        taken = list(samples)
        report = {
            "seq": state["seq"],
            "seconds": round(time.monotonic() - state["began"], 3),
            "samples": len(taken),
            "max_ms": round(1000 * state["max"], 3),
            "max_at_s": round(state["max_at"], 3),
            "p99_ms": round(1000 * percentile(taken, 0.99), 3),
            "p50_ms": round(1000 * percentile(taken, 0.5), 3),
            "over_10ms": sum(1 for s in taken if s > 0.010),
            "over_50ms": sum(1 for s in taken if s > 0.050),
        }
        with open(path + ".tmp", "w") as out:
            json.dump(report, out)
        os.replace(path + ".tmp", path)

    Server.start = started  # type: ignore[method-assign]
    _chain(signal.SIGUSR1, reset)
    _chain(signal.SIGUSR2, dump)


if __name__ == "__main__":
    if os.environ.get("MTA_BENCH_STATS"):
        install_stats(os.environ["MTA_BENCH_STATS"])
    if os.environ.get("MTA_BENCH_LOOP_LAG"):
        install_loop_lag(os.environ["MTA_BENCH_LOOP_LAG"])
    if os.environ.get("MTA_BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["MTA_BENCH_SWITCH_INTERVAL"]))
    if os.environ.get("MTA_BENCH_UVLOOP") == "1":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(["serve", *sys.argv[1:]]))
