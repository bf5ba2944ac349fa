"""Panel: the Logs and Stats pages' render time with a million events in a SQLite store.

Issue 14's figure: "Logs page and stats page render time with 1 million events in the store:
< 300 ms each". The store is bench/stats.py's month (its `make_store`, reused, not copied):
`--events` events (default 1,000,000) over the 30 days before today for three domains with
tags and campaigns, each a real `mta.events.model.Event` written through
`mta.events.event_statements` (the events INSERT plus the `mta.stats.counting` statements that
count it, tags noted first by `mta.stats.tags.seen_statements`), 10,000 events a transaction
by sqlite3 straight into the store file, and the counters checked against what was generated.
The domains' `created_at` is then set to before the month (the CLI made them today, and the
Events API, so the Logs page, shows no event from before a domain was added).

Then it starts `python -m mta serve` on the store (bench/stats.py's `serve`: delivery and SMTP
off, events kept), signs in to the panel over HTTP with the API key (the sign-in form, its CSRF
cookie and token, the session cookie) and times GETs one after another, `--runs` each after 3
warm-up ones: the Logs page as it opens (newest events of the first domain), a search by one
recipient (one from the middle of the month: the query walks the domain's events newest first
until the page is full or the month is done), a search by event (`failed`), by the message-id
of a large send, one event's JSON,
one message's history; the Stats page as it opens (the account, 7 days per day), a domain's 30
days per hour, and one tag's 30 days per day. Every page is checked to show what it should.

    python bench/panel.py [--events 1000000] [--runs 30] [--store DIR] [--keep]

A search by recipient reads that recipient's events only, through migration 14's
(domain, recipient, ts, seq) index (before it, the domain's events newest first: 255-317 ms).

`--store DIR` makes the store in DIR or reuses the one there (bench/stats.py's rules). The
figures (median and p95 in ms per page) are printed last, one `name: value` per line, after a
`---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import DOMAIN, median
from stats import META, check_counters, make_store, pct, serve, store_figures

WARMUP = 3
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TARGET_MS = 300


def prepare(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """bench/stats.py's store of `args.events` events (made, or reused from --store), its
    domains dated before the month."""
    meta_path = root / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is not None and meta["target_events"] != args.events:
        raise SystemExit(f"{root} holds a store of {meta['target_events']} events, not"
                         f" {args.events}: use another --store")
    if meta is None:
        meta = make_store(root, argparse.Namespace(events=args.events, batch=args.batch,
                                                   seed=args.seed))
    conn = sqlite3.connect(root / "var" / "mta.db", isolation_level=None)
    try:
        conn.execute("UPDATE domains SET created_at = ?", (meta["start"] - 86400,))
    finally:
        conn.close()
    return meta


def samples(db: Path) -> dict[str, str]:
    """What the timed pages ask for: a recipient and a message from the middle of the month,
    one event of it, the main domain's most used tag."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT count(*) FROM events WHERE domain = ?",
                                (DOMAIN,)).fetchone()
        recipient, message_id, event_id = conn.execute(
            "SELECT recipient, message_id, id FROM events WHERE domain = ? AND event ="
            " 'delivered' ORDER BY ts LIMIT 1 OFFSET ?", (DOMAIN, count // 3)).fetchone()
        (tag,) = conn.execute(
            "SELECT substr(scope, 3) FROM stats_counters WHERE domain = ? AND scope LIKE 't:%'"
            " AND resolution = 'month' GROUP BY scope ORDER BY sum(accepted_outgoing) DESC"
            " LIMIT 1", (DOMAIN,)).fetchone()
    finally:
        conn.close()
    return {"recipient": recipient, "message_id": message_id, "event_id": event_id, "tag": tag}


async def sign_in(http: aiohttp.ClientSession, key: str) -> None:
    async with http.get("/cp/sign-in") as resp:
        found = CSRF.search(await resp.text())
    assert found is not None, "no CSRF token on the sign-in page"
    async with http.post("/cp/sign-in", data={"csrf": found.group(1), "secret": key, "next": ""},
                         allow_redirects=False) as resp:
        assert resp.status == 303, f"sign-in answered {resp.status}"


async def time_pages(url: str, key: str, pick: dict[str, str], runs: int) -> dict[str, str]:
    pages = [
        # (name, path, text the page must show)
        ("logs_default", "/cp/logs", 'data-event="'),
        ("logs_by_recipient", f"/cp/logs?domain={DOMAIN}&recipient={pick['recipient']}",
         'data-event="delivered"'),
        ("logs_by_event_failed", f"/cp/logs?domain={DOMAIN}&event=failed",
         'data-event="failed"'),
        ("logs_by_message_id", f"/cp/logs?domain={DOMAIN}&message-id={pick['message_id']}",
         'data-event="'),
        ("event_json", f"/cp/logs/event?domain={DOMAIN}&message={pick['message_id']}"
                       f"&id={pick['event_id']}", pick["event_id"]),
        ("message_history", f"/cp/logs/message?domain={DOMAIN}&id={pick['message_id']}",
         'data-event="accepted"'),
        ("stats_default", "/cp/stats", 'polyline data-event="delivered"'),
        ("stats_domain_30d_hourly", f"/cp/stats?domain={DOMAIN}&span=30d&resolution=hour",
         'polyline data-event="delivered"'),
        ("stats_tag_30d_daily", f"/cp/stats?domain={DOMAIN}&tag={pick['tag']}&span=30d"
                                "&resolution=day", 'polyline data-event="delivered"'),
    ]
    fig: dict[str, str] = {}
    problems: list[str] = []
    async with aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, key)
        for name, path, needed in pages:
            times: list[float] = []
            for n in range(WARMUP + runs):
                t0 = time.perf_counter()
                async with http.get(path, allow_redirects=False) as resp:
                    body = await resp.text()
                elapsed = 1000 * (time.perf_counter() - t0)
                if resp.status != 200 or needed not in body:
                    problems.append(f"{name}: {resp.status}, {needed!r} not shown")
                    break
                if n >= WARMUP:
                    times.append(elapsed)
            if times:
                fig[f"{name}_median_ms"] = f"{median(times):.1f}"
                fig[f"{name}_p95_ms"] = f"{pct(times, 0.95):.1f}"
                fig[f"{name}_bytes"] = str(len(body))
    slowest = max((float(v) for k, v in fig.items() if k.endswith("_median_ms")), default=0.0)
    fig["slowest_median_ms"] = f"{slowest:.1f}"
    fig["target"] = f"< {TARGET_MS} ms each: {'met' if slowest < TARGET_MS else 'MISSED'}"
    fig["page_check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events per transaction")
    parser.add_argument("--runs", type=int, default=30, help="timed requests per page")
    parser.add_argument("--store", type=Path, help="make the store here, or reuse it")
    parser.add_argument("--keep", action="store_true", help="keep a store made in $TMPDIR")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()

    root = args.store.resolve() if args.store else Path(tempfile.mkdtemp(prefix="mta-panel-"))
    figures: dict[str, str] = {}
    try:
        meta = prepare(root, args)
        db = root / "var" / "mta.db"
        figures["events"] = str(meta["events"])
        figures |= {k: v for k, v in meta["generated"].items() if k.startswith("generate_")}
        figures |= store_figures(db)
        problems = check_counters(db, meta)
        figures["counter_check"] = "FAILED: " + "; ".join(problems[:5]) if problems else "ok"
        pick = samples(db)
        figures["tag_measured"] = pick["tag"]
        with serve(root) as server:
            time.sleep(2)  # the start-up purges and migrations check, before timing
            figures |= asyncio.run(time_pages(server.url, meta["key"], pick, args.runs))
    finally:
        if args.store is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"store kept in {root}", file=sys.stderr)
    print("---")
    for name, value in figures.items():
        print(f"{name}: {value}")
    checks = [v for k, v in figures.items() if k.endswith("check")]
    return 0 if all(v == "ok" for v in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
