"""Tracking hits per second: the open pixel and the click redirect at 50 concurrent clients.

Starts `mta serve` (outbound off) in a throw-away data directory, adds the domain and a key,
and makes batch sends (a newsletter: 1,000 recipients each, with recipient-variables) over the
API, so that every (message, recipient) has its `accepted` event to attribute hits to. Then it
stops that server and serves the tracking endpoints from the same store in a child process of
this script (`serve`: the services `mta serve` builds, and mta.api.tracking mounted on an
aiohttp app, as the API app will mount them), and loads them with `wrk` (bench/wrk_paths.lua;
`apt-get install -y wrk`), which shares the machine's 2 cores with the server. Four runs, each
with a 2 s warm-up and a measured window (`--duration`, 10 s):

- pixel_hot / click_hot: every request is the same link (one recipient opening or clicking
  again and again: the attribution comes from the cache);
- pixel_spread / click_spread: each request is another recipient's link (half of
  `--recipients`, 30,000, each: the attribution is read from the events table, once per
  recipient, until the links come round again).

Every hit that is answered is an event committed before the answer (synchronous=FULL).
The figures are printed last, one `name: value` per line, after a `---` line.

    python bench/tracking_hits.py [--duration 10] [--connections 50] [--recipients 30000]
                                  [--profile FILE [--profile-run pixel_spread]]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BENCH_DIR,
    DOMAIN,
    bench_server,
    cpu_seconds,
    free_port,
    parse_load_lines,
    wait_for_port,
)

PER_MESSAGE = 1000
SETTLE_S = 1.0


async def send(url: str, key: str, recipients: int) -> list[tuple[str, list[str]]]:
    """Batch sends (a newsletter) of up to 1,000 recipients each: [(message id, its
    recipients)]."""
    import aiohttp

    auth = {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()}
    sent = []
    async with aiohttp.ClientSession(headers=auth) as session:
        for first in range(0, recipients, PER_MESSAGE):
            to = [f"reader{n}@example.com" for n in range(first, min(recipients,
                                                                    first + PER_MESSAGE))]
            variables = {address: {"n": str(n)} for n, address in enumerate(to, first)}
            form = [("from", f"News <news@{DOMAIN}>"), ("subject", "Spring news"),
                    ("html", "<p>Hello %recipient.n%</p>"), ("o:tag", "newsletter"),
                    ("v:campaign", "spring"), ("recipient-variables", json.dumps(variables)),
                    *(("to", address) for address in to)]
            async with session.post(f"{url}/v3/{DOMAIN}/messages", data=form) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"send failed: {resp.status} {body}")
            sent.append((body["id"].strip("<>"), to))
    return sent


async def serve(port: int, job_path: str) -> None:
    """The child: the tracking endpoints on 127.0.0.1:port over the store the environment's
    settings name; first it writes the job's link paths, one file per run."""
    from aiohttp import web

    from mta.api.tracking import mount
    from mta.config import load
    from mta.services import open_services
    from mta.tracking.clients import ClientDescriber
    from mta.tracking.hits import Hits
    from mta.tracking.links import TrackingLinks

    config = load(env=dict(os.environ))
    services = await open_services(config)
    tracking = config.tracking
    links = TrackingLinks(
        await services.account.tracking_secret(), tracking.link_lifetime_days * 86400
    )
    job = json.loads(Path(job_path).read_text())
    pairs = [(m, r) for m, recipients in job["messages"] for r in recipients]
    half = len(pairs) // 2  # the spread runs use their own recipients: none is cached yet
    landing = "https://example.com/landing?utm_source=news&utm_medium=email"
    for name, kind, chosen in (("pixel_hot", "o", pairs[:1]), ("pixel_spread", "o", pairs[:half]),
                               ("click_hot", "c", pairs[:1]), ("click_spread", "c", pairs[half:])):
        with open(job["paths"][name], "w") as out:
            for message_id, recipient in chosen:
                extra = landing if kind == "c" else None
                token = links.token(kind, DOMAIN, message_id, recipient, extra=extra)
                out.write(f"/{kind}/{token}\n")
    describer = ClientDescriber(tracking.geoip_database, tracking.scanner_window_s)
    app = web.Application()
    mount(app, Hits(services.store, services.domains, links, describer),
          tracking.trusted_proxies)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    describer.close()
    await services.close()


def machine_cpu() -> list[int]:
    """Jiffies since boot over all CPUs: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def loop_thread_cpu(pid: int) -> float:
    """CPU seconds of the server's main thread (the event loop)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_events(db: Path, kind: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM events WHERE event = ?", (kind,)).fetchone()[0]
    finally:
        conn.close()


def load(url: str, paths: Path, status: int, seconds: int, connections: int) -> dict[str, str]:
    threads = 2
    env = dict(os.environ, MTA_BENCH_PATHS=str(paths), MTA_BENCH_STATUS=str(status),
               MTA_BENCH_THREADS=str(threads))
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(BENCH_DIR / "wrk_paths.lua"), url],
        env=env, capture_output=True, text=True, check=True,
    )
    return parse_load_lines(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--recipients", type=int, default=30_000)
    parser.add_argument("--profile", type=Path,
                        help="py-spy collapsed stacks of one measured run go here")
    parser.add_argument("--profile-run", default="pixel_spread",
                        help="the run --profile samples (pixel_hot, click_spread, ...)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install -y wrk)")
    figures: dict[str, object] = {}
    work = Path(tempfile.mkdtemp(prefix="mta-bench-tracking-"))
    try:
        with bench_server(extra_env={"MTA_OUTBOUND_ENABLED": "false"}) as server:
            key = server.setup_sending()
            began = time.monotonic()
            messages = asyncio.run(send(server.url, key, args.recipients))
            print(f"sent {args.recipients} recipients in {time.monotonic() - began:.1f} s",
                  file=sys.stderr)
            server.stop()
            names = ("pixel_hot", "pixel_spread", "click_hot", "click_spread")
            paths = {name: work / f"{name}.txt" for name in names}
            job = work / "job.json"
            job.write_text(json.dumps({"messages": messages,
                                       "paths": {n: str(p) for n, p in paths.items()}}))
            port = free_port()
            with open(work / "tracking.log", "wb") as log:
                child = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "serve", str(port),
                     str(job)],
                    env=server.env, cwd=server.data_dir.parent, stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_for_port(port, child)
                url = f"http://127.0.0.1:{port}"
                for name in names:
                    kind, status = ("opened", 200) if name.startswith("pixel") else ("clicked",
                                                                                    302)
                    load(url, paths[name], status, args.warmup, args.connections)
                    time.sleep(SETTLE_S)  # requests cut off by wrk's stop finish first
                    before_events = count_events(server.db_path, kind)
                    profiler = None
                    if args.profile and name == args.profile_run:
                        profiler = subprocess.Popen(
                            [shutil.which("py-spy") or str(Path(sys.executable).with_name(
                                "py-spy")), "record", "--pid", str(child.pid), "--duration",
                             str(args.duration), "--rate", "200", "--format", "raw",
                             "--threads", "--output", str(args.profile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )
                        time.sleep(0.5)  # let py-spy attach before the load starts
                    before_cpu, wall = cpu_seconds(child.pid), time.monotonic()
                    before_loop, before_machine = loop_thread_cpu(child.pid), machine_cpu()
                    before_wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
                    found = load(url, paths[name], status, args.duration, args.connections)
                    cpu, wall = cpu_seconds(child.pid) - before_cpu, time.monotonic() - wall
                    loop_cpu = loop_thread_cpu(child.pid) - before_loop
                    machine = [b - a for a, b in zip(before_machine, machine_cpu(), strict=True)]
                    after_wrk = resource.getrusage(resource.RUSAGE_CHILDREN)
                    wrk_cpu = (after_wrk.ru_utime + after_wrk.ru_stime
                               - before_wrk.ru_utime - before_wrk.ru_stime)
                    if profiler is not None:
                        profiler.wait(60)
                    answered = int(found["ok"])
                    time.sleep(SETTLE_S)
                    recorded = count_events(server.db_path, kind) - before_events
                    seconds = int(found["duration_us"]) / 1e6
                    figures[f"{name}_per_s"] = round(answered / seconds)
                    figures[f"{name}_latency_p50_ms"] = int(found["latency_p50_us"]) / 1000
                    figures[f"{name}_latency_p99_ms"] = int(found["latency_p99_us"]) / 1000
                    figures[f"{name}_server_cpu_pct"] = round(100 * cpu / wall)
                    figures[f"{name}_server_loop_thread_cpu_pct"] = round(100 * loop_cpu / wall)
                    figures[f"{name}_server_cpu_us_per_hit"] = round(1e6 * cpu / max(answered, 1))
                    figures[f"{name}_server_loop_thread_us_per_hit"] = round(
                        1e6 * loop_cpu / max(answered, 1)
                    )
                    # in % of one core: other jobs on the machine make the figures low
                    cores, total = os.cpu_count() or 1, max(1, sum(machine))
                    busy = 100 * cores * (total - machine[3] - machine[4]) / total
                    figures[f"{name}_generator_cpu_pct"] = round(100 * wrk_cpu / wall)
                    figures[f"{name}_other_processes_cpu_pct"] = round(
                        max(0.0, busy - 100 * (cpu + wrk_cpu) / wall)
                    )
                    figures[f"{name}_machine_steal_pct"] = round(100 * cores * machine[7] / total)
                    figures[f"{name}_errors"] = (int(found["unexpected_status"])
                                                 + int(found["socket_errors"]))
                    # a request cut off when wrk stops may be recorded but never read
                    figures[f"{name}_db_check"] = (
                        "ok" if answered <= recorded <= answered + args.connections
                        else f"answered {answered}, recorded {recorded}"
                    )
            finally:
                child.send_signal(signal.SIGTERM)
                child.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("---")
    print("generator: wrk (2 threads, on the same 2 cores as the server)")
    print(f"connections: {args.connections}")
    print(f"recipients: {args.recipients}")
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
    else:
        main()
