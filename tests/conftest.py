"""Shared fixtures: a real server on an ephemeral loopback port, with a real store, and a real
HTTP client authenticated with a real API key. Every test that uses a store runs on both
engines (the `store_url` parameter): a SQLite file in a temporary directory, and a fresh
database of a PostgreSQL cluster the session starts (tests/postgres.py). Tests read what was
stored through the store's own readers (tests/storeview.py), so one assertion fits both."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from mta.app import Server
from mta.config import Config
from mta.config import load as load_config
from mta.smtp.tls import certificate_paths
from mta.store import Store, open_store
from tests import postgres
from tests.capture import Capture, start_capture

if TYPE_CHECKING:
    from tests.smtp_clients import Clients

DOMAIN = "mg.example.test"
# MTA_TEST_ENGINES=sqlite (or postgresql) runs one engine only, for a quicker local loop
ENGINES = os.environ.get("MTA_TEST_ENGINES", "sqlite,postgresql").split(",")


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One self-signed certificate for every test server (making one costs ~0.1 s)."""
    config = Config()
    config.server.data_dir = str(tmp_path_factory.mktemp("tls"))
    config.server.hostname = "mx.mta.test"
    cert, key = certificate_paths(config)
    return str(cert), str(key)


def make_config(tmp_path: Path, tls: tuple[str, str] | None = None, **overrides: Any) -> Config:
    config = Config()
    config.server.data_dir = str(tmp_path / "var")
    config.server.hostname = "mx.mta.test"
    config.api.listen = "127.0.0.1:0"
    config.smtp.submission = "127.0.0.1:0"
    config.smtp.submission_tls = "127.0.0.1:0"
    config.smtp.submission_alt = "127.0.0.1:0"
    config.smtp.mx = "127.0.0.1:0"
    if tls is not None:
        config.smtp.tls_cert, config.smtp.tls_key = tls
    config.dns.only_answers = True
    config.inbound.forward_allow = ["127.0.0.0/8", "::1/128"]  # route posts go to test apps
    config.outbound.enabled = False  # accept-path tests look at what stays queued
    config.domains.dkim_key_bits = 1024  # fast key generation; 2048 is tested on its own
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return config


def auth_header(key: str) -> dict[str, str]:
    token = base64.b64encode(f"api:{key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Running:
    server: Server
    url: str
    key: str
    domain: str

    @property
    def services(self) -> Any:
        return self.server.services

    def session(self, key: str | None = None) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            self.url, headers=auth_header(key if key is not None else self.key)
        )


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """One real PostgreSQL for the session, started on first use; a fresh database per test."""
    if not postgres.available():
        pytest.skip("PostgreSQL is not installed (.ci/run installs the Debian package)")
    cluster = postgres.start()
    yield cluster
    cluster.stop()


def url_for(request: pytest.FixtureRequest, engine: str) -> str:
    """"" (the embedded SQLite file) for sqlite, else the URL of a fresh PostgreSQL database at
    the current schema, dropped when the requesting fixture's scope ends."""
    if engine == "sqlite":
        return ""
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.migrated_database()
    request.addfinalizer(lambda: cluster.release(url))
    return url


@pytest.fixture(params=ENGINES)
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store-touching test runs on both engines: "" is the embedded SQLite file, else
    the URL of a fresh PostgreSQL database."""
    return url_for(request, request.param)


@pytest.fixture(params=ENGINES)
def empty_store_url(request: pytest.FixtureRequest) -> str:
    """store_url of a database with no schema yet (for tests of migrations)."""
    if request.param == "sqlite":
        return ""
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@pytest.fixture(scope="module", params=ENGINES)
def module_engine(request: pytest.FixtureRequest) -> str:
    """The engine of servers shared by a module's tests (url_for gives each its database)."""
    return str(request.param)


@pytest.fixture
async def store(tmp_path: Path, store_url: str) -> AsyncIterator[Store]:
    """A migrated store of the engine under test, without a server."""
    opened = await open_store(make_config(tmp_path, store__url=store_url))
    yield opened
    await opened.close()


@pytest.fixture
async def start_server(
    tmp_path: Path, tls_pair: tuple[str, str], store_url: str
) -> AsyncIterator[Callable[..., Any]]:
    """Start a server (config overrides as section__key=value); stopped after the test."""
    started: list[Server] = []

    async def start(**overrides: Any) -> Running:
        overrides.setdefault("store__url", store_url)
        server = Server(make_config(tmp_path, tls_pair, **overrides))
        await server.start()
        started.append(server)
        assert server.services is not None
        await server.services.domains.create(DOMAIN)
        _, key = await server.services.keys.create()
        return Running(server, f"http://127.0.0.1:{server.api_port}", key, DOMAIN)

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def mx() -> AsyncIterator[Capture]:
    """A capture SMTP server standing in for a destination's MX (dns.static_mx points at it)."""
    capture = await start_capture()
    yield capture
    await capture.close()


@pytest.fixture
async def running(start_server: Callable[..., Any]) -> Running:
    return await start_server()


@pytest.fixture
async def api(running: Running) -> AsyncIterator[aiohttp.ClientSession]:
    async with running.session() as session:
        yield session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    """`mta serve` in a child process, for tests about the process itself."""

    proc: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, check=check)

    def config(self) -> Config:
        """The process's configuration (for opening its store from the test)."""
        return load_config(env=self.env)


def store_env(store_url: str) -> dict[str, str]:
    """Environment selecting the store for `mta` subprocesses (none: the SQLite default)."""
    return {"MTA_STORE_URL": store_url} if store_url else {}


def cli_env(tmp_path: Path, port: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MTA_SERVER_DATA_DIR": str(tmp_path / "var"),
            "MTA_API_LISTEN": f"127.0.0.1:{port}",
            "MTA_SMTP_SUBMISSION": "127.0.0.1:0",
            "MTA_SMTP_SUBMISSION_TLS": "127.0.0.1:0",
            "MTA_SMTP_SUBMISSION_ALT": "127.0.0.1:0",
            "MTA_SMTP_MX": "127.0.0.1:0",
            "MTA_DNS_ONLY_ANSWERS": "true",
            "MTA_DOMAINS_DKIM_KEY_BITS": "1024",
            "MTA_OUTBOUND_ENABLED": "false",
        }
    )
    return env


def run_cli(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mta", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("server did not start listening")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[[], Process]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> Process:
        port = free_port()
        env = cli_env(tmp_path, port) | extra_env
        log = open(tmp_path / f"serve-{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "mta", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        procs.append(proc)
        wait_for_port(port, proc)
        return Process(proc, f"http://127.0.0.1:{port}", env)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def spamd_binary() -> str | None:
    found = shutil.which("spamd")
    if found is None and os.access("/usr/sbin/spamd", os.X_OK):
        found = "/usr/sbin/spamd"
    return found


@pytest.fixture(scope="session")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real spamd on a free loopback port, for the whole run (starting takes a moment):
    local rules only (no network tests), no per-user config."""
    binary = spamd_binary()
    if binary is None:
        pytest.skip("spamd is not installed (apt-get install spamassassin spamd)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("spamd") / "spamd.log"
    command = [
        binary,
        f"--listen=127.0.0.1:{port}",
        "--allowed-ips=127.0.0.1",
        "--nouser-config",
        "--local",
        "--max-children=1",
        "--syslog=stderr",
        "--cf=use_bayes 0",  # nothing to learn, and nobody's home is not writable
    ]
    if os.geteuid() == 0:
        command.append("--username=nobody")  # spamd will not check mail as root
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"spamd did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in sock.recv(100)
    except OSError:
        return False


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """SMTP clients (tests/smtp_clients.py), closed at the end of the test."""
    from tests.smtp_clients import Clients

    opened = Clients()
    yield opened
    opened.close()


@pytest.fixture
def mail_server(start_server: Callable[..., Any]) -> Callable[..., Any]:
    """Start a server (config overrides as section__key=value) with the SMTP credential
    alice@mg.example.test."""

    from tests.smtp_clients import PASSWORD

    async def start(**overrides: Any) -> Running:
        running = await start_server(**overrides)
        await running.services.credentials.create(DOMAIN, "alice", PASSWORD)
        return running

    return start


@pytest.fixture
async def mail(mail_server: Callable[..., Any]) -> Running:
    return await mail_server()
