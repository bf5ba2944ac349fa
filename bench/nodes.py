"""End to end on PostgreSQL: messages accepted over HTTP and delivered to a local SMTP sink, per
second, by one `mta serve` node and by two nodes sharing one database on this box.

Starts a real PostgreSQL (tests/postgres.py: initdb in a temporary directory, fsync on) with
pg_stat_statements loaded, and Postfix's `smtp-sink` on a free loopback port. Each run
(`--runs`, NODESxPOOL, comma-separated; default one node with pool sizes 5, 10 and 20, then two
nodes with the default pool) gets a fresh database and fresh nodes, each with its own node id
and data directory and `MTA_STORE_POOL_SIZE`; the five destination domains d1..d5.bench.test are
routed to the sink as five sites (`dns.static_mx`, as bench/delivery.py does). The load is N
POSTs (`--messages`, default 10,000), 1 KB messages, one recipient each, from 50 keep-alive
connections in all, split evenly over the nodes (one wrk per node, or an aiohttp client per node
without wrk). The run lasts until every recipient is `delivered` (the bench polls PostgreSQL).

    python bench/nodes.py [--messages 10000] [--runs 1x5,1x10,1x20,2x10] [--connections 50]
                          [--profile DIR] [--env MTA_X=Y] [--keep]

With `--profile DIR`, py-spy records each node over the whole run (`DIR/<run>-node<i>.txt`,
collapsed stacks, non-blocking, idle samples included) and the bench says where each node's
event-loop thread spent its time. The figures are printed last, one `name: value` per line,
after a `---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from common import DOMAIN, cpu_seconds, free_port, parse_load_lines, proc_status, wait_for_port
from delivery import DEST_DOMAINS, PATH, STARTUP_WARNINGS, body_rest, routes, start_sink
from http_accept import fs_type, machine_cpu, thread_cpu

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # tests.postgres; appended, so PYTHONPATH's mta still comes first
from tests import postgres  # noqa: E402

SIZE = 1024
POLL_S = 0.1  # pg_stat_activity sample (cheap)
STATE_POLL_S = 0.5  # recipients by state: a scan of the table, so not too often
FILLER_PATH = "/bench-filler"
# PostgreSQL settings for the bench's databases: statements and lock waits worth a log line
DB_SETTINGS = {
    "log_min_duration_statement": "200ms",
    "log_lock_waits": "on",
    "deadlock_timeout": "200ms",  # log_lock_waits logs waits longer than this
}

# wrk, one per node: MTA_BENCH_COUNT POSTs, recipients numbered from MTA_BENCH_OFFSET; after the
# last, requests are held back and the thread stops at the last answer (as bench/delivery.py)
WRK_SCRIPT = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  total = tonumber(os.getenv("MTA_BENCH_COUNT"))
  offset = tonumber(os.getenv("MTA_BENCH_OFFSET"))
  ndomains = tonumber(os.getenv("MTA_BENCH_DOMAINS"))
  rest = os.getenv("MTA_BENCH_BODY_REST")
  path = os.getenv("MTA_BENCH_PATH")
  headers = {
    ["Host"] = wrk.host .. ":" .. wrk.port,
    ["Authorization"] = os.getenv("MTA_BENCH_AUTH"),
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }
  filler = wrk.format("GET", os.getenv("MTA_BENCH_FILLER"), {["Host"] = headers["Host"]})
  sent, answered, ok, other, bad_body, fillers = 0, 0, 0, 0, 0, 0
  verified = false
  ids = {}
end

function delay()
  if sent >= total then
    return 600000
  end
  return 0
end

function post(i)
  local n = i + offset
  local body = string.format("to=user%d%%40d%d.bench.test&", n, n % ndomains + 1) .. rest
  return wrk.format("POST", path, headers, body)
end

function request()
  if not verified then
    verified = true
    return post(0)
  end
  if sent >= total then
    return filler
  end
  sent = sent + 1
  return post(sent - 1)
end

function response(status, headers, body)
  if status == 401 and sent >= total then
    fillers = fillers + 1
    return
  end
  answered = answered + 1
  if status == 200 then
    local id = string.match(body, '"id":"<([^>]+)>"')
    if id then
      ok = ok + 1
      ids[ok] = id
    else
      bad_body = bad_body + 1
    end
  else
    other = other + 1
  end
  if answered >= total then
    local marker = io.open(os.getenv("MTA_BENCH_DONE"), "w")
    marker:write("done\n")
    marker:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("MTA_BENCH_IDS"), "w")
  local ok_total, other_total, bad_total, filler_total = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
    bad_total = bad_total + thread:get("bad_body")
    filler_total = filler_total + thread:get("fillers")
    for _, id in ipairs(thread:get("ids")) do
      out:write(id, "\n")
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format("load_ok: %d\n", ok_total))
  io.write(string.format("load_non_200: %d\n", other_total))
  io.write(string.format("load_bad_body: %d\n", bad_total))
  io.write(string.format("load_fillers: %d\n", filler_total))
  io.write(string.format("load_socket_errors: %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("load_duration_us: %d\n", summary.duration))
  io.write(string.format("load_latency_p50_us: %d\n", latency:percentile(50)))
  io.write(string.format("load_latency_p99_us: %d\n", latency:percentile(99)))
  io.write(string.format("load_latency_max_us: %d\n", latency.max))
end
"""


def default_pool_size() -> int:
    try:
        from mta.config import StoreConfig

        return int(StoreConfig().pool_size)
    except Exception:  # a tree without it, or one being edited: the documented default
        return 10


# -- PostgreSQL ----------------------------------------------------------------------------------


def start_postgres() -> postgres.Cluster:
    """tests/postgres.py's cluster, restarted once with pg_stat_statements loaded."""
    cluster = postgres.start()
    try:
        cluster._psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        subprocess.run(
            [*postgres._as_user(), str(cluster.bin / "pg_ctl"), "-D", str(cluster.root / "data"),
             "-l", str(cluster.root / "log"), "-w", "-t", "60", "restart"],
            check=True, capture_output=True, timeout=90,
        )
        cluster._psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")  # in `postgres`
    except BaseException:
        cluster.stop()
        raise
    return cluster


def postmaster_pid(cluster: postgres.Cluster) -> int:
    return int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def reaped_cpu(pid: int) -> float:
    """CPU of a process's children that have exited and been waited for (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def pg_cpu(cluster: postgres.Cluster) -> tuple[dict[int, float], float]:
    """CPU seconds of every PostgreSQL process (postmaster and children), and of the exited."""
    master = postmaster_pid(cluster)
    out = {}
    for pid in [master, *children(master)]:
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid)
    return out, reaped_cpu(master)


def sys_cpu_seconds(pid: int) -> float:
    """System (kernel) CPU time of the process so far: socket sends and receives, fsync."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


class LogTail:
    """The lines a file gains from now on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace").splitlines()


# -- nodes ---------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    tmp: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mta", *args], env=self.env, cwd=self.tmp,
            capture_output=True, text=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mta {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
        return done.stdout

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_node(name: str, db_url: str, pool: int, extra: dict[str, str]) -> Node:
    tmp = Path(tempfile.mkdtemp(prefix=f"mta-bench-{name}-"))
    # `mta serve` on PostgreSQL does not make the data directory (its lock file lives there)
    (tmp / "var").mkdir(mode=0o700)
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "MTA_SERVER_DATA_DIR": str(tmp / "var"),
            "MTA_SERVER_NODE_ID": name,
            "MTA_API_LISTEN": f"127.0.0.1:{port}",
            "MTA_SERVER_LOG_LEVEL": "warning",
            "MTA_DNS_ONLY_ANSWERS": "true",
            "MTA_STORE_URL": db_url,
            "MTA_STORE_POOL_SIZE": str(pool),
        }
    )
    env.update(extra)
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        # cwd: the temporary directory, so `-m mta` imports the installed package (or PYTHONPATH)
        proc = subprocess.Popen([sys.executable, "-m", "mta", "serve"], env=env, cwd=tmp,
                                stdout=log, stderr=subprocess.STDOUT)
    return Node(name, tmp, port, env, proc, log_path)


async def wait_until_authorised(nodes: list[Node], auth: str, timeout: float = 15) -> None:
    """Every node answers the key (the others learn of it through LISTEN/NOTIFY)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            while True:
                async with session.get(f"{node.url}/v3/domains",
                                       headers={"Authorization": auth}) as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} does not accept the new key")
                await asyncio.sleep(0.1)


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Generator:
    node: Node
    proc: subprocess.Popen[str]
    count: int
    done_path: Path
    ids_path: Path
    cpu: float = 0.0
    output: str | None = None


def start_generators(kind: str, nodes: list[Node], total: int, connections: int, auth: str,
                     work: Path, run: str) -> list[Generator]:
    rest = body_rest(SIZE)
    script = work / "nodes.lua"
    script.write_text(WRK_SCRIPT)
    out = []
    offset = 0
    for i, node in enumerate(nodes):
        count = total // len(nodes) + (i < total % len(nodes))
        conns = max(1, connections // len(nodes) + (i < connections % len(nodes)))
        done_path = work / f"{run}-{node.name}.done"
        ids_path = work / f"{run}-{node.name}.ids"
        env = dict(
            os.environ,
            MTA_BENCH_AUTH=auth, MTA_BENCH_PATH=PATH, MTA_BENCH_BODY_REST=rest,
            MTA_BENCH_COUNT=str(count), MTA_BENCH_OFFSET=str(offset),
            MTA_BENCH_DOMAINS=str(DEST_DOMAINS), MTA_BENCH_FILLER=FILLER_PATH,
            MTA_BENCH_IDS=str(ids_path), MTA_BENCH_DONE=str(done_path),
        )
        if kind == "wrk":
            cmd = ["wrk", "-t1", f"-c{min(conns, count)}", "-d3600s", "--timeout", "30s",
                   "-s", str(script), node.url]
        else:  # bench/delivery.py's aiohttp client (its recipients start at user0 on each node)
            cmd = [sys.executable, str(Path(__file__).resolve().parent / "delivery.py"),
                   "--load-child", node.url, str(count), str(conns)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        out.append(Generator(node, proc, count, done_path, ids_path))
        offset += count
    return out


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    nodes: int
    pool: int
    figures: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    profile_text: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"n{self.nodes}_p{self.pool}"


def wait_for_quiet(limit_s: float, below_pct: float = 40.0) -> str:
    """Wait (at most `limit_s`) until the machine's busy CPU over 2 s is under `below_pct` % of
    one core: other jobs on a shared box skew every figure. Says what it saw."""
    deadline = time.monotonic() + limit_s
    cores = os.cpu_count() or 1
    busy = 0.0
    while True:
        before = machine_cpu()
        time.sleep(2.0)
        delta = [b - a for a, b in zip(before, machine_cpu(), strict=True)]
        busy = 100 * cores * (sum(delta) - delta[3] - delta[4]) / max(1, sum(delta))
        if busy < below_pct or time.monotonic() >= deadline:
            return f"{busy:.0f} % busy before the run"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}" if whole else "0"


async def run_once(args: argparse.Namespace, run: Run, cluster: postgres.Cluster, kind: str,
                   work: Path) -> None:
    fig, problems = run.figures, run.problems
    total = args.messages
    if args.wait_quiet > 0:
        print(f"[{run.name}] machine {wait_for_quiet(args.wait_quiet)}", flush=True)
    db_url = cluster.new_database()
    db_name = db_url.rsplit("/", 1)[1]
    settings = dict(DB_SETTINGS, **dict(item.split("=", 1) for item in args.pg))
    for name, value in settings.items():
        cluster._psql(f"ALTER DATABASE {db_name} SET {name} = '{value}'")
    pg_log = LogTail(cluster.root / "log")
    sink = start_sink(work)
    nodes: list[Node] = []
    profilers: list[tuple[subprocess.Popen[bytes], Path]] = []
    poller: asyncpg.Connection | None = None
    admin: asyncpg.Connection | None = None  # to `postgres`, where pg_stat_statements is
    try:
        extra = routes(sink.port, False)
        extra.update(dict(item.split("=", 1) for item in args.env))
        for i in range(run.nodes):
            nodes.append(start_node(f"node{i + 1}", db_url, run.pool, extra))
        for node in nodes:
            wait_for_port(node.port, node.proc, timeout=60)
        nodes[0].cli("domain", "add", DOMAIN)
        key = nodes[0].cli("key", "create", "--description", "bench").strip().splitlines()[-1]
        auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
        await wait_until_authorised(nodes, auth)
        poller = await asyncpg.connect(db_url, server_settings={"application_name": "bench"})
        admin = await asyncpg.connect(cluster.url(), server_settings={"application_name": "bench"})
        await admin.execute("SELECT pg_stat_statements_reset()")
        await poller.execute("SELECT pg_stat_reset_shared('wal')")
        db_before = await poller.fetchrow(
            "SELECT xact_commit, xact_rollback, deadlocks, blks_read, temp_bytes"
            " FROM pg_stat_database WHERE datname = current_database()")
        print(
            f"[{run.name}] {run.nodes} node(s) with pool {run.pool}:"
            f" {', '.join(f'{n.name} pid {n.pid} {n.url}' for n in nodes)};"
            f" PostgreSQL pid {postmaster_pid(cluster)} on port {cluster.port}"
            f" ({fs_type(cluster.root)}); smtp-sink 127.0.0.1:{sink.port}; {total} messages",
            flush=True,
        )
        if args.profile:
            for node in nodes:
                path = args.profile / f"{run.name}-{node.name}.txt"
                profilers.append((start_profiler(node.pid, path), path))
            await asyncio.sleep(1.0)  # let py-spy attach before the load starts

        node_cpu_before = {n.name: cpu_seconds(n.pid) for n in nodes}
        node_sys_before = {n.name: sys_cpu_seconds(n.pid) for n in nodes}
        node_threads_before = {n.name: thread_cpu(n.pid) for n in nodes}
        pg_before, pg_reaped_before = pg_cpu(cluster)
        sink_before = cpu_seconds(sink.proc.pid)
        self_before = time.process_time()
        machine_before = machine_cpu()
        t0 = time.time()
        started = time.monotonic()
        gens = start_generators(kind, nodes, total, args.connections, auth, work, run.name)

        waits: collections.Counter[str] = collections.Counter()
        active_samples = samples = polls = idle_in_transaction = 0
        states: dict[str, int] = {}
        last_report = states_at = started
        last_progress = (started, (-1, -1))
        accept_done_at: float | None = None
        while True:
            now = time.monotonic()
            for g in gens:
                if g.output is not None:
                    continue
                if g.proc.poll() is None:
                    with contextlib.suppress(OSError):
                        g.cpu = cpu_seconds(g.proc.pid)
                    if kind == "wrk" and g.done_path.exists():
                        g.proc.send_signal(signal.SIGINT)  # wrk: print and write the ids
                    continue
                g.output = g.proc.stdout.read() if g.proc.stdout else ""
                if g.proc.returncode != 0:
                    problems.append(f"load generator for {g.node.name} exited with"
                                    f" {g.proc.returncode}: {g.output[-300:]}")
            if accept_done_at is None and all(g.output is not None for g in gens):
                accept_done_at = now
            if now - states_at >= STATE_POLL_S:
                states_at = now
                states = dict(await poller.fetch(
                    "SELECT state, count(*) FROM recipients GROUP BY state"))
            polls += 1
            for row in await poller.fetch(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_type = 'client backend'"
                " AND application_name LIKE 'mta %'"
            ):
                samples += 1
                if row["state"] == "active":
                    active_samples += 1
                    kind_ = (f"{row['wait_event_type']}:{row['wait_event']}"
                             if row["wait_event_type"] else "CPU (no wait)")
                    waits[kind_] += 1
                elif row["state"] == "idle in transaction":
                    idle_in_transaction += 1
            accepted = sum(states.values())
            done = states.get("delivered", 0) + states.get("failed", 0)
            if (accepted, done) != last_progress[1]:
                last_progress = (now, (accepted, done))
            if now - last_report >= 1.0:
                last_report = now
                locks = sum(v for k, v in waits.items() if k.startswith("Lock"))
                print(f"  t={now - started:5.1f} s  accepted {accepted:6d}"
                      f"  delivered {states.get('delivered', 0):6d}"
                      f"  failed {states.get('failed', 0)}"
                      f"  lock waits sampled {locks}",
                      flush=True)
            if any(g.proc.returncode not in (None, 0) for g in gens):
                break
            if accept_done_at is not None and done >= total:
                break
            if now - last_progress[0] > args.stall:
                problems.append(f"no progress (accepts or deliveries) for {args.stall:g} s")
                break
            if now - started > args.timeout:
                problems.append(f"not finished after {args.timeout:g} s")
                break
            await asyncio.sleep(POLL_S)
        finished = time.monotonic()

        # -- CPU ---------------------------------------------------------------------------------
        wall = finished - started
        node_cpu = {n.name: cpu_seconds(n.pid) - node_cpu_before[n.name] for n in nodes}
        node_sys = {n.name: sys_cpu_seconds(n.pid) - node_sys_before[n.name] for n in nodes}
        node_main = {
            n.name: thread_cpu(n.pid).get(n.pid, 0) - node_threads_before[n.name].get(n.pid, 0)
            for n in nodes
        }
        pg_after, pg_reaped_after = pg_cpu(cluster)
        backends = {
            r["pid"]: (r["backend_type"], r["application_name"])
            for r in await poller.fetch(
                "SELECT pid, backend_type, application_name FROM pg_stat_activity")
        }
        pg_parts: collections.Counter[str] = collections.Counter()
        for pid, after in pg_after.items():
            spent = after - pg_before.get(pid, 0.0)
            backend_type, app = backends.get(pid, ("postmaster", ""))
            if backend_type == "client backend":
                part = app.replace("mta ", "backends of ") if app.startswith("mta ") else (
                    "bench poller" if app == "bench" else "other client backends (listeners)")
            else:
                part = backend_type
            pg_parts[part] += spent
        pg_parts["exited processes"] += pg_reaped_after - pg_reaped_before
        sink_cpu = cpu_seconds(sink.proc.pid) - sink_before
        for g in gens:
            if g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait()
        gen_cpu = sum(g.cpu for g in gens)
        bench_cpu = time.process_time() - self_before
        machine = [b - a for a, b in zip(machine_before, machine_cpu(), strict=True)]
        peak_rss = {n.name: proc_status(n.pid, "VmHWM") for n in nodes}

        # -- PostgreSQL's own figures --------------------------------------------------------------
        statements = await admin.fetch(
            "SELECT calls, total_exec_time, mean_exec_time, rows, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)"
            " ORDER BY total_exec_time DESC", db_name)
        if profilers:
            for proc, path in profilers:
                proc.send_signal(signal.SIGINT)
                try:
                    _, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, err = proc.communicate()
                if path.exists():
                    node = next(n for n in nodes if path.stem.endswith(n.name))
                    run.profile_text.append(
                        summarise_profile(path, args.top)
                        + f"\n  {node.name}'s event-loop thread used the CPU"
                        f" {percent(node_main[node.name], wall)} % of the wall time (/proc):"
                        " busy samples beyond that are time it was runnable but not running"
                        " (py-spy samples the wall clock; on a full machine, a socket send that"
                        " wakes the receiver often hands it the core)")
                else:
                    problems.append(f"py-spy wrote nothing: {err.decode().strip()[-300:]}")

        # -- stop, then check ----------------------------------------------------------------------
        codes = {n.name: n.stop() for n in nodes}
        await asyncio.sleep(0.3)  # smtp-sink counts a session when it ends; backends exit
        # (an exiting backend flushes its statistics: read them now)
        db_after = await poller.fetchrow(
            "SELECT xact_commit, xact_rollback, deadlocks, blks_read, temp_bytes"
            " FROM pg_stat_database WHERE datname = current_database()")
        wal = await poller.fetchrow("SELECT wal_records, wal_bytes, wal_write, wal_sync,"
                                    " wal_sync_time FROM pg_stat_wal")
        tables = await poller.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup,"
            " autovacuum_count, autoanalyze_count FROM pg_stat_user_tables"
            " WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_upd + n_tup_ins DESC")
        sink_counts = sink.counters()
        states = dict(await poller.fetch("SELECT state, count(*) FROM recipients GROUP BY state"))
        messages_rows = await poller.fetchval("SELECT count(*) FROM messages")
        events = dict(await poller.fetch("SELECT event, count(*) FROM events GROUP BY event"))
        last_delivered = await poller.fetchval(
            "SELECT max(ts) FROM events WHERE event = 'delivered'")
        first_accepted, last_accepted = await poller.fetchrow(
            "SELECT min(ts), max(ts) FROM events WHERE event = 'accepted'")
        attempts_max = await poller.fetchval("SELECT max(attempts) FROM recipients")
        stored_ids = {r[0] for r in await poller.fetch("SELECT message_id FROM messages")}
        try:
            by_node = dict(await poller.fetch(
                "SELECT lease_node, count(*) FROM recipients WHERE state = 'delivered'"
                " GROUP BY lease_node"))
        except asyncpg.PostgresError:
            by_node = {}
        pg_lines = pg_log.new_lines()
    finally:
        for proc, _ in profilers:
            if proc.poll() is None:
                proc.kill()
        for conn in (poller, admin):
            if conn is not None:
                await conn.close()
        for node in nodes:
            node.stop()
        sink.stop()

    # -- the checks -------------------------------------------------------------------------------
    answered: list[str] = []
    loads = {}
    for g in gens:
        load = parse_load_lines(g.output or "")
        loads[g.node.name] = load
        ids = g.ids_path.read_text().split() if g.ids_path.exists() else []
        answered.extend(ids)
        if load.get("ok") != str(g.count) or int(load.get("non_200", 1)) or len(ids) != g.count:
            problems.append(
                f"{g.node.name}: {load.get('ok')} of {g.count} answered 200"
                f" ({load.get('non_200')} non-200, {load.get('bad_body')} without an id,"
                f" {load.get('socket_errors')} socket errors)")
    if len(set(answered)) != len(answered) or set(answered) - stored_ids:
        problems.append(f"{len(set(answered) - stored_ids)} answered ids not stored,"
                        f" {len(answered) - len(set(answered))} duplicate ids")
    delivered = states.get("delivered", 0)
    if messages_rows != total or sum(states.values()) != total:
        problems.append(f"{messages_rows} messages, {sum(states.values())} recipients stored")
    if delivered != total or states.get("failed") or states.get("queued"):
        problems.append(f"recipients by state: {states}")
    if events.get("delivered", 0) != total or events.get("failed", 0):
        problems.append(f"events: {events}")
    if sink_counts["mesg"] != delivered:
        extra_ = sink_counts["mesg"] - delivered
        problems.append(f"the sink counted {sink_counts['mesg']} messages for {delivered}"
                        " delivered" + (f" ({extra_} duplicates)" if extra_ > 0 else ""))
    for name, code in codes.items():
        if code != 0:
            problems.append(f"{name} exited with {code}")
    node_log_lines = {}
    for node in gens:
        n = node.node
        lines = [ln for ln in n.log_path.read_text(errors="replace").splitlines()
                 if ln.strip() and not any(w in ln for w in STARTUP_WARNINGS)]
        node_log_lines[n.name] = lines
        if lines:
            problems.append(f"{n.name} logged {len(lines)} line(s) at warning or above")
            for ln in lines[:5]:
                print(f"[{run.name}] {n.name} log: {ln[:300]}")
    slow = [ln for ln in pg_lines if "duration:" in ln]
    lock_waits = [ln for ln in pg_lines if "still waiting for" in ln]
    pg_errors = [ln for ln in pg_lines if re.search(r"\b(ERROR|FATAL|PANIC):", ln)
                 and "terminating connection due to administrator command" not in ln]
    for label, lines in (("slow statement", slow), ("lock wait", lock_waits),
                         ("error", pg_errors)):
        for ln in lines[:5]:
            print(f"[{run.name}] PostgreSQL {label}: {ln[:300]}")
    if pg_errors:
        problems.append(f"PostgreSQL logged {len(pg_errors)} error(s)")
    if not args.keep:
        for g in gens:
            shutil.rmtree(g.node.tmp, ignore_errors=True)
    else:
        print(f"[{run.name}] node data kept in {', '.join(str(g.node.tmp) for g in gens)}")

    # -- the figures ------------------------------------------------------------------------------
    done_at = [g.done_path.stat().st_mtime - t0 for g in gens if g.done_path.exists()]
    accept_s = max(done_at) if len(done_at) == len(gens) else (accept_done_at or finished) - started
    e2e = (last_delivered - t0) if last_delivered else wall
    cores = os.cpu_count() or 1
    busy = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
    pg_total = sum(pg_parts.values())
    ours = sum(node_cpu.values()) + pg_total + sink_cpu + gen_cpu + bench_cpu
    foreign = max(0.0, busy - 100 * ours / wall)
    fig["nodes"] = str(run.nodes)
    fig["pool_size"] = str(run.pool)
    fig["messages"] = str(total)
    fig["accept_s"] = f"{accept_s:.2f}"
    fig["accept_msgs_per_s"] = f"{total / accept_s:.0f}" if accept_s else "0"
    for g, at in zip(gens, done_at, strict=False):
        fig[f"accept_msgs_per_s_{g.node.name}"] = f"{g.count / at:.0f}" if at else "0"
    lat = [loads[g.node.name] for g in gens]
    fig["accept_latency_p50_ms"] = "/".join(
        f"{int(x.get('latency_p50_us', 0)) / 1000:.1f}" for x in lat)
    fig["accept_latency_p99_ms"] = "/".join(
        f"{int(x.get('latency_p99_us', 0)) / 1000:.1f}" for x in lat)
    if first_accepted and last_accepted and last_delivered:
        fig["delivery_lag_after_last_accept_s"] = f"{last_delivered - last_accepted:.2f}"
    fig["end_to_end_s"] = f"{e2e:.2f}"
    fig["delivered"] = str(delivered)
    if run.nodes > 1:
        fig["delivered_by_node"] = ", ".join(f"{k}={v}" for k, v in sorted(by_node.items()))
    fig["attempts_max"] = str(attempts_max)
    fig["sink_messages"] = str(sink_counts["mesg"])
    fig["sink_sessions"] = str(max(0, sink_counts["sess"] - 1))
    for n in gens:
        name = n.node.name
        fig[f"cpu_s_{name}"] = (f"{node_cpu[name]:.2f} (main thread {node_main[name]:.2f},"
                                f" kernel {node_sys[name]:.2f},"
                                f" {percent(node_cpu[name], wall)} % of a core)")
        fig[f"peak_rss_mib_{name}"] = f"{peak_rss[name] / 1024:.1f}"
    fig["cpu_s_postgresql"] = f"{pg_total:.2f} ({percent(pg_total, wall)} % of a core)"
    for part, spent in sorted(pg_parts.items(), key=lambda kv: -kv[1]):
        if spent >= 0.005:
            fig[f"cpu_s_postgresql_{part.replace(' ', '_')}"] = f"{spent:.2f}"
    fig["cpu_s_load_generator"] = f"{gen_cpu:.2f} ({kind} x{len(gens)})"
    fig["cpu_s_sink"] = f"{sink_cpu:.2f}"
    fig["cpu_s_bench_poller"] = f"{bench_cpu:.2f}"
    fig["cpu_us_per_msg_nodes"] = f"{1e6 * sum(node_cpu.values()) / max(1, delivered):.0f}"
    fig["cpu_us_per_msg_postgresql"] = f"{1e6 * pg_total / max(1, delivered):.0f}"
    fig["machine_cpu_busy_pct"] = f"{busy:.0f} (of {100 * cores})"
    fig["other_processes_cpu_pct"] = f"{foreign:.0f}"
    commits = db_after["xact_commit"] - db_before["xact_commit"]
    fig["pg_commits_per_msg"] = f"{commits / max(1, delivered):.2f}"
    fig["pg_rollbacks"] = str(db_after["xact_rollback"] - db_before["xact_rollback"])
    fig["pg_deadlocks"] = str(db_after["deadlocks"] - db_before["deadlocks"])
    fig["pg_wal_kib_per_msg"] = f"{int(wal['wal_bytes']) / 1024 / max(1, delivered):.1f}"
    fig["pg_wal_syncs"] = f"{wal['wal_sync']} ({wal['wal_sync'] / max(1, delivered):.2f}/msg)"
    calls = sum(r["calls"] for r in statements)
    exec_ms = sum(r["total_exec_time"] for r in statements)
    fig["pg_statements_per_msg"] = f"{calls / max(1, delivered):.1f}"
    fig["pg_exec_ms_per_msg"] = f"{exec_ms / max(1, delivered):.3f}"
    fig["pg_backend_active_avg"] = f"{active_samples / max(1, polls):.1f}"
    fig["pg_backend_idle_in_transaction_avg"] = f"{idle_in_transaction / max(1, polls):.1f}"
    fig["pg_backend_waits"] = ", ".join(
        f"{k} {percent(v, active_samples)}%" for k, v in waits.most_common(6))
    fig["pg_lock_wait_samples"] = str(sum(v for k, v in waits.items() if k.startswith("Lock")))
    fig["pg_slow_statements_over_200ms"] = str(len(slow))
    fig["pg_lock_waits_over_200ms"] = str(len(lock_waits))
    fig["node_log_lines"] = str(sum(len(v) for v in node_log_lines.values()))
    fig["check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    fig["end_to_end_msgs_per_s"] = f"{delivered / e2e:.0f}" if e2e > 0 else "0"

    print(f"[{run.name}] top statements by total time (pg_stat_statements):")
    for r in statements[: args.top]:
        query = " ".join(r["query"].split())
        print(f"    {r['total_exec_time']:8.0f} ms {r['calls']:7d} calls"
              f" {r['mean_exec_time']:7.3f} ms/call {r['rows']:7d} rows  {query[:150]}")
    print(f"[{run.name}] tables: " + "; ".join(
        f"{t['relname']} ins {t['n_tup_ins']} upd {t['n_tup_upd']} (hot {t['n_tup_hot_upd']})"
        f" del {t['n_tup_del']} dead {t['n_dead_tup']} autovacuum {t['autovacuum_count']}"
        for t in tables[:6]))
    for text in run.profile_text:
        print(text)
    if foreign > 25:
        print(f"[{run.name}] warning: other processes used {foreign:.0f} % CPU; the figure is low"
              + (" (py-spy counts as other)" if args.profile else ""))


# -- profiles ------------------------------------------------------------------------------------


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--idle",
         "--format", "raw", "--threads", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


# the first rule matching a frame, from the leaf towards the event loop's Handle._run, names the
# sample's part; the standard library (asyncio included) matches none, so it counts for its caller
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("DKIM signing", ("mta/outbound/dkim.py", "dkim/", "cryptography/")),
    ("SMTP client (aiosmtplib, mta.outbound.client)",
     ("aiosmtplib/", "mta/outbound/client.py", "mta/outbound/mx.py")),
    ("store: asyncpg + mta.store", ("asyncpg/", "mta/store/")),
    ("queue (mta.queue: claim, finish, rows)", ("mta/queue/",)),
    ("delivery scheduler (mta.outbound)", ("mta/outbound/",)),
    ("events (JSON rows)", ("mta/events/",)),
    ("accept (mta.accept: addresses, MIME, rows)", ("mta/accept/", "mta/dates.py")),
    ("HTTP (aiohttp, mta.api)", ("aiohttp/", "multidict/", "yarl/", "mta/api/")),
    ("other mta", ("mta/",)),
    ("other libraries", ("site-packages/", "orjson", "regex/", "dns/")),
]
IDLE_LOOP = "event loop idle (epoll)"
LOOP_FRAMES = ("Handle._run (asyncio/events.py", "BaseEventLoop._run_once (asyncio/base_events.py")
SEND = "_SelectorSocketTransport.write ("
IDLE_THREAD_FILES = ("threading.py", "concurrent/futures/thread.py", "queue.py", "selectors.py")


def frame_file(frame: str) -> str:
    _, _, where = frame.rpartition(" (")
    return where.rstrip(")").rpartition(":")[0]


def classify(frames: list[str]) -> str:
    """`frames`: root first, the thread's name frame removed."""
    leaf = frames[-1]
    if frame_file(leaf) == "selectors.py" and leaf.split(" (")[0].endswith("select"):
        return IDLE_LOOP
    first = 0
    for i, frame in enumerate(frames):
        if frame.startswith(LOOP_FRAMES):
            first = i + 1
    for frame in reversed(frames[first:]):
        file = frame_file(frame)
        for part, needles in PARTS:
            if any(file.startswith(n) or f"/{n}" in file for n in needles):
                return part
    return "asyncio (loop, transports, callbacks)" if first else "other"


def summarise_profile(path: Path, top: int) -> str:
    """Where the event-loop thread's samples went, by part; what the other threads did."""
    parts: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    worked: collections.Counter[str] = collections.Counter()
    main = other_total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        thread, _, rest = stack.partition(";")
        frames = [f for f in rest.split(";") if f]
        if not frames:
            continue
        if not thread.endswith(": MainThread"):
            other_total += n
            if frame_file(frames[-1]) not in IDLE_THREAD_FILES:
                others[classify(frames)] += n
            continue
        main += n
        part = classify(frames)
        parts[part] += n
        if part != IDLE_LOOP:
            self_time[frames[-1]] += n
            if not frames[-1].startswith(SEND):
                worked[part] += n
    busy = main - parts[IDLE_LOOP]
    lines = [f"profile {path.name}: event-loop thread, {main} samples (100/s);"
             f" last column: busy samples less those in a socket send ({SEND.strip(' (')})"]
    for part, n in parts.most_common():
        share = f"{100 * worked[part] / max(1, sum(worked.values())):5.1f} %" if (
            part != IDLE_LOOP) else ""
        lines.append(f"    {100 * n / max(1, main):5.1f} %  {part:<48} {share}")
    if top:
        lines.append(f"  top functions by own samples (of the {busy} busy ones):")
        for frame, n in self_time.most_common(top):
            lines.append(f"    {100 * n / max(1, busy):5.1f} %  {frame[:140]}")
    lines.append(f"  other threads: {sum(others.values())} busy samples of {other_total}"
                 + "".join(f"; {part} {n}" for part, n in others.most_common(4)))
    return "\n".join(lines)


def profile_parts(path: Path) -> dict[str, float]:
    text = summarise_profile(path, 0)
    out = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"\s+([\d.]+) %  (.+?)\s*(?:[\d.]+ %)?$", line)
        if m:
            out[m.group(2)] = float(m.group(1))
    return out


# -- main ----------------------------------------------------------------------------------------


def parse_runs(text: str) -> list[Run]:
    runs = []
    for item in text.split(","):
        nodes, _, pool = item.strip().partition("x")
        if not nodes.isdigit() or not pool.isdigit() or int(nodes) < 1 or int(pool) < 2:
            raise ValueError(item)
        runs.append(Run(int(nodes), int(pool)))
    return runs


async def amain(args: argparse.Namespace, runs: list[Run], kind: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="mta-bench-nodes-"))
    cluster = start_postgres()
    try:
        for run in runs:
            await run_once(args, run, cluster, kind, work)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    pool = default_pool_size()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50, help="HTTP connections in all")
    parser.add_argument(
        "--runs", default=f"1x5,1x10,1x20,2x{pool}",
        help="NODESxPOOL_SIZE, comma-separated, one fresh database each"
             f" (default: one node with pools 5, 10, 20, then two nodes with {pool})",
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each node into DIR")
    parser.add_argument("--top", type=int, default=12, help="statements and functions listed")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S",
        help="before each run, wait up to S seconds for the machine to be under 40 %% busy",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--stall", type=float, default=30.0)
    parser.add_argument("--env", action="append", default=[], metavar="MTA_X=Y",
                        help="extra setting for every node")
    parser.add_argument(
        "--pg", action="append", default=[], metavar="NAME=VALUE",
        help="a PostgreSQL setting for the runs' databases (ALTER DATABASE SET),"
             " e.g. commit_delay=500",
    )
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    args = parser.parse_args()
    try:
        runs = parse_runs(args.runs)
    except ValueError as exc:
        parser.error(f"--runs: expected NODESxPOOL items such as 2x10, not {exc}")
    if not 1 <= args.messages <= 1_000_000:
        parser.error("--messages must be 1..1000000")
    kind = args.generator
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "aiohttp"
    elif kind == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")
    if args.profile:
        if not shutil.which("py-spy"):
            parser.error("py-spy is not installed (pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
    if not postgres.available():
        parser.error("PostgreSQL is not installed (apt-get install -y postgresql)")
    code = subprocess.run(
        [sys.executable, "-c", "import mta; print(mta.__file__)"],
        cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False,
    ).stdout.strip()

    asyncio.run(amain(args, runs, kind))

    print("---")
    print(f"generator: {kind}, {args.connections} connections split over the nodes")
    print(f"server_code: {Path(code).parent if code else '?'}")
    print(f"sink: smtp-sink (Postfix), {DEST_DOMAINS} destination domains as {DEST_DOMAINS} sites")
    print(f"message_bytes: {SIZE}")
    print("postgresql_settings: " + ", ".join(
        f"{k}={v}" for k, v in dict(DB_SETTINGS, **dict(i.split("=", 1) for i in args.pg)).items()))
    for run in runs:
        for name, value in run.figures.items():
            print(f"{run.name}_{name}: {value}")
        if args.profile:
            for node in range(1, run.nodes + 1):
                path = args.profile / f"{run.name}-node{node}.txt"
                if path.exists():
                    for part, share in profile_parts(path).items():
                        slug = re.sub(r"[^a-z0-9]+", "_", part.lower().split(" (")[0]).strip("_")
                        print(f"{run.name}_profile_node{node}_{slug}_pct: {share:.1f}")

    def e2e(run: Run) -> float:
        return float(run.figures.get("end_to_end_msgs_per_s", 0) or 0)

    ok = [r for r in runs if not r.problems]
    single = [r for r in ok if r.nodes == 1]
    if single:
        best = max(single, key=e2e)
        print(f"best_pool_one_node: {best.pool} ({e2e(best):.0f} msgs/s end to end; "
              + ", ".join(f"pool {r.pool}: {e2e(r):.0f}" for r in single) + ")")
        print(f"one_node_end_to_end_msgs_per_s: {e2e(best):.0f}")
    multi = [r for r in ok if r.nodes > 1]
    for r in multi:
        print(f"{r.nodes}_nodes_end_to_end_msgs_per_s: {e2e(r):.0f}")
        same = [s for s in single if s.pool == r.pool]
        if same:
            print(f"{r.nodes}_nodes_over_1_node_same_pool: {e2e(r) / max(1, e2e(same[0])):.2f}")
    print(f"check: {'ok' if len(ok) == len(runs) else 'FAILED'}")
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
