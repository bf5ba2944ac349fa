"""`mta store copy`: move an embedded SQLite store into an empty PostgreSQL database.

Everything a user keeps moves: domains and their DKIM keys, API keys, SMTP credentials,
routes, suppressions, stored and queued mail, events, jobs, webhooks, account settings (the
signing key), stats counters, tags and campaigns. Work that only describes a
running node (connection slots, pace, AUTH throttles, periodic runs) starts afresh, and
leases held when the copy was taken are dropped so the new nodes deliver that mail at once.
The source server must be stopped (its node lock is taken for the copy), so nothing changes
under the copy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from mta.config import ConfigError
from mta.store.postgres import PostgresStore
from mta.store.sqlite import SqliteStore

CHUNK_ROWS = 2000
# described by the running nodes, not by the user's data
TRANSIENT = frozenset(
    {"site_slots", "site_pace", "auth_failures", "auth_holds", "periodic_runs", "admin_version"}
)
# made by the migrations themselves, so the target has them already
SCHEMA_DATA = frozenset({"webhook_triggers"})
# parents before children, then the rest in name order (no foreign keys: order is courtesy)
FIRST = ("domains", "authorized_recipients", "api_keys", "credentials", "routes",
         "messages", "recipients", "inbound_mime", "inbound")
# after events and jobs: the target's events trigger queues a webhook job for each event copied
# while a matching webhook exists, and the copied history was posted (or is queued) already
LAST = ("webhooks",)


@dataclass
class Copied:
    table: str
    rows: int


Progress = Callable[[str, int, int], None]


def progress_bar(table: str, done: int, total: int) -> None:
    """One line per table on stderr, redrawn in place: table, a bar, rows copied."""
    width = 30
    filled = width if total == 0 else width * done // total
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{table:<24} [{'#' * filled}{'.' * (width - filled)}]"
                     f" {done:>10,}/{total:,}{end}")
    sys.stderr.flush()


async def copy_store(
    source: SqliteStore, target: PostgresStore, progress: Progress = progress_bar
) -> list[Copied]:
    await source.hold_node_name()  # no server delivers from the file while it is copied
    tables = await _tables(source)
    if not await target.is_empty():
        raise ConfigError("the PostgreSQL database already holds mta data: copy into an empty one")
    copied = []
    for table in tables:
        target_columns = await target.column_types(table)
        if not target_columns:
            continue
        described = await source.fetchall(f"SELECT name FROM pragma_table_info('{table}')")
        source_columns = [r["name"] for r in described]
        # routes keep their order (priority, then creation: SQLite's rowid)
        selected = [c for c in source_columns if c in target_columns]
        if "rowid" in target_columns and "rowid" not in selected:
            selected.append("rowid")
        total_row = await source.fetchone(f"SELECT count(*) AS n FROM {table}")
        total = int(total_row["n"]) if total_row else 0
        done, last = 0, -(2**63)
        listed = ", ".join(f"{c} AS {c}" if c == "rowid" else c for c in selected)
        progress(table, 0, total)
        while True:
            rows = await source.fetchall(
                f"SELECT rowid AS _rid, {listed} FROM {table} WHERE rowid > ?"
                " ORDER BY rowid LIMIT ?",
                (last, CHUNK_ROWS),
            )
            if not rows:
                break
            last = rows[-1]["_rid"]
            await target.load(table, selected, [tuple(r[c] for c in selected) for r in rows])
            done += len(rows)
            progress(table, done, total)
        copied.append(Copied(table, done))
    await target.after_load(time.time())
    return copied


async def _tables(source: SqliteStore) -> list[str]:
    rows = await source.fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    names = {r["name"] for r in rows} - TRANSIENT - SCHEMA_DATA
    middle = sorted(names - set(FIRST) - set(LAST))
    return [t for t in FIRST if t in names] + middle + [t for t in LAST if t in names]
