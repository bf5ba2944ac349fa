"""End to end: messages accepted over HTTP and delivered to a local SMTP sink, per second.

For each message size (default 1 KB, then 10 KB), starts Postfix's `smtp-sink` on a free loopback
port and a fresh `python -m mta serve` with outbound delivery on, whose five destination domains
d1..d5.bench.test are routed to the sink (`dns.static_mx`, no DNS off this machine). It POSTs
N messages (default 10,000), one recipient each, round-robin over the five domains, from 50
keep-alive connections, and waits until every recipient is delivered. Connection reuse is on
(the [default] shaping profile: 20 connections per site, 100 messages per connection).

    python bench/delivery.py [--messages 10000] [--size 1024,10240] [--connections 50]
                             [--one-site] [--profile FILE] [--env MTA_X=Y] [--keep]

The figures are printed last, one `name: value` per line, after a `---` line.
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
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

from common import (
    DOMAIN,
    BenchServer,
    bench_server,
    cpu_seconds,
    free_port,
    parse_load_lines,
    proc_status,
    wait_for_port,
)
from http_accept import fs_type, machine_cpu, thread_cpu

SINK = "smtp-sink"
DEST_DOMAINS = 5
PATH = f"/v3/{DOMAIN}/messages"
FILLER_PATH = "/bench-filler"  # what wrk sends once all N are out: no key, so a 401
POLL_S = 0.05
# what the server says at start before the CLI has made the domain and key: not a problem
STARTUP_WARNINGS = ("no API keys yet", "no domains yet")
# bytes the server adds around the text of these messages (the stored MIME's headers), so that
# --size is the stored message's size; the DKIM-Signature header (~0.5 KB) comes on top of it
MIME_OVERHEAD = 300
LINE = "The quick brown fox jumps over the lazy dog; order 12345 has shipped today.\n"

# wrk: N POSTs, each to the next recipient; after the N-th, requests are held back (delay) and
# the thread stops as soon as the N-th answer is in. Prints load_* lines like wrk_post.lua.
WRK_SCRIPT = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  total = tonumber(os.getenv("MTA_BENCH_COUNT"))
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
  local body = string.format("to=user%d%%40d%d.bench.test&", i, i % ndomains + 1) .. rest
  return wrk.format("POST", path, headers, body)
end

function request()
  if not verified then
    -- wrk calls request() once before the run to check it (nothing is sent)
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
    -- wrk's main thread sleeps for -d whatever its threads do: the parent sees this file (its
    -- mtime is when the last answer came) and stops wrk with SIGINT
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


def text_of(size: int) -> str:
    """Plain ASCII text lines (7bit in the MIME) making the stored message about `size` bytes."""
    # each \n becomes CRLF in the MIME
    want = max(16, (size - MIME_OVERHEAD) * len(LINE) // (len(LINE) + 1))
    text = (LINE * (want // len(LINE) + 1))[:want]
    return text[:-1] + "\n"


def body_rest(size: int) -> str:
    """Everything of the urlencoded form but `to`."""
    return urlencode(
        {
            "from": f"Bench Sender <sender@{DOMAIN}>",
            "subject": "Your order has shipped",
            "text": text_of(size),
        },
        quote_via=quote,
    )


def size_label(size: int) -> str:
    return f"{size // 1024}k" if size % 1024 == 0 else f"{size}b"


# -- the load ------------------------------------------------------------------------------------


async def aiohttp_load(url: str, total: int, connections: int, ndomains: int) -> None:
    """Fallback generator (no wrk): `total` POSTs from `connections` workers, each to the next
    recipient; prints the same load_* lines as the wrk script."""
    import aiohttp

    headers = {
        "Authorization": os.environ["MTA_BENCH_AUTH"],
        "Content-Type": "application/x-www-form-urlencoded",
    }
    rest = os.environ["MTA_BENCH_BODY_REST"]
    target = url + os.environ["MTA_BENCH_PATH"]
    ids: list[str] = []
    latencies: list[float] = []
    counts = {"non_200": 0, "bad_body": 0, "socket_errors": 0}
    next_index = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            body = f"to=user{i}%40d{i % ndomains + 1}.bench.test&{rest}".encode()
            started = time.perf_counter()
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                counts["socket_errors"] += 1
                continue
            latencies.append(time.perf_counter() - started)
            start = raw.find(b'"id":"<')
            end = raw.find(b'>"', start)
            if status != 200:
                counts["non_200"] += 1
            elif start < 0 or end < 0:
                counts["bad_body"] += 1
            else:
                ids.append(raw[start + 7 : end].decode())

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    Path(os.environ["MTA_BENCH_DONE"]).write_text("done\n")
    Path(os.environ["MTA_BENCH_IDS"]).write_text("".join(f"{i}\n" for i in ids))
    latencies = sorted(latencies) or [0.0]
    print(f"load_ok: {len(ids)}")
    for name, value in counts.items():
        print(f"load_{name}: {value}")
    print("load_fillers: 0")
    print(f"load_duration_us: {int(elapsed * 1e6)}")
    for name, p in (("p50", 0.50), ("p99", 0.99)):
        value = latencies[min(len(latencies) - 1, int(len(latencies) * p))]
        print(f"load_latency_{name}_us: {int(value * 1e6)}")
    print(f"load_latency_max_us: {int(latencies[-1] * 1e6)}")


def start_generator(
    kind: str, url: str, total: int, connections: int, env: dict[str, str], work: Path
) -> subprocess.Popen[str]:
    if kind == "wrk":
        script = work / "delivery.lua"
        script.write_text(WRK_SCRIPT)
        cmd = ["wrk", "-t1", f"-c{min(connections, total)}", "-d3600s", "--timeout", "30s",
               "-s", str(script), url]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--load-child", url, str(total),
               str(connections)]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


# -- the sink ------------------------------------------------------------------------------------


@dataclass
class Sink:
    proc: subprocess.Popen[bytes]
    port: int
    out_path: Path
    dump_dir: Path | None = None  # where smtp-sink -D appends every message, when asked

    def counters(self) -> dict[str, int]:
        """smtp-sink -c's last `sess=N quit=N mesg=N` line (it rewrites it after a `\\r`)."""
        text = self.out_path.read_bytes().decode(errors="replace")
        last = [part for part in text.replace("\n", "\r").split("\r") if "mesg=" in part]
        if not last:
            return {"sess": 0, "quit": 0, "mesg": 0}
        return {k: int(v) for k, _, v in (f.partition("=") for f in last[-1].split())}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def count_dumped(self, needle: bytes) -> int:
        """How often `needle` stands in the dumped messages (a DKIM-Signature header, say)."""
        assert self.dump_dir is not None
        n = 0
        for path in self.dump_dir.iterdir():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):  # a needle across a chunk edge: 1 lost
                    n += chunk.count(needle)
        return n


def start_sink(work: Path, dump: bool = False) -> Sink:
    """`dump`: also append every message to a file (slower; to look inside them)."""
    binary = shutil.which(SINK) or (f"/usr/sbin/{SINK}" if Path(f"/usr/sbin/{SINK}").exists()
                                   else None)
    if binary is None:
        raise SystemExit(
            "smtp-sink (Postfix's test SMTP server) is not installed: apt-get install -y postfix"
        )
    port = free_port()
    out_path = work / f"sink-{port}.out"
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    dump_dir = work / f"sink-{port}.dump" if dump else None
    if dump_dir is not None:  # smtp-sink -D appends to a file it makes in there, as nobody
        dump_dir.mkdir()
        os.chmod(dump_dir, 0o777)
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", *user, *(["-D", str(dump_dir / "m.")] if dump_dir else []),
             f"127.0.0.1:{port}", "256"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, proc)  # one empty session (sess=1), no message
    return Sink(proc, port, out_path, dump_dir)


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    size: int
    figures: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def routes(sink_port: int, one_site: bool) -> dict[str, str]:
    """Server settings sending d1..d5.bench.test to the sink. By default each domain has its own
    MX name (mxN.bench.test -> 127.0.0.1), so that each is its own site, as five real domains
    would be; with `one_site`, all five name 127.0.0.1:port and share one site."""
    static_mx: dict[str, list[str]] = {}
    answers: dict[str, list[str]] = {}
    for n in range(1, DEST_DOMAINS + 1):
        if one_site:
            static_mx[f"d{n}.bench.test"] = [f"127.0.0.1:{sink_port}"]
        else:
            static_mx[f"d{n}.bench.test"] = [f"mx{n}.bench.test:{sink_port}"]
            answers[f"mx{n}.bench.test A"] = ["127.0.0.1"]
    return {
        "MTA_SMTP_SUBMISSION": "",  # no SMTP listeners: only the HTTP API and delivery
        "MTA_SMTP_SUBMISSION_TLS": "",
        "MTA_SMTP_SUBMISSION_ALT": "",
        "MTA_SMTP_MX": "",
        "MTA_OUTBOUND_ENABLED": "true",
        "MTA_DNS_ONLY_ANSWERS": "true",
        "MTA_DNS_STATIC_MX": json.dumps(static_mx),
        "MTA_DNS_ANSWERS": json.dumps(answers),
    }


def counts_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())


def queued_split(conn: sqlite3.Connection) -> tuple[int, int]:
    """Queued recipients the scheduler holds (leased: in memory) and those it put back for
    later without an attempt (deferred: a full site's surplus)."""
    leased, deferred = conn.execute(
        "SELECT sum(lease_until > 0), sum(lease_until = 0 AND due_at > ?) FROM recipients"
        " WHERE state = 'queued'",
        (time.time() + 0.1,),
    ).fetchone()
    return leased or 0, deferred or 0


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy over the whole run (stopped with SIGINT at the end): collapsed stacks per thread,
    non-blocking so that the server is not paused for each sample."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format",
         "raw", "--threads", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_once(args: argparse.Namespace, size: int, kind: str, work: Path) -> Result:
    result = Result(size)
    sink = start_sink(work)
    try:
        extra_env = routes(sink.port, args.one_site)
        extra_env.update(dict(item.split("=", 1) for item in args.env))
        with bench_server(extra_env=extra_env, keep=args.keep) as server:
            run_with_server(args, size, kind, work, server, sink, result)
    finally:
        sink.stop()
    return result


def run_with_server(
    args: argparse.Namespace,
    size: int,
    kind: str,
    work: Path,
    server: BenchServer,
    sink: Sink,
    result: Result,
) -> None:
    fig = result.figures
    problems = result.problems
    total = args.messages
    key = server.setup_sending()
    auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    rest = body_rest(size)
    ids_path = work / f"ids-{size}.txt"
    done_path = work / f"answered-{size}"  # made when the last answer is in
    env = dict(
        os.environ,
        MTA_BENCH_AUTH=auth,
        MTA_BENCH_PATH=PATH,
        MTA_BENCH_BODY_REST=rest,
        MTA_BENCH_COUNT=str(total),
        MTA_BENCH_DOMAINS=str(DEST_DOMAINS),
        MTA_BENCH_FILLER=FILLER_PATH,
        MTA_BENCH_IDS=str(ids_path),
        MTA_BENCH_DONE=str(done_path),
    )
    print(
        f"[{size_label(size)}] server pid {server.pid} on {server.url}, data dir on"
        f" {fs_type(server.data_dir)}; smtp-sink pid {sink.proc.pid} on 127.0.0.1:{sink.port};"
        f" {total} messages, form body ~{len(rest) + 40} bytes",
        flush=True,
    )
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=10)
    profiler = None
    if args.profile:
        profile_path = args.profile.with_name(
            f"{args.profile.stem}-{size_label(size)}{args.profile.suffix}"
        )
        profiler = start_profiler(server.pid, profile_path)
        time.sleep(1.0)  # let py-spy attach before the load starts

    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu_before, threads_before = cpu_seconds(server.pid), thread_cpu(server.pid)
    sink_cpu_before = cpu_seconds(sink.proc.pid)
    machine_before = machine_cpu()
    t0 = time.time()
    started = time.monotonic()
    gen = start_generator(kind, server.url, total, args.connections, env, work)

    load_out: str | None = None
    gen_cpu = 0.0
    accept_done_at = None
    last_report = started
    last_progress: tuple[float, tuple[int, int]] = (started, (-1, -1))
    max_backlog = max_leased = max_deferred = 0
    states: dict[str, int] = {}
    while True:
        now = time.monotonic()
        if kind == "wrk" and load_out is None and gen.poll() is None and done_path.exists():
            gen.send_signal(signal.SIGINT)  # wrk: stop sleeping, print, write the ids
        if load_out is None and gen.poll() is not None:
            load_out = gen.stdout.read() if gen.stdout else ""
            accept_done_at = now
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            gen_cpu = (after.ru_utime + after.ru_stime
                       - children_before.ru_utime - children_before.ru_stime)
            if gen.returncode != 0:
                problems.append(f"load generator exited with {gen.returncode}")
                print(load_out, flush=True)
                break
        states = counts_by_state(conn)
        done = states.get("delivered", 0) + states.get("failed", 0)
        max_backlog = max(max_backlog, sum(states.values()) - done)
        if (sum(states.values()), done) != last_progress[1]:
            last_progress = (now, (sum(states.values()), done))
        if now - last_report >= 1.0:
            last_report = now
            leased, deferred = queued_split(conn)
            max_leased, max_deferred = max(max_leased, leased), max(max_deferred, deferred)
            print(
                f"  t={now - started:5.1f} s  accepted {sum(states.values()):6d}"
                f"  in memory {leased:5d}  deferred {deferred:5d}"
                f"  delivered {states.get('delivered', 0):6d}  failed {states.get('failed', 0)}",
                flush=True,
            )
        if load_out is not None and done >= total:
            break
        if now - last_progress[0] > args.stall:
            problems.append(f"no progress (accepts or deliveries) for {args.stall:g} s")
            break
        if now - started > args.timeout:
            problems.append(f"not finished after {args.timeout:g} s")
            break
        time.sleep(POLL_S)
    finished = time.monotonic()
    server_cpu = cpu_seconds(server.pid) - server_cpu_before
    threads_after = thread_cpu(server.pid)
    sink_cpu = cpu_seconds(sink.proc.pid) - sink_cpu_before
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    bench_cpu = (self_after.ru_utime + self_after.ru_stime
                 - self_before.ru_utime - self_before.ru_stime)
    machine = [b - a for a, b in zip(machine_before, machine_cpu(), strict=True)]
    peak_rss_kb = server.peak_rss_kb()
    rss_kb = proc_status(server.pid, "VmRSS")
    if gen.poll() is None:
        gen.kill()
        gen.wait()
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        try:
            _, err = profiler.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            _, err = profiler.communicate()
        if not profile_path.exists():
            problems.append(f"py-spy wrote nothing: {err.decode().strip()[-300:]}")
        else:
            print(f"profile: {profile_path} (python bench/profile_report.py {profile_path})")

    load = parse_load_lines(load_out or "")
    returncode = server.stop()  # its connections QUIT
    time.sleep(0.2)  # smtp-sink counts a session when it ends
    sink_counts = sink.counters()

    # -- what the database says --------------------------------------------------------------
    states = counts_by_state(conn)
    (messages_rows,) = conn.execute("SELECT count(*) FROM messages").fetchone()
    events = dict(conn.execute("SELECT event, count(*) FROM events GROUP BY event").fetchall())
    (last_delivered,) = conn.execute(
        "SELECT max(ts) FROM events WHERE event = 'delivered'").fetchone()
    first_accepted, last_accepted = conn.execute(
        "SELECT min(ts), max(ts) FROM events WHERE event = 'accepted'").fetchone()
    (delivered_by_last_accept,) = conn.execute(
        "SELECT count(*) FROM events WHERE event = 'delivered' AND ts <= ?", (last_accepted or 0,)
    ).fetchone()
    (mime_avg,) = conn.execute("SELECT avg(length(mime)) FROM messages").fetchone()
    (attempts_max,) = conn.execute("SELECT max(attempts) FROM recipients").fetchone()
    stored_ids = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
    conn.close()
    answered = ids_path.read_text().split() if ids_path.exists() else []
    log_lines = [
        ln for ln in server.log_path.read_text(errors="replace").splitlines()
        if ln.strip() and not any(expected in ln for expected in STARTUP_WARNINGS)
    ]

    delivered = states.get("delivered", 0)
    failed = states.get("failed", 0)
    queued = states.get("queued", 0)
    if load.get("ok") != str(total) or int(load.get("non_200", 1)) or len(answered) != total:
        problems.append(
            f"{load.get('ok')} of {total} answered 200 ({load.get('non_200')} non-200,"
            f" {load.get('bad_body')} without an id, {load.get('socket_errors')} socket errors)"
        )
    if len(set(answered)) != len(answered) or set(answered) - stored_ids:
        problems.append(f"{len(set(answered) - stored_ids)} answered ids not stored")
    if messages_rows != total or sum(states.values()) != total:
        problems.append(f"{messages_rows} messages, {sum(states.values())} recipients stored")
    if delivered != total or failed or queued:
        problems.append(f"recipients delivered {delivered}, failed {failed}, queued {queued}")
    if events.get("delivered", 0) != total or events.get("failed", 0):
        problems.append(f"events: {events}")
    if sink_counts["mesg"] != delivered:
        extra = sink_counts["mesg"] - delivered
        problems.append(
            f"the sink counted {sink_counts['mesg']} messages for {delivered} delivered"
            + (f" ({extra} duplicates)" if extra > 0 else "")
        )
    if returncode != 0:
        problems.append(f"server exited with {returncode}")
    if log_lines:
        problems.append(f"the server logged {len(log_lines)} line(s) at warning or above")

    wall = finished - started
    e2e = (last_delivered - t0) if last_delivered else wall
    if done_path.exists():
        accept_s = done_path.stat().st_mtime - t0
    else:
        accept_s = (accept_done_at or finished) - started
    main_tid = server.pid
    main_cpu = threads_after.get(main_tid, 0) - threads_before.get(main_tid, 0)
    cores = os.cpu_count() or 1
    busy = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
    foreign = max(0.0, busy - 100 * (server_cpu + sink_cpu + gen_cpu + bench_cpu) / wall)

    label = size_label(size)
    fig["message_bytes_stored_avg"] = f"{mime_avg or 0:.0f}"
    fig["messages"] = str(total)
    fig["accept_s"] = f"{accept_s:.2f}"
    fig["accept_msgs_per_s"] = f"{total / accept_s:.0f}" if accept_s else "0"
    fig["accept_latency_p50_ms"] = f"{int(load.get('latency_p50_us', 0)) / 1000:.1f}"
    fig["accept_latency_p99_ms"] = f"{int(load.get('latency_p99_us', 0)) / 1000:.1f}"
    if first_accepted and last_accepted:
        fig["accept_span_server_s"] = f"{last_accepted - first_accepted:.2f}"
    fig["end_to_end_s"] = f"{e2e:.2f}"
    if last_delivered and last_accepted:
        fig["delivery_lag_after_last_accept_s"] = f"{last_delivered - last_accepted:.2f}"
        lag = last_delivered - last_accepted
        if lag >= 1.0:  # delivery alone, once the accepts are over
            fig["drain_msgs_per_s_after_last_accept"] = (
                f"{(delivered - delivered_by_last_accept) / lag:.0f}"
            )
    fig["delivered_by_last_accept"] = str(delivered_by_last_accept)
    fig["max_backlog_recipients"] = str(max_backlog)
    fig["max_in_memory_recipients"] = str(max_leased)
    fig["max_deferred_recipients"] = str(max_deferred)
    fig["recipients_delivered"] = str(delivered)
    fig["recipients_failed"] = str(failed)
    fig["recipients_queued"] = str(queued)
    fig["attempts_max"] = str(attempts_max)
    fig["sink_messages"] = str(sink_counts["mesg"])
    fig["sink_sessions"] = str(max(0, sink_counts["sess"] - 1))  # less the port probe
    fig["server_cpu_s"] = f"{server_cpu:.2f}"
    fig["server_cpu_main_thread_pct"] = f"{100 * main_cpu / wall:.0f}"
    fig["server_cpu_other_threads_pct"] = f"{100 * (server_cpu - main_cpu) / wall:.0f}"
    fig["server_cpu_us_per_msg"] = f"{1e6 * server_cpu / max(1, delivered):.0f}"
    fig["sink_cpu_s"] = f"{sink_cpu:.2f}"
    fig["generator_cpu_s"] = f"{gen_cpu:.2f}"
    fig["bench_poller_cpu_s"] = f"{bench_cpu:.2f}"
    fig["machine_cpu_busy_pct"] = f"{busy:.0f} (of {100 * cores})"
    fig["other_processes_cpu_pct"] = f"{foreign:.0f}"
    fig["server_rss_end_mib"] = f"{rss_kb / 1024:.1f}"
    fig["server_peak_rss_mib"] = f"{peak_rss_kb / 1024:.1f}"
    fig["check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    fig["end_to_end_msgs_per_s"] = f"{delivered / e2e:.0f}" if e2e > 0 else "0"
    for line in log_lines[:5]:
        print(f"[{label}] server log: {line[:300]}")
    if foreign > 25:
        print(f"[{label}] warning: other processes used {foreign:.0f} % CPU; the figure is low"
              + (" (py-spy counts as other)" if args.profile else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--size", default="1024,10240",
        help="stored message size(s) in bytes, comma-separated; one fresh run each",
    )
    parser.add_argument("--connections", type=int, default=50, help="HTTP connections")
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument(
        "--one-site", action="store_true",
        help="route all five domains to 127.0.0.1:port (one shared site, 20 connections)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks, FILE-<size>.txt")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (s)")
    parser.add_argument("--stall", type=float, default=30.0, help="give up without progress (s)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="MTA_X=Y", help="extra server setting"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--load-child", nargs=3, metavar=("URL", "N", "CONNS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        url, total, conns = args.load_child
        asyncio.run(aiohttp_load(url, int(total), int(conns), DEST_DOMAINS))
        return 0
    sizes = [int(s) for s in args.size.split(",") if s.strip()]
    if not 1 <= args.messages <= 100_000 or not sizes or min(sizes) < 100:
        parser.error("--messages must be 1..100000 and each --size at least 100")
    kind = args.generator
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "aiohttp"
    elif kind == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")

    work = Path(tempfile.mkdtemp(prefix="mta-bench-delivery-"))
    # which mta the server imports (it runs from a temporary directory: installed or PYTHONPATH)
    code = subprocess.run(
        [sys.executable, "-c", "import mta; print(mta.__file__)"],
        cwd=work, capture_output=True, text=True, check=False,
    ).stdout.strip()
    results = []
    try:
        for size in sizes:
            results.append(run_once(args, size, kind, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("---")
    print(
        "generator: "
        + (f"wrk (1 thread, {args.connections} connections)" if kind == "wrk"
           else f"aiohttp client process ({args.connections} workers)")
    )
    print(f"server_code: {Path(code).parent if code else '?'}")
    print(f"sink: smtp-sink (Postfix), {DEST_DOMAINS} destination domains as "
          + ("one site" if args.one_site else f"{DEST_DOMAINS} sites (one MX name each)"))
    for result in results:
        label = size_label(result.size)
        for name, value in result.figures.items():
            print(f"delivery_{label}_{name}: {value}")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
