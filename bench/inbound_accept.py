"""Inbound messages accepted per second on the MX port (plain SMTP, no AUTH), with 100 routes.

Starts `python -m mta serve` (default configuration: synchronous=FULL, so every 250 after DATA
is a durable commit of the message, its events and its jobs) on free loopback ports in a
temporary data directory, with only the MX listener on. The CLI adds the domain and a key; the
routes are created through `POST /v3/routes`. Then 50 reused sessions (bench/smtp_load.py
--plain, in its own process) send 5 KB messages to one hosted address: MAIL+RCPT+DATA
pipelined, the body after the 354, the next message after the 250. A warm-up, then a measured
window; messages in flight at its end are finished. At the end every message answered 250 must
be in the `inbound` table (its Message-Id is read back from the stored MIME).

The routes (100; see `route_specs`): 99 that do not match the bench recipient -- exact
addresses on the hosted domain with forward() or store(notify=), plus-addressing with a capture
and stop(), whole other domains, role addresses forwarded to an email address, subject keywords,
the spam flag, a catch_all() last -- and one, in the middle of the priorities, that matches it
with `store()`. The routes with stop() do not match, so every message meets all 100.
The matched route creates no job (store() without notify): no HTTP receiver is needed. With
--forward it also forwards to a URL: a tiny HTTP receiver then runs in another process, every
message gets one durable job that the server POSTs to it while the load runs, and the bench waits
for the jobs to finish and counts the POSTs.

The domain's spam_action is `disabled` (the default of `mta domain add`), so the server runs
no SPF, DKIM or spam check. With `--spam-action tag` the domain is created through the API with
that setting instead, and every message gets the verdicts: an SPF check (the sender's domain has
`v=spf1 ip4:127.0.0.0/8 -all` in the server's fixed DNS answers, so one TXT look-up, and it
passes) and a DKIM check (the messages are not signed, so little work); spamd is not configured,
so there is no spam score either way.

    python bench/inbound_accept.py [--duration 10] [--warmup 2] [--connections 50]
        [--size 5120] [--routes 100] [--forward] [--spam-action tag] [--profile FILE]

The figures are printed last, one `name: value` per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from common import (
    DOMAIN,
    BenchServer,
    bench_server,
    cpu_seconds,
    free_port,
    proc_status,
    wait_for_port,
)
from http_accept import fs_type, machine_cpu, start_profiler, thread_cpu
from smtp_accept import Clients, sleep_until

RECIPIENT = f"inbox@{DOMAIN}"
SENDER_DOMAIN = "sender.bench.test"
SENDER = f"alice@{SENDER_DOMAIN}"
# warnings every fresh bench server logs before the set-up (not counted)
STARTUP_NOTICES = ("no smtp.tls_cert configured", "no API keys yet", "no domains yet")
_MESSAGE_ID = re.compile(rb"^Message-Id: <([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


# -- routes -------------------------------------------------------------------------------------


def route_specs(count: int, hook: str) -> list[tuple[int, str, list[str]]]:
    """(priority, expression, actions): `count - 1` routes that do not match RECIPIENT, in a
    mix like a Mailgun account's, and one (priority 50, in the middle) that does, with store().
    `hook` is the base URL the forward() and notify actions point at."""
    esc = DOMAIN.replace(".", "\\.")
    specs: list[tuple[int, str, list[str]]] = []
    kinds = (
        [0] * 50  # exact addresses on the hosted domain
        + [1] * 15  # plus-addressing with a capture
        + [2] * 12  # whole other domains
        + [3] * 10  # role addresses forwarded by email
        + [4] * 8  # a subject keyword
        + [5] * 3  # the spam flag
    )
    for i in range(count - 2):
        kind = kinds[i % len(kinds)]
        priority = (i * 37) % 100  # spread over 0..99, the matching route sits at 50
        if kind == 0:
            expression = f'match_recipient("user{i}@{DOMAIN}")'
            actions = (
                [f'forward("{hook}/in/user{i}")'] if i % 2 else [f'store(notify="{hook}/stored")']
            )
        elif kind == 1:
            expression = f'match_recipient("^user{i}\\+(.*)@{esc}$")'
            actions = [f'forward("{hook}/plus?user=user{i}&tag=\\1")', "stop()"]
        elif kind == 2:
            expression = f'match_recipient(".*@d{i}\\.example")'
            actions = ["store()"]
        elif kind == 3:
            expression = f'match_recipient("^(support|sales|billing)-{i}@{esc}$")'
            actions = [f'forward("team{i}@corp.example")']
        elif kind == 4:
            expression = f'match_header("subject", ".*(urgent|invoice) #{i}")'
            actions = [f'forward("{hook}/urgent")']
        else:
            expression = "match_header('X-Mailgun-Sflag', 'Yes')"
            actions = [f'store(notify="{hook}/spam")', "stop()"]
        specs.append((priority, expression, actions))
    specs.append((1000, "catch_all()", [f'forward("{hook}/catchall")']))
    return specs


def matching_route(forward_to: str | None) -> tuple[int, str, list[str]]:
    actions = ["store()"] + ([f'forward("{forward_to}")'] if forward_to else [])
    return 50, f'match_recipient("{RECIPIENT}")', actions


def api_post(server: BenchServer, key: str, path: str, form: list[tuple[str, str]]) -> None:
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {path} {form}: {exc.code} {exc.read()[:300]!r}") from None


def create_routes(server: BenchServer, key: str, specs: list[tuple[int, str, list[str]]]) -> None:
    for priority, expression, actions in specs:
        form = [("priority", str(priority)), ("expression", expression)]
        api_post(server, key, "/v3/routes", form + [("action", a) for a in actions])


# -- the HTTP receiver (--forward), in its own process -------------------------------------------


def run_receiver(port: int) -> None:
    """Answer every POST 200 and count them; print the count when told to stop (SIGTERM)."""
    import asyncio

    from aiohttp import web

    posts = {"count": 0, "bytes": 0}

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        posts["count"] += 1
        posts["bytes"] += len(body)
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()
        print(json.dumps(posts), flush=True)

    asyncio.run(main())


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_port(self.port, self.proc)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except OSError:
            return 0.0

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = out.strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"HTTP receiver failed ({self.proc.returncode}): {err[-500:]}")
        return json.loads(lines[-1])


# -- the load ------------------------------------------------------------------------------------


# -- checks --------------------------------------------------------------------------------------


def check_database(server: BenchServer, answered: list[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        stored: list[str] = []
        no_id = wrong_recipient = not_stored = 0
        for prefix, content, recipient, stored_until in conn.execute(
            "SELECT i.prefix, m.mime, i.recipient, i.stored_until FROM inbound i"
            " JOIN inbound_mime m ON m.key = i.mime_key"
        ):
            mime = bytes(prefix) + bytes(content)
            head = bytes(mime[: mime.find(b"\r\n\r\n") + 2])
            found = _MESSAGE_ID.search(head)
            if found is None:
                no_id += 1
            else:
                stored.append(found.group(1).decode())
            wrong_recipient += recipient != RECIPIENT
            not_stored += stored_until <= 0
        counts = dict(
            conn.execute(
                "SELECT event, count(*) FROM events WHERE event IN ('accepted', 'stored')"
                " GROUP BY event"
            ).fetchall()
        )
        jobs = dict(conn.execute(
            "SELECT state, count(*) FROM jobs WHERE kind LIKE 'inbound.%' GROUP BY state"
        ))
    finally:
        conn.close()
    answered_set, stored_set = set(answered), set(stored)
    return {
        "answered_250": len(answered),
        "answered_duplicates": len(answered) - len(answered_set),
        "inbound_rows": len(stored) + no_id,
        "rows_without_message_id": no_id,
        "stored_duplicates": len(stored) - len(stored_set),
        "rows_other_recipient": wrong_recipient,
        "rows_not_kept_by_store": not_stored,
        "lost": len(answered_set - stored_set),
        "unanswered": len(stored_set - answered_set),
        "accepted_events": counts.get("accepted", 0),
        "stored_events": counts.get("stored", 0),
        "jobs_total": sum(jobs.values()),
        "jobs_done": jobs.get("done", 0),
        "jobs_queued": jobs.get("queued", 0),
    }


def jobs_done(server: BenchServer) -> int:
    return server.query(
        "SELECT count(*) FROM jobs WHERE kind LIKE 'inbound.%' AND state = 'done'"
    )


def wait_for_jobs(server: BenchServer, timeout: float) -> float:
    """Seconds until no job is queued any more (the forward POSTs), or -1 at the timeout."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        queued = "SELECT count(*) FROM jobs WHERE kind LIKE 'inbound.%' AND state = 'queued'"
        if server.query(queued) == 0:
            return time.monotonic() - began
        time.sleep(0.1)
    return -1.0


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured load, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up load, seconds")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=5120, help="message size in bytes")
    parser.add_argument("--routes", type=int, default=100, help="routes in all (at least 2)")
    parser.add_argument("--clients", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--forward",
        action="store_true",
        help="the matched route also forwards to a URL (an HTTP receiver in another process)",
    )
    parser.add_argument(
        "--spam-action",
        choices=("disabled", "tag"),
        default="disabled",
        help="the domain's spam_action (tag: SPF and DKIM verdicts on every message)",
    )
    parser.add_argument(
        "--client-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the generator's event loop (auto: uvloop when installed)",
    )
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (bench wrapper)")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks go here")
    parser.add_argument("--profile-gil", action="store_true", help="sample only the GIL holder")
    parser.add_argument(
        "--stats", action="store_true", help="group-commit figures of the window (bench/serve.py)"
    )
    parser.add_argument(
        "--per-ip-limit",
        type=int,
        default=2000,
        help="MTA_SMTP_MAX_CONNECTIONS_PER_IP (all clients are 127.0.0.1)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="MTA_X=Y", help="extra server setting"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args.receiver)
        return 0
    if not 1 <= args.duration <= 30 or not 0 <= args.warmup <= 10:
        parser.error("duration must be 1..30 s and warmup 0..10 s (runs are kept short)")
    if args.routes < 2:
        parser.error("--routes: at least 2 (the matching one and a catch_all)")

    mx_port = free_port()
    extra_env = {
        "MTA_SMTP_MX": f"127.0.0.1:{mx_port}",
        "MTA_SMTP_SUBMISSION": "",  # only the MX port is on
        "MTA_SMTP_SUBMISSION_TLS": "",
        "MTA_SMTP_SUBMISSION_ALT": "",
        "MTA_SMTP_MAX_CONNECTIONS_PER_IP": str(args.per_ip_limit),
        "MTA_DNS_ANSWERS": json.dumps({f"{SENDER_DOMAIN} TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]}),
    }
    extra_env.update(item.split("=", 1) for item in args.env)
    problems: list[str] = []
    receiver = Receiver() if args.forward else None
    # forward()/notify URLs of the routes that never match: the receiver, or a port nobody uses
    hook = receiver.url if receiver is not None else f"http://127.0.0.1:{free_port()}"
    specs = route_specs(args.routes, hook)
    specs.append(matching_route(f"{hook}/inbox" if receiver is not None else None))
    work = Path(tempfile.mkdtemp(prefix="mta-bench-inbound-"))
    posts: dict[str, int] = {}
    jobs_drain_s = 0.0
    try:
        stats_path = work / "commit-stats.json" if args.stats else None
        with bench_server(
            uvloop=args.uvloop, stats=stats_path, extra_env=extra_env, keep=args.keep
        ) as server:
            wait_for_port(mx_port, server.proc)
            if args.spam_action == "disabled":
                key = server.setup_sending(DOMAIN)
            else:
                key = server.cli("key", "create", "--description", "bench").strip().split()[-1]
                form = [("name", DOMAIN), ("spam_action", args.spam_action)]
                api_post(server, key, "/v3/domains", form)
            began = time.monotonic()
            create_routes(server, key, specs)
            routes_s = time.monotonic() - began
            routes_rows = server.query("SELECT count(*) FROM routes")
            print(
                f"server pid {server.pid}, MX on 127.0.0.1:{mx_port}, {routes_rows} routes"
                f" created in {routes_s:.1f} s, data dir on {fs_type(server.data_dir)}",
                flush=True,
            )
            rss_before = proc_status(server.pid, "VmRSS")
            clients = Clients(
                mx_port, "reused", args.connections, args.size, args.clients, work, "in",
                args.client_loop, plain=["--mail-from", SENDER, "--rcpt", RECIPIENT],
            )
            try:
                clients.wait_ready()
                measure_from = time.monotonic() + args.warmup
                measure_until = measure_from + args.duration
                clients.tell(f"go {measure_from!r} {measure_until!r}")
                profiler = None
                if args.profile:
                    sleep_until(measure_from - 0.5)
                    profiler = start_profiler(
                        server.pid, args.duration, args.profile, args.profile_gil
                    )
                sleep_until(measure_from)
                if args.stats:
                    os.kill(server.pid, signal.SIGUSR1)
                receiver_cpu0 = receiver.cpu() if receiver is not None else 0.0
                done0 = jobs_done(server) if receiver is not None else 0
                cpu0, threads0, client0, machine0 = (
                    cpu_seconds(server.pid),
                    thread_cpu(server.pid),
                    clients.cpu(),
                    machine_cpu(),
                )
                sleep_until(measure_until)
                if args.stats:
                    os.kill(server.pid, signal.SIGUSR2)
                cpu1, threads1, client1, machine1 = (
                    cpu_seconds(server.pid),
                    thread_cpu(server.pid),
                    clients.cpu(),
                    machine_cpu(),
                )
                receiver_cpu = (receiver.cpu() if receiver is not None else 0.0) - receiver_cpu0
                done1 = jobs_done(server) if receiver is not None else 0
                wall = time.monotonic() - measure_from
                load = clients.finish()
                if profiler is not None:
                    _, err = profiler.communicate(timeout=60)
                    if profiler.returncode != 0:
                        problems.append(f"py-spy failed: {err.decode().strip()[-300:]}")
            finally:
                clients.kill()
            answered = clients.answered()
            backlog = 0
            if receiver is not None:
                backlog = len(answered) - jobs_done(server)
                jobs_drain_s = wait_for_jobs(server, timeout=60)
                if jobs_drain_s < 0:
                    problems.append("forward jobs still queued 60 s after the load")
            time.sleep(0.3)
            rss_after = proc_status(server.pid, "VmRSS")
            peak_rss_kb = server.peak_rss_kb()
            returncode = server.stop()
            db = check_database(server, answered)
            log_lines = server.log_path.read_text(errors="replace").splitlines()
            commit_stats = json.loads(stats_path.read_text()) if stats_path is not None else {}
    finally:
        if receiver is not None:
            try:
                posts = receiver.stop()
            except RuntimeError as exc:
                problems.append(str(exc))
        shutil.rmtree(work, ignore_errors=True)

    ok = int(load.get("ok", 0))
    server_cpu = cpu1 - cpu0
    main_cpu = threads1.get(server.pid, 0.0) - threads0.get(server.pid, 0.0)
    client_cpu = client1 - client0
    machine = [b - a for a, b in zip(machine0, machine1, strict=True)]
    cores = os.cpu_count() or 1
    busy_pct = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
    foreign_pct = max(0.0, busy_pct - 100 * (server_cpu + client_cpu + receiver_cpu) / wall)
    bad = {k: v for k, v in load.items() if k.startswith(("reply_", "error_"))}
    samples = [v for k, v in load.items() if k.startswith("sample_")]
    for name, value in sorted(bad.items()):
        problems.append(f"{name} = {value}")
    if db["lost"] or db["answered_duplicates"] or db["stored_duplicates"]:
        problems.append(
            f"{db['lost']} messages answered 250 are not in `inbound`; duplicates:"
            f" {db['answered_duplicates']} answered, {db['stored_duplicates']} stored"
        )
    if db["unanswered"] or db["rows_without_message_id"]:
        problems.append(
            f"{db['unanswered']} stored messages were never answered 250,"
            f" {db['rows_without_message_id']} rows have no Message-Id"
        )
    if db["rows_other_recipient"] or db["rows_not_kept_by_store"]:
        problems.append("some inbound rows have another recipient or are not kept by store()")
    if db["accepted_events"] != db["inbound_rows"] or db["stored_events"] != db["inbound_rows"]:
        problems.append("accepted/stored events do not match the inbound rows")
    want_jobs = db["inbound_rows"] if args.forward else 0
    if db["jobs_total"] != want_jobs:
        problems.append(f"{db['jobs_total']} inbound jobs, expected {want_jobs}")
    if args.forward and (db["jobs_done"] != want_jobs or posts.get("count") != want_jobs):
        problems.append(
            f"forward: {db['jobs_done']} jobs done and {posts.get('count')} POSTs received,"
            f" expected {want_jobs}"
        )
    if returncode != 0:
        problems.append(f"server exited with {returncode}")
    errors = [ln for ln in log_lines if " ERROR " in ln or "Traceback" in ln]
    warnings = [
        ln for ln in log_lines if " WARNING " in ln and not any(b in ln for b in STARTUP_NOTICES)
    ]
    if errors:
        problems.append(f"server log has errors: {errors[0][:200]}")
    if foreign_pct > 25:
        print(
            f"warning: other processes used {foreign_pct:.0f}% CPU, so the figure is low",
            flush=True,
        )

    print("---")
    print(
        f"generator: bench/smtp_load.py --plain, {args.clients} process(es), loop"
        f" {args.client_loop} (auto = uvloop when installed)"
    )
    print(f"event_loop: {'uvloop' if args.uvloop else 'asyncio'}")
    print(f"connections: {args.connections}")
    print(f"message_bytes: {args.size}")
    print(f"spam_action: {args.spam_action}")
    print(
        f"routes: {routes_rows} ({args.routes - 1} that do not match the recipient, 1 that does:"
        f" {' '.join(specs[-1][2])})"
    )
    print(f"duration_s: {args.duration:g}")
    print(f"warmup_s: {args.warmup:g}")
    print(f"inbound_answered_250_total: {load.get('answered_250_total', 0)}")
    print(f"inbound_non_250_or_errors: {sum(int(v) for v in bad.values())}")
    for name, value in sorted(bad.items()):
        print(f"inbound_{name}: {value}")
    for i, sample in enumerate(samples):
        print(f"inbound_error_sample_{i}: {sample}")
    print(f"inbound_latency_p50_ms: {int(load.get('latency_p50_us', 0)) / 1000:.1f}")
    print(f"inbound_latency_p99_ms: {int(load.get('latency_p99_us', 0)) / 1000:.1f}")
    print(f"inbound_latency_max_ms: {int(load.get('latency_max_us', 0)) / 1000:.1f}")
    print(f"server_cpu_main_thread_pct: {100 * main_cpu / wall:.0f}")
    print(f"server_cpu_other_threads_pct: {100 * (server_cpu - main_cpu) / wall:.0f}")
    print(f"server_cpu_us_per_msg_loop_thread: {1e6 * main_cpu / max(1, ok):.0f}")
    print(f"server_cpu_us_per_msg_all_threads: {1e6 * server_cpu / max(1, ok):.0f}")
    print(f"generator_cpu_pct: {100 * client_cpu / wall:.0f}")
    print(f"generator_cpu_us_per_msg: {1e6 * client_cpu / max(1, ok):.0f}")
    if receiver is not None:
        print(f"receiver_cpu_pct: {100 * receiver_cpu / wall:.0f}")
        print(f"forward_posts_received: {posts.get('count', 0)}")
        print(f"forward_jobs_done_per_s_in_window: {(done1 - done0) / wall:.0f}")
        print(f"forward_jobs_not_done_at_end_of_load: {backlog}")
        print(f"forward_jobs_drained_s_after_load: {jobs_drain_s:.1f}")
    print(f"machine_cpu_busy_pct: {busy_pct:.0f} (of {100 * cores})")
    print(f"other_processes_cpu_pct: {foreign_pct:.0f}")
    print(f"server_rss_before_load_mib: {rss_before / 1024:.1f}")
    print(f"server_rss_after_mib: {rss_after / 1024:.1f}")
    for name, value in commit_stats.items():
        print(f"store_{name}: {value}")
    print(f"server_log_warnings: {len(warnings)}")
    print(f"server_log_errors: {len(errors)}")
    for i, line in enumerate((errors + warnings)[:3]):
        print(f"server_log_sample_{i}: {line[:300]}")
    print(f"db_answered_250_total: {db['answered_250']}")
    print(f"db_inbound_rows: {db['inbound_rows']}")
    print(f"db_accepted_events: {db['accepted_events']}")
    print(f"db_stored_events: {db['stored_events']}")
    print(f"db_inbound_jobs: {db['jobs_total']}")
    print(f"db_lost: {db['lost']}")
    print(f"db_stored_unanswered: {db['unanswered']}")
    print(f"db_check: {'FAILED: ' + '; '.join(problems) if problems else 'ok'}")
    print(f"server_peak_rss_mib: {peak_rss_kb / 1024:.1f}")
    print(f"inbound_messages_in_window: {ok}")
    print(f"inbound_msgs_per_s: {ok / args.duration:.0f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
