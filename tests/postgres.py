"""A real PostgreSQL for tests and benches: the Debian `postgresql` package's binaries, a
cluster made with `initdb` in a temp dir and started with `pg_ctl` as an unprivileged user, on a
free loopback port. No external service; `.ci/run` installs the package and nothing else.

    python -m tests.postgres   # start one and print its URL (for trying nodes by hand)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "mta"


def _binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def available() -> bool:
    return _binaries() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as `postgres` (or nobody) then."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


@dataclass
class Cluster:
    root: Path
    port: int
    bin: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _psql(self, sql: str) -> None:
        subprocess.run(
            [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.url(), "-c", sql],
            check=True, capture_output=True, timeout=60,
        )

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self._psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*_as_user(), str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
             "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> Cluster:
    binaries = _binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`)")
    root = Path(tempfile.mkdtemp(prefix="mta-pg-"))
    root.chmod(0o755)
    data = root / "data"
    sockets = root / "run"
    sockets.mkdir()
    runner = _as_user()
    if runner:
        shutil.chown(root, user=runner[2])
        shutil.chown(sockets, user=runner[2])
    subprocess.run(
        [*runner, str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER,
         "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        check=True, capture_output=True, timeout=120,
    )
    port = _free_port()
    # fsync stays on: durable-before-acknowledged is tested against the real thing
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets}"
               " -c max_connections=300 -c shared_buffers=64MB")
    subprocess.run(
        [*runner, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
         "-o", options, "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=90,
    )
    cluster = Cluster(root, port, binaries)
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster._psql("SELECT 1")
            return cluster
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    cluster = start()
    print(cluster.new_database(), flush=True)
    print(f"(cluster in {cluster.root}; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
