"""Webhooks: fan-out rate and commit-to-POST latency, and what webhooks cost delivery.

Part `fanout`: a fresh `mta serve` (no SMTP listeners, delivery off) with a `delivered`
webhook for its domain pointing at a local aiohttp receiver (its own process, checking every
signature). The bench commits `delivered` events straight into the server's SQLite store, in
small batches at `--rate` events/s for `--duration` s (the events trigger queues one job per
event in the same transaction, as for any producer), and the receiver notes when each event's
POST arrives. Latency is arrival minus the event's timestamp (taken just before its commit).

Part `delivery`: bench/delivery.py's end-to-end run (HTTP accept, delivery to smtp-sink) with
webhooks off and on, interleaved (off, on, off, on, ...: `--pairs`). "On" configures every
current webhook name of the domain to the receiver, so each message's `accepted` and
`delivered` events are both posted while the load runs.

    python bench/webhooks.py [--parts fanout,delivery] [--rate 1000] [--duration 15]
                             [--messages 5000] [--pairs 2] [--keep]

The figures are printed last, one `name: value` per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common import (
    DOMAIN,
    BenchServer,
    bench_server,
    cpu_seconds,
    free_port,
    median,
    wait_for_port,
)
from http_accept import machine_cpu

HOOK_NAMES = ("accepted", "clicked", "complained", "delivered", "opened", "permanent_fail",
              "temporary_fail", "unsubscribed")
BATCH_EVERY_S = 0.1  # a batch commit this often (larger, fewer: less lock contention)
DRAIN_S = 60.0  # how long the posts may take to arrive after the last commit


# -- the receiver (a child process) ------------------------------------------------------------


async def receive(port: int, out: Path, key: str) -> None:
    """Answer every POST 200; on SIGTERM write one line per post: event id, event timestamp,
    arrival time, signature ok (1/0)."""
    from aiohttp import web

    lines: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        arrived = time.time()
        body = json.loads(await request.read())
        signed = body["signature"]
        expected = hmac.new(key.encode(), f"{signed['timestamp']}{signed['token']}".encode(),
                            hashlib.sha256).hexdigest()
        data = body["event-data"]
        lines.append(f"{data['id']} {data['timestamp']} {arrived}"
                     f" {int(hmac.compare_digest(expected, signed['signature']))}\n")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    out.write_text("".join(lines))


@dataclass
class Receiver:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> list[tuple[str, float, float, bool]]:
        """(event id, event timestamp, arrival, signature ok) of every post received."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        rows = []
        for line in self.out.read_text().splitlines():
            event_id, ts, arrived, ok = line.split()
            rows.append((event_id, float(ts), float(arrived), ok == "1"))
        return rows


def start_receiver(work: Path, key: str) -> Receiver:
    port = free_port()
    out = work / f"received-{port}.txt"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--receiver-child",
                             str(port), str(out), key])
    wait_for_port(port, proc)
    return Receiver(proc, port, out)


# -- the server side ---------------------------------------------------------------------------


EXTRA_ENV: dict[str, str] = {}  # --env


def hook_env() -> dict[str, str]:
    return {"MTA_WEBHOOKS_ALLOW": '["127.0.0.0/8"]', **EXTRA_ENV}


def api(server: BenchServer, key: str, method: str, path: str,
        fields: list[tuple[str, str]] | None = None) -> dict[str, object]:
    data = urllib.parse.urlencode(fields).encode() if fields is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method)
    request.add_header("Authorization",
                       "Basic " + base64.b64encode(f"api:{key}".encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def signing_key(server: BenchServer, key: str) -> str:
    return str(api(server, key, "GET", "/v5/accounts/http_signing_key")["http_signing_key"])


def add_hooks(server: BenchServer, key: str, url: str, names: tuple[str, ...]) -> None:
    for name in names:
        api(server, key, "POST", f"/v3/domains/{DOMAIN}/webhooks", [("id", name), ("url", url)])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def fanout(args: argparse.Namespace, work: Path) -> dict[str, str]:
    from mta.events import DeliveryStatus, Event, MessageHeaders, MessageSummary, event_statements

    fig: dict[str, str] = {}
    env = hook_env() | {"MTA_SMTP_SUBMISSION": "", "MTA_SMTP_SUBMISSION_TLS": "",
                        "MTA_SMTP_SUBMISSION_ALT": "", "MTA_SMTP_MX": ""}
    with bench_server(extra_env=env, keep=args.keep) as server:
        key = server.setup_sending()
        receiver = start_receiver(work, signing_key(server, key))
        try:
            add_hooks(server, key, receiver.url, ("delivered",))
            conn = sqlite3.connect(server.db_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            total = int(args.rate * args.duration)
            per_batch = max(1, round(args.rate * BATCH_EVERY_S))
            summary = MessageSummary(headers=MessageHeaders(
                to="Bob <bob@d1.bench.test>", message_id=f"bench@{DOMAIN}",
                from_=f"News <news@{DOMAIN}>", subject="Your order has shipped"), size=1500)
            status = DeliveryStatus(code=250, message="OK", attempt_no=1, tls=False,
                                    mx_host="mx1.bench.test")
            print(f"[fanout] server pid {server.pid}, receiver pid {receiver.proc.pid};"
                  f" {total} events at {args.rate:g}/s in batches of {per_batch}", flush=True)
            cpu_before = [cpu_seconds(p) for p in (server.pid, receiver.proc.pid)]
            self_before = time.process_time()
            machine_before = machine_cpu()
            started = time.monotonic()
            written = 0
            write_s: list[float] = []
            while written < total:
                due = started + written / args.rate
                if (lag := due - time.monotonic()) > 0:
                    time.sleep(lag)
                count = min(per_batch, total - written)
                events = [Event("delivered", recipient=f"user{written + i}@d1.bench.test",
                                message=summary, delivery_status=status, tags=("bench",),
                                user_variables={"n": str(written + i)}) for i in range(count)]
                statements = event_statements(DOMAIN, events)
                began = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                for statement in statements:
                    conn.executemany(statement.sql, statement.rows)
                conn.execute("COMMIT")
                write_s.append(time.perf_counter() - began)
                written += count
            offered_s = time.monotonic() - started
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline:
                (left,) = conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'"
                                       ).fetchone()
                if left == 0:
                    break
                time.sleep(0.1)
            states = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
            conn.close()
            wall = time.monotonic() - started
            server_cpu, receiver_cpu = (cpu_seconds(p) - b for p, b in zip(
                (server.pid, receiver.proc.pid), cpu_before, strict=True))
            bench_cpu = time.process_time() - self_before
            machine = [b - a for a, b in zip(machine_before, machine_cpu(), strict=True)]
        finally:
            rows = receiver.stop()
    ids = [r[0] for r in rows]
    latencies = [(arrived - ts) * 1000 for _id, ts, arrived, _ok in rows]
    first_ts = min((ts for _i, ts, _a, _o in rows), default=0.0)
    last_arrival = max((a for _i, _t, a, _o in rows), default=0.0)
    span = last_arrival - first_ts
    fig["fanout_events_committed"] = str(total)
    fig["fanout_offered_events_per_s"] = f"{total / offered_s:.0f}"
    fig["fanout_posts_received"] = str(len(rows))
    fig["fanout_posts_per_s"] = f"{len(rows) / span:.0f}" if span > 0 else "0"
    fig["fanout_commit_to_post_p50_ms"] = f"{pct(latencies, 0.50):.0f}"
    fig["fanout_commit_to_post_p99_ms"] = f"{pct(latencies, 0.99):.0f}"
    fig["fanout_commit_to_post_max_ms"] = f"{max(latencies, default=0):.0f}"
    fig["fanout_batch_commit_p50_ms"] = f"{1000 * median(write_s):.1f}"
    fig["fanout_server_cpu_us_per_post"] = f"{1e6 * server_cpu / max(1, len(rows)):.0f}"
    fig["fanout_server_cpu_pct"] = f"{100 * server_cpu / wall:.0f}"
    fig["fanout_receiver_cpu_pct"] = f"{100 * receiver_cpu / wall:.0f}"
    cores = os.cpu_count() or 1
    busy = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
    others = max(0.0, busy - 100 * (server_cpu + receiver_cpu + bench_cpu) / wall)
    fig["fanout_other_processes_cpu_pct"] = f"{others:.0f}"
    if others > 25:
        print(f"[fanout] warning: other processes used {others:.0f} % CPU; the figures are low")
    problems = []
    if len(set(ids)) != total or len(ids) != total:
        problems.append(f"{len(set(ids))} distinct events posted of {total} ({len(ids)} posts)")
    if not all(ok for *_rest, ok in rows):
        problems.append("a signature did not verify")
    if states != {"done": total}:
        problems.append(f"jobs: {states}")
    fig["fanout_check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    return fig


# -- webhooks off and on beside delivery -------------------------------------------------------


@dataclass
class HookedServer(BenchServer):
    """A bench server whose domain, once made, has every webhook name set to the receiver."""

    receiver: Receiver | None = None
    hooks_on: bool = False
    key: str = ""

    def setup_sending(self, domain: str = DOMAIN) -> str:
        self.key = super().setup_sending(domain)
        if self.hooks_on:
            assert self.receiver is not None
            add_hooks(self, self.key, self.receiver.url, HOOK_NAMES)
        return self.key


def delivery_run(args: argparse.Namespace, work: Path, hooks_on: bool) -> dict[str, str]:
    import delivery

    work = Path(tempfile.mkdtemp(dir=work))  # delivery.py's marker files are per directory
    result = delivery.Result(1024)
    sink = delivery.start_sink(work)
    try:
        env = delivery.routes(sink.port, False) | hook_env()
        with bench_server(extra_env=env, keep=args.keep) as plain:
            server = HookedServer(plain.proc, plain.port, plain.env, plain.data_dir,
                                  plain.log_path, hooks_on=hooks_on)
            receiver = start_receiver(work, "unchecked")
            server.receiver = receiver
            posts: list[tuple[str, float, float, bool]] = []
            try:
                options = argparse.Namespace(messages=args.messages, connections=50,
                                             profile=None, stall=30.0, timeout=300.0)
                kind = "wrk" if shutil.which("wrk") else "aiohttp"
                delivery.run_with_server(options, 1024, kind, work, server, sink, result)
            finally:
                posts = receiver.stop()
            # delivery.py stops the server once the last message is delivered: the posts not
            # made by then are still queued (each is made at the next start)
            left = server.query("SELECT count(*) FROM jobs WHERE kind LIKE 'webhook%'"
                                " AND state = 'queued'")
    finally:
        sink.stop()
    fig = dict(result.figures)
    fig["webhook_posts"] = str(len(posts))
    fig["webhook_jobs_left_queued"] = str(left)
    if hooks_on and len({p[0] for p in posts}) + left != 2 * args.messages:
        result.problems.append(f"{len(posts)} webhook posts and {left} queued for"
                               f" {args.messages} messages")
    if result.problems:
        fig["check"] = "FAILED: " + "; ".join(result.problems)
    return fig


def delivery_ab(args: argparse.Namespace, work: Path) -> dict[str, str]:
    rates: dict[bool, list[float]] = {False: [], True: []}
    fig: dict[str, str] = {}
    problems: list[str] = []
    for pair in range(args.pairs):
        for hooks_on in (False, True):
            label = "on" if hooks_on else "off"
            print(f"[delivery] pair {pair + 1}/{args.pairs}, webhooks {label}", flush=True)
            figures = delivery_run(args, work, hooks_on)
            rate = float(figures.get("end_to_end_msgs_per_s", 0))
            rates[hooks_on].append(rate)
            fig[f"delivery_{label}_{pair + 1}_end_to_end_msgs_per_s"] = f"{rate:.0f}"
            fig[f"delivery_{label}_{pair + 1}_server_cpu_us_per_msg"] = figures.get(
                "server_cpu_us_per_msg", "?")
            fig[f"delivery_{label}_{pair + 1}_other_processes_cpu_pct"] = figures.get(
                "other_processes_cpu_pct", "?")
            if hooks_on:
                fig[f"delivery_on_{pair + 1}_webhook_posts_during_run"] = figures["webhook_posts"]
                fig[f"delivery_on_{pair + 1}_webhook_jobs_left_queued"] = figures[
                    "webhook_jobs_left_queued"]
            if figures.get("check") != "ok":
                problems.append(f"{label} {pair + 1}: {figures.get('check')}")
    off, on = median(rates[False]), median(rates[True])
    fig["delivery_webhooks_off_msgs_per_s_median"] = f"{off:.0f}"
    fig["delivery_webhooks_on_msgs_per_s_median"] = f"{on:.0f}"
    fig["delivery_webhooks_on_vs_off"] = f"{on / off:.3f}" if off else "?"
    fig["delivery_pair_ratios"] = ", ".join(
        f"{b / a:.3f}" if a else "?" for a, b in zip(rates[False], rates[True], strict=True))
    fig["delivery_check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="fanout,delivery")
    parser.add_argument("--rate", type=float, default=1000.0, help="fanout: events/s offered")
    parser.add_argument("--duration", type=float, default=15.0, help="fanout: seconds")
    parser.add_argument("--messages", type=int, default=5000, help="delivery: per run")
    parser.add_argument("--pairs", type=int, default=2, help="delivery: off/on pairs")
    parser.add_argument("--env", action="append", default=[], metavar="MTA_X=Y",
                        help="extra server setting")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--receiver-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver_child:
        port, out, key = args.receiver_child
        asyncio.run(receive(int(port), Path(out), key))
        return 0
    EXTRA_ENV.update(item.split("=", 1) for item in args.env)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - {"fanout", "delivery"}:
        parser.error("--parts: fanout and/or delivery")
    work = Path(tempfile.mkdtemp(prefix="mta-bench-webhooks-"))
    figures: dict[str, str] = {}
    try:
        if "fanout" in parts:
            figures |= fanout(args, work)
        if "delivery" in parts:
            figures |= delivery_ab(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("---")
    print(f"cpus: {os.cpu_count()}")
    for name, value in figures.items():
        print(f"{name}: {value}")
    return 0 if all(v == "ok" for k, v in figures.items() if k.endswith("check")) else 1


if __name__ == "__main__":
    sys.exit(main())
