"""The data directory, the database (DKIM private keys, signing keys, every message) and the
generated TLS key are the owner's alone, whatever the umask `mta` is started under: another
local user must not read them. Real `mta serve` processes under umask 022."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Process, free_port, run_cli, wait_for_port


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual login-shell umask: files it creates are world-readable unless made otherwise."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def start(server_process: Callable[..., Process], **env: str) -> Process:
    """`mta serve`, once its SMTP listeners (and so their TLS key) are up too."""
    port = free_port()
    proc = await asyncio.to_thread(
        server_process, MTA_SMTP_SUBMISSION=f"127.0.0.1:{port}", **env
    )
    await asyncio.to_thread(wait_for_port, port, proc.proc)
    return proc


async def stop(proc: Process) -> None:
    proc.proc.terminate()
    await asyncio.to_thread(proc.proc.wait)


async def test_a_first_start_under_umask_022_makes_store_and_tls_key_owner_only(
    tmp_path: Path, server_process: Callable[..., Process]
):
    proc = await start(server_process)
    await asyncio.to_thread(run_cli, proc.env, "domain", "add", "mg.example.test")
    var = tmp_path / "var"
    assert mode(var) == 0o700
    for name in ("mta.db", "mta.db-wal", "mta.db-shm", "smtp-selfsigned.key"):
        assert mode(var / name) == 0o600, name


async def test_a_store_outside_the_data_dir_gets_a_private_new_directory(
    tmp_path: Path, server_process: Callable[..., Process]
):
    db = tmp_path / "elsewhere" / "store" / "mta.db"
    await start(server_process, MTA_STORE_PATH=str(db))
    assert mode(db.parent) == 0o700
    assert mode(db) == 0o600


async def test_a_data_dir_store_and_tls_key_left_readable_are_tightened_at_start_with_a_warning(
    tmp_path: Path, server_process: Callable[..., Process]
):
    await stop(await start(server_process))
    var = tmp_path / "var"
    var.chmod(0o755)  # as `install -d` or an older version left them
    for name in ("mta.db", "smtp-selfsigned.key"):
        (var / name).chmod(0o644)

    await start(server_process)
    assert mode(var) == 0o700
    assert mode(var / "mta.db") == 0o600
    assert mode(var / "smtp-selfsigned.key") == 0o600
    log = (tmp_path / "serve-1.log").read_text()
    for path, old, new in ((var, "0755", "0700"), (var / "mta.db", "0644", "0600"),
                           (var / "smtp-selfsigned.key", "0644", "0600")):
        assert f"{path} was mode {old}, open to other local users: tightened to {new}" in log
