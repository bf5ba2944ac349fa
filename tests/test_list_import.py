"""`mta list import LIST FILE`: members from a CSV or JSON file into an existing list, as a
real subprocess on the store of each engine: a progress bar on stderr, a summary on stdout with
the malformed rows by number, a chunk per transaction with the upload events, the same result
when run again with --upsert, and clear refusals (no such list, no address column, broken
JSON, no such file)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mta.config import load as load_config
from mta.lists import Member
from mta.services import Services, open_services
from tests import storeview
from tests.conftest import DOMAIN, cli_env, run_cli, store_env

pytestmark = pytest.mark.asyncio

LIST = f"devs@{DOMAIN}"


@pytest.fixture
async def env(tmp_path: Path, store_url: str) -> dict[str, str]:
    """The CLI's environment, on a store with the domain and the list made."""
    environment = cli_env(tmp_path) | store_env(store_url)
    async with services(environment) as s:
        await s.domains.create(DOMAIN)
        await s.lists.create(LIST)
    return environment


@asynccontextmanager
async def services(environment: dict[str, str]) -> AsyncIterator[Services]:
    """The store the CLI uses, opened as the CLI opens it."""
    opened = await open_services(load_config(env=environment))
    try:
        yield opened
    finally:
        await opened.close()


async def run(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, environment, "list", "import", *args, check=False)


async def members(environment: dict[str, str]) -> dict[str, Member]:
    async with services(environment) as s:
        lst = await s.lists.get(LIST)
        assert lst is not None
        _, found = await s.lists.members_skip(lst, 0, 100_000)
        return {m.address: m for m in found}


async def events(environment: dict[str, str], kind: str) -> list[dict[str, Any]]:
    async with services(environment) as s:
        return await storeview.events(s.store, kind)


CSV = (
    "address,name,vars,subscribed\n"
    'alice@example.net,Alice,"{""age"": 30}",yes\n'
    "bob@example.net,Bob,,no\n"
    "not-an-address,Nobody,,\n"
    '"Carol C <carol@example.net>",,,\n'
    'dan@example.net,Dan,"[1, 2]",\n'
)


async def test_a_csv_file_is_imported_with_progress_and_a_summary(env, tmp_path: Path):
    path = tmp_path / "members.csv"
    path.write_text(CSV)
    done = await run(env, LIST, str(path))
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and LIST in done.stderr  # tqdm's bar, named after the list
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"{LIST}: 3 imported, 0 skipped (already members; --upsert updates them), 2 malformed;"
    )
    assert lines[1:] == [
        "  line 4: 'address' parameter is not a valid email address: not-an-address,Nobody,,",
        "  line 6: 'vars' must be a JSON object: dan@example.net,Dan,[1, 2],",
    ]
    assert await members(env) == {
        "alice@example.net": Member("alice@example.net", "Alice", {"age": 30}, True),
        "bob@example.net": Member("bob@example.net", "Bob", {}, False),
        "carol@example.net": Member("carol@example.net", "Carol C", {}, True),
    }
    [uploaded] = await events(env, "list_uploaded")
    assert (uploaded["upserted-count"], uploaded["failed-count"], uploaded["format"]) == (
        3, 2, "csv")
    assert uploaded["task-id"] in lines[0]
    assert len(await events(env, "list_member_uploaded")) == 3
    assert len(await events(env, "list_member_upload_error")) == 2


async def test_a_json_file_is_imported(env, tmp_path: Path):
    path = tmp_path / "members.json"
    path.write_text(json.dumps([
        "alice@example.net",
        "Bob <bob@example.net>",
        {"address": "carol@example.net", "name": "Carol", "vars": {"team": "x"},
         "subscribed": False},
        {"name": "no address"},
        "two@example.net, addresses@example.net",
    ], indent=2))
    done = await run(env, LIST, str(path))
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{LIST}: 3 imported, 0 skipped")
    assert ", 2 malformed;" in lines[0]
    assert lines[1:] == [
        """  entry 4: 'address' parameter is missing: {"name":"no address"}""",
        "  entry 5: 'address' parameter is not a valid email address:"
        " two@example.net, addresses@example.net",
    ]
    assert await members(env) == {
        "alice@example.net": Member("alice@example.net", "", {}, True),
        "bob@example.net": Member("bob@example.net", "Bob", {}, True),
        "carol@example.net": Member("carol@example.net", "Carol", {"team": "x"}, False),
    }
    [uploaded] = await events(env, "list_uploaded")
    assert uploaded["format"] == "json"


async def test_importing_again_with_upsert_updates_and_changes_nothing_else(env, tmp_path: Path):
    path = tmp_path / "members.csv"
    path.write_text(CSV)
    first = await run(env, LIST, str(path), "--upsert")
    assert first.stdout.startswith(f"{LIST}: 3 imported, 0 updated, 2 malformed;"), first.stdout
    before = await members(env)
    again = await run(env, LIST, str(path), "--upsert")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{LIST}: 0 imported, 3 updated, 2 malformed;"), again.stdout
    assert await members(env) == before
    without = await run(env, LIST, str(path))
    assert without.stdout.startswith(
        f"{LIST}: 0 imported, 3 skipped (already members; --upsert updates them), 2 malformed;"
    ), without.stdout
    path.write_text("address,name\nalice@example.net,Alice Changed\n")
    await run(env, LIST, str(path))
    assert (await members(env))["alice@example.net"].name == "Alice"
    await run(env, LIST, str(path), "--upsert")
    assert (await members(env))["alice@example.net"] == Member(
        "alice@example.net", "Alice Changed", {}, True)
    uploads = await events(env, "list_uploaded")
    assert [(e["is-upsert"], e["upserted-count"]) for e in uploads] == [
        (True, 3), (True, 3), (False, 0), (False, 0), (True, 1)]


async def test_a_file_of_many_chunks_is_imported_whole(env, tmp_path: Path):
    env = env | {"MTA_LISTS_UPLOAD_CHUNK": "100"}
    path = tmp_path / "many.csv"
    with path.open("w") as out:
        out.write("address\n")
        for n in range(1050):
            out.write(f"member{n:04}@example.net\n" if n % 200 else "broken\n")
    done = await run(env, LIST, str(path), "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{LIST}: 1044 imported, 0 skipped"), done.stdout
    assert ", 6 malformed;" in done.stdout
    assert len(await members(env)) == 1044
    assert len(await events(env, "list_member_uploaded")) == 1044
    [uploaded] = await events(env, "list_uploaded")
    assert (uploaded["upserted-count"], uploaded["failed-count"]) == (1044, 6)


async def test_an_unknown_list_is_refused(env, tmp_path: Path):
    path = tmp_path / "members.csv"
    path.write_text(CSV)
    done = await run(env, f"nobody@{DOMAIN}", str(path))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"mta: no such mailing list: nobody@{DOMAIN} (create it with the API first)")
    assert await members(env) == {}


async def test_a_csv_without_an_address_column_imports_nothing(env, tmp_path: Path):
    path = tmp_path / "members.csv"
    path.write_text("email,name\nalice@example.net,Alice\n")
    done = await run(env, LIST, str(path))
    assert done.returncode == 1
    assert "mta: " + str(path) + ": the CSV header row has no 'address' column" in done.stderr
    assert await members(env) == {}
    assert await events(env, "list_uploaded") == []


async def test_broken_json_stops_after_keeping_the_entries_before_it(env, tmp_path: Path):
    path = tmp_path / "members.json"
    path.write_text('["alice@example.net", "bob@example.net", {"address": ')
    done = await run(env, LIST, str(path))
    assert done.returncode == 1
    assert "entry 3 is not valid JSON" in done.stderr
    assert "the entries before it were imported" in done.stderr
    assert done.stdout.startswith(f"{LIST}: 2 imported,"), done.stdout
    assert set(await members(env)) == {"alice@example.net", "bob@example.net"}
    assert await events(env, "list_uploaded") == []  # the upload did not finish


async def test_a_missing_file_is_a_clear_error(env, tmp_path: Path):
    done = await run(env, LIST, str(tmp_path / "nothing.csv"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"mta: cannot read {tmp_path / 'nothing.csv'}: No such file or directory")


async def test_bytes_that_are_not_utf8_make_their_row_malformed(env, tmp_path: Path):
    path = tmp_path / "members.csv"
    path.write_bytes(b"address,name\nalice@example.net,Al\xe9\n\xff@example.net,X\nbob@example.net,Bob\n")
    done = await run(env, LIST, str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "  line 2: the entry is not valid UTF-8: alice@example.net,Al\ufffd",
        "  line 3: the entry is not valid UTF-8: \ufffd@example.net,X",
    ]
    assert set(await members(env)) == {"bob@example.net"}
