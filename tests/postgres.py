"""A real PostgreSQL for tests and benches: the Debian `postgresql` package's binaries, a
cluster made with `initdb` in a temp dir and started with `pg_ctl` as an unprivileged user, on a
free loopback port. No external service; `.ci/run` installs the package and nothing else.

    python -m tests.postgres   # start one and print its URL (for trying nodes by hand)
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "mta"
TEMPLATE = "mta_migrated"
SPARES = 3  # migrated databases kept ready by a background thread
PSQL_ATTEMPTS = 5  # tries to start psql


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
    _spares: queue.Queue[str] = field(default_factory=lambda: queue.Queue(SPARES))
    _drops: queue.Queue[str] = field(default_factory=queue.Queue)
    _maker: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _psql(self, sql: str) -> None:
        # Starting the child can fail for a moment on a loaded box (CI once saw EFAULT from
        # exec in the spares thread, which then left every later test without a database).
        for attempt in range(PSQL_ATTEMPTS):
            try:
                subprocess.run(
                    [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.url(), "-c",
                     sql],
                    check=True, capture_output=True, timeout=60,
                )
                return
            except OSError:
                if attempt == PSQL_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self._psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def migrated_database(self) -> str:
        """A fresh database already at the current schema, with no rows; its URL. A copy of a
        template migrated once per cluster (CREATE DATABASE ... TEMPLATE), made ahead of time
        by a background thread: about 0.5 s less per test than creating and migrating one."""
        if self._maker is None:
            self._psql(f"CREATE DATABASE {TEMPLATE}")
            failed: list[BaseException] = []

            def migrate() -> None:  # a thread of its own: the caller may be in an event loop
                try:
                    asyncio.run(_migrate(self.url(TEMPLATE)))
                except BaseException as exc:
                    failed.append(exc)

            migrating = threading.Thread(target=migrate)
            migrating.start()
            migrating.join()
            if failed:
                self._psql(f"DROP DATABASE {TEMPLATE}")
                raise failed[0]
            self._maker = threading.Thread(target=self._make_spares, name="pg-spares",
                                           daemon=True)
            self._maker.start()
        deadline = time.monotonic() + 120
        while True:
            try:
                return self.url(self._spares.get(timeout=0.1))
            except queue.Empty:
                if not self._maker.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        "no spare database: see the pg-spares thread's error"
                    ) from None

    def release(self, url: str) -> None:
        """The database behind `url` is no longer needed: dropped in the background."""
        self._drops.put(url.rsplit("/", 1)[1])
        if self._maker is None:
            self._psql(f"DROP DATABASE IF EXISTS {self._drops.get()} WITH (FORCE)")

    def _make_spares(self) -> None:
        while not self._stopping.is_set():
            try:  # making spares comes first; used databases are dropped while none is needed
                name = "t_" + uuid.uuid4().hex[:16]
                # PostgreSQL 15's default strategy (WAL_LOG) copies without a checkpoint
                self._psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
                while not self._stopping.is_set():
                    try:
                        self._spares.put(name, timeout=0.05)
                        break
                    except queue.Full:
                        while not self._drops.empty():
                            self._psql(
                                f"DROP DATABASE IF EXISTS {self._drops.get()} WITH (FORCE)"
                            )
            except subprocess.SubprocessError:
                if not self._stopping.is_set():
                    raise

    def stop(self) -> None:
        self._stopping.set()
        if self._maker is not None:
            self._maker.join(timeout=10)
        subprocess.run(
            [*_as_user(), str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
             "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


async def _migrate(url: str) -> None:
    from mta.store.postgres import PostgresStore

    store = await PostgresStore.open(url, node_id="template", pool_size=2,
                                     statement_timeout_s=120)
    await store.close()


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
