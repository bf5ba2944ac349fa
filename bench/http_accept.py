"""Accepted messages per second over HTTP: small urlencoded POSTs, 50 concurrent clients.

Starts `python -m mta serve` (default configuration: synchronous=FULL, so every 200 is a
durable commit) on a free loopback port in a temporary data directory, creates a domain and a
key with the CLI, warms up, loads it for a fixed duration, then checks that every Message-Id
answered 200 is in the messages table, reads the server's peak RSS and stops it.

    python bench/http_accept.py [--duration 10] [--connections 50] [--uvloop]
                                [--generator auto|wrk|aiohttp] [--profile FILE]

The figures are printed last, one `name: value` per line.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from urllib.parse import urlencode

from common import BENCH_DIR, DOMAIN, BenchServer, bench_server, cpu_seconds, parse_load_lines

# ~200 bytes urlencoded, like a typical transactional message
MESSAGE = {
    "from": f"Bench Sender <sender@{DOMAIN}>",
    "to": "Some Recipient <recipient@example.com>",
    "subject": "Your order has shipped",
    "text": "Hello, your order 12345 has shipped and will arrive on Tuesday. Thank you!",
}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of the server (the main, event-loop thread has tid == pid)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def fs_type(path: Path) -> str:
    """The file system holding `path` (tmpfs would make fsync free: not a durable figure)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return f"{kind} ({best})"


def machine_cpu() -> list[int]:
    """Jiffies since boot over all CPUs: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


class Generator:
    def __init__(self, kind: str, connections: int, env: dict[str, str], url: str) -> None:
        self.kind = kind
        self.connections = connections
        self.env = env
        self.url = url

    def describe(self) -> str:
        if self.kind == "wrk":
            return f"wrk (1 thread, {self.connections} connections, bench/wrk_post.lua)"
        return f"aiohttp client process ({self.connections} workers, bench/aiohttp_load.py)"

    def run(self, duration: float, ids_path: Path) -> dict[str, str]:
        """Load for `duration` s; the load_* figures plus cpu_s, the generator's own CPU time."""
        env = dict(self.env, MTA_BENCH_IDS=str(ids_path))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if self.kind == "wrk":
            cmd = [
                "wrk",
                "-t1",
                f"-c{self.connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(BENCH_DIR / "wrk_post.lua"),
                self.url,
            ]
        else:
            cmd = [
                sys.executable,
                str(BENCH_DIR / "aiohttp_load.py"),
                self.url,
                str(duration),
                str(self.connections),
            ]
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stdout}{done.stderr}".strip())
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures = parse_load_lines(done.stdout)
        if "ok" not in figures:
            raise RuntimeError(f"load generator printed no figures: {done.stdout}{done.stderr}")
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        figures["cpu_s"] = f"{used:.3f}"
        return figures


def start_profiler(pid: int, duration: float, output: Path, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy, sampling the server for the measured phase; collapsed stacks (text) per thread.
    With `gil`, only the thread holding the GIL is sampled (pure Python CPU, no GIL waits)."""
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            *(["--gil"] if gil else []),
            "--pid",
            str(pid),
            "--duration",
            str(int(duration)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--threads",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def check_database(server: BenchServer, answered: list[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        id_column = "message_id" if "message_id" in columns else "id"  # schema before/after
        stored = {row[0] for row in conn.execute(f"SELECT {id_column} FROM messages")}
        recipients = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]
        accepted = conn.execute("SELECT count(*) FROM events WHERE event = 'accepted'").fetchone()[
            0
        ]
    finally:
        conn.close()
    answered_set = set(answered)
    return {
        "answered_200": len(answered),
        "answered_duplicates": len(answered) - len(answered_set),
        "messages_rows": len(stored),
        "recipients_rows": recipients,
        "accepted_events": accepted,
        "lost": len(answered_set - stored),  # answered 200 but not in the database
        "unanswered": len(stored - answered_set),  # stored, answer cut off when the load stopped
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured load, seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up load, seconds")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (bench wrapper)")
    parser.add_argument(
        "--profile", type=Path, help="py-spy collapsed stacks of the measured phase go here"
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="measure the group commit inside the server (bench/serve.py wrapper)",
    )
    parser.add_argument(
        "--profile-gil", action="store_true", help="with --profile: sample only the GIL holder"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="MTA_X=Y", help="extra server setting"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if not 1 <= args.duration <= 60 or not 0 <= args.warmup <= 30:
        parser.error("duration must be 1..60 s and warmup 0..30 s (runs are kept short)")

    kind = args.generator
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "aiohttp"
    elif kind == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")
    extra_env = dict(item.split("=", 1) for item in args.env)

    work = Path(tempfile.mkdtemp(prefix="mta-bench-load-"))
    try:
        stats_path = work / "commit-stats.json" if args.stats else None
        with bench_server(
            uvloop=args.uvloop, stats=stats_path, extra_env=extra_env, keep=args.keep
        ) as server:
            key = server.setup_sending()
            auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
            body = urlencode(MESSAGE)
            load_env = dict(
                os.environ,
                MTA_BENCH_AUTH=auth,
                MTA_BENCH_PATH=f"/v3/{DOMAIN}/messages",
                MTA_BENCH_BODY=body,
            )
            gen = Generator(kind, args.connections, load_env, server.url)
            print(
                f"server pid {server.pid} on {server.url}, data dir on {fs_type(server.data_dir)},"
                f" body {len(body)} bytes",
                flush=True,
            )

            answered: list[str] = []
            if args.warmup > 0:
                warm = gen.run(args.warmup, work / "warmup.ids")
                answered += (work / "warmup.ids").read_text().split()
                print(f"warm-up: {warm['ok']} accepted in {args.warmup:g} s", flush=True)

            profiler = None
            if args.profile:
                profiler = start_profiler(server.pid, args.duration, args.profile, args.profile_gil)
                time.sleep(0.5)  # let py-spy attach before the load starts
            if stats_path is not None:
                os.kill(server.pid, signal.SIGUSR1)  # count the measured phase only
            cpu_before, threads_before = cpu_seconds(server.pid), thread_cpu(server.pid)
            machine_before = machine_cpu()
            started = time.monotonic()
            figures = gen.run(args.duration, work / "load.ids")
            wall = time.monotonic() - started
            if stats_path is not None:
                os.kill(server.pid, signal.SIGUSR2)  # written now: what follows is left out
            cpu_used = cpu_seconds(server.pid) - cpu_before
            machine = [b - a for a, b in zip(machine_before, machine_cpu(), strict=True)]
            threads_after = thread_cpu(server.pid)
            answered += (work / "load.ids").read_text().split()
            if profiler is not None:
                _, err = profiler.communicate(timeout=60)
                if profiler.returncode != 0:
                    print(f"py-spy failed: {err.decode().strip()[-300:]}", flush=True)

            time.sleep(0.5)  # requests cut off by the generator finish their commits
            peak_rss_kb = server.peak_rss_kb()
            returncode = server.stop()
            db = check_database(server, answered)
            commit_stats = json.loads(stats_path.read_text()) if stats_path is not None else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    main_tid = server.pid
    main_cpu = threads_after.get(main_tid, 0) - threads_before.get(main_tid, 0)
    other_cpu = cpu_used - main_cpu
    ok = int(figures["ok"])
    seconds = int(figures["duration_us"]) / 1e6
    problems = []
    if db["lost"] or db["answered_duplicates"]:
        problems.append(f"{db['lost']} answered ids missing, {db['answered_duplicates']} dupes")
    if db["recipients_rows"] != db["messages_rows"] or db["accepted_events"] != db["messages_rows"]:
        problems.append("recipients/events rows do not match messages rows")
    in_flight = args.connections * (2 if args.warmup > 0 else 1)  # cut off at each run's end
    if db["unanswered"] > in_flight:
        problems.append(f"{db['unanswered']} stored-but-unanswered > {in_flight} in flight")
    if returncode != 0:
        problems.append(f"server exited with {returncode}")
    other = int(figures.get("non_200", 0)) + int(figures.get("bad_body", 0))
    if other:
        problems.append(f"{other} answers were not 200 with an id")

    print("---")
    print(f"generator: {gen.describe()}")
    print(f"event_loop: {'uvloop' if args.uvloop else 'asyncio'}")
    print(f"connections: {args.connections}")
    print(f"duration_s: {seconds:.2f}")
    print(f"http_accept_ok_200: {ok}")
    print(f"http_accept_non_200: {figures.get('non_200', 0)}")
    print(f"http_accept_socket_errors: {figures.get('socket_errors', 0)}")
    print(f"http_accept_latency_p50_ms: {int(figures['latency_p50_us']) / 1000:.1f}")
    print(f"http_accept_latency_p99_ms: {int(figures['latency_p99_us']) / 1000:.1f}")
    print(f"server_cpu_main_thread_pct: {100 * main_cpu / wall:.0f}")
    print(f"server_cpu_other_threads_pct: {100 * other_cpu / wall:.0f}")
    print(f"server_cpu_us_per_msg_loop_thread: {1e6 * main_cpu / max(1, ok):.0f}")
    print(f"server_cpu_us_per_msg_all_threads: {1e6 * cpu_used / max(1, ok):.0f}")
    # in % of one core; other jobs on the machine during the run make the figure low
    cores = os.cpu_count() or 1
    busy_pct = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
    generator_pct = 100 * float(figures["cpu_s"]) / wall
    foreign_pct = max(0.0, busy_pct - 100 * cpu_used / wall - generator_pct)
    print(f"generator_cpu_pct: {generator_pct:.0f}")
    print(f"machine_cpu_busy_pct: {busy_pct:.0f} (of {100 * cores})")
    print(f"machine_cpu_steal_pct: {100 * cores * machine[7] / max(1, sum(machine)):.0f}")
    print(f"other_processes_cpu_pct: {foreign_pct:.0f}")
    if foreign_pct > 25:
        print("warning: other processes used the CPU during the run; the figure is low")
    for name, value in commit_stats.items():
        print(f"store_{name}: {value}")
    print(f"db_answered_200_total: {db['answered_200']}")
    print(f"db_messages_rows: {db['messages_rows']}")
    print(f"db_stored_unanswered_at_cutoff: {db['unanswered']}")
    print(f"db_check: {'FAILED: ' + '; '.join(problems) if problems else 'ok'}")
    print(f"server_peak_rss_mib: {peak_rss_kb / 1024:.1f}")
    print(f"http_accept_msgs_per_s: {ok / seconds:.0f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
