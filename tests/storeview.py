"""Views of what the store really holds, read through the store's own readers
(`fetchall`/`fetchone`), so the same checks run on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson

from mta.accept.template import Personal, Template
from mta.config import Config
from mta.store import Store, open_store

TABLES = ("messages", "recipients", "events", "inbound")


async def count(store: Store, table: str, where: str = "", params: tuple[Any, ...] = ()) -> int:
    row = await store.fetchone(f"SELECT count(*) AS n FROM {table} {where}", params)
    assert row is not None
    return int(row["n"])


async def counts(store: Store) -> dict[str, int]:
    return {table: await count(store, table) for table in TABLES}


async def recipients(store: Store, message_id: str) -> list[dict[str, Any]]:
    """Each recipient row with `mime`, what is sent to that recipient: the stored message, or
    for a batch send its template rendered with the recipient's values, as the outbound queue
    renders it."""
    rows = await store.fetchall(
        "SELECT r.address, r.state, r.due_at, coalesce(r.mime, m.mime) AS mime,"
        " r.user_variables, r.personal, m.options, m.sender FROM recipients r"
        " JOIN messages m ON m.key = r.message_key WHERE m.message_id = ? ORDER BY r.id",
        (message_id,),
    )
    out = []
    for row in rows:
        found = dict(row)
        for column in ("mime", "user_variables", "personal", "options"):
            if found[column] is not None:
                found[column] = bytes(found[column])
        if orjson.loads(found["options"]).get("template"):
            personal = Personal.load(found["personal"])
            found["mime"] = Template.load(found["mime"]).render(personal)
        out.append(found)
    return out


async def message_for(store: Store, message_id: str, address: str) -> EmailMessage:
    """The exact bytes that go to one recipient, parsed."""
    for row in await recipients(store, message_id):
        if row["address"].lower() == address.lower():
            return parse(row["mime"])
    raise AssertionError(f"{address} is not a recipient of {message_id}")


def parse(mime: bytes) -> EmailMessage:
    return email.message_from_bytes(mime, policy=email.policy.default)  # type: ignore[return-value]


async def events(store: Store, kind: str | None = None) -> list[dict[str, Any]]:
    rows = await store.fetchall("SELECT payload FROM events ORDER BY seq")
    found = [orjson.loads(bytes(r["payload"])) for r in rows]
    return [e for e in found if kind is None or e["event"] == kind]


async def options(store: Store, message_id: str) -> dict[str, Any]:
    row = await store.fetchone("SELECT options FROM messages WHERE message_id = ?", (message_id,))
    assert row is not None, f"no message {message_id}"
    return orjson.loads(bytes(row["options"]))


async def size(store: Store) -> int:
    """Bytes the store takes: the SQLite file and its write-ahead log, or the PostgreSQL
    database (what a big write makes grow)."""
    if store.dialect == "postgresql":
        row = await store.fetchone("SELECT pg_database_size(current_database()) AS n")
        assert row is not None
        return int(row["n"])
    path = store.path  # type: ignore[attr-defined]
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


@asynccontextmanager
async def reopened(config: Config) -> AsyncIterator[Store]:
    """Another store on a server's database (the one it had is closed once it stops), as the
    CLI or another node opens it."""
    store = await open_store(config)
    try:
        yield store
    finally:
        await store.close()
