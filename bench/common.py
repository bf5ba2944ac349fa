"""Shared by the bench commands: a `mta serve` child process in a throw-away data directory.

Loopback only. The server runs with the default configuration (synchronous=FULL, the default
commit window) unless the caller passes extra MTA_* variables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DOMAIN = "mg.bench.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("server did not start listening")


def proc_status(pid: int, field: str) -> int:
    """A kB figure from /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class BenchServer:
    proc: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mta.db"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mta", *args],
            env=self.env,
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mta {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def setup_sending(self, domain: str = DOMAIN) -> str:
        """Create the domain and a primary API key through the CLI; return the key."""
        self.cli("domain", "add", domain)
        return self.cli("key", "create", "--description", "bench").strip().splitlines()[-1]

    def peak_rss_kb(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def query(self, sql: str) -> int:
        """One integer from the database (read-only, beside the running server: WAL)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (clean shutdown: in-flight commits finish), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def bench_server(
    *,
    uvloop: bool = False,
    stats: Path | None = None,
    extra_env: dict[str, str] | None = None,
    keep: bool = False,
) -> Iterator[BenchServer]:
    """Start `python -m mta serve` on a free loopback port; with `uvloop` or `stats`, the
    bench/serve.py wrapper (same CLI, uvloop policy and/or group-commit statistics; also
    when `extra_env` sets MTA_BENCH_SWITCH_INTERVAL or MTA_BENCH_LOOP_LAG)."""
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "MTA_SERVER_DATA_DIR": str(tmp / "var"),
            "MTA_API_LISTEN": f"127.0.0.1:{port}",
            "MTA_SERVER_LOG_LEVEL": "warning",
            "MTA_DNS_ONLY_ANSWERS": "true",  # never look anything up off this machine
        }
    )
    env.update(extra_env or {})
    if uvloop:
        env["MTA_BENCH_UVLOOP"] = "1"
    if stats is not None:
        env["MTA_BENCH_STATS"] = str(stats)
    cmd = (
        [sys.executable, str(BENCH_DIR / "serve.py")]
        if uvloop or stats is not None or "MTA_BENCH_SWITCH_INTERVAL" in env
        or "MTA_BENCH_LOOP_LAG" in env
        else [sys.executable, "-m", "mta", "serve"]
    )
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        # cwd: the temporary directory, so that `-m mta` imports the installed package (or
        # PYTHONPATH), never a checkout the bench happens to be started from
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    server = BenchServer(proc, port, env, tmp / "var", log_path)
    try:
        wait_for_port(port, proc)
        yield server
    finally:
        server.stop()
        if keep:
            print(f"data kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def parse_load_lines(text: str) -> dict[str, str]:
    """The `load_name: value` lines a load generator prints, as {name: value}."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name.startswith("load_"):
            out[name[5:]] = value.strip()
    return out
