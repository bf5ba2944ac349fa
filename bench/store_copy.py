"""How fast `mta store copy` moves a SQLite store into an empty PostgreSQL database.

Makes a SQLite store of 10,000 queued messages (`--messages`) and 100,000 events (`--events`):
a server with delivery off (`MTA_OUTBOUND_ENABLED=false`) accepts the messages over HTTP, 1 KB
each, one recipient each, from 50 connections, so each has its `messages` row, its queued
`recipients` row and its `accepted` event, as accept writes them; the server stops, and the rest
of the events are written into the file through `mta.store.sqlite.SqliteStore` with
`mta.events.event_statements` (copies of the stored `accepted` payloads with new ids, as
`delivered`, `opened` and `clicked` events). Then it starts a PostgreSQL (tests/postgres.py),
times `python -m mta store copy --to <a fresh database>` (with `MTA_SERVER_DATA_DIR` at the
store's data directory) and compares every table's row count, and the bytes of the stored
messages and event payloads, on both sides.

    python bench/store_copy.py [--messages 10000] [--events 100000] [--keep]

The figures are printed last, one `name: value` per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
from common import DOMAIN, bench_server
from delivery import DEST_DOMAINS, PATH, body_rest
from http_accept import fs_type
from nodes import pg_cpu, postgres

SIZE = 1024
EXTRA_KINDS = ("delivered", "opened", "clicked")
EVENT_CHUNK = 1000


async def post_messages(url: str, key: str, total: int, connections: int) -> int:
    """`total` single-recipient POSTs from `connections` keep-alive connections; the 200s."""
    import aiohttp

    headers = {
        "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    rest = body_rest(SIZE)
    next_index = ok = 0
    failures: list[str] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, ok
        while next_index < total:
            i = next_index
            next_index += 1
            body = f"to=user{i}%40d{i % DEST_DOMAINS + 1}.bench.test&{rest}".encode()
            async with session.post(url + PATH, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    ok += 1
                elif len(failures) < 3:
                    failures.append(f"{resp.status} {(await resp.text())[:200]}")

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    for failure in failures:
        print(f"  POST failed: {failure}", flush=True)
    return ok


async def add_events(db_path: Path, count: int) -> None:
    """`count` more events, copies of stored `accepted` payloads, through the store's writer."""
    import orjson

    from mta.events import Event, event_statements, new_event_id
    from mta.store.sqlite import SqliteStore

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        models = [orjson.loads(row[0]) for row in conn.execute(
            "SELECT payload FROM events WHERE event = 'accepted' LIMIT 500")]
    finally:
        conn.close()
    if not models:
        raise RuntimeError("no accepted events to copy")
    rng = random.Random(7)
    store = await SqliteStore.open(db_path)
    try:
        now = time.time()
        written = 0
        while written < count:
            payloads = []
            for i in range(min(EVENT_CHUNK, count - written)):
                payload = copy.deepcopy(rng.choice(models))
                payload["id"] = new_event_id()
                payload["event"] = EXTRA_KINDS[(written + i) % len(EXTRA_KINDS)]
                payload["timestamp"] = now + (written + i) / 1000
                payloads.append(payload)
            await store.write(
                *event_statements(DOMAIN, [Event.from_payload(p) for p in payloads])
            )
            written += len(payloads)
    finally:
        await store.close()


def sqlite_counts(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def sqlite_bytes(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {
            "messages.mime": conn.execute(
                "SELECT coalesce(sum(length(mime)), 0) FROM messages").fetchone()[0],
            "events.payload": conn.execute(
                "SELECT coalesce(sum(length(payload)), 0) FROM events").fetchone()[0],
        }
    finally:
        conn.close()


async def postgres_counts(url: str, tables: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        present = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema()")}
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                  for t in tables if t in present}
        sizes = {
            "messages.mime": await conn.fetchval(
                "SELECT coalesce(sum(length(mime)), 0) FROM messages"),
            "events.payload": await conn.fetchval(
                "SELECT coalesce(sum(length(payload)), 0) FROM events"),
        }
        return counts, sizes
    finally:
        await conn.close()


def summarise_copy_profile(path: Path, top: int = 12) -> str:
    """Samples by the nearest frame of mta (the caller of library code), and by own function."""
    nearest: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        mta = [f for f in frames if "(mta/" in f and "(mta/__main__" not in f]
        nearest[mta[-1].split(" (")[0] if mta else "(outside mta)"] += n
    out = [f"profile {path}: {total} samples at 200/s (busy threads only)"]
    for title, counter in (("by nearest mta frame", nearest), ("by own function", own)):
        out.append(f"  {title}:")
        out += [f"    {100 * n / max(1, total):5.1f} %  {name[:140]}"
                for name, n in counter.most_common(top)]
    return "\n".join(out)


def transient_tables() -> frozenset[str]:
    try:
        from mta.store.copy import TRANSIENT

        return frozenset(TRANSIENT)
    except ImportError:
        return frozenset()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="queued messages")
    parser.add_argument("--events", type=int, default=100_000, help="events in all")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the SQLite data directory")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the copy under py-spy (collapsed stacks) and summarise them")
    args = parser.parse_args()
    if args.messages < 1 or args.events < args.messages:
        parser.error("--messages must be at least 1 and --events at least --messages")
    if not postgres.available():
        parser.error("PostgreSQL is not installed (apt-get install -y postgresql)")
    figures: dict[str, str] = {}
    problems: list[str] = []

    # -- the SQLite store ------------------------------------------------------------------------
    env_off = {
        "MTA_OUTBOUND_ENABLED": "false",  # accepted mail stays queued
        "MTA_SMTP_SUBMISSION": "",
        "MTA_SMTP_SUBMISSION_TLS": "",
        "MTA_SMTP_SUBMISSION_ALT": "",
        "MTA_SMTP_MX": "",
    }
    began = time.monotonic()
    with bench_server(extra_env=env_off, keep=True) as server:
        key = server.setup_sending()
        print(f"server pid {server.pid}: posting {args.messages} messages", flush=True)
        posted = time.monotonic()
        ok = asyncio.run(post_messages(server.url, key, args.messages, args.connections))
        figures["make_accept_msgs_per_s"] = f"{ok / (time.monotonic() - posted):.0f}"
        code = server.stop()
        env = dict(server.env)
        data_dir, db_path = server.data_dir, server.db_path
    if ok != args.messages:
        problems.append(f"{ok} of {args.messages} POSTs answered 200")
    if code != 0:
        problems.append(f"the SQLite server exited with {code}")
    extra = args.events - args.messages
    print(f"writing {extra} more events into {db_path}", flush=True)
    asyncio.run(add_events(db_path, extra))
    figures["make_store_s"] = f"{time.monotonic() - began:.1f}"
    counts = sqlite_counts(db_path)
    source_bytes = sqlite_bytes(db_path)
    figures["sqlite_file_mib"] = f"{db_path.stat().st_size / 2**20:.1f}"
    print("sqlite rows: " + ", ".join(f"{t} {n}" for t, n in sorted(counts.items()) if n),
          flush=True)

    # -- the copy --------------------------------------------------------------------------------
    cluster = postgres.start()
    try:
        url = cluster.new_database()
        for name in ("MTA_STORE_URL", "MTA_API_LISTEN"):
            env.pop(name, None)
        env["MTA_SERVER_DATA_DIR"] = str(data_dir)
        print(f"copying into {url} (PostgreSQL data on {fs_type(cluster.root)})", flush=True)
        pg_before, reaped_before = pg_cpu(cluster)
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        command = [sys.executable, "-m", "mta", "store", "copy", "--to", url]
        if args.profile:
            command = ["py-spy", "record", "--rate", "200", "--format", "raw",
                       "--output", str(args.profile), "--", *command]
        done = subprocess.run(
            command,
            env=env, cwd=data_dir.parent, capture_output=True, timeout=1800, check=False,
        )  # bytes: text mode would make each \r of the progress bar a line of its own
        stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        seconds = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        pg_after, reaped_after = pg_cpu(cluster)
        copy_cpu = (usage.ru_utime + usage.ru_stime
                    - usage_before.ru_utime - usage_before.ru_stime)
        pg_spent = sum(v - pg_before.get(pid, 0.0) for pid, v in pg_after.items())
        pg_spent += reaped_after - reaped_before
        # the progress bar redraws with \r: keep each table's last state
        for line in stderr.split("\n"):
            last = line.rsplit("\r", 1)[-1].strip()
            if last:
                print(f"  {last}")
        print(stdout.strip())
        if done.returncode != 0:
            problems.append(f"mta store copy exited with {done.returncode}:"
                            f" {stderr.strip()[-400:]}")
        skipped = transient_tables()
        wanted = [t for t in counts if t not in skipped]
        pg_counts, target_bytes = asyncio.run(postgres_counts(url, wanted))
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
        else:
            print(f"SQLite data kept in {data_dir}")

    # -- the check -------------------------------------------------------------------------------
    copied_rows = 0
    for table in sorted(wanted):
        source, target = counts[table], pg_counts.get(table)
        if target is None:
            if source:
                problems.append(f"{table}: {source} rows in SQLite, no such table in PostgreSQL")
            continue
        if source != target:
            problems.append(f"{table}: SQLite {source}, PostgreSQL {target}")
        copied_rows += min(source, target)
        if source or target:
            figures[f"rows_{table}"] = f"{source}" if source == target else f"{source}/{target}"
    for name, size in source_bytes.items():
        if target_bytes.get(name) != size:
            problems.append(f"{name}: {size} bytes in SQLite, {target_bytes.get(name)} in"
                            " PostgreSQL")
    if counts.get("events", 0) < args.events or counts.get("messages", 0) < args.messages:
        problems.append(f"the store has {counts.get('events')} events and"
                        f" {counts.get('messages')} messages")
    figures["copy_cpu_s"] = f"{copy_cpu:.2f}"
    figures["postgresql_cpu_s"] = f"{pg_spent:.2f}"
    figures["bytes_messages_mime_mib"] = f"{source_bytes['messages.mime'] / 2**20:.1f}"
    figures["bytes_events_payload_mib"] = f"{source_bytes['events.payload'] / 2**20:.1f}"
    figures["check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    figures["rows_copied"] = str(copied_rows)
    figures["copy_s"] = f"{seconds:.2f}"
    figures["copy_rows_per_s"] = f"{copied_rows / seconds:.0f}" if seconds else "0"

    if args.profile and args.profile.exists():
        print(summarise_copy_profile(args.profile))
    print("---")
    print(f"cores: {os.cpu_count()}")
    for name, value in figures.items():
        print(f"store_copy_{name}: {value}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
