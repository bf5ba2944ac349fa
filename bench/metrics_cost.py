"""Cost of metrics collection on the end-to-end delivery rate (issue 14: at most 2 %).

Runs bench/delivery.py's end-to-end load (HTTP accepts to Postfix's smtp-sink over five
destination sites, one fresh server and sink per run) with `[metrics] enabled = false` (A) and
`enabled = true` with a scraper fetching /metrics every `--scrape-interval` seconds (B): 1 s by
default, fifteen times Prometheus' default of 15 s, so the scrape-time store queries (queue depth
by destination, webhook backlog) count for as much as they ever would. Runs are interleaved in
pairs, A B then B A, so that a drift of the machine falls on both sides.

    python bench/metrics_cost.py [--pairs 3] [--messages 3000] [--size 1024]
                                 [--scrape-interval 1.0] [--connections 50]

The figures are printed last, one `name: value` per line, after a `---` line; the cost
(`metrics_cost_pct`) is the median over pairs of (rate off - rate on) / rate off, in percent
(negative: faster with metrics, that is within the noise). Beside it, the same for the server's
CPU time per message (`metrics_cpu_cost_pct`), which other load on the machine disturbs less,
and what the per-message hooks cost measured alone in this process (`hooks_us_per_msg`, and
as a share of the server's CPU per message without metrics): the floor under the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import BenchServer, bench_server, median
from delivery import Result, routes, run_with_server, start_sink


class Scraper(threading.Thread):
    """Fetches /metrics every `interval` seconds, as Prometheus would, until stopped (or the
    server is: the driver stops it at the end of a run)."""

    def __init__(self, server: BenchServer, interval: float) -> None:
        super().__init__(daemon=True)
        self._server = server
        self._url = server.url + "/metrics"
        self._interval = interval
        self._stopping = threading.Event()
        self.durations: list[float] = []
        self.failures = 0
        self.last_error = ""
        self.bytes = 0

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self._url, timeout=10) as resp:
                    self.bytes = len(resp.read())
            except (urllib.error.URLError, OSError) as exc:
                if self._server.proc.poll() is None:
                    self.failures += 1
                    self.last_error = str(exc)
                continue
            self.durations.append(time.perf_counter() - started)

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def hooks_us_per_message(messages: int = 20_000) -> float:
    """What the metrics hooks cost the server per delivered message, measured here: two
    committed events (accepted, delivered), and, as if each had a transaction of its own, a
    commit timing, plus its delivery latency. (The server's real transactions hold many.)"""
    from mta.config import Config
    from mta.events.model import Event
    from mta.metrics import Metrics
    from mta.store import Statement
    from mta.store.sqlite import SqliteStore

    async def measure(path: Path) -> float:
        store = await SqliteStore.open(path)
        try:
            metrics = Metrics(Config(), store)  # enabled by default: it observes the store
            timer = store.observers.timer
            assert timer is not None
            chunk = 1000
            accepted = [("mg.bench.test", Event("accepted", recipient=f"u{i}@d{i % 5}.test"))
                        for i in range(chunk)]
            delivered = [("mg.bench.test", Event("delivered", recipient=f"u{i}@d{i % 5}.test"))
                         for i in range(chunk)]
            started = time.perf_counter()
            for _ in range(messages // chunk):
                store.observers.committed([Statement("", observed=tuple(accepted))])
                store.observers.committed([Statement("", observed=tuple(delivered))])
                for _ in range(chunk):
                    timer(0.001)
                    metrics.delivered(0.5)
            return (time.perf_counter() - started) / messages * 1e6
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(measure(Path(tmp) / "mta.db"))


def one_run(args: argparse.Namespace, metrics: bool, work: Path) -> tuple[Result, Scraper | None]:
    """One end-to-end delivery run, with metrics (and the scraper) on or off."""
    result = Result(args.size)
    sink = start_sink(work)
    scraper = None
    try:
        env = routes(sink.port, one_site=False)
        env["MTA_METRICS_ENABLED"] = "true" if metrics else "false"
        with bench_server(extra_env=env) as server:
            if metrics:
                scraper = Scraper(server, args.scrape_interval)
                scraper.start()
            try:
                run_with_server(args, args.size, "wrk" if shutil.which("wrk") else "aiohttp",
                                work, server, sink, result)
            finally:
                if scraper is not None:
                    scraper.stop()
    finally:
        sink.stop()
    return result, scraper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=1024, help="stored message size in bytes")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--connections", type=int, default=50, help="HTTP connections")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up a run after (s)")
    parser.add_argument("--stall", type=float, default=30.0, help="give up without progress (s)")
    args = parser.parse_args()
    args.profile = None  # what run_with_server reads of delivery.py's own options
    if args.pairs < 1 or not 1 <= args.messages <= 100_000:
        parser.error("--pairs must be at least 1 and --messages 1..100000")

    work = Path(tempfile.mkdtemp(prefix="mta-bench-metrics-"))
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}  # server CPU µs per message
    costs: list[float] = []
    cpu_costs: list[float] = []
    scrapes: list[float] = []
    scrape_failures = scrape_bytes = 0
    scrape_error = ""
    problems: list[str] = []
    try:
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            rate: dict[bool, float] = {}
            used: dict[bool, float] = {}
            for metrics in order:
                # a directory of its own: the driver's files (ids, "answered") are per size
                run_dir = work / f"{pair}-{'on' if metrics else 'off'}"
                run_dir.mkdir()
                result, scraper = one_run(args, metrics, run_dir)
                rate[metrics] = float(result.figures.get("end_to_end_msgs_per_s", 0))
                rates[metrics].append(rate[metrics])
                used[metrics] = float(result.figures.get("server_cpu_us_per_msg", 0))
                cpu[metrics].append(used[metrics])
                problems += [f"pair {pair + 1} metrics {'on' if metrics else 'off'}: {p}"
                             for p in result.problems]
                if scraper is not None:
                    scrapes += scraper.durations
                    scrape_failures += scraper.failures
                    scrape_error = scraper.last_error or scrape_error
                    scrape_bytes = max(scrape_bytes, scraper.bytes)
                print(f"pair {pair + 1}: metrics {'on ' if metrics else 'off'}"
                      f" {rate[metrics]:.0f} msgs/s end to end, server CPU"
                      f" {used[metrics]:.0f} µs/msg", flush=True)
            if rate[False] and used[False]:
                costs.append(100 * (rate[False] - rate[True]) / rate[False])
                cpu_costs.append(100 * (used[True] - used[False]) / used[False])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    hooks_us = hooks_us_per_message()
    print("---")
    print(f"messages_per_run: {args.messages}")
    print(f"message_bytes: {args.size}")
    print(f"pairs: {args.pairs} (interleaved: off-on, on-off, ...)")
    print(f"scrape_interval_s: {args.scrape_interval:g}")
    print(f"scrapes: {len(scrapes)} ({scrape_failures} failed"
          + (f", the last: {scrape_error})" if scrape_error else ")"))
    if scrapes:
        print(f"scrape_ms_median: {1000 * median(scrapes):.1f}")
        print(f"scrape_ms_max: {1000 * max(scrapes):.1f}")
        print(f"scrape_bytes_last: {scrape_bytes}")
    print("rates_off_msgs_per_s: " + ", ".join(f"{r:.0f}" for r in rates[False]))
    print("rates_on_msgs_per_s: " + ", ".join(f"{r:.0f}" for r in rates[True]))
    print("server_cpu_us_per_msg_off: " + ", ".join(f"{c:.0f}" for c in cpu[False]))
    print("server_cpu_us_per_msg_on: " + ", ".join(f"{c:.0f}" for c in cpu[True]))
    print("cpu_cost_pct_per_pair: " + ", ".join(f"{c:.1f}" for c in cpu_costs))
    print("cost_pct_per_pair: " + ", ".join(f"{c:.1f}" for c in costs))
    print(f"hooks_us_per_msg: {hooks_us:.1f} (measured in the bench process)")
    if cpu[False]:
        print(f"hooks_share_of_server_cpu_pct: {100 * hooks_us / median(cpu[False]):.2f}")
    print(f"check: {'FAILED: ' + '; '.join(problems) if problems else 'ok'}")
    if costs:
        print(f"metrics_cpu_cost_pct: {median(cpu_costs):.1f}")
        print(f"metrics_cost_pct: {median(costs):.1f}")
    return 1 if problems or scrape_failures else 0


if __name__ == "__main__":
    sys.exit(main())
