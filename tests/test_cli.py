"""The `mta` command: admin commands working against a running server's store, and `mta serve`
as a process (config errors, SIGTERM). Everything runs as real subprocesses, on the SQLite
default; the tests of admin changes reaching a running server and of SIGTERM run on PostgreSQL
too (a store_url parameter)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests import postgres, storeview
from tests.conftest import Process, cli_env, free_port, run_cli, store_env

REPO = Path(__file__).resolve().parents[1]
KEY_RE = re.compile(r"key-[0-9a-f]{32}")


async def cli(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, env, *args, check=check)


async def start(server_process: Callable[..., Process], store_url: str = "") -> Process:
    """`mta serve` on the SQLite default, or on `store_url`'s PostgreSQL database."""
    return await asyncio.to_thread(server_process, **store_env(store_url))


async def new_key(env: dict[str, str], *args: str) -> str:
    out = (await cli(env, "key", "create", *args)).stdout
    assert out.count("\n") == 1 and KEY_RE.fullmatch(out.strip()), out
    return out.strip()


async def request(
    url: str, key: str, method: str, path: str, data: dict[str, str] | None = None
) -> tuple[int, str]:
    headers = {"Authorization": aiohttp.encode_basic_auth("api", key)}
    async with (
        aiohttp.ClientSession(url, headers=headers) as session,
        session.request(method, path, data=data) as resp,
    ):
        return resp.status, await resp.text()


async def send(proc: Process, key: str, domain: str, to: str) -> tuple[int, str]:
    data = {"from": f"sender@{domain}", "to": to, "subject": "Hi", "text": "Body"}
    return await request(proc.url, key, "POST", f"/v3/{domain}/messages", data)


def records(stdout: str) -> dict[tuple[str, str], str]:
    """(name, type) -> value from the record lines `mta domain add` prints."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if line.startswith("  ") and len(parts) == 3:
            found[(parts[0], parts[1])] = parts[2]
    return found


# -- domains --------------------------------------------------------------------------------------


async def test_domain_add_prints_spf_dkim_tracking_and_mx_records(
    tmp_path: Path, server_process: Callable[[], Process]
):
    env = cli_env(tmp_path)
    result = await cli(env, "domain", "add", "Cli.Example.Test")
    printed = records(result.stdout)
    assert printed[("cli.example.test", "TXT")] == "v=spf1 a:localhost ~all"
    dkim = printed[("mta._domainkey.cli.example.test", "TXT")]
    assert re.fullmatch(r"k=rsa; p=[A-Za-z0-9+/]+=*", dkim), dkim
    assert printed[("email.cli.example.test", "CNAME")] == "localhost"
    assert printed[("cli.example.test", "MX")] == "10 localhost"
    assert len(printed) == 4

    proc = await start(server_process)
    key = await new_key(proc.env)
    status, body = await request(proc.url, key, "GET", "/v3/domains/cli.example.test")
    assert status == 200
    assert dkim in body  # the API tells the same DKIM key the CLI printed

    again = await cli(env, "domain", "add", "cli.example.test", check=False)
    assert again.returncode != 0
    assert again.stderr.strip() == "mta: This domain name is already taken"


async def test_signing_key_prints_the_account_key_and_rotate_replaces_it(tmp_path: Path):
    env = cli_env(tmp_path)
    first = (await cli(env, "signing-key")).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert (await cli(env, "signing-key")).stdout.strip() == first
    rotated = (await cli(env, "signing-key", "--rotate")).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", rotated) and rotated != first
    assert (await cli(env, "signing-key")).stdout.strip() == rotated


async def test_domain_remove_while_server_runs_makes_sends_404(
    server_process: Callable[[], Process], store_url: str
):
    proc = await start(server_process, store_url)
    await cli(proc.env, "domain", "add", "gone.example.test")
    key = await new_key(proc.env)
    assert (await send(proc, key, "gone.example.test", "alice@example.net"))[0] == 200
    result = await cli(proc.env, "domain", "remove", "gone.example.test")
    assert result.stdout.strip() == "removed gone.example.test"
    status, body = await send(proc, key, "gone.example.test", "alice@example.net")
    assert status == 404
    assert body == '{"message":"Domain not found: gone.example.test"}'
    missing = await cli(proc.env, "domain", "remove", "gone.example.test", check=False)
    assert missing.returncode != 0
    assert "gone.example.test" in missing.stderr


async def test_sandbox_domain_sends_only_to_authorized_recipients(
    server_process: Callable[[], Process],
):
    proc = await start(server_process)
    await cli(proc.env, "domain", "add", "--sandbox", "sandbox.example.test")
    await cli(proc.env, "domain", "authorize", "sandbox.example.test", "alice@example.net")
    key = await new_key(proc.env)
    status, body = await send(proc, key, "sandbox.example.test", "bob@example.net")
    assert status == 400
    assert "authorized recipients" in body and "bob@example.net" in body
    assert (await send(proc, key, "sandbox.example.test", "Alice@Example.net"))[0] == 200


async def test_sandbox_domain_refuses_a_sixth_authorized_recipient(tmp_path: Path):
    env = cli_env(tmp_path)
    await cli(env, "domain", "add", "--sandbox", "sandbox.example.test")
    await asyncio.gather(  # at once: the limit must hold for concurrent commands too
        *(
            cli(env, "domain", "authorize", "sandbox.example.test", f"r{n}@example.net")
            for n in range(5)
        )
    )
    sixth = await cli(
        env, "domain", "authorize", "sandbox.example.test", "r5@example.net", check=False
    )
    assert sixth.returncode != 0
    assert sixth.stderr.strip() == "mta: a sandbox domain has at most 5 authorized recipients"
    again = await cli(env, "domain", "authorize", "sandbox.example.test", "r0@example.net")
    assert again.returncode == 0


# -- keys -----------------------------------------------------------------------------------------


async def test_key_create_prints_only_a_key_that_works_over_http(
    server_process: Callable[[], Process],
):
    proc = await start(server_process)
    key = await new_key(proc.env, "--description", "deploy")
    status, body = await request(proc.url, key, "GET", "/v4/domains")
    assert status == 200
    assert '"total_count":0' in body
    assert (await request(proc.url, key[:-1] + "x", "GET", "/v4/domains"))[0] == 401


async def test_key_list_never_prints_secrets(tmp_path: Path):
    env = cli_env(tmp_path)
    await cli(env, "domain", "add", "keys.example.test")
    primary = await new_key(env, "--description", "deploy")
    sending = await new_key(env, "--domain", "keys.example.test")
    listing = (await cli(env, "key", "list")).stdout
    lines = listing.splitlines()
    assert len(lines) == 2
    assert "primary" in lines[0] and "deploy" in lines[0]
    assert "sending key for keys.example.test" in lines[1]
    for secret in (primary, sending):
        assert secret not in listing
        assert secret[4:] not in listing
    assert not KEY_RE.search(listing)


async def test_key_revoke_makes_the_key_fail_at_once_on_the_running_server(
    server_process: Callable[[], Process], store_url: str
):
    proc = await start(server_process, store_url)
    kept, revoked = await asyncio.gather(
        new_key(proc.env, "--description", "kept"), new_key(proc.env, "--description", "revoked")
    )
    for key in (kept, revoked):
        assert (await request(proc.url, key, "GET", "/v3/domains"))[0] == 200
    listing = (await cli(proc.env, "key", "list")).stdout.splitlines()
    (key_id,) = [line.split("\t")[0] for line in listing if line.endswith("\trevoked")]
    result = await cli(proc.env, "key", "revoke", key_id)
    assert result.stdout.strip() == f"revoked {key_id}"
    assert await request(proc.url, revoked, "GET", "/v3/domains") == (401, "Forbidden")
    assert (await request(proc.url, kept, "GET", "/v3/domains"))[0] == 200
    fields = [line.split("\t") for line in (await cli(proc.env, "key", "list")).stdout.splitlines()]
    states = {f[-1]: f[2].split()[0] for f in fields}
    assert states == {"kept": "active", "revoked": "revoked"}
    again = await cli(proc.env, "key", "revoke", key_id, check=False)
    assert again.returncode != 0


# -- the server process ---------------------------------------------------------------------------


async def serve_until_exit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`mta serve` expected to give up at once; one that hangs fails the test instead."""
    try:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mta", "serve", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"mta serve did not exit; stderr: {exc.stderr!r}") from None


async def assert_refuses_to_start(env: dict[str, str], *args: str, naming: str) -> None:
    result = await serve_until_exit(env, *args)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert naming in lines[0]


async def test_serve_with_a_bad_config_value_exits_with_one_line_naming_the_key(tmp_path: Path):
    env = cli_env(tmp_path) | {"MTA_API_LISTEN": "nonsense"}
    await assert_refuses_to_start(env, naming="api.listen")
    env = cli_env(tmp_path) | {"MTA_EVENTS_DEFAULT_LIMIT": "lots"}
    await assert_refuses_to_start(env, naming="MTA_EVENTS_DEFAULT_LIMIT")
    env = cli_env(tmp_path) | {"MTA_DNS_NAMESERVERS": '["127.0.0.1:fifty-three"]'}
    await assert_refuses_to_start(env, naming="dns.nameservers")


async def test_serve_with_an_unknown_key_in_the_config_file_exits_naming_it(tmp_path: Path):
    config = tmp_path / "mta.toml"
    config.write_text('[api]\nlisten = "127.0.0.1:0"\nlisten_port = 8080\n')
    await assert_refuses_to_start(
        cli_env(tmp_path), "--config", str(config), naming="api.listen_port"
    )
    env = cli_env(tmp_path) | {"MTA_CONFIG": str(config)}
    await assert_refuses_to_start(env, naming="api.listen_port")


async def test_serve_on_a_port_already_in_use_exits_non_zero_naming_the_address(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await serve_until_exit(cli_env(tmp_path, port))
    assert result.returncode != 0
    last = result.stderr.splitlines()[-1]
    assert last.startswith("mta: cannot start:") and str(port) in last


async def test_an_unusable_store_file_is_one_line_naming_it_not_a_traceback(tmp_path: Path):
    env = cli_env(tmp_path) | {"MTA_STORE_PATH": str(tmp_path)}  # a directory, not a file
    for command in (("serve",), ("key", "list")):
        result = await cli(env, *command, check=False)
        assert result.returncode != 0
        assert result.stderr.splitlines() == [
            f"mta: cannot open the store {tmp_path}: unable to open database file"
        ]


async def test_an_unreachable_or_missing_postgresql_store_is_one_line_naming_it(
    tmp_path: Path, postgres_cluster: postgres.Cluster
):
    refused = f"postgresql://mta@127.0.0.1:{free_port()}/mta"  # nothing listens there
    missing = postgres_cluster.url("no_such_database")
    for url, named in ((refused, refused.rsplit("@", 1)[1]), (missing, "no_such_database")):
        env = cli_env(tmp_path) | store_env(url)
        for command in (("serve",), ("key", "list")):
            result = await cli(env, *command, check=False)
            assert result.returncode != 0
            lines = result.stderr.splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith("mta: cannot open the store") and named in lines[0], lines


async def test_sigterm_stops_the_server_cleanly_and_keeps_what_was_accepted(
    server_process: Callable[[], Process], store_url: str
):
    proc = await start(server_process, store_url)
    await cli(proc.env, "domain", "add", "mg.example.test")
    key = await new_key(proc.env)
    status, body = await send(proc, key, "mg.example.test", "alice@example.net")
    assert status == 200
    proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 20) == 0
    found = re.search(r'"id":"<([^>]+)>"', body)
    assert found
    async with storeview.reopened(proc.config()) as store:
        queued = await storeview.recipients(store, found.group(1))
        copy = await storeview.message_for(store, found.group(1), "alice@example.net")
        accepted = await storeview.events(store, "accepted")
    assert [(r["address"], r["state"]) for r in queued] == [("alice@example.net", "queued")]
    assert copy["Subject"] == "Hi"
    assert [e["message"]["headers"]["message-id"] for e in accepted] == [found.group(1)]


def test_config_prints_toml_identical_to_the_shipped_config_file(tmp_path: Path):
    result = run_cli(cli_env(tmp_path), "config")
    shipped = (REPO / "config" / "mta.toml").read_text(encoding="utf-8")
    assert result.stdout == shipped
    assert tomllib.loads(result.stdout)["api"]["listen"] == "127.0.0.1:8080"
