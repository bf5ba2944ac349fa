"""Read-only views of the SQLite file, so tests check what was really stored."""

from __future__ import annotations

import email
import email.policy
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson

from mta.accept.template import Personal, Template


def connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def counts(db: Path) -> dict[str, int]:
    with connect(db) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("messages", "recipients", "events", "inbound")
        }


def recipients(db: Path, message_id: str) -> list[dict[str, Any]]:
    """Each recipient row with `mime`, what is sent to that recipient: the stored message, or
    for a batch send its template rendered with the recipient's values, as the outbound queue
    renders it."""
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT r.address, r.state, r.due_at, coalesce(r.mime, m.mime) AS mime,"
            " r.user_variables, r.personal, m.options, m.sender FROM recipients r"
            " JOIN messages m ON m.key = r.message_key WHERE m.message_id = ? ORDER BY r.id",
            (message_id,),
        ).fetchall()
    out = []
    for row in rows:
        found = dict(row)
        if orjson.loads(found["options"]).get("template"):
            personal = Personal.load(found["personal"])
            found["mime"] = Template.load(found["mime"]).render(personal)
        out.append(found)
    return out


def message_for(db: Path, message_id: str, address: str) -> EmailMessage:
    """The exact bytes that go to one recipient, parsed."""
    for row in recipients(db, message_id):
        if row["address"].lower() == address.lower():
            return parse(row["mime"])
    raise AssertionError(f"{address} is not a recipient of {message_id}")


def parse(mime: bytes) -> EmailMessage:
    return email.message_from_bytes(mime, policy=email.policy.default)  # type: ignore[return-value]


def events(db: Path, kind: str | None = None) -> list[dict[str, Any]]:
    with connect(db) as conn:
        rows = conn.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    found = [orjson.loads(r[0]) for r in rows]
    return [e for e in found if kind is None or e["event"] == kind]


def options(db: Path, message_id: str) -> dict[str, Any]:
    with connect(db) as conn:
        row = conn.execute(
            "SELECT options FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
    return orjson.loads(row[0])
