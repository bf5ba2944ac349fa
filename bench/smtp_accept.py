"""Accepted messages per second over SMTP submission (STARTTLS + AUTH), and the server's memory
with 1,000 idle SMTP connections.

Starts `python -m mta serve` (default configuration: synchronous=FULL, so every 250 after DATA
is a durable commit) on free loopback ports in a temporary data directory, with only the
STARTTLS submission listener on, creates a domain and an SMTP credential with the CLI, then
runs these phases against it, in this order:

- `idle`: 1,000 connections that connect and say EHLO, then hold still: the server's RSS before
  and with them (a fresh server: this phase runs first so that its peak is its own).
- `idle_tls`: the same after STARTTLS + EHLO + AUTH on each (off by default).
- `reused_1k`, `reused_10k`: 50 sessions, each STARTTLS + AUTH once, then one message after the
  other (MAIL+RCPT+DATA pipelined, body after the 354), 1 KB and 10 KB messages.
- `session_1k`: 50 workers, each looping on connect + STARTTLS + AUTH + one 1 KB message + QUIT.

Each load phase has a warm-up, then a measured window; messages in flight at its end are
finished. The load comes from bench/smtp_load.py in its own process(es). At the end every
Message-Id answered 250 must be in the messages table.

    python bench/smtp_accept.py [--duration 10] [--warmup 2] [--connections 50]
        [--phases idle,reused_1k,reused_10k,session_1k] [--profile FILE] [--uvloop]

The figures are printed last, one `name: value` per line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BENCH_DIR,
    DOMAIN,
    BenchServer,
    bench_server,
    cpu_seconds,
    free_port,
    parse_load_lines,
    proc_status,
    wait_for_port,
)
from http_accept import fs_type, machine_cpu, start_profiler, thread_cpu

LOGIN = f"alice@{DOMAIN}"
PASSWORD = "s3cret-pass"
LOAD_PHASES = {  # name: (smtp_load.py mode, message size, figure prefix)
    "reused_1k": ("reused", 1024, "smtp_reused_1k"),
    "reused_10k": ("reused", 10240, "smtp_reused_10k"),
    "session_1k": ("session", 1024, "smtp_per_session_1k"),
}
IDLE_PHASES = ("idle", "idle_tls")
DEFAULT_PHASES = "idle,reused_1k,reused_10k,session_1k"


@dataclass
class Figures:
    lines: list[tuple[str, str]] = field(default_factory=list)
    headline: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        self.lines.append((name, str(value)))


class Clients:
    """N smtp_load.py processes sharing `connections` between them."""

    def __init__(
        self,
        server_port: int,
        mode: str,
        connections: int,
        size: int,
        processes: int,
        work: Path,
        tag: str,
        client_loop: str,
        tls: bool = False,
        plain: list[str] | None = None,
        rcpt: str | None = None,
    ) -> None:
        """`plain`: no STARTTLS and no AUTH (the MX port), with these smtp_load.py arguments
        (--mail-from, --rcpt) instead of a login. `rcpt`: smtp_load.py's --rcpt otherwise."""
        self.ids_paths = [work / f"{tag}.{i}.ids" for i in range(processes)]
        self.procs: list[subprocess.Popen[str]] = []
        shares = [
            connections // processes + (i < connections % processes) for i in range(processes)
        ]
        for i, share in enumerate(shares):
            cmd = [
                sys.executable,
                str(BENCH_DIR / "smtp_load.py"),
                "--port",
                str(server_port),
                "--mode",
                mode,
                "--connections",
                str(share),
                "--size",
                str(size),
                *(["--plain", *plain] if plain is not None else
                  ["--login", LOGIN, "--password", PASSWORD]),
                "--ids",
                str(self.ids_paths[i]),
                "--tag",
                f"{tag}{i}",
                "--loop",
                client_loop,
                *(["--tls"] if tls else []),
                *(["--rcpt", rcpt] if rcpt else []),
            ]
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            line = proc.stdout.readline().strip() if ready else ""
            if line != "ready":
                self.kill()
                _, err = proc.communicate(timeout=10)
                raise RuntimeError(f"load client not ready ({line!r}): {err.strip()[-800:]}")

    def tell(self, command: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(OSError):  # already gone
                total += cpu_seconds(proc.pid)
        return total

    def finish(self, timeout: float = 60) -> dict[str, int | str]:
        """Wait for the processes; their load_* figures summed (samples kept), and the ids."""
        merged: dict[str, int | str] = {}
        latencies: dict[str, list[int]] = {}
        for proc in self.procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError("load client did not finish in time") from None
            if proc.returncode != 0:
                raise RuntimeError(f"load client failed ({proc.returncode}): {err.strip()[-800:]}")
            for name, value in parse_load_lines(out).items():
                if name.startswith("latency_"):
                    latencies.setdefault(name, []).append(int(value))
                elif value.lstrip("-").isdigit():
                    merged[name] = int(merged.get(name, 0)) + int(value)
                else:
                    merged[f"{name}.{len(merged)}"] = value
        for name, values in latencies.items():  # several processes: the worst of them
            merged[name] = max(values)
        return merged

    def answered(self) -> list[str]:
        ids: list[str] = []
        for path in self.ids_paths:
            if path.exists():
                ids += path.read_text().split()
        return ids

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def load_phase(
    server: BenchServer,
    smtp_port: int,
    name: str,
    args: argparse.Namespace,
    work: Path,
    figures: Figures,
    answered: list[str],
) -> None:
    mode, size, prefix = LOAD_PHASES[name]
    clients = Clients(
        smtp_port, mode, args.connections, size, args.clients, work, name, args.client_loop
    )
    try:
        clients.wait_ready()
        now = time.monotonic()
        measure_from = now + args.warmup
        measure_until = measure_from + args.duration
        clients.tell(f"go {measure_from!r} {measure_until!r}")
        profiler = None
        if args.profile and name == args.profile_phase:
            sleep_until(measure_from - 0.5)
            profiler = start_profiler(server.pid, args.duration, args.profile, args.profile_gil)
        sleep_until(measure_from)
        if args.stats:
            os.kill(server.pid, signal.SIGUSR1)  # group-commit figures: the window only
        cpu0, threads0, client0, machine0 = (
            cpu_seconds(server.pid),
            thread_cpu(server.pid),
            clients.cpu(),
            machine_cpu(),
        )
        sleep_until(measure_until)
        if args.stats:
            os.kill(server.pid, signal.SIGUSR2)  # written now (each phase overwrites them)
        cpu1, threads1, client1, machine1 = (
            cpu_seconds(server.pid),
            thread_cpu(server.pid),
            clients.cpu(),
            machine_cpu(),
        )
        wall = time.monotonic() - measure_from
        load = clients.finish()
        if profiler is not None:
            _, err = profiler.communicate(timeout=60)
            if profiler.returncode != 0:
                figures.problems.append(f"py-spy failed: {err.decode().strip()[-300:]}")
    finally:
        clients.kill()
    answered += clients.answered()

    ok = int(load.get("ok", 0))
    server_cpu = cpu1 - cpu0
    main_cpu = threads1.get(server.pid, 0.0) - threads0.get(server.pid, 0.0)
    client_cpu = client1 - client0
    machine = [b - a for a, b in zip(machine0, machine1, strict=True)]
    cores = os.cpu_count() or 1
    busy_pct = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
    foreign_pct = max(0.0, busy_pct - 100 * (server_cpu + client_cpu) / wall)
    bad = {k: v for k, v in load.items() if k.startswith(("reply_", "error_"))}
    figures.add(f"{prefix}_messages_in_window", ok)
    figures.add(f"{prefix}_answered_250_total", load.get("answered_250_total", 0))
    if mode == "session":
        figures.add(f"{prefix}_sessions_total", load.get("sessions", 0))
    figures.add(f"{prefix}_non_250_or_errors", sum(int(v) for v in bad.values()))
    for key, value in sorted(bad.items()):
        figures.add(f"{prefix}_{key}", value)
        figures.problems.append(f"{name}: {key} = {value}")
    for key, value in load.items():
        if key.startswith("sample_"):  # the first errors a client saw, word for word
            figures.add(f"{prefix}_error_{key.split('.')[0]}", value)
    figures.add(f"{prefix}_latency_p50_ms", f"{int(load.get('latency_p50_us', 0)) / 1000:.1f}")
    figures.add(f"{prefix}_latency_p99_ms", f"{int(load.get('latency_p99_us', 0)) / 1000:.1f}")
    figures.add(f"{prefix}_server_cpu_main_thread_pct", f"{100 * main_cpu / wall:.0f}")
    figures.add(
        f"{prefix}_server_cpu_other_threads_pct", f"{100 * (server_cpu - main_cpu) / wall:.0f}"
    )
    figures.add(f"{prefix}_server_cpu_us_per_msg_loop_thread", f"{1e6 * main_cpu / max(1, ok):.0f}")
    figures.add(
        f"{prefix}_server_cpu_us_per_msg_all_threads", f"{1e6 * server_cpu / max(1, ok):.0f}"
    )
    figures.add(f"{prefix}_generator_cpu_pct", f"{100 * client_cpu / wall:.0f}")
    figures.add(f"{prefix}_generator_cpu_us_per_msg", f"{1e6 * client_cpu / max(1, ok):.0f}")
    figures.add(f"{prefix}_machine_cpu_busy_pct", f"{busy_pct:.0f} (of {100 * cores})")
    figures.add(f"{prefix}_other_processes_cpu_pct", f"{foreign_pct:.0f}")
    if foreign_pct > 25:
        figures.problems.append(
            f"{name}: other processes used {foreign_pct:.0f}% CPU, so the figure is low (warning)"
        )
    figures.add(f"{prefix}_server_rss_after_mib", f"{proc_status(server.pid, 'VmRSS') / 1024:.1f}")
    figures.add(
        f"{prefix}_server_peak_rss_so_far_mib", f"{proc_status(server.pid, 'VmHWM') / 1024:.1f}"
    )
    figures.headline.append((f"{prefix}_msgs_per_s", f"{ok / args.duration:.0f}"))
    print(
        f"{name}: {ok / args.duration:.0f} msg/s, server {100 * server_cpu / wall:.0f}% CPU,"
        f" generator {100 * client_cpu / wall:.0f}%",
        flush=True,
    )


def idle_phase(
    server: BenchServer,
    smtp_port: int,
    name: str,
    args: argparse.Namespace,
    work: Path,
    figures: Figures,
) -> None:
    tls = name == "idle_tls"
    n = args.idle_connections
    prefix = f"smtp_idle_{n}" + ("_tls" if tls else "")
    time.sleep(0.5)
    rss_before = proc_status(server.pid, "VmRSS")
    clients = Clients(
        smtp_port, "idle", n, 1024, args.idle_clients, work, name, args.client_loop, tls=tls
    )
    try:
        began = time.monotonic()
        clients.wait_ready(timeout=120)
        setup_s = time.monotonic() - began
        time.sleep(args.idle_hold)
        rss_with = proc_status(server.pid, "VmRSS")
        peak = proc_status(server.pid, "VmHWM")
        fds = len(os.listdir(f"/proc/{server.pid}/fd"))
        clients.tell("close")
        load = clients.finish()
    finally:
        clients.kill()
    opened = int(load.get("idle_open", 0))
    alive = int(load.get("idle_alive_at_close", 0))
    bad = {k: v for k, v in load.items() if k.startswith(("reply_", "error_"))}
    for key, value in sorted(bad.items()):
        figures.add(f"{prefix}_{key}", value)
    for key, value in load.items():
        if key.startswith("sample_"):
            figures.add(f"{prefix}_error_{key.split('.')[0]}", value)
    if opened != n or alive != n:
        figures.problems.append(f"{name}: {opened} of {n} opened, {alive} answered NOOP at the end")
    figures.add(f"{prefix}_opened", opened)
    figures.add(f"{prefix}_answered_noop_at_end", alive)
    figures.add(f"{prefix}_setup_s", f"{setup_s:.2f}")
    figures.add(f"{prefix}_server_open_fds", fds)
    figures.add(f"{prefix}_rss_before_mib", f"{rss_before / 1024:.1f}")
    figures.add(f"{prefix}_rss_with_them_mib", f"{rss_with / 1024:.1f}")
    figures.add(f"{prefix}_kib_per_connection", f"{(rss_with - rss_before) / max(1, opened):.1f}")
    figures.headline.append((f"{prefix}_peak_rss_mib", f"{peak / 1024:.1f}"))
    print(
        f"{name}: {opened} connections, RSS {rss_before / 1024:.1f} -> {rss_with / 1024:.1f}"
        f" MiB, peak {peak / 1024:.1f} MiB",
        flush=True,
    )


def check_database(server: BenchServer, answered: list[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        stored = [row[0] for row in conn.execute("SELECT message_id FROM messages")]
        recipients = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]
        accepted = conn.execute("SELECT count(*) FROM events WHERE event = 'accepted'").fetchone()[
            0
        ]
    finally:
        conn.close()
    answered_set, stored_set = set(answered), set(stored)
    return {
        "answered_250": len(answered),
        "answered_duplicates": len(answered) - len(answered_set),
        "messages_rows": len(stored),
        "stored_duplicates": len(stored) - len(stored_set),
        "recipients_rows": recipients,
        "accepted_events": accepted,
        "lost": len(answered_set - stored_set),
        "unanswered": len(stored_set - answered_set),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured load, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up load, seconds")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--clients", type=int, default=1, help="load generator processes")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--idle-clients", type=int, default=2)
    parser.add_argument("--idle-hold", type=float, default=2.0, help="seconds to hold them")
    parser.add_argument(
        "--phases",
        default=DEFAULT_PHASES,
        help=f"comma-separated, from {', '.join([*IDLE_PHASES, *LOAD_PHASES])}",
    )
    parser.add_argument(
        "--client-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the generator's event loop (auto: uvloop when installed)",
    )
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (bench wrapper)")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks go here")
    parser.add_argument("--profile-phase", default="reused_1k", choices=list(LOAD_PHASES))
    parser.add_argument("--profile-gil", action="store_true", help="sample only the GIL holder")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="group-commit figures of the last load phase (bench/serve.py)",
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
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in (*IDLE_PHASES, *LOAD_PHASES)]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    if not 1 <= args.duration <= 30 or not 0 <= args.warmup <= 10:
        parser.error("duration must be 1..30 s and warmup 0..10 s (runs are kept short)")
    if args.profile and args.profile_phase not in phases:
        parser.error(f"--profile: phase {args.profile_phase} is not run")

    smtp_port = free_port()
    extra_env = {
        "MTA_SMTP_SUBMISSION": f"127.0.0.1:{smtp_port}",
        "MTA_SMTP_SUBMISSION_TLS": "",  # off: only the STARTTLS port is measured
        "MTA_SMTP_SUBMISSION_ALT": "",
        "MTA_SMTP_MX": "",  # nor the inbound MX
        "MTA_SMTP_MAX_CONNECTIONS_PER_IP": str(args.per_ip_limit),
    }
    extra_env.update(item.split("=", 1) for item in args.env)
    figures = Figures()
    answered: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="mta-bench-smtp-"))
    try:
        stats_path = work / "commit-stats.json" if args.stats else None
        with bench_server(
            uvloop=args.uvloop, stats=stats_path, extra_env=extra_env, keep=args.keep
        ) as server:
            wait_for_port(smtp_port, server.proc)
            server.cli("domain", "add", DOMAIN)
            server.cli("credential", "add", DOMAIN, LOGIN, "--password", PASSWORD)
            print(
                f"server pid {server.pid}, SMTP on 127.0.0.1:{smtp_port} (STARTTLS),"
                f" data dir on {fs_type(server.data_dir)}",
                flush=True,
            )
            for name in phases:
                if name in IDLE_PHASES:
                    idle_phase(server, smtp_port, name, args, work, figures)
                else:
                    load_phase(server, smtp_port, name, args, work, figures, answered)
            time.sleep(0.5)
            peak_rss_kb = server.peak_rss_kb()
            returncode = server.stop()
            db = check_database(server, answered)
            log_tail = [
                line
                for line in server.log_path.read_text().splitlines()
                if " ERROR " in line or "Traceback" in line
            ][:5]
            commit_stats = json.loads(stats_path.read_text()) if stats_path is not None else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if db["lost"] or db["answered_duplicates"] or db["stored_duplicates"]:
        figures.problems.append(
            f"{db['lost']} answered ids missing, duplicates:"
            f" {db['answered_duplicates']} answered, {db['stored_duplicates']}"
            " stored"
        )
    if db["recipients_rows"] != db["messages_rows"] or db["accepted_events"] != db["messages_rows"]:
        figures.problems.append("recipients/events rows do not match messages rows")
    if db["unanswered"]:
        figures.problems.append(f"{db['unanswered']} stored messages were never answered 250")
    if returncode != 0:
        figures.problems.append(f"server exited with {returncode}")
    if log_tail:
        figures.problems.append(f"server log has errors: {log_tail[0][:200]}")
    failed = [p for p in figures.problems if "(warning)" not in p]

    print("---")
    print(
        f"generator: bench/smtp_load.py, {args.clients} process(es), loop {args.client_loop}"
        f" (auto = uvloop when installed)"
    )
    print(f"event_loop: {'uvloop' if args.uvloop else 'asyncio'}")
    print(f"connections: {args.connections}")
    print(f"duration_s: {args.duration:g}")
    print(f"warmup_s: {args.warmup:g}")
    for name, value in figures.lines:
        print(f"{name}: {value}")
    for name, value in commit_stats.items():
        print(f"store_{name}: {value}")
    print(f"db_answered_250_total: {db['answered_250']}")
    print(f"db_messages_rows: {db['messages_rows']}")
    print(f"db_lost: {db['lost']}")
    print(f"db_stored_unanswered: {db['unanswered']}")
    print(f"db_check: {'FAILED: ' + '; '.join(failed) if failed else 'ok'}")
    for problem in figures.problems:
        if "(warning)" in problem:
            print(f"warning: {problem.removesuffix(' (warning)')}")
    print(f"server_peak_rss_mib: {peak_rss_kb / 1024:.1f}")
    for name, value in figures.headline:
        print(f"{name}: {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
